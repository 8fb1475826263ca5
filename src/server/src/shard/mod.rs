//! A shard: one glommio executor pinned to one core, owning its partitions, their Raft groups,
//! its WAL and its RocksDB. Nothing here is shared with another thread except through the
//! channel mesh (`mesh`) and the RocksDB handle lent to a blocking flush.
//!
//! ```text
//!  connection task ──execute──▶ partition on this shard? ──yes──▶ Partition (propose / read)
//!                                      │ no                               │ kick
//!                                      ▼                                  ▼
//!                               mesh ──▶ owning shard            driver: ready loop (WAL, apply)
//! ```
//! Around it: `route` (where a request runs: this shard, another shard, another node),
//! `driver` (the ready loop: WAL, apply, ticks), `split`, `quiesce`, `mesh`, `status`, `backup`.
//!
//! Must never: block the executor (RocksDB flushes go to `spawn_blocking`), hold a `RefCell`
//! borrow across an `.await`, or grow a queue without a bound.

mod backup;
pub mod driver;
pub mod mesh;
pub mod quiesce;
pub mod route;
pub mod split;
mod status;
pub mod txn;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::LocalSender;
use kahuna_core::clock_offsets::{ClockOffsets, ClockVerdict};
use kahuna_core::command::into_write;
use kahuna_core::hlc::{Hlc, HlcClock};
use kahuna_core::state_machine::{self, ApplyCtx, Bounds};
use kahuna_core::{ApplySettings, Limits, LogCommand, PartitionMap, WriteOp};
use kahuna_protocol::{ErrorCode, Op, Reply, WireError};

use route::{holds, moved_key};

use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::raft::partition::Partition;
use crate::storage::state::StateDb;
use crate::transport::peer::PeerLinks;
use kahuna_core::peer_frame::PeerFrame;

/// An answer and the leader hint that goes with it.
pub type Answer = (Result<Reply, WireError>, u64);

pub struct Shard {
    pub id: usize,
    pub node_id: u64,
    pub cfg: Rc<NodeConfig>,
    pub limits: Limits,
    /// The node's partition map as this shard knows it: replaced (never edited in place) when
    /// a split applies here or news of one arrives; see [`Shard::learn_map`].
    map: RefCell<Rc<PartitionMap>>,
    /// Descriptors changed here (by splits) to tell the other shards and nodes; the driver
    /// sends them after each turn.
    pub map_outbox: RefCell<Vec<kahuna_core::PartitionInfo>>,
    /// Splits and their triggers (see [`split`]).
    pub splits: split::SplitState,
    /// Logs the WAL recovered for partitions that do not exist yet: a split whose effects
    /// RocksDB had not made durable before a crash creates them again when it is replayed,
    /// and they resume from these (their entries and votes).
    pub pending_logs: RefCell<crate::storage::wal::RecoveredLogs>,
    pub parts: RefCell<BTreeMap<u64, Partition>>,
    pub db: StateDb,
    pub hlc: RefCell<HlcClock>,
    pub clock: SystemClock,
    kick: LocalSender<()>,
    pub ephemeral_bytes: Cell<usize>,
    pub mesh: mesh::MeshLink,
    pub connections: Cell<usize>,
    /// Links to the same shard of every other node; `None` on a one-node cluster.
    pub peers: Option<PeerLinks>,
    forwarded: crate::transport::peer::ForwardWaiters,
    next_forward: Cell<u64>,
    /// Raft ticks so far (the expired-key collector runs every few).
    pub ticks: Cell<u64>,
    /// Requests this shard forwarded to another node (reported by `cluster status`).
    pub forwarded_count: Cell<u64>,
    /// Requests other nodes forwarded here, being served now.
    serving_forwarded: Cell<usize>,
    /// When a Raft message last came from each node: who is alive, for leader rebalancing.
    pub heard: RefCell<std::collections::HashMap<u64, std::time::Instant>>,
    /// When a far-ahead timestamp was last reported (the warning is rate-limited).
    clock_warned: Cell<Option<std::time::Instant>>,
    /// This node's clock against each peer's, measured over this shard's links.
    pub clock_offsets: RefCell<ClockOffsets>,
    /// Whether this node may time leases (the last verdict, to log changes).
    /// What the last clock verdict said, to log its changes: 0 not settled (too few peers
    /// answered to tell), 1 within the maximum offset, 2 off from most of its peers.
    clock_state: Cell<u8>,
    /// Snapshot files being sent, received and staged.
    pub snapshots: RefCell<crate::raft::snapshot::Snapshots>,
    /// The WAL refused a batch for lack of space: writes are refused until it takes one again.
    pub disk_full: Cell<bool>,
    /// This shard's series of the node's Prometheus metrics.
    pub metrics: crate::metrics::ShardMetrics,
    /// Backup copies being read by clients.
    backups: RefCell<backup::Copies>,
    next_backup: Cell<u64>,
    /// Members, peer links and replica moves (see [`crate::cluster`]).
    pub cluster: crate::cluster::ClusterState,
}

