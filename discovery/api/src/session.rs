//! `/v1/session/*`: Consul's sessions (create, destroy, info, node, list, renew), and the
//! clock the KV lock delay is measured with.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::ApiState;
use crate::respond::{ApiResult, blocking_read, json_response, read_opts, write};
use catalog::command::Command;
use catalog::duration::parse_go_duration;
use catalog::model::{Session, SessionBehavior};

/// Consul's bounds.
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(86_400);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
const DEFAULT_LOCK_DELAY_MS: u64 = 15_000;

/// The JSON Consul shows for a session.
pub fn view(s: &Session) -> Value {
    let service_checks: Vec<Value> = s.service_checks.iter().map(|id| json!({"ID": id, "Namespace": ""})).collect();
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay_ms * 1_000_000,
        "Behavior": match s.behavior { SessionBehavior::Release => "release", SessionBehavior::Delete => "delete" },
        "TTL": s.ttl,
        "NodeChecks": s.node_checks,
        "ServiceChecks": if service_checks.is_empty() { Value::Null } else { Value::Array(service_checks) },
        "Checks": s.node_checks.iter().chain(&s.service_checks).collect::<Vec<_>>(),
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// A field of a request body, matched case-insensitively (Consul's decoder does).
fn field<'a>(body: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v).filter(|v| !v.is_null())
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    let items = v.as_array().ok_or_else(|| format!("{what} must be a list"))?;
    items
        .iter()
        .map(|i| match i {
            Value::String(s) => Ok(s.clone()),
            // ServiceChecks: [{"ID": "...", "Namespace": ""}]
            Value::Object(m) => {
                field(m, "ID").and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("{what} needs an ID"))
            }
            other => Err(format!("{what} must hold check IDs, not {other}")),
        })
        .collect()
}

/// Consul's LockDelay: a Go duration string, or a number of nanoseconds (a number below
/// 1000 is taken as seconds, as Consul's `FixupLockDelay` does).
fn lock_delay_ms(v: &Value) -> Result<u64, String> {
    let d = match v {
        Value::String(s) => parse_go_duration(s, true).map_err(|e| format!("Invalid LockDelay: {e}"))?,
        Value::Number(n) => {
            let n = n.as_u64().ok_or_else(|| format!("Invalid LockDelay {n}: must be >= 0"))?;
            if n < 1000 { Duration::from_secs(n) } else { Duration::from_nanos(n) }
        }
        other => return Err(format!("Invalid LockDelay {other}")),
    };
    if d > MAX_LOCK_DELAY {
        return Err(format!("Invalid LockDelay {d:?}: at most {MAX_LOCK_DELAY:?}"));
    }
    Ok(d.as_millis() as u64)
}

/// Reads a `/v1/session/create` body into a session on `default_node` (pure).
pub fn decode_create(body: &[u8], default_node: &str, id: String) -> Result<Session, String> {
    let raw: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?
    };
    let map = raw.as_object().ok_or("Request decode failed: the body must be a JSON object")?;
    let text = |name: &str| field(map, name).and_then(Value::as_str).unwrap_or_default().to_string();
    let node = match text("Node") {
        n if n.is_empty() => default_node.to_string(),
        n => n,
    };
    let behavior = match text("Behavior").as_str() {
        "" | "release" => SessionBehavior::Release,
        "delete" => SessionBehavior::Delete,
        other => return Err(format!("Invalid Behavior setting '{other}'")),
    };
    let ttl = text("TTL");
    if !ttl.is_empty() {
        let d = parse_go_duration(&ttl, false).map_err(|e| format!("Request decode failed: TTL: {e}"))?;
        if d < MIN_TTL || d > MAX_TTL {
            return Err(format!("Invalid Session TTL '{ttl}', must be between [{MIN_TTL:?}={MAX_TTL:?}]"));
        }
    }
    // Without any checks field a session is tied to the node's serfHealth, as in Consul.
    let (node_checks, service_checks) =
        match (field(map, "Checks"), field(map, "NodeChecks"), field(map, "ServiceChecks")) {
            (None, None, None) => (vec!["serfHealth".to_string()], Vec::new()),
            (checks, node_checks, service_checks) => {
                let mut nc = match node_checks {
                    Some(v) => strings(v, "NodeChecks")?,
                    None => Vec::new(),
                };
                if let Some(v) = checks {
                    nc.extend(strings(v, "Checks")?);
                }
                let sc = match service_checks {
                    Some(v) => strings(v, "ServiceChecks")?,
                    None => Vec::new(),
                };
                nc.dedup();
                (nc, sc)
            }
        };
    let lock_delay_ms = match field(map, "LockDelay") {
        Some(v) => lock_delay_ms(v)?,
        None => DEFAULT_LOCK_DELAY_MS,
    };
    Ok(Session {
        id,
        name: text("Name"),
        node,
        node_checks,
        service_checks,
        lock_delay_ms,
        behavior,
        ttl,
        ..Default::default()
    })
}

/// A JSON answer that carries no index (a write's).
fn json_response_plain(v: Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([("content-type", "application/json")], v.to_string()).into_response()
}

