//! The shard's ready loop: the only code that writes the WAL and RocksDB.
//!
//! One turn, for all partitions of the shard at once:
//! 1. tick the Raft groups when the tick is due, sweep expired ephemeral state, hand leadership
//!    back to preferred replicas, and (each second) propose removing expired persistent keys;
//! 2. collect every partition's `Ready`: committed entries to apply, new entries and hard
//!    states to persist, read states to release;
//! 3. apply the committed entries into one RocksDB batch (with each partition's apply state);
//! 4. write all new entries and hard states as one WAL batch, one `fdatasync`;
//! 5. only then mark them persisted (`advance`), which may commit more: apply those too, and
//!    answer their waiters.
//!
//! The contract raft-rs asks for, kept here: entries and hard state are durable before the
//! messages that depend on them are sent and before they count as persisted; `applied_index`
//! is written in the same RocksDB batch as the state it describes.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::LocalReceiver;
use kahuna_core::state_machine::{self, ApplyCtx};
use kahuna_core::store::WriteBuffer;
use kahuna_core::{LogCommand, WriteOp};
use kahuna_protocol::{ErrorCode, Reply, WireError};
use raft::eraftpb::{Entry, EntryType, MessageType};

use super::quiesce::quiesce;
use super::split::{apply_split, split_half_upkeep, start_split_half, within_range, Created};
use super::Shard;
use crate::raft::snapshot;
use crate::storage::state::ApplyState;
use crate::storage::wal::{EntryRec, HardStateRec, Wal, WalRecord};
use kahuna_core::peer_frame::PeerFrame;

/// Entries kept in memory behind the applied index (for followers that lag a little).
const LOG_TAIL: u64 = 256;
/// Ephemeral keys looked at per partition per tick by the expiry sweep.
const SWEEP_BUDGET: usize = 1024;
/// Persistent keys the collector looks at per led partition per pass, and how often it passes.
const COLLECT_BATCH: usize = 512;
const COLLECT_EVERY_TICKS: u64 = 10;
/// How long a leader whose clock is off waits for a replica to be ready before handing over.
const STEP_DOWN_HOLD: Duration = Duration::from_secs(1);

pub fn entry_rec(e: &Entry) -> EntryRec {
    EntryRec {
        index: e.index,
        term: e.term,
        entry_type: e.get_entry_type() as i32,
        data: e.data.to_vec(),
        context: e.context.to_vec(),
    }
}

pub fn entry_from(r: EntryRec) -> Entry {
    let mut e = Entry { index: r.index, term: r.term, ..Default::default() };
    e.set_entry_type(match r.entry_type {
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    });
    e.data = r.data;
    e.context = r.context;
    e
}

fn send_messages(shard: &Rc<Shard>, partition: u64, msgs: Vec<raft::eraftpb::Message>) {
    let Some(peers) = &shard.peers else { return };
    for msg in msgs {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            // Its state goes first, in chunks; the message follows once the file is there.
            snapshot::send(shard, partition, msg);
            continue;
        }
        // A dropped message is retransmitted by Raft (heartbeats, append retries).
        peers.send(msg.to, PeerFrame::Raft { partition, msg: Box::new(msg) });
    }
}

/// A failure of the WAL or RocksDB leaves the node unable to keep its promises: stop it, so
/// that a restart recovers from what is durable (as etcd and TiKV do).
fn fatal(what: &str, err: impl std::fmt::Display) -> ! {
    crate::fatal::storage(what, err)
}

/// A tick this many tick periods late is logged.
const LATE_TICKS_LOGGED: u32 = 3;

/// Late ticks, reported at most once per [`LATE_REPORT_EVERY`] (a loop late at every tick
/// would otherwise log three lines a second).
#[derive(Default)]
struct Lateness {
    reported: Option<Instant>,
    worst: Duration,
    times: u64,
}

const LATE_REPORT_EVERY: Duration = Duration::from_secs(10);

impl Lateness {
    /// A tick `by` late (counted if at least `floor`); reports what was counted when a report
    /// is due, on a late tick or the next one on time.
    fn tick(&mut self, by: Duration, floor: Duration, report: impl FnOnce(Duration, u64)) {
        if by >= floor {
            self.worst = self.worst.max(by);
            self.times += 1;
        }
        let due = self.reported.is_none_or(|t| t.elapsed() >= LATE_REPORT_EVERY);
        if self.times > 0 && due {
            report(self.worst, self.times);
            (self.reported, self.worst, self.times) = (Some(Instant::now()), Duration::ZERO, 0);
        }
    }
}

