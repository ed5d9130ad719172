//! LAN membership and failure detection, as Serf gives Consul: every agent, server or
//! client, runs SWIM (the `foca` crate: probes, indirect probes, suspicion, piggybacked
//! updates) over UDP on its gossip port (8301), sealed with the cluster's key when there
//! is one. The result is a view of the members (alive, failed, left) that the leader
//! reconciles into the catalog and `members` shows.
//!
//! [`start`] binds the socket and returns a [`Gossip`] handle and the engine's future; the
//! engine owns foca and is the only task that touches it.

mod engine;
pub mod members;
pub mod seal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

pub use members::{Member, MemberId, Members, Status, Tags};
pub use seal::Key;

/// How this agent takes part in gossip.
#[derive(Clone, Debug)]
pub struct Settings {
    pub bind: SocketAddr,
    /// This agent as others see it (`addr` is the advertised gossip address).
    pub me: MemberId,
    /// `None`: gossip in the clear (a cluster started without a key).
    pub key: Option<Key>,
    pub timing: Timing,
}

/// SWIM's clock. The defaults notice a dead member in about 2-3 s on a LAN (a probe
/// period to probe it, one to give up on its direct and indirect probes, then the
/// suspicion timeout, which the member can use to refute a false suspicion).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_to_down: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            probe_period: Duration::from_millis(800),
            probe_rtt: Duration::from_millis(250),
            suspect_to_down: Duration::from_millis(1200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {addr} (UDP) for gossip: {source}; is another agent running? choose another port with -serf-lan-port"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) enum Request {
    Announce(SocketAddr),
    Leave(oneshot::Sender<()>),
    ForceLeave(String, oneshot::Sender<Result<(), String>>),
}

/// The handle on the running gossip engine.
#[derive(Clone)]
pub struct Gossip {
    requests: mpsc::Sender<Request>,
    view: watch::Receiver<Arc<Members>>,
    local_addr: SocketAddr,
}

impl Gossip {
    /// The membership view now.
    pub fn members(&self) -> Arc<Members> {
        self.view.borrow().clone()
    }

    /// The view, to follow its changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Members>> {
        self.view.clone()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Introduces this agent to the member gossiping at `addr`.
    pub async fn announce(&self, addr: SocketAddr) {
        let _ = self.requests.send(Request::Announce(addr)).await;
    }

    /// Tells the pool this agent leaves; returns once the announcements are sent.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Moves a failed member to left at once (`force-leave`), on every member.
    pub async fn force_leave(&self, name: &str) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::ForceLeave(name.to_string(), tx))
            .await
            .map_err(|_| "the gossip engine has stopped".to_string())?;
        rx.await.map_err(|_| "the gossip engine has stopped".to_string())?
    }
}

/// Binds the gossip socket. The returned future runs the engine until `stop` turns true.
pub async fn start(
    settings: Settings,
    stop: watch::Receiver<bool>,
) -> Result<(Gossip, impl std::future::Future<Output = ()>), StartError> {
    let socket =
        UdpSocket::bind(settings.bind).await.map_err(|source| StartError::Bind { addr: settings.bind, source })?;
    let local_addr = socket.local_addr().map_err(|source| StartError::Bind { addr: settings.bind, source })?;
    let (requests, rx) = mpsc::channel(64);
    let view = watch::Sender::new(Arc::new(Members::new(settings.me.clone(), std::time::Instant::now())));
    let gossip = Gossip { requests, view: view.subscribe(), local_addr };
    let engine = engine::Engine::new(settings, socket, view);
    Ok((gossip, engine.run(rx, stop)))
}
