//! Unit tests of the state machines over the in-memory store, at explicit HLC times.

use kahuna_protocol::{Durability::Persistent, ErrorCode, LockState, Op, Reply};

use super::*;
use crate::command::{ApplySettings, Cond};
use crate::store::{Get, MemStore, Txn};

fn ctx(now_ms: u64) -> ApplyCtx {
    ApplyCtx {
        now_ms,
        term: 1,
        token_floor: 0,
        keep_released_locks: true,
        settings: ApplySettings::default(),
        partition_start: None,
    }
}

fn set(
    s: &mut MemStore,
    key: &str,
    val: &str,
    ttl_ms: u64,
    cond: Cond,
    now: u64,
) -> Result<u64, ErrorCode> {
    let op = WriteOp::KvSet { key: key.into(), value: val.into(), ttl_ms, cond };
    match apply(s, &op, &ctx(now)) {
        Ok(Reply::KvSet { revision }) => Ok(revision),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e.code),
    }
}

fn get(s: &MemStore, key: &str, revision: u64, now: u64) -> Result<(String, u64), ErrorCode> {
    let op = Op::KvGet { key: key.into(), durability: Persistent, revision };
    match read(s, &op, now, Bounds::ALL, &Limits::default()) {
        Ok(Reply::KvGet(it)) => Ok((String::from_utf8(it.value).unwrap(), it.revision)),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e.code),
    }
}

#[test]
fn revisions_count_up_per_key_and_survive_delete() {
    let mut s = MemStore::default();
    assert_eq!(set(&mut s, "a", "1", 0, Cond::None, 10), Ok(1));
    assert_eq!(set(&mut s, "a", "2", 0, Cond::None, 11), Ok(2));
    assert_eq!(set(&mut s, "b", "x", 0, Cond::None, 12), Ok(1));
    let del = apply(&mut s, &WriteOp::KvDelete { key: "a".into(), expected_revision: 0 }, &ctx(13));
    assert_eq!(del, Ok(Reply::KvDelete { deleted: true, revision: 3 }));
    assert_eq!(get(&s, "a", 0, 14), Err(ErrorCode::NotFound));
    // Re-created: the count goes on, so a stale if-revision can never match again (no ABA).
    assert_eq!(set(&mut s, "a", "3", 0, Cond::None, 15), Ok(4));
    let again =
        apply(&mut s, &WriteOp::KvDelete { key: "zz".into(), expected_revision: 0 }, &ctx(16));
    assert_eq!(again, Ok(Reply::KvDelete { deleted: false, revision: 0 }));
}

#[test]
fn each_set_condition() {
    let mut s = MemStore::default();
    assert_eq!(set(&mut s, "k", "v", 0, Cond::IfExists, 1), Err(ErrorCode::Conflict));
    assert_eq!(set(&mut s, "k", "v", 0, Cond::IfRevision(1), 1), Err(ErrorCode::Conflict));
    assert_eq!(set(&mut s, "k", "v", 0, Cond::IfRevision(0), 1), Ok(1));
    assert_eq!(set(&mut s, "k", "w", 0, Cond::IfNotExists, 2), Err(ErrorCode::Conflict));
    assert_eq!(set(&mut s, "k", "w", 0, Cond::IfExists, 2), Ok(2));
    assert_eq!(set(&mut s, "k", "x", 0, Cond::IfRevision(1), 3), Err(ErrorCode::Conflict));
    assert_eq!(set(&mut s, "k", "x", 0, Cond::IfRevision(2), 3), Ok(3));
    assert_eq!(
        set(&mut s, "k", "y", 0, Cond::IfValue(b"nope".to_vec()), 4),
        Err(ErrorCode::Conflict)
    );
    assert_eq!(set(&mut s, "k", "y", 0, Cond::IfValue(b"x".to_vec()), 4), Ok(4));
    assert_eq!(set(&mut s, "n", "1", 0, Cond::IfNotExists, 5), Ok(1));
    // A failed condition changes nothing.
    assert_eq!(get(&s, "k", 0, 6), Ok(("y".into(), 4)));
    let del = WriteOp::KvDelete { key: "k".into(), expected_revision: 3 };
    assert_eq!(apply(&mut s, &del, &ctx(7)).unwrap_err().code, ErrorCode::Conflict);
}

#[test]
fn ttl_expires_at_the_given_hlc_time() {
    let mut s = MemStore::default();
    assert_eq!(set(&mut s, "t", "v", 100, Cond::None, 1_000), Ok(1));
    assert_eq!(get(&s, "t", 0, 1_099), Ok(("v".into(), 1)));
    assert_eq!(get(&s, "t", 0, 1_100), Err(ErrorCode::NotFound));
    let ex = read(
        &s,
        &Op::KvExists { key: "t".into(), durability: Persistent },
        1_100,
        Bounds::ALL,
        &Limits::default(),
    );
    assert_eq!(ex, Ok(Reply::KvExists { exists: false, revision: 0 }));
    // Expired counts as absent for conditions, but the revision count goes on.
    assert_eq!(set(&mut s, "t", "w", 0, Cond::IfNotExists, 1_200), Ok(2));
    // Extend moves the deadline and keeps the revision.
    assert_eq!(set(&mut s, "e", "v", 50, Cond::None, 2_000), Ok(1));
    let ext = apply(&mut s, &WriteOp::KvExtend { key: "e".into(), ttl_ms: 500 }, &ctx(2_040));
    assert_eq!(ext, Ok(Reply::KvExtend { revision: 1, expires_at_ms: 2_540 }));
    assert_eq!(get(&s, "e", 0, 2_539), Ok(("v".into(), 1)));
    let late = apply(&mut s, &WriteOp::KvExtend { key: "e".into(), ttl_ms: 500 }, &ctx(2_540));
    assert_eq!(late.unwrap_err().code, ErrorCode::NotFound);
    assert!(super::is_dead(
        &crate::keys::data_key(crate::keys::KV, b"e"),
        &s.get(b"ke").unwrap(),
        2_540
    ));
}

