//! Records stored under the keys of [`crate::keys`], rkyv-archived so a reader can check a
//! record (tombstone? expired?) in place, without deserialising its value.

use rkyv::rancor;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("stored {what} record is corrupt: {detail}")]
pub struct CorruptRecord {
    pub what: &'static str,
    pub detail: String,
}

/// The current (or a past) revision of a key.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct KvRecord {
    pub value: Vec<u8>,
    pub revision: u64,
    /// The revision at which the key was last created (after being absent or deleted).
    pub create_revision: u64,
    /// Unix ms on the leader's HLC; 0 = never.
    pub expires_at_ms: u64,
    /// A tombstone: the key was deleted at `revision`. Kept so a re-created key continues
    /// counting revisions instead of restarting at 1 (no ABA for compare-and-set).
    pub deleted: bool,
}

impl KvRecord {
    /// Present and not expired at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.deleted && !expired(self.expires_at_ms, now_ms)
    }
}

/// A lock's state. Kept after release (persistent locks) so the next grant's fencing token
/// continues from the last one.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct LockRecord {
    pub owner: Vec<u8>,
    pub fencing_token: u64,
    pub expires_at_ms: u64,
    pub held: bool,
    /// The Raft term of the leader that granted or last extended the lease: its clock set
    /// `expires_at_ms`.
    pub lease_term: u64,
}

impl LockRecord {
    pub fn is_held(&self, now_ms: u64) -> bool {
        self.held && !expired(self.expires_at_ms, now_ms)
    }

    /// Whether the lease still keeps *another* owner out at `now_ms`, on a leader of `term`.
    /// A lease timed by an earlier leader's clock is honoured `max_offset_ms` longer: that
    /// clock may have run behind this one by up to the offset the cluster assumes.
    pub fn excludes_others(&self, now_ms: u64, term: u64, max_offset_ms: u64) -> bool {
        let slack = if self.lease_term < term { max_offset_ms } else { 0 };
        self.held && !expired(self.expires_at_ms.saturating_add(slack), now_ms)
    }
}

pub fn expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != 0 && expires_at_ms <= now_ms
}

pub fn encode_kv(r: &KvRecord) -> Vec<u8> {
    // Serialising plain vectors and integers into memory cannot fail.
    rkyv::to_bytes::<rancor::Error>(r).expect("serialising a KvRecord").into_vec()
}

pub fn decode_kv(bytes: &[u8]) -> Result<KvRecord, CorruptRecord> {
    rkyv::from_bytes::<KvRecord, rancor::Error>(bytes)
        .map_err(|e| CorruptRecord { what: "kv", detail: e.to_string() })
}

/// Checks a kv record in place: `(revision, live at now_ms)` without copying its value.
pub fn peek_kv(bytes: &[u8], now_ms: u64) -> Result<(u64, bool), CorruptRecord> {
    let a = rkyv::access::<ArchivedKvRecord, rancor::Error>(bytes)
        .map_err(|e| CorruptRecord { what: "kv", detail: e.to_string() })?;
    let live = !a.deleted && !expired(a.expires_at_ms.to_native(), now_ms);
    Ok((a.revision.to_native(), live))
}

/// A kv record's expiry (a tombstone's: its delete time), read in place; 0 = never.
pub fn peek_kv_expiry(bytes: &[u8]) -> Result<u64, CorruptRecord> {
    let a = rkyv::access::<ArchivedKvRecord, rancor::Error>(bytes)
        .map_err(|e| CorruptRecord { what: "kv", detail: e.to_string() })?;
    Ok(a.expires_at_ms.to_native())
}

pub fn encode_lock(r: &LockRecord) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(r).expect("serialising a LockRecord").into_vec()
}

pub fn decode_lock(bytes: &[u8]) -> Result<LockRecord, CorruptRecord> {
    rkyv::from_bytes::<LockRecord, rancor::Error>(bytes)
        .map_err(|e| CorruptRecord { what: "lock", detail: e.to_string() })
}

pub fn encode_seq(last: u64) -> Vec<u8> {
    last.to_le_bytes().to_vec()
}

pub fn decode_seq(bytes: &[u8]) -> Result<u64, CorruptRecord> {
    let b: [u8; 8] = bytes.try_into().map_err(|_| CorruptRecord {
        what: "sequence",
        detail: format!("{} bytes", bytes.len()),
    })?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_peek_without_copy() {
        let r = KvRecord {
            value: b"v".to_vec(),
            revision: 3,
            create_revision: 1,
            expires_at_ms: 50,
            deleted: false,
        };
        let b = encode_kv(&r);
        assert_eq!(decode_kv(&b).unwrap(), r);
        assert_eq!(peek_kv(&b, 49).unwrap(), (3, true));
        assert_eq!(peek_kv(&b, 50).unwrap(), (3, false));
        // Unaligned input works: stored values come from RocksDB at any address.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&b);
        assert_eq!(decode_kv(&shifted[1..]).unwrap(), r);
        let l = LockRecord {
            owner: b"o".to_vec(),
            fencing_token: 9,
            expires_at_ms: 0,
            held: true,
            lease_term: 3,
        };
        assert_eq!(decode_lock(&encode_lock(&l)).unwrap(), l);
        assert_eq!(decode_seq(&encode_seq(77)).unwrap(), 77);
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        assert!(decode_kv(&[1, 2, 3]).is_err());
        assert!(decode_lock(&[0xff; 40]).is_err());
        assert!(decode_seq(&[1]).is_err());
    }
}
