//! Splits: how a shard starts them (`kahuna-cli cluster split`, and the size and load triggers
//! checked each second for the partitions it leads) and how every replica applies them. What to
//! decide is `kahuna_core::split`'s; here the shard measures (approximate sizes, sampled request
//! keys), finds the key, draws the new partition's id from the cluster's id sequence and
//! proposes the split. The split is one Raft entry: the driver's apply hands it to
//! [`apply_split`], which changes the descriptors in the entry's batch, and starts the new
//! half's group once the batch is committed ([`start_split_half`]). A replica that missed a
//! split by snapshot takes the new half when its leader first writes to it ([`Shard::adopt`]).
//!
//! Must never: run two splits of one partition at once, or read a whole partition on the
//! shard loop (the middle key is searched on a blocking thread).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kahuna_core::keys;
use kahuna_core::split::{load_split_key, should_split, Halfway, LoadTracker, SplitPolicy};
use kahuna_core::state_machine::{self, ApplyCtx};
use kahuna_core::store::WriteBuffer;
use kahuna_core::{LogCommand, WriteOp};
use kahuna_protocol::{ErrorCode, Op, Reply, WireError};

use crate::storage::state::ApplyState;

use super::Shard;
use crate::config::NodeConfig;

/// After a try that found no key (or failed), the partition is left alone this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Sizes are measured this often (RocksDB's estimate reads its index metadata).
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// A shard's splits: the triggers' measurements and the splits under way.
pub struct SplitState {
    pub policy: SplitPolicy,
    /// New partitions take ids above every initial one, whatever `--partitions` a node has.
    id_base: u64,
    load: RefCell<HashMap<u64, LoadTracker>>,
    sizes: RefCell<HashMap<u64, u64>>,
    sized_at: Cell<Option<Instant>>,
    rng: Cell<u64>,
    started: Instant,
    in_progress: RefCell<HashSet<u64>>,
    not_before: RefCell<HashMap<u64, Instant>>,
    /// Splits this shard applied (as any replica), for status and metrics.
    pub applied: Cell<u64>,
}

impl SplitState {
    pub fn new(cfg: &NodeConfig) -> SplitState {
        SplitState {
            policy: SplitPolicy {
                size_bytes: cfg.split_size_mb << 20,
                load_qps: cfg.split_load_qps,
                window_secs: cfg.split_load_window_secs.max(1),
            },
            id_base: kahuna_core::partition::MAX_INITIAL_PARTITIONS as u64,
            load: RefCell::default(),
            sizes: RefCell::default(),
            sized_at: Cell::new(None),
            rng: Cell::new(std::process::id() as u64 | 1),
            started: Instant::now(),
            in_progress: RefCell::default(),
            not_before: RefCell::default(),
            applied: Cell::new(0),
        }
    }

    /// Counts a request a partition served here (the load trigger's input).
    pub fn record(&self, partition: u64, key: &[u8]) {
        // xorshift: the sample only needs to be uniform, not unpredictable.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let second = self.started.elapsed().as_secs();
        self.load.borrow_mut().entry(partition).or_default().record(key, second, x);
    }

    /// Requests a second the partition served here, over the window (its leader's measure).
    pub fn qps(&self, partition: u64) -> u64 {
        let second = self.started.elapsed().as_secs();
        match self.load.borrow_mut().get_mut(&partition) {
            Some(t) => t.rate(second, self.policy.window_secs).0,
            None => 0,
        }
    }

    /// The partition's approximate size on disk, as last measured (every 10 s, on its leader).
    pub fn size(&self, partition: u64) -> u64 {
        self.sizes.borrow().get(&partition).copied().unwrap_or(0)
    }

    /// The partition's range changed (it split) or it is gone: its numbers describe the past.
    pub fn forget(&self, partition: u64) {
        self.load.borrow_mut().remove(&partition);
        self.sizes.borrow_mut().remove(&partition);
    }
}

impl Shard {
    /// `cluster split` on the leader of `partition`: at `at`, or, when empty, at the middle of
    /// its keys by bytes.
    pub async fn split_here(
        self: &Rc<Self>,
        partition: u64,
        at: Vec<u8>,
        deadline: Instant,
    ) -> Result<Reply, WireError> {
        if !self.splits.in_progress.borrow_mut().insert(partition) {
            return Err(WireError::new(
                ErrorCode::Conflict,
                format!("partition {partition} is splitting already"),
            ));
        }
        let result = self.split_inner(partition, at, deadline).await;
        self.splits.in_progress.borrow_mut().remove(&partition);
        result
    }

