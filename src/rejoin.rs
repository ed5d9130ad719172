//! `wharf join` at run time. An agent that has not joined a cluster yet just adds the
//! target to the addresses its bootstrap loop contacts. An agent that runs as its own
//! one-agent cluster (plain `wharf agent`, as the tutorials start a second host) cannot
//! merge two Raft histories, so it does what a Consul client does: it drops its own and
//! joins the target's. The target is written to `rejoin.json` in the data dir with a reset
//! mark, the agent shuts down cleanly and execs itself; at start the mark wipes the old
//! Raft state and the target stays a join address on every later start, as Consul's
//! clients remember their cluster. The local registrations come back from the config dir
//! and Docker.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft::client::PeerClient;
use raft::node::RaftNode;
use raft::wire::PeerInfo;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Rejoin {
    join: Vec<String>,
    /// Wipe the Raft state at the next start.
    reset: bool,
}

/// What a run-time join did.
#[derive(Debug, PartialEq)]
pub enum Joined {
    /// The target is already in this agent's cluster.
    AlreadyMember,
    /// This agent was not in a cluster yet; it now also contacts the target.
    Added,
    /// This agent must restart to join the target's cluster.
    Restart,
}

fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("rejoin.json")
}

/// Decides how to join `target` (a Raft address); for [`Joined::Restart`] the target is
/// already recorded in the data dir. `join_key` is the cluster key this agent uses once it
/// is part of a cluster (its one-agent cluster's own key is not that one).
pub async fn join(
    node: &RaftNode,
    alone: bool,
    join_key: &str,
    target: &str,
    data_dir: &Path,
) -> Result<Joined, String> {
    let info = PeerClient::new(join_key)
        .get::<PeerInfo>(target, "/raft/info", Duration::from_secs(3))
        .await
        .map_err(|e| format!("cannot reach an agent at {target}: {e}"))?;
    let members = node.member_addrs();
    let same_leader = info.leader_addr.is_some() && info.leader_addr == node.current_leader_addr();
    if members.contains(&info.raft_addr) || same_leader {
        return Ok(Joined::AlreadyMember);
    }
    if !node.is_initialized().await {
        node.add_join_target(target.to_string());
        return Ok(Joined::Added);
    }
    if !alone || members.len() > 1 {
        return Err("this agent already belongs to a cluster of servers; a server cannot move to another \
                    cluster: start it with -retry-join instead, or force-leave it first"
            .into());
    }
    let mut state = read(data_dir).map_err(|e| e.to_string())?;
    if !state.join.iter().any(|j| j == target) {
        state.join.push(target.to_string());
    }
    state.reset = true;
    write(data_dir, &state).map_err(|e| e.to_string())?;
    Ok(Joined::Restart)
}

fn read(data_dir: &Path) -> Result<Rejoin> {
    let path = file(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid: delete it to forget the joined cluster", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Rejoin::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes atomically: a temp file, fsync, rename.
fn write(data_dir: &Path, state: &Rejoin) -> Result<()> {
    let path = file(data_dir);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(state)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))
}

/// At start: the join addresses recorded by an earlier run-time join. A pending reset wipes
/// the one-agent cluster's Raft state first.
pub fn take(data_dir: &Path) -> Result<Vec<String>> {
    let mut state = read(data_dir)?;
    if state.reset {
        let raft = data_dir.join("raft");
        if raft.exists() {
            std::fs::remove_dir_all(&raft)
                .with_context(|| format!("cannot remove the old Raft state in {}", raft.display()))?;
        }
        std::fs::remove_file(data_dir.join("config-dir-registrations.json")).ok();
        state.reset = false;
        write(data_dir, &state)?;
    }
    Ok(state.join)
}

/// Replaces this process with a fresh start of the same command line.
pub fn restart() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find this program to restart it")?;
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    Err(err).context("cannot restart the agent to join the cluster")
}
