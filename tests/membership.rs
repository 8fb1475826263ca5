//! Membership: a node joins a running cluster and takes its share of replicas and leaderships;
//! a node is removed and gives them back; a node killed in the middle of replica moves; all
//! while clients run, with every history checked, no acknowledged write lost, every partition
//! at its replication factor afterwards and replicas equal.

use std::time::{Duration, Instant};

use kahuna_client::MemberAction;
use kahuna_tests::workload::{Workload, WorkloadOpts};
use kahuna_tests::{client_via, start_cluster_with, status, watchdog, ClusterOpts};

/// Waits (up to `within`) until `done` holds for the status through node `via`.
fn wait_until(
    c: &kahuna_tests::Cluster,
    via: u64,
    within: Duration,
    what: &str,
    done: impl Fn(&kahuna_client::ClusterStatus) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let st = status(c.node(via), false);
        if done(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in time: {st:#?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_node_joins_and_another_leaves_under_load_and_a_kill_losing_nothing() {
    watchdog(Duration::from_secs(400));
    let flags = ["--partitions", "6", "--split-size-mb", "0", "--split-load-qps", "0"];
    let mut c = start_cluster_with(ClusterOpts { shards: 2, extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Join a fourth node under load: within 30 s it holds replicas and leads partitions.
    let w = Workload::start(&c.endpoints(), WorkloadOpts::default(), 21);
    std::thread::sleep(Duration::from_millis(500));
    c.join(4, 1, 2, &flags);
    wait_until(&c, 1, Duration::from_secs(30), "node 4 leading a partition", |st| {
        st.partitions.iter().any(|p| p.leader().map(|l| l.node) == Some(4))
    });
    let members = c.members(2);
    let held = |id: u64| members.iter().find(|m| m.0 == id).map(|m| m.2).unwrap_or(0);
    assert!(held(4) >= 2, "node 4 holds too little: {members:?}");
    // A joined node restarts from its data directory (the members it kept, not the join).
    c.node_mut(4).kill9();
    c.node_mut(4).restart();
    wait_until(&c, 4, Duration::from_secs(30), "node 4 back with its replicas", |st| {
        st.partitions
            .iter()
            .filter(|p| p.replicas.contains(&4))
            .all(|p| p.status.iter().any(|r| r.node == 4) && p.leader().is_some())
    });
    // Then remove node 2, with node 3 killed -9 in the middle of the moves, the same
    // clients running throughout (one history for the whole run).
    let cl = client_via(c.node(4), 10_000);
    let (members, _) = cl.membership(MemberAction::Remove, 2).unwrap();
    assert!(members.iter().any(|m| m.id == 2 && m.removing), "{members:?}");
    std::thread::sleep(Duration::from_millis(1500));
    c.node_mut(3).kill9();
    std::thread::sleep(Duration::from_millis(1500));
    c.node_mut(3).restart();
    wait_until(&c, 1, Duration::from_secs(90), "node 2's replicas moving away", |st| {
        st.partitions.iter().all(|p| !p.replicas.contains(&2) && p.replicas.len() == 3)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.members(1).iter().any(|m| m.0 == 2 && m.1 == "removed") {
        assert!(Instant::now() < deadline, "node 2 never became removed: {:?}", c.members(1));
        std::thread::sleep(Duration::from_millis(250));
    }
    let verdict = w.finish();
    println!("{verdict:?}");
    assert!(verdict.passed(), "{:#?}", verdict.problems);
    assert!(verdict.ok > 100, "too little got through: {verdict:?}");
    // The removed node's id is never taken again.
    let again = client_via(c.node(1), 10_000).membership(MemberAction::Activate, 2);
    assert!(again.is_err(), "a removed node came back: {again:?}");
    c.node_mut(2).kill9();
    wait_until(&c, 1, Duration::from_secs(30), "every partition led", |st| {
        st.partitions.iter().all(|p| p.leader().is_some() && p.status.len() == 3)
    });
    kahuna_tests::assert_replicas_equal(c.node(1), 3);
}

#[test]
fn leaders_of_hot_partitions_move_off_the_busiest_node() {
    watchdog(Duration::from_secs(200));
    let flags = ["--partitions", "6", "--split-size-mb", "0", "--split-load-qps", "0"];
    let c = start_cluster_with(ClusterOpts { shards: 1, extra: &flags, ..Default::default() });
    let out = c.node(1).cli(&["--timeout-ms", "30000", "cluster", "wait", "--balanced"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Every partition node 1 leads gets reads; the others none.
    let st = status(c.node(1), false);
    let hot: Vec<(u64, Vec<u8>)> = st
        .partitions
        .iter()
        .filter(|p| p.replicas.first() == Some(&1))
        .map(|p| (p.id, [p.start.clone(), b"hot".to_vec()].concat()))
        .collect();
    assert!(hot.len() >= 2, "{st:#?}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|i| {
            let (ep, keys, stop) = (c.node(1 + i % 3).endpoint(), hot.clone(), stop.clone());
            std::thread::spawn(move || {
                let cl =
                    kahuna_client::blocking::Client::connect(&[ep], Default::default()).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (_, k) in &keys {
                        let _ = cl.kv_exists(k, kahuna_client::Durability::Persistent);
                    }
                }
            })
        })
        .collect();
    // Within a few balancing rounds (leaders are looked at every 10 s), one of the hot
    // partitions is led by another node, and node 1 no longer prefers it.
    let moved = || {
        let st = status(c.node(2), false);
        hot.iter().any(|(id, _)| {
            st.partitions.iter().any(|p| {
                p.id == *id
                    && p.replicas.first() != Some(&1)
                    && p.leader().is_some_and(|l| l.node != 1)
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !moved() {
        assert!(
            Instant::now() < deadline,
            "no hot partition changed leader: {:#?}",
            status(c.node(1), false)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    assert!(
        c.node(1).log_text().contains("for load")
            || c.node(2).log_text().contains("for load")
            || c.node(3).log_text().contains("for load")
    );
}
