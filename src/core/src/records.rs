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

/// Storage writes (`None`: a delete) one name's steps would make, in key order.
pub type StagedWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Transactions across partitions hold a name (key, lock or sequence): one that writes it
/// holds it alone (`txn`, with the writes of the branch it takes, staged at prepare against the
/// state the intent has kept unchanged); ones that only read it share it (`readers`). Nothing
/// writes a held name but its writer's resolve; nothing reads one that has a writer.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct IntentRecord {
    /// The writer's id; empty when only readers hold the name.
    pub txn: Vec<u8>,
    /// Where the writer's record lives (its first key).
    pub primary: Vec<u8>,
    /// HLC ms after which the writer can no longer commit.
    pub deadline_ms: u64,
    /// The storage writes of this name if the `then` branch commits; `None` if that branch
    /// failed here (it cannot commit).
    pub then: Option<StagedWrites>,
    pub otherwise: Option<StagedWrites>,
    /// Transactions that read the name and hold it until they finish.
    pub readers: Vec<Holder>,
}

/// A transaction holding a name, as a waiter needs it: whose record to ask, and until when the
/// transaction may commit.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Holder {
    pub txn: Vec<u8>,
    pub primary: Vec<u8>,
    pub deadline_ms: u64,
}

impl IntentRecord {
    pub fn has_writer(&self) -> bool {
        !self.txn.is_empty()
    }

    /// The transactions holding the name: the writer, and (`with_readers`) the readers.
    pub fn holders(&self, with_readers: bool) -> Vec<Holder> {
        let mut out = Vec::new();
        if self.has_writer() {
            out.push(Holder {
                txn: self.txn.clone(),
                primary: self.primary.clone(),
                deadline_ms: self.deadline_ms,
            });
        }
        if with_readers {
            out.extend(self.readers.iter().cloned());
        }
        out
    }
}

/// Where a transaction across partitions stands (see [`TxnRecord`]).
pub const TXN_PENDING: u8 = 0;
pub const TXN_COMMITTED_THEN: u8 = 1;
pub const TXN_COMMITTED_ELSE: u8 = 2;
pub const TXN_ABORTED: u8 = 3;

/// The commit point of a transaction across partitions: one record in the partition of its
/// first key. Pending until the coordinator commits it (before its deadline) or anyone aborts
/// it (after); kept until every name it holds is resolved.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct TxnRecord {
    pub txn: Vec<u8>,
    pub state: u8,
    pub deadline_ms: u64,
    /// Every name the transaction holds, in every partition.
    pub names: Vec<Vec<u8>>,
}

pub fn encode_intent(r: &IntentRecord) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(r).expect("serialising an IntentRecord").into_vec()
}

pub fn decode_intent(bytes: &[u8]) -> Result<IntentRecord, CorruptRecord> {
    rkyv::from_bytes::<IntentRecord, rancor::Error>(bytes)
        .map_err(|e| CorruptRecord { what: "intent", detail: e.to_string() })
}

/// The records under one primary key (several transactions may share a first key).
#[allow(clippy::ptr_arg)] // rkyv archives the Vec itself
pub fn encode_txn_records(r: &Vec<TxnRecord>) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(r).expect("serialising TxnRecords").into_vec()
}

pub fn decode_txn_records(bytes: &[u8]) -> Result<Vec<TxnRecord>, CorruptRecord> {
    rkyv::from_bytes::<Vec<TxnRecord>, rancor::Error>(bytes)
        .map_err(|e| CorruptRecord { what: "transaction record", detail: e.to_string() })
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
        let i = IntentRecord {
            txn: b"t1".to_vec(),
            primary: b"p".to_vec(),
            deadline_ms: 5,
            then: Some(vec![(b"kx".to_vec(), None)]),
            otherwise: None,
            readers: vec![Holder { txn: b"t2".to_vec(), primary: b"q".to_vec(), deadline_ms: 9 }],
        };
        assert_eq!(decode_intent(&encode_intent(&i)).unwrap(), i);
        let t = vec![TxnRecord {
            txn: b"t1".to_vec(),
            state: TXN_ABORTED,
            deadline_ms: 5,
            names: vec![],
        }];
        assert_eq!(decode_txn_records(&encode_txn_records(&t)).unwrap(), t);
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        assert!(decode_kv(&[1, 2, 3]).is_err());
        assert!(decode_lock(&[0xff; 40]).is_err());
        assert!(decode_seq(&[1]).is_err());
        assert!(decode_intent(&[7; 5]).is_err());
        assert!(decode_txn_records(&[0xff; 9]).is_err());
    }
}
