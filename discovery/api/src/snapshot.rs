//! `/v1/snapshot`: a consistent point-in-time copy of the whole state (catalog, KV,
//! sessions), and restoring one on any cluster, as `consul snapshot save | restore` do.
//! The format is wharf's own: JSON with a header, the Raft index it was taken at, and the
//! state image Raft snapshots use.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::ApiState;
use crate::error::ApiError;
use crate::query::Params;
use crate::respond::*;
use catalog::command::Command;
use catalog::state::StateImage;

/// The largest snapshot a restore accepts (the Raft port carries it as one entry).
pub const MAX_SNAPSHOT_BYTES: usize = 48 * 1024 * 1024;

pub const FORMAT: &str = "wharf-snapshot";

/// A saved snapshot, as `wharf snapshot save` writes it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Snapshot {
    pub format: String,
    pub version: u32,
    /// The Raft index the state was taken at.
    pub index: u64,
    pub datacenter: String,
    pub state: StateImage,
}

pub(crate) async fn save(State(st): State<ApiState>, RawQuery(raw): RawQuery) -> ApiResult {
    let p = Params::parse(raw.as_deref());
    if p.get("stale").is_none() {
        // Everything acknowledged before the request is in the copy.
        st.cluster.linearize().await?;
    }
    let state = st.catalog.snapshot();
    let snap = Snapshot {
        format: FORMAT.into(),
        version: 1,
        index: state.last_index(),
        datacenter: st.agent.datacenter.clone(),
        state: state.to_image(),
    };
    let body = serde_json::to_vec(&snap).map_err(|e| ApiError::Internal(format!("cannot encode the snapshot: {e}")))?;
    let mut r = ([("content-type", "application/json")], body).into_response();
    r.headers_mut().insert("x-consul-index", HeaderValue::from(snap.index));
    Ok(r)
}

/// Reads a snapshot file's bytes, with a message saying what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let snap: Snapshot = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a wharf snapshot (made by `wharf snapshot save`): {e}"))?;
    if snap.format != FORMAT || snap.version != 1 {
        return Err(format!("unsupported snapshot format {:?} version {}", snap.format, snap.version));
    }
    Ok(snap)
}

pub(crate) async fn restore(State(st): State<ApiState>, body: Bytes) -> ApiResult {
    let snap = decode(&body).map_err(ApiError::BadRequest)?;
    st.cluster.write(Command::Restore { image: Box::new(snap.state) }).await?;
    Ok(empty_ok())
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/snapshot", get(save).put(restore)).layer(DefaultBodyLimit::max(MAX_SNAPSHOT_BYTES))
}
