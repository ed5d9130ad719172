//! The leader's session TTL timers. A session with a TTL must be renewed
//! (`/v1/session/renew`, a Raft write that bumps its renewal count); the leader watches
//! the counts and invalidates a session not renewed for twice its TTL, as Consul's leader
//! does. A new leader starts every timer afresh, so a failover never expires a session
//! early. Timers live in memory only, like Consul's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use catalog::command::Command;
use catalog::duration::parse_go_duration;
use catalog::{Catalog, Cluster};

/// Consul waits this many TTLs before invalidating.
const TTL_MULTIPLIER: u32 = 2;
const TICK: Duration = Duration::from_millis(250);

pub struct SessionTtl {
    pub cluster: Arc<dyn Cluster>,
    pub catalog: Catalog,
    /// This agent's Raft address: the timers run while it leads.
    pub raft_addr: String,
}

/// One pass of the timers (pure): updates `timers` from the sessions' renewal counts at
/// `now` and returns the sessions to invalidate.
pub fn expired(
    timers: &mut HashMap<String, (u64, Instant)>,
    sessions: &[catalog::model::Session],
    now: Instant,
) -> Vec<String> {
    timers.retain(|id, _| sessions.iter().any(|s| &s.id == id));
    let mut out = Vec::new();
    for s in sessions {
        let Ok(ttl) = parse_go_duration(&s.ttl, false) else { continue };
        if ttl.is_zero() {
            continue;
        }
        let timer = timers.entry(s.id.clone()).or_insert((s.renewals, now));
        if timer.0 != s.renewals {
            *timer = (s.renewals, now);
        }
        if now.duration_since(timer.1) > ttl * TTL_MULTIPLIER {
            out.push(s.id.clone());
        }
    }
    out
}

impl SessionTtl {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut timers: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let leading = self.cluster.leader_status().leader_addr.as_deref() == Some(self.raft_addr.as_str());
            if !leading {
                timers.clear();
                continue;
            }
            let (sessions, _) = self.catalog.snapshot().sessions(None);
            for id in expired(&mut timers, &sessions, Instant::now()) {
                match self.cluster.write(Command::SessionDestroy { id: id.clone() }).await {
                    Ok(_) => tracing::info!(session = %id, "session TTL expired: invalidated"),
                    Err(e) => tracing::warn!(session = %id, "cannot invalidate an expired session: {e}"),
                }
                timers.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::model::Session;

    #[test]
    fn a_session_expires_after_twice_its_ttl_without_renewal() {
        let t0 = Instant::now();
        let mut s = Session { id: "a".into(), ttl: "10s".into(), ..Default::default() };
        let untimed = Session { id: "b".into(), ..Default::default() };
        let mut timers = HashMap::new();
        assert!(expired(&mut timers, &[s.clone(), untimed.clone()], t0).is_empty());
        assert!(expired(&mut timers, &[s.clone()], t0 + Duration::from_secs(19)).is_empty());
        s.renewals = 1;
        assert!(expired(&mut timers, &[s.clone()], t0 + Duration::from_secs(19)).is_empty(), "renewed");
        assert!(expired(&mut timers, &[s.clone()], t0 + Duration::from_secs(38)).is_empty());
        assert_eq!(expired(&mut timers, &[s.clone()], t0 + Duration::from_secs(40)), ["a"]);
        assert!(expired(&mut timers, &[], t0).is_empty() && timers.is_empty(), "gone sessions lose their timers");
    }
}
