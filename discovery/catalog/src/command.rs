//! The catalog's write commands: what a Raft log entry carries, and what applying it
//! answers. Commands are already validated by the API layer; the state machine still
//! re-checks what depends on the state (CAS, unknown IDs) so a race cannot corrupt it.

use serde::{Deserialize, Serialize};

use crate::model::{CheckStatus, HealthCheck, KvEntry, Node, Service, Session, b64};

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
    /// A new session (its ID chosen by the API before the write).
    SessionCreate {
        session: Session,
    },
    /// Invalidates a session: its locks are released or its keys deleted.
    SessionDestroy {
        id: String,
    },
    /// Renews a TTL session (restarts the leader's timer).
    SessionRenew {
        id: String,
    },
    /// `?acquire=` (`acquire: true`) or `?release=` of a KV lock by `session`, writing the
    /// value as it does.
    KvLock {
        key: String,
        #[serde(with = "b64")]
        value: Vec<u8>,
        flags: u64,
        session: String,
        acquire: bool,
    },
    /// Consul's `/v1/txn`: KV operations applied all or nothing.
    Txn(Vec<TxnOp>),
    /// `/v1/snapshot` restore: the whole state replaced by a saved one.
    Restore {
        image: Box<crate::state::StateImage>,
    },
}

impl Command {
    /// A cheap estimate of the command's size in a log entry (values are base64 on the
    /// wire, hence 4/3), so group commits can be bounded by bytes.
    pub fn approx_bytes(&self) -> usize {
        const BASE: usize = 256;
        let value = |key: &str, v: &[u8]| BASE + key.len() + v.len() * 4 / 3;
        match self {
            Command::KvSet { key, value: v, .. } | Command::KvLock { key, value: v, .. } => value(key, v),
            Command::Txn(ops) => BASE + ops.iter().map(|op| value(&op.key, &op.value)).sum::<usize>(),
            Command::Batch(cmds) => cmds.iter().map(Command::approx_bytes).sum(),
            Command::Restore { image } => {
                BASE * (image.nodes.len() + image.services.len() + image.checks.len() + image.sessions.len())
                    + image.kv.iter().map(|e| value(&e.key, &e.value)).sum::<usize>()
            }
            Command::Register { service, checks, .. } => {
                BASE * (2 + checks.len()) + service.as_ref().map(|s| s.meta.len() * 64 + s.tags.len() * 32).unwrap_or(0)
            }
            _ => BASE,
        }
    }
}

/// One KV operation of a transaction, with Consul's verbs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxnOp {
    pub verb: TxnVerb,
    pub key: String,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    pub flags: u64,
    pub index: u64,
    pub session: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnVerb {
    Set,
    Cas,
    Lock,
    Unlock,
    Get,
    GetTree,
    CheckIndex,
    CheckSession,
    CheckNotExists,
    Delete,
    DeleteTree,
    DeleteCas,
}

impl TxnVerb {
    /// Consul's spelling (`"get-tree"`, ...).
    pub fn parse(s: &str) -> Option<TxnVerb> {
        Some(match s {
            "set" => TxnVerb::Set,
            "cas" => TxnVerb::Cas,
            "lock" => TxnVerb::Lock,
            "unlock" => TxnVerb::Unlock,
            "get" => TxnVerb::Get,
            "get-tree" => TxnVerb::GetTree,
            "check-index" => TxnVerb::CheckIndex,
            "check-session" => TxnVerb::CheckSession,
            "check-not-exists" => TxnVerb::CheckNotExists,
            "delete" => TxnVerb::Delete,
            "delete-tree" => TxnVerb::DeleteTree,
            "delete-cas" => TxnVerb::DeleteCas,
            _ => return None,
        })
    }
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
    /// A transaction was applied; the entries its operations return, in order.
    Txn(Vec<KvEntry>),
    /// A transaction failed and applied nothing: (operation index, why) per failure.
    TxnFailed(Vec<(usize, String)>),
}
