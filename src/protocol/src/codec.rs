//! Conversion between the owned types of [`crate::types`] and flatbuffers frames.
//!
//! Decoding runs the flatbuffers verifier first, so a hostile buffer is rejected with a
//! [`DecodeError`] and never read out of bounds. The request id is recovered whenever the buffer
//! verifies, so even an unknown operation is answered on the right id.

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, VerifierOptions, WIPOffset};
use thiserror::Error;

use crate::frame::write_frame;
use crate::types::{
    BackupChunk, ClusterStatus, Compare, CompareOp, CompareTarget, Durability, ErrorCode, KvItem,
    LockState, MemberAction, MemberInfo, NodeStatus, Op, PartitionStatus, ReplicaRole,
    ReplicaStatus, Reply, SetCondition, StatusScope, WireError,
};
use crate::wire;

/// Byte vectors copied in one go. flatbuffers' `create_vector` writes a `[u8]` element by
/// element: in a debug build a forwarded 512 KiB value held the shard loop for tens of
/// milliseconds.
trait CreateBytes<'a> {
    fn create_bytes(&mut self, bytes: &[u8]) -> WIPOffset<Vector<'a, u8>>;
}

impl<'a> CreateBytes<'a> for FlatBufferBuilder<'a> {
    fn create_bytes(&mut self, bytes: &[u8]) -> WIPOffset<Vector<'a, u8>> {
        // A byte string is laid out as a `[ubyte]` vector (length, then the bytes, aligned the
        // same), with a 0 after its end that the vector's length leaves out.
        WIPOffset::new(self.create_byte_string(bytes).value())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid flatbuffer: {0}")]
    Invalid(String),
    #[error("request {request_id}: invalid flatbuffer: {detail}")]
    Broken { request_id: u64, detail: String },
    #[error("request {request_id}: unknown operation (union tag {tag})")]
    UnknownOp { request_id: u64, tag: u8 },
    #[error("request {request_id}: {what}")]
    Missing { request_id: u64, what: &'static str },
}

impl DecodeError {
    /// The request id, when the buffer verified far enough to read it.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::Invalid(_) => None,
            DecodeError::UnknownOp { request_id, .. }
            | DecodeError::Missing { request_id, .. }
            | DecodeError::Broken { request_id, .. } => Some(*request_id),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownOp { .. } => ErrorCode::UnknownOp,
            _ => ErrorCode::Invalid,
        }
    }
}

fn verifier_options() -> VerifierOptions {
    // Our tables nest at most four deep; a scan page holds at most a few thousand tables.
    VerifierOptions { max_depth: 16, max_tables: 100_000, ..VerifierOptions::default() }
}

