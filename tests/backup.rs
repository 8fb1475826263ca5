//! Backup and restore: a backup taken while the cluster serves holds every write acknowledged
//! before it started, with its revision; a cluster restored from it continues fencing tokens
//! and sequences above every value handed out before; a damaged backup is refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kahuna_client::{GetOptions, SetOptions};
use kahuna_tests::{client_via, start_cluster_with, watchdog, ClusterOpts, Durability};

/// What a writer saw acknowledged: key → (revision, value, when the answer came).
type Acked = Arc<Mutex<BTreeMap<String, (u64, u64, Instant)>>>;

#[test]
fn a_backup_under_load_restores_into_a_new_cluster_and_a_damaged_one_is_refused() {
    watchdog(Duration::from_secs(240));
    let c = start_cluster_with(ClusterOpts { shards: 2, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success());

    // Writers on every node, overwriting keys spread over every partition.
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=3u64)
        .map(|n| {
            let (cl, acked, stop) = (client_via(c.node(n), 3000), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let key = format!("{}{n}/{}", (b'!' + (i % 90) as u8) as char, i % 50);
                    if let Ok(rev) =
                        cl.kv_set(key.as_bytes(), &i.to_le_bytes(), SetOptions::default())
                    {
                        acked.lock().unwrap().insert(key, (rev, i, Instant::now()));
                    }
                }
            })
        })
        .collect();
    // Tokens and sequence values handed out before the backup.
    let cl = client_via(c.node(1), 5000);
    let mut top_token = 0;
    for owner in ["a", "b", "c"] {
        let l = cl
            .lock_acquire(b"backup/lock", owner.as_bytes(), 60_000, Durability::Persistent)
            .unwrap();
        assert!(l.acquired);
        top_token = top_token.max(l.fencing_token);
        cl.lock_release(b"backup/lock", owner.as_bytes(), Durability::Persistent).unwrap();
    }
    let (first, count) = cl.seq_next(b"backup/seq", 100).unwrap();
    let top_seq = first + count - 1;
    std::thread::sleep(Duration::from_millis(1500));

    let dir = c.node(1).data_dir.with_extension("backup");
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let (ok, v) =
        c.node(2).cli_json(&["--timeout-ms", "30000", "backup", "create", dir.to_str().unwrap()]);
    assert!(ok, "{v}");
    assert_eq!(v["partitions"], 8, "{v}");
    // More writes after the backup: the restored cluster may not have them.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let before: BTreeMap<String, (u64, u64)> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (_, _, at))| *at < started)
        .map(|(k, (r, v, _))| (k.clone(), (*r, *v)))
        .collect();
    assert!(before.len() > 50, "too little load before the backup: {}", before.len());
    drop(c);

    // A new cluster from the backup: every node names it.
    let restore = ["--restore-from", dir.to_str().unwrap()];
    let r = start_cluster_with(ClusterOpts { shards: 2, extra: &restore, ..Default::default() });
    let out = r.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(r.node(1).log_text().contains("restored"), "{}", r.node(1).log_text());
    let cl = client_via(r.node(3), 10_000);
    for (key, (rev, value)) in &before {
        let it = cl
            .kv_get(key.as_bytes(), GetOptions::default())
            .unwrap_or_else(|e| panic!("{key} acknowledged at {rev} before the backup: {e}"));
        assert!(it.revision >= *rev, "{key}: revision {} < {rev} acknowledged before", it.revision);
        if it.revision == *rev {
            assert_eq!(it.value, value.to_le_bytes(), "{key}");
        }
    }
    let l = cl.lock_acquire(b"backup/lock", b"d", 60_000, Durability::Persistent).unwrap();
    assert!(l.acquired && l.fencing_token > top_token, "{} after {top_token}", l.fencing_token);
    cl.kv_set(b"backup/after", b"x", SetOptions::default()).unwrap();
    let (next, _) = cl.seq_next(b"backup/seq", 1).unwrap();
    assert!(next > top_seq, "{next} after {top_seq}");
    // Replicas of every partition start from the same copy and stay equal.
    kahuna_tests::assert_replicas_equal(r.node(1), 3);
    // A restored node restarts as it is with the flag still given (its unit file keeps it)...
    let mut r = r;
    r.node_mut(1).restart();
    let out = r.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cl.kv_get(b"backup/after", GetOptions::default()).unwrap().value, b"x");
    // ... but a node that holds data of its own is not overwritten by a backup.
    r.node_mut(1).kill9();
    for i in 0..2 {
        std::fs::remove_file(r.node(1).data_dir.join(format!("shard-{i}/restored"))).unwrap();
    }
    let (code, err) = r.node(1).run_to_exit(&[], Duration::from_secs(30));
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("needs an empty data directory"), "{err}");
    drop(r);

    // The same backup into a single node of one shard: placement differs, the ranges do not.
    let mut one = vec!["--no-pin", "--shards", "1"];
    one.extend(restore);
    let mut s = kahuna_tests::Server::start(&one);
    let cl = s.client_with_timeout(Duration::from_secs(10)).unwrap();
    for (key, (rev, _)) in before.iter().take(20) {
        let it = cl.kv_get(key.as_bytes(), GetOptions::default()).unwrap();
        assert!(it.revision >= *rev, "{key}: revision {} < {rev}", it.revision);
    }
    let (next, _) = cl.seq_next(b"backup/seq", 1).unwrap();
    assert!(next > top_seq, "{next} after {top_seq}");
    s.kill9();
    drop(s);

    // A damaged copy is refused before anything starts, naming the file.
    let file = dir.join("p3.snap");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let mut s = kahuna_tests::Server::launch(&["--no-pin", "--shards", "2"]);
    s.kill9();
    std::fs::remove_dir_all(&s.data_dir).unwrap();
    std::fs::create_dir_all(&s.data_dir).unwrap();
    let (code, err) = s.run_to_exit(&restore, Duration::from_secs(30));
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("p3.snap is damaged"), "{err}");
    // A backup whose partitions leave a gap (a copy is missing from its manifest) is refused.
    let manifest = dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["partitions"].as_array_mut().unwrap().retain(|p| p["id"] != 3);
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    std::fs::remove_dir_all(&s.data_dir).unwrap();
    std::fs::create_dir_all(&s.data_dir).unwrap();
    let (code, err) = s.run_to_exit(&restore, Duration::from_secs(30));
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("do not cover the key space"), "{err}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
