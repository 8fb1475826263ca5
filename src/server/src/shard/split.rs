//! Splits, as this shard starts them: `kahuna-cli cluster split`, and the size and load
//! triggers checked each second for the partitions the shard leads. What to decide is
//! `kahuna_core::split`'s; here the shard measures (approximate sizes, sampled request keys),
//! finds the key, draws the new partition's id from the cluster's id sequence and proposes the
//! split. The split itself is one Raft entry that every replica applies in the driver
//! (`driver::apply_split`).
//!
//! Must never: run two splits of one partition at once, or read a whole partition on the
//! shard loop (the middle key is searched on a blocking thread).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kahuna_core::keys;
use kahuna_core::split::{load_split_key, should_split, Halfway, LoadTracker, SplitPolicy};
use kahuna_core::WriteOp;
use kahuna_protocol::{ErrorCode, Op, Reply, WireError};

use super::Shard;
use crate::config::NodeConfig;

/// After a try that found no key (or failed), the partition is left alone this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Sizes are measured this often (RocksDB's estimate reads its index metadata).
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// A shard's splits: the triggers' measurements and the splits under way.
pub struct SplitState {
    pub policy: SplitPolicy,
    /// New partitions take ids above the initial ones.
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
            id_base: cfg.partitions as u64,
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
        if self.policy.load_qps == 0 {
            return;
        }
        // xorshift: the sample only needs to be uniform, not unpredictable.
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let second = self.started.elapsed().as_secs();
        self.load.borrow_mut().entry(partition).or_default().record(key, second, x);
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
        if info.shard != self.id || !info.replicas.contains(&self.node_id) {
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
        let unknown = kahuna_core::PartitionInfo { replicas: vec![], ..info.clone() };
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
    if policy.size_bytes == 0 && policy.load_qps == 0 {
        return;
    }
    if !shard.splits.in_progress.borrow().is_empty() {
        return;
    }
    let now = Instant::now();
    let measure_sizes = policy.size_bytes > 0
        && shard.splits.sized_at.get().is_none_or(|t| now.duration_since(t) >= SIZE_EVERY);
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
