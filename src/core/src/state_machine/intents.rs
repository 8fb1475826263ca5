//! Transactions across partitions: the state each partition keeps for them, and the rules that
//! make them atomic whatever crashes (two-phase commit with one commit point).
//!
//! ```text
//!  prepare (every partition, in parallel)     decide (the record's partition)     resolve
//!  compares + both branches' steps run  ───▶  Pending ─▶ Committed(branch)  ───▶  staged writes
//!  over the state; every name touched         (before the deadline)               applied, intents
//!  gets an intent with the writes each         Pending ─▶ Aborted                  dropped
//!  branch would make; the record (first        (anyone, after the deadline)
//!  key's partition) starts Pending
//! ```
//! Owns: intents (`keys::INTENT`), records (`keys::TXN_RECORD`), what an intent blocks, and
//! the decide rules. The commit point is one entry of one Raft log: the record's partition
//! orders the coordinator's commit and any other node's abort, and the deadline (checked
//! against each entry's own HLC stamp) makes them exclusive: a commit applies only before it, an
//! abort of a pending record only after it. So a coordinator that dies at any point leaves a
//! transaction that anyone who meets its intents can finish: committed records are applied,
//! the rest are aborted once the deadline passed.
//!
//! A record that is gone (forgotten once every intent was resolved) or never written (the
//! first key's prepare never applied) reads as pending before the deadline and aborted after:
//! a prepare applies only before the deadline, so no record can appear later.
//!
//! A name a transaction writes (in either branch) it holds alone; a name it only reads (a
//! compare or a read step) it shares with other readers (strict two-phase locking: readers do
//! not block readers). A transaction that writes nothing needs no record and no decide: its
//! answer is its prepares', and its resolve only lets the names go.
//!
//! Must never: let a held name be written by anything but its writer's resolve, or read while
//! it has a writer; commit after the deadline; abort a pending record before it.

use kahuna_protocol::{ErrorCode, Reply, WireError};

use super::txn::{branch, holds};
use super::{corrupt, ApplyCtx};
use crate::command::{TxnCompare, TxnStep};
use crate::keys::{self, data_key};
use crate::records::{
    decode_intent, decode_txn_records, encode_intent, encode_txn_records, Holder, IntentRecord,
    TxnRecord, TXN_ABORTED, TXN_COMMITTED_ELSE, TXN_COMMITTED_THEN, TXN_PENDING,
};
use crate::store::{Get, Scan, Txn};

pub use crate::command::{
    DECIDE_ABORT, DECIDE_COMMIT_ELSE, DECIDE_COMMIT_THEN, DECIDE_FORGET, DECIDE_STATUS,
};

/// How long after its prepare a transaction may still commit: past it, anyone who meets its
/// intents may abort it. Also the longest a crashed coordinator's transaction blocks its keys.
pub const TXN_DEADLINE_MS: u64 = 5_000;

/// How long a decided record is kept past its deadline before a partition's leader may forget
/// it (when its coordinator did not): longer than any coordinator retries its commit, so a
/// retry always finds the record it committed.
pub const RECORD_KEEP_MS: u64 = 120_000;

/// Readers sharing one name, at most: past it a reading prepare is refused (LOCKED).
pub const MAX_READERS: usize = 64;

/// Records, decided ones included, under one first key, at most.
pub const MAX_RECORDS_KEPT_PER_KEY: usize = 512;

/// Pending records of transactions sharing one first key, at most: past it a prepare is refused
/// (CONFLICT) until some are forgotten.
pub const MAX_RECORDS_PER_KEY: usize = 64;

/// The answer of a decide: the record's state after it.
pub fn state_reply(state: u8) -> Reply {
    Reply::Internal { payload: vec![state] }
}

/// The state a decide's answer carries, if it is one.
pub fn state_of(reply: &Reply) -> Option<u8> {
    match reply {
        Reply::Internal { payload } if payload.len() == 1 && payload[0] <= TXN_ABORTED => {
            Some(payload[0])
        }
        _ => None,
    }
}

/// The error a request meets on a name a transaction holds (nothing was applied).
pub fn locked(name: &[u8]) -> WireError {
    WireError::new(
        ErrorCode::Locked,
        format!(
            "{:?} is held by a transaction in progress; nothing was applied, retry",
            String::from_utf8_lossy(name)
        ),
    )
}

