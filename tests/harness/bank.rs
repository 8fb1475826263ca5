//! The bank: accounts in one partition, or spread over four (a transaction across partitions,
//! two-phase), transfers as compare/then/else transactions (each compares the revisions it
//! read and sets both balances), read-all transactions that must always sum to the same total,
//! and a final audit: the balances are the acknowledged transfers exactly, each transfer whose
//! outcome is unknown counted either way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kahuna_client::blocking::Client;
use kahuna_client::{
    ClientOptions, Compare, CompareOp, CompareTarget, Durability, ErrorCode, Op, Reply,
    SetCondition,
};

pub const ACCOUNTS: usize = 8;
pub const START: u64 = 100;

pub fn account(i: usize) -> Vec<u8> {
    format!("bank/acct/{i:02}").into_bytes()
}

/// Where the accounts live: one partition (`bank/…`), or spread over the four initial
/// partitions of `--partitions 4` (split at "8", "P", "g"), two accounts each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    OnePartition,
    Spread,
}

impl Layout {
    pub fn account(self, i: usize) -> Vec<u8> {
        match self {
            Layout::OnePartition => account(i),
            Layout::Spread => {
                format!("{}bank/acct/{i:02}", ["1", "A", "X", "z"][i % 4]).into_bytes()
            }
        }
    }
}

pub fn get(key: Vec<u8>) -> Op {
    Op::KvGet { key, durability: Durability::Persistent, revision: 0 }
}

pub fn set(key: Vec<u8>, v: u64) -> Op {
    Op::KvSet {
        key,
        value: v.to_string().into_bytes(),
        durability: Durability::Persistent,
        ttl_ms: 0,
        condition: SetCondition::None,
    }
}

pub fn revision_is(key: Vec<u8>, number: u64) -> Compare {
    Compare { key, target: CompareTarget::Revision, op: CompareOp::Equal, value: vec![], number }
}

/// Every account's balance and revision, read in one transaction (one consistent state).
pub fn read_all(c: &Client, layout: Layout) -> Result<Vec<(u64, u64)>, kahuna_client::Error> {
    let (_, results) =
        c.txn(vec![], (0..ACCOUNTS).map(|i| get(layout.account(i))).collect(), vec![])?;
    results
        .into_iter()
        .map(|r| match r {
            Ok(Reply::KvGet(it)) => {
                Ok((String::from_utf8_lossy(&it.value).parse().unwrap_or(u64::MAX), it.revision))
            }
            Ok(other) => Err(kahuna_client::Error::new(ErrorCode::Internal, format!("{other:?}"))),
            Err(e) => Err(kahuna_client::Error::new(e.code, e.message)),
        })
        .collect()
}

/// What became of one transfer (from, to, amount): `Some(true)` applied, `Some(false)` not,
/// `None` unknown.
type Outcome = (usize, usize, u64, Option<bool>);

pub struct Bank {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    violations: Arc<Mutex<Vec<String>>>,
    reads: Arc<Mutex<usize>>,
    endpoints: Vec<String>,
    layout: Layout,
}

#[derive(Debug)]
pub struct BankVerdict {
    pub transfers: usize,
    pub applied: usize,
    pub unknown: usize,
    pub reads: usize,
    pub problems: Vec<String>,
}

fn options() -> ClientOptions {
    ClientOptions { timeout: Duration::from_secs(5), ..Default::default() }
}

