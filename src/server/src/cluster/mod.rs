//! The cluster level: who the members are (`membership`), where replicas go (`balance`) and how
//! one replica move is carried out on its partition (`replicas`). Splits, the other change of
//! the map, live beside the partition they cut (`shard::split`).
//!
//! ```text
//!  kahuna-cli cluster join|drain|remove-node ─▶ membership::handle ─▶ member records (meta range)
//!  every node, every 2 s: membership::keep ─▶ read records ─▶ peer links of every shard
//!  meta range leader, every 1 s: balance::tick ─▶ plan (core) ─▶ MoveReplica ─▶ partition leader
//!  partition leader: replicas::move_step ─▶ ConfChangeV2 ─▶ every replica: replicas::apply_change
//! ```
//! Must never: decide anything a pure function in `kahuna_core::{membership, balance}` can
//! decide; make more than one membership change at a time in a group; or hold a partition
//! borrow across an `.await`.

pub mod balance;
pub mod join;
pub mod membership;
pub mod replicas;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What a shard knows of the cluster level.
#[derive(Default)]
pub struct ClusterState {
    /// The peer addresses this shard links to (members not removed), by node id.
    pub links: RefCell<BTreeMap<u64, SocketAddr>>,
    /// A balancing round is running on this shard.
    pub balancing: Cell<bool>,
    /// The moves the last round made a step of, with the step (for `cluster status`).
    pub moves: RefCell<Vec<(kahuna_core::balance::Move, String)>>,
    /// Balancing rounds run on this shard (leaders are looked at every tenth).
    pub rounds: Cell<u64>,
    /// Partitions whose leadership moved for load, and when: left alone for a while.
    pub led: RefCell<BTreeMap<u64, std::time::Instant>>,
    /// Partitions whose replica here was retired (their WAL entries are nobody's any more).
    pub retired: RefCell<std::collections::BTreeSet<u64>>,
    /// Replicas the balancer removed, and when: the node does not get one of that partition
    /// back for [`balance::READD_HOLD`] (a replica that missed its own removal must be gone
    /// before a new one starts there).
    pub removed: RefCell<BTreeMap<(u64, u64), std::time::Instant>>,
    /// Learners the balancer saw, and since when (one that never catches up is dropped).
    pub learners_since: RefCell<BTreeMap<(u64, u64), std::time::Instant>>,
}
