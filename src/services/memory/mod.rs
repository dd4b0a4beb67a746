//! `kind = "memory-sync"` (DESIGN.md §5): durable delivery of queued
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

pub mod sql;

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value as Json, json};

use super::data::{connect, listening, pg};
use super::{BoxFuture, Context, Details, Factory, Service, ServiceError};
use crate::config::{KindSpec, MemorySyncSpec, ServiceSpec};

/// Builds memory-sync services and runs their action (`replay-failed`).
pub struct MemorySyncFactory;

fn spec_of(spec: &ServiceSpec) -> Result<MemorySyncSpec, ServiceError> {
    match &spec.kind {
        KindSpec::MemorySync(m) => Ok(m.clone()),
        other => Err(ServiceError(format!(
            "the memory-sync factory got a {} service",
            other.kind_name()
        ))),
    }
}

impl Factory for MemorySyncFactory {
    fn kind(&self) -> &str {
        "memory-sync"
    }

    fn actions(&self) -> Vec<String> {
        vec!["replay-failed".into()]
    }

    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        Ok(Box::new(MemorySync {
            spec: spec_of(spec)?,
        }))
    }

    fn action(
        &self,
        spec: &ServiceSpec,
        action: &str,
        args: Json,
        _details: Details,
    ) -> BoxFuture<Result<Json, ServiceError>> {
        let spec = spec_of(spec);
        let action = action.to_string();
        Box::pin(async move {
            let spec = spec?;
            if action != "replay-failed" {
                return Err(ServiceError(format!(
                    "kind memory-sync has no action {action:?}; known: replay-failed"
                )));
            }
            let ids: Option<Vec<i64>> = match args.get("ids") {
                None | Some(Json::Null) => None,
                Some(v) => Some(
                    v.as_array()
                        .and_then(|a| a.iter().map(Json::as_i64).collect())
                        .ok_or_else(|| ServiceError("ids must be a list of row ids".into()))?,
                ),
            };
            let q = sql::Queue::new(&spec.table, &spec.outbox_table);
            let (client, _driver) = connect(&spec.postgres).await?;
            let n = match &ids {
                None => client.execute(&q.replay(false), &[]).await,
                Some(ids) => client.execute(&q.replay(true), &[ids]).await,
            }
            .map_err(pg)?;
            if n > 0 {
                client.batch_execute(&q.notify()).await.map_err(pg)?;
            }
            Ok(json!({ "replayed": n }))
        })
    }
}

struct MemorySync {
    spec: MemorySyncSpec,
}

/// What the backend said about one row.
enum Answer {
    /// 2xx.
    Accepted,
    /// 429, 5xx, a timeout or no connection: try again, not before the
    /// given seconds (the backend's `Retry-After`, else 0).
    Later(f64, String),
    /// Any other status: the row is refused for good.
    Refused(String),
}

/// POSTs one payload.
async fn post(uri: &hyper::Uri, key: &str, body: String, timeout: Duration) -> Answer {
    let attempt = async {
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let driver = super::data::AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let req = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("warden/", env!("CARGO_PKG_VERSION")),
            )
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP request failed: {e}"))?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        // Read (and bound) the body so the answer is complete.
        let _ = http_body_util::Limited::new(res.into_body(), 64 * 1024)
            .collect()
            .await;
        drop(driver);
        Ok::<_, String>((status, retry_after))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Answer::Later(
            0.0,
            format!("no answer within {}", humantime::format_duration(timeout)),
        ),
        Ok(Err(e)) => Answer::Later(0.0, e),
        Ok(Ok((s, _))) if s.is_success() => Answer::Accepted,
        Ok(Ok((s, after))) if s.as_u16() == 429 || s.is_server_error() => {
            Answer::Later(after, format!("HTTP {s}"))
        }
        Ok(Ok((s, _))) => Answer::Refused(format!("HTTP {s}")),
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
            let q = sql::Queue::new(&spec.table, &spec.outbox_table);
            let (client, wake, _driver) = listening(&spec.postgres, &q.channel_quoted()).await?;
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
            let batch = i64::from(spec.batch.0);
            let lease = spec.lease.as_secs_f64();
            let max_retries = i32::try_from(spec.max_retries).unwrap_or(i32::MAX);
            let threshold = spec.circuit.failures.0.max(1);
            let mut failures_in_a_row = 0u32;
            let mut open_until: Option<Instant> = None;
            let mut closed = true;
            let mut sent = 0u64;
            let mut last_stats: Option<Instant> = None;
            crate::metrics::memory_circuit(&name, false);
            ctx.details().set("circuit", "closed");
            loop {
                if ctx.is_cancelled() {
                    return Ok(());
                }
                if let Some(until) = open_until {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                    // Half-open: the next POST decides.
                    open_until = None;
                    ctx.details().set("circuit", "half-open");
                }
                if last_stats.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    let n: i64 = client.query_one(&backlog, &[]).await.map_err(pg)?.get(0);
                    ctx.details().set("backlog", n);
                    crate::metrics::memory_backlog(&name, n);
                    last_stats = Some(Instant::now());
                }
                client.execute(&reap, &[]).await.map_err(pg)?;
                let rows = client.query(&claim, &[&batch, &lease]).await.map_err(pg)?;
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
                for (i, (id, key, payload, claim_token)) in rows.iter().enumerate() {
                    if open_until.is_some() || ctx.is_cancelled() {
                        // The circuit opened (or we stop): the rest waits.
                        let rest: Vec<i64> = rows[i..].iter().map(|r| r.0).collect();
                        client
                            .execute(&release, &[&rest, claim_token])
                            .await
                            .map_err(pg)?;
                        break;
                    }
                    let began = Instant::now();
                    let answer = post(&uri, key, payload.clone(), spec.timeout).await;
                    crate::metrics::memory_seconds(&name, began.elapsed());
                    let (error, after, fatal) = match answer {
                        Answer::Accepted => {
                            client
                                .execute(&done, &[id, claim_token, &spec.wal_topic])
                                .await
                                .map_err(pg)?;
                            failures_in_a_row = 0;
                            if !closed {
                                closed = true;
                                ctx.details().set("circuit", "closed");
                                crate::metrics::memory_circuit(&name, false);
                            }
                            sent += 1;
                            ctx.details().set("sent", sent);
                            crate::metrics::memory_jobs(&name, "sent");
                            continue;
                        }
                        Answer::Later(after, e) => {
                            failures_in_a_row += 1;
                            (e, after, false)
                        }
                        Answer::Refused(e) => {
                            // The backend is up and said no to this row.
                            failures_in_a_row = 0;
                            (e, 0.0, true)
                        }
                    };
                    let failed = client
                        .query_opt(
                            &retry,
                            &[id, &error, &max_retries, claim_token, &after, &fatal],
                        )
                        .await
                        .map_err(pg)?
                        .is_some_and(|r| r.get::<_, bool>(0));
                    crate::metrics::memory_jobs(&name, if failed { "failed" } else { "retry" });
                    tracing::warn!(id, error = %error, failed, "memory backend did not take a write");
                    ctx.details()
                        .set("last_error", format!("row {id}: {error}"));
                    if failures_in_a_row >= threshold {
                        tracing::warn!(
                            failures = failures_in_a_row,
                            cooldown = ?spec.circuit.cooldown,
                            "circuit open: holding writes"
                        );
                        open_until = Some(Instant::now() + spec.circuit.cooldown);
                        failures_in_a_row = 0;
                        closed = false;
                        ctx.details().set("circuit", "open");
                        crate::metrics::memory_circuit(&name, true);
                    }
                }
            }
        })
    }
}
