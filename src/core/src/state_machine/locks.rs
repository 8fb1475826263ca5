//! Locks with leases and fencing tokens.
//!
//! The invariant: a resource's fencing token strictly increases with every grant, across
//! releases, expiries, restarts and leader changes. A storage service that remembers the highest
//! token it has seen can therefore reject a holder whose lease ran out.

use kahuna_protocol::{ErrorCode, LockState, Reply, WireError};

use super::{corrupt, deadline, ApplyCtx};
use crate::keys::{self, data_key};
use crate::records::{decode_lock, encode_lock, LockRecord};
use crate::store::{Get, Txn};

fn load<G: Get>(store: &G, resource: &[u8]) -> Result<Option<LockRecord>, WireError> {
    store.get(&data_key(keys::LOCK, resource)).map(|b| decode_lock(&b)).transpose().map_err(corrupt)
}

fn state(r: &LockRecord, acquired: bool) -> LockState {
    LockState {
        acquired,
        fencing_token: r.fencing_token,
        owner: Some(r.owner.clone()),
        expires_at_ms: r.expires_at_ms,
    }
}

pub(super) fn acquire<T: Txn>(
    txn: &mut T,
    resource: &[u8],
    owner: &[u8],
    lease_ms: u64,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let rec = load(txn, resource)?;
    let key = data_key(keys::LOCK, resource);
    if let Some(r) = rec.as_ref() {
        let offset = ctx.settings.max_clock_offset_ms;
        if r.owner != owner && r.excludes_others(ctx.now_ms, ctx.term, offset) {
            return Ok(Reply::Lock(state(r, false)));
        }
        if r.owner == owner && r.is_held(ctx.now_ms) {
            // The holder asks again (a retry whose answer was lost): same grant, lease renewed.
            let renewed = LockRecord {
                expires_at_ms: deadline(ctx.now_ms, lease_ms),
                lease_term: ctx.term,
                ..r.clone()
            };
            txn.put(key, encode_lock(&renewed));
            return Ok(Reply::Lock(state(&renewed, true)));
        }
    }
    let last = rec.map(|r| r.fencing_token).unwrap_or(0);
    let token = (last + 1).max(ctx.token_floor);
    assert!(token > last, "fencing token must strictly increase: {last} -> {token}");
    let granted = LockRecord {
        owner: owner.to_vec(),
        fencing_token: token,
        expires_at_ms: deadline(ctx.now_ms, lease_ms),
        held: true,
        lease_term: ctx.term,
    };
    txn.put(key, encode_lock(&granted));
    Ok(Reply::Lock(state(&granted, true)))
}

/// The caller's live grant, or the reason it has none.
fn held_by<'r>(
    rec: &'r Option<LockRecord>,
    owner: &[u8],
    fencing_token: u64,
    now_ms: u64,
) -> Result<&'r LockRecord, WireError> {
    let not_held = |why: String| WireError::new(ErrorCode::NotHeld, why);
    let Some(r) = rec.as_ref().filter(|r| r.is_held(now_ms)) else {
        return Err(not_held("lock is not held (released or lease expired)".into()));
    };
    if r.owner != owner {
        return Err(not_held(format!(
            "lock is held by another owner (fencing token {})",
            r.fencing_token
        )));
    }
    if fencing_token != 0 && fencing_token != r.fencing_token {
        return Err(not_held(format!(
            "stale fencing token {fencing_token}: the current grant is {}",
            r.fencing_token
        )));
    }
    Ok(r)
}

pub(super) fn extend<T: Txn>(
    txn: &mut T,
    resource: &[u8],
    owner: &[u8],
    lease_ms: u64,
    fencing_token: u64,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let rec = load(txn, resource)?;
    let r = held_by(&rec, owner, fencing_token, ctx.now_ms)?;
    let renewed = LockRecord {
        expires_at_ms: deadline(ctx.now_ms, lease_ms),
        lease_term: ctx.term,
        ..r.clone()
    };
    txn.put(data_key(keys::LOCK, resource), encode_lock(&renewed));
    Ok(Reply::LockAck {
        fencing_token: renewed.fencing_token,
        expires_at_ms: renewed.expires_at_ms,
    })
}

pub(super) fn release<T: Txn>(
    txn: &mut T,
    resource: &[u8],
    owner: &[u8],
    fencing_token: u64,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let rec = load(txn, resource)?;
    let r = held_by(&rec, owner, fencing_token, ctx.now_ms)?;
    let token = r.fencing_token;
    let key = data_key(keys::LOCK, resource);
    if ctx.keep_released_locks {
        let freed = LockRecord { held: false, expires_at_ms: 0, ..r.clone() };
        txn.put(key, encode_lock(&freed));
    } else {
        txn.delete(key);
    }
    Ok(Reply::LockAck { fencing_token: token, expires_at_ms: 0 })
}

pub(super) fn get<G: Get>(store: &G, resource: &[u8], now_ms: u64) -> Result<Reply, WireError> {
    Ok(Reply::Lock(match load(store, resource)? {
        Some(r) if r.is_held(now_ms) => state(&r, true),
        Some(r) => LockState {
            acquired: false,
            fencing_token: r.fencing_token,
            owner: None,
            expires_at_ms: 0,
        },
        None => LockState::default(),
    }))
}
