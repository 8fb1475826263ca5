//! Where replicas go: which replica moves next ([`plan`]) and the next step of one move on its
//! partition's leader ([`next_step`]). Pure decisions over the map and the member records.
//!
//! A move adds a replica on one node and removes one from another, one Raft membership change
//! at a time: learner → promoted → old replica removed. Between the steps a partition has a
//! learner, or one voter too many; the plan finishes such a move before starting any other, so
//! a crash anywhere leaves only states the next plan completes (whoever makes it). A partition
//! is never below its replication factor on purpose: the new replica votes before the old one
//! leaves.
//!
//! Owns: the order of moves (finish, then empty leaving nodes, then restore the replication
//! factor, then even out counts), the bound on moves at once, the hysteresis (counts differ by
//! two or more before a replica moves for balance). Must never: look at a clock or a socket.

use std::collections::BTreeMap;

use crate::membership::{Member, MemberState};
use crate::partition::PartitionInfo;

/// One replica move: add a replica on `add`, then remove the one on `remove` (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub partition: u64,
    /// The partition's epoch the move was planned at: a changed partition refuses it.
    pub epoch: u64,
    pub add: u64,
    pub remove: u64,
}

/// What the balancer may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub replication: usize,
    /// Moves under way at once, cluster-wide.
    pub max_moves: usize,
    /// Also move replicas to even out counts (leaving nodes are emptied regardless).
    pub even_out: bool,
}

/// What the balancer saw beside the map and the records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Active members not heard from lately: they get no replica (their own replicas stay:
    /// a node is replaced when an operator removes it, not when it is slow to answer).
    pub down: Vec<u64>,
    /// `(partition, node)`: the node left the partition lately and gets no replica of it back
    /// yet (its old replica, if it missed its own removal, must be gone first).
    pub not_again: Vec<(u64, u64)>,
    /// `(partition, node)`: learners that never caught up (their node is down, or it took too
    /// long): dropped.
    pub stalled: Vec<(u64, u64)>,
}

/// Replicas (voters and learners) per node that may hold them, and the nodes leaving.
struct Counts<'a> {
    held: BTreeMap<u64, usize>,
    seen: &'a Seen,
}

