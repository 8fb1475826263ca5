//! Peer traffic between nodes: Raft messages and forwarded client requests, on a listener of
//! its own. Shard N of a node talks to shard N of every other node (a partition lives on the
//! same shard index on every replica), so a message never takes a cross-core hop.
//!
//! The frames are `kahuna_core::peer_frame`'s.
//!
//! Must never: buffer without bound toward a dead peer. Each destination has a bounded queue;
//! when it is full or the peer is unreachable, Raft messages are dropped (Raft retransmits) and
//! forwarded requests fail with `UNAVAILABLE` at their caller's deadline.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};

use crate::clock::Clock;
use crate::shard::{Answer, Shard};
use futures_channel::oneshot;
use kahuna_core::peer_frame::{self, PeerFrame};
use kahuna_protocol::{ErrorCode, WireError};

/// Messages queued toward one peer before new ones are dropped.
const PEER_QUEUE: usize = 8192;

/// This shard's outgoing links, one bounded queue and sender task per remote node.
pub struct PeerLinks {
    me: u64,
    shard: usize,
    /// Per node: its queue, whether its link is up, and its peer address (shard 0).
    queues: RefCell<BTreeMap<u64, Queue>>,
    waiters: ForwardWaiters,
}

struct Queue {
    tx: LocalSender<PeerFrame>,
    connected: Rc<Cell<bool>>,
    base: SocketAddr,
    /// Tells the sender task to stop (the node left, or moved to another address).
    closed: Rc<Cell<bool>>,
}

/// Callers waiting for the answer to a request forwarded to a peer, by token. A request the
/// link drops before sending is answered `UNAVAILABLE` at once (safe to retry: never sent).
pub type ForwardWaiters = Rc<RefCell<HashMap<u64, Waiter>>>;

/// A caller waiting for a forwarded request's answer, and the node that must give it: an
/// answer with this token from any other node is not this request's.
pub struct Waiter {
    pub node: u64,
    /// A read: safe to send again, so a lost link answers it UNAVAILABLE (a write: TIMEOUT).
    pub read: bool,
    pub tx: oneshot::Sender<Answer>,
}

fn never_sent(waiters: &ForwardWaiters, m: &PeerFrame) {
    if let PeerFrame::Request { token, .. } = m {
        if let Some(Waiter { tx, .. }) = waiters.borrow_mut().remove(token) {
            let _ = tx.send((
                Err(WireError::new(ErrorCode::Unavailable, "the leader's node is not reachable")),
                0,
            ));
        }
    }
}

/// The address shard `shard` of a node whose shard 0 peer address is `base` listens on.
pub fn shard_addr(base: SocketAddr, shard: usize) -> SocketAddr {
    let mut a = base;
    a.set_port(base.port().wrapping_add(shard as u16));
    a
}

impl PeerLinks {
    pub fn start(me: u64, shard: usize, members: &BTreeMap<u64, SocketAddr>) -> PeerLinks {
        let links =
            PeerLinks { me, shard, queues: RefCell::default(), waiters: ForwardWaiters::default() };
        links.set_members(members);
        links
    }

    /// Links to exactly these nodes (besides this one) at these peer addresses: new members
    /// get a link, a member at a new address a new one, and departed members lose theirs.
    pub fn set_members(&self, members: &BTreeMap<u64, SocketAddr>) {
        let mut queues = self.queues.borrow_mut();
        queues.retain(|id, q| {
            let keep = members.get(id) == Some(&q.base);
            if !keep {
                // Dropping the queue's sender ends its task once it is idle.
                q.closed.set(true);
            }
            keep
        });
        for (&id, &base) in members {
            if id == self.me || queues.contains_key(&id) {
                continue;
            }
            let (tx, rx) = local_channel::new_bounded(PEER_QUEUE);
            let connected = Rc::new(Cell::new(false));
            let closed = Rc::new(Cell::new(false));
            let link = Link {
                me: self.me,
                addr: shard_addr(base, self.shard),
                connected: connected.clone(),
                waiters: self.waiters.clone(),
                closed: closed.clone(),
            };
            glommio::spawn_local(sender_loop(link, rx)).detach();
            queues.insert(id, Queue { tx, connected, base, closed });
        }
    }