pub async fn run(shard: Rc<Shard>, mut wal: Wal, kick: LocalReceiver<()>) {
    let tick = Duration::from_millis(shard.cfg.raft_tick_ms);
    let mut next_tick = Instant::now() + tick;
    let flushed: Rc<std::cell::RefCell<Option<HashMap<u64, u64>>>> = Default::default();
    let mut flushing = false;
    let mut held = Held::default();
    let mut lateness = Lateness::default();
    loop {
        let now = Instant::now();
        if now < next_tick {
            futures_lite::future::or(
                async {
                    kick.recv().await;
                },
                glommio::timer::sleep(next_tick - now),
            )
            .await;
        }
        if Instant::now() >= next_tick {
            let late = Instant::now() - next_tick;
            // Followers elect another leader after 10 ticks without a heartbeat: a loop this
            // late (a busy core, something blocking it) is the first thing to look for.
            lateness.tick(late, tick * LATE_TICKS_LOGGED, |worst, times| {
                tracing::warn!(
                    "shard {}: the loop ticked up to {} ms late ({times} times since the last \
                     report; something blocked it, or its core is busy)",
                    shard.id,
                    worst.as_millis()
                )
            });
            next_tick = Instant::now() + tick;
            on_tick(&shard);
            if shard.ticks.get().is_multiple_of(COLLECT_EVERY_TICKS) {
                super::split::check(&shard);
                crate::cluster::replicas::retire_stale(&shard);
                crate::cluster::balance::tick(&shard);
                gossip_map(&shard);
            }
        }
        turn(&shard, &mut wal, &mut held).await;
        let changed = std::mem::take(&mut *shard.map_outbox.borrow_mut());
        if !changed.is_empty() {
            tell_map(&shard, changed, true);
        }
        // Release WAL segments whose effects a finished flush made durable in RocksDB.
        if let Some(mut applied) = flushed.borrow_mut().take() {
            flushing = false;
            // A partition counted as gone when the flush began may have been adopted here again
            // since: its new entries are not in what the flush made durable, so none of its
            // segments go this time.
            {
                let parts = shard.parts.borrow();
                applied.retain(|pid, a| *a != u64::MAX || !parts.contains_key(pid));
            }
            match wal.release(&applied) {
                Ok(n) if n > 0 => tracing::debug!("shard {}: released {n} WAL segments", shard.id),
                Ok(_) => {}
                Err(e) => tracing::warn!("shard {}: releasing WAL segments: {e}", shard.id),
            }
            // A retired partition is remembered only while a segment holds its entries.
            shard.cluster.retired.borrow_mut().retain(|pid| wal.mentions(*pid));
        }
        // No flush while the disk is full: it would need space too, and fail (fatally).
        if !flushing && wal.sealed_segments() >= 2 && !shard.disk_full.get() {
            flushing = true;
            start_flush(&shard, flushed.clone());
        }
        glommio::yield_if_needed().await;
    }
}

/// Sends changed descriptors to the other shards of this node and, with `peers`, to the
/// same shard of every other node (which passes them on to its own shards).
pub fn tell_map(shard: &Rc<Shard>, infos: Vec<kahuna_core::PartitionInfo>, peers: bool) {
    if peers {
        if let Some(links) = &shard.peers {
            for id in links.peer_ids() {
                links.send(id, PeerFrame::Map(infos.clone()));
            }
        }
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        for other in 0..shard.cfg.shards {
            if other != shard.id {
                shard.mesh.tell(other, super::mesh::ShardMsg::Map(infos.clone())).await;
            }
        }
    })
    .detach();
}

/// Every 10 s, once the map has split partitions: this shard's whole map to its peers, so a
/// node that missed a split's news (it was down, or the frame was lost) catches up.
fn gossip_map(shard: &Rc<Shard>) {
    if !shard.ticks.get().is_multiple_of(COLLECT_EVERY_TICKS * 10) {
        return;
    }
    let map = shard.map();
    if map.partitions().iter().all(|p| p.epoch <= 1) {
        return;
    }
    let infos = map.partitions().iter().take(kahuna_core::peer_frame::MAX_DESCRIPTORS).cloned();
    tell_map(shard, infos.collect(), true);
}

/// Flushes RocksDB on a blocking thread; afterwards, every partition's applied index taken
/// before the flush is durable without the WAL.
fn start_flush(shard: &Rc<Shard>, done: Rc<std::cell::RefCell<Option<HashMap<u64, u64>>>>) {
    // Partitions this node left (their state was dropped in a batch this flush makes durable),
    // and logs a restart found of partitions the map says this node does not hold: nobody
    // needs their entries. Partitions held here count by their applied index.
    let map = shard.map();
    let mut gone: Vec<u64> = shard.cluster.retired.borrow().iter().copied().collect();
    for (pid, log) in shard.pending_logs.borrow_mut().iter_mut() {
        if map.get(*pid).is_some_and(|i| !i.holds(shard.node_id)) {
            // Only its votes are kept (checkpointed into every new segment).
            log.entries = Vec::new();
            gone.push(*pid);
        }
    }
    let mut applied: HashMap<u64, u64> = gone.into_iter().map(|pid| (pid, u64::MAX)).collect();
    applied.extend(shard.parts.borrow().iter().map(|(id, p)| (*id, p.applied.applied_index)));
    let db = shard.db.clone();
    glommio::spawn_local(async move {
        match glommio::executor().spawn_blocking(move || db.flush_blocking()).await {
            Ok(()) => *done.borrow_mut() = Some(applied),
            Err(e) => fatal("flushing RocksDB", e),
        }
    })
    .detach();
}

