//! Owned message types: what a request asks and what an answer says, free of flatbuffers
//! lifetimes. The codec converts between these and the wire; everything above the codec
//! (server, client, CLI) speaks only these.

use std::fmt;

/// Stable error codes; the numbers are the wire's (`schema/kahuna.fbs`, enum `ErrorCode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Invalid,
    NotFound,
    Conflict,
    TooLarge,
    NotLeader,
    Moved,
    Timeout,
    Unavailable,
    UnknownOp,
    NotHeld,
    Overloaded,
    Internal,
    NoSpace,
    Locked,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Invalid,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::NotLeader,
        ErrorCode::Moved,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::UnknownOp,
        ErrorCode::NotHeld,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
        ErrorCode::NoSpace,
        ErrorCode::Locked,
    ];

    /// The name scripts see (`--output json`), stable across versions.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "INVALID",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::Moved => "MOVED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::UnknownOp => "UNKNOWN_OP",
            ErrorCode::NotHeld => "NOT_HELD",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::NoSpace => "NO_SPACE",
            ErrorCode::Locked => "LOCKED",
        }
    }

    pub fn to_wire(self) -> u16 {
        match self {
            ErrorCode::Invalid => 1,
            ErrorCode::NotFound => 2,
            ErrorCode::Conflict => 3,
            ErrorCode::TooLarge => 4,
            ErrorCode::NotLeader => 5,
            ErrorCode::Moved => 6,
            ErrorCode::Timeout => 7,
            ErrorCode::Unavailable => 8,
            ErrorCode::UnknownOp => 9,
            ErrorCode::NotHeld => 10,
            ErrorCode::Overloaded => 11,
            ErrorCode::Internal => 12,
            ErrorCode::NoSpace => 13,
            ErrorCode::Locked => 14,
        }
    }

    pub fn from_wire(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.to_wire() == code)
    }

    /// Safe to send again: the server did not start to carry the request out.
    /// `Timeout` is not here: for a write its outcome is unknown.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::Moved
                | ErrorCode::Unavailable
                | ErrorCode::Overloaded
                | ErrorCode::Locked
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error as it travels on the wire: a stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for WireError {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    #[default]
    Persistent,
    Ephemeral,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SetCondition {
    #[default]
    None,
    IfExists,
    IfNotExists,
    IfRevision(u64),
    IfValue(Vec<u8>),
}

/// One operation of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    KvSet {
        key: Vec<u8>,
        value: Vec<u8>,
        durability: Durability,
        ttl_ms: u64,
        condition: SetCondition,
    },
    KvGet {
        key: Vec<u8>,
        durability: Durability,
        revision: u64,
    },
    KvDelete {
        key: Vec<u8>,
        durability: Durability,
        expected_revision: u64,
    },
    KvExists {
        key: Vec<u8>,
        durability: Durability,
    },
    KvExtend {
        key: Vec<u8>,
        durability: Durability,
        ttl_ms: u64,
    },
    KvScan {
        prefix: Vec<u8>,
        durability: Durability,
        start_after: Option<Vec<u8>>,
        limit: u32,
    },
    KvHistory {
        key: Vec<u8>,
        durability: Durability,
        limit: u32,
    },
    LockAcquire {
        resource: Vec<u8>,
        owner: Vec<u8>,
        lease_ms: u64,
        durability: Durability,
    },
    LockExtend {
        resource: Vec<u8>,
        owner: Vec<u8>,
        lease_ms: u64,
        durability: Durability,
        fencing_token: u64,
    },
    LockRelease {
        resource: Vec<u8>,
        owner: Vec<u8>,
        durability: Durability,
        fencing_token: u64,
    },
    LockGet {
        resource: Vec<u8>,
        durability: Durability,
    },
    SeqNext {
        name: Vec<u8>,
        count: u64,
    },
    /// The cluster's nodes and partitions; not routed by key.
    ClusterStatus {
        scope: StatusScope,
        checksums: bool,
    },
    /// A piece of a backup of the partition holding `key` (see the schema's `Backup`).
    Backup {
        key: Vec<u8>,
        offset: u64,
        index: u64,
    },
    /// Splits the partition holding `key` at `at` (empty: its leader picks the middle).
    Split {
        key: Vec<u8>,
        at: Vec<u8>,
    },
    /// Reads or changes the membership (see the schema's `Membership`); routed to the meta
    /// range by the serving node.
    Membership {
        action: MemberAction,
        node: u64,
        client_addr: String,
        peer_addr: String,
        shards: u32,
    },
    /// Compare / then / else on one partition, atomically (see the schema's `Txn`).
    Txn {
        compare: Vec<Compare>,
        then: Vec<Op>,
        otherwise: Vec<Op>,
    },
    /// One step of a replica move, on the leader of the partition starting at `key`.
    MoveReplica {
        key: Vec<u8>,
        partition: u64,
        epoch: u64,
        add: u64,
        remove: u64,
        /// Instead of a move: make this voter the preferred leader (0: none).
        lead: u64,
    },
    /// A step of Kahuna's own protocols between nodes, routed by `key` (see the schema's
    /// `Internal`). Never from a client.
    Internal {
        key: Vec<u8>,
        payload: Vec<u8>,
        /// Served as a read (see the schema).
        read: bool,
    },
    /// A script, run server-side in one partition (see the schema's `Script`).
    Script {
        source: String,
        params: Vec<(String, Vec<u8>)>,
        /// The first key the script names (filled in by the serving node; routes it).
        key: Vec<u8>,
    },
}

