//! `cluster status`: what every replica of every partition says of itself, gathered by the node
//! a client asked, shard by shard (over the mesh) and node by node (over the peer links).
//!
//! ```text
//!  client ─▶ node A, Cluster scope ──peer──▶ node B, Node scope ──mesh──▶ B's shard k, Shard scope
//! ```
//! A node that does not answer within [`NODE_WAIT`] is reported down, with why; the answer is
//! never held up by a dead node for longer than that.
//! Must never: read a partition's whole range on the shard loop. Checksums are computed on a
//! blocking thread from a RocksDB snapshot, which also fixes the index they describe.

use std::rc::Rc;
use std::time::{Duration, Instant};

use kahuna_protocol::{
    ClusterStatus, NodeStatus, Op, PartitionStatus, ReplicaRole, ReplicaStatus, Reply, StatusScope,
};
use raft::StateRole;

use super::route::MAX_HOPS;
use super::{Answer, Shard};

/// How long the gathering node waits for each other node's part.
const NODE_WAIT: Duration = Duration::from_millis(1000);

fn role(r: StateRole) -> ReplicaRole {
    match r {
        StateRole::Leader => ReplicaRole::Leader,
        StateRole::Candidate => ReplicaRole::Candidate,
        StateRole::PreCandidate => ReplicaRole::PreCandidate,
        StateRole::Follower => ReplicaRole::Follower,
    }
}

impl Shard {
    /// Serves a status request of any scope.
    pub(crate) async fn status(
        self: &Rc<Self>,
        scope: StatusScope,
        checksums: bool,
        deadline: Instant,
    ) -> Answer {
        let st = match scope {
            StatusScope::Shard => self.shard_status(checksums).await,
            StatusScope::Node => self.node_status(checksums, deadline).await,
            StatusScope::Cluster => self.cluster_status(checksums, deadline).await,
        };
        (Ok(Reply::ClusterStatus(st)), self.node_id)
    }

    /// This shard's replicas.
    async fn shard_status(&self, checksums: bool) -> ClusterStatus {
        let mut partitions = Vec::new();
        let mut ranges = Vec::new();
        for (pid, p) in self.parts.borrow().iter() {
            let raft = &p.node.raft;
            partitions.push(PartitionStatus {
                id: *pid,
                start: p.info.start.clone(),
                end: p.info.end.clone(),
                replicas: p.info.replicas.clone(),
                epoch: p.info.epoch,
                status: vec![ReplicaStatus {
                    node: self.node_id,
                    shard: self.id as u32,
                    role: if p.info.learners.contains(&self.node_id) {
                        ReplicaRole::Learner
                    } else {
                        role(raft.state)
                    },
                    term: raft.term,
                    leader: raft.leader_id,
                    commit: raft.raft_log.committed,
                    applied: p.applied.applied_index,
                    last_index: raft.raft_log.last_index(),
                    ephemeral_bytes: p.ephemeral.bytes() as u64,
                    checksum: 0,
                    checksum_index: 0,
                    qps: if p.is_leader() { self.splits.qps(*pid) } else { 0 },
                    bytes: if p.is_leader() { self.splits.size(*pid) } else { 0 },
                }],
            });
            ranges.push((*pid, p.info.start.clone(), p.info.end.clone()));
        }
        if checksums {
            let db = self.db.clone();
            let sums = glommio::executor()
                .spawn_blocking(move || {
                    ranges
                        .into_iter()
                        .map(|(pid, start, end)| (pid, db.range_checksum(pid, &start, &end)))
                        .collect::<Vec<_>>()
                })
                .await;
            for (pid, sum) in sums {
                let Some(p) = partitions.iter_mut().find(|p| p.id == pid) else { continue };
                match sum {
                    Ok((index, checksum)) => {
                        p.status[0].checksum = checksum;
                        p.status[0].checksum_index = index;
                    }
                    Err(e) => tracing::warn!("partition {pid}: checksum failed: {e}"),
                }
            }
        }
        // The node's entry is filled in by the node scope; this one only carries the counter.
        let counters = NodeStatus {
            id: self.node_id,
            forwarded: self.forwarded_count.get(),
            ..Default::default()
        };
        ClusterStatus { answered_by: self.node_id, nodes: vec![counters], partitions }
    }

