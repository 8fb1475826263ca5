//! Routing: where a request runs. A request reaches the shard that accepted its connection;
//! the shard finds the partition that owns its key in its map, hands it to the shard that holds
//! that partition (mesh), and that shard runs it if it leads the partition or forwards it to the
//! node that does (peer link), at most [`MAX_HOPS`] times. A partition that split since the
//! request was routed sends it on to the key's new partition; a scan walks partitions in key
//! order from where each one's answer says it ended. Requests other nodes forward here run
//! through the same path, by this node's map.
//!
//! ```text
//!  execute ─▶ execute_on ─▶ (mesh) ─▶ execute_local ─▶ execute_hops ─┬─▶ run here (shard/mod.rs)
//!                                                                    └─▶ forward ─▶ peer link
//!  peer link ─▶ serve_forwarded ─▶ run_forwarded ─▶ execute_hops …   answer_forwarded ─▶ back
//! ```
//! Must never: forward without a bound (hops, waiters), or re-send a write whose outcome is
//! unknown.

use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use kahuna_core::peer_frame::PeerFrame;
use kahuna_protocol::{decode_request, decode_response, encode_request, encode_response};
use kahuna_protocol::{Durability, ErrorCode, Op, Reply, WireError};

use super::{with_deadline, Answer, Shard};
use crate::raft::partition::Partition;

/// A forwarded request may be forwarded once more (to a leader the first hop learned of), never
/// in a loop.
pub(super) const MAX_HOPS: u8 = 2;

/// Requests one shard has forwarded to other nodes and waits on, and requests other nodes
/// forwarded to it that it is serving: past either bound, new ones get OVERLOADED (retryable:
/// never sent, never run).
const MAX_FORWARDED: usize = 65_536;

fn overloaded(what: &str) -> WireError {
    WireError::new(ErrorCode::Overloaded, format!("too many {what} on this shard; retry"))
}

/// How long a forwarded read waits for its answer before it is answered UNAVAILABLE (retryable).
const FORWARDED_READ_WAIT: Duration = Duration::from_millis(1500);

/// MOVED unless the partition serves `op`: holds its key, or, for a scan, has keys after its
/// position (a scan page starts at the partition's start when its cursor lies before it). A
/// split may have given the key away since the request was routed; nothing ran.
pub fn holds(p: &Partition, op: &Op) -> Result<(), WireError> {
    if serves(&p.info, op) {
        Ok(())
    } else {
        Err(moved_key(p.info.id))
    }
}

/// Whether the partition `info` describes can serve `op` (see [`holds`]).
pub fn serves(info: &kahuna_core::PartitionInfo, op: &Op) -> bool {
    match op {
        Op::ClusterStatus { .. } => true,
        Op::KvScan { .. } => info.end.is_empty() || op.position_key() < info.end.as_slice(),
        _ => info.contains(op.position_key()),
    }
}

/// The cluster's own periodic reads (each node's look at the member records every 2 s, the
/// balancer's every second): served from the leader's applied state without a read barrier,
/// and without waking a quiesced meta range. What they read steers links and plans, never an
/// answer a client relies on (member changes themselves read and compare-and-set
/// linearizably).
pub(super) fn background(op: &Op) -> bool {
    use kahuna_core::membership::{BALANCE_KEY, MEMBERS_PREFIX, REPLICATION_KEY};
    match op {
        Op::KvScan { prefix, durability: Durability::Persistent, .. } => prefix == MEMBERS_PREFIX,
        Op::KvGet { key, durability: Durability::Persistent, revision: 0 } => {
            key == BALANCE_KEY || key == REPLICATION_KEY
        }
        _ => false,
    }
}

pub(super) fn moved_key(partition: u64) -> WireError {
    WireError::new(
        ErrorCode::Moved,
        format!("partition {partition} no longer holds the key (it split); retry"),
    )
}

impl Shard {
    /// Serves one request from a client of this shard: validate, route, run.
    pub async fn execute(self: &Rc<Self>, op: Op, deadline: std::time::Instant) -> Answer {
        if let Err(e) = self.limits.validate(&op) {
            return (Err(e), 0);
        }
        self.execute_checked(op, deadline).await
    }

