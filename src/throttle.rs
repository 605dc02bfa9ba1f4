//! A log throttle: one line per period, with the count of lines held back.
//!
//! A failing group or a dead Redis under load would otherwise log a line per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one log line through per period and counts the ones held back.
pub struct LogThrottle {
    epoch: Instant,
    period_ms: u64,
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl LogThrottle {
    /// One line per `period`.
    pub fn new(period: Duration) -> Self {
        LogThrottle {
            epoch: Instant::now(),
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub fn admit(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_one_line_per_period() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        throttle.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(throttle.admit(), Some(2), "reports the lines held back");
    }
}
