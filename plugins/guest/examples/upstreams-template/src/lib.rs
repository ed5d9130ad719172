//! `upstreams-template`: a template plugin rendering one nginx `upstream` block per service of the
//! catalog snapshot, with a `server address:port;` line per passing instance.
//!
//! A service without a passing instance still gets a valid block (one placeholder server marked
//! `down`), so the rendered configuration always loads; with `listen`, its location answers 503
//! instead of proxying ("empty-pool safety").
//!
//! Config (JSON, all fields optional; empty config renders every service):
//!
//! ```json
//! {"services": ["web", "api"], "exclude": ["db"], "listen": 8080}
//! ```
//!
//! * `services`: render only these, in this order (a listed service missing from the catalog gets
//!   an empty pool); default: every service of the snapshot, sorted by name;
//! * `exclude`: services to leave out;
//! * `listen`: also render a `server` block listening on this port that routes `/NAME/` to
//!   upstream `NAME`.
//!
//! The KV pairs the host passes (those under its `--plugin-kv-prefix`) are listed as comments.

use std::fmt::Write;

use serde::Deserialize;
use wharf_plugin_sdk::{Instance, Snapshot, Template};

/// What a pool without instances points at: nothing listens there, and it is marked down.
const PLACEHOLDER_SERVER: &str = "127.0.0.1:65535";

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    services: Option<Vec<String>>,
    exclude: Vec<String>,
    listen: Option<u16>,
}

fn parse_config(text: &str) -> Result<Config, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Config::default());
    }
    let config: Config = serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))?;
    if config.listen == Some(0) {
        return Err("invalid config: \"listen\" must be a port between 1 and 65535".to_owned());
    }
    Ok(config)
}

/// `name` with every character nginx would not take in a bare token replaced by `_`.
fn upstream_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// The sorted, deduplicated `host:port` servers of a pool.
fn servers(instances: &[Instance]) -> Vec<String> {
    let mut endpoints: Vec<(&str, u16, String)> =
        instances.iter().map(|i| (i.address.as_str(), i.port, i.host_port())).collect();
    endpoints.sort();
    endpoints.dedup();
    endpoints.into_iter().map(|(_, _, server)| server).collect()
}

fn render(catalog: &Snapshot, config: &Config) -> Result<String, String> {
    let selected: Vec<(&str, &[Instance])> = match &config.services {
        Some(names) => names
            .iter()
            .map(|name| (name.as_str(), catalog.service(name).map(|s| s.instances.as_slice()).unwrap_or(&[])))
            .collect(),
        None => catalog.services.iter().map(|s| (s.name.as_str(), s.instances.as_slice())).collect(),
    };
    let selected: Vec<(String, Vec<String>)> = selected
        .into_iter()
        .filter(|(name, _)| !config.exclude.iter().any(|e| e == name))
        .map(|(name, instances)| (upstream_name(name), servers(instances)))
        .collect();

    let mut out = String::new();
    let fmt_err = |e: std::fmt::Error| format!("formatting the output failed: {e}");
    writeln!(out, "# rendered by upstreams-template from {} services", selected.len()).map_err(fmt_err)?;
    // The KV pairs the host passed (under its configured prefix), as comments.
    for pair in &catalog.kv {
        let value: String =
            String::from_utf8_lossy(&pair.value).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let key: String = pair.key.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        writeln!(out, "# kv {key} = {value}").map_err(fmt_err)?;
    }
    for (name, servers) in &selected {
        writeln!(out, "\nupstream {name} {{").map_err(fmt_err)?;
        if servers.is_empty() {
            writeln!(out, "    # no passing instance").map_err(fmt_err)?;
            writeln!(out, "    server {PLACEHOLDER_SERVER} down;").map_err(fmt_err)?;
        }
        for server in servers {
            writeln!(out, "    server {server};").map_err(fmt_err)?;
        }
        writeln!(out, "}}").map_err(fmt_err)?;
    }
    if let Some(port) = config.listen {
        writeln!(out, "\nserver {{\n    listen {port};").map_err(fmt_err)?;
        for (name, servers) in &selected {
            writeln!(out, "\n    location /{name}/ {{").map_err(fmt_err)?;
            if servers.is_empty() {
                writeln!(out, "        return 503;").map_err(fmt_err)?;
            } else {
                writeln!(out, "        proxy_pass http://{name}/;").map_err(fmt_err)?;
            }
            writeln!(out, "    }}").map_err(fmt_err)?;
        }
        writeln!(out, "}}").map_err(fmt_err)?;
    }
    Ok(out)
}

struct Upstreams;

impl Template for Upstreams {
    fn render(catalog: Snapshot, config: String) -> Result<String, String> {
        render(&catalog, &parse_config(&config)?)
    }
}

wharf_plugin_sdk::export_template!(Upstreams);

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_plugin_sdk::{KvPair, Service};

    fn instance(service: &str, address: &str, port: u16) -> Instance {
        Instance {
            service: service.to_owned(),
            id: format!("{service}-{port}"),
            address: address.to_owned(),
            port,
            tags: vec![],
            meta: vec![],
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            services: vec![
                Service { name: "api".to_owned(), instances: vec![] },
                Service {
                    name: "web".to_owned(),
                    instances: vec![
                        instance("web", "10.0.0.2", 80),
                        instance("web", "::1", 8080),
                        instance("web", "10.0.0.1", 80),
                        instance("web", "10.0.0.1", 80),
                    ],
                },
            ],
            kv: vec![KvPair { key: "nginx/x".to_owned(), value: b"y".to_vec() }],
        }
    }

    #[test]
    fn renders_every_service() {
        let out = render(&snapshot(), &Config::default()).expect("renders");
        let expected = "# rendered by upstreams-template from 2 services
# kv nginx/x = y

upstream api {
    # no passing instance
    server 127.0.0.1:65535 down;
}

upstream web {
    server 10.0.0.1:80;
    server 10.0.0.2:80;
    server [::1]:8080;
}
";
        assert_eq!(out, expected);
    }

    #[test]
    fn renders_selected_services_and_a_server_block() {
        let config = parse_config(r#"{"services": ["web", "api", "new svc"], "exclude": ["api"], "listen": 8080}"#)
            .expect("valid");
        let out = render(&snapshot(), &config).expect("renders");
        let expected = "# rendered by upstreams-template from 2 services
# kv nginx/x = y

upstream web {
    server 10.0.0.1:80;
    server 10.0.0.2:80;
    server [::1]:8080;
}

upstream new_svc {
    # no passing instance
    server 127.0.0.1:65535 down;
}

server {
    listen 8080;

    location /web/ {
        proxy_pass http://web/;
    }

    location /new_svc/ {
        return 503;
    }
}
";
        assert_eq!(out, expected);
    }

    #[test]
    fn rejects_invalid_config() {
        assert_eq!(parse_config("  "), Ok(Config::default()));
        assert!(parse_config("{").expect_err("must be rejected").starts_with("invalid config: EOF"));
        assert!(parse_config(r#"{"listen": "80"}"#).expect_err("must be rejected").contains("invalid type"));
        assert!(parse_config(r#"{"listen": 0}"#).is_err());
        assert!(parse_config(r#"{"listen": 70000}"#).is_err());
        assert!(
            parse_config(r#"{"service": ["web"]}"#).expect_err("must be rejected").contains("unknown field `service`")
        );
    }
}
