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
