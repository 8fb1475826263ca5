//! The wall clock, behind a narrow interface so a simulation can drive time itself, and kept
//! from jumping.
//!
//! A lease is timed by the leader's clock. If that clock jumped forward (an operator, a bad NTP
//! step, a VM resumed), the leader would see leases end early and grant a lock its holder
//! still uses. So this clock follows the wall clock but never runs faster than the monotonic
//! clock plus 1%: a forward step is absorbed over time (a 2 s step over about 200 s, leases
//! meanwhile at most 1% short) instead of at once. A step back makes it wait for the wall clock
//! (the hybrid logical clock above never goes back). A node whose clock stays far from its
//! peers' is caught by `kahuna_core::clock_offsets` and grants no leases.

use std::cell::Cell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub trait Clock {
    /// Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// How much faster than the monotonic clock this clock may run to catch up with the wall
/// clock: 1 part in `SLEW_DIVISOR`.
const SLEW_DIVISOR: u64 = 100;
/// A gap to the wall clock this large is worth a line in the log.
const REPORT_GAP_US: u64 = 100_000;

/// The clock of one shard (readings are per thread: no sharing).
#[derive(Debug, Default)]
pub struct SystemClock {
    /// The last reading, in microseconds, and when it was taken.
    last: Cell<Option<(u64, Instant)>>,
    /// Catching up with a wall clock that jumped ahead (said once per jump).
    behind: Cell<bool>,
}

fn wall_us() -> u64 {
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    // Tests jump this node's clock (`clock_offset_ms=return(5000)`).
    match crate::faults::fired("clock_offset_ms").flatten().and_then(|v| v.parse::<i64>().ok()) {
        Some(off) => now.saturating_add_signed(off.saturating_mul(1000)),
        None => now,
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let (wall, mono) = (wall_us(), Instant::now());
        let ours = match self.last.get() {
            None => wall,
            Some((prev, at)) => {
                let elapsed = mono.duration_since(at).as_micros() as u64;
                let fastest = prev + elapsed + elapsed / SLEW_DIVISOR;
                if wall > fastest + REPORT_GAP_US {
                    if !self.behind.replace(true) {
                        tracing::warn!(
                            "the wall clock jumped {} ms ahead; this node's clock catches up at \
                             1% instead of jumping (leases stay as long as granted)",
                            (wall - fastest) / 1000
                        );
                    }
                } else {
                    self.behind.set(false);
                }
                wall.min(fastest)
            }
        };
        self.last.set(Some((ours, mono)));
        ours / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_wall_clock_and_never_jumps_ahead() {
        let c = SystemClock::default();
        let a = c.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = c.now_ms();
        assert!((15..=60).contains(&(b - a)), "{a} {b}");
        // As if the wall clock had jumped 10 s ahead since the last reading.
        let (prev, at) = c.last.get().unwrap();
        c.last.set(Some((prev - 10_000_000, at)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let d = c.now_ms();
        assert!(d + 9_000 < b + 20, "the clock jumped with the wall clock: {b} -> {d}");
    }
}
