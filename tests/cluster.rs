//! Three real nodes: replication, any node serving any request, a minority and a majority
//! killed with `kill -9`, a follower caught up by snapshot, clients that learn the leaders.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kahuna_client::{ClientOptions, GetOptions, ScanOptions, SetOptions};
use kahuna_tests::{
    assert_replicas_equal, client_via, start_cluster, status, watchdog, Client, Durability,
    ErrorCode, Server,
};

fn client(s: &Server, timeout_ms: u64) -> Client {
    let opts = ClientOptions { timeout: Duration::from_millis(timeout_ms), ..Default::default() };
    Client::connect(&[s.endpoint()], opts).unwrap()
}

fn audit(nodes: &[&Server], acked: &BTreeMap<String, u64>) {
    for s in nodes {
        let c = client(s, 10_000);
        for (key, rev) in acked {
            let it = c
                .kv_get(key.as_bytes(), GetOptions::default())
                .unwrap_or_else(|e| panic!("{key} via {}: {e}", s.endpoint()));
            assert_eq!(it.revision, *rev, "{key} via {}", s.endpoint());
            assert_eq!(it.value, key.as_bytes(), "{key}");
        }
    }
}

/// Sets `key` to itself. A write in flight when a node dies may end in TIMEOUT (outcome
/// unknown): then read back what happened and write again only if it did not land.
fn set_settled(c: &Client, key: &str) -> u64 {
    for _ in 0..5 {
        match c.kv_set(key.as_bytes(), key.as_bytes(), SetOptions::default()) {
            Ok(rev) => return rev,
            Err(e) if e.code == ErrorCode::Timeout => {
                if let Ok(it) = c.kv_get(key.as_bytes(), GetOptions::default()) {
                    return it.revision;
                }
            }
            Err(e) => panic!("{key}: {e}"),
        }
    }
    panic!("{key}: no answer after 5 tries");
}

