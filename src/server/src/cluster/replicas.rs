//! Replica moves on one partition: the leader's side of a move step (make the Raft membership
//! change the move needs next, see `kahuna_core::balance::next_step`) and every replica's side
//! (apply the change to raft-rs and to the descriptor in one go, and retire a replica that
//! left its group).
//!
//! A change is one raft-rs `ConfChangeV2` with a single change, carrying a
//! [`ChangeEntry`] (our change and the epoch it was decided at) as its context. Every replica
//! applies it by [`PartitionInfo::change_replicas`]; a change whose epoch is stale is refused
//! the same way everywhere (raft-rs never hears of it). A new learner's group compacts its
//! in-memory log at once, so the learner is caught up by a snapshot (carrying the voters and
//! learners at its index) rather than by replaying the log from its first entry.
//!
//! Must never: promote or remove outside raft-rs's rules (they are checked twice: ours, then
//! raft-rs's, and a disagreement stops the node), or leave the leader to remove itself.

use std::rc::Rc;

use kahuna_core::balance::{next_step, LeadMove, Move, Step};
use kahuna_core::partition::{ChangeEntry, PartitionInfo, ReplicaChange};
use kahuna_protocol::{ErrorCode, Reply, WireError};
use prost::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry};

use crate::raft::partition::Partition;
use crate::shard::{with_deadline, Shard};
use crate::storage::state::StateDb;
use kahuna_core::store::{Txn, WriteBuffer};

/// A learner is caught up when its log reaches this close to the leader's commit index (under
/// a steady stream of writes it is always a few entries behind the leader's last).
const CAUGHT_UP_ENTRIES: u64 = 256;

fn conflict(e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorCode::Conflict, e.to_string())
}

fn not_here(partition: u64) -> WireError {
    WireError::new(ErrorCode::Moved, format!("partition {partition} is not here"))
}

/// A step planned for partition `want` at `epoch` runs only on its leader, at that epoch.
fn leads_at(p: &Partition, want: u64, epoch: u64) -> Result<(), WireError> {
    p.ensure_leader()?;
    if p.info.id != want || p.info.epoch != epoch {
        return Err(conflict(format!(
            "partition {} is at epoch {}; the step was planned for partition {want} at {epoch}",
            p.info.id, p.info.epoch
        )));
    }
    Ok(())
}

impl Shard {
    /// One step of `mv` on `partition`, which this shard leads: the step taken, and the
    /// partition's epoch after it.
    pub async fn move_step(
        self: &Rc<Self>,
        partition: u64,
        mv: Move,
        deadline: std::time::Instant,
    ) -> Result<Reply, WireError> {
        let me = self.node_id;
        let proposal = {
            let mut parts = self.parts.borrow_mut();
            let p = parts.get_mut(&partition).ok_or_else(|| not_here(partition))?;
            leads_at(p, mv.partition, mv.epoch)?;
            let committed = p.node.raft.raft_log.committed;
            let prs = p.node.raft.prs();
            let caught_up = |n: u64| {
                prs.get(n)
                    .is_some_and(|pr| pr.matched > 0 && pr.matched + CAUGHT_UP_ENTRIES >= committed)
            };
            let change = match next_step(&p.info, me, &mv, caught_up) {
                Step::AddLearner(node) => ReplicaChange::AddLearner { node },
                Step::Promote { node, replaces } => ReplicaChange::Promote { node, replaces },
                Step::Remove(node) => ReplicaChange::Remove { node },
                Step::TransferLeader(to) => {
                    tracing::info!("partition {partition}: handing leadership to node {to} before this replica leaves");
                    p.node.transfer_leader(to);
                    self.kick();
                    return Ok(Reply::MoveReplica {
                        step: "transfer-leader".into(),
                        epoch: p.info.epoch,
                    });
                }
                Step::Wait => {
                    return Ok(Reply::MoveReplica { step: "wait".into(), epoch: p.info.epoch })
                }
                Step::Done => {
                    return Ok(Reply::MoveReplica { step: "done".into(), epoch: p.info.epoch })
                }
            };
            // Checked here too, so that a change raft-rs would take but we would refuse is
            // never proposed.
            p.info.change_replicas(change, p.info.epoch).map_err(conflict)?;
            tracing::info!(
                "partition {partition}: {} node {} (epoch {})",
                change.name(),
                change.node(),
                p.info.epoch
            );
            p.propose_change(ChangeEntry { epoch: p.info.epoch, change }, conf_change(change))?
        };
        self.kick();
        match with_deadline(deadline, proposal).await {
            None => Err(WireError::new(
                ErrorCode::Timeout,
                "the membership change did not apply in time; its outcome is unknown",
            )),
            Some(Err(_)) => Err(WireError::new(
                ErrorCode::Timeout,
                "the membership change was abandoned; its outcome is unknown",
            )),
            Some(Ok(r)) => r,
        }
    }
}

