//! A recorded client workload for fault scenarios: key/value clients (get, set,
//! compare-and-set, delete on a few hot keys), lock clients (acquire, fenced writes, release)
//! and sequence clients, each recording every operation for the checkers of [`crate::history`].
//!
//! ```text
//!  Workload::start ──▶ kv clients  ──▶ History (invoke, return, outcome)  ─┐
//!                  ├─▶ lock clients ──▶ grants + FencedStore              ├─▶ Workload::finish
//!                  └─▶ seq clients  ──▶ blocks                             ─┘     checks all three
//! ```
//! Every client is bounded: it stops when told to, and each call has a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kahuna_client::blocking::Client;
use kahuna_client::{ClientOptions, Durability};

use crate::history::{
    check_kv, check_locks, check_sequences, Block, Cond, FencedStore, Grant, History,
};

#[derive(Clone, Debug)]
pub struct WorkloadOpts {
    pub kv_clients: usize,
    pub keys: usize,
    pub lock_clients: usize,
    pub seq_clients: usize,
    /// Deadline of one call (retries included).
    pub timeout_ms: u64,
    pub lease_ms: u64,
    /// Pause between a client's operations.
    pub pace_ms: u64,
}

impl Default for WorkloadOpts {
    fn default() -> Self {
        WorkloadOpts {
            kv_clients: 6,
            keys: 6,
            lock_clients: 2,
            seq_clients: 2,
            timeout_ms: 1500,
            lease_ms: 1200,
            pace_ms: 2,
        }
    }
}

pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub history: History,
    grants: Arc<Mutex<Vec<Grant>>>,
    store: Arc<FencedStore>,
    blocks: Arc<Mutex<Vec<Block>>>,
    /// Which node each kv client enters through (`None`: any, routed to leaders).
    pub entry: Vec<Option<usize>>,
    endpoints: Vec<String>,
    keys: usize,
}

