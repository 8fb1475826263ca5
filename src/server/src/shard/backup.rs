//! Backups: a consistent copy of one partition, taken on its leader after a read barrier (so it
//! holds every write acknowledged before the backup asked), written to a file off the loop and
//! handed to the client in pieces of at most 1 MiB.
//!
//! 1. offset 0: the partition's range and apply state from one RocksDB snapshot go to a file
//!    (the snapshot format of `kahuna_core::snapshot_format`), named by the index it stands for;
//! 2. each request reads one piece of it; the last piece removes it;
//! 3. copies nobody asked for in [`IDLE`] go, and at most [`MAX_COPIES`] are kept per shard.
//!
//! Must never: read a range or a file on the shard loop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kahuna_core::snapshot_format::CHUNK_BYTES;
use kahuna_protocol::{BackupChunk, ErrorCode, Reply, WireError};

use super::Shard;

/// A copy unused this long is removed.
const IDLE: Duration = Duration::from_secs(120);
/// Copies kept per shard at once (a backup walks the partitions one at a time).
const MAX_COPIES: usize = 8;

/// One partition's copy, waiting to be read.
pub struct Copy {
    path: PathBuf,
    chunk: BackupChunk,
    used: Instant,
}

/// The copies of one shard, by (partition, index).
pub type Copies = HashMap<(u64, u64), Copy>;

impl Shard {
    /// Serves one piece of a backup of `partition` (the caller passed the read barrier).
    pub(super) async fn backup_chunk(
        &self,
        partition: u64,
        offset: u64,
        index: u64,
    ) -> Result<Reply, WireError> {
        self.forget_idle_copies();
        let index = if offset == 0 { self.take_copy(partition).await? } else { index };
        let Some((path, mut chunk)) =
            self.backups.borrow_mut().get_mut(&(partition, index)).map(|c| {
                c.used = Instant::now();
                (c.path.clone(), c.chunk.clone())
            })
        else {
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!("no backup copy of partition {partition} at {index} here; start it again"),
            ));
        };
        if offset > chunk.total {
            return Err(WireError::new(ErrorCode::Invalid, "offset past the end of the copy"));
        }
        let len = (chunk.total - offset).min(CHUNK_BYTES as u64) as usize;
        let p = path.clone();
        let read = glommio::executor()
            .spawn_blocking(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut f = std::fs::File::open(p)?;
                f.seek(SeekFrom::Start(offset))?;
                let mut data = vec![0u8; len];
                f.read_exact(&mut data)?;
                Ok::<_, std::io::Error>(data)
            })
            .await;
        chunk.data = match read {
            Ok(d) => d,
            Err(e) => crate::fatal::storage("reading a backup copy", e),
        };
        chunk.offset = offset;
        if offset + len as u64 == chunk.total {
            self.backups.borrow_mut().remove(&(partition, index));
            let _ = glommio::executor().spawn_blocking(move || std::fs::remove_file(path)).await;
        }
        Ok(Reply::BackupChunk(chunk))
    }

    /// Writes a copy of the partition to a file; returns the index it stands for.
    async fn take_copy(&self, partition: u64) -> Result<u64, WireError> {
        let (start, end) = match self.parts.borrow().get(&partition) {
            Some(p) => (p.info.start.clone(), p.info.end.clone()),
            None => return Err(WireError::new(ErrorCode::Moved, "the partition is not here")),
        };
        self.next_backup.set(self.next_backup.get() + 1);
        let path = self
            .snapshots
            .borrow()
            .dir()
            .join(format!("backup-p{partition}-{}.snap", self.next_backup.get()));
        let (db, p, s, e) = (self.db.clone(), path.clone(), start.clone(), end.clone());
        let written = glommio::executor()
            .spawn_blocking(move || db.write_snapshot_file(partition, &s, &e, &p))
            .await;
        let (state, desc, info) = match written {
            Ok(w) => w,
            Err(e) => crate::fatal::storage("writing a backup copy", e),
        };
        // The range as the copy's view had it (a split may have applied since it was looked up).
        let (start, end) = info.map(|i| (i.start, i.end)).unwrap_or((start, end));
        let chunk = BackupChunk {
            partition,
            start,
            end,
            index: desc.index,
            term: desc.term,
            hlc: state.applied_hlc,
            total: desc.bytes,
            crc: desc.crc,
            offset: 0,
            data: Vec::new(),
        };
        let mut copies = self.backups.borrow_mut();
        if copies.len() >= MAX_COPIES {
            let oldest = copies.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| *k);
            if let Some(c) = oldest.and_then(|k| copies.remove(&k)) {
                let _ = std::fs::remove_file(c.path);
            }
        }
        if let Some(old) =
            copies.insert((partition, desc.index), Copy { path, chunk, used: Instant::now() })
        {
            let _ = std::fs::remove_file(old.path);
        }
        Ok(desc.index)
    }

    fn forget_idle_copies(&self) {
        let now = Instant::now();
        self.backups.borrow_mut().retain(|_, c| {
            let keep = now.duration_since(c.used) < IDLE;
            if !keep {
                let _ = std::fs::remove_file(&c.path);
            }
            keep
        });
    }
}
