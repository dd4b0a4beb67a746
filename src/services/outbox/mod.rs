//! `kind = "outbox-relay"`: rows of a PostgreSQL outbox
//! table become entries of Redis streams, at least once.
//!
//! A run takes a session of the service's pool for each round, keeps one
//! session of its own only to `LISTEN` for the insert trigger's
//! `pg_notify` (so a new row is relayed at once; the poll interval is the
//! fallback), and one Redis connection (`crate::conn`: TLS as the DSN,
//! `rediss://` and `tls_ca` say). Each round: return
//! expired leases to `pending`, claim a batch with `FOR UPDATE SKIP LOCKED`
//! (so several relays share the work), pipeline one `XADD` per row, then
//! mark the rows sent (or delete them). A row Redis refuses is retried with
//! backoff up to `max_retries`, then `failed`; a Redis outage releases the
//! claim and backs off without counting against the rows. Losing
//! PostgreSQL costs a round (pause, then a new session); a statement
//! PostgreSQL refuses ends the run as a failure.

pub mod metrics;
pub mod settings;
pub mod sql;

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::data::horizon::Horizon;
use super::data::{answer, pg, step};
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
    id: i64,
    topic: String,
    partition_key: Option<String>,
    payload: String,
    headers: String,
    dedupe_key: Option<String>,
    /// The event's identity ([`sql::Outbox::EVENT_ID`]).
    event_id: String,
}

/// How a batch went to Redis.
enum Sent {
    /// Every row is in its stream.
    All,
    /// Redis is unreachable: nothing can be said of any row.
    Outage(String),
    /// Redis answered; these rows it refused, with why.
    Refused(Vec<(i64, String)>),
    /// Redis did not answer the whole batch within half the lease: too
    /// much for the link, or Redis is gone (the caller tells which).
    TooSlow,
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
                    | "BUSY"
            )
        )
        // A user that may not run XADD at all needs the operator; one that
        // may not write this row's stream key refuses this row alone.
        || (e.code() == Some("NOPERM") && !noperm_on_a_key(e.detail().unwrap_or("")))
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
            .arg("event_id")
            .arg(&row.event_id)
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
        if rows.is_empty() {
            return Sent::All;
        }
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

/// Says so when fewer than the `sent` rows were marked (`marked`): the
/// lease ran out first (another relay took them) or the rows changed
/// under the relay; they are sent again, and not counted as sent.
fn mark_lost(sent: usize, marked: u64) {
    if marked < sent as u64 {
        tracing::warn!(
            rows = sent as u64 - marked,
            "the lease ran out before the rows were marked; another relay sends them again"
        );
    }
}

/// Whether a `NOPERM` says the user may not touch a key of the command
/// (the row's stream: that row's fault), rather than run the command at
/// all ("User <name> has no permissions to run the 'xadd' command": the
/// operator's), by Redis's own words, not a name that holds "key".
fn noperm_on_a_key(detail: &str) -> bool {
    detail.contains("one of the keys") || detail.contains("access a key")
}

/// What a worker does after a round.
enum Next {
    /// Claim again at once.
    Go,
    /// Nothing to claim: wait for an insert, or this long at most.
    Idle(Duration),
    /// Redis is out: wait this long, whatever is inserted.
    Pause(Duration),
}

/// What a relay keeps from one round to the next.
struct Relaying {
    name: String,
    redis_target: crate::config::types::RedisTarget,
    redis: Option<crate::conn::redis::Connection>,
    /// Redis outages in a row.
    outages: u32,
    /// Rows published by this run.
    published: u64,
    /// The session kept between wake-ups (none after a failure).
    session: Option<deadpool_postgres::Object>,
    /// What the next claim asks for.
    claims: Claims,
}

/// What the relay's next claim asks for, and from where.
struct Claims {
    /// Where claims start scanning.
    horizon: Horizon,
    /// Rows a claim asks for: `batch`, halved after a batch Redis could
    /// not take within half the lease (a slow link, large rows), and grown
    /// back by a quarter after each batch that went through.
    take: i64,
    /// When the next claim may run, after a claim that did not fill its
    /// batch (`linger`).
    linger: Option<Instant>,
    /// Claims in a row that found rows: at [`BUSY`], the relay stops
    /// hearing the insert trigger (it looks for rows anyway) until a claim
    /// finds none.
    streak: u32,
    hearing: super::data::Hearing,
}

