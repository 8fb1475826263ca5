//! The storage key layout shared by RocksDB and the in-memory store.
//!
//! One byte of kind comes first, then the user key, so each kind of a partition `[start, end)`
//! is one contiguous range: `kind + start .. kind + end`. That keeps scans, splits and snapshots
//! to a handful of range operations.
//!
//! ```text
//!  b'k' key                 current record of a key (or its tombstone)
//!  b'h' esc(key) 00 01 !revision(be)
//!                           an older revision; inverted so a forward scan is newest first.
//!                           The key is escaped (00 → 00 ff) and ended by 00 01, so every key's
//!                           revisions sort between its own bounds and no other key's: a split
//!                           at `s` puts all revisions of `k` on the side of `k` even when `k` is
//!                           a proper prefix of `s` (`user1` and `user10`)
//!  b'l' resource            lock record
//!  b's' name                sequence: the last value handed out
//!  b'r' partition start     the partition's revision floor: new keys start above it, so a key
//!                           whose record was collected never reuses a revision (no ABA)
//!  b'i' name                intent: a transaction across partitions holds this key, lock or
//!                           sequence name (with the writes it will make if it commits)
//!  b't' primary key         records of transactions across partitions whose first key this is
//! ```
//! Intents and records sit under the exact user key, never a longer one, so a split or a
//! replica move takes them with the key they belong to.
//! Bytes below `KIND_MIN` are reserved for the server's own per-partition metadata.

/// User keys (and lock and sequence names) that start with this belong to Kahuna itself;
/// requests naming one are refused.
pub const SYSTEM_PREFIX: &[u8] = b"\0kahuna/";
/// The sequence partition ids are drawn from: a split's new half takes the next one, so ids
/// are never reused. It lives in whichever partition owns its key, replicated like any other.
pub const PARTITION_IDS: &[u8] = b"\0kahuna/partition-ids";

pub const KV: u8 = b'k';
pub const HISTORY: u8 = b'h';
pub const LOCK: u8 = b'l';
pub const SEQ: u8 = b's';
pub const REVISION_FLOOR: u8 = b'r';
pub const INTENT: u8 = b'i';
pub const TXN_RECORD: u8 = b't';
/// Every data kind is at or above this byte; the server keeps its metadata below it.
pub const KIND_MIN: u8 = b'a';
/// Every kind a partition's snapshot, checksum and range operations cover.
pub const DATA_KINDS: [u8; 7] = [KV, HISTORY, LOCK, REVISION_FLOOR, SEQ, INTENT, TXN_RECORD];

/// The user key (or lock or sequence name) a state machine's storage key belongs to: a
/// transaction step's writes are staged per name this way.
pub fn name_of(storage_key: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match storage_key.first() {
        Some(&HISTORY) if storage_key.len() >= 11 => {
            let escaped = &storage_key[1..storage_key.len() - 10];
            std::borrow::Cow::Owned(unescape(escaped).unwrap_or_else(|| escaped.to_vec()))
        }
        Some(_) => std::borrow::Cow::Borrowed(&storage_key[1..]),
        None => std::borrow::Cow::Borrowed(storage_key),
    }
}

pub fn data_key(kind: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(kind);
    k.extend_from_slice(key);
    k
}

pub fn history_key(key: &[u8], revision: u64) -> Vec<u8> {
    let mut k = history_prefix(key);
    k.extend_from_slice(&(!revision).to_be_bytes());
    k
}

/// Every stored revision of `key` starts with this, and no other key's does.
pub fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len() + 2 + 8);
    k.push(HISTORY);
    escape_into(key, &mut k);
    k.extend_from_slice(&[0, 1]);
    k
}

/// The order-keeping escape of history keys: 00 → 00 ff.
fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
}

/// The user key of a history key's escaped part (`None` if it is not one).
fn unescape(escaped: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        out.push(escaped[i]);
        if escaped[i] == 0 {
            if escaped.get(i + 1) != Some(&0xff) {
                return None;
            }
            i += 1;
        }
        i += 1;
    }
    Some(out)
}

/// The revision of a history key, if it is one of the key whose prefix is `prefix` (see
/// [`history_prefix`]).
pub fn history_revision(storage_key: &[u8], prefix: &[u8]) -> Option<u64> {
    let rest = storage_key.strip_prefix(prefix)?;
    let b: [u8; 8] = rest.try_into().ok()?;
    Some(!u64::from_be_bytes(b))
}