    async fn split_inner(
        self: &Rc<Self>,
        partition: u64,
        at: Vec<u8>,
        deadline: Instant,
    ) -> Result<Reply, WireError> {
        let (epoch, start, end) = self.with_partition(partition, |p| {
            p.ensure_leader()?;
            if !p.own_term_applied() {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    "new leader catching up; retry",
                ));
            }
            Ok((p.info.epoch, p.info.start.clone(), p.info.end.clone()))
        })?;
        let at = if at.is_empty() {
            self.middle_key(&start, &end).await?.ok_or_else(|| {
                WireError::new(
                    ErrorCode::Invalid,
                    format!("partition {partition} has too few keys to split at its middle"),
                )
            })?
        } else {
            at
        };
        // Checked here for a clear answer; the apply checks again against the epoch.
        self.with_partition(partition, |p| {
            p.info.split(&at, 0, epoch).map(drop).map_err(|e| {
                WireError::new(
                    ErrorCode::Invalid,
                    format!("{e} ({:?} .. {:?})", p.info.start, p.info.end),
                )
            })
        })?;
        if self.disk_full.get() {
            return Err(WireError::new(ErrorCode::NoSpace, "this node's disk is full"));
        }
        let max = kahuna_core::peer_frame::MAX_DESCRIPTORS;
        if self.map().partitions().len() >= max {
            // Nodes pass the whole map in one frame: it may not outgrow one.
            return Err(WireError::new(
                ErrorCode::Invalid,
                format!("the cluster holds {max} partitions, the most its map carries"),
            ));
        }
        let new_id = self.draw_partition_id(deadline).await?;
        let data = self.command(WriteOp::Split { at: at.clone(), new_id, epoch });
        self.with_partition(partition, |p| {
            p.splitting_at = Some(at.clone());
            Ok(())
        })?;
        let result = self.propose_wait(partition, data, deadline).await;
        if let Err(e) = &result {
            if e.code != ErrorCode::Timeout {
                // Never proposed, or refused: nothing will apply (a TIMEOUT may still apply,
                // and clears the mark then).
                let _ = self.with_partition(partition, |p| {
                    p.splitting_at = None;
                    Ok(())
                });
            }
        }
        result
    }

    /// The next partition id: one number of the cluster's id sequence, above the initial ids.
    /// Drawn before the split is proposed; a split that fails leaves its id unused for ever.
    async fn draw_partition_id(self: &Rc<Self>, deadline: Instant) -> Result<u64, WireError> {
        for _ in 0..64 {
            let id = self.draw_one_id(deadline).await?;
            // A restored cluster holds the backed-up cluster's ids, which need not lie below
            // this one's base: one the map knows is skipped.
            if self.map().get(id).is_none() {
                return Ok(id);
            }
        }
        Err(WireError::new(ErrorCode::Unavailable, "no free partition id found; retry"))
    }

    async fn draw_one_id(self: &Rc<Self>, deadline: Instant) -> Result<u64, WireError> {
        let op = Op::SeqNext { name: keys::PARTITION_IDS.to_vec(), count: 1 };
        match self.execute_checked(op, deadline).await {
            (Ok(Reply::Seq { first, .. }), _) => Ok(first + self.splits.id_base),
            (Ok(other), _) => {
                Err(WireError::new(ErrorCode::Internal, format!("partition id: {other:?}")))
            }
            (Err(e), _) => Err(WireError::new(
                if e.code == ErrorCode::Timeout { ErrorCode::Unavailable } else { e.code },
                format!("drawing a partition id: {}", e.message),
            )),
        }
    }

    /// The key at which half of the range's key/value bytes lie on either side (`None`: too
    /// few keys), read on a blocking thread.
    async fn middle_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        use kahuna_core::store::Scan;
        let (lo, hi) = keys::kind_range(keys::KV, start, end);
        let (db, start) = (self.db.clone(), start.to_vec());
        Ok(glommio::executor()
            .spawn_blocking(move || {
                let mut total = 0u64;
                db.scan(&lo, &hi, &mut |k, v| {
                    total += (k.len() + v.len()) as u64;
                    true
                });
                let mut half = Halfway::new(total);
                let mut found = None;
                db.scan(&lo, &hi, &mut |k, v| {
                    found = half.feed(&k[1..], (k.len() + v.len()) as u64, &start);
                    found.is_none()
                });
                found
            })
            .await)
    }
}