impl Shard {
    /// Makes `mv.to` the partition's preferred leader (first in placement order), on its
    /// leader; the leader rebalancer then hands leadership over.
    pub async fn lead_step(
        self: &Rc<Self>,
        partition: u64,
        mv: LeadMove,
        deadline: std::time::Instant,
    ) -> Result<Reply, WireError> {
        let epoch = {
            let parts = self.parts.borrow();
            let p = parts.get(&partition).ok_or_else(|| not_here(partition))?;
            leads_at(p, mv.partition, mv.epoch)?;
            if p.info.replicas.first() == Some(&mv.to) {
                return Ok(Reply::MoveReplica { step: "done".into(), epoch: p.info.epoch });
            }
            p.info.prefer(mv.to, p.info.epoch).map_err(conflict)?;
            p.info.epoch
        };
        tracing::info!("partition {partition}: node {} to lead it (load)", mv.to);
        let data = self.command(kahuna_core::WriteOp::Lead { node: mv.to, epoch });
        self.propose_wait(partition, data, deadline).await
    }
}

/// Applies a `Lead` entry: the descriptor with the new preferred leader first.
pub fn apply_lead(
    shard: &Shard,
    p: &mut Partition,
    buf: &mut WriteBuffer<'_, StateDb>,
    node: u64,
    epoch: u64,
) -> Result<Reply, WireError> {
    let next = p.info.prefer(node, epoch).map_err(conflict)?;
    buf.put(crate::storage::state::descriptor_key(next.id), next.encode());
    p.info = next.clone();
    p.handover = None;
    shard.learn_map(std::slice::from_ref(&next));
    shard.map_outbox.borrow_mut().push(next.clone());
    Ok(Reply::MoveReplica { step: "lead".into(), epoch: next.epoch })
}

/// raft-rs's form of `change`.
fn conf_change(change: ReplicaChange) -> ConfChangeV2 {
    let (ty, node) = match change {
        ReplicaChange::AddLearner { node } => (ConfChangeType::AddLearnerNode, node),
        ReplicaChange::Promote { node, .. } => (ConfChangeType::AddNode, node),
        ReplicaChange::Remove { node } => (ConfChangeType::RemoveNode, node),
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ty);
    single.node_id = node;
    ConfChangeV2 { changes: vec![single], ..Default::default() }
}

/// What applying a membership change asks of the shard once the batch is durable.
#[derive(Default)]
pub struct Applied {
    /// Partitions this node no longer holds a replica of: retired after the commit.
    pub retired: Vec<u64>,
}