/// The smallest key greater than every key that starts with `prefix`; `None` when there is
/// none (an empty prefix or one of only 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The user keys under `prefix` inside the partition `[start, end)` (`end` empty: unbounded):
/// `[lo, hi)`, `hi` None when nothing bounds it.
pub fn prefix_range(prefix: &[u8], start: &[u8], end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let lo = prefix.max(start).to_vec();
    let hi = match (prefix_end(prefix), end.is_empty()) {
        (Some(p), false) => Some(p.min(end.to_vec())),
        (Some(p), true) => Some(p),
        (None, false) => Some(end.to_vec()),
        (None, true) => None,
    };
    (lo, hi)
}

/// The storage range `[lo, hi)` of one kind for the user range `[start, end)` (`end` empty = to
/// the end of the key space).
pub fn kind_range(kind: u8, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let bound = |k: &[u8]| {
        if kind == HISTORY {
            // Escaped, without the end mark: below every revision of `k` and of keys after it.
            let mut b = vec![HISTORY];
            escape_into(k, &mut b);
            b
        } else {
            data_key(kind, k)
        }
    };
    let lo = bound(start);
    // Every kind is below 0xff (see `DATA_KINDS`); saturating, a stray one never overflows.
    let hi = if end.is_empty() { vec![kind.saturating_add(1)] } else { bound(end) };
    (lo, hi)
}

/// Whether the storage key `k` is of a data kind and belongs to the user range `[start, end)`.
/// Anything else (a snapshot or backup naming an unknown kind) is not.
pub fn in_range(k: &[u8], start: &[u8], end: &[u8]) -> bool {
    let Some(&kind) = k.first() else { return false };
    if !DATA_KINDS.contains(&kind) {
        return false;
    }
    let (lo, hi) = kind_range(kind, start, end);
    k >= lo.as_slice() && k < hi.as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_cases() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn history_keys_sort_newest_first_and_decode() {
        let a = history_key(b"x", 1);
        let b = history_key(b"x", 2);
        assert!(b < a);
        assert_eq!(history_revision(&b, &history_prefix(b"x")), Some(2));
        assert_eq!(history_revision(&b, &history_prefix(b"xy")), None);
    }

    #[test]
    fn every_storage_key_names_its_user_key() {
        for (k, name) in [
            (data_key(KV, b"ab"), &b"ab"[..]),
            (history_key(b"ab", 7), b"ab"),
            (history_key(b"", 7), b""),
            (history_key(b"a\0b\0", 7), b"a\0b\0"),
            (data_key(LOCK, b"l"), b"l"),
            (data_key(SEQ, b"s"), b"s"),
        ] {
            assert_eq!(&*name_of(&k), name, "{k:?}");
        }
        let h = history_key(b"a\0", 9);
        assert_eq!(history_revision(&h, &history_prefix(b"a\0")), Some(9));
        assert_eq!(history_revision(&h, &history_prefix(b"a")), None);
    }

    #[test]
    fn a_keys_revisions_stay_on_its_side_of_any_split() {
        // (key, split at): the key's revisions are in [at, ..) exactly when the key is.
        let keys: [&[u8]; 9] =
            [b"", b"a", b"user1", b"user10", b"user1\0", b"user1\0\0", b"user1\xff", b"b", b"\0"];
        for k in keys {
            for at in keys {
                for rev in [1u64, 1 << 40, u64::MAX - 1] {
                    let h = history_key(k, rev);
                    assert_eq!(in_range(&h, at, b""), k >= at, "{k:?} at {at:?}");
                    assert_eq!(in_range(&h, b"", at), at.is_empty() || k < at, "{k:?} to {at:?}");
                    assert_eq!(in_range(&data_key(KV, k), at, b""), k >= at);
                    // Not a data kind (a damaged snapshot's pair): never in any range.
                    assert!(!in_range(&data_key(b'z', k), b"", b""));
                    assert!(!in_range(&data_key(0xff, k), b"", b""));
                }
            }
        }
        // Revisions of one key sort newest first, and apart from every other key's.
        assert!(history_key(b"user1", 2) < history_key(b"user1", 1));
        assert!(history_key(b"user1", 1) < history_key(b"user10", u64::MAX - 1));
        assert!(history_key(b"user1", 1) < history_key(b"user1\0", u64::MAX - 1));
    }

    #[test]
    fn kind_ranges_cover_the_user_range() {
        let (lo, hi) = kind_range(KV, b"a", b"");
        assert!(lo.as_slice() <= data_key(KV, b"zzz").as_slice());
        assert!(data_key(KV, &[0xff; 4]) < hi);
        assert!(data_key(LOCK, b"a") >= hi);
    }
}
