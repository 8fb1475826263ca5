//! Histories of client operations and the checkers that judge them.
//!
//! A test that drives clients records every operation it invokes: when it was invoked, when it
//! returned and what came back. An operation whose outcome the client could not learn (a write
//! answered `TIMEOUT`) is recorded as *unknown*: it may have taken effect at any point after its
//! invocation, or never. The checkers then judge the whole history, not examples:
//!
//! * [`check_kv`]: linearizability of every key's register (set, compare-and-set, delete, get),
//!   with revisions, by the Wing-Gong search with Lowe's cache of visited configurations (the
//!   algorithm of Porcupine and Knossos), one key at a time;
//! * [`check_locks`]: one token per grant, tokens increasing in real-time order, holders whose
//!   critical sections never overlap, and a fenced store that never accepted a smaller token
//!   after a larger one;
//! * [`check_sequences`]: acknowledged blocks pairwise disjoint and increasing in real time.
//!
//! Each checker is itself tested below on histories with a planted bug.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kahuna_client::blocking::Client;
use kahuna_client::{DeleteOptions, ErrorCode, GetOptions, SetOptions, WireError};

/// A condition on a set, as the model understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    None,
    IfRevision(u64),
    IfNotExists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCall {
    Get,
    Set { value: u64, cond: Cond },
    Delete { expected_revision: u64 },
}

/// What came back. Failures that provably had no effect are not recorded at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvRet {
    /// `(value, revision)`, or `None` for NOT_FOUND.
    Get(Option<(u64, u64)>),
    Set(u64),
    Delete {
        deleted: bool,
        revision: u64,
    },
    Conflict,
    /// The write may or may not have been applied.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct KvOp {
    pub client: usize,
    pub key: String,
    pub call: KvCall,
    pub ret: KvRet,
    /// Nanoseconds since the history began.
    pub invoke: u64,
    /// `None` for an unknown outcome: it may take effect any time after `invoke`.
    pub complete: Option<u64>,
}

/// A shared, thread-safe history of one test run.
#[derive(Clone)]
pub struct History {
    start: Instant,
    kv: Arc<Mutex<Vec<KvOp>>>,
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl Default for History {
    fn default() -> Self {
        History { start: Instant::now(), kv: Arc::default(), counts: Arc::default() }
    }
}

/// How an error counts in a history: no effect, or an unknown outcome (writes only).
fn no_effect(e: &WireError) -> bool {
    e.code != ErrorCode::Timeout && e.code != ErrorCode::Internal
}

impl History {
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn count(&self, what: &'static str) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }

    /// Operations by outcome so far: `ok`, `fail` (no effect), `unknown`.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().unwrap().clone()
    }

    pub fn kv_ops(&self) -> Vec<KvOp> {
        self.kv.lock().unwrap().clone()
    }

    /// Records an operation that was invoked at `invoke` and returned now with `ret`.
    pub fn record(&self, client: usize, key: &str, call: KvCall, invoke: u64, ret: Option<KvRet>) {
        let Some(ret) = ret else {
            self.count("fail");
            return;
        };
        let complete = if ret == KvRet::Unknown { None } else { Some(self.now()) };
        self.count(if complete.is_some() { "ok" } else { "unknown" });
        self.kv.lock().unwrap().push(KvOp {
            client,
            key: key.to_string(),
            call,
            ret,
            invoke,
            complete,
        });
    }