/// The intent on `name`, if a transaction holds it.
pub fn intent_at<G: Get + ?Sized>(
    store: &G,
    name: &[u8],
) -> Result<Option<IntentRecord>, WireError> {
    store.get(&data_key(keys::INTENT, name)).map(|b| decode_intent(&b)).transpose().map_err(corrupt)
}

/// LOCKED if a transaction holds any of `names` (what a write checks).
pub fn check_free<G: Get + ?Sized>(store: &G, names: &[&[u8]]) -> Result<(), WireError> {
    match names.iter().find(|n| store.get(&data_key(keys::INTENT, n)).is_some()) {
        Some(n) => Err(locked(n)),
        None => Ok(()),
    }
}

/// LOCKED if a transaction writing any of `names` holds it (what a read checks).
pub fn check_readable<G: Get + ?Sized>(store: &G, names: &[&[u8]]) -> Result<(), WireError> {
    for n in names {
        if intent_at(store, n)?.is_some_and(|i| i.has_writer()) {
            return Err(locked(n));
        }
    }
    Ok(())
}

/// What a one-partition transaction checks: the names it writes free, the ones it only reads
/// without a writer.
pub fn check_txn<G: Get + ?Sized>(
    store: &G,
    compare: &[TxnCompare],
    then: &[TxnStep],
    otherwise: &[TxnStep],
) -> Result<(), WireError> {
    let written = written_names(then, otherwise);
    let read = compare.iter().map(|c| c.key.as_slice());
    for n in read.chain(then.iter().chain(otherwise).map(|s| s.key())) {
        if written.contains(&n) {
            check_free(store, &[n])?;
        } else {
            check_readable(store, &[n])?;
        }
    }
    Ok(())
}

/// The names a transaction's steps write, in either branch.
pub fn written_names<'a>(then: &'a [TxnStep], otherwise: &'a [TxnStep]) -> Vec<&'a [u8]> {
    let mut w: Vec<&[u8]> =
        then.iter().chain(otherwise).filter(|s| s.writes()).map(|s| s.key()).collect();
    w.sort_unstable();
    w.dedup();
    w
}

/// LOCKED if a transaction writing any name in the user range `[lo, hi)` (`hi` None: to the
/// end) holds it (what a scan checks).
pub fn check_range_readable<S: Scan + ?Sized>(
    store: &S,
    lo: &[u8],
    hi: Option<&[u8]>,
) -> Result<(), WireError> {
    let held = held_in_range(store, lo, hi, usize::MAX)?;
    match held.into_iter().find(|(_, i)| i.has_writer()) {
        Some((n, _)) => Err(locked(&n)),
        None => Ok(()),
    }
}

/// Turns one stored record (user key, value) into items (see [`scan_kind`]).
type Collect<'a, T> =
    dyn FnMut(&[u8], &[u8], &mut Vec<T>) -> Result<(), crate::records::CorruptRecord> + 'a;

/// What `each` makes of the records of one `kind` under user keys in `[lo, hi)` (`hi` None: to
/// the end), until `max` items; a record that does not decode is an error.
fn scan_kind<S: Scan + ?Sized, T>(
    store: &S,
    kind: u8,
    (lo, hi): (&[u8], Option<&[u8]>),
    max: usize,
    each: &mut Collect<'_, T>,
) -> Result<Vec<T>, WireError> {
    let (l, h) = keys::kind_range(kind, lo, hi.unwrap_or_default());
    let mut out = Vec::new();
    let mut bad = None;
    store.scan(&l, &h, &mut |k, v| {
        if let Err(e) = each(&k[1..], v, &mut out) {
            bad = Some(corrupt(e));
            return false;
        }
        out.len() < max
    });
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The intents on names in the user range `[lo, hi)` (`hi` None: to the end), at most `max`.
pub fn held_in_range<S: Scan + ?Sized>(
    store: &S,
    lo: &[u8],
    hi: Option<&[u8]>,
    max: usize,
) -> Result<Vec<(Vec<u8>, IntentRecord)>, WireError> {
    scan_kind(store, keys::INTENT, (lo, hi), max, &mut |name, v, out| {
        out.push((name.to_vec(), decode_intent(v)?));
        Ok(())
    })
}

/// How long past its deadline a holder of an intent must be before a partition's leader
/// settles it itself: records' own recovery (every 2 s) finishes nearly all of them first; this
/// is for those whose transaction left no record (its coordinator died before the first key's
/// prepare applied), which only a walk over the intents finds.
pub const ORPHAN_AFTER_MS: u64 = 10_000;

/// Names and the transactions holding each.
pub type NamesHeld = Vec<(Vec<u8>, Vec<Holder>)>;

/// What one step of the walk over a partition's intents read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IntentScan {
    /// Every name read, in order, with its holders (none for an intent that does not decode).
    pub held: NamesHeld,
    /// Names whose intent does not decode (for the log: the walk goes on past them).
    pub bad: Vec<Vec<u8>>,
    /// Whether it stopped at `max` names or `max_bytes` (more may follow), not at the end.
    pub cut: bool,
    /// Bytes of intents read.
    pub bytes: usize,
}

