//! `kind = "memory-sync"`: durable delivery of queued
//! memory writes to an HTTP memory backend.
//!
//! Rows of the queue table are claimed like the outbox relay's (lease,
//! `SKIP LOCKED`, woken by the insert trigger's `pg_notify`), and each is
//! POSTed to `endpoint` with an `Idempotency-Key` header. A 2xx marks the
//! row sent and, in the same statement, writes its WAL event into the
//! outbox (topic `wal_topic`), so the outbox relay publishes it and no
//! event is lost between the two. 429, 5xx, timeouts and connection errors
//! are retried with backoff, honouring `Retry-After`; any other answer
//! fails the row at once. A circuit breaker opens after `circuit.failures`
//! retryable failures in a row and holds every POST for
//! `circuit.cooldown`.

pub mod http;
pub mod metrics;
pub mod settings;
pub mod sql;

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::data::answer as pg_answer;
use super::data::horizon::Horizon;
use super::data::pg;
use super::{
    ActionError, BoxFuture, Context, Details, Factory, Registration, Service, ServiceError,
    settings_of,
};
use crate::config::{Runs, ServiceSpec};
use http::{Answer, Backend};
pub use settings::MemorySyncSpec;

/// The registration of `kind = "memory-sync"`.
pub fn registration() -> Registration {
    Registration::new::<MemorySyncSpec>("memory-sync", Runs::InProcess, MemorySyncFactory)
        .continuous()
        .action(super::data::replay_failed_action())
        .metrics(metrics::FAMILIES)
}

/// Builds memory-sync services and runs their action (`replay-failed`).
struct MemorySyncFactory;

impl Factory for MemorySyncFactory {
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        Ok(Box::new(MemorySync {
            spec: settings_of::<MemorySyncSpec>(spec)?.clone(),
        }))
    }

    fn action(
        &self,
        spec: &ServiceSpec,
        _action: &str,
        args: Json,
        _details: Details,
    ) -> BoxFuture<Result<Json, ActionError>> {
        // `replay-failed` is the kind's only action.
        let at = settings_of::<MemorySyncSpec>(spec).map(|s| s.table_at(&spec.name));
        super::data::replay_failed_in(at, args)
    }
}

struct MemorySync {
    spec: MemorySyncSpec,
}

/// A claimed row.
struct Claimed {
    id: i64,
    key: String,
    payload: String,
    session: Option<String>,
}

/// A claimed row as memory-sync sends it, or why it cannot be sent (a
/// NULL `idempotency_key` or `payload` in a table the user made).
fn read_claimed(r: &tokio_postgres::Row) -> Result<Claimed, String> {
    let text = |i, column| super::data::needed_text(r, i, column, "memory-sync");
    Ok(Claimed {
        id: r.get(0),
        key: text(1, "idempotency_key")?,
        payload: text(2, "payload")?,
        session: r.try_get(3).map_err(|e| format!("session: {e}"))?,
    })
}

/// How many of `rows` (from the first) go out together: at most `width`,
/// stopping before a second row of a session already in the wave.
fn wave_of(rows: &[Claimed], width: usize) -> usize {
    let mut sessions = std::collections::HashSet::new();
    let mut n = 0;
    for r in rows.iter().take(width.max(1)) {
        if let Some(s) = &r.session
            && !sessions.insert(s.as_str())
        {
            break;
        }
        n += 1;
    }
    n.max(1)
}

/// The circuit breaker of the backend.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Circuit {
    /// POSTs go; this many retryable failures in a row so far.
    Closed(u32),
    /// No POST until then.
    Open(Instant),
    /// After the cooldown: the next POST decides (a failure opens it
    /// again at once, anything else closes it).
    HalfOpen,
}

impl Circuit {
    fn name(self) -> &'static str {
        match self {
            Circuit::Closed(_) => "closed",
            Circuit::Open(_) => "open",
            Circuit::HalfOpen => "half-open",
        }
    }
}

