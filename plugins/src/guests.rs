//! Builds the guest workspace (`plugins/guest`: SDK, example and hostile plugins) for the
//! tests and benchmarks that run real plugins. Not used by the agent itself.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The guest workspace's directory.
pub fn guest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest")
}

/// Builds every guest plugin (once per process) and returns the directory holding them as
/// `NAME.wasm`, ready to be used as `--plugin-dir`.
pub fn build_guest_plugins() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = guest_dir();
            let out = dir.join("target").join("plugins");
            let status = Command::new("bash")
                .arg(dir.join("build.sh"))
                .arg(&out)
                .env_remove("CARGO_TARGET_DIR")
                .status()
                .map_err(|e| format!("cannot run {}/build.sh: {e}", dir.display()))?;
            if !status.success() {
                return Err(format!(
                    "{}/build.sh failed ({status}): the guest plugins need `rustup target add wasm32-wasip2`",
                    dir.display()
                ));
            }
            Ok(out)
        })
        .clone()
}
