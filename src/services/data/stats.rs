//! Backlog and lag, read on a timer of their own.

use std::time::Duration;

use super::*;
use crate::services::ServiceError;

/// One reading of a leased table's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Pending rows.
    pub backlog: i64,
    /// Age in seconds of the oldest pending row.
    pub lag_seconds: f64,
}

/// How often a data service reads its statistics, at most.
pub const STATS_EVERY: Duration = Duration::from_secs(1);

/// The share of its time a session may spend counting: a count that took
/// `d` is followed by the next one after `d × STATS_SHARE` at the soonest.
pub const STATS_SHARE: u32 = 20;

/// When the reading after one that took `took` is due: after
/// [`STATS_EVERY`], or later when counting a large backlog took long, so
/// that counting never takes more than 1/[`STATS_SHARE`] of a session's
/// time however deep the backlog grows.
pub fn next_reading_after(took: Duration) -> Duration {
    took.saturating_mul(STATS_SHARE).max(STATS_EVERY)
}

/// Reads the statistics of `l`'s table on a session of `pool` now and
/// then again and again ([`next_reading_after`]), on a task of its own
/// (so the worker's session never waits for them), and hands each reading
/// to `publish`; they also land in `details` (`backlog`, `lag_seconds`).
/// A failed reading is logged and skipped: a restart of PostgreSQL costs
/// readings, not the service. The task ends when the returned guard is
/// dropped.
pub fn statistics(
    pool: crate::conn::postgres::Pool,
    within: Option<Duration>,
    l: &Leased,
    details: crate::services::Details,
    publish: impl Fn(Stats) + Send + 'static,
) -> AbortOnDrop {
    let sql = l.stats();
    AbortOnDrop(tokio::spawn(async move {
        let mut failing = false;
        loop {
            // Only the count is timed: waiting for a session (or failing
            // to make one) says nothing of what counting costs.
            let mut took = Duration::ZERO;
            let reading = async {
                let c = pooled(&pool).await?;
                let st = c.prepare_cached(&sql).await.map_err(pg)?;
                let began = std::time::Instant::now();
                let row = match answer(within, c.query_one(&st, &[])).await {
                    Ok(row) => row,
                    Err(Fault::Lost(e) | Fault::Fatal(e)) => return Err(e),
                };
                took = began.elapsed();
                Ok::<_, ServiceError>(Stats {
                    backlog: row.get(0),
                    lag_seconds: row.get(1),
                })
            };
            match reading.await {
                Ok(s) => {
                    if failing {
                        tracing::info!("statistics read again");
                        failing = false;
                    }
                    details.set("backlog", s.backlog);
                    details.set("lag_seconds", (s.lag_seconds * 1000.0).round() / 1000.0);
                    publish(s);
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the statistics; trying again");
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the statistics"),
            }
            tokio::time::sleep(next_reading_after(took)).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::TableName;

    #[test]
    fn the_stats_benchmark_times_the_statement_the_timer_runs() {
        let l = Leased::new(&TableName::new("message_outbox").unwrap());
        let bench = include_str!("../../../scripts/bench_stats.py");
        assert!(
            bench.contains(&l.stats()),
            "scripts/bench_stats.py must quote Leased::stats():\n{}",
            l.stats()
        );
    }

    #[test]
    fn counting_takes_at_most_a_twentieth_of_the_time() {
        let ms = Duration::from_millis;
        assert_eq!(next_reading_after(ms(0)), STATS_EVERY);
        assert_eq!(next_reading_after(ms(50)), STATS_EVERY, "50 ms × 20 = 1 s");
        assert_eq!(next_reading_after(ms(51)), ms(1020));
        assert_eq!(next_reading_after(ms(400)), ms(8000));
        assert_eq!(
            next_reading_after(Duration::MAX),
            Duration::MAX,
            "no overflow"
        );
    }
}
