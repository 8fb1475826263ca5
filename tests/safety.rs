//! The holes a review found, each shown closed by a test that fails on the old behaviour:
//! lost answers (at-most-once writes), peer input, storage errors, WAL damage, reads after a
//! restart, configuration that collides, and apply settings that differ between nodes.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kahuna_client::{GetOptions, Op, SetOptions};
use kahuna_tests::proxy::{Faults, Proxy};
use kahuna_tests::{
    assert_replicas_equal, bin, client_via, start_cluster_with, status, watchdog, ClusterOpts,
    Durability, ErrorCode, Server,
};

/// Runs `kahuna-cli --output json` against `endpoint`; (success, JSON).
fn cli_at(endpoint: &str, args: &[&str]) -> (bool, serde_json::Value) {
    let out = std::process::Command::new(bin("kahuna-cli"))
        .args(["--endpoints", endpoint, "--output", "json", "--timeout-ms", "3000"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"));
    (out.status.success(), v)
}

/// Hole 1. A proxy in front of a node swallows the answer to one write and cuts the
/// connection. The client must report the write's outcome as unknown and must not send it
/// again: before, it answered UNAVAILABLE internally, re-sent the write, and reported CONFLICT
/// for an applied compare-and-set, NOT_HELD for an applied release, and burned a second
/// sequence block.
#[test]
fn a_write_whose_answer_is_lost_is_reported_unknown_and_never_sent_again() {
    watchdog(Duration::from_secs(120));
    let s = Server::start(&["--shards", "1", "--no-pin"]);
    let proxy = Proxy::start(s.port, 1, 7);
    let via = proxy.addr();
    let direct = s.endpoint();
    let lose_next_answer = || proxy.set(Faults { swallow_responses: 1, ..Default::default() });

    // A compare-and-set whose answer is lost: applied once, reported unknown.
    assert_eq!(cli_at(&direct, &["kv", "set", "k", "v1"]).1["revision"], 1);
    lose_next_answer();
    let (ok, v) = cli_at(&via, &["kv", "set", "k", "v2", "--if-revision", "1"]);
    assert!(!ok, "{v}");
    assert_eq!(v["error"]["code"], "TIMEOUT", "{v}");
    assert_eq!(v["error"]["outcome"], "unknown", "{v}");
    let (_, got) = cli_at(&direct, &["kv", "get", "k"]);
    assert_eq!((got["value"].as_str(), got["revision"].as_u64()), (Some("v2"), Some(2)), "{got}");

    // A release whose answer is lost: released once, reported unknown (not NOT_HELD).
    let (_, l) =
        cli_at(&direct, &["lock", "acquire", "job", "--owner", "a", "--lease-ms", "60000"]);
    assert_eq!(l["acquired"], true, "{l}");
    lose_next_answer();
    let (ok, v) = cli_at(&via, &["lock", "release", "job", "--owner", "a"]);
    assert!(!ok);
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["outcome"].as_str()),
        (Some("TIMEOUT"), Some("unknown")),
        "{v}"
    );
    assert_eq!(cli_at(&direct, &["lock", "get", "job"]).1["held"], false);

    // A sequence block whose answer is lost burns exactly that block.
    assert_eq!(cli_at(&direct, &["seq", "next", "ids", "--count", "10"]).1["first"], 1);
    lose_next_answer();
    let (ok, v) = cli_at(&via, &["seq", "next", "ids", "--count", "10"]);
    assert!(!ok && v["error"]["outcome"] == "unknown", "{v}");
    assert_eq!(cli_at(&direct, &["seq", "next", "ids", "--count", "10"]).1["first"], 21);

    // A read whose answer is lost is simply asked again.
    lose_next_answer();
    let (ok, v) = cli_at(&via, &["kv", "get", "k"]);
    assert!(ok && v["value"] == "v2", "{v}");
    assert!(proxy.injected() >= 4, "the proxy swallowed {} answers", proxy.injected());

    // The same through the library: the error is TIMEOUT, never a retried CONFLICT.
    // No leader routing: its background status request would be the answer the proxy loses.
    let opts = kahuna_client::ClientOptions { route_to_leaders: false, ..Default::default() };
    let c = kahuna_tests::Client::connect(std::slice::from_ref(&via), opts).unwrap();
    lose_next_answer();
    let e = c
        .kv_set(b"k", b"v3", SetOptions::default().if_revision(2))
        .expect_err("the answer was lost");
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    let it = client_via(&s, 3000).kv_get(b"k", GetOptions::default()).unwrap();
    assert_eq!((it.value.as_slice(), it.revision), (&b"v3"[..], 3));
}