/// The holders of the intents on names in the user range `[lo, hi)`, name by name, until
/// `max` names or `max_bytes` of intents were read. What the walk over a partition's intents
/// reads in one step.
pub fn holders_in_range<S: Scan + ?Sized>(
    store: &S,
    (lo, hi): (&[u8], Option<&[u8]>),
    max: usize,
    max_bytes: usize,
) -> IntentScan {
    let (l, h) = keys::kind_range(keys::INTENT, lo, hi.unwrap_or_default());
    let mut out = IntentScan::default();
    store.scan(&l, &h, &mut |k, v| {
        let name = k[1..].to_vec();
        match decode_intent(v) {
            Ok(i) => out.held.push((name, i.holders(true))),
            Err(_) => {
                out.bad.push(name.clone());
                out.held.push((name, Vec::new()));
            }
        }
        out.bytes += k.len() + v.len();
        out.cut = out.held.len() >= max || out.bytes >= max_bytes;
        !out.cut
    });
    out
}

/// What one step of the walk over a partition's intents found.
#[derive(Debug, PartialEq, Eq)]
pub struct WalkStep {
    /// Names and holders whose deadline passed [`ORPHAN_AFTER_MS`] ago.
    pub overdue: Vec<(Vec<u8>, Holder)>,
    /// Where the next step starts; `None`: the walk reached the end and starts over.
    pub next: Option<Vec<u8>>,
}

/// One step of the walk over a partition's intents: `scanned` are the next intents from the
/// walk's cursor (`cut`: more may follow). Names are taken whole: the first with an overdue
/// holder always (so a name with more holders than `room` that cannot be settled never stops
/// the walk there), the next ones while their holders fit in `room`; the next step starts at
/// the first name left.
pub fn walk_step(
    scanned: &[(Vec<u8>, Vec<Holder>)],
    cut: bool,
    now_ms: u64,
    room: usize,
) -> WalkStep {
    let mut overdue: Vec<(Vec<u8>, Holder)> = Vec::new();
    for (name, holders) in scanned {
        let due: Vec<&Holder> = holders
            .iter()
            .filter(|h| h.deadline_ms.saturating_add(ORPHAN_AFTER_MS) <= now_ms)
            .collect();
        if due.is_empty() {
            continue;
        }
        if !overdue.is_empty() && overdue.len() + due.len() > room {
            return WalkStep { overdue, next: Some(name.clone()) };
        }
        overdue.extend(due.into_iter().map(|h| (name.clone(), h.clone())));
    }
    let next = match scanned.last() {
        Some((name, _)) if cut => {
            let mut after = name.clone();
            after.push(0);
            Some(after)
        }
        _ => None,
    };
    WalkStep { overdue, next }
}

/// The records under primary keys in the user range `[lo, hi)` that `want` picks, at most
/// `max` of them: what a partition's leader looks at to finish transactions whose coordinator
/// did not.
pub fn records_in_range<S: Scan + ?Sized>(
    store: &S,
    lo: &[u8],
    hi: Option<&[u8]>,
    max: usize,
    want: &dyn Fn(&TxnRecord) -> bool,
) -> Result<Vec<(Vec<u8>, TxnRecord)>, WireError> {
    scan_kind(store, keys::TXN_RECORD, (lo, hi), max, &mut |primary, v, out| {
        let recs = decode_txn_records(v)?;
        out.extend(recs.into_iter().filter(|r| want(r)).map(|r| (primary.to_vec(), r)));
        Ok(())
    })
}

