//! Transactions across partitions, the moving parts: the coordinator (the shard a transaction
//! reached), and what any request does when it meets a transaction's intent.
//!
//! ```text
//!  execute_checked(Txn over several partitions) ─▶ txn_across
//!    1. prepare every part at once (Internal TxnPrepare, routed like any request by its key)
//!    2. judge the answers (core::txn_plan::judge): commit a branch, or abort
//!    3. decide at the record (the first key's partition): the commit point
//!    4. resolve every name (TxnResolve, regrouped by the map each round), answer, forget
//!  execute_hops(any request on a held name) ─▶ wait_for_intents: wait, ask the record, resolve
//! ```
//! The rules that make this safe live in `kahuna_core::state_machine::intents`; this module
//! only sends steps and waits. Internal steps that decide or resolve are idempotent and are
//! sent again after a failure; a prepare is never sent twice (the coordinator aborts instead).
//!
//! Must never: answer a commit the record did not take, or wait on a held name past the
//! request's deadline.

use std::rc::Rc;
use std::time::{Duration, Instant};

use kahuna_core::command::{TxnCompare, TxnStep};
use kahuna_core::records::{Holder, TXN_ABORTED, TXN_PENDING};
use kahuna_core::state_machine::intents::{self, state_of, DECIDE_ABORT, DECIDE_FORGET};
use kahuna_core::txn_plan::{self, Verdict};
use kahuna_core::WriteOp;
use kahuna_protocol::{Durability, ErrorCode, Op, Reply, WireError};

use super::{Answer, Shard};
use crate::clock::Clock;

use kahuna_core::state_machine::intents::RECORD_KEEP_MS;
pub use kahuna_core::state_machine::intents::TXN_DEADLINE_MS;
/// How long a prepare waits for another transaction's intent on its names before it gives up
/// (the coordinator then aborts, and the client retries with backoff): short, so two
/// transactions that each hold what the other wants do not wait for each other's deadline.
const PREPARE_WAIT: Duration = Duration::from_millis(100);
/// A request blocked by an intent asks the record where it stands this long after it started
/// waiting, and again at this interval (a live coordinator usually resolves it first).
const ASK_EVERY: Duration = Duration::from_millis(200);
/// When a blocked request first asks the record.
const FIRST_ASK: Duration = Duration::from_millis(50);
/// One attempt of an idempotent step (decide, resolve): a leader that died costs this, not the
/// caller's whole deadline.
const ATTEMPT: Duration = Duration::from_millis(1_000);
/// Coordinators' resolutions running in the background on one shard, at most.
const MAX_FINISHING: usize = 4096;