/// A peer frame carrying a forwarded request: `[len][kind 2][from][token][partition][hops]`
/// then the client request without its length prefix.
fn forwarded_frame(from: u64, partition: u64, op: &Op) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let mut req = Vec::new();
    kahuna_protocol::encode_request(&mut fbb, 1, 1000, op, &mut req);
    let mut body = vec![2u8];
    body.extend_from_slice(&from.to_le_bytes());
    body.extend_from_slice(&77u64.to_le_bytes());
    body.extend_from_slice(&partition.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&req[4..]);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Holes 8 and the panic rule. A forwarded request is validated like a client's (a
/// `seq next --count 0` from a peer used to reach an assertion in apply, on every replica, on
/// every restart), and runs in the partition that owns its key whatever partition it names (a
/// sender's map may be behind a split; each apply checks the range too); garbage closes the link; and
/// a panic anywhere ends the whole process (exit 70) instead of leaving a half-dead node.
#[test]
fn peer_input_is_validated_and_a_panic_stops_the_whole_process() {
    watchdog(Duration::from_secs(180));
    let mut c = start_cluster_with(ClusterOpts::default());
    let st = status(c.node(1), false);
    let part = st.locate(b"bad-seq").unwrap().id;
    let other = st.partitions.iter().find(|p| p.id != part).unwrap().id;
    let mut peer = TcpStream::connect(("127.0.0.1", c.peer_ports[0])).unwrap();
    let zero = Op::SeqNext { name: b"bad-seq".to_vec(), count: 0 };
    peer.write_all(&forwarded_frame(2, part, &zero)).unwrap();
    let wrong = Op::SeqNext { name: b"bad-seq".to_vec(), count: 5 };
    peer.write_all(&forwarded_frame(2, other, &wrong)).unwrap();
    let mut junk = 40u32.to_le_bytes().to_vec();
    junk.extend_from_slice(&[0xee; 40]);
    peer.write_all(&junk).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for s in &mut c.nodes {
        assert_eq!(s.wait_exit(Duration::from_millis(1)), None, "a node died:\n{}", s.log_text());
    }
    // The invalid request was not applied; the one naming another partition (as a sender whose
    // map is behind a split would) ran once, in the key's own partition: the next block is 6.
    let (first, _) = client_via(c.node(1), 5000).seq_next(b"bad-seq", 1).unwrap();
    assert_eq!(first, 6);

    // A panic on a shard thread (injected before apply) stops the process with code 70.
    c.node(2).arm("pause_before_apply=panic");
    let _ = client_via(c.node(1), 3000).seq_next(b"any", 1);
    let code = c.node_mut(2).wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(70), "{}", c.node(2).log_text());
}

/// Hole 3. A RocksDB read error during apply used to read as "absent": a sequence restarted at
/// 1 and a fencing token at 1. Now the node stops (exit 74) and, restarted, continues above
/// every value handed out. A failed WAL write stops it too, and nothing of that batch was
/// acknowledged.
#[test]
fn storage_errors_stop_the_node_and_nothing_restarts_from_absent() {
    watchdog(Duration::from_secs(120));
    let mut s = Server::start(&["--shards", "1", "--no-pin"]);
    let c = client_via(&s, 3000);
    for i in 0..3 {
        assert_eq!(c.seq_next(b"ids", 5).unwrap().0, 1 + 5 * i);
    }
    for owner in [&b"a"[..], b"b"] {
        assert!(c.lock_acquire(b"job", owner, 60_000, Durability::Persistent).unwrap().acquired);
        c.lock_release(b"job", owner, Durability::Persistent).unwrap();
    }
    s.arm("rocksdb_read_error=return");
    let e = c.seq_next(b"ids", 5).expect_err("the node stopped");
    assert_ne!(e.code, ErrorCode::Invalid, "{e}");
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(74), "{}", s.log_text());
    assert!(s.log_text().contains("fatal storage error"), "{}", s.log_text());
    s.restart();
    let c = client_via(&s, 3000);
    let (first, _) = c.seq_next(b"ids", 5).unwrap();
    assert!(first > 15, "the sequence went back to {first}");
    let l = c.lock_acquire(b"job", b"c", 60_000, Durability::Persistent).unwrap();
    assert_eq!(l.fencing_token, 3, "the fencing token went back");

    // A WAL write error: the write is never acknowledged, the node stops.
    s.arm("wal_write_error=return");
    let e = c.kv_set(b"w", b"1", SetOptions::default()).expect_err("the batch failed");
    assert!(matches!(e.code, ErrorCode::Timeout), "{e}");
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(74));
    s.restart();
    let c = client_via(&s, 3000);
    assert_eq!(c.kv_get(b"w", GetOptions::default()).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(c.kv_set(b"w", b"2", SetOptions::default()).unwrap(), 1);
}