/// One condition of a [`Op::Txn`]: `target(key) op value|number`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
    pub value: Vec<u8>,
    pub number: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Value,
    Revision,
    Exists,
    LockOwner,
    FencingToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a [`Op::Membership`] does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemberAction {
    #[default]
    List,
    Join,
    Drain,
    Remove,
    Activate,
    BalanceOn,
    BalanceOff,
}

/// A member as [`Reply::Membership`] lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    pub shards: u32,
    pub state: String,
    pub removing: bool,
    pub replicas: u32,
}

/// Which replicas a [`Op::ClusterStatus`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusScope {
    /// Every node, asked by the serving node.
    #[default]
    Cluster,
    /// The serving node's replicas.
    Node,
    /// One shard's replicas.
    Shard,
}

impl Op {
    /// The key that routes this operation to its partition.
    pub fn routing_key(&self) -> &[u8] {
        match self {
            Op::KvSet { key, .. }
            | Op::KvGet { key, .. }
            | Op::KvDelete { key, .. }
            | Op::KvExists { key, .. }
            | Op::KvExtend { key, .. }
            | Op::KvHistory { key, .. } => key,
            Op::KvScan { prefix, .. } => prefix,
            Op::LockAcquire { resource, .. }
            | Op::LockExtend { resource, .. }
            | Op::LockRelease { resource, .. }
            | Op::LockGet { resource, .. } => resource,
            Op::SeqNext { name, .. } => name,
            Op::Backup { key, .. } | Op::Split { key, .. } | Op::MoveReplica { key, .. } => key,
            Op::Internal { key, .. } | Op::Script { key, .. } => key,
            Op::ClusterStatus { .. } => &[],
            Op::Membership { .. } => MEMBERS_PREFIX,
            Op::Txn { compare, then, otherwise } => match compare.first() {
                Some(c) => &c.key,
                None => then.iter().chain(otherwise).next().map(|o| o.routing_key()).unwrap_or(&[]),
            },
        }
    }

    /// The key whose partition serves this operation: the routing key, but for a scan that
    /// resumes after a cursor, the cursor (the next page starts in the cursor's partition).
    pub fn position_key(&self) -> &[u8] {
        match self {
            Op::KvScan { prefix, start_after: Some(c), .. } if c.as_slice() > prefix.as_slice() => {
                c
            }
            other => other.routing_key(),
        }
    }

