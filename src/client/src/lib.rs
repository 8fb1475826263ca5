//! The thin Kahuna client: async on tokio, with a blocking wrapper ([`blocking::Client`]).
//!
//! Owns: connections to any nodes (a small pool per endpoint), pipelining (many requests in
//! flight per connection, answers matched by id), a deadline per call, retries with
//! exponential backoff for errors that are safe to retry, and a routing cache ([`routes`]) that
//! sends each key's requests straight to its partition's leader. Must never: depend on the
//! server's stack (glommio, RocksDB), or retry a write whose outcome is unknown.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kahuna_client::Error> {
//! use kahuna_client::{Client, ClientOptions, Durability, SetOptions};
//! let client = Client::connect(&["127.0.0.1:7000"], ClientOptions::default()).await?;
//! // Key/value: a persistent write returns the key's new revision.
//! let rev = client.kv_set(b"orders/1", b"{\"qty\":3}", SetOptions::default()).await?;
//! // Compare-and-set on that revision; a stale revision fails with CONFLICT.
//! client.kv_set(b"orders/1", b"{\"qty\":4}", SetOptions::default().if_revision(rev)).await?;
//! let item = client.kv_get(b"orders/1", Default::default()).await?;
//! assert_eq!(item.revision, rev + 1);
//! // An ephemeral key with a TTL: leader memory only, fastest.
//! client.kv_set(b"session/9", b"x", SetOptions::default().ttl_ms(5000).durability(Durability::Ephemeral)).await?;
//! let page = client.kv_scan(b"orders/", Default::default()).await?;
//! println!("{} keys, next page after {:?}", page.items.len(), page.next);
//! client.kv_delete(b"orders/1", Default::default()).await?;
//! // Locks: the fencing token grows with every grant.
//! let lock = client.lock_acquire(b"jobs/nightly", b"worker-a", 10_000, Durability::Persistent).await?;
//! if lock.acquired {
//!     client.lock_extend(b"jobs/nightly", b"worker-a", 10_000, Durability::Persistent).await?;
//!     client.lock_release(b"jobs/nightly", b"worker-a", Durability::Persistent).await?;
//! }
//! // Sequences: a block of 100 unique, increasing numbers.
//! let (first, count) = client.seq_next(b"invoice-ids", 100).await?;
//! # Ok(()) }
//! ```

pub mod blocking;
mod conn;
pub mod interactive;
mod routes;

pub use interactive::Transaction;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use flatbuffers::FlatBufferBuilder;
use kahuna_protocol::{encode_request, DEFAULT_MAX_FRAME_BYTES};
pub use kahuna_protocol::{
    BackupChunk, ClusterStatus, Compare, CompareOp, CompareTarget, Durability, ErrorCode, KvItem,
    LockState, MemberAction, MemberInfo, NodeStatus, Op, PartitionStatus, ReplicaRole,
    ReplicaStatus, Reply, SetCondition, StatusScope, WireError,
};
use tokio::sync::Mutex;

use conn::Conn;

/// Every client error carries a stable code and a message: the server's, or the client's own
/// (`UNAVAILABLE` when no node answers, `TIMEOUT` when the deadline passes).
pub type Error = WireError;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline of one call, retries included.
    pub timeout: Duration,
    /// Connections opened to each endpoint; requests are spread over them.
    pub connections_per_endpoint: usize,
    /// First retry backoff; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_frame_bytes: usize,
    /// Longest wait for a new connection. A host that does not answer (powered off, cut off)
    /// costs this, then the request goes to another node, instead of the caller's deadline.
    pub connect_timeout: Duration,
    /// Learn the cluster's partitions and leaders (one `cluster status` in the background at
    /// connect, then the leader hint of every answer) and send each request to its key's
    /// leader. Off, requests go round-robin to `endpoints` and the nodes forward them.
    pub route_to_leaders: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connections_per_endpoint: 1,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(500),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            connect_timeout: Duration::from_secs(1),
            route_to_leaders: true,
        }
    }
}

/// Options of [`Client::kv_set`].
#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    pub durability: Durability,
    pub ttl_ms: u64,
    pub condition: SetCondition,
}

impl SetOptions {
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    pub fn ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }
    pub fn if_revision(mut self, revision: u64) -> Self {
        self.condition = SetCondition::IfRevision(revision);
        self
    }
    pub fn if_value(mut self, value: &[u8]) -> Self {
        self.condition = SetCondition::IfValue(value.to_vec());
        self
    }
    pub fn if_exists(mut self) -> Self {
        self.condition = SetCondition::IfExists;
        self
    }
    pub fn if_not_exists(mut self) -> Self {
        self.condition = SetCondition::IfNotExists;
        self
    }
}

