//! Failover under load: three real nodes, clients on every node, `kill -9` of the leader that
//! matters, then an audit of what was acknowledged. Also `cluster status`, leader rebalancing
//! when the node returns, and equal checksums on every replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kahuna_client::{GetOptions, ReplicaRole, SetOptions};
use kahuna_tests::{
    assert_replicas_equal, client_via, leader_of, start_cluster, start_cluster_with, status,
    wait_for_preferred_leaders, watchdog, ClusterOpts, Durability, ErrorCode,
};

/// What a writer knows of one key: its last acknowledged revision, and whether a write with an
/// unknown outcome followed it (then a higher revision is also right).
#[derive(Clone, Copy, Default)]
struct Known {
    acked: u64,
    value: u64,
    unknown_after: bool,
}

#[test]
fn killing_the_busiest_leader_mid_load_loses_no_acknowledged_write() {
    watchdog(Duration::from_secs(300));
    // Two shards per node: requests cross the mesh, Raft traffic the per-shard peer links.
    let mut nodes = start_cluster_with(ClusterOpts { shards: 2, ..Default::default() }).nodes;
    let out = nodes[1].cli(&["--timeout-ms", "30000", "cluster", "wait", "--balanced"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The status lists every node up and every partition with a leader and three replicas.
    let (ok, v) = nodes[1].cli_json(&["cluster", "status"]);
    assert!(ok, "{v}");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true), "{v}");
    let parts = v["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 8, "{v}");
    for p in parts {
        assert!(p["leader"].as_u64().is_some(), "{p}");
        assert_eq!(p["replicas"].as_array().unwrap().len(), 3, "{p}");
    }
    let table = String::from_utf8_lossy(&nodes[2].cli(&["cluster", "status"]).stdout).to_string();
    assert!(table.contains("LEADER") && table.contains("FORWARDED"), "{table}");
    assert!(table.contains("127.0.0.1"), "{table}");

    // Two writers per node, each overwriting its own 40 keys, for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let known: Arc<Mutex<BTreeMap<String, Known>>> = Arc::default();
    let mut writers = Vec::new();
    for (n, s) in nodes.iter().enumerate() {
        for w in 0..2 {
            let c = client_via(s, 3_000);
            let (stop, known) = (stop.clone(), known.clone());
            writers.push(std::thread::spawn(move || {
                let mut acks = 0u64;
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    // Keys spread over every partition's range.
                    let key = format!("{}{n}{w}/{}", (b'!' + (i % 90) as u8) as char, i % 40);
                    match c.kv_set(key.as_bytes(), &i.to_le_bytes(), SetOptions::default()) {
                        Ok(rev) => {
                            acks += 1;
                            known
                                .lock()
                                .unwrap()
                                .insert(key, Known { acked: rev, value: i, unknown_after: false });
                        }
                        Err(e) if e.code == ErrorCode::Timeout => {
                            known.lock().unwrap().entry(key).or_default().unknown_after = true;
                        }
                        Err(e) => {
                            assert!(e.code.is_retryable(), "{key}: {e}");
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                acks
            }));
        }
    }

    // Under load, find the busiest partition (highest commit index) and kill its leader.
    std::thread::sleep(Duration::from_millis(1500));
    let st = status(&nodes[0], false);
    let busiest = st.partitions.iter().max_by_key(|p| p.leader().map(|l| l.commit)).unwrap();
    let victim = busiest.leader().unwrap().node;
    let before = known.lock().unwrap().values().filter(|k| k.acked > 0).count();
    nodes[victim as usize - 1].kill9();

    // The status shows it down and its partitions led by the survivors.
    let alive = nodes.iter().find(|s| s.child_running()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(alive, false);
        let down = st.nodes.iter().find(|n| n.id == victim).is_some_and(|n| !n.up);
        let led = st
            .partitions
            .iter()
            .all(|p| p.leader().is_some_and(|l| l.node != victim && l.role == ReplicaRole::Leader));
        if down && led {
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {st:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let acks: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let known = known.lock().unwrap().clone();
    let after = known.values().filter(|k| k.acked > 0).count();
    assert!(acks > 200 && after > before, "too little load: {acks} acks, {before} -> {after} keys");

    // The victim returns, catches up, and takes its partitions back.
    nodes[victim as usize - 1].restart();
    wait_for_preferred_leaders(&nodes[0], Duration::from_secs(40));

    // Every acknowledged write is readable through every node with its revision.
    for s in &nodes {
        let c = client_via(s, 10_000);
        for (key, k) in known.iter().filter(|(_, k)| k.acked > 0) {
            let it = c
                .kv_get(key.as_bytes(), GetOptions::default())
                .unwrap_or_else(|e| panic!("{key} via {}: {e}", s.endpoint()));
            if k.unknown_after {
                assert!(it.revision >= k.acked, "{key} went back: {} < {}", it.revision, k.acked);
            } else {
                assert_eq!(it.revision, k.acked, "{key} via {}", s.endpoint());
                assert_eq!(it.value, k.value.to_le_bytes(), "{key} via {}", s.endpoint());
            }
        }
    }
    assert_replicas_equal(&nodes[0], 3);
}

/// One lock grant as its holder used it: from the answer until it sent the release.
#[derive(Clone, Copy, Debug)]
struct Grant {
    token: u64,
    holder: usize,
    from: Instant,
    until: Instant,
}

#[test]
fn lock_holders_never_overlap_across_a_leader_kill() {
    watchdog(Duration::from_secs(240));
    let mut nodes = start_cluster(3, &[]);
    let lock = b"jobs/exclusive";
    let lease = Duration::from_millis(1500);
    let victim = leader_of(&nodes[0], lock);
    // Contenders enter through the two nodes that survive.
    let entries: Vec<usize> = (0..3).filter(|i| *i as u64 + 1 != victim).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let grants: Arc<Mutex<Vec<Grant>>> = Arc::default();
    let mut threads = Vec::new();
    for (holder, &node) in entries.iter().enumerate() {
        let c = client_via(&nodes[node], 3_000);
        let (stop, grants) = (stop.clone(), grants.clone());
        threads.push(std::thread::spawn(move || {
            let owner = format!("owner-{holder}");
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let got = c.lock_acquire(lock, owner.as_bytes(), 1500, Durability::Persistent);
                let Ok(state) = got else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if !state.acquired {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let from = Instant::now();
                if from.duration_since(sent) + Duration::from_millis(40) >= lease {
                    // A holder counts its lease from when it asked: an answer this late leaves
                    // no time to use it safely.
                    continue;
                }
                std::thread::sleep(Duration::from_millis(40));
                // The critical section ends when the holder sends its release, whatever the
                // answer: from then on it no longer acts as the holder.
                let until = Instant::now();
                let _ = c.lock_release(lock, owner.as_bytes(), Durability::Persistent);
                grants.lock().unwrap().push(Grant {
                    token: state.fencing_token,
                    holder,
                    from,
                    until,
                });
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let before = grants.lock().unwrap().len();
    nodes[victim as usize - 1].kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while grants.lock().unwrap().len() < before + 20 {
        assert!(Instant::now() < deadline, "no grants after the failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let mut grants = grants.lock().unwrap().clone();
    assert!(before >= 5, "too few grants before the kill: {before}");
    grants.sort_by_key(|g| (g.token, g.from));
    assert!(grants.iter().map(|g| g.holder).collect::<std::collections::BTreeSet<_>>().len() == 2);
    for (i, b) in grants.iter().enumerate() {
        for a in &grants[..i] {
            if a.token == b.token {
                // The same grant, acquired again by its owner (acquire is idempotent).
                assert_eq!(a.holder, b.holder, "one token, two holders: {a:?} {b:?}");
                continue;
            }
            assert!(
                a.until <= b.from + Duration::from_millis(5),
                "token {} was held {:?} past the grant of token {}: {a:?} {b:?}",
                a.token,
                a.until - b.from,
                b.token
            );
        }
    }
}

#[test]
fn sequence_blocks_through_every_node_never_overlap_across_a_leader_kill() {
    watchdog(Duration::from_secs(240));
    let mut nodes = start_cluster(3, &[]);
    let name = b"invoices";
    let victim = leader_of(&nodes[0], name);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for s in &nodes {
        let c = client_via(s, 3_000);
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut blocks = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                match c.seq_next(name, 1 + i % 7) {
                    Ok((first, count)) => {
                        assert_eq!(count, 1 + i % 7);
                        if let Some((f, n)) = blocks.last() {
                            assert!(first >= f + n, "blocks went back: {first} after [{f}, +{n})");
                        }
                        blocks.push((first, count));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            blocks
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    nodes[victim as usize - 1].kill9();
    std::thread::sleep(Duration::from_millis(4000));
    stop.store(true, Ordering::SeqCst);
    let per_node: Vec<Vec<(u64, u64)>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let via_survivors: usize = per_node
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != victim)
        .map(|(_, b)| b.len())
        .sum();
    assert!(via_survivors > 20, "too few blocks: {via_survivors}");
    let mut all: Vec<(u64, u64)> = per_node.into_iter().flatten().collect();
    all.sort();
    for w in all.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "blocks overlap: {:?} and {:?}", w[0], w[1]);
    }
    // Numbers keep increasing after the failover, through a survivor.
    let alive = nodes.iter().find(|s| s.child_running()).unwrap();
    let (first, _) = client_via(alive, 10_000).seq_next(name, 1).unwrap();
    let top = all.last().map(|(f, n)| f + n).unwrap();
    assert!(first >= top, "{first} < {top}");
}
