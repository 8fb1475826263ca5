//! The balancer: once a second, the shard that leads the meta range reads the member records,
//! plans the replica moves (`kahuna_core::balance::plan`) over its map, and sends each move's
//! next step to its partition's leader (`MoveReplica`). Nothing is remembered between rounds:
//! every round plans from the map and the records, so a balancer that dies (or loses the meta
//! range's leadership) mid-move leaves its successor exactly what it needs.
//!
//! Must never: run two rounds at once on a shard, start more than [`MAX_MOVES`] moves, or move
//! a replica of a node the records do not know.

use std::rc::Rc;
use std::time::{Duration, Instant};

use kahuna_core::balance::{plan, Policy, Seen};
use kahuna_core::membership::{self as rules, MemberState, MEMBERS_PREFIX};
use kahuna_protocol::{Op, Reply};

use super::membership::{balance_on, read_records};
use crate::shard::Shard;

/// Replica moves under way at once, cluster-wide: each costs a snapshot transfer.
pub const MAX_MOVES: usize = 4;
/// A node that left a partition gets no replica of it back for this long: a replica of its
/// that missed its own removal is retired by then (the map reaches every node within 10 s,
/// and a replica the map no longer names is retired within a second).
pub const READD_HOLD: Duration = Duration::from_secs(30);
/// A learner that has not caught up in this long is dropped (and added again later).
const LEARNER_PATIENCE: Duration = Duration::from_secs(600);
/// A member not heard from in this long gets no new replica, and its learners are dropped.
const DOWN_AFTER: Duration = Duration::from_secs(10);

/// The replication factor of the cluster: the one the first node to record itself wrote
/// (`\0kahuna/replication`), so every balancer plans with the same; this node's own flag until
/// then.
async fn replication_factor(shard: &Rc<Shard>, deadline: Instant) -> usize {
    let op = Op::KvGet {
        key: rules::REPLICATION_KEY.to_vec(),
        durability: kahuna_protocol::Durability::Persistent,
        revision: 0,
    };
    match shard.execute_checked(op, deadline).await.0 {
        Ok(Reply::KvGet(it)) => std::str::from_utf8(&it.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(shard.cfg.replication_factor),
        _ => shard.cfg.replication_factor,
    }
}

/// What the plan must know beside the map and the records: members not heard from lately,
/// replicas removed lately, learners that never caught up.
fn seen(shard: &Shard, members: &[rules::Member], map: &kahuna_core::PartitionMap) -> Seen {
    let now = Instant::now();
    let heard = shard.heard.borrow();
    let down: Vec<u64> = members
        .iter()
        .filter(|m| m.state == MemberState::Active && m.id != shard.node_id)
        .filter(|m| heard.get(&m.id).is_none_or(|t| now.duration_since(*t) > DOWN_AFTER))
        .map(|m| m.id)
        .collect();
    let mut removed = shard.cluster.removed.borrow_mut();
    removed.retain(|_, at| now.duration_since(*at) < READD_HOLD);
    let not_again = removed.keys().copied().collect();
    let mut since = shard.cluster.learners_since.borrow_mut();
    let learners: Vec<(u64, u64)> =
        map.partitions().iter().flat_map(|p| p.learners.iter().map(move |l| (p.id, *l))).collect();
    since.retain(|k, _| learners.contains(k));
    for k in &learners {
        since.entry(*k).or_insert(now);
    }
    let stalled = since
        .iter()
        .filter(|((_, n), at)| down.contains(n) || now.duration_since(**at) > LEARNER_PATIENCE)
        .map(|(k, _)| *k)
        .collect();
    Seen { down, not_again, stalled }
}

/// Leaders are moved for load every this many rounds (10 s), at most [`MAX_LEAD_MOVES`] at a
/// time, and a partition whose leadership moved is left alone for [`LEAD_HOLD`].
const LEAD_EVERY_ROUNDS: u64 = 10;
const MAX_LEAD_MOVES: usize = 2;
const LEAD_HOLD: Duration = Duration::from_secs(60);

/// Reads every leader's load (`cluster status`: requests/s per partition) and moves the
/// preferred leadership of hot partitions off the busiest nodes (`core::balance::leader_moves`).
async fn leaders_by_load(shard: &Rc<Shard>, members: &[rules::Member], deadline: Instant) {
    let (Ok(Reply::ClusterStatus(st)), _) =
        shard.status(kahuna_protocol::StatusScope::Cluster, false, deadline).await
    else {
        return;
    };
    let qps: std::collections::BTreeMap<u64, u64> =
        st.partitions.iter().filter_map(|p| Some((p.id, p.leader()?.qps))).collect();
    let now = Instant::now();
    shard.cluster.led.borrow_mut().retain(|_, at| now.duration_since(*at) < LEAD_HOLD);
    let recent: Vec<u64> = shard.cluster.led.borrow().keys().copied().collect();
    let map = shard.map();
    let moves = kahuna_core::balance::leader_moves(
        map.partitions(),
        members,
        &qps,
        &recent,
        MAX_LEAD_MOVES,
    );
    for mv in moves {
        let Some(op) = move_op(&map, mv.partition, mv.epoch, (0, 0, mv.to)) else { continue };
        match shard.execute_checked(op, deadline).await.0 {
            Ok(_) => {
                tracing::info!(
                    "partition {} ({} requests/s): node {} leads it from now on, for load",
                    mv.partition,
                    qps.get(&mv.partition).copied().unwrap_or(0),
                    mv.to
                );
                shard.cluster.led.borrow_mut().insert(mv.partition, now);
            }
            Err(e) => tracing::debug!("leadership of partition {} for load: {e}", mv.partition),
        }
    }
}

/// The request that makes a move's next step (`(add, remove, lead)`) on `partition`'s leader,
/// routed by the partition's start key.
fn move_op(
    map: &kahuna_core::PartitionMap,
    partition: u64,
    epoch: u64,
    (add, remove, lead): (u64, u64, u64),
) -> Option<Op> {
    let key = map.get(partition)?.start.clone();
    Some(Op::MoveReplica { key, partition, epoch, add, remove, lead })
}

/// From the tick, once a second: a round, if this shard leads the meta range.
pub fn tick(shard: &Rc<Shard>) {
    if shard.cluster.balancing.get() {
        return;
    }
    let meta = shard.map().locate(MEMBERS_PREFIX).id;
    let leads =
        shard.parts.borrow().get(&meta).is_some_and(|p| p.is_leader() && p.own_term_applied());
    if !leads {
        if !shard.cluster.moves.borrow().is_empty() {
            shard.cluster.moves.borrow_mut().clear();
        }
        return;
    }
    shard.cluster.balancing.set(true);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        round(&shard).await;
        shard.cluster.balancing.set(false);
    })
    .detach();
}

