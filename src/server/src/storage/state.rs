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

use kahuna_core::snapshot_format::{self, Descriptor, SnapshotFormatError};
use kahuna_core::store::{Get, Scan};
use kahuna_core::PartitionInfo;
use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, IngestExternalFileOptions, Options, ReadOptions,
    SstFileWriter, WriteBatch, WriteOptions, DB,
};

/// Called with each key and value of a range, in order; an error stops the walk.
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> std::io::Result<()> + 'a;

/// A failure of the state store: always fatal to the node (see [`crate::fatal`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Format(#[from] SnapshotFormatError),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

const APPLY_STATE: u8 = 0x01;
/// A partition's descriptor (range, replicas, epoch): written when the partition is created,
/// with the entry that splits it, and with a snapshot that brings it. A restart takes the
/// partitions from these records, not from the configuration.
const DESCRIPTOR: u8 = 0x02;

/// The node's whole partition map as this shard last learned it (splits elsewhere included),
/// so that a restart routes by what it knew. Not part of any partition's state: written
/// whenever the map changes, without sync (a stale one is corrected by the peers' news).
const MAP: u8 = 0x03;

pub fn descriptor_key(partition: u64) -> Vec<u8> {
    let mut k = vec![DESCRIPTOR];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

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
    /// Starts RocksDB's flush and compaction threads from the calling thread. Call it from the
    /// main thread before any shard starts: threads inherit their creator's CPU affinity, and
    /// ones a pinned shard created would compact on that shard's own core.
    pub fn start_background_threads() -> Result<(), rocksdb::Error> {
        let mut env = rocksdb::Env::new()?;
        env.set_background_threads(2);
        env.set_high_priority_background_threads(1);
        Ok(())
    }

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

    /// Every partition descriptor this shard holds. A record that does not decode stops the
    /// node (it is damage, not absence).
    pub fn descriptors(&self) -> Result<Vec<PartitionInfo>, StorageError> {
        let mut out = Vec::new();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(vec![DESCRIPTOR + 1]);
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek([DESCRIPTOR]);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let info = PartitionInfo::decode(v)
                .map_err(|e| StorageError::Snapshot(format!("descriptor {k:?}: {e}")))?;
            out.push(info);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Writes descriptors (with no other change), durably enough for a start: the next
    /// flush makes them durable, and until then a crash replays what wrote them.
    pub fn put_descriptors(&self, infos: &[PartitionInfo]) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        for info in infos {
            batch.put(descriptor_key(info.id), info.encode());
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo)?;
        self.db.flush()
    }

    /// Removes a partition's replica from this shard: (with `data`) its keys of every kind in its
    /// range, its descriptor and its apply state, in one batch.
    pub fn drop_partition(&self, info: &PartitionInfo, data: bool) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        for kind in kahuna_core::keys::DATA_KINDS.iter().filter(|_| data) {
            let (lo, hi) = kahuna_core::keys::kind_range(*kind, &info.start, &info.end);
            batch.delete_range(lo, hi);
        }
        batch.delete(descriptor_key(info.id));
        batch.delete(apply_state_key(info.id));
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo)
    }

    /// Removes every key, current and past, in the user range `[start, end)` (a restore drops
    /// the old cluster's member records this way: the new cluster has its own members).
    pub fn delete_user_range(&self, start: &[u8], end: &[u8]) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        for kind in [kahuna_core::keys::KV, kahuna_core::keys::HISTORY] {
            let (lo, hi) = kahuna_core::keys::kind_range(kind, start, end);
            batch.delete_range(lo, hi);
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo)?;
        self.db.flush()
    }

    pub fn stored_map(&self) -> Result<Option<Vec<PartitionInfo>>, StorageError> {
        match self.db.get_pinned([MAP])? {
            None => Ok(None),
            Some(b) => rkyv::from_bytes::<Vec<PartitionInfo>, rkyv::rancor::Error>(&b)
                .map(Some)
                .map_err(|e| StorageError::Snapshot(format!("the stored partition map: {e}"))),
        }
    }

    pub fn put_map(&self, parts: &[PartitionInfo]) -> Result<(), rocksdb::Error> {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&parts.to_vec())
            .expect("serialising descriptors");
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.put_opt([MAP], bytes, &wo)
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

    /// Visits every key of the partition's range, all kinds, in ascending key order, as one
    /// RocksDB snapshot sees it, and returns the partition's apply state and descriptor in that
    /// same snapshot: the index and term the visited state is exactly the effect of, and the
    /// range it had then (`[start, end)` is used only when no descriptor is stored). With
    /// `descriptor`, the stored descriptor is visited first, as a pair of its own. Blocking:
    /// reads the range.
    fn visit_range_at(
        &self,
        partition: u64,
        start: &[u8],
        end: &[u8],
        descriptor: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(ApplyState, Option<PartitionInfo>), StorageError> {
        let snap = self.db.snapshot();
        let state = snap
            .get(apply_state_key(partition))?
            .and_then(|b| ApplyState::decode(&b))
            .unwrap_or_default();
        let info = match snap.get(descriptor_key(partition))? {
            Some(b) => {
                Some(PartitionInfo::decode(&b).map_err(|e| StorageError::Snapshot(e.to_string()))?)
            }
            None => None,
        };
        let (start, end) = match &info {
            Some(i) => (i.start.as_slice(), i.end.as_slice()),
            None => (start, end),
        };
        if let (true, Some(i)) = (descriptor, &info) {
            visit(&descriptor_key(partition), &i.encode())?;
        }
        let mut kinds = kahuna_core::keys::DATA_KINDS;
        kinds.sort_unstable();
        for kind in kinds {
            let (lo, hi) = kahuna_core::keys::kind_range(kind, start, end);
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(hi);
            ro.set_snapshot(&snap);
            let mut it = self.db.raw_iterator_opt(ro);
            it.seek(&lo);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                visit(k, v)?;
                it.next();
            }
            it.status()?;
        }
        Ok((state, info))
    }

    /// A checksum of the partition range `[start, end)` and the applied index it describes:
    /// CRC32C over every key and value (length-prefixed) in the low 32 bits, the number of
    /// pairs in the high 32. Equal on replicas at equal indexes. Blocking.
    pub fn range_checksum(
        &self,
        partition: u64,
        start: &[u8],
        end: &[u8],
    ) -> Result<(u64, u64), StorageError> {
        let (mut crc, mut count) = (0u32, 0u64);
        let (state, _) = self.visit_range_at(partition, start, end, false, &mut |k, v| {
            for part in [k, v] {
                crc = crc32c::crc32c_append(crc, &(part.len() as u32).to_le_bytes());
                crc = crc32c::crc32c_append(crc, part);
            }
            count += 1;
            Ok(())
        })?;
        Ok((state.applied_index, (count << 32) | crc as u64))
    }

    /// Writes a snapshot of the partition to `path` (see `kahuna_core::snapshot_format`): its
    /// descriptor first (the range as of the view: a split may have narrowed it), then every
    /// pair of its range from one consistent view, and the index and term that view is the
    /// effect of. Blocking: reads the range and writes a file as big as it.
    pub fn write_snapshot_file(
        &self,
        partition: u64,
        start: &[u8],
        end: &[u8],
        path: &Path,
    ) -> Result<(ApplyState, Descriptor, Option<PartitionInfo>), StorageError> {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut bytes = 0u64;
        let mut pairs = 0u64;
        let mut buf = Vec::with_capacity(64 << 10);
        let mut emit = |out: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| {
            bytes += b.len() as u64;
            out.write_all(b)
        };
        // The header names the index the state is the effect of, known only once the view is
        // taken: it is written with zeros first and patched at the end.
        emit(&mut out, &snapshot_format::encode_header(partition, 0, 0))?;
        let (state, info) = self.visit_range_at(partition, start, end, true, &mut |k, v| {
            buf.clear();
            snapshot_format::encode_pair(&mut buf, k, v);
            pairs += 1;
            emit(&mut out, &buf)
        })?;
        emit(&mut out, &snapshot_format::encode_trailer(pairs))?;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        // Patch the header, then checksum the file as it finally is.
        use std::io::{Read, Seek, SeekFrom};
        let header =
            snapshot_format::encode_header(partition, state.applied_index, state.applied_term);
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header)?;
        file.seek(SeekFrom::Start(0))?;
        let mut crc = 0u32;
        let mut chunk = vec![0u8; 1 << 20];
        let mut r = std::io::BufReader::new(&mut file);
        loop {
            let n = r.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &chunk[..n]);
        }
        let desc = Descriptor {
            partition,
            index: state.applied_index,
            term: state.applied_term,
            bytes,
            crc,
        };
        Ok((state, desc, info))
    }

    /// Replaces the partition range with the snapshot file at `path`, atomically and durably:
    /// the file becomes one SST holding range deletions of the old state, every new pair and
    /// the new apply state, ingested in one step (RocksDB makes an ingestion durable and
    /// all-or-nothing; a crash leaves the old state or the new one). Blocking.
    pub fn install_snapshot_file(
        &self,
        partition: u64,
        (start, end): (&[u8], &[u8]),
        path: &Path,
        sst: &Path,
        state: ApplyState,
        placed: Option<&PartitionInfo>,
    ) -> Result<Option<PartitionInfo>, StorageError> {
        use std::io::Read;
        let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut header = [0u8; snapshot_format::HEADER_BYTES];
        r.read_exact(&mut header)?;
        let (pid, index, term) = snapshot_format::decode_header(&header)?;
        if (pid, index, term) != (partition, state.applied_index, state.applied_term) {
            return Err(StorageError::Snapshot(format!(
                "file holds partition {pid} at {index}/{term}, expected {partition} at {}/{}",
                state.applied_index, state.applied_term
            )));
        }
        let opts = Options::default();
        let mut w = SstFileWriter::create(&opts);
        w.open(sst)?;
        let mut pairs = snapshot_format::PairReader::new(r);
        let mut next = pairs.next_pair()?;
        // A snapshot taken after a split carries the range it had then: the install replaces
        // that range (the rest of this replica's older, wider range belongs to the split's other
        // half, which brings its own state) and takes the descriptor.
        let mut info = None;
        if let Some((k, v)) = &next {
            if *k == descriptor_key(partition) {
                let i = PartitionInfo::decode(v)
                    .map_err(|e| StorageError::Snapshot(format!("its descriptor: {e}")))?;
                if i.id != partition {
                    return Err(StorageError::Snapshot("a descriptor of another partition".into()));
                }
                info = Some(i);
                next = pairs.next_pair()?;
            }
        }
        // A snapshot's range lies within the range this replica knew (a split only narrows).
        if let (None, Some(i)) = (placed, &info) {
            let inside = i.start.as_slice() >= start
                && (end.is_empty() || (!i.end.is_empty() && i.end.as_slice() <= end));
            if !inside {
                return Err(StorageError::Snapshot(format!(
                    "partition {partition}: the snapshot's range {:?}..{:?} is not within {start:?}..{end:?}",
                    i.start, i.end
                )));
            }
        }
        // A restore places the copy anew (other nodes, other shards): its range must be the
        // copy's, the rest is the new cluster's.
        if let Some(p) = placed {
            if info.as_ref().is_some_and(|i| (&i.start, &i.end) != (&p.start, &p.end)) {
                return Err(StorageError::Snapshot(
                    "the copy's range is not its partition's".into(),
                ));
            }
            info = Some(p.clone());
        }
        let (start, end) = match &info {
            Some(i) => (i.start.as_slice(), i.end.as_slice()),
            None => (start, end),
        };
        for kind in kahuna_core::keys::DATA_KINDS {
            let (lo, hi) = kahuna_core::keys::kind_range(kind, start, end);
            w.delete_range(lo, hi)?;
        }
        w.put(apply_state_key(partition), state.encode())?;
        if let Some(i) = &info {
            w.put(descriptor_key(partition), i.encode())?;
        }
        while let Some((k, v)) = next {
            if k.first().is_none_or(|b| *b < kahuna_core::keys::KIND_MIN)
                || !kahuna_core::keys::in_range(&k, start, end)
            {
                return Err(StorageError::Snapshot("a key outside the partition".into()));
            }
            w.put(k, v)?;
            next = pairs.next_pair()?;
        }
        w.finish()?;
        let mut io = IngestExternalFileOptions::default();
        io.set_move_files(true);
        self.db.ingest_external_file_opts(&io, vec![sst])?;
        Ok(info)
    }

    /// A RocksDB integer property (`rocksdb.total-sst-files-size`, …); 0 when unknown. Reads
    /// counters in memory: cheap enough for the shard loop once a second.
    pub fn property(&self, name: &str) -> u64 {
        self.db.property_int_value(name).ok().flatten().unwrap_or(0)
    }

    /// The approximate size on disk (flushed, compressed) of a partition range, all kinds.
    /// Reads RocksDB's index metadata, not the data.
    pub fn approximate_size(&self, start: &[u8], end: &[u8]) -> u64 {
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = kahuna_core::keys::DATA_KINDS
            .iter()
            .map(|kind| kahuna_core::keys::kind_range(*kind, start, end))
            .collect();
        let ranges: Vec<rocksdb::Range<'_>> =
            ranges.iter().map(|(lo, hi)| rocksdb::Range::new(lo, hi)).collect();
        self.db.get_approximate_sizes(&ranges).iter().sum()
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
        // A snapshot of the partition [k, m) carries its pairs and the apply state they are
        // the effect of; installing it elsewhere replaces that range and nothing else.
        let mut w = BTreeMap::new();
        for k in [&b"hk\0\0\0\0\0\0\0\x01"[..], b"kl", b"lk", b"kz", b"sk"] {
            w.insert(k.to_vec(), Some(k.to_vec()));
        }
        let st7 = ApplyState { applied_index: 7, applied_term: 2, applied_hlc: 9 };
        db.commit(w, &[(3, st7)]).unwrap();
        let file = dir.path().join("p3.snap");
        let (st3, desc, _) = db.write_snapshot_file(3, b"k", b"m", &file).unwrap();
        assert_eq!((st3, desc.index, desc.term), (st7, 7, 2));
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!((desc.bytes, desc.crc), (bytes.len() as u64, crc32c::crc32c(&bytes)));
        let (_, pairs) = snapshot_format::decode_file(&bytes).unwrap();
        let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"hk\0\0\0\0\0\0\0\x01"[..], b"kl", b"lk", b"sk"]);

        let other = tempfile::tempdir().unwrap();
        let db2 = StateDb::open(other.path(), 1 << 20).unwrap();
        let mut w = BTreeMap::new();
        // Stale state inside the range (also a key the snapshot brings back), and another
        // partition's key outside it.
        for k in [&b"kkstale"[..], b"kl", b"llx", b"kz"] {
            w.insert(k.to_vec(), Some(b"old".to_vec()));
        }
        db2.commit(w, &[(4, ApplyState { applied_index: 1, applied_term: 1, applied_hlc: 0 })])
            .unwrap();
        let st = ApplyState { applied_index: 7, applied_term: 2, applied_hlc: 0 };
        db2.install_snapshot_file(3, (b"k", b"m"), &file, &other.path().join("in.sst"), st, None)
            .unwrap();
        assert_eq!(db2.get(b"kkstale"), None);
        assert_eq!(db2.get(b"llx"), None);
        assert_eq!(db2.get(b"kl"), Some(b"kl".to_vec()));
        assert_eq!(db2.get(b"sk"), Some(b"sk".to_vec()));
        assert_eq!(db2.get(b"kz"), Some(b"old".to_vec()), "outside the partition");
        assert_eq!(db2.apply_state(3).unwrap(), st);
        assert_eq!(db2.apply_state(4).unwrap().applied_index, 1);
        // A file for another index is refused, and so is one with a key outside the range.
        let wrong = ApplyState { applied_index: 8, ..st };
        assert!(db2
            .install_snapshot_file(3, (b"k", b"m"), &file, &other.path().join("x.sst"), wrong, None)
            .is_err());
        db.write_snapshot_file(3, b"", b"", &file).unwrap();
        assert!(db2
            .install_snapshot_file(3, (b"k", b"m"), &file, &other.path().join("y.sst"), st, None)
            .is_err());
        drop(db2);
        let db2 = StateDb::open(other.path(), 1 << 20).unwrap();
        assert_eq!(db2.get(b"kl"), Some(b"kl".to_vec()), "the ingestion is durable");
        let mut n = 0;
        db.scan(b"k", b"l", &mut |_, _| {
            n += 1;
            true
        });
        assert_eq!(n, 3);
    }

    #[test]
    fn a_snapshot_carries_the_range_its_partition_had_and_the_install_takes_it() {
        // Partition 3 split: it holds [k, l) now. A follower that has not applied the split
        // still thinks [k, m); the snapshot replaces only [k, l) there, and says so.
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path(), 1 << 20).unwrap();
        let info = PartitionInfo {
            id: 3,
            start: b"k".to_vec(),
            end: b"l".to_vec(),
            shard: 0,
            replicas: vec![1],
            learners: vec![],
            epoch: 2,
        };
        db.put_descriptors(std::slice::from_ref(&info)).unwrap();
        let mut w = BTreeMap::new();
        for k in [&b"kk"[..], b"kl2", b"llater"] {
            w.insert(k.to_vec(), Some(k.to_vec()));
        }
        let st = ApplyState { applied_index: 9, applied_term: 2, applied_hlc: 0 };
        db.commit(w, &[(3, st)]).unwrap();
        let file = dir.path().join("p3.snap");
        db.write_snapshot_file(3, b"k", b"m", &file).unwrap();
        let (_, pairs) = snapshot_format::decode_file(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(pairs[0].0, descriptor_key(3), "the descriptor comes first");
        assert!(pairs.iter().all(|(k, _)| k.as_slice() != b"llater"), "only [k, l)");

        let other = tempfile::tempdir().unwrap();
        let db2 = StateDb::open(other.path(), 1 << 20).unwrap();
        let mut w = BTreeMap::new();
        // Storage keys are a kind byte and the user key: "kk…" is the user key "k…".
        for k in [&b"kkstale"[..], b"klkept"] {
            w.insert(k.to_vec(), Some(b"old".to_vec()));
        }
        db2.commit(w, &[]).unwrap();
        let got = db2
            .install_snapshot_file(3, (b"k", b"m"), &file, &other.path().join("in.sst"), st, None)
            .unwrap();
        assert_eq!(got, Some(info.clone()));
        assert_eq!(db2.get(b"kkstale"), None);
        assert_eq!(db2.get(b"kk"), Some(b"kk".to_vec()));
        assert_eq!(db2.get(b"klkept"), Some(b"old".to_vec()), "the other half's keys stay");
        assert_eq!(db2.descriptors().unwrap(), vec![info.clone()]);
        // A restore places the copy anew, but never with another range.
        let moved = PartitionInfo { shard: 1, replicas: vec![4, 5], ..info.clone() };
        let got = db2
            .install_snapshot_file(
                3,
                (b"", b""),
                &file,
                &other.path().join("r.sst"),
                st,
                Some(&moved),
            )
            .unwrap();
        assert_eq!(got, Some(moved.clone()));
        let wrong = PartitionInfo { end: b"m".to_vec(), ..moved };
        assert!(db2
            .install_snapshot_file(
                3,
                (b"", b""),
                &file,
                &other.path().join("w.sst"),
                st,
                Some(&wrong)
            )
            .is_err());
    }
}
