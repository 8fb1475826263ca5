//! One partition on this shard: its Raft group member (`RawNode`), the proposals and reads
//! waiting on it, and its ephemeral state (leader memory only).
//!
//! Lifecycle of a persistent write:
//! 1. [`Partition::propose`] hands the encoded command to raft-rs and parks a waiter at the
//!    entry's index and term;
//! 2. the shard's ready loop persists, commits and applies it, then calls
//!    [`Partition::complete`], which wakes the waiter (or tells it the entry was superseded).
//!
//! Lifecycle of a linearizable read:
//! 1. [`Partition::read_barrier`]: a leader that has not yet applied an entry of its own term
//!    queues the read (it may not know everything committed before it, and raft-rs drops a
//!    ReadIndex in that window); otherwise a sole voter answers at once (nobody can depose
//!    it) and any other leader issues a ReadIndex;
//! 2. the ready loop delivers the read state, and once `applied >= index` the reader proceeds;
//!    queued reads are let through (or their ReadIndex issued) once the own-term entry is
//!    applied;
//! 3. [`Partition::retry_reads`] (each tick) issues again a ReadIndex that got no answer, and
//!    forgets readers that gave up; every queue is bounded and emptied when leadership ends.

use std::collections::{BTreeMap, VecDeque};

use futures_channel::oneshot;
use kahuna_core::partition::PartitionInfo;
use kahuna_core::store::MemStore;
use kahuna_protocol::{ErrorCode, Reply, WireError};
use raft::eraftpb::{Message, MessageType};
use raft::{RawNode, StateRole};

use super::log_store::{LogStore, SnapshotSource};
use crate::config::NodeConfig;
use crate::storage::state::ApplyState;
use raft::eraftpb::{ConfState, Entry, HardState};

/// Where a partition's log resumes after a restart: the hard state and the entries after the
/// applied index, from what the WAL recovered (`Err`: entries are missing: damage).
pub fn log_start(
    id: u64,
    applied: &ApplyState,
    log: crate::storage::wal::RecoveredLog,
) -> Result<(HardState, Vec<Entry>), String> {
    let entries: Vec<Entry> = log
        .entries
        .into_iter()
        .filter(|e| e.index > applied.applied_index)
        .map(crate::shard::driver::entry_from)
        .collect();
    if let Some(first) = entries.first() {
        if first.index != applied.applied_index + 1 {
            return Err(format!(
                "partition {id}: the WAL resumes at entry {} but RocksDB has applied only {}: entries are missing",
                first.index, applied.applied_index
            ));
        }
    }
    let last_index = applied.applied_index + entries.len() as u64;
    let mut hs = HardState::default();
    if let Some(h) = log.hard_state {
        hs.term = h.term;
        hs.vote = h.vote;
        hs.commit = h.commit;
    }
    // The commit index reaches the WAL one turn after the entries it covers were applied.
    hs.commit = hs.commit.max(applied.applied_index).min(last_index);
    hs.term = hs.term.max(applied.applied_term);
    Ok((hs, entries))
}

/// The Raft membership a descriptor names: its voters and learners.
pub fn conf_state(info: &PartitionInfo) -> ConfState {
    ConfState {
        voters: info.replicas.clone(),
        learners: info.learners.clone(),
        ..Default::default()
    }
}

/// The Raft settings of every partition (ticks are the shard's `raft_tick_ms`).
pub fn raft_config(cfg: &NodeConfig, applied: u64) -> raft::Config {
    raft::Config {
        id: cfg.id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        max_uncommitted_size: 64 << 20,
        ..Default::default()
    }
}

pub type ReplyTx = oneshot::Sender<Result<Reply, WireError>>;
pub type ReplyRx = oneshot::Receiver<Result<Reply, WireError>>;

/// Waiting proposals per partition beyond which new ones are refused (retryable).
const MAX_PENDING_PROPOSALS: usize = 65_536;
/// Reads waiting on one partition, in all stages, beyond which new ones get OVERLOADED.
const MAX_PENDING_READS: usize = 65_536;
/// A ReadIndex unanswered this long is issued again (raft-rs may have dropped it).
const READ_INDEX_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