impl Shard {
    /// A leader's message for a partition this shard does not hold, but should: one split off a
    /// partition this replica caught up with by a snapshot taken after the split (so it never
    /// applied the split entry that would have created it here). The map names this node and
    /// shard among its replicas, and no partition here overlaps its range: start it empty
    /// (no voters known: it cannot campaign) and let its leader send it a snapshot. Its votes
    /// from an earlier life, if the WAL holds any, are kept.
    pub fn adopt(&self, partition: u64, msg: &raft::eraftpb::Message) -> bool {
        use raft::eraftpb::MessageType::*;
        if !matches!(msg.get_msg_type(), MsgAppend | MsgHeartbeat | MsgSnapshot) {
            return false;
        }
        let Some(info) = self.map().get(partition).cloned() else { return false };
        if info.shard != self.id || !info.holds(self.node_id) {
            return false;
        }
        if self.parts.borrow().values().any(|p| p.info.overlaps(&info)) {
            return false; // its keys are still another partition's here: that one splits first
        }
        let log = self.pending_logs.borrow_mut().remove(&partition).unwrap_or_default();
        let mut hs = raft::eraftpb::HardState::default();
        if let Some(h) = log.hard_state {
            (hs.term, hs.vote) = (h.term, h.vote);
        }
        let dir = self.snapshots.borrow().dir().to_path_buf();
        let source = crate::raft::log_store::SnapshotSource::new(&self.db, &info, &dir);
        // No voters: they come with the snapshot.
        let unknown =
            kahuna_core::PartitionInfo { replicas: vec![], learners: vec![], ..info.clone() };
        let mut np = match crate::raft::partition::Partition::open(
            &self.cfg,
            source,
            unknown,
            Default::default(),
            hs,
            vec![],
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("partition {partition}: cannot start an empty replica: {e}");
                return false;
            }
        };
        np.info = info;
        self.cluster.retired.borrow_mut().remove(&partition);
        tracing::info!(
            "partition {partition}: split off a partition this node caught up with by snapshot; \
             starting its replica here empty, to be filled by a snapshot from node {}",
            msg.from
        );
        self.parts.borrow_mut().insert(partition, np);
        true
    }
}

/// Once a second, from the tick: the led partitions that passed a threshold start a split
/// (one at a time per shard, so a burst of load does not cut a partition into slivers before
/// the first split shows its effect).
pub fn check(shard: &Rc<Shard>) {
    let policy = shard.splits.policy;
    if !shard.splits.in_progress.borrow().is_empty() {
        return;
    }
    let now = Instant::now();
    // Sizes are measured even with splits by size off: `cluster status` reports them.
    let measure_sizes =
        shard.splits.sized_at.get().is_none_or(|t| now.duration_since(t) >= SIZE_EVERY);
    if measure_sizes {
        shard.splits.sized_at.set(Some(now));
    }
    let second = shard.splits.started.elapsed().as_secs();
    let mut chosen = None;
    for (pid, p) in shard.parts.borrow().iter() {
        if !p.is_leader() || !p.own_term_applied() {
            continue;
        }
        if shard.splits.not_before.borrow().get(pid).is_some_and(|t| now < *t) {
            continue;
        }
        if measure_sizes {
            let size = shard.db.approximate_size(&p.info.start, &p.info.end);
            shard.splits.sizes.borrow_mut().insert(*pid, size);
        }
        let size = shard.splits.sizes.borrow().get(pid).copied().unwrap_or(0);
        let (qps, full) = match shard.splits.load.borrow_mut().get_mut(pid) {
            Some(t) => t.rate(second, policy.window_secs),
            None => (0, false),
        };
        let Some(reason) = should_split(&policy, size, qps, full) else { continue };
        let at = match reason {
            kahuna_core::split::SplitReason::Size => Vec::new(),
            kahuna_core::split::SplitReason::Load => {
                let load = shard.splits.load.borrow();
                match load.get(pid).and_then(|t| load_split_key(t.sample(), &p.info.start)) {
                    Some(k) => k,
                    None => {
                        // One key carries the load: no split would spread it.
                        shard.splits.not_before.borrow_mut().insert(*pid, now + RETRY_AFTER);
                        tracing::info!(
                            "partition {pid} serves {qps} requests/s but one key carries most of it: not split"
                        );
                        continue;
                    }
                }
            }
        };
        chosen = Some((*pid, at, reason, size, qps));
        break;
    }
    let Some((pid, at, reason, size, qps)) = chosen else { return };
    tracing::info!(
        "partition {pid}: splitting by {} ({} MiB, {qps} requests/s)",
        reason.name(),
        size >> 20
    );
    shard.splits.not_before.borrow_mut().insert(pid, now + RETRY_AFTER);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        match shard.split_here(pid, at, deadline).await {
            Ok(_) => {}
            Err(e) => tracing::warn!("partition {pid}: split by {} failed: {e:?}", reason.name()),
        }
    })
    .detach();
}

