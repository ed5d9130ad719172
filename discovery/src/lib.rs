//! wharf's service catalog: Consul's data model (nodes, services, checks, KV) replicated
//! with openraft, served over Consul's HTTP API v1.
//!
//! Layers, from pure to wired: `model` and `command` (data), `state` (the state machine's
//! pure core), `store` (durable Raft log and state machine on redb), `raft` (types,
//! network, node), `catalog` (read handle + writer), `api` (axum router), `dns` (Consul's DNS
//! interface on hickory-server, answered from the local replica).

pub mod api;
pub mod catalog;
pub mod command;
pub mod decode;
pub mod dns;
pub mod docker;
pub mod duration;
pub mod health;
pub mod model;
pub mod raft;
pub mod session_ttl;
pub mod state;
pub mod store;