    pub fn waiters(&self) -> &ForwardWaiters {
        &self.waiters
    }

    /// The other nodes this shard links to.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.queues.borrow().keys().copied().collect()
    }

    /// How many other nodes this shard links to.
    pub fn count(&self) -> usize {
        self.queues.borrow().len()
    }

    /// Queues `m` for node `to`; false when it was dropped (unknown node or full queue). A
    /// forwarded request is refused at once while the peer is unreachable, so its caller can
    /// retry elsewhere knowing it was never sent.
    pub fn send(&self, to: u64, m: PeerFrame) -> bool {
        let queues = self.queues.borrow();
        match queues.get(&to) {
            Some(q) if !q.connected.get() && matches!(m, PeerFrame::Request { .. }) => false,
            Some(q) => q.tx.try_send(m).is_ok(),
            None => false,
        }
    }
}

struct Link {
    me: u64,
    addr: SocketAddr,
    connected: Rc<Cell<bool>>,
    waiters: ForwardWaiters,
    closed: Rc<Cell<bool>>,
}

async fn drain(link: &Link, rx: &LocalReceiver<PeerFrame>) {
    while let Some(Some(m)) = futures_lite::future::poll_once(rx.recv()).await {
        never_sent(&link.waiters, &m);
    }
}

/// True when the peer has closed or reset the connection (a peek that does not block).
fn peer_closed(fd: i32) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a non-blocking peek into a one-byte buffer we own.
    let n =
        unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
}

/// The connection that carried forwarded requests is gone: their answers will never come back
/// on it. A read is answered UNAVAILABLE (retry it); a write TIMEOUT, since the peer may have
/// carried it out before it went away.
fn lost_in_flight(link: &Link, sent: &mut Vec<u64>) {
    let mut waiters = link.waiters.borrow_mut();
    for token in sent.drain(..) {
        let Some(Waiter { tx, read, .. }) = waiters.remove(&token) else { continue };
        let err = if read {
            WireError::new(
                ErrorCode::Unavailable,
                format!("lost {} before the answer; retry", link.addr),
            )
        } else {
            WireError::new(
                ErrorCode::Timeout,
                format!("lost {} after the write was sent; its outcome is unknown", link.addr),
            )
        };
        let _ = tx.send((Err(err), 0));
    }
}

/// Forwarded requests sent on a connection and perhaps not answered yet; pruned of answered
/// ones when it grows, so it stays bounded by the requests actually waiting.
const SENT_PRUNE_AT: usize = 4096;

