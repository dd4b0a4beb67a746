//! The pauses of the data kinds: before a lost round's next attempt,
//! before a row's next attempt (as SQL), and the shortest poll.

use std::time::Duration;

/// The pause before a worker's next round after `attempt` lost rounds in
/// a row: 0.5 s doubling to 30 s.
pub fn lost_delay(attempt: u32) -> Duration {
    doubling(attempt, Duration::from_secs(30))
}

/// The delay before a row's next attempt, in seconds, as SQL over the
/// row's `retry_count` before this failure (`n`): the backoff `b` is
/// 0.5 s × 2^n, at most 300 s, and the delay a random time between `b/2`
/// and `b` ("equal jitter"), so rows that failed together (a backend
/// that was down) do not come back together. `random()` is drawn per row.
pub const RETRY_DELAY: &str =
    "least(300, 0.5 * power(2, least(retry_count, 20))) * (0.5 + random() / 2)";

/// 0.5 s doubling per attempt, capped.
pub fn doubling(attempt: u32, max: Duration) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(16))
        .min(max)
}

/// The shortest `poll_interval` of the data kinds: below it the fallback
/// poll is a busy loop on PostgreSQL.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
