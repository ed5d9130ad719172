//! Durable Raft storage on redb: the log store (entries, vote, committed index) and the
//! state machine (in-memory [`CatalogState`] restored from the last snapshot, with
//! snapshots persisted in the same database file).
//!
//! Durability: `append` and `save_vote` commit with redb's `Immediate` durability (fsync)
//! before openraft is told the I/O is done, so an acknowledged write is on disk. The
//! state machine itself is rebuilt after a crash from the snapshot plus the log, which
//! openraft re-applies up to the saved committed index.

// openraft dictates `StorageError` (224 bytes) as the error of every storage call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{AnyError, EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::types::{Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote};
use catalog::command::Outcome;
use catalog::state::{CatalogState, StateImage};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_LAST_PURGED: &str = "last_purged";
const K_SNAP_META: &str = "meta";
const K_SNAP_DATA: &str = "data";

fn io_err(e: impl std::fmt::Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// Opens (creating if needed) the Raft database in `dir` and returns the two stores.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StorageError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageIOError::write(io_err(format!("create {}: {e}", dir.display()))))?;
    let path = dir.join("raft.redb");
    let db =
        Database::create(&path).map_err(|e| StorageIOError::read(io_err(format!("open {}: {e}", path.display()))))?;
    let db = Arc::new(db);
    {
        let txn = db.begin_write().map_err(|e| StorageIOError::write(io_err(e)))?;
        txn.open_table(LOG).map_err(|e| StorageIOError::write(io_err(e)))?;
        txn.open_table(META).map_err(|e| StorageIOError::write(io_err(e)))?;
        txn.open_table(SNAPSHOT).map_err(|e| StorageIOError::write(io_err(e)))?;
        txn.commit().map_err(|e| StorageIOError::write(io_err(e)))?;
    }
    let sm = StateMachineStore::restore(db.clone())?;
    Ok((LogStore { db }, sm))
}

/// Runs blocking redb work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::from(StorageIOError::write(io_err(format!("storage task failed: {e}")))))?
}

fn meta_get<T: serde::de::DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError> {
    let txn = db.begin_read().map_err(|e| StorageIOError::read(io_err(e)))?;
    let table = txn.open_table(META).map_err(|e| StorageIOError::read(io_err(e)))?;
    let Some(raw) = table.get(key).map_err(|e| StorageIOError::read(io_err(e)))? else {
        return Ok(None);
    };
    serde_json::from_slice(raw.value())
        .map(Some)
        .map_err(|e| StorageIOError::read(io_err(format!("corrupt {key}: {e}"))).into())
}

fn meta_put<T: serde::Serialize>(db: &Database, key: &str, value: &T, durable: bool) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(io_err(e)))?;
    let mut txn = db.begin_write().map_err(|e| StorageIOError::write(io_err(e)))?;
    if !durable {
        txn.set_durability(Durability::None).map_err(|e| StorageIOError::write(io_err(e)))?;
    }
    {
        let mut table = txn.open_table(META).map_err(|e| StorageIOError::write(io_err(e)))?;
        table.insert(key, bytes.as_slice()).map_err(|e| StorageIOError::write(io_err(e)))?;
    }
    txn.commit().map_err(|e| StorageIOError::write(io_err(e)))?;
    Ok(())
}

