//! `wharf snapshot save | restore | inspect FILE`, as `consul snapshot` does them.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use consul_api::snapshot;

use crate::cli::Client;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Save a consistent point-in-time copy of the whole state (catalog, KV, sessions).
    Save {
        file: PathBuf,
        /// Take it from this agent's copy without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Replace the cluster's whole state with a saved one.
    Restore { file: PathBuf },
    /// Show what a saved snapshot holds.
    Inspect { file: PathBuf },
}

fn read(file: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

pub async fn run(c: &Client, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Save { file, stale } => {
            let bytes =
                c.ok(reqwest::Method::GET, if stale { "/v1/snapshot?stale" } else { "/v1/snapshot" }, None).await?;
            let snap = snapshot::decode(&bytes).map_err(|e| anyhow!("the agent sent a bad snapshot: {e}"))?;
            crate::agent::write_secret(&file, &bytes).with_context(|| format!("cannot write {}", file.display()))?;
            println!("Saved and verified snapshot to index {}", snap.index);
        }
        SnapshotCmd::Restore { file } => {
            let bytes = read(&file)?;
            snapshot::decode(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            c.ok(reqwest::Method::PUT, "/v1/snapshot", Some(bytes)).await?;
            println!("Restored snapshot");
        }
        SnapshotCmd::Inspect { file } => {
            let bytes = read(&file)?;
            let snap = snapshot::decode(&bytes).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let s = &snap.state;
            crate::cli::print_table(vec![
                vec!["Index".into(), snap.index.to_string()],
                vec!["Datacenter".into(), snap.datacenter.clone()],
                vec!["Size".into(), bytes.len().to_string()],
                vec!["Nodes".into(), s.nodes.len().to_string()],
                vec!["Services".into(), s.services.len().to_string()],
                vec!["Checks".into(), s.checks.len().to_string()],
                vec!["KV entries".into(), s.kv.len().to_string()],
                vec!["Sessions".into(), s.sessions.len().to_string()],
            ]);
        }
    }
    Ok(())
}