// How every replica applies a split (called by the driver's apply).

/// A split's new half, written in this turn's batch, to start once the batch is committed.
pub(super) struct Created {
    /// The parent as this split left it (a later split in the same batch changes it again).
    left: kahuna_core::PartitionInfo,
    info: kahuna_core::PartitionInfo,
    applied: ApplyState,
    /// The parent was led here: campaign at once (the other replicas apply the same entry
    /// about now) instead of waiting out an election timeout.
    campaign: bool,
    ephemeral: kahuna_core::store::MemStore,
}

/// Where a split's new half starts its log: both halves' replicas all start the new group at
/// this index, with a log term of `max(split entry's term, SPLIT_INIT_TERM)` (the same on every
/// replica: it comes from the entry), so logs match without a snapshot; the first election then
/// takes a term above the split entry's, and the new half's ephemeral fencing tokens (which
/// start at `term << 40`) above every one its parent's leaders granted for its keys.
pub const SPLIT_INIT_INDEX: u64 = 5;
pub const SPLIT_INIT_TERM: u64 = 5;

/// A failure to start a split's new half is a storage failure: the node stops (see
/// `crate::fatal`).
fn fatal(what: &str, err: impl std::fmt::Display) -> ! {
    crate::fatal::storage(what, err)
}

/// A write of keys outside the partition (it split after the write was proposed) is not
/// applied: MOVED (retryable: nothing happened). The expired-key collector's list is cut to
/// the keys still in range instead.
pub(super) fn within_range(
    info: &kahuna_core::PartitionInfo,
    op: &mut WriteOp,
) -> Result<(), WireError> {
    if let WriteOp::KvCollect { keys, .. } = op {
        keys.retain(|k| info.contains(k));
        return Ok(());
    }
    if op.keys().iter().all(|k| info.contains(k)) {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::Moved,
        format!("partition {} split before the write applied; it was not applied: retry", info.id),
    ))
}

/// Applies a split entry on this replica: the parent keeps `[start, at)`, a new partition takes
/// `[at, end)` with the same replicas, starting from [`SPLIT_INIT_INDEX`]. Refused (CONFLICT,
/// nothing changes) when the partition changed since the split was asked. The descriptors, the
/// new half's apply state and revision floor go into the same batch as everything else.
pub(super) fn apply_split(
    shard: &Shard,
    p: &mut crate::raft::partition::Partition,
    buf: &mut WriteBuffer<'_, crate::storage::state::StateDb>,
    cmd: &LogCommand,
    ctx: &ApplyCtx,
    (term, states, created): (u64, &mut Vec<(u64, ApplyState)>, &mut Vec<Created>),
) -> Result<Reply, WireError> {
    use kahuna_core::store::Txn;
    let WriteOp::Split { at, new_id, epoch } = &cmd.op else { unreachable!("a split") };
    let (left, right) = p
        .info
        .split(at, *new_id, *epoch)
        .map_err(|e| WireError::new(ErrorCode::Conflict, e.to_string()))?;
    state_machine::apply(buf, &cmd.op, ctx)?;
    buf.put(crate::storage::state::descriptor_key(left.id), left.encode());
    buf.put(crate::storage::state::descriptor_key(right.id), right.encode());
    let applied = ApplyState {
        applied_index: SPLIT_INIT_INDEX,
        applied_term: term.max(SPLIT_INIT_TERM),
        applied_hlc: p.applied.applied_hlc.max(cmd.hlc),
    };
    states.push((right.id, applied));
    // The leader's ephemeral state of the keys that move goes with them.
    let mut ephemeral = kahuna_core::store::MemStore::default();
    if p.is_leader() && !p.ephemeral.is_empty() {
        for kind in kahuna_core::keys::DATA_KINDS {
            let (lo, hi) = kahuna_core::keys::kind_range(kind, &right.start, &right.end);
            p.ephemeral.move_range(&lo, &hi, &mut ephemeral);
        }
    }
    tracing::info!(
        "shard {}: partition {} split at {:?}: partition {} holds [{:?}, {:?}) from now on",
        shard.id,
        left.id,
        String::from_utf8_lossy(at),
        right.id,
        String::from_utf8_lossy(&right.start),
        String::from_utf8_lossy(&right.end)
    );
    p.info = left.clone();
    p.node.mut_store().forget_snapshot();
    shard.splits.forget(left.id);
    if p.splitting_at.as_deref() == Some(at.as_slice()) {
        p.splitting_at = None;
    }
    created.push(Created {
        left: left.clone(),
        info: right.clone(),
        applied,
        campaign: p.is_leader(),
        ephemeral,
    });
    Ok(Reply::Split { left: left.id, right: right.id, at: at.clone(), epoch: left.epoch })
}