/// Claims in a row that found rows, after which the relay stops hearing
/// each producer's notification: rows are coming without pause. Below
/// it, a relay that wakes for a row now and then keeps listening (each
/// stop and resume costs the listening session two statements).
const BUSY: u32 = 3;

/// A claimed row as the relay sends it, or why it cannot be sent.
fn read_row(r: &tokio_postgres::Row) -> Result<Row, String> {
    let text = |i, column| super::data::needed_text(r, i, column, "the relay");
    Ok(Row {
        id: r.get(0),
        topic: text(1, "topic")?,
        partition_key: r.try_get(2).map_err(|e| format!("partition_key: {e}"))?,
        payload: text(3, "payload")?,
        headers: text(4, "headers")?,
        dedupe_key: r.try_get(5).map_err(|e| format!("dedupe_key: {e}"))?,
        event_id: r.get(6),
    })
}

struct Batch {
    /// The rows that can be sent.
    rows: Vec<Row>,
    /// Every row claimed, those that cannot be sent included.
    ids: Vec<i64>,
    /// Rows that cannot be sent as they are (a NULL `topic`, `payload` or
    /// `headers` in a table the user made): each fails at once with its
    /// reason, and the rest of the batch goes on.
    bad: Vec<(i64, String)>,
    /// When the claim was made (its lease began before).
    claimed_at: Instant,
    /// The claim's token: its lease end (the same for the whole batch).
    token: std::time::SystemTime,
}

/// The prepared statements of a round's session, in the order of
/// [`Relay::statements`].
struct Statements {
    reap: tokio_postgres::Statement,
    claim: tokio_postgres::Statement,
    /// The claim while the bound is held (see `Leased::claim`).
    claim_held: tokio_postgres::Statement,
    done: tokio_postgres::Statement,
    release: tokio_postgres::Statement,
    retry: tokio_postgres::Statement,
}

impl Service for Relay {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let spec = &self.spec;
            let t = sql::Outbox::new(&spec.table);
            let name = ctx.name().to_string();
            // Every statement goes through the service's pool; only the
            // LISTEN keeps a session of its own.
            let pool = super::data::pool_of(&name, &spec.pg(), spec.pool_size.0).await?;
            let mut listener =
                super::data::listen(&spec.pg(), &t.channel_quoted(), spec.listen_check).await?;
            {
                let c = super::data::pooled(&pool).await?;
                if spec.create_schema {
                    super::data::adopt(&c, &t.leased().table, &t.create_tx(), &t.indexes()).await?;
                }
                crate::probe::table(&c, &sql::Outbox::needs(&spec.table, false))
                    .await
                    .map_err(ServiceError)?;
                // Every statement is checked against the table now, not
                // at the first row.
                for st in self.statements(&t) {
                    c.prepare_cached(&st).await.map_err(pg)?;
                }
            }
            // Backlog and lag, on the pool and a timer of their own.
            let _stats = {
                let name = name.clone();
                super::data::statistics(
                    pool.clone(),
                    spec.pg().limits.answer_within(),
                    t.leased(),
                    ctx.details().clone(),
                    move |s| metrics::stats(&name, s.backlog, s.lag_seconds),
                )
            };
            ctx.ready();
            tracing::info!(table = %spec.table, "relaying");

            let mut state = Relaying {
                name,
                redis_target: spec.redis_target(),
                redis: None,
                outages: 0,
                published: 0,
                session: None,
                claims: Claims {
                    horizon: Horizon::new(
                        super::data::horizon::sweep_every(spec.lease),
                        Instant::now(),
                    ),
                    take: i64::from(spec.batch.0),
                    linger: None,
                    streak: 0,
                    hearing: listener.hearing(),
                },
            };
            let mut lost = 0u32;
            loop {
                if ctx.is_cancelled() {
                    return Ok(());
                }
                let next = match self.rounds(&pool, &t, &ctx, &mut state).await {
                    Ok(next) => {
                        if lost > 0 {
                            tracing::info!("PostgreSQL is back");
                            lost = 0;
                        }
                        next
                    }
                    Err(super::data::Fault::Fatal(e)) => return Err(e),
                    Err(super::data::Fault::Lost(e)) => {
                        super::data::forget_sessions(&pool);
                        let delay = super::data::lost_delay(lost);
                        lost += 1;
                        tracing::warn!(error = %e, delay = ?delay, "PostgreSQL unavailable; trying again");
                        ctx.details().set("last_error", e.0);
                        Next::Pause(delay)
                    }
                };
                match next {
                    Next::Go => {}
                    Next::Idle(wait) if listener.stopped() => {
                        // Deaf while rows kept coming: hear again, then
                        // look once more before waiting (a row committed
                        // meanwhile was not notified).
                        tokio::select! {
                            // A second at least: a retry or sweep due
                            // soon must not cut the confirmation short.
                            _ = listener.resume(wait.max(Duration::from_secs(1))) => {}
                            _ = ctx.cancelled() => return Ok(()),
                        }
                    }
                    Next::Idle(wait) => tokio::select! {
                        _ = listener.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    },
                    Next::Pause(delay) => tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = ctx.cancelled() => return Ok(()),
                    },
                }
            }
        })
    }
}

