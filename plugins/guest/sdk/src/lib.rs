//! Guest-side SDK for wharf plugins.
//!
//! A wharf plugin is a WebAssembly component (built with `--target wasm32-wasip2`) implementing one
//! of the worlds of `wharf:plugin@0.1.0` (see `plugins/wit/plugin.wit`):
//!
//! * `health-check`: implement [`HealthCheck`] and call [`export_health_check!`];
//! * `template`: implement [`Template`] and call [`export_template!`].
//!
//! ```no_run
//! use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance, http};
//!
//! struct HttpOk;
//!
//! impl HealthCheck for HttpOk {
//!     fn check(target: Instance, config: String) -> Result<CheckResult, String> {
//!         let path = if config.is_empty() { "/health" } else { config.as_str() };
//!         let url = target.url(path);
//!         let response = http::get(&url)?; // an Err makes the check critical with its text
//!         let seen = format!("GET {url}: {}", response.status);
//!         Ok(if response.is_success() { CheckResult::passing(seen) } else { CheckResult::critical(seen) })
//!     }
//! }
//!
//! wharf_plugin_sdk::export_health_check!(HttpOk);
//! ```
//!
//! and a template:
//!
//! ```no_run
//! use wharf_plugin_sdk::{Snapshot, Template};
//!
//! struct Names;
//!
//! impl Template for Names {
//!     fn render(catalog: Snapshot, _config: String) -> Result<String, String> {
//!         Ok(catalog.services.iter().map(|s| format!("{} {}\n", s.name, s.instances.len())).collect())
//!     }
//! }
//!
//! wharf_plugin_sdk::export_template!(Names);
//! ```
//!
//! A plugin crate needs only this crate as a dependency (no `wit-bindgen` of its own) and
//! `crate-type = ["cdylib"]`.
//!
//! # How the two worlds coexist in one crate
//!
//! Both worlds are generated here, by two `wit_bindgen::generate!` invocations in separate
//! (hidden) modules; the `template` one maps the shared `types` and `runtime` interfaces onto the
//! `health-check` bindings with `with:`, so there is a single [`Instance`], [`Snapshot`], ... type.
//!
//! What decides a component's world is the set of `component-type:*` custom sections linked
//! into the core module, which `wasm-component-ld` unions. Because the bindings are generated with
//! `pub_export_macro: true`, wit-bindgen splits that information in two:
//!
//! * this library only carries, per world, a section describing the world *with its exports
//!   removed* (imports only). Imports a plugin never calls are dropped by the componentizer, so a
//!   template plugin does not import `wharf:plugin/net`;
//! * the full world (imports and exports) is emitted by the export macro, i.e. in the plugin
//!   crate that invokes [`export_health_check!`] or [`export_template!`].
//!
//! A health-check plugin therefore exports only `check` (and imports `runtime`, `net` when it uses
//! the network, and WASI for the standard library), and a template plugin exports only `render`,
//! without `net`. No cargo features are involved, so the whole guest workspace builds in a single
//! `cargo build`. (This was verified by decoding the import and export sections of the built
//! components.)

#![warn(missing_docs)]

use std::borrow::Cow;
use std::time::Duration;

/// The wit-bindgen generated bindings. Not part of the stable API: use the re-exports and helpers
/// of this crate instead.
#[doc(hidden)]
pub mod bindings {
    /// Bindings of the `health-check` world (they own the shared `types` and `runtime`).
    pub mod health_check {
        #![allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
        wit_bindgen::generate!({
            path: "../../wit",
            world: "health-check",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "$crate::bindings::health_check",
            additional_derives: [PartialEq, Eq],
        });
    }

    /// Bindings of the `template` world, reusing the shared interfaces of `health_check`.
    pub mod template {
        #![allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::too_many_arguments)]
        wit_bindgen::generate!({
            path: "../../wit",
            world: "template",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "$crate::bindings::template",
            with: {
                "wharf:plugin/types@0.1.0": crate::bindings::health_check::wharf::plugin::types,
                "wharf:plugin/runtime@0.1.0": crate::bindings::health_check::wharf::plugin::runtime,
            },
        });
    }
}

use bindings::health_check::wharf::plugin::{net, runtime};

pub use bindings::health_check::wharf::plugin::types::{CheckResult, Instance, KvPair, Service, Snapshot, Status};

