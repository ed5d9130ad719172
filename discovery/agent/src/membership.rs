//! The leader's membership reconciliation, as Consul's leader does it with Serf's view: a
//! member that fails makes its node's `serfHealth` critical (so its instances leave every
//! pool, DNS answer and template), one that comes back makes it passing, one that leaves
//! is deregistered with everything on it, and one failed for longer than
//! `reconnect_timeout` is reaped. Only the leader writes; every agent runs the loop and
//! acts while it leads.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::command::Command;
use catalog::model::{CheckStatus, HealthCheck};
use catalog::state::CatalogState;
use catalog::{Catalog, Cluster, RaftPeer};
use gossip::{Gossip, Members, Status};
use tokio::sync::watch;

/// The liveness check's ID and name, as Consul's.
pub const SERF_CHECK: &str = "serfHealth";
const SERF_NAME: &str = "Serf Health Status";
const ALIVE: &str = "Agent alive and reachable";
const FAILED: &str = "Agent not live or unreachable";
const ABSENT: &str = "Agent not live or unreachable: not a member of the gossip pool";

/// How long a node with a liveness check may be unknown to the leader's gossip view before
/// it is marked critical (a new leader hears of every member within a few probe periods).
pub const ABSENT_GRACE: Duration = Duration::from_secs(10);

fn serf_check(node: &str, status: CheckStatus, output: &str) -> Command {
    Command::UpdateCheck { node: node.into(), check_id: SERF_CHECK.into(), status, output: Some(output.into()) }
}

fn add_serf_check(state: &CatalogState, node: &str, status: CheckStatus, output: &str) -> Option<Command> {
    let n = state.node(node)?.clone();
    Some(Command::Register {
        node: n,
        service: None,
        checks: vec![HealthCheck {
            node: node.into(),
            check_id: SERF_CHECK.into(),
            name: SERF_NAME.into(),
            status,
            output: output.into(),
            ..Default::default()
        }],
        skip_node_update: true,
        replace_service_checks: false,
    })
}

/// Brings a node's liveness check to `status`, adding it when the node has none.
fn ensure(state: &CatalogState, node: &str, status: CheckStatus, output: &str) -> Option<Command> {
    match state.check(node, SERF_CHECK) {
        Some(c) if c.status == status => None,
        Some(_) => Some(serf_check(node, status, output)),
        None => add_serf_check(state, node, status, output),
    }
}

/// The writes that bring the catalog in line with the gossip view. Pure.
///
/// `absent_long`: catalog nodes with a liveness check that have been missing from the
/// view for longer than [`ABSENT_GRACE`].
pub fn reconcile(
    members: &Members,
    state: &CatalogState,
    now: Instant,
    reconnect_timeout: Duration,
    absent_long: &BTreeSet<String>,
) -> Vec<Command> {
    let mut out = Vec::new();
    for m in members.iter() {
        let name = m.id.name.as_str();
        if name.is_empty() || state.node(name).is_none() {
            continue;
        }
        let cmd = match m.status {
            Status::Alive => ensure(state, name, CheckStatus::Passing, ALIVE),
            Status::Left => Some(Command::DeregisterNode { node: name.into() }),
            Status::Failed if now.saturating_duration_since(m.since) >= reconnect_timeout => {
                Some(Command::DeregisterNode { node: name.into() })
            }
            Status::Failed => ensure(state, name, CheckStatus::Critical, FAILED),
        };
        out.extend(cmd);
    }
    for name in absent_long {
        if members.get(name).is_none() {
            out.extend(ensure(state, name, CheckStatus::Critical, ABSENT));
        }
    }
    out
}

/// Raft members to remove: every member that left (a server's graceful leave, a client's),
/// a failed one reaped after `reconnect_timeout`, and, with autopilot's dead-server
/// cleanup, a server failed for longer than [`DEAD_SERVER_AFTER`] once enough servers are
/// alive that removing it cannot cost the quorum (a replacement has joined). Pure.
pub fn raft_removals(
    members: &Members,
    peers: &[RaftPeer],
    now: Instant,
    reconnect_timeout: Duration,
    cleanup_dead_servers: bool,
) -> Vec<u64> {
    let status_of = |p: &RaftPeer| {
        members
            .iter()
            .find(|m| m.id.tags.raft_addr == p.address)
            .map(|m| (m.status, now.saturating_duration_since(m.since)))
    };
    let voters = peers.iter().filter(|p| p.voter).count();
    let alive_voters = peers.iter().filter(|p| p.voter && matches!(status_of(p), Some((Status::Alive, _)))).count();
    let mut out = Vec::new();
    for p in peers.iter().filter(|p| !p.leader) {
        let remove = match status_of(p) {
            Some((Status::Left, _)) => true,
            Some((Status::Failed, for_)) if for_ >= reconnect_timeout => true,
            Some((Status::Failed, for_)) => {
                cleanup_dead_servers
                    && p.voter
                    && for_ >= DEAD_SERVER_AFTER
                    && alive_voters >= MIN_QUORUM
                    && alive_voters > voters / 2
            }
            _ => false,
        };
        if remove {
            out.push(p.id);
        }
    }
    out
}