impl Relay {
    /// The statements of a round, in the order of [`Statements`].
    fn statements(&self, t: &sql::Outbox) -> [String; 6] {
        [
            t.reap(),
            t.claim(false),
            if self.spec.delete_sent {
                t.delete_sent()
            } else {
                t.mark_sent()
            },
            t.release(),
            t.retry_many(),
            t.claim(true),
        ]
    }

    /// Claims a batch (reaping expired leases first when a sweep is due)
    /// and reads a snapshot for the horizon in the same round trip.
    async fn claim(
        &self,
        client: &tokio_postgres::Client,
        st: &Statements,
        claims: &mut Claims,
    ) -> Result<Option<Batch>, super::data::Fault> {
        let Claims {
            horizon,
            take,
            linger,
            streak,
            hearing,
        } = claims;
        let take = *take;
        if let Some(until) = linger.take() {
            tokio::time::sleep_until(until.into()).await;
        }
        let now = Instant::now();
        let sweep = horizon.sweep_due(now);
        if sweep {
            let reaped: Vec<i64> = client
                .query(&st.reap, &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !reaped.is_empty() {
                tracing::info!(rows = reaped.len(), "expired leases returned to pending");
                horizon.returned(&reaped, now);
            }
        }
        let from = horizon.claim_from(now);
        let lease = self.spec.lease.as_secs_f64();
        let bytes = i64::try_from(self.spec.batch_bytes.0).unwrap_or(i64::MAX);
        let claim = if horizon.held() {
            &st.claim_held
        } else {
            &st.claim
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&take, &lease, &from, &bytes];
        // The claim answers its own snapshot, for the horizon.
        let claimed = super::data::Claimed::read(client.query(claim, &params).await?);
        if sweep {
            horizon.swept(now, now.elapsed());
        }
        let raw = &claimed.rows;
        let mut rows = Vec::with_capacity(raw.len());
        let mut bad = Vec::new();
        let mut ids = Vec::with_capacity(raw.len());
        let mut token = None;
        for r in raw {
            // The id and the claim are the table's key and the claim's own
            // writing; the rest is what producers wrote.
            let (id, claim): (i64, std::time::SystemTime) = (r.get(0), r.get(7));
            ids.push(id);
            token.get_or_insert(claim);
            match read_row(r) {
                Ok(row) => rows.push(row),
                Err(why) => bad.push((id, why)),
            }
        }
        rows.sort_by_key(|r| r.id);
        ids.sort_unstable();
        let full = claimed.full(take);
        horizon.claimed(&ids, full, claimed.xmin, claimed.xmax);
        // Rows are coming one by one: the next claim lets them gather.
        if !ids.is_empty() && !full && !self.spec.linger.is_zero() {
            *linger = Some(now + self.spec.linger);
        }
        if ids.is_empty() {
            *streak = 0;
        } else {
            *streak += 1;
            if *streak == BUSY {
                hearing.stop();
            }
        }
        let Some(token) = token else {
            return Ok(None);
        };
        Ok(Some(Batch {
            rows,
            ids,
            bad,
            claimed_at: now,
            token,
        }))
    }

    /// Rounds while there are rows, on the session the relay keeps from
    /// one wake-up to the next (a session of the pool; after a failure a
    /// new one, checked as the pool takes it): no check, no `SET` per
    /// wake-up on the way from an insert to its stream.
    async fn rounds(
        &self,
        pool: &crate::conn::postgres::Pool,
        t: &sql::Outbox,
        ctx: &Context,
        state: &mut Relaying,
    ) -> Result<Next, super::data::Fault> {
        let (client, fresh) = match state.session.take() {
            Some(c) => (c, false),
            None => (super::data::take(pool).await?, true),
        };
        let next = self.rounds_on(&client, fresh, t, ctx, state).await;
        if next.is_ok() {
            state.session = Some(client);
        }
        next
    }

    /// Claims a batch, then sends it to Redis while the next batch is
    /// claimed, and settles it, until nothing is left.
    async fn rounds_on(
        &self,
        client: &deadpool_postgres::Object,
        fresh: bool,
        t: &sql::Outbox,
        ctx: &Context,
        state: &mut Relaying,
    ) -> Result<Next, super::data::Fault> {
        let spec = &self.spec;
        // Each step waits for PostgreSQL's answer a bounded time: a
        // session behind a dead network is lost, not hung.
        let within = spec.pg().limits.answer_within();
        let [reap, claim, done, release, retry, claim_held] = answer(
            within,
            super::data::prepare_all(client, &self.statements(t)),
        )
        .await?;
        let client: &tokio_postgres::Client = client;
        let st = Statements {
            reap,
            claim,
            claim_held,
            done,
            release,
            retry,
        };
        // The relay's own statements commit without waiting for the WAL
        // flush: a crash of PostgreSQL can forget the last claims and
        // marks, and those rows are sent again (at least once, as ever);
        // none is lost. Sent ahead of the first claim, in its round trip.
        let (set, first) = tokio::join!(
            biased;
            async {
                if fresh {
                    answer(within, client.batch_execute("SET synchronous_commit = off")).await
                } else {
                    Ok(())
                }
            },
            step(within, self.claim(client, &st, &mut state.claims))
        );
        set?;
        let mut next = first?;
        loop {
            let Some(batch) = next.take() else {
                let now = Instant::now();
                let mut wait = spec
                    .poll_interval
                    .min(state.claims.horizon.until_sweep(now));
                if let Some(retry) = state.claims.horizon.next_retry(now) {
                    wait = wait.min(retry);
                }
                return Ok(Next::Idle(wait.max(Duration::from_millis(10))));
            };
            metrics::batch(&state.name, batch.rows.len());
            if state.redis.is_none() {
                // An answer may take up to half the lease (a batch of
                // large entries; Redis's own default is 500 ms, which
                // would turn a slow batch into an endless re-send).
                let timeouts = crate::conn::redis::Timeouts {
                    connect: Some(spec.network_timeout),
                    response: Some((spec.lease / 2).max(Duration::from_secs(1))),
                    network: Some(spec.network_timeout),
                };
                match crate::conn::redis::connect(&state.redis_target, timeouts).await {
                    Ok(c) => state.redis = Some(c),
                    Err(e) => {
                        step(within, self.release(client, &st, state, &batch)).await?;
                        let msg = redact(&format!("cannot connect to Redis: {e}"));
                        return Ok(self.outage(ctx, state, msg));
                    }
                }
            }
            let conn = &mut state.redis.as_mut().expect("connected above").conn;
            // Within half the lease from the claim (the lease of a batch
            // claimed while the one before was sent is running already):
            // the rows are still ours when we mark them. The next batch is
            // claimed meanwhile.
            let budget = (spec.lease / 2).max(Duration::from_secs(1));
            let deadline = batch.claimed_at + budget;
            let send_began = Instant::now();
            let (sent, mut claimed) = tokio::join!(
                async {
                    tokio::time::timeout_at(deadline.into(), self.send(conn, &batch.rows))
                        .await
                        .unwrap_or(Sent::TooSlow)
                },
                async {
                    if ctx.is_cancelled() {
                        Ok(None)
                    } else {
                        step(within, self.claim(client, &st, &mut state.claims)).await
                    }
                }
            );
            let reclaim = matches!(sent, Sent::TooSlow);
            let sent = match sent {
                Sent::TooSlow => {
                    // The pipeline's answers are still on their way: the
                    // connection goes, and so does the next batch.
                    state.redis = None;
                    match std::mem::replace(&mut claimed, Ok(None)) {
                        Ok(Some(next)) => {
                            step(within, self.release(client, &st, state, &next)).await?
                        }
                        Ok(None) => {}
                        Err(f) => {
                            step(within, self.release(client, &st, state, &batch)).await?;
                            return Err(f);
                        }
                    }
                    if send_began.elapsed() < budget * 3 / 4 {
                        // Most of the time went before the send began (the
                        // batch before it, its marks): not the link's doing.
                        // Back uncharged, and claimed again with a lease,
                        // and a time, of its own.
                        step(within, self.release(client, &st, state, &batch)).await?;
                        next = step(within, self.claim(client, &st, &mut state.claims)).await?;
                        continue;
                    }
                    let rows = batch.rows.len();
                    let bytes: usize = batch
                        .rows
                        .iter()
                        .map(|r| r.payload.len() + r.headers.len())
                        .sum();
                    if let Err(msg) = self.redis_alive(state).await {
                        step(within, self.release(client, &st, state, &batch)).await?;
                        return Ok(self.outage(ctx, state, format!("Redis: {msg}")));
                    }
                    if rows > 1 {
                        // Redis is there: the batch was too much for the
                        // link. It goes back uncharged, and the claims ask
                        // for half as many rows.
                        step(within, self.release(client, &st, state, &batch)).await?;
                        state.claims.take = (rows as i64 / 2).max(1);
                        tracing::warn!(
                            rows,
                            bytes,
                            take = state.claims.take,
                            "Redis took longer than half the lease over a batch; claiming fewer rows"
                        );
                        next = step(within, self.claim(client, &st, &mut state.claims)).await?;
                        continue;
                    }
                    // One row that does not fit: that row's fault.
                    Sent::Refused(
                        batch
                            .rows
                            .iter()
                            .map(|r| {
                                (r.id, format!("Redis did not take this row ({bytes} bytes) within half the lease: too large for the link"))
                            })
                            .collect(),
                    )
                }
                other => other,
            };
            if !matches!(sent, Sent::Outage(_)) {
                // Back towards `batch` by a quarter at a time: a link that
                // took half as much must not be tried with double at once.
                let batch_size = i64::from(spec.batch.0);
                state.claims.take =
                    (state.claims.take + (state.claims.take / 4).max(1)).min(batch_size);
            }
            if let Sent::Outage(msg) = sent {
                state.redis = None;
                step(within, self.release(client, &st, state, &batch)).await?;
                if let Ok(Some(claimed)) = &claimed {
                    step(within, self.release(client, &st, state, claimed)).await?;
                }
                claimed?;
                return Ok(self.outage(ctx, state, format!("Redis: {msg}")));
            }
            step(within, self.settle(client, &st, ctx, state, &batch, sent)).await?;
            next = claimed?;
            if next.is_none() && reclaim && !ctx.is_cancelled() {
                // The batch after a row too large for the link was given
                // back: claimed again now, not at the poll.
                next = step(within, self.claim(client, &st, &mut state.claims)).await?;
            }
            if ctx.is_cancelled() {
                if let Some(b) = next.take() {
                    step(within, self.release(client, &st, state, &b)).await?;
                }
                return Ok(Next::Go);
            }
        }
    }

    /// Rows that cannot be sent fail at once, each with its reason (no
    /// retry can make a NULL column readable); `replay-failed` brings them
    /// back once fixed.
    async fn fail_unreadable(
        &self,
        client: &tokio_postgres::Client,
        st: &Statements,
        ctx: &Context,
        state: &mut Relaying,
        batch: &Batch,
    ) -> Result<(), super::data::Fault> {
        let (bad_ids, errors): (Vec<i64>, Vec<String>) = batch.bad.iter().cloned().unzip();
        let settled = client
            .query(&st.retry, &[&bad_ids, &errors, &0i32, &batch.token])
            .await?;
        metrics::published(&state.name, "failed", settled.len());
        for (id, error) in &batch.bad {
            tracing::warn!(id, error = %error, "a row the relay cannot send failed");
            ctx.details()
                .set("last_error", format!("row {id}: {error}"));
        }
        Ok(())
    }

    /// After a batch Redis did not answer in time: whether Redis itself
    /// answers (a new connection and a `PING` within `network_timeout`), or
    /// why not.
    async fn redis_alive(&self, state: &mut Relaying) -> Result<(), String> {
        let network = self.spec.network_timeout;
        let timeouts = crate::conn::redis::Timeouts {
            connect: Some(network),
            response: Some(network),
            network: Some(network),
        };
        let mut c = crate::conn::redis::connect(&state.redis_target, timeouts)
            .await
            .map_err(|e| redact(&format!("cannot connect to Redis: {e}")))?;
        redis::cmd("PING")
            .query_async::<()>(&mut c.conn)
            .await
            .map_err(|e| redact(&e.to_string()))?;
        Ok(())
    }

    /// A batch goes back unclaimed (a Redis outage, a stop), its retries
    /// untouched.
    async fn release(
        &self,
        client: &tokio_postgres::Client,
        st: &Statements,
        state: &mut Relaying,
        batch: &Batch,
    ) -> Result<(), super::data::Fault> {
        client
            .execute(&st.release, &[&batch.ids, &batch.token])
            .await?;
        state.claims.horizon.returned(&batch.ids, Instant::now());
        Ok(())
    }

    /// Redis is out: back off (0.5 s doubling to 30 s).
    fn outage(&self, ctx: &Context, state: &mut Relaying, msg: String) -> Next {
        let delay = outage_delay(state.outages);
        state.outages += 1;
        tracing::warn!(error = %msg, delay = ?delay, "Redis unavailable; claim released");
        ctx.details().set("last_error", msg);
        Next::Pause(delay)
    }

    /// Marks what Redis took as sent (or deletes it), and gives each row
    /// it refused a retry, or `failed`.
    async fn settle(
        &self,
        client: &tokio_postgres::Client,
        st: &Statements,
        ctx: &Context,
        state: &mut Relaying,
        batch: &Batch,
        sent: Sent,
    ) -> Result<(), super::data::Fault> {
        let max_retries = i32::try_from(self.spec.max_retries).unwrap_or(i32::MAX);
        let unreadable: std::collections::HashSet<i64> =
            batch.bad.iter().map(|(id, _)| *id).collect();
        let readable: Vec<i64>;
        let ids = if unreadable.is_empty() {
            &batch.ids
        } else {
            readable = batch
                .ids
                .iter()
                .copied()
                .filter(|id| !unreadable.contains(id))
                .collect();
            &readable
        };
        if !batch.bad.is_empty() {
            self.fail_unreadable(client, st, ctx, state, batch).await?;
        }
        let name = state.name.clone();
        let name = name.as_str();
        match sent {
            Sent::All => {
                let n = client.execute(&st.done, &[ids, &batch.token]).await?;
                mark_lost(ids.len(), n);
                state.outages = 0;
                // Only the rows marked: the others are sent again.
                state.published += n;
                ctx.details().set("published", state.published);
                metrics::published(name, "sent", n as usize);
            }
            Sent::Refused(refused) => {
                let bad: std::collections::HashSet<i64> =
                    refused.iter().map(|(id, _)| *id).collect();
                let good: Vec<i64> = ids.iter().copied().filter(|id| !bad.contains(id)).collect();
                let n = client.execute(&st.done, &[&good, &batch.token]).await?;
                mark_lost(good.len(), n);
                state.published += n;
                metrics::published(name, "sent", n as usize);
                // Every refused row of the batch in one statement.
                let (bad_ids, errors): (Vec<i64>, Vec<String>) = refused.iter().cloned().unzip();
                let settled = client
                    .query(&st.retry, &[&bad_ids, &errors, &max_retries, &batch.token])
                    .await?;
                let error_of: std::collections::HashMap<i64, &str> =
                    refused.iter().map(|(id, e)| (*id, e.as_str())).collect();
                let now = Instant::now();
                for row in &settled {
                    let (id, due, failed): (i64, f64, bool) = (row.get(0), row.get(1), row.get(2));
                    let error = error_of.get(&id).copied().unwrap_or("");
                    let result = if failed { "failed" } else { "retry" };
                    if !failed {
                        let due = Duration::from_secs_f64(due.clamp(0.0, 86_400.0));
                        state.claims.horizon.returned(&[id], now + due);
                    }
                    metrics::published(name, result, 1);
                    tracing::warn!(id, error = %error, result, "Redis refused a row");
                    ctx.details()
                        .set("last_error", format!("row {id}: {error}"));
                }
                ctx.details().set("published", state.published);
            }
            Sent::Outage(_) | Sent::TooSlow => unreachable!("the batch was released"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::noperm_on_a_key;

    #[test]
    fn a_noperm_on_a_key_is_told_from_one_on_the_command() {
        assert!(noperm_on_a_key(
            "this user has no permissions to access one of the keys used as arguments"
        ));
        assert!(noperm_on_a_key("No permissions to access a key"));
        // A user whose name holds "key" may still lack the command.
        assert!(!noperm_on_a_key(
            "User apikey-relay has no permissions to run the 'xadd' command"
        ));
        assert!(!noperm_on_a_key(""));
    }
}
