//! The partition map: contiguous key ranges `[start, end)` that together cover the key space,
//! each owned by one shard of the node. Pure data and lookups; who holds the map and how it
//! changes (splits, the meta partition) belong to the server.

use crate::keys::prefix_end;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    pub id: u64,
    /// Inclusive start; empty = the beginning of the key space.
    pub start: Vec<u8>,
    /// Exclusive end; empty = the end of the key space.
    pub end: Vec<u8>,
    /// The shard (core) that owns the partition on every node that holds a replica (all nodes
    /// of a cluster run the same number of shards).
    pub shard: usize,
    /// The nodes holding a replica; the first is the initial leader.
    pub replicas: Vec<u64>,
}

impl PartitionInfo {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// Where the leader `me` should hand leadership to keep it spread: the first replica in
    /// placement order that is `ready` (up and caught up), when that one ranks above `me`.
    /// Placement order makes every node first for about the same number of partitions, and
    /// varies who comes second, so a dead node's share spreads over the survivors too.
    pub fn preferred_leader(&self, me: u64, ready: impl Fn(u64) -> bool) -> Option<u64> {
        self.replicas.iter().copied().take_while(|n| *n != me).find(|n| ready(*n))
    }

    /// Where a leader that must step down (its clock is off: it may not time leases) hands
    /// leadership: the first other replica in placement order that is `ready`, wherever it
    /// ranks.
    pub fn step_down_to(&self, me: u64, ready: impl Fn(u64) -> bool) -> Option<u64> {
        self.replicas.iter().copied().find(|n| *n != me && ready(*n))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMap {
    /// Sorted by `start`; the first starts at the empty key, each ends where the next starts.
    parts: Vec<PartitionInfo>,
}

impl PartitionMap {
    /// The initial map of a new cluster: `count` partitions with split points spread over the
    /// printable first bytes (where most keys start), dealt round-robin to `shards` shards, with
    /// `replication` replicas each on consecutive `nodes` so that every node leads (is the first
    /// replica of) about the same number of partitions.
    pub fn initial(count: usize, shards: usize, nodes: &[u64], replication: usize) -> PartitionMap {
        assert!(count >= 1 && shards >= 1, "a map needs a partition and a shard");
        assert!(!nodes.is_empty(), "a map needs a node");
        let rf = replication.clamp(1, nodes.len());
        let (lo, hi) = (0x21u32, 0x7fu32);
        let mut parts = Vec::with_capacity(count);
        for i in 0..count {
            let start = if i == 0 {
                vec![]
            } else {
                vec![(lo + (hi - lo) * i as u32 / count as u32) as u8]
            };
            // The set is `rf` consecutive nodes; after the first, its order (the preference
            // order for leadership) rotates from one partition of a node to the next, so a
            // dead node's partitions fall to different survivors instead of all to its
            // neighbour.
            let mut replicas: Vec<u64> = (0..rf).map(|j| nodes[(i + j) % nodes.len()]).collect();
            if rf > 2 {
                replicas[1..].rotate_left((i / nodes.len()) % (rf - 1));
            }
            parts.push(PartitionInfo {
                id: i as u64 + 1,
                start,
                end: vec![],
                shard: i % shards,
                replicas,
            });
        }
        for i in 0..count.saturating_sub(1) {
            parts[i].end = parts[i + 1].start.clone();
        }
        PartitionMap { parts }
    }

    pub fn partitions(&self) -> &[PartitionInfo] {
        &self.parts
    }

    pub fn get(&self, id: u64) -> Option<&PartitionInfo> {
        self.parts.iter().find(|p| p.id == id)
    }

    /// The partition that owns `key`.
    pub fn locate(&self, key: &[u8]) -> &PartitionInfo {
        let idx = self.parts.partition_point(|p| p.start.as_slice() <= key);
        // The first partition starts at the empty key, so idx >= 1.
        &self.parts[idx - 1]
    }

    /// The partitions, in key order, that may hold keys with `prefix` at or after `from`.
    pub fn covering(&self, prefix: &[u8], from: &[u8]) -> impl Iterator<Item = &PartitionInfo> {
        let start = if from > prefix { from } else { prefix };
        let end = prefix_end(prefix);
        let first = self.parts.partition_point(|p| p.start.as_slice() <= start) - 1;
        self.parts[first..]
            .iter()
            .take_while(move |p| end.as_ref().is_none_or(|e| p.start.as_slice() < e.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_map_covers_everything_without_gaps() {
        let m = PartitionMap::initial(8, 2, &[1], 3);
        let ps = m.partitions();
        assert_eq!(ps.len(), 8);
        assert!(ps[0].start.is_empty() && ps[7].end.is_empty());
        for w in ps.windows(2) {
            assert_eq!(w[0].end, w[1].start);
            assert!(w[0].start < w[1].start);
        }
        assert_eq!(ps.iter().filter(|p| p.shard == 1).count(), 4);
        for key in [&b""[..], b"\x00", b"a", b"orders/1", b"zzz", &[0xff, 0xff]] {
            let p = m.locate(key);
            assert!(p.contains(key), "{key:?} in {p:?}");
        }
    }

    #[test]
    fn replicas_spread_leadership_evenly() {
        let m = PartitionMap::initial(9, 1, &[1, 2, 3, 4], 3);
        for p in m.partitions() {
            assert_eq!(p.replicas.len(), 3);
            let mut r = p.replicas.clone();
            r.dedup();
            assert_eq!(r.len(), 3, "{p:?}");
        }
        let mut lead = [0; 5];
        for p in m.partitions() {
            lead[p.replicas[0] as usize] += 1;
        }
        assert!(lead[1..].iter().all(|n| (2..=3).contains(n)), "{lead:?}");
        let two = PartitionMap::initial(4, 1, &[1, 2], 3);
        assert!(two.partitions().iter().all(|p| p.replicas.len() == 2));
    }

    #[test]
    fn leadership_goes_to_the_first_ready_replica_above_the_leader() {
        let m = PartitionMap::initial(3, 1, &[1, 2, 3], 3);
        let p = &m.partitions()[0];
        assert_eq!(p.replicas, vec![1, 2, 3]);
        let m6 = PartitionMap::initial(6, 1, &[1, 2, 3], 3);
        assert_eq!(m6.partitions()[3].replicas, vec![1, 3, 2], "second place rotates");
        let all = |_: u64| true;
        assert_eq!(p.preferred_leader(1, all), None, "the first replica keeps it");
        assert_eq!(p.preferred_leader(3, all), Some(1));
        assert_eq!(p.preferred_leader(2, all), Some(1));
        // Node 1 is down or behind: node 2 is next; node 3 hands to 2, node 2 keeps it.
        let not_1 = |n: u64| n != 1;
        assert_eq!(p.preferred_leader(3, not_1), Some(2));
        assert_eq!(p.preferred_leader(2, not_1), None);
        assert_eq!(p.preferred_leader(3, |_| false), None);
        // Stepping down goes to whoever ranks first among the others, even below.
        assert_eq!(p.step_down_to(1, all), Some(2));
        assert_eq!(p.step_down_to(1, |n| n == 3), Some(3));
        assert_eq!(p.step_down_to(2, all), Some(1));
        assert_eq!(p.step_down_to(1, |_| false), None);
        // A leader outside the placement (never the case today) hands to any ready replica.
        assert_eq!(p.preferred_leader(9, not_1), Some(2));
        // With one node down, the survivors each end up leading half of its partitions.
        let m = PartitionMap::initial(12, 1, &[1, 2, 3, 4], 3);
        let mut lead = [0; 5];
        for p in m.partitions() {
            let leader = p.replicas.iter().copied().find(|n| *n != 1).unwrap();
            assert_eq!(p.preferred_leader(leader, |n| n != 1), None);
            lead[leader as usize] += 1;
        }
        assert_eq!(lead[1], 0);
        assert!(lead[2..].iter().all(|n| (3..=5).contains(n)), "{lead:?}");
    }

    #[test]
    fn covering_lists_exactly_the_overlapping_partitions() {
        let m = PartitionMap::initial(4, 1, &[1], 3);
        let all: Vec<u64> = m.covering(b"", b"").map(|p| p.id).collect();
        assert_eq!(all, vec![1, 2, 3, 4]);
        let one: Vec<u64> = m.covering(b"orders/", b"").map(|p| p.id).collect();
        assert_eq!(one, vec![m.locate(b"orders/").id]);
        let from_cursor: Vec<u64> = m.covering(b"", b"zz").map(|p| p.id).collect();
        assert_eq!(from_cursor, vec![4]);
        let single = PartitionMap::initial(1, 1, &[1], 3);
        assert_eq!(single.covering(b"x", b"").count(), 1);
    }
}