    /// `kv get` through `c`, recorded. A failed read had no effect and is left out.
    pub fn get(
        &self,
        c: &Client,
        client: usize,
        key: &str,
    ) -> Result<Option<(u64, u64)>, WireError> {
        let invoke = self.now();
        let r = c.kv_get(key.as_bytes(), GetOptions::default());
        let ret = match &r {
            Ok(it) => Some(KvRet::Get(Some((value_of(&it.value), it.revision)))),
            Err(e) if e.code == ErrorCode::NotFound => Some(KvRet::Get(None)),
            Err(_) => None,
        };
        self.record(client, key, KvCall::Get, invoke, ret);
        match r {
            Ok(it) => Ok(Some((value_of(&it.value), it.revision))),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `kv set` (plain or conditional) of the value `value` through `c`, recorded.
    pub fn set(
        &self,
        c: &Client,
        client: usize,
        key: &str,
        value: u64,
        cond: Cond,
    ) -> Result<u64, WireError> {
        let opts = match cond {
            Cond::None => SetOptions::default(),
            Cond::IfRevision(r) => SetOptions::default().if_revision(r),
            Cond::IfNotExists => SetOptions::default().if_not_exists(),
        };
        let invoke = self.now();
        let r = c.kv_set(key.as_bytes(), &value.to_le_bytes(), opts);
        let ret = match &r {
            Ok(rev) => Some(KvRet::Set(*rev)),
            Err(e) if e.code == ErrorCode::Conflict => Some(KvRet::Conflict),
            Err(e) if no_effect(e) => None,
            Err(_) => Some(KvRet::Unknown),
        };
        self.record(client, key, KvCall::Set { value, cond }, invoke, ret);
        r
    }

    /// `kv delete` through `c`, recorded.
    pub fn delete(
        &self,
        c: &Client,
        client: usize,
        key: &str,
        expected_revision: u64,
    ) -> Result<(bool, u64), WireError> {
        let invoke = self.now();
        let r =
            c.kv_delete(key.as_bytes(), DeleteOptions { expected_revision, ..Default::default() });
        let ret = match &r {
            Ok((deleted, revision)) => {
                Some(KvRet::Delete { deleted: *deleted, revision: *revision })
            }
            Err(e) if e.code == ErrorCode::Conflict => Some(KvRet::Conflict),
            Err(e) if no_effect(e) => None,
            Err(_) => Some(KvRet::Unknown),
        };
        self.record(client, key, KvCall::Delete { expected_revision }, invoke, ret);
        r
    }
}

/// Values in checked histories are u64s written as 8 little-endian bytes (unique per write).
pub fn value_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX)
}

/// The register of one key: its value (`None` = absent or deleted) and its revision, which
/// every applied write (a delete included) bumps by one.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
struct Reg {
    value: Option<u64>,
    revision: u64,
}

/// The model: the state after `call` returned `ret` in state `s`, or `None` if it could not.
fn step(s: Reg, call: &KvCall, ret: &KvRet) -> Option<Reg> {
    let live_rev = if s.value.is_some() { s.revision } else { 0 };
    match call {
        KvCall::Get => match ret {
            KvRet::Get(None) => s.value.is_none().then_some(s),
            KvRet::Get(Some((v, r))) => (s.value == Some(*v) && s.revision == *r).then_some(s),
            KvRet::Unknown => Some(s),
            _ => None,
        },
        KvCall::Set { value, cond } => {
            let applies = match cond {
                Cond::None => true,
                Cond::IfRevision(r) => live_rev == *r,
                Cond::IfNotExists => s.value.is_none(),
            };
            if applies {
                let new = Reg { value: Some(*value), revision: s.revision + 1 };
                match ret {
                    KvRet::Set(r) if *r == new.revision => Some(new),
                    KvRet::Unknown => Some(new),
                    _ => None,
                }
            } else {
                matches!(ret, KvRet::Conflict | KvRet::Unknown).then_some(s)
            }
        }
        KvCall::Delete { expected_revision } => {
            if *expected_revision != 0 && live_rev != *expected_revision {
                return matches!(ret, KvRet::Conflict | KvRet::Unknown).then_some(s);
            }
            if s.value.is_none() {
                return matches!(ret, KvRet::Delete { deleted: false, .. } | KvRet::Unknown)
                    .then_some(s);
            }
            let new = Reg { value: None, revision: s.revision + 1 };
            match ret {
                KvRet::Delete { deleted: true, revision } if *revision == new.revision => Some(new),
                KvRet::Unknown => Some(new),
                _ => None,
            }
        }
    }
}

/// Visited configurations the search may hold before it gives up (a verdict of "too big to
/// check" fails the test too: a checker that cannot decide has not shown anything).
const SEARCH_BUDGET: usize = 5_000_000;

/// Why a history is not linearizable, and where (nanoseconds since it began) the search got
/// stuck, to show the operations around it.
#[derive(Debug)]
pub struct Violation {
    pub message: String,
    pub at_ns: u64,
}

/// Linearizability of one key's history, starting from an absent key at revision 0.
/// `Err` explains the first operation that could not be placed.
pub fn check_register(ops: &[KvOp]) -> Result<(), Violation> {
    // Events in time order: calls before returns at equal times (treated as concurrent).
    // Unknown outcomes return "at infinity": after every other event.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, i));
        events.push((op.complete.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    // A doubly linked list over the events; 0 is the head sentinel.
    let n = events.len() + 1;
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    next[n - 1] = usize::MAX;
    let mut ret_of = vec![0usize; ops.len()];
    for (pos, (_, is_ret, op)) in events.iter().enumerate() {
        if *is_ret {
            ret_of[*op] = pos + 1;
        }
    }
    let node = |pos: usize| events[pos - 1];
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = q;
        if q != usize::MAX {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = at;
        if q != usize::MAX {
            prev[q] = at;
        }
    };
    // Every revision an acknowledged write produced: each is produced once, so an operation
    // whose outcome is unknown cannot be the write that produced one of them.
    let acknowledged: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.ret {
            KvRet::Set(r) | KvRet::Delete { deleted: true, revision: r } => Some(r),
            _ => None,
        })
        .collect();
    // What a read saw at a revision: a revision has one value, so an operation whose outcome
    // is unknown cannot have written another one there.
    let seen: HashMap<u64, u64> = ops
        .iter()
        .filter_map(|o| match o.ret {
            KvRet::Get(Some((v, r))) => Some((r, v)),
            _ => None,
        })
        .collect();
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Reg)> = HashSet::new();
    let mut stack: Vec<(usize, Reg)> = Vec::new();
    let mut state = Reg::default();
    let mut at = next[0];
    let mut deepest = 0usize;
    let mut deepest_at = 0u64;
    while next[0] != usize::MAX {
        if cache.len() > SEARCH_BUDGET {
            let message = format!("gave up after {SEARCH_BUDGET} configurations");
            return Err(Violation { message, at_ns: deepest_at });
        }
        let (_, is_ret, op) = node(at);
        if !is_ret {
            if let Some(new) = step(state, &ops[op].call, &ops[op].ret) {
                // An operation whose outcome is unknown can always be placed last (nothing
                // after it observes it), so placing it here where it changes nothing (a failed
                // condition, a read) explains nothing more: skip that branch. Without this,
                // k such operations pending together multiply the search by 2^k.
                // Nor where it would take a revision an acknowledged write produced.
                let taken = new.revision != state.revision
                    && (acknowledged.contains(&new.revision)
                        || seen.get(&new.revision).is_some_and(|v| new.value != Some(*v)));
                if ops[op].complete.is_none() && (new == state || taken) {
                    at = next[at];
                    continue;
                }
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), new)) {
                    stack.push((at, state));
                    if stack.len() > deepest {
                        deepest = stack.len();
                        deepest_at = ops[op].invoke;
                    }
                    state = new;
                    linearized = lin;
                    unlink(&mut next, &mut prev, at);
                    unlink(&mut next, &mut prev, ret_of[op]);
                    at = next[0];
                    continue;
                }
            }
            at = next[at];
        } else {
            if ops[op].complete.is_none() {
                // The earliest pending return is "at infinity": every operation that came back
                // is placed, and those whose outcome is unknown can all go last (or never).
                return Ok(());
            }
            // The earliest pending return: some call before it must be placed differently.
            let Some((call_at, s)) = stack.pop() else {
                let (_, _, stuck) = node(at);
                let message = format!(
                    "not linearizable: at most {deepest} of {} operations could be placed, the \
                     last of them invoked at {:.3} ms; then no order explains what follows (the \
                     first pending answer: {:?} -> {:?} of client {})",
                    ops.len(),
                    deepest_at as f64 / 1e6,
                    ops[stuck].call,
                    ops[stuck].ret,
                    ops[stuck].client,
                );
                return Err(Violation { message, at_ns: deepest_at });
            };
            let (_, _, op) = node(call_at);
            relink(&mut next, &mut prev, ret_of[op]);
            relink(&mut next, &mut prev, call_at);
            linearized[op / 64] &= !(1 << (op % 64));
            state = s;
            at = next[call_at];
        }
    }
    Ok(())
}

