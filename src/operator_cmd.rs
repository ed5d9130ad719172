//! `wharf operator raft list-peers | remove-peer`, as `consul operator raft` does them.

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::cli::Client;

#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Raft operations.
    Raft {
        #[command(subcommand)]
        cmd: RaftCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum RaftCmd {
    /// List the Raft configuration: every server, which one leads, who votes.
    ListPeers,
    /// Remove a server from the Raft configuration (a dead server that will not return).
    RemovePeer {
        /// The server's Raft address (IP:port).
        #[arg(long)]
        address: Option<String>,
        /// The server's node ID.
        #[arg(long)]
        id: Option<String>,
    },
}

pub async fn run(c: &Client, cmd: OperatorCmd) -> Result<()> {
    let OperatorCmd::Raft { cmd } = cmd;
    match cmd {
        RaftCmd::ListPeers => {
            let v = c.json("/v1/operator/raft/configuration").await?;
            let mut rows = vec![["Node", "ID", "Address", "State", "Voter", "RaftProtocol"].map(String::from).to_vec()];
            for s in v["Servers"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                let state = if s["Leader"] == true {
                    "leader"
                } else if s["Voter"] == true {
                    "follower"
                } else {
                    "non-voter"
                };
                rows.push(vec![
                    text("Node"),
                    text("ID"),
                    text("Address"),
                    state.into(),
                    s["Voter"].as_bool().unwrap_or(false).to_string(),
                    text("ProtocolVersion"),
                ]);
            }
            crate::cli::print_table(rows);
        }
        RaftCmd::RemovePeer { address, id } => {
            let (what, value) = match (address, id) {
                (Some(a), None) => ("address", a),
                (None, Some(i)) => ("id", i),
                _ => bail!("give exactly one of -address=IP:port or -id=ID"),
            };
            let query = format!("{what}={}", crate::cli::key_path(&value));
            c.ok(reqwest::Method::DELETE, &format!("/v1/operator/raft/peer?{query}"), None).await?;
            println!("Removed peer with {what} {value}");
        }
    }
    Ok(())
}
