//! Hostile plugin `spin-loop`: never returns, burning CPU, to test that the host interrupts a
//! plugin at the check's timeout.

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance};

struct SpinLoop;

impl HealthCheck for SpinLoop {
    fn check(_target: Instance, _config: String) -> Result<CheckResult, String> {
        let mut counter: u64 = 0;
        loop {
            // black_box keeps the optimizer from proving the loop has no effect.
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

wharf_plugin_sdk::export_health_check!(SpinLoop);