pub async fn create(State(st): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> ApiResult {
    read_opts(&st, &raw)?;
    let id = uuid::Uuid::new_v4().to_string();
    let session = decode_create(&body, &st.agent.node_name, id.clone()).map_err(ApiError::BadRequest)?;
    write(&st, Command::SessionCreate { session }).await.map_err(|e| match e {
        // Consul answers a session the state refuses with 500.
        ApiError::BadRequest(m) => ApiError::Internal(m),
        other => other,
    })?;
    Ok(json_response_plain(json!({"ID": id})))
}

pub async fn destroy(State(st): State<ApiState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    read_opts(&st, &raw)?;
    write(&st, Command::SessionDestroy { id }).await?;
    Ok(json_response_plain(json!(true)))
}

pub async fn renew(State(st): State<ApiState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    match write(&st, Command::SessionRenew { id: id.clone() }).await {
        Ok(_) => {}
        Err(ApiError::BadRequest(m)) => return Err(ApiError::NotFound(m)),
        Err(e) => return Err(e),
    }
    let (found, index) = st.catalog.snapshot().session(&id);
    Ok(json_response(&st, index, &q, Value::Array(found.iter().map(view).collect())))
}

pub async fn info(State(st): State<ApiState>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (found, index) = blocking_read(&st, &q, |s| s.session(&id)).await?;
    Ok(json_response(&st, index, &q, Value::Array(found.iter().map(view).collect())))
}

pub async fn node(State(st): State<ApiState>, Path(node): Path<String>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (list, index) = blocking_read(&st, &q, |s| s.sessions(Some(&node))).await?;
    Ok(json_response(&st, index, &q, Value::Array(list.iter().map(view).collect())))
}

pub async fn list(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let (_, q) = read_opts(&st, &raw)?;
    let (list, index) = blocking_read(&st, &q, |s| s.sessions(None)).await?;
    Ok(json_response(&st, index, &q, Value::Array(list.iter().map(view).collect())))
}

/// When this agent saw each recent Raft index applied, so a lock delay that started at an
/// index can be measured in time (Consul keeps its lock delays in memory the same way).
#[derive(Clone, Default)]
pub struct AppliedClock {
    seen: Arc<Mutex<VecDeque<(u64, Instant)>>>,
}

/// How many applied indexes the clock remembers.
const CLOCK_DEPTH: usize = 8192;

impl AppliedClock {
    pub fn record(&self, index: u64) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.back().is_some_and(|(i, _)| *i >= index) {
                return;
            }
            if seen.len() == CLOCK_DEPTH {
                seen.pop_front();
            }
            seen.push_back((index, Instant::now()));
        }
    }

    /// When `index` (or the first index after it) was applied here; `None` when it is
    /// older than what is remembered.
    pub fn applied_at(&self, index: u64) -> Option<Instant> {
        let seen = self.seen.lock().ok()?;
        if seen.front().is_none_or(|(first, _)| *first > index) {
            return None;
        }
        seen.iter().find(|(i, _)| *i >= index).map(|(_, at)| *at)
    }

    /// The newest index recorded.
    pub fn newest(&self) -> Option<u64> {
        self.seen.lock().ok()?.back().map(|(i, _)| *i)
    }

    /// Follows the catalog, recording every applied index, until the catalog closes.
    pub async fn run(self, catalog: catalog::Catalog) {
        let mut rx = catalog.subscribe();
        loop {
            let index = rx.borrow_and_update().last_index();
            self.record(index);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Whether `key` is still inside a lock delay left by an invalidated session.
pub fn in_lock_delay(st: &ApiState, key: &str) -> bool {
    let Some(delay) = st.catalog.snapshot().lock_delay(key) else {
        return false;
    };
    match st.applied.applied_at(delay.since_index) {
        Some(at) => at.elapsed() < Duration::from_millis(delay.delay_ms),
        // Newer than the clock has recorded yet: it just happened. Older than it
        // remembers: long past any delay (60 s at most).
        None => st.applied.newest().is_some_and(|newest| delay.since_index > newest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_with_consul_defaults_and_spellings() {
        let s = decode_create(b"", "n1", "id".into()).expect("empty body");
        assert_eq!(
            (s.node.as_str(), s.lock_delay_ms, s.node_checks.clone()),
            ("n1", 15_000, vec!["serfHealth".into()])
        );
        let s = decode_create(
            br#"{"name": "lock", "lockdelay": "5s", "behavior": "delete", "ttl": "30s", "checks": ["serfHealth", "c1"]}"#,
            "n1",
            "id".into(),
        )
        .expect("valid");
        assert_eq!((s.lock_delay_ms, s.behavior, s.ttl.as_str()), (5_000, SessionBehavior::Delete, "30s"));
        assert_eq!(s.node_checks, ["serfHealth", "c1"]);
        let s = decode_create(br#"{"LockDelay": 2, "Checks": []}"#, "n1", "id".into()).expect("valid");
        assert_eq!((s.lock_delay_ms, s.node_checks.len()), (2_000, 0), "small numbers are seconds; [] means none");
        let s = decode_create(br#"{"ServiceChecks": [{"ID": "service:web"}]}"#, "n1", "id".into()).expect("valid");
        assert_eq!((s.node_checks.len(), s.service_checks.clone()), (0, vec!["service:web".to_string()]));
    }

    #[test]
    fn bad_create_bodies_say_what_is_wrong() {
        let e = decode_create(br#"{"TTL": "5s"}"#, "n1", "id".into()).expect_err("ttl");
        assert!(e.contains("Invalid Session TTL '5s'"), "{e}");
        let e = decode_create(br#"{"Behavior": "keep"}"#, "n1", "id".into()).expect_err("behavior");
        assert_eq!(e, "Invalid Behavior setting 'keep'");
        let e = decode_create(br#"{"LockDelay": "2m"}"#, "n1", "id".into()).expect_err("delay");
        assert!(e.contains("LockDelay"), "{e}");
    }

    #[test]
    fn applied_clock_finds_the_first_index_at_or_after() {
        let c = AppliedClock::default();
        assert!(c.applied_at(1).is_none());
        c.record(5);
        c.record(9);
        assert!(c.applied_at(4).is_none(), "older than remembered");
        assert!(c.applied_at(7).is_some_and(|t| Some(t) == c.applied_at(9)));
        assert!(c.applied_at(10).is_none());
    }
}
