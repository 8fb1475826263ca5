//! The client's routing cache: which partition a key belongs to, which node leads it, and where
//! that node takes clients, so that most requests go straight to the leader instead of taking a
//! forwarding hop through whichever node they reached.
//!
//! Filled from a `cluster status` answer and kept fresh by the leader hint every answer carries
//! (the node that served the request). A stale entry costs one forwarding hop, never a wrong
//! answer: any node serves any request. Pure data: no I/O here.

use std::collections::HashMap;
use std::net::SocketAddr;

use kahuna_protocol::ClusterStatus;

#[derive(Default)]
pub(crate) struct Routes {
    /// `(start, end, partition)`, sorted by start; an empty end is the end of the key space.
    ranges: Vec<(Vec<u8>, Vec<u8>, u64)>,
    leaders: HashMap<u64, u64>,
    addrs: HashMap<u64, String>,
    /// Every node a status listed up, reachable or not: a hint naming one is no news (one listed
    /// down that leads again has come back, and the reload learns its address).
    known: std::collections::HashSet<u64>,
}

impl Routes {
    /// Takes the partition ranges, leaders and client addresses a status answer reports. Nodes
    /// that listen on an unspecified address (0.0.0.0) cannot be reached by it: they are left
    /// out, and their partitions reached by forwarding.
    pub(crate) fn load(&mut self, st: &ClusterStatus) {
        self.ranges =
            st.partitions.iter().map(|p| (p.start.clone(), p.end.clone(), p.id)).collect();
        self.ranges.sort();
        for n in &st.nodes {
            if n.up {
                self.known.insert(n.id);
            }
            match n.client_address.parse::<SocketAddr>() {
                Ok(a) if n.up && !a.ip().is_unspecified() => {
                    self.addrs.insert(n.id, n.client_address.clone());
                }
                _ => {}
            }
        }
        for p in &st.partitions {
            match p.leader() {
                Some(l) => self.leaders.insert(p.id, l.node),
                None => self.leaders.remove(&p.id),
            };
        }
    }

    pub(crate) fn is_loaded(&self) -> bool {
        !self.ranges.is_empty()
    }

    pub(crate) fn partition_of(&self, key: &[u8]) -> Option<u64> {
        let idx = self.ranges.partition_point(|(start, _, _)| start.as_slice() <= key);
        let (_, end, id) = self.ranges.get(idx.checked_sub(1)?)?;
        (end.is_empty() || key < end.as_slice()).then_some(*id)
    }

    /// The client address of the partition's leader, when both are known.
    pub(crate) fn leader_addr(&self, partition: u64) -> Option<&str> {
        self.addrs.get(self.leaders.get(&partition)?).map(String::as_str)
    }

    /// An answer said node `hint` leads `partition` (0 = unknown: forget the entry). Returns
    /// true when the table is worth reloading: no status has listed that node yet, or the hint
    /// names another leader than the table did (a leader moved, or the partition split and the
    /// key now belongs to a new partition this table does not know). The caller reloads at most
    /// once a second.
    pub(crate) fn learn(&mut self, partition: u64, hint: u64) -> bool {
        if hint == 0 {
            self.leaders.remove(&partition);
            return false;
        }
        let before = self.leaders.insert(partition, hint);
        before.is_some_and(|b| b != hint) || !self.known.contains(&hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kahuna_protocol::{NodeStatus, PartitionStatus, ReplicaRole, ReplicaStatus};

    fn replica(node: u64, role: ReplicaRole, term: u64) -> ReplicaStatus {
        ReplicaStatus { node, role, term, ..Default::default() }
    }

    fn status() -> ClusterStatus {
        let node = |id: u64, addr: &str, up: bool| NodeStatus {
            id,
            up,
            client_address: addr.into(),
            ..Default::default()
        };
        ClusterStatus {
            answered_by: 1,
            nodes: vec![
                node(1, "127.0.0.1:7000", true),
                node(2, "0.0.0.0:7001", true),
                node(3, "", false),
            ],
            partitions: vec![
                PartitionStatus {
                    id: 2,
                    start: b"m".to_vec(),
                    end: vec![],
                    status: vec![
                        replica(1, ReplicaRole::Follower, 3),
                        // A deposed leader that has not heard of term 4 yet loses to the newer.
                        replica(2, ReplicaRole::Leader, 3),
                        replica(1, ReplicaRole::Leader, 4),
                    ],
                    ..Default::default()
                },
                PartitionStatus {
                    id: 1,
                    start: vec![],
                    end: b"m".to_vec(),
                    status: vec![replica(2, ReplicaRole::Leader, 1)],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn keys_route_to_the_newest_leader_that_clients_can_reach() {
        let mut r = Routes::default();
        assert!(!r.is_loaded());
        assert_eq!(r.partition_of(b"a"), None);
        r.load(&status());
        assert!(r.is_loaded());
        assert_eq!(r.partition_of(b""), Some(1));
        assert_eq!(r.partition_of(b"lzz"), Some(1));
        assert_eq!(r.partition_of(b"m"), Some(2));
        assert_eq!(r.partition_of(&[0xff]), Some(2));
        assert_eq!(r.leader_addr(2), Some("127.0.0.1:7000"));
        // Node 2 listens on 0.0.0.0: its partition goes through forwarding.
        assert_eq!(r.leader_addr(1), None);
    }

    #[test]
    fn hints_move_leaders_and_ask_for_a_reload_for_news() {
        let mut r = Routes::default();
        r.load(&status());
        assert!(!r.learn(2, 1), "what the table says: no reload");
        assert_eq!(r.leader_addr(2), Some("127.0.0.1:7000"));
        assert!(!r.learn(2, 1));
        assert!(r.learn(2, 2), "another leader than the table's (a move, or a split): reload");
        assert_eq!(r.leader_addr(2), None);
        assert!(r.learn(2, 3), "node 3 was listed down: it is back");
        assert!(r.learn(2, 4), "node 4 was never listed");
        assert_eq!(r.leader_addr(2), None);
        assert!(!r.learn(2, 0));
        assert_eq!(r.leader_addr(2), None);
        assert!(!r.learn(2, 1));
        assert_eq!(r.leader_addr(2), Some("127.0.0.1:7000"));
    }
}