async fn round(shard: &Rc<Shard>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let Ok(records) = read_records(shard, deadline).await else { return };
    let Ok(even_out) = balance_on(shard, deadline).await else { return };
    let members: Vec<_> = records.iter().map(|(m, _)| m.clone()).collect();
    let map = shard.map();
    // Until every voter the map names has recorded itself (a cluster starting), nothing moves
    // (a learner on an unknown node is dropped by the plan).
    let known = |n: &u64| members.iter().any(|m| m.id == *n);
    if members.is_empty() || !map.partitions().iter().all(|p| p.replicas.iter().all(known)) {
        return;
    }
    let replication = replication_factor(shard, deadline).await;
    let seen = seen(shard, &members, &map);
    // A node being removed that holds nothing any more is gone for good.
    for m in members.iter().filter(|m| m.removing && m.state == MemberState::Draining) {
        if !map.partitions().iter().any(|p| p.holds(m.id)) {
            let (id, rev) = (m.id, records.iter().find(|(r, _)| r.id == m.id).map(|(_, r)| *r));
            let Ok(Some(next)) = rules::set_state(Some(m), id, rules::Ask::Retire) else {
                continue;
            };
            let op = Op::KvSet {
                key: rules::member_key(id),
                value: next.encode(),
                durability: kahuna_protocol::Durability::Persistent,
                ttl_ms: 0,
                condition: kahuna_protocol::SetCondition::IfRevision(rev.unwrap_or(0)),
            };
            match shard.execute_checked(op, deadline).await.0 {
                Ok(_) => {
                    tracing::info!("node {id} holds no replica any more: removed from the cluster")
                }
                Err(e) => tracing::debug!("retiring node {id}: {e}"),
            }
        }
    }
    let rounds = shard.cluster.rounds.get() + 1;
    shard.cluster.rounds.set(rounds);
    if even_out && rounds.is_multiple_of(LEAD_EVERY_ROUNDS) {
        leaders_by_load(shard, &members, deadline).await;
    }
    let policy = Policy { replication, max_moves: MAX_MOVES, even_out };
    let prior: Vec<_> = shard.cluster.moves.borrow().iter().map(|(m, _)| *m).collect();
    let moves = plan(map.partitions(), &members, policy, &prior, &seen);
    let mut done = Vec::with_capacity(moves.len());
    for mv in moves {
        let Some(op) = move_op(&map, mv.partition, mv.epoch, (mv.add, mv.remove, 0)) else {
            continue;
        };
        let step = match shard.execute_checked(op, deadline).await.0 {
            Ok(Reply::MoveReplica { step, .. }) => step,
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => format!("{}: {}", e.code.name(), e.message),
        };
        tracing::debug!("move of partition {} (+{} -{}): {step}", mv.partition, mv.add, mv.remove);
        if step == "remove" {
            shard.cluster.removed.borrow_mut().insert((mv.partition, mv.remove), Instant::now());
        }
        done.push((mv, step));
    }
    *shard.cluster.moves.borrow_mut() = done;
}
