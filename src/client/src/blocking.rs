//! A blocking wrapper: the async client driven by a private single-threaded tokio runtime.
//! Every method mirrors [`crate::Client`]'s.

use tokio::runtime::Runtime;

use crate::{
    BackupChunk, ClientOptions, ClusterStatus, DeleteOptions, Durability, Error, GetOptions,
    KvItem, LockState, Op, Reply, ScanOptions, ScanPage, SetOptions,
};

pub struct Client {
    rt: Runtime,
    inner: crate::Client,
}

impl Client {
    pub fn connect<S: AsRef<str>>(endpoints: &[S], opts: ClientOptions) -> Result<Client, Error> {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                Error::new(crate::ErrorCode::Internal, format!("starting a runtime: {e}"))
            })?;
        let inner = rt.block_on(crate::Client::connect(endpoints, opts))?;
        Ok(Client { rt, inner })
    }

    /// A client that has not touched the network yet: its first call connects (and retries
    /// a refused connection like any request that was never sent, until its deadline).
    pub fn new<S: AsRef<str>>(endpoints: &[S], opts: ClientOptions) -> Result<Client, Error> {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                Error::new(crate::ErrorCode::Internal, format!("starting a runtime: {e}"))
            })?;
        let inner = crate::Client::new(endpoints, opts)?;
        Ok(Client { rt, inner })
    }

    pub fn call(&self, op: Op) -> Result<Reply, Error> {
        self.rt.block_on(self.inner.call(op))
    }
    pub fn backup_chunk(&self, key: &[u8], offset: u64, index: u64) -> Result<BackupChunk, Error> {
        self.rt.block_on(self.inner.backup_chunk(key, offset, index))
    }
    pub fn kv_set(&self, key: &[u8], value: &[u8], o: SetOptions) -> Result<u64, Error> {
        self.rt.block_on(self.inner.kv_set(key, value, o))
    }
    pub fn kv_get(&self, key: &[u8], o: GetOptions) -> Result<KvItem, Error> {
        self.rt.block_on(self.inner.kv_get(key, o))
    }
    pub fn kv_delete(&self, key: &[u8], o: DeleteOptions) -> Result<(bool, u64), Error> {
        self.rt.block_on(self.inner.kv_delete(key, o))
    }
    pub fn kv_exists(&self, key: &[u8], d: Durability) -> Result<(bool, u64), Error> {
        self.rt.block_on(self.inner.kv_exists(key, d))
    }
    pub fn kv_extend(&self, key: &[u8], ttl_ms: u64, d: Durability) -> Result<u64, Error> {
        self.rt.block_on(self.inner.kv_extend(key, ttl_ms, d))
    }
    pub fn kv_scan(&self, prefix: &[u8], o: ScanOptions) -> Result<ScanPage, Error> {
        self.rt.block_on(self.inner.kv_scan(prefix, o))
    }
    pub fn kv_history(&self, key: &[u8], limit: u32, d: Durability) -> Result<Vec<KvItem>, Error> {
        self.rt.block_on(self.inner.kv_history(key, limit, d))
    }
    pub fn lock_acquire(
        &self,
        r: &[u8],
        owner: &[u8],
        lease_ms: u64,
        d: Durability,
    ) -> Result<LockState, Error> {
        self.rt.block_on(self.inner.lock_acquire(r, owner, lease_ms, d))
    }
    pub fn lock_extend(
        &self,
        r: &[u8],
        owner: &[u8],
        lease_ms: u64,
        d: Durability,
    ) -> Result<u64, Error> {
        self.rt.block_on(self.inner.lock_extend(r, owner, lease_ms, d))
    }
    pub fn lock_release(&self, r: &[u8], owner: &[u8], d: Durability) -> Result<(), Error> {
        self.rt.block_on(self.inner.lock_release(r, owner, d))
    }
    pub fn lock_get(&self, r: &[u8], d: Durability) -> Result<LockState, Error> {
        self.rt.block_on(self.inner.lock_get(r, d))
    }
    pub fn cluster_status(&self, checksums: bool) -> Result<ClusterStatus, Error> {
        self.rt.block_on(self.inner.cluster_status(checksums))
    }
    pub fn txn(
        &self,
        compare: Vec<crate::Compare>,
        then: Vec<crate::Op>,
        otherwise: Vec<crate::Op>,
    ) -> Result<(bool, Vec<Result<crate::Reply, crate::WireError>>), Error> {
        self.rt.block_on(self.inner.txn(compare, then, otherwise))
    }

    /// Runs `body` in an interactive transaction and commits it, again (with a fresh
    /// transaction, after a backoff from 10 ms doubling to 500 ms) while it meets CONFLICT, up to
    /// `attempts` times. Any other error ends it; a TIMEOUT of the commit (outcome unknown) is
    /// answered, never retried.
    pub fn transact<T>(
        &self,
        timeout: std::time::Duration,
        attempts: u32,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut pause = std::time::Duration::from_millis(10);
        let mut tried = 0;
        loop {
            tried += 1;
            let mut t = self.begin(timeout);
            let r = body(&mut t).and_then(|v| t.commit().map(|()| v));
            match r {
                Err(e) if e.code == crate::ErrorCode::Conflict && tried < attempts => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// Begins an interactive transaction (see [`crate::Transaction`]).
    pub fn begin(&self, timeout: std::time::Duration) -> Transaction<'_> {
        Transaction { rt: &self.rt, inner: self.inner.begin(timeout) }
    }

    pub fn script(&self, source: &str, params: Vec<(String, Vec<u8>)>) -> Result<String, Error> {
        self.rt.block_on(self.inner.script(source, params))
    }

    pub fn membership(
        &self,
        action: crate::MemberAction,
        node: u64,
    ) -> Result<(Vec<crate::MemberInfo>, bool), Error> {
        self.rt.block_on(self.inner.membership(action, node))
    }

    pub fn split(&self, key: &[u8], at: &[u8]) -> Result<(u64, u64, Vec<u8>, u64), Error> {
        self.rt.block_on(self.inner.split(key, at))
    }

    pub fn seq_next(&self, name: &[u8], count: u64) -> Result<(u64, u64), Error> {
        self.rt.block_on(self.inner.seq_next(name, count))
    }
}

/// An interactive transaction of a blocking client (see [`crate::Transaction`]).
pub struct Transaction<'a> {
    rt: &'a Runtime,
    inner: crate::Transaction,
}

impl Transaction<'_> {
    pub fn get(&mut self, key: &[u8]) -> Result<Option<crate::KvItem>, Error> {
        self.rt.block_on(self.inner.get(key))
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], ttl_ms: u64) -> Result<(), Error> {
        self.inner.set(key, value, ttl_ms)
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        self.inner.delete(key)
    }

    pub fn commit(self) -> Result<(), Error> {
        self.rt.block_on(self.inner.commit())
    }

    pub fn rollback(self) {
        self.inner.rollback()
    }
}
