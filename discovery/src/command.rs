//! The catalog's write commands: what a Raft log entry carries, and what applying it
//! answers. Commands are already validated by the API layer; the state machine still
//! re-checks what depends on the state (CAS, unknown IDs) so a race cannot corrupt it.

use serde::{Deserialize, Serialize};

use crate::model::{CheckStatus, HealthCheck, Node, Service, b64};

// Commands are built once and moved into the log; boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Upsert a node, optionally one service and checks on it (catalog register, agent
    /// service/check register). With `replace_service_checks`, checks of `service` that are
    /// not in `checks` are removed.
    Register {
        node: Node,
        service: Option<Service>,
        checks: Vec<HealthCheck>,
        skip_node_update: bool,
        replace_service_checks: bool,
    },
    DeregisterNode {
        node: String,
    },
    DeregisterService {
        node: String,
        service_id: String,
    },
    DeregisterCheck {
        node: String,
        check_id: String,
    },
    /// A check's new status; `output: None` keeps the current output.
    UpdateCheck {
        node: String,
        check_id: String,
        status: CheckStatus,
        output: Option<String>,
    },
    KvSet {
        key: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
        flags: u64,
        /// `Some(0)`: only if the key does not exist; `Some(n)`: only if its ModifyIndex is n.
        cas: Option<u64>,
    },
    KvDelete {
        key: String,
        recurse: bool,
        cas: Option<u64>,
    },
    /// Commands from concurrent clients committed as one log entry (group commit: one
    /// fsync for all). Applied in order at the entry's index; each gets its own outcome.
    Batch(Vec<Command>),
}

/// What applying a command did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (possibly as a no-op when nothing changed).
    #[default]
    Applied,
    /// A check-and-set did not match; nothing changed.
    CasFailed,
    /// The command conflicts with the state (e.g. an unknown check); nothing changed.
    Rejected(String),
    /// The outcomes of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
}
