//! Hostile plugin `forbidden-address`: tries to reach an address other than the checked instance,
//! or to use WASI sockets directly, to test that the host refuses.
//!
//! Config selects the attempt:
//!
//! * `http` (or `http:URL`, or just an `http://` URL): `GET http://127.0.0.2:9/` (or URL) through
//!   `net.http`;
//! * `tcp` (or `tcp:HOST:PORT`): an exchange with `127.0.0.2:9` (or HOST:PORT) through
//!   `net.tcp-exchange`;
//! * `std` (or `std:HOST:PORT`): `std::net::TcpStream::connect` to the instance's own port on
//!   `127.0.0.1` (or HOST:PORT), i.e. WASI sockets, which the host must refuse (it grants no
//!   network).
//!
//! The defaults stay on the loopback interface (other than the instance's address), so a host that
//! wrongly lets the attempt through sends no traffic off the machine.
//!
//! A refused attempt gives a critical result whose output is `{mode} {target}: {error}`, the error
//! being the text the plugin received. An attempt that succeeds gives a passing result starting
//! with `REACHED`.

use std::io::Write;
use std::net::TcpStream;

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance, http, tcp};

const DEFAULT_HTTP_URL: &str = "http://127.0.0.2:9/";
const DEFAULT_TCP_ADDRESS: &str = "127.0.0.2:9";

fn outcome(mode: &str, target: &str, result: Result<String, String>) -> CheckResult {
    match result {
        Ok(what) => CheckResult::passing(format!("REACHED {mode} {target}: {what}")),
        Err(e) => CheckResult::critical(format!("{mode} {target}: {e}")),
    }
}

struct ForbiddenAddress;

impl HealthCheck for ForbiddenAddress {
    fn check(target: Instance, config: String) -> Result<CheckResult, String> {
        let (mode, override_target) = match config.split_once(':') {
            Some((mode, rest)) => (mode, Some(rest)),
            None => (config.as_str(), None),
        };
        match mode {
            "http" => {
                let url = match override_target {
                    None => DEFAULT_HTTP_URL.to_owned(),
                    // The config itself is a URL: `http://host:port/`.
                    Some(rest) if rest.starts_with("//") => config.clone(),
                    Some(url) => url.to_owned(),
                };
                let result = http::get(&url).map(|r| format!("HTTP {}", r.status));
                Ok(outcome(mode, &url, result))
            }
            "tcp" => {
                let address = override_target.unwrap_or(DEFAULT_TCP_ADDRESS);
                let result = tcp::exchange(address, b"hello\r\n", b"\n", 64).map(|r| format!("read {} bytes", r.len()));
                Ok(outcome(mode, address, result))
            }
            "std" => {
                let address = override_target.map_or_else(|| format!("127.0.0.1:{}", target.port), str::to_owned);
                let result = TcpStream::connect(&address)
                    .and_then(|mut stream| stream.write_all(b"hello\r\n"))
                    .map(|()| "connected".to_owned())
                    .map_err(|e| e.to_string());
                Ok(outcome(mode, &address, result))
            }
            other => {
                Err(format!("unknown config {other:?}: expected http, tcp or std (optionally followed by :TARGET)"))
            }
        }
    }
}

wharf_plugin_sdk::export_health_check!(ForbiddenAddress);
