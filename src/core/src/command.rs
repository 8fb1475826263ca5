//! The write commands that travel through the Raft log, and their conversion from requests.
//!
//! A [`LogCommand`] is what one Raft entry carries: the leader's HLC stamp and one [`WriteOp`].
//! It is rkyv-archived; the format only grows by appending variants.

use kahuna_protocol::{CompareOp, CompareTarget, Op, SetCondition};
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

/// One compare of a transaction (target and operator as `state_machine::txn` numbers them).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TxnCompare {
    pub key: Vec<u8>,
    pub target: u8,
    pub op: u8,
    pub value: Vec<u8>,
    pub number: u64,
}

/// One step of a transaction's branch.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum TxnStep {
    Get { key: Vec<u8> },
    Exists { key: Vec<u8> },
    LockGet { resource: Vec<u8> },
    Set { key: Vec<u8>, value: Vec<u8>, ttl_ms: u64 },
    Delete { key: Vec<u8> },
    LockAcquire { resource: Vec<u8>, owner: Vec<u8>, lease_ms: u64 },
    LockRelease { resource: Vec<u8>, owner: Vec<u8> },
    SeqNext { name: Vec<u8>, count: u64 },
}

impl TxnStep {
    pub fn key(&self) -> &[u8] {
        match self {
            TxnStep::Get { key } | TxnStep::Exists { key } | TxnStep::Set { key, .. } => key,
            TxnStep::Delete { key } => key,
            TxnStep::LockGet { resource }
            | TxnStep::LockAcquire { resource, .. }
            | TxnStep::LockRelease { resource, .. } => resource,
            TxnStep::SeqNext { name, .. } => name,
        }
    }

    /// What the step writes, as (kind, name): kv keys, lock resources and sequence names are
    /// apart. `None` for a read.
    pub fn written(&self) -> Option<(u8, &[u8])> {
        match self {
            TxnStep::Set { key, .. } | TxnStep::Delete { key } => Some((crate::keys::KV, key)),
            TxnStep::LockAcquire { resource, .. } | TxnStep::LockRelease { resource, .. } => {
                Some((crate::keys::LOCK, resource))
            }
            TxnStep::SeqNext { name, .. } => Some((crate::keys::SEQ, name)),
            _ => None,
        }
    }

    /// Whether the step changes state (its failure undoes the transaction).
    pub fn writes(&self) -> bool {
        !matches!(self, TxnStep::Get { .. } | TxnStep::Exists { .. } | TxnStep::LockGet { .. })
    }

    /// The step a request names, if a transaction may run it: reads of one key (latest) and
    /// unconditional writes. (The transaction's durability is its steps', all alike: see
    /// `Op::durability`.)
    pub fn from_op(op: &Op) -> Option<TxnStep> {
        Some(match op {
            Op::KvGet { key, revision: 0, .. } => TxnStep::Get { key: key.clone() },
            Op::KvExists { key, .. } => TxnStep::Exists { key: key.clone() },
            Op::LockGet { resource, .. } => TxnStep::LockGet { resource: resource.clone() },
            Op::KvSet { key, value, ttl_ms, condition: SetCondition::None, .. } => {
                TxnStep::Set { key: key.clone(), value: value.clone(), ttl_ms: *ttl_ms }
            }
            Op::KvDelete { key, expected_revision: 0, .. } => TxnStep::Delete { key: key.clone() },
            Op::LockAcquire { resource, owner, lease_ms, .. } => TxnStep::LockAcquire {
                resource: resource.clone(),
                owner: owner.clone(),
                lease_ms: *lease_ms,
            },
            Op::LockRelease { resource, owner, fencing_token: 0, .. } => {
                TxnStep::LockRelease { resource: resource.clone(), owner: owner.clone() }
            }
            Op::SeqNext { name, count } => TxnStep::SeqNext { name: name.clone(), count: *count },
            _ => return None,
        })
    }
}

