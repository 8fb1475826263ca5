//! The state machines: what a committed write does to a partition's state, and what a read
//! sees. Deterministic: the same store, command and `now_ms` always give the same writes and
//! the same reply, on every replica.
//!
//! Lifecycle of a write:
//! 1. the leader validates the request ([`crate::Limits`]) and stamps it with its HLC;
//! 2. persistent: the [`crate::LogCommand`] is replicated, then [`apply`] runs on each replica
//!    over a [`crate::store::WriteBuffer`]; ephemeral: [`apply`] runs on the leader's
//!    [`crate::store::MemStore`] at once;
//! 3. the reply goes back to the client only after the writes are durable (persistent) or
//!    applied (ephemeral).

pub mod intents;
mod kv;
mod locks;
pub mod script;

pub use kv::expired_before;
mod sequences;
pub mod txn;

use kahuna_protocol::{ErrorCode, Op, Reply, WireError};

use crate::command::{ApplySettings, LogCommand, WriteOp};
use crate::limits::Limits;
use crate::records::CorruptRecord;
use crate::store::{Scan, Txn};

/// What an apply may depend on besides the store and the command: all of it comes from the
/// log entry (its command, its term) or from the partition, never from a node's own settings.
#[derive(Clone, Debug)]
pub struct ApplyCtx {
    /// The proposing leader's HLC, in milliseconds.
    pub now_ms: u64,
    /// The Raft term of the entry (ephemeral state: the leader's current term).
    pub term: u64,
    /// The smallest fencing token a new grant may take. Persistent state uses 0 (tokens count
    /// 1, 2, 3 per resource). Ephemeral state, which a new leader starts empty, uses
    /// `term << 40 | grants`, above every token any earlier leader could have handed out.
    pub token_floor: u64,
    /// Keep a released lock's record (and so its last token). Ephemeral state drops it, since
    /// its floor already guarantees growth.
    pub keep_released_locks: bool,
    /// Retention and clock assumptions, as carried by the entry.
    pub settings: ApplySettings,
    /// The start key of the partition the write applies to, which names its revision floor;
    /// `None` where nothing is ever collected (ephemeral state): the floor is 0.
    pub partition_start: Option<Vec<u8>>,
}

impl ApplyCtx {
    /// Applying a replicated command of `term` in the partition starting at `start`.
    pub fn persistent(cmd: &LogCommand, term: u64, start: &[u8]) -> ApplyCtx {
        ApplyCtx {
            now_ms: crate::hlc::Hlc(cmd.hlc).physical_ms(),
            term,
            token_floor: 0,
            keep_released_locks: true,
            settings: cmd.settings,
            partition_start: Some(start.to_vec()),
        }
    }
}

/// The key range of the partition a read runs in: `[start, end)`, `end` empty = unbounded.
#[derive(Clone, Copy, Debug)]
pub struct Bounds<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
}

impl Bounds<'_> {
    pub const ALL: Bounds<'static> = Bounds { start: b"", end: b"" };
}

pub(crate) fn corrupt(e: CorruptRecord) -> WireError {
    WireError::new(ErrorCode::Internal, e.to_string())
}

pub(crate) fn conflict(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Conflict, msg)
}

pub(crate) fn not_found(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::NotFound, msg)
}

pub(crate) fn deadline(now_ms: u64, span_ms: u64) -> u64 {
    if span_ms == 0 {
        0
    } else {
        now_ms.saturating_add(span_ms)
    }
}

