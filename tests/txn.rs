//! Transactions (compare / then / else, one partition): a bank of accounts under concurrent
//! transfers through every node while the partition's leader is killed -9, every read-all
//! transaction summing to the same total; write skew refused; the CLI form; keys of two
//! partitions refused with a clear error.

use std::time::Duration;

use kahuna_client::blocking::Client;
use kahuna_client::{Durability, ErrorCode, Op, Reply, SetCondition};
use kahuna_tests::bank::{get, revision_is, set, Bank};
use kahuna_tests::{leader_of, start_cluster_with, watchdog, ClusterOpts};

#[test]
fn bank_transfers_keep_the_total_across_a_leader_kill() {
    watchdog(Duration::from_secs(240));
    let flags = ["--partitions", "4", "--split-load-qps", "0", "--split-size-mb", "0"];
    let mut c = start_cluster_with(ClusterOpts { shards: 1, extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bank = Bank::start(&c.endpoints(), 5);
    std::thread::sleep(Duration::from_secs(3));
    let leader = leader_of(c.node(1), &kahuna_tests::bank::account(0));
    c.node_mut(leader).kill9();
    std::thread::sleep(Duration::from_secs(2));
    c.node_mut(leader).restart();
    std::thread::sleep(Duration::from_secs(3));
    let v = bank.finish();
    println!("{v:?}");
    assert!(v.problems.is_empty(), "{:#?}", v.problems);
    assert!(v.applied > 20 && v.reads > 20, "too little went through: {v:?}");
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
