//! `kahuna-bench`: the load generator users run on their own hardware.
//!
//! 1. measures the machine's floors (4 KiB append + fdatasync in the data directory, loopback
//!    round trip), so every latency also reads as a multiple of what the hardware can do;
//! 2. preloads the key space for read workloads, warms up, then drives the workload closed-loop
//!    (`--connections` × `--pipeline` requests in flight) or open-loop at `--rate` with latency
//!    measured from the intended send time (no coordinated omission);
//! 3. prints a live progress line, then a table, and writes JSON (`--output`), and for a suite
//!    also a Markdown summary and an SVG latency plot.
//!
//! Every run is bounded: by `--duration` and, if given, by `--ops`.

mod floors;
mod keys;
mod report;
mod schedule;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use kahuna_client::{Client, ClientOptions, Durability, SetOptions};
use rand::{rngs::SmallRng, SeedableRng};

use keys::{key_name, KeyDist, KeyGen};
use report::{Floors, RunResult};
use schedule::Schedule;
use workload::{run_op, OpCtx, Workload};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Dur {
    Persistent,
    Ephemeral,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Suite {
    /// The set `make bench` runs: latency, throughput, every workload.
    Standard,
    /// Every workload briefly, few connections (the smoke test in `make test`).
    Smoke,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "kahuna-bench",
    about = "Kahuna load generator; measures the machine's floors in the same run"
)]
struct Args {
    /// Nodes, comma separated.
    #[arg(long, default_value = "127.0.0.1:7000")]
    endpoints: String,
    #[arg(long, value_enum, default_value_t = Workload::KvSet)]
    workload: Workload,
    #[arg(long, value_enum, default_value_t = Dur::Persistent)]
    durability: Dur,
    /// Run a named suite instead of one workload.
    #[arg(long, value_enum)]
    suite: Option<Suite>,
    /// Client connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Measured time per workload: `30s`, `500ms`, or seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured load before measuring.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Stop once this many operations were measured (0 = only the duration bounds the run).
    #[arg(long, default_value_t = 0)]
    ops: u64,
    /// Open loop: total offered operations per second (0 = closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// `uniform` or `zipf:<exponent>`.
    #[arg(long, default_value = "uniform")]
    key_dist: KeyDist,
    /// Every key (and lock resource) starts with this, so the load lands in one partition
    /// until it splits; default: keys spread over the whole key space.
    #[arg(long)]
    key_prefix: Option<String>,
    /// Lock workload: 0 = uncontended (own resources per worker), N = everyone on N resources.
    #[arg(long, default_value_t = 0)]
    lock_resources: u64,
    /// Sequence workload: numbers per block.
    #[arg(long, default_value_t = 100)]
    seq_block: u64,
    /// Mixed workload: percentage of reads.
    #[arg(long, default_value_t = 90)]
    read_percent: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A directory on the server's data disk, for the fdatasync floor.
    #[arg(long, default_value = "./data")]
    floor_dir: PathBuf,
    /// JSON result (one object, or a list for a suite).
    #[arg(long)]
    output: Option<PathBuf>,
    /// For a suite: also write <dir>/summary.md and <dir>/latency.svg.
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Send requests round-robin to the endpoints and let the nodes forward them, instead of
    /// straight to each key's leader (to measure what the client's leader cache saves).
    #[arg(long)]
    no_leader_routing: bool,
}