    /// Routes and runs a request that passed (or, from Kahuna itself, needs no) validation.
    pub async fn execute_checked(self: &Rc<Self>, op: Op, deadline: std::time::Instant) -> Answer {
        match op {
            Op::KvScan { .. } => return self.scan_across(op, deadline).await,
            Op::ClusterStatus { scope, checksums } => {
                return self.status(scope, checksums, deadline).await
            }
            Op::Membership { .. } => {
                let answer = Box::pin(crate::cluster::membership::handle(self, op, deadline)).await;
                return (answer, self.node_id);
            }
            Op::Txn { .. } if self.spans_partitions(&op) => {
                if op.durability() == Durability::Ephemeral {
                    let e = WireError::new(
                        ErrorCode::Invalid,
                        "an ephemeral transaction runs in one partition (its leader's memory): \
                         keep its keys under one prefix",
                    );
                    return (Err(e), 0);
                }
                return Box::pin(self.txn_across(op, deadline)).await;
            }
            _ => {}
        }
        // A script is routed by its first key, which the serving node finds (never the
        // client's word).
        let op = match op {
            Op::Script { source, params, .. } => match self.script_route(&source, &params) {
                Ok(key) => Op::Script { source, params, key },
                Err(e) => return (Err(e), 0),
            },
            other => other,
        };
        let (id, shard) = {
            let map = self.map.borrow();
            let part = map.locate(op.position_key());
            (part.id, part.shard)
        };
        self.execute_on(id, shard, op, deadline).await
    }

    /// Where a script runs: the partition of its first key, which must hold all of them
    /// (scripts across partitions are not built).
    fn script_route(
        &self,
        source: &str,
        params: &[(String, Vec<u8>)],
    ) -> Result<Vec<u8>, WireError> {
        let keys = kahuna_core::command::script_keys(source, params)
            .map_err(|e| WireError::new(ErrorCode::Invalid, e))?;
        let map = self.map.borrow();
        let first = map.locate(&keys[0]);
        if let Some(k) = keys.iter().find(|k| map.locate(k).id != first.id) {
            return Err(WireError::new(
                ErrorCode::Invalid,
                format!(
                    "a script runs in one partition, and {:?} lies outside the one of {:?}: keep \
                     a script's keys under one prefix, or use a transaction (which spans \
                     partitions)",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(&keys[0])
                ),
            ));
        }
        Ok(keys[0].clone())
    }

    async fn execute_on(
        self: &Rc<Self>,
        partition: u64,
        shard: usize,
        op: Op,
        deadline: std::time::Instant,
    ) -> Answer {
        if shard == self.id {
            self.execute_local(partition, op, deadline).await
        } else {
            self.mesh.forward(shard, partition, op, deadline).await
        }
    }

