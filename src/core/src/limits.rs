//! Request limits, checked before anything is proposed, with a typed error naming the limit.

use kahuna_protocol::{ErrorCode, Op, SetCondition, WireError};

/// Compares and steps of one transaction, at most.
pub const MAX_TXN_PARTS: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_owner_bytes: usize,
    pub max_lease_ms: u64,
    pub max_ttl_ms: u64,
    pub max_seq_count: u64,
    pub max_scan_limit: u32,
    pub default_scan_limit: u32,
    /// A scan page stops early once its values add up to this many bytes.
    pub max_scan_bytes: usize,
    /// How many older revisions of a key are kept for get-at-revision and history.
    pub history_retention: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_owner_bytes: 256,
            max_lease_ms: 24 * 3600 * 1000,
            max_ttl_ms: 10 * 365 * 24 * 3600 * 1000,
            max_seq_count: 1_000_000,
            max_scan_limit: 10_000,
            default_scan_limit: 100,
            max_scan_bytes: 2 << 20,
            history_retention: 32,
        }
    }
}

fn too_large(what: &str, size: usize, limit: usize) -> WireError {
    WireError::new(
        ErrorCode::TooLarge,
        format!("{what} of {size} bytes is over the limit of {limit} bytes"),
    )
}

fn invalid(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Invalid, msg)
}

impl Limits {
    fn key(&self, what: &str, key: &[u8], may_be_empty: bool) -> Result<(), WireError> {
        if key.is_empty() && !may_be_empty {
            return Err(invalid(format!("{what} must not be empty")));
        }
        if key.len() > self.max_key_bytes {
            return Err(too_large(what, key.len(), self.max_key_bytes));
        }
        if key.starts_with(crate::keys::SYSTEM_PREFIX) {
            return Err(invalid(format!(
                "{what}s starting with {:?} are reserved for Kahuna itself",
                String::from_utf8_lossy(crate::keys::SYSTEM_PREFIX)
            )));
        }
        Ok(())
    }

    /// Checks a request another node forwarded: a client's checks, except that the cluster's
    /// own sequence of partition ids (which a splitting leader draws from) may be asked for.
    /// The member records and the balancer switch (see `crate::membership`) may be read and
    /// written too, within the usual sizes.
    pub fn validate_from_peer(&self, op: &Op) -> Result<(), WireError> {
        use crate::membership::{BALANCE_KEY, MEMBERS_PREFIX, REPLICATION_KEY};
        let cluster_key =
            |k: &[u8]| k.starts_with(MEMBERS_PREFIX) || k == BALANCE_KEY || k == REPLICATION_KEY;
        match op {
            Op::SeqNext { name, count: 1 } if name == crate::keys::PARTITION_IDS => Ok(()),
            // The balancer's steps come from the meta range's leader, never from a client.
            Op::MoveReplica { key, .. } if key.len() <= self.max_key_bytes => Ok(()),
            Op::KvGet { key, .. } if cluster_key(key) => Ok(()),
            Op::KvScan { prefix, start_after, limit, .. } if prefix == MEMBERS_PREFIX => {
                if start_after.as_ref().is_some_and(|c| c.len() > self.max_key_bytes) {
                    return Err(too_large("cursor", self.max_key_bytes + 1, self.max_key_bytes));
                }
                self.page(*limit)
            }
            Op::KvSet { key, value, ttl_ms: 0, .. } if cluster_key(key) => {
                if key.len() > self.max_key_bytes || value.len() > self.max_value_bytes {
                    return Err(too_large("member record", value.len(), self.max_value_bytes));
                }
                Ok(())
            }
            Op::Internal { key, payload, read } => {
                self.key("key", key, true)?;
                let op = crate::command::WriteOp::decode_internal(payload)
                    .map_err(|e| invalid(e.to_string()))?;
                use crate::command::WriteOp::{TxnDecide, TxnPrepare};
                let readable = match &op {
                    TxnPrepare { .. } => true,
                    TxnDecide { action, .. } => *action == crate::command::DECIDE_STATUS,
                    _ => false,
                };
                if *read && !readable {
                    return Err(invalid("only a transaction's part or status is read"));
                }
                self.internal(&op, *read)
            }
            other => self.validate(other),
        }
    }

