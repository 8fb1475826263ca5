//! How far this node's clock is from its peers', and whether it may still time leases.
//!
//! Each node pings every peer once a second with its wall clock reading `t0`; the peer answers
//! with its own reading `t1`; back home at `t2`, the peer's offset is `t1 - (t0 + t2) / 2`,
//! known to within half the round trip. Kahuna assumes clocks within `max_offset_ms` of each
//! other (as CockroachDB does). A node whose clock is further than that from *most* of its
//! peers is the odd one out: it stops granting leases until it is back, and says so in
//! `cluster status`. A peer whose own clock is off shows up as one far peer among near ones,
//! and changes nothing here.
//!
//! Pure: readings come in as arguments.

use std::collections::BTreeMap;

/// Samples older than this are ignored (a peer that stopped answering tells nothing).
pub const SAMPLE_TTL_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The peer's clock minus ours, in ms.
    pub offset_ms: i64,
    /// Half the round trip: the offset is known to within this.
    pub uncertainty_ms: u64,
    /// Our wall clock when the sample was taken.
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ClockOffsets {
    samples: BTreeMap<u64, Sample>,
}

/// What the samples say of this node's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockVerdict {
    /// Peers with a fresh sample.
    pub known: usize,
    /// Of those, peers certainly further than the maximum offset.
    pub far: usize,
    /// The median of the fresh offsets (0 with none): how far the others are from us.
    pub median_offset_ms: i64,
    /// This node may time leases: its clock is not off from most of its peers.
    pub ok: bool,
}

impl ClockOffsets {
    /// A ping sent at our `t0` was answered with the peer's `t1` and came back at our `t2`.
    pub fn record(&mut self, peer: u64, t0: u64, t1: u64, t2: u64) {
        if t2 < t0 {
            return; // our clock stepped back meanwhile: the round trip means nothing
        }
        let mid = (t0 as i128 + t2 as i128) / 2;
        let sample = Sample {
            offset_ms: (t1 as i128 - mid) as i64,
            uncertainty_ms: (t2 - t0).div_ceil(2),
            at_ms: t2,
        };
        self.samples.insert(peer, sample);
    }

    pub fn get(&self, peer: u64) -> Option<Sample> {
        self.samples.get(&peer).copied()
    }

    /// The verdict at our clock's `now_ms`, for a node with `peers` other members.
    pub fn verdict(&self, now_ms: u64, max_offset_ms: u64, peers: usize) -> ClockVerdict {
        let fresh: Vec<&Sample> = self
            .samples
            .values()
            .filter(|s| now_ms.saturating_sub(s.at_ms) <= SAMPLE_TTL_MS && s.at_ms <= now_ms)
            .collect();
        let far = fresh
            .iter()
            .filter(|s| s.offset_ms.unsigned_abs().saturating_sub(s.uncertainty_ms) > max_offset_ms)
            .count();
        let mut offsets: Vec<i64> = fresh.iter().map(|s| s.offset_ms).collect();
        offsets.sort_unstable();
        let median_offset_ms = offsets.get(offsets.len() / 2).copied().unwrap_or(0);
        // Trusted only once measured against enough peers to be a majority with this node,
        // and not found far from most of them: a node that just started with a bad clock
        // grants nothing until it knows.
        let needed = peers.div_ceil(2);
        let ok = fresh.len() >= needed && far * 2 <= fresh.len();
        ClockVerdict { known: fresh.len(), far, median_offset_ms, ok }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_from_round_trips() {
        let mut c = ClockOffsets::default();
        // Sent at 1000, the peer read 1510, back at 1020: the peer is 500 ahead, give or take 10.
        c.record(2, 1000, 1510, 1020);
        assert_eq!(c.get(2), Some(Sample { offset_ms: 500, uncertainty_ms: 10, at_ms: 1020 }));
        c.record(3, 1000, 400, 1010);
        assert_eq!(c.get(3).unwrap().offset_ms, -605);
        // A round trip across a step back of our clock is ignored.
        c.record(4, 1000, 1000, 900);
        assert_eq!(c.get(4), None);
    }

    #[test]
    fn a_node_is_off_when_most_of_its_peers_are_far() {
        // (offsets of the peers in ms, uncertainty, peers in the cluster) -> ok
        let max = 500;
        let cases: &[(&[i64], u64, usize, bool)] = &[
            (&[], 0, 2, false),              // nothing known yet: no leases
            (&[], 0, 0, true),               // no peers: nothing to compare with
            (&[10], 1, 2, true),             // one of two peers (the other down) agrees
            (&[10, -20], 1, 2, true),        // all near
            (&[2000, 10], 1, 2, true),       // one peer is off: its problem, not ours
            (&[2000, 2100], 1, 2, false),    // both peers see us far: our clock is off
            (&[2000], 1, 2, false),          // the only peer we hear sees us far
            (&[-3000, -2900], 1, 2, false),  // far behind counts too
            (&[600, 600], 150, 2, true),     // within the uncertainty of slow round trips
            (&[800, 900, 5, 1], 1, 4, true), // two far of four: not most
            (&[800, 900, 5], 1, 4, false),   // two far of the three we hear
            (&[5], 1, 4, false),             // one of four: not enough to be a majority
            (&[900], 1, 1, false),           // two nodes: each sees the other far
        ];
        for (offsets, unc, peers, ok) in cases {
            let mut c = ClockOffsets::default();
            for (i, off) in offsets.iter().enumerate() {
                let t0 = 10_000;
                let t2 = t0 + 2 * unc;
                c.record(i as u64 + 2, t0, (t0 as i64 + *unc as i64 + off) as u64, t2);
            }
            let v = c.verdict(10_500, max, *peers);
            assert_eq!(v.ok, *ok, "{offsets:?} ±{unc} of {peers}: {v:?}");
        }
    }

    #[test]
    fn stale_samples_do_not_count() {
        let mut c = ClockOffsets::default();
        c.record(2, 0, 5000, 0);
        c.record(3, 0, 5000, 0);
        assert!(!c.verdict(100, 500, 2).ok);
        let later = c.verdict(SAMPLE_TTL_MS + 1, 500, 2);
        assert!(!later.ok && later.known == 0, "stale samples tell nothing: {later:?}");
    }
}