fn bytes<'a>(v: Option<Vector<'a, u8>>) -> Vec<u8> {
    v.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

fn durability_from(d: wire::Durability) -> Durability {
    if d == wire::Durability::Ephemeral {
        Durability::Ephemeral
    } else {
        Durability::Persistent
    }
}

fn durability_to(d: Durability) -> wire::Durability {
    match d {
        Durability::Persistent => wire::Durability::Persistent,
        Durability::Ephemeral => wire::Durability::Ephemeral,
    }
}

/// Decodes one request payload (the frame without its length prefix).
pub fn decode_request(buf: &[u8]) -> Result<(u64, u32, Op), DecodeError> {
    decode_request_at(buf, false)
}

/// A transaction's steps, each a whole request of its own; never a transaction again.
fn nested_ops(
    v: Option<Vector<'_, ForwardsUOffset<wire::Nested<'_>>>>,
    id: u64,
) -> Result<Vec<Op>, DecodeError> {
    let mut ops = Vec::new();
    for n in v.iter().flatten() {
        let frame = n.frame().map(|f| f.bytes()).unwrap_or(&[]);
        let (_, _, op) = decode_request_at(frame, true).map_err(|e| match e {
            DecodeError::Missing { what, .. } => DecodeError::Missing { request_id: id, what },
            _ => DecodeError::Missing {
                request_id: id,
                what: "a transaction step that does not decode",
            },
        })?;
        ops.push(op);
    }
    Ok(ops)
}

fn compare_from(c: wire::Compare<'_>, id: u64) -> Result<Compare, DecodeError> {
    let missing = |what| DecodeError::Missing { request_id: id, what };
    let target = match c.target() {
        wire::CompareTarget::Value => CompareTarget::Value,
        wire::CompareTarget::Revision => CompareTarget::Revision,
        wire::CompareTarget::Exists => CompareTarget::Exists,
        wire::CompareTarget::LockOwner => CompareTarget::LockOwner,
        wire::CompareTarget::FencingToken => CompareTarget::FencingToken,
        _ => return Err(missing("unknown compare target")),
    };
    let op = match c.op() {
        wire::CompareOp::Equal => CompareOp::Equal,
        wire::CompareOp::NotEqual => CompareOp::NotEqual,
        wire::CompareOp::Less => CompareOp::Less,
        wire::CompareOp::Greater => CompareOp::Greater,
        _ => return Err(missing("unknown compare operator")),
    };
    Ok(Compare { key: bytes(c.key()), target, op, value: bytes(c.value()), number: c.number() })
}

fn decode_request_at(buf: &[u8], nested: bool) -> Result<(u64, u32, Op), DecodeError> {
    let req = match flatbuffers::root_with_opts::<wire::Request>(&verifier_options(), buf) {
        Ok(req) => req,
        Err(e) => {
            // Recover the id from the header fields alone, so the error reaches the caller.
            return Err(
                match flatbuffers::root_with_opts::<wire::RequestHeader>(&verifier_options(), buf) {
                    Ok(h) => {
                        DecodeError::Broken { request_id: h.request_id(), detail: e.to_string() }
                    }
                    Err(_) => DecodeError::Invalid(e.to_string()),
                },
            );
        }
    };
    let id = req.request_id();
    let missing = |what| DecodeError::Missing { request_id: id, what };
    let op = match req.op_type() {
        wire::Op::KvSet => {
            let o = req.op_as_kv_set().ok_or_else(|| missing("kv set body"))?;
            let condition = match o.condition() {
                wire::SetCondition::IfExists => SetCondition::IfExists,
                wire::SetCondition::IfNotExists => SetCondition::IfNotExists,
                wire::SetCondition::IfRevision => SetCondition::IfRevision(o.expected_revision()),
                wire::SetCondition::IfValue => SetCondition::IfValue(bytes(o.expected_value())),
                wire::SetCondition::None => SetCondition::None,
                other => {
                    return Err(DecodeError::Missing {
                        request_id: id,
                        what: condition_name(other),
                    });
                }
            };
            Op::KvSet {
                key: bytes(o.key()),
                value: bytes(o.value()),
                durability: durability_from(o.durability()),
                ttl_ms: o.ttl_ms(),
                condition,
            }
        }
        wire::Op::KvGet => {
            let o = req.op_as_kv_get().ok_or_else(|| missing("kv get body"))?;
            Op::KvGet {
                key: bytes(o.key()),
                durability: durability_from(o.durability()),
                revision: o.revision(),
            }
        }
        wire::Op::KvDelete => {
            let o = req.op_as_kv_delete().ok_or_else(|| missing("kv delete body"))?;
            Op::KvDelete {
                key: bytes(o.key()),
                durability: durability_from(o.durability()),
                expected_revision: o.expected_revision(),
            }
        }
        wire::Op::KvExists => {
            let o = req.op_as_kv_exists().ok_or_else(|| missing("kv exists body"))?;
            Op::KvExists { key: bytes(o.key()), durability: durability_from(o.durability()) }
        }
        wire::Op::KvExtend => {
            let o = req.op_as_kv_extend().ok_or_else(|| missing("kv extend body"))?;
            Op::KvExtend {
                key: bytes(o.key()),
                durability: durability_from(o.durability()),
                ttl_ms: o.ttl_ms(),
            }
        }
        wire::Op::KvScan => {
            let o = req.op_as_kv_scan().ok_or_else(|| missing("kv scan body"))?;
            Op::KvScan {
                prefix: bytes(o.prefix()),
                durability: durability_from(o.durability()),
                start_after: o.start_after().map(|v| v.bytes().to_vec()),
                limit: o.limit(),
            }
        }
        wire::Op::KvHistory => {
            let o = req.op_as_kv_history().ok_or_else(|| missing("kv history body"))?;
            Op::KvHistory {
                key: bytes(o.key()),
                durability: durability_from(o.durability()),
                limit: o.limit(),
            }
        }
        wire::Op::LockAcquire => {
            let o = req.op_as_lock_acquire().ok_or_else(|| missing("lock acquire body"))?;
            Op::LockAcquire {
                resource: bytes(o.resource()),
                owner: bytes(o.owner()),
                lease_ms: o.lease_ms(),
                durability: durability_from(o.durability()),
            }
        }
        wire::Op::LockExtend => {
            let o = req.op_as_lock_extend().ok_or_else(|| missing("lock extend body"))?;
            Op::LockExtend {
                resource: bytes(o.resource()),
                owner: bytes(o.owner()),
                lease_ms: o.lease_ms(),
                durability: durability_from(o.durability()),
                fencing_token: o.fencing_token(),
            }
        }
        wire::Op::LockRelease => {
            let o = req.op_as_lock_release().ok_or_else(|| missing("lock release body"))?;
            Op::LockRelease {
                resource: bytes(o.resource()),
                owner: bytes(o.owner()),
                durability: durability_from(o.durability()),
                fencing_token: o.fencing_token(),
            }
        }
        wire::Op::LockGet => {
            let o = req.op_as_lock_get().ok_or_else(|| missing("lock get body"))?;
            Op::LockGet {
                resource: bytes(o.resource()),
                durability: durability_from(o.durability()),
            }
        }
        wire::Op::SeqNext => {
            let o = req.op_as_seq_next().ok_or_else(|| missing("seq next body"))?;
            Op::SeqNext { name: bytes(o.name()), count: o.count() }
        }
        wire::Op::Backup => {
            let o = req.op_as_backup().ok_or_else(|| missing("backup body"))?;
            Op::Backup { key: bytes(o.key()), offset: o.offset(), index: o.index() }
        }
        wire::Op::Split => {
            let o = req.op_as_split().ok_or_else(|| missing("split body"))?;
            Op::Split { key: bytes(o.key()), at: bytes(o.at()) }
        }
        wire::Op::Txn if nested => return Err(missing("a transaction inside a transaction")),
        wire::Op::Txn => {
            let o = req.op_as_txn().ok_or_else(|| missing("txn body"))?;
            let compare = o
                .compare()
                .iter()
                .flatten()
                .map(|c| compare_from(c, id))
                .collect::<Result<Vec<_>, _>>()?;
            Op::Txn {
                compare,
                then: nested_ops(o.then(), id)?,
                otherwise: nested_ops(o.otherwise(), id)?,
            }
        }
        wire::Op::Script => {
            let o = req.op_as_script().ok_or_else(|| missing("script body"))?;
            let params = o
                .params()
                .iter()
                .flatten()
                .map(|p| (p.name().unwrap_or_default().to_string(), bytes(p.value())))
                .collect();
            Op::Script {
                source: o.source().unwrap_or_default().to_string(),
                params,
                key: bytes(o.key()),
            }
        }
        wire::Op::Internal => {
            let o = req.op_as_internal().ok_or_else(|| missing("internal body"))?;
            Op::Internal { key: bytes(o.key()), payload: bytes(o.payload()), read: o.read() }
        }
        wire::Op::Membership => {
            let o = req.op_as_membership().ok_or_else(|| missing("membership body"))?;
            let action = match o.action() {
                wire::MemberAction::List => MemberAction::List,
                wire::MemberAction::Join => MemberAction::Join,
                wire::MemberAction::Drain => MemberAction::Drain,
                wire::MemberAction::Remove => MemberAction::Remove,
                wire::MemberAction::Activate => MemberAction::Activate,
                wire::MemberAction::BalanceOn => MemberAction::BalanceOn,
                wire::MemberAction::BalanceOff => MemberAction::BalanceOff,
                _ => return Err(missing("unknown membership action")),
            };
            Op::Membership {
                action,
                node: o.node(),
                client_addr: o.client_addr().unwrap_or_default().to_string(),
                peer_addr: o.peer_addr().unwrap_or_default().to_string(),
                shards: o.shards(),
            }
        }
        wire::Op::MoveReplica => {
            let o = req.op_as_move_replica().ok_or_else(|| missing("move replica body"))?;
            Op::MoveReplica {
                key: bytes(o.key()),
                partition: o.partition(),
                epoch: o.epoch(),
                add: o.add(),
                remove: o.remove(),
                lead: o.lead(),
            }
        }
        wire::Op::ClusterStatus => {
            let o = req.op_as_cluster_status().ok_or_else(|| missing("cluster status body"))?;
            let scope = match o.scope() {
                wire::StatusScope::Cluster => StatusScope::Cluster,
                wire::StatusScope::Node => StatusScope::Node,
                wire::StatusScope::Shard => StatusScope::Shard,
                _ => return Err(missing("unknown status scope")),
            };
            Op::ClusterStatus { scope, checksums: o.checksums() }
        }
        other => return Err(DecodeError::UnknownOp { request_id: id, tag: other.0 }),
    };
    Ok((id, req.timeout_ms(), op))
}

fn condition_name(_c: wire::SetCondition) -> &'static str {
    "unknown set condition"
}

/// Each request encoded alone, without its length prefix.
fn nested_requests(ops: &[Op]) -> Vec<Vec<u8>> {
    let mut fbb = FlatBufferBuilder::new();
    ops.iter()
        .map(|op| {
            let mut out = Vec::new();
            encode_request(&mut fbb, 0, 0, op, &mut out);
            out.split_off(FRAME_PREFIX)
        })
        .collect()
}

fn nested_vector<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    frames: &[Vec<u8>],
) -> WIPOffset<Vector<'a, ForwardsUOffset<wire::Nested<'a>>>> {
    let offs: Vec<_> = frames
        .iter()
        .map(|f| {
            let frame = fbb.create_bytes(f);
            wire::Nested::create(fbb, &wire::NestedArgs { frame: Some(frame) })
        })
        .collect();
    fbb.create_vector(&offs)
}

/// The length prefix of a frame.
const FRAME_PREFIX: usize = 4;