    pub fn durability(&self) -> Durability {
        match self {
            Op::KvSet { durability, .. }
            | Op::KvGet { durability, .. }
            | Op::KvDelete { durability, .. }
            | Op::KvExists { durability, .. }
            | Op::KvExtend { durability, .. }
            | Op::KvScan { durability, .. }
            | Op::KvHistory { durability, .. }
            | Op::LockAcquire { durability, .. }
            | Op::LockExtend { durability, .. }
            | Op::LockRelease { durability, .. }
            | Op::LockGet { durability, .. } => *durability,
            // A transaction is ephemeral when every step is (see `Limits::validate`: they are
            // all alike), and runs on its partition leader's memory.
            Op::Txn { then, otherwise, .. }
                if then.iter().chain(otherwise).next().is_some()
                    && then
                        .iter()
                        .chain(otherwise)
                        .all(|s| s.durability() == Durability::Ephemeral) =>
            {
                Durability::Ephemeral
            }
            Op::SeqNext { .. }
            | Op::ClusterStatus { .. }
            | Op::Backup { .. }
            | Op::Split { .. }
            | Op::Membership { .. }
            | Op::MoveReplica { .. }
            | Op::Txn { .. }
            | Op::Internal { .. }
            | Op::Script { .. } => Durability::Persistent,
        }
    }

    /// Reads change nothing and may be served from the applied state after a ReadIndex.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Op::KvGet { .. }
                | Op::KvExists { .. }
                | Op::KvScan { .. }
                | Op::KvHistory { .. }
                | Op::LockGet { .. }
                | Op::ClusterStatus { .. }
                | Op::Backup { .. }
                | Op::Membership { action: MemberAction::List, .. }
                | Op::Internal { read: true, .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::KvSet { .. } => "kv set",
            Op::KvGet { .. } => "kv get",
            Op::KvDelete { .. } => "kv delete",
            Op::KvExists { .. } => "kv exists",
            Op::KvExtend { .. } => "kv extend",
            Op::KvScan { .. } => "kv scan",
            Op::KvHistory { .. } => "kv history",
            Op::LockAcquire { .. } => "lock acquire",
            Op::LockExtend { .. } => "lock extend",
            Op::LockRelease { .. } => "lock release",
            Op::LockGet { .. } => "lock get",
            Op::SeqNext { .. } => "seq next",
            Op::ClusterStatus { .. } => "cluster status",
            Op::Backup { .. } => "backup",
            Op::Split { .. } => "cluster split",
            Op::Membership { .. } => "cluster membership",
            Op::MoveReplica { .. } => "move replica",
            Op::Txn { .. } => "txn",
            Op::Internal { .. } => "internal",
            Op::Script { .. } => "script",
        }
    }
}

/// One key/value revision as a client sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvItem {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub revision: u64,
    /// Unix milliseconds on the leader's hybrid clock; 0 = never.
    pub expires_at_ms: u64,
    /// True for a history entry that records a delete.
    pub deleted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockState {
    /// Acquire: the caller holds the lock now. Get: somebody holds it now.
    pub acquired: bool,
    pub fencing_token: u64,
    pub owner: Option<Vec<u8>>,
    pub expires_at_ms: u64,
}

/// The successful answer to one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    KvSet {
        revision: u64,
    },
    KvGet(KvItem),
    KvDelete {
        deleted: bool,
        revision: u64,
    },
    KvExists {
        exists: bool,
        revision: u64,
    },
    KvExtend {
        revision: u64,
        expires_at_ms: u64,
    },
    /// `covered_to`: between nodes only (see the schema's `KvScanResult`); `None` to clients.
    KvScan {
        items: Vec<KvItem>,
        next: Option<Vec<u8>>,
        covered_to: Option<Vec<u8>>,
    },
    KvHistory {
        items: Vec<KvItem>,
    },
    Lock(LockState),
    LockAck {
        fencing_token: u64,
        expires_at_ms: u64,
    },
    Seq {
        first: u64,
        count: u64,
    },
    ClusterStatus(ClusterStatus),
    BackupChunk(BackupChunk),
    Split {
        left: u64,
        right: u64,
        at: Vec<u8>,
        epoch: u64,
    },
    Membership {
        members: Vec<MemberInfo>,
        balance: bool,
        map: Vec<u8>,
    },
    MoveReplica {
        step: String,
        epoch: u64,
    },
    /// Whether every compare held, and each step's answer in order.
    Txn {
        succeeded: bool,
        results: Vec<Result<Reply, WireError>>,
    },
    /// The answer to an [`Op::Internal`] step.
    Internal {
        payload: Vec<u8>,
    },
    /// What a script returned, as JSON.
    Script {
        json: String,
    },
}

/// A piece of a partition's backup (see the schema's `BackupChunkResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupChunk {
    pub partition: u64,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub index: u64,
    pub term: u64,
    pub hlc: u64,
    pub total: u64,
    pub crc: u32,
    pub offset: u64,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaRole {
    #[default]
    Follower,
    Candidate,
    PreCandidate,
    Leader,
    /// Receives the log without voting: a replica a move is adding.
    Learner,
}

