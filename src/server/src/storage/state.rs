//! The shard's applied state in RocksDB: one instance per shard (`data/shard-N/state`), its own
//! WAL off because the Raft WAL is the source of durability.
//!
//! Each partition's `ApplyState` (applied index and term) is written in the same `WriteBatch`
//! as the state it describes, so after a crash RocksDB holds exactly the effects of entries
//! `1..=applied_index` of every partition, and the partition replays its log from there.
//!
//! Keys below [`kahuna_core::keys::KIND_MIN`] are ours (metadata); the rest is
//! the state machines' layout of [`kahuna_core::keys`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kahuna_core::store::{Get, Scan};
use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

const APPLY_STATE: u8 = 0x01;

/// How far a partition's state machine has got, persisted with its effects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyState {
    pub applied_index: u64,
    pub applied_term: u64,
    /// The highest HLC of an applied command: a restarted node's clock starts above it, so
    /// timestamps (and so lease and TTL arithmetic) never go backwards across restarts.
    pub applied_hlc: u64,
}

impl ApplyState {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&self.applied_index.to_le_bytes());
        v.extend_from_slice(&self.applied_term.to_le_bytes());
        v.extend_from_slice(&self.applied_hlc.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<ApplyState> {
        if b.len() != 24 {
            return None;
        }
        let word = |i: usize| b[i * 8..(i + 1) * 8].try_into().ok().map(u64::from_le_bytes);
        Some(ApplyState { applied_index: word(0)?, applied_term: word(1)?, applied_hlc: word(2)? })
    }
}

fn apply_state_key(partition: u64) -> Vec<u8> {
    let mut k = vec![APPLY_STATE];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

#[derive(Clone)]
pub struct StateDb {
    db: Arc<DB>,
}

impl StateDb {
    pub fn open(path: &Path, block_cache_bytes: usize) -> Result<StateDb, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_size(64 << 20);
        opts.set_max_write_buffer_number(4);
        // No RocksDB WAL: avoid its files and fsyncs entirely, even on manual flush.
        opts.set_manual_wal_flush(true);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(block_cache_bytes));
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        Ok(StateDb { db: Arc::new(DB::open(&opts, path)?) })
    }

    pub fn apply_state(&self, partition: u64) -> Result<ApplyState, rocksdb::Error> {
        Ok(self
            .db
            .get_pinned(apply_state_key(partition))?
            .and_then(|b| ApplyState::decode(&b))
            .unwrap_or_default())
    }

    /// Writes one loop turn's effects and apply states atomically, without any sync: the Raft
    /// WAL already holds the entries that produced them.
    pub fn commit(
        &self,
        writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        apply_states: &[(u64, ApplyState)],
    ) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        for (p, st) in apply_states {
            batch.put(apply_state_key(*p), st.encode());
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo)
    }

    /// Visits every key of the partition range `[start, end)`, all kinds, as one RocksDB
    /// snapshot sees it, and returns the partition's apply state in that same snapshot: the
    /// index and term the visited state is exactly the effect of. Blocking: reads the range.
    fn visit_range_at(
        &self,
        partition: u64,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<ApplyState, rocksdb::Error> {
        let snap = self.db.snapshot();
        let state = snap
            .get(apply_state_key(partition))?
            .and_then(|b| ApplyState::decode(&b))
            .unwrap_or_default();
        for kind in kahuna_core::keys::DATA_KINDS {
            let (lo, hi) = kahuna_core::keys::kind_range(kind, start, end);
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(hi);
            ro.set_snapshot(&snap);
            let mut it = self.db.raw_iterator_opt(ro);
            it.seek(&lo);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                visit(k, v);
                it.next();
            }
            it.status()?;
        }
        Ok(state)
    }

    /// A Raft snapshot of the partition: its apply state and every pair of its range as
    /// `[klen u32][key][vlen u32][value]...`, from one consistent view. Blocking.
    pub fn snapshot_data(
        &self,
        partition: u64,
        start: &[u8],
        end: &[u8],
    ) -> Result<(ApplyState, Vec<u8>), rocksdb::Error> {
        let mut out = Vec::new();
        let state = self.visit_range_at(partition, start, end, &mut |k, v| {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        })?;
        Ok((state, out))
    }

    /// A checksum of the partition range `[start, end)` and the applied index it describes:
    /// CRC32C over every key and value (length-prefixed) in the low 32 bits, the number of
    /// pairs in the high 32. Equal on replicas at equal indexes. Blocking.
    pub fn range_checksum(
        &self,
        partition: u64,
        start: &[u8],
        end: &[u8],
    ) -> Result<(u64, u64), rocksdb::Error> {
        let (mut crc, mut count) = (0u32, 0u64);
        let state = self.visit_range_at(partition, start, end, &mut |k, v| {
            for part in [k, v] {
                crc = crc32c::crc32c_append(crc, &(part.len() as u32).to_le_bytes());
                crc = crc32c::crc32c_append(crc, part);
            }
            count += 1;
        })?;
        Ok((state.applied_index, (count << 32) | crc as u64))
    }

    /// Replaces the partition range with a snapshot's pairs and sets its apply state, atomically.
    pub fn install_snapshot(
        &self,
        start: &[u8],
        end: &[u8],
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        partition: u64,
        state: ApplyState,
    ) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        for kind in kahuna_core::keys::DATA_KINDS {
            let (lo, hi) = kahuna_core::keys::kind_range(kind, start, end);
            batch.delete_range(lo, hi);
        }
        for (k, v) in pairs {
            batch.put(k, v);
        }
        batch.put(apply_state_key(partition), state.encode());
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo)
    }

    /// Flushes the memtables to SST files. Blocking: call it through `spawn_blocking`.
    pub fn flush_blocking(&self) -> Result<(), rocksdb::Error> {
        self.db.flush()
    }
}

