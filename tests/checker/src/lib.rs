//! Checks a recorded history of operations on registers (KV keys) for linearizability.
//!
//! The algorithm is the one of Wing & Gong with Lowe's memoization, as Porcupine uses it:
//! walk the history's call and return events in time order; at a call, try to linearize
//! the operation there (if the model accepts it and the resulting (set of linearized
//! operations, state) was not seen before); at a return whose call is not linearized yet,
//! backtrack. A history is linearizable when every operation finds a place. Keys are
//! independent registers, so each is checked on its own (P-compositionality).
//!
//! Operations whose outcome is unknown (a timeout, a connection cut, a 5xx after the write
//! may have been proposed) have no return: they may take effect at any point after their
//! call, or never (placed after everything else, where they change nothing observed).
//! Unknown reads carry no information and are dropped.

use std::collections::{BTreeMap, HashSet};

/// A value written to a register. Writers make every value unique, so a compare-and-set
/// by the index a read returned is a compare-and-set by that read's value.
pub type Value = Option<String>;

/// One operation as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read that returned this value (`None`: the key did not exist).
    Read(Value),
    /// An unconditional write.
    Write(String),
    /// A compare-and-set from `from` to `to`; `ok` says whether it answered success.
    Cas { from: Value, to: String, ok: bool },
}

/// The outcome of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It completed (a write acknowledged, a read answered, a CAS answered true or false).
    Ok,
    /// It may or may not have taken effect.
    Unknown,
}

/// A recorded operation: on which key, by which client, when it was invoked and when it
/// completed (any monotonic clock, e.g. nanoseconds since the run started).
#[derive(Clone, Debug)]
pub struct Event {
    pub key: String,
    pub client: usize,
    pub op: Op,
    pub outcome: Outcome,
    pub invoke: u64,
    pub complete: u64,
}

/// Where a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// How many operations on that key were checked.
    pub ops: usize,
}

/// Checks every key's history. `Err` lists the keys whose history is not linearizable.
pub fn check(history: &[Event]) -> Result<(), Vec<Violation>> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    let bad: Vec<Violation> = by_key
        .into_iter()
        .filter_map(|(key, events)| {
            let ops: Vec<&Event> = events
                .into_iter()
                .filter(|e| !(e.outcome == Outcome::Unknown && matches!(e.op, Op::Read(_))))
                .collect();
            (!linearizable(&ops)).then(|| Violation { key: key.to_string(), ops: ops.len() })
        })
        .collect();
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

/// The register's step function: whether the operation may take effect in `state`, and
/// the state after. A CAS of unknown outcome that does not match changes nothing (it
/// failed, or never ran), whatever its `ok` says.
fn step(state: &Value, e: &Event) -> Option<Value> {
    match &e.op {
        Op::Read(v) => (v == state).then(|| state.clone()),
        Op::Write(v) => Some(Some(v.clone())),
        Op::Cas { from, to, .. } if e.outcome == Outcome::Unknown => {
            Some(if from == state { Some(to.clone()) } else { state.clone() })
        }
        Op::Cas { from, to, ok: true } => (from == state).then(|| Some(to.clone())),
        Op::Cas { from, ok: false, .. } => (from != state).then(|| state.clone()),
    }
}

#[derive(Clone, Copy)]
struct Node {
    /// Operation index; a call or its return.
    op: usize,
    is_call: bool,
    /// For a call: the index of its return node.
    matched: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// A doubly linked list of call/return events in time order, with a head sentinel.
struct Events {
    nodes: Vec<Node>,
}

impl Events {
    fn new(ops: &[&Event]) -> Events {
        // Sort key: time, then returns before calls at the same instant (so an operation
        // that completed at t is not taken as concurrent with one invoked at t).
        let mut points: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, e) in ops.iter().enumerate() {
            points.push((e.invoke, 1, i, true));
            let ret = if e.outcome == Outcome::Unknown { u64::MAX } else { e.complete.max(e.invoke) };
            points.push((ret, 0, i, false));
        }
        points.sort();
        let mut nodes = vec![Node { op: NIL, is_call: false, matched: NIL, prev: NIL, next: NIL }];
        let mut ret_of = vec![NIL; ops.len()];
        for (k, (_, _, op, is_call)) in points.iter().enumerate() {
            let idx = k + 1;
            nodes.push(Node { op: *op, is_call: *is_call, matched: NIL, prev: idx - 1, next: NIL });
            nodes[idx - 1].next = idx;
            if !is_call {
                ret_of[*op] = idx;
            }
        }
        for n in nodes.iter_mut().skip(1) {
            if n.is_call {
                n.matched = ret_of[n.op];
            }
        }
        Events { nodes }
    }

    fn first(&self) -> usize {
        self.nodes[0].next
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.nodes[i].prev, self.nodes[i].next);
        self.nodes[p].next = n;
        if n != NIL {
            self.nodes[n].prev = p;
        }
    }

    fn relink(&mut self, i: usize) {
        let (p, n) = (self.nodes[i].prev, self.nodes[i].next);
        self.nodes[p].next = i;
        if n != NIL {
            self.nodes[n].prev = i;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].matched);
    }

    /// Puts them back (in the reverse order of `lift`).
    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].matched);
        self.relink(call);
    }
}