fn on_tick(shard: &Shard) {
    let now_ms = shard.now_ms();
    let now = Instant::now();
    let hold = Duration::from_secs(shard.cfg.leader_rebalance_secs);
    let mut freed = 0usize;
    // Heard from within two election timeouts: heartbeats come every two ticks.
    let alive_within = Duration::from_millis(shard.cfg.raft_tick_ms * 20);
    let heard = shard.heard.borrow();
    // A replica takes leadership only if it is alive and its clock is near ours (a node with a
    // far clock may not time leases). A leader whose own clock is off steps down.
    let offsets = shard.clock_offsets.borrow().clone();
    let max_offset = shard.cfg.max_clock_offset_ms;
    let clock_near = |n: u64| {
        offsets.get(n).is_none_or(|s| {
            s.offset_ms.unsigned_abs().saturating_sub(s.uncertainty_ms) <= max_offset
        })
    };
    let heard_from = |n: u64| heard.get(&n).is_some_and(|t| now.duration_since(*t) < alive_within);
    // A leader that may not time leases (its clock is off), or cannot write its log (its disk
    // is full: it would commit but never apply, so reads would wait on it), hands over.
    let clock_off = !shard.clock_verdict().ok;
    let step_down = clock_off || shard.disk_full.get();
    // With our own clock off, every other clock looks far from ours: any live replica will do.
    let alive = |n: u64| heard_from(n) && (clock_off || clock_near(n));
    let hold = if step_down { STEP_DOWN_HOLD } else { hold };
    // This tick's number (counted from 0), for everything that runs every so many ticks.
    let ticks = shard.ticks.get();
    let collect = ticks.is_multiple_of(COLLECT_EVERY_TICKS);
    if collect {
        shard.ping_clocks();
        report_gauges(shard);
    }
    shard.ticks.set(ticks + 1);
    for (pid, p) in shard.parts.borrow_mut().iter_mut() {
        let mut collected = false;
        // Each partition is swept once a second, at a tick of its own (so the shard's
        // partitions do not all read at the same tick); those with no key to expire once a
        // minute, spread over it.
        let due = (ticks + pid).is_multiple_of(COLLECT_EVERY_TICKS)
            && p.is_leader()
            && (p.ttl_keys
                || ((ticks + pid) / COLLECT_EVERY_TICKS + pid)
                    .is_multiple_of(IDLE_COLLECT_TICKS / COLLECT_EVERY_TICKS));
        if p.quiesced {
            if !p.is_leader() && !heard_from(p.leader_hint()) {
                // The leader's node fell silent: tick again, and elect another if need be.
                p.wake();
            } else if p.is_leader() && step_down {
                // A leader that must hand over (its clock is off, its disk full) wakes to do so.
                p.wake();
            } else {
                if due {
                    collect_expired(shard, p, now_ms); // a removal to propose wakes the group
                    collected = true;
                }
                if p.quiesced {
                    continue;
                }
            }
        }
        p.node.tick();
        p.idle_ticks += 1;
        split_half_upkeep(p, ticks, &mut freed);
        p.retry_reads(now);
        if due && !collected {
            collect_expired(shard, p, now_ms);
        }
        if shard.peers.is_some() && !hold.is_zero() {
            if let Some(to) = p.rebalance(shard.node_id, now, hold, alive, step_down) {
                let why = match (clock_off, step_down) {
                    (true, _) => "this node's clock is off",
                    (false, true) => "this node's disk is full",
                    _ => "its preferred leader",
                };
                tracing::info!("partition {pid}: handing leadership to node {to} ({why})");
            }
        }
        if !p.ephemeral.is_empty() {
            let before = p.ephemeral.bytes();
            let (lo, hi) = (vec![kahuna_core::keys::KIND_MIN], vec![0xff]);
            p.sweep_cursor =
                p.ephemeral.sweep(&lo, &hi, p.sweep_cursor.take(), SWEEP_BUDGET, &mut |k, v| {
                    state_machine::is_dead(k, v, now_ms)
                });
            freed += before - p.ephemeral.bytes();
        }
        // (Not while it must hand over: it would wake again at the next tick.)
        let after = shard.cfg.quiesce_after_ticks;
        if !step_down && kahuna_core::quiesce::should_quiesce(&p.group_state(), after) {
            quiesce(shard, *pid, p);
        }
    }
    shard.ephemeral_bytes.set(shard.ephemeral_bytes.get().saturating_sub(freed));
}