impl<'a> Counts<'a> {
    fn new(parts: &[PartitionInfo], members: &[Member], seen: &'a Seen) -> Counts<'a> {
        let mut held: BTreeMap<u64, usize> =
            members.iter().filter(|m| m.state == MemberState::Active).map(|m| (m.id, 0)).collect();
        for p in parts {
            for n in p.replicas.iter().chain(&p.learners) {
                if let Some(c) = held.get_mut(n) {
                    *c += 1;
                }
            }
        }
        Counts { held, seen }
    }

    /// Whether `n` may receive a replica of `p`.
    fn may_receive(&self, p: &PartitionInfo, n: u64) -> bool {
        !p.holds(n) && !self.seen.down.contains(&n) && !self.seen.not_again.contains(&(p.id, n))
    }

    /// The active node holding the fewest replicas that may receive one of `p`.
    fn receiver(&self, p: &PartitionInfo) -> Option<u64> {
        self.held
            .iter()
            .filter(|(n, _)| self.may_receive(p, **n))
            .min_by_key(|(n, c)| (**c, **n))
            .map(|(n, _)| *n)
    }

    fn add(&mut self, n: u64, d: isize) {
        if let Some(c) = self.held.get_mut(&n) {
            *c = c.saturating_add_signed(d);
        }
    }
}

/// The moves to make now, at most `policy.max_moves` (those already under way included).
/// `prior`: the moves the last round made (if this planner made it): a move under way keeps
/// the replica it meant to remove, so the counts shifting meanwhile do not change its mind.
pub fn plan(
    parts: &[PartitionInfo],
    members: &[Member],
    policy: Policy,
    prior: &[Move],
    seen: &Seen,
) -> Vec<Move> {
    let state: BTreeMap<u64, MemberState> = members.iter().map(|m| (m.id, m.state)).collect();
    let leaving =
        |n: &u64| matches!(state.get(n), Some(MemberState::Draining | MemberState::Removed));
    let active = state.values().filter(|s| **s == MemberState::Active).count();
    let target = policy.replication.min(active).max(1);
    let mut counts = Counts::new(parts, members, seen);
    let mut moves = Vec::new();
    let mv = |p: &PartitionInfo, add, remove| Move { partition: p.id, epoch: p.epoch, add, remove };
    // The voter to remove from `p`: a leaving one first, else the one on the busiest node
    // (never `keep`).
    let victim = |p: &PartitionInfo, keep: u64, counts: &Counts| -> u64 {
        let pick = p.replicas.iter().copied().filter(|n| *n != keep);
        pick.clone()
            .find(leaving)
            .or_else(|| {
                pick.max_by_key(|n| (counts.held.get(n).copied().unwrap_or(usize::MAX), *n))
            })
            .unwrap_or(0)
    };
    // The voter the last round meant to remove from `p`, if it still may go.
    let meant = |p: &PartitionInfo, keep: u64| {
        prior
            .iter()
            .find(|m| m.partition == p.id && m.remove != keep && p.replicas.contains(&m.remove))
            .map(|m| m.remove)
    };
    // 1. Moves under way: a learner to promote (or drop), a voter too many.
    for p in parts {
        if moves.len() >= policy.max_moves {
            return moves;
        }
        let (add, remove) = if let Some(&l) = p.learners.first() {
            if leaving(&l) || !state.contains_key(&l) || seen.stalled.contains(&(p.id, l)) {
                (0, l)
            } else if p.replicas.len() >= target {
                (l, meant(p, l).unwrap_or_else(|| victim(p, l, &counts)))
            } else {
                (l, 0)
            }
        } else if p.replicas.len() > target {
            (0, meant(p, 0).unwrap_or_else(|| victim(p, 0, &counts)))
        } else {
            continue;
        };
        counts.add(remove, -1);
        moves.push(mv(p, add, remove));
    }
    let busy = |moves: &[Move], p: &PartitionInfo| moves.iter().any(|m| m.partition == p.id);
    // 2. Leaving nodes: each of their replicas moves to the emptiest active node.
    for p in parts {
        if moves.len() >= policy.max_moves {
            return moves;
        }
        if busy(&moves, p) {
            continue;
        }
        if let Some(&out) = p.replicas.iter().find(|n| leaving(n)) {
            if let Some(to) = counts.receiver(p) {
                counts.add(to, 1);
                moves.push(mv(p, to, out));
            }
        }
    }
    // 3. Partitions below the replication factor (the cluster grew past it).
    for p in parts {
        if moves.len() >= policy.max_moves {
            return moves;
        }
        if busy(&moves, p) || p.replicas.len() >= target {
            continue;
        }
        if let Some(to) = counts.receiver(p) {
            counts.add(to, 1);
            moves.push(mv(p, to, 0));
        }
    }
    if !policy.even_out {
        return moves;
    }
    // 4. Even out: from the busiest node to the emptiest, while they differ by two or more
    //    (by one, a move would only swap which node is busier: that is the hysteresis).
    while moves.len() < policy.max_moves {
        let (Some((&hi, &hc)), Some((&lo, &lc))) = (
            counts.held.iter().max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n))),
            counts
                .held
                .iter()
                .filter(|(n, _)| !seen.down.contains(n))
                .min_by_key(|(n, c)| (**c, **n)),
        ) else {
            break;
        };
        if hc < lc + 2 {
            break;
        }
        // The partition on `hi` whose replicas the emptiest node lacks; the last in key order,
        // so successive plans pick the same one.
        let Some(p) = parts
            .iter()
            .rev()
            .find(|p| !busy(&moves, p) && p.replicas.contains(&hi) && counts.may_receive(p, lo))
        else {
            break;
        };
        counts.add(hi, -1);
        counts.add(lo, 1);
        moves.push(mv(p, lo, hi));
    }
    moves
}

/// Leaders move for load only when the busiest node serves this much more than the emptiest
/// (requests/s) and more than [`LEAD_OVER_MEAN_PCT`] % of the mean: small differences are noise.
pub const LEAD_MIN_GAP_QPS: u64 = 200;
pub const LEAD_OVER_MEAN_PCT: u64 = 120;

/// One leadership move for load: voter `to` goes first in `partition`'s placement order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeadMove {
    pub partition: u64,
    pub epoch: u64,
    pub to: u64,
}