impl Bank {
    /// Opens the accounts (one transaction), then starts 4 transfer clients and 2 auditors,
    /// spread over `endpoints`.
    pub fn start(endpoints: &[String], seed: u64, layout: Layout) -> Bank {
        let account = move |i: usize| layout.account(i);
        let admin = Client::connect(endpoints, options()).unwrap();
        let open = (0..ACCOUNTS).map(|i| set(account(i), START)).collect();
        let (ok, _) = admin.txn(vec![], open, vec![]).expect("opening the accounts");
        assert!(ok);
        let total = START * ACCOUNTS as u64;
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let reads = Arc::new(Mutex::new(0usize));
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            let ep = endpoints[t as usize % endpoints.len()].clone();
            threads.push(std::thread::spawn(move || {
                let cl = Client::connect(&[ep], options()).unwrap();
                let mut rng = seed.wrapping_mul(31).wrapping_add(t * 7919) | 1;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let (a, b) = ((rng % 8) as usize, ((rng >> 8) % 8) as usize);
                    let Ok(all) = read_all(&cl, layout) else { continue };
                    if a == b || all[a].0 == 0 {
                        continue;
                    }
                    let amount = 1 + (rng >> 16) % all[a].0.min(20);
                    let compare =
                        vec![revision_is(account(a), all[a].1), revision_is(account(b), all[b].1)];
                    let then = vec![
                        set(account(a), all[a].0 - amount),
                        set(account(b), all[b].0 + amount),
                    ];
                    let outcome = match cl.txn(compare, then, vec![]) {
                        Ok((applied, _)) => Some(applied),
                        Err(e) if e.code == ErrorCode::Timeout => None,
                        Err(_) => Some(false),
                    };
                    outcomes.lock().unwrap().push((a, b, amount, outcome));
                }
            }));
        }
        for t in 0..2usize {
            let (stop, violations, reads) = (stop.clone(), violations.clone(), reads.clone());
            let ep = endpoints[(t + 1) % endpoints.len()].clone();
            threads.push(std::thread::spawn(move || {
                let cl = Client::connect(&[ep], options()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(all) = read_all(&cl, layout) {
                        *reads.lock().unwrap() += 1;
                        let sum: u64 = all.iter().map(|(v, _)| v).sum();
                        if sum != total {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("a read saw {all:?}: sum {sum}"));
                        }
                    }
                }
            }));
        }
        Bank { stop, threads, outcomes, violations, reads, endpoints: endpoints.to_vec(), layout }
    }

    /// Stops the clients and audits: every read-all summed to the total, and the final balances
    /// are the acknowledged transfers (each unknown one either way).
    pub fn finish(self) -> BankVerdict {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a bank client panicked");
        }
        let mut problems = self.violations.lock().unwrap().clone();
        let reads = *self.reads.lock().unwrap();
        let outcomes = self.outcomes.lock().unwrap().clone();
        let applied = outcomes.iter().filter(|o| o.3 == Some(true)).count();
        let unknown = outcomes.iter().filter(|o| o.3.is_none()).count();
        let admin = Client::connect(&self.endpoints, options()).unwrap();
        let fin = match (0..20).find_map(|_| {
            read_all(&admin, self.layout).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(500));
                None
            })
        }) {
            Some(f) => f,
            None => {
                problems.push("the final read-all never succeeded".into());
                return BankVerdict {
                    transfers: outcomes.len(),
                    applied,
                    unknown,
                    reads,
                    problems,
                };
            }
        };
        let total = START * ACCOUNTS as u64;
        if fin.iter().map(|(v, _)| v).sum::<u64>() != total {
            problems.push(format!("the final balances {fin:?} do not sum to {total}"));
        }
        let mut low: BTreeMap<usize, i64> = (0..ACCOUNTS).map(|i| (i, START as i64)).collect();
        let mut high = low.clone();
        for (a, b, amount, o) in &outcomes {
            let amount = *amount as i64;
            match o {
                Some(true) => {
                    for m in [&mut low, &mut high] {
                        *m.get_mut(a).unwrap() -= amount;
                        *m.get_mut(b).unwrap() += amount;
                    }
                }
                None => {
                    *low.get_mut(a).unwrap() -= amount;
                    *high.get_mut(b).unwrap() += amount;
                }
                Some(false) => {}
            }
        }
        for (i, (v, _)) in fin.iter().enumerate() {
            let v = *v as i64;
            if v < low[&i] || v > high[&i] || (unknown == 0 && v != low[&i]) {
                problems.push(format!(
                    "account {i} ends at {v}, the acknowledged transfers say [{}, {}]",
                    low[&i], high[&i]
                ));
            }
        }
        BankVerdict { transfers: outcomes.len(), applied, unknown, reads, problems }
    }
}

/// Two keys' numeric values, read in one transaction (retried while the cluster recovers).
pub fn read_pair(c: &Client, x: &[u8], y: &[u8]) -> (u64, u64) {
    for _ in 0..60 {
        let got = c.txn(vec![], vec![get(x.to_vec()), get(y.to_vec())], vec![]);
        if let Err(e) = &got {
            eprintln!("reading the pair: {e}");
        }
        if let Ok((_, r)) = got {
            let v: Vec<u64> = r
                .into_iter()
                .map(|r| match r {
                    Ok(Reply::KvGet(it)) => String::from_utf8_lossy(&it.value).parse().unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect();
            return (v[0], v[1]);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the keys could not be read")
}

/// The keys' revisions, read in one transaction.
pub fn read_revisions(c: &Client, keys: &[&[u8]]) -> Vec<u64> {
    let (_, r) = c.txn(vec![], keys.iter().map(|k| get(k.to_vec())).collect(), vec![]).unwrap();
    r.into_iter()
        .map(|r| match r {
            Ok(Reply::KvGet(it)) => it.revision,
            other => panic!("{other:?}"),
        })
        .collect()
}
