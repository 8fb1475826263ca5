//! The workloads: what one operation of each does against the client library.

use clap::ValueEnum;
use kahuna_client::{Client, Durability, ErrorCode, GetOptions, ScanOptions, SetOptions};
use rand::Rng;

use crate::keys::{key_name, KeyGen};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Workload {
    /// Set a key.
    KvSet,
    /// Linearizable get of a preloaded key.
    KvGet,
    /// Get, then set with --if-revision of what was read.
    KvCas,
    /// Scan 10 keys from a random preloaded key.
    KvScan,
    /// Acquire and release a lock (uncontended unless --lock-resources is small).
    Lock,
    /// Take a sequence block of --seq-block numbers.
    Seq,
    /// --read-percent gets, the rest sets.
    Mixed,
    /// A transfer between two accounts of one partition (`KEY/a` and `KEY/b`): one
    /// compare/then/else transaction that checks the first exists and sets both (1PC: one
    /// Raft entry).
    Txn,
    /// The same transfer between `KEY/a` and an account in the other half of the key space
    /// (another partition whenever there are two or more): two-phase, across partitions.
    TxnCross,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::KvSet => "kv-set",
            Workload::KvGet => "kv-get",
            Workload::KvCas => "kv-cas",
            Workload::KvScan => "kv-scan",
            Workload::Lock => "lock",
            Workload::Seq => "seq",
            Workload::Mixed => "mixed",
            Workload::Txn => "txn",
            Workload::TxnCross => "txn-cross",
        }
    }

    /// Reads need the key space written first.
    pub fn needs_preload(self) -> bool {
        matches!(self, Workload::KvGet | Workload::KvCas | Workload::KvScan | Workload::Mixed)
    }
}

/// What one worker needs to issue operations.
pub struct OpCtx {
    pub workload: Workload,
    pub durability: Durability,
    pub keys: KeyGen,
    pub value: Vec<u8>,
    pub owner: String,
    /// 0: each worker locks its own resources (uncontended); N: all share N resources.
    pub lock_resources: u64,
    pub worker: u64,
    pub seq_block: u64,
    pub read_percent: u32,
    /// `--key-prefix`: every key starts with it; `None`: keys spread over the key space.
    pub key_prefix: Option<String>,
}

/// Expected outcomes that are not failures: a read of an absent key, a lost CAS race, a lock
/// held by someone else. Everything else is counted under its error code.
fn expected(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::NotFound | ErrorCode::Conflict)
}

/// Runs one operation; `Err(code)` for a failure worth counting.
pub async fn run_op<R: Rng>(c: &Client, ctx: &OpCtx, rng: &mut R) -> Result<(), &'static str> {
    let k = ctx.keys.next(rng);
    let key = key_name(ctx.key_prefix.as_deref(), k);
    let d = ctx.durability;
    let result = match ctx.workload {
        Workload::KvSet => c
            .kv_set(key.as_bytes(), &ctx.value, SetOptions::default().durability(d))
            .await
            .map(drop),
        Workload::KvGet => {
            c.kv_get(key.as_bytes(), GetOptions { durability: d, revision: 0 }).await.map(drop)
        }
        Workload::KvCas => {
            match c.kv_get(key.as_bytes(), GetOptions { durability: d, revision: 0 }).await {
                Ok(item) => {
                    let o = SetOptions::default().durability(d).if_revision(item.revision);
                    c.kv_set(key.as_bytes(), &ctx.value, o).await.map(drop)
                }
                Err(e) => Err(e),
            }
        }
        Workload::KvScan => {
            let o = ScanOptions {
                durability: d,
                limit: 10,
                start_after: Some(key.clone().into_bytes()),
            };
            // The keys that share the key's prefix: its own first character(s) when spread.
            let prefix = match &ctx.key_prefix {
                Some(p) => p.clone().into_bytes(),
                None => key.as_bytes()[..2].to_vec(),
            };
            c.kv_scan(&prefix, o).await.map(drop)
        }
        Workload::Lock => {
            let r = if ctx.lock_resources == 0 {
                key_name(ctx.key_prefix.as_deref(), ctx.worker << 10 | (k % 1024)) + "/lock"
            } else {
                key_name(ctx.key_prefix.as_deref(), k % ctx.lock_resources) + "/shared-lock"
            };
            match c.lock_acquire(r.as_bytes(), ctx.owner.as_bytes(), 10_000, d).await {
                Ok(l) if l.acquired => c.lock_release(r.as_bytes(), ctx.owner.as_bytes(), d).await,
                other => other.map(drop),
            }
        }
        Workload::Seq => c.seq_next(b"bench-seq", ctx.seq_block).await.map(drop),
        Workload::Txn | Workload::TxnCross => {
            use kahuna_client::{Compare, CompareOp, CompareTarget, Op, SetCondition};
            let a = format!("{key}/a").into_bytes();
            let mut b = format!("{key}/b").into_bytes();
            if ctx.workload == Workload::TxnCross {
                // Half the printable range away: the initial partitions cut it evenly.
                b[0] = 0x21 + (b[0].saturating_sub(0x21) + 47) % 94;
            }
            let compare = vec![Compare {
                key: a.clone(),
                target: CompareTarget::Exists,
                op: CompareOp::Equal,
                value: vec![],
                number: 1,
            }];
            let set = |key: Vec<u8>| Op::KvSet {
                key,
                value: ctx.value.clone(),
                durability: Durability::Persistent,
                ttl_ms: 0,
                condition: SetCondition::None,
            };
            let then = vec![set(a.clone()), set(b.clone())];
            c.txn(compare, then.clone(), then).await.map(drop)
        }
        Workload::Mixed => {
            if rng.gen_range(0..100) < ctx.read_percent {
                c.kv_get(key.as_bytes(), GetOptions { durability: d, revision: 0 }).await.map(drop)
            } else {
                c.kv_set(key.as_bytes(), &ctx.value, SetOptions::default().durability(d))
                    .await
                    .map(drop)
            }
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if expected(e.code) => Ok(()),
        Err(e) => Err(e.code.name()),
    }
}
