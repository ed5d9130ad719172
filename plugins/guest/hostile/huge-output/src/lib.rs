//! Hostile plugin `huge-output`: returns a passing result whose output is 8 MiB of `x`, to test
//! that the host cuts outputs (at 4096 bytes) and copes with the size.
//!
//! The string is allocated once at its exact size, so the plugin stays within about 10 MiB of
//! linear memory.

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance};

const OUTPUT_BYTES: usize = 8 << 20;

struct HugeOutput;

impl HealthCheck for HugeOutput {
    fn check(_target: Instance, _config: String) -> Result<CheckResult, String> {
        Ok(CheckResult::passing("x".repeat(OUTPUT_BYTES)))
    }
}

wharf_plugin_sdk::export_health_check!(HugeOutput);