/// What a [`WriteOp::TxnDecide`] does (see `state_machine::intents`).
/// Asks where the record stands, aborting it if its deadline has passed (what a reader blocked
/// by an intent sends).
pub const DECIDE_STATUS: u8 = 0;
/// The coordinator commits the `then` branch (all prepares succeeded and the compares held).
pub const DECIDE_COMMIT_THEN: u8 = 1;
/// The coordinator commits the `else` branch.
pub const DECIDE_COMMIT_ELSE: u8 = 2;
/// The coordinator gives up (a prepare failed).
pub const DECIDE_ABORT: u8 = 3;
/// Every intent is resolved: drop the decided record.
pub const DECIDE_FORGET: u8 = 4;

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
    /// Compare / then / else (see `state_machine::txn`): every key in this partition.
    /// (Variants are only ever appended: the tag of each is its place in this list.)
    Txn {
        compare: Vec<TxnCompare>,
        then: Vec<TxnStep>,
        otherwise: Vec<TxnStep>,
    },
    /// A transaction across partitions, this partition's part (see `state_machine::intents`):
    /// checks its compares, runs both branches' steps over the current state and holds every
    /// name it touches with an intent carrying the writes each branch would make. On the
    /// part that holds `primary`, `record` names every key of the whole transaction and the
    /// transaction's record is created with them.
    TxnPrepare {
        txn: Vec<u8>,
        primary: Vec<u8>,
        deadline_ms: u64,
        record: Vec<Vec<u8>>,
        compare: Vec<TxnCompare>,
        then: Vec<TxnStep>,
        otherwise: Vec<TxnStep>,
    },
    /// Commits, aborts, asks about or forgets the transaction's record at `primary` (the
    /// `DECIDE_*` actions of `state_machine::intents`).
    TxnDecide {
        txn: Vec<u8>,
        primary: Vec<u8>,
        deadline_ms: u64,
        action: u8,
    },
    /// Resolves the transaction's intents on `names` as its record decided (`outcome`, a
    /// `records::TXN_*` state): the staged writes of the committed branch are applied, and the
    /// intents go.
    TxnResolve {
        txn: Vec<u8>,
        names: Vec<Vec<u8>>,
        outcome: u8,
    },
    /// A script (see [`crate::script`]) run in this partition as one step; `keys` are every
    /// key it can touch (its key expressions are all literals or parameters).
    Script {
        source: String,
        params: Vec<(String, Vec<u8>)>,
        keys: Vec<Vec<u8>>,
    },
}

