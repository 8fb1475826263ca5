//! The partition map: contiguous key ranges `[start, end)` that together cover the key space,
//! each owned by one shard of the node. Pure data, lookups and the rules of change: how a
//! partition splits in two ([`PartitionInfo::split`]) and how a map takes newer descriptors
//! ([`PartitionMap::update`]). Who holds the map and when it changes belong to the server.

use crate::keys::prefix_end;
use crate::records::CorruptRecord;

/// One partition's descriptor. Persisted with the partition's state (so a restart finds the
/// ranges its splits made), and sent between shards and nodes when it changes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionInfo {
    pub id: u64,
    /// Inclusive start; empty = the beginning of the key space.
    pub start: Vec<u8>,
    /// Exclusive end; empty = the end of the key space.
    pub end: Vec<u8>,
    /// The shard (core) that owns the partition on every node that holds a replica (all nodes
    /// of a cluster run the same number of shards).
    pub shard: usize,
    /// The nodes holding a voting replica, in preference order for leadership (the first is
    /// the initial leader). A node's Raft id in the group is its node id: ids are never reused
    /// (a wiped machine comes back under a new id), so a replica id never names two lives.
    pub replicas: Vec<u64>,
    /// Nodes holding a replica that receives the log but does not vote yet: a replica being
    /// added, caught up by snapshot and log before it is promoted (see [`ReplicaChange`]).
    pub learners: Vec<u64>,
    /// Counts the changes of the range (1 at creation, +1 for each split, on both halves): of
    /// two descriptors of one partition, the higher epoch is the newer.
    pub epoch: u64,
}

/// The most partitions a new cluster may start with: split ids are drawn above it, so they
/// never meet an initial id, whatever `--partitions` each node was given.
pub const MAX_INITIAL_PARTITIONS: usize = 65_536;

/// Why a split was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitRefused {
    #[error("partition {id} is at epoch {have}, not {want}: it changed since the split was asked")]
    Stale { id: u64, have: u64, want: u64 },
    #[error("the split key must lie strictly inside partition {id}'s range")]
    Outside { id: u64 },
}

/// One step of moving a replica, applied as one Raft membership change (raft-rs
/// `ConfChangeV2` with a single change: each step alone keeps a quorum of the old voters in
/// every quorum of the new, so no joint state is needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ReplicaChange {
    /// A new replica on `node` that receives the log without voting.
    AddLearner { node: u64 },
    /// The learner on `node` votes from now on; it takes `replaces`'s place in the preference
    /// order (0: the end), so the replica it is about to replace hands it its leaderships.
    Promote { node: u64, replaces: u64 },
    /// The replica (voter or learner) on `node` leaves the group.
    Remove { node: u64 },
}

/// What a membership-change Raft entry carries beside raft-rs's own change (in its context):
/// our change, and the epoch it was decided at. Every replica applies it by the same rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChangeEntry {
    pub epoch: u64,
    pub change: ReplicaChange,
}

impl ChangeEntry {
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("serialising a change").into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<ChangeEntry, CorruptRecord> {
        rkyv::from_bytes::<ChangeEntry, rkyv::rancor::Error>(bytes)
            .map_err(|e| CorruptRecord { what: "replica change", detail: e.to_string() })
    }
}

impl ReplicaChange {
    pub fn node(self) -> u64 {
        match self {
            ReplicaChange::AddLearner { node }
            | ReplicaChange::Promote { node, .. }
            | ReplicaChange::Remove { node } => node,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReplicaChange::AddLearner { .. } => "add-learner",
            ReplicaChange::Promote { .. } => "promote",
            ReplicaChange::Remove { .. } => "remove",
        }
    }
}

/// Why a replica change was refused at apply (nothing changed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefused {
    #[error("partition {id} is at epoch {have}, not {want}: it changed since the move was asked")]
    Stale { id: u64, have: u64, want: u64 },
    #[error("partition {id}: {why}")]
    Invalid { id: u64, why: &'static str },
}

