//! Prometheus metrics: what the shards count and measure, and the HTTP endpoint that serves
//! them (`GET /metrics`, `GET /health`) from a thread of its own, never from a shard loop.
//!
//! ```text
//!  shard 0 ──inc/observe/set──▶ its own series (label shard="0") ─┐
//!  shard 1 ──inc/observe/set──▶ its own series (label shard="1") ─┼─▶ Registry ─▶ HTTP thread
//!                                      process metrics, read at scrape time ──┘
//! ```
//! Every series a shard writes carries its `shard` label, so no two cores update one atomic.
//! Request counters and latency histograms are resolved once per (operation, outcome) and
//! kept by the shard; gauges that describe state (partitions, RocksDB, clocks) are refreshed
//! once a second from the shard's tick.
//!
//! Must never: block a shard (the HTTP thread only reads atomics), or grow without bound (label
//! values are operations, error codes, partitions and peers: all bounded).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    shard: String,
    op: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    shard: String,
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    shard: String,
    peer: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

fn bytes_histogram() -> Histogram {
    // 4 KiB .. 64 MiB.
    Histogram::new(exponential_buckets(4096.0, 2.0, 15))
}

/// Every metric family of a node. Built once, shared by the shards and the HTTP thread.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    forwarded: Family<ShardLabel, Counter>,
    connections: Family<ShardLabel, Gauge>,
    wal_write_seconds: Family<ShardLabel, Histogram, fn() -> Histogram>,
    wal_batch_bytes: Family<ShardLabel, Histogram, fn() -> Histogram>,
    snapshots_sent: Family<ShardLabel, Counter>,
    snapshots_installed: Family<ShardLabel, Counter>,
    splits: Family<ShardLabel, Counter>,
    txn_across: Family<ShardLabel, Counter>,
    txn_recovered: Family<ShardLabel, Counter>,
    expired_keys_collected: Family<ShardLabel, Counter>,
    ephemeral_bytes: Family<ShardLabel, Gauge>,
    quiesced: Family<ShardLabel, Gauge>,
    disk_full: Family<ShardLabel, Gauge>,
    rocksdb_sst_bytes: Family<ShardLabel, Gauge>,
    rocksdb_memtable_bytes: Family<ShardLabel, Gauge>,
    rocksdb_write_stopped: Family<ShardLabel, Gauge>,
    clock_ok: Family<ShardLabel, Gauge>,
    clock_offset_seconds: Family<PeerLabels, F64Gauge>,
    partition_leader: Family<PartitionLabels, Gauge>,
    partition_term: Family<PartitionLabels, Gauge>,
    partition_commit: Family<PartitionLabels, Gauge>,
    partition_applied: Family<PartitionLabels, Gauge>,
    partition_apply_lag: Family<PartitionLabels, Gauge>,
    partition_proposals: Family<PartitionLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            forwarded: Family::default(),
            connections: Family::default(),
            wal_write_seconds: Family::new_with_constructor(latency_histogram),
            wal_batch_bytes: Family::new_with_constructor(bytes_histogram),
            snapshots_sent: Family::default(),
            snapshots_installed: Family::default(),
            splits: Family::default(),
            txn_across: Family::default(),
            txn_recovered: Family::default(),
            expired_keys_collected: Family::default(),
            ephemeral_bytes: Family::default(),
            quiesced: Family::default(),
            disk_full: Family::default(),
            rocksdb_sst_bytes: Family::default(),
            rocksdb_memtable_bytes: Family::default(),
            rocksdb_write_stopped: Family::default(),
            clock_ok: Family::default(),
            clock_offset_seconds: Family::default(),
            partition_leader: Family::default(),
            partition_term: Family::default(),
            partition_commit: Family::default(),
            partition_applied: Family::default(),
            partition_apply_lag: Family::default(),
            partition_proposals: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "kahuna_requests",
            "Requests served, by operation and outcome (ok or the error code)",
            m.requests.clone(),
        );
        r.register(
            "kahuna_request_duration_seconds",
            "Time from a request's arrival to its answer, by operation",
            m.request_seconds.clone(),
        );
        r.register(
            "kahuna_forwarded_requests",
            "Requests passed on to the partition leader's node",
            m.forwarded.clone(),
        );
        r.register("kahuna_client_connections", "Open client connections", m.connections.clone());
        r.register(
            "kahuna_wal_write_duration_seconds",
            "Time of one group-committed WAL write (the sync included)",
            m.wal_write_seconds.clone(),
        );
        r.register("kahuna_wal_batch_bytes", "Bytes of one WAL batch", m.wal_batch_bytes.clone());
        r.register(
            "kahuna_snapshots_sent",
            "Partition snapshots streamed to followers",
            m.snapshots_sent.clone(),
        );
        r.register(
            "kahuna_snapshots_installed",
            "Partition snapshots installed from a leader",
            m.snapshots_installed.clone(),
        );
        r.register(
            "kahuna_partition_splits",
            "Partition splits applied by this shard's replicas",
            m.splits.clone(),
        );
        r.register(
            "kahuna_transactions_across_partitions",
            "Transactions across partitions this shard coordinated",
            m.txn_across.clone(),
        );
        r.register(
            "kahuna_transactions_recovered",
            "Resolutions of transactions a coordinator left, run by this shard's leaders (a record may be counted again after a leader change)",
            m.txn_recovered.clone(),
        );
        r.register(
            "kahuna_expired_keys_collected",
            "Expired or deleted keys whose records were removed",
            m.expired_keys_collected.clone(),
        );
        r.register(
            "kahuna_partitions_quiesced",
            "Replicas whose Raft group is quiesced (idle: no ticks, no heartbeats)",
            m.quiesced.clone(),
        );
        r.register(
            "kahuna_ephemeral_bytes",
            "Memory held by ephemeral keys and locks",
            m.ephemeral_bytes.clone(),
        );
        r.register(
            "kahuna_disk_full",
            "1 while the WAL cannot write for lack of space (writes refused)",
            m.disk_full.clone(),
        );
        r.register(
            "kahuna_rocksdb_sst_bytes",
            "Bytes of RocksDB's SST files",
            m.rocksdb_sst_bytes.clone(),
        );
        r.register(
            "kahuna_rocksdb_memtable_bytes",
            "Bytes of RocksDB's memtables",
            m.rocksdb_memtable_bytes.clone(),
        );
        r.register(
            "kahuna_rocksdb_write_stopped",
            "1 while RocksDB stops writes (a stall)",
            m.rocksdb_write_stopped.clone(),
        );
        r.register(
            "kahuna_clock_ok",
            "1 while this node's clock is near most of its peers' (it may grant leases)",
            m.clock_ok.clone(),
        );
        r.register(
            "kahuna_clock_offset_seconds",
            "A peer's clock minus this node's, as last measured",
            m.clock_offset_seconds.clone(),
        );
        r.register(
            "kahuna_partition_leader",
            "1 where this node leads the partition",
            m.partition_leader.clone(),
        );
        r.register(
            "kahuna_partition_term",
            "The partition replica's Raft term",
            m.partition_term.clone(),
        );
        r.register(
            "kahuna_partition_commit_index",
            "The partition replica's commit index",
            m.partition_commit.clone(),
        );
        r.register(
            "kahuna_partition_applied_index",
            "The partition replica's applied index",
            m.partition_applied.clone(),
        );
        r.register(
            "kahuna_partition_apply_lag",
            "Committed entries not yet applied on this replica",
            m.partition_apply_lag.clone(),
        );
        r.register(
            "kahuna_partition_proposals_in_flight",
            "Writes proposed and not yet answered (leaders)",
            m.partition_proposals.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        m.registry = registry;
        Arc::new(m)
    }

    /// The text a scrape gets (OpenMetrics, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handles one shard writes through.
    pub fn shard(self: &Arc<Self>, shard: usize) -> ShardMetrics {
        let l = ShardLabel { shard: shard.to_string() };
        ShardMetrics {
            shard: shard.to_string(),
            forwarded: self.forwarded.get_or_create_owned(&l),
            connections: self.connections.get_or_create_owned(&l),
            wal_write_seconds: self.wal_write_seconds.get_or_create_owned(&l),
            wal_batch_bytes: self.wal_batch_bytes.get_or_create_owned(&l),
            snapshots_sent: self.snapshots_sent.get_or_create_owned(&l),
            snapshots_installed: self.snapshots_installed.get_or_create_owned(&l),
            splits: self.splits.get_or_create_owned(&l),
            txn_across: self.txn_across.get_or_create_owned(&l),
            txn_recovered: self.txn_recovered.get_or_create_owned(&l),
            expired_keys_collected: self.expired_keys_collected.get_or_create_owned(&l),
            ephemeral_bytes: self.ephemeral_bytes.get_or_create_owned(&l),
            quiesced: self.quiesced.get_or_create_owned(&l),
            disk_full: self.disk_full.get_or_create_owned(&l),
            rocksdb_sst_bytes: self.rocksdb_sst_bytes.get_or_create_owned(&l),
            rocksdb_memtable_bytes: self.rocksdb_memtable_bytes.get_or_create_owned(&l),
            rocksdb_write_stopped: self.rocksdb_write_stopped.get_or_create_owned(&l),
            clock_ok: self.clock_ok.get_or_create_owned(&l),
            requests: RefCell::default(),
            latency: RefCell::default(),
            all: self.clone(),
        }
    }
}