impl WriteOp {
    /// Whether the write can only read or free state (deletes, releases, and transactions made
    /// of nothing else): what a store that is full still accepts, since it is how room is made.
    pub fn frees_only(&self) -> bool {
        let step = |s: &TxnStep| {
            matches!(
                s,
                TxnStep::Get { .. }
                    | TxnStep::Exists { .. }
                    | TxnStep::LockGet { .. }
                    | TxnStep::Delete { .. }
                    | TxnStep::LockRelease { .. }
            )
        };
        match self {
            WriteOp::KvDelete { .. } | WriteOp::LockRelease { .. } => true,
            WriteOp::Txn { then, otherwise, .. } => then.iter().chain(otherwise).all(step),
            _ => false,
        }
    }

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
            WriteOp::Txn { compare, then, otherwise }
            | WriteOp::TxnPrepare { compare, then, otherwise, .. } => compare
                .iter()
                .map(|c| c.key.as_slice())
                .chain(then.iter().chain(otherwise).map(|s| s.key()))
                .collect(),
            WriteOp::TxnDecide { primary, .. } => vec![primary],
            WriteOp::TxnResolve { names, .. } | WriteOp::Script { keys: names, .. } => {
                names.iter().map(|k| k.as_slice()).collect()
            }
        }
    }

    /// The bytes an [`Op::Internal`] carries for this step of a transaction across partitions.
    pub fn encode_internal(&self) -> Vec<u8> {
        rkyv::to_bytes::<rancor::Error>(self).expect("serialising a WriteOp").into_vec()
    }

    /// The step an [`Op::Internal`] carries: only the steps of a transaction across partitions
    /// travel this way; anything else (or garbage: the payload is a peer's word) is an error.
    pub fn decode_internal(payload: &[u8]) -> Result<WriteOp, CorruptRecord> {
        let op = rkyv::from_bytes::<WriteOp, rancor::Error>(payload)
            .map_err(|e| CorruptRecord { what: "internal step", detail: e.to_string() })?;
        match op {
            WriteOp::TxnPrepare { .. } | WriteOp::TxnDecide { .. } | WriteOp::TxnResolve { .. } => {
                Ok(op)
            }
            _ => Err(CorruptRecord {
                what: "internal step",
                detail: "not a step of a transaction".into(),
            }),
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

/// A script's parameters as it sees them: every one a string.
pub fn script_params(
    params: &[(String, Vec<u8>)],
) -> std::collections::BTreeMap<String, crate::script::Value> {
    params.iter().map(|(n, v)| (n.clone(), crate::script::Value::Bytes(v.clone()))).collect()
}

/// Every key a script can touch, or why it cannot run: it does not parse (the error names the
/// line and column), or a key depends on what it reads (its partition is not known before).
pub fn script_keys(source: &str, params: &[(String, Vec<u8>)]) -> Result<Vec<Vec<u8>>, String> {
    let script =
        crate::script::parse(source).map_err(|e| format!("the script does not parse: {e}"))?;
    match script.static_keys(&script_params(params)) {
        Some(keys) if !keys.is_empty() => Ok(keys),
        Some(_) => Err("the script names no key".into()),
        None => Err("every key a script names must be a literal or built from @params (its \
             partition is found before it runs), and every @param it uses given"
            .into()),
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
        Op::Txn { compare, then, otherwise } => {
            let steps = |ops: &[Op]| ops.iter().map(TxnStep::from_op).collect::<Option<Vec<_>>>();
            let (Some(t), Some(o)) = (steps(&then), steps(&otherwise)) else {
                // Refused by the limits before; as a read it is answered with an error.
                return Err(Op::Txn { compare, then, otherwise });
            };
            let compare = compare
                .into_iter()
                .map(|c| TxnCompare {
                    key: c.key,
                    target: match c.target {
                        CompareTarget::Value => 0,
                        CompareTarget::Revision => 1,
                        CompareTarget::Exists => 2,
                        CompareTarget::LockOwner => 3,
                        CompareTarget::FencingToken => 4,
                    },
                    op: match c.op {
                        CompareOp::Equal => 0,
                        CompareOp::NotEqual => 1,
                        CompareOp::Less => 2,
                        CompareOp::Greater => 3,
                    },
                    value: c.value,
                    number: c.number,
                })
                .collect();
            WriteOp::Txn { compare, then: t, otherwise: o }
        }
        Op::Script { source, params, key } => match script_keys(&source, &params) {
            Ok(keys) => WriteOp::Script { source, params, keys },
            // Refused by the limits before; as a read it is answered with an error.
            Err(_) => return Err(Op::Script { source, params, key }),
        },
        Op::Internal { key, payload, read: false } => match WriteOp::decode_internal(&payload) {
            Ok(op) => op,
            // Refused by the limits before; as a read it is answered with an error.
            Err(_) => return Err(Op::Internal { key, payload, read: false }),
        },
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
    fn only_deletes_releases_and_reads_count_as_freeing() {
        let k = || b"k".to_vec();
        let txn = |then: Vec<TxnStep>| WriteOp::Txn { compare: vec![], then, otherwise: vec![] };
        let cases = [
            (WriteOp::KvDelete { key: k(), expected_revision: 0 }, true),
            (WriteOp::LockRelease { resource: k(), owner: k(), fencing_token: 0 }, true),
            (WriteOp::SeqNext { name: k(), count: 1 }, false),
            (txn(vec![TxnStep::Get { key: k() }, TxnStep::Delete { key: k() }]), true),
            (txn(vec![TxnStep::LockRelease { resource: k(), owner: k() }]), true),
            (
                txn(vec![
                    TxnStep::Delete { key: k() },
                    TxnStep::Set { key: k(), value: k(), ttl_ms: 0 },
                ]),
                false,
            ),
            (txn(vec![TxnStep::LockAcquire { resource: k(), owner: k(), lease_ms: 1 }]), false),
            (txn(vec![TxnStep::SeqNext { name: k(), count: 1 }]), false),
        ];
        for (op, frees) in cases {
            assert_eq!(op.frees_only(), frees, "{op:?}");
        }
    }

    #[test]
    fn reads_stay_reads() {
        let get = Op::KvGet { key: b"k".to_vec(), durability: Durability::Persistent, revision: 0 };
        assert_eq!(into_write(get.clone()), Err(get));
        let seq = Op::SeqNext { name: b"s".to_vec(), count: 2 };
        assert_eq!(into_write(seq), Ok(WriteOp::SeqNext { name: b"s".to_vec(), count: 2 }));
    }
}
