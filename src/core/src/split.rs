//! When a partition splits, and where: pure decisions over numbers the server measures.
//!
//! - **By size**: a led partition whose approximate size on disk passes `--split-size-mb`
//!   splits at the key where half of its bytes lie on either side ([`Halfway`]).
//! - **By load**: a led partition that served more than `--split-load-qps` requests a second,
//!   on average over a window, splits at a key chosen from a sample of the keys it served, so
//!   that about as many requests fall on either side ([`load_split_key`]). One hot key is never
//!   cut: when a single key carries the load, no split helps, and none is made.
//!
//! Owns: the thresholds, the load window, the key sample. Must never: read a clock (seconds
//! come in as arguments) or a disk.

use std::collections::VecDeque;

/// The thresholds, as configured. Zero turns a trigger off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPolicy {
    pub size_bytes: u64,
    pub load_qps: u64,
    pub window_secs: u64,
}

/// Why a partition should split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitReason {
    Size,
    Load,
}

impl SplitReason {
    pub fn name(self) -> &'static str {
        match self {
            SplitReason::Size => "size",
            SplitReason::Load => "load",
        }
    }
}

/// Keys kept in a partition's sample.
pub const SAMPLE_KEYS: usize = 256;

/// The requests a partition served, per second over the last `window_secs`, and a uniform
/// sample (reservoir) of their keys over the same time.
#[derive(Clone, Debug, Default)]
pub struct LoadTracker {
    /// `(second, requests)`, oldest first.
    seconds: VecDeque<(u64, u64)>,
    sample: Vec<Vec<u8>>,
    /// Requests offered to the sample since it was last cleared.
    seen: u64,
}

impl LoadTracker {
    /// Counts one request for `key` at `second`; `random` is any uniformly random number (the
    /// caller's generator), which decides whether the key enters the sample.
    pub fn record(&mut self, key: &[u8], second: u64, random: u64) {
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.seconds.push_back((second, 1)),
        }
        // Keep the window bounded even when nobody asks for the rate.
        while self.seconds.len() > 3600 {
            self.seconds.pop_front();
        }
        self.seen += 1;
        if self.sample.len() < SAMPLE_KEYS {
            self.sample.push(key.to_vec());
        } else {
            let slot = random % self.seen;
            if (slot as usize) < SAMPLE_KEYS {
                self.sample[slot as usize] = key.to_vec();
            }
        }
    }

    /// Requests per second over the `window` seconds before `now` (the current second, still
    /// counting, is left out), and whether the tracker has seen that whole window.
    pub fn rate(&mut self, now: u64, window: u64) -> (u64, bool) {
        let window = window.max(1);
        while self.seconds.front().is_some_and(|(s, _)| s + window < now) {
            self.seconds.pop_front();
        }
        let total: u64 = self
            .seconds
            .iter()
            .filter(|(s, _)| *s < now && s + window >= now)
            .map(|(_, n)| n)
            .sum();
        let full = self.seconds.front().is_some_and(|(s, _)| s + window <= now);
        (total / window, full)
    }

    pub fn sample(&self) -> &[Vec<u8>] {
        &self.sample
    }

    /// Starts over (after a split, or a change of leader: the old numbers describe another
    /// range or another node).
    pub fn clear(&mut self) {
        *self = LoadTracker::default();
    }
}

/// Whether a partition of `size_bytes`, serving `qps` over a window it has seen whole
/// (`full_window`), should split, and why. Size first: it is the lasting reason.
pub fn should_split(
    policy: &SplitPolicy,
    size_bytes: u64,
    qps: u64,
    full_window: bool,
) -> Option<SplitReason> {
    if policy.size_bytes > 0 && size_bytes > policy.size_bytes {
        return Some(SplitReason::Size);
    }
    if policy.load_qps > 0 && full_window && qps > policy.load_qps {
        return Some(SplitReason::Load);
    }
    None
}

/// The key that divides the sampled load of a partition starting at `start` most evenly, when
/// it divides it well enough (each side at least a quarter): `[start, key)` and `[key, end)`.
/// `None` when the sample is too small or one key carries too much of it to divide.
pub fn load_split_key(sample: &[Vec<u8>], start: &[u8]) -> Option<Vec<u8>> {
    if sample.len() < 16 {
        return None;
    }
    let mut keys: Vec<&[u8]> = sample.iter().map(|k| k.as_slice()).collect();
    keys.sort_unstable();
    let n = keys.len();
    let mut best: Option<(usize, &[u8])> = None;
    // A split at a distinct key k puts every sample below k on the left.
    for i in 1..n {
        if keys[i] == keys[i - 1] || keys[i] <= start {
            continue;
        }
        let (left, right) = (i, n - i);
        let skew = left.abs_diff(right);
        if left * 4 >= n && right * 4 >= n && best.is_none_or(|(b, _)| skew < b) {
            best = Some((skew, keys[i]));
        }
    }
    best.map(|(_, k)| k.to_vec())
}

/// Finds the key at which half of a range's bytes lie on either side, walking its keys in
/// order: [`Halfway::feed`] each key with its size until it answers.
#[derive(Clone, Debug)]
pub struct Halfway {
    half: u64,
    seen: u64,
}