/// A custom health check: the `health-check` world.
///
/// Register the implementing type with [`export_health_check!`].
pub trait HealthCheck {
    /// Probes `target`; `config` is the check definition's `Wasm.Config` string (possibly empty).
    ///
    /// Returning `Err(text)` makes the check critical with `text` as its output.
    fn check(target: Instance, config: String) -> Result<CheckResult, String>;
}

/// A template renderer: the `template` world.
///
/// Register the implementing type with [`export_template!`].
pub trait Template {
    /// Renders `catalog` into text (typically a configuration file); `config` is the template's
    /// configuration string (possibly empty).
    ///
    /// Returning `Err(text)` keeps the previous output in place and reports `text`.
    fn render(catalog: Snapshot, config: String) -> Result<String, String>;
}

impl<T: HealthCheck> bindings::health_check::Guest for T {
    fn check(target: Instance, config: String) -> Result<CheckResult, String> {
        <T as HealthCheck>::check(target, config)
    }
}

impl<T: Template> bindings::template::Guest for T {
    fn render(catalog: Snapshot, config: String) -> Result<String, String> {
        <T as Template>::render(catalog, config)
    }
}

/// Exports a type implementing [`HealthCheck`] as the plugin's `check` function.
///
/// Use it once, at the top level of a `cdylib` crate: `wharf_plugin_sdk::export_health_check!(MyCheck);`
#[macro_export]
macro_rules! export_health_check {
    ($plugin:ident) => {
        $crate::bindings::health_check::export!($plugin with_types_in $crate::bindings::health_check);
    };
}

/// Exports a type implementing [`Template`] as the plugin's `render` function.
///
/// Use it once, at the top level of a `cdylib` crate: `wharf_plugin_sdk::export_template!(MyTemplate);`
#[macro_export]
macro_rules! export_template {
    ($plugin:ident) => {
        $crate::bindings::template::export!($plugin with_types_in $crate::bindings::template);
    };
}

impl CheckResult {
    /// A passing result with `output` as the check's output.
    pub fn passing(output: impl Into<String>) -> Self {
        CheckResult { status: Status::Passing, output: output.into() }
    }

    /// A warning result with `output` as the check's output.
    pub fn warning(output: impl Into<String>) -> Self {
        CheckResult { status: Status::Warning, output: output.into() }
    }

    /// A critical result with `output` as the check's output.
    pub fn critical(output: impl Into<String>) -> Self {
        CheckResult { status: Status::Critical, output: output.into() }
    }
}

impl Status {
    /// The status as Consul spells it: `"passing"`, `"warning"` or `"critical"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

impl Instance {
    /// The instance's address in a form usable in a URL authority or a `host:port` pair: IPv6
    /// addresses are bracketed (`[::1]`), anything else is returned as is.
    pub fn host(&self) -> Cow<'_, str> {
        if self.address.contains(':') && !self.address.starts_with('[') {
            Cow::Owned(format!("[{}]", self.address))
        } else {
            Cow::Borrowed(&self.address)
        }
    }

    /// `"{address}:{port}"` (IPv6 addresses bracketed), as taken by [`tcp::exchange`].
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    /// `"http://{address}:{port}{path}"` (IPv6 addresses bracketed). A `path` that does not start
    /// with `/` (or `?`) gets one.
    pub fn url(&self, path: &str) -> String {
        let separator = if path.is_empty() || path.starts_with('/') || path.starts_with('?') { "" } else { "/" };
        format!("http://{}:{}{separator}{path}", self.host(), self.port)
    }

    /// The value of the service meta key `key`, if set.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether the instance carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

impl Snapshot {
    /// The service called `name`, if the snapshot has it.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The KV pair whose key is `key`, if any.
    pub fn kv(&self, key: &str) -> Option<&KvPair> {
        self.kv.iter().find(|p| p.key == key)
    }
}

impl KvPair {
    /// The value as text (invalid UTF-8 replaced by U+FFFD).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// The host's monotonic clock: only differences between two readings mean anything.
pub fn now() -> Duration {
    Duration::from_nanos(runtime::monotonic_now())
}

/// Writing to the agent's log, tagged with the plugin's name.
///
/// Lines are cut at 1024 bytes, and the host keeps at most 100 lines per plugin call.
pub mod log {
    use super::runtime::{self, Level};

    /// Logs `message` at debug level.
    pub fn debug(message: impl AsRef<str>) {
        runtime::log(Level::Debug, message.as_ref());
    }

    /// Logs `message` at info level.
    pub fn info(message: impl AsRef<str>) {
        runtime::log(Level::Info, message.as_ref());
    }