/// Appends one request frame to `out`. `fbb` is reset and reused to avoid allocations.
pub fn encode_request(
    fbb: &mut FlatBufferBuilder<'static>,
    request_id: u64,
    timeout_ms: u32,
    op: &Op,
    out: &mut Vec<u8>,
) {
    // A transaction's steps are whole requests of their own, encoded first (apart).
    let mut steps = match op {
        Op::Txn { then, otherwise, .. } => {
            Some((nested_requests(then), nested_requests(otherwise)))
        }
        _ => None,
    };
    fbb.reset();
    let (op_type, op_off) = match op {
        Op::Txn { compare, .. } => {
            let (then, otherwise) = steps.take().unwrap_or_default();
            let compares: Vec<_> = compare
                .iter()
                .map(|c| {
                    let (key, value) = (fbb.create_bytes(&c.key), fbb.create_bytes(&c.value));
                    let args = wire::CompareArgs {
                        key: Some(key),
                        target: match c.target {
                            CompareTarget::Value => wire::CompareTarget::Value,
                            CompareTarget::Revision => wire::CompareTarget::Revision,
                            CompareTarget::Exists => wire::CompareTarget::Exists,
                            CompareTarget::LockOwner => wire::CompareTarget::LockOwner,
                            CompareTarget::FencingToken => wire::CompareTarget::FencingToken,
                        },
                        op: match c.op {
                            CompareOp::Equal => wire::CompareOp::Equal,
                            CompareOp::NotEqual => wire::CompareOp::NotEqual,
                            CompareOp::Less => wire::CompareOp::Less,
                            CompareOp::Greater => wire::CompareOp::Greater,
                        },
                        value: Some(value),
                        number: c.number,
                    };
                    wire::Compare::create(fbb, &args)
                })
                .collect();
            let compare = fbb.create_vector(&compares);
            let then = nested_vector(fbb, &then);
            let otherwise = nested_vector(fbb, &otherwise);
            let args = wire::TxnArgs {
                compare: Some(compare),
                then: Some(then),
                otherwise: Some(otherwise),
            };
            (wire::Op::Txn, wire::Txn::create(fbb, &args).as_union_value())
        }
        Op::KvSet { key, value, durability, ttl_ms, condition } => {
            let key = fbb.create_bytes(key);
            let value = fbb.create_bytes(value);
            let (cond, expected_revision, expected_value) = match condition {
                SetCondition::None => (wire::SetCondition::None, 0, None),
                SetCondition::IfExists => (wire::SetCondition::IfExists, 0, None),
                SetCondition::IfNotExists => (wire::SetCondition::IfNotExists, 0, None),
                SetCondition::IfRevision(r) => (wire::SetCondition::IfRevision, *r, None),
                SetCondition::IfValue(v) => {
                    (wire::SetCondition::IfValue, 0, Some(fbb.create_bytes(v)))
                }
            };
            let o = wire::KvSet::create(
                fbb,
                &wire::KvSetArgs {
                    key: Some(key),
                    value: Some(value),
                    durability: durability_to(*durability),
                    ttl_ms: *ttl_ms,
                    condition: cond,
                    expected_revision,
                    expected_value,
                },
            );
            (wire::Op::KvSet, o.as_union_value())
        }
        Op::KvGet { key, durability, revision } => {
            let key = fbb.create_bytes(key);
            let o = wire::KvGet::create(
                fbb,
                &wire::KvGetArgs {
                    key: Some(key),
                    durability: durability_to(*durability),
                    revision: *revision,
                },
            );
            (wire::Op::KvGet, o.as_union_value())
        }
        Op::KvDelete { key, durability, expected_revision } => {
            let key = fbb.create_bytes(key);
            let o = wire::KvDelete::create(
                fbb,
                &wire::KvDeleteArgs {
                    key: Some(key),
                    durability: durability_to(*durability),
                    expected_revision: *expected_revision,
                },
            );
            (wire::Op::KvDelete, o.as_union_value())
        }
        Op::KvExists { key, durability } => {
            let key = fbb.create_bytes(key);
            let o = wire::KvExists::create(
                fbb,
                &wire::KvExistsArgs { key: Some(key), durability: durability_to(*durability) },
            );
            (wire::Op::KvExists, o.as_union_value())
        }
        Op::KvExtend { key, durability, ttl_ms } => {
            let key = fbb.create_bytes(key);
            let o = wire::KvExtend::create(
                fbb,
                &wire::KvExtendArgs {
                    key: Some(key),
                    durability: durability_to(*durability),
                    ttl_ms: *ttl_ms,
                },
            );
            (wire::Op::KvExtend, o.as_union_value())
        }
        Op::KvScan { prefix, durability, start_after, limit } => {
            let prefix = fbb.create_bytes(prefix);
            let start_after = start_after.as_ref().map(|s| fbb.create_bytes(s));
            let o = wire::KvScan::create(
                fbb,
                &wire::KvScanArgs {
                    prefix: Some(prefix),
                    durability: durability_to(*durability),
                    start_after,
                    limit: *limit,
                },
            );
            (wire::Op::KvScan, o.as_union_value())
        }
        Op::KvHistory { key, durability, limit } => {
            let key = fbb.create_bytes(key);
            let o = wire::KvHistory::create(
                fbb,
                &wire::KvHistoryArgs {
                    key: Some(key),
                    durability: durability_to(*durability),
                    limit: *limit,
                },
            );
            (wire::Op::KvHistory, o.as_union_value())
        }
        Op::LockAcquire { resource, owner, lease_ms, durability } => {
            let resource = fbb.create_bytes(resource);
            let owner = fbb.create_bytes(owner);
            let o = wire::LockAcquire::create(
                fbb,
                &wire::LockAcquireArgs {
                    resource: Some(resource),
                    owner: Some(owner),
                    lease_ms: *lease_ms,
                    durability: durability_to(*durability),
                },
            );
            (wire::Op::LockAcquire, o.as_union_value())
        }
        Op::LockExtend { resource, owner, lease_ms, durability, fencing_token } => {
            let resource = fbb.create_bytes(resource);
            let owner = fbb.create_bytes(owner);
            let o = wire::LockExtend::create(
                fbb,
                &wire::LockExtendArgs {
                    resource: Some(resource),
                    owner: Some(owner),
                    lease_ms: *lease_ms,
                    durability: durability_to(*durability),
                    fencing_token: *fencing_token,
                },
            );
            (wire::Op::LockExtend, o.as_union_value())
        }
        Op::LockRelease { resource, owner, durability, fencing_token } => {
            let resource = fbb.create_bytes(resource);
            let owner = fbb.create_bytes(owner);
            let o = wire::LockRelease::create(
                fbb,
                &wire::LockReleaseArgs {
                    resource: Some(resource),
                    owner: Some(owner),
                    durability: durability_to(*durability),
                    fencing_token: *fencing_token,
                },
            );
            (wire::Op::LockRelease, o.as_union_value())
        }
        Op::LockGet { resource, durability } => {
            let resource = fbb.create_bytes(resource);
            let o = wire::LockGet::create(
                fbb,
                &wire::LockGetArgs {
                    resource: Some(resource),
                    durability: durability_to(*durability),
                },
            );
            (wire::Op::LockGet, o.as_union_value())
        }
        Op::SeqNext { name, count } => {
            let name = fbb.create_bytes(name);
            let o =
                wire::SeqNext::create(fbb, &wire::SeqNextArgs { name: Some(name), count: *count });
            (wire::Op::SeqNext, o.as_union_value())
        }
        Op::Backup { key, offset, index } => {
            let key = fbb.create_bytes(key);
            let o = wire::Backup::create(
                fbb,
                &wire::BackupArgs { key: Some(key), offset: *offset, index: *index },
            );
            (wire::Op::Backup, o.as_union_value())
        }
        Op::Script { source, params, key } => {
            let params: Vec<_> = params
                .iter()
                .map(|(n, v)| {
                    let (name, value) = (fbb.create_string(n), fbb.create_bytes(v));
                    wire::Param::create(
                        fbb,
                        &wire::ParamArgs { name: Some(name), value: Some(value) },
                    )
                })
                .collect();
            let params = fbb.create_vector(&params);
            let (source, key) = (fbb.create_string(source), fbb.create_bytes(key));
            let args =
                wire::ScriptArgs { source: Some(source), params: Some(params), key: Some(key) };
            (wire::Op::Script, wire::Script::create(fbb, &args).as_union_value())
        }
        Op::Internal { key, payload, read } => {
            let (key, payload) = (fbb.create_bytes(key), fbb.create_bytes(payload));
            let args = wire::InternalArgs { key: Some(key), payload: Some(payload), read: *read };
            (wire::Op::Internal, wire::Internal::create(fbb, &args).as_union_value())
        }
        Op::Split { key, at } => {
            let (key, at) = (fbb.create_bytes(key), fbb.create_bytes(at));
            let o = wire::Split::create(fbb, &wire::SplitArgs { key: Some(key), at: Some(at) });
            (wire::Op::Split, o.as_union_value())
        }
        Op::Membership { action, node, client_addr, peer_addr, shards } => {
            let action = match action {
                MemberAction::List => wire::MemberAction::List,
                MemberAction::Join => wire::MemberAction::Join,
                MemberAction::Drain => wire::MemberAction::Drain,
                MemberAction::Remove => wire::MemberAction::Remove,
                MemberAction::Activate => wire::MemberAction::Activate,
                MemberAction::BalanceOn => wire::MemberAction::BalanceOn,
                MemberAction::BalanceOff => wire::MemberAction::BalanceOff,
            };
            let (c, p) = (fbb.create_string(client_addr), fbb.create_string(peer_addr));
            let args = wire::MembershipArgs {
                action,
                node: *node,
                client_addr: Some(c),
                peer_addr: Some(p),
                shards: *shards,
            };
            (wire::Op::Membership, wire::Membership::create(fbb, &args).as_union_value())
        }
        Op::MoveReplica { key, partition, epoch, add, remove, lead } => {
            let key = fbb.create_bytes(key);
            let args = wire::MoveReplicaArgs {
                key: Some(key),
                partition: *partition,
                epoch: *epoch,
                add: *add,
                remove: *remove,
                lead: *lead,
            };
            (wire::Op::MoveReplica, wire::MoveReplica::create(fbb, &args).as_union_value())
        }
        Op::ClusterStatus { scope, checksums } => {
            let scope = match scope {
                StatusScope::Cluster => wire::StatusScope::Cluster,
                StatusScope::Node => wire::StatusScope::Node,
                StatusScope::Shard => wire::StatusScope::Shard,
            };
            let o = wire::ClusterStatus::create(
                fbb,
                &wire::ClusterStatusArgs { scope, checksums: *checksums },
            );
            (wire::Op::ClusterStatus, o.as_union_value())
        }
    };
    let req = wire::Request::create(
        fbb,
        &wire::RequestArgs { request_id, timeout_ms, op_type, op: Some(op_off) },
    );
    fbb.finish(req, None);
    write_frame(out, fbb.finished_data());
}