/// Starts the Raft group of a split's new half on this replica.
pub(super) fn start_split_half(
    shard: &Shard,
    parts: &mut std::collections::BTreeMap<u64, crate::raft::partition::Partition>,
    c: Created,
) {
    let id = c.info.id;
    if parts.contains_key(&id) {
        // Ids come from one replicated sequence: a clash is damage, not a case to serve.
        fatal("splitting a partition", format!("partition id {id} is in use already"));
    }
    // Replayed after a crash: the new half already ran, and its log and votes are in the WAL.
    let log = shard.pending_logs.borrow_mut().remove(&id).unwrap_or_default();
    let (hs, entries) = match crate::raft::partition::log_start(id, &c.applied, log) {
        Ok(start) => start,
        Err(e) => fatal("restarting a split's new partition", e),
    };
    let replayed = hs.term > c.applied.applied_term || !entries.is_empty();
    let dir = shard.snapshots.borrow().dir().to_path_buf();
    let source = crate::raft::log_store::SnapshotSource::new(&shard.db, &c.info, &dir);
    let mut np = match crate::raft::partition::Partition::open(
        &shard.cfg,
        source,
        c.info.clone(),
        c.applied,
        hs,
        entries,
    ) {
        Ok(p) => p,
        Err(e) => fatal("starting a split's new partition", e),
    };
    if !c.ephemeral.is_empty() {
        np.ephemeral = c.ephemeral;
        np.inherited_ephemeral_term = Some(c.applied.applied_term + 1);
    }
    if c.campaign && !replayed {
        if let Err(e) = np.node.campaign() {
            tracing::warn!("partition {id}: campaign after the split: {e}");
        }
        np.recampaign_at = Some(shard.ticks.get() + 3);
    }
    parts.insert(id, np);
    shard.splits.applied.set(shard.splits.applied.get() + 1);
    shard.metrics.splits.inc();
    let changed = vec![c.info, c.left];
    shard.learn_map(&changed);
    shard.map_outbox.borrow_mut().extend(changed);
    shard.kick();
}

/// A split's new half, on the node that led its parent: campaign again if the first campaign
/// found no group yet (the other replicas had not applied the split, and dropped it); and drop
/// the ephemeral state it inherited once another node leads it.
pub(super) fn split_half_upkeep(
    p: &mut crate::raft::partition::Partition,
    ticks: u64,
    freed: &mut usize,
) {
    if p.recampaign_at.is_some_and(|t| ticks >= t) {
        p.recampaign_at = None;
        if p.leader_hint() == 0 && !p.is_leader() {
            let _ = p.node.campaign();
        }
    }
    if let Some(t) = p.inherited_ephemeral_term {
        if p.term() > t || (p.leader_hint() != 0 && !p.is_leader()) {
            p.inherited_ephemeral_term = None;
            *freed += p.ephemeral.bytes();
            p.ephemeral = kahuna_core::store::MemStore::default();
        }
    }
}