/// A led partition that held no key with a TTL at the collector's last whole pass is looked at
/// this seldom (every minute), not every second: a node holding thousands of idle partitions
/// would otherwise read each one every second, and a big partition's sweep would read all of
/// it every few seconds on the shard loop (a 36 MB partition's sweep stalled its loop for a
/// second in a debug build, long enough for its other partitions' followers to elect another
/// leader). A write with a TTL makes it looked at every second again.
const IDLE_COLLECT_TICKS: u64 = 600;

/// A collector's turn stops after this many bytes of records, whatever their count: a turn of
/// [`COLLECT_BATCH`] big values would hold the loop for as long as reading them takes.
const COLLECT_BYTES: usize = 1 << 20;

/// Once a second: the metrics that describe state rather than count events.
fn report_gauges(shard: &Shard) {
    let m = &shard.metrics;
    m.ephemeral_bytes.set(shard.ephemeral_bytes.get() as i64);
    m.quiesced.set(shard.parts.borrow().values().filter(|p| p.quiesced).count() as i64);
    m.disk_full.set(shard.disk_full.get() as i64);
    m.clock_ok.set(shard.clock_verdict().ok as i64);
    if let Some(peers) = &shard.peers {
        for peer in peers.peer_ids() {
            if let Some(s) = shard.clock_offsets.borrow().get(peer) {
                m.clock_offset(peer, s.offset_ms);
            }
        }
    }
    m.rocksdb_sst_bytes.set(shard.db.property("rocksdb.total-sst-files-size") as i64);
    m.rocksdb_memtable_bytes.set(shard.db.property("rocksdb.cur-size-all-mem-tables") as i64);
    m.rocksdb_write_stopped.set(shard.db.property("rocksdb.is-write-stopped") as i64);
    for (pid, p) in shard.parts.borrow().iter() {
        m.partition(&crate::metrics::PartitionGauges {
            partition: *pid,
            leader: p.is_leader(),
            term: p.term(),
            commit: p.node.raft.raft_log.committed,
            applied: p.applied.applied_index,
            proposals: p.proposals_in_flight(),
        });
    }
}

/// Looks at the next [`COLLECT_BATCH`] keys of a led partition and proposes removing those
/// whose TTL ran out more than the grace ago. Replicated like any write, so every replica frees
/// the same keys; a key written again meanwhile is kept at apply.
fn collect_expired(shard: &Shard, p: &mut crate::raft::partition::Partition, now_ms: u64) {
    use kahuna_core::store::Scan;
    let grace_ms = shard.cfg.expired_key_grace_secs.saturating_mul(1000);
    let (lo, hi) = kahuna_core::keys::kind_range(kahuna_core::keys::KV, &p.info.start, &p.info.end);
    let from = match p.collect_cursor.take() {
        Some(c) => c,
        None => lo,
    };
    let mut keys = Vec::new();
    let (mut seen, mut bytes) = (0, 0);
    let mut last = None;
    let mut ttl = false;
    shard.db.scan(&from, &hi, &mut |k, v| {
        seen += 1;
        bytes += k.len() + v.len();
        let expires_at = kahuna_core::records::peek_kv_expiry(v).unwrap_or(0);
        if state_machine::expired_before(expires_at, now_ms, grace_ms) {
            keys.push(k[1..].to_vec());
        }
        ttl |= expires_at != 0;
        last = Some(k.to_vec());
        seen < COLLECT_BATCH && bytes < COLLECT_BYTES
    });
    p.pass_saw_ttl |= ttl;
    // Go on after the last key looked at next time; wrap around at the end of the range.
    p.collect_cursor = match last {
        Some(mut k) if seen >= COLLECT_BATCH || bytes >= COLLECT_BYTES => {
            k.push(0);
            Some(k)
        }
        _ => {
            // A whole pass: whether the partition holds any key with a TTL (or a tombstone).
            p.ttl_keys = std::mem::take(&mut p.pass_saw_ttl);
            None
        }
    };
    if keys.is_empty() {
        return;
    }
    let data = shard.command(WriteOp::KvCollect { keys, grace_ms });
    // Nobody waits for the answer; a refused proposal (busy, leadership moving) is retried on a
    // later pass.
    let _ = p.propose(data);
    shard.kick();
}

/// A `Ready` handed to the WAL, to report durable once the batch is synced.
pub struct Handed {
    pub partition: u64,
    pub number: u64,
    /// Votes and append responses: only once what they promise is durable.
    pub after_sync: Vec<raft::eraftpb::Message>,
}

