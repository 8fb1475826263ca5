//! Transactions: a bank of accounts under concurrent transfers through every node while
//! leaders are killed -9, in one partition (one Raft entry) and spread over four (two-phase,
//! with intents and a record), every read-all transaction summing to the same total; the
//! cycle (FoundationDB's test: a ring of keys whose links transactions swap stays one ring);
//! a coordinator killed between prepare and commit and between commit and resolve; write skew
//! refused; the CLI form.

use std::time::{Duration, Instant};

use kahuna_client::blocking::Client;
use kahuna_client::{Durability, ErrorCode, Op, Reply, SetCondition};
use kahuna_tests::bank::{get, revision_is, set, Bank, Layout};
use kahuna_tests::{assert_replicas_equal, leader_of, start_cluster_with, watchdog, ClusterOpts};

const FLAGS: [&str; 6] = ["--partitions", "4", "--split-load-qps", "0", "--split-size-mb", "0"];

fn bank_through_kills(layout: Layout, victims: &[usize]) {
    let mut c = start_cluster_with(ClusterOpts { shards: 1, extra: &FLAGS, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bank = Bank::start(&c.endpoints(), 5, layout);
    std::thread::sleep(Duration::from_secs(3));
    for a in victims {
        let leader = leader_of(c.node(1), &layout.account(*a));
        c.node_mut(leader).kill9();
        std::thread::sleep(Duration::from_secs(2));
        c.node_mut(leader).restart();
        std::thread::sleep(Duration::from_secs(3));
    }
    let v = bank.finish();
    println!("{layout:?}: {v:?}");
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    assert!(v.applied > 20 && v.reads > 20, "too little went through: {v:?}");
    assert_replicas_equal(c.node(1), 3);
}

#[test]
fn bank_transfers_keep_the_total_across_a_leader_kill() {
    watchdog(Duration::from_secs(240));
    bank_through_kills(Layout::OnePartition, &[0]);
}

#[test]
fn bank_transfers_across_partitions_keep_the_total_through_leader_kills() {
    watchdog(Duration::from_secs(300));
    bank_through_kills(Layout::Spread, &[0, 1]);
}

#[test]
fn bank_transfers_across_partitions_keep_the_total_while_their_partitions_split() {
    // Each of the four partitions holds two accounts; each is split between them while
    // transfers hold intents on both: intents and records stay with their keys, and parts
    // planned by a map from before a split are refused (MOVED) and planned again.
    watchdog(Duration::from_secs(300));
    let c = start_cluster_with(ClusterOpts { shards: 1, extra: &FLAGS, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bank = Bank::start(&c.endpoints(), 9, Layout::Spread);
    std::thread::sleep(Duration::from_secs(2));
    let mut split = 0;
    for (i, at) in
        ["1bank/acct/02", "Abank/acct/03", "Xbank/acct/04", "zbank/acct/05"].iter().enumerate()
    {
        split += kahuna_tests::split_at(&c, 1 + i as u64 % 3, at) as usize;
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let v = bank.finish();
    println!("splits {split}: {v:?}");
    assert_eq!(split, 4, "every split went through");
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    assert!(v.applied > 20 && v.reads > 20, "too little went through: {v:?}");
    assert_replicas_equal(c.node(1), 3);
}

/// The ring: key i holds the index of the key after it. A transaction reads three links
/// a → b → c → d and swaps b and c (a → c → b → d), comparing the revisions it read.
fn ring_key(i: usize) -> Vec<u8> {
    format!("{}ring/{i:02}", ["1", "A", "X", "z"][i % 4]).into_bytes()
}

/// Walks the ring from key 0: every key once, back to 0 (the checker).
fn ring_intact(next: &[usize]) -> Result<(), String> {
    let mut seen = vec![false; next.len()];
    let mut at = 0;
    for _ in 0..next.len() {
        if at >= next.len() || seen[at] {
            return Err(format!("the ring is broken at {at}: {next:?}"));
        }
        seen[at] = true;
        at = next[at];
    }
    if at != 0 {
        return Err(format!("the ring does not close: {next:?}"));
    }
    Ok(())
}

#[test]
fn the_ring_checker_catches_a_broken_ring() {
    assert!(ring_intact(&[1, 2, 3, 0]).is_ok());
    assert!(ring_intact(&[2, 0, 1, 3]).is_err(), "two rings");
    // A swap applied halfway (a → c written, c → b not): what a non-atomic transaction leaves.
    assert!(ring_intact(&[2, 2, 3, 0]).is_err());
}

fn read_ring(c: &Client, n: usize) -> Result<Vec<(usize, u64)>, kahuna_client::Error> {
    let (_, r) = c.txn(vec![], (0..n).map(|i| get(ring_key(i))).collect(), vec![])?;
    r.into_iter()
        .map(|r| match r {
            Ok(Reply::KvGet(it)) => {
                Ok((String::from_utf8_lossy(&it.value).parse().unwrap_or(usize::MAX), it.revision))
            }
            other => Err(kahuna_client::Error::new(ErrorCode::Internal, format!("{other:?}"))),
        })
        .collect()
}

#[test]
fn the_cycle_stays_one_ring_under_swaps_across_partitions_and_a_kill() {
    watchdog(Duration::from_secs(240));
    const N: usize = 12;
    let mut c = start_cluster_with(ClusterOpts { shards: 1, extra: &FLAGS, ..Default::default() });
    let admin = c.node(1).client();
    let open = (0..N).map(|i| set(ring_key(i), ((i + 1) % N) as u64)).collect();
    assert!(admin.txn(vec![], open, vec![]).unwrap().0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..3u64 {
        let ep = c.endpoints()[t as usize % 3].clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let opts = kahuna_client::ClientOptions {
                timeout: Duration::from_secs(5),
                ..Default::default()
            };
            let cl = Client::connect(&[ep], opts).unwrap();
            let (mut swapped, mut rng) = (0u64, t * 7919 + 13);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let Ok(ring) = read_ring(&cl, N) else { continue };
                let a = (rng >> 33) as usize % N;
                let b = ring[a].0 % N;
                let cc = ring[b].0 % N;
                let d = ring[cc].0 % N;
                let compare =
                    [a, b, cc].iter().map(|k| revision_is(ring_key(*k), ring[*k].1)).collect();
                let then = vec![
                    set(ring_key(a), cc as u64),
                    set(ring_key(cc), b as u64),
                    set(ring_key(b), d as u64),
                ];
                if let Ok((true, _)) = cl.txn(compare, then, vec![]) {
                    swapped += 1;
                }
            }
            swapped
        }));
    }
    std::thread::sleep(Duration::from_secs(4));
    let leader = leader_of(c.node(1), &ring_key(1));
    c.node_mut(leader).kill9();
    std::thread::sleep(Duration::from_secs(2));
    c.node_mut(leader).restart();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swapped: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let ring = (0..40)
        .find_map(|_| {
            read_ring(&admin, N).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(500));
                None
            })
        })
        .expect("the final read");
    let next: Vec<usize> = ring.iter().map(|(n, _)| *n).collect();
    println!("swaps {swapped}, ring {next:?}");
    ring_intact(&next).unwrap();
    assert!(swapped > 20, "too few swaps went through: {swapped}");
    assert_replicas_equal(c.node(1), 3);
}

