//! `kind = "outbox-relay"`: rows of a PostgreSQL outbox
//! table become entries of Redis streams, at least once.
//!
//! One run holds one PostgreSQL session (queries, and `LISTEN` for the
//! insert trigger's `pg_notify`, so a new row is relayed at once; the poll
//! interval is the fallback) and one Redis connection (`crate::conn`: TLS
//! as the DSN, `rediss://` and `tls_ca` say). Each round: return
//! expired leases to `pending`, claim a batch with `FOR UPDATE SKIP LOCKED`
//! (so several relays share the work), pipeline one `XADD` per row, then
//! mark the rows sent (or delete them). A row Redis refuses is retried with
//! backoff up to `max_retries`, then `failed`; a Redis outage releases the
//! claim and backs off without counting against the rows. Losing
//! PostgreSQL ends the run as a failure (the restart policy takes over).

pub mod metrics;
pub mod settings;
pub mod sql;

use std::time::Duration;

use serde_json::Value as Json;

use super::data::{listening, pg};
use super::{
    ActionError, BoxFuture, Context, Details, Factory, Registration, Service, ServiceError,
    settings_of,
};
use crate::config::secret::redact;
use crate::config::{Runs, ServiceSpec};
pub use settings::OutboxRelaySpec;

/// The registration of `kind = "outbox-relay"`.
pub fn registration() -> Registration {
    Registration::new::<OutboxRelaySpec>("outbox-relay", Runs::InProcess, OutboxFactory)
        .continuous()
        .action(super::data::replay_failed_action())
        .metrics(metrics::FAMILIES)
}

/// Builds outbox relays and runs their action (`replay-failed`).
struct OutboxFactory;

impl Factory for OutboxFactory {
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        Ok(Box::new(Relay {
            spec: settings_of::<OutboxRelaySpec>(spec)?.clone(),
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
        let at = settings_of::<OutboxRelaySpec>(spec).map(|s| s.table_at(&spec.name));
        super::data::replay_failed_in(at, args)
    }
}

struct Relay {
    spec: OutboxRelaySpec,
}

/// One claimed row.
struct Row {
    /// The claim's token: its lease end (the same for the whole batch).
    claim: std::time::SystemTime,
    id: i64,
    topic: String,
    partition_key: Option<String>,
    payload: String,
    headers: String,
    dedupe_key: Option<String>,
}

/// How a batch went to Redis.
enum Sent {
    /// Every row is in its stream.
    All,
    /// Redis is unreachable: nothing can be said of any row.
    Outage(String),
    /// Redis answered; these rows it refused, with why.
    Refused(Vec<(i64, String)>),
}

/// The backoff of a Redis outage: 0.5 s doubling to 30 s.
fn outage_delay(attempt: u32) -> Duration {
    super::data::doubling(attempt, Duration::from_secs(30))
}

/// Whether an error says Redis cannot take writes now (nothing about the
/// row): no connection, no answer, or a server state such as loading a
/// snapshot, a read-only replica after a failover, out of memory, or
/// refused credentials. These release the claim instead of charging a
/// retry to the rows.
fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.code(),
            Some(
                "LOADING"
                    | "READONLY"
                    | "MASTERDOWN"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "OOM"
                    | "NOAUTH"
                    | "WRONGPASS"
                    | "NOPERM"
                    | "BUSY"
            )
        )
}

impl Relay {
    fn xadd(&self, row: &Row) -> redis::Cmd {
        let mut c = redis::cmd("XADD");
        c.arg(format!("{}{}", self.spec.stream_prefix, row.topic));
        if let Some(n) = self.spec.max_len {
            c.arg("MAXLEN").arg("~").arg(n);
        }
        c.arg("*")
            .arg("payload")
            .arg(&row.payload)
            .arg("headers")
            .arg(&row.headers)
            .arg("outbox_id")
            .arg(row.id)
            .arg("dedupe_key")
            .arg(row.dedupe_key.as_deref().unwrap_or(""))
            .arg("partition_key")
            .arg(row.partition_key.as_deref().unwrap_or(""));
        c
    }

