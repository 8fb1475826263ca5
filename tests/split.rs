//! Splits: a partition cut in two while clients run (by hand, by size, by load, and with a node
//! killed in the middle) loses no acknowledged write, keeps every history linearizable, keeps
//! fencing tokens and sequence blocks growing on either side, and leaves ranges that cover the
//! key space with no gap or overlap.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kahuna_client::{ClusterStatus, GetOptions, ScanOptions, SetOptions};
use kahuna_tests::workload::{Workload, WorkloadOpts};
use kahuna_tests::{
    client_via, split_at, start_cluster_with, status, watchdog, ClusterOpts, Durability,
};

/// The partitions, as the replicas report them, cover the key space exactly once.
fn assert_covers(st: &ClusterStatus) {
    let ps = &st.partitions;
    assert!(!ps.is_empty());
    assert!(ps[0].start.is_empty(), "nothing covers the first keys: {ps:#?}");
    assert!(ps.last().unwrap().end.is_empty(), "nothing covers the last keys: {ps:#?}");
    for w in ps.windows(2) {
        assert_eq!(w[0].end, w[1].start, "a gap or an overlap between {} and {}", w[0].id, w[1].id);
    }
    let mut ids: Vec<u64> = ps.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ps.len(), "an id twice: {ps:#?}");
}

/// Every key of `prefix`, page by page, in order.
fn scan_all(c: &kahuna_client::blocking::Client, prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = c
            .kv_scan(
                prefix,
                ScanOptions { durability: Durability::Persistent, limit: 97, start_after: after },
            )
            .unwrap();
        keys.extend(page.items.into_iter().map(|i| i.key));
        match page.next {
            Some(n) => after = Some(n),
            None => return keys,
        }
    }
}