/// Options of [`Client::kv_get`]: `revision` 0 = latest.
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    pub durability: Durability,
    pub revision: u64,
}

/// Options of [`Client::kv_delete`]: `expected_revision` 0 = unconditional.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub durability: Durability,
    pub expected_revision: u64,
}

/// Options of [`Client::kv_scan`]: `limit` 0 = the server's default page size.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    pub durability: Durability,
    pub limit: u32,
    /// The `next` cursor of the previous page.
    pub start_after: Option<Vec<u8>>,
}

/// One page of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<KvItem>,
    /// Pass as `start_after` for the next page; `None` when the scan is complete.
    pub next: Option<Vec<u8>>,
}

struct Endpoint {
    addr: String,
    conns: Vec<Mutex<Option<Arc<Conn>>>>,
}

impl Endpoint {
    fn new(addr: &str, per: usize) -> Endpoint {
        Endpoint { addr: addr.to_string(), conns: (0..per).map(|_| Mutex::new(None)).collect() }
    }
}

/// A connection pool to one or more nodes. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configured endpoints first, then node addresses learned from the cluster.
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    /// How many of `endpoints` the caller gave: round-robin picks among these.
    configured: usize,
    opts: ClientOptions,
    next_id: AtomicU64,
    rr: AtomicUsize,
    routes: std::sync::Mutex<routes::Routes>,
    refreshing: AtomicBool,
}

/// Operations that belong to one key's partition (a scan may span several; status, none).
fn routed_key(op: &Op) -> Option<&[u8]> {
    match op {
        Op::KvScan { .. } | Op::ClusterStatus { .. } => None,
        op => Some(op.routing_key()),
    }
}

fn unexpected(r: Reply) -> Error {
    WireError::new(ErrorCode::Internal, format!("unexpected answer {r:?}"))
}