impl Halfway {
    /// For a range of `total` bytes.
    pub fn new(total: u64) -> Halfway {
        Halfway { half: total / 2, seen: 0 }
    }

    /// The next key of the range and its bytes; `Some(key)` once the bytes before this key
    /// reach half: split there. The range's first key never answers (nothing would be left).
    pub fn feed(&mut self, key: &[u8], bytes: u64, start: &[u8]) -> Option<Vec<u8>> {
        let at = (self.seen >= self.half && self.seen > 0 && key > start).then(|| key.to_vec());
        self.seen += bytes;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_rate_is_counted_over_whole_past_seconds() {
        let mut t = LoadTracker::default();
        for s in 100..110 {
            for i in 0..50 {
                t.record(format!("k{i}").as_bytes(), s, i);
            }
        }
        // (now, window) -> (qps, whole window seen)
        let cases = [(110, 10, (50, true)), (110, 20, (25, false)), (105, 5, (50, true))];
        for (now, window, want) in cases {
            assert_eq!(t.clone().rate(now, window), want, "now {now}, window {window}");
        }
        // The current second does not count until it is over; old seconds fall out.
        assert_eq!(t.rate(100, 5), (0, false));
        assert_eq!(t.rate(130, 5), (0, false));
        assert_eq!(t.sample().len(), SAMPLE_KEYS);
        t.clear();
        assert!(t.sample().is_empty());
    }

    #[test]
    fn split_decisions_table() {
        let p = SplitPolicy { size_bytes: 100, load_qps: 1000, window_secs: 10 };
        let cases = [
            // (size, qps, full window) -> reason
            (50, 10, true, None),
            (101, 10, true, Some(SplitReason::Size)),
            (101, 5000, true, Some(SplitReason::Size)),
            (50, 1001, true, Some(SplitReason::Load)),
            (50, 1001, false, None),
            (50, 1000, true, None),
        ];
        for (size, qps, full, want) in cases {
            assert_eq!(should_split(&p, size, qps, full), want, "{size} {qps} {full}");
        }
        let off = SplitPolicy { size_bytes: 0, load_qps: 0, window_secs: 10 };
        assert_eq!(should_split(&off, u64::MAX, u64::MAX, true), None);
    }

    fn keys(spec: &[(&str, usize)]) -> Vec<Vec<u8>> {
        spec.iter().flat_map(|(k, n)| std::iter::repeat_n(k.as_bytes().to_vec(), *n)).collect()
    }

    #[test]
    fn the_load_split_key_balances_the_sample_and_never_cuts_one_hot_key() {
        // (sample, partition start) -> split key
        type Case<'a> = (Vec<Vec<u8>>, &'a [u8], Option<&'a [u8]>);
        let cases: Vec<Case> = vec![
            (keys(&[("a", 10), ("b", 10), ("c", 10), ("d", 10)]), b"", Some(b"c")),
            (keys(&[("a", 30), ("b", 10), ("c", 10)]), b"", Some(b"b")),
            // One key carries it all: nothing to divide.
            (keys(&[("hot", 100)]), b"", None),
            // One key carries 90 %: either side of it stays under a quarter.
            (keys(&[("a", 5), ("hot", 90), ("z", 5)]), b"", None),
            // Too small a sample.
            (keys(&[("a", 5), ("b", 5)]), b"", None),
            // Never at the partition's own start.
            (keys(&[("m", 20), ("n", 20)]), b"m", Some(b"n")),
            (keys(&[("m", 20), ("n", 20)]), b"n", None),
        ];
        for (sample, start, want) in cases {
            assert_eq!(load_split_key(&sample, start).as_deref(), want, "{start:?}");
        }
        // Spread keys: the split lands near the middle.
        let spread: Vec<Vec<u8>> = (0..200u32).map(|i| format!("k{i:04}").into_bytes()).collect();
        let k = load_split_key(&spread, b"").unwrap();
        assert_eq!(k, b"k0100".to_vec());
    }

    #[test]
    fn halfway_finds_the_middle_by_bytes() {
        // (keys and sizes, start) -> split key
        type Case<'a> = (Vec<(&'a [u8], u64)>, &'a [u8], Option<&'a [u8]>);
        let cases: Vec<Case> = vec![
            (vec![(b"a", 10), (b"b", 10), (b"c", 10), (b"d", 10)], b"", Some(b"c")),
            (vec![(b"a", 100), (b"b", 1), (b"c", 1)], b"", Some(b"b")),
            // Half of the bytes lie in one key: it cannot be divided.
            (vec![(b"a", 1), (b"b", 1), (b"c", 100)], b"", None),
            (vec![(b"a", 100)], b"", None),
            (vec![(b"m", 0), (b"n", 0)], b"m", None),
        ];
        for (kvs, start, want) in cases {
            let total = kvs.iter().map(|(_, n)| n).sum();
            let mut h = Halfway::new(total);
            let got = kvs.iter().find_map(|(k, n)| h.feed(k, *n, start));
            assert_eq!(got.as_deref(), want, "{kvs:?}");
        }
    }
}