    /// Sends a batch as one pipeline (not a transaction: each `XADD`
    /// stands alone) and reads each command's own answer, so a refused row
    /// never makes the accepted ones go twice.
    async fn send(&self, redis: &mut redis::aio::MultiplexedConnection, rows: &[Row]) -> Sent {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for r in rows {
            pipe.add_command(self.xadd(r));
        }
        match pipe
            .query_async::<Vec<redis::RedisResult<redis::Value>>>(redis)
            .await
        {
            // The pipeline as a whole failed: nothing says which row is at
            // fault, so none is charged.
            Err(e) => Sent::Outage(redact(&e.to_string())),
            Ok(answers) => {
                if let Some(e) = answers
                    .iter()
                    .find_map(|a| a.as_ref().err().filter(|e| is_outage(e)))
                {
                    return Sent::Outage(redact(&e.to_string()));
                }
                let refused: Vec<(i64, String)> = rows
                    .iter()
                    .zip(answers)
                    .filter_map(|(r, a)| a.err().map(|e| (r.id, redact(&e.to_string()))))
                    .collect();
                if refused.is_empty() {
                    Sent::All
                } else {
                    Sent::Refused(refused)
                }
            }
        }
    }
}

impl Service for Relay {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let spec = &self.spec;
            let t = sql::Outbox::new(&spec.table);
            let (client, wake, _driver) = listening(&spec.pg(), &t.channel_quoted()).await?;
            if spec.create_schema {
                super::data::adopt(&client, &t.create_tx(), &t.indexes()).await?;
            }
            let redis_target = spec.redis_target();
            let mut redis: Option<crate::conn::redis::Connection> = None;
            let claim = client.prepare(&t.claim()).await.map_err(pg)?;
            let reap = client.prepare(&t.reap()).await.map_err(pg)?;
            let done = client
                .prepare(&if spec.delete_sent {
                    t.delete_sent()
                } else {
                    t.mark_sent()
                })
                .await
                .map_err(pg)?;
            let release = client.prepare(&t.release()).await.map_err(pg)?;
            let retry = client.prepare(&t.retry_many()).await.map_err(pg)?;
            let next_due = client.prepare(&t.next_due()).await.map_err(pg)?;
            let name = ctx.name().to_string();
            // Backlog and lag, on the pool and a timer of their own.
            let pool = super::data::pool_of(&name, &spec.pg(), spec.pool_size.0).await?;
            let _stats = {
                let name = name.clone();
                super::data::statistics(pool, t.leased(), ctx.details().clone(), move |s| {
                    metrics::stats(&name, s.backlog, s.lag_seconds)
                })
            };
            ctx.ready();
            tracing::info!(table = %spec.table, "relaying");