/// Hole 4. A bit flip in the middle of the WAL used to delete every later segment. Now the
/// node refuses to start (exit 65) naming the file and offset, and every file stays as it was.
#[test]
fn wal_damage_in_the_middle_refuses_to_start_and_deletes_nothing() {
    watchdog(Duration::from_secs(120));
    let mut s = Server::start(&["--shards", "1", "--no-pin", "--wal-segment-mb", "1"]);
    let c = client_via(&s, 5000);
    // Write until the log spans two segments (batches are 4 KiB-aligned), and stop before a
    // second sealed segment would start a flush that releases the first.
    let wal = s.data_dir.join("shard-0").join("wal");
    let written = || {
        std::fs::read_dir(&wal)
            .unwrap()
            .filter(|e| std::fs::read(e.as_ref().unwrap().path()).unwrap().iter().any(|b| *b != 0))
            .count()
    };
    let value = vec![7u8; 2000];
    let mut i = 0;
    while written() < 2 {
        i += 1;
        assert!(i < 2000, "the WAL never rolled");
        c.kv_set(format!("k{i}").as_bytes(), &value, SetOptions::default()).unwrap();
    }
    for j in 0..5 {
        c.kv_set(format!("tail{j}").as_bytes(), &value, SetOptions::default()).unwrap();
    }
    s.kill9();
    let mut segs: Vec<_> = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).collect();
    segs.retain(|p| std::fs::read(p).unwrap().iter().any(|b| *b != 0));
    segs.sort();
    assert!(segs.len() >= 2, "{segs:?}");
    let snapshot = |segs: &[std::path::PathBuf]| -> Vec<(String, Vec<u8>)> {
        segs.iter().map(|p| (p.display().to_string(), std::fs::read(p).unwrap())).collect()
    };
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&segs[0], &bytes).unwrap();
    let before = snapshot(&segs);
    let (code, err) = s.run_to_exit(&[], Duration::from_secs(30));
    assert_eq!(code, Some(65), "{err}");
    let name = segs[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name) && err.contains("at byte"), "{err}");
    let mut after: Vec<_> = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).collect();
    after.retain(|p| std::fs::read(p).unwrap().iter().any(|b| *b != 0));
    after.sort();
    assert_eq!(after, segs, "segments were added or removed");
    assert_eq!(snapshot(&segs), before, "a segment was changed");
}