type ReadTx = oneshot::Sender<Result<(), WireError>>;

struct Pending {
    term: u64,
    tx: ReplyTx,
}

pub struct Partition {
    pub info: PartitionInfo,
    pub node: RawNode<LogStore>,
    pub applied: ApplyState,
    pub ephemeral: MemStore,
    /// Ephemeral lock grants in the current term: the low bits of the ephemeral token floor.
    pub ephemeral_grants: u64,
    pub sweep_cursor: Option<Vec<u8>>,
    /// The role at the last `Ready`, to notice a lost leadership.
    pub role: StateRole,
    /// The replica leadership should move to, and since when it has been ready for it.
    pub handover: Option<(u64, std::time::Instant)>,
    /// This replica was found to have lost acknowledged entries (said once in the log).
    pub lost_data: bool,
    /// Where the expired-key collector goes on (a storage key), `None` = from the start.
    pub collect_cursor: Option<Vec<u8>>,
    /// A snapshot installing off the loop, and the `Ready` that waits for it.
    pub installing: Option<crate::raft::snapshot::PendingInstall>,
    /// Ephemeral state a split moved here from its parent's leader on this node: it is this
    /// partition's only if this node wins the group's first election, at this term (nobody
    /// else can have led before); at any other term it is dropped.
    pub inherited_ephemeral_term: Option<u64>,
    /// This leader proposed a split at this key and has not applied it yet: ephemeral writes at
    /// or after it wait (the other replicas may apply it first and start the new half, whose
    /// tokens must stay above every one granted here).
    pub splitting_at: Option<Vec<u8>>,
    /// A split's new half campaigns again at this tick if it has no leader by then.
    pub recampaign_at: Option<u64>,
    /// A learner joined the group: compact the in-memory log to the applied index after this
    /// apply, so the learner is sent a snapshot, not the log from its first entry.
    pub compact_on_apply: bool,
    /// The group stopped ticking (see `kahuna_core::quiesce`): no heartbeats, no elections,
    /// until a request or a message wakes it.
    pub quiesced: bool,
    /// Ticks since the last request, proposal or message other than a heartbeat answer.
    pub idle_ticks: u64,
    /// A leader woken from quiescence serves ephemeral state only after a heartbeat round
    /// confirms it still leads: it did not tick while quiesced, so it would not have noticed
    /// being deposed (its followers elect another leader when its node falls silent).
    pub confirm_before_ephemeral: bool,
    /// The expired-key collector's last whole pass found a key with a TTL or a tombstone (or
    /// one was written since): worth collecting every second even when quiesced.
    pub ttl_keys: bool,
    /// The pass under way has seen one.
    pub pass_saw_ttl: bool,
    proposals: BTreeMap<u64, Pending>,
    next_read_ctx: u64,
    /// Reads that came before this leader applied an entry of its own term.
    reads_before_term: Vec<ReadTx>,
    /// Reads waiting for their ReadIndex answer, by context, with when it was issued.
    read_requests: BTreeMap<u64, (ReadTx, std::time::Instant)>,
    /// Reads whose index is known, waiting for the state machine to reach it.
    read_ready: VecDeque<(u64, ReadTx)>,
}

pub fn not_leader(hint: u64) -> WireError {
    WireError::new(
        ErrorCode::NotLeader,
        format!("not the partition leader (leader hint: node {hint})"),
    )
}