#[test]
fn three_nodes_replicate_serve_anywhere_and_survive_a_minority() {
    watchdog(Duration::from_secs(240));
    let mut nodes = start_cluster(3, &[]);
    let mut acked = BTreeMap::new();
    let mut seq_max = 0;
    // Writes through every node; any node forwards to the partition's leader.
    for (i, s) in nodes.iter().enumerate() {
        let c = client(s, 10_000);
        for k in 0..60 {
            let key = format!("{}/n{i}/{k}", ["alpha", "kilo", "tango", "zulu"][k % 4]);
            let rev = c.kv_set(key.as_bytes(), key.as_bytes(), SetOptions::default()).unwrap();
            acked.insert(key, rev);
        }
        let (first, count) = c.seq_next(b"ids", 10).unwrap();
        assert!(first > seq_max);
        seq_max = first + count - 1;
    }
    audit(&[&nodes[0], &nodes[1], &nodes[2]], &acked);
    // A big scan page (read off the shard loop) through every node sees exactly those keys.
    for s in &nodes {
        let page = client(s, 10_000)
            .kv_scan(b"alpha/", ScanOptions { limit: 1000, ..Default::default() })
            .unwrap();
        let want: Vec<&String> = acked.keys().filter(|k| k.starts_with("alpha/")).collect();
        let got: Vec<String> =
            page.items.iter().map(|i| String::from_utf8(i.key.clone()).unwrap()).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
        assert!(page.next.is_none());
    }

    // Kill one node: the other two keep writing and reading (after an election, within the
    // client's deadline), and sequences keep growing.
    nodes[0].kill9();
    for (i, s) in nodes[1..].iter().enumerate() {
        let c = client(s, 15_000);
        for k in 0..40 {
            let key = format!("after/n{i}/{k}");
            acked.insert(key.clone(), set_settled(&c, &key));
        }
        let (first, count) = c.seq_next(b"ids", 10).unwrap();
        assert!(first > seq_max, "sequence went back: {first} after {seq_max}");
        seq_max = first + count - 1;
    }
    audit(&[&nodes[1], &nodes[2]], &acked);

    // The killed node comes back and catches up from the leaders' logs.
    nodes[0].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = client(&nodes[0], 5_000);
        let all = acked.iter().all(|(k, r)| {
            c.kv_get(k.as_bytes(), GetOptions::default()).map(|i| i.revision) == Ok(*r)
        });
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 did not catch up");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Kill a majority: requests fail with UNAVAILABLE or TIMEOUT within their deadline.
    nodes[1].kill9();
    nodes[2].kill9();
    let c = client(&nodes[0], 2_000);
    let start = Instant::now();
    let err = c.kv_set(b"no/quorum", b"x", SetOptions::default()).unwrap_err();
    assert!(matches!(err.code, ErrorCode::Unavailable | ErrorCode::Timeout), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    let err = c.kv_get(b"alpha/n0/0", GetOptions::default()).unwrap_err();
    assert!(
        matches!(err.code, ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::NotLeader),
        "{err}"
    );

    // One comes back: service resumes.
    nodes[1].relaunch();
    let c = client(&nodes[0], 20_000);
    c.kv_set(b"quorum/again", b"x", SetOptions::default()).unwrap();
    let (first, _) = c.seq_next(b"ids", 1).unwrap();
    assert!(first > seq_max);
    assert!(c.lock_acquire(b"l", b"o", 1000, Durability::Persistent).unwrap().acquired);
}

#[test]
fn followers_that_missed_compacted_entries_or_lost_their_data_catch_up_by_snapshot() {
    watchdog(Duration::from_secs(240));
    // A small in-memory log: the leader compacts past the stopped follower quickly.
    let mut nodes = start_cluster(3, &["--max-log-entries-in-memory", "50"]);
    nodes[2].kill9();
    let mut acked = BTreeMap::new();
    let c = client(&nodes[0], 15_000);
    for k in 0..400 {
        let key = format!("{}/{k}", ["alpha", "kilo", "tango", "zulu"][k % 4]);
        acked.insert(key.clone(), set_settled(&c, &key));
    }
    c.lock_acquire(b"lk", b"owner-a", 60_000, Durability::Persistent).unwrap();
    nodes[2].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes[2].log_text().contains("installed a snapshot") {
        assert!(Instant::now() < deadline, "no snapshot was installed:\n{}", nodes[2].log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The restarted follower holds exactly the leader's state: equal checksums per partition.
    assert_replicas_equal(&nodes[0], 3);

    // A node whose data directory is wiped comes back empty under its id: its leaders notice it
    // lost what it had acknowledged and send it everything again (a snapshot). Leaders settle
    // first, so the wiped node follows partitions whose leaders stay put.
    let out = nodes[0].cli(&["--timeout-ms", "30000", "cluster", "wait", "--balanced"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    nodes[1].kill9();
    std::fs::remove_dir_all(&nodes[1].data_dir).unwrap();
    nodes[1].relaunch();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes[1].log_text().contains("installed a snapshot") {
        assert!(
            Instant::now() < deadline,
            "the wiped node got no snapshot:\n{}",
            nodes[1].log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_replicas_equal(&nodes[0], 3);
    let noticed = nodes.iter().any(|n| n.log_text().contains("lost entries it had acknowledged"));
    assert!(noticed, "no leader noticed the wiped replica:\n{}", nodes[1].log_text());

    // Without node 1, every quorum is the two restarted nodes: all acknowledged writes are there.
    nodes[0].kill9();
    audit(&[&nodes[1], &nodes[2]], &acked);
    let c = client(&nodes[2], 15_000);
    let l = c.lock_get(b"lk", Durability::Persistent).unwrap();
    assert_eq!(l.owner.as_deref(), Some(&b"owner-a"[..]));
}

#[test]
fn clients_learn_leaders_and_skip_the_forwarding_hop() {
    watchdog(Duration::from_secs(120));
    let nodes = start_cluster(3, &[]);
    let out = nodes[0].cli(&["--timeout-ms", "30000", "cluster", "wait", "--balanced"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let forwarded = || -> u64 { status(&nodes[0], false).nodes.iter().map(|n| n.forwarded).sum() };
    // Keys over every partition; both clients know only node 1, which leads a third of them.
    let keys: Vec<String> =
        (0..300).map(|i| format!("{}/{i}", (b'!' + (i % 90) as u8) as char)).collect();
    let write_all = |c: &Client| {
        for k in &keys {
            c.kv_set(k.as_bytes(), b"v", SetOptions::default()).unwrap();
        }
    };

    let before = forwarded();
    write_all(&client_via(&nodes[0], 10_000));
    let via_node = forwarded() - before;
    assert!(via_node >= 150, "only {via_node} of 300 writes were forwarded without routing");

    let routed = client(&nodes[0], 10_000);
    // The routing table loads in the background; give it a moment, as a long-lived client has.
    routed.lock_get(b"warm-up", Durability::Persistent).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = forwarded();
    write_all(&routed);
    let with_routing = forwarded() - before;
    eprintln!("forwarded: {via_node} of 300 without routing, {with_routing} with");
    assert!(with_routing <= 10, "{with_routing} of 300 routed writes still took a hop");
}