/// Leadership moves that even out the requests/s the preferred leaders serve (`qps` per
/// partition, as its leader measured it), at most `max`. A partition's load counts on its
/// preferred leader (the first replica: leaders follow placement order), on active members
/// only. A move is made only if it lowers the busiest node's load without making its
/// receiver busier than the busiest was: partitions in `recent` (moved lately) stay put.
pub fn leader_moves(
    parts: &[PartitionInfo],
    members: &[Member],
    qps: &BTreeMap<u64, u64>,
    recent: &[u64],
    max: usize,
) -> Vec<LeadMove> {
    let mut load: BTreeMap<u64, u64> =
        members.iter().filter(|m| m.state == MemberState::Active).map(|m| (m.id, 0)).collect();
    if load.len() < 2 {
        return vec![];
    }
    let q = |p: &PartitionInfo| qps.get(&p.id).copied().unwrap_or(0);
    let mut first: BTreeMap<u64, u64> =
        parts.iter().filter_map(|p| Some((p.id, *p.replicas.first()?))).collect();
    for p in parts {
        if let Some(l) = load.get_mut(&first[&p.id]) {
            *l += q(p);
        }
    }
    let mut moves = Vec::new();
    while moves.len() < max {
        let total: u64 = load.values().sum();
        let mean = total / load.len() as u64;
        let (&hi, &hi_load) =
            load.iter().max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n))).expect("two nodes");
        let lo_load = *load.values().min().expect("two nodes");
        if hi_load < lo_load + LEAD_MIN_GAP_QPS || hi_load * 100 <= mean * LEAD_OVER_MEAN_PCT {
            break;
        }
        // The hottest partition of `hi` that some other voter can take with a gain.
        let mut best: Option<(u64, u64, u64, u64)> = None; // (qps, pid, epoch, to)
        let moved = |pid: u64| moves.iter().any(|m: &LeadMove| m.partition == pid);
        for p in
            parts.iter().filter(|p| first[&p.id] == hi && !recent.contains(&p.id) && !moved(p.id))
        {
            let pq = q(p);
            let to = p
                .replicas
                .iter()
                .filter(|n| **n != hi)
                .filter_map(|n| Some((*load.get(n)?, *n)))
                .min();
            if let Some((to_load, to)) = to {
                if pq > 0 && to_load + pq < hi_load && best.is_none_or(|b| pq > b.0) {
                    best = Some((pq, p.id, p.epoch, to));
                }
            }
        }
        let Some((pq, partition, epoch, to)) = best else { break };
        *load.get_mut(&hi).expect("a member") -= pq;
        *load.get_mut(&to).expect("a member") += pq;
        first.insert(partition, to);
        moves.push(LeadMove { partition, epoch, to });
    }
    moves
}

/// The next thing a partition's leader does for a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    AddLearner(u64),
    /// Promote the learner, in the place of the replica it replaces.
    Promote {
        node: u64,
        replaces: u64,
    },
    /// The leader itself is to leave: hand leadership to this voter first.
    TransferLeader(u64),
    Remove(u64),
    /// Nothing to do until the learner catches up (or another voter can lead).
    Wait,
    Done,
}

