//! The catalog's replication: openraft's type configuration, durable storage on redb, the
//! HTTP transport between servers on the Raft port (client and server halves apart), and
//! the node that ties log store, state machine and network together and implements the
//! catalog's [`catalog::Cluster`] write seam.
//!
//! Imports run one way: `types` ← `store`, `wire` ← `client` ← `node` ← `operator`, `server`; `commit` (the group-commit loop) ← `node`.

pub mod client;
mod commit;
pub mod node;
pub mod operator;
pub mod server;
pub mod store;
pub mod types;
pub mod wire;
