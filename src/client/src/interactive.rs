//! Interactive transactions: begin, read and write as the application goes, then commit or
//! roll back. Optimistic: the server holds nothing while the transaction runs (an abandoned
//! one costs it nothing, so there is nothing for it to abort); the commit is one compare /
//! then transaction that applies the buffered writes only if every key read still has the
//! revision it was read at, across partitions too.
//!
//! Owns: the read set (key → revision read, 0 for absent), the write buffer (reads see it),
//! the snapshot rule (each read re-reads the keys read before in the same step and fails
//! CONFLICT at once if any changed: everything the transaction saw held at one moment) and the
//! timeout (a commit after it is refused, nothing applied). Must never: send a write before
//! commit, or retry a commit whose outcome is unknown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kahuna_protocol::{
    Compare, CompareOp, CompareTarget, Durability, ErrorCode, KvItem, Op, Reply, SetCondition,
    WireError,
};

use crate::{Client, Error};

/// The most keys one interactive transaction reads and writes (each read re-reads the ones
/// before it, and the commit compares them all).
pub const MAX_KEYS: usize = 64;

/// A transaction in progress (see the module doc).
pub struct Transaction {
    client: Client,
    reads: BTreeMap<Vec<u8>, u64>,
    writes: BTreeMap<Vec<u8>, Option<(Vec<u8>, u64)>>,
    until: Instant,
}

fn conflict(msg: &str) -> Error {
    WireError::new(
        ErrorCode::Conflict,
        format!("{msg}; nothing was applied, retry the transaction"),
    )
}

fn get(key: &[u8]) -> Op {
    Op::KvGet { key: key.to_vec(), durability: Durability::Persistent, revision: 0 }
}

impl Transaction {
    pub(crate) fn new(client: Client, timeout: Duration) -> Transaction {
        Transaction {
            client,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            until: Instant::now() + timeout,
        }
    }

    fn expired(&self) -> Result<(), Error> {
        if Instant::now() > self.until {
            return Err(conflict("the transaction ran past its timeout"));
        }
        Ok(())
    }

    fn room(&self, key: &[u8]) -> Result<(), Error> {
        let known = self.reads.contains_key(key) || self.writes.contains_key(key);
        let touched =
            self.reads.len() + self.writes.keys().filter(|k| !self.reads.contains_key(*k)).count();
        if !known && touched >= MAX_KEYS {
            let msg = format!("an interactive transaction touches at most {MAX_KEYS} keys");
            return Err(WireError::new(ErrorCode::Invalid, msg));
        }
        Ok(())
    }

    /// The key's value as this transaction sees it: its own write if it made one, else the
    /// value at a moment when every key it read before still had what it read (CONFLICT, at
    /// once, if one changed since).
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<KvItem>, Error> {
        self.expired()?;
        self.room(key)?;
        if let Some(w) = self.writes.get(key) {
            return Ok(w.as_ref().map(|(value, _)| KvItem {
                key: key.to_vec(),
                value: value.clone(),
                ..Default::default()
            }));
        }
        let mut keys: Vec<Vec<u8>> = self.reads.keys().cloned().collect();
        if !self.reads.contains_key(key) {
            keys.push(key.to_vec());
        }
        let (_, results) =
            self.client.txn(vec![], keys.iter().map(|k| get(k)).collect(), vec![]).await?;
        if results.len() != keys.len() {
            // A key left unanswered would go unchecked at commit: a lost update.
            let msg = format!("{} answers for {} reads", results.len(), keys.len());
            return Err(WireError::new(ErrorCode::Internal, msg));
        }
        let mut item = None;
        for (k, r) in keys.iter().zip(results) {
            let (revision, found) = match r {
                Ok(Reply::KvGet(it)) => (it.revision, Some(it)),
                Err(e) if e.code == ErrorCode::NotFound => (0, None),
                Err(e) => return Err(e),
                Ok(other) => {
                    return Err(WireError::new(ErrorCode::Internal, format!("{other:?}")));
                }
            };
            if let Some(seen) = self.reads.get(k) {
                if *seen != revision {
                    return Err(conflict(&format!(
                        "{:?} changed since this transaction read it",
                        String::from_utf8_lossy(k)
                    )));
                }
            }
            self.reads.insert(k.clone(), revision);
            if k.as_slice() == key {
                item = found;
            }
        }
        Ok(item)
    }

    /// Buffers a write (persistent; `ttl_ms` 0: none), applied at commit.
    pub fn set(&mut self, key: &[u8], value: &[u8], ttl_ms: u64) -> Result<(), Error> {
        self.room(key)?;
        self.writes.insert(key.to_vec(), Some((value.to_vec(), ttl_ms)));
        Ok(())
    }

    /// Buffers a delete, applied at commit.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), Error> {
        self.room(key)?;
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    /// Applies the buffered writes if every key read is still as it was read (CONFLICT, nothing
    /// applied, if not; TIMEOUT if the answer was lost: the outcome is unknown).
    pub async fn commit(self) -> Result<(), Error> {
        self.expired()?;
        if self.writes.is_empty() {
            return Ok(()); // read-only: every read was already checked against the others
        }
        let compare = self
            .reads
            .iter()
            .map(|(k, rev)| Compare {
                key: k.clone(),
                target: CompareTarget::Revision,
                op: CompareOp::Equal,
                value: Vec::new(),
                number: *rev,
            })
            .collect();
        let then = self
            .writes
            .into_iter()
            .map(|(key, w)| match w {
                Some((value, ttl_ms)) => Op::KvSet {
                    key,
                    value,
                    durability: Durability::Persistent,
                    ttl_ms,
                    condition: SetCondition::None,
                },
                None => {
                    Op::KvDelete { key, durability: Durability::Persistent, expected_revision: 0 }
                }
            })
            .collect();
        match self.client.txn(compare, then, vec![]).await? {
            (true, _) => Ok(()),
            (false, _) => Err(conflict("a key this transaction read changed before it committed")),
        }
    }

    /// Drops the transaction: nothing was sent, nothing is applied.
    pub fn rollback(self) {}
}

impl Client {
    /// Begins an interactive transaction (see [`Transaction`]); a commit later than `timeout`
    /// is refused.
    pub fn begin(&self, timeout: Duration) -> Transaction {
        Transaction::new(self.clone(), timeout)
    }
}