/// One shard's handles: resolved once, written without a lookup on the hot path.
pub struct ShardMetrics {
    shard: String,
    pub forwarded: Counter,
    pub connections: Gauge,
    pub wal_write_seconds: Histogram,
    pub wal_batch_bytes: Histogram,
    pub snapshots_sent: Counter,
    pub snapshots_installed: Counter,
    pub splits: Counter,
    /// Transactions across partitions this shard coordinated (read-only ones included).
    pub txn_across: Counter,
    /// Transactions a coordinator left that this shard's leaders finished.
    pub txn_recovered: Counter,
    pub expired_keys_collected: Counter,
    pub ephemeral_bytes: Gauge,
    pub quiesced: Gauge,
    pub disk_full: Gauge,
    pub rocksdb_sst_bytes: Gauge,
    pub rocksdb_memtable_bytes: Gauge,
    pub rocksdb_write_stopped: Gauge,
    pub clock_ok: Gauge,
    requests: RefCell<HashMap<(&'static str, &'static str), Counter>>,
    latency: RefCell<HashMap<&'static str, Histogram>>,
    all: Arc<Metrics>,
}

/// What a partition replica reports once a second.
pub struct PartitionGauges {
    pub partition: u64,
    pub leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub proposals: usize,
}

impl ShardMetrics {
    /// One answered request: `op` as [`kahuna_protocol::Op::name`] gives it, `outcome` "ok" or
    /// the error code's name.
    pub fn request(&self, op: &'static str, outcome: &'static str, seconds: f64) {
        let mut requests = self.requests.borrow_mut();
        let counter = requests.entry((op, outcome)).or_insert_with(|| {
            let l = RequestLabels {
                shard: self.shard.clone(),
                op: op.to_string(),
                outcome: outcome.to_string(),
            };
            self.all.requests.get_or_create_owned(&l)
        });
        counter.inc();
        let mut latency = self.latency.borrow_mut();
        let h = latency.entry(op).or_insert_with(|| {
            let l = OpLabels { shard: self.shard.clone(), op: op.to_string() };
            self.all.request_seconds.get_or_create_owned(&l)
        });
        h.observe(seconds);
    }