impl Client {
    /// Creates a client for `endpoints` (`host:port`). Connections open lazily; this checks
    /// that at least one endpoint answers.
    pub async fn connect<S: AsRef<str>>(
        endpoints: &[S],
        opts: ClientOptions,
    ) -> Result<Client, Error> {
        let client = Self::new(endpoints, opts)?;
        let mut last = None;
        for i in 0..client.inner.configured {
            match client.conn(i, 0).await {
                Ok(_) => {
                    client.refresh_routes();
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| WireError::new(ErrorCode::Unavailable, "no endpoints")))
    }

    /// Creates a client without touching the network.
    pub fn new<S: AsRef<str>>(endpoints: &[S], opts: ClientOptions) -> Result<Client, Error> {
        if endpoints.is_empty() {
            return Err(WireError::new(ErrorCode::Invalid, "at least one endpoint is needed"));
        }
        let per = opts.connections_per_endpoint.max(1);
        let endpoints: Vec<Arc<Endpoint>> =
            endpoints.iter().map(|e| Arc::new(Endpoint::new(e.as_ref(), per))).collect();
        Ok(Client {
            inner: Arc::new(Inner {
                configured: endpoints.len(),
                endpoints: RwLock::new(endpoints),
                opts,
                next_id: AtomicU64::new(1),
                rr: AtomicUsize::new(0),
                routes: Default::default(),
                refreshing: AtomicBool::new(false),
            }),
        })
    }

    /// Reloads the routing cache in the background (one at a time), if routing is on.
    fn refresh_routes(&self) {
        if !self.inner.opts.route_to_leaders || self.inner.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.refreshing.store(false, Ordering::SeqCst);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            if let Ok(st) = me.cluster_status(false).await {
                me.inner.routes.lock().unwrap().load(&st);
            }
            // At most one reload per second, however many hints name unknown nodes.
            tokio::time::sleep(Duration::from_secs(1)).await;
            me.inner.refreshing.store(false, Ordering::SeqCst);
        });
    }

    /// The endpoint index of `addr`, adding it when it is new.
    fn endpoint_of(&self, addr: &str) -> usize {
        if let Some(i) = self.inner.endpoints.read().unwrap().iter().position(|e| e.addr == addr) {
            return i;
        }
        let mut eps = self.inner.endpoints.write().unwrap();
        if let Some(i) = eps.iter().position(|e| e.addr == addr) {
            return i;
        }
        let per = self.inner.opts.connections_per_endpoint.max(1);
        eps.push(Arc::new(Endpoint::new(addr, per)));
        eps.len() - 1
    }

    /// Where a request for `partition` should go: its leader's endpoint, if known.
    fn leader_endpoint(&self, partition: Option<u64>) -> Option<usize> {
        let addr = self.inner.routes.lock().unwrap().leader_addr(partition?)?.to_string();
        Some(self.endpoint_of(&addr))
    }

    async fn conn(&self, endpoint: usize, slot: usize) -> Result<Arc<Conn>, Error> {
        let ep = self.inner.endpoints.read().unwrap()[endpoint].clone();
        let mut guard = ep.conns[slot].lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let open = Conn::open(&ep.addr, self.inner.opts.max_frame_bytes);
        let c = match tokio::time::timeout(self.inner.opts.connect_timeout, open).await {
            Ok(c) => Arc::new(c?),
            // Nothing was sent: safe to try another node.
            Err(_) => {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    format!("connecting to {} timed out", ep.addr),
                ))
            }
        };
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Sends one operation and waits for its answer, retrying what is safe to retry until the
    /// client's deadline.
    pub async fn call(&self, op: Op) -> Result<Reply, Error> {
        self.call_with_timeout(op, self.inner.opts.timeout).await
    }

    pub async fn call_with_timeout(&self, op: Op, timeout: Duration) -> Result<Reply, Error> {
        let deadline = Instant::now() + timeout;
        let is_read = op.is_read();
        let mut backoff = self.inner.opts.backoff_initial;
        let mut fbb = FlatBufferBuilder::new();
        let n_ep = self.inner.configured;
        let per = self.inner.opts.connections_per_endpoint.max(1);
        let partition = match routed_key(&op) {
            Some(key) if self.inner.opts.route_to_leaders => {
                self.inner.routes.lock().unwrap().partition_of(key)
            }
            _ => None,
        };
        loop {
            let pick = self.inner.rr.fetch_add(1, Ordering::Relaxed);
            let (endpoint, slot) = match self.leader_endpoint(partition) {
                Some(e) => (e, pick % per),
                None => ((pick / per) % n_ep, pick % per),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WireError::new(
                    ErrorCode::Timeout,
                    "deadline passed before the request could be sent",
                ));
            }
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let mut frame = Vec::new();
            encode_request(
                &mut fbb,
                id,
                left.as_millis().min(u32::MAX as u128) as u32,
                &op,
                &mut frame,
            );
            let attempt = async {
                let conn = self.conn(endpoint, slot).await.map_err(|e| (e, 0))?;
                let rx = conn.send(id, frame).await.map_err(|e| (e, 0))?;
                // From here on the server may have the request.
                match tokio::time::timeout(left, rx).await {
                    Ok(Ok((Ok(reply), hint))) => Ok((reply, hint)),
                    Ok(Ok((Err(e), hint))) => Err((e, hint)),
                    Ok(Err(_)) => Err((sent_and_lost(is_read), 0)),
                    Err(_) => {
                        conn.forget(id);
                        let e = WireError::new(
                            ErrorCode::Timeout,
                            "deadline passed waiting for the answer",
                        );
                        Err((e, 0))
                    }
                }
            };
            let outcome = match tokio::time::timeout(left, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    Err((WireError::new(ErrorCode::Timeout, "deadline passed connecting"), 0))
                }
            };
            if let Some(p) = partition {
                // Every answer names the node that served it, or the leader a refusal points to;
                // 0 (a connection failure, say) forgets the entry.
                let hint = match &outcome {
                    Ok((_, hint)) | Err((_, hint)) => *hint,
                };
                if self.inner.routes.lock().unwrap().learn(p, hint) {
                    self.refresh_routes();
                }
            } else if routed_key(&op).is_some()
                && self.inner.opts.route_to_leaders
                && !self.inner.routes.lock().unwrap().is_loaded()
            {
                self.refresh_routes();
            }
            let err = match outcome {
                Ok((reply, _)) => return Ok(reply),
                Err((e, _)) => e,
            };
            if err.code == ErrorCode::Moved && self.inner.opts.route_to_leaders {
                // A partition split under the request: learn the new ranges.
                self.refresh_routes();
            }
            if !err.code.is_retryable() {
                return Err(err);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left <= backoff {
                if err.code == ErrorCode::NotLeader {
                    // Out of time while no leader was found (a lost quorum, an election): say
                    // so; nothing was applied.
                    let msg = format!("no leader answered before the deadline ({})", err.message);
                    return Err(WireError::new(ErrorCode::Unavailable, msg));
                }
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.inner.opts.backoff_max);
        }
    }

    /// The cluster's nodes and every partition's replicas (range, role, term, commit and
    /// applied index), gathered by the node that answers; nodes that do not answer within a
    /// second are listed down. `checksums` also checksums every replica's key range (reads
    /// every key: for audits, not dashboards).
    pub async fn cluster_status(&self, checksums: bool) -> Result<ClusterStatus, Error> {
        match self.call(Op::ClusterStatus { scope: StatusScope::Cluster, checksums }).await? {
            Reply::ClusterStatus(st) => Ok(st),
            r => Err(unexpected(r)),
        }
    }

    pub async fn kv_set(&self, key: &[u8], value: &[u8], o: SetOptions) -> Result<u64, Error> {
        let op = Op::KvSet {
            key: key.to_vec(),
            value: value.to_vec(),
            durability: o.durability,
            ttl_ms: o.ttl_ms,
            condition: o.condition,
        };
        match self.call(op).await? {
            Reply::KvSet { revision } => Ok(revision),
            r => Err(unexpected(r)),
        }
    }

    /// The latest (or the asked) revision of a key; a missing key is `NOT_FOUND`.
    pub async fn kv_get(&self, key: &[u8], o: GetOptions) -> Result<KvItem, Error> {
        match self
            .call(Op::KvGet { key: key.to_vec(), durability: o.durability, revision: o.revision })
            .await?
        {
            Reply::KvGet(item) => Ok(item),
            r => Err(unexpected(r)),
        }
    }

    /// Returns whether the key existed (and so was deleted) and the delete's revision.
    pub async fn kv_delete(&self, key: &[u8], o: DeleteOptions) -> Result<(bool, u64), Error> {
        let op = Op::KvDelete {
            key: key.to_vec(),
            durability: o.durability,
            expected_revision: o.expected_revision,
        };
        match self.call(op).await? {
            Reply::KvDelete { deleted, revision } => Ok((deleted, revision)),
            r => Err(unexpected(r)),
        }
    }

    /// Whether the key exists now, and its revision (0 if not).
    pub async fn kv_exists(
        &self,
        key: &[u8],
        durability: Durability,
    ) -> Result<(bool, u64), Error> {
        match self.call(Op::KvExists { key: key.to_vec(), durability }).await? {
            Reply::KvExists { exists, revision } => Ok((exists, revision)),
            r => Err(unexpected(r)),
        }
    }

    /// Sets a new time to live from now (0 removes it); returns the new expiry.
    pub async fn kv_extend(
        &self,
        key: &[u8],
        ttl_ms: u64,
        durability: Durability,
    ) -> Result<u64, Error> {
        match self.call(Op::KvExtend { key: key.to_vec(), durability, ttl_ms }).await? {
            Reply::KvExtend { expires_at_ms, .. } => Ok(expires_at_ms),
            r => Err(unexpected(r)),
        }
    }

    /// One page of the keys under `prefix`, in key order.
    pub async fn kv_scan(&self, prefix: &[u8], o: ScanOptions) -> Result<ScanPage, Error> {
        let op = Op::KvScan {
            prefix: prefix.to_vec(),
            durability: o.durability,
            start_after: o.start_after,
            limit: o.limit,
        };
        match self.call(op).await? {
            Reply::KvScan { items, next, .. } => Ok(ScanPage { items, next }),
            r => Err(unexpected(r)),
        }
    }

    /// The retained revisions of a key, newest first.
    pub async fn kv_history(
        &self,
        key: &[u8],
        limit: u32,
        durability: Durability,
    ) -> Result<Vec<KvItem>, Error> {
        match self.call(Op::KvHistory { key: key.to_vec(), durability, limit }).await? {
            Reply::KvHistory { items } => Ok(items),
            r => Err(unexpected(r)),
        }
    }

    /// Tries to take the lock; `acquired == false` (not an error) when another owner holds it.
    pub async fn lock_acquire(
        &self,
        resource: &[u8],
        owner: &[u8],
        lease_ms: u64,
        durability: Durability,
    ) -> Result<LockState, Error> {
        let op = Op::LockAcquire {
            resource: resource.to_vec(),
            owner: owner.to_vec(),
            lease_ms,
            durability,
        };
        match self.call(op).await? {
            Reply::Lock(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    /// Renews the caller's lease; `NOT_HELD` if it no longer holds the lock.
    pub async fn lock_extend(
        &self,
        resource: &[u8],
        owner: &[u8],
        lease_ms: u64,
        durability: Durability,
    ) -> Result<u64, Error> {
        let op = Op::LockExtend {
            resource: resource.to_vec(),
            owner: owner.to_vec(),
            lease_ms,
            durability,
            fencing_token: 0,
        };
        match self.call(op).await? {
            Reply::LockAck { expires_at_ms, .. } => Ok(expires_at_ms),
            r => Err(unexpected(r)),
        }
    }

    /// Releases the caller's lock; `NOT_HELD` if it no longer holds it.
    pub async fn lock_release(
        &self,
        resource: &[u8],
        owner: &[u8],
        durability: Durability,
    ) -> Result<(), Error> {
        let op = Op::LockRelease {
            resource: resource.to_vec(),
            owner: owner.to_vec(),
            durability,
            fencing_token: 0,
        };
        match self.call(op).await? {
            Reply::LockAck { .. } => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Who holds the lock now, and its last fencing token.
    pub async fn lock_get(
        &self,
        resource: &[u8],
        durability: Durability,
    ) -> Result<LockState, Error> {
        match self.call(Op::LockGet { resource: resource.to_vec(), durability }).await? {
            Reply::Lock(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    /// One piece of a backup of the partition holding `key`: `offset` 0 takes a consistent copy
    /// on its leader; later pieces name that copy by the `index` the first answer gave.
    pub async fn backup_chunk(
        &self,
        key: &[u8],
        offset: u64,
        index: u64,
    ) -> Result<BackupChunk, Error> {
        match self.call(Op::Backup { key: key.to_vec(), offset, index }).await? {
            Reply::BackupChunk(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    /// Compare / then / else, atomically in one partition: whether every compare held, and the
    /// answer of each step of the branch that ran. A write: its outcome may be unknown
    /// (`TIMEOUT`), and it is never sent again behind the caller's back.
    pub async fn txn(
        &self,
        compare: Vec<Compare>,
        then: Vec<Op>,
        otherwise: Vec<Op>,
    ) -> Result<(bool, Vec<Result<Reply, WireError>>), Error> {
        match self.call(Op::Txn { compare, then, otherwise }).await? {
            Reply::Txn { succeeded, results } => Ok((succeeded, results)),
            r => Err(unexpected(r)),
        }
    }

    /// Runs a script server-side as one atomic step of one partition (`params`: `@name` →
    /// value, each a string); answers what it returned, as JSON.
    pub async fn script(
        &self,
        source: &str,
        params: Vec<(String, Vec<u8>)>,
    ) -> Result<String, Error> {
        let op = Op::Script { source: source.to_string(), params, key: Vec::new() };
        match self.call(op).await? {
            Reply::Script { json } => Ok(json),
            r => Err(unexpected(r)),
        }
    }

    /// Reads or changes the membership (`node` is the member a change is about): the members
    /// afterwards and whether the replica balancer runs.
    pub async fn membership(
        &self,
        action: MemberAction,
        node: u64,
    ) -> Result<(Vec<MemberInfo>, bool), Error> {
        let op = Op::Membership {
            action,
            node,
            client_addr: String::new(),
            peer_addr: String::new(),
            shards: 0,
        };
        match self.call(op).await? {
            Reply::Membership { members, balance, .. } => Ok((members, balance)),
            r => Err(unexpected(r)),
        }
    }

    /// A block `[first, first + count)` of the sequence `name`.
    /// Splits the partition holding `key` at `at` (empty: its leader picks the middle of its
    /// keys): `(left id, right id, split key, epoch)`.
    pub async fn split(&self, key: &[u8], at: &[u8]) -> Result<(u64, u64, Vec<u8>, u64), Error> {
        match self.call(Op::Split { key: key.to_vec(), at: at.to_vec() }).await? {
            Reply::Split { left, right, at, epoch } => Ok((left, right, at, epoch)),
            r => Err(unexpected(r)),
        }
    }

    pub async fn seq_next(&self, name: &[u8], count: u64) -> Result<(u64, u64), Error> {
        match self.call(Op::SeqNext { name: name.to_vec(), count }).await? {
            Reply::Seq { first, count } => Ok((first, count)),
            r => Err(unexpected(r)),
        }
    }
}

/// The connection died after the request left: a read can be retried, a write cannot.
fn sent_and_lost(is_read: bool) -> Error {
    if is_read {
        WireError::new(ErrorCode::Unavailable, "connection lost before the answer")
    } else {
        WireError::new(
            ErrorCode::Timeout,
            "connection lost after the write was sent; its outcome is unknown",
        )
    }
}