async fn sender_loop(link: Link, rx: LocalReceiver<PeerFrame>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        if link.closed.get() {
            return;
        }
        let connected = TcpStream::connect(link.addr).await.and_then(|s| {
            // Connecting to a closed port in the ephemeral range can pick that very port as the
            // source and connect to itself (TCP simultaneous open): that is not the peer.
            if s.local_addr().ok() == s.peer_addr().ok() {
                Err(glommio::GlommioError::IoError(std::io::Error::other("connected to itself")))
            } else {
                Ok(s)
            }
        });
        let mut stream = match connected {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("connecting to peer {}: {e}", link.addr);
                // Nobody to send to: what is queued is stale by the time the peer returns.
                link.connected.set(false);
                drain(&link, &rx).await;
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        link.connected.set(true);
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let mut out = Vec::with_capacity(64 << 10);
        let mut batch = Vec::new();
        let mut sent: Vec<u64> = Vec::new();
        let mut prune_at = SENT_PRUNE_AT;
        loop {
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            while batch.len() < 4096 {
                match futures_lite::future::poll_once(rx.recv()).await {
                    Some(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            // The peer never writes on this connection, so a readable EOF means it is gone: the
            // kernel would still accept our write and lose it, so check first.
            if peer_closed(fd) {
                tracing::info!(
                    "peer link to {} closed; {} queued messages dropped",
                    link.addr,
                    batch.len()
                );
                link.connected.set(false);
                for m in &batch {
                    never_sent(&link.waiters, m);
                }
                batch.clear();
                lost_in_flight(&link, &mut sent);
                break;
            }
            if sent.len() >= prune_at {
                let waiters = link.waiters.borrow();
                sent.retain(|t| waiters.contains_key(t));
                // Amortised: many requests still waiting must not make every batch rescan them.
                prune_at = SENT_PRUNE_AT.max(sent.len() * 2);
            }
            for m in batch.drain(..) {
                if let PeerFrame::Request { token, .. } = &m {
                    sent.push(*token);
                }
                peer_frame::encode(link.me, &m, &mut out);
            }
            if let Err(e) = stream.write_all(&out).await {
                tracing::info!("peer link to {} failed: {e}", link.addr);
                link.connected.set(false);
                lost_in_flight(&link, &mut sent);
                break;
            }
            out.clear();
        }
    }
}

/// Accepts peer connections for this shard and dispatches what arrives.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let shard = shard.clone();
                let remote = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let span = tracing::info_span!("peer", shard = shard.id, remote);
                glommio::spawn_local(tracing::Instrument::instrument(
                    async move { receive(&shard, stream).await },
                    span,
                ))
                .detach();
            }
            Err(e) => {
                tracing::warn!("shard {}: peer accept failed: {e}", shard.id);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn receive(shard: &Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        loop {
            let len = match peer_frame::frame_len(&buf[start..]) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("shard {}: {e}; closing the peer connection", shard.id);
                    return;
                }
            };
            match peer_frame::decode(&buf[start + 4..start + 4 + len]) {
                Ok((from, f)) => dispatch(shard, from, f),
                Err(e) => {
                    tracing::warn!("shard {}: {e}; closing the peer connection", shard.id);
                    return;
                }
            }
            start += 4 + len;
        }
        buf.drain(..start);
        glommio::yield_if_needed().await;
    }
}

/// Handles one well-formed frame from node `from`.
fn dispatch(shard: &Rc<Shard>, from: u64, f: PeerFrame) {
    // Any frame shows the node is up (quiesced followers watch their leader's node this way).
    shard.note_heard(from);
    match f {
        PeerFrame::Raft { partition, msg } => shard.step_raft(partition, *msg),
        PeerFrame::Request { token, partition, hops, request } => {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                shard.serve_forwarded(from, token, partition, hops, request).await
            })
            .detach();
        }
        PeerFrame::Response { token, response } => {
            shard.on_forwarded_response(from, token, &response)
        }
        PeerFrame::ClockPing { sent_ms } => {
            if let Some(peers) = &shard.peers {
                let remote_ms = shard.clock.now_ms();
                peers.send(from, PeerFrame::ClockPong { sent_ms, remote_ms });
            }
        }
        PeerFrame::ClockPong { sent_ms, remote_ms } => {
            shard.on_clock_pong(from, sent_ms, remote_ms)
        }
        PeerFrame::SnapChunk(chunk) => crate::raft::snapshot::on_chunk(shard, from, chunk),
        PeerFrame::SnapAck { partition, transfer, upto } => {
            crate::raft::snapshot::on_ack(shard, from, partition, transfer, upto)
        }
        PeerFrame::Quiesce { partition, term, index } => {
            crate::shard::quiesce::on_quiesce(shard, from, partition, term, index)
        }
        PeerFrame::Wake { partition } => crate::shard::quiesce::on_wake(shard, partition),
        PeerFrame::Map(infos) => {
            // Newer descriptors from another node: this shard takes them, and passes them to
            // this node's other shards (not back to the peers: each node tells its own).
            if shard.learn_map(&infos) {
                crate::shard::driver::tell_map(shard, infos, false);
            }
        }
    }
}