#[test]
fn get_at_revision_and_retention() {
    let mut s = MemStore::default();
    for i in 1..=40u64 {
        assert_eq!(set(&mut s, "h", &format!("v{i}"), 0, Cond::None, i), Ok(i));
    }
    assert_eq!(get(&s, "h", 40, 50), Ok(("v40".into(), 40)));
    assert_eq!(get(&s, "h", 39, 50), Ok(("v39".into(), 39)));
    assert_eq!(get(&s, "h", 8, 50), Ok(("v8".into(), 8)));
    // Retention is 32 older revisions: 7 and below are gone.
    assert_eq!(get(&s, "h", 7, 50), Err(ErrorCode::NotFound));
    assert_eq!(get(&s, "h", 41, 50), Err(ErrorCode::NotFound));
    let hist = read(
        &s,
        &Op::KvHistory { key: "h".into(), durability: Persistent, limit: 3 },
        50,
        Bounds::ALL,
        &Limits::default(),
    );
    let Ok(Reply::KvHistory { items }) = hist else { panic!("{hist:?}") };
    assert_eq!(items.iter().map(|i| i.revision).collect::<Vec<_>>(), vec![40, 39, 38]);
    let del =
        apply(&mut s, &WriteOp::KvDelete { key: "h".into(), expected_revision: 40 }, &ctx(60));
    assert!(del.is_ok());
    assert_eq!(get(&s, "h", 41, 61), Err(ErrorCode::NotFound));
    assert_eq!(get(&s, "h", 40, 61), Ok(("v40".into(), 40)));
}

