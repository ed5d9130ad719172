//! Hostile plugin `trap`: panics, which on wasm32-wasip2 aborts with an `unreachable` trap, to test
//! that the host turns a trapping plugin into a critical check.

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance};

struct Trap;

impl HealthCheck for Trap {
    fn check(_target: Instance, _config: String) -> Result<CheckResult, String> {
        panic!("deliberate trap")
    }
}

wharf_plugin_sdk::export_health_check!(Trap);
