//! Wiring between the catalog's health checker and the Wasm plugin host.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use catalog::model::CheckStatus;
use local_agent::health::{WasmRunner, WasmTarget};
use plugins::{PluginConfig, PluginHost, Status};

/// Starts the plugin host on `dir` (which must exist) with `memory_mib` per instance.
pub fn plugin_host(dir: &Path, memory_mib: usize) -> Result<Arc<PluginHost>> {
    let meta = std::fs::metadata(dir).with_context(|| {
        format!("--plugin-dir {}: cannot read it; create it and put NAME.wasm plugins in it", dir.display())
    })?;
    anyhow::ensure!(meta.is_dir(), "--plugin-dir {} is not a directory", dir.display());
    anyhow::ensure!(memory_mib >= 1, "--plugin-memory must be at least 1 (MiB)");
    let mut cfg = PluginConfig::new(dir);
    cfg.memory_limit = memory_mib << 20;
    Ok(Arc::new(PluginHost::new(cfg)?))
}

/// Health-check plugins for `local_agent::health`.
pub struct WasmChecks(pub Arc<PluginHost>);

impl WasmRunner for WasmChecks {
    fn validate(&self, module: &str) -> Result<(), String> {
        self.0.resolve(module).map(|_| ())
    }

    fn run<'a>(
        &'a self,
        module: &'a str,
        config: &'a str,
        target: WasmTarget,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (CheckStatus, String)> + Send + 'a>> {
        Box::pin(async move {
            let instance = plugins::Instance {
                service: target.service,
                id: target.id,
                address: target.address,
                port: target.port,
                tags: target.tags,
                meta: target.meta,
            };
            let out = self.0.check(module, &instance, config, timeout).await;
            let status = match out.status {
                Status::Passing => CheckStatus::Passing,
                Status::Warning => CheckStatus::Warning,
                Status::Critical => CheckStatus::Critical,
            };
            (status, out.output)
        })
    }
}
