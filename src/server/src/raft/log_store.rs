//! [`LogStore`]: raft-rs's `Storage` over the entries the shard's WAL has made durable.
//!
//! The entries live in memory from `snapshot_index + 1` on; everything at or below
//! `snapshot_index` has been applied to RocksDB and is compacted away. Only the ready loop
//! mutates it, after the WAL write that made the change durable.
//!
//! Snapshots for lagging followers are built off the shard loop: the first request starts a
//! blocking write of the partition's range to a file (one RocksDB snapshot, so data and index
//! agree) and answers "temporarily unavailable"; raft-rs asks again on a later append, and
//! gets a snapshot whose data is only the file's descriptor (see `raft::snapshot`).

use std::cell::RefCell;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Default)]
pub struct LogStore {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    snapshot_index: u64,
    snapshot_term: u64,
    /// `entries[0].index == snapshot_index + 1` when not empty.
    entries: Vec<Entry>,
    /// The payload bytes of `entries`, for the bound on what a partition keeps in memory.
    bytes: usize,
    /// Where to read the partition's state (and the index it stands for) for a snapshot.
    source: Option<SnapshotSource>,
    building: Rc<RefCell<Building>>,
}

/// The partition's range in the shard's RocksDB, read to build a snapshot, and where the
/// snapshot files go.
pub struct SnapshotSource {
    pub db: crate::storage::state::StateDb,
    pub partition: u64,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub dir: std::path::PathBuf,
}

impl SnapshotSource {
    pub fn new(
        db: &crate::storage::state::StateDb,
        info: &kahuna_core::PartitionInfo,
        dir: &std::path::Path,
    ) -> SnapshotSource {
        SnapshotSource {
            db: db.clone(),
            partition: info.id,
            start: info.start.clone(),
            end: info.end.clone(),
            dir: dir.to_path_buf(),
        }
    }
}

/// A snapshot being built on a blocking thread, or built and not yet sent.
#[derive(Default)]
enum Building {
    #[default]
    Idle,
    Running,
    Ready(Snapshot),
}

impl LogStore {
    pub fn new(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot_index: u64,
        snapshot_term: u64,
        entries: Vec<Entry>,
    ) -> LogStore {
        debug_assert!(entries.first().is_none_or(|e| e.index == snapshot_index + 1));
        LogStore {
            hard_state,
            conf_state,
            snapshot_index,
            snapshot_term,
            bytes: entries.iter().map(entry_bytes).sum(),
            entries,
            source: None,
            building: Rc::default(),
        }
    }

    fn first(&self) -> u64 {
        self.snapshot_index + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    /// Appends durable entries; an entry at an index already held replaces that suffix.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first().map(|e| e.index) else { return };
        assert!(
            first > self.snapshot_index,
            "appending {first} at or below the compacted index {}",
            self.snapshot_index
        );
        assert!(first <= self.last() + 1, "appending {first} leaves a gap after {}", self.last());
        let keep = (first - self.first()) as usize;
        self.bytes -= self.entries[keep..].iter().map(entry_bytes).sum::<usize>();
        self.entries.truncate(keep);
        self.bytes += ents.iter().map(entry_bytes).sum::<usize>();
        self.entries.extend_from_slice(ents);
    }

    /// Payload bytes of the entries held in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The smallest index to compact to so that at most `limit` bytes of entries stay.
    pub fn index_keeping_at_most(&self, limit: usize) -> u64 {
        let (mut index, mut bytes) = (self.snapshot_index, self.bytes);
        for e in &self.entries {
            if bytes <= limit {
                break;
            }
            bytes -= entry_bytes(e);
            index = e.index;
        }
        index
    }

    /// Replaces the whole log with a snapshot's position: the state up to `index` came whole.
    pub fn install_snapshot(&mut self, index: u64, term: u64, conf_state: ConfState) {
        self.entries.clear();
        self.bytes = 0;
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.conf_state = conf_state;
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
    }

