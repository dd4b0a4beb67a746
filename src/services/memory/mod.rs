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

pub mod metrics;
pub mod settings;
pub mod sql;

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value as Json;

use super::data::{listening, pg};
use super::{
    ActionError, BoxFuture, Context, Details, Factory, Registration, Service, ServiceError,
    settings_of,
};
use crate::config::{Runs, ServiceSpec};
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
        let target = settings_of::<MemorySyncSpec>(spec).map(|s| (s.pg(), s.table.clone()));
        super::data::replay_failed_in(target, args)
    }
}

struct MemorySync {
    spec: MemorySyncSpec,
}

/// What the backend said about one row.
enum Answer {
    /// 2xx.
    Accepted,
    /// The backend could not be reached (no connection, no handshake):
    /// it never saw the row, which is not charged a retry.
    Unreachable(String),
    /// 429, 5xx or no answer in time: try again, not before the given
    /// seconds (the backend's `Retry-After`, else 0).
    Later(f64, String),
    /// Any other status: the row is refused for good.
    Refused(String),
}

/// The longest `Retry-After` honoured (seconds); a larger or malformed
/// value is read as this or as absent.
const MAX_RETRY_AFTER: f64 = 300.0;

/// `Retry-After` in seconds (the delay form; an HTTP date is ignored).
fn retry_after(v: Option<&hyper::header::HeaderValue>) -> f64 {
    v.and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(0.0, |s| s.min(MAX_RETRY_AFTER))
}

