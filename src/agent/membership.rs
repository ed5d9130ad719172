//! The gossip pool in the agent: the engine as a service, finding the pool through the
//! join addresses, the leader's reconciliation into the catalog, and the API's view.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Catalog, Cluster};
use consul_api::{MemberRecord, Membership};
use gossip::{Gossip, Status};
use local_agent::membership::Reconciler;
use raft::node::RaftNode;

use super::services::{Service, Stop, task};

/// The services that follow the pool: finding it, and the leader's reconciliation.
pub(super) fn services(
    gossip: &Gossip,
    node: &Arc<RaftNode>,
    catalog: &Catalog,
    cluster: &Arc<dyn Cluster>,
    reconnect_timeout: Duration,
    cleanup_dead_servers: bool,
) -> Vec<Box<dyn Service>> {
    let r = Reconciler {
        gossip: gossip.clone(),
        catalog: catalog.clone(),
        cluster: cluster.clone(),
        raft_addr: node.raft_addr().to_string(),
        reconnect_timeout,
        cleanup_dead_servers,
    };
    vec![
        finder(gossip.clone(), node.clone()),
        task("membership", move |stop: Stop| async move {
            r.run(stop).await;
            Ok(())
        }),
    ]
}

/// The engine, until the stop signal.
pub(super) fn engine(run: impl std::future::Future<Output = ()> + Send + 'static) -> Box<dyn Service> {
    task("gossip", move |_stop: Stop| async move {
        run.await;
        Ok(())
    })
}

/// While this agent sees no other alive member, asks each address it knows of (the join
/// addresses and every Raft member, all Raft ports) for its gossip address and announces
/// itself there. Once in the pool, SWIM keeps it there (and rejoins after a partition).
fn finder(gossip: Gossip, node: Arc<RaftNode>) -> Box<dyn Service> {
    task("gossip-join", move |mut stop: Stop| async move {
        let mut told = false;
        loop {
            if gossip.members().alive() <= 1 {
                for addr in node.contact_addrs() {
                    match node.ask_info(&addr).await.map(|i| i.gossip_addr) {
                        Ok(Some(g)) => match g.parse::<SocketAddr>() {
                            Ok(target) => gossip.announce(target).await,
                            Err(e) => tracing::warn!(%addr, "the gossip address {g:?} it gave is invalid: {e}"),
                        },
                        Ok(None) => {}
                        Err(e) if !told => tracing::info!("looking for the gossip pool: {e}"),
                        Err(_) => {}
                    }
                }
                told = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
    })
}

/// The API's view of the pool.
pub(super) struct GossipMembers(pub Gossip);

impl Membership for GossipMembers {
    fn members(&self) -> Vec<MemberRecord> {
        self.0
            .members()
            .iter()
            .map(|m| MemberRecord {
                name: m.id.name.clone(),
                addr: m.id.addr.ip().to_string(),
                port: m.id.addr.port(),
                status: m.status.code(),
                server: m.id.tags.server,
                datacenter: m.id.tags.datacenter.clone(),
                id: m.id.tags.id.clone(),
                build: m.id.tags.build.clone(),
                raft_port: m.id.tags.raft_addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0),
            })
            .collect()
    }

    fn force_leave(&self, node: &str) -> catalog::BoxFuture<'_, Result<(), Option<String>>> {
        let node = node.to_string();
        Box::pin(async move {
            match self.0.members().get(&node).map(|m| m.status) {
                None => Err(None),
                Some(Status::Left) => Ok(()),
                Some(_) => self.0.force_leave(&node).await.map_err(Some),
            }
        })
    }
}
