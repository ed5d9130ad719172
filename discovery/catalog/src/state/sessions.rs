//! Sessions, KV locks and transactions in the state machine, with Consul's rules: a
//! session belongs to a node and is tied to some of its checks; when the node goes, one of
//! those checks turns critical or goes, or the session is destroyed or expires, it is
//! invalidated, and every lock it holds is released (or its key deleted, with behavior
//! `delete`). A lock taken with `?acquire=` bumps the key's LockIndex. A transaction's
//! operations apply all or nothing. Pure like the rest of the state.

use crate::command::{Outcome, TxnOp, TxnVerb};
use crate::model::{CheckStatus, KvEntry, Session, SessionBehavior};

use super::{CatalogState, T_KVS, T_SESSIONS};

/// Keys of the lock-delay table: a key whose lock was freed by an invalidation cannot be
/// acquired again for the session's LockDelay. The API enforces it (as Consul's leader
/// does, before the write), from the index the delay started at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockDelay {
    pub delay_ms: u64,
    /// The Raft index of the invalidation.
    pub since_index: u64,
}

impl CatalogState {
    pub(super) fn session_create(&mut self, idx: u64, session: &Session) -> Outcome {
        if session.id.is_empty() {
            return Outcome::Rejected("Missing session ID".into());
        }
        if self.sessions.contains_key(&session.id) {
            return Outcome::Rejected(format!("Session ID {:?} already exists", session.id));
        }
        if !self.nodes.contains_key(&session.node) {
            return Outcome::Rejected(format!("Missing node registration for {:?}", session.node));
        }
        for check_id in session.node_checks.iter().chain(&session.service_checks) {
            match self.checks.get(&(session.node.clone(), check_id.clone())) {
                None => return Outcome::Rejected(format!("Missing check '{check_id}' registration")),
                Some(c) if c.status == CheckStatus::Critical => {
                    return Outcome::Rejected(format!("Check '{check_id}' is in critical state"));
                }
                Some(_) => {}
            }
        }
        let record = Session { create_index: idx, modify_index: idx, renewals: 0, ..session.clone() };
        self.sessions.insert(session.id.clone(), record);
        self.bump(T_SESSIONS.into(), idx);
        Outcome::Applied
    }

    pub(super) fn session_renew(&mut self, id: &str) -> Outcome {
        match self.sessions.get_mut(id) {
            // No index moves: a renewal changes nothing a reader sees, only the leader's timer.
            Some(s) => {
                s.renewals += 1;
                Outcome::Applied
            }
            None => Outcome::Rejected(format!("Session id '{id}' not found")),
        }
    }