/// How long a server must have failed before autopilot may remove it.
pub const DEAD_SERVER_AFTER: Duration = Duration::from_secs(30);
/// Autopilot never shrinks the voters below this many alive servers.
const MIN_QUORUM: usize = 3;

/// Nodes in the catalog that carry a liveness check: the ones gossip must know.
fn gossiping_nodes(state: &CatalogState) -> Vec<String> {
    let (checks, _) = state.checks_in_state(None);
    checks.into_iter().filter(|c| c.check_id == SERF_CHECK && c.service_id.is_empty()).map(|c| c.node).collect()
}

/// The reconciliation loop, run on every agent; it writes only while this agent leads.
pub struct Reconciler {
    pub gossip: Gossip,
    pub catalog: Catalog,
    pub cluster: Arc<dyn Cluster>,
    /// This agent's Raft address, to know when it leads.
    pub raft_addr: String,
    pub reconnect_timeout: Duration,
    /// Autopilot's `cleanup_dead_servers`.
    pub cleanup_dead_servers: bool,
}

impl Reconciler {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut view = self.gossip.subscribe();
        let mut absent: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = view.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let leads = self.cluster.leader_status().leader_addr.as_deref() == Some(self.raft_addr.as_str());
            if !leads {
                absent.clear();
                continue;
            }
            let now = Instant::now();
            let members = self.gossip.members();
            let state = self.catalog.snapshot();
            let missing: BTreeSet<String> =
                gossiping_nodes(&state).into_iter().filter(|n| members.get(n).is_none()).collect();
            absent.retain(|n, _| missing.contains(n));
            for n in &missing {
                absent.entry(n.clone()).or_insert(now);
            }
            let absent_long: BTreeSet<String> = absent
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= ABSENT_GRACE)
                .map(|(n, _)| n.clone())
                .collect();
            for cmd in reconcile(&members, &state, now, self.reconnect_timeout, &absent_long) {
                tracing::info!("membership: {}", describe(&cmd));
                if let Err(e) = self.cluster.write(cmd).await {
                    tracing::warn!("membership reconciliation: {e}; retrying");
                    break;
                }
            }
            let peers = self.cluster.raft_peers();
            for id in raft_removals(&members, &peers, now, self.reconnect_timeout, self.cleanup_dead_servers) {
                let addr = peers.iter().find(|p| p.id == id).map(|p| p.address.clone()).unwrap_or_default();
                tracing::info!(%addr, "membership: removing a departed member from the Raft configuration");
                if let Err(e) = self.cluster.remove_peer(id).await {
                    tracing::warn!(%addr, "membership: Raft removal failed: {e}; retrying");
                    break;
                }
            }
        }
    }
}

