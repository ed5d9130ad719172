//! Who is in the pool: the identity every member gossips, and the membership view built
//! from foca's notifications and leave announcements (alive, failed, left), keyed by
//! node name as Serf's is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A member as it introduces itself. Two identities with the same address are the same
/// member; the higher `incarnation` is the newer one (a restart, or a rejoin after being
/// declared down).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberId {
    /// Where its gossip is received.
    pub addr: SocketAddr,
    pub incarnation: u64,
    /// The node name (`-node`).
    pub name: String,
    pub tags: Tags,
}

/// What a member tells about itself (Serf's tags).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// A Raft voter (Consul's `role: consul`) rather than a client agent.
    pub server: bool,
    pub datacenter: String,
    /// The node ID (a UUID).
    pub id: String,
    /// `host:port` of its Raft port.
    pub raft_addr: String,
    pub build: String,
}

impl foca::Identity for MemberId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(MemberId { incarnation: self.incarnation.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// A member's state as Serf reports it (`/v1/agent/members` `Status`: 1 alive, 3 left,
/// 4 failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Alive,
    Left,
    Failed,
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Alive => 1,
            Status::Left => 3,
            Status::Failed => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Left => "left",
            Status::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    pub status: Status,
    /// When the status last changed.
    pub since: Instant,
}

/// The membership view. Cheap to clone; published through a watch channel.
#[derive(Clone, Debug, Default)]
pub struct Members {
    by_name: BTreeMap<String, Member>,
}

/// A second member claimed a name another alive member holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameConflict {
    pub holder: MemberId,
    pub newcomer: MemberId,
}

impl Members {
    pub fn new(me: MemberId, now: Instant) -> Members {
        let mut m = Members::default();
        m.by_name.insert(me.name.clone(), Member { id: me, status: Status::Alive, since: now });
        m
    }

    pub fn get(&self, name: &str) -> Option<&Member> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.by_name.values()
    }

    /// How many members are alive, this one included.
    pub fn alive(&self) -> usize {
        self.by_name.values().filter(|m| m.status == Status::Alive).count()
    }

    /// A member is up (new, back, or restarted). A name held by another alive member at
    /// another address is refused; the same identity after its leave stays left.
    pub fn up(&mut self, id: &MemberId, now: Instant) -> Result<bool, Box<NameConflict>> {
        match self.by_name.get_mut(&id.name) {
            Some(m) if m.id == *id && m.status != Status::Failed => Ok(false),
            Some(m) if m.id.addr != id.addr && m.status == Status::Alive => {
                Err(Box::new(NameConflict { holder: m.id.clone(), newcomer: id.clone() }))
            }
            Some(m) if m.id.addr == id.addr && m.id.incarnation > id.incarnation => Ok(false),
            _ => {
                self.by_name.insert(id.name.clone(), Member { id: id.clone(), status: Status::Alive, since: now });
                Ok(true)
            }
        }
    }

    /// foca declared `id` down: failed, unless it said it was leaving.
    pub fn down(&mut self, id: &MemberId, now: Instant) -> bool {
        match self.by_name.get_mut(&id.name) {
            Some(m) if m.id.addr == id.addr && m.id.incarnation <= id.incarnation && m.status == Status::Alive => {
                m.id = id.clone();
                m.status = Status::Failed;
                m.since = now;
                true
            }
            _ => false,
        }
    }

    /// `id` announced it leaves (or `force-leave` moved it to left).
    pub fn left(&mut self, id: &MemberId, now: Instant) -> bool {
        match self.by_name.get_mut(&id.name) {
            Some(m) if m.id.addr == id.addr && m.id.incarnation <= id.incarnation && m.status != Status::Left => {
                m.id = id.clone();
                m.status = Status::Left;
                m.since = now;
                true
            }
            Some(_) => false,
            None => {
                self.by_name.insert(id.name.clone(), Member { id: id.clone(), status: Status::Left, since: now });
                true
            }
        }
    }

    /// Forgets a member (reaped after `reconnect_timeout`).
    pub fn forget(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, port: u16, incarnation: u64) -> MemberId {
        MemberId {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            incarnation,
            name: name.into(),
            tags: Tags::default(),
        }
    }

    fn status(m: &Members, name: &str) -> Option<Status> {
        m.get(name).map(|m| m.status)
    }

    #[test]
    fn a_member_fails_comes_back_and_leaves() {
        let now = Instant::now();
        let mut m = Members::new(id("me", 1, 0), now);
        assert_eq!(m.up(&id("a", 2, 5), now), Ok(true));
        assert_eq!(m.up(&id("a", 2, 5), now), Ok(false), "already known");
        assert_eq!(m.alive(), 2);
        assert!(m.down(&id("a", 2, 5), now));
        assert_eq!(status(&m, "a"), Some(Status::Failed));
        assert!(!m.down(&id("a", 2, 5), now), "already failed");
        // The same identity, up again (it refuted the suspicion), or a restart.
        assert_eq!(m.up(&id("a", 2, 5), now), Ok(true));
        assert_eq!(status(&m, "a"), Some(Status::Alive));
        assert!(m.left(&id("a", 2, 5), now));
        assert!(!m.down(&id("a", 2, 5), now), "a member that left does not fail");
        assert_eq!(status(&m, "a"), Some(Status::Left));
        assert_eq!(m.up(&id("a", 2, 5), now), Ok(false), "stale gossip does not revive a leave");
        assert_eq!(m.up(&id("a", 2, 6), now), Ok(true), "a restart does");
        assert_eq!(status(&m, "a"), Some(Status::Alive));
    }

    #[test]
    fn an_older_identity_never_overrides_a_newer_one() {
        let now = Instant::now();
        let mut m = Members::new(id("me", 1, 0), now);
        assert_eq!(m.up(&id("a", 2, 7), now), Ok(true));
        assert!(!m.down(&id("a", 2, 6), now));
        assert_eq!(m.up(&id("a", 2, 6), now), Ok(false));
        assert_eq!(m.get("a").map(|x| x.id.incarnation), Some(7));
    }

    #[test]
    fn a_second_member_with_a_taken_name_is_refused() {
        let now = Instant::now();
        let mut m = Members::new(id("me", 1, 0), now);
        assert_eq!(m.up(&id("web", 2, 1), now), Ok(true));
        let e = m.up(&id("web", 3, 1), now).expect_err("duplicate name");
        assert_eq!(e.holder.addr.port(), 2);
        assert_eq!(e.newcomer.addr.port(), 3);
        // Once the holder has failed, the name may move (a host replaced by another).
        assert!(m.down(&id("web", 2, 1), now));
        assert_eq!(m.up(&id("web", 3, 1), now), Ok(true));
        assert_eq!(m.get("web").map(|x| x.id.addr.port()), Some(3));
    }
}
