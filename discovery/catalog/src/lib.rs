//! wharf's service catalog as data: Consul's model (nodes, services, checks, KV, sessions),
//! the [`command::Command`]s that change it, their decoding and validation from Consul's
//! JSON, and the pure state machine ([`state::CatalogState`]) that Raft replicates.
//!
//! Readers hold a [`Catalog`] (the latest committed state on a watch channel); writers go
//! through the [`Cluster`] trait, which the Raft node implements. Nothing here does I/O.

pub mod command;
pub mod decode;
pub mod duration;
mod handle;
pub mod model;
pub mod state;

pub use handle::{BoxFuture, Catalog, Cluster, ClusterError, LeaderStatus, RaftPeer, Written};