/// What one loop turn collected from every partition.
#[derive(Default)]
struct Batch {
    /// To write to the WAL, as one batch.
    records: Vec<WalRecord>,
    /// Readys whose persistence to report after the write.
    handed: Vec<Handed>,
    /// Committed entries to apply, per partition.
    committed: Vec<(u64, Vec<Entry>)>,
    /// Partitions whose snapshot was installed, and its index (raft-rs leaves applying it to us).
    restored: Vec<(u64, u64)>,
    /// Entry bytes in `records`.
    bytes: usize,
}

/// One pass of the ready loop over every partition of the shard, in `Ready` order:
/// 1. [`finish_installs`]: snapshots whose install finished join this turn;
/// 2. [`collect_readies`]: every other partition's `Ready`: messages that need no persistence
///    go out now, new entries and hard states go to the batch, a snapshot starts installing;
/// 3. [`persist_and_apply`]: one WAL write for the batch, while the committed entries (durable
///    already) are applied to RocksDB;
/// 4. [`advance`]: once durable, the messages that promised it go out, and raft-rs learns
///    the batch is persisted (which may commit more: the loop turns again at once).
///
/// Uses raft-rs's asynchronous-persistence API: a `Ready`'s entries go into the in-memory log
/// store at once (raft-rs reads them from there from `advance_append_async` on, and may send
/// them to followers), but they count as persisted, and so toward a commit, only after the WAL
/// sync, through `on_persist_ready`. Proposals made while the sync is in flight go into the
/// next `Ready`, so connection tasks never wait for the loop, and the entries they add are
/// group-committed together.
async fn turn(shard: &Rc<Shard>, wal: &mut Wal, held: &mut Held) {
    // A batch a full disk refused comes first: its records precede everything collected now.
    let mut batch = held.unsynced.take().unwrap_or_default();
    finish_installs(shard, &mut batch);
    if batch.bytes < MAX_UNSYNCED_BYTES && batch.records.len() < MAX_UNSYNCED_RECORDS {
        collect_readies(shard, &mut batch);
    }
    // Tests hold committed entries back (`defer_apply`), as a slow apply would: reads must
    // still never see a state older than what was acknowledged.
    let committed = if crate::faults::fired("defer_apply").is_some() {
        held.deferred.append(&mut batch.committed);
        Vec::new()
    } else {
        let mut all = std::mem::take(&mut held.deferred);
        all.append(&mut batch.committed);
        all
    };
    if batch.handed.is_empty() {
        apply(shard, committed);
        return;
    }
    if held.retry_at.is_some_and(|at| Instant::now() < at) {
        // The disk was full a moment ago: not yet time to try again.
        apply(shard, committed);
        held.unsynced = Some(batch);
        return;
    }
    match persist_and_apply(shard, wal, &batch.records, committed).await {
        Ok(()) => {
            held.retry_at = None;
            if shard.disk_full.replace(false) {
                tracing::warn!("shard {}: the WAL is written again; taking writes", shard.id);
            }
            advance(shard, batch.handed, &batch.restored);
        }
        Err(e) if is_no_space(&e) => {
            // The loop goes on (ticks, heartbeats, reads); new writes are refused; this batch is
            // written again shortly, unchanged. Nothing in it has been acknowledged.
            if !shard.disk_full.replace(true) {
                tracing::error!(
                    "shard {}: the disk is full ({e}); refusing writes until there is space",
                    shard.id
                );
            }
            held.unsynced = Some(batch);
            held.retry_at = Some(Instant::now() + NO_SPACE_RETRY);
            let kick = shard.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(NO_SPACE_RETRY).await;
                kick.kick();
            })
            .detach();
        }
        Err(e) => fatal("writing the WAL", e),
    }
}

/// What one turn leaves to the next.
#[derive(Default)]
pub struct Held {
    /// A batch the WAL could not take (a full disk): written again before anything newer.
    unsynced: Option<Batch>,
    /// Committed entries held back by the `defer_apply` failpoint.
    deferred: Vec<(u64, Vec<Entry>)>,
    /// When to try a refused batch again.
    retry_at: Option<Instant>,
}

/// How often a batch a full disk refused is tried again.
const NO_SPACE_RETRY: Duration = Duration::from_millis(200);
/// Entry bytes a refused batch may grow to while the disk is full; then no more Readys are
/// taken (raft-rs keeps what comes meanwhile, within its own bounds).
const MAX_UNSYNCED_BYTES: usize = 64 << 20;
/// The same bound in records (hard-state changes carry no entry bytes).
const MAX_UNSYNCED_RECORDS: usize = 16_384;

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