fn linearizable(ops: &[&Event]) -> bool {
    let mut events = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Value = None;
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut entry = events.first();
    while entry != NIL {
        let node = events.nodes[entry];
        if node.is_call {
            if let Some(next_state) = step(&state, ops[node.op]) {
                let mut with = linearized.clone();
                with[node.op / 64] |= 1 << (node.op % 64);
                if seen.insert((with.clone(), next_state.clone())) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = with;
                    events.lift(entry);
                    entry = events.first();
                    continue;
                }
            }
            entry = node.next;
        } else {
            // A return whose call could not be placed before it: undo the last choice.
            let Some((call, previous)) = stack.pop() else { return false };
            let op = events.nodes[call].op;
            state = previous;
            linearized[op / 64] &= !(1 << (op % 64));
            events.unlift(call);
            entry = events.nodes[call].next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: usize, op: Op, invoke: u64, complete: u64) -> Event {
        Event { key: "k".into(), client, op, outcome: Outcome::Ok, invoke, complete }
    }

    fn unknown(client: usize, op: Op, invoke: u64) -> Event {
        Event { key: "k".into(), client, op, outcome: Outcome::Unknown, invoke, complete: u64::MAX }
    }

    fn w(v: &str) -> Op {
        Op::Write(v.into())
    }

    fn r(v: Option<&str>) -> Op {
        Op::Read(v.map(String::from))
    }

    fn cas(from: Option<&str>, to: &str, ok: bool) -> Op {
        Op::Cas { from: from.map(String::from), to: to.into(), ok }
    }

    #[test]
    fn sequential_and_concurrent_histories_that_are_linearizable() {
        let h = [
            ev(0, r(None), 0, 1),
            ev(0, w("a"), 2, 3),
            ev(1, r(Some("a")), 4, 5),
            ev(1, cas(Some("a"), "b", true), 6, 7),
        ];
        assert_eq!(check(&h), Ok(()));
        // A read concurrent with a write may see either value.
        let h = [ev(0, w("a"), 0, 10), ev(1, r(None), 1, 2), ev(2, r(Some("a")), 3, 4), ev(1, r(Some("a")), 11, 12)];
        assert_eq!(check(&h), Ok(()));
        // Concurrent CASes from the same value: exactly one wins.
        let h = [ev(0, w("a"), 0, 1), ev(1, cas(Some("a"), "b", true), 2, 5), ev(2, cas(Some("a"), "c", false), 3, 6)];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn known_violations_are_found() {
        // A stale read: the write completed before the read began.
        let h = [ev(0, w("a"), 0, 1), ev(1, r(None), 2, 3)];
        assert_eq!(check(&h), Err(vec![Violation { key: "k".into(), ops: 2 }]));
        // A read of a value nobody wrote.
        assert!(check(&[ev(0, r(Some("ghost")), 0, 1)]).is_err());
        // Two CASes from the same value both succeed.
        let h = [ev(0, w("a"), 0, 1), ev(1, cas(Some("a"), "b", true), 2, 5), ev(2, cas(Some("a"), "c", true), 3, 6)];
        assert!(check(&h).is_err());
        // A value goes back in time: b then a, though a was overwritten before b's read.
        let h = [ev(0, w("a"), 0, 1), ev(0, w("b"), 2, 3), ev(1, r(Some("b")), 4, 5), ev(2, r(Some("a")), 6, 7)];
        assert!(check(&h).is_err());
        // A failed CAS whose expected value was certainly there.
        let h = [ev(0, w("a"), 0, 1), ev(1, cas(Some("a"), "b", false), 2, 3)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_never() {
        // An unknown write seen later by a read: it took effect.
        let h = [unknown(0, w("a"), 0), ev(1, r(Some("a")), 5, 6)];
        assert_eq!(check(&h), Ok(()));
        // An unknown write nobody saw: it may never have happened.
        let h = [unknown(0, w("a"), 0), ev(1, r(None), 5, 6), ev(1, r(None), 7, 8)];
        assert_eq!(check(&h), Ok(()));
        // But it cannot be undone once seen: None after a read of "a" is a violation.
        let h = [unknown(0, w("a"), 0), ev(1, r(Some("a")), 5, 6), ev(1, r(None), 7, 8)];
        assert!(check(&h).is_err());
        // An unknown CAS may have applied...
        let h = [ev(0, w("a"), 0, 1), unknown(1, cas(Some("a"), "b", true), 2), ev(2, r(Some("b")), 5, 6)];
        assert_eq!(check(&h), Ok(()));
        // ...or not, and then nothing changed.
        let h = [ev(0, w("a"), 0, 1), unknown(1, cas(Some("x"), "b", true), 2), ev(2, r(Some("a")), 5, 6)];
        assert_eq!(check(&h), Ok(()));
        // An unknown read is no evidence at all.
        let h = [ev(0, w("a"), 0, 1), unknown(1, r(Some("zzz")), 2)];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn keys_are_independent_and_a_long_history_checks_quickly() {
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..400 {
            let key = format!("k{}", i % 4);
            let v = format!("v{i}");
            h.push(Event {
                key: key.clone(),
                client: i % 5,
                op: Op::Write(v.clone()),
                outcome: Outcome::Ok,
                invoke: t,
                complete: t + 3,
            });
            h.push(Event {
                key,
                client: (i + 1) % 5,
                op: Op::Read(Some(v)),
                outcome: Outcome::Ok,
                invoke: t + 4,
                complete: t + 6,
            });
            t += 5;
        }
        let start = std::time::Instant::now();
        assert_eq!(check(&h), Ok(()));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // One wrong read among them is found, on its key only.
        h[101].op = Op::Read(Some("v7".into()));
        let bad = check(&h).expect_err("violation");
        assert_eq!(bad.len(), 1);
    }
}
