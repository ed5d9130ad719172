//! wharf's Wasm plugin host (wasmtime, component model).
//!
//! Plugins are components built against `wit/plugin.wit`: health checks export
//! `check(instance, config) -> result<check-result, string>`, template plugins export
//! `render(snapshot, config) -> result<string, string>`. This crate knows nothing of the
//! catalog: callers hand it plain records and get plain results back.
//!
//! Sandbox: WASI with nothing granted (no files, environment, arguments or sockets); the
//! only network is the `net` imports, scoped to the checked instance's address and port;
//! CPU time is bounded by an epoch deadline equal to the call's timeout; linear memory by a
//! limit (16 MiB by default). Each plugin file is compiled once (recompiled when it
//! changes) and pre-linked; every call gets a fresh instance from the pooling allocator.

pub mod bindings;
pub mod guests;
mod host;
mod sandbox;

pub use bindings::{CheckResult, Instance, KvPair, Service, Snapshot, Status};
pub use host::{CheckOutcome, DEFAULT_MEMORY_LIMIT, MAX_OUTPUT, PluginConfig, PluginHost, PluginMetrics, truncate};