fn records<G: Get + ?Sized>(store: &G, primary: &[u8]) -> Result<Vec<TxnRecord>, WireError> {
    match store.get(&data_key(keys::TXN_RECORD, primary)) {
        None => Ok(Vec::new()),
        Some(b) => decode_txn_records(&b).map_err(corrupt),
    }
}

#[allow(clippy::ptr_arg)] // rkyv archives the Vec itself
fn put_records<T: Txn>(txn: &mut T, primary: &[u8], recs: &Vec<TxnRecord>) {
    let key = data_key(keys::TXN_RECORD, primary);
    if recs.is_empty() {
        txn.delete(key);
    } else {
        txn.put(key, encode_txn_records(recs));
    }
}

/// A transaction's record as the partition of `primary` holds it, if it does.
pub fn record<G: Get + ?Sized>(
    store: &G,
    primary: &[u8],
    id: &[u8],
) -> Result<Option<TxnRecord>, WireError> {
    Ok(records(store, primary)?.into_iter().find(|r| r.txn == id))
}

/// The prepare of one partition's part (see the module doc).
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare<T: Txn>(
    txn: &mut T,
    id: &[u8],
    primary: &[u8],
    deadline_ms: u64,
    record_names: &[Vec<u8>],
    compare: &[TxnCompare],
    then: &[TxnStep],
    otherwise: &[TxnStep],
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    if ctx.now_ms >= deadline_ms {
        return Err(WireError::new(
            ErrorCode::Conflict,
            "the transaction's deadline passed before this part was prepared; nothing was applied",
        ));
    }
    // A deadline far ahead would hold names that nobody could free: a peer's word is bounded.
    if deadline_ms > ctx.now_ms + TXN_DEADLINE_MS + ctx.settings.max_clock_offset_ms {
        // Retryable: the coordinator's clock may run ahead of this leader's for a while.
        return Err(WireError::new(
            ErrorCode::Unavailable,
            "a transaction's deadline is too far ahead of this partition's clock; retry",
        ));
    }
    let mut names: Vec<&[u8]> = compare
        .iter()
        .map(|c| c.key.as_slice())
        .chain(then.iter().chain(otherwise).map(|s| s.key()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let written = written_names(then, otherwise);
    let me = Holder { txn: id.to_vec(), primary: primary.to_vec(), deadline_ms };
    let mut shared = Vec::new();
    for name in &names {
        let held = intent_at(txn, name)?;
        match held {
            Some(_) if written.contains(name) => return Err(locked(name)),
            Some(i) if i.has_writer() || i.readers.len() >= MAX_READERS => {
                return Err(locked(name))
            }
            Some(i) if i.readers.iter().any(|r| r.txn == id) => {
                return Err(WireError::new(ErrorCode::Internal, "a transaction prepared twice"))
            }
            _ => shared.push(held.unwrap_or_default()),
        }
    }
    let mut recs = Vec::new();
    if !record_names.is_empty() {
        recs = records(txn, primary)?;
        if recs.iter().any(|r| r.txn == id) {
            // Prepared twice, or aborted (and marked) before this prepare came: never again.
            return Err(WireError::new(
                ErrorCode::Conflict,
                "the transaction was already decided; nothing was applied",
            ));
        }
        // Pending ones bound the work in flight; decided ones (kept a while, see
        // RECORD_KEEP_MS) are bounded apart, so a few left behind do not stop a hot first key.
        let pending = recs.iter().filter(|r| r.state == TXN_PENDING).count();
        if pending >= MAX_RECORDS_PER_KEY || recs.len() >= MAX_RECORDS_KEPT_PER_KEY {
            return Err(WireError::new(
                ErrorCode::Conflict,
                format!(
                    "{MAX_RECORDS_PER_KEY} transactions starting at this key are still being \
                     finished; nothing was applied, retry"
                ),
            ));
        }
    }
    let held = holds(txn, compare, ctx.now_ms)?;
    let t = branch(txn, then, ctx)?;
    let e = branch(txn, otherwise, ctx)?;
    // Each name's staged writes: every storage key a step writes belongs to one name.
    let staged = |b: &super::txn::Branch, name: &[u8]| {
        b.failed.is_none().then(|| {
            b.writes
                .iter()
                .filter(|(k, _)| keys::name_of(k).as_ref() == name)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        })
    };
    for (name, mut intent) in names.iter().zip(shared) {
        if written.contains(name) {
            intent = IntentRecord {
                txn: id.to_vec(),
                primary: primary.to_vec(),
                deadline_ms,
                then: staged(&t, name),
                otherwise: staged(&e, name),
                readers: Vec::new(),
            };
        } else {
            intent.readers.push(me.clone());
        }
        txn.put(data_key(keys::INTENT, name), encode_intent(&intent));
    }
    if !record_names.is_empty() {
        recs.push(TxnRecord {
            txn: id.to_vec(),
            state: TXN_PENDING,
            deadline_ms,
            names: record_names.to_vec(),
        });
        put_records(txn, primary, &recs);
    }
    let mut results = t.results;
    results.extend(e.results);
    Ok(Reply::Txn { succeeded: held, results })
}

/// Where a transaction's record stands, read (not logged): its state, pending when there is
/// none yet. Final only when committed or aborted; a pending answer at or past the deadline
/// must be settled by a logged [`DECIDE_STATUS`] (the abort is a write).
pub fn status<G: Get + ?Sized>(store: &G, primary: &[u8], id: &[u8]) -> Result<Reply, WireError> {
    Ok(state_reply(record(store, primary, id)?.map(|r| r.state).unwrap_or(TXN_PENDING)))
}

/// A part of a transaction that writes nothing, evaluated without holding anything: whether
/// its compares hold, both branches' results (as a prepare answers), and last a fingerprint of
/// every name's state (`Reply::Internal`). The coordinator evaluates every part twice and
/// takes the answer only if no fingerprint changed in between: each name then kept its state
/// from its first evaluation to its second, so all held together at the moment the first
/// round ended (no intents, so readers never block writers). LOCKED while a writer holds a
/// name.
pub fn evaluate<S: Scan + ?Sized>(
    store: &S,
    compare: &[TxnCompare],
    then: &[TxnStep],
    otherwise: &[TxnStep],
    now_ms: u64,
) -> Result<Reply, WireError> {
    let names = crate::txn_plan::names(compare, then, otherwise);
    let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
    check_readable(store, &refs)?;
    if then.iter().chain(otherwise).any(|s| s.writes()) {
        return Err(WireError::new(ErrorCode::Invalid, "an evaluated part writes nothing"));
    }
    let view = crate::store::WriteBuffer::new(store);
    let ctx = ApplyCtx {
        now_ms,
        term: 0,
        token_floor: 0,
        keep_released_locks: true,
        settings: Default::default(),
        partition_start: None,
    };
    let held = holds(&view, compare, now_ms)?;
    let mut results = branch(&view, then, &ctx)?.results;
    results.extend(branch(&view, otherwise, &ctx)?.results);
    results.push(Ok(Reply::Internal { payload: fingerprint(store, &names, now_ms)? }));
    Ok(Reply::Txn { succeeded: held, results })
}

/// What changes whenever a name's key, lock or sequence changes: the key's revision (which
/// only grows, deletes included) and liveness, the lock's token (which grows with every grant),
/// hold, expiry and liveness, the sequence's last value.
fn fingerprint<G: Get + ?Sized>(
    store: &G,
    names: &[Vec<u8>],
    now_ms: u64,
) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(names.len() * 40);
    for n in names {
        match store.get(&data_key(keys::KV, n)) {
            Some(b) => {
                let r = crate::records::decode_kv(&b).map_err(corrupt)?;
                out.extend_from_slice(&r.revision.to_le_bytes());
                out.extend_from_slice(&r.expires_at_ms.to_le_bytes());
                out.push(r.deleted as u8 | (r.is_live(now_ms) as u8) << 1);
            }
            None => out.extend_from_slice(&[0xff; 17]),
        }
        match store.get(&data_key(keys::LOCK, n)) {
            Some(b) => {
                let l = crate::records::decode_lock(&b).map_err(corrupt)?;
                out.extend_from_slice(&l.fencing_token.to_le_bytes());
                out.extend_from_slice(&l.expires_at_ms.to_le_bytes());
                out.push(l.held as u8 | (l.is_held(now_ms) as u8) << 1);
            }
            None => out.extend_from_slice(&[0xff; 17]),
        }
        match store.get(&data_key(keys::SEQ, n)) {
            Some(b) => out.extend_from_slice(&b),
            None => out.extend_from_slice(&[0xff; 8]),
        }
    }
    Ok(out)
}

/// The pure decide rule: the record's state after `action` at `now_ms` (`None`: no record).
pub fn decided(state: Option<u8>, deadline_ms: u64, action: u8, now_ms: u64) -> u8 {
    let past = now_ms >= deadline_ms;
    match (state, action) {
        // No record: a prepare can no longer write one after the deadline (gone or never
        // there: aborted); before it, the first key's prepare may still come.
        (None, DECIDE_STATUS) if !past => TXN_PENDING,
        (None, _) => TXN_ABORTED,
        (Some(TXN_PENDING), DECIDE_COMMIT_THEN) if !past => TXN_COMMITTED_THEN,
        (Some(TXN_PENDING), DECIDE_COMMIT_ELSE) if !past => TXN_COMMITTED_ELSE,
        (Some(TXN_PENDING), DECIDE_STATUS | DECIDE_FORGET) if !past => TXN_PENDING,
        (Some(TXN_PENDING), _) => TXN_ABORTED,
        (Some(s), _) => s,
    }
}

/// Applies a decide at the record (see [`decided`]); a forget drops a decided record.
pub(super) fn decide<T: Txn>(
    txn: &mut T,
    id: &[u8],
    primary: &[u8],
    deadline_ms: u64,
    action: u8,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let mut recs = records(txn, primary)?;
    let pos = recs.iter().position(|r| r.txn == id);
    let (before, deadline) = match pos {
        Some(i) => (Some(recs[i].state), recs[i].deadline_ms),
        None => (None, deadline_ms),
    };
    let after = decided(before, deadline, action, ctx.now_ms);
    match pos {
        Some(i) if action == DECIDE_FORGET && after != TXN_PENDING => {
            recs.remove(i);
            put_records(txn, primary, &recs);
        }
        Some(i) if before != Some(after) => {
            recs[i].state = after;
            put_records(txn, primary, &recs);
        }
        Some(_) => {}
        // No record, and aborted: mark it so. The first key's prepare may still be in flight,
        // proposed by a leader whose clock stamps it before the deadline; the mark refuses it.
        None if after == TXN_ABORTED && action != DECIDE_FORGET => {
            if recs.len() >= MAX_RECORDS_KEPT_PER_KEY {
                // No room for the mark: no answer rather than an abort the mark cannot hold.
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    "too many transaction records under this key; retry",
                ));
            }
            recs.push(TxnRecord {
                txn: id.to_vec(),
                state: TXN_ABORTED,
                deadline_ms: deadline,
                names: Vec::new(),
            });
            put_records(txn, primary, &recs);
        }
        None => {}
    }
    Ok(state_reply(after))
}