            let batch = i64::from(spec.batch.0);
            let lease = spec.lease.as_secs_f64();
            let max_retries = i32::try_from(spec.max_retries).unwrap_or(i32::MAX);
            let mut outages = 0u32;
            let mut published = 0u64;
            loop {
                if ctx.is_cancelled() {
                    return Ok(());
                }
                client.execute(&reap, &[]).await.map_err(pg)?;
                let mut rows: Vec<Row> = client
                    .query(&claim, &[&batch, &lease])
                    .await
                    .map_err(pg)?
                    .iter()
                    .map(|r| Row {
                        claim: r.get(6),
                        id: r.get(0),
                        topic: r.get(1),
                        partition_key: r.get(2),
                        payload: r.get(3),
                        headers: r.get(4),
                        dedupe_key: r.get(5),
                    })
                    .collect();
                if rows.is_empty() {
                    // Sleep until woken (an insert), the next retry or lease
                    // end is due, or the poll interval passes.
                    let due: Option<f64> =
                        client.query_one(&next_due, &[]).await.map_err(pg)?.get(0);
                    let wait = match due {
                        Some(s) => {
                            Duration::from_secs_f64(s.clamp(0.01, 86_400.0)).min(spec.poll_interval)
                        }
                        None => spec.poll_interval,
                    };
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    }
                    continue;
                }
                rows.sort_by_key(|r| r.id);
                metrics::batch(&name, rows.len());
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let claim_token = rows[0].claim;
                if redis.is_none() {
                    // An answer may take up to half the lease (a batch of
                    // large entries; Redis's own default is 500 ms, which
                    // would turn a slow batch into an endless re-send).
                    let timeouts = crate::conn::redis::Timeouts {
                        connect: Some(Duration::from_secs(5)),
                        response: Some((spec.lease / 2).max(Duration::from_secs(1))),
                    };
                    match crate::conn::redis::connect(&redis_target, timeouts).await {
                        Ok(c) => redis = Some(c),
                        Err(e) => {
                            client
                                .execute(&release, &[&ids, &claim_token])
                                .await
                                .map_err(pg)?;
                            let delay = outage_delay(outages);
                            outages += 1;
                            let msg = redact(&format!("cannot connect to Redis: {e}"));
                            tracing::warn!(error = %msg, delay = ?delay, "Redis unavailable; claim released");
                            ctx.details().set("last_error", msg);
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = ctx.cancelled() => return Ok(()),
                            }
                            continue;
                        }
                    }
                }
                let conn = &mut redis.as_mut().expect("connected above").conn;
                // Within half the lease: the rows are still ours when we
                // mark them.
                let sent = tokio::time::timeout(
                    (spec.lease / 2).max(Duration::from_secs(1)),
                    self.send(conn, &rows),
                )
                .await
                .unwrap_or_else(|_| {
                    Sent::Outage("Redis did not answer within half the lease".into())
                });
                match sent {
                    Sent::All => {
                        let n = client
                            .execute(&done, &[&ids, &claim_token])
                            .await
                            .map_err(pg)?;
                        if n < ids.len() as u64 {
                            tracing::warn!(
                                rows = ids.len() as u64 - n,
                                "the lease ran out before the rows were marked; another relay sends them again"
                            );
                        }
                        outages = 0;
                        published += ids.len() as u64;
                        ctx.details().set("published", published);
                        metrics::published(&name, "sent", ids.len());
                    }
                    Sent::Refused(refused) => {
                        let bad: std::collections::HashSet<i64> =
                            refused.iter().map(|(id, _)| *id).collect();
                        let good: Vec<i64> =
                            ids.iter().copied().filter(|id| !bad.contains(id)).collect();
                        client
                            .execute(&done, &[&good, &claim_token])
                            .await
                            .map_err(pg)?;
                        published += good.len() as u64;
                        metrics::published(&name, "sent", good.len());
                        // Every refused row of the batch in one statement.
                        let (bad_ids, errors): (Vec<i64>, Vec<String>) =
                            refused.iter().cloned().unzip();
                        let settled = client
                            .query(&retry, &[&bad_ids, &errors, &max_retries, &claim_token])
                            .await
                            .map_err(pg)?;
                        let error_of: std::collections::HashMap<i64, &str> =
                            refused.iter().map(|(id, e)| (*id, e.as_str())).collect();
                        for row in &settled {
                            let (id, failed): (i64, bool) = (row.get(0), row.get(1));
                            let error = error_of.get(&id).copied().unwrap_or("");
                            let result = if failed { "failed" } else { "retry" };
                            metrics::published(&name, result, 1);
                            tracing::warn!(id, error = %error, result, "Redis refused a row");
                            ctx.details()
                                .set("last_error", format!("row {id}: {error}"));
                        }
                        ctx.details().set("published", published);
                    }
                    Sent::Outage(msg) => {
                        redis = None;
                        client
                            .execute(&release, &[&ids, &claim_token])
                            .await
                            .map_err(pg)?;
                        let delay = outage_delay(outages);
                        outages += 1;
                        tracing::warn!(error = %msg, delay = ?delay, "Redis unavailable; claim released");
                        ctx.details().set("last_error", format!("Redis: {msg}"));
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = ctx.cancelled() => return Ok(()),
                        }
                    }
                }
            }
        })
    }
}
