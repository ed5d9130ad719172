//! Consul's HTTP API v1 (the subset in DESIGN.md) as an axum router over a [`Catalog`]
//! (reads, with blocking queries) and a [`Cluster`] (replicated writes).
//!
//! One file per endpoint family (`agent`, `catalog_api`, `health`, `kv`, `session`, `txn`,
//! `status`), each with its own `routes()`; what they share is in `respond`, and the one
//! thing the API asks of the local agent's checker is the [`LocalChecks`] trait.
//!
//! Every read goes through `respond::blocking_read`: it evaluates the query against the latest
//! committed state and, with `?index`, waits on the state machine's watch channel until
//! the index *that query depends on* moves past it, so unrelated writes never answer it.

mod agent;
mod catalog_api;
pub mod error;
mod health;
mod kv;
mod operator;
pub mod query;
mod respond;
pub mod session;
pub mod snapshot;
mod status;
pub mod txn;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use tokio::sync::{mpsc, oneshot};

use catalog::model::{AgentInfo, MAX_KV_VALUE_BYTES};
use catalog::{Catalog, Cluster};
use error::ApiError;

/// Longest check output kept (one limit for every source of output).
pub use catalog::model::MAX_CHECK_OUTPUT;

/// Requests from the API to the agent's supervisor.
#[derive(Debug)]
pub enum AgentControl {
    /// Reload config-dir definitions; answers with the outcome.
    Reload(oneshot::Sender<Result<String, String>>),
    /// Leave the cluster gracefully and shut down.
    Leave(oneshot::Sender<()>),
    /// Join the cluster an agent at this address (`host[:port]`) belongs to.
    Join(String, oneshot::Sender<Result<String, String>>),
}

/// Appends Prometheus text for one subsystem (the proxy, later health checks).
pub type MetricsRenderer = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Clone)]
pub struct ApiState {
    pub catalog: Catalog,
    pub cluster: Arc<dyn Cluster>,
    pub agent: Arc<AgentInfo>,
    pub control: mpsc::Sender<AgentControl>,
    /// Subsystems whose metrics `/metrics` and `/v1/agent/metrics?format=prometheus` show.
    pub metrics: Vec<MetricsRenderer>,
    /// What the API needs from the agent that runs the checks.
    pub local: Arc<dyn LocalChecks>,
    /// When this agent applied recent Raft indexes (for KV lock delays); fed by
    /// [`session::AppliedClock::run`].
    pub applied: session::AppliedClock,
    /// The gossip pool's view (`/v1/agent/members`, `force-leave`).
    pub members: Arc<dyn Membership>,
}

/// A member of the gossip pool as `/v1/agent/members` shows it.
#[derive(Clone, Debug, Default)]
pub struct MemberRecord {
    pub name: String,
    /// Its advertised IP and gossip port.
    pub addr: String,
    pub port: u16,
    /// Serf's status code: 1 alive, 3 left, 4 failed.
    pub status: u8,
    pub server: bool,
    pub datacenter: String,
    pub id: String,
    pub build: String,
    /// Its Raft port.
    pub raft_port: u16,
}

/// What the API needs from the gossip layer.
pub trait Membership: Send + Sync + 'static {
    fn members(&self) -> Vec<MemberRecord>;
    /// Moves a failed member to left. `Err(None)`: no such member; `Err(Some(why))`: refused.
    fn force_leave(&self, node: &str) -> catalog::BoxFuture<'_, Result<(), Option<String>>>;
}

/// What the API needs from the local agent's health checker: whether it will run a check
/// definition, and TTL heartbeats (`/v1/agent/check/pass|warn|fail|update`).
pub trait LocalChecks: Send + Sync + 'static {
    /// Refuses, with the reason a client reads, check definitions this agent will not run
    /// (script checks while disabled, Wasm checks without a plugin host).
    fn admit(&self, checks: &[catalog::model::HealthCheck]) -> Result<(), String>;
    /// Records that a TTL check was refreshed now.
    fn ttl_beat(&self, check_id: &str);
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Invalid URL path: not a recognized HTTP API endpoint".into())
}

/// The Consul-compatible API router: every endpoint family's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(agent::routes())
        .merge(catalog_api::routes())
        .merge(health::routes())
        .merge(kv::routes())
        .merge(status::routes())
        .merge(operator::routes())
        .merge(snapshot::routes())
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/txn", put(txn::txn))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_KV_VALUE_BYTES * 2))
        .with_state(state)
}