    pub fn partition(&self, g: &PartitionGauges) {
        let l = PartitionLabels { partition: g.partition.to_string() };
        let all = &self.all;
        all.partition_leader.get_or_create(&l).set(g.leader as i64);
        all.partition_term.get_or_create(&l).set(g.term as i64);
        all.partition_commit.get_or_create(&l).set(g.commit as i64);
        all.partition_applied.get_or_create(&l).set(g.applied as i64);
        all.partition_apply_lag.get_or_create(&l).set(g.commit.saturating_sub(g.applied) as i64);
        all.partition_proposals.get_or_create(&l).set(g.proposals as i64);
    }

    pub fn clock_offset(&self, peer: u64, offset_ms: i64) {
        let l = PeerLabels { shard: self.shard.clone(), peer: peer.to_string() };
        self.all.clock_offset_seconds.get_or_create(&l).set(offset_ms as f64 / 1000.0);
    }
}

/// Process metrics, read from /proc when scraped.
#[derive(Debug)]
struct ProcessCollector;

fn proc_stat() -> Option<(f64, f64)> {
    // utime and stime (fields 14, 15) in clock ticks; start time (22) in ticks since boot.
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
    let uptime: f64 =
        std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let started_ticks: f64 = f.get(19)?.parse().ok()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    Some((cpu, now.as_secs_f64() - uptime + started_ticks / ticks))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // SAFETY: sysconf only reads a configuration value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64;
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
            .unwrap_or(0)
            * page;
        let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0);
        let (cpu, start) = proc_stat().unwrap_or((0.0, 0.0));
        let g = ConstGauge::new(rss);
        g.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(fds);
        g.encode(encoder.encode_descriptor(
            "process_open_fds",
            "Open file descriptors",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(cpu);
        c.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent in seconds",
            None,
            c.metric_type(),
        )?)?;
        let g = ConstGauge::new(start);
        g.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Serves `/metrics` and `/health` on `addr` from a thread of its own. One request at a time,
/// each bounded (8 KiB of request, 2 s to send it): a scraper is one client.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let mut req = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            while req.len() < 8192 && !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, kind, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                "/health" => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "try /metrics or /health\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes()));
        }
    })?;
    Ok(())
}