impl PartitionInfo {
    /// The descriptor with voter `node` first in placement order (the others keep theirs), one
    /// epoch up, if it applies at `epoch`.
    pub fn prefer(&self, node: u64, epoch: u64) -> Result<PartitionInfo, ChangeRefused> {
        let id = self.id;
        if epoch != self.epoch {
            return Err(ChangeRefused::Stale { id, have: self.epoch, want: epoch });
        }
        if !self.replicas.contains(&node) {
            return Err(ChangeRefused::Invalid { id, why: "only a voter can lead" });
        }
        let mut replicas = vec![node];
        replicas.extend(self.replicas.iter().copied().filter(|n| *n != node));
        Ok(PartitionInfo { replicas, epoch: self.epoch + 1, ..self.clone() })
    }

    /// Whether `node` holds a replica (voter or learner).
    pub fn holds(&self, node: u64) -> bool {
        self.replicas.contains(&node) || self.learners.contains(&node)
    }

    /// The descriptor after `change`, one epoch up, if it applies at `epoch`. The same rules
    /// raft-rs applies to the group's voters and learners, so the two always agree.
    pub fn change_replicas(
        &self,
        change: ReplicaChange,
        epoch: u64,
    ) -> Result<PartitionInfo, ChangeRefused> {
        let id = self.id;
        if epoch != self.epoch {
            return Err(ChangeRefused::Stale { id, have: self.epoch, want: epoch });
        }
        let invalid = |why| Err(ChangeRefused::Invalid { id, why });
        let mut next = PartitionInfo { epoch: self.epoch + 1, ..self.clone() };
        match change {
            ReplicaChange::AddLearner { node } => {
                if node == 0 || self.holds(node) {
                    return invalid("the node already holds a replica");
                }
                next.learners.push(node);
            }
            ReplicaChange::Promote { node, replaces } => {
                if !self.learners.contains(&node) {
                    return invalid("only a learner can be promoted");
                }
                next.learners.retain(|n| *n != node);
                let at = self.replicas.iter().position(|n| *n == replaces);
                next.replicas.insert(at.unwrap_or(self.replicas.len()), node);
            }
            ReplicaChange::Remove { node } => {
                if self.learners.contains(&node) {
                    next.learners.retain(|n| *n != node);
                } else if self.replicas.contains(&node) {
                    if self.replicas.len() == 1 {
                        return invalid("the last voter cannot leave");
                    }
                    next.replicas.retain(|n| *n != node);
                } else {
                    return invalid("the node holds no replica");
                }
            }
        }
        Ok(next)
    }

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

    /// The two halves of a split at `at`: `[start, at)` keeps the id, `[at, end)` takes `new_id`;
    /// both take the next epoch and keep the replicas and shard. The right half's preference
    /// order rotates by one, so its preferred leader is the next replica: the halves of a hot
    /// partition end up led by different nodes. `epoch` is the epoch the split was decided at:
    /// a partition that changed since refuses it.
    pub fn split(
        &self,
        at: &[u8],
        new_id: u64,
        epoch: u64,
    ) -> Result<(PartitionInfo, PartitionInfo), SplitRefused> {
        if epoch != self.epoch {
            return Err(SplitRefused::Stale { id: self.id, have: self.epoch, want: epoch });
        }
        if at <= self.start.as_slice() || !self.contains(at) {
            return Err(SplitRefused::Outside { id: self.id });
        }
        let left = PartitionInfo { end: at.to_vec(), epoch: self.epoch + 1, ..self.clone() };
        let mut replicas = self.replicas.clone();
        if !replicas.is_empty() {
            replicas.rotate_left(1);
        }
        let right = PartitionInfo {
            id: new_id,
            start: at.to_vec(),
            end: self.end.clone(),
            shard: self.shard,
            replicas,
            learners: self.learners.clone(),
            epoch: self.epoch + 1,
        };
        Ok((left, right))
    }