/// Applies a membership-change entry on this replica, in the same RocksDB batch as the rest.
pub fn apply_change(
    shard: &Shard,
    p: &mut Partition,
    buf: &mut WriteBuffer<'_, StateDb>,
    e: &Entry,
    applied: &mut Applied,
) -> Option<Result<Reply, WireError>> {
    let pid = p.info.id;
    if e.data.is_empty() {
        return None; // raft-rs's own empty change (leaving a joint state): none of ours
    }
    let (cc, entry) = match (ConfChangeV2::decode(&e.data[..]), ChangeEntry::decode(&e.context)) {
        (Ok(cc), Ok(entry)) => (cc, entry),
        _ => {
            tracing::error!("partition {pid}: membership change at {} cannot be decoded", e.index);
            return Some(Err(WireError::new(ErrorCode::Internal, "undecodable membership change")));
        }
    };
    let next = match p.info.change_replicas(entry.change, entry.epoch) {
        Ok(next) => next,
        Err(refused) => return Some(Err(conflict(refused))),
    };
    let cs = match p.node.apply_conf_change(&cc) {
        Ok(cs) => cs,
        Err(err) => crate::fatal::storage(
            "applying a membership change",
            format!(
                "partition {pid}: raft-rs refused {:?} that the descriptor took: {err}",
                entry.change
            ),
        ),
    };
    let same = |a: &[u64], b: &[u64]| {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_unstable();
        b.sort_unstable();
        a == b
    };
    if !same(&cs.voters, &next.replicas) || !same(&cs.learners, &next.learners) {
        crate::fatal::storage(
            "applying a membership change",
            format!("partition {pid}: raft-rs's voters {:?} / learners {:?} differ from the descriptor's {:?} / {:?}", cs.voters, cs.learners, next.replicas, next.learners),
        );
    }
    p.node.mut_store().conf_state = cs;
    p.node.mut_store().forget_snapshot();
    buf.put(crate::storage::state::descriptor_key(pid), next.encode());
    tracing::info!(
        "shard {}: partition {pid}: {} node {} applied; voters {:?}, learners {:?} (epoch {})",
        shard.id,
        entry.change.name(),
        entry.change.node(),
        next.replicas,
        next.learners,
        next.epoch
    );
    if matches!(entry.change, ReplicaChange::AddLearner { .. }) {
        p.compact_on_apply = true;
    }
    if !next.holds(shard.node_id) {
        applied.retired.push(pid);
    }
    p.info = next.clone();
    p.handover = None;
    shard.learn_map(std::slice::from_ref(&next));
    shard.map_outbox.borrow_mut().push(next.clone());
    Some(Ok(Reply::MoveReplica { step: entry.change.name().into(), epoch: next.epoch }))
}

/// This node left `partition`'s group: its replica goes, with its state (its WAL entries stay
/// until their segment is released; a restart finds no descriptor for them and ignores them).
pub fn retire(shard: &Shard, partition: u64) {
    let Some(p) = shard.parts.borrow_mut().remove(&partition) else { return };
    let freed = p.ephemeral.bytes();
    shard.ephemeral_bytes.set(shard.ephemeral_bytes.get().saturating_sub(freed));
    shard.splits.forget(partition);
    shard.cluster.retired.borrow_mut().insert(partition);
    // Its keys go unless another replica here holds part of the range (it cannot, unless a
    // descriptor here is wrong: then keys that may be another's are kept, not deleted).
    let shared = shard.parts.borrow().values().any(|o| o.info.overlaps(&p.info));
    if shared {
        tracing::warn!("partition {partition}: its range overlaps another replica here; only its descriptor is removed");
    }
    if let Err(e) = shard.db.drop_partition(&p.info, !shared) {
        crate::fatal::storage("removing a retired replica", e);
    }
    tracing::info!(
        "shard {}: partition {partition}: this node left its group; its replica is removed",
        shard.id
    );
}

/// Once a second: replicas here that the map says this node no longer holds, at a newer epoch
/// (their removal applied elsewhere while this one missed it), are retired. Only followers:
/// a leader learns of its own removal by applying it.
pub fn retire_stale(shard: &Shard) {
    let map = shard.map();
    let stale: Vec<u64> = shard
        .parts
        .borrow()
        .iter()
        .filter(|(pid, p)| {
            !p.is_leader()
                && p.installing.is_none()
                && map.get(**pid).is_some_and(|i: &PartitionInfo| {
                    i.epoch > p.info.epoch && !i.holds(shard.node_id) && i.overlaps(&p.info)
                })
        })
        .map(|(pid, _)| *pid)
        .collect();
    for pid in stale {
        retire(shard, pid);
    }
}