/// The next step of `mv` on a partition whose leader is `me`. `caught_up(n)`: the replica on
/// `n` has the log up to about where the leader's is.
pub fn next_step(
    info: &PartitionInfo,
    me: u64,
    mv: &Move,
    caught_up: impl Fn(u64) -> bool,
) -> Step {
    if mv.add != 0 && !info.holds(mv.add) {
        return Step::AddLearner(mv.add);
    }
    if mv.add != 0 && info.learners.contains(&mv.add) {
        return if caught_up(mv.add) {
            Step::Promote { node: mv.add, replaces: mv.remove }
        } else {
            Step::Wait
        };
    }
    if mv.remove != 0 && info.holds(mv.remove) {
        if mv.remove == me {
            let to = info.replicas.iter().copied().find(|n| *n != me && caught_up(*n));
            return to.map(Step::TransferLeader).unwrap_or(Step::Wait);
        }
        return Step::Remove(mv.remove);
    }
    Step::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{PartitionMap, ReplicaChange};

    fn members(states: &[(u64, MemberState)]) -> Vec<Member> {
        states
            .iter()
            .map(|(id, state)| Member {
                id: *id,
                client_addr: String::new(),
                peer_addr: String::new(),
                shards: 1,
                state: *state,
                removing: false,
            })
            .collect()
    }

    fn active(ids: &[u64]) -> Vec<Member> {
        members(&ids.iter().map(|i| (*i, MemberState::Active)).collect::<Vec<_>>())
    }

    const ALL: Policy = Policy { replication: 3, max_moves: 100, even_out: true };

    /// Applies a plan's moves to the descriptors as if each finished.
    fn settle(parts: &mut [PartitionInfo], moves: &[Move]) {
        for m in moves {
            let p = parts.iter_mut().find(|p| p.id == m.partition).unwrap();
            p.learners.retain(|n| *n != m.add);
            if m.add != 0 && !p.replicas.contains(&m.add) {
                p.replicas.push(m.add);
            }
            p.replicas.retain(|n| *n != m.remove);
            p.epoch += 1;
        }
    }

    fn counts(parts: &[PartitionInfo]) -> BTreeMap<u64, usize> {
        let mut c = BTreeMap::new();
        for p in parts {
            for n in &p.replicas {
                *c.entry(*n).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn a_joined_node_receives_its_share_and_then_nothing_moves() {
        let mut parts = PartitionMap::initial(12, 1, &[1, 2, 3], 3).partitions().to_vec();
        let m = active(&[1, 2, 3, 4]);
        let moves = plan(&parts, &m, ALL, &[], &Seen::default());
        assert!(moves.iter().all(|mv| mv.add == 4 && mv.remove != 4));
        settle(&mut parts, &moves);
        let c = counts(&parts);
        assert_eq!(c[&4], 9, "36 replicas over 4 nodes: {c:?}");
        assert!(c.values().all(|n| *n == 9), "{c:?}");
        // Settled: nothing more (hysteresis keeps a one-replica difference).
        assert!(plan(&parts, &m, ALL, &[], &Seen::default()).is_empty());
        assert!(parts.iter().all(|p| p.replicas.len() == 3));
    }

    #[test]
    fn moves_are_bounded_and_unfinished_ones_come_first() {
        let parts = PartitionMap::initial(12, 1, &[1, 2, 3], 3).partitions().to_vec();
        let m = active(&[1, 2, 3, 4]);
        let bounded = plan(&parts, &m, Policy { max_moves: 2, ..ALL }, &[], &Seen::default());
        assert_eq!(bounded.len(), 2);
        // A learner half-way: it is finished first, and counts against the bound.
        let mut half = parts.clone();
        half[5].learners.push(4);
        let next = plan(&half, &m, Policy { max_moves: 1, ..ALL }, &[], &Seen::default());
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].partition, next[0].add), (half[5].id, 4));
        // A voter too many (promoted, not yet removed): one goes, never the new one.
        let mut extra = parts.clone();
        extra[2].replicas.push(4);
        let next = plan(&extra, &m, Policy { max_moves: 1, ..ALL }, &[], &Seen::default());
        assert_eq!(next[0].partition, extra[2].id);
        assert_eq!(next[0].add, 0);
        assert!(next[0].remove != 0 && next[0].remove != 4, "{next:?}");
        // A learner on a node that is leaving is dropped, not promoted.
        let mut drop = parts.clone();
        drop[1].learners.push(4);
        let gone = members(&[
            (1, MemberState::Active),
            (2, MemberState::Active),
            (3, MemberState::Active),
            (4, MemberState::Draining),
        ]);
        assert_eq!(
            plan(&drop, &gone, ALL, &[], &Seen::default())[0],
            Move { partition: drop[1].id, epoch: 1, add: 0, remove: 4 }
        );
    }

    #[test]
    fn a_drained_node_is_emptied_and_the_replication_factor_kept() {
        let mut parts = PartitionMap::initial(8, 1, &[1, 2, 3, 4], 3).partitions().to_vec();
        let m = members(&[
            (1, MemberState::Active),
            (2, MemberState::Draining),
            (3, MemberState::Active),
            (4, MemberState::Active),
        ]);
        let no_even = Policy { even_out: false, ..ALL };
        let moves = plan(&parts, &m, no_even, &[], &Seen::default());
        assert!(moves.iter().all(|mv| mv.remove == 2 && mv.add != 2 && mv.add != 0));
        settle(&mut parts, &moves);
        assert!(parts.iter().all(|p| !p.holds(2) && p.replicas.len() == 3));
        assert!(plan(&parts, &m, no_even, &[], &Seen::default()).is_empty());
    }

    #[test]
    fn removing_a_node_of_three_shrinks_to_what_remains_and_growth_adds_replicas() {
        // 3 nodes, one leaving: nowhere to move to, so the replication factor becomes 2.
        let mut parts = PartitionMap::initial(4, 1, &[1, 2, 3], 3).partitions().to_vec();
        let m = members(&[
            (1, MemberState::Active),
            (2, MemberState::Active),
            (3, MemberState::Draining),
        ]);
        let moves = plan(&parts, &m, ALL, &[], &Seen::default());
        assert_eq!(moves.len(), 4);
        assert!(moves.iter().all(|mv| mv.add == 0 && mv.remove == 3));
        settle(&mut parts, &moves);
        assert!(parts.iter().all(|p| p.replicas.len() == 2 && !p.holds(3)));
        // A one-node cluster that grows to three gets its replicas.
        let mut single = PartitionMap::initial(3, 1, &[1], 3).partitions().to_vec();
        let m3 = active(&[1, 2, 3]);
        for _ in 0..3 {
            let moves = plan(&single, &m3, ALL, &[], &Seen::default());
            settle(&mut single, &moves);
        }
        assert!(single.iter().all(|p| p.replicas.len() == 3), "{single:?}");
        assert!(plan(&single, &m3, ALL, &[], &Seen::default()).is_empty());
    }

    /// Runs rounds as the server does: each round's moves make one step each (learner, then
    /// promote, then remove), with the last round's moves as `prior`. Returns the replicas
    /// moved in all.
    fn run_rounds(parts: &mut [PartitionInfo], m: &[Member], policy: Policy) -> usize {
        let mut prior = Vec::new();
        let mut moved = 0;
        for _ in 0..200 {
            let moves = plan(parts, m, policy, &prior, &Seen::default());
            if moves.is_empty() {
                return moved;
            }
            for mv in &moves {
                let p = parts.iter_mut().find(|p| p.id == mv.partition).unwrap();
                let step = next_step(p, p.replicas[0].max(1), mv, |_| true);
                let change = match step {
                    Step::AddLearner(node) => ReplicaChange::AddLearner { node },
                    Step::Promote { node, replaces } => ReplicaChange::Promote { node, replaces },
                    Step::Remove(node) => {
                        moved += 1;
                        ReplicaChange::Remove { node }
                    }
                    Step::TransferLeader(_) | Step::Wait | Step::Done => continue,
                };
                *p = p.change_replicas(change, p.epoch).unwrap();
            }
            prior = moves;
        }
        panic!("no settled state after 200 rounds");
    }

    #[test]
    fn rounds_step_by_step_move_no_more_than_needed() {
        for nodes in [3usize, 5] {
            let ids: Vec<u64> = (1..=nodes as u64).collect();
            let mut parts = PartitionMap::initial(12, 1, &ids, 3).partitions().to_vec();
            let mut grown = ids.clone();
            grown.push(nodes as u64 + 1);
            let moved = run_rounds(&mut parts, &active(&grown), Policy { max_moves: 4, ..ALL });
            let c = counts(&parts);
            let (lo, hi) = (c.values().min().unwrap(), c.values().max().unwrap());
            assert!(hi - lo <= 1, "{nodes} nodes + 1: {c:?}");
            // The new node's share, and not much more: no replica moved back and forth.
            assert!(moved <= c[&(nodes as u64 + 1)] + 1, "{nodes} + 1 nodes: {moved} moves, {c:?}");
            assert!(parts.iter().all(|p| p.replicas.len() == 3 && p.learners.is_empty()));
        }
    }

    #[test]
    fn down_nodes_recent_removals_and_stalled_learners_are_respected() {
        let parts = PartitionMap::initial(12, 1, &[1, 2, 3], 3).partitions().to_vec();
        let m = active(&[1, 2, 3, 4]);
        // Node 4 down: it gets nothing.
        let down = Seen { down: vec![4], ..Seen::default() };
        assert!(plan(&parts, &m, ALL, &[], &down).is_empty());
        // Node 4 left every partition lately: nothing of them comes back to it yet.
        let not_again =
            Seen { not_again: parts.iter().map(|p| (p.id, 4)).collect(), ..Seen::default() };
        assert!(plan(&parts, &m, ALL, &[], &not_again).is_empty());
        // A learner that never caught up is dropped, not promoted.
        let mut half = parts.clone();
        half[3].learners.push(4);
        let stalled = Seen { stalled: vec![(half[3].id, 4)], ..Seen::default() };
        let moves = plan(&half, &m, Policy { max_moves: 1, ..ALL }, &[], &stalled);
        assert_eq!(moves, vec![Move { partition: half[3].id, epoch: 1, add: 0, remove: 4 }]);
    }

    #[test]
    fn leaders_move_for_load_with_hysteresis() {
        let parts = PartitionMap::initial(6, 1, &[1, 2, 3], 3).partitions().to_vec();
        let m = active(&[1, 2, 3]);
        let first = |pid: u64| parts.iter().find(|p| p.id == pid).unwrap().replicas[0];
        // (load per partition, expected number of moves)
        let even: BTreeMap<u64, u64> = parts.iter().map(|p| (p.id, 1000)).collect();
        assert!(leader_moves(&parts, &m, &even, &[], 4).is_empty(), "even load stays");
        // Node 1 leads the two hot partitions: one of them moves to a less loaded voter.
        let hot: BTreeMap<u64, u64> =
            parts.iter().map(|p| (p.id, if first(p.id) == 1 { 3000 } else { 100 })).collect();
        let moves = leader_moves(&parts, &m, &hot, &[], 4);
        assert!(!moves.is_empty());
        assert_eq!((first(moves[0].partition), hot[&moves[0].partition]), (1, 3000), "{moves:?}");
        assert_ne!(moves[0].to, 1);
        let mut seen: Vec<u64> = moves.iter().map(|m| m.partition).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), moves.len(), "a partition moved twice: {moves:?}");
        // Afterwards the busiest node serves less than node 1 did (6,200 requests/s).
        let mut after: BTreeMap<u64, u64> = BTreeMap::new();
        for p in &parts {
            let lead =
                moves.iter().find(|m| m.partition == p.id).map(|m| m.to).unwrap_or(first(p.id));
            *after.entry(lead).or_default() += hot[&p.id];
        }
        assert!(after.values().all(|l| *l < 6200), "{after:?}");
        // Moved lately: left alone.
        let ids: Vec<u64> = parts.iter().map(|p| p.id).collect();
        assert!(leader_moves(&parts, &m, &hot, &ids, 4).is_empty());
        // Small differences are noise.
        let noise: BTreeMap<u64, u64> =
            parts.iter().map(|p| (p.id, if first(p.id) == 1 { 150 } else { 100 })).collect();
        assert!(leader_moves(&parts, &m, &noise, &[], 4).is_empty());
        // One hot partition alone: moving it would only move the hot spot.
        let one: BTreeMap<u64, u64> =
            parts.iter().map(|p| (p.id, if p.id == parts[0].id { 5000 } else { 0 })).collect();
        assert!(leader_moves(&parts, &m, &one, &[], 4).is_empty());
        // A draining node is neither a source of load nor a receiver.
        let drained = members(&[
            (1, MemberState::Active),
            (2, MemberState::Draining),
            (3, MemberState::Active),
        ]);
        for mv in leader_moves(&parts, &drained, &hot, &[], 4) {
            assert_ne!(mv.to, 2);
        }
    }

    #[test]
    fn steps_go_learner_promote_handover_remove() {
        let p = PartitionMap::initial(1, 1, &[1, 2, 3], 3).partitions()[0].clone();
        let mv = Move { partition: p.id, epoch: 1, add: 4, remove: 1 };
        let yes = |_| true;
        let no = |_| false;
        let learner = PartitionInfo { learners: vec![4], ..p.clone() };
        let promoted = PartitionInfo { replicas: vec![4, 1, 2, 3], ..p.clone() };
        let done = PartitionInfo { replicas: vec![4, 2, 3], ..p.clone() };
        // (descriptor, leader, caught up?, expected step)
        let cases: Vec<(&PartitionInfo, u64, bool, Step)> = vec![
            (&p, 2, true, Step::AddLearner(4)),
            (&learner, 2, false, Step::Wait),
            (&learner, 2, true, Step::Promote { node: 4, replaces: 1 }),
            (&promoted, 2, true, Step::Remove(1)),
            (&promoted, 1, true, Step::TransferLeader(4)),
            (&promoted, 1, false, Step::Wait),
            (&done, 4, true, Step::Done),
        ];
        for (info, me, caught, want) in cases {
            let got =
                if caught { next_step(info, me, &mv, yes) } else { next_step(info, me, &mv, no) };
            assert_eq!(got, want, "{:?} leader {me}", info.replicas);
        }
        let drop = Move { partition: p.id, epoch: 1, add: 0, remove: 4 };
        assert_eq!(next_step(&learner, 2, &drop, yes), Step::Remove(4));
        assert_eq!(next_step(&p, 2, &drop, yes), Step::Done);
    }
}
