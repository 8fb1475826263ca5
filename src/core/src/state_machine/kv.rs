//! Key/value: revisions, conditional writes, TTLs, reads at a revision, scans and history.

use kahuna_protocol::{KvItem, Reply, WireError};

use super::{conflict, corrupt, deadline, not_found, ApplyCtx, Bounds};
use crate::command::Cond;
use crate::keys::{self, data_key, history_key, history_prefix, history_revision};
use crate::limits::Limits;
use crate::records::{decode_kv, encode_kv, peek_kv, KvRecord};
use crate::store::{Get, Scan, Txn};

fn current<G: Get>(store: &G, key: &[u8]) -> Result<Option<KvRecord>, WireError> {
    store.get(&data_key(keys::KV, key)).map(|b| decode_kv(&b)).transpose().map_err(corrupt)
}

fn item(key: &[u8], r: KvRecord) -> KvItem {
    KvItem {
        key: key.to_vec(),
        value: r.value,
        revision: r.revision,
        // A tombstone's stored expiry is its delete time, for the collector only.
        expires_at_ms: if r.deleted { 0 } else { r.expires_at_ms },
        deleted: r.deleted,
    }
}

/// Replaces the current record, moving the old one into history and dropping the revision
/// that falls out of the retention window.
fn replace<T: Txn>(txn: &mut T, key: &[u8], old: Option<KvRecord>, new: &KvRecord, ctx: &ApplyCtx) {
    if let Some(old) = old {
        let rev = old.revision;
        txn.put(history_key(key, rev), encode_kv(&old));
        if ctx.settings.history_retention == 0 {
            txn.delete(history_key(key, rev));
        } else if rev > ctx.settings.history_retention {
            txn.delete(history_key(key, rev - ctx.settings.history_retention));
        }
    }
    txn.put(data_key(keys::KV, key), encode_kv(new));
}

pub(super) fn set<T: Txn>(
    txn: &mut T,
    key: &[u8],
    value: &[u8],
    ttl_ms: u64,
    cond: &Cond,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let cur = current(txn, key)?;
    let live = cur.as_ref().filter(|r| r.is_live(ctx.now_ms));
    match (cond, live) {
        (Cond::None, _) => {}
        (Cond::IfExists, None) => return Err(conflict("key does not exist (if-exists)")),
        (Cond::IfNotExists, Some(r)) => {
            return Err(conflict(format!("key exists at revision {} (if-not-exists)", r.revision)))
        }
        (Cond::IfRevision(want), l) => {
            let have = l.map(|r| r.revision).unwrap_or(0);
            if have != *want {
                return Err(conflict(format!("key is at revision {have}, not {want}")));
            }
        }
        (Cond::IfValue(want), l) if l.map(|r| r.value.as_slice()) != Some(want.as_slice()) => {
            return Err(conflict("key's value differs (if-value)"));
        }
        _ => {}
    }
    let revision = match &cur {
        Some(r) => r.revision,
        None => revision_floor(txn, ctx)?,
    } + 1;
    let create_revision = live.map(|r| r.create_revision).unwrap_or(revision);
    let new = KvRecord {
        value: value.to_vec(),
        revision,
        create_revision,
        expires_at_ms: deadline(ctx.now_ms, ttl_ms),
        deleted: false,
    };
    replace(txn, key, cur, &new, ctx);
    Ok(Reply::KvSet { revision })
}

fn floor_key(ctx: &ApplyCtx) -> Option<Vec<u8>> {
    ctx.partition_start.as_deref().map(|start| data_key(keys::REVISION_FLOOR, start))
}

/// The highest revision a collected key of this partition had: a new key starts above it.
fn revision_floor<G: Get>(store: &G, ctx: &ApplyCtx) -> Result<u64, WireError> {
    let Some(k) = floor_key(ctx) else { return Ok(0) };
    match store.get(&k) {
        None => Ok(0),
        Some(b) => b.as_slice().try_into().map(u64::from_le_bytes).map_err(|_| {
            WireError::new(kahuna_protocol::ErrorCode::Internal, "corrupt revision floor")
        }),
    }
}

