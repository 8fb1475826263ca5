//! The wall clock, behind a narrow interface so a simulation can drive time itself.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock {
    /// Unix milliseconds.
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        // Tests jump this node's clock (`clock_offset_ms=return(5000)`).
        match crate::faults::fired("clock_offset_ms").flatten().and_then(|v| v.parse::<i64>().ok())
        {
            Some(off) => now.saturating_add_signed(off),
            None => now,
        }
    }
}
