//! Host-side bindings generated from `wit/plugin.wit`, one module per world. The template
//! world reuses the health-check world's shared interfaces so both see the same Rust types.

/// The `health-check` world: imports `runtime` and `net`, exports `check`.
pub mod check {
    wasmtime::component::bindgen!({
        world: "health-check",
        path: "wit",
        imports: {
            "wharf:plugin/net": async,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// The `template` world: imports `runtime`, exports `render`.
pub mod template {
    wasmtime::component::bindgen!({
        world: "template",
        path: "wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "wharf:plugin/types": super::check::wharf::plugin::types,
            "wharf:plugin/runtime": super::check::wharf::plugin::runtime,
        },
    });
}

pub use check::wharf::plugin::net::{HttpRequest, HttpResponse};
pub use check::wharf::plugin::runtime::Level;
pub use check::wharf::plugin::types::{CheckResult, Instance, KvPair, Service, Snapshot, Status};
