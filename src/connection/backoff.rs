//! Back-off: `base` doubling up to `max` (`doubling`), the one formula of the daemon. The
//! reconnect back-off (`Backoff`) adds to it: at once after a connection that was up, and
//! ±20 % jitter so a fleet of desktops does not reconnect in step; `push` uses the formula
//! alone for delivery retries and for reconnecting after a failed store.

use std::time::Duration;

/// The wait after `failures` failures in a row (the first failure waits `base`), doubling
/// up to `max`. No failure yet waits `base` too.
pub fn doubling(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exp).min(max)
}

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    was_up: bool,
    rng: u64,
}

impl Backoff {
    /// `seed` drives the jitter; tests pass a fixed one.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            max,
            failures: 0,
            was_up: false,
            rng: seed | 1,
        }
    }

    /// Valid data arrived: the next loss of the connection retries at once.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.was_up = true;
    }

    /// The delay before the next attempt, after a failure or a lost connection.
    pub fn next_delay(&mut self) -> Duration {
        if self.was_up {
            self.was_up = false;
            return Duration::ZERO;
        }
        self.failures = self.failures.saturating_add(1);
        let raw = doubling(self.base, self.max, self.failures);
        // xorshift64: cheap, seedable, good enough for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng % 10_001) as f64 / 10_000.0; // 0..=1
        let factor = 0.8 + 0.4 * unit;
        raw.mul_f64(factor).min(self.max)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_to_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1800), 42);
        let expected = [5u64, 10, 20, 40, 80, 160, 320, 640, 1280, 1800, 1800];
        for e in expected {
            let d = b.next_delay().as_secs_f64();
            let e = e as f64;
            assert!(
                d >= e * 0.8 - 1e-9 && d <= (e * 1.2).min(1800.0) + 1e-9,
                "{d} vs {e}"
            );
        }
    }

    #[test]
    fn doubling_starts_at_base_and_stops_at_max() {
        let s = Duration::from_secs;
        let waits: Vec<u64> = (1..=9)
            .map(|n| doubling(s(5), s(600), n).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(doubling(s(5), s(600), 0), s(5));
        assert_eq!(doubling(s(5), s(600), u32::MAX), s(600));
    }

    #[test]
    fn immediate_after_an_established_connection() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60), 7);
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), Duration::ZERO);
        let d = b.next_delay();
        assert!(
            d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
            "{d:?}"
        );
    }
}