/// Checks every key of a history; `Err` lists the keys that are not linearizable, each with
/// its operations (up to a bound) so the failure can be read.
pub fn check_kv(ops: &[KvOp]) -> Result<usize, String> {
    let mut by_key: BTreeMap<&str, Vec<KvOp>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut bad = Vec::new();
    for (key, ops) in &by_key {
        if let Err(v) = check_register(ops) {
            let mut text = format!("key {key}: {}\n", v.message);
            let mut sorted = ops.clone();
            sorted.sort_by_key(|o| o.invoke);
            // The operations around where the search got stuck.
            let from = sorted.iter().position(|o| o.invoke + 100_000_000 >= v.at_ns).unwrap_or(0);
            for o in sorted.iter().skip(from).take(60) {
                text.push_str(&format!(
                    "  c{} [{:>9.3} ms .. {}] {:?} -> {:?}\n",
                    o.client,
                    o.invoke as f64 / 1e6,
                    o.complete.map(|c| format!("{:.3} ms", c as f64 / 1e6)).unwrap_or("?".into()),
                    o.call,
                    o.ret
                ));
            }
            bad.push(text);
        }
    }
    if bad.is_empty() {
        Ok(by_key.len())
    } else {
        Err(format!(
            "{} of {} keys are not linearizable:\n{}",
            bad.len(),
            by_key.len(),
            bad.join("\n")
        ))
    }
}