    /// Invalidates session `id` (a no-op when it is gone already).
    pub(super) fn session_invalidate(&mut self, idx: u64, id: &str) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        self.bump(T_SESSIONS.into(), idx);
        let held: Vec<String> = self.kv.iter().filter(|(_, e)| e.session == id).map(|(k, _)| k.clone()).collect();
        if held.is_empty() {
            return;
        }
        for key in held {
            match session.behavior {
                SessionBehavior::Release => {
                    if let Some(e) = self.kv.get_mut(&key) {
                        e.session.clear();
                        e.modify_index = idx;
                    }
                }
                SessionBehavior::Delete => {
                    self.kv.remove(&key);
                    self.tombstones.insert(key.clone(), idx);
                }
            }
            if session.lock_delay_ms > 0 {
                self.lock_delays.insert(key, LockDelay { delay_ms: session.lock_delay_ms, since_index: idx });
            }
        }
        self.bump(T_KVS.into(), idx);
    }

    /// Invalidates the sessions tied to check `check_id` on `node` (it went critical or away).
    pub(super) fn invalidate_sessions_of_check(&mut self, idx: u64, node: &str, check_id: &str) {
        let doomed: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.node == node && s.node_checks.iter().chain(&s.service_checks).any(|c| c == check_id))
            .map(|s| s.id.clone())
            .collect();
        for id in doomed {
            self.session_invalidate(idx, &id);
        }
    }

    /// Invalidates every session of `node` (it left the catalog).
    pub(super) fn invalidate_sessions_of_node(&mut self, idx: u64, node: &str) {
        let doomed: Vec<String> = self.sessions.values().filter(|s| s.node == node).map(|s| s.id.clone()).collect();
        for id in doomed {
            self.session_invalidate(idx, &id);
        }
    }

    /// `?acquire=session` (`acquire`) or `?release=session`. `Applied` when the lock was
    /// taken (or released) and the value written; `CasFailed` when it was not.
    pub(super) fn kv_lock(
        &mut self,
        idx: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
        acquire: bool,
    ) -> Outcome {
        if !self.sessions.contains_key(session) {
            return Outcome::Rejected(format!("invalid session {session:?}"));
        }
        let existing = self.kv.get(key);
        let holder = existing.map(|e| e.session.as_str()).unwrap_or("");
        let (new_session, lock_index) = if acquire {
            match holder {
                h if h == session => (session.to_string(), existing.map(|e| e.lock_index).unwrap_or(0)),
                "" => (session.to_string(), existing.map(|e| e.lock_index).unwrap_or(0) + 1),
                _ => return Outcome::CasFailed,
            }
        } else {
            if holder != session {
                return Outcome::CasFailed;
            }
            (String::new(), existing.map(|e| e.lock_index).unwrap_or(0))
        };
        self.put_entry(idx, key, value, flags, lock_index, new_session);
        Outcome::Applied
    }

    /// Applies a transaction's operations in order to `self`; the caller keeps the result
    /// only when every operation succeeded.
    pub(super) fn txn(&mut self, idx: u64, ops: &[TxnOp]) -> Outcome {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if let Err(why) = self.txn_op(idx, op, &mut results) {
                errors.push((i, why));
            }
        }
        if errors.is_empty() { Outcome::Txn(results) } else { Outcome::TxnFailed(errors) }
    }

    fn txn_op(&mut self, idx: u64, op: &TxnOp, results: &mut Vec<KvEntry>) -> Result<(), String> {
        let key = op.key.as_str();
        let current = || self.kv.get(key).cloned();
        // Writes return the entry without its value, as Consul does.
        let written = |s: &CatalogState| s.kv.get(key).map(|e| KvEntry { value: Vec::new(), ..e.clone() });
        match op.verb {
            TxnVerb::Set | TxnVerb::Cas => {
                let cas = (op.verb == TxnVerb::Cas).then_some(op.index);
                if self.kv_set(idx, key, &op.value, op.flags, cas) == Outcome::CasFailed {
                    return Err(format!("failed to set key {key:?}, index is stale"));
                }
                results.extend(written(self));
            }
            TxnVerb::Lock | TxnVerb::Unlock => {
                let acquire = op.verb == TxnVerb::Lock;
                match self.kv_lock(idx, key, &op.value, op.flags, &op.session, acquire) {
                    Outcome::Applied => results.extend(written(self)),
                    Outcome::Rejected(why) => return Err(why),
                    _ if acquire => return Err(format!("failed to lock key {key:?}, lock is already held")),
                    _ => {
                        return Err(format!(
                            "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                        ));
                    }
                }
            }
            TxnVerb::Get => results.push(current().ok_or_else(|| format!("key {key:?} doesn't exist"))?),
            TxnVerb::GetTree => results.extend(self.kv_list(key).0),
            TxnVerb::CheckIndex => {
                let e = current().ok_or_else(|| format!("key {key:?} doesn't exist"))?;
                if e.modify_index != op.index {
                    return Err(format!("current modify index {} != {}", e.modify_index, op.index));
                }
                results.push(e);
            }
            TxnVerb::CheckSession => {
                let e = current().ok_or_else(|| format!("key {key:?} doesn't exist"))?;
                if e.session != op.session {
                    return Err(format!(
                        "failed session check for key {key:?}, current session {:?} != {:?}",
                        e.session, op.session
                    ));
                }
                results.push(e);
            }
            TxnVerb::CheckNotExists => {
                if self.kv.contains_key(key) {
                    return Err(format!("key {key:?} exists"));
                }
            }
            TxnVerb::Delete => {
                self.kv_delete(idx, key, false, None);
            }
            TxnVerb::DeleteTree => {
                self.kv_delete(idx, key, true, None);
            }
            TxnVerb::DeleteCas => {
                if self.kv_delete(idx, key, false, Some(op.index)) == Outcome::CasFailed {
                    return Err(format!("failed to delete key {key:?}, index is stale"));
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- queries --

    /// One session (`None` when unknown), and the sessions table's index.
    pub fn session(&self, id: &str) -> (Option<Session>, u64) {
        (self.sessions.get(id).cloned(), self.index_of(T_SESSIONS))
    }

    /// Every session, or those of `node`.
    pub fn sessions(&self, node: Option<&str>) -> (Vec<Session>, u64) {
        let list = self.sessions.values().filter(|s| node.is_none_or(|n| s.node == n)).cloned().collect();
        (list, self.index_of(T_SESSIONS))
    }

    /// The lock delay on `key` left by an invalidation, if any.
    pub fn lock_delay(&self, key: &str) -> Option<LockDelay> {
        self.lock_delays.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, Outcome, TxnOp, TxnVerb};
    use crate::model::{CheckStatus, HealthCheck, Node, Session, SessionBehavior};
    use crate::state::CatalogState;

    fn with_node() -> CatalogState {
        let mut s = CatalogState::default();
        let node = Node { node: "n1".into(), address: "10.0.0.1".into(), ..Default::default() };
        let check = HealthCheck {
            node: "n1".into(),
            check_id: "serfHealth".into(),
            status: CheckStatus::Passing,
            ..Default::default()
        };
        let cmd = Command::Register {
            node,
            service: None,
            checks: vec![check],
            skip_node_update: false,
            replace_service_checks: false,
        };
        assert_eq!(s.apply(1, &cmd), Outcome::Applied);
        s
    }

    fn session(id: &str, behavior: SessionBehavior) -> Session {
        Session {
            id: id.into(),
            node: "n1".into(),
            node_checks: vec!["serfHealth".into()],
            lock_delay_ms: 15_000,
            behavior,
            ..Default::default()
        }
    }

    fn acquire(key: &str, sid: &str, value: &str) -> Command {
        Command::KvLock {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            flags: 0,
            session: sid.into(),
            acquire: true,
        }
    }

    #[test]
    fn a_lock_is_held_by_one_session_and_bumps_lock_index() {
        let mut s = with_node();
        s.apply(2, &Command::SessionCreate { session: session("a", SessionBehavior::Release) });
        s.apply(3, &Command::SessionCreate { session: session("b", SessionBehavior::Release) });
        assert_eq!(s.apply(4, &acquire("lock", "a", "1")), Outcome::Applied);
        assert_eq!(s.apply(5, &acquire("lock", "b", "2")), Outcome::CasFailed, "held by a");
        assert_eq!(s.apply(6, &acquire("lock", "a", "3")), Outcome::Applied, "re-acquire by the holder");
        let e = s.kv_get("lock").0.expect("key");
        assert_eq!((e.lock_index, e.session.as_str(), e.value.as_slice()), (1, "a", &b"3"[..]));
        let release = |sid: &str| Command::KvLock {
            key: "lock".into(),
            value: vec![],
            flags: 0,
            session: sid.into(),
            acquire: false,
        };
        assert_eq!(s.apply(7, &release("b")), Outcome::CasFailed, "b does not hold it");
        assert_eq!(s.apply(8, &release("a")), Outcome::Applied);
        assert_eq!(s.apply(9, &acquire("lock", "b", "4")), Outcome::Applied);
        assert_eq!(s.kv_get("lock").0.expect("key").lock_index, 2);
        assert!(
            matches!(s.apply(10, &acquire("lock", "zz", "")), Outcome::Rejected(m) if m.contains("invalid session"))
        );
    }

    #[test]
    fn a_critical_check_invalidates_its_sessions_and_frees_their_locks() {
        let mut s = with_node();
        s.apply(2, &Command::SessionCreate { session: session("rel", SessionBehavior::Release) });
        s.apply(3, &Command::SessionCreate { session: session("del", SessionBehavior::Delete) });
        s.apply(4, &acquire("a", "rel", "x"));
        s.apply(5, &acquire("b", "del", "y"));
        let fail = Command::UpdateCheck {
            node: "n1".into(),
            check_id: "serfHealth".into(),
            status: CheckStatus::Critical,
            output: None,
        };
        assert_eq!(s.apply(6, &fail), Outcome::Applied);
        assert_eq!(s.sessions(None).0.len(), 0);
        let a = s.kv_get("a").0.expect("released, kept");
        assert_eq!((a.session.as_str(), a.modify_index), ("", 6));
        assert!(s.kv_get("b").0.is_none(), "behavior delete removed the key");
        assert_eq!(s.lock_delay("a").map(|d| (d.delay_ms, d.since_index)), Some((15_000, 6)));
        // A session on a critical check cannot be created.
        let out = s.apply(7, &Command::SessionCreate { session: session("late", SessionBehavior::Release) });
        assert!(matches!(out, Outcome::Rejected(m) if m.contains("critical")));
    }

    #[test]
    fn deregistering_the_node_invalidates_its_sessions() {
        let mut s = with_node();
        s.apply(2, &Command::SessionCreate { session: session("a", SessionBehavior::Release) });
        s.apply(3, &acquire("k", "a", "v"));
        s.apply(4, &Command::DeregisterNode { node: "n1".into() });
        assert!(s.session("a").0.is_none());
        assert_eq!(s.kv_get("k").0.expect("kept").session, "");
        let out = s.apply(5, &Command::SessionCreate { session: session("b", SessionBehavior::Release) });
        assert!(matches!(out, Outcome::Rejected(m) if m.contains("Missing node")));
    }

    fn op(verb: TxnVerb, key: &str, value: &str, index: u64) -> TxnOp {
        TxnOp { verb, key: key.into(), value: value.as_bytes().to_vec(), flags: 0, index, session: String::new() }
    }

    #[test]
    fn a_failing_transaction_applies_nothing() {
        let mut s = with_node();
        s.apply(2, &Command::KvSet { key: "k".into(), value: b"old".to_vec(), flags: 0, cas: None });
        let ops =
            vec![op(TxnVerb::Set, "a", "1", 0), op(TxnVerb::Delete, "k", "", 0), op(TxnVerb::CheckIndex, "k", "", 99)];
        let out = s.apply(3, &Command::Txn(ops));
        assert!(matches!(&out, Outcome::TxnFailed(e) if e.len() == 1 && e[0].0 == 2), "{out:?}");
        assert!(s.kv_get("a").0.is_none(), "the set was rolled back");
        assert_eq!(s.kv_get("k").0.expect("kept").value, b"old");
        let ops = vec![op(TxnVerb::Set, "a", "1", 0), op(TxnVerb::Cas, "k", "new", 2), op(TxnVerb::Get, "k", "", 0)];
        let Outcome::Txn(results) = s.apply(4, &Command::Txn(ops)) else { panic!("applied") };
        assert_eq!(results.len(), 3);
        assert_eq!(results[2].value, b"new");
        assert!(results[0].value.is_empty(), "writes return entries without values");
    }
}