fn describe(cmd: &Command) -> String {
    match cmd {
        Command::UpdateCheck { node, status, .. } => format!("node {node}: serfHealth {status:?}"),
        Command::Register { node, .. } => format!("node {}: serfHealth added", node.node),
        Command::DeregisterNode { node } => format!("node {node} deregistered (left or reaped)"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::model::Node;
    use gossip::{MemberId, Tags};
    use std::net::SocketAddr;

    fn id(name: &str, port: u16) -> MemberId {
        MemberId {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            incarnation: 1,
            name: name.into(),
            tags: Tags::default(),
        }
    }

    fn state_with(nodes: &[(&str, CheckStatus)]) -> CatalogState {
        let mut s = CatalogState::default();
        for (i, (name, status)) in nodes.iter().enumerate() {
            let cmd = Command::Register {
                node: Node { node: (*name).into(), address: "10.0.0.1".into(), ..Default::default() },
                service: None,
                checks: vec![HealthCheck {
                    node: (*name).into(),
                    check_id: SERF_CHECK.into(),
                    status: *status,
                    ..Default::default()
                }],
                skip_node_update: false,
                replace_service_checks: false,
            };
            s.apply(i as u64 + 1, &cmd);
        }
        s
    }

    fn kinds(cmds: &[Command]) -> Vec<String> {
        cmds.iter().map(describe).collect()
    }

    #[test]
    fn failed_left_back_and_reaped_members_reach_the_catalog() {
        let t0 = Instant::now();
        let mut m = Members::new(id("leader", 1), t0);
        for (name, port) in [("ok", 2), ("dead", 3), ("gone", 4), ("old", 5), ("back", 6)] {
            assert_eq!(m.up(&id(name, port), t0), Ok(true));
        }
        assert!(m.down(&id("dead", 3), t0));
        assert!(m.left(&id("gone", 4), t0));
        assert!(m.down(&id("old", 5), t0));
        let s = state_with(&[
            ("leader", CheckStatus::Passing),
            ("ok", CheckStatus::Passing),
            ("dead", CheckStatus::Passing),
            ("gone", CheckStatus::Passing),
            ("old", CheckStatus::Critical),
            ("back", CheckStatus::Critical),
        ]);
        let later = t0 + Duration::from_secs(3600);
        let cmds = reconcile(&m, &s, later, Duration::from_secs(1800), &BTreeSet::new());
        assert_eq!(
            kinds(&cmds),
            [
                "node back: serfHealth Passing",
                "node dead deregistered (left or reaped)",
                "node gone deregistered (left or reaped)",
                "node old deregistered (left or reaped)",
            ]
        );
        // Before the reconnect timeout a failed member is only critical.
        let cmds = reconcile(&m, &s, t0, Duration::from_secs(1800), &BTreeSet::new());
        assert_eq!(
            kinds(&cmds),
            [
                "node back: serfHealth Passing",
                "node dead: serfHealth Critical",
                "node gone deregistered (left or reaped)",
            ]
        );
    }

    #[test]
    fn a_converged_catalog_needs_no_write_and_unknown_nodes_wait_for_the_grace() {
        let t0 = Instant::now();
        let mut m = Members::new(id("leader", 1), t0);
        assert_eq!(m.up(&id("ok", 2), t0), Ok(true));
        let s = state_with(&[
            ("leader", CheckStatus::Passing),
            ("ok", CheckStatus::Passing),
            ("ghost", CheckStatus::Passing),
        ]);
        assert!(reconcile(&m, &s, t0, Duration::from_secs(60), &BTreeSet::new()).is_empty());
        let long = BTreeSet::from(["ghost".to_string()]);
        assert_eq!(kinds(&reconcile(&m, &s, t0, Duration::from_secs(60), &long)), ["node ghost: serfHealth Critical"]);
        // A member whose node has no liveness check gets one.
        let mut s2 = CatalogState::default();
        s2.apply(
            1,
            &Command::Register {
                node: Node { node: "ok".into(), ..Default::default() },
                service: None,
                checks: vec![],
                skip_node_update: false,
                replace_service_checks: false,
            },
        );
        assert_eq!(
            kinds(&reconcile(&m, &s2, t0, Duration::from_secs(60), &BTreeSet::new())),
            ["node ok: serfHealth added"]
        );
    }

    fn member(name: &str, port: u16) -> MemberId {
        MemberId {
            tags: Tags { raft_addr: format!("10.0.0.1:{port}"), server: true, ..Tags::default() },
            ..id(name, port)
        }
    }

    fn peer(id: u64, port: u16, voter: bool, leader: bool) -> RaftPeer {
        RaftPeer { id, address: format!("10.0.0.1:{port}"), voter, leader }
    }

    #[test]
    fn departed_members_leave_raft_and_dead_servers_only_once_replaced() {
        let t0 = Instant::now();
        let mut m = Members::new(member("s1", 1), t0);
        for (n, p) in [("s2", 2), ("s3", 3), ("c1", 4), ("c2", 5)] {
            assert_eq!(m.up(&member(n, p), t0), Ok(true));
        }
        assert!(m.left(&member("c1", 4), t0));
        assert!(m.down(&member("s3", 3), t0));
        let peers = [
            peer(1, 1, true, true),
            peer(2, 2, true, false),
            peer(3, 3, true, false),
            peer(4, 4, false, false),
            peer(5, 5, false, false),
        ];
        let later = t0 + Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        // Three servers, one dead: removing it would leave two, so it stays (no replacement).
        assert_eq!(raft_removals(&m, &peers, later, day, true), [4]);
        // A fourth server joined: the dead one goes, once it has been dead long enough.
        assert_eq!(m.up(&member("s4", 6), t0), Ok(true));
        let four = [&peers[..], &[peer(6, 6, true, false)]].concat();
        assert_eq!(raft_removals(&m, &four, later, day, true), [3, 4]);
        assert_eq!(raft_removals(&m, &four, t0 + Duration::from_secs(5), day, true), [4]);
        assert_eq!(raft_removals(&m, &four, later, day, false), [4], "cleanup_dead_servers off");
        // After reconnect_timeout any failed member goes.
        assert_eq!(raft_removals(&m, &peers, t0 + day, day, false), [3, 4]);
    }
}