/// A split's part of the state: the new partition starting at `at` names its revision floor by
/// that key, and starts from the parent's (keys on its side may have been collected, and a key
/// created again must continue above their revisions). Everything else lives under its own
/// key and stays where it is.
pub(super) fn split_floor<T: Txn>(txn: &mut T, at: &[u8], ctx: &ApplyCtx) -> Result<(), WireError> {
    let floor = revision_floor(txn, ctx)?;
    if floor > 0 {
        txn.put(data_key(keys::REVISION_FLOOR, at), floor.to_le_bytes().to_vec());
    }
    Ok(())
}

/// Removes each key whose TTL ran out (or that was deleted) at least `grace_ms` before this
/// command's time, with its retained history, and raises the partition's revision floor to the highest revision removed,
/// so a key created again later continues above it. A key written again since the collector
/// looked is alive now and stays. Replies with the number of keys removed (as `revision`).
pub(super) fn collect<T: Txn>(
    txn: &mut T,
    keys_: &[Vec<u8>],
    grace_ms: u64,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let Some(fk) = floor_key(ctx) else {
        return Err(WireError::new(
            kahuna_protocol::ErrorCode::Internal,
            "collecting keys outside a partition",
        ));
    };
    let mut floor = revision_floor(txn, ctx)?;
    let mut removed = 0u64;
    for key in keys_ {
        let Some(r) = current(txn, key)? else { continue };
        let expired_long_ago =
            r.expires_at_ms != 0 && r.expires_at_ms.saturating_add(grace_ms) <= ctx.now_ms;
        if !expired_long_ago {
            continue;
        }
        let oldest = r.revision.saturating_sub(ctx.settings.history_retention).max(1);
        for rev in oldest..r.revision {
            txn.delete(history_key(key, rev));
        }
        txn.delete(data_key(keys::KV, key));
        floor = floor.max(r.revision);
        removed += 1;
    }
    if removed > 0 {
        txn.put(fk, floor.to_le_bytes().to_vec());
    }
    Ok(Reply::KvDelete { deleted: removed > 0, revision: removed })
}

/// Whether a stored current record whose expiry is `expires_at_ms` (0: none; see
/// `records::peek_kv_expiry`) expired, or was deleted, at least `grace_ms` before `now_ms`:
/// what the collector proposes for removal.
pub fn expired_before(expires_at_ms: u64, now_ms: u64, grace_ms: u64) -> bool {
    expires_at_ms != 0 && expires_at_ms.saturating_add(grace_ms) <= now_ms
}

pub(super) fn delete<T: Txn>(
    txn: &mut T,
    key: &[u8],
    expected_revision: u64,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let cur = current(txn, key)?;
    let live_rev = cur.as_ref().filter(|r| r.is_live(ctx.now_ms)).map(|r| r.revision);
    if expected_revision != 0 && live_rev != Some(expected_revision) {
        return Err(conflict(format!(
            "key is at revision {}, not {expected_revision}",
            live_rev.unwrap_or(0)
        )));
    }
    let Some(old_rev) = live_rev else {
        return Ok(Reply::KvDelete { deleted: false, revision: 0 });
    };
    // A tombstone's expiry is the moment of the delete: the collector removes it like an
    // expired key, once the grace has passed.
    let tomb = KvRecord {
        revision: old_rev + 1,
        deleted: true,
        expires_at_ms: ctx.now_ms.max(1),
        ..KvRecord::default()
    };
    replace(txn, key, cur, &tomb, ctx);
    Ok(Reply::KvDelete { deleted: true, revision: tomb.revision })
}

pub(super) fn extend<T: Txn>(
    txn: &mut T,
    key: &[u8],
    ttl_ms: u64,
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let Some(mut r) = current(txn, key)?.filter(|r| r.is_live(ctx.now_ms)) else {
        return Err(not_found("key does not exist or has expired"));
    };
    // A TTL change is metadata: it keeps the revision, as Redis PEXPIRE and etcd keep-alives do.
    r.expires_at_ms = deadline(ctx.now_ms, ttl_ms);
    txn.put(data_key(keys::KV, key), encode_kv(&r));
    Ok(Reply::KvExtend { revision: r.revision, expires_at_ms: r.expires_at_ms })
}