/// POSTs one payload. The status decides (within `timeout`); the body is
/// then drained briefly and never changes the answer.
async fn post(uri: &hyper::Uri, key: &str, body: String, timeout: Duration) -> Answer {
    let host = uri
        .host()
        .unwrap_or("")
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let connect = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))
    };
    let (mut sender, conn) = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Answer::Unreachable(e),
        Err(_) => {
            return Answer::Unreachable(format!(
                "no connection within {}",
                humantime::format_duration(timeout)
            ));
        }
    };
    let _driver = super::data::AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    // Host is host[:port] only: credentials in the URL are never sent.
    let host_header = match uri.port_u16() {
        Some(p) => format!("{}:{p}", uri.host().unwrap_or("")),
        None => uri.host().unwrap_or("").to_string(),
    };
    let req = match hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, host_header)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("warden/", env!("CARGO_PKG_VERSION")),
        )
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body)))
    {
        Ok(r) => r,
        Err(e) => return Answer::Refused(format!("cannot build the request: {e}")),
    };
    let res = match tokio::time::timeout(timeout, sender.send_request(req)).await {
        Err(_) => {
            return Answer::Later(
                0.0,
                format!("no answer within {}", humantime::format_duration(timeout)),
            );
        }
        Ok(Err(e)) => return Answer::Later(0.0, format!("HTTP request failed: {e}")),
        Ok(Ok(res)) => res,
    };
    let status = res.status();
    let after = retry_after(res.headers().get(hyper::header::RETRY_AFTER));
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        http_body_util::Limited::new(res.into_body(), 64 * 1024).collect(),
    )
    .await;
    if status.is_success() {
        Answer::Accepted
    } else if status.as_u16() == 429 || status.is_server_error() {
        Answer::Later(after, format!("HTTP {status}"))
    } else {
        Answer::Refused(format!("HTTP {status}"))
    }
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
            let (client, wake, _driver) = listening(&spec.pg(), &q.channel_quoted()).await?;
            if spec.create_schema {
                // The outbox first: the WAL events go there.
                let outbox = super::outbox::sql::Outbox::new(&spec.outbox_table);
                client.batch_execute(&outbox.create()).await.map_err(pg)?;
                client.batch_execute(&q.create()).await.map_err(pg)?;
            }
            let claim = client.prepare(&q.claim()).await.map_err(pg)?;
            let reap = client.prepare(&q.reap()).await.map_err(pg)?;
            let done = client.prepare(&q.done()).await.map_err(pg)?;
            let retry = client.prepare(&q.retry()).await.map_err(pg)?;
            let release = client.prepare(&q.release()).await.map_err(pg)?;
            let next_due = client.prepare(&q.next_due()).await.map_err(pg)?;
            let backlog = client.prepare(&q.backlog()).await.map_err(pg)?;
            ctx.ready();
            tracing::info!(table = %spec.table, "syncing");

            let name = ctx.name().to_string();
            // A batch must finish within its lease even if every POST
            // takes its whole timeout, or another instance would take the
            // rows over and send them again.
            let per_lease = (spec.lease.as_secs_f64() / spec.timeout.as_secs_f64().max(0.001))
                .floor()
                .max(1.0) as i64;
            let batch = i64::from(spec.batch.0).min(per_lease);
            let lease = spec.lease.as_secs_f64();
            let max_retries = i32::try_from(spec.max_retries).unwrap_or(i32::MAX);
            let threshold = spec.circuit.failures.0.max(1);
            let mut circuit = Circuit::Closed(0);
            let mut sent = 0u64;
            let mut last_stats: Option<Instant> = None;
            let mut pause: Option<Instant> = None;
            metrics::circuit(&name, false);
            ctx.details().set("circuit", circuit.name());
            loop {
                if ctx.is_cancelled() {
                    return Ok(());
                }
                if last_stats.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    let n: i64 = client.query_one(&backlog, &[]).await.map_err(pg)?.get(0);
                    ctx.details().set("backlog", n);
                    metrics::backlog(&name, n);
                    last_stats = Some(Instant::now());
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
                client.execute(&reap, &[]).await.map_err(pg)?;
                // Half-open: one row decides.
                let take = if circuit == Circuit::HalfOpen {
                    1
                } else {
                    batch
                };
                let rows = client.query(&claim, &[&take, &lease]).await.map_err(pg)?;
                if rows.is_empty() {
                    let due: Option<f64> =
                        client.query_one(&next_due, &[]).await.map_err(pg)?.get(0);
                    let wait = due.map_or(spec.poll_interval, |s| {
                        Duration::from_secs_f64(s.clamp(0.01, 86_400.0)).min(spec.poll_interval)
                    });
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                    continue;
                }
                let mut rows: Vec<(i64, String, String, std::time::SystemTime)> = rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect();
                rows.sort_by_key(|r| r.0);
                let claim_token = rows[0].3;
                let mut next = 0;
                while next < rows.len() {
                    if matches!(circuit, Circuit::Open(_)) || pause.is_some() {
                        break;
                    }
                    let (id, key, payload, _) = &rows[next];
                    let began = Instant::now();
                    let answer = tokio::select! {
                        a = post(&uri, key, payload.clone(), spec.timeout) => a,
                        _ = ctx.cancelled() => break,
                    };
                    next += 1;
                    metrics::seconds(&name, began.elapsed());
                    let (error, after, fatal) = match answer {
                        Answer::Accepted => {
                            let marked: i64 = client
                                .query_one(&done, &[id, &claim_token, &spec.wal_topic])
                                .await
                                .map_err(pg)?
                                .get(0);
                            if circuit != Circuit::Closed(0) {
                                circuit = Circuit::Closed(0);
                                ctx.details().set("circuit", circuit.name());
                                metrics::circuit(&name, false);
                            }
                            if marked == 1 {
                                sent += 1;
                                ctx.details().set("sent", sent);
                                metrics::jobs(&name, "sent");
                            } else {
                                tracing::warn!(
                                    id,
                                    "the lease ran out before the write was marked; another instance sends it again"
                                );
                            }
                            continue;
                        }
                        Answer::Unreachable(e) => {
                            // Never seen by the backend: back in the queue
                            // uncharged, with the rest of the batch.
                            next -= 1;
                            circuit = match circuit {
                                Circuit::Closed(n) if n + 1 < threshold => Circuit::Closed(n + 1),
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
                            break;
                        }
                        Answer::Later(after, e) => {
                            circuit = match circuit {
                                Circuit::Closed(n) if n + 1 < threshold => Circuit::Closed(n + 1),
                                _ => Circuit::Open(Instant::now() + spec.circuit.cooldown),
                            };
                            if after > 0.0 {
                                // The backend asked for quiet: the rest of
                                // the batch waits too.
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
                    let outcome = client
                        .query_opt(
                            &retry,
                            &[id, &error, &max_retries, &claim_token, &after, &fatal],
                        )
                        .await
                        .map_err(pg)?;
                    if let Some(row) = outcome {
                        let failed: bool = row.get(0);
                        metrics::jobs(&name, if failed { "failed" } else { "retry" });
                        tracing::warn!(id, error = %error, failed, "memory backend did not take a write");
                    }
                    ctx.details()
                        .set("last_error", format!("row {id}: {error}"));
                    ctx.details().set("circuit", circuit.name());
                }
                if next < rows.len() {
                    // The circuit opened, the backend asked for quiet, or we
                    // stop: the rest goes back untouched.
                    let rest: Vec<i64> = rows[next..].iter().map(|r| r.0).collect();
                    client
                        .execute(&release, &[&rest, &claim_token])
                        .await
                        .map_err(pg)?;
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
            }
        })
    }
}
