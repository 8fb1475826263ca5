//! Quiescence, as the shard carries it out: the leader's notice to its followers, a
//! follower's answer to it, and the wake-up a follower asks of its leader. When to quiesce is
//! `kahuna_core::quiesce`'s decision; the tick that skips quiesced groups, and wakes followers
//! whose leader's node fell silent, is the driver's (`driver::on_tick`).
//!
//! Must never: quiesce a follower that lacks an entry its leader has, or leave a group with
//! nobody ticking while its leader's node is silent.

use kahuna_core::peer_frame::PeerFrame;

use super::Shard;

/// The leader stops ticking an idle group and tells its followers to stop too.
pub(super) fn quiesce(shard: &Shard, pid: u64, p: &mut crate::raft::partition::Partition) {
    p.quiesced = true;
    let raft = &p.node.raft;
    let (term, index, me) = (raft.term, raft.raft_log.last_index(), raft.id);
    if let Some(peers) = &shard.peers {
        for (id, _) in raft.prs().iter().filter(|(id, _)| **id != me) {
            peers.send(*id, PeerFrame::Quiesce { partition: pid, term, index });
        }
    }
}

/// A leader's quiesce notice: this follower stops ticking too if it follows that leader in
/// that term and holds everything it has.
pub fn on_quiesce(shard: &Shard, from: u64, partition: u64, term: u64, index: u64) {
    let mut parts = shard.parts.borrow_mut();
    let Some(p) = parts.get_mut(&partition) else { return };
    let raft = &p.node.raft;
    let me = kahuna_core::quiesce::FollowerState {
        term: raft.term,
        leader: raft.leader_id,
        last_index: raft.raft_log.last_index(),
        committed: raft.raft_log.committed,
    };
    let idle = p.installing.is_none() && p.recampaign_at.is_none() && p.ephemeral.is_empty();
    if !p.is_leader() && idle && kahuna_core::quiesce::follower_may_quiesce(&me, from, term, index)
    {
        p.quiesced = true;
        p.idle_ticks = 0;
    }
}

/// A follower of a quiesced group heard from another replica (a pre-vote, say, from one cut
/// off from the leader): the leader wakes and heartbeats, so that follower does not depose a
/// healthy leader when its own election timer, frozen while quiesced, runs out.
pub fn on_wake(shard: &Shard, partition: u64) {
    if let Some(p) = shard.parts.borrow_mut().get_mut(&partition) {
        if p.quiesced && p.is_leader() {
            p.wake();
            shard.kick();
        }
    }
}