fn record_of(partition: u64, rd: &raft::Ready) -> Option<WalRecord> {
    let hard_state =
        rd.hs().map(|hs| HardStateRec { term: hs.term, vote: hs.vote, commit: hs.commit });
    (hard_state.is_some() || !rd.entries().is_empty()).then(|| WalRecord {
        partition,
        hard_state,
        entries: rd.entries().iter().map(entry_rec).collect(),
    })
}

/// Snapshot installs that finished since the last turn: the partition's state is the
/// snapshot's, and the `Ready` that carried it (its entries, hard state and answers) goes into
/// this turn's batch as if it had just been collected.
fn finish_installs(shard: &Shard, batch: &mut Batch) {
    let mut parts = shard.parts.borrow_mut();
    for (pid, p) in parts.iter_mut() {
        let finished = p.installing.as_ref().and_then(|i| i.done.borrow_mut().take());
        let Some(result) = finished else { continue };
        if let Err(e) = &result {
            fatal("installing a snapshot", e);
        }
        let inst = p.installing.take().expect("an install in flight");
        p.applied = inst.state;
        p.ttl_keys = true; // the new state may hold keys with a TTL
        p.pass_saw_ttl = true;
        if let Ok(Some(info)) = &result {
            if *info != p.info {
                // The snapshot was taken after a split this replica had not applied: its range
                // is the snapshot's now (the other half's replica here, if any, gets its own).
                tracing::info!(
                    "partition {pid}: the snapshot brings its range {:?} .. {:?} (epoch {})",
                    info.start,
                    info.end,
                    info.epoch
                );
                p.info = info.clone();
                shard.splits.forget(*pid);
                shard.learn_map(std::slice::from_ref(info));
                shard.map_outbox.borrow_mut().push(info.clone());
            }
        }
        batch.records.extend(inst.record);
        batch.handed.push(Handed {
            partition: *pid,
            number: inst.number,
            after_sync: inst.after_sync,
        });
        batch.restored.push((*pid, inst.index));
        batch.committed.push((*pid, inst.committed));
    }
}

/// Takes every partition's `Ready` (but those installing a snapshot: they wait for it).
fn collect_readies(shard: &Rc<Shard>, batch: &mut Batch) {
    let mut parts = shard.parts.borrow_mut();
    for (pid, p) in parts.iter_mut() {
        if p.installing.is_some() || !p.node.has_ready() {
            continue;
        }
        let mut rd = p.node.ready();
        if let Some(ss) = rd.ss() {
            let (old, new) = (p.role, ss.raft_state);
            p.role = new;
            if old == raft::StateRole::Leader && new != raft::StateRole::Leader {
                let freed = p.ephemeral.bytes();
                p.on_lost_leadership();
                shard.ephemeral_bytes.set(shard.ephemeral_bytes.get().saturating_sub(freed));
            }
            if new == raft::StateRole::Leader && old != raft::StateRole::Leader {
                tracing::info!("shard {}: partition {pid} leader at term {}", shard.id, p.term());
                let freed = p.on_became_leader();
                shard.ephemeral_bytes.set(shard.ephemeral_bytes.get().saturating_sub(freed));
            }
        }
        // Messages that do not depend on this Ready's persistence (a leader's appends) go now.
        send_messages(shard, *pid, rd.take_messages());
        for rs in rd.take_read_states() {
            p.on_read_state(rs.index, &rs.request_ctx);
        }
        if !rd.snapshot().is_empty() {
            // The partition's state comes whole: install it off the loop; everything else of
            // this Ready waits for it (`finish_installs`), and the partition with it.
            let meta = rd.snapshot().get_metadata();
            let state = ApplyState {
                applied_index: meta.index,
                applied_term: meta.term,
                applied_hlc: shard.hlc.borrow().last().0,
            };
            // raft-rs reads the log from storage from `advance_append_async` on: the log (not
            // the state machine, which the install brings) restarts at the snapshot now.
            let store = p.node.mut_store();
            store.install_snapshot(meta.index, meta.term, meta.get_conf_state().clone());
            store.append(rd.entries());
            if let Some(hs) = rd.hs() {
                store.hard_state = hs.clone();
            }
            p.installing = Some(snapshot::PendingInstall {
                index: meta.index,
                number: rd.number(),
                record: record_of(*pid, &rd),
                after_sync: rd.take_persisted_messages(),
                committed: rd.take_committed_entries(),
                state,
                done: snapshot::install(
                    shard,
                    *pid,
                    (p.info.start.clone(), p.info.end.clone()),
                    state,
                ),
            });
            p.node.advance_append_async(rd);
            continue;
        }
        batch.committed.push((*pid, rd.take_committed_entries()));
        batch.bytes += rd.entries().iter().map(|e| e.data.len()).sum::<usize>();
        batch.records.extend(record_of(*pid, &rd));
        let store = p.node.mut_store();
        store.append(rd.entries());
        if let Some(hs) = rd.hs() {
            store.hard_state = hs.clone();
        }
        batch.handed.push(Handed {
            partition: *pid,
            number: rd.number(),
            after_sync: rd.take_persisted_messages(),
        });
        p.node.advance_append_async(rd);
    }
}

