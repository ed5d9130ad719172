//! KV writes of the state machine: set (with check-and-set and flags) and delete (single,
//! recursive, check-and-set). Lock acquisition and release live with sessions.

use super::*;

impl CatalogState {
    pub(super) fn kv_set(&mut self, idx: u64, key: &str, value: &[u8], flags: u64, cas: Option<u64>) -> Outcome {
        let existing = self.kv.get(key);
        if let Some(want) = cas {
            let matches = match existing {
                None => want == 0,
                Some(e) => e.modify_index == want,
            };
            if !matches {
                return Outcome::CasFailed;
            }
        }
        let lock_index = existing.map(|e| e.lock_index).unwrap_or(0);
        let session = existing.map(|e| e.session.clone()).unwrap_or_default();
        self.put_entry(idx, key, value, flags, lock_index, session);
        Outcome::Applied
    }

    /// Writes `key` at `idx` (keeping its CreateIndex) with the given lock fields.
    pub(super) fn put_entry(
        &mut self,
        idx: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        lock_index: u64,
        session: String,
    ) {
        let create_index = self.kv.get(key).map(|e| e.create_index).unwrap_or(idx);
        let entry = KvEntry {
            key: key.to_string(),
            value: value.to_vec(),
            flags,
            lock_index,
            session,
            create_index,
            modify_index: idx,
        };
        self.kv.insert(key.to_string(), entry);
        self.tombstones.remove(key);
        self.bump(T_KVS.into(), idx);
    }

    pub(super) fn kv_delete(&mut self, idx: u64, key: &str, recurse: bool, cas: Option<u64>) -> Outcome {
        if let Some(want) = cas {
            match self.kv.get(key) {
                None => return Outcome::Applied,
                Some(e) if e.modify_index != want => return Outcome::CasFailed,
                Some(_) => {}
            }
        }
        let doomed: Vec<String> = if recurse {
            self.kv.range(key.to_string()..).take_while(|(k, _)| k.starts_with(key)).map(|(k, _)| k.clone()).collect()
        } else if self.kv.contains_key(key) {
            vec![key.to_string()]
        } else {
            Vec::new()
        };
        if doomed.is_empty() {
            return Outcome::Applied;
        }
        for k in doomed {
            self.kv.remove(&k);
            self.tombstones.insert(k, idx);
        }
        self.bump(T_KVS.into(), idx);
        Outcome::Applied
    }

    // ---------------------------------------------------------------- queries --
}
