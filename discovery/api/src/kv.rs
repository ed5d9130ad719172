//! `/v1/kv/*`: the key/value store: reads (single, recursive, keys), writes with
//! check-and-set, flags and session locks, deletes (single, recursive, cas).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::query::Params;
use catalog::command::Command;
use catalog::model::MAX_KV_VALUE_BYTES;

use crate::respond::*;
use crate::{ApiState, session, views};

pub(crate) async fn kv_get(st: ApiState, key: String, raw: Option<String>) -> ApiResult {
    let (p, q) = read_opts(&st, &raw)?;
    let not_found =
        |index: u64| -> Response { (StatusCode::NOT_FOUND, meta_headers(&st, index, None), "").into_response() };
    let ok = |index: u64, body: Value| -> Response {
        let mut h = meta_headers(&st, index, None);
        h.insert("content-type", HeaderValue::from_static("application/json"));
        (StatusCode::OK, h, body.to_string()).into_response()
    };
    if p.flag("keys")? {
        let sep = p.get("separator").or_else(|| p.get("seperator")).map(str::to_string);
        let (keys, index) = blocking_read(&st, &q, |s| s.kv_keys(&key, sep.as_deref())).await?;
        if keys.is_empty() && !key.is_empty() {
            return Ok(not_found(index));
        }
        return Ok(ok(index, json!(keys)));
    }
    if p.flag("recurse")? {
        let (list, index) = blocking_read(&st, &q, |s| s.kv_list(&key)).await?;
        if list.is_empty() {
            return Ok(not_found(index));
        }
        return Ok(ok(index, Value::Array(list.iter().map(views::kv_entry).collect())));
    }
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let (entry, index) = blocking_read(&st, &q, |s| s.kv_get(&key)).await?;
    let Some(entry) = entry else {
        return Ok(not_found(index));
    };
    if p.flag("raw")? {
        let mut h = meta_headers(&st, index, None);
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        return Ok((StatusCode::OK, h, entry.value).into_response());
    }
    Ok(ok(index, json!([views::kv_entry(&entry)])))
}

pub(crate) async fn kv_put(st: ApiState, key: String, raw: Option<String>, body: Bytes) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    check_dc(&st, &p)?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let flags = p.uint("flags", "flags")?.unwrap_or(0);
    let cas = p.uint("cas", "cas index")?;
    if body.len() > MAX_KV_VALUE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "Value too large: {} bytes, max size: {MAX_KV_VALUE_BYTES} bytes",
            body.len()
        )));
    }
    let (acquire, release) = (p.get("acquire"), p.get("release"));
    if let Some(session) = acquire.or(release) {
        if acquire.is_some() && release.is_some() {
            return Err(ApiError::BadRequest("Conflicting flags: ?acquire and ?release cannot be combined".into()));
        }
        if cas.is_some() {
            return Err(ApiError::BadRequest(
                "Conflicting flags: ?cas cannot be combined with ?acquire or ?release".into(),
            ));
        }
        if session.is_empty() {
            return Err(ApiError::BadRequest("Missing session ID for ?acquire or ?release".into()));
        }
        // Consul checks the lock delay before the write, on the leader; here on the agent
        // the request reached, which applied the invalidation at the same index.
        if acquire.is_some() && session::in_lock_delay(&st, &key) {
            return Ok(json_bool(false));
        }
        let cmd = Command::KvLock {
            key,
            value: body.to_vec(),
            flags,
            session: session.to_string(),
            acquire: acquire.is_some(),
        };
        let w = write(&st, cmd).await.map_err(|e| match e {
            ApiError::BadRequest(m) => ApiError::Internal(m),
            other => other,
        })?;
        return Ok(written_bool(&w));
    }
    let w = write(&st, Command::KvSet { key, value: body.to_vec(), flags, cas }).await?;
    Ok(written_bool(&w))
}

pub(crate) async fn kv_delete(st: ApiState, key: String, raw: Option<String>) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    check_dc(&st, &p)?;
    let recurse = p.flag("recurse")?;
    let cas = p.uint("cas", "cas index")?;
    if recurse && cas.is_some() {
        return Err(ApiError::BadRequest("Conflicting flags: ?recurse and ?cas cannot be combined".into()));
    }
    if key.is_empty() && !recurse {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let w = write(&st, Command::KvDelete { key, recurse, cas }).await?;
    Ok(written_bool(&w))
}

pub(crate) async fn kv_get_key(
    State(st): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    kv_get(st, key, raw).await
}
pub(crate) async fn kv_get_root(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    kv_get(st, String::new(), raw).await
}
pub(crate) async fn kv_put_key(
    State(st): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult {
    kv_put(st, key, raw, body).await
}
pub(crate) async fn kv_put_root(State(st): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> ApiResult {
    kv_put(st, String::new(), raw, body).await
}
pub(crate) async fn kv_delete_key(
    State(st): State<ApiState>,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    kv_delete(st, key, raw).await
}
pub(crate) async fn kv_delete_root(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    kv_delete(st, String::new(), raw).await
}

/// The `kv` endpoints' routes.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/kv/", get(kv_get_root).put(kv_put_root).delete(kv_delete_root))
        .route("/v1/kv/{*key}", get(kv_get_key).put(kv_put_key).delete(kv_delete_key))
}