    /// Whether the two ranges share a key.
    pub fn overlaps(&self, other: &PartitionInfo) -> bool {
        let below_end = |k: &[u8], end: &[u8]| end.is_empty() || k < end;
        below_end(&other.start, &self.end) && below_end(&self.start, &other.end)
    }

    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("serialising a descriptor").into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<PartitionInfo, CorruptRecord> {
        rkyv::from_bytes::<PartitionInfo, rkyv::rancor::Error>(bytes)
            .map_err(|e| CorruptRecord { what: "partition descriptor", detail: e.to_string() })
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
        assert!(count >= 1, "a map needs a partition");
        // Split points spread evenly over the printable bytes (0x21..0x7f, 94 of them): one
        // byte each up to 94 partitions, two up to 94², three beyond.
        let digits = match count {
            0..=94 => 1,
            95..=8836 => 2,
            _ => 3,
        };
        let space = 94u64.pow(digits);
        let mut ranges: Vec<(u64, Vec<u8>, Vec<u8>)> = (0..count)
            .map(|i| {
                let start = if i == 0 {
                    vec![]
                } else {
                    let v = i as u64 * space / count as u64;
                    (0..digits).rev().map(|d| 0x21 + (v / 94u64.pow(d) % 94) as u8).collect()
                };
                (i as u64 + 1, start, vec![])
            })
            .collect();
        for i in 0..count - 1 {
            ranges[i].2 = ranges[i + 1].1.clone();
        }
        PartitionMap::placed(ranges, shards, nodes, replication)
            .expect("the initial ranges cover the key space")
    }

    /// Partitions `(id, start, end)` (sorted by start, covering the key space) placed on
    /// `shards` shards and `nodes`, as [`PartitionMap::initial`] places its own: a restored
    /// backup's partitions (which splits may have made) are placed on the new cluster this way.
    pub fn placed(
        ranges: Vec<(u64, Vec<u8>, Vec<u8>)>,
        shards: usize,
        nodes: &[u64],
        replication: usize,
    ) -> Result<PartitionMap, String> {
        assert!(shards >= 1, "a map needs a shard");
        assert!(!nodes.is_empty(), "a map needs a node");
        let rf = replication.clamp(1, nodes.len());
        let mut parts = Vec::with_capacity(ranges.len());
        for (i, (id, start, end)) in ranges.into_iter().enumerate() {
            // The set is `rf` consecutive nodes; after the first, its order (the preference
            // order for leadership) rotates from one partition of a node to the next, so a
            // dead node's partitions fall to different survivors instead of all to its
            // neighbour.
            let mut replicas: Vec<u64> = (0..rf).map(|j| nodes[(i + j) % nodes.len()]).collect();
            if rf > 2 {
                replicas[1..].rotate_left((i / nodes.len()) % (rf - 1));
            }
            parts.push(PartitionInfo {
                id,
                start,
                end,
                shard: i % shards,
                replicas,
                learners: vec![],
                epoch: 1,
            });
        }
        PartitionMap::from_parts(parts)
    }

