//! Hostile plugin `memory-bomb`: allocates (and touches) 1 MiB blocks until allocation fails, to
//! test the host's memory limit.
//!
//! If the host makes `memory.grow` fail, the check returns an error saying how much it got; if the
//! host traps instead, the call traps.

use wharf_plugin_sdk::{CheckResult, HealthCheck, Instance};

const MIB: usize = 1 << 20;

struct MemoryBomb;

impl HealthCheck for MemoryBomb {
    fn check(_target: Instance, _config: String) -> Result<CheckResult, String> {
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            if blocks.try_reserve(1).is_err() {
                break;
            }
            let mut block = Vec::new();
            if block.try_reserve_exact(MIB).is_err() {
                break;
            }
            // Touch every page so the memory is really used.
            block.resize(MIB, 0xA5);
            blocks.push(std::hint::black_box(block));
        }
        let got = blocks.len();
        drop(blocks);
        Err(format!("allocation failed after {got} MiB"))
    }
}

wharf_plugin_sdk::export_health_check!(MemoryBomb);