/// Resolves the transaction's intents on `names` as `outcome` (see the module doc); names the
/// transaction no longer holds (resolved before, or held by another) are left alone.
pub(super) fn resolve<T: Txn>(
    txn: &mut T,
    id: &[u8],
    names: &[Vec<u8>],
    outcome: u8,
) -> Result<Reply, WireError> {
    if outcome == TXN_PENDING {
        return Err(WireError::new(ErrorCode::Invalid, "a pending transaction is not resolved"));
    }
    for name in names {
        let Some(mut intent) = intent_at(txn, name)? else { continue };
        let readers = intent.readers.len();
        intent.readers.retain(|r| r.txn != id);
        if intent.txn == id {
            let writes = match outcome {
                TXN_COMMITTED_THEN => intent.then.take(),
                TXN_COMMITTED_ELSE => intent.otherwise.take(),
                _ => None,
            };
            for (k, v) in writes.into_iter().flatten() {
                match v {
                    Some(v) => txn.put(k, v),
                    None => txn.delete(k),
                }
            }
            let readers = std::mem::take(&mut intent.readers);
            intent = IntentRecord { readers, ..Default::default() };
        } else if readers == intent.readers.len() {
            continue; // not this transaction's
        }
        if intent.has_writer() || !intent.readers.is_empty() {
            txn.put(data_key(keys::INTENT, name), encode_intent(&intent));
        } else {
            txn.delete(data_key(keys::INTENT, name));
        }
    }
    Ok(state_reply(outcome))
}