    /// The partition's descriptor changed (a split, a membership change): a snapshot built
    /// before it carries the old range and members, and is not sent again.
    pub fn forget_snapshot(&mut self) {
        let mut b = self.building.borrow_mut();
        if matches!(*b, Building::Ready(_)) {
            *b = Building::Idle;
        }
    }

    pub fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.source = Some(source);
    }

    /// Drops entries up to `index` (applied and no longer needed in memory).
    pub fn compact_to(&mut self, index: u64) {
        if index <= self.snapshot_index || index > self.last() {
            return;
        }
        let n = (index - self.snapshot_index) as usize;
        self.snapshot_term = self.entries[n - 1].term;
        self.bytes -= self.entries[..n].iter().map(entry_bytes).sum::<usize>();
        self.entries.drain(..n);
        self.snapshot_index = index;
    }
}

fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len()
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index {
            return Ok(self.snapshot_term);
        }
        if idx < self.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        let Some(src) = &self.source else { return unavailable };
        let mut building = self.building.borrow_mut();
        match &*building {
            // Reused while the log still continues right after it (a failed transfer's retry
            // sends the same file again).
            Building::Ready(snap)
                if snap.get_metadata().index >= request_index
                    && snap.get_metadata().index + 1 >= self.first() =>
            {
                return Ok(snap.clone());
            }
            Building::Running => return unavailable,
            _ => {}
        }
        *building = Building::Running;
        let (db, pid, start, end, dir) =
            (src.db.clone(), src.partition, src.start.clone(), src.end.clone(), src.dir.clone());
        let conf_state = self.conf_state.clone();
        let slot = self.building.clone();
        glommio::spawn_local(async move {
            let built = glommio::executor()
                .spawn_blocking(move || super::snapshot::build(&db, pid, &start, &end, &dir))
                .await;
            *slot.borrow_mut() = match built {
                Ok((desc, info)) => {
                    // The membership at the snapshot's own index (a change may have applied
                    // since it was asked for): what the receiver's group starts from.
                    let conf_state =
                        info.as_ref().map(crate::raft::partition::conf_state).unwrap_or(conf_state);
                    let mut snap = Snapshot { data: desc.encode(), ..Default::default() };
                    let meta = snap.mut_metadata();
                    meta.index = desc.index;
                    meta.term = desc.term;
                    meta.set_conf_state(conf_state);
                    tracing::info!(
                        "partition {pid}: built a snapshot at index {} ({} bytes)",
                        desc.index,
                        desc.bytes
                    );
                    Building::Ready(snap)
                }
                Err(e) => crate::fatal::storage("building a snapshot", e),
            };
        })
        .detach();
        unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    #[test]
    fn append_overwrites_suffix_and_compaction_keeps_terms() {
        let mut s = LogStore::new(HardState::default(), ConfState::default(), 0, 0, vec![]);
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]);
        s.append(&[ent(3, 2), ent(4, 2)]);
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        s.compact_to(2);
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(matches!(s.term(1), Err(raft::Error::Store(StorageError::Compacted))));
        let got = s.entries(3, 5, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![3, 4]);
        assert!(s.entries(2, 4, None, GetEntriesContext::empty(false)).is_err());
    }

    #[test]
    fn bytes_are_counted_and_bound_the_compaction_index() {
        let big =
            |index: u64, n: usize| Entry { index, term: 1, data: vec![0; n], ..Default::default() };
        let mut s = LogStore::new(HardState::default(), ConfState::default(), 0, 0, vec![]);
        s.append(&[big(1, 100), big(2, 100), big(3, 100), big(4, 100)]);
        assert_eq!(s.bytes(), 400);
        s.append(&[big(3, 10)]);
        assert_eq!(s.bytes(), 210);
        assert_eq!(s.index_keeping_at_most(1000), 0);
        assert_eq!(s.index_keeping_at_most(110), 1);
        assert_eq!(s.index_keeping_at_most(5), 3);
        s.compact_to(1);
        assert_eq!(s.bytes(), 110);
        s.install_snapshot(9, 2, ConfState::default());
        assert_eq!(s.bytes(), 0);
    }
}