fn client_options(a: &Args) -> ClientOptions {
    ClientOptions { route_to_leaders: !a.no_leader_routing, ..ClientOptions::default() }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s or m")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The runs of a suite, each a variation of the base arguments.
fn suite_runs(base: &Args, suite: Suite) -> Vec<(String, Args)> {
    let v = |name: &str, w: Workload, d: Dur, conns: usize, pipe: usize| {
        let mut a = base.clone();
        a.workload = w;
        a.durability = d;
        a.connections = conns;
        a.pipeline = pipe;
        (name.to_string(), a)
    };
    use Dur::*;
    use Workload::*;
    match suite {
        Suite::Standard => vec![
            v("set-seq", KvSet, Persistent, 1, 1),
            v("get-seq", KvGet, Persistent, 1, 1),
            v("set-64", KvSet, Persistent, 4, 16),
            v("get-64", KvGet, Persistent, 4, 16),
            v("set-eph-seq", KvSet, Ephemeral, 1, 1),
            v("set-eph-64", KvSet, Ephemeral, 4, 16),
            v("cas-16", KvCas, Persistent, 4, 4),
            v("scan-16", KvScan, Persistent, 4, 4),
            v("lock-16", Lock, Persistent, 4, 4),
            v("lock-eph-16", Lock, Ephemeral, 4, 4),
            {
                let mut r = v("lock-contended-16", Lock, Persistent, 4, 4);
                r.1.lock_resources = 4;
                r
            },
            v("seq-16", Seq, Persistent, 4, 4),
            v("txn-64", Txn, Persistent, 4, 16),
            v("txn-cross-64", TxnCross, Persistent, 4, 16),
            v("mixed-90-64", Mixed, Persistent, 4, 16),
            {
                // Every key under one prefix (as most applications' keys are): one partition at
                // first, until its load splits it; the warm-up lets the first split settle.
                let mut r = v("mixed-90-64-one-prefix", Mixed, Persistent, 4, 16);
                r.1.key_prefix = Some("orders/".into());
                r.1.warmup = r.1.warmup.max(Duration::from_secs(25));
                r
            },
        ],
        Suite::Smoke => vec![
            v("set", KvSet, Persistent, 1, 2),
            v("set-eph", KvSet, Ephemeral, 1, 2),
            v("get", KvGet, Persistent, 1, 2),
            v("cas", KvCas, Persistent, 1, 2),
            v("scan", KvScan, Persistent, 1, 2),
            v("lock", Lock, Persistent, 1, 2),
            v("seq", Seq, Persistent, 1, 2),
            v("mixed", Mixed, Persistent, 1, 2),
            v("txn", Txn, Persistent, 1, 2),
            v("txn-cross", TxnCross, Persistent, 1, 2),
        ],
    }
}

fn durability(d: Dur) -> Durability {
    match d {
        Dur::Persistent => Durability::Persistent,
        Dur::Ephemeral => Durability::Ephemeral,
    }
}

/// Writes the key space read workloads need, with many writes in flight, bounded in time.
async fn preload(endpoints: &[String], a: &Args) -> Result<(), String> {
    let client = Client::connect(endpoints, client_options(a)).await.map_err(|e| e.to_string())?;
    let value = vec![b'p'; a.value_size];
    let d = durability(a.durability);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (c, next, value, keys) = (client.clone(), next.clone(), value.clone(), a.keys);
        let prefix = a.key_prefix.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys || Instant::now() > deadline {
                    return Ok::<(), String>(());
                }
                let key = key_name(prefix.as_deref(), k);
                c.kv_set(key.as_bytes(), &value, SetOptions::default().durability(d))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    ops: AtomicU64,
    errors: AtomicU64,
    live: Mutex<Histogram<u64>>,
}

async fn run_one(
    name: &str,
    a: &Args,
    endpoints: &[String],
    floors: &Floors,
) -> Result<RunResult, String> {
    if a.workload.needs_preload() {
        preload(endpoints, a).await?;
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        live: Mutex::new(report::new_hist()),
    });
    let workers = a.connections.max(1) * a.pipeline.max(1);
    let per_worker_rate = if a.rate > 0.0 { Some(a.rate / workers as f64) } else { None };
    let mut tasks = Vec::new();
    for conn in 0..a.connections.max(1) {
        let client =
            Client::connect(endpoints, client_options(a)).await.map_err(|e| e.to_string())?;
        for p in 0..a.pipeline.max(1) {
            let worker = (conn * a.pipeline.max(1) + p) as u64;
            let ctx = OpCtx {
                workload: a.workload,
                durability: durability(a.durability),
                keys: KeyGen::new(&a.key_dist, a.keys),
                value: vec![b'v'; a.value_size],
                owner: format!("bench-{worker}"),
                lock_resources: a.lock_resources,
                worker,
                seq_block: a.seq_block.max(1),
                read_percent: a.read_percent.min(100),
                key_prefix: a.key_prefix.clone(),
            };
            let (c, shared, seed) = (client.clone(), shared.clone(), a.seed);
            tasks.push(tokio::spawn(async move {
                let mut rng =
                    SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ worker);
                let mut hist = report::new_hist();
                let mut delta = report::new_hist();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut sched: Option<Schedule> = None;
                let mut last_flush = Instant::now();
                while !shared.stop.load(Ordering::Relaxed) {
                    let intended = match (per_worker_rate, shared.measuring.load(Ordering::Relaxed))
                    {
                        (Some(rate), true) => {
                            let s =
                                sched.get_or_insert_with(|| Schedule::new(Instant::now(), rate));
                            let t = s.next();
                            let now = Instant::now();
                            if t > now {
                                tokio::time::sleep(t - now).await;
                            }
                            t
                        }
                        _ => Instant::now(),
                    };
                    let measured = shared.measuring.load(Ordering::Relaxed);
                    let r = run_op(&c, &ctx, &mut rng).await;
                    if !measured {
                        continue;
                    }
                    shared.ops.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(()) => {
                            let us = intended.elapsed().as_micros().max(1) as u64;
                            hist.saturating_record(us);
                            delta.saturating_record(us);
                        }
                        Err(code) => {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            *errors.entry(code.to_string()).or_default() += 1;
                        }
                    }
                    if last_flush.elapsed() > Duration::from_millis(200) {
                        shared.live.lock().unwrap().add(&delta).ok();
                        delta.reset();
                        last_flush = Instant::now();
                    }
                }
                (hist, errors)
            }));
        }
    }
    tokio::time::sleep(a.warmup).await;
    shared.measuring.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut last_ops = 0;
    while start.elapsed() < a.duration {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ops = shared.ops.load(Ordering::Relaxed);
        if a.ops > 0 && ops >= a.ops {
            break;
        }
        if !a.quiet && last_print.elapsed() >= Duration::from_secs(1) {
            let rate = (ops - last_ops) as f64 / last_print.elapsed().as_secs_f64();
            let p99 = shared.live.lock().unwrap().value_at_quantile(0.99);
            eprintln!(
                "  [{name}] {:>4.1}s  {rate:>9.0} ops/s  p99 so far {p99} µs  errors {}",
                start.elapsed().as_secs_f64(),
                shared.errors.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
            last_ops = ops;
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let elapsed = start.elapsed();
    let mut hists = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let (h, e) = t.await.map_err(|e| e.to_string())?;
        hists.push(h);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let all = report::merge(&hists);
    let failed: u64 = errors.values().sum();
    Ok(RunResult {
        name: name.to_string(),
        workload: a.workload.name().to_string(),
        durability: format!("{:?}", a.durability).to_lowercase(),
        connections: a.connections.max(1),
        pipeline: a.pipeline.max(1),
        mode: if a.rate > 0.0 { "open".into() } else { "closed".into() },
        rate_ops_s: (a.rate > 0.0).then_some(a.rate),
        key_dist: match a.key_dist {
            KeyDist::Uniform => "uniform".into(),
            KeyDist::Zipf(s) => format!("zipf:{s}"),
        },
        key_prefix: a.key_prefix.clone(),
        keys: a.keys,
        value_size: a.value_size,
        duration_s: elapsed.as_secs_f64(),
        ops: all.len() + failed,
        errors,
        throughput_ops_s: ((all.len() as f64) / elapsed.as_secs_f64()).round(),
        latency_us: report::latency(&all),
        floors: floors.clone(),
        distribution: report::distribution(&all),
    })
}

fn main() {
    let args = Args::parse();
    let endpoints: Vec<String> =
        args.endpoints.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    eprintln!("measuring floors in {} ...", args.floor_dir.display());
    let fsync = |overwrite| {
        floors::fdatasync_us(&args.floor_dir, 200, overwrite).unwrap_or_else(|e| {
            eprintln!("fdatasync floor failed: {e}");
            f64::NAN
        })
    };
    let (fdatasync_us, overwrite_fdatasync_us) = (fsync(false), fsync(true));
    let loopback_rtt_us = floors::loopback_rtt_us(2000).unwrap_or(f64::NAN);
    let floors = Floors {
        fdatasync_us: fdatasync_us.round(),
        overwrite_fdatasync_us: overwrite_fdatasync_us.round(),
        loopback_rtt_us: loopback_rtt_us.round(),
    };
    eprintln!(
        "floors: fdatasync p50 {fdatasync_us:.0} µs appending, {overwrite_fdatasync_us:.0} µs \
         overwriting; loopback round trip p50 {loopback_rtt_us:.0} µs"
    );
    let runs = match args.suite {
        Some(s) => suite_runs(&args, s),
        None => vec![(args.workload.name().to_string(), args.clone())],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut results = Vec::new();
    for (name, a) in &runs {
        match rt.block_on(run_one(name, a, &endpoints, &floors)) {
            Ok(r) => {
                println!("{}", report::table(&r));
                results.push(r);
            }
            Err(e) => {
                eprintln!("kahuna-bench: {name}: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Some(path) = &args.output {
        let json = if args.suite.is_some() {
            serde_json::to_string_pretty(&results)
        } else {
            serde_json::to_string_pretty(&results[0])
        };
        std::fs::write(path, json.expect("serialising results")).expect("writing --output");
    }
    if let Some(dir) = &args.report_dir {
        std::fs::create_dir_all(dir).expect("creating --report-dir");
        std::fs::write(dir.join("summary.md"), report::markdown(&results))
            .expect("writing summary.md");
        std::fs::write(dir.join("latency.svg"), report::svg(&results))
            .expect("writing latency.svg");
    }
    if args.suite.is_some() {
        println!("{}", report::markdown(&results));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn suites_cover_every_workload() {
        let a = Args::parse_from(["kahuna-bench"]);
        for suite in [Suite::Standard, Suite::Smoke] {
            let runs = suite_runs(&a, suite);
            for w in Workload::value_variants() {
                assert!(runs.iter().any(|(_, r)| r.workload == *w), "{suite:?} lacks {w:?}");
            }
        }
    }
}