    /// The sizes of a step of a transaction across partitions another node sent.
    fn internal(&self, op: &crate::command::WriteOp, read: bool) -> Result<(), WireError> {
        use crate::command::{TxnStep, WriteOp};
        let names = |n: usize| {
            if n > 2 * MAX_TXN_PARTS {
                return Err(invalid(format!(
                    "a transaction names at most {} keys",
                    2 * MAX_TXN_PARTS
                )));
            }
            Ok(())
        };
        let value = |what: &str, v: &[u8]| {
            if v.len() > self.max_value_bytes {
                return Err(too_large(what, v.len(), self.max_value_bytes));
            }
            Ok(())
        };
        match op {
            WriteOp::TxnPrepare { txn, primary, record, compare, then, otherwise, .. } => {
                // A part evaluated as a read belongs to no transaction id.
                self.key("transaction id", txn, read)?;
                self.key("primary key", primary, true)?;
                names(record.len())?;
                names(compare.len() + then.len() + otherwise.len())?;
                for k in record {
                    self.key("key", k, true)?;
                }
                for c in compare {
                    self.key("compare key", &c.key, true)?;
                    value("compare value", &c.value)?;
                }
                for step in then.iter().chain(otherwise) {
                    self.key("key", step.key(), true)?;
                    match step {
                        TxnStep::Set { value: v, ttl_ms, .. } => {
                            value("value", v)?;
                            self.ttl(*ttl_ms)?;
                        }
                        TxnStep::LockAcquire { owner, lease_ms, .. } => {
                            self.owner(owner)?;
                            self.lease(*lease_ms)?;
                        }
                        TxnStep::LockRelease { owner, .. } => self.owner(owner)?,
                        TxnStep::SeqNext { count, .. }
                            if *count == 0 || *count > self.max_seq_count =>
                        {
                            return Err(invalid("sequence count out of range"));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            WriteOp::TxnDecide { txn, primary, action, .. } => {
                self.key("transaction id", txn, false)?;
                self.key("primary key", primary, true)?;
                if *action > crate::command::DECIDE_FORGET {
                    return Err(invalid("unknown decide action"));
                }
                Ok(())
            }
            WriteOp::TxnResolve { txn, names: n, outcome } => {
                self.key("transaction id", txn, false)?;
                names(n.len())?;
                for k in n {
                    self.key("key", k, true)?;
                }
                if *outcome > crate::records::TXN_ABORTED {
                    return Err(invalid("unknown outcome"));
                }
                Ok(())
            }
            _ => Err(invalid("not a step of a transaction")),
        }
    }

    fn owner(&self, owner: &[u8]) -> Result<(), WireError> {
        if owner.is_empty() {
            return Err(invalid("owner must not be empty"));
        }
        if owner.len() > self.max_owner_bytes {
            return Err(too_large("owner", owner.len(), self.max_owner_bytes));
        }
        Ok(())
    }

    fn lease(&self, lease_ms: u64) -> Result<(), WireError> {
        if lease_ms == 0 || lease_ms > self.max_lease_ms {
            return Err(invalid(format!(
                "lease_ms must be between 1 and {}, not {lease_ms}",
                self.max_lease_ms
            )));
        }
        Ok(())
    }

    fn ttl(&self, ttl_ms: u64) -> Result<(), WireError> {
        if ttl_ms > self.max_ttl_ms {
            return Err(invalid(format!(
                "ttl_ms {ttl_ms} is over the limit of {}",
                self.max_ttl_ms
            )));
        }
        Ok(())
    }

    fn page(&self, limit: u32) -> Result<(), WireError> {
        if limit > self.max_scan_limit {
            return Err(invalid(format!(
                "limit {limit} is over the maximum of {}",
                self.max_scan_limit
            )));
        }
        Ok(())
    }

    /// Checks every size and range of a request.
    pub fn validate(&self, op: &Op) -> Result<(), WireError> {
        match op {
            Op::KvSet { key, value, ttl_ms, condition, .. } => {
                self.key("key", key, false)?;
                if value.len() > self.max_value_bytes {
                    return Err(too_large("value", value.len(), self.max_value_bytes));
                }
                if let SetCondition::IfValue(v) = condition {
                    if v.len() > self.max_value_bytes {
                        return Err(too_large("expected value", v.len(), self.max_value_bytes));
                    }
                }
                self.ttl(*ttl_ms)
            }
            Op::KvGet { key, .. } | Op::KvDelete { key, .. } | Op::KvExists { key, .. } => {
                self.key("key", key, false)
            }
            Op::KvExtend { key, ttl_ms, .. } => {
                self.key("key", key, false)?;
                self.ttl(*ttl_ms)
            }
            Op::KvScan { prefix, start_after, limit, .. } => {
                self.key("prefix", prefix, true)?;
                if let Some(s) = start_after {
                    self.key("cursor", s, true)?;
                }
                self.page(*limit)
            }
            Op::KvHistory { key, limit, .. } => {
                self.key("key", key, false)?;
                self.page(*limit)
            }
            Op::LockAcquire { resource, owner, lease_ms, .. }
            | Op::LockExtend { resource, owner, lease_ms, .. } => {
                self.key("resource", resource, false)?;
                self.owner(owner)?;
                self.lease(*lease_ms)
            }
            Op::LockRelease { resource, owner, .. } => {
                self.key("resource", resource, false)?;
                self.owner(owner)
            }
            Op::LockGet { resource, .. } => self.key("resource", resource, false),
            Op::SeqNext { name, count } => {
                self.key("sequence name", name, false)?;
                if *count == 0 || *count > self.max_seq_count {
                    return Err(invalid(format!(
                        "count must be between 1 and {}, not {count}",
                        self.max_seq_count
                    )));
                }
                Ok(())
            }
            Op::ClusterStatus { .. } => Ok(()),
            Op::Backup { key, .. } => self.key("key", key, true),
            Op::Split { key, at } => {
                self.key("key", key, true)?;
                self.key("split key", at, true)
            }
            Op::Txn { compare, then, otherwise } => {
                let n = compare.len() + then.len() + otherwise.len();
                if n == 0 || n > MAX_TXN_PARTS {
                    return Err(invalid(format!(
                        "a transaction has 1 to {MAX_TXN_PARTS} compares and steps, not {n}"
                    )));
                }
                for c in compare {
                    self.key("compare key", &c.key, false)?;
                    if c.value.len() > self.max_value_bytes {
                        return Err(too_large(
                            "compare value",
                            c.value.len(),
                            self.max_value_bytes,
                        ));
                    }
                }
                for branch in [then, otherwise] {
                    let mut written = std::collections::BTreeSet::new();
                    for step in branch.iter().filter_map(crate::command::TxnStep::from_op) {
                        if let Some(w) = step.written() {
                            if !written.insert((w.0, w.1.to_vec())) {
                                return Err(invalid(format!(
                                    "a transaction's branch writes {:?} twice: each key, lock \
                                     and sequence at most once per branch",
                                    String::from_utf8_lossy(w.1)
                                )));
                            }
                        }
                    }
                }
                for op in then.iter().chain(otherwise) {
                    if crate::command::TxnStep::from_op(op).is_none() {
                        return Err(invalid(format!(
                            "a transaction step is a get (latest), exists, lock get, set (no \
                             condition: use a compare), delete (no expected revision), lock \
                             acquire, lock release (no token) or sequence next, not {}",
                            op.name()
                        )));
                    }
                    self.validate(op)?;
                }
                // One durability for the whole: a persistent transaction is replicated, an
                // ephemeral one lives in its leader's memory; one atomic step cannot be both.
                let mut steps = then.iter().chain(otherwise);
                if let Some(first) = steps.clone().next() {
                    if steps.any(|s| s.durability() != first.durability()) {
                        return Err(invalid(
                            "a transaction's steps are all persistent or all ephemeral (sequences \
                             are persistent)"
                                .to_string(),
                        ));
                    }
                }
                Ok(())
            }
            Op::Internal { .. } => Err(invalid("internal steps come from Kahuna's nodes only")),
            Op::Script { source, params, key } => {
                if source.len() > crate::script::MAX_SCRIPT_BYTES {
                    return Err(too_large("script", source.len(), crate::script::MAX_SCRIPT_BYTES));
                }
                if params.len() > MAX_TXN_PARTS {
                    return Err(invalid(format!(
                        "a script takes at most {MAX_TXN_PARTS} parameters"
                    )));
                }
                for (name, v) in params {
                    if name.is_empty() || name.len() > 64 {
                        return Err(invalid("a parameter name has 1 to 64 bytes"));
                    }
                    if v.len() > self.max_value_bytes {
                        return Err(too_large("parameter", v.len(), self.max_value_bytes));
                    }
                }
                self.key("key", key, true)?;
                let keys = crate::command::script_keys(source, params).map_err(invalid)?;
                if keys.len() > MAX_TXN_PARTS {
                    return Err(invalid(format!("a script names at most {MAX_TXN_PARTS} keys")));
                }
                for k in &keys {
                    self.key("key", k, false)?;
                }
                Ok(())
            }
            Op::MoveReplica { .. } => Err(invalid(
                "replica moves are the balancer's: use `cluster drain`, `remove-node` or `balance`"
                    .to_string(),
            )),
            Op::Membership { client_addr, peer_addr, .. } => {
                if client_addr.len() > 255 || peer_addr.len() > 255 {
                    return Err(invalid("addresses are at most 255 bytes".to_string()));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kahuna_protocol::Durability::Persistent;

    #[test]
    fn table_of_limits() {
        let l = Limits::default();
        let set = |k: usize, v: usize| Op::KvSet {
            key: vec![b'a'; k],
            value: vec![0; v],
            durability: Persistent,
            ttl_ms: 0,
            condition: SetCondition::None,
        };
        let cases: Vec<(Op, Option<ErrorCode>)> = vec![
            (set(1, 0), None),
            (set(1024, 1 << 20), None),
            (set(1025, 1), Some(ErrorCode::TooLarge)),
            (set(1, (1 << 20) + 1), Some(ErrorCode::TooLarge)),
            (set(0, 1), Some(ErrorCode::Invalid)),
            (Op::SeqNext { name: b"s".to_vec(), count: 0 }, Some(ErrorCode::Invalid)),
            (
                Op::SeqNext { name: crate::keys::PARTITION_IDS.to_vec(), count: 1 },
                Some(ErrorCode::Invalid),
            ),
            (
                Op::KvGet { key: b"\0kahuna/x".to_vec(), durability: Persistent, revision: 0 },
                Some(ErrorCode::Invalid),
            ),
            (Op::Split { key: vec![], at: b"m".to_vec() }, None),
            (Op::Split { key: vec![], at: vec![b'm'; 1025] }, Some(ErrorCode::TooLarge)),
            (Op::SeqNext { name: b"s".to_vec(), count: 1_000_001 }, Some(ErrorCode::Invalid)),
            (
                Op::LockAcquire {
                    resource: b"r".to_vec(),
                    owner: vec![],
                    lease_ms: 5,
                    durability: Persistent,
                },
                Some(ErrorCode::Invalid),
            ),
            (
                Op::LockAcquire {
                    resource: b"r".to_vec(),
                    owner: b"o".to_vec(),
                    lease_ms: 0,
                    durability: Persistent,
                },
                Some(ErrorCode::Invalid),
            ),
            (
                Op::KvScan {
                    prefix: vec![],
                    durability: Persistent,
                    start_after: None,
                    limit: 10_001,
                },
                Some(ErrorCode::Invalid),
            ),
            (
                Op::KvScan { prefix: vec![], durability: Persistent, start_after: None, limit: 0 },
                None,
            ),
        ];
        for (op, want) in cases {
            assert_eq!(l.validate(&op).err().map(|e| e.code), want, "{op:?}");
        }
        // A peer may draw a partition id, one at a time; nothing else reserved.
        let ids = |count| Op::SeqNext { name: crate::keys::PARTITION_IDS.to_vec(), count };
        assert!(l.validate_from_peer(&ids(1)).is_ok());
        assert!(l.validate_from_peer(&ids(2)).is_err());
        let other = Op::SeqNext { name: b"\0kahuna/other".to_vec(), count: 1 };
        assert!(l.validate_from_peer(&other).is_err());
        // A transaction: steps it may run, each key written at most once per branch.
        let set = |k: &str| Op::KvSet {
            key: k.into(),
            value: b"v".to_vec(),
            durability: Persistent,
            ttl_ms: 0,
            condition: SetCondition::None,
        };
        let txn = |then: Vec<Op>| Op::Txn { compare: vec![], then, otherwise: vec![] };
        assert!(l.validate(&txn(vec![set("a"), set("b")])).is_ok());
        assert!(l.validate(&txn(vec![set("a"), set("a")])).is_err());
        let lock = Op::LockAcquire {
            resource: b"a".to_vec(),
            owner: b"o".to_vec(),
            lease_ms: 10,
            durability: Persistent,
        };
        assert!(l.validate(&txn(vec![set("a"), lock])).is_ok(), "locks and keys are apart");
        assert!(l.validate(&txn(vec![])).is_err());
        let cas = Op::KvSet {
            key: b"a".to_vec(),
            value: vec![],
            durability: Persistent,
            ttl_ms: 0,
            condition: SetCondition::IfRevision(3),
        };
        assert!(l.validate(&txn(vec![cas])).is_err(), "conditions go in compares");
        // A peer may read and write member records (a client may not); nothing else reserved.
        let record = crate::membership::member_key(3);
        let set = |key: Vec<u8>, ttl_ms| Op::KvSet {
            key,
            value: b"m".to_vec(),
            durability: Persistent,
            ttl_ms,
            condition: SetCondition::IfNotExists,
        };
        let get = Op::KvGet { key: record.clone(), durability: Persistent, revision: 0 };
        let scan = Op::KvScan {
            prefix: crate::membership::MEMBERS_PREFIX.to_vec(),
            durability: Persistent,
            start_after: None,
            limit: 0,
        };
        for op in [set(record.clone(), 0), get.clone(), scan.clone()] {
            assert!(l.validate_from_peer(&op).is_ok(), "{op:?}");
            assert!(l.validate(&op).is_err(), "{op:?}");
        }
        assert!(l.validate_from_peer(&set(record, 5)).is_err());
        assert!(l.validate_from_peer(&set(b"\0kahuna/else".to_vec(), 0)).is_err());
    }
}
