//! The write commands that travel through the Raft log, and their conversion from requests.
//!
//! A [`LogCommand`] is what one Raft entry carries: the leader's HLC stamp and one [`WriteOp`].
//! It is rkyv-archived; the format only grows by appending variants.

use kahuna_protocol::{Op, SetCondition};
use rkyv::rancor;

use crate::records::CorruptRecord;

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Cond {
    None,
    IfExists,
    IfNotExists,
    IfRevision(u64),
    IfValue(Vec<u8>),
}

/// A state change. Reads never become one.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum WriteOp {
    KvSet {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
        cond: Cond,
    },
    KvDelete {
        key: Vec<u8>,
        expected_revision: u64,
    },
    KvExtend {
        key: Vec<u8>,
        ttl_ms: u64,
    },
    LockAcquire {
        resource: Vec<u8>,
        owner: Vec<u8>,
        lease_ms: u64,
    },
    LockExtend {
        resource: Vec<u8>,
        owner: Vec<u8>,
        lease_ms: u64,
        fencing_token: u64,
    },
    LockRelease {
        resource: Vec<u8>,
        owner: Vec<u8>,
        fencing_token: u64,
    },
    SeqNext {
        name: Vec<u8>,
        count: u64,
    },
    /// Removes keys whose TTL ran out at least `grace_ms` ago, with their history (proposed by
    /// the partition leader's collector; each key is checked again at apply).
    KvCollect {
        keys: Vec<Vec<u8>>,
        grace_ms: u64,
    },
    /// Splits the partition at `at` (see [`crate::PartitionInfo::split`]): `[at, end)` becomes
    /// partition `new_id`. Refused at apply unless the partition is still at `epoch`.
    Split {
        at: Vec<u8>,
        new_id: u64,
        epoch: u64,
    },
    /// Puts voter `node` first in the partition's placement order (see
    /// [`crate::PartitionInfo::prefer`]): its leadership preference, which the leader
    /// rebalancer then follows. The balancer's way of spreading leaders by load.
    Lead {
        node: u64,
        epoch: u64,
    },
}

impl WriteOp {
    /// The user keys the write touches (none for a split, which changes the partition itself).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteOp::KvSet { key, .. }
            | WriteOp::KvDelete { key, .. }
            | WriteOp::KvExtend { key, .. } => vec![key],
            WriteOp::LockAcquire { resource, .. }
            | WriteOp::LockExtend { resource, .. }
            | WriteOp::LockRelease { resource, .. } => vec![resource],
            WriteOp::SeqNext { name, .. } => vec![name],
            WriteOp::KvCollect { keys, .. } => keys.iter().map(|k| k.as_slice()).collect(),
            WriteOp::Split { .. } | WriteOp::Lead { .. } => vec![],
        }
    }
}

/// The settings that change what applying a command does. They travel in every entry, as the
/// proposing leader had them, so that every replica reaches the same state from the same log,
/// whatever its own flags say (a replica that applied with its own retention would keep other
/// history than its peers, and its checksum would differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ApplySettings {
    /// Older revisions kept per key.
    pub history_retention: u64,
    /// The largest clock offset between nodes the cluster assumes: a lease granted under an
    /// earlier leader is honoured this much past its expiry before another owner may take it.
    pub max_clock_offset_ms: u64,
}

impl Default for ApplySettings {
    fn default() -> Self {
        ApplySettings { history_retention: 32, max_clock_offset_ms: 500 }
    }
}

/// One Raft entry's payload.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LogCommand {
    /// The proposing leader's hybrid logical clock (see [`crate::hlc`]).
    pub hlc: u64,
    pub settings: ApplySettings,
    pub op: WriteOp,
}

impl LogCommand {
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rancor::Error>(self).expect("serialising a LogCommand").into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<LogCommand, CorruptRecord> {
        rkyv::from_bytes::<LogCommand, rancor::Error>(bytes)
            .map_err(|e| CorruptRecord { what: "log command", detail: e.to_string() })
    }
}

/// Splits a request into a write (to replicate or to apply to ephemeral state) or hands the
/// read back unchanged.
pub fn into_write(op: Op) -> Result<WriteOp, Op> {
    Ok(match op {
        Op::KvSet { key, value, ttl_ms, condition, .. } => {
            let cond = match condition {
                SetCondition::None => Cond::None,
                SetCondition::IfExists => Cond::IfExists,
                SetCondition::IfNotExists => Cond::IfNotExists,
                SetCondition::IfRevision(r) => Cond::IfRevision(r),
                SetCondition::IfValue(v) => Cond::IfValue(v),
            };
            WriteOp::KvSet { key, value, ttl_ms, cond }
        }
        Op::KvDelete { key, expected_revision, .. } => WriteOp::KvDelete { key, expected_revision },
        Op::KvExtend { key, ttl_ms, .. } => WriteOp::KvExtend { key, ttl_ms },
        Op::LockAcquire { resource, owner, lease_ms, .. } => {
            WriteOp::LockAcquire { resource, owner, lease_ms }
        }
        Op::LockExtend { resource, owner, lease_ms, fencing_token, .. } => {
            WriteOp::LockExtend { resource, owner, lease_ms, fencing_token }
        }
        Op::LockRelease { resource, owner, fencing_token, .. } => {
            WriteOp::LockRelease { resource, owner, fencing_token }
        }
        Op::SeqNext { name, count } => WriteOp::SeqNext { name, count },
        read => return Err(read),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kahuna_protocol::Durability;

    #[test]
    fn log_commands_roundtrip_and_reject_garbage() {
        let c = LogCommand {
            hlc: 99,
            settings: ApplySettings::default(),
            op: WriteOp::KvSet {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ttl_ms: 3,
                cond: Cond::IfValue(b"x".to_vec()),
            },
        };
        assert_eq!(LogCommand::decode(&c.encode()).unwrap(), c);
        assert!(LogCommand::decode(&[9, 9, 9]).is_err());
    }

    #[test]
    fn reads_stay_reads() {
        let get = Op::KvGet { key: b"k".to_vec(), durability: Durability::Persistent, revision: 0 };
        assert_eq!(into_write(get.clone()), Err(get));
        let seq = Op::SeqNext { name: b"s".to_vec(), count: 2 };
        assert_eq!(into_write(seq), Ok(WriteOp::SeqNext { name: b"s".to_vec(), count: 2 }));
    }
}
