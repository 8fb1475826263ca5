//! Restoring a cluster from a backup (`kahuna-cli backup create DIR`): each node of a new
//! cluster starts with `--restore-from DIR` on an empty data directory, and every partition it
//! holds a replica of starts from the backup's copy, at the copy's index and term, instead of
//! from nothing. Every replica of a partition starts from the same copy, so they agree.
//!
//! 1. [`read`] checks the manifest and every file against its length and CRC32C, and that the
//!    backup's partitions cover the key space exactly: a damaged or partial backup is refused,
//!    naming what is wrong, before anything is written. The backup's partitions (as splits
//!    left them, whatever `--partitions` says) become the new cluster's, placed on its nodes
//!    and shards as a new cluster's are;
//! 2. each shard installs its partitions' copies into its RocksDB (one ingested SST each, as a
//!    snapshot is installed) before it recovers its Raft groups from them.
//!
//! Must never: start a node from a backup whose files do not check out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kahuna_core::PartitionMap;
use serde::Deserialize;

use crate::storage::state::ApplyState;

/// One partition's copy, checked.
#[derive(Clone, Debug)]
pub struct Copy {
    pub path: PathBuf,
    pub state: ApplyState,
}

/// The checked copies of a backup, by partition id.
pub type Backup = BTreeMap<u64, Copy>;

#[derive(Deserialize)]
struct Manifest {
    format: u32,
    partitions: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: u64,
    start: String,
    end: String,
    index: u64,
    term: u64,
    hlc: u64,
    bytes: u64,
    crc32c: u32,
    file: String,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The length and CRC32C of a file, read in pieces (a partition's copy can be larger than
/// memory should hold).
fn checksum(path: &Path) -> std::io::Result<(u64, u32)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((len, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

/// Reads and checks the backup in `dir`, and places its partitions on the cluster being
/// started (`shards` per node, `nodes`, `replication`): the copies and the new cluster's map.
/// Reads every file once (blocking; before any shard starts).
pub fn read(
    dir: &Path,
    shards: usize,
    nodes: &[u64],
    replication: usize,
) -> Result<(Backup, PartitionMap), String> {
    let at = |what: &str| format!("backup {}: {what}", dir.display());
    let text = std::fs::read_to_string(dir.join("manifest.json"))
        .map_err(|e| at(&format!("manifest.json: {e}")))?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| at(&format!("manifest.json is damaged: {e}")))?;
    // 2: revisions stored under escaped keys (data format 4); a format 1 backup's would be
    // misread.
    if m.format != 2 {
        return Err(at(&format!("manifest format {} (this build reads 2)", m.format)));
    }
    let mut backup = Backup::new();
    let mut ranges = Vec::new();
    for e in &m.partitions {
        let (Some(start), Some(end)) = (unhex(&e.start), unhex(&e.end)) else {
            return Err(at(&format!("partition {}: its range is damaged", e.id)));
        };
        ranges.push((e.id, start, end));
        if e.file.contains('/') || e.file.contains("..") {
            return Err(at(&format!("partition {}: file name {:?}", e.id, e.file)));
        }
        let path = dir.join(&e.file);
        let (len, crc) = checksum(&path).map_err(|err| at(&format!("{}: {err}", e.file)))?;
        if len != e.bytes || crc != e.crc32c {
            return Err(at(&format!(
                "{} is damaged: {len} bytes with CRC32C {crc:08x}, the manifest says {} bytes, \
                 {:08x}",
                e.file, e.bytes, e.crc32c
            )));
        }
        let state = ApplyState { applied_index: e.index, applied_term: e.term, applied_hlc: e.hlc };
        backup.insert(e.id, Copy { path, state });
    }
    ranges.sort_by(|a, b| a.1.cmp(&b.1));
    let map = PartitionMap::placed(ranges, shards, nodes, replication).map_err(|e| {
        at(&format!("its partitions do not cover the key space ({e}): a copy is missing"))
    })?;
    Ok((backup, map))
}
