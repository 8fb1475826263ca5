//! The wall clock, behind a narrow interface so a simulation can drive time itself, and the
//! detection of a clock that jumps forward.
//!
//! A lease is timed by the leader's clock. If that clock jumps forward (an operator, a bad NTP
//! step, a VM resumed), the leader would see leases end early and grant a lock that its holder
//! still uses. Peers notice an offset within a second or so (`kahuna_core::clock_offsets`);
//! here the jump is noticed at once, on the very reading that shows it: every reading compares
//! how far the wall clock moved with how far the monotonic clock moved.

use std::cell::Cell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub trait Clock {
    /// Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// A forward step of the wall clock larger than this (beyond the monotonic clock's advance)
/// is a jump. NTP slews by parts per million; only a step gets near this.
pub const JUMP_MS: u64 = 50;

/// The system clock of one shard (readings are per thread: no sharing).
#[derive(Debug, Default)]
pub struct SystemClock {
    last: Cell<Option<(u64, Instant)>>,
    /// The wall time just after the last forward jump seen, until the peers confirm the clock.
    jumped_at: Cell<Option<u64>>,
}

impl SystemClock {
    /// When the wall clock last jumped forward, if that is not yet cleared.
    pub fn jumped_at(&self) -> Option<u64> {
        self.jumped_at.get()
    }

    /// Peers measured this clock near theirs after the jump: forget it.
    pub fn clear_jump(&self) {
        self.jumped_at.set(None);
    }
}

fn wall_ms() -> u64 {
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    // Tests jump this node's clock (`clock_offset_ms=return(5000)`).
    match crate::faults::fired("clock_offset_ms").flatten().and_then(|v| v.parse::<i64>().ok()) {
        Some(off) => now.saturating_add_signed(off),
        None => now,
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let (wall, mono) = (wall_ms(), Instant::now());
        if let Some((last_wall, last_mono)) = self.last.get() {
            let moved = mono.duration_since(last_mono).as_millis() as u64;
            if wall > last_wall + moved + JUMP_MS {
                log::error!(
                    "the wall clock jumped {} ms forward; no leases are granted until the peers \
                     confirm this node's clock",
                    wall - last_wall - moved
                );
                self.jumped_at.set(Some(wall));
            }
        }
        self.last.set(Some((wall, mono)));
        wall
    }
}