/// What a finished run did and whether its histories hold.
#[derive(Debug)]
pub struct Verdict {
    pub ops: u64,
    pub ok: u64,
    pub unknown: u64,
    pub keys_checked: usize,
    pub grants: usize,
    pub blocks: usize,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A tiny deterministic generator (per client, from the run's seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn client(endpoints: &[String], routed: bool, timeout_ms: u64) -> Client {
    let opts = ClientOptions {
        timeout: Duration::from_millis(timeout_ms),
        route_to_leaders: routed,
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    // `new`: a node that is down at the start is simply retried.
    Client::new(endpoints, opts).expect("a client")
}

pub fn key_name(k: usize) -> String {
    // Spread over the key space, so several partitions (and leaders) are involved.
    format!("{}hot/{k}", (b'!' + ((k * 37) % 90) as u8) as char)
}

impl Workload {
    /// Starts the clients against `endpoints`; kv client `i` enters through node `i % n` for
    /// even `i`, and is routed to leaders for odd `i`.
    pub fn start(endpoints: &[String], o: WorkloadOpts, seed: u64) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = History::default();
        let grants: Arc<Mutex<Vec<Grant>>> = Arc::default();
        let store = Arc::new(FencedStore::default());
        let blocks: Arc<Mutex<Vec<Block>>> = Arc::default();
        let mut threads = Vec::new();
        let mut entry = Vec::new();
        for i in 0..o.kv_clients {
            let via = (i % 2 == 0).then_some(i / 2 % endpoints.len());
            entry.push(via);
            let eps = match via {
                Some(n) => vec![endpoints[n].clone()],
                None => endpoints.to_vec(),
            };
            let (stop, h, o) = (stop.clone(), history.clone(), o.clone());
            let mut rng =
                Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u64 * 7919) | 1);
            threads.push(std::thread::spawn(move || {
                let c = client(&eps, via.is_none(), o.timeout_ms);
                let mut counter = 0u64;
                let mut seen = vec![0u64; o.keys];
                while !stop.load(Ordering::SeqCst) {
                    counter += 1;
                    let k = (rng.next() % o.keys as u64) as usize;
                    let key = key_name(k);
                    let value = ((i as u64) << 40) | counter;
                    match rng.next() % 10 {
                        0..=3 => {
                            if let Ok(Some((_, rev))) = h.get(&c, i, &key) {
                                seen[k] = rev;
                            }
                        }
                        4..=6 => {
                            if let Ok(rev) = h.set(&c, i, &key, value, Cond::None) {
                                seen[k] = rev;
                            }
                        }
                        7 | 8 => {
                            if let Ok(rev) = h.set(&c, i, &key, value, Cond::IfRevision(seen[k])) {
                                seen[k] = rev;
                            }
                        }
                        _ => {
                            let _ = h.delete(&c, i, &key, 0);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(o.pace_ms));
                }
            }));
        }
        for i in 0..o.lock_clients {
            let (stop, grants, store, o) = (stop.clone(), grants.clone(), store.clone(), o.clone());
            let eps = endpoints.to_vec();
            threads.push(std::thread::spawn(move || {
                let c = client(&eps, true, o.timeout_ms);
                let owner = format!("holder-{i}");
                let lease = Duration::from_millis(o.lease_ms);
                // The holder stops acting this long before its lease (counted from when it
                // asked) runs out: its own margin for scheduling delays.
                let margin = Duration::from_millis(200);
                while !stop.load(Ordering::SeqCst) {
                    let invoke = Instant::now();
                    let got = c.lock_acquire(
                        b"chaos/lock",
                        owner.as_bytes(),
                        o.lease_ms,
                        Durability::Persistent,
                    );
                    let from = Instant::now();
                    let state = match got {
                        Ok(s) if s.acquired => s,
                        _ => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    };
                    let must_stop = invoke + lease - margin;
                    if from >= must_stop {
                        continue; // too late to use safely
                    }
                    // Work under the lock: fenced writes to the protected store.
                    for _ in 0..3 {
                        if Instant::now() + Duration::from_millis(15) >= must_stop {
                            break;
                        }
                        store.write(state.fencing_token);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let until = Instant::now().min(must_stop);
                    grants.lock().unwrap().push(Grant {
                        holder: i,
                        token: state.fencing_token,
                        invoke,
                        from,
                        until,
                    });
                    let _ = c.lock_release(b"chaos/lock", owner.as_bytes(), Durability::Persistent);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        for i in 0..o.seq_clients {
            let (stop, blocks, o) = (stop.clone(), blocks.clone(), o.clone());
            let eps = endpoints.to_vec();
            threads.push(std::thread::spawn(move || {
                let c = client(&eps, i % 2 == 0, o.timeout_ms);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let invoke = Instant::now();
                    if let Ok((first, count)) = c.seq_next(b"chaos/seq", 1 + n % 5) {
                        blocks.lock().unwrap().push(Block {
                            first,
                            count,
                            invoke,
                            complete: Instant::now(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(o.pace_ms * 5));
                }
            }));
        }
        Workload {
            stop,
            threads,
            history,
            grants,
            store,
            blocks,
            entry,
            endpoints: endpoints.to_vec(),
            keys: o.keys,
        }
    }

    /// Stops the clients, reads every key once more through a healed cluster (so a lost write
    /// shows), and checks every history.
    pub fn finish(self) -> Verdict {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("a client thread panicked");
        }
        let c = client(&self.endpoints, true, 10_000);
        let mut problems = Vec::new();
        for k in 0..self.keys {
            if let Err(e) = self.history.get(&c, 1000, &key_name(k)) {
                problems.push(format!("the final read of {} failed: {e}", key_name(k)));
            }
        }
        let ops = self.history.kv_ops();
        let counts = self.history.counts();
        let keys_checked = match check_kv(&ops) {
            Ok(n) => n,
            Err(e) => {
                problems.push(e);
                0
            }
        };
        let grants = self.grants.lock().unwrap().clone();
        if let Err(e) = check_locks(&grants, &self.store.writes()) {
            problems.push(format!("locks: {e}"));
        }
        let blocks = self.blocks.lock().unwrap().clone();
        if let Err(e) = check_sequences(&blocks) {
            problems.push(format!("sequences: {e}"));
        }
        Verdict {
            ops: counts.values().sum::<u64>() + grants.len() as u64 + blocks.len() as u64,
            ok: counts.get("ok").copied().unwrap_or(0),
            unknown: counts.get("unknown").copied().unwrap_or(0),
            keys_checked,
            grants: grants.len(),
            blocks: blocks.len(),
            problems,
        }
    }
}