/// The Raft log, vote and committed index.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn read_range(db: &Database, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, StorageError> {
        let txn = db.begin_read().map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let table = txn.open_table(LOG).map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let range = table.range::<u64>((start, end)).map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let mut out = Vec::new();
        for item in range {
            let (_, v) = item.map_err(|e| StorageIOError::read_logs(io_err(e)))?;
            let entry: Entry = serde_json::from_slice(v.value())
                .map_err(|e| StorageIOError::read_logs(io_err(format!("corrupt log entry: {e}"))))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let db = self.db.clone();
        let (start, end) = (range.start_bound().cloned(), range.end_bound().cloned());
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) = (start, end)
            && s >= e
        {
            return Ok(Vec::new());
        }
        blocking(move || LogStore::read_range(&db, start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId> = meta_get(&db, K_LAST_PURGED)?;
            let txn = db.begin_read().map_err(|e| StorageIOError::read_logs(io_err(e)))?;
            let table = txn.open_table(LOG).map_err(|e| StorageIOError::read_logs(io_err(e)))?;
            let last = match table.last().map_err(|e| StorageIOError::read_logs(io_err(e)))? {
                Some((_, v)) => {
                    let entry: Entry = serde_json::from_slice(v.value())
                        .map_err(|e| StorageIOError::read_logs(io_err(format!("corrupt log entry: {e}"))))?;
                    Some(entry.log_id)
                }
                None => last_purged,
            };
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || meta_put(&db, K_VOTE, &vote, true)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || meta_get(&db, K_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it rides on the next durable commit. Losing it only
        // means re-applying from an older point; acknowledged entries are in the log.
        let db = self.db.clone();
        blocking(move || meta_put(&db, K_COMMITTED, &committed, false)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || Ok(meta_get::<Option<LogId>>(&db, K_COMMITTED)?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes = serde_json::to_vec(&e).map_err(|err| StorageIOError::write_logs(io_err(err)))?;
            encoded.push((e.log_id.index, bytes));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            let txn = db.begin_write().map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            {
                let mut table = txn.open_table(LOG).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
                }
            }
            // Immediate durability: the commit fsyncs before we report the I/O done.
            txn.commit().map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            {
                let mut table = txn.open_table(LOG).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
                table.retain_in(log_id.index.., |_, _| false).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            }
            txn.commit().map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let bytes = serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            let txn = db.begin_write().map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
                meta.insert(K_LAST_PURGED, bytes.as_slice()).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
                let mut table = txn.open_table(LOG).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
                table.retain_in(..=log_id.index, |_, _| false).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            }
            txn.commit().map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            Ok(())
        })
        .await
    }
}

/// The snapshot payload: the state image plus what openraft needs to resume.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: StateImage,
}

/// The catalog state machine. Applying publishes the new state to every [`Catalog`]
/// reader (one `watch` send per applied batch; apply never waits on a reader).
///
/// [`Catalog`]: catalog::Catalog
pub struct StateMachineStore {
    db: Arc<Database>,
    state: CatalogState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    tx: watch::Sender<Arc<CatalogState>>,
}

impl StateMachineStore {
    fn restore(db: Arc<Database>) -> Result<Self, StorageError> {
        let snapshot = Self::read_snapshot(&db)?;
        let (state, last_applied, membership) = match snapshot {
            Some((_, data)) => {
                let payload: SnapshotPayload = serde_json::from_slice(&data)
                    .map_err(|e| StorageIOError::read_snapshot(None, io_err(format!("corrupt snapshot: {e}"))))?;
                (CatalogState::from_image(payload.state), payload.last_applied, payload.membership)
            }
            None => (CatalogState::default(), None, StoredMembership::default()),
        };
        let (tx, _) = watch::channel(Arc::new(state.clone()));
        Ok(StateMachineStore { db, state, last_applied, membership, tx })
    }

    /// A receiver of every newly applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.tx.subscribe()
    }

    fn read_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let txn = db.begin_read().map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        let table = txn.open_table(SNAPSHOT).map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        let meta = table.get(K_SNAP_META).map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        let data = table.get(K_SNAP_DATA).map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        match (meta, data) {
            (Some(m), Some(d)) => {
                let meta: SnapshotMeta = serde_json::from_slice(m.value())
                    .map_err(|e| StorageIOError::read_snapshot(None, io_err(format!("corrupt snapshot meta: {e}"))))?;
                Ok(Some((meta, d.value().to_vec())))
            }
            _ => Ok(None),
        }
    }

    fn write_snapshot(db: &Database, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let sig = Some(meta.signature());
        let meta_bytes =
            serde_json::to_vec(meta).map_err(|e| StorageIOError::write_snapshot(sig.clone(), io_err(e)))?;
        let txn = db.begin_write().map_err(|e| StorageIOError::write_snapshot(sig.clone(), io_err(e)))?;
        {
            let mut table =
                txn.open_table(SNAPSHOT).map_err(|e| StorageIOError::write_snapshot(sig.clone(), io_err(e)))?;
            table.insert(K_SNAP_DATA, data).map_err(|e| StorageIOError::write_snapshot(sig.clone(), io_err(e)))?;
            table
                .insert(K_SNAP_META, meta_bytes.as_slice())
                .map_err(|e| StorageIOError::write_snapshot(sig.clone(), io_err(e)))?;
        }
        txn.commit().map_err(|e| StorageIOError::write_snapshot(sig, io_err(e)))?;
        Ok(())
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.state.clone()));
    }
}

