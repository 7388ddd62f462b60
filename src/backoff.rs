//! The one reconnect back-off of the daemon and the receiver: exponential with full jitter
//! above a floor. Used by ingest (on-board broker), the sync forwarder and `hema3n-receiver`
//! (cloud broker), so that a fleet of appliances whose link came back at the same moment does
//! not reconnect in step.
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[min, min(max, min · 2ⁿ)]`; a
//! successful connection resets the attempt count.

use std::time::Duration;

/// Reconnect back-off state.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A back-off between `min` and `max` (`max` below `min` is raised to `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The wait before the next attempt (random, from the OS RNG).
    pub fn next_wait(&mut self) -> Duration {
        let mut b = [0u8; 8];
        // Without randomness the jitter degrades to the ceiling, which is still a valid wait.
        let r = match crate::crypto::random_bytes(&mut b) {
            Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 1.0,
        };
        self.next_with(r)
    }

    /// The wait before the next attempt for a uniform sample `r` in `[0, 1]`.
    pub fn next_with(&mut self, r: f64) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        self.min + (ceiling - self.min).mul_f64(r.clamp(0.0, 1.0))
    }

    /// A connection succeeded: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn ceiling_doubles_up_to_max_and_reset_starts_over() {
        let mut b = Backoff::new(MS(100), MS(1000));
        let ceilings: Vec<Duration> = (0..6).map(|_| b.next_with(1.0)).collect();
        assert_eq!(
            ceilings,
            [MS(100), MS(200), MS(400), MS(800), MS(1000), MS(1000)]
        );
        b.reset();
        assert_eq!(b.next_with(1.0), MS(100));
    }

    #[test]
    fn waits_are_jittered_between_min_and_the_ceiling() {
        let mut b = Backoff::new(MS(100), MS(10_000));
        for _ in 0..3 {
            b.next_with(0.0);
        }
        assert_eq!(b.clone().next_with(0.0), MS(100));
        assert_eq!(b.clone().next_with(0.5), MS(450));
        for _ in 0..200 {
            let w = b.clone().next_wait();
            assert!(w >= MS(100) && w <= MS(800), "{w:?}");
        }
    }

    #[test]
    fn many_attempts_never_overflow() {
        let mut b = Backoff::new(MS(10), Duration::from_secs(60));
        for _ in 0..10_000 {
            assert!(b.next_with(1.0) <= Duration::from_secs(60));
        }
        assert_eq!(b.attempts(), 10_000);
    }

    #[test]
    fn max_below_min_is_raised() {
        let mut b = Backoff::new(MS(500), MS(100));
        assert_eq!(b.next_with(1.0), MS(500));
    }
}
