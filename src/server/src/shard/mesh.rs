//! Cross-core forwarding over glommio's channel mesh: a request for a partition that another
//! shard owns goes there as an owned message, and its answer comes back the same way.
//!
//! Must never: share state with another shard; every channel is bounded, and a forwarded
//! request keeps its caller's deadline.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use kahuna_protocol::{ErrorCode, Op, WireError};

use super::{with_deadline, Answer, Shard};

/// Messages between the shards of one node.
pub enum ShardMsg {
    Request {
        token: u64,
        partition: u64,
        op: Op,
        timeout_ms: u64,
    },
    Response {
        token: u64,
        answer: Answer,
    },
    /// Descriptors another shard changed or learned (see `Shard::learn_map`).
    Map(Vec<kahuna_core::PartitionInfo>),
    /// The members' peer addresses, as shard 0 read them from the records.
    Members(std::collections::BTreeMap<u64, std::net::SocketAddr>),
}

/// Mesh capacity per pair of shards.
pub const MESH_CHANNEL_SIZE: usize = 4096;
/// Requests a shard waits on at other shards; more get OVERLOADED (never sent).
const MAX_PENDING: usize = 65_536;

/// Built once per node, before the shards start, and handed to every shard.
#[derive(Clone)]
pub struct MeshPlan {
    builder: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    /// `peer_of_shard[shard]` = that shard's index in the mesh (join order is not shard order).
    peer_of_shard: Arc<Vec<AtomicUsize>>,
    joined: Arc<AtomicUsize>,
    shards: usize,
}

impl MeshPlan {
    pub fn new(shards: usize) -> MeshPlan {
        MeshPlan {
            builder: MeshBuilder::full(shards, MESH_CHANNEL_SIZE),
            peer_of_shard: Arc::new((0..shards).map(|_| AtomicUsize::new(usize::MAX)).collect()),
            joined: Arc::new(AtomicUsize::new(0)),
            shards,
        }
    }

    /// Joins the mesh as `shard`; returns once every shard has joined and published its index.
    pub async fn join(
        self,
        shard: usize,
    ) -> Result<(MeshLink, Receivers<ShardMsg>, Vec<usize>), String> {
        let (senders, receivers) =
            self.builder.join().await.map_err(|e| format!("joining the shard mesh: {e:?}"))?;
        self.peer_of_shard[shard].store(senders.peer_id(), Ordering::SeqCst);
        self.joined.fetch_add(1, Ordering::SeqCst);
        while self.joined.load(Ordering::SeqCst) < self.shards {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        let peers: Vec<usize> =
            self.peer_of_shard.iter().map(|p| p.load(Ordering::SeqCst)).collect();
        let mut shard_of_peer = vec![0; self.shards];
        for (s, p) in peers.iter().enumerate() {
            shard_of_peer[*p] = s;
        }
        Ok((
            MeshLink {
                senders: Some(senders),
                peers,
                pending: Default::default(),
                next_token: Cell::new(1),
            },
            receivers,
            shard_of_peer,
        ))
    }
}

/// This shard's end of the mesh.
pub struct MeshLink {
    senders: Option<Senders<ShardMsg>>,
    peers: Vec<usize>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    next_token: Cell<u64>,
}

fn unavailable(msg: &str) -> Answer {
    (Err(WireError::new(ErrorCode::Unavailable, msg)), 0)
}

impl MeshLink {
    /// Sends to shard `shard`; fails only when that shard's executor is gone.
    async fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), ()> {
        match &self.senders {
            Some(s) => s.send_to(self.peers[shard], msg).await.map_err(drop),
            None => Err(()),
        }
    }

    /// Sends a message that needs no answer; lost only if that shard is gone.
    pub async fn tell(&self, shard: usize, msg: ShardMsg) {
        let _ = self.send(shard, msg).await;
    }

    /// Runs `op` on `partition`, owned by shard `to`, within `deadline`.
    pub async fn forward(&self, to: usize, partition: u64, op: Op, deadline: Instant) -> Answer {
        if self.pending.borrow().len() >= MAX_PENDING {
            let e =
                WireError::new(ErrorCode::Overloaded, "too many requests waiting on other shards");
            return (Err(e), 0);
        }
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(token, tx);
        let timeout_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
        let is_read = op.is_read();
        let msg = ShardMsg::Request { token, partition, op, timeout_ms };
        match with_deadline(deadline, self.send(to, msg)).await {
            Some(Ok(())) => {}
            Some(Err(_)) => {
                self.pending.borrow_mut().remove(&token);
                return unavailable("the owning shard is not reachable");
            }
            None => {
                self.pending.borrow_mut().remove(&token);
                return (
                    Err(WireError::new(
                        ErrorCode::Timeout,
                        "deadline passed before the request reached its shard",
                    )),
                    0,
                );
            }
        }
        match with_deadline(deadline, rx).await {
            Some(Ok(answer)) => answer,
            // The request reached the shard and may have run: a write's outcome is unknown.
            Some(Err(_)) if !is_read => (
                Err(WireError::new(
                    ErrorCode::Timeout,
                    "the owning shard dropped the request; a write's outcome is unknown",
                )),
                0,
            ),
            Some(Err(_)) => unavailable("the owning shard dropped the request"),
            None => {
                self.pending.borrow_mut().remove(&token);
                (
                    Err(WireError::new(
                        ErrorCode::Timeout,
                        "deadline passed; a write's outcome is unknown",
                    )),
                    0,
                )
            }
        }
    }
}

/// Serves the mesh: requests from other shards run here, answers go back to their waiters.
pub fn spawn_receivers(
    shard: Rc<Shard>,
    mut receivers: Receivers<ShardMsg>,
    shard_of_peer: Vec<usize>,
) {
    for (peer, stream) in receivers.streams() {
        let from = shard_of_peer[peer];
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = stream.recv().await {
                match msg {
                    ShardMsg::Request { token, partition, op, timeout_ms } => {
                        let shard = shard.clone();
                        glommio::spawn_local(async move {
                            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                            let answer = shard.execute_local(partition, op, deadline).await;
                            let _ =
                                shard.mesh.send(from, ShardMsg::Response { token, answer }).await;
                        })
                        .detach();
                    }
                    ShardMsg::Response { token, answer } => {
                        if let Some(tx) = shard.mesh.pending.borrow_mut().remove(&token) {
                            let _ = tx.send(answer);
                        }
                    }
                    ShardMsg::Map(infos) => {
                        shard.learn_map(&infos);
                    }
                    ShardMsg::Members(links) => {
                        crate::cluster::membership::set_links(&shard, &links);
                    }
                }
            }
        })
        .detach();
    }
}