/// Builds a snapshot from a frozen copy of the state (an O(1) clone), so applying can go
/// on while the snapshot is serialised and written.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: CatalogState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let payload = SnapshotPayload {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: self.state.to_image(),
        };
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, rand::random::<u32>()),
            None => format!("empty-{}", rand::random::<u32>()),
        };
        let meta =
            SnapshotMeta { last_log_id: self.last_applied, last_membership: self.membership.clone(), snapshot_id };
        let db = self.db.clone();
        let meta2 = meta.clone();
        let data = blocking(move || {
            let data = serde_json::to_vec(&payload)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta2.signature()), io_err(e)))?;
            StateMachineStore::write_snapshot(&db, &meta2, &data)?;
            Ok(data)
        })
        .await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {
                    self.state.advance(index);
                    out.push(Outcome::Applied);
                }
                EntryPayload::Normal(cmd) => out.push(self.state.apply(index, &cmd)),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    self.state.advance(index);
                    out.push(Outcome::Applied);
                }
            }
        }
        self.publish();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let data_len = data.len();
        let payload: SnapshotPayload = serde_json::from_slice(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), io_err(format!("corrupt snapshot: {e}")))
        })?;
        let db = self.db.clone();
        let meta2 = meta.clone();
        blocking(move || StateMachineStore::write_snapshot(&db, &meta2, &data)).await?;
        self.state = CatalogState::from_image(payload.state);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish();
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            bytes = data_len,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let db = self.db.clone();
        let found = blocking(move || StateMachineStore::read_snapshot(&db)).await?;
        Ok(found.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// The node ID openraft uses is derived from the catalog node ID (a UUID).
pub fn raft_id_from_uuid(uuid: &uuid::Uuid) -> NodeId {
    let b = uuid.as_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[..8]);
    // 0 is never used as a node id, so a zeroed UUID cannot collide with "unset".
    u64::from_be_bytes(id).max(1)
}

#[cfg(test)]
mod conformance {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::TempDir::new().map_err(|e| StorageIOError::write(io_err(format!("tempdir: {e}"))))?;
            let (log, sm) = open(dir.path())?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite against wharf's redb stores.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder)?;
        Ok(())
    }

    /// A state machine reopened from disk comes back from its last snapshot.
    #[test]
    fn state_machine_restores_from_snapshot() -> Result<(), StorageError> {
        let rt = tokio::runtime::Runtime::new().map_err(|e| StorageIOError::write(io_err(e)))?;
        rt.block_on(async {
            let dir = tempfile::TempDir::new().map_err(|e| StorageIOError::write(io_err(e)))?;
            {
                let (_log, mut sm) = open(dir.path())?;
                let cmd =
                    catalog::command::Command::KvSet { key: "k".into(), value: b"v".to_vec(), flags: 7, cas: None };
                let entry = Entry {
                    log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 5),
                    payload: EntryPayload::Normal(cmd),
                };
                sm.apply([entry]).await?;
                sm.get_snapshot_builder().await.build_snapshot().await?;
            }
            let (_log, mut sm) = open(dir.path())?;
            let (applied, _) = sm.applied_state().await?;
            assert_eq!(applied.map(|l| l.index), Some(5));
            let (entry, _) = sm.subscribe().borrow().kv_get("k");
            assert_eq!(entry.map(|e| e.flags), Some(7));
            Ok(())
        })
    }
}