fn item<'a>(fbb: &mut FlatBufferBuilder<'a>, it: &KvItem) -> WIPOffset<wire::KvItem<'a>> {
    let key = fbb.create_bytes(&it.key);
    let value = fbb.create_bytes(&it.value);
    wire::KvItem::create(
        fbb,
        &wire::KvItemArgs {
            key: Some(key),
            value: Some(value),
            revision: it.revision,
            expires_at_ms: it.expires_at_ms,
            deleted: it.deleted,
        },
    )
}

fn items<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    its: &[KvItem],
) -> WIPOffset<Vector<'a, ForwardsUOffset<wire::KvItem<'a>>>> {
    let offs: Vec<_> = its.iter().map(|it| item(fbb, it)).collect();
    fbb.create_vector(&offs)
}

fn role_to(r: ReplicaRole) -> wire::ReplicaRole {
    match r {
        ReplicaRole::Follower => wire::ReplicaRole::Follower,
        ReplicaRole::Candidate => wire::ReplicaRole::Candidate,
        ReplicaRole::PreCandidate => wire::ReplicaRole::PreCandidate,
        ReplicaRole::Leader => wire::ReplicaRole::Leader,
        ReplicaRole::Learner => wire::ReplicaRole::Learner,
    }
}

fn role_from(r: wire::ReplicaRole) -> ReplicaRole {
    match r {
        wire::ReplicaRole::Leader => ReplicaRole::Leader,
        wire::ReplicaRole::Candidate => ReplicaRole::Candidate,
        wire::ReplicaRole::PreCandidate => ReplicaRole::PreCandidate,
        wire::ReplicaRole::Learner => ReplicaRole::Learner,
        _ => ReplicaRole::Follower,
    }
}

fn cluster_status<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    st: &ClusterStatus,
) -> WIPOffset<wire::ClusterStatusResult<'a>> {
    let nodes: Vec<_> = st
        .nodes
        .iter()
        .map(|n| {
            let client_address = fbb.create_string(&n.client_address);
            let peer_address = fbb.create_string(&n.peer_address);
            let error = (!n.error.is_empty()).then(|| fbb.create_string(&n.error));
            wire::NodeStatus::create(
                fbb,
                &wire::NodeStatusArgs {
                    id: n.id,
                    up: n.up,
                    client_address: Some(client_address),
                    peer_address: Some(peer_address),
                    shards: n.shards,
                    error,
                    forwarded: n.forwarded,
                    clock_offset_ms: n.clock_offset_ms,
                    clock_ok: n.clock_ok,
                },
            )
        })
        .collect();
    let nodes = fbb.create_vector(&nodes);
    let parts: Vec<_> = st
        .partitions
        .iter()
        .map(|p| {
            let status: Vec<_> = p
                .status
                .iter()
                .map(|r| {
                    wire::ReplicaStatus::create(
                        fbb,
                        &wire::ReplicaStatusArgs {
                            node: r.node,
                            shard: r.shard,
                            role: role_to(r.role),
                            term: r.term,
                            leader: r.leader,
                            commit: r.commit,
                            applied: r.applied,
                            last_index: r.last_index,
                            ephemeral_bytes: r.ephemeral_bytes,
                            checksum: r.checksum,
                            checksum_index: r.checksum_index,
                            qps: r.qps,
                            bytes: r.bytes,
                        },
                    )
                })
                .collect();
            let status = fbb.create_vector(&status);
            let start = fbb.create_bytes(&p.start);
            let end = fbb.create_bytes(&p.end);
            let replicas = fbb.create_vector(&p.replicas);
            wire::PartitionStatus::create(
                fbb,
                &wire::PartitionStatusArgs {
                    id: p.id,
                    start: Some(start),
                    end: Some(end),
                    replicas: Some(replicas),
                    status: Some(status),
                    epoch: p.epoch,
                },
            )
        })
        .collect();
    let partitions = fbb.create_vector(&parts);
    wire::ClusterStatusResult::create(
        fbb,
        &wire::ClusterStatusResultArgs {
            answered_by: st.answered_by,
            nodes: Some(nodes),
            partitions: Some(partitions),
        },
    )
}