/// Scan pages of up to this many keys read on the shard loop (a few hundred microseconds at
/// most); bigger ones on a blocking thread.
const SCAN_ON_LOOP_KEYS: u32 = 256;

/// A random number for this process, different on every start.
fn process_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() & 0xffff_ffff
}

fn timeout_error(what: &str) -> WireError {
    WireError::new(ErrorCode::Timeout, format!("deadline passed while {what}"))
}

/// Runs `fut` until `deadline`; `None` when the deadline passed first.
pub async fn with_deadline<T>(
    deadline: std::time::Instant,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(left).await;
        None
    })
    .await
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        cfg: Rc<NodeConfig>,
        map: PartitionMap,
        parts: BTreeMap<u64, Partition>,
        db: StateDb,
        hlc: HlcClock,
        kick: LocalSender<()>,
        mesh: mesh::MeshLink,
        peers: Option<PeerLinks>,
        snapshots: crate::raft::snapshot::Snapshots,
        metrics: crate::metrics::ShardMetrics,
    ) -> Shard {
        let forwarded = peers.as_ref().map(|p| p.waiters().clone()).unwrap_or_default();
        Shard {
            id,
            node_id: cfg.id,
            limits: cfg.limits(),
            splits: split::SplitState::new(&cfg),
            cfg,
            map: RefCell::new(Rc::new(map)),
            map_outbox: RefCell::default(),
            pending_logs: RefCell::default(),
            parts: RefCell::new(parts),
            db,
            hlc: RefCell::new(hlc),
            clock: SystemClock::default(),
            kick,
            ephemeral_bytes: Cell::new(0),
            mesh,
            connections: Cell::new(0),
            peers,
            forwarded,
            // Tokens of different runs differ: an answer to a request this node sent before a
            // restart must never complete a new request that happens to reuse its number.
            next_forward: Cell::new(process_epoch() << 32 | 1),
            heard: Default::default(),
            forwarded_count: Cell::new(0),
            serving_forwarded: Cell::new(0),
            ticks: Cell::new(0),
            clock_warned: Cell::new(None),
            clock_offsets: RefCell::default(),
            // Not measured yet: a node starts granting leases once its peers answered.
            clock_state: Cell::new(0),
            snapshots: RefCell::new(snapshots),
            disk_full: Cell::new(false),
            metrics,
            backups: RefCell::default(),
            next_backup: Cell::new(0),
            cluster: Default::default(),
        }
    }

    /// A write as a log entry: stamped with this leader's clock and the settings that decide
    /// what applying it does, so every replica applies it alike.
    pub fn command(&self, op: WriteOp) -> Vec<u8> {
        let hlc = self.hlc.borrow_mut().now(self.clock.now_ms()).0;
        LogCommand { hlc, settings: self.apply_settings(), op }.encode()
    }

    pub fn apply_settings(&self) -> ApplySettings {
        ApplySettings {
            history_retention: self.limits.history_retention,
            max_clock_offset_ms: self.cfg.max_clock_offset_ms,
        }
    }

    /// Takes a timestamp from the log into this node's clock, but never one further ahead of
    /// the local wall clock than the offset the cluster assumes: a node with a fast clock must
    /// not drag every other node's leases and TTLs forward with it.
    pub fn observe_hlc(&self, hlc: u64) {
        let wall = self.clock.now_ms();
        let max = self.cfg.max_clock_offset_ms;
        let cut = self.hlc.borrow_mut().observe_bounded(Hlc(hlc), wall, max);
        if cut > 0 {
            let now = std::time::Instant::now();
            let quiet = self
                .clock_warned
                .get()
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10));
            if quiet {
                self.clock_warned.set(Some(now));
                tracing::warn!(
                    "shard {}: a log entry is stamped {} ms ahead of this node's clock (more than \
                     max_clock_offset_ms {max}); not taken into this node's clock",
                    self.id,
                    cut + max
                );
            }
        }
    }

    /// What this node's clock looks like against its peers'.
    pub fn clock_verdict(&self) -> ClockVerdict {
        let peers = self.peers.as_ref().map(|p| p.count()).unwrap_or(0);
        let now = self.clock.now_ms();
        let max = self.cfg.max_clock_offset_ms;
        let v = self.clock_offsets.borrow().verdict(now, max, peers);
        let state = if v.ok {
            1
        } else if v.far * 2 > peers {
            // Far from most of all its peers: certainly this node (one far peer among
            // few samples could be that peer's clock).
            2
        } else {
            0
        };
        let changed = state != self.clock_state.replace(state);
        if changed && peers > 0 {
            if state == 1 {
                tracing::info!(
                    "shard {}: this node's clock is within max_clock_offset_ms of its peers' \
                     (measured against {} of {}); granting leases",
                    self.id,
                    v.known,
                    peers
                );
            } else if state == 0 {
                tracing::warn!(
                    "shard {}: this node's clock is not settled: measured against {} of its {} \
                     peers, {} of them far; it grants no leases until more answer",
                    self.id,
                    v.known,
                    peers,
                    v.far
                );
            } else {
                tracing::error!(
                    "shard {}: this node's clock is about {} ms from its peers' ({} of {} further than max_clock_offset_ms {}); it grants no leases until that is fixed",
                    self.id,
                    -v.median_offset_ms,
                    v.far,
                    peers,
                    self.cfg.max_clock_offset_ms
                );
            }
        }
        v
    }

    /// Asks every peer for its clock (once a second, from the tick).
    pub fn ping_clocks(&self) {
        let Some(peers) = &self.peers else { return };
        let sent_ms = self.clock.now_ms();
        for id in peers.peer_ids() {
            peers.send(id, PeerFrame::ClockPing { sent_ms });
        }
    }

    pub fn on_clock_pong(&self, from: u64, sent_ms: u64, remote_ms: u64) {
        let now = self.clock.now_ms();
        self.clock_offsets.borrow_mut().record(from, sent_ms, remote_ms, now);
        self.clock_verdict();
    }

    /// A lease (lock grant or extension) is timed by this node's clock: refused while that
    /// clock is off from most of its peers'.
    fn check_lease_clock(&self, op: &Op) -> Result<(), WireError> {
        let leases = |o: &Op| matches!(o, Op::LockAcquire { .. } | Op::LockExtend { .. });
        let times_a_lease = match op {
            Op::Txn { then, otherwise, .. } => then.iter().chain(otherwise).any(leases),
            other => leases(other) || txn::prepares_a_lease(other),
        };
        if !times_a_lease {
            return Ok(());
        }
        let v = self.clock_verdict();
        if v.ok {
            return Ok(());
        }
        Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "node {}'s clock is about {} ms from most of its peers' (more than max_clock_offset_ms {}): it grants no leases until that is fixed",
                self.node_id, -v.median_offset_ms, self.cfg.max_clock_offset_ms
            ),
        ))
    }

    /// Wakes the ready loop; a wake-up already pending is enough.
    pub fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    pub fn now_ms(&self) -> u64 {
        self.hlc.borrow_mut().now(self.clock.now_ms()).physical_ms()
    }

    pub fn deadline(&self, timeout_ms: u32) -> std::time::Instant {
        // At most a minute either way (a transaction's record outlives its coordinator's
        // retries only if they end by then: see `intents::RECORD_KEEP_MS`).
        let ms = if timeout_ms == 0 {
            self.cfg.default_timeout_ms.min(60_000)
        } else {
            (timeout_ms as u64).min(60_000)
        };
        std::time::Instant::now() + Duration::from_millis(ms)
    }

    /// The partition map as this shard knows it now.
    pub fn map(&self) -> Rc<PartitionMap> {
        self.map.borrow().clone()
    }

    /// Takes newer descriptors into this shard's map; true if it changed. Descriptors that
    /// cannot be right here (a shard this node does not run, no replicas, an empty range) are
    /// refused whole: a map routes every request.
    pub fn learn_map(&self, infos: &[kahuna_core::PartitionInfo]) -> bool {
        let sane = |i: &kahuna_core::PartitionInfo| {
            i.shard < self.cfg.shards
                && !i.replicas.is_empty()
                && (i.end.is_empty() || i.start < i.end)
        };
        if let Some(bad) = infos.iter().find(|i| !sane(i)) {
            tracing::warn!("a partition map with an impossible descriptor was refused: {bad:?}");
            return false;
        }
        let next = self.map.borrow().update(infos);
        match next {
            Some(m) => {
                if let Err(e) = self.db.put_map(m.partitions()) {
                    crate::fatal::storage("writing the partition map", e);
                }
                *self.map.borrow_mut() = Rc::new(m);
                true
            }
            None => false,
        }
    }

    /// A frame came from node `from`: it is up (leader rebalancing and quiesced followers look
    /// here). Only members are noted: the id in a frame is the sender's word, and the map must
    /// not grow with whatever ids a bad peer makes up.
    pub fn note_heard(&self, from: u64) {
        if self.peers.as_ref().is_some_and(|p| p.peer_ids().contains(&from)) {
            self.heard.borrow_mut().insert(from, std::time::Instant::now());
        }
    }

    /// A Raft message from a peer for one of this shard's partitions.
    pub fn step_raft(&self, partition: u64, msg: raft::eraftpb::Message) {
        self.note_heard(msg.from);
        // A snapshot's state comes beside the message, in chunks: step it only once that is
        // here, whole and checked.
        if !crate::raft::snapshot::accept(self, partition, &msg) {
            tracing::info!(
                "partition {partition}: a snapshot message from node {} came without its file; dropped",
                msg.from
            );
            return;
        }
        if !self.parts.borrow().contains_key(&partition) && !self.adopt(partition, &msg) {
            return; // not ours (yet): its leader sends again
        }
        // A quiesced follower hearing from a replica other than its leader wakes the leader.
        let wake_leader = self.parts.borrow().get(&partition).and_then(|p| {
            let leader = p.leader_hint();
            (p.quiesced && !p.is_leader() && leader != 0 && msg.from != leader).then_some(leader)
        });
        if let (Some(leader), Some(peers)) = (wake_leader, &self.peers) {
            peers.send(leader, PeerFrame::Wake { partition });
        }
        let reply = match self.parts.borrow_mut().get_mut(&partition) {
            Some(p) => p.step_peer(self.node_id, msg),
            None => None,
        };
        if let (Some(r), Some(peers)) = (reply, &self.peers) {
            peers.send(r.to, PeerFrame::Raft { partition, msg: Box::new(r) });
        }
        self.kick();
    }

    fn with_partition<T>(
        &self,
        partition: u64,
        f: impl FnOnce(&mut Partition) -> Result<T, WireError>,
    ) -> Result<T, WireError> {
        let mut parts = self.parts.borrow_mut();
        match parts.get_mut(&partition) {
            Some(p) => f(p),
            None => Err(WireError::new(
                ErrorCode::Moved,
                format!("partition {partition} is not on this shard"),
            )),
        }
    }

    fn ephemeral_read(&self, partition: u64, op: &Op) -> Result<Reply, WireError> {
        let now_ms = self.now_ms();
        let limits = &self.limits;
        self.with_partition(partition, |p| {
            p.ensure_ephemeral_leader()?;
            holds(p, op)?;
            let bounds = Bounds { start: &p.info.start, end: &p.info.end };
            state_machine::read(&p.ephemeral, op, now_ms, bounds, limits)
        })
    }

    fn ephemeral_write(&self, partition: u64, op: Op) -> Result<Reply, WireError> {
        let Ok(wop) = into_write(op) else { unreachable!("ephemeral_write takes writes") };
        let now_ms = self.now_ms();
        let budget = self.cfg.ephemeral_mb_per_shard << 20;
        let settings = self.apply_settings();
        let total = self.ephemeral_bytes.get();
        let (reply, delta) = self.with_partition(partition, |p| {
            p.ensure_ephemeral_leader()?;
            if !wop.keys().iter().all(|k| p.info.contains(k)) {
                return Err(moved_key(p.info.id));
            }
            if let Some(at) = &p.splitting_at {
                if wop.keys().iter().any(|k| *k >= at.as_slice()) {
                    return Err(WireError::new(
                        ErrorCode::Unavailable,
                        "the partition is splitting at this key; retry",
                    ));
                }
            }
            // Full: deletes and releases (and transactions of nothing else) still go, to make
            // room.
            if total >= budget && !wop.frees_only() {
                return Err(WireError::new(
                    ErrorCode::TooLarge,
                    format!("ephemeral memory of this shard is full ({total} of {budget} bytes)"),
                ));
            }
            // Above every token an earlier leader of this partition could have granted.
            let floor = (p.term() << 40) | (p.ephemeral_grants & ((1 << 40) - 1));
            // Each grant (a transaction may make several) moves the floor on.
            p.ephemeral_grants += match &wop {
                WriteOp::LockAcquire { .. } => 1,
                WriteOp::Txn { then, otherwise, .. } => then
                    .iter()
                    .chain(otherwise)
                    .filter(|s| matches!(s, kahuna_core::command::TxnStep::LockAcquire { .. }))
                    .count() as u64,
                _ => 0,
            };
            let ctx = ApplyCtx {
                now_ms,
                term: p.term(),
                token_floor: floor + 1,
                keep_released_locks: false,
                // Ephemeral keys keep no older revisions: nothing would ever free those of a
                // deleted key (the sweep frees dead keys, and no collector runs here), and a
                // full store would stay full after its keys were deleted.
                settings: ApplySettings { history_retention: 0, ..settings },
                partition_start: None,
            };
            let before = p.ephemeral.bytes();
            let reply = state_machine::apply(&mut p.ephemeral, &wop, &ctx)?;
            Ok((reply, p.ephemeral.bytes() as isize - before as isize))
        })?;
        self.ephemeral_bytes.set((total as isize + delta).max(0) as usize);
        Ok(reply)
    }

    /// A read barrier: returns once this leader has confirmed with a quorum that it still leads
    /// and has applied everything committed before the call.
    async fn confirm_leadership(
        &self,
        partition: u64,
        deadline: std::time::Instant,
    ) -> Result<(), WireError> {
        let barrier = self.with_partition(partition, |p| p.read_barrier())?;
        if let Some(rx) = barrier {
            self.kick();
            match with_deadline(deadline, rx).await {
                None => return Err(timeout_error("confirming leadership for a read")),
                Some(Err(_)) => {
                    return Err(WireError::new(ErrorCode::Unavailable, "read abandoned"))
                }
                Some(Ok(Err(e))) => return Err(e),
                Some(Ok(Ok(()))) => {}
            }
        }
        Ok(())
    }

    async fn persistent_read(
        &self,
        partition: u64,
        op: &Op,
        deadline: std::time::Instant,
    ) -> Result<Reply, WireError> {
        if route::background(op) {
            self.with_partition(partition, |p| p.ensure_leader())?;
        } else {
            self.confirm_leadership(partition, deadline).await?;
        }
        if let Op::Backup { offset, index, .. } = op {
            return self.backup_chunk(partition, *offset, *index).await;
        }
        let now_ms = self.now_ms();
        // The barrier may have waited while a split applied: the key must still be ours.
        self.with_partition(partition, |p| holds(p, op))?;
        let big_scan = match op {
            Op::KvScan { limit: 0, .. } => self.limits.default_scan_limit > SCAN_ON_LOOP_KEYS,
            Op::KvScan { limit, .. } => *limit > SCAN_ON_LOOP_KEYS,
            _ => false,
        };
        let moved = || {
            WireError::new(ErrorCode::Moved, format!("partition {partition} is not on this shard"))
        };
        // A big scan page (up to thousands of keys and megabytes) would hold up every request of
        // the shard: it reads on a blocking thread. RocksDB iterators read one consistent view,
        // taken after the barrier above, so the answer is as linearizable as on the loop.
        if big_scan {
            let (start, end) = match self.parts.borrow().get(&partition) {
                Some(p) => (p.info.start.clone(), p.info.end.clone()),
                None => return Err(moved()),
            };
            let (db, op, limits) = (self.db.clone(), op.clone(), self.limits.clone());
            return glommio::executor()
                .spawn_blocking(move || {
                    let bounds = Bounds { start: &start, end: &end };
                    state_machine::read(&db, &op, now_ms, bounds, &limits)
                })
                .await;
        }
        let parts = self.parts.borrow();
        let p = parts.get(&partition).ok_or_else(moved)?;
        let bounds = Bounds { start: &p.info.start, end: &p.info.end };
        state_machine::read(&self.db, op, now_ms, bounds, &self.limits)
    }

    async fn persistent_write(
        &self,
        partition: u64,
        op: Op,
        deadline: std::time::Instant,
    ) -> Result<Reply, WireError> {
        let Ok(wop) = into_write(op) else { unreachable!("persistent_write takes writes") };
        if self.disk_full.get() {
            return Err(WireError::new(
                ErrorCode::NoSpace,
                format!("node {}'s disk is full: no writes until space is freed", self.node_id),
            ));
        }
        if let WriteOp::Txn { .. } = &wop {
            // One entry applies a transaction in one partition: one routed here by a map that
            // did not know of a split yet goes back to be run across partitions.
            self.with_partition(partition, |p| {
                match wop.keys().iter().find(|k| !p.info.contains(k)) {
                    None => Ok(()),
                    Some(k) => Err(WireError::new(
                        ErrorCode::Moved,
                        format!(
                            "key {:?} is no longer in partition {} (it split); nothing was \
                             applied, retry",
                            String::from_utf8_lossy(k),
                            p.info.id
                        ),
                    )),
                }
            })?;
        }
        self.propose_wait(partition, self.command(wop), deadline).await
    }

    /// Proposes an encoded command to `partition` and waits for its applied answer.
    pub async fn propose_wait(
        &self,
        partition: u64,
        data: Vec<u8>,
        deadline: std::time::Instant,
    ) -> Result<Reply, WireError> {
        let rx = self.with_partition(partition, |p| p.propose(data))?;
        self.kick();
        match with_deadline(deadline, rx).await {
            None => Err(timeout_error("waiting for the write to commit; its outcome is unknown")),
            Some(Err(_)) => Err(WireError::new(
                ErrorCode::Timeout,
                "the write was abandoned; its outcome is unknown",
            )),
            Some(Ok(r)) => r,
        }
    }
}
