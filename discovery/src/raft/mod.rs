//! Raft wiring: openraft's type configuration, the HTTP transport between servers on the
//! Raft port, and the node that ties log store, state machine and network together.

pub mod network;
pub mod node;
pub mod types;