/// One lock grant as its holder used it.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    pub holder: usize,
    pub token: u64,
    /// When the acquire was sent (the lease counts from here, as the holder must assume).
    pub invoke: Instant,
    /// When the grant came back: the critical section starts here.
    pub from: Instant,
    /// When the holder stopped acting as the holder: it sent its release, or its lease (counted
    /// from `invoke`) ran out, whichever came first.
    pub until: Instant,
}

/// A storage service that protects itself with fencing tokens: it accepts a write carrying a
/// token at least as high as every token it accepted before, and refuses the others. Holders
/// write only while their lease (counted from when they asked) runs, so a refusal means a holder
/// acted after a newer grant had written: two holders at once.
#[derive(Default)]
pub struct FencedStore {
    /// `(highest token accepted, every write tried: (token, accepted))`, in order.
    log: Mutex<(u64, Vec<(u64, bool)>)>,
}

impl FencedStore {
    /// Returns whether the write was accepted.
    pub fn write(&self, token: u64) -> bool {
        let mut log = self.log.lock().unwrap();
        let ok = token >= log.0;
        if ok {
            log.0 = token;
        }
        log.1.push((token, ok));
        ok
    }

    /// Every write tried, in order: `(token, accepted)`.
    pub fn writes(&self) -> Vec<(u64, bool)> {
        self.log.lock().unwrap().1.clone()
    }
}

/// Judges the grants of one lock: each token belongs to one holder; a grant that came back
/// before another was asked for has a smaller token; critical sections of different tokens do
/// not overlap; and the fenced store refused no holder's write (`writes`: `(token, accepted)`
/// in the order they were tried).
pub fn check_locks(grants: &[Grant], writes: &[(u64, bool)]) -> Result<(), String> {
    let mut owner_of: HashMap<u64, usize> = HashMap::new();
    for g in grants {
        if let Some(h) = owner_of.insert(g.token, g.holder) {
            if h != g.holder {
                return Err(format!(
                    "token {} was granted to holders {h} and {}",
                    g.token, g.holder
                ));
            }
        }
    }
    for a in grants {
        for b in grants {
            if a.token == b.token {
                continue;
            }
            if a.from < b.invoke && a.token > b.token {
                return Err(format!(
                    "token {} was granted before token {} was asked for: {a:?} {b:?}",
                    a.token, b.token
                ));
            }
            let (first, second) = if a.token < b.token { (a, b) } else { (b, a) };
            if first.until > second.from && first.from < second.until {
                return Err(format!(
                    "holders overlap: token {} held until {:?} after token {} was granted: {first:?} {second:?}",
                    first.token,
                    first.until.duration_since(second.from),
                    second.token
                ));
            }
        }
    }
    if let Some((token, _)) = writes.iter().find(|(_, ok)| !ok) {
        let before = writes.iter().take_while(|(t, _)| t != token).map(|(t, _)| *t).max();
        return Err(format!(
            "the fenced store refused a write with token {token}: a holder acted after a newer \
             grant (token {}) had written",
            before.unwrap_or(0)
        ));
    }
    Ok(())
}

/// One acknowledged block of a sequence: `[first, first + count)`.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub first: u64,
    pub count: u64,
    pub invoke: Instant,
    pub complete: Instant,
}