/// Applies one write. Writes go into `txn`; a failed condition writes nothing, and so does a
/// write to a name a transaction across partitions holds (LOCKED).
pub fn apply<T: Txn>(txn: &mut T, op: &WriteOp, ctx: &ApplyCtx) -> Result<Reply, WireError> {
    match op {
        WriteOp::TxnPrepare { txn: id, primary, deadline_ms, record, compare, then, otherwise } => {
            return intents::prepare(
                txn,
                id,
                primary,
                *deadline_ms,
                record,
                compare,
                then,
                otherwise,
                ctx,
            )
        }
        WriteOp::TxnDecide { txn: id, primary, deadline_ms, action } => {
            return intents::decide(txn, id, primary, *deadline_ms, *action, ctx)
        }
        WriteOp::TxnResolve { txn: id, names, outcome } => {
            return intents::resolve(txn, id, names, *outcome)
        }
        WriteOp::KvCollect { keys, grace_ms } => {
            // A key a transaction holds is kept: its intent may bring it back.
            let free: Vec<Vec<u8>> = keys
                .iter()
                .filter(|k| intents::check_free(txn, &[k.as_slice()]).is_ok())
                .cloned()
                .collect();
            return kv::collect(txn, &free, *grace_ms, ctx);
        }
        WriteOp::Split { .. } | WriteOp::Lead { .. } => {}
        WriteOp::Txn { compare, then, otherwise } => {
            intents::check_txn(txn, compare, then, otherwise)?
        }
        WriteOp::Script { source, params, keys } => {
            let names: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            intents::check_free(txn, &names)?;
            return script::run(txn, source, params, keys, ctx);
        }
        other => intents::check_free(txn, &other.keys())?,
    }
    match op {
        WriteOp::KvSet { key, value, ttl_ms, cond } => kv::set(txn, key, value, *ttl_ms, cond, ctx),
        WriteOp::KvDelete { key, expected_revision } => {
            kv::delete(txn, key, *expected_revision, ctx)
        }
        WriteOp::KvExtend { key, ttl_ms } => kv::extend(txn, key, *ttl_ms, ctx),
        WriteOp::LockAcquire { resource, owner, lease_ms } => {
            locks::acquire(txn, resource, owner, *lease_ms, ctx)
        }
        WriteOp::LockExtend { resource, owner, lease_ms, fencing_token } => {
            locks::extend(txn, resource, owner, *lease_ms, *fencing_token, ctx)
        }
        WriteOp::LockRelease { resource, owner, fencing_token } => {
            locks::release(txn, resource, owner, *fencing_token, ctx)
        }
        WriteOp::SeqNext { name, count } => sequences::next(txn, name, *count),
        WriteOp::Split { at, new_id, epoch } => {
            kv::split_floor(txn, at, ctx)?;
            Ok(Reply::Split { left: 0, right: *new_id, at: at.clone(), epoch: epoch + 1 })
        }
        WriteOp::Txn { compare, then, otherwise } => txn::run(txn, compare, then, otherwise, ctx),
        // Changes the descriptor only (the server applies that beside the state).
        WriteOp::Lead { epoch, .. } => {
            Ok(Reply::MoveReplica { step: "lead".to_string(), epoch: epoch + 1 })
        }
        WriteOp::KvCollect { .. }
        | WriteOp::Script { .. }
        | WriteOp::TxnPrepare { .. }
        | WriteOp::TxnDecide { .. }
        | WriteOp::TxnResolve { .. } => unreachable!("applied above"),
    }
}

/// Serves one read at `now_ms` within the partition `bounds`. A write handed here is an error.
pub fn read<S: Scan>(
    store: &S,
    op: &Op,
    now_ms: u64,
    bounds: Bounds<'_>,
    limits: &Limits,
) -> Result<Reply, WireError> {
    match op {
        Op::KvGet { key, .. }
        | Op::KvExists { key, .. }
        | Op::KvHistory { key, .. }
        | Op::LockGet { resource: key, .. } => intents::check_readable(store, &[key.as_slice()])?,
        Op::KvScan { prefix, .. } => {
            // A key a transaction across partitions writes may be about to change: the page
            // waits (for any such key under the prefix in this partition, before its cursor
            // too).
            let (lo, hi) = crate::keys::prefix_range(prefix, bounds.start, bounds.end);
            intents::check_range_readable(store, &lo, hi.as_deref())?
        }
        _ => {}
    }
    match op {
        Op::KvGet { key, revision, .. } => kv::get(store, key, *revision, now_ms),
        Op::KvExists { key, .. } => kv::exists(store, key, now_ms),
        Op::KvScan { prefix, start_after, limit, .. } => {
            kv::scan(store, prefix, start_after.as_deref(), *limit, now_ms, bounds, limits)
        }
        Op::KvHistory { key, limit, .. } => kv::history(store, key, *limit, limits),
        Op::LockGet { resource, .. } => locks::get(store, resource, now_ms),
        Op::Internal { payload, read: true, .. } => {
            let op = crate::command::WriteOp::decode_internal(payload)
                .map_err(|e| WireError::new(ErrorCode::Invalid, e.to_string()))?;
            // Every key must be this partition's (a map behind a split sends a part here).
            let inside = |k: &[u8]| k >= bounds.start && (bounds.end.is_empty() || k < bounds.end);
            if let Some(k) = op.keys().into_iter().find(|k| !inside(k)) {
                return Err(WireError::new(
                    ErrorCode::Moved,
                    format!("{:?} is not in this partition; retry", String::from_utf8_lossy(k)),
                ));
            }
            match op {
                WriteOp::TxnPrepare { compare, then, otherwise, .. } => {
                    intents::evaluate(store, &compare, &then, &otherwise, now_ms)
                }
                WriteOp::TxnDecide { txn, primary, action: intents::DECIDE_STATUS, .. } => {
                    intents::status(store, &primary, &txn)
                }
                _ => Err(WireError::new(ErrorCode::Invalid, "not a read of a transaction")),
            }
        }
        other => {
            Err(WireError::new(ErrorCode::Internal, format!("{} is not a read", other.name())))
        }
    }
}

/// True when the stored record at `storage_key` is dead at `now_ms` (an expired key or lock):
/// the ephemeral sweeper uses this to free memory.
pub fn is_dead(storage_key: &[u8], value: &[u8], now_ms: u64) -> bool {
    match storage_key.first() {
        Some(&crate::keys::KV) => {
            crate::records::peek_kv(value, now_ms).map(|(_, live)| !live).unwrap_or(true)
        }
        Some(&crate::keys::LOCK) => {
            crate::records::decode_lock(value).map(|l| !l.is_held(now_ms)).unwrap_or(true)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
