//! The agent's supervisor: what happens on SIGHUP (TLS and config-dir reload), SIGTERM and
//! SIGINT (leave or not, then stop), and on the API's control requests (reload, join,
//! leave). It decides when the agent stops and whether it restarts to join another cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use catalog::Cluster;
use catalog::command::Command;
use catalog::model::AgentInfo;
use consul_api::AgentControl;
use local_agent::health::CheckPolicy;
use raft::node::RaftNode;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::config::{AgentConfig, with_default_port};

/// How the agent's serve loop ended.
#[derive(Debug, PartialEq)]
pub(super) enum Exit {
    Stop,
    /// Restart to join another cluster (`wharf join` on an agent that ran alone).
    Restart,
}

pub(super) struct Supervisor {
    pub node: Arc<RaftNode>,
    pub gossip: gossip::Gossip,
    pub cluster: Arc<dyn Cluster>,
    pub info: Arc<AgentInfo>,
    pub config: AgentConfig,
    pub join_key: String,
    pub check_policy: CheckPolicy,
    pub certs: Option<Arc<proxy::tls::CertStore>>,
}

impl Supervisor {
    /// Loads the config-dir definitions into the catalog (at start, on SIGHUP and on
    /// `/v1/agent/reload`). A rejected load changes nothing.
    pub async fn reload(&self) -> Result<String> {
        let sources = &self.config.config;
        if sources.is_empty() {
            return Ok("no --config-dir or --config-file given; nothing to reload".to_string());
        }
        let synced = local_agent::config_dir::sync(
            sources,
            &self.config.data_dir,
            &self.info,
            &self.check_policy,
            self.cluster.as_ref(),
        )
        .await?;
        Ok(synced)
    }

    /// Waits for signals and control requests until one ends the agent.
    pub async fn run(&self, mut control: mpsc::Receiver<AgentControl>) -> Result<Exit> {
        let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        loop {
            tokio::select! {
                _ = hup.recv() => self.on_hangup().await,
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    if self.config.leave_on_terminate { self.leave().await; }
                    return Ok(Exit::Stop);
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("interrupt: shutting down");
                    if self.config.leave_on_interrupt { self.leave().await; }
                    return Ok(Exit::Stop);
                }
                msg = control.recv() => match msg {
                    Some(m) => if let Some(exit) = self.on_control(m).await { return Ok(exit); },
                    None => return Ok(Exit::Stop),
                }
            }
        }
    }

    async fn on_hangup(&self) {
        if let Some(certs) = &self.certs {
            match certs.reload() {
                Ok(0) => {}
                Ok(n) => tracing::info!("SIGHUP: {n} TLS certificates reloaded"),
                Err(e) => tracing::error!("SIGHUP: TLS certificates unchanged: {e}"),
            }
        }
        match self.reload().await {
            Ok(s) => tracing::info!("SIGHUP: {s}"),
            Err(e) => tracing::error!("SIGHUP reload failed, catalog unchanged: {}", crate::error_chain(e.as_ref())),
        }
    }

    /// Answers one control request; `Some` when it ends the agent.
    async fn on_control(&self, msg: AgentControl) -> Option<Exit> {
        match msg {
            AgentControl::Reload(reply) => {
                let res = self.reload().await.map_err(|e| crate::error_chain(e.as_ref()));
                if let Err(e) = &res {
                    tracing::error!("reload failed, catalog unchanged: {e}");
                }
                let _ = reply.send(res);
                None
            }
            AgentControl::Join(addr, reply) => {
                let target = with_default_port(&addr, 8300);
                let res = crate::rejoin::join(
                    &self.node,
                    self.config.role.alone,
                    &self.join_key,
                    &target,
                    &self.config.data_dir,
                )
                .await;
                let restart = matches!(res, Ok(crate::rejoin::Joined::Restart));
                match res {
                    Ok(crate::rejoin::Joined::Restart) => {
                        tracing::info!(%target, "join: restarting to leave this one-agent cluster");
                        let _ = reply.send(Ok(format!("restarting to join {target}")));
                    }
                    Ok(outcome) => {
                        tracing::info!(%target, ?outcome, "join");
                        let _ = reply.send(Ok(format!("{outcome:?}")));
                    }
                    Err(e) => {
                        tracing::warn!(%target, "join failed: {e}");
                        let _ = reply.send(Err(e));
                    }
                }
                if restart {
                    // Let the HTTP answer go out before the listener closes.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Some(Exit::Restart);
                }
                None
            }
            AgentControl::Leave(reply) => {
                self.leave().await;
                let _ = reply.send(());
                // Let the HTTP answer go out before the listener closes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some(Exit::Stop)
            }
        }
    }

    /// Leaves the cluster gracefully. As Consul's leader reaps a member that left, its node
    /// and everything registered on it leave the catalog; a server also leaves the voters.
    pub async fn leave(&self) {
        tracing::info!("leaving the cluster");
        // First the pool, so the leader reads a leave, not a failure.
        self.gossip.leave().await;
        let gone = Command::DeregisterNode { node: self.info.node_name.clone() };
        match tokio::time::timeout(Duration::from_secs(5), self.cluster.write(gone)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("leave: could not deregister this node: {e}"),
            Err(_) => tracing::warn!("leave: no answer within 5s deregistering this node"),
        }
        if let Err(e) = self.node.leave().await {
            tracing::warn!("graceful leave: {e}");
        }
    }
}