/// Writes the batch to the WAL (one synchronous write) and, meanwhile, applies the committed
/// entries: raft-rs hands out only entries already persisted here. `zip` polls the append
/// first, which builds the batch (and its checkpoint) and submits the write before applying.
async fn persist_and_apply(
    shard: &Shard,
    wal: &mut Wal,
    records: &[WalRecord],
    committed: Vec<(u64, Vec<Entry>)>,
) -> std::io::Result<()> {
    if records.is_empty() {
        apply(shard, committed);
        return Ok(());
    }
    let checkpoint = || {
        shard
            .parts
            .borrow()
            .iter()
            .map(|(pid, p)| {
                let hs = &p.node.store().hard_state;
                WalRecord {
                    partition: *pid,
                    hard_state: Some(HardStateRec {
                        term: hs.term,
                        vote: hs.vote,
                        commit: hs.commit,
                    }),
                    entries: vec![],
                }
            })
            // Votes of partitions a restart found in the WAL but has not started again yet
            // (split halves and adopted replicas): old segments may go, their votes may not.
            .chain(shard.pending_logs.borrow().iter().filter_map(|(pid, log)| {
                let hs = log.hard_state.clone()?;
                Some(WalRecord { partition: *pid, hard_state: Some(hs), entries: vec![] })
            }))
            .collect()
    };
    let (started, before) = (Instant::now(), wal.bytes_written);
    let (written, ()) = futures_lite::future::zip(wal.append(records, checkpoint), async {
        apply(shard, committed)
    })
    .await;
    if written.is_ok() {
        shard.metrics.wal_write_seconds.observe(started.elapsed().as_secs_f64());
        shard.metrics.wal_batch_bytes.observe((wal.bytes_written - before) as f64);
    }
    written
}

/// The batch is durable: send what promised it, tell raft-rs, and turn again at once if that
/// made more ready.
fn advance(shard: &Rc<Shard>, handed: Vec<Handed>, restored: &[(u64, u64)]) {
    let mut more = false;
    let mut parts = shard.parts.borrow_mut();
    for h in handed {
        send_messages(shard, h.partition, h.after_sync);
        let Some(p) = parts.get_mut(&h.partition) else { continue };
        p.node.on_persist_ready(h.number);
        if let Some((_, index)) = restored.iter().find(|(pid, _)| *pid == h.partition) {
            // raft-rs commits a restored snapshot but leaves its applied index to us, once
            // the snapshot counts as persisted.
            p.node.advance_apply_to(*index);
        }
        more |= p.node.has_ready();
    }
    if more {
        shard.kick();
    }
}