    /// Logs `message` at warn level.
    pub fn warn(message: impl AsRef<str>) {
        runtime::log(Level::Warn, message.as_ref());
    }

    /// Logs `message` at error level.
    pub fn error(message: impl AsRef<str>) {
        runtime::log(Level::Error, message.as_ref());
    }
}

/// HTTP requests to the checked instance (health-check plugins only).
///
/// The host refuses any URL whose host and port are not the instance's own, does not follow
/// redirects, and fails on bodies over 1 MiB.
pub mod http {
    use super::net;
    use std::borrow::Cow;

    /// An HTTP response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Response {
        /// Status code, e.g. 200.
        pub status: u16,
        /// Response headers in the order received.
        pub headers: Vec<(String, String)>,
        /// Response body (at most 1 MiB).
        pub body: Vec<u8>,
    }

    impl Response {
        /// The body as text (invalid UTF-8 replaced by U+FFFD).
        pub fn text(&self) -> Cow<'_, str> {
            String::from_utf8_lossy(&self.body)
        }

        /// The first value of the header `name` (compared case-insensitively).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        /// Whether the status is 2xx.
        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.status)
        }
    }

    /// Sends `GET url` without extra headers.
    ///
    /// The error is the host's description of what failed (refused address, connection error,
    /// timeout, ...).
    pub fn get(url: &str) -> Result<Response, String> {
        request("GET", url, &[], &[])
    }

    /// Sends one HTTP request: `method` (GET, POST, HEAD, ...), an `http://` or `https://` `url`
    /// naming the instance, extra `headers` and a `body` (may be empty).
    pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, String> {
        let request = net::HttpRequest {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.to_vec(),
        };
        let response = net::http(&request)?;
        Ok(Response { status: response.status, headers: response.headers, body: response.body })
    }
}

/// Raw TCP exchanges with the checked instance (health-check plugins only).
pub mod tcp {
    use super::net;

    /// Connects to `address` (`"host:port"`, the instance's own: see
    /// [`Instance::host_port`](crate::Instance::host_port)), writes `send`, then reads until the
    /// peer closes the connection, the bytes read contain `until` (when not empty), or `max_bytes`
    /// (at most 1 MiB) have been read. Returns the bytes read.
    pub fn exchange(address: &str, send: &[u8], until: &[u8], max_bytes: u32) -> Result<Vec<u8>, String> {
        net::tcp_exchange(address, send, until, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(address: &str) -> Instance {
        Instance {
            service: "web".to_owned(),
            id: "web-1".to_owned(),
            address: address.to_owned(),
            port: 8080,
            tags: vec!["primary".to_owned()],
            meta: vec![("version".to_owned(), "1.2".to_owned())],
        }
    }

    #[test]
    fn builds_urls_and_addresses() {
        let v4 = instance("127.0.0.1");
        assert_eq!(v4.url("/health"), "http://127.0.0.1:8080/health");
        assert_eq!(v4.url("health"), "http://127.0.0.1:8080/health");
        assert_eq!(v4.url(""), "http://127.0.0.1:8080");
        assert_eq!(v4.url("?x=1"), "http://127.0.0.1:8080?x=1");
        assert_eq!(v4.host_port(), "127.0.0.1:8080");
        let v6 = instance("::1");
        assert_eq!(v6.url("/health"), "http://[::1]:8080/health");
        assert_eq!(v6.host_port(), "[::1]:8080");
        assert_eq!(instance("[::1]").host_port(), "[::1]:8080");
        assert_eq!(instance("db.local").url("/"), "http://db.local:8080/");
    }

    #[test]
    fn reads_meta_and_tags() {
        let web = instance("127.0.0.1");
        assert_eq!(web.meta("version"), Some("1.2"));
        assert_eq!(web.meta("zone"), None);
        assert!(web.has_tag("primary"));
        assert!(!web.has_tag("canary"));
    }

    #[test]
    fn builds_results() {
        assert_eq!(CheckResult::passing("ok"), CheckResult { status: Status::Passing, output: "ok".to_owned() });
        assert_eq!(CheckResult::warning(String::from("hm")).status, Status::Warning);
        assert_eq!(CheckResult::critical("down").status.as_str(), "critical");
    }

    #[test]
    fn reads_responses() {
        let response = http::Response {
            status: 204,
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: vec![b'o', b'k', 0xff],
        };
        assert!(response.is_success());
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.header("server"), None);
        assert_eq!(response.text(), "ok\u{fffd}");
    }
}
