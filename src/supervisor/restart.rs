//! Restart arithmetic: exponential backoff with jitter, and the restart
//! budget (`max_restarts` within `window`, OTP's intensity and period).
//!
//! Written here rather than taken from a backoff crate: the well-kept ones
//! (backon, tokio-retry) drive retries of a future themselves, while the
//! supervisor needs only the next delay, with the randomness injected so
//! that tests can check jitter bounds exactly.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Backoff;

/// The backoff of one service: each failure makes the next delay longer,
/// until `reset_after` of stable readiness starts it over.
#[derive(Debug, Clone)]
pub struct BackoffState {
    spec: Backoff,
    attempt: u32,
}

impl BackoffState {
    pub fn new(spec: Backoff) -> BackoffState {
        BackoffState { spec, attempt: 0 }
    }

    /// The delay before the next restart: `initial * multiplier^attempt`,
    /// capped at `max`, spread by ±`jitter` (and never above `max`).
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let base = self.base(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let j = self.spec.jitter.0;
        if j == 0.0 || base.is_zero() {
            return base;
        }
        let factor = 1.0 + j * (2.0 * rng.f64() - 1.0);
        base.mul_f64(factor).min(self.spec.max)
    }

    /// The delay of attempt `n` before jitter.
    pub fn base(&self, n: u32) -> Duration {
        let initial = self.spec.initial.as_secs_f64();
        let grown = initial * self.spec.multiplier.powi(n.min(1000) as i32);
        let capped = grown.min(self.spec.max.as_secs_f64());
        Duration::from_secs_f64(if capped.is_finite() {
            capped
        } else {
            self.spec.max.as_secs_f64()
        })
    }

    /// Starts the sequence over (after `reset_after` of stable readiness).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// At most `max_restarts` restarts within any `window`.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max_restarts: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(max_restarts: u32, window: Duration) -> RestartBudget {
        RestartBudget {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now` if the budget allows one; `false` means
    /// the service has failed for good.
    pub fn try_restart(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) >= self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if (self.recent.len() as u32) < self.max_restarts {
            self.recent.push_back(now);
            true
        } else {
            false
        }
    }

    /// Whether [`RestartBudget::try_restart`] at `now` would allow a
    /// restart, without recording one: the restart decision is taken
    /// before it is carried out.
    pub fn allows(&self, now: Instant) -> bool {
        let in_window = self
            .recent
            .iter()
            .filter(|t| now.duration_since(**t) < self.window)
            .count();
        (in_window as u32) < self.max_restarts
    }

    /// Restarts counted in the current window.
    pub fn used(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::Fraction;

    fn spec(initial_ms: u64, max_ms: u64, multiplier: f64, jitter: f64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            multiplier,
            jitter: Fraction(jitter),
        }
    }

    #[test]
    fn delays_grow_geometrically_up_to_the_cap() {
        let mut b = BackoffState::new(spec(100, 1000, 2.0, 0.0));
        let mut rng = fastrand::Rng::with_seed(1);
        let got: Vec<u128> = (0..6).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(&mut rng).as_millis(), 100);
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_spreads() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut seen = Vec::new();
        for _ in 0..2000 {
            let mut b = BackoffState::new(spec(1000, 60_000, 2.0, 0.2));
            let d = b.next_delay(&mut rng).as_secs_f64();
            assert!((0.8..=1.2).contains(&d), "{d} outside 1s ± 20%");
            seen.push(d);
        }
        let lo = seen.iter().cloned().fold(f64::MAX, f64::min);
        let hi = seen.iter().cloned().fold(f64::MIN, f64::max);
        assert!(
            lo < 0.82 && hi > 1.18,
            "jitter spreads over its range: {lo}..{hi}"
        );
        // At the cap, jitter only shortens.
        let mut b = BackoffState::new(spec(1000, 1000, 2.0, 0.5));
        for _ in 0..100 {
            let d = b.next_delay(&mut rng).as_secs_f64();
            assert!((0.5..=1.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn zero_backoff_restarts_at_once() {
        let mut b = BackoffState::new(spec(0, 0, 2.0, 0.2));
        let mut rng = fastrand::Rng::with_seed(3);
        assert!((0..10).all(|_| b.next_delay(&mut rng).is_zero()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_max_restarts_per_sliding_window() {
        let mut budget = RestartBudget::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(budget.try_restart(t0));
        assert!(budget.try_restart(t0 + Duration::from_secs(10)));
        assert!(budget.try_restart(t0 + Duration::from_secs(20)));
        assert!(
            !budget.try_restart(t0 + Duration::from_secs(30)),
            "a fourth within 60 s"
        );
        // The first restart leaves the window at t0 + 60 s.
        assert!(budget.try_restart(t0 + Duration::from_secs(60)));
        assert!(!budget.try_restart(t0 + Duration::from_secs(61)));
        let mut none = RestartBudget::new(0, Duration::from_secs(60));
        assert!(!none.allows(t0));
        assert!(!none.try_restart(t0), "max_restarts = 0 allows no restart");
    }

    #[tokio::test(start_paused = true)]
    async fn allows_says_what_try_restart_would_do_without_recording() {
        let mut budget = RestartBudget::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        for s in [0, 10, 20, 30, 69, 70, 71, 130, 200] {
            let now = t0 + Duration::from_secs(s);
            let allowed = budget.allows(now);
            assert_eq!(budget.allows(now), allowed, "asking records nothing");
            assert_eq!(budget.try_restart(now), allowed, "at {s} s");
        }
    }
}