    /// A scan walks the partitions that may hold the prefix, in key order, until the page is
    /// full. Each partition's answer says where its range ends (`covered_to`), and the walk
    /// goes on exactly from there: a partition that split since this shard's map last changed
    /// ends earlier than the map says, and the keys past its new end are not skipped.
    async fn scan_across(self: &Rc<Self>, op: Op, deadline: std::time::Instant) -> Answer {
        let Op::KvScan { prefix, durability, start_after, limit } = op else {
            unreachable!("scan_across takes scans")
        };
        let want = if limit == 0 { self.limits.default_scan_limit } else { limit } as usize;
        let prefix_end = kahuna_core::keys::prefix_end(&prefix);
        let mut items = Vec::new();
        let mut cursor = start_after;
        // The position the walk has reached: every key below it is answered.
        let mut pos = match &cursor {
            Some(c) if *c > prefix => c.clone(),
            _ => prefix.clone(),
        };
        let mut stale_turns = 0;
        loop {
            let (pid, shard) = {
                let map = self.map.borrow();
                let p = map.locate(&pos);
                (p.id, p.shard)
            };
            let sub = Op::KvScan {
                prefix: prefix.clone(),
                durability,
                start_after: cursor.clone(),
                limit: (want - items.len()) as u32,
            };
            let covered_to = match self.execute_on(pid, shard, sub, deadline).await {
                (Ok(Reply::KvScan { items: got, next, covered_to }), _) => {
                    items.extend(got);
                    if next.is_some() || items.len() >= want {
                        let next = items.last().map(|i| i.key.clone());
                        return (Ok(Reply::KvScan { items, next, covered_to: None }), 0);
                    }
                    if let Some(last) = items.last() {
                        cursor = Some(last.key.clone());
                    }
                    covered_to
                }
                (Ok(other), _) => {
                    return (
                        Err(WireError::new(ErrorCode::Internal, format!("scan got {other:?}"))),
                        0,
                    );
                }
                err => return err,
            };
            let Some(end) = covered_to else { break };
            if prefix_end.as_ref().is_some_and(|pe| end >= *pe) {
                break;
            }
            if end <= pos {
                // The partition the map named ends before the position: the map is behind a
                // split that news of is on its way. Wait for it, briefly.
                stale_turns += 1;
                if stale_turns > 50 || std::time::Instant::now() >= deadline {
                    let e = WireError::new(
                        ErrorCode::Unavailable,
                        "the partition map is changing (a split); retry the scan",
                    );
                    return (Err(e), 0);
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
                continue;
            }
            pos = end;
        }
        (Ok(Reply::KvScan { items, next: None, covered_to: None }), 0)
    }

    /// Runs a request on a partition this shard owns, or forwards it to the node that leads it.
    pub async fn execute_local(
        self: &Rc<Self>,
        partition: u64,
        op: Op,
        deadline: std::time::Instant,
    ) -> Answer {
        if let Op::ClusterStatus { scope, checksums } = op {
            return self.status(scope, checksums, deadline).await;
        }
        self.execute_hops(partition, op, deadline, 0).await
    }

    /// Where to send a request for `partition` instead of running it here, if anywhere.
    fn forward_target(&self, partition: u64) -> Option<u64> {
        self.peers.as_ref()?;
        let parts = self.parts.borrow();
        match parts.get(&partition) {
            Some(p) if p.is_leader() => None,
            Some(p) => Some(p.leader_hint()).filter(|l| *l != 0 && *l != self.node_id),
            // Not a replica here: its first replica knows where the leader is.
            None => self
                .map()
                .get(partition)
                .and_then(|i| i.replicas.first().copied())
                .filter(|n| *n != self.node_id),
        }
    }

    async fn execute_hops(
        self: &Rc<Self>,
        partition: u64,
        op: Op,
        deadline: std::time::Instant,
        hops: u8,
    ) -> Answer {
        if hops < MAX_HOPS {
            if let Some(to) = self.forward_target(partition) {
                return self.forward(to, partition, op, deadline, hops + 1).await;
            }
        }
        // One look at the partition: whether it still serves the op (a split may have moved the
        // key away since it was routed: the map, changed by that split on this shard, knows
        // where it went); waking it if quiesced (a leader that must step down,
        // or whose disk is full, must tick to hand over); and whether a leader woken from
        // quiescence must confirm it still leads before it serves the state only it holds.
        let (outside, confirm) = match self.parts.borrow_mut().get_mut(&partition) {
            Some(p) if serves(&p.info, &op) => {
                if !background(&op) {
                    p.touch();
                }
                (false, p.confirm_before_ephemeral && p.is_leader())
            }
            Some(_) => (true, false),
            None => (false, false),
        };
        if outside {
            let (id, shard) = {
                let map = self.map.borrow();
                let p = map.locate(op.position_key());
                (p.id, p.shard)
            };
            if id == partition || hops >= MAX_HOPS {
                let e = WireError::new(
                    ErrorCode::Moved,
                    format!("partition {partition} no longer holds the key; retry"),
                );
                return (Err(e), 0);
            }
            if shard != self.id {
                return self.mesh.forward(shard, id, op, deadline).await;
            }
            return Box::pin(self.execute_hops(id, op, deadline, hops + 1)).await;
        }
        let hint = self.node_id;
        if let Op::Membership { .. } = op {
            // Not routed by key: served by whichever node it reaches (a peer sent it here).
            return (Box::pin(crate::cluster::membership::handle(self, op, deadline)).await, hint);
        }
        if let Op::Split { at, .. } = op {
            return (Box::pin(self.split_here(partition, at, deadline)).await, hint);
        }
        if let Op::MoveReplica { partition: want, epoch, add, remove, lead, .. } = op {
            if lead != 0 {
                let mv = kahuna_core::balance::LeadMove { partition: want, epoch, to: lead };
                return (Box::pin(self.lead_step(partition, mv, deadline)).await, hint);
            }
            let mv = kahuna_core::balance::Move { partition: want, epoch, add, remove };
            return (Box::pin(self.move_step(partition, mv, deadline)).await, hint);
        }
        self.splits.record(partition, op.position_key());
        if confirm && op.durability() == Durability::Ephemeral {
            if let Err(e) = self.confirm_leadership(partition, deadline).await {
                return (Err(e), hint);
            }
            let _ = self.with_partition(partition, |p| {
                p.confirm_before_ephemeral = false;
                Ok(())
            });
        }
        if let Err(e) = self.check_lease_clock(&op) {
            return (Err(e), hint);
        }
        // A transaction across partitions may hold a name the request touches: a write waits
        // here (it is proposed only once the name is free), a read when it meets one.
        let wait = self.waits_for_intents(&op, deadline);
        if let (Some(until), false) = (wait, op.is_read()) {
            if let Err(e) = self.wait_for_intents(partition, &op, until).await {
                return (Err(e), hint);
            }
        }
        let result = match (op.durability(), op.is_read()) {
            (Durability::Ephemeral, true) => self.ephemeral_read(partition, &op),
            (Durability::Ephemeral, false) => self.ephemeral_write(partition, op),
            (Durability::Persistent, true) => loop {
                let r = self.persistent_read(partition, &op, deadline).await;
                match (&r, wait) {
                    (Err(e), Some(until))
                        if e.code == ErrorCode::Locked && std::time::Instant::now() < until =>
                    {
                        if let Err(e) = self.wait_for_intents(partition, &op, until).await {
                            break Err(e);
                        }
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    _ => break r,
                }
            },
            (Durability::Persistent, false) => self.persistent_write(partition, op, deadline).await,
        };
        let hint = match &result {
            Err(e) if e.code == ErrorCode::NotLeader => {
                self.parts.borrow().get(&partition).map(|p| p.leader_hint()).unwrap_or(0)
            }
            _ => hint,
        };
        (result, hint)
    }

    /// Sends a request to node `to` over the peer link and waits for its answer.
    pub(super) async fn forward(
        &self,
        to: u64,
        partition: u64,
        op: Op,
        deadline: std::time::Instant,
        hops: u8,
    ) -> Answer {
        let Some(peers) = &self.peers else {
            return (Err(WireError::new(ErrorCode::Unavailable, "no peers to forward to")), 0);
        };
        if self.forwarded.borrow().len() >= MAX_FORWARDED {
            return (Err(overloaded("requests waiting on other nodes")), 0);
        }
        let token = self.next_forward.get();
        self.next_forward.set(token + 1);
        if !matches!(op, Op::ClusterStatus { .. }) {
            self.forwarded_count.set(self.forwarded_count.get() + 1);
            self.metrics.forwarded.inc();
        }
        let left_ms =
            deadline.saturating_duration_since(std::time::Instant::now()).as_millis().min(60_000)
                as u32;
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let mut frame = Vec::new();
        encode_request(&mut fbb, token, left_ms.max(1), &op, &mut frame);
        // A status answer with checksums reads whole ranges, a backup copy writes one: they get
        // the caller's deadline.
        let slow = matches!(op, Op::ClusterStatus { checksums: true, .. } | Op::Backup { .. });
        let is_read = op.is_read() && !slow;
        let (tx, rx) = oneshot::channel();
        self.forwarded
            .borrow_mut()
            .insert(token, crate::transport::peer::Waiter { node: to, read: is_read, tx });
        let out = PeerFrame::Request { token, partition, hops, request: frame.split_off(4) };
        if !peers.send(to, out) {
            self.forwarded.borrow_mut().remove(&token);
            return (
                Err(WireError::new(ErrorCode::Unavailable, format!("node {to} is not reachable"))),
                0,
            );
        }
        // A read is safe to send again: wait for it only a bounded time, so a leader that died
        // with the request in flight costs a retry, not the caller's whole deadline.
        let wait_until = if is_read {
            deadline.min(std::time::Instant::now() + FORWARDED_READ_WAIT)
        } else {
            deadline
        };
        match with_deadline(wait_until, rx).await {
            Some(Ok(answer)) => answer,
            _ => {
                self.forwarded.borrow_mut().remove(&token);
                if is_read {
                    let msg = format!("node {to} did not answer the read; retry");
                    (Err(WireError::new(ErrorCode::Unavailable, msg)), 0)
                } else {
                    let msg =
                        format!("node {to} did not answer in time; the write's outcome is unknown");
                    (Err(WireError::new(ErrorCode::Timeout, msg)), to)
                }
            }
        }
    }

    /// A request another node forwarded here: run it (on the owning shard) and answer.
    pub async fn serve_forwarded(
        self: Rc<Self>,
        from: u64,
        token: u64,
        partition: u64,
        hops: u8,
        frame: Vec<u8>,
    ) {
        if self.serving_forwarded.get() >= MAX_FORWARDED {
            return self.answer_forwarded(from, token, (Err(overloaded("forwarded requests")), 0));
        }
        self.serving_forwarded.set(self.serving_forwarded.get() + 1);
        let answer = self.run_forwarded(from, partition, hops, frame).await;
        self.serving_forwarded.set(self.serving_forwarded.get() - 1);
        self.answer_forwarded(from, token, answer);
    }

    async fn run_forwarded(
        self: &Rc<Self>,
        _from: u64,
        partition: u64,
        hops: u8,
        frame: Vec<u8>,
    ) -> Answer {
        let (result, hint) = match decode_request(&frame) {
            Ok((_, timeout_ms, Op::ClusterStatus { scope, checksums })) => {
                self.status(scope, checksums, self.deadline(timeout_ms)).await
            }
            Ok((_, timeout_ms, op)) => {
                // A peer's frame is untrusted input like a client's: the same checks, before
                // anything reaches a state machine (whose assertions would stop every replica).
                if let Err(e) = self.limits.validate_from_peer(&op) {
                    return (Err(e), 0);
                }
                // The partition that runs it is the one that owns the key in this node's map:
                // the sender's may be older (a split it has not heard of yet), and a request
                // applied in another partition's log would write outside that partition's range
                // (each apply checks that too).
                let (owner, shard) = {
                    let map = self.map.borrow();
                    // A scan page names the partition the walk reached (its cursor may lie in
                    // an earlier one): kept while it can serve.
                    let p = match map.get(partition) {
                        Some(p) if serves(p, &op) => p,
                        _ => map.locate(op.position_key()),
                    };
                    (p.id, p.shard)
                };
                if owner != partition {
                    tracing::debug!("a request for partition {partition} belongs to {owner} now");
                }
                let deadline = self.deadline(timeout_ms);
                if shard == self.id {
                    self.execute_hops(owner, op, deadline, hops).await
                } else {
                    self.mesh.forward(shard, owner, op, deadline).await
                }
            }
            Err(e) => (Err(WireError::new(e.code(), e.to_string())), 0),
        };
        (result, hint)
    }

    fn answer_forwarded(&self, from: u64, token: u64, (result, hint): Answer) {
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let mut out = Vec::new();
        encode_response(&mut fbb, token, &result, hint, &mut out);
        if let Some(peers) = &self.peers {
            peers.send(from, PeerFrame::Response { token, response: out });
        }
    }

    /// The answer to a request this shard forwarded to node `from`.
    pub fn on_forwarded_response(&self, from: u64, token: u64, frame: &[u8]) {
        let mut waiting = self.forwarded.borrow_mut();
        if waiting.get(&token).is_none_or(|w| w.node != from) {
            return; // not ours: another node's, or from before a restart
        }
        let Some(crate::transport::peer::Waiter { tx, .. }) = waiting.remove(&token) else {
            return;
        };
        drop(waiting);
        let answer = match frame.get(4..).map(decode_response) {
            Some(Ok((_, result, hint))) => (result, hint),
            _ => (Err(WireError::new(ErrorCode::Internal, "malformed forwarded answer")), 0),
        };
        let _ = tx.send(answer);
    }
}