impl Service for MemorySync {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let spec = &self.spec;
            let uri: hyper::Uri = spec
                .endpoint
                .0
                .parse()
                .map_err(|e| ServiceError(format!("bad endpoint URL: {e}")))?;
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(ServiceError(
                    "the endpoint URL carries credentials; they would be sent in clear: remove them"
                        .into(),
                ));
            }
            let q = sql::Queue::new(&spec.table, &spec.outbox_table);
            let name = ctx.name().to_string();
            // Every statement goes through the service's pool; only the
            // LISTEN keeps a session of its own.
            let pool = super::data::pool_of(&name, &spec.pg(), spec.pool_size.0).await?;
            let listener =
                super::data::listen(&spec.pg(), &q.channel_quoted(), spec.listen_check).await?;
            let sqls = [
                q.claim(false),
                q.reap(),
                q.done(),
                q.retry(),
                q.release(),
                q.claim(true),
            ];
            {
                let c = super::data::pooled(&pool).await?;
                if spec.create_schema {
                    // The outbox first: the WAL events go there.
                    let outbox = super::outbox::sql::Outbox::new(&spec.outbox_table);
                    super::data::adopt(
                        &c,
                        &outbox.leased().table,
                        &outbox.create_tx(),
                        &outbox.indexes(),
                    )
                    .await?;
                    super::data::adopt(&c, &q.leased().table, &q.create_tx(), &q.indexes()).await?;
                }
                crate::probe::table(&c, &sql::Queue::needs(&spec.table, false))
                    .await
                    .map_err(ServiceError)?;
                // Every statement is checked against the tables now.
                super::data::prepare_all(&c, &sqls).await.map_err(pg)?;
            }
            // The backlog, on the pool and a timer of its own.
            let _stats = {
                let name = name.clone();
                super::data::statistics(
                    pool.clone(),
                    spec.pg().limits.answer_within(),
                    q.leased(),
                    ctx.details().clone(),
                    move |s| metrics::backlog(&name, s.backlog),
                )
            };
            let in_flight = (spec.in_flight.0 as usize).max(1);
            let cas: Vec<_> = spec.tls_ca.iter().map(|c| c.0.clone()).collect();
            let backend = Backend::new(uri, &cas, spec.timeout, in_flight)
                .await
                .map_err(|e| ServiceError(format!("memory backend: {e}")))?;
            // A batch must end within its lease, or another instance would
            // take its rows over and send them again: a POST starts only
            // while a whole `timeout` still fits before the lease's end,
            // less a margin for marking the batch; what is left goes back
            // to the queue uncharged. (A POST never takes longer than
            // `timeout`, connection and body included.)
            let margin = (spec.lease / 10).min(Duration::from_secs(1));
            let usable = spec.lease.saturating_sub(margin);
            if spec.timeout > usable {
                return Err(ServiceError(format!(
                    "lease ({}) leaves no time for a POST of timeout ({}): make the lease longer",
                    humantime::format_duration(spec.lease),
                    humantime::format_duration(spec.timeout)
                )));
            }
            ctx.ready();
            tracing::info!(table = %spec.table, "syncing");

            let batch = i64::from(spec.batch.0);
            let lease = spec.lease.as_secs_f64();
            let max_retries = i32::try_from(spec.max_retries).unwrap_or(i32::MAX);
            let threshold = spec.circuit.failures.0.max(1);
            let mut circuit = Circuit::Closed(0);
            let mut sent = 0u64;
            // Where claims start (see `data::horizon`), with a sweep from
            // the start, and the reaping of expired leases, every quarter
            // of the lease (0.5 s to 5 s).
            let mut horizon = Horizon::new(
                super::data::horizon::sweep_every(spec.lease),
                Instant::now(),
            );
            let mut pause: Option<Instant> = None;
            let mut lost = 0u32;
            metrics::circuit(&name, false);
            ctx.details().set("circuit", circuit.name());
            loop {
                if ctx.is_cancelled() {
                    return Ok(());
                }
                let hold = match circuit {
                    Circuit::Open(until) => Some(until),
                    _ => pause,
                };
                if let Some(until) = hold {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                    pause = None;
                    if let Circuit::Open(_) = circuit {
                        circuit = Circuit::HalfOpen;
                        ctx.details().set("circuit", circuit.name());
                    }
                    continue;
                }
                let within = spec.pg().limits.answer_within();
                let round: Result<Option<Duration>, super::data::Fault> = async {
                    let client = super::data::take(&pool).await?;
                    let [claim, reap, done, retry, release, claim_held] =
                        pg_answer(within, super::data::prepare_all(&client, &sqls)).await?;
                    // Expired leases (another instance's, or ours after a
                    // crash) go back at each sweep, not every batch.
                    let now = Instant::now();
                    let sweep = horizon.sweep_due(now);
                    if sweep {
                        let reaped: Vec<i64> =
                            pg_answer(within, client.query(&reap, &[])).await?.iter().map(|r| r.get(0)).collect();
                        horizon.returned(&reaped, now);
                    }
                    // Half-open: one row decides.
                    let take = if circuit == Circuit::HalfOpen {
                        1
                    } else {
                        batch
                    };
                    let from = horizon.claim_from(now);
                    let claim = if horizon.held() { &claim_held } else { &claim };
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                        [&take, &lease, &from];
                    // The lease runs from before the claim is sent: a slow
                    // claim must not push a POST past the lease's real end.
                    let lease_end = Instant::now() + usable;
                    // The claim answers its own snapshot, for the horizon.
                    let claimed =
                        super::data::Claimed::read(pg_answer(within, client.query(claim, &params)).await?);
                    if sweep {
                        horizon.swept(now, now.elapsed());
                    }
                    let full = claimed.full(take);
                    let rows = claimed.rows;
                    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                    horizon.claimed(&ids, full, claimed.xmin, claimed.xmax);
                    if rows.is_empty() {
                        let now = Instant::now();
                        let mut wait = spec.poll_interval.min(horizon.until_sweep(now));
                        if let Some(retry) = horizon.next_retry(now) {
                            wait = wait.min(retry);
                        }
                        return Ok(Some(wait.max(Duration::from_millis(10))));
                    }
                    let claim_token: std::time::SystemTime = rows[0].get(4);
                    let mut claimed = Vec::with_capacity(rows.len());
                    for r in &rows {
                        match read_claimed(r) {
                            Ok(c) => claimed.push(c),
                            // No retry makes a NULL readable: it fails at
                            // once with its reason, the rest goes on.
                            Err(error) => {
                                let id: i64 = r.get(0);
                                let fatal = true;
                                pg_answer(within, client
                                    .query_opt(
                                        &retry,
                                        &[&id, &error, &max_retries, &claim_token, &0.0f64, &fatal],
                                    ))
                                    .await?;
                                metrics::jobs(&name, "failed");
                                tracing::warn!(id, error = %error, "a row memory-sync cannot send failed");
                                ctx.details().set("last_error", format!("row {id}: {error}"));
                            }
                        }
                    }
                    let mut rows = claimed;
                    rows.sort_by_key(|r| r.id);
                    let mut next = 0;
                    // Accepted rows, marked sent together once the batch ends;
                    // rows the backend never saw, released with the rest.
                    let mut accepted: Vec<i64> = Vec::new();
                    let mut unseen: Vec<i64> = Vec::new();
                    'batch: while next < rows.len() {
                        if matches!(circuit, Circuit::Open(_)) || pause.is_some() {
                            break;
                        }
                        if Instant::now() + spec.timeout > lease_end {
                            // Not enough lease left for a whole POST.
                            break;
                        }
                        // A wave of requests in flight together, in id order,
                        // never two of one session (within a batch, a
                        // session's writes are in flight one at a time);
                        // half-open: one.
                        // And no more than the failures the circuit still
                        // allows: it opens after `circuit.failures` in a row
                        // without more requests already on their way.
                        let width = match circuit {
                            Circuit::HalfOpen | Circuit::Open(_) => 1,
                            Circuit::Closed(n) => {
                                in_flight.min(threshold.saturating_sub(n).max(1) as usize)
                            }
                        };
                        let wave = wave_of(&rows[next..], width);
                        let began = Instant::now();
                        let posts = rows[next..next + wave]
                            .iter()
                            .map(|r| backend.post(&r.key, r.payload.clone()));
                        let answers = tokio::select! {
                            a = futures_util::future::join_all(posts) => a,
                            _ = ctx.cancelled() => break 'batch,
                        };
                        // One wave, one duration.
                        metrics::seconds(&name, began.elapsed());
                        for (row, answer) in rows[next..next + wave].iter().zip(answers) {
                            let id = &row.id;
                            let (error, after, fatal) = match answer {
                                Answer::Accepted => {
                                    accepted.push(*id);
                                    if circuit != Circuit::Closed(0) {
                                        circuit = Circuit::Closed(0);
                                        ctx.details().set("circuit", circuit.name());
                                        metrics::circuit(&name, false);
                                    }
                                    continue;
                                }
                                Answer::Unreachable(e) => {
                                    // Never seen by the backend: back in the
                                    // queue uncharged, with the rest of the batch.
                                    unseen.push(*id);
                                    circuit = match circuit {
                                        Circuit::Closed(n) if n + 1 < threshold => {
                                            Circuit::Closed(n + 1)
                                        }
                                        _ => Circuit::Open(Instant::now() + spec.circuit.cooldown),
                                    };
                                    if !matches!(circuit, Circuit::Open(_)) {
                                        pause = Some(
                                            Instant::now()
                                                + super::data::doubling(0, Duration::from_secs(1)),
                                        );
                                    }
                                    tracing::warn!(error = %e, "memory backend unreachable");
                                    ctx.details().set("last_error", e);
                                    continue;
                                }
                                Answer::Later(after, e) => {
                                    circuit = match circuit {
                                        Circuit::Closed(n) if n + 1 < threshold => {
                                            Circuit::Closed(n + 1)
                                        }
                                        _ => Circuit::Open(Instant::now() + spec.circuit.cooldown),
                                    };
                                    if after > 0.0 {
                                        // The backend asked for quiet: the rest
                                        // of the batch waits too.
                                        pause = Some(Instant::now() + Duration::from_secs_f64(after));
                                    }
                                    (e, after, false)
                                }
                                Answer::Refused(e) => {
                                    // The backend is up and said no to this row.
                                    if circuit != Circuit::Closed(0) {
                                        circuit = Circuit::Closed(0);
                                        metrics::circuit(&name, false);
                                    }
                                    (e, 0.0, true)
                                }
                            };
                            let outcome = pg_answer(within, client
                                .query_opt(
                                    &retry,
                                    &[id, &error, &max_retries, &claim_token, &after, &fatal],
                                ))
                                .await
                                ?;
                            if let Some(row) = outcome {
                                let (due, failed): (f64, bool) = (row.get(0), row.get(1));
                                if !failed {
                                    horizon.returned(
                                        &[*id],
                                        Instant::now()
                                            + Duration::from_secs_f64(due.clamp(0.0, 86_400.0)),
                                    );
                                }
                                metrics::jobs(&name, if failed { "failed" } else { "retry" });
                                tracing::warn!(id, error = %error, failed, "memory backend did not take a write");
                            }
                            ctx.details()
                                .set("last_error", format!("row {id}: {error}"));
                            ctx.details().set("circuit", circuit.name());
                        }
                        next += wave;
                    }
                    if !accepted.is_empty() {
                        let marked: i64 = pg_answer(within, client
                            .query_one(&done, &[&accepted, &claim_token, &spec.wal_topic]))
                            .await
                            ?
                            .get(0);
                        let marked = u64::try_from(marked).unwrap_or(0);
                        sent += marked;
                        ctx.details().set("sent", sent);
                        metrics::jobs_n(&name, "sent", marked);
                        let lost = accepted.len() as u64 - marked.min(accepted.len() as u64);
                        if lost > 0 {
                            tracing::warn!(
                                lost,
                                "the lease ran out before accepted writes were marked; another instance sends them again"
                            );
                        }
                    }
                    if next < rows.len() || !unseen.is_empty() {
                        // The circuit opened, the backend asked for quiet, the
                        // lease is nearly over, or we stop: the rest goes back
                        // untouched, with the rows the backend never saw.
                        let rest: Vec<i64> = rows[next..]
                            .iter()
                            .map(|r| r.id)
                            .chain(unseen.iter().copied())
                            .collect();
                        pg_answer(within, client
                            .execute(&release, &[&rest, &claim_token]))
                            .await
                            ?;
                        horizon.returned(&rest, Instant::now());
                    }
                    if let (Circuit::Open(_), Some(_)) = (circuit, pause) {
                        pause = None;
                    }
                    if let Circuit::Open(_) = circuit {
                        // (A batch starts closed or half-open: this is the
                        // moment it opened.)
                        tracing::warn!(cooldown = ?spec.circuit.cooldown, "circuit open: holding writes");
                        ctx.details().set("circuit", circuit.name());
                        metrics::circuit(&name, true);
                    }
                    Ok(None)
                }
                .await;
                match round {
                    Ok(idle) => {
                        if lost > 0 {
                            tracing::info!("PostgreSQL is back");
                            lost = 0;
                        }
                        if let Some(wait) = idle {
                            tokio::select! {
                                _ = listener.wake.notified() => {}
                                _ = tokio::time::sleep(wait) => {}
                                _ = ctx.cancelled() => return Ok(()),
                            }
                        }
                    }
                    Err(super::data::Fault::Fatal(e)) => return Err(e),
                    Err(super::data::Fault::Lost(e)) => {
                        super::data::forget_sessions(&pool);
                        let delay = super::data::lost_delay(lost);
                        lost += 1;
                        tracing::warn!(error = %e, delay = ?delay, "PostgreSQL unavailable; trying again");
                        ctx.details().set("last_error", e.0);
                        pause = Some(Instant::now() + delay);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(sessions: &[Option<&str>]) -> Vec<Claimed> {
        sessions
            .iter()
            .enumerate()
            .map(|(i, s)| Claimed {
                id: i as i64,
                key: format!("k{i}"),
                payload: "{}".into(),
                session: s.map(str::to_string),
            })
            .collect()
    }

    #[test]
    fn a_wave_holds_at_most_width_rows_and_one_per_session() {
        let r = rows(&[Some("a"), Some("b"), None, None, Some("c")]);
        assert_eq!(wave_of(&r, 8), 5, "all distinct, rows without session too");
        assert_eq!(wave_of(&r, 3), 3, "the width caps it");
        assert_eq!(wave_of(&r, 0), 1, "at least one row goes");
        let r = rows(&[Some("a"), Some("b"), Some("a"), Some("c")]);
        assert_eq!(wave_of(&r, 8), 2, "stops before a's second row");
        let r = rows(&[Some("a"), Some("a")]);
        assert_eq!(wave_of(&r, 8), 1);
        assert_eq!(wave_of(&r[..1], 8), 1);
    }
}
