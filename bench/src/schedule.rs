//! Open-loop pacing: each worker sends at fixed intended times, and latency is measured from
//! the intended time, not the actual send. A stalled server therefore shows up as the queueing
//! delay it causes (no coordinated omission), as wrk2 and memtier do.

use std::time::{Duration, Instant};

/// The intended send times of one worker at `rate_per_s`.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    sent: u64,
}

impl Schedule {
    pub fn new(start: Instant, rate_per_s: f64) -> Schedule {
        let interval = Duration::from_secs_f64(1.0 / rate_per_s.max(1e-6));
        Schedule { start, interval, sent: 0 }
    }

    /// The intended time of the next request; the caller waits until then if it is early.
    pub fn next(&mut self) -> Instant {
        let t = self.start + self.interval.mul_f64(self.sent as f64);
        self.sent += 1;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_evenly_spaced_from_the_start_whatever_the_delay() {
        let start = Instant::now();
        let mut s = Schedule::new(start, 1000.0);
        assert_eq!(s.next(), start);
        assert_eq!(s.next(), start + Duration::from_millis(1));
        // However late the caller is, the schedule does not slip: lateness counts as latency.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.next(), start + Duration::from_millis(2));
        let mut slow = Schedule::new(start, 0.5);
        slow.next();
        assert_eq!(slow.next(), start + Duration::from_secs(2));
    }
}