thread_local! {
    /// Background resolutions running on this shard's thread (one executor per thread).
    static FINISHING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Intents one blocked request looks at per round.
const MAX_HELD: usize = 16;

/// Whether an idempotent step may be sent again after this error.
fn again(code: ErrorCode) -> bool {
    code.is_retryable() || code == ErrorCode::Timeout
}

impl Shard {
    /// A step of a transaction across partitions, sent like any request to the partition that
    /// holds `key`: logged, or (`read`) served as a read there.
    async fn step(
        self: &Rc<Self>,
        key: Vec<u8>,
        op: &WriteOp,
        read: bool,
        deadline: Instant,
    ) -> Result<Reply, WireError> {
        let payload = op.encode_internal();
        Box::pin(self.execute_checked(Op::Internal { key, payload, read }, deadline)).await.0
    }

    /// A logged step (see [`Shard::step`]).
    async fn internal(
        self: &Rc<Self>,
        key: Vec<u8>,
        op: WriteOp,
        deadline: Instant,
    ) -> Result<Reply, WireError> {
        self.step(key, &op, false, deadline).await
    }

    /// A transaction across partitions that writes nothing: every part evaluated twice, in
    /// parallel each time, and answered once no part's fingerprint changed in between (see
    /// `intents::evaluate`); evaluated again otherwise, until the deadline. Holds nothing.
    async fn read_across(
        self: &Rc<Self>,
        compare: &[TxnCompare],
        then: &[TxnStep],
        otherwise: &[TxnStep],
        deadline: Instant,
    ) -> Answer {
        let (then_len, otherwise_len) = (then.len(), otherwise.len());
        let mut pause = Duration::from_millis(1);
        loop {
            // Planned again each round: a part refused as MOVED went by a map behind a split.
            let parts = {
                let map = self.map();
                txn_plan::plan(compare, then, otherwise, &|k| map.locate(k).id)
            };
            let parts = &parts;
            let checked = match self.evaluate_parts(parts, deadline).await {
                Ok(first) => {
                    self.evaluate_parts(parts, deadline).await.map(|second| (first, second))
                }
                Err(e) => Err(e),
            };
            match checked {
                Ok((first, second)) => {
                    if first.iter().zip(&second).all(|(a, b)| a.2 == b.2) {
                        let answers = first.into_iter().map(|(h, r, _)| (h, r)).collect();
                        return match txn_plan::judge(parts, answers, then_len, otherwise_len) {
                            Verdict::Commit { succeeded, results } => {
                                (Ok(Reply::Txn { succeeded, results }), 0)
                            }
                            Verdict::Abort(e) => (Err(e), 0),
                        };
                    }
                }
                Err(e) if e.code.is_retryable() => {}
                Err(e) => return (Err(e), 0),
            }
            if Instant::now() + pause >= deadline {
                let e = WireError::new(
                    ErrorCode::Unavailable,
                    "the keys kept changing while the transaction read them; retry",
                );
                return (Err(e), 0);
            }
            glommio::timer::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// One round of [`Shard::read_across`]: each part's answer and fingerprint.
    #[allow(clippy::type_complexity)]
    async fn evaluate_parts(
        self: &Rc<Self>,
        parts: &[txn_plan::Part],
        deadline: Instant,
    ) -> Result<
        Vec<(bool, Vec<Result<Reply, WireError>>, Option<Result<Reply, WireError>>)>,
        WireError,
    > {
        let tasks: Vec<_> = parts
            .iter()
            .map(|p| {
                let step = WriteOp::TxnPrepare {
                    txn: Vec::new(),
                    primary: Vec::new(),
                    deadline_ms: 0,
                    record: Vec::new(),
                    compare: p.compare.clone(),
                    then: p.then.clone(),
                    otherwise: p.otherwise.clone(),
                };
                let (me, key) = (self.clone(), p.first_key().to_vec());
                glommio::spawn_local(async move { me.step(key, &step, true, deadline).await })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            match t.await? {
                Reply::Txn { succeeded, mut results } => {
                    let fp = results.pop();
                    out.push((succeeded, results, fp));
                }
                other => {
                    let m = format!("a part answered {other:?}");
                    return Err(WireError::new(ErrorCode::Internal, m));
                }
            }
        }
        Ok(out)
    }

    /// Sends an idempotent step until it is answered or `deadline` passes.
    async fn internal_until(
        self: &Rc<Self>,
        key: &[u8],
        op: &WriteOp,
        deadline: Instant,
    ) -> Result<Reply, WireError> {
        loop {
            let attempt = deadline.min(Instant::now() + ATTEMPT);
            match self.internal(key.to_vec(), op.clone(), attempt).await {
                Err(e)
                    if again(e.code) && Instant::now() + Duration::from_millis(20) < deadline =>
                {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Whether a transaction names keys of more than one partition (in this shard's map).
    pub(super) fn spans_partitions(&self, op: &Op) -> bool {
        let Op::Txn { compare, then, otherwise } = op else { return false };
        let map = self.map.borrow();
        let first = map.locate(op.routing_key()).id;
        compare
            .iter()
            .map(|c| c.key.as_slice())
            .chain(then.iter().chain(otherwise).map(|o| o.routing_key()))
            .any(|k| map.locate(k).id != first)
    }

    /// A unique id: this node, this shard, and its HLC (which never repeats on a shard).
    fn txn_id(&self) -> Vec<u8> {
        let hlc = self.hlc.borrow_mut().now(self.clock.now_ms()).0;
        let mut id = Vec::with_capacity(18);
        id.extend_from_slice(&self.node_id.to_be_bytes());
        id.extend_from_slice(&(self.id as u16).to_be_bytes());
        id.extend_from_slice(&hlc.to_be_bytes());
        id
    }

    /// Runs a compare / then / else whose keys lie in several partitions (see the module doc).
    pub(super) async fn txn_across(self: &Rc<Self>, op: Op, deadline: Instant) -> Answer {
        let Ok(WriteOp::Txn { compare, then, otherwise }) = kahuna_core::command::into_write(op)
        else {
            let e = WireError::new(ErrorCode::Invalid, "not a transaction the server can run");
            return (Err(e), 0);
        };
        let parts = {
            let map = self.map();
            txn_plan::plan(&compare, &then, &otherwise, &|k| map.locate(k).id)
        };
        self.metrics.txn_across.inc();
        let id = self.txn_id();
        let primary = txn_plan::primary(&compare, &then, &otherwise).to_vec();
        let names = txn_plan::names(&compare, &then, &otherwise);
        if intents::written_names(&then, &otherwise).is_empty() {
            // Writing nothing, it needs no record, no intents and no log entry.
            return self.read_across(&compare, &then, &otherwise, deadline).await;
        }
        let deadline_ms = self.now_ms() + TXN_DEADLINE_MS;

        // 1. Prepare every part at once; the primary's part writes the record.
        let orphan = crate::faults::fired("txn_crash_before_primary_prepare").is_some();
        let tasks: Vec<_> = parts
            .iter()
            .enumerate()
            .filter(|(i, _)| !(orphan && *i == 0))
            .map(|(i, p)| {
                let step = WriteOp::TxnPrepare {
                    txn: id.clone(),
                    primary: primary.clone(),
                    deadline_ms,
                    record: if i == 0 { names.clone() } else { Vec::new() },
                    compare: p.compare.clone(),
                    then: p.then.clone(),
                    otherwise: p.otherwise.clone(),
                };
                let (me, key) = (self.clone(), p.first_key().to_vec());
                glommio::spawn_local(async move { me.internal(key, step, deadline).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(tasks.len());
        let mut failed: Option<WireError> = None;
        for t in tasks {
            match t.await {
                Ok(Reply::Txn { succeeded, results }) => answers.push((succeeded, results)),
                Ok(other) => {
                    let e = WireError::new(ErrorCode::Internal, format!("prepare got {other:?}"));
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if orphan {
            std::process::abort(); // the others' intents stay, and no record names them
        }
        // 2. Judge.
        let verdict = match failed {
            Some(e) => Verdict::Abort(e),
            None => txn_plan::judge(&parts, answers, then.len(), otherwise.len()),
        };
        let (succeeded, results) = match verdict {
            Verdict::Abort(e) => {
                self.finish_later(id, primary, deadline_ms, names, TXN_ABORTED);
                return (Err(not_applied(e)), 0);
            }
            Verdict::Commit { succeeded, results } => (succeeded, results),
        };
        if crate::faults::fired("txn_crash_after_prepare").is_some() {
            std::process::abort(); // the coordinator dies holding prepared intents
        }
        // 3. The commit point.
        let action =
            if succeeded { intents::DECIDE_COMMIT_THEN } else { intents::DECIDE_COMMIT_ELSE };
        let decide =
            WriteOp::TxnDecide { txn: id.clone(), primary: primary.clone(), deadline_ms, action };
        let state = match self.internal_until(&primary, &decide, deadline).await {
            Ok(r) => state_of(&r),
            Err(e) => {
                let msg = format!(
                    "the transaction's commit was not confirmed ({e}); its outcome is unknown"
                );
                return (Err(WireError::new(ErrorCode::Timeout, msg)), 0);
            }
        };
        match state {
            Some(s) if s != TXN_PENDING && s != TXN_ABORTED => {
                if crate::faults::fired("txn_crash_after_commit").is_some() {
                    std::process::abort(); // committed, nothing resolved
                }
                // 4. Answer; resolve (a request meeting an intent before that asks the
                // record, which says committed); the record goes once every name is resolved.
                self.finish_later(id, primary, deadline_ms, names, s);
                (Ok(Reply::Txn { succeeded, results }), 0)
            }
            Some(TXN_ABORTED) => {
                self.finish_later(id, primary, deadline_ms, names, TXN_ABORTED);
                let e = WireError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the transaction did not commit within {TXN_DEADLINE_MS} ms of its \
                         prepare and was aborted; nothing was applied, retry"
                    ),
                );
                (Err(e), 0)
            }
            _ => {
                let e = WireError::new(ErrorCode::Internal, "the record answered a commit oddly");
                (Err(e), 0)
            }
        }
    }

    /// [`Shard::finish`] in the background, with a time of its own (not the caller's, which
    /// a prepare that timed out has used up).
    fn finish_later(
        self: &Rc<Self>,
        id: Vec<u8>,
        primary: Vec<u8>,
        deadline_ms: u64,
        names: Vec<Vec<u8>>,
        outcome: u8,
    ) {
        let me = self.clone();
        let until = Instant::now() + Duration::from_millis(TXN_DEADLINE_MS);
        if FINISHING.get() >= MAX_FINISHING {
            // Bounded: past it, whoever meets the intents (or recovery) finishes them.
            return;
        }
        FINISHING.set(FINISHING.get() + 1);
        glommio::spawn_local(async move {
            me.finish(&id, &primary, deadline_ms, &names, outcome, until).await;
            FINISHING.set(FINISHING.get() - 1);
        })
        .detach();
    }

    /// Resolves every name as `outcome` (an abort marks the record first), then forgets the
    /// record if every name was resolved; what is left, readers resolve when they meet it.
    async fn finish(
        self: &Rc<Self>,
        id: &[u8],
        primary: &[u8],
        deadline_ms: u64,
        names: &[Vec<u8>],
        outcome: u8,
        deadline: Instant,
    ) {
        let record = |action| WriteOp::TxnDecide {
            txn: id.to_vec(),
            primary: primary.to_vec(),
            deadline_ms,
            action,
        };
        if outcome == TXN_ABORTED {
            // Marks it aborted (a mark if the first key's prepare has not come). Resolving the
            // names as aborted is safe even if this fails: only this coordinator ever commits
            // (a first-key prepare that comes after the forget leaves a pending record that
            // readers or recovery abort after its deadline).
            let _ = self.internal_until(primary, &record(DECIDE_ABORT), deadline).await;
        }
        if self.resolve_names(id, names, outcome, deadline).await {
            let (me, primary, forget) = (self.clone(), primary.to_vec(), record(DECIDE_FORGET));
            let until = Instant::now() + Duration::from_millis(TXN_DEADLINE_MS);
            glommio::spawn_local(async move {
                let _ = me.internal_until(&primary, &forget, until).await;
            })
            .detach();
        }
    }

    /// Resolves the transaction's intents on `names`, each in the partition that holds it now
    /// (regrouped every round: a partition may split meanwhile); true once all are.
    async fn resolve_names(
        self: &Rc<Self>,
        id: &[u8],
        names: &[Vec<u8>],
        outcome: u8,
        deadline: Instant,
    ) -> bool {
        let mut left: Vec<Vec<u8>> = names.to_vec();
        while !left.is_empty() {
            let groups: Vec<Vec<Vec<u8>>> = {
                let map = self.map();
                let mut g: std::collections::BTreeMap<u64, Vec<Vec<u8>>> = Default::default();
                for n in left.drain(..) {
                    g.entry(map.locate(&n).id).or_default().push(n);
                }
                g.into_values().collect()
            };
            let attempt = deadline.min(Instant::now() + ATTEMPT);
            let tasks: Vec<_> = groups
                .into_iter()
                .map(|g| {
                    let step = WriteOp::TxnResolve { txn: id.to_vec(), names: g.clone(), outcome };
                    let me = self.clone();
                    glommio::spawn_local(async move {
                        let r = me.internal(g[0].clone(), step, attempt).await;
                        (g, r)
                    })
                })
                .collect();
            for t in tasks {
                let (g, r) = t.await;
                if r.is_err() {
                    left.extend(g);
                }
            }
            if left.is_empty() {
                return true;
            }
            if Instant::now() + Duration::from_millis(20) >= deadline {
                return false;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The transactions that keep `op` from running in `partition`, from this replica's applied
    /// state (at most [`MAX_HELD`]): the writer of every name it touches, and the readers of
    /// every name it writes.
    fn held(&self, partition: u64, op: &Op) -> Result<Vec<(Vec<u8>, Holder)>, WireError> {
        // (name, whether `op` writes it)
        let names: Vec<(Vec<u8>, bool)> = match op {
            Op::Txn { compare, then, otherwise } => {
                let writes = |k: &[u8]| {
                    then.iter().chain(otherwise).any(|o| !o.is_read() && o.routing_key() == k)
                };
                compare
                    .iter()
                    .map(|c| c.key.as_slice())
                    .chain(then.iter().chain(otherwise).map(|o| o.routing_key()))
                    .map(|k| (k.to_vec(), writes(k)))
                    .collect()
            }
            Op::Internal { payload, .. } => match WriteOp::decode_internal(payload) {
                Ok(WriteOp::TxnPrepare { compare, then, otherwise, .. }) => {
                    let written = intents::written_names(&then, &otherwise);
                    txn_plan::names(&compare, &then, &otherwise)
                        .into_iter()
                        .map(|n| {
                            let w = written.contains(&n.as_slice());
                            (n, w)
                        })
                        .collect()
                }
                _ => Vec::new(),
            },
            Op::KvScan { prefix, .. } => {
                let parts = self.parts.borrow();
                let Some(p) = parts.get(&partition) else { return Ok(Vec::new()) };
                let (lo, hi) = kahuna_core::keys::prefix_range(prefix, &p.info.start, &p.info.end);
                let held = intents::held_in_range(&self.db, &lo, hi.as_deref(), usize::MAX)?;
                return Ok(held
                    .into_iter()
                    .flat_map(|(n, i)| i.holders(false).into_iter().map(move |h| (n.clone(), h)))
                    .take(MAX_HELD)
                    .collect());
            }
            Op::Script { source, params, .. } => {
                let keys = kahuna_core::command::script_keys(source, params).unwrap_or_default();
                keys.into_iter().map(|k| (k, true)).collect()
            }
            other => vec![(other.routing_key().to_vec(), !other.is_read())],
        };
        let mut out = Vec::new();
        for (n, writes) in names {
            if let Some(i) = intents::intent_at(&self.db, &n)? {
                out.extend(i.holders(writes).into_iter().map(|h| (n.clone(), h)));
                if out.len() >= MAX_HELD {
                    out.truncate(MAX_HELD);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Whether `op` must wait for intents before it runs (persistent key, lock and sequence
    /// requests, and prepares), and until when.
    pub(super) fn waits_for_intents(&self, op: &Op, deadline: Instant) -> Option<Instant> {
        if op.durability() != Durability::Persistent || super::route::background(op) {
            return None;
        }
        match op {
            Op::ClusterStatus { .. }
            | Op::Backup { .. }
            | Op::Split { .. }
            | Op::Membership { .. }
            | Op::MoveReplica { .. } => None,
            Op::Internal { payload, .. } => match WriteOp::decode_internal(payload) {
                Ok(WriteOp::TxnPrepare { .. }) => Some(deadline.min(Instant::now() + PREPARE_WAIT)),
                _ => None,
            },
            _ => Some(deadline),
        }
    }

    /// Waits until no transaction holds a name `op` touches in `partition`, finishing the
    /// transactions whose coordinator is gone on the way; LOCKED (nothing applied) at `until`.
    pub(super) async fn wait_for_intents(
        self: &Rc<Self>,
        partition: u64,
        op: &Op,
        until: Instant,
    ) -> Result<(), WireError> {
        // The first ask comes early (a prepare waits only briefly), the next ones at an interval.
        let mut asked =
            Instant::now().checked_sub(ASK_EVERY - FIRST_ASK).unwrap_or_else(Instant::now);
        let mut pause = Duration::from_millis(2);
        loop {
            let held = self.held(partition, op)?;
            let Some((first, _)) = held.first() else { return Ok(()) };
            if Instant::now() >= until {
                return Err(intents::locked(first));
            }
            let now_ms = self.now_ms();
            let ask = asked.elapsed() >= ASK_EVERY;
            for (name, holder) in held {
                if ask || now_ms >= holder.deadline_ms {
                    self.settle(name, holder, until).await;
                }
            }
            if ask {
                asked = Instant::now();
            }
            glommio::timer::sleep(pause.min(until.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Asks the record of a transaction holding `name` where it stands (aborting it if its
    /// deadline passed) and, once decided, resolves the name; true if it did.
    async fn settle(self: &Rc<Self>, name: Vec<u8>, holder: Holder, until: Instant) -> bool {
        let Some(state) = self.outcome_of(&holder, until).await else { return false };
        let attempt = until.min(Instant::now() + ATTEMPT);
        let step =
            WriteOp::TxnResolve { txn: holder.txn, names: vec![name.clone()], outcome: state };
        self.internal(name, step, attempt).await.is_ok()
    }

    /// The outcome of the transaction `holder` names, once decided: asked of its record by a
    /// read first (no log entry); only a pending record past its deadline needs the logged
    /// decide that aborts it.
    async fn outcome_of(self: &Rc<Self>, holder: &Holder, until: Instant) -> Option<u8> {
        let attempt = until.min(Instant::now() + ATTEMPT);
        let status = WriteOp::TxnDecide {
            txn: holder.txn.clone(),
            primary: holder.primary.clone(),
            deadline_ms: holder.deadline_ms,
            action: intents::DECIDE_STATUS,
        };
        let mut state = match self.step(holder.primary.clone(), &status, true, attempt).await {
            Ok(r) => state_of(&r),
            Err(_) => None,
        };
        if state == Some(TXN_PENDING) && self.now_ms() >= holder.deadline_ms {
            state = match self.internal(holder.primary.clone(), status, attempt).await {
                Ok(r) => state_of(&r),
                Err(_) => None,
            };
        }
        state.filter(|s| *s != TXN_PENDING)
    }
}

/// How often each shard looks for records their coordinator left behind, and how many it
/// finishes per look.
const RECOVER_EVERY: Duration = Duration::from_secs(2);
const RECOVER_BATCH: usize = 16;
const QUIESCED_EVERY: u64 = 15;

/// Finishes the transactions whose coordinator died (or gave up resolving) in the partitions
/// this shard leads: a record still there past its deadline is settled (a pending one aborted),
/// every name it lists resolved, and then it is forgotten. Without this, intents on keys nobody
/// touches again would stay, and records would pile up under their first key.
pub async fn recover(shard: Rc<Shard>) {
    // Records this shard already resolved every name of (they wait to be forgotten).
    let mut resolved: std::collections::BTreeSet<Vec<u8>> = Default::default();
    let mut walk = IntentWalk::default();
    let mut round = 0u64;
    loop {
        glommio::timer::sleep(RECOVER_EVERY).await;
        round += 1;
        // Quiesced partitions are looked at once in QUIESCED_EVERY rounds: reading their
        // records does not wake them (only finishing a due one does), and a partition
        // quiesces long before a dead coordinator's record is due.
        let quiesced_too = round.is_multiple_of(QUIESCED_EVERY);
        let now_ms = shard.now_ms();
        let mut found = Vec::new();
        {
            let due = |r: &kahuna_core::records::TxnRecord| {
                now_ms >= r.deadline_ms.saturating_add(RECORD_KEEP_MS)
                    || (now_ms >= r.deadline_ms && !resolved.contains(&r.txn))
            };
            let parts = shard.parts.borrow();
            for p in parts.values().filter(|p| p.is_leader() && (quiesced_too || !p.quiesced)) {
                let hi = (!p.info.end.is_empty()).then_some(p.info.end.as_slice());
                let left = RECOVER_BATCH - found.len();
                match intents::records_in_range(&shard.db, &p.info.start, hi, left, &due) {
                    Ok(recs) => found.extend(recs),
                    Err(e) => tracing::error!("partition {}: {e}", p.info.id),
                }
                if found.len() >= RECOVER_BATCH {
                    break;
                }
            }
        }
        if resolved.len() > 64 * RECOVER_BATCH {
            resolved.clear(); // bounded: at worst some are resolved again
        }
        // One settle per transaction (one status, one resolve for all its names), all at once:
        // one that cannot be (its first key's partition is unavailable) holds up neither the
        // others nor the records below.
        let until = Instant::now() + ATTEMPT * 4;
        let mut by_txn: std::collections::BTreeMap<Vec<u8>, (Holder, Vec<Vec<u8>>)> =
            Default::default();
        for (name, holder) in overdue_intents(&shard, &mut walk, quiesced_too, now_ms) {
            by_txn.entry(holder.txn.clone()).or_insert_with(|| (holder, Vec::new())).1.push(name);
        }
        let settling: Vec<_> = by_txn
            .into_values()
            .map(|(holder, names)| {
                let me = shard.clone();
                glommio::spawn_local(async move {
                    let Some(state) = me.outcome_of(&holder, until).await else { return };
                    if me.resolve_names(&holder.txn, &names, state, until).await {
                        me.metrics.txn_recovered.inc();
                        let names: Vec<_> =
                            names.iter().map(|n| String::from_utf8_lossy(n)).collect();
                        tracing::info!(
                            "settled intents on {names:?} held past their deadline (first key \
                             {:?}, state {state})",
                            String::from_utf8_lossy(&holder.primary)
                        );
                    }
                })
            })
            .collect();
        for t in settling {
            t.await;
        }
        for (primary, rec) in found {
            let until = Instant::now() + ATTEMPT * 4;
            let decide = |action| WriteOp::TxnDecide {
                txn: rec.txn.clone(),
                primary: primary.clone(),
                deadline_ms: rec.deadline_ms,
                action,
            };
            if resolved.contains(&rec.txn) {
                // Kept past any retry of its coordinator's commit: now it may go.
                if shard.internal_until(&primary, &decide(DECIDE_FORGET), until).await.is_ok() {
                    resolved.remove(&rec.txn);
                }
                continue;
            }
            let status = decide(intents::DECIDE_STATUS);
            let Ok(r) = shard.internal_until(&primary, &status, until).await else { continue };
            let Some(state) = state_of(&r).filter(|s| *s != TXN_PENDING) else { continue };
            if !rec.names.is_empty() {
                tracing::info!(
                    "finishing a transaction its coordinator left (first key {:?}, {} keys, \
                     state {state})",
                    String::from_utf8_lossy(&primary),
                    rec.names.len()
                );
            }
            if shard.resolve_names(&rec.txn, &rec.names, state, until).await {
                if !rec.names.is_empty() {
                    shard.metrics.txn_recovered.inc();
                }
                resolved.insert(rec.txn.clone());
            }
        }
    }
}

/// The walk over the intents of the partitions a shard leads: where it goes on in each, and
/// the partition the last round stopped at (the next starts after it, so one partition full of
/// holders it cannot settle, or of big intents, does not keep the others from being walked).
#[derive(Default)]
struct IntentWalk {
    cursors: std::collections::HashMap<u64, Vec<u8>>,
    last: u64,
}

/// Intents held long past their deadline in the partitions this shard leads, about
/// [`RECOVER_BATCH`] holders a round; each partition's walk reads [`INTENT_WALK`] intents or
/// [`INTENT_WALK_BYTES`] a round from where it stopped, and a round reads at most
/// [`INTENT_ROUND_BYTES`] in all. Records' recovery finishes nearly every transaction first;
/// this finds the ones that left no record, whose intents nobody else would ever look at.
fn overdue_intents(
    shard: &Shard,
    walk: &mut IntentWalk,
    quiesced_too: bool,
    now_ms: u64,
) -> Vec<(Vec<u8>, Holder)> {
    let parts = shard.parts.borrow();
    walk.cursors.retain(|pid, _| parts.get(pid).is_some_and(|p| p.is_leader()));
    let led: Vec<&crate::raft::partition::Partition> =
        parts.values().filter(|p| p.is_leader() && (quiesced_too || !p.quiesced)).collect();
    // Partition ids ascend: start after the one the last round stopped at, wrapping around.
    let first = led.iter().position(|p| p.info.id > walk.last).unwrap_or(0);
    let (mut found, mut bytes) = (Vec::new(), 0);
    for p in led[first..].iter().chain(&led[..first]) {
        let (start, end) = (&p.info.start, &p.info.end);
        // A split since the last round may have left the cursor outside the range.
        let from = walk
            .cursors
            .remove(&p.info.id)
            .filter(|c| c >= start && (end.is_empty() || c < end))
            .unwrap_or_else(|| start.clone());
        let hi = (!end.is_empty()).then_some(end.as_slice());
        let scan =
            intents::holders_in_range(&shard.db, (&from, hi), INTENT_WALK, INTENT_WALK_BYTES);
        for name in &scan.bad {
            tracing::error!(
                "partition {}: the intent on {:?} does not decode; left as it is",
                p.info.id,
                String::from_utf8_lossy(name)
            );
        }
        let room = RECOVER_BATCH.saturating_sub(found.len()).max(1);
        let step = intents::walk_step(&scan.held, scan.cut, now_ms, room);
        if let Some(next) = step.next {
            walk.cursors.insert(p.info.id, next);
        }
        found.extend(step.overdue);
        bytes += scan.bytes;
        if found.len() >= RECOVER_BATCH || bytes >= INTENT_ROUND_BYTES {
            walk.last = p.info.id;
            break;
        }
    }
    found
}

/// Intents a partition's walk reads per round, and bytes of them; bytes a round reads in all.
const INTENT_WALK: usize = 256;
const INTENT_WALK_BYTES: usize = 1 << 20;
const INTENT_ROUND_BYTES: usize = 4 << 20;

/// A transaction that was aborted applied nothing: an error that left its outcome unknown
/// (a prepare that did not answer) becomes a retryable one.
fn not_applied(e: WireError) -> WireError {
    if e.code == ErrorCode::Timeout {
        WireError::new(
            ErrorCode::Unavailable,
            format!("a part of the transaction did not answer ({e}); it was aborted and nothing was applied, retry"),
        )
    } else {
        e
    }
}

/// Whether a step of a transaction times a lease (a lock acquire): such a prepare obeys the
/// lease clock rule like a plain acquire.
pub(super) fn prepares_a_lease(op: &Op) -> bool {
    let Op::Internal { payload, .. } = op else { return false };
    match WriteOp::decode_internal(payload) {
        Ok(WriteOp::TxnPrepare { then, otherwise, .. }) => {
            then.iter().chain(&otherwise).any(|s| matches!(s, TxnStep::LockAcquire { .. }))
        }
        _ => false,
    }
}