#[test]
fn a_coordinator_killed_mid_transaction_blocks_nothing_past_the_deadline() {
    watchdog(Duration::from_secs(240));
    let mut c = start_cluster_with(ClusterOpts { shards: 1, extra: &FLAGS, ..Default::default() });
    let (x, y) = (b"1coord/x".to_vec(), b"zcoord/y".to_vec());
    let other = c.node(2).client();
    for (round, point, committed) in
        [(1u64, "txn_crash_after_prepare", false), (2, "txn_crash_after_commit", true)]
    {
        other.txn(vec![], vec![set(x.clone(), 0), set(y.clone(), 0)], vec![]).unwrap();
        c.node(1).arm(&format!("{point}=return"));
        let coordinator = c.node(1).client();
        let r = coordinator.txn(vec![], vec![set(x.clone(), round), set(y.clone(), round)], vec![]);
        assert!(r.is_err(), "the coordinator died before answering: {r:?}");
        println!("{point}: the client saw {r:?}");
        // It aborted (by a signal: no exit code).
        c.node_mut(1).wait_exit(Duration::from_secs(10));
        assert!(!c.node(1).child_running(), "{point}: the coordinator stopped");
        // Another node meets the intents: it waits for the record's deadline at most, then
        // finishes the transaction as the record says; both keys agree.
        let t = Instant::now();
        let got = kahuna_tests::bank::read_pair(&other, &x, &y);
        let waited = t.elapsed();
        let want = if committed { round } else { 0 };
        assert_eq!(got, (want, want), "{point}: nothing partial, the record's outcome");
        assert!(waited < Duration::from_secs(9), "{point}: blocked {waited:?}");
        println!("{point}: read after {waited:?}: {got:?}");
        c.node_mut(1).restart();
    }
    // The record the dead coordinator left is finished and forgotten by its partition's leader.
    let left = "finishing a transaction its coordinator left";
    let t = Instant::now();
    while !(1..=3).any(|n| c.node(n).log_text().contains(left)) {
        assert!(t.elapsed() < Duration::from_secs(20), "no leader finished the left record");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A coordinator that dies before its first key's prepare applied leaves intents and no
    // record to list them. Nobody touches y again (only another key of its partition, which
    // keeps the partition awake): its leader's walk over the intents settles it.
    let settled = "settled intents on [\"zcoord/y\"] held past their deadline";
    let count = |c: &kahuna_tests::Cluster| {
        (1..=3).map(|n| c.node(n).log_text().matches(settled).count()).sum::<usize>()
    };
    let before = count(&c);
    c.node(1).arm("txn_crash_before_primary_prepare=return");
    let r = c.node(1).client().txn(vec![], vec![set(x.clone(), 3), set(y.clone(), 3)], vec![]);
    assert!(r.is_err(), "the coordinator died before answering: {r:?}");
    c.node_mut(1).wait_exit(Duration::from_secs(10));
    assert!(!c.node(1).child_running(), "the coordinator stopped");
    c.node(1).arm("");
    c.node_mut(1).restart();
    // Logged once the intent is resolved (before anyone touches y: a read of y would settle
    // it too).
    let t = Instant::now();
    let mut i = 0u64;
    while count(&c) == before {
        assert!(t.elapsed() < Duration::from_secs(60), "nobody settled the intent on y");
        i += 1;
        // Another key of y's partition: it keeps the partition from quiescing.
        other.kv_set(format!("zcoord/w{}", i % 4).as_bytes(), b"w", Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("the orphaned intent was settled {:?} after the coordinator restarted", t.elapsed());
    assert_eq!(kahuna_tests::bank::read_pair(&other, &x, &y), (2, 2), "nothing of it applied");
    assert_replicas_equal(c.node(1), 3);
}
#[test]
fn write_skew_is_refused_in_one_partition_and_across_and_the_cli_works() {
    watchdog(Duration::from_secs(120));
    let s = kahuna_tests::Server::start(&["--shards", "1", "--partitions", "4"]);
    let c = s.client();
    // Two on call; each transaction reads both and takes one off if the other stays on.
    c.txn(vec![], vec![set(b"oncall/x".to_vec(), 1), set(b"oncall/y".to_vec(), 1)], vec![])
        .unwrap();
    let both = |c: &Client| {
        let (_, r) = c
            .txn(vec![], vec![get(b"oncall/x".to_vec()), get(b"oncall/y".to_vec())], vec![])
            .unwrap();
        r.into_iter()
            .map(|r| match r {
                Ok(Reply::KvGet(it)) => it.revision,
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    let seen_by_1 = both(&c);
    let seen_by_2 = both(&c);
    let off = |key: &[u8], seen: &[u64]| {
        let compare = vec![
            revision_is(b"oncall/x".to_vec(), seen[0]),
            revision_is(b"oncall/y".to_vec(), seen[1]),
        ];
        c.txn(compare, vec![set(key.to_vec(), 0)], vec![]).unwrap().0
    };
    assert!(off(b"oncall/x", &seen_by_1), "the first one goes through");
    assert!(!off(b"oncall/y", &seen_by_2), "the second one read a state that changed");

    // The same across partitions (two-phase): the second one still reads a state that changed.
    let (a, b) = (b"1oncall/x".to_vec(), b"zoncall/y".to_vec());
    c.txn(vec![], vec![set(a.clone(), 1), set(b.clone(), 1)], vec![]).unwrap();
    let seen = kahuna_tests::bank::read_revisions(&c, &[&a, &b]);
    let off = |key: &[u8]| {
        let compare = vec![revision_is(a.clone(), seen[0]), revision_is(b.clone(), seen[1])];
        c.txn(compare, vec![set(key.to_vec(), 0)], vec![]).unwrap().0
    };
    assert!(off(&a), "the first one goes through");
    assert!(!off(&b), "the second one read a state that changed");
    assert_eq!(kahuna_tests::bank::read_pair(&c, &a, &b), (0, 1));

    // The CLI form: JSON in, JSON out.
    let file = s.data_dir.with_extension("txn.json");
    std::fs::write(
        &file,
        r#"{"compare": [{"key": "cli/k", "target": "exists", "op": "==", "number": 0}],
            "then": [{"set": {"key": "cli/k", "value": "v1"}}, {"get": "cli/k"}, {"seq_next": {"name": "cli/s", "count": 2}}],
            "else": [{"get": "cli/k"}]}"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (ok, v) = s.cli_json(&["txn", path]);
    assert!(ok, "{v}");
    assert_eq!(v["succeeded"], true, "{v}");
    assert_eq!(v["results"][1]["value"], "v1", "{v}");
    assert_eq!(v["results"][2]["first"], 1, "{v}");
    let (ok, v) = s.cli_json(&["txn", path]);
    assert!(ok, "{v}");
    assert_eq!(v["succeeded"], false, "{v}");
    assert_eq!(v["results"][0]["revision"], 1, "{v}");
    let _ = std::fs::remove_file(&file);
    // Ephemeral: every step on the leader's memory, atomically, in one partition.
    let eph = |key: &[u8], v: &str| Op::KvSet {
        key: key.to_vec(),
        value: v.as_bytes().to_vec(),
        durability: Durability::Ephemeral,
        ttl_ms: 0,
        condition: SetCondition::None,
    };
    let eget = |key: &[u8]| Op::KvGet {
        key: key.to_vec(),
        durability: Durability::Ephemeral,
        revision: 0,
    };
    let (ok, _) = c.txn(vec![], vec![eph(b"eph/a", "1"), eph(b"eph/b", "2")], vec![]).unwrap();
    assert!(ok);
    let (_, r) = c.txn(vec![], vec![eget(b"eph/a"), eget(b"eph/b")], vec![]).unwrap();
    assert!(matches!(&r[1], Ok(Reply::KvGet(it)) if it.value == b"2"), "{r:?}");
    // Persistent and ephemeral steps together, or an ephemeral one across partitions: refused.
    let mixed = c.txn(vec![], vec![eph(b"eph/a", "3"), set(b"eph/c".to_vec(), 1)], vec![]);
    assert_eq!(mixed.unwrap_err().code, ErrorCode::Invalid);
    let across = c.txn(vec![], vec![eph(b"1eph", "3"), eph(b"zeph", "3")], vec![]);
    assert_eq!(across.unwrap_err().code, ErrorCode::Invalid);
    // A step a transaction cannot run: refused before anything is proposed.
    let bad = Op::KvSet {
        key: b"cli/k".to_vec(),
        value: vec![],
        durability: Durability::Persistent,
        ttl_ms: 0,
        condition: SetCondition::IfExists,
    };
    assert_eq!(c.txn(vec![], vec![bad], vec![]).unwrap_err().code, ErrorCode::Invalid);
}

#[test]
fn scripts_run_server_side_as_one_step_with_errors_where_they_are() {
    watchdog(Duration::from_secs(120));
    let s = kahuna_tests::Server::start(&["--shards", "1", "--partitions", "4"]);
    let c = s.client();
    c.txn(vec![], vec![set(b"acct/a".to_vec(), 100), set(b"acct/b".to_vec(), 5)], vec![]).unwrap();
    let file = s.data_dir.with_extension("move.kahuna");
    std::fs::write(
        &file,
        r#"# move @amount from @from to @to
LET from = GET @from
LET to = GET @to
IF from == null OR to == null THEN THROW "no such account" END
LET amount = INT(@amount)
LET left = INT(from.value) - amount
IF left < 0 THEN THROW "insufficient funds" END
SET @from STR(left) CMPREV from.revision
SET @to STR(INT(to.value) + amount)
RETURN left
"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let run = |amount: &str| {
        let (a, b, m) = ("from=acct/a", "to=acct/b", format!("amount={amount}"));
        s.cli_json(&["script", "run", path, "--param", a, "--param", b, "--param", &m])
    };
    let (ok, v) = run("30");
    assert!(ok, "{v}");
    assert_eq!(v["result"], 70, "{v}");
    assert_eq!(kahuna_tests::bank::read_pair(&c, b"acct/a", b"acct/b"), (70, 35));
    // A THROW leaves nothing, and says why.
    let (ok, v) = run("500");
    assert!(!ok, "{v}");
    assert_eq!(v["error"]["code"], "CONFLICT", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("insufficient funds"), "{v}");
    assert_eq!(kahuna_tests::bank::read_pair(&c, b"acct/a", b"acct/b"), (70, 35));
    // A runtime error names its line and column.
    let (ok, v) = run("lots");
    assert!(!ok, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("line 5, column"), "{v}");
    // A parse error too, before anything runs.
    std::fs::write(&file, "LET x = 1\nIF x THEN SET \"k\"\n").unwrap();
    let (ok, v) = s.cli_json(&["script", "run", path]);
    assert!(!ok, "{v}");
    assert_eq!(v["error"]["code"], "INVALID", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("line 2, column"), "{v}");
    // Keys whose partition is unknown before the script runs, or in two partitions: refused.
    for (source, why) in [
        ("LET k = GET \"acct/a\"\nSET k.value \"x\"", "literal or built from @params"),
        ("SET \"!first\" 1\nSET \"~last\" 1", "one partition"),
    ] {
        std::fs::write(&file, source).unwrap();
        let (ok, v) = s.cli_json(&["script", "run", path]);
        assert!(!ok && v["error"]["code"] == "INVALID", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn interactive_transactions_see_one_snapshot_and_commit_only_what_still_holds() {
    watchdog(Duration::from_secs(120));
    let s = kahuna_tests::Server::start(&["--shards", "1", "--partitions", "4"]);
    let c = s.client();
    let (a, b) = (b"1ia/a".to_vec(), b"zia/b".to_vec()); // two partitions
    c.txn(vec![], vec![set(a.clone(), 10), set(b.clone(), 20)], vec![]).unwrap();
    let value = |it: Option<kahuna_client::KvItem>| -> u64 {
        String::from_utf8(it.expect("present").value).unwrap().parse().unwrap()
    };
    // Reads its own writes; commits across partitions.
    let mut t = c.begin(Duration::from_secs(5));
    let va = value(t.get(&a).unwrap());
    let vb = value(t.get(&b).unwrap());
    t.set(&a, (va - 5).to_string().as_bytes(), 0).unwrap();
    t.set(&b, (vb + 5).to_string().as_bytes(), 0).unwrap();
    assert_eq!(value(t.get(&a).unwrap()), 5);
    assert_eq!(value(t.get(&b).unwrap()), 25);
    t.commit().unwrap();
    // A key read twice reads the same.
    let mut t = c.begin(Duration::from_secs(5));
    assert_eq!(value(t.get(&a).unwrap()), 5);
    assert_eq!(value(t.get(&a).unwrap()), 5);
    t.rollback();
    assert_eq!(kahuna_tests::bank::read_pair(&c, &a, &b), (5, 25));
    // Two read the same key and write it: the second commit is refused, nothing of it applied.
    let mut t1 = c.begin(Duration::from_secs(5));
    let mut t2 = c.begin(Duration::from_secs(5));
    t1.get(&a).unwrap();
    t2.get(&a).unwrap();
    t1.set(&a, b"100", 0).unwrap();
    t2.set(&a, b"200", 0).unwrap();
    t2.set(&b, b"200", 0).unwrap();
    t1.commit().unwrap();
    assert_eq!(t2.commit().unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(kahuna_tests::bank::read_pair(&c, &a, &b), (100, 25));
    // One snapshot: a key read before changed when the next is read: refused at once.
    let mut t = c.begin(Duration::from_secs(5));
    t.get(&a).unwrap();
    c.txn(vec![], vec![set(a.clone(), 1), set(b.clone(), 1)], vec![]).unwrap();
    assert_eq!(t.get(&b).unwrap_err().code, ErrorCode::Conflict);
    // Past its timeout, a commit is refused.
    let mut t = c.begin(Duration::from_millis(200));
    t.get(&a).unwrap();
    t.set(&a, b"7", 0).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.commit().unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(kahuna_tests::bank::read_pair(&c, &a, &b), (1, 1));
    // Rolled back: nothing.
    let mut t = c.begin(Duration::from_secs(5));
    t.set(&a, b"9", 0).unwrap();
    t.rollback();
    assert_eq!(kahuna_tests::bank::read_pair(&c, &a, &b), (1, 1));
    // The helper retries a conflict with a fresh transaction: four threads add 1 to `a` ten
    // times each, every read-modify-write racing the others; none is lost.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let ep = s.endpoint();
            let a = a.clone();
            std::thread::spawn(move || {
                let cl = Client::connect(&[ep], Default::default()).unwrap();
                for _ in 0..10 {
                    cl.transact(Duration::from_secs(5), 50, |t| {
                        let n: u64 =
                            String::from_utf8(t.get(&a)?.unwrap().value).unwrap().parse().unwrap();
                        t.set(&a, (n + 1).to_string().as_bytes(), 0)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(kahuna_tests::bank::read_pair(&c, &a, &b), (41, 1));
}
