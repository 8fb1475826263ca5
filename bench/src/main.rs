//! `kahuna-bench`: the load generator. It measures the machine's floors (fdatasync, loopback
//! round trip) first, then drives one workload with hdrhistogram latencies, and prints every
//! latency also as a multiple of the floors, so results from different machines compare.

mod floors;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use kahuna_client::{Client, ClientOptions, Durability, GetOptions, SetOptions};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Workload {
    KvSet,
    KvGet,
    Lock,
    Seq,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Dur {
    Persistent,
    Ephemeral,
}

#[derive(Parser, Debug)]
#[command(
    name = "kahuna-bench",
    about = "Kahuna load generator with the machine's floors measured in the same run"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    endpoints: String,
    #[arg(long, value_enum, default_value_t = Workload::KvSet)]
    workload: Workload,
    #[arg(long, value_enum, default_value_t = Dur::Persistent)]
    durability: Dur,
    /// Client connections (each its own client).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Seconds of measured load (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unmeasured load first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many measured operations (0 = no limit).
    #[arg(long, default_value_t = 0)]
    ops: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys (uniformly chosen).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory on the data disk for the fdatasync floor.
    #[arg(long, default_value = "./data")]
    floor_dir: PathBuf,
    /// Write the result as JSON here.
    #[arg(long)]
    output: Option<PathBuf>,
}

struct WorkerResult {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

async fn one_op(
    c: &Client,
    w: Workload,
    d: Durability,
    rng: &mut SmallRng,
    keys: u64,
    value: &[u8],
    me: &str,
) -> Result<(), String> {
    let key = format!("bench/{:010}", rng.gen_range(0..keys.max(1)));
    let r = match w {
        Workload::KvSet => {
            c.kv_set(key.as_bytes(), value, SetOptions::default().durability(d)).await.map(drop)
        }
        Workload::KvGet => {
            match c.kv_get(key.as_bytes(), GetOptions { durability: d, revision: 0 }).await {
                Err(e) if e.code == kahuna_client::ErrorCode::NotFound => Ok(()),
                r => r.map(drop),
            }
        }
        Workload::Lock => match c.lock_acquire(key.as_bytes(), me.as_bytes(), 10_000, d).await {
            Ok(l) if l.acquired => c.lock_release(key.as_bytes(), me.as_bytes(), d).await,
            r => r.map(drop),
        },
        Workload::Seq => c.seq_next(b"bench-seq", 100).await.map(drop),
    };
    r.map_err(|e| e.code.name().to_string())
}

fn main() {
    let args = Args::parse();
    eprintln!("measuring floors ...");
    let fsync = floors::fdatasync_us(&args.floor_dir, 200).unwrap_or_else(|e| {
        eprintln!("fdatasync floor failed: {e}");
        f64::NAN
    });
    let rtt = floors::loopback_rtt_us(2000).unwrap_or(f64::NAN);
    eprintln!("floors: fdatasync p50 {fsync:.0} us, loopback round trip p50 {rtt:.0} us");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let endpoints: Vec<String> = args.endpoints.split(',').map(str::to_string).collect();
    let durability = if args.durability == Dur::Ephemeral {
        Durability::Ephemeral
    } else {
        Durability::Persistent
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done_ops = Arc::new(AtomicU64::new(0));
    let (results, elapsed) = rt.block_on(async {
        let mut tasks = Vec::new();
        for conn in 0..args.connections.max(1) {
            let client =
                Client::connect(&endpoints, ClientOptions::default()).await.expect("connecting");
            for p in 0..args.pipeline.max(1) {
                let (c, stop, measuring, done_ops) =
                    (client.clone(), stop.clone(), measuring.clone(), done_ops.clone());
                let value = vec![b'v'; args.value_size];
                let (w, keys, seed) = (args.workload, args.keys, args.seed);
                let me = format!("bench-{conn}-{p}");
                tasks.push(tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(seed ^ ((conn as u64) << 32) ^ p as u64);
                    let mut res = WorkerResult {
                        hist: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
                        errors: BTreeMap::new(),
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let r = one_op(&c, w, durability, &mut rng, keys, &value, &me).await;
                        if measuring.load(Ordering::Relaxed) {
                            done_ops.fetch_add(1, Ordering::Relaxed);
                            match r {
                                Ok(()) => res
                                    .hist
                                    .saturating_record(start.elapsed().as_micros().max(1) as u64),
                                Err(code) => *res.errors.entry(code).or_default() += 1,
                            }
                        }
                    }
                    res
                }));
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        measuring.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let limit = Duration::from_secs_f64(args.duration);
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if args.ops > 0 && done_ops.load(Ordering::Relaxed) >= args.ops {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        let elapsed = start.elapsed();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        (out, elapsed)
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in results {
        hist.add(&r.hist).unwrap();
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let ops = hist.len();
    let thr = ops as f64 / elapsed.as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p);
    let lat =
        json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": hist.max()});
    let result = json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "durability": format!("{:?}", args.durability).to_lowercase(),
        "connections": args.connections, "pipeline": args.pipeline,
        "ops": ops, "errors": errors, "throughput_ops_s": thr.round(),
        "latency_us": lat,
        "floors": {"fdatasync_us": fsync.round(), "loopback_rtt_us": rtt.round()},
    });
    println!(
        "{:?}/{:?} conns {} pipeline {}: {ops} ops, {thr:.0} ops/s, errors {:?}",
        args.workload, args.durability, args.connections, args.pipeline, errors
    );
    println!("{:>6} {:>10} {:>10} {:>10}", "", "us", "x fsync", "x rtt");
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)] {
        let v = if p == 1.0 { hist.max() } else { q(p) } as f64;
        println!("{name:>6} {v:>10.0} {:>10.2} {:>10.2}", v / fsync, v / rtt);
    }
    if let Some(path) = args.output {
        std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap())
            .expect("writing output");
    }
}