fn scan_page(
    s: &MemStore,
    prefix: &str,
    after: Option<&[u8]>,
    limit: u32,
    bounds: Bounds<'_>,
) -> (Vec<String>, Option<Vec<u8>>) {
    let op = Op::KvScan {
        prefix: prefix.into(),
        durability: Persistent,
        start_after: after.map(|a| a.to_vec()),
        limit,
    };
    match read(s, &op, 100, bounds, &Limits::default()) {
        Ok(Reply::KvScan { items, next, .. }) => {
            (items.into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect(), next)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn scan_pages_in_order_and_skips_dead_keys() {
    let mut s = MemStore::default();
    for k in ["o/1", "o/2", "o/3", "o/4", "o/5", "p/1", "o"] {
        set(&mut s, k, "v", 0, Cond::None, 1).unwrap();
    }
    set(&mut s, "o/3", "v", 10, Cond::None, 1).unwrap(); // expires at 11
    apply(&mut s, &WriteOp::KvDelete { key: "o/4".into(), expected_revision: 0 }, &ctx(2)).unwrap();
    let (p1, next) = scan_page(&s, "o/", None, 2, Bounds::ALL);
    assert_eq!(p1, vec!["o/1", "o/2"]);
    let (p2, next) = scan_page(&s, "o/", next.as_deref(), 2, Bounds::ALL);
    assert_eq!(p2, vec!["o/5"]);
    assert_eq!(next, None);
    // Within a partition's bounds only.
    let (b, _) = scan_page(&s, "", None, 10, Bounds { start: b"o/2", end: b"o/5" });
    assert_eq!(b, vec!["o/2"]);
}

fn lock(s: &mut MemStore, op: WriteOp, now: u64, floor: u64) -> Result<Reply, ErrorCode> {
    let mut c = ctx(now);
    c.token_floor = floor;
    apply(s, &op, &c).map_err(|e| e.code)
}

fn acquire(owner: &str, lease_ms: u64) -> WriteOp {
    WriteOp::LockAcquire { resource: "r".into(), owner: owner.into(), lease_ms }
}

fn granted(r: Result<Reply, ErrorCode>) -> (bool, u64) {
    match r {
        Ok(Reply::Lock(LockState { acquired, fencing_token, .. })) => (acquired, fencing_token),
        other => panic!("{other:?}"),
    }
}

#[test]
fn locks_grant_extend_release_expire_and_steal_with_growing_tokens() {
    let mut s = MemStore::default();
    assert_eq!(granted(lock(&mut s, acquire("a", 100), 0, 0)), (true, 1));
    // Another owner waits; the holder's retry keeps its grant.
    assert_eq!(granted(lock(&mut s, acquire("b", 100), 10, 0)), (false, 1));
    assert_eq!(granted(lock(&mut s, acquire("a", 100), 20, 0)), (true, 1));
    // Extend by the owner only, and only with the current token.
    let ext = WriteOp::LockExtend {
        resource: "r".into(),
        owner: "a".into(),
        lease_ms: 100,
        fencing_token: 1,
    };
    assert_eq!(
        lock(&mut s, ext, 50, 0),
        Ok(Reply::LockAck { fencing_token: 1, expires_at_ms: 150 })
    );
    let ext_b = WriteOp::LockExtend {
        resource: "r".into(),
        owner: "b".into(),
        lease_ms: 100,
        fencing_token: 0,
    };
    assert_eq!(lock(&mut s, ext_b, 60, 0), Err(ErrorCode::NotHeld));
    let stale = WriteOp::LockExtend {
        resource: "r".into(),
        owner: "a".into(),
        lease_ms: 100,
        fencing_token: 7,
    };
    assert_eq!(lock(&mut s, stale, 60, 0), Err(ErrorCode::NotHeld));
    // Release by the owner; the next grant's token continues.
    let rel_b = WriteOp::LockRelease { resource: "r".into(), owner: "b".into(), fencing_token: 0 };
    assert_eq!(lock(&mut s, rel_b, 70, 0), Err(ErrorCode::NotHeld));
    let rel = WriteOp::LockRelease { resource: "r".into(), owner: "a".into(), fencing_token: 0 };
    assert_eq!(
        lock(&mut s, rel.clone(), 70, 0),
        Ok(Reply::LockAck { fencing_token: 1, expires_at_ms: 0 })
    );
    assert_eq!(lock(&mut s, rel, 71, 0), Err(ErrorCode::NotHeld));
    assert_eq!(granted(lock(&mut s, acquire("b", 100), 80, 0)), (true, 2));
    // b's lease runs out at 180: a steals it, with a larger token, and b can no longer extend.
    assert_eq!(granted(lock(&mut s, acquire("a", 100), 179, 0)), (false, 2));
    assert_eq!(granted(lock(&mut s, acquire("a", 100), 180, 0)), (true, 3));
    let ext_b = WriteOp::LockExtend {
        resource: "r".into(),
        owner: "b".into(),
        lease_ms: 100,
        fencing_token: 2,
    };
    assert_eq!(lock(&mut s, ext_b, 181, 0), Err(ErrorCode::NotHeld));
    let got = read(
        &s,
        &Op::LockGet { resource: "r".into(), durability: Persistent },
        200,
        Bounds::ALL,
        &Limits::default(),
    );
    assert_eq!(
        got,
        Ok(Reply::Lock(LockState {
            acquired: true,
            fencing_token: 3,
            owner: Some(b"a".to_vec()),
            expires_at_ms: 280
        }))
    );
    let free = read(
        &s,
        &Op::LockGet { resource: "r".into(), durability: Persistent },
        280,
        Bounds::ALL,
        &Limits::default(),
    );
    assert_eq!(
        free,
        Ok(Reply::Lock(LockState {
            acquired: false,
            fencing_token: 3,
            owner: None,
            expires_at_ms: 0
        }))
    );
}

#[test]
fn ephemeral_floor_lifts_tokens_above_any_earlier_leader() {
    let mut s = MemStore::default();
    let floor = 5u64 << 40;
    assert_eq!(granted(lock(&mut s, acquire("a", 10), 0, floor)), (true, floor));
    let mut c = ctx(1);
    c.keep_released_locks = false;
    let rel =
        WriteOp::LockRelease { resource: "r".into(), owner: "a".into(), fencing_token: floor };
    apply(&mut s, &rel, &c).unwrap();
    assert!(s.is_empty(), "ephemeral release frees the record");
    assert_eq!(granted(lock(&mut s, acquire("b", 10), 2, floor + 1)), (true, floor + 1));
}

#[test]
fn sequence_blocks_never_overlap() {
    let mut s = MemStore::default();
    let mut next =
        |count| match apply(&mut s, &WriteOp::SeqNext { name: "ids".into(), count }, &ctx(0)) {
            Ok(Reply::Seq { first, count }) => (first, count),
            other => panic!("{other:?}"),
        };
    assert_eq!(next(100), (1, 100));
    assert_eq!(next(1), (101, 1));
    assert_eq!(next(5), (102, 5));
    let mut s2 = MemStore::default();
    s2.put(crate::keys::data_key(crate::keys::SEQ, b"x"), crate::records::encode_seq(u64::MAX - 1));
    let over = apply(&mut s2, &WriteOp::SeqNext { name: "x".into(), count: 2 }, &ctx(0));
    assert_eq!(over.unwrap_err().code, ErrorCode::Invalid);
}

#[test]
fn collecting_expired_keys_frees_them_without_reusing_a_revision() {
    let mut s = MemStore::default();
    let part = |now| ApplyCtx { partition_start: Some(Vec::new()), ..ctx(now) };
    let set_in = |s: &mut MemStore, key: &str, ttl_ms: u64, now: u64| {
        let op = WriteOp::KvSet { key: key.into(), value: b"v".to_vec(), ttl_ms, cond: Cond::None };
        match apply(s, &op, &part(now)) {
            Ok(Reply::KvSet { revision }) => revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    for _ in 0..3 {
        set_in(&mut s, "session", 100, 1_000);
    }
    assert_eq!(set_in(&mut s, "kept", 0, 1_000), 1);
    let collect = |s: &mut MemStore, now: u64| {
        let op = WriteOp::KvCollect {
            keys: vec![b"session".to_vec(), b"kept".to_vec(), b"absent".to_vec()],
            grace_ms: 500,
        };
        match apply(s, &op, &part(now)) {
            Ok(Reply::KvDelete { revision: removed, .. }) => removed,
            other => panic!("unexpected {other:?}"),
        }
    };
    // Expired at 1100, but not yet 500 ms ago: nothing goes.
    assert_eq!(collect(&mut s, 1_200), 0);
    assert!(s.get(&crate::keys::data_key(crate::keys::KV, b"session")).is_some());
    // Past the grace: the record and its history go, the key without a TTL stays.
    assert_eq!(collect(&mut s, 1_700), 1);
    assert!(s.get(&crate::keys::data_key(crate::keys::KV, b"session")).is_none());
    for rev in 1..=3 {
        assert!(s.get(&crate::keys::history_key(b"session", rev)).is_none(), "history {rev}");
    }
    assert_eq!(get(&s, "kept", 0, 1_700), Ok(("v".into(), 1)));
    // Created again, the key continues above every revision it had: a stale compare-and-set
    // on revision 1, 2 or 3 can never match it.
    assert_eq!(set_in(&mut s, "session", 0, 2_000), 4);
    assert_eq!(set_in(&mut s, "brand-new", 0, 2_000), 4, "new keys start above the floor");
    // A key written again after the collector looked is alive at apply and stays.
    assert_eq!(collect(&mut s, 2_100), 0);
    // A deleted key's tombstone goes the same way, the grace counted from the delete.
    let del = WriteOp::KvDelete { key: b"kept".to_vec(), expected_revision: 0 };
    assert!(matches!(apply(&mut s, &del, &part(3_000)), Ok(Reply::KvDelete { deleted: true, .. })));
    assert_eq!(collect(&mut s, 3_400), 0);
    assert_eq!(collect(&mut s, 3_500), 1);
    assert!(s.get(&crate::keys::data_key(crate::keys::KV, b"kept")).is_none());
    assert_eq!(set_in(&mut s, "kept", 0, 4_000), 4, "above the floor (3, from session)");
    // State without a partition (ephemeral) has no floor and collects nothing.
    let op = WriteOp::KvCollect { keys: vec![b"kept".to_vec()], grace_ms: 0 };
    assert!(apply(&mut s, &op, &ctx(9_999)).is_err());
    let at = crate::records::peek_kv_expiry(&s.get(b"ksession").unwrap()).unwrap();
    assert!(!expired_before(at, 9_999, 0));
}

#[test]
fn a_split_hands_the_revision_floor_to_the_new_half() {
    let mut s = MemStore::default();
    let in_part =
        |start: &[u8], now| ApplyCtx { partition_start: Some(start.to_vec()), ..ctx(now) };
    let set = |s: &mut MemStore, key: &str, ttl_ms: u64, c: &ApplyCtx| {
        let op = WriteOp::KvSet { key: key.into(), value: b"v".to_vec(), ttl_ms, cond: Cond::None };
        match apply(s, &op, c) {
            Ok(Reply::KvSet { revision }) => revision,
            other => panic!("unexpected {other:?}"),
        }
    };
    for _ in 0..5 {
        set(&mut s, "m-key", 10, &in_part(b"", 1_000));
    }
    let collect = WriteOp::KvCollect { keys: vec![b"m-key".to_vec()], grace_ms: 0 };
    assert!(matches!(
        apply(&mut s, &collect, &in_part(b"", 2_000)),
        Ok(Reply::KvDelete { revision: 1, .. })
    ));
    let split = WriteOp::Split { at: b"m".to_vec(), new_id: 9, epoch: 1 };
    assert_eq!(
        apply(&mut s, &split, &in_part(b"", 2_000)),
        Ok(Reply::Split { left: 0, right: 9, at: b"m".to_vec(), epoch: 2 })
    );
    // The key, created again in the new half, continues above its collected revisions.
    assert_eq!(set(&mut s, "m-key", 0, &in_part(b"m", 3_000)), 6);
    // A split of a partition that never collected anything writes no floor.
    let mut fresh = MemStore::default();
    apply(&mut fresh, &split, &in_part(b"", 0)).unwrap();
    assert!(fresh.is_empty());
}

#[test]
fn a_lease_timed_by_an_earlier_leader_is_honoured_for_the_clock_offset_too() {
    // (granted in term, lease ends at, asked in term, at, by) -> granted to the new owner?
    // The lease (100 ms from 0) ends at 100; the cluster assumes clocks within 500 ms.
    let cases = [
        (1, 1, 99, "b", false),  // same leader, lease running
        (1, 1, 100, "b", true),  // same leader, lease over: its own clock timed it
        (1, 2, 100, "b", false), // a new leader: the old leader's clock may have been behind
        (1, 2, 599, "b", false),
        (1, 2, 600, "b", true), // expiry + offset: free for anyone
        (1, 2, 300, "a", true), // the holder itself: a fresh grant, never blocked by its own lease
    ];
    for (granted_in, asked_in, at, by, want) in cases {
        let mut s = MemStore::default();
        let mut c = ctx(0);
        c.term = granted_in;
        assert!(granted(apply(&mut s, &acquire("a", 100), &c).map_err(|e| e.code)).0);
        let mut c = ctx(at);
        c.term = asked_in;
        let got = granted(apply(&mut s, &acquire(by, 100), &c).map_err(|e| e.code));
        assert_eq!(
            got.0, want,
            "granted in term {granted_in}, {by} asks at {at} in term {asked_in}"
        );
        if want && by == "b" {
            assert_eq!(got.1, 2, "a new owner gets a new token");
        }
    }
}

#[test]
fn the_same_log_gives_the_same_state_whatever_a_node_s_own_settings() {
    // Retention comes from the entry: two replicas that would be configured differently apply
    // the same commands to the same result.
    let run = |retention: u64| {
        let mut s = MemStore::default();
        for i in 0..10u64 {
            let op = WriteOp::KvSet {
                key: "k".into(),
                value: vec![i as u8],
                ttl_ms: 0,
                cond: Cond::None,
            };
            let mut c = ctx(i);
            c.settings.history_retention = retention;
            apply(&mut s, &op, &c).unwrap();
        }
        let mut all = Vec::new();
        s.scan(b"", &[0xff], &mut |k, v| {
            all.push((k.to_vec(), v.to_vec()));
            true
        });
        all
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(5), "retention is what the entry says");
    assert_eq!(run(3).len(), 1 + 3);
}

mod transactions {
    use super::*;
    use crate::command::{TxnCompare, TxnStep};
    use crate::state_machine::txn::*;

    fn cmp(key: &str, target: u8, op: u8, value: &str, number: u64) -> TxnCompare {
        TxnCompare { key: key.into(), target, op, value: value.into(), number }
    }

    fn run(s: &mut MemStore, compare: Vec<TxnCompare>, then: Vec<TxnStep>, now: u64) -> Reply {
        let otherwise = vec![TxnStep::Get { key: "a".into() }];
        apply(s, &WriteOp::Txn { compare, then, otherwise }, &ctx(now)).unwrap()
    }

    fn succeeded(r: &Reply) -> bool {
        matches!(r, Reply::Txn { succeeded: true, .. })
    }

    #[test]
    fn compares_hold_or_not_by_target_and_operator() {
        let mut s = MemStore::default();
        set(&mut s, "a", "m", 0, Cond::None, 1).unwrap(); // revision 1
        let acquire =
            WriteOp::LockAcquire { resource: "r".into(), owner: "me".into(), lease_ms: 1000 };
        apply(&mut s, &acquire, &ctx(1)).unwrap(); // token 1, held until 1001
                                                   // (compare, holds at time 10?)
        let cases = vec![
            (cmp("a", TARGET_VALUE, OP_EQUAL, "m", 0), true),
            (cmp("a", TARGET_VALUE, OP_LESS, "n", 0), true),
            (cmp("a", TARGET_VALUE, OP_GREATER, "n", 0), false),
            (cmp("zz", TARGET_VALUE, OP_EQUAL, "", 0), false),
            (cmp("zz", TARGET_VALUE, OP_NOT_EQUAL, "x", 0), true),
            (cmp("a", TARGET_REVISION, OP_EQUAL, "", 1), true),
            (cmp("a", TARGET_REVISION, OP_GREATER, "", 1), false),
            (cmp("zz", TARGET_REVISION, OP_EQUAL, "", 0), true),
            (cmp("a", TARGET_EXISTS, OP_EQUAL, "", 1), true),
            (cmp("zz", TARGET_EXISTS, OP_EQUAL, "", 0), true),
            (cmp("zz", TARGET_EXISTS, OP_EQUAL, "", 1), false),
            (cmp("r", TARGET_LOCK_OWNER, OP_EQUAL, "me", 0), true),
            (cmp("r", TARGET_LOCK_OWNER, OP_EQUAL, "you", 0), false),
            (cmp("free", TARGET_LOCK_OWNER, OP_EQUAL, "", 0), true),
            (cmp("r", TARGET_FENCING_TOKEN, OP_EQUAL, "", 1), true),
            (cmp("r", TARGET_FENCING_TOKEN, OP_LESS, "", 1), false),
        ];
        for (c, want) in cases {
            let r = run(&mut s, vec![c.clone()], vec![], 10);
            assert_eq!(succeeded(&r), want, "{c:?}");
        }
        // After the lease: nobody holds it, its token stays.
        let late = run(&mut s, vec![cmp("r", TARGET_LOCK_OWNER, OP_EQUAL, "", 0)], vec![], 5000);
        assert!(succeeded(&late));
    }

    #[test]
    fn a_branch_runs_atomically_and_sees_its_own_writes() {
        let mut s = MemStore::default();
        set(&mut s, "a", "1", 0, Cond::None, 1).unwrap();
        let then = vec![
            TxnStep::Set { key: "a".into(), value: "2".into(), ttl_ms: 0 },
            TxnStep::Get { key: "a".into() },
            TxnStep::Get { key: "missing".into() },
            TxnStep::SeqNext { name: "s".into(), count: 3 },
            TxnStep::Delete { key: "a".into() },
            TxnStep::Exists { key: "a".into() },
        ];
        let r = run(&mut s, vec![cmp("a", TARGET_REVISION, OP_EQUAL, "", 1)], then, 2);
        let Reply::Txn { succeeded: true, results } = r else { panic!("{r:?}") };
        assert!(
            matches!(&results[1], Ok(Reply::KvGet(it)) if it.value == b"2" && it.revision == 2)
        );
        assert_eq!(results[2].as_ref().unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(results[3], Ok(Reply::Seq { first: 1, count: 3 }));
        assert_eq!(results[5], Ok(Reply::KvExists { exists: false, revision: 0 }));
        assert_eq!(get(&s, "a", 0, 3), Err(ErrorCode::NotFound));
        // A compare that fails runs the other branch (a read here) and writes nothing.
        let r = run(
            &mut s,
            vec![cmp("a", TARGET_EXISTS, OP_EQUAL, "", 1)],
            vec![TxnStep::Set { key: "b".into(), value: "x".into(), ttl_ms: 0 }],
            4,
        );
        assert!(!succeeded(&r));
        assert_eq!(get(&s, "b", 0, 5), Err(ErrorCode::NotFound));
        // A write step that fails (a release by another owner is refused) undoes the others.
        let acquire =
            WriteOp::LockAcquire { resource: "r".into(), owner: "me".into(), lease_ms: 1000 };
        apply(&mut s, &acquire, &ctx(6)).unwrap();
        let then = vec![
            TxnStep::Set { key: "c".into(), value: "x".into(), ttl_ms: 0 },
            TxnStep::LockRelease { resource: "r".into(), owner: "you".into() },
        ];
        let r = apply(&mut s, &WriteOp::Txn { compare: vec![], then, otherwise: vec![] }, &ctx(7));
        assert!(r.is_err(), "{r:?}");
        assert_eq!(get(&s, "c", 0, 8), Err(ErrorCode::NotFound));
        // A lock held by another owner is not granted: the transaction leaves nothing either.
        let then = vec![
            TxnStep::Set { key: "c".into(), value: "x".into(), ttl_ms: 0 },
            TxnStep::LockAcquire { resource: "r".into(), owner: "you".into(), lease_ms: 10 },
        ];
        let r = apply(&mut s, &WriteOp::Txn { compare: vec![], then, otherwise: vec![] }, &ctx(9));
        assert_eq!(r.unwrap_err().code, ErrorCode::Conflict);
        assert_eq!(get(&s, "c", 0, 10), Err(ErrorCode::NotFound));
        // Answers bigger than a frame: refused before anything is applied.
        let big = "v".repeat(900 << 10);
        for k in ["b1", "b2", "b3"] {
            set(&mut s, k, &big, 0, Cond::None, 11).unwrap();
        }
        let then = vec![
            TxnStep::Set { key: "c".into(), value: "x".into(), ttl_ms: 0 },
            TxnStep::Get { key: "b1".into() },
            TxnStep::Get { key: "b2".into() },
            TxnStep::Get { key: "b3".into() },
        ];
        let r = apply(&mut s, &WriteOp::Txn { compare: vec![], then, otherwise: vec![] }, &ctx(12));
        assert_eq!(r.unwrap_err().code, ErrorCode::TooLarge);
        assert_eq!(get(&s, "c", 0, 13), Err(ErrorCode::NotFound));
    }
}

/// Transactions across partitions, one partition's share: prepare holds names, decide is the
/// commit point, resolve applies the staged writes; nothing else touches a held name.
mod across {
    use super::*;
    use crate::command::{TxnCompare, TxnStep};
    use crate::records::{
        Holder, TXN_ABORTED, TXN_COMMITTED_ELSE, TXN_COMMITTED_THEN, TXN_PENDING,
    };
    use crate::state_machine::intents::*;

    #[test]
    fn the_walk_over_intents_picks_holders_long_past_their_deadline_and_moves_on() {
        let holder = |txn: &str, deadline_ms| Holder {
            txn: txn.into(),
            primary: b"p".to_vec(),
            deadline_ms,
        };
        let scanned = vec![
            (b"a".to_vec(), vec![holder("w1", 1_000), holder("r1", 5_000)]),
            (b"b".to_vec(), vec![holder("r2", 1_000), holder("r3", 20_000)]),
            (b"c".to_vec(), vec![holder("w2", 30_000)]),
        ];
        let now = 1_000 + ORPHAN_AFTER_MS;
        let late = 30_000 + ORPHAN_AFTER_MS;
        // (more may follow, now, room, the overdue transactions, where the walk goes on)
        type Case<'a> = (bool, u64, usize, &'a [&'a str], Option<&'a [u8]>);
        let cases: [Case; 7] = [
            (true, now, 16, &["w1", "r2"], Some(b"c\0")),
            (false, now, 16, &["w1", "r2"], None),
            (true, now - 1, 16, &[], Some(b"c\0")),
            (false, late, 16, &["w1", "r1", "r2", "r3", "w2"], None),
            // Out of room: names are taken whole, and the next step starts at the first left.
            (false, late, 3, &["w1", "r1"], Some(b"b")),
            (true, now, 1, &["w1"], Some(b"b")),
            // The first name is taken whole even past the room: the walk never stops on it.
            (false, late, 1, &["w1", "r1"], Some(b"b")),
        ];
        for (cut, now_ms, room, want, next) in cases {
            let WalkStep { overdue, next: at } = walk_step(&scanned, cut, now_ms, room);
            let txns: Vec<&[u8]> = overdue.iter().map(|(_, h)| h.txn.as_slice()).collect();
            let want: Vec<&[u8]> = want.iter().map(|t| t.as_bytes()).collect();
            assert_eq!((txns, at.as_deref()), (want, next), "cut {cut}, now {now_ms}, room {room}");
        }
        assert_eq!(walk_step(&[], false, now, 16), WalkStep { overdue: vec![], next: None });
    }

    #[test]
    fn the_walk_reads_intents_in_bounded_steps() {
        let mut s = MemStore::default();
        for (id, key) in [("t1", "a"), ("t2", "b"), ("t3", "c")] {
            let op = WriteOp::TxnPrepare {
                txn: id.into(),
                primary: key.into(),
                deadline_ms: 100,
                record: vec![],
                compare: vec![],
                then: vec![TxnStep::Set { key: key.into(), value: vec![7; 1000], ttl_ms: 0 }],
                otherwise: vec![],
            };
            apply(&mut s, &op, &ctx(10)).unwrap();
        }
        let names =
            |r: &IntentScan| (r.held.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), r.cut);
        let all = holders_in_range(&s, (b"", None), 10, 1 << 20);
        assert_eq!(names(&all), (vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], false));
        assert_eq!(all.held[1].1[0].txn, b"t2");
        assert!(all.bytes > 3000 && all.bad.is_empty(), "{}", all.bytes);
        let two = holders_in_range(&s, (b"", None), 2, 1 << 20);
        assert_eq!(names(&two), (vec![b"a".to_vec(), b"b".to_vec()], true));
        // Exactly at the end: cut, and the next step finds nothing more.
        let three = holders_in_range(&s, (b"", None), 3, 1 << 20);
        assert_eq!(names(&three), (vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], true));
        assert_eq!(names(&holders_in_range(&s, (b"c\0", None), 3, 1 << 20)), (vec![], false));
        // Big intents: the byte budget stops the step after the first.
        let one = holders_in_range(&s, (b"", None), 10, 500);
        assert_eq!(names(&one), (vec![b"a".to_vec()], true));
        let rest = holders_in_range(&s, (b"b", Some(b"c")), 10, 1 << 20);
        assert_eq!(names(&rest), (vec![b"b".to_vec()], false));
        // An intent that does not decode is named, and the walk goes on past it.
        s.put(crate::keys::data_key(crate::keys::INTENT, b"bb"), vec![1, 2, 3]);
        let damaged = holders_in_range(&s, (b"", None), 10, 1 << 20);
        assert_eq!(damaged.bad, vec![b"bb".to_vec()]);
        assert_eq!(damaged.held.len(), 4);
        assert!(damaged.held[2].1.is_empty());
    }

    fn prepare(
        s: &mut MemStore,
        id: &str,
        record: &[&str],
        then: Vec<TxnStep>,
        now: u64,
    ) -> Result<Reply, ErrorCode> {
        let op = WriteOp::TxnPrepare {
            txn: id.into(),
            primary: b"a".to_vec(),
            deadline_ms: 100,
            record: record.iter().map(|k| k.as_bytes().to_vec()).collect(),
            compare: vec![TxnCompare {
                key: b"a".to_vec(),
                target: 2,
                op: 0,
                value: vec![],
                number: 1,
            }],
            then,
            otherwise: vec![TxnStep::Get { key: b"a".to_vec() }],
        };
        apply(s, &op, &ctx(now)).map_err(|e| e.code)
    }
    fn decide(s: &mut MemStore, id: &str, action: u8, now: u64) -> u8 {
        let op =
            WriteOp::TxnDecide { txn: id.into(), primary: b"a".to_vec(), deadline_ms: 100, action };
        state_of(&apply(s, &op, &ctx(now)).unwrap()).unwrap()
    }
    fn resolve(s: &mut MemStore, id: &str, outcome: u8, now: u64) {
        let names = vec![b"a".to_vec(), b"b".to_vec()];
        apply(s, &WriteOp::TxnResolve { txn: id.into(), names, outcome }, &ctx(now)).unwrap();
    }
    fn put_b() -> Vec<TxnStep> {
        vec![TxnStep::Set { key: b"b".to_vec(), value: b"new".to_vec(), ttl_ms: 0 }]
    }

    #[test]
    fn the_decide_rule_table() {
        // (record state, action, past the deadline) -> state after
        let cases = [
            (None, DECIDE_STATUS, false, TXN_PENDING),
            (None, DECIDE_STATUS, true, TXN_ABORTED),
            (None, DECIDE_COMMIT_THEN, false, TXN_ABORTED),
            (Some(TXN_PENDING), DECIDE_COMMIT_THEN, false, TXN_COMMITTED_THEN),
            (Some(TXN_PENDING), DECIDE_COMMIT_ELSE, false, TXN_COMMITTED_ELSE),
            (Some(TXN_PENDING), DECIDE_COMMIT_THEN, true, TXN_ABORTED),
            (Some(TXN_PENDING), DECIDE_STATUS, false, TXN_PENDING),
            (Some(TXN_PENDING), DECIDE_STATUS, true, TXN_ABORTED),
            (Some(TXN_PENDING), DECIDE_ABORT, false, TXN_ABORTED),
            (Some(TXN_PENDING), DECIDE_FORGET, false, TXN_PENDING),
            (Some(TXN_COMMITTED_THEN), DECIDE_STATUS, true, TXN_COMMITTED_THEN),
            (Some(TXN_COMMITTED_THEN), DECIDE_ABORT, false, TXN_COMMITTED_THEN),
            (Some(TXN_COMMITTED_THEN), DECIDE_COMMIT_THEN, true, TXN_COMMITTED_THEN),
            (Some(TXN_ABORTED), DECIDE_COMMIT_THEN, false, TXN_ABORTED),
        ];
        for (state, action, past, want) in cases {
            let now = if past { 100 } else { 99 };
            assert_eq!(decided(state, 100, action, now), want, "{state:?} {action} past={past}");
        }
    }

    #[test]
    fn a_held_name_blocks_everyone_else_until_resolved() {
        let mut s = MemStore::default();
        set(&mut s, "a", "1", 0, Cond::None, 1).unwrap();
        set(&mut s, "b", "old", 0, Cond::None, 1).unwrap();
        let r = prepare(&mut s, "t1", &["a", "b"], put_b(), 10).unwrap();
        // Compares held; then's result (the set's revision, staged), then else's (the get).
        let Reply::Txn { succeeded: true, results } = r else { panic!("{r:?}") };
        assert_eq!(results.len(), 2);
        assert_eq!(results[0], Ok(Reply::KvSet { revision: 2 }));
        // Nothing else reads or writes a held name, a scan over it included.
        assert_eq!(get(&s, "b", 0, 11), Err(ErrorCode::Locked));
        // `a` is only read (compare, else's get): shared. Reads go on, writes wait.
        assert_eq!(get(&s, "a", 0, 11), Ok(("1".into(), 1)));
        assert_eq!(set(&mut s, "a", "x", 0, Cond::None, 11), Err(ErrorCode::Locked));
        assert_eq!(set(&mut s, "b", "x", 0, Cond::None, 11), Err(ErrorCode::Locked));
        let scan =
            Op::KvScan { prefix: vec![], durability: Persistent, start_after: None, limit: 0 };
        let r = read(&s, &scan, 11, Bounds::ALL, &Limits::default());
        assert_eq!(r.map_err(|e| e.code).err(), Some(ErrorCode::Locked));
        // Another transaction cannot prepare over what t1 writes, but may share what it reads.
        assert_eq!(prepare(&mut s, "t2", &["a"], put_b(), 12), Err(ErrorCode::Locked));
        let reads_a = vec![TxnStep::Get { key: b"a".to_vec() }];
        assert!(prepare(&mut s, "t3", &[], reads_a, 12).is_ok());
        assert_eq!(intent_at(&s, b"a").unwrap().unwrap().readers.len(), 2);
        resolve(&mut s, "t3", TXN_ABORTED, 12);
        assert_eq!(intent_at(&s, b"a").unwrap().unwrap().readers.len(), 1, "t3 let go");
        // The collector keeps a held key.
        let collect = WriteOp::KvCollect { keys: vec![b"b".to_vec()], grace_ms: 0 };
        let in_partition = ApplyCtx { partition_start: Some(vec![]), ..ctx(13) };
        assert!(apply(&mut s, &collect, &in_partition).is_ok());
        // Committed: the staged write lands; the record stays until forgotten.
        assert_eq!(decide(&mut s, "t1", DECIDE_COMMIT_THEN, 20), TXN_COMMITTED_THEN);
        assert_eq!(get(&s, "b", 0, 21), Err(ErrorCode::Locked), "still held until resolved");
        resolve(&mut s, "t1", TXN_COMMITTED_THEN, 22);
        assert_eq!(get(&s, "b", 0, 23), Ok(("new".into(), 2)));
        assert_eq!(get(&s, "b", 1, 23), Ok(("old".into(), 1)), "history kept too");
        // Resolving again changes nothing; the record goes when forgotten.
        resolve(&mut s, "t1", TXN_COMMITTED_THEN, 24);
        assert_eq!(get(&s, "b", 0, 25), Ok(("new".into(), 2)));
        assert_eq!(decide(&mut s, "t1", DECIDE_FORGET, 26), TXN_COMMITTED_THEN);
        assert!(record(&s, b"a", b"t1").unwrap().is_none());
        assert!(intent_at(&s, b"a").unwrap().is_none() && intent_at(&s, b"b").unwrap().is_none());
        // Gone and past the deadline: aborted, so a late duplicate intent is dropped.
        assert_eq!(decide(&mut s, "t1", DECIDE_STATUS, 100), TXN_ABORTED);
    }

    #[test]
    fn an_abandoned_transaction_is_aborted_after_its_deadline_only() {
        let mut s = MemStore::default();
        set(&mut s, "a", "1", 0, Cond::None, 1).unwrap();
        prepare(&mut s, "t1", &["a", "b"], put_b(), 10).unwrap();
        // Its coordinator died: before the deadline the record stays pending.
        assert_eq!(decide(&mut s, "t1", DECIDE_STATUS, 99), TXN_PENDING);
        assert_eq!(decide(&mut s, "t1", DECIDE_STATUS, 100), TXN_ABORTED);
        // Its commit, late, cannot win any more.
        assert_eq!(decide(&mut s, "t1", DECIDE_COMMIT_THEN, 101), TXN_ABORTED);
        resolve(&mut s, "t1", TXN_ABORTED, 102);
        assert_eq!(get(&s, "b", 0, 103), Err(ErrorCode::NotFound), "nothing of it applied");
        assert_eq!(set(&mut s, "b", "x", 0, Cond::None, 104), Ok(1));
        // A prepare after the deadline writes nothing.
        assert_eq!(prepare(&mut s, "t3", &["a"], put_b(), 100), Err(ErrorCode::Conflict));
        // Asked about past its deadline with no record yet, a transaction is marked aborted:
        // its first key's prepare, stamped earlier by a leader whose clock ran behind, is
        // refused when it comes.
        assert_eq!(decide(&mut s, "t5", DECIDE_STATUS, 100), TXN_ABORTED);
        assert_eq!(prepare(&mut s, "t5", &["a"], put_b(), 50), Err(ErrorCode::Conflict));
        assert_eq!(decide(&mut s, "t5", DECIDE_COMMIT_THEN, 60), TXN_ABORTED);
        // A deadline too far ahead (a peer's word, or a clock ahead) is refused, retryably.
        let far = WriteOp::TxnPrepare {
            txn: b"t6".to_vec(),
            primary: b"a".to_vec(),
            deadline_ms: 1 << 40,
            record: vec![],
            compare: vec![],
            then: put_b(),
            otherwise: vec![],
        };
        assert_eq!(
            apply(&mut s, &far, &ctx(90)).map_err(|e| e.code).err(),
            Some(ErrorCode::Unavailable)
        );
        assert_eq!(get(&s, "a", 0, 105), Ok(("1".into(), 1)));
    }

    #[test]
    fn a_failed_step_stages_nothing_for_its_branch() {
        let mut s = MemStore::default();
        set(&mut s, "a", "1", 0, Cond::None, 1).unwrap();
        let other =
            WriteOp::LockAcquire { resource: b"b".to_vec(), owner: b"o".to_vec(), lease_ms: 1000 };
        apply(&mut s, &other, &ctx(2)).unwrap();
        let then = vec![TxnStep::LockAcquire {
            resource: b"b".to_vec(),
            owner: b"me".to_vec(),
            lease_ms: 10,
        }];
        let r = prepare(&mut s, "t1", &["a", "b"], then, 10).unwrap();
        let Reply::Txn { results, .. } = r else { panic!() };
        assert_eq!(results[0].as_ref().map_err(|e| e.code).err(), Some(ErrorCode::Conflict));
        let intent = intent_at(&s, b"b").unwrap().unwrap();
        assert_eq!(intent.then, None, "the failed branch cannot be applied");
        assert_eq!(intent.otherwise, Some(vec![]), "the else branch touches nothing of b");
    }
}