fn cluster_status_from(r: wire::ClusterStatusResult<'_>) -> ClusterStatus {
    let nodes = r
        .nodes()
        .map(|v| {
            v.iter()
                .map(|n| NodeStatus {
                    id: n.id(),
                    up: n.up(),
                    client_address: n.client_address().unwrap_or_default().to_string(),
                    peer_address: n.peer_address().unwrap_or_default().to_string(),
                    shards: n.shards(),
                    error: n.error().unwrap_or_default().to_string(),
                    forwarded: n.forwarded(),
                    clock_offset_ms: n.clock_offset_ms(),
                    clock_ok: n.clock_ok(),
                })
                .collect()
        })
        .unwrap_or_default();
    let partitions = r
        .partitions()
        .map(|v| {
            v.iter()
                .map(|p| PartitionStatus {
                    id: p.id(),
                    start: bytes(p.start()),
                    end: bytes(p.end()),
                    replicas: p.replicas().map(|r| r.iter().collect()).unwrap_or_default(),
                    epoch: p.epoch(),
                    status: p
                        .status()
                        .map(|s| {
                            s.iter()
                                .map(|r| ReplicaStatus {
                                    node: r.node(),
                                    shard: r.shard(),
                                    role: role_from(r.role()),
                                    term: r.term(),
                                    leader: r.leader(),
                                    commit: r.commit(),
                                    applied: r.applied(),
                                    last_index: r.last_index(),
                                    ephemeral_bytes: r.ephemeral_bytes(),
                                    checksum: r.checksum(),
                                    checksum_index: r.checksum_index(),
                                    qps: r.qps(),
                                    bytes: r.bytes(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    ClusterStatus { answered_by: r.answered_by(), nodes, partitions }
}

/// Appends one response frame to `out`.
pub fn encode_response(
    fbb: &mut FlatBufferBuilder<'static>,
    request_id: u64,
    result: &Result<Reply, WireError>,
    leader_hint: u64,
    out: &mut Vec<u8>,
) {
    // A transaction's results are whole responses of their own, encoded first (apart).
    let mut results = match result {
        Ok(Reply::Txn { results, .. }) => {
            let mut b = FlatBufferBuilder::new();
            let frames: Vec<Vec<u8>> = results
                .iter()
                .map(|r| {
                    let mut o = Vec::new();
                    encode_response(&mut b, 0, r, 0, &mut o);
                    o.split_off(FRAME_PREFIX)
                })
                .collect();
            Some(frames)
        }
        _ => None,
    };
    fbb.reset();
    let mut error = None;
    let mut body = None;
    match result {
        Err(e) => {
            let message = fbb.create_string(&e.message);
            error = Some(wire::Error::create(
                fbb,
                &wire::ErrorArgs {
                    code: wire::ErrorCode(e.code.to_wire()),
                    message: Some(message),
                },
            ));
        }
        Ok(reply) => {
            body = Some(match reply {
                Reply::KvSet { revision } => (
                    wire::Reply::KvSetResult,
                    wire::KvSetResult::create(fbb, &wire::KvSetResultArgs { revision: *revision })
                        .as_union_value(),
                ),
                Reply::KvGet(it) => {
                    let it = item(fbb, it);
                    (
                        wire::Reply::KvGetResult,
                        wire::KvGetResult::create(fbb, &wire::KvGetResultArgs { item: Some(it) })
                            .as_union_value(),
                    )
                }
                Reply::KvDelete { deleted, revision } => (
                    wire::Reply::KvDeleteResult,
                    wire::KvDeleteResult::create(
                        fbb,
                        &wire::KvDeleteResultArgs { deleted: *deleted, revision: *revision },
                    )
                    .as_union_value(),
                ),
                Reply::KvExists { exists, revision } => (
                    wire::Reply::KvExistsResult,
                    wire::KvExistsResult::create(
                        fbb,
                        &wire::KvExistsResultArgs { exists: *exists, revision: *revision },
                    )
                    .as_union_value(),
                ),
                Reply::KvExtend { revision, expires_at_ms } => (
                    wire::Reply::KvExtendResult,
                    wire::KvExtendResult::create(
                        fbb,
                        &wire::KvExtendResultArgs {
                            revision: *revision,
                            expires_at_ms: *expires_at_ms,
                        },
                    )
                    .as_union_value(),
                ),
                Reply::KvScan { items: its, next, covered_to } => {
                    let its = items(fbb, its);
                    let next = next.as_ref().map(|n| fbb.create_bytes(n));
                    let covered_to = covered_to.as_ref().map(|n| fbb.create_bytes(n));
                    (
                        wire::Reply::KvScanResult,
                        wire::KvScanResult::create(
                            fbb,
                            &wire::KvScanResultArgs { items: Some(its), next, covered_to },
                        )
                        .as_union_value(),
                    )
                }
                Reply::KvHistory { items: its } => {
                    let its = items(fbb, its);
                    (
                        wire::Reply::KvHistoryResult,
                        wire::KvHistoryResult::create(
                            fbb,
                            &wire::KvHistoryResultArgs { items: Some(its) },
                        )
                        .as_union_value(),
                    )
                }
                Reply::Lock(st) => {
                    let owner = st.owner.as_ref().map(|o| fbb.create_bytes(o));
                    (
                        wire::Reply::LockState,
                        wire::LockState::create(
                            fbb,
                            &wire::LockStateArgs {
                                acquired: st.acquired,
                                fencing_token: st.fencing_token,
                                owner,
                                expires_at_ms: st.expires_at_ms,
                            },
                        )
                        .as_union_value(),
                    )
                }
                Reply::LockAck { fencing_token, expires_at_ms } => (
                    wire::Reply::LockAck,
                    wire::LockAck::create(
                        fbb,
                        &wire::LockAckArgs {
                            fencing_token: *fencing_token,
                            expires_at_ms: *expires_at_ms,
                        },
                    )
                    .as_union_value(),
                ),
                Reply::Seq { first, count } => (
                    wire::Reply::SeqResult,
                    wire::SeqResult::create(
                        fbb,
                        &wire::SeqResultArgs { first: *first, count: *count },
                    )
                    .as_union_value(),
                ),
                Reply::ClusterStatus(st) => {
                    (wire::Reply::ClusterStatusResult, cluster_status(fbb, st).as_union_value())
                }
                Reply::BackupChunk(c) => {
                    let start = fbb.create_bytes(&c.start);
                    let end = fbb.create_bytes(&c.end);
                    let data = fbb.create_bytes(&c.data);
                    let args = wire::BackupChunkResultArgs {
                        partition: c.partition,
                        start: Some(start),
                        end: Some(end),
                        index: c.index,
                        term: c.term,
                        hlc: c.hlc,
                        total: c.total,
                        crc: c.crc,
                        offset: c.offset,
                        data: Some(data),
                    };
                    let r = wire::BackupChunkResult::create(fbb, &args);
                    (wire::Reply::BackupChunkResult, r.as_union_value())
                }
                Reply::Membership { members, balance, map } => {
                    let list: Vec<_> = members
                        .iter()
                        .map(|m| {
                            let args = wire::MemberInfoArgs {
                                id: m.id,
                                client_addr: Some(fbb.create_string(&m.client_addr)),
                                peer_addr: Some(fbb.create_string(&m.peer_addr)),
                                shards: m.shards,
                                state: Some(fbb.create_string(&m.state)),
                                removing: m.removing,
                                replicas: m.replicas,
                            };
                            wire::MemberInfo::create(fbb, &args)
                        })
                        .collect();
                    let members = fbb.create_vector(&list);
                    let map = fbb.create_bytes(map);
                    let args = wire::MembershipResultArgs {
                        members: Some(members),
                        balance: *balance,
                        map: Some(map),
                    };
                    (
                        wire::Reply::MembershipResult,
                        wire::MembershipResult::create(fbb, &args).as_union_value(),
                    )
                }
                Reply::Txn { succeeded, .. } => {
                    let frames = results.take().unwrap_or_default();
                    let results = nested_vector(fbb, &frames);
                    let args =
                        wire::TxnResultArgs { succeeded: *succeeded, results: Some(results) };
                    (wire::Reply::TxnResult, wire::TxnResult::create(fbb, &args).as_union_value())
                }
                Reply::Script { json } => {
                    let json = fbb.create_string(json);
                    let args = wire::ScriptResultArgs { json: Some(json) };
                    (
                        wire::Reply::ScriptResult,
                        wire::ScriptResult::create(fbb, &args).as_union_value(),
                    )
                }
                Reply::Internal { payload } => {
                    let payload = fbb.create_bytes(payload);
                    let args = wire::InternalResultArgs { payload: Some(payload) };
                    (
                        wire::Reply::InternalResult,
                        wire::InternalResult::create(fbb, &args).as_union_value(),
                    )
                }
                Reply::MoveReplica { step, epoch } => {
                    let step = fbb.create_string(step);
                    let args = wire::MoveReplicaResultArgs { step: Some(step), epoch: *epoch };
                    (
                        wire::Reply::MoveReplicaResult,
                        wire::MoveReplicaResult::create(fbb, &args).as_union_value(),
                    )
                }
                Reply::Split { left, right, at, epoch } => {
                    let at = fbb.create_bytes(at);
                    let args = wire::SplitResultArgs {
                        left: *left,
                        right: *right,
                        at: Some(at),
                        epoch: *epoch,
                    };
                    (
                        wire::Reply::SplitResult,
                        wire::SplitResult::create(fbb, &args).as_union_value(),
                    )
                }
            });
        }
    }
    let (result_type, result) = match body {
        Some((t, o)) => (t, Some(o)),
        None => (wire::Reply::NONE, None),
    };
    let resp = wire::Response::create(
        fbb,
        &wire::ResponseArgs { request_id, error, result_type, result, leader_hint },
    );
    fbb.finish(resp, None);
    write_frame(out, fbb.finished_data());
}

fn item_from(it: wire::KvItem<'_>) -> KvItem {
    KvItem {
        key: bytes(it.key()),
        value: bytes(it.value()),
        revision: it.revision(),
        expires_at_ms: it.expires_at_ms(),
        deleted: it.deleted(),
    }
}

fn items_from(v: Option<Vector<'_, ForwardsUOffset<wire::KvItem<'_>>>>) -> Vec<KvItem> {
    v.map(|v| v.iter().map(item_from).collect()).unwrap_or_default()
}

/// A decoded response: request id, outcome, leader hint (0 = none).
pub type DecodedResponse = (u64, Result<Reply, WireError>, u64);

/// Decodes one response payload (the frame without its length prefix).
pub fn decode_response(buf: &[u8]) -> Result<DecodedResponse, DecodeError> {
    decode_response_at(buf, false)
}

fn decode_response_at(buf: &[u8], nested: bool) -> Result<DecodedResponse, DecodeError> {
    let resp = flatbuffers::root_with_opts::<wire::Response>(&verifier_options(), buf)
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let id = resp.request_id();
    let hint = resp.leader_hint();
    if let Some(err) = resp.error() {
        let code = ErrorCode::from_wire(err.code().0).unwrap_or(ErrorCode::Internal);
        return Ok((id, Err(WireError::new(code, err.message().unwrap_or_default())), hint));
    }
    let missing = |what| DecodeError::Missing { request_id: id, what };
    let reply = match resp.result_type() {
        wire::Reply::KvSetResult => Reply::KvSet {
            revision: resp.result_as_kv_set_result().ok_or_else(|| missing("result"))?.revision(),
        },
        wire::Reply::KvGetResult => {
            let r = resp.result_as_kv_get_result().ok_or_else(|| missing("result"))?;
            Reply::KvGet(r.item().map(item_from).ok_or_else(|| missing("item"))?)
        }
        wire::Reply::KvDeleteResult => {
            let r = resp.result_as_kv_delete_result().ok_or_else(|| missing("result"))?;
            Reply::KvDelete { deleted: r.deleted(), revision: r.revision() }
        }
        wire::Reply::KvExistsResult => {
            let r = resp.result_as_kv_exists_result().ok_or_else(|| missing("result"))?;
            Reply::KvExists { exists: r.exists(), revision: r.revision() }
        }
        wire::Reply::KvExtendResult => {
            let r = resp.result_as_kv_extend_result().ok_or_else(|| missing("result"))?;
            Reply::KvExtend { revision: r.revision(), expires_at_ms: r.expires_at_ms() }
        }
        wire::Reply::KvScanResult => {
            let r = resp.result_as_kv_scan_result().ok_or_else(|| missing("result"))?;
            Reply::KvScan {
                items: items_from(r.items()),
                next: r.next().map(|n| n.bytes().to_vec()),
                covered_to: r.covered_to().map(|n| n.bytes().to_vec()),
            }
        }
        wire::Reply::KvHistoryResult => {
            let r = resp.result_as_kv_history_result().ok_or_else(|| missing("result"))?;
            Reply::KvHistory { items: items_from(r.items()) }
        }
        wire::Reply::LockState => {
            let r = resp.result_as_lock_state().ok_or_else(|| missing("result"))?;
            Reply::Lock(LockState {
                acquired: r.acquired(),
                fencing_token: r.fencing_token(),
                owner: r.owner().map(|o| o.bytes().to_vec()),
                expires_at_ms: r.expires_at_ms(),
            })
        }
        wire::Reply::LockAck => {
            let r = resp.result_as_lock_ack().ok_or_else(|| missing("result"))?;
            Reply::LockAck { fencing_token: r.fencing_token(), expires_at_ms: r.expires_at_ms() }
        }
        wire::Reply::SeqResult => {
            let r = resp.result_as_seq_result().ok_or_else(|| missing("result"))?;
            Reply::Seq { first: r.first(), count: r.count() }
        }
        wire::Reply::ClusterStatusResult => Reply::ClusterStatus(cluster_status_from(
            resp.result_as_cluster_status_result().ok_or_else(|| missing("result"))?,
        )),
        wire::Reply::BackupChunkResult => {
            let r = resp.result_as_backup_chunk_result().ok_or_else(|| missing("result"))?;
            Reply::BackupChunk(BackupChunk {
                partition: r.partition(),
                start: bytes(r.start()),
                end: bytes(r.end()),
                index: r.index(),
                term: r.term(),
                hlc: r.hlc(),
                total: r.total(),
                crc: r.crc(),
                offset: r.offset(),
                data: bytes(r.data()),
            })
        }
        wire::Reply::SplitResult => {
            let r = resp.result_as_split_result().ok_or_else(|| missing("result"))?;
            Reply::Split { left: r.left(), right: r.right(), at: bytes(r.at()), epoch: r.epoch() }
        }
        wire::Reply::MembershipResult => {
            let r = resp.result_as_membership_result().ok_or_else(|| missing("result"))?;
            let members = r
                .members()
                .map(|v| {
                    v.iter()
                        .map(|m| MemberInfo {
                            id: m.id(),
                            client_addr: m.client_addr().unwrap_or_default().to_string(),
                            peer_addr: m.peer_addr().unwrap_or_default().to_string(),
                            shards: m.shards(),
                            state: m.state().unwrap_or_default().to_string(),
                            removing: m.removing(),
                            replicas: m.replicas(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Reply::Membership { members, balance: r.balance(), map: bytes(r.map()) }
        }
        wire::Reply::TxnResult if nested => {
            return Err(missing("a transaction result inside a transaction result"))
        }
        wire::Reply::TxnResult => {
            let r = resp.result_as_txn_result().ok_or_else(|| missing("result"))?;
            let mut results = Vec::new();
            for n in r.results().iter().flatten() {
                let frame = n.frame().map(|f| f.bytes()).unwrap_or(&[]);
                let (_, result, _) = decode_response_at(frame, true)
                    .map_err(|_| missing("a transaction result that does not decode"))?;
                results.push(result);
            }
            Reply::Txn { succeeded: r.succeeded(), results }
        }
        wire::Reply::ScriptResult => {
            let r = resp.result_as_script_result().ok_or_else(|| missing("result"))?;
            Reply::Script { json: r.json().unwrap_or_default().to_string() }
        }
        wire::Reply::InternalResult => {
            let r = resp.result_as_internal_result().ok_or_else(|| missing("result"))?;
            Reply::Internal { payload: bytes(r.payload()) }
        }
        wire::Reply::MoveReplicaResult => {
            let r = resp.result_as_move_replica_result().ok_or_else(|| missing("result"))?;
            Reply::MoveReplica { step: r.step().unwrap_or_default().to_string(), epoch: r.epoch() }
        }
        other => return Err(DecodeError::UnknownOp { request_id: id, tag: other.0 }),
    };
    Ok((id, Ok(reply), hint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::parse_frame;

    fn roundtrip_op(op: Op) {
        let mut fbb = FlatBufferBuilder::new();
        let mut out = Vec::new();
        encode_request(&mut fbb, 42, 500, &op, &mut out);
        let (s, e) = parse_frame(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(decode_request(&out[s..e]).unwrap(), (42, 500, op));
    }

    #[test]
    fn every_op_roundtrips() {
        let k = b"orders/1".to_vec();
        let d = Durability::Ephemeral;
        for op in [
            Op::KvSet {
                key: k.clone(),
                value: b"v".to_vec(),
                durability: d,
                ttl_ms: 5,
                condition: SetCondition::None,
            },
            Op::KvSet {
                key: k.clone(),
                value: vec![],
                durability: Durability::Persistent,
                ttl_ms: 0,
                condition: SetCondition::IfValue(b"old".to_vec()),
            },
            Op::KvSet {
                key: k.clone(),
                value: vec![1],
                durability: d,
                ttl_ms: 0,
                condition: SetCondition::IfRevision(7),
            },
            Op::KvSet {
                key: k.clone(),
                value: vec![1],
                durability: d,
                ttl_ms: 0,
                condition: SetCondition::IfExists,
            },
            Op::KvSet {
                key: k.clone(),
                value: vec![1],
                durability: d,
                ttl_ms: 0,
                condition: SetCondition::IfNotExists,
            },
            Op::KvGet { key: k.clone(), durability: d, revision: 3 },
            Op::KvDelete { key: k.clone(), durability: d, expected_revision: 2 },
            Op::KvExists { key: k.clone(), durability: d },
            Op::KvExtend { key: k.clone(), durability: d, ttl_ms: 9 },
            Op::KvScan {
                prefix: k.clone(),
                durability: d,
                start_after: Some(b"x".to_vec()),
                limit: 10,
            },
            Op::KvScan { prefix: vec![], durability: d, start_after: None, limit: 0 },
            Op::KvHistory { key: k.clone(), durability: d, limit: 4 },
            Op::LockAcquire {
                resource: k.clone(),
                owner: b"a".to_vec(),
                lease_ms: 10,
                durability: d,
            },
            Op::LockExtend {
                resource: k.clone(),
                owner: b"a".to_vec(),
                lease_ms: 10,
                durability: d,
                fencing_token: 3,
            },
            Op::LockRelease {
                resource: k.clone(),
                owner: b"a".to_vec(),
                durability: d,
                fencing_token: 0,
            },
            Op::LockGet { resource: k.clone(), durability: d },
            Op::SeqNext { name: k.clone(), count: 100 },
            Op::Backup { key: k.clone(), offset: 5, index: 9 },
            Op::Split { key: k.clone(), at: b"m".to_vec() },
            Op::ClusterStatus { scope: StatusScope::Cluster, checksums: false },
            Op::ClusterStatus { scope: StatusScope::Node, checksums: true },
            Op::ClusterStatus { scope: StatusScope::Shard, checksums: false },
            Op::Membership {
                action: MemberAction::Join,
                node: 4,
                client_addr: "127.0.0.1:7003".into(),
                peer_addr: "127.0.0.1:7103".into(),
                shards: 2,
            },
            Op::Membership {
                action: MemberAction::BalanceOff,
                node: 0,
                client_addr: String::new(),
                peer_addr: String::new(),
                shards: 0,
            },
            Op::MoveReplica { key: k.clone(), partition: 3, epoch: 4, add: 5, remove: 1, lead: 0 },
            Op::Txn {
                compare: vec![
                    Compare {
                        key: k.clone(),
                        target: CompareTarget::Revision,
                        op: CompareOp::Equal,
                        value: vec![],
                        number: 3,
                    },
                    Compare {
                        key: b"l".to_vec(),
                        target: CompareTarget::LockOwner,
                        op: CompareOp::NotEqual,
                        value: b"me".to_vec(),
                        number: 0,
                    },
                ],
                then: vec![
                    Op::KvGet { key: k.clone(), durability: d, revision: 0 },
                    Op::SeqNext { name: k.clone(), count: 2 },
                ],
                otherwise: vec![Op::KvDelete {
                    key: k.clone(),
                    durability: d,
                    expected_revision: 0,
                }],
            },
            Op::MoveReplica { key: k.clone(), partition: 3, epoch: 4, add: 0, remove: 0, lead: 2 },
            Op::Internal { key: k.clone(), payload: vec![1, 2, 3], read: true },
            Op::Script {
                source: "RETURN @x".into(),
                params: vec![("x".into(), b"1".to_vec())],
                key: k.clone(),
            },
        ] {
            roundtrip_op(op);
        }
    }

    #[test]
    fn a_transaction_inside_a_transaction_is_refused() {
        let inner = Op::Txn { compare: vec![], then: vec![], otherwise: vec![] };
        let outer = Op::Txn { compare: vec![], then: vec![inner], otherwise: vec![] };
        let mut fbb = FlatBufferBuilder::new();
        let mut out = Vec::new();
        encode_request(&mut fbb, 5, 0, &outer, &mut out);
        let err = decode_request(&out[4..]).unwrap_err();
        assert_eq!(err.request_id(), Some(5), "{err}");
        let nested_result = Ok(Reply::Txn { succeeded: true, results: vec![] });
        let r = Ok(Reply::Txn { succeeded: true, results: vec![nested_result] });
        let mut out = Vec::new();
        encode_response(&mut fbb, 6, &r, 0, &mut out);
        assert!(decode_response(&out[4..]).is_err());
    }

    fn roundtrip_reply(r: Result<Reply, WireError>) {
        let mut fbb = FlatBufferBuilder::new();
        let mut out = Vec::new();
        encode_response(&mut fbb, 7, &r, 3, &mut out);
        assert_eq!(decode_response(&out[4..]).unwrap(), (7, r, 3));
    }

    #[test]
    fn every_reply_roundtrips() {
        let it = KvItem {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            revision: 2,
            expires_at_ms: 9,
            deleted: false,
        };
        for r in [
            Ok(Reply::KvSet { revision: 1 }),
            Ok(Reply::KvGet(it.clone())),
            Ok(Reply::KvDelete { deleted: true, revision: 4 }),
            Ok(Reply::KvExists { exists: false, revision: 0 }),
            Ok(Reply::KvExtend { revision: 3, expires_at_ms: 11 }),
            Ok(Reply::KvScan {
                items: vec![it.clone(), it.clone()],
                next: Some(b"k".to_vec()),
                covered_to: Some(b"m".to_vec()),
            }),
            Ok(Reply::KvScan { items: vec![], next: None, covered_to: None }),
            Ok(Reply::KvScan { items: vec![], next: None, covered_to: Some(vec![]) }),
            Ok(Reply::KvHistory { items: vec![it] }),
            Ok(Reply::Lock(LockState {
                acquired: true,
                fencing_token: 5,
                owner: Some(b"w".to_vec()),
                expires_at_ms: 1,
            })),
            Ok(Reply::LockAck { fencing_token: 5, expires_at_ms: 2 }),
            Ok(Reply::Seq { first: 1, count: 100 }),
            Ok(Reply::Split { left: 1, right: 9, at: b"m".to_vec(), epoch: 2 }),
            Ok(Reply::Membership {
                members: vec![MemberInfo {
                    id: 4,
                    client_addr: "a".into(),
                    peer_addr: "b".into(),
                    shards: 2,
                    state: "draining".into(),
                    removing: true,
                    replicas: 7,
                }],
                balance: true,
                map: vec![1, 2, 3],
            }),
            Ok(Reply::MoveReplica { step: "promote".into(), epoch: 9 }),
            Ok(Reply::Internal { payload: vec![3, 2, 1] }),
            Ok(Reply::Script { json: "{\"value\": \"v\", \"revision\": 3}".into() }),
            Ok(Reply::Txn {
                succeeded: true,
                results: vec![
                    Ok(Reply::KvSet { revision: 4 }),
                    Err(WireError::new(ErrorCode::NotFound, "key not found")),
                    Ok(Reply::Seq { first: 1, count: 2 }),
                ],
            }),
            Ok(Reply::BackupChunk(BackupChunk {
                partition: 2,
                start: b"a".to_vec(),
                end: vec![],
                index: 9,
                term: 3,
                hlc: 77,
                total: 100,
                crc: 5,
                offset: 10,
                data: vec![1, 2, 3],
            })),
            Ok(Reply::ClusterStatus(ClusterStatus {
                answered_by: 2,
                nodes: vec![
                    NodeStatus {
                        id: 1,
                        up: false,
                        client_address: String::new(),
                        peer_address: "127.0.0.1:7100".into(),
                        shards: 0,
                        error: "no answer".into(),
                        forwarded: 0,
                        clock_offset_ms: 0,
                        clock_ok: true,
                    },
                    NodeStatus {
                        id: 2,
                        up: true,
                        client_address: "127.0.0.1:7001".into(),
                        peer_address: "127.0.0.1:7101".into(),
                        shards: 2,
                        error: String::new(),
                        forwarded: 7,
                        clock_offset_ms: -1200,
                        clock_ok: false,
                    },
                ],
                partitions: vec![PartitionStatus {
                    id: 3,
                    start: b"a".to_vec(),
                    end: vec![],
                    replicas: vec![2, 3, 1],
                    epoch: 3,
                    status: vec![ReplicaStatus {
                        node: 2,
                        shard: 1,
                        role: ReplicaRole::Leader,
                        term: 4,
                        leader: 2,
                        commit: 10,
                        applied: 9,
                        last_index: 11,
                        ephemeral_bytes: 12,
                        checksum: 13,
                        checksum_index: 9,
                        qps: 2500,
                        bytes: 1 << 30,
                    }],
                }],
            })),
            Err(WireError::new(ErrorCode::Conflict, "revision is 3, not 2")),
        ] {
            roundtrip_reply(r);
        }
    }

    #[test]
    fn garbage_is_rejected_not_read() {
        assert!(matches!(decode_request(&[1, 2, 3]), Err(DecodeError::Invalid(_))));
        assert!(matches!(decode_request(&[0xff; 64]), Err(DecodeError::Invalid(_))));
        // A valid buffer whose union tag this build does not know.
        let mut fbb = FlatBufferBuilder::new();
        let req = wire::Request::create(
            &mut fbb,
            &wire::RequestArgs { request_id: 9, timeout_ms: 0, op_type: wire::Op(200), op: None },
        );
        fbb.finish(req, None);
        let err = decode_request(fbb.finished_data()).unwrap_err();
        assert_eq!(err.request_id(), Some(9));
        // The same with a body: the tag is what is unknown.
        let mut fbb = FlatBufferBuilder::new();
        let get = wire::KvGet::create(&mut fbb, &wire::KvGetArgs::default());
        let req = wire::Request::create(
            &mut fbb,
            &wire::RequestArgs {
                request_id: 10,
                timeout_ms: 0,
                op_type: wire::Op(200),
                op: Some(get.as_union_value()),
            },
        );
        fbb.finish(req, None);
        let err = decode_request(fbb.finished_data()).unwrap_err();
        assert_eq!(err.request_id(), Some(10));
        assert_eq!(err.code(), ErrorCode::UnknownOp);
        // A request whose body is broken still yields its id.
        let mut bytes = {
            let mut fbb = FlatBufferBuilder::new();
            let mut out = Vec::new();
            let op =
                Op::KvGet { key: b"k".to_vec(), durability: Durability::Persistent, revision: 0 };
            encode_request(&mut fbb, 11, 0, &op, &mut out);
            fbb.reset();
            out.split_off(4)
        };
        let n = bytes.len();
        bytes[n - 8..].fill(0xee);
        if let Err(e) = decode_request(&bytes) {
            assert!(e.request_id().is_none() || e.request_id() == Some(11));
        }
    }

    #[test]
    fn error_codes_roundtrip_and_have_names() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(c.to_wire()), Some(c));
            assert!(c.name().chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'));
        }
        assert!(!ErrorCode::Timeout.is_retryable());
        assert!(ErrorCode::NotLeader.is_retryable());
    }
}