    fn this_node(&self, forwarded: u64) -> NodeStatus {
        let peer_address = match self.cfg.peer_addr() {
            Ok(a) => a.to_string(),
            Err(_) => String::new(),
        };
        let clock = self.clock_verdict();
        NodeStatus {
            id: self.node_id,
            up: true,
            client_address: self.cfg.listen.to_string(),
            peer_address,
            shards: self.cfg.shards as u32,
            error: String::new(),
            forwarded,
            clock_offset_ms: clock.median_offset_ms,
            clock_ok: clock.ok,
        }
    }

    /// Every replica of this node: this shard's, and the other shards' over the mesh.
    async fn node_status(self: &Rc<Self>, checksums: bool, deadline: Instant) -> ClusterStatus {
        let mut st = self.shard_status(checksums).await;
        let mut forwarded: u64 = st.nodes.drain(..).map(|n| n.forwarded).sum();
        for s in (0..self.cfg.shards).filter(|s| *s != self.id) {
            let op = Op::ClusterStatus { scope: StatusScope::Shard, checksums };
            match self.mesh.forward(s, 0, op, deadline).await {
                (Ok(Reply::ClusterStatus(mut part)), _) => {
                    forwarded += part.nodes.drain(..).map(|n| n.forwarded).sum::<u64>();
                    st.merge(part);
                }
                (other, _) => tracing::warn!("shard {s} gave no status: {:?}", other.err()),
            }
        }
        st.nodes.push(self.this_node(forwarded));
        st
    }

    /// Every node's replicas; nodes that do not answer in time are marked down.
    async fn cluster_status(self: &Rc<Self>, checksums: bool, deadline: Instant) -> ClusterStatus {
        let members = self.cluster.links.borrow().clone();
        let others: Vec<u64> = members.keys().copied().filter(|id| *id != self.node_id).collect();
        // Ask every other node at once: a dead one costs NODE_WAIT, not NODE_WAIT per node.
        let wait = if checksums { deadline } else { deadline.min(Instant::now() + NODE_WAIT) };
        let asks: Vec<_> = others
            .iter()
            .map(|&id| {
                let me = self.clone();
                glommio::spawn_local(async move {
                    let op = Op::ClusterStatus { scope: StatusScope::Node, checksums };
                    me.forward(id, 0, op, wait, MAX_HOPS).await
                })
            })
            .collect();
        let mut st = self.node_status(checksums, deadline).await;
        for (id, ask) in others.into_iter().zip(asks) {
            match ask.await {
                (Ok(Reply::ClusterStatus(part)), _) => st.merge(part),
                (result, _) => {
                    let error = match result {
                        Err(e) => e.to_string(),
                        Ok(r) => format!("unexpected answer {r:?}"),
                    };
                    st.nodes.push(NodeStatus {
                        id,
                        up: false,
                        peer_address: members.get(&id).map(|a| a.to_string()).unwrap_or_default(),
                        error,
                        ..Default::default()
                    });
                }
            }
        }
        // Partitions none of the answering nodes hold still appear, with their placement.
        let known: Vec<PartitionStatus> = self
            .map()
            .partitions()
            .iter()
            .map(|p| PartitionStatus {
                id: p.id,
                start: p.start.clone(),
                end: p.end.clone(),
                replicas: p.replicas.clone(),
                status: vec![],
                epoch: p.epoch,
            })
            .collect();
        st.merge(ClusterStatus { answered_by: self.node_id, nodes: vec![], partitions: known });
        st.answered_by = self.node_id;
        st
    }
}