impl ReplicaRole {
    pub fn name(self) -> &'static str {
        match self {
            ReplicaRole::Follower => "follower",
            ReplicaRole::Candidate => "candidate",
            ReplicaRole::PreCandidate => "pre-candidate",
            ReplicaRole::Leader => "leader",
            ReplicaRole::Learner => "learner",
        }
    }
}

/// One replica of a partition, as its own node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub node: u64,
    pub shard: u32,
    pub role: ReplicaRole,
    pub term: u64,
    /// The leader this replica knows of (0 = none).
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub ephemeral_bytes: u64,
    /// CRC32C of the range (low 32 bits) and its key count (high 32 bits) at
    /// `checksum_index`; 0 when not asked.
    pub checksum: u64,
    pub checksum_index: u64,
    /// On the leader: requests a second it served (over the split window).
    pub qps: u64,
    /// On the leader: the partition's approximate size on disk.
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    pub id: u64,
    pub start: Vec<u8>,
    /// Empty = the end of the key space.
    pub end: Vec<u8>,
    /// Placement: the nodes meant to hold a replica, the preferred leader first.
    pub replicas: Vec<u64>,
    /// The replicas that answered.
    pub status: Vec<ReplicaStatus>,
    /// Counts the partition's splits: a descriptor with a higher epoch replaces a lower one.
    pub epoch: u64,
}

impl PartitionStatus {
    /// The leader, as the replica with the highest term that claims leadership says.
    pub fn leader(&self) -> Option<&ReplicaStatus> {
        self.status.iter().filter(|r| r.role == ReplicaRole::Leader).max_by_key(|r| r.term)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub up: bool,
    pub client_address: String,
    pub peer_address: String,
    pub shards: u32,
    /// Why it is marked down.
    pub error: String,
    /// Requests it forwarded to another node since it started.
    pub forwarded: u64,
    /// The median offset of the other nodes' clocks from this one's, in ms (positive: ahead).
    pub clock_offset_ms: i64,
    /// False while this node's clock is too far from most of its peers' to grant leases.
    pub clock_ok: bool,
}

impl Default for NodeStatus {
    fn default() -> Self {
        NodeStatus {
            id: 0,
            up: false,
            client_address: String::new(),
            peer_address: String::new(),
            shards: 0,
            error: String::new(),
            forwarded: 0,
            clock_offset_ms: 0,
            clock_ok: true,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The node that gathered the answer.
    pub answered_by: u64,
    pub nodes: Vec<NodeStatus>,
    /// Sorted by key range.
    pub partitions: Vec<PartitionStatus>,
}

impl ClusterStatus {
    /// Folds another answer in: its nodes, and its replicas into the partitions they belong to.
    pub fn merge(&mut self, other: ClusterStatus) {
        for n in other.nodes {
            match self.nodes.iter_mut().find(|m| m.id == n.id) {
                Some(m) => *m = n,
                None => self.nodes.push(n),
            }
        }
        for p in other.partitions {
            match self.partitions.iter_mut().find(|q| q.id == p.id) {
                Some(q) => {
                    // Replicas that applied a split report the newer range.
                    if p.epoch > q.epoch {
                        (q.start, q.end, q.epoch) = (p.start, p.end, p.epoch);
                    }
                    for r in p.status {
                        q.status.retain(|s| s.node != r.node);
                        q.status.push(r);
                    }
                }
                None => self.partitions.push(p),
            }
        }
        self.nodes.sort_by_key(|n| n.id);
        self.partitions.sort_by(|a, b| a.start.cmp(&b.start));
        for p in &mut self.partitions {
            p.status.sort_by_key(|r| r.node);
        }
    }

    /// The partition that owns `key`.
    pub fn locate(&self, key: &[u8]) -> Option<&PartitionStatus> {
        self.partitions.iter().find(|p| p.contains(key))
    }
}

/// Where member records live (the core crate's `membership::MEMBERS_PREFIX`, which checks it
/// equals this): a membership request routes there.
pub const MEMBERS_PREFIX: &[u8] = b"\0kahuna/members/";
