//! The gossip engine: one task owning foca, the UDP socket and foca's timers. Every
//! interaction with foca is followed by a drain of what it asked for: packets to send
//! (sealed), timers to arm, and notifications that update the membership view.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PeriodicParams, PostcardCodec, Timer};
use rand_foca::SeedableRng;
use rand_foca::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::members::{MemberId, Members, Status};
use crate::seal::{self, Key, Kind, OpenError};
use crate::{Request, Settings};

type Swim = Foca<MemberId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// How often one source may cause a warning (or a refusal sent back).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The largest packet foca builds; UDP on any LAN carries it unfragmented.
const MAX_PACKET: usize = 1400;

pub(crate) struct Engine {
    swim: Swim,
    rt: AccumulatingRuntime<MemberId>,
    socket: UdpSocket,
    key: Option<Key>,
    members: Members,
    view: watch::Sender<Arc<Members>>,
    timers: BTreeMap<(Instant, u64), Timer<MemberId>>,
    timer_seq: u64,
    warned: HashMap<(SocketAddr, &'static str), Instant>,
    /// Whether the view changed since it was last published.
    dirty: bool,
    /// Packets to send once the current step is done.
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// A leave waiting for its announcements to be sent.
    pending_reply: Option<oneshot::Sender<()>>,
}

fn swim_config(settings: &Settings) -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN));
    c.probe_period = settings.timing.probe_period;
    c.probe_rtt = settings.timing.probe_rtt;
    c.suspect_to_down_after = settings.timing.suspect_to_down;
    c.max_packet_size = NonZeroUsize::new(MAX_PACKET).unwrap_or(NonZeroUsize::MIN);
    // After a partition heals, members on each side find the others again within seconds.
    c.periodic_announce_to_down_members =
        Some(PeriodicParams { frequency: Duration::from_secs(5), num_members: NonZeroUsize::MIN });
    c
}

impl Engine {
    pub(crate) fn new(settings: Settings, socket: UdpSocket, view: watch::Sender<Arc<Members>>) -> Engine {
        let rng = StdRng::from_seed(rand::random::<[u8; 32]>());
        let config = swim_config(&settings);
        let members = view.borrow().as_ref().clone();
        Engine {
            swim: Foca::new(settings.me, config, rng, PostcardCodec),
            rt: AccumulatingRuntime::new(),
            socket,
            key: settings.key,
            members,
            view,
            timers: BTreeMap::new(),
            timer_seq: 0,
            warned: HashMap::new(),
            dirty: false,
            outbox: Vec::new(),
            pending_reply: None,
        }
    }

    pub(crate) async fn run(mut self, mut requests: mpsc::Receiver<Request>, mut stop: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                got = self.socket.recv_from(&mut buf) => match got {
                    Ok((n, from)) => self.on_packet(from, &buf[..n]),
                    Err(e) => tracing::debug!("gossip receive: {e}"),
                },
                _ = tokio::time::sleep_until(next_timer.unwrap_or(far).into()) => self.fire_timers(),
                req = requests.recv() => match req {
                    Some(r) => self.on_request(r),
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
            self.drain();
            self.flush().await;
            if let Some(done) = self.pending_reply.take() {
                let _ = done.send(());
            }
        }
    }

    async fn flush(&mut self) {
        for (to, packet) in self.outbox.drain(..) {
            if let Err(e) = self.socket.send_to(&packet, to).await {
                tracing::debug!(%to, "gossip send: {e}");
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(e) = self.swim.handle_timer(timer, &mut self.rt) {
                tracing::debug!("gossip timer: {e}");
            }
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Announce(addr) => {
                let dst = MemberId { addr, incarnation: 0, name: String::new(), tags: Default::default() };
                if let Err(e) = self.swim.announce(dst, &mut self.rt) {
                    tracing::warn!(%addr, "gossip join: {e}");
                }
            }
            Request::Leave(done) => {
                let me = self.swim.identity().clone();
                self.announce_leave(&me);
                if let Err(e) = self.swim.leave_cluster(&mut self.rt) {
                    tracing::warn!("gossip leave: {e}");
                }
                self.pending_reply = Some(done);
            }
            Request::ForceLeave(name, reply) => {
                let res = match self.members.get(&name).map(|m| (m.id.clone(), m.status)) {
                    None => Err(format!("no member named {name:?} in the gossip pool")),
                    Some((_, Status::Alive)) => {
                        Err(format!("member {name:?} is alive; force-leave applies to failed members"))
                    }
                    Some((id, _)) => {
                        self.announce_leave(&id);
                        Ok(())
                    }
                };
                let _ = reply.send(res);
            }
        }
    }

    /// Tells every alive member that `id` leaves, and records it here.
    fn announce_leave(&mut self, id: &MemberId) {
        let body = serde_json::to_vec(id).unwrap_or_default();
        let packet = seal::seal(self.key.as_ref(), Kind::Leave, &body);
        let others: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|m| m.status == Status::Alive && m.id.addr != self.swim.identity().addr)
            .map(|m| m.id.addr)
            .collect();
        for addr in others {
            // Twice: a lost announcement makes a leave look like a failure.
            for _ in 0..2 {
                self.outbox.push((addr, packet.clone()));
            }
        }
        if self.members.left(id, Instant::now()) {
            tracing::info!(member = %id.name, addr = %id.addr, "member left");
            self.dirty = true;
        }
    }