#[test]
fn splits_under_load_and_a_kill_lose_nothing_and_keep_the_map_whole() {
    watchdog(Duration::from_secs(300));
    let flags = ["--partitions", "2", "--split-size-mb", "0", "--split-load-qps", "0"];
    let mut c = start_cluster_with(ClusterOpts { shards: 2, extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Keys spread over the key space, to scan at the end.
    let cl = client_via(c.node(1), 10_000);
    let mut written = Vec::new();
    for i in 0..300u32 {
        let key = format!("{}scan/{i:03}", (b'!' + (i % 90) as u8) as char);
        cl.kv_set(key.as_bytes(), b"v", SetOptions::default()).unwrap();
        written.push(key.into_bytes());
    }
    written.sort();

    let w = Workload::start(&c.endpoints(), WorkloadOpts::default(), 11);
    // Between the workload's hot keys ('!', '&', '6', 'F', '[', 'k' + "hot/…"), inside its lock
    // and sequence ("chaos/lock", "chaos/seq") and between them.
    let points = ["\"", "0", "B", "T", "c", "chaos/m", "e", "q", "%", "8"];
    let mut splits = 0;
    for (i, at) in points.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(400));
        if i == 5 {
            // Kill a node while a split is on its way: its outcome is unknown, nothing is lost.
            let id = c.node(2).endpoint();
            let st = status(c.node(1), false);
            let pid = st.locate(at.as_bytes()).unwrap().id.to_string();
            let mut pending = std::process::Command::new(kahuna_tests::bin("kahuna-cli"))
                .args(["--endpoints", &id, "--timeout-ms", "5000", "cluster", "split", &pid, at])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(15));
            c.node_mut(2).kill9();
            let _ = pending.wait();
            std::thread::sleep(Duration::from_millis(1500));
            c.node_mut(2).restart();
            continue;
        }
        if split_at(&c, 1 + (i as u64 % 3), at) {
            splits += 1;
        }
    }
    let verdict = w.finish();
    println!("{verdict:?}");
    assert!(verdict.passed(), "{:#?}", verdict.problems);
    assert!(verdict.ok > 100, "too little got through: {verdict:?}");
    assert!(splits >= 6, "only {splits} splits");

    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = status(c.node(3), false);
    assert_covers(&st);
    assert!(st.partitions.len() >= 2 + splits, "{} partitions", st.partitions.len());
    // Every node routes by the same ranges (the restarted one learned the splits it missed).
    for n in 1..=3 {
        let mine: Vec<_> = status(c.node(n), false)
            .partitions
            .iter()
            .map(|p| (p.id, p.start.clone(), p.end.clone()))
            .collect();
        let theirs: Vec<_> =
            st.partitions.iter().map(|p| (p.id, p.start.clone(), p.end.clone())).collect();
        assert_eq!(mine, theirs, "node {n}");
    }
    kahuna_tests::assert_replicas_equal(c.node(1), 3);
    // A scan across every split point, through every node, is complete and ordered.
    for n in 1..=3 {
        let keys: Vec<Vec<u8>> = scan_all(&client_via(c.node(n), 10_000), b"")
            .into_iter()
            .filter(|k| k.windows(5).any(|w| w == b"scan/"))
            .collect();
        assert_eq!(keys, written, "scan through node {n}");
    }
    // A backup copies the split partitions, each with the range its copy had, covering all.
    let dir = c.node(1).data_dir.with_extension("backup");
    let out = c.node(2).cli(&["--timeout-ms", "30000", "backup", "create", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let ranges: Vec<(String, String)> = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_str().unwrap().into(), p["end"].as_str().unwrap().into()))
        .collect();
    assert_eq!(ranges.len(), st.partitions.len());
    assert_eq!(ranges[0].0, "");
    assert_eq!(ranges.last().unwrap().1, "");
    for w in ranges.windows(2) {
        assert_eq!(w[0].1, w[1].0, "the backup leaves a gap");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pseudo-random bytes (RocksDB compresses: the size threshold counts compressed bytes).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_partition_past_its_size_splits_and_locks_sequences_and_scans_carry_on() {
    watchdog(Duration::from_secs(240));
    let flags = [
        "--partitions",
        "1",
        "--split-size-mb",
        "1",
        "--wal-segment-mb",
        "1",
        "--split-load-qps",
        "0",
    ];
    let c = start_cluster_with(ClusterOpts { extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cl = client_via(c.node(2), 10_000);
    // A lock and a sequence on either side of where the data will be cut.
    let mut tokens = Vec::new();
    for r in [&b"a-lock"[..], b"z-lock"] {
        let l = cl.lock_acquire(r, b"o", 60_000, Durability::Persistent).unwrap();
        cl.lock_release(r, b"o", Durability::Persistent).unwrap();
        tokens.push(l.fencing_token);
    }
    let firsts: Vec<u64> =
        [&b"a-seq"[..], b"z-seq"].iter().map(|s| cl.seq_next(s, 10).unwrap().0).collect();
    let mut written = Vec::new();
    for i in 0..700u32 {
        let key = format!("data/{i:05}");
        cl.kv_set(key.as_bytes(), &noise(i as u64, 8 << 10), SetOptions::default()).unwrap();
        written.push(key.into_bytes());
    }
    // The size is measured every 10 s, once the data is flushed.
    let deadline = Instant::now() + Duration::from_secs(90);
    let st = loop {
        let st = status(c.node(1), false);
        if st.partitions.len() >= 2 {
            break st;
        }
        assert!(Instant::now() < deadline, "no split by size: {st:#?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_covers(&st);
    let cut = st.partitions[1].start.clone();
    assert!(cut.starts_with(b"data/"), "split at {:?}, not inside the data", cut);
    assert_eq!(scan_all(&cl, b"data/"), written);
    for (r, before) in [&b"a-lock"[..], b"z-lock"].iter().zip(&tokens) {
        let l = cl.lock_acquire(r, b"p", 60_000, Durability::Persistent).unwrap();
        assert!(
            l.acquired && l.fencing_token > *before,
            "{r:?}: {} after {before}",
            l.fencing_token
        );
    }
    for (s, before) in [&b"a-seq"[..], b"z-seq"].iter().zip(&firsts) {
        let (first, _) = cl.seq_next(s, 10).unwrap();
        assert_eq!(first, before + 10, "{s:?}");
    }
    let at = String::from_utf8(cut).unwrap();
    let got = cl.kv_get(at.as_bytes(), GetOptions::default()).unwrap();
    assert_eq!(got.revision, 1);
    kahuna_tests::assert_replicas_equal(c.node(1), 3);
}

#[test]
fn one_hot_prefix_splits_by_load_and_the_halves_are_led_by_different_nodes() {
    watchdog(Duration::from_secs(240));
    let flags = [
        "--partitions",
        "1",
        "--split-load-qps",
        "150",
        "--split-load-window-secs",
        "3",
        "--split-size-mb",
        "0",
    ];
    let c = start_cluster_with(ClusterOpts { extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let (stop, done) = (stop.clone(), done.clone());
            let cl = kahuna_tests::client_via(c.node(1 + t % 3), 5000);
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let key = format!("orders/{:04}", (i >> 33) % 2000);
                    if cl.kv_set(key.as_bytes(), b"x", SetOptions::default()).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = status(c.node(1), false);
        let leaders: std::collections::BTreeSet<u64> =
            st.partitions.iter().filter_map(|p| p.leader().map(|l| l.node)).collect();
        if st.partitions.len() >= 2 && leaders.len() >= 2 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "no split by load with leaders apart ({} writes): {st:#?}",
            done.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert_covers(&st);
    // The cut lies inside the hot prefix, where the load was.
    assert!(st.partitions[1].start.starts_with(b"orders/"), "{st:#?}");
    kahuna_tests::assert_replicas_equal(c.node(1), 3);
}

#[test]
fn a_replica_that_missed_a_split_by_snapshot_gets_the_new_half_too() {
    watchdog(Duration::from_secs(240));
    let flags = [
        "--partitions",
        "1",
        "--split-size-mb",
        "0",
        "--split-load-qps",
        "0",
        "--max-log-entries-in-memory",
        "20",
    ];
    let mut c = start_cluster_with(ClusterOpts { extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cl = client_via(c.node(1), 10_000);
    for i in 0..10 {
        cl.kv_set(format!("a/{i}").as_bytes(), b"before", SetOptions::default()).unwrap();
    }
    // Node 3 misses the split and more than its leader keeps in memory after it: it catches up
    // with a snapshot of the left half, taken after the split.
    c.node_mut(3).kill9();
    assert!(split_at(&c, 1, "m"), "the split");
    for i in 0..60 {
        for side in ["a", "z"] {
            let key = format!("{side}/{i}");
            cl.kv_set(key.as_bytes(), b"after", SetOptions::default()).unwrap();
        }
    }
    c.node_mut(3).restart();
    // Every partition has its three replicas again, equal.
    kahuna_tests::assert_replicas_equal(c.node(1), 3);
    let st = status(c.node(3), false);
    assert_covers(&st);
    assert_eq!(st.partitions.len(), 2, "{st:#?}");
    assert!(
        c.node(3).log_text().contains("starting its replica here empty"),
        "node 3 did not take the split-off partition's replica as the test meant"
    );
    // Node 3's copies answer once it leads.
    let z = client_via(c.node(3), 10_000).kv_get(b"z/59", GetOptions::default()).unwrap();
    assert_eq!(z.value, b"after");
}
