//! Hybrid logical clock: physical milliseconds in the high 48 bits, a logical counter in the
//! low 16. The leader stamps every proposal with it; replicas evaluate TTLs and leases against
//! the stamp, never against their own clock, so they all decide the same way.
//!
//! The wall clock is passed in (`now_ms`), so this type is deterministic under test.

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hlc(pub u64);

impl Hlc {
    pub fn new(physical_ms: u64, logical: u16) -> Hlc {
        Hlc((physical_ms << LOGICAL_BITS) | logical as u64)
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

/// A clock that never goes backwards and never repeats a value, even when the wall clock does.
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// The next timestamp, given the wall clock reading `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let next = if wall_ms > self.last.physical_ms() {
            Hlc::new(wall_ms, 0)
        } else if self.last.logical() < u16::MAX {
            Hlc(self.last.0 + 1)
        } else {
            // The logical counter is exhausted within one millisecond: borrow the next one.
            Hlc::new(self.last.physical_ms() + 1, 0)
        };
        self.last = next;
        next
    }

    /// Takes in a timestamp seen elsewhere (a replayed or replicated entry), so that every
    /// later `now` is above it.
    pub fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Takes in a timestamp seen elsewhere, but never further ahead than `max_offset_ms` past
    /// the local wall clock `wall_ms`: a node with a fast clock must not drag every other node's
    /// clock (and so every lease and TTL) forward with it. Returns how far ahead of the bound
    /// `seen` was when it had to be cut (0 when taken whole).
    pub fn observe_bounded(&mut self, seen: Hlc, wall_ms: u64, max_offset_ms: u64) -> u64 {
        let limit = wall_ms.saturating_add(max_offset_ms);
        if seen.physical_ms() > limit {
            self.observe(Hlc::new(limit, 0));
            seen.physical_ms() - limit
        } else {
            self.observe(seen);
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increases_even_when_the_wall_clock_stalls_or_steps_back() {
        let mut c = HlcClock::default();
        let a = c.now(1000);
        let b = c.now(1000);
        let d = c.now(900);
        assert!(a < b && b < d);
        assert_eq!(d.physical_ms(), 1000);
        let e = c.now(2000);
        assert_eq!(e, Hlc::new(2000, 0));
    }

    #[test]
    fn observe_moves_the_clock_forward_only() {
        let mut c = HlcClock::default();
        c.observe(Hlc::new(5000, 3));
        assert_eq!(c.now(10), Hlc::new(5000, 4));
        c.observe(Hlc::new(1, 0));
        assert!(c.now(10) > Hlc::new(5000, 4));
    }

    #[test]
    fn timestamps_from_a_fast_clock_are_taken_only_up_to_the_offset() {
        // (seen physical ms, wall ms, max offset) -> (cut by, clock's physical ms after)
        let cases = [
            (1_300, 1_000, 500, 0, 1_300),
            (1_500, 1_000, 500, 0, 1_500),
            (6_000, 1_000, 500, 4_500, 1_500),
            (900, 1_000, 500, 0, 900),
        ];
        for (seen, wall, max, cut, after) in cases {
            let mut c = HlcClock::default();
            assert_eq!(c.observe_bounded(Hlc::new(seen, 0), wall, max), cut, "{seen} at {wall}");
            assert_eq!(c.last().physical_ms(), after);
        }
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = HlcClock::default();
        c.observe(Hlc::new(7, u16::MAX));
        assert_eq!(c.now(7), Hlc::new(8, 0));
    }
}