/// Applies committed entries of several partitions as one RocksDB batch, then answers.
fn apply(shard: &Shard, batches: Vec<(u64, Vec<Entry>)>) {
    if batches.iter().all(|(_, e)| e.is_empty()) {
        return;
    }
    // `sleep(ms)` stalls the whole shard here, as a long pause of the process would.
    let _ = crate::faults::fired("pause_before_apply");
    let mut parts = shard.parts.borrow_mut();
    let mut buf = WriteBuffer::new(&shard.db);
    let mut states: Vec<(u64, ApplyState)> = Vec::new();
    let mut answers: Vec<(u64, u64, u64, Result<Reply, WireError>)> = Vec::new();
    let mut created: Vec<Created> = Vec::new();
    let mut changed = crate::cluster::replicas::Applied::default();
    for (pid, entries) in &batches {
        let Some(p) = parts.get_mut(pid) else { continue };
        if entries.is_empty() {
            continue;
        }
        for e in entries {
            if e.index <= p.applied.applied_index {
                continue; // replayed after a restart that had already applied it
            }
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                let result = match LogCommand::decode(&e.data) {
                    Ok(mut cmd) => {
                        shard.observe_hlc(cmd.hlc);
                        let txn_ttl = |steps: &[kahuna_core::command::TxnStep]| {
                            use kahuna_core::command::TxnStep::*;
                            steps
                                .iter()
                                .any(|s| matches!(s, Set { ttl_ms: 1.., .. } | Delete { .. }))
                        };
                        if matches!(
                            cmd.op,
                            WriteOp::KvSet { ttl_ms: 1.., .. }
                                | WriteOp::KvExtend { .. }
                                | WriteOp::KvDelete { .. }
                        ) || matches!(&cmd.op, WriteOp::Txn { then, otherwise, .. }
                            if txn_ttl(then) || txn_ttl(otherwise))
                            || matches!(
                                &cmd.op,
                                WriteOp::Script { .. } | WriteOp::TxnResolve { .. }
                            )
                        {
                            // Something for the collector, soon; and the pass under way
                            // may have gone past this key already.
                            p.ttl_keys = true;
                            p.pass_saw_ttl = true;
                        }
                        let ctx = ApplyCtx::persistent(&cmd, e.term, &p.info.start);
                        let result = match &cmd.op {
                            WriteOp::Lead { node, epoch } => crate::cluster::replicas::apply_lead(
                                shard, p, &mut buf, *node, *epoch,
                            ),
                            WriteOp::Split { .. } => apply_split(
                                shard,
                                p,
                                &mut buf,
                                &cmd,
                                &ctx,
                                (e.term, &mut states, &mut created),
                            ),
                            _ => match within_range(&p.info, &mut cmd.op) {
                                Ok(()) => state_machine::apply(&mut buf, &cmd.op, &ctx),
                                Err(moved) => Err(moved),
                            },
                        };
                        if let (
                            WriteOp::LockAcquire { resource, owner, lease_ms },
                            Ok(Reply::Lock(l)),
                        ) = (&cmd.op, &result)
                        {
                            // Every replica says how it decided each acquire (lock exclusion
                            // is audited from these when a fault test fails).
                            tracing::debug!(
                                target: "kahuna::locks",
                                "partition {pid}: entry {}/{} at hlc_ms {} ({} ms lease): {:?} \
                                 for {:?} -> acquired {} token {} expires {}",
                                e.index,
                                e.term,
                                ctx.now_ms,
                                lease_ms,
                                String::from_utf8_lossy(resource),
                                String::from_utf8_lossy(owner),
                                l.acquired,
                                l.fencing_token,
                                l.expires_at_ms
                            );
                        }
                        if let (WriteOp::KvCollect { .. }, Ok(Reply::KvDelete { revision, .. })) =
                            (&cmd.op, &result)
                        {
                            // The collector's answer counts the keys it removed.
                            shard.metrics.expired_keys_collected.inc_by(*revision);
                        }
                        result
                    }
                    Err(err) => {
                        tracing::error!(
                            "partition {pid}: entry {} cannot be decoded: {err}",
                            e.index
                        );
                        Err(WireError::new(ErrorCode::Internal, err.to_string()))
                    }
                };
                answers.push((*pid, e.index, e.term, result));
            }
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                let result =
                    crate::cluster::replicas::apply_change(shard, p, &mut buf, e, &mut changed);
                if let Some(result) = result {
                    answers.push((*pid, e.index, e.term, result));
                }
            }
            let applied_hlc = p.applied.applied_hlc.max(shard.hlc.borrow().last().0);
            p.applied = ApplyState { applied_index: e.index, applied_term: e.term, applied_hlc };
        }
        states.push((*pid, p.applied));
    }
    if let Err(e) = shard.db.commit(buf.into_writes(), &states) {
        fatal("writing RocksDB", e);
    }
    // The new halves' state and descriptors are durable with the entry's effects: start them.
    for c in created {
        start_split_half(shard, &mut parts, c);
    }
    for (pid, index, term, result) in answers {
        if let Some(p) = parts.get_mut(&pid) {
            p.complete(index, term, result);
        }
    }
    for (pid, entries) in batches {
        let Some(p) = parts.get_mut(&pid) else { continue };
        if entries.is_empty() {
            continue;
        }
        p.node.advance_apply_to(p.applied.applied_index);
        p.release_reads();
        let mut keep_from = p.applied.applied_index.saturating_sub(LOG_TAIL);
        if p.is_leader() {
            // Keep what a lagging follower still needs, up to a bound; past it the follower
            // needs a snapshot.
            let slowest =
                p.node.raft.prs().iter().map(|(_, pr)| pr.matched).min().unwrap_or(keep_from);
            keep_from = keep_from
                .min(slowest)
                .max(p.applied.applied_index.saturating_sub(shard.cfg.max_log_entries_in_memory));
        }
        // Bounded in bytes too: past it, a lagging follower gets a snapshot.
        let max_bytes = shard.cfg.max_log_mb_in_memory << 20;
        if p.node.store().bytes() > max_bytes {
            keep_from = keep_from.max(p.node.store().index_keeping_at_most(max_bytes));
        }
        if std::mem::take(&mut p.compact_on_apply) {
            keep_from = p.applied.applied_index;
        }
        // Never past what raft-rs itself counts as applied: it reads unapplied entries back (for
        // example when it becomes leader).
        keep_from = keep_from.min(p.node.raft.raft_log.applied);
        p.node.mut_store().compact_to(keep_from);
    }
    drop(parts);
    for pid in changed.retired {
        crate::cluster::replicas::retire(shard, pid);
    }
}
