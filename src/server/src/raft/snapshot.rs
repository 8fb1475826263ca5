//! Snapshots of any size: built to a file, streamed to the follower in bounded chunks with
//! flow control, checked, and only then stepped into Raft; installed off the shard loop.
//!
//! ```text
//!  leader                                         follower
//!  LogStore::snapshot ─▶ build (blocking) ─▶ send-p{p}-i{i}-t{t}.snap
//!  MsgSnapshot (data = descriptor) ─▶ send ─chunk 1 MiB─▶ on_chunk ─▶ write (blocking), ack
//!        at most WINDOW chunks unacknowledged ◀─ack──┘       last: fsync, check CRC ─▶ staged
//!  all acknowledged ─▶ MsgSnapshot ─────────────────────▶ step only if it matches the staged file
//!  report Finish (or Failure: raft-rs retries)            Ready ─▶ install (blocking) ─▶ turn resumes
//! ```
//! The leader keeps serving while it streams: chunks share the peer link with Raft traffic and
//! at most [`WINDOW`] × 1 MiB of them are in flight per transfer, [`MAX_SENDS`] transfers per
//! shard. The follower's other partitions keep ticking while one installs: the driver skips a
//! partition only while its install runs. A failed install stops the node (its log already
//! restarts at the snapshot: going on would apply later entries on stale state).
//!
//! Must never: hold a whole snapshot in memory, or block the shard loop on its files.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::{self, LocalSender};
use kahuna_core::snapshot_format::{self, Chunk, Descriptor, CHUNK_BYTES};
use raft::eraftpb::{Message, MessageType};

use crate::shard::{with_deadline, Shard};
use crate::storage::state::{ApplyState, StateDb, StorageError};
use kahuna_core::peer_frame::PeerFrame;

/// Chunks of one transfer sent and not yet acknowledged.
pub const WINDOW: u64 = 4;
/// Transfers one shard sends at once; raft-rs retries the others later.
pub const MAX_SENDS: usize = 2;
/// A transfer with no acknowledgement for this long has failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The snapshot transfers of one shard, both ways.
#[derive(Default)]
pub struct Snapshots {
    dir: PathBuf,
    /// Transfers being sent, by (partition, follower): their id, and where their
    /// acknowledgements go.
    sending: HashMap<(u64, u64), (u64, LocalSender<u64>)>,
    /// The id of the next transfer this shard sends (random high bits: unique across restarts).
    next_transfer: u64,
    /// Transfers being received, by partition.
    receiving: HashMap<u64, Receiving>,
    /// Complete, checked files, by partition, waiting for their MsgSnapshot.
    staged: HashMap<u64, (Descriptor, PathBuf)>,
    /// Files whose MsgSnapshot was stepped, waiting for the Ready that installs them: a newer
    /// transfer that completes meanwhile goes to `staged` and never replaces these.
    accepted: HashMap<u64, (Descriptor, PathBuf)>,
    /// Names each received file apart, so an abandoned transfer never writes into a new one.
    received: u64,
}

struct Receiving {
    from: u64,
    transfer: u64,
    index: u64,
    term: u64,
    total: u64,
    /// Where the next chunk must start.
    next: u64,
    chunks: LocalSender<Chunk>,
}