impl Partition {
    pub fn new(info: PartitionInfo, node: RawNode<LogStore>, applied: ApplyState) -> Partition {
        Partition {
            info,
            node,
            applied,
            ephemeral: MemStore::default(),
            ephemeral_grants: 0,
            sweep_cursor: None,
            role: StateRole::Follower,
            handover: None,
            lost_data: false,
            collect_cursor: None,
            installing: None,
            inherited_ephemeral_term: None,
            splitting_at: None,
            recampaign_at: None,
            compact_on_apply: false,
            quiesced: false,
            idle_ticks: 0,
            confirm_before_ephemeral: false,
            ttl_keys: true,
            pass_saw_ttl: false,
            proposals: BTreeMap::new(),
            next_read_ctx: 1,
            reads_before_term: Vec::new(),
            read_requests: BTreeMap::new(),
            read_ready: VecDeque::new(),
        }
    }

    /// Opens the Raft group of a partition from its applied state, the hard state and the log
    /// entries after it (all from disk, or a split's starting point).
    pub fn open(
        cfg: &NodeConfig,
        source: SnapshotSource,
        info: PartitionInfo,
        applied: ApplyState,
        hard_state: HardState,
        entries: Vec<Entry>,
    ) -> Result<Partition, String> {
        let cs = conf_state(&info);
        let mut store =
            LogStore::new(hard_state, cs, applied.applied_index, applied.applied_term, entries);
        store.set_snapshot_source(source);
        let rcfg = raft_config(cfg, applied.applied_index);
        let node = RawNode::new(&rcfg, store, &crate::logging::raft_logger(info.id))
            .map_err(|e| format!("partition {}: {e}", info.id))?;
        Ok(Partition::new(info, node, applied))
    }

    /// Writes proposed here and not yet answered.
    pub fn proposals_in_flight(&self) -> usize {
        self.proposals.len()
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader_hint(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn ensure_leader(&self) -> Result<(), WireError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(not_leader(self.leader_hint()))
        }
    }

