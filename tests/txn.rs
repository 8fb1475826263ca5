//! Transactions (compare / then / else, one partition): a bank of accounts under concurrent
//! transfers through every node while the partition's leader is killed -9, every read-all
//! transaction summing to the same total; write skew refused; the CLI form; keys of two
//! partitions refused with a clear error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kahuna_client::blocking::Client;
use kahuna_client::{
    ClientOptions, Compare, CompareOp, CompareTarget, Durability, ErrorCode, Op, Reply,
    SetCondition,
};
use kahuna_tests::{leader_of, start_cluster_with, watchdog, ClusterOpts};

const ACCOUNTS: usize = 8;
const START: u64 = 100;

fn account(i: usize) -> Vec<u8> {
    format!("bank/acct/{i:02}").into_bytes()
}

fn get(key: Vec<u8>) -> Op {
    Op::KvGet { key, durability: Durability::Persistent, revision: 0 }
}

fn set(key: Vec<u8>, v: u64) -> Op {
    Op::KvSet {
        key,
        value: v.to_string().into_bytes(),
        durability: Durability::Persistent,
        ttl_ms: 0,
        condition: SetCondition::None,
    }
}

fn revision_is(key: Vec<u8>, number: u64) -> Compare {
    Compare { key, target: CompareTarget::Revision, op: CompareOp::Equal, value: vec![], number }
}

/// Every account's balance and revision, read in one transaction (one consistent state).
fn read_all(c: &Client) -> Result<Vec<(u64, u64)>, kahuna_client::Error> {
    let (_, results) = c.txn(vec![], (0..ACCOUNTS).map(|i| get(account(i))).collect(), vec![])?;
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok(Reply::KvGet(it)) => {
                (String::from_utf8(it.value).unwrap().parse().unwrap(), it.revision)
            }
            other => panic!("an account is missing: {other:?}"),
        })
        .collect())
}

/// What became of one transfer: `Some(true)` applied, `Some(false)` not, `None` unknown.
type Outcome = (usize, usize, u64, Option<bool>);

#[test]
fn bank_transfers_keep_the_total_across_a_leader_kill() {
    watchdog(Duration::from_secs(240));
    let flags = ["--partitions", "4", "--split-load-qps", "0", "--split-size-mb", "0"];
    let mut c = start_cluster_with(ClusterOpts { shards: 1, extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let opts = ClientOptions { timeout: Duration::from_secs(5), ..Default::default() };
    let admin = Client::connect(&c.endpoints(), opts.clone()).unwrap();
    let (ok, _) =
        admin.txn(vec![], (0..ACCOUNTS).map(|i| set(account(i), START)).collect(), vec![]).unwrap();
    assert!(ok);
    let total = START * ACCOUNTS as u64;

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        let ep = c.node(1 + t % 3).endpoint();
        let opts = opts.clone();
        threads.push(std::thread::spawn(move || {
            let cl = Client::connect(&[ep], opts).unwrap();
            let mut rng = t * 7919 + 1;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let (a, b) = ((rng % 8) as usize, ((rng >> 8) % 8) as usize);
                let Ok(all) = read_all(&cl) else { continue };
                if a == b || all[a].0 == 0 {
                    continue;
                }
                let amount = 1 + (rng >> 16) % all[a].0.min(20);
                let compare =
                    vec![revision_is(account(a), all[a].1), revision_is(account(b), all[b].1)];
                let then =
                    vec![set(account(a), all[a].0 - amount), set(account(b), all[b].0 + amount)];
                let outcome = match cl.txn(compare, then, vec![]) {
                    Ok((applied, _)) => Some(applied),
                    Err(e) if e.code == ErrorCode::Timeout => None,
                    Err(_) => Some(false),
                };
                outcomes.lock().unwrap().push((a, b, amount, outcome));
            }
        }));
    }
    for t in 0..2u64 {
        let (stop, violations) = (stop.clone(), violations.clone());
        let ep = c.node(1 + (t + 1) % 3).endpoint();
        let opts = opts.clone();
        threads.push(std::thread::spawn(move || {
            let cl = Client::connect(&[ep], opts).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(all) = read_all(&cl) {
                    let sum: u64 = all.iter().map(|(v, _)| v).sum();
                    if sum != total {
                        violations.lock().unwrap().push(format!("a read saw {all:?}: sum {sum}"));
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    let leader = leader_of(c.node(1), &account(0));
    c.node_mut(leader).kill9();
    std::thread::sleep(Duration::from_secs(2));
    c.node_mut(leader).restart();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let violations = violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let outcomes = outcomes.lock().unwrap().clone();
    let applied = outcomes.iter().filter(|o| o.3 == Some(true)).count();
    let unknown = outcomes.iter().filter(|o| o.3.is_none()).count();
    println!("{} transfers: {applied} applied, {unknown} unknown", outcomes.len());
    assert!(applied > 20, "too few transfers went through: {applied}");
    // The final balances: the acknowledged transfers exactly, each unknown one either way.
    let fin = read_all(&admin).unwrap();
    assert_eq!(fin.iter().map(|(v, _)| v).sum::<u64>(), total);
    let mut low: BTreeMap<usize, i64> = (0..ACCOUNTS).map(|i| (i, START as i64)).collect();
    let mut high = low.clone();
    for (a, b, amount, o) in &outcomes {
        let amount = *amount as i64;
        match o {
            Some(true) => {
                for m in [&mut low, &mut high] {
                    *m.get_mut(a).unwrap() -= amount;
                    *m.get_mut(b).unwrap() += amount;
                }
            }
            None => {
                *low.get_mut(a).unwrap() -= amount;
                *high.get_mut(b).unwrap() += amount;
            }
            Some(false) => {}
        }
    }
    for (i, (v, _)) in fin.iter().enumerate() {
        let v = *v as i64;
        assert!(
            low[&i] <= v && v <= high[&i],
            "account {i}: {v} outside [{}, {}]",
            low[&i],
            high[&i]
        );
    }
    if unknown == 0 {
        for (i, (v, _)) in fin.iter().enumerate() {
            assert_eq!(*v as i64, low[&i], "account {i}");
        }
    }
}

#[test]
fn write_skew_is_refused_and_the_cli_and_partition_rules_hold() {
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

    // Keys in two partitions: refused, saying why.
    let err = c
        .txn(vec![], vec![set(b"!first".to_vec(), 1), set(b"~last".to_vec(), 1)], vec![])
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid, "{err}");
    assert!(err.message.contains("one partition"), "{err}");

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
    // A step a transaction cannot run: refused before anything is proposed.
    let bad = Op::KvSet {
        key: b"cli/k".to_vec(),
        value: vec![],
        durability: Durability::Ephemeral,
        ttl_ms: 0,
        condition: SetCondition::None,
    };
    assert_eq!(c.txn(vec![], vec![bad], vec![]).unwrap_err().code, ErrorCode::Invalid);
}