    fn on_packet(&mut self, from: SocketAddr, packet: &[u8]) {
        match seal::open(self.key.as_ref(), packet) {
            Ok((Kind::Swim, body)) => {
                if let Err(e) = self.swim.handle_data(&body, &mut self.rt) {
                    tracing::debug!(%from, "gossip packet not handled: {e}");
                }
            }
            Ok((Kind::Leave, body)) => match serde_json::from_slice::<MemberId>(&body) {
                Ok(id) => {
                    if self.members.left(&id, Instant::now()) {
                        tracing::info!(member = %id.name, addr = %id.addr, "member left");
                        self.dirty = true;
                    }
                }
                Err(e) => tracing::debug!(%from, "malformed leave announcement: {e}"),
            },
            Ok((Kind::Refusal, body)) => {
                if self.may_warn(from, "refusal") {
                    let reason = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
                    tracing::error!(%from, "the member at {from} refused this agent's gossip: {reason}");
                }
            }
            Err(OpenError::NotGossip) => tracing::debug!(%from, "ignored a packet that is not gossip"),
            Err(e) => {
                if self.may_warn(from, "refused") {
                    tracing::error!(%from, "refused gossip from {from}: {e}");
                    self.refuse(from, &format!("{e}; every agent of a cluster needs the same -encrypt key"));
                }
            }
        }
    }

    /// Sends `reason` back in the clear, so the other side can log why it is not let in.
    fn refuse(&mut self, to: SocketAddr, reason: &str) {
        self.outbox.push((to, seal::seal(None, Kind::Refusal, reason.as_bytes())));
    }

    fn may_warn(&mut self, from: SocketAddr, what: &'static str) -> bool {
        let now = Instant::now();
        match self.warned.get(&(from, what)) {
            Some(at) if now.duration_since(*at) < WARN_EVERY => false,
            _ => {
                if self.warned.len() > 4096 {
                    self.warned.clear();
                }
                self.warned.insert((from, what), now);
                true
            }
        }
    }

    fn drain(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            self.outbox.push((to.addr, seal::seal(self.key.as_ref(), Kind::Swim, &data)));
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers.insert((now + after, self.timer_seq), timer);
        }
        while let Some(n) = self.rt.to_notify() {
            self.on_notification(n);
        }
        if self.dirty {
            self.dirty = false;
            self.view.send_replace(Arc::new(self.members.clone()));
        }
    }

    fn on_notification(&mut self, n: OwnedNotification<MemberId>) {
        let now = Instant::now();
        match n {
            OwnedNotification::MemberUp(id) | OwnedNotification::Rename(_, id) => self.member_up(&id, now),
            OwnedNotification::MemberDown(id) => {
                if self.members.down(&id, now) {
                    tracing::warn!(member = %id.name, addr = %id.addr, "member failed");
                    self.dirty = true;
                }
            }
            OwnedNotification::Rejoin(me) => {
                tracing::warn!(incarnation = me.incarnation, "the pool declared this agent down; rejoined");
                self.member_up(&me, now);
            }
            OwnedNotification::Idle => tracing::info!("no other member is reachable in the gossip pool"),
            OwnedNotification::Active => tracing::info!("gossip pool joined"),
            OwnedNotification::Defunct => tracing::warn!("this agent is out of the gossip pool"),
        }
    }

    fn member_up(&mut self, id: &MemberId, now: Instant) {
        match self.members.up(id, now) {
            Ok(true) => {
                tracing::info!(member = %id.name, addr = %id.addr, server = id.tags.server, "member alive");
                self.dirty = true;
            }
            Ok(false) => {}
            Err(c) => {
                if self.may_warn(c.newcomer.addr, "name") {
                    tracing::error!(
                        "refused member {} at {}: the node name is taken by the alive member at {}",
                        c.newcomer.name,
                        c.newcomer.addr,
                        c.holder.addr
                    );
                    self.refuse(
                        c.newcomer.addr,
                        &format!(
                            "node name {:?} is already taken by the alive member at {}; give this agent another -node name",
                            c.newcomer.name, c.holder.addr
                        ),
                    );
                }
            }
        }
    }
}
