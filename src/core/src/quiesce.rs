//! When an idle Raft group stops ticking (quiesces, as CockroachDB's ranges do and TiKV's
//! regions hibernate), and when a quiesced follower must wake up on its own.
//!
//! A leader quiesces its group once nothing has happened for a while and every replica has
//! everything: then no heartbeat is needed, no election should start, and the group costs
//! nothing until a request or a message wakes it. A quiesced follower keeps an eye on the
//! leader's node (any frame from it counts, the clock pings among them): if that node falls
//! silent, the follower wakes up and, not hearing from the leader, elects another one.
//!
//! Pure decisions; the glue is the shard's driver and `Partition`.

/// What the leader knows of its group at a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    pub leader: bool,
    /// The leader applied an entry of its own term (it knows everything committed).
    pub own_term_applied: bool,
    /// Ticks since the last request, proposal or non-heartbeat message.
    pub idle_ticks: u64,
    pub proposals: usize,
    pub reads: usize,
    pub last_index: u64,
    pub committed: u64,
    pub applied: u64,
    /// Each follower's matched index.
    pub followers_matched: Vec<u64>,
    /// A leadership transfer, a snapshot or a configuration change is under way.
    pub busy: bool,
}

/// Ticks of idleness before a leader quiesces its group, by default (2 s at 100 ms ticks: an
/// election timeout, so a follower that missed the quiesce notice notices the silence about as
/// soon).
pub const QUIESCE_AFTER_TICKS: u64 = 20;

/// Whether the leader should quiesce its group now, after `after_ticks` idle (0: never).
pub fn should_quiesce(g: &GroupState, after_ticks: u64) -> bool {
    after_ticks > 0
        && g.leader
        && g.own_term_applied
        && !g.busy
        && g.idle_ticks >= after_ticks
        && g.proposals == 0
        && g.reads == 0
        && g.committed == g.last_index
        && g.applied == g.last_index
        && g.followers_matched.iter().all(|m| *m == g.last_index)
}

/// What a follower checks of a quiesce notice from `from` (`term`, `index`) against itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerState {
    pub term: u64,
    pub leader: u64,
    pub last_index: u64,
    pub committed: u64,
}

/// Whether a follower may quiesce on a leader's notice: the notice comes from the leader it
/// follows, in its term, and it holds and has committed everything the leader has.
pub fn follower_may_quiesce(f: &FollowerState, from: u64, term: u64, index: u64) -> bool {
    f.leader == from && f.term == term && f.last_index == index && f.committed == index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> GroupState {
        GroupState {
            leader: true,
            own_term_applied: true,
            idle_ticks: QUIESCE_AFTER_TICKS,
            proposals: 0,
            reads: 0,
            last_index: 9,
            committed: 9,
            applied: 9,
            followers_matched: vec![9, 9],
            busy: false,
        }
    }

    #[test]
    fn a_leader_quiesces_only_an_idle_group_that_every_replica_has_whole() {
        let cases: Vec<(&str, GroupState, bool)> = vec![
            ("idle and caught up", idle(), true),
            ("a follower", GroupState { leader: false, ..idle() }, false),
            ("own term not applied", GroupState { own_term_applied: false, ..idle() }, false),
            ("recently busy", GroupState { idle_ticks: QUIESCE_AFTER_TICKS - 1, ..idle() }, false),
            ("a write waiting", GroupState { proposals: 1, ..idle() }, false),
            ("a read waiting", GroupState { reads: 1, ..idle() }, false),
            ("uncommitted entry", GroupState { committed: 8, ..idle() }, false),
            ("unapplied entry", GroupState { applied: 8, ..idle() }, false),
            ("a follower behind", GroupState { followers_matched: vec![9, 7], ..idle() }, false),
            ("a transfer under way", GroupState { busy: true, ..idle() }, false),
            ("a sole replica", GroupState { followers_matched: vec![], ..idle() }, true),
        ];
        for (name, g, want) in cases {
            assert_eq!(should_quiesce(&g, QUIESCE_AFTER_TICKS), want, "{name}");
        }
        assert!(!should_quiesce(&idle(), 0), "0 turns it off");
    }

    #[test]
    fn a_follower_quiesces_only_on_its_leaders_notice_when_caught_up() {
        let f = FollowerState { term: 4, leader: 2, last_index: 9, committed: 9 };
        // (from, term, index) -> may quiesce
        let cases = [
            ((2, 4, 9), true),
            ((3, 4, 9), false),
            ((2, 5, 9), false),
            ((2, 4, 10), false),
            ((2, 4, 8), false),
        ];
        for ((from, term, index), want) in cases {
            assert_eq!(follower_may_quiesce(&f, from, term, index), want, "{from} {term} {index}");
        }
        let behind = FollowerState { committed: 8, ..f };
        assert!(!follower_may_quiesce(&behind, 2, 4, 9));
    }
}