    /// Ephemeral state is served by a leader that has applied an entry of its own term: by
    /// then it has applied every split committed before, so it never serves a key its
    /// partition gave away (whose new partition's tokens start above this term's).
    pub fn ensure_ephemeral_leader(&self) -> Result<(), WireError> {
        self.ensure_leader()?;
        if !self.own_term_applied() {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                "the partition's new leader is catching up; retry",
            ));
        }
        Ok(())
    }

    /// This replica just became leader: keep ephemeral state a split moved here only if no
    /// other node can have led the group before (see `inherited_ephemeral_term`).
    pub fn on_became_leader(&mut self) -> usize {
        // What this replica last knew of TTL keys predates what it applied since as a
        // follower (a snapshot, say): the collector starts a whole pass at full speed.
        self.ttl_keys = true;
        self.collect_cursor = None;
        self.pass_saw_ttl = false;
        match self.inherited_ephemeral_term.take() {
            Some(t) if t == self.term() => 0,
            _ => {
                let freed = self.ephemeral.bytes();
                self.ephemeral = MemStore::default();
                freed
            }
        }
    }

    fn sole_voter(&self) -> bool {
        let voters = self.node.raft.prs().conf().voters().ids();
        voters.len() == 1 && voters.contains(self.node.raft.id)
    }

    /// Something happened: a request, a proposal, a message. A quiesced group wakes.
    pub fn touch(&mut self) {
        self.idle_ticks = 0;
        if self.quiesced {
            self.wake();
        }
    }

    /// Starts ticking again; a leader also sends heartbeats at once, which wake its followers.
    pub fn wake(&mut self) {
        self.quiesced = false;
        self.idle_ticks = 0;
        // Its election timer starts over: a follower woken by its leader's silence waits a
        // whole election timeout more before it campaigns (a leader slowed for a moment, not
        // dead, is not deposed by a timer frozen near its end while quiesced).
        self.node.raft.election_elapsed = 0;
        if self.is_leader() {
            self.confirm_before_ephemeral = true;
            // A full election timeout before check-quorum looks at who answered, and only
            // answers from now on count (not those from before it quiesced).
            let me = self.node.raft.id;
            for (id, pr) in self.node.raft.mut_prs().iter_mut() {
                pr.recent_active = *id == me;
            }
            self.node.ping();
        }
    }

    /// What the quiesce decision looks at (see `kahuna_core::quiesce::should_quiesce`).
    pub fn group_state(&self) -> kahuna_core::quiesce::GroupState {
        let raft = &self.node.raft;
        let me = raft.id;
        kahuna_core::quiesce::GroupState {
            leader: self.is_leader(),
            own_term_applied: self.own_term_applied(),
            idle_ticks: self.idle_ticks,
            proposals: self.proposals.len(),
            reads: self.reads_before_term.len() + self.read_requests.len() + self.read_ready.len(),
            last_index: raft.raft_log.last_index(),
            committed: raft.raft_log.committed,
            applied: self.applied.applied_index,
            followers_matched: raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != me)
                .map(|(_, pr)| pr.matched)
                .collect(),
            // Ephemeral state needs its expiry sweep, which runs only while ticking.
            busy: raft.lead_transferee.is_some()
                || self.handover.is_some()
                || self.installing.is_some()
                || self.recampaign_at.is_some()
                || !self.ephemeral.is_empty(),
        }
    }

    /// Proposes an encoded command; the receiver answers once it is applied.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<ReplyRx, WireError> {
        self.propose_with(|node| node.propose(vec![], data))
    }

    /// Proposes a membership change (see `cluster::replicas`); answered once applied. raft-rs
    /// turns a change proposed while another is pending into an empty entry: its waiter is
    /// then answered by the next entry's outcome (NOT_LEADER), and the move tries again.
    pub fn propose_change(
        &mut self,
        entry: kahuna_core::partition::ChangeEntry,
        cc: raft::eraftpb::ConfChangeV2,
    ) -> Result<ReplyRx, WireError> {
        self.propose_with(|node| node.propose_conf_change(entry.encode(), cc))
    }

    fn propose_with(
        &mut self,
        propose: impl FnOnce(&mut RawNode<LogStore>) -> raft::Result<()>,
    ) -> Result<ReplyRx, WireError> {
        self.ensure_leader()?;
        self.touch();
        if self.proposals.len() >= MAX_PENDING_PROPOSALS {
            return Err(WireError::new(
                ErrorCode::Overloaded,
                "too many writes waiting on this partition",
            ));
        }
        let before = self.node.raft.raft_log.last_index();
        if let Err(e) = propose(&mut self.node) {
            return Err(match e {
                raft::Error::ProposalDropped => WireError::new(
                    ErrorCode::Overloaded,
                    "proposal dropped (uncommitted log full or leadership moving)",
                ),
                other => {
                    WireError::new(ErrorCode::Unavailable, format!("proposal failed: {other}"))
                }
            });
        }
        let index = self.node.raft.raft_log.last_index();
        if index == before {
            return Err(WireError::new(ErrorCode::Unavailable, "proposal was not appended"));
        }
        let (tx, rx) = oneshot::channel();
        self.proposals.insert(index, Pending { term: self.term(), tx });
        Ok(rx)
    }

    /// The entry at `index` of `term` was applied with `result`.
    pub fn complete(&mut self, index: u64, term: u64, result: Result<Reply, WireError>) {
        // Anything parked below this index can no longer be applied: its entry was replaced.
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() >= index {
                break;
            }
            let p = entry.remove();
            let _ = p.tx.send(Err(not_leader(self.node.raft.leader_id)));
        }
        if let Some(p) = self.proposals.remove(&index) {
            let answer = if p.term == term {
                result
            } else {
                Err(WireError::new(
                    ErrorCode::NotLeader,
                    "leadership changed; the write was not applied",
                ))
            };
            let _ = p.tx.send(answer);
        }
    }

    /// A barrier for a linearizable read: `None` when the state may be read now.
    pub fn read_barrier(
        &mut self,
    ) -> Result<Option<oneshot::Receiver<Result<(), WireError>>>, WireError> {
        self.ensure_leader()?;
        self.touch();
        if self.own_term_applied() && self.sole_voter() {
            // Everything acknowledged was committed at or before this term's first entry, which
            // is applied; and nobody can depose us.
            return Ok(None);
        }
        let waiting =
            self.reads_before_term.len() + self.read_requests.len() + self.read_ready.len();
        if waiting >= MAX_PENDING_READS {
            return Err(WireError::new(
                ErrorCode::Overloaded,
                "too many reads waiting on this partition",
            ));
        }
        let (tx, rx) = oneshot::channel();
        if self.own_term_applied() {
            self.issue_read(tx);
        } else {
            self.reads_before_term.push(tx);
        }
        Ok(Some(rx))
    }

    /// The leader has applied an entry of its own term: it knows every entry committed before.
    pub fn own_term_applied(&self) -> bool {
        self.applied.applied_term == self.term()
    }

    fn issue_read(&mut self, tx: ReadTx) {
        if self.sole_voter() {
            let _ = tx.send(Ok(()));
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.read_requests.insert(ctx, (tx, std::time::Instant::now()));
        self.node.read_index(ctx.to_le_bytes().to_vec());
    }

    /// raft-rs answered a ReadIndex.
    pub fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Ok(b) = <[u8; 8]>::try_from(ctx) else { return };
        if let Some((tx, _)) = self.read_requests.remove(&u64::from_le_bytes(b)) {
            self.read_ready.push_back((index, tx));
        }
        self.release_reads();
    }

    /// Lets through the reads whose index the state machine has reached, and the reads that
    /// waited for this leader's first entry once it is applied.
    pub fn release_reads(&mut self) {
        if self.is_leader() && self.own_term_applied() && !self.reads_before_term.is_empty() {
            for tx in std::mem::take(&mut self.reads_before_term) {
                if !tx.is_canceled() {
                    self.issue_read(tx);
                }
            }
        }
        let applied = self.applied.applied_index;
        let mut keep = VecDeque::new();
        while let Some((index, tx)) = self.read_ready.pop_front() {
            if index <= applied {
                let _ = tx.send(Ok(()));
            } else {
                keep.push_back((index, tx));
            }
        }
        self.read_ready = keep;
    }

    /// Each tick: forgets readers that gave up (their deadline passed), and issues again every
    /// ReadIndex unanswered for [`READ_INDEX_RETRY`] (raft-rs drops one it cannot serve yet,
    /// and a heartbeat round can be lost). The same context answers whichever comes back.
    pub fn retry_reads(&mut self, now: std::time::Instant) {
        self.reads_before_term.retain(|tx| !tx.is_canceled());
        self.read_ready.retain(|(_, tx)| !tx.is_canceled());
        self.read_requests.retain(|_, (tx, _)| !tx.is_canceled());
        if !self.is_leader() {
            return;
        }
        let stale: Vec<u64> = self
            .read_requests
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= READ_INDEX_RETRY)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some((_, at)) = self.read_requests.get_mut(&ctx) {
                *at = now;
            }
            self.node.read_index(ctx.to_le_bytes().to_vec());
        }
    }

    /// Steps a Raft message from a peer; returns a message to send back, if any.
    ///
    /// Handles a replica that lost entries it had acknowledged (its data directory was wiped or
    /// damaged). Its leader still counts those entries as matched, so it would never send them
    /// again, and raft-rs panics on a heartbeat whose commit index lies beyond the log. Instead:
    /// the replica takes the heartbeat up to its own last index and answers with a rejection
    /// naming where its log really ends; the leader, seeing a rejection below what it counted as
    /// matched, starts replicating to it from there (by snapshot if the log was compacted).
    /// Votes the replica cast before losing its data are forgotten too: see the README.
    pub fn step_peer(&mut self, me: u64, mut msg: Message) -> Option<Message> {
        let pid = self.info.id;
        // Anything but heartbeats and their answers is activity, and wakes a quiesced group.
        // Heartbeats do not: a quiesced follower still answers them (it only stops ticking),
        // and the leader's last ones may well arrive after its quiesce notice.
        if !matches!(
            msg.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
        ) {
            self.touch();
        }
        let last = self.node.raft.raft_log.last_index();
        let mut reply = None;
        if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last {
            if !std::mem::replace(&mut self.lost_data, true) {
                tracing::error!(
                    "partition {pid}: leader {} counts entries up to {} as held here, but this \
                     replica's log ends at {last}: its data was lost after it acknowledged them; \
                     asking for them again",
                    msg.from,
                    msg.commit
                );
            }
            let mut r = Message::default();
            r.set_msg_type(MessageType::MsgAppendResponse);
            r.to = msg.from;
            r.from = me;
            r.term = msg.term;
            r.index = msg.commit;
            r.reject = true;
            r.reject_hint = last;
            reply = Some(r);
            msg.commit = last;
        }
        if msg.get_msg_type() == MessageType::MsgAppendResponse
            && msg.reject
            && msg.term == self.term()
            && self.is_leader()
        {
            let (from, hint) = (msg.from, msg.reject_hint);
            if let Some(pr) = self.node.raft.mut_prs().get_mut(from) {
                if hint < pr.matched {
                    tracing::warn!(
                        "partition {pid}: node {from} lost entries it had acknowledged (matched \
                         {}, its log ends at {hint}); replicating to it again from there",
                        pr.matched
                    );
                    pr.matched = hint;
                    pr.become_probe();
                    return reply;
                }
            }
        }
        // A message from a stale term or an unknown peer is refused by raft-rs itself.
        let _ = self.node.step(msg);
        reply
    }

    /// Keeps leaders spread: once the replica placement prefers over this leader has been up
    /// and caught up for `hold`, hands leadership to it (raft-rs sends it the log's tail, then
    /// `TimeoutNow`). With `step_down` (this node may not time leases) any ready replica will
    /// do. Returns the node it was handed to.
    pub fn rebalance(
        &mut self,
        me: u64,
        now: std::time::Instant,
        hold: std::time::Duration,
        alive: impl Fn(u64) -> bool,
        step_down: bool,
    ) -> Option<u64> {
        if !self.is_leader() || self.node.raft.lead_transferee.is_some() {
            self.handover = None;
            return None;
        }
        let last = self.node.raft.raft_log.last_index();
        let prs = self.node.raft.prs();
        // Caught up to within a few entries: a busy partition is never exactly caught up.
        let ready = |n: u64| alive(n) && prs.get(n).is_some_and(|pr| pr.matched + 64 >= last);
        let target = if step_down {
            self.info.step_down_to(me, ready)
        } else {
            self.info.preferred_leader(me, ready)
        };
        match (target, self.handover) {
            (Some(t), Some((was, since))) if t == was => {
                if now.duration_since(since) < hold {
                    return None;
                }
                self.handover = None;
                self.node.transfer_leader(t);
                Some(t)
            }
            (Some(t), _) => {
                self.handover = Some((t, now));
                None
            }
            (None, _) => {
                self.handover = None;
                None
            }
        }
    }

    /// Leadership was lost: every waiter learns it now instead of at its deadline.
    pub fn on_lost_leadership(&mut self) {
        let hint = self.leader_hint();
        for (_, p) in std::mem::take(&mut self.proposals) {
            let _ = p.tx.send(Err(WireError::new(
                ErrorCode::Timeout,
                format!("leadership moved to node {hint} before the write was applied; its outcome is unknown"),
            )));
        }
        for tx in std::mem::take(&mut self.reads_before_term) {
            let _ = tx.send(Err(not_leader(hint)));
        }
        for (_, (tx, _)) in std::mem::take(&mut self.read_requests) {
            let _ = tx.send(Err(not_leader(hint)));
        }
        for (_, tx) in std::mem::take(&mut self.read_ready) {
            let _ = tx.send(Err(not_leader(hint)));
        }
        // Ephemeral state belongs to the leader that made it.
        self.splitting_at = None;
        self.ephemeral = MemStore::default();
        self.ephemeral_grants = 0;
        self.sweep_cursor = None;
    }
}