/// A read the state machines asked for failed. Never answered as "absent": a sequence would
/// restart, a fencing token fall back to 1. The node stops instead (see [`crate::fatal`]).
fn read_failed(err: impl std::fmt::Display) -> ! {
    crate::fatal::storage("reading RocksDB", err)
}

fn injected_read_error() {
    if crate::faults::fired("rocksdb_read_error").is_some() {
        read_failed("injected by the rocksdb_read_error failpoint");
    }
}

impl Get for StateDb {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        injected_read_error();
        match self.db.get_pinned(key) {
            Ok(v) => v.map(|v| v.to_vec()),
            Err(e) => read_failed(e),
        }
    }
}

impl Scan for StateDb {
    fn scan(&self, lo: &[u8], hi: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) {
        injected_read_error();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(hi.to_vec());
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(lo);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            if !visit(k, v) {
                return;
            }
            it.next();
        }
        if let Err(e) = it.status() {
            read_failed(e);
        }
    }
}

/// Parses [`StateDb::snapshot_data`]; `None` when it is malformed.
pub fn decode_snapshot(mut b: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    fn take(b: &mut &[u8]) -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let v = b.get(4..4 + len)?.to_vec();
        *b = &b[4 + len..];
        Some(v)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let k = take(&mut b)?;
        let v = take(&mut b)?;
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_state_commits_with_the_data_and_survives_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = StateDb::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(db.apply_state(3).unwrap(), ApplyState::default());
            let mut w = BTreeMap::new();
            w.insert(b"kx".to_vec(), Some(b"1".to_vec()));
            db.commit(w, &[(3, ApplyState { applied_index: 7, applied_term: 2, applied_hlc: 9 })])
                .unwrap();
            db.flush_blocking().unwrap();
        }
        let db = StateDb::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            db.apply_state(3).unwrap(),
            ApplyState { applied_index: 7, applied_term: 2, applied_hlc: 9 }
        );
        assert_eq!(db.get(b"kx"), Some(b"1".to_vec()));
        // A snapshot of the whole range carries kx and the apply state it matches; installing
        // it elsewhere replaces that range.
        let (st3, data) = db.snapshot_data(3, b"", b"").unwrap();
        assert_eq!(st3.applied_index, 7);
        let pairs = decode_snapshot(&data).unwrap();
        assert_eq!(pairs, vec![(b"kx".to_vec(), b"1".to_vec())]);
        let other = tempfile::tempdir().unwrap();
        let db2 = StateDb::open(other.path(), 1 << 20).unwrap();
        let mut w = BTreeMap::new();
        w.insert(b"kstale".to_vec(), Some(b"0".to_vec()));
        db2.commit(w, &[]).unwrap();
        let st = ApplyState { applied_index: 9, applied_term: 3, applied_hlc: 0 };
        db2.install_snapshot(b"", b"", pairs, 3, st).unwrap();
        assert_eq!(db2.get(b"kstale"), None);
        assert_eq!(db2.get(b"kx"), Some(b"1".to_vec()));
        assert_eq!(db2.apply_state(3).unwrap(), st);
        assert!(decode_snapshot(&[1, 0, 0, 0]).is_none());
        let mut n = 0;
        db.scan(b"k", b"l", &mut |_, _| {
            n += 1;
            true
        });
        assert_eq!(n, 1);
    }
}