/// Hole 5. A leader serves no read before it has applied an entry of its own term. A single
/// node restarted with its apply held back (the `defer_apply` failpoint, a slow apply) used to
/// answer a read at once from the state before the restart's replay: NOT_FOUND for a key it
/// had acknowledged.
#[test]
fn reads_wait_for_the_leaders_own_entry_after_a_restart() {
    watchdog(Duration::from_secs(120));
    let mut s = Server::start(&["--shards", "1", "--no-pin"]);
    let c = client_via(&s, 3000);
    for i in 1..=50u64 {
        assert_eq!(c.kv_set(b"k", &i.to_le_bytes(), SetOptions::default()).unwrap(), i);
    }
    s.kill9();
    s.set_env(&[("FAILPOINTS", "defer_apply=return")]);
    s.relaunch();
    s.wait_listening();
    let endpoint = s.endpoint();
    let reader = std::thread::spawn(move || {
        let c = kahuna_tests::Client::new(
            &[endpoint],
            kahuna_client::ClientOptions { timeout: Duration::from_secs(15), ..Default::default() },
        )
        .unwrap();
        let t = Instant::now();
        (c.kv_get(b"k", GetOptions::default()), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!reader.is_finished(), "a read was served before the leader applied its own entry");
    s.arm("");
    let (got, took) = reader.join().unwrap();
    let it = got.unwrap();
    assert_eq!((it.value, it.revision), (50u64.to_le_bytes().to_vec(), 50));
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

/// Hole 7. Three nodes on one host with two shards each and consecutive peer ports: node 1's
/// shard 1 would listen on node 2's peer port. Refused at start, saying which. And `cluster
/// wait` waits through "connection refused" while nodes start.
#[test]
fn colliding_ports_are_refused_and_cluster_wait_waits_for_starting_nodes() {
    watchdog(Duration::from_secs(120));
    let s = Server::launch(&["--no-pin"]);
    let (code, err) = s.run_to_exit(
        &[
            "--id",
            "1",
            "--shards",
            "2",
            "--initial-cluster",
            "1=127.0.0.1:17101,2=127.0.0.1:17102,3=127.0.0.1:17103",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("node 1's peer ports 127.0.0.1:17101-17102 overlap node 2's"), "{err}");
    drop(s);

    let mut c = start_cluster_with(ClusterOpts { wait: false, ..Default::default() });
    for s in &mut c.nodes {
        s.kill9();
    }
    let endpoints = c.endpoints().join(",");
    let wait = std::process::Command::new(bin("kahuna-cli"))
        .args(["--endpoints", &endpoints, "--timeout-ms", "40000", "cluster", "wait"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for s in &mut c.nodes {
        s.relaunch();
    }
    let out = wait.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Hole 9. Apply depends only on the log: a node started with another history retention used
/// to keep other history than its peers, so replicas of one partition differed.
#[test]
fn replicas_with_different_local_settings_stay_equal() {
    watchdog(Duration::from_secs(120));
    let c = start_cluster_with(ClusterOpts {
        per_node: &[(1, &["--history-retention", "2"])],
        ..Default::default()
    });
    for via in [2, 3] {
        let cl = client_via(c.node(via), 5000);
        for key in ["a", "m", "z", "~x"] {
            for i in 0..10u64 {
                cl.kv_set(key.as_bytes(), &i.to_le_bytes(), SetOptions::default()).unwrap();
            }
        }
    }
    assert_replicas_equal(c.node(1), 3);
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Hole 6. A node whose clock runs 5 s ahead (more than the 500 ms the cluster assumes): it
/// finds itself off from its peers and says so in `cluster status`; it grants no leases and
/// hands the leadership it has to replicas whose clocks agree (which never hand it back); locks
/// asked for through it are granted by the others, timed by their clocks (before, one fast node
/// dragged every node's leases and TTLs forward with it).
#[test]
fn a_node_with_a_fast_clock_grants_no_leases_and_does_not_drag_the_others() {
    watchdog(Duration::from_secs(120));
    let mut c = start_cluster_with(ClusterOpts { wait: false, ..Default::default() });
    c.node_mut(3).kill9();
    c.node_mut(3).set_env(&[("FAILPOINTS", "clock_offset_ms=return(5000)")]);
    c.node_mut(3).relaunch();
    for s in &mut c.nodes {
        s.wait_ready();
    }
    // Clocks are compared once a second; a leader with an off clock steps down within a few.
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = status(c.node(1), false);
        let ok = |id: u64| st.nodes.iter().find(|n| n.id == id).map(|n| n.clock_ok);
        let leads = |id: u64| st.partitions.iter().any(|p| p.leader().map(|l| l.node) == Some(id));
        let all_led = st.partitions.iter().all(|p| p.leader().is_some());
        if ok(3) == Some(false) && ok(1) == Some(true) && !leads(3) && all_led {
            break st;
        }
        assert!(Instant::now() < deadline, "the fast clock was not handled: {st:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let n3 = st.nodes.iter().find(|n| n.id == 3).unwrap();
    assert!((-5600..=-4400).contains(&n3.clock_offset_ms), "{n3:?}");
    let table = String::from_utf8_lossy(&c.node(2).cli(&["cluster", "status"]).stdout).to_string();
    assert!(table.contains("OFF"), "{table}");
    assert!(c.node(3).log_text().contains("further than max_clock_offset_ms"));
    assert!(!c.node(1).log_text().contains("further than max_clock_offset_ms"));

    // Locks through node 3, in every partition: granted by the others, on their clocks.
    let cl = client_via(c.node(3), 5000);
    for p in &st.partitions {
        let mut key = p.start.clone();
        key.extend_from_slice(b"lock");
        let before = wall_ms();
        let l = cl.lock_acquire(&key, b"a", 3000, Durability::Persistent).unwrap();
        assert!(l.acquired);
        assert!(
            l.expires_at_ms < before + 3000 + 1000,
            "a lease timed by the fast clock: it ends {} ms from now",
            l.expires_at_ms as i64 - before as i64
        );
    }
    // And the partitions stay with the nodes whose clocks agree.
    std::thread::sleep(Duration::from_secs(4));
    let st = status(c.node(1), false);
    assert!(st.partitions.iter().all(|p| p.leader().is_some_and(|l| l.node != 3)), "{st:#?}");
}

/// Holes 2 and 10. A follower behind a partition far bigger than a peer frame (16 MiB) catches
/// up: the snapshot streams in 1 MiB chunks with flow control (before, one frame over the limit
/// closed the link, and the leader rebuilt the snapshot forever). Meanwhile writes to other
/// partitions all succeed and no partition holds an election: the install runs off the shard
/// loop, whose other partitions keep ticking. Two shards per node: the mesh and per-shard peer
/// links are in play.
#[test]
fn a_follower_behind_a_big_partition_catches_up_by_chunks_while_the_cluster_serves() {
    watchdog(Duration::from_secs(300));
    let mut c = start_cluster_with(ClusterOpts {
        shards: 2,
        extra: &["--max-log-entries-in-memory", "20", "--leader-rebalance-secs", "0"],
        ..Default::default()
    });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.node_mut(3).kill9();
    let cl = client_via(c.node(1), 20_000);
    let value = vec![0x5a; 512 << 10];
    for i in 0..70 {
        cl.kv_set(format!("big/{i:03}").as_bytes(), &value, SetOptions::default()).unwrap();
    }
    let before = status(c.node(1), false);
    let terms = |st: &kahuna_client::ClusterStatus| -> Vec<(u64, u64)> {
        st.partitions.iter().map(|p| (p.id, p.leader().map(|l| l.term).unwrap_or(0))).collect()
    };

    // Writes to other partitions go on through the whole catch-up.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, cl) = (stop.clone(), client_via(c.node(2), 5000));
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let key = format!("{}other/{}", ["a", "m", "z"][(i % 3) as usize], i % 50);
                match cl.kv_set(key.as_bytes(), &i.to_le_bytes(), SetOptions::default()) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    c.node_mut(3).restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    let big = loop {
        let log = c.node(3).log_text();
        let sizes: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("installed a snapshot"))
            .filter_map(|l| l.split('(').nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        if let Some(b) = sizes.iter().copied().find(|b| *b > 16 << 20) {
            break b;
        }
        assert!(Instant::now() < deadline, "no big snapshot was installed:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = writer.join().unwrap();
    assert!(failed.is_empty() && ok > 20, "{ok} writes, failures: {failed:?}");
    let after = status(c.node(1), false);
    assert_eq!(terms(&before), terms(&after), "an election happened during the catch-up");
    assert_replicas_equal(c.node(1), 3);
    assert!(big > 30 << 20, "{big}");
    // Served by the follower's copy too: the big keys are all there with node 1 gone.
    c.node_mut(1).kill9();
    let cl = client_via(c.node(3), 20_000);
    for i in [0, 35, 69] {
        let it = cl.kv_get(format!("big/{i:03}").as_bytes(), GetOptions::default()).unwrap();
        assert_eq!(it.value.len(), 512 << 10);
    }
}

/// A full disk (the WAL's write fails with ENOSPC): the node does not stop; new writes get
/// NO_SPACE at once, reads go on, and once there is space again the refused batch is written
/// and writes resume, without a restart. In a cluster, a follower with a full disk holds
/// nothing up: the others make the quorum, and it catches up once it has space.
#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    watchdog(Duration::from_secs(120));
    let mut s = Server::start(&["--shards", "1", "--no-pin"]);
    let cl = client_via(&s, 2000);
    assert_eq!(cl.kv_set(b"a", b"1", SetOptions::default()).unwrap(), 1);
    s.arm("wal_no_space=return");
    // The first write's batch is refused: its outcome is unknown for now.
    let first = cl.kv_set(b"b", b"1", SetOptions::default());
    assert!(first.as_ref().is_err_and(|e| e.code == ErrorCode::Timeout), "{first:?}");
    let t = Instant::now();
    let e = cl.kv_set(b"c", b"1", SetOptions::default()).unwrap_err();
    assert_eq!(e.code, ErrorCode::NoSpace, "{e}");
    // At once: well before the client's 2 s deadline (the margin is for a loaded machine).
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    let (ok, v) = s.cli_json(&["kv", "set", "d", "x"]);
    assert!(
        !ok && v["error"]["code"] == "NO_SPACE" && v["error"]["outcome"] == "not_applied",
        "{v}"
    );
    assert_eq!(cl.kv_get(b"a", GetOptions::default()).unwrap().value, b"1");
    assert!(s.log_text().contains("the disk is full"));
    // Space again: no restart, the refused batch is written, writes resume.
    s.arm("");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = cl.kv_set(b"e", b"1", SetOptions::default()) {
        assert!(Instant::now() < deadline, "writes did not resume: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.wait_exit(Duration::from_millis(1)), None);
    assert_eq!(cl.kv_get(b"b", GetOptions::default()).unwrap().revision, 1);

    // A follower's full disk: the two others carry on; it catches up after.
    let c = start_cluster_with(ClusterOpts::default());
    let st = kahuna_tests::wait_for_preferred_leaders(c.node(1), Duration::from_secs(30));
    c.node(3).arm("wal_no_space=return");
    let cl = client_via(c.node(1), 5000);
    for p in st.partitions.iter().filter(|p| p.leader().map(|l| l.node) == Some(1)) {
        let mut key = p.start.clone();
        key.extend_from_slice(b"w");
        for i in 0..5u64 {
            cl.kv_set(&key, &i.to_le_bytes(), SetOptions::default()).unwrap();
        }
    }
    assert!(c.node(3).log_text().contains("the disk is full"), "{}", c.node(3).log_text());
    c.node(3).arm("");
    assert_replicas_equal(c.node(1), 3);
}

/// Hole 10, the threads: blocking work (snapshots, flushes, big scans) and RocksDB's flush and
/// compaction threads must not be pinned to a shard's core, where they would stall its loop.
/// Only the shard executors themselves are pinned.
#[test]
fn only_shard_loops_are_pinned_to_a_core() {
    watchdog(Duration::from_secs(60));
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    if cpus < 2 {
        eprintln!("one CPU: nothing to tell apart");
        return;
    }
    let s = Server::start(&["--shards", "2"]);
    // Use the blocking pool and RocksDB's threads: a checksum reads ranges off the loop.
    let (ok, _) = s.cli_json(&["cluster", "status", "--checksums"]);
    assert!(ok);
    let pid = s.pid().unwrap();
    let mut pinned = Vec::new();
    let mut rocksdb = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let one_cpu = !allowed.contains('-') && !allowed.contains(',');
        if name.starts_with("rocksdb") {
            rocksdb += 1;
            assert!(!one_cpu, "RocksDB thread {name:?} is pinned to CPU {allowed}");
        }
        if one_cpu {
            pinned.push((name.trim().to_string(), allowed));
        }
    }
    assert!(rocksdb > 0, "no RocksDB thread found");
    // The two shard loops and their io_uring workers, nothing else.
    assert!(
        pinned.iter().all(|(n, _)| n.starts_with("kahuna-shard") || n.starts_with("iou-")),
        "{pinned:?}"
    );
    assert_eq!(
        pinned.iter().filter(|(n, _)| n.starts_with("kahuna-shard")).count(),
        2,
        "{pinned:?}"
    );
}