    /// A map of these descriptors, if they cover the key space exactly (no gap, no overlap).
    pub fn from_parts(mut parts: Vec<PartitionInfo>) -> Result<PartitionMap, String> {
        parts.sort_by(|a, b| a.start.cmp(&b.start));
        match parts.first() {
            None => return Err("no partitions".into()),
            Some(p) if !p.start.is_empty() => {
                return Err(format!("nothing covers the keys below partition {}'s start", p.id))
            }
            _ => {}
        }
        for w in parts.windows(2) {
            if w[0].end != w[1].start {
                return Err(format!(
                    "partitions {} and {} leave a gap or overlap ({:?} .. {:?})",
                    w[0].id, w[1].id, w[0].end, w[1].start
                ));
            }
        }
        let last = parts.last().expect("not empty");
        if !last.end.is_empty() {
            return Err(format!("nothing covers the keys after partition {}", last.id));
        }
        let mut ids: Vec<u64> = parts.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err("a partition id appears twice".into());
        }
        Ok(PartitionMap { parts })
    }

    /// This map with newer descriptors taken in: each one whose epoch is above what the map
    /// knows of its id (or whose id is new) replaces every descriptor it overlaps. `None` when
    /// nothing is newer, or when the result would not cover the key space (only part of a
    /// change arrived: the map waits for the rest rather than route into a gap).
    pub fn update(&self, newer: &[PartitionInfo]) -> Option<PartitionMap> {
        let mut parts = self.parts.clone();
        let mut changed = false;
        for n in newer {
            let known = parts.iter().find(|p| p.id == n.id).map(|p| p.epoch);
            if known.is_some_and(|e| e >= n.epoch) {
                continue;
            }
            // An older descriptor it overlaps is superseded (a split's other half arrives in
            // the same update); a newer one it overlaps means `n` itself is stale.
            if parts.iter().any(|p| p.id != n.id && p.overlaps(n) && p.epoch > n.epoch) {
                continue;
            }
            parts.retain(|p| p.id != n.id && !p.overlaps(n));
            parts.push(n.clone());
            changed = true;
        }
        if !changed {
            return None;
        }
        PartitionMap::from_parts(parts).ok()
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
    fn many_initial_partitions_get_distinct_multi_byte_split_points() {
        for count in [94, 95, 1000, 8836, 10_000] {
            let m = PartitionMap::initial(count, 2, &[1, 2, 3], 3);
            assert_eq!(m.partitions().len(), count);
            for w in m.partitions().windows(2) {
                assert!(w[0].start < w[1].start, "{count}: {:?} !< {:?}", w[0].start, w[1].start);
            }
        }
        // Up to 94 partitions keep the one-byte points maps always had (data directories made
        // before descriptors were stored rebuild their map from these).
        let m = PartitionMap::initial(8, 1, &[1], 1);
        let starts: Vec<&[u8]> = m.partitions().iter().map(|p| p.start.as_slice()).collect();
        assert_eq!(starts, vec![&b""[..], b",", b"8", b"D", b"P", b"[", b"g", b"s"]);
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
    fn a_split_keeps_the_id_on_the_left_and_refuses_stale_or_outside_keys() {
        let m = PartitionMap::initial(2, 2, &[1, 2, 3], 3);
        let p = m.partitions()[1].clone(); // [b"P", end)
        assert_eq!(p.start, vec![b'P']);
        let (l, r) = p.split(b"x", 7, 1).unwrap();
        assert_eq!(
            (l.id, l.start.clone(), l.end.clone(), l.epoch),
            (p.id, p.start.clone(), b"x".to_vec(), 2)
        );
        assert_eq!((r.id, r.start.clone(), r.end.clone(), r.epoch), (7, b"x".to_vec(), vec![], 2));
        assert_eq!(r.shard, p.shard);
        let mut rotated = p.replicas.clone();
        rotated.rotate_left(1);
        assert_eq!(r.replicas, rotated, "the same replicas, the next one preferred");
        let cases: Vec<(&[u8], u64, Option<SplitRefused>)> = vec![
            (b"x", 1, None),
            (b"x", 2, Some(SplitRefused::Stale { id: p.id, have: 1, want: 2 })),
            (b"P", 1, Some(SplitRefused::Outside { id: p.id })),
            (b"A", 1, Some(SplitRefused::Outside { id: p.id })),
            (b"P\0", 1, None),
        ];
        for (at, epoch, want) in cases {
            assert_eq!(p.split(at, 7, epoch).err(), want, "{at:?} at epoch {epoch}");
        }
        let first = &m.partitions()[0]; // ["", "P")
        assert!(first.split(b"P", 7, 1).is_err(), "the end is not inside");
        assert!(first.split(b"", 7, 1).is_err());
        assert!(first.split(b"\0", 7, 1).is_ok());
        assert_eq!(PartitionInfo::decode(&r.encode()).unwrap(), r);
        assert!(PartitionInfo::decode(b"junk").is_err());
    }

    #[test]
    fn a_map_takes_newer_descriptors_only_when_they_cover_the_key_space() {
        let m = PartitionMap::initial(2, 1, &[1], 1);
        let p2 = m.partitions()[1].clone();
        let (l, r) = p2.split(b"x", 9, 1).unwrap();
        // Half of a split alone would leave a gap: refused.
        assert!(m.update(std::slice::from_ref(&r)).is_none());
        let m2 = m.update(&[l.clone(), r.clone()]).expect("both halves");
        assert_eq!(m2.partitions().len(), 3);
        assert_eq!(m2.locate(b"y").id, 9);
        assert_eq!(m2.locate(b"w").id, p2.id);
        // Nothing newer: no change; an old descriptor does not bring the parent back.
        assert!(m2.update(&[l.clone(), r.clone()]).is_none());
        assert!(m2.update(std::slice::from_ref(&p2)).is_none());
        // A split of the right half, learned in one go with the first split's left half.
        let (rl, rr) = r.split(b"z", 10, 2).unwrap();
        let m3 = m.update(&[l.clone(), rl.clone(), rr.clone()]).expect("covers");
        let ids: Vec<u64> = m3.partitions().iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![1, 2, 9, 10]);
        // from_parts refuses gaps, overlaps and duplicate ids.
        assert!(PartitionMap::from_parts(vec![l.clone(), rr.clone(), m.partitions()[0].clone()])
            .is_err());
        assert!(PartitionMap::from_parts(vec![p2.clone(), r.clone(), m.partitions()[0].clone()])
            .is_err());
        assert!(PartitionMap::from_parts(vec![]).is_err());
        let dup = PartitionInfo { id: 1, ..l.clone() };
        assert!(PartitionMap::from_parts(vec![m.partitions()[0].clone(), dup, r.clone()]).is_err());
        assert!(PartitionMap::from_parts(m3.partitions().to_vec()).is_ok());
    }

    #[test]
    fn replica_changes_follow_raft_rules_and_keep_the_preference_order() {
        let p = PartitionMap::initial(1, 1, &[1, 2, 3], 3).partitions()[0].clone();
        assert_eq!(p.replicas, vec![1, 2, 3]);
        use ReplicaChange::*;
        // (change, epoch asked, expected replicas and learners or the refusal)
        let add = p.change_replicas(AddLearner { node: 4 }, 1).unwrap();
        assert_eq!(
            (add.replicas.clone(), add.learners.clone(), add.epoch),
            (vec![1, 2, 3], vec![4], 2)
        );
        let promoted = add.change_replicas(Promote { node: 4, replaces: 1 }, 2).unwrap();
        assert_eq!(
            (promoted.replicas.clone(), promoted.learners.clone()),
            (vec![4, 1, 2, 3], vec![])
        );
        let removed = promoted.change_replicas(Remove { node: 1 }, 3).unwrap();
        assert_eq!(removed.replicas, vec![4, 2, 3]);
        assert!(removed.holds(4) && !removed.holds(1));
        let at_end = add.change_replicas(Promote { node: 4, replaces: 9 }, 2).unwrap();
        assert_eq!(at_end.replicas, vec![1, 2, 3, 4]);
        let learner_gone = add.change_replicas(Remove { node: 4 }, 2).unwrap();
        assert_eq!(
            (learner_gone.replicas.clone(), learner_gone.learners.len()),
            (vec![1, 2, 3], 0)
        );
        let refused: Vec<(PartitionInfo, ReplicaChange, u64)> = vec![
            (p.clone(), AddLearner { node: 4 }, 2),   // stale epoch
            (p.clone(), AddLearner { node: 2 }, 1),   // already a voter
            (add.clone(), AddLearner { node: 4 }, 2), // already a learner
            (p.clone(), Promote { node: 4, replaces: 1 }, 1), // not a learner
            (p.clone(), Remove { node: 9 }, 1),       // holds nothing
            (PartitionInfo { replicas: vec![1], ..p.clone() }, Remove { node: 1 }, 1), // the last voter
        ];
        for (info, change, epoch) in refused {
            assert!(info.change_replicas(change, epoch).is_err(), "{change:?} at {epoch}");
        }
        let led = p.prefer(3, 1).unwrap();
        assert_eq!((led.replicas.clone(), led.epoch), (vec![3, 1, 2], 2));
        assert!(p.prefer(4, 1).is_err() && p.prefer(3, 2).is_err());
        // A split keeps the learners on both halves.
        let (l, r) = add.split(b"m", 70_000, 2).unwrap();
        assert_eq!((l.learners.clone(), r.learners.clone()), (vec![4], vec![4]));
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