/// Acknowledged blocks never overlap, and a block that came back before another was asked for
/// lies below it.
pub fn check_sequences(blocks: &[Block]) -> Result<(), String> {
    let mut sorted = blocks.to_vec();
    sorted.sort_by_key(|b| b.first);
    for w in sorted.windows(2) {
        if w[0].first + w[0].count > w[1].first {
            return Err(format!("blocks overlap: {:?} and {:?}", w[0], w[1]));
        }
    }
    for a in blocks {
        for b in blocks {
            if a.complete < b.invoke && a.first >= b.first {
                return Err(format!("a later block is not above an earlier one: {a:?} then {b:?}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn op(client: usize, call: KvCall, ret: KvRet, invoke: u64, complete: Option<u64>) -> KvOp {
        KvOp { client, key: "k".into(), call, ret, invoke, complete }
    }

    fn set(v: u64) -> KvCall {
        KvCall::Set { value: v, cond: Cond::None }
    }

    #[test]
    fn a_correct_concurrent_history_passes() {
        let h = vec![
            op(0, set(1), KvRet::Set(1), 0, Some(10)),
            // Concurrent with each other: either order explains the reads.
            op(1, set(2), KvRet::Set(3), 20, Some(40)),
            op(2, set(3), KvRet::Set(2), 21, Some(41)),
            op(3, KvCall::Get, KvRet::Get(Some((2, 3))), 50, Some(60)),
            // A compare-and-set on the current revision, and one on a stale one.
            op(0, KvCall::Set { value: 4, cond: Cond::IfRevision(3) }, KvRet::Set(4), 70, Some(80)),
            op(
                1,
                KvCall::Set { value: 5, cond: Cond::IfRevision(3) },
                KvRet::Conflict,
                71,
                Some(81),
            ),
            // An unknown write, then reads that see it or not, either is fine... until one does.
            op(2, set(6), KvRet::Unknown, 90, None),
            op(3, KvCall::Get, KvRet::Get(Some((4, 4))), 100, Some(110)),
            op(3, KvCall::Get, KvRet::Get(Some((6, 5))), 120, Some(130)),
            op(
                0,
                KvCall::Delete { expected_revision: 5 },
                KvRet::Delete { deleted: true, revision: 6 },
                140,
                Some(150),
            ),
            op(1, KvCall::Get, KvRet::Get(None), 160, Some(170)),
            op(2, KvCall::Set { value: 7, cond: Cond::IfNotExists }, KvRet::Set(7), 180, Some(190)),
        ];
        check_register(&h).unwrap();
    }

    #[test]
    fn many_unknown_outcomes_keep_the_search_small_and_still_explain_reads() {
        // 30 compare-and-sets on a stale revision whose answers were lost (each a no-op
        // wherever it goes) and one lost write that never applied, all pending over 400 known
        // writes and reads: every place the lost write is tried fails further on, and without
        // pruning the no-op placements each failure is retried with every subset of them
        // (2^30: the search gave up; a chaos run met this).
        let mut h = vec![op(8, set(999), KvRet::Unknown, 0, None)];
        for i in 0..30u64 {
            let stale = KvCall::Set { value: 1000 + i, cond: Cond::IfRevision(1_000_000) };
            h.push(op(9, stale, KvRet::Unknown, 1 + i, None));
        }
        for r in 1..=200u64 {
            h.push(op(0, set(r), KvRet::Set(r), 100 + 20 * r, Some(105 + 20 * r)));
            h.push(op(1, KvCall::Get, KvRet::Get(Some((r, r))), 110 + 20 * r, Some(115 + 20 * r)));
        }
        let t = std::time::Instant::now();
        check_register(&h).unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
        // Lost writes among 300 acknowledged ones whose revisions leave them no room: the
        // search no longer tries each of them at every step.
        let mut h = Vec::new();
        for c in 0..6u64 {
            h.push(op(10 + c as usize, set(5000 + c), KvRet::Unknown, c, None));
        }
        for r in 1..=300u64 {
            let t = 100 + 20 * r;
            h.push(op((r % 5) as usize, set(r), KvRet::Set(r), t, Some(t + 30)));
            h.push(op(5, KvCall::Get, KvRet::Get(Some((r, r))), t + 31, Some(t + 35)));
        }
        let t = std::time::Instant::now();
        check_register(&h).unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
        // An unknown write that a later read saw is still placed where it explains it.
        let h = vec![
            op(0, set(1), KvRet::Set(1), 0, Some(10)),
            op(2, set(9), KvRet::Unknown, 12, None),
            op(1, KvCall::Get, KvRet::Get(Some((9, 2))), 20, Some(30)),
            op(0, set(3), KvRet::Set(3), 40, Some(50)),
        ];
        check_register(&h).unwrap();
    }

    #[test]
    fn a_planted_stale_read_is_flagged() {
        let h = vec![
            op(0, set(1), KvRet::Set(1), 0, Some(10)),
            op(0, set(2), KvRet::Set(2), 20, Some(30)),
            // Invoked after the second write returned, yet sees the first.
            op(1, KvCall::Get, KvRet::Get(Some((1, 1))), 40, Some(50)),
        ];
        let e = check_register(&h).unwrap_err();
        assert!(e.message.contains("not linearizable"), "{e:?}");
        // The same stale read among 30 lost compare-and-sets and lost writes, which the
        // prunings skip or leave unplaced: they explain nothing, and it is still flagged.
        let mut h = h;
        for i in 0..30u64 {
            let stale = KvCall::Set { value: 1000 + i, cond: Cond::IfRevision(1_000_000) };
            h.push(op(9, stale, KvRet::Unknown, 1 + i, None));
        }
        h.push(op(8, set(7), KvRet::Unknown, 35, None));
        h.push(op(7, set(1), KvRet::Unknown, 36, None));
        let e = check_register(&h).unwrap_err();
        assert!(e.message.contains("not linearizable"), "{e:?}");
    }

    #[test]
    fn a_planted_lost_write_is_flagged() {
        let h = vec![
            op(0, set(1), KvRet::Set(1), 0, Some(10)),
            op(1, KvCall::Get, KvRet::Get(None), 20, Some(30)),
        ];
        assert!(check_register(&h).is_err());
        // Also when the read comes much later, after other clients' unknown writes.
        let h = vec![
            op(0, set(1), KvRet::Set(1), 0, Some(10)),
            op(2, set(9), KvRet::Unknown, 12, None),
            op(1, KvCall::Get, KvRet::Get(Some((9, 1))), 20, Some(30)),
        ];
        assert!(check_register(&h).is_err(), "an acknowledged revision was reused");
    }

    #[test]
    fn a_planted_duplicated_cas_is_flagged() {
        // The client re-sent a compare-and-set that had been applied: the retry answered
        // CONFLICT although nothing else wrote the key.
        let cas = KvCall::Set { value: 2, cond: Cond::IfRevision(1) };
        let h = vec![
            op(0, set(1), KvRet::Set(1), 0, Some(10)),
            op(0, cas.clone(), KvRet::Conflict, 20, Some(30)),
            op(1, KvCall::Get, KvRet::Get(Some((2, 2))), 40, Some(50)),
        ];
        assert!(check_register(&h).is_err());
        // Or a plain write applied twice: a read sees its value at two revisions.
        let h = vec![
            op(0, set(1), KvRet::Set(1), 0, Some(10)),
            op(1, KvCall::Get, KvRet::Get(Some((1, 2))), 20, Some(30)),
        ];
        assert!(check_register(&h).is_err());
    }

    #[test]
    fn lock_checker_flags_overlap_shared_tokens_and_fencing_regressions() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let g = |holder, token, from: u64, until: u64| Grant {
            holder,
            token,
            invoke: at(from.saturating_sub(1)),
            from: at(from),
            until: at(until),
        };
        let ok = |ts: &[u64]| ts.iter().map(|t| (*t, true)).collect::<Vec<_>>();
        check_locks(&[g(0, 1, 10, 20), g(1, 2, 25, 30), g(0, 3, 31, 40)], &ok(&[1, 2, 3])).unwrap();
        assert!(check_locks(&[g(0, 1, 10, 30), g(1, 2, 25, 40)], &[])
            .unwrap_err()
            .contains("overlap"));
        assert!(check_locks(&[g(0, 5, 10, 20), g(1, 5, 25, 40)], &[])
            .unwrap_err()
            .contains("granted to"));
        assert!(check_locks(&[g(0, 9, 10, 20), g(1, 2, 25, 40)], &[])
            .unwrap_err()
            .contains("before"));
        let store = FencedStore::default();
        assert!(store.write(3) && store.write(3) && !store.write(2) && store.write(4));
        assert_eq!(store.writes(), vec![(3, true), (3, true), (2, false), (4, true)]);
        assert!(check_locks(&[], &store.writes()).unwrap_err().contains("refused"));
    }

    #[test]
    fn sequence_checker_flags_overlaps_and_regressions() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let b =
            |first, count, i: u64, c: u64| Block { first, count, invoke: at(i), complete: at(c) };
        check_sequences(&[b(1, 10, 0, 5), b(11, 5, 6, 9), b(100, 1, 7, 8)]).unwrap();
        assert!(check_sequences(&[b(1, 10, 0, 5), b(5, 5, 6, 9)]).unwrap_err().contains("overlap"));
        assert!(check_sequences(&[b(50, 1, 0, 5), b(10, 1, 6, 9)]).unwrap_err().contains("later"));
    }
}