pub(super) fn get<G: Get>(
    store: &G,
    key: &[u8],
    revision: u64,
    now_ms: u64,
) -> Result<Reply, WireError> {
    let cur = current(store, key)?;
    if revision == 0 {
        return match cur.filter(|r| r.is_live(now_ms)) {
            Some(r) => Ok(Reply::KvGet(item(key, r))),
            None => Err(not_found("key not found")),
        };
    }
    let latest = cur.as_ref().map(|r| r.revision).unwrap_or(0);
    if revision > latest {
        return Err(not_found(format!("revision {revision} does not exist (latest is {latest})")));
    }
    let rec = if revision == latest {
        cur
    } else {
        store
            .get(&history_key(key, revision))
            .map(|b| decode_kv(&b))
            .transpose()
            .map_err(corrupt)?
    };
    match rec {
        Some(r) if r.deleted => Err(not_found(format!("revision {revision} is a delete"))),
        Some(r) => Ok(Reply::KvGet(item(key, r))),
        None => Err(not_found(format!("revision {revision} is no longer retained"))),
    }
}

pub(super) fn exists<G: Get>(store: &G, key: &[u8], now_ms: u64) -> Result<Reply, WireError> {
    match store.get(&data_key(keys::KV, key)) {
        None => Ok(Reply::KvExists { exists: false, revision: 0 }),
        Some(b) => {
            let (revision, live) = peek_kv(&b, now_ms).map_err(corrupt)?;
            Ok(Reply::KvExists { exists: live, revision: if live { revision } else { 0 } })
        }
    }
}

pub(super) fn scan<S: Scan>(
    store: &S,
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: u32,
    now_ms: u64,
    bounds: Bounds<'_>,
    limits: &Limits,
) -> Result<Reply, WireError> {
    let limit =
        if limit == 0 { limits.default_scan_limit } else { limit.min(limits.max_scan_limit) }
            as usize;
    // The prefix inside the partition, from the key just after the cursor.
    let (mut lo, hi) = keys::prefix_range(prefix, bounds.start, bounds.end);
    if let Some(after) = start_after {
        let mut next = after.to_vec();
        next.push(0);
        lo = lo.max(next);
    }
    let lo_key = data_key(keys::KV, &lo);
    let hi_key = match &hi {
        Some(h) => data_key(keys::KV, h),
        None => vec![keys::KV + 1],
    };
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    let mut err = None;
    store.scan(&lo_key, &hi_key, &mut |k, v| {
        match peek_kv(v, now_ms) {
            Err(e) => {
                err = Some(corrupt(e));
                return false;
            }
            Ok((_, false)) => return true,
            Ok((_, true)) => {}
        }
        if items.len() == limit || bytes >= limits.max_scan_bytes {
            more = true;
            return false;
        }
        match decode_kv(v) {
            Ok(r) => {
                bytes += k.len() + r.value.len();
                items.push(item(&k[1..], r));
                true
            }
            Err(e) => {
                err = Some(corrupt(e));
                false
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let next = if more { items.last().map(|i| i.key.clone()) } else { None };
    // Where this partition's keys end: a scan across partitions goes on from there.
    let covered_to = (!bounds.end.is_empty()).then(|| bounds.end.to_vec());
    Ok(Reply::KvScan { items, next, covered_to })
}

pub(super) fn history<S: Scan>(
    store: &S,
    key: &[u8],
    limit: u32,
    limits: &Limits,
) -> Result<Reply, WireError> {
    let limit =
        if limit == 0 { limits.default_scan_limit } else { limit.min(limits.max_scan_limit) }
            as usize;
    let mut items = Vec::new();
    if let Some(r) = current(store, key)? {
        items.push(item(key, r));
    }
    let lo = history_prefix(key);
    let mut hi = lo.clone();
    hi.extend_from_slice(&[0xff; 9]);
    let mut err = None;
    store.scan(&lo, &hi, &mut |k, v| {
        if items.len() >= limit {
            return false;
        }
        if history_revision(k, &lo).is_none() {
            return true; // not a revision record (none should be here)
        }
        match decode_kv(v) {
            Ok(r) => items.push(item(key, r)),
            Err(e) => {
                err = Some(corrupt(e));
                return false;
            }
        }
        true
    });
    match err {
        Some(e) => Err(e),
        None => Ok(Reply::KvHistory { items }),
    }
}
