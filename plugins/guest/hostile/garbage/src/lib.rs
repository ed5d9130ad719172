//! Hostile plugin `garbage`: returns a result whose output is not valid UTF-8, to test that the
//! host rejects malformed results (lifting the string fails) instead of passing them on.

#![allow(unsafe_code)]

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance};

struct Garbage;

impl HealthCheck for Garbage {
    fn check(_target: Instance, _config: String) -> Result<CheckResult, String> {
        // SAFETY: deliberately violated. The string never reaches Rust code that relies on it
        // being UTF-8: it is only lowered, byte for byte, into the result for the host.
        let output = unsafe { String::from_utf8_unchecked(vec![0xff, 0xfe, 0xfd]) };
        Ok(CheckResult::passing(output))
    }
}

wharf_plugin_sdk::export_health_check!(Garbage);
