//! Compare / then / else in one partition: every compare is checked against the state the
//! entry applies to, then one branch's steps run in order, each seeing the writes of the steps
//! before it, all in one apply (so one Raft entry: atomic, and serializable with every other
//! write of the partition).
//!
//! Owns: what a compare means for each target, and the all-or-nothing rule (a write step that
//! fails, a lock that is not granted included, discards every write of the transaction; a read
//! step that finds nothing is an answer, not a failure). Must never: write outside the
//! transaction's own buffer before it succeeded.
//!
//! A `lock_owner` compare sees a lease as held until it expires; an acquire also waits out the
//! clock offset after a leader change (see `locks`): a compare may call a lock free a little
//! before an acquire would get it.

use kahuna_protocol::{ErrorCode, Reply, WireError};

/// The most bytes a transaction's answers may carry (values read): below the smallest frame a
/// client or peer link takes, so a committed transaction's answer always reaches its caller.
pub const MAX_RESULT_BYTES: usize = 2 << 20;

use super::{kv, locks, sequences, ApplyCtx};
use crate::command::{TxnCompare, TxnStep};
use crate::store::{Txn, WriteBuffer};

/// What a compare looks at (the wire's `CompareTarget`, as stored in the log).
pub const TARGET_VALUE: u8 = 0;
pub const TARGET_REVISION: u8 = 1;
pub const TARGET_EXISTS: u8 = 2;
pub const TARGET_LOCK_OWNER: u8 = 3;
pub const TARGET_FENCING_TOKEN: u8 = 4;
/// How it compares (the wire's `CompareOp`).
pub const OP_EQUAL: u8 = 0;
pub const OP_NOT_EQUAL: u8 = 1;
pub const OP_LESS: u8 = 2;
pub const OP_GREATER: u8 = 3;

fn holds_order(ord: std::cmp::Ordering, op: u8) -> bool {
    use std::cmp::Ordering::*;
    match op {
        OP_EQUAL => ord == Equal,
        OP_NOT_EQUAL => ord != Equal,
        OP_LESS => ord == Less,
        _ => ord == Greater,
    }
}

/// Whether `c` holds in `store` at `now_ms`.
fn check<T: Txn>(store: &T, c: &TxnCompare, now_ms: u64) -> Result<bool, WireError> {
    Ok(match c.target {
        TARGET_VALUE => match kv::get(store, &c.key, 0, now_ms) {
            Ok(Reply::KvGet(it)) => holds_order(it.value.as_slice().cmp(&c.value), c.op),
            // A missing key equals nothing and differs from everything.
            _ => c.op == OP_NOT_EQUAL,
        },
        TARGET_REVISION => {
            let rev = match kv::exists(store, &c.key, now_ms)? {
                Reply::KvExists { revision, .. } => revision,
                _ => 0,
            };
            holds_order(rev.cmp(&c.number), c.op)
        }
        TARGET_EXISTS => {
            let exists =
                matches!(kv::exists(store, &c.key, now_ms)?, Reply::KvExists { exists: true, .. });
            holds_order((exists as u64).cmp(&((c.number != 0) as u64)), c.op)
        }
        TARGET_LOCK_OWNER | TARGET_FENCING_TOKEN => {
            let Reply::Lock(l) = locks::get(store, &c.key, now_ms)? else { return Ok(false) };
            if c.target == TARGET_LOCK_OWNER {
                let owner = l.owner.unwrap_or_default();
                holds_order(owner.as_slice().cmp(&c.value), c.op)
            } else {
                holds_order(l.fencing_token.cmp(&c.number), c.op)
            }
        }
        _ => false,
    })
}

/// Runs one step on `store` (the single-key operations themselves: never a transaction, so
/// the nesting of buffers stops here).
fn step<T: Txn>(store: &mut T, s: &TxnStep, ctx: &ApplyCtx) -> Result<Reply, WireError> {
    let none = crate::command::Cond::None;
    match s {
        TxnStep::Get { key } => kv::get(store, key, 0, ctx.now_ms),
        TxnStep::Exists { key } => kv::exists(store, key, ctx.now_ms),
        TxnStep::LockGet { resource } => locks::get(store, resource, ctx.now_ms),
        TxnStep::Set { key, value, ttl_ms } => kv::set(store, key, value, *ttl_ms, &none, ctx),
        TxnStep::Delete { key } => kv::delete(store, key, 0, ctx),
        TxnStep::LockAcquire { resource, owner, lease_ms } => {
            match locks::acquire(store, resource, owner, *lease_ms, ctx)? {
                // Not granted: a failed step, so the transaction leaves nothing.
                Reply::Lock(l) if !l.acquired => Err(WireError::new(
                    ErrorCode::Conflict,
                    format!(
                        "lock {:?} is held by another owner: the transaction was not applied",
                        String::from_utf8_lossy(resource)
                    ),
                )),
                granted => Ok(granted),
            }
        }
        TxnStep::LockRelease { resource, owner } => locks::release(store, resource, owner, 0, ctx),
        TxnStep::SeqNext { name, count } => sequences::next(store, name, *count),
    }
}

/// What one branch's steps did over a state: each step's answer, the first failed write
/// step's error (the branch then applies nothing), and the writes it would make.
pub(super) struct Branch {
    pub results: Vec<Result<Reply, WireError>>,
    pub failed: Option<WireError>,
    pub writes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// Whether every compare holds in `store` at `now_ms`.
pub(super) fn holds<T: Txn>(
    store: &T,
    compare: &[TxnCompare],
    now_ms: u64,
) -> Result<bool, WireError> {
    for c in compare {
        if !check(store, c, now_ms)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs `steps` in order over `store` into a buffer of their own (each sees the ones before);
/// `store` itself is not changed. TOO_LARGE when the answers would pass [`MAX_RESULT_BYTES`].
pub(super) fn branch<T: Txn>(
    store: &T,
    steps: &[TxnStep],
    ctx: &ApplyCtx,
) -> Result<Branch, WireError> {
    let mut results = Vec::with_capacity(steps.len());
    let mut failed = None;
    let mut own = WriteBuffer::new(store);
    let mut bytes = 0usize;
    for s in steps {
        let r = step(&mut own, s, ctx);
        match &r {
            Err(e) if s.writes() && failed.is_none() => failed = Some(e.clone()),
            Ok(Reply::KvGet(it)) => {
                bytes += it.key.len() + it.value.len();
                if bytes > MAX_RESULT_BYTES {
                    return Err(WireError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the transaction would answer more than {MAX_RESULT_BYTES} bytes of \
                             values: it was not applied; read fewer or smaller keys"
                        ),
                    ));
                }
            }
            _ => {}
        }
        results.push(r);
    }
    Ok(Branch { results, failed, writes: own.into_writes() })
}

/// Applies a transaction: its answer is whether the compares held and each step's result.
pub(super) fn run<T: Txn>(
    txn: &mut T,
    compare: &[TxnCompare],
    then: &[TxnStep],
    otherwise: &[TxnStep],
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let succeeded = holds(txn, compare, ctx.now_ms)?;
    let b = branch(txn, if succeeded { then } else { otherwise }, ctx)?;
    if let Some(e) = b.failed {
        // All or nothing: the writes before the failed step go too.
        return Err(e);
    }
    for (k, v) in b.writes {
        match v {
            Some(v) => txn.put(k, v),
            None => txn.delete(k),
        }
    }
    Ok(Reply::Txn { succeeded, results: b.results })
}