impl Snapshots {
    /// Starts with an empty `dir` (files of a previous run are never trusted).
    pub fn new(dir: PathBuf) -> std::io::Result<Snapshots> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Ok(Snapshots { dir, next_transfer: random << 20, ..Default::default() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn send_path(dir: &Path, d: &Descriptor) -> PathBuf {
    dir.join(format!("send-p{}-i{}-t{}.snap", d.partition, d.index, d.term))
}

/// Leader, on a blocking thread: writes the partition's snapshot file and returns its
/// descriptor. Older files of the partition are removed (a transfer still reading one keeps
/// its open file).
pub fn build(
    db: &StateDb,
    partition: u64,
    start: &[u8],
    end: &[u8],
    dir: &Path,
) -> Result<(Descriptor, Option<kahuna_core::PartitionInfo>), StorageError> {
    let tmp = dir.join(format!("build-p{partition}.tmp"));
    let (_, desc, info) = db.write_snapshot_file(partition, start, end, &tmp)?;
    let prefix = format!("send-p{partition}-");
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    std::fs::rename(&tmp, send_path(dir, &desc))?;
    Ok((desc, info))
}

/// Tells raft-rs how a transfer ended. Never called with the partitions borrowed: the ready
/// loop calls [`send`] while it holds them, so every report comes from a task.
fn report(shard: &Shard, partition: u64, to: u64, status: raft::SnapshotStatus) {
    if let Some(p) = shard.parts.borrow_mut().get_mut(&partition) {
        p.node.report_snapshot(to, status);
    }
    shard.kick();
}

/// Leader: a MsgSnapshot raft-rs wants sent. Streams the file first, then sends the message.
pub fn send(shard: &Rc<Shard>, partition: u64, msg: Message) {
    let to = msg.to;
    let key = (partition, to);
    let (tx, rx) = local_channel::new_bounded((WINDOW * 2) as usize);
    let transfer = {
        let mut s = shard.snapshots.borrow_mut();
        if s.sending.contains_key(&key) {
            return; // one transfer at a time to a follower; that one reports
        }
        if s.sending.len() >= MAX_SENDS {
            // Told later: the caller (the ready loop) holds the partitions, and a new task may
            // start running at once, so it yields first.
            let shard = shard.clone();
            glommio::spawn_local(async move {
                futures_lite::future::yield_now().await;
                report(&shard, partition, to, raft::SnapshotStatus::Failure);
            })
            .detach();
            return;
        }
        s.next_transfer += 1;
        let transfer = s.next_transfer;
        s.sending.insert(key, (transfer, tx));
        transfer
    };
    let shard = shard.clone();
    let span = tracing::info_span!("snapshot", partition, to);
    glommio::spawn_local(tracing::Instrument::instrument(
        async move {
            // Spawned while the ready loop holds the partitions: let it go first.
            futures_lite::future::yield_now().await;
            let sent = stream(&shard, partition, transfer, &msg, &rx).await;
            shard.snapshots.borrow_mut().sending.remove(&key);
            match sent {
                Ok(bytes) => {
                    if let Some(peers) = &shard.peers {
                        peers.send(to, PeerFrame::Raft { partition, msg: Box::new(msg) });
                    }
                    tracing::info!(
                        "partition {partition}: sent a snapshot ({bytes} bytes) to node {to}"
                    );
                    shard.metrics.snapshots_sent.inc();
                    report(&shard, partition, to, raft::SnapshotStatus::Finish);
                }
                Err(why) => {
                    tracing::warn!("partition {partition}: snapshot to node {to} failed: {why}");
                    report(&shard, partition, to, raft::SnapshotStatus::Failure);
                }
            }
        },
        span,
    ))
    .detach();
}

async fn stream(
    shard: &Rc<Shard>,
    partition: u64,
    transfer: u64,
    msg: &Message,
    acks: &local_channel::LocalReceiver<u64>,
) -> Result<u64, String> {
    let to = msg.to;
    let desc = Descriptor::decode(&msg.get_snapshot().data).map_err(|e| e.to_string())?;
    let peers = shard.peers.as_ref().ok_or("no peers")?;
    let path = send_path(shard.snapshots.borrow().dir(), &desc);
    let mut file = glommio::executor()
        .spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(|e| format!("opening the snapshot file: {e}"))?;
    let (mut offset, mut acked) = (0u64, 0u64);
    while acked < desc.bytes {
        while offset < desc.bytes && offset - acked < WINDOW * CHUNK_BYTES as u64 {
            let len = (desc.bytes - offset).min(CHUNK_BYTES as u64) as usize;
            let at = offset;
            let (f, data) = glommio::executor()
                .spawn_blocking(move || {
                    let mut data = vec![0u8; len];
                    file.seek(SeekFrom::Start(at))?;
                    file.read_exact(&mut data)?;
                    Ok::<_, std::io::Error>((file, data))
                })
                .await
                .map_err(|e| format!("reading the snapshot file: {e}"))?;
            file = f;
            let chunk = Chunk {
                partition,
                transfer,
                index: desc.index,
                term: desc.term,
                total: desc.bytes,
                offset,
                data,
            };
            if !peers.send(to, PeerFrame::SnapChunk(chunk)) {
                return Err("the peer link is down or full".into());
            }
            offset += len as u64;
        }
        match with_deadline(std::time::Instant::now() + ACK_TIMEOUT, acks.recv()).await {
            // Never more than was sent: an acknowledgement is a peer's word.
            Some(Some(upto)) => acked = acked.max(upto.min(offset)),
            Some(None) => return Err("transfer abandoned".into()),
            None => return Err(format!("no acknowledgement in {ACK_TIMEOUT:?} at byte {acked}")),
        }
    }
    Ok(desc.bytes)
}

/// Leader: the follower has the file of `transfer` up to `upto`.
pub fn on_ack(shard: &Shard, from: u64, partition: u64, transfer: u64, upto: u64) {
    if let Some((t, tx)) = shard.snapshots.borrow().sending.get(&(partition, from)) {
        if *t == transfer {
            let _ = tx.try_send(upto);
        }
    }
}

/// Follower: one chunk of a file a leader streams. A chunk at offset 0 starts a transfer
/// (replacing any older one of the partition); any other must continue the current one exactly,
/// else it is ignored and the leader's transfer times out and starts over.
pub fn on_chunk(shard: &Rc<Shard>, from: u64, chunk: Chunk) {
    let pid = chunk.partition;
    if !shard.parts.borrow().contains_key(&pid) {
        return;
    }
    let mut s = shard.snapshots.borrow_mut();
    if chunk.offset == 0 {
        let (tx, rx) = local_channel::new_bounded((WINDOW * 2) as usize);
        s.receiving.insert(
            pid,
            Receiving {
                from,
                transfer: chunk.transfer,
                index: chunk.index,
                term: chunk.term,
                total: chunk.total,
                next: 0,
                chunks: tx,
            },
        );
        s.received += 1;
        let path = s.dir.join(format!("recv-p{pid}-{}.part", s.received));
        glommio::spawn_local(receive(shard.clone(), from, pid, path, rx)).detach();
    }
    let Some(r) = s.receiving.get_mut(&pid) else { return };
    let continues = (r.from, r.transfer, r.index, r.term, r.total, r.next)
        == (from, chunk.transfer, chunk.index, chunk.term, chunk.total, chunk.offset);
    if !continues {
        return;
    }
    r.next += chunk.data.len() as u64;
    if r.chunks.try_send(chunk).is_err() {
        // More than the window in flight: not a leader of ours. Drop the transfer.
        s.receiving.remove(&pid);
    }
}

/// Follower: writes one transfer's chunks in order (on blocking threads), acknowledges each,
/// and stages the complete file once its length and CRC check out.
async fn receive(
    shard: Rc<Shard>,
    from: u64,
    pid: u64,
    path: PathBuf,
    chunks: local_channel::LocalReceiver<Chunk>,
) {
    // Spawned while the caller holds the shard's snapshot state: let it go first.
    futures_lite::future::yield_now().await;
    let p = path.clone();
    let Ok(mut file) = glommio::executor().spawn_blocking(move || std::fs::File::create(p)).await
    else {
        crate::fatal::storage("creating a snapshot file", path.display());
    };
    let mut crc = 0u32;
    // The file's header, checked as soon as it is all here (before the rest is written).
    let (mut header, mut checked) = (Vec::new(), false);
    // Only this transfer's own entry goes (a newer one may have replaced it).
    let forget = |transfer: u64| {
        let mut s = shard.snapshots.borrow_mut();
        if s.receiving.get(&pid).is_some_and(|r| (r.from, r.transfer) == (from, transfer)) {
            s.receiving.remove(&pid);
        }
    };
    while let Some(chunk) = chunks.recv().await {
        let end = chunk.offset + chunk.data.len() as u64;
        let done = end == chunk.total;
        if !checked {
            let want = snapshot_format::HEADER_BYTES - header.len();
            header.extend_from_slice(&chunk.data[..chunk.data.len().min(want)]);
            if header.len() == snapshot_format::HEADER_BYTES || done {
                checked = true;
                let ok = snapshot_format::check_transferred(&header, pid, chunk.index, chunk.term);
                if let Err(why) = ok {
                    // Never staged: the leader's transfer gets no more acknowledgements and
                    // starts over later; its snapshot message finds no file and is dropped.
                    tracing::error!(
                        "partition {pid}: refused the snapshot node {from} sends: {why} (every \
                         node must run a build of the same data format)"
                    );
                    forget(chunk.transfer);
                    break;
                }
            }
        }
        crc = crc32c::crc32c_append(crc, &chunk.data);
        let written = glommio::executor()
            .spawn_blocking(move || {
                file.write_all(&chunk.data)?;
                if done {
                    file.sync_all()?;
                }
                Ok::<_, std::io::Error>(file)
            })
            .await;
        file = match written {
            Ok(f) => f,
            Err(e) => crate::fatal::storage("writing a snapshot file", e),
        };
        if let Some(peers) = &shard.peers {
            let transfer = chunk.transfer;
            peers.send(from, PeerFrame::SnapAck { partition: pid, transfer, upto: end });
        }
        if done {
            let desc = Descriptor {
                partition: pid,
                index: chunk.index,
                term: chunk.term,
                bytes: chunk.total,
                crc,
            };
            forget(chunk.transfer);
            let mut s = shard.snapshots.borrow_mut();
            if let Some((_, old)) = s.staged.insert(pid, (desc, path.clone())) {
                if old != path {
                    let _ = std::fs::remove_file(old);
                }
            }
            tracing::info!(
                "partition {pid}: received a snapshot at index {} ({} bytes) from node {from}",
                chunk.index,
                chunk.total
            );
            return;
        }
    }
    // Abandoned (a newer transfer replaced it, or it stalled): its file goes.
    let _ = glommio::executor().spawn_blocking(move || std::fs::remove_file(path)).await;
}

/// Follower: whether a MsgSnapshot may be stepped: its descriptor names the file staged here,
/// complete and with the same CRC. Otherwise the message is dropped (the leader starts over).
pub fn accept(shard: &Shard, partition: u64, msg: &Message) -> bool {
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return true;
    }
    let Ok(desc) = Descriptor::decode(&msg.get_snapshot().data) else { return false };
    let meta = msg.get_snapshot().get_metadata();
    let mut s = shard.snapshots.borrow_mut();
    let matches = desc.partition == partition
        && (meta.index, meta.term) == (desc.index, desc.term)
        && s.staged.get(&partition).map(|(d, _)| *d) == Some(desc);
    if matches {
        // From here the file belongs to this message: a later transfer cannot replace it.
        let (d, path) = s.staged.remove(&partition).expect("a staged file");
        if let Some((_, old)) = s.accepted.insert(partition, (d, path.clone())) {
            if old != path {
                let _ = std::fs::remove_file(old);
            }
        }
    }
    matches
}

/// The install of a snapshot a Ready carried, running on a blocking thread.
/// Done: the descriptor the snapshot carried (its range then), if it carried one.
pub type Installed = Rc<RefCell<Option<Result<Option<kahuna_core::PartitionInfo>, StorageError>>>>;

/// A `Ready` that carried a snapshot, held while the snapshot installs: its WAL record and
/// answers count only once the state they follow is in RocksDB.
pub struct PendingInstall {
    pub index: u64,
    pub number: u64,
    pub record: Option<crate::storage::wal::WalRecord>,
    pub after_sync: Vec<Message>,
    pub committed: Vec<raft::eraftpb::Entry>,
    pub state: ApplyState,
    pub done: Installed,
}

/// Follower: installs the staged file of `partition` as its state at `state`, off the loop.
pub fn install(
    shard: &Rc<Shard>,
    partition: u64,
    (start, end): (Vec<u8>, Vec<u8>),
    state: ApplyState,
) -> Installed {
    let done: Installed = Rc::default();
    let accepted = shard.snapshots.borrow_mut().accepted.remove(&partition);
    let exact = |d: &Descriptor| (d.index, d.term) == (state.applied_index, state.applied_term);
    let Some((desc, path)) = accepted.filter(|(d, _)| exact(d)) else {
        *done.borrow_mut() = Some(Err(StorageError::Snapshot(format!(
            "partition {partition}: no accepted file for the snapshot at {}",
            state.applied_index
        ))));
        return done;
    };
    let db = shard.db.clone();
    let sst = shard.snapshots.borrow().dir.join(format!("install-p{partition}.sst"));
    let (slot, shard) = (done.clone(), shard.clone());
    glommio::spawn_local(async move {
        let result = glommio::executor()
            .spawn_blocking(move || {
                let r =
                    db.install_snapshot_file(partition, (&start, &end), &path, &sst, state, None);
                let _ = std::fs::remove_file(&path);
                r
            })
            .await;
        if result.is_ok() {
            shard.metrics.snapshots_installed.inc();
            tracing::info!(
                "partition {partition}: installed a snapshot at index {} term {} ({} bytes)",
                desc.index,
                desc.term,
                desc.bytes
            );
        }
        *slot.borrow_mut() = Some(result);
        shard.kick();
    })
    .detach();
    done
}
