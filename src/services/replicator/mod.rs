//! `kind = "stream-replicator"`: entries of Redis streams become rows of
//! a PostgreSQL table, each event once.
//!
//! One consumer group per service (`group`, default the service's name)
//! on each stream, created at start (`MKSTREAM`, from the stream's first
//! entry); each warden process reads as its own consumer, so several
//! share the work. A round reads a batch with `XREADGROUP`, applies it in
//! one statement (`INSERT ... ON CONFLICT (event_id) DO NOTHING`: an
//! event delivered twice is a duplicate, not a second row), commits, and
//! only then `XACK`s. An entry that cannot be applied (no payload, a
//! payload that is not JSON or beyond the service's bounds, a row
//! PostgreSQL refuses: a refused batch is split until the entry at fault
//! is found, and the rest applied once) or that was
//! delivered more than `max_deliveries` times goes to the dead-letter
//! queue (the stream `<stream>.dlq` and the table `warden_dlq`, under a
//! key of its own: service, stream, entry id) and is acknowledged, so a
//! poison entry never stops the stream nor crash-loops the service. A
//! janitor claims entries left pending longer than `min_idle` by a
//! consumer that went away (`XAUTOCLAIM`). Action `replay-dlq` puts dead
//! letters back on their streams.
//!
//! PostgreSQL statements go through the service's pool; losing
//! PostgreSQL or Redis costs a round (pause, then again), and the entries
//! of that round, still pending, are read again.

pub mod metrics;
pub mod settings;
pub mod sql;
pub mod stream;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;
use serde_json::Value as Json;

use super::data::{Fault, answer, pg};
use super::{
    ActionError, BoxFuture, Context, Details, Factory, Registration, Service, ServiceError,
    settings_of,
};
use crate::config::Action;
use crate::config::secret::redact;
use crate::config::{Runs, ServiceSpec};
pub use settings::StreamReplicatorSpec;
use stream::Entry;

/// The registration of `kind = "stream-replicator"`.
pub fn registration() -> Registration {
    Registration::new::<StreamReplicatorSpec>(
        "stream-replicator",
        Runs::InProcess,
        ReplicatorFactory,
    )
    .continuous()
    .action(replay_dlq_action())
    .metrics(metrics::FAMILIES)
}

/// Removes the consumers of group `ARGV[1]` on stream `KEYS[1]`, other
/// than `ARGV[2]`, that hold no pending entry and have been idle longer
/// than `ARGV[3]` ms. One script, so that no consumer reads an entry
/// between the check and its removal (removing a consumer drops its
/// pending entries). Answers how many went.
const REMOVE_IDLE_CONSUMERS: &str = r"
local removed = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
";

/// How long one `XREADGROUP` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// How often pending and lag are read.
const STATS_EVERY: Duration = Duration::from_secs(1);

struct ReplicatorFactory;

impl Factory for ReplicatorFactory {
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        Ok(Box::new(Replicator {
            spec: settings_of::<StreamReplicatorSpec>(spec)?.clone(),
        }))
    }

    fn action(
        &self,
        spec: &ServiceSpec,
        _action: &str,
        args: Json,
        _details: Details,
    ) -> BoxFuture<Result<Json, ActionError>> {
        // `replay-dlq` is the kind's only action.
        let settings = settings_of::<StreamReplicatorSpec>(spec).cloned();
        let name = spec.name.clone();
        Box::pin(async move { replay_dlq(&name, &settings?, &args).await })
    }
}

struct Replicator {
    spec: StreamReplicatorSpec,
}

/// What a replicator keeps from one round to the next.
struct Replicating {
    name: String,
    group: String,
    consumer: String,
    redis: Option<crate::conn::redis::Connection>,
    /// Read this consumer's own pending entries (`0`) before new ones
    /// (`>`): at start, and after a round that did not acknowledge.
    own_first: bool,
    /// A batch read but not applied (PostgreSQL was lost while applying
    /// it): applied again as it is, without reading it again, which
    /// would count one more delivery of each entry (an outage would push
    /// good entries past `max_deliveries`).
    held: Option<Vec<Entry>>,
    /// New entries read while the batch before them was being applied
    /// (kept when PostgreSQL is lost: reading them again would count a
    /// delivery more).
    prefetched: Option<Vec<Entry>>,
    /// The session kept from one round to the next (none after a
    /// failure: the next round takes one from the pool, checked).
    session: Option<deadpool_postgres::Object>,
    /// Redis outages in a row.
    outages: u32,
    applied: u64,
    duplicates: u64,
    dead: u64,
    last_janitor: Option<Instant>,
    /// Where each stream's janitor scan goes on (absent: from the start).
    janitor_from: HashMap<String, String>,
    /// Whether the janitor removes consumers that went away (until Redis
    /// refuses it).
    cleanup: bool,
    last_stats: Option<Instant>,
    /// When replayed dead letters past `dlq_keep_replayed` were last
    /// deleted.
    last_prune: Option<Instant>,
    /// Why PostgreSQL last refused an entry that is being delivered again
    /// (by [`entry_key`]): the reason its dead letter gives, should it
    /// pass `max_deliveries`.
    refusals: HashMap<String, String>,
    /// Batches in a row whose every entry PostgreSQL refused.
    refused_rounds: u32,
}

/// How many refusals [`Replicating::refusals`] keeps; past that it starts
/// afresh (a dead letter then gives the delivery count alone).
const MAX_REFUSALS: usize = 10_000;

/// An entry's key among the refusals: its stream and id.
fn entry_key(e: &Entry) -> String {
    format!("{} {}", e.stream, e.id)
}

/// A Redis error in words, passwords masked.
fn redis_words(e: &redis::RedisError) -> String {
    redact(&e.to_string())
}

/// This process's consumer name in every group: the host and process,
/// so that two wardens (or a restarted one) never read as one consumer.
fn consumer_name(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "warden".to_string());
    format!("{host}-{}-{service}", std::process::id())
}

impl Service for Replicator {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let spec = &self.spec;
            let name = ctx.name().to_string();
            let replica = sql::Replica::new(&spec.table, spec.columns.as_ref());
            let pool = super::data::pool_of(&name, &spec.pg(), spec.pool_size.0).await?;
            {
                let c = super::data::pooled(&pool).await?;
                if spec.create_schema {
                    super::data::adopt(&c, "", &replica.create(), &[]).await?;
                }
                // The statements are checked against the tables now.
                c.prepare_cached(&replica.apply()).await.map_err(pg)?;
                c.prepare_cached(&replica.dead_letters())
                    .await
                    .map_err(pg)?;
            }
            let mut state = Replicating {
                group: spec.group_of(&name),
                consumer: consumer_name(&name),
                name,
                redis: None,
                own_first: true,
                held: None,
                prefetched: None,
                session: None,
                outages: 0,
                applied: 0,
                duplicates: 0,
                dead: 0,
                last_janitor: None,
                janitor_from: HashMap::new(),
                cleanup: true,
                last_stats: None,
                last_prune: None,
                refusals: HashMap::new(),
                refused_rounds: 0,
            };
            // Redis must be there at start: the groups are made now.
            self.connect(&mut state)
                .await
                .map_err(|e| ServiceError(format!("Redis: {e}")))?;
            ctx.ready();
            tracing::info!(streams = ?spec.streams, group = %state.group, consumer = %state.consumer, "replicating");
            let mut lost = 0u32;
            loop {
                if ctx.is_cancelled() {
                    return Ok(());
                }
                let round = tokio::select! {
                    r = self.round(&pool, &replica, &ctx, &mut state) => r,
                    _ = ctx.cancelled() => return Ok(()),
                };
                let pause = match round {
                    Ok(None) => {
                        if lost > 0 {
                            tracing::info!("PostgreSQL is back");
                            lost = 0;
                        }
                        continue;
                    }
                    Ok(Some(pause)) => pause,
                    Err(Fault::Fatal(e)) => return Err(e),
                    Err(Fault::Lost(e)) => {
                        super::data::forget_sessions(&pool);
                        let delay = super::data::lost_delay(lost);
                        lost += 1;
                        state.own_first = true;
                        tracing::warn!(error = %e, delay = ?delay, "PostgreSQL unavailable; trying again");
                        ctx.details().set("last_error", e.0);
                        delay
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = ctx.cancelled() => return Ok(()),
                }
            }
        })
    }
}

impl Replicator {
    /// Connects to Redis and makes the groups (those there already stay
    /// as they are).
    async fn connect(&self, state: &mut Replicating) -> Result<(), String> {
        let timeouts = crate::conn::redis::Timeouts {
            connect: Some(self.spec.network_timeout),
            // The BLOCK of a read, and the network's time.
            response: Some(BLOCK + self.spec.network_timeout),
            network: Some(self.spec.network_timeout),
        };
        let mut c = crate::conn::redis::connect(&self.spec.redis_target(), timeouts)
            .await
            .map_err(|e| redact(&e.to_string()))?;
        for s in &self.spec.streams {
            let made: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(s)
                .arg(&state.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut c.conn)
                .await;
            match made {
                Ok(_) => {
                    tracing::info!(stream = %s, group = %state.group, "consumer group created")
                }
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(format!("cannot create group on {s:?}: {}", redis_words(&e))),
            }
        }
        state.redis = Some(c);
        Ok(())
    }

    /// A Redis outage: the connection is dropped, the round pauses (0.5 s
    /// doubling to 30 s) and the next one reads this consumer's pending
    /// entries first.
    fn outage(&self, state: &mut Replicating, ctx: &Context, error: String) -> Duration {
        state.redis = None;
        state.own_first = true;
        // Read again as this consumer's own pending entries.
        state.prefetched = None;
        let delay = super::data::doubling(state.outages, Duration::from_secs(30));
        state.outages += 1;
        tracing::warn!(error = %error, delay = ?delay, "Redis unavailable; trying again");
        ctx.details().set("last_error", format!("Redis: {error}"));
        delay
    }

    /// One round: statistics and the janitor when due, a batch read,
    /// applied and acknowledged. `Some(pause)` after a Redis outage.
    async fn round(
        &self,
        pool: &crate::conn::postgres::Pool,
        replica: &sql::Replica,
        ctx: &Context,
        state: &mut Replicating,
    ) -> Result<Option<Duration>, Fault> {
        if state.redis.is_none()
            && let Err(e) = self.connect(state).await
        {
            return Ok(Some(self.outage(state, ctx, e)));
        }
        let stats_due = state.last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY);
        if stats_due {
            state.last_stats = Some(Instant::now());
            if let Err(e) = self.stats(state, ctx).await {
                return Ok(Some(self.outage(state, ctx, redis_words(&e))));
            }
        }
        // PostgreSQL first: while it is away nothing is read (each read
        // of a pending entry counts a delivery).
        let client = match state.session.take() {
            Some(c) => c,
            None => super::data::take(pool).await?,
        };
        if stats_due {
            // The dead letters waiting for attention (not replayed).
            let within = self.spec.pg().limits.answer_within();
            let size: i64 = answer(
                within,
                client.query_one(&sql::dead_letter_count(), &[&state.name]),
            )
            .await?
            .get(0);
            ctx.details().set("dlq_size", size);
            metrics::dlq_size(&state.name, size);
            // Replayed dead letters are kept a while (what was replayed,
            // and why it had failed), then deleted: a scheduled replay of
            // an entry that stays broken adds a row each time.
            let keep = self.spec.dlq_keep_replayed;
            let prune_every = (keep / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
            if state.last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                state.last_prune = Some(Instant::now());
                let pruned = answer(
                    within,
                    client.execute(&sql::prune_replayed(), &[&state.name, &keep.as_secs_f64()]),
                )
                .await?;
                if pruned > 0 {
                    tracing::info!(rows = pruned, "replayed dead letters deleted");
                }
            }
        }
        if let Some(held) = state.held.take() {
            return self.apply(client, replica, ctx, state, held).await;
        }
        let janitor_every = (self.spec.min_idle / 2).max(Duration::from_secs(1));
        let entries = if state
            .last_janitor
            .is_none_or(|t| t.elapsed() >= janitor_every)
        {
            state.last_janitor = Some(Instant::now());
            self.claim_idle(state).await
        } else {
            Ok(Vec::new())
        };
        let entries = match entries {
            Ok(e) if !e.is_empty() => Ok(e),
            Ok(_) => match state.prefetched.take() {
                Some(p) => Ok(p),
                None => self.read(state).await,
            },
            Err(e) => Err(e),
        };
        let entries = match entries {
            Ok(e) => e,
            Err(e) => return Ok(Some(self.outage(state, ctx, redis_words(&e)))),
        };
        state.outages = 0;
        if entries.is_empty() {
            state.session = Some(client);
            return Ok(None);
        }
        self.apply(client, replica, ctx, state, entries).await
    }

    /// This consumer's own pending entries (at start, after a failed
    /// round), else new entries, waiting up to [`BLOCK`] for them.
    async fn read(&self, state: &mut Replicating) -> redis::RedisResult<Vec<Entry>> {
        let own = state.own_first;
        let conn = &mut state.redis.as_mut().expect("connected").conn;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&state.group)
            .arg(&state.consumer)
            .arg("COUNT")
            .arg(self.spec.batch.0);
        if !own {
            cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.spec.streams);
        for _ in &self.spec.streams {
            cmd.arg(if own { "0" } else { ">" });
        }
        let reply: Value = cmd.query_async(conn).await?;
        let mut entries = stream::read_reply(&reply);
        if own {
            if entries.is_empty() {
                state.own_first = false;
            } else {
                self.count_deliveries(state, &mut entries).await?;
            }
        }
        Ok(entries)
    }

    /// New entries, without waiting: read on a second handle of the
    /// connection while the batch before them is applied.
    async fn read_ahead(
        &self,
        mut conn: redis::aio::MultiplexedConnection,
        group: &str,
        consumer: &str,
    ) -> redis::RedisResult<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(self.spec.batch.0)
            .arg("STREAMS")
            .arg(&self.spec.streams);
        for _ in &self.spec.streams {
            cmd.arg(">");
        }
        let reply: Value = cmd.query_async(&mut conn).await?;
        Ok(stream::read_reply(&reply))
    }

    /// Entries pending longer than `min_idle` with any consumer, claimed
    /// for this one (`XAUTOCLAIM`), with their deliveries counted.
    ///
    /// A scan that stopped at `batch` entries goes on at the next round
    /// (from where it stopped), not after the janitor's interval. Consumers
    /// of the group that hold nothing and have not been seen for twice
    /// `min_idle` (another warden that went away) are removed.
    async fn claim_idle(&self, state: &mut Replicating) -> redis::RedisResult<Vec<Entry>> {
        let mut all = Vec::new();
        let min_idle = self.spec.min_idle.as_millis() as u64;
        let mut again = false;
        for s in &self.spec.streams {
            let conn = &mut state.redis.as_mut().expect("connected").conn;
            let from = state
                .janitor_from
                .get(s)
                .cloned()
                .unwrap_or_else(|| "0-0".to_string());
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(s)
                .arg(&state.group)
                .arg(&state.consumer)
                .arg(min_idle)
                .arg(&from)
                .arg("COUNT")
                .arg(self.spec.batch.0)
                .query_async(conn)
                .await?;
            let claimed = stream::autoclaim_reply(s, &reply);
            if claimed.next == "0-0" {
                state.janitor_from.remove(s);
                if state.cleanup {
                    let removed: redis::RedisResult<i64> = redis::cmd("EVAL")
                        .arg(REMOVE_IDLE_CONSUMERS)
                        .arg(1)
                        .arg(s)
                        .arg(&state.group)
                        .arg(&state.consumer)
                        .arg(min_idle.saturating_mul(2))
                        .query_async(conn)
                        .await;
                    match removed {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(stream = %s, consumers = n, "removed consumers that went away")
                        }
                        Err(e)
                            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() =>
                        {
                            return Err(e);
                        }
                        // A Redis that refuses scripts or these commands
                        // (an ACL, a proxy): the group keeps its old
                        // consumers, which hold nothing.
                        Err(e) => {
                            tracing::warn!(error = %redis_words(&e), "cannot remove consumers that went away; leaving them");
                            state.cleanup = false;
                        }
                    }
                }
            } else {
                state.janitor_from.insert(s.clone(), claimed.next);
                again = true;
            }
            all.extend(claimed.entries);
        }
        if again {
            state.last_janitor = None;
        }
        if !all.is_empty() {
            tracing::info!(
                entries = all.len(),
                "claimed entries another consumer left pending"
            );
            self.count_deliveries(state, &mut all).await?;
        }
        Ok(all)
    }

    /// Sets each entry's deliveries from `XPENDING`, one exact range per
    /// entry (in one pipeline): a range over a whole batch could be
    /// filled by other pending entries of this consumer.
    async fn count_deliveries(
        &self,
        state: &mut Replicating,
        entries: &mut [Entry],
    ) -> redis::RedisResult<()> {
        let conn = &mut state.redis.as_mut().expect("connected").conn;
        let mut pipe = redis::pipe();
        for e in entries.iter() {
            pipe.cmd("XPENDING")
                .arg(&e.stream)
                .arg(&state.group)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1)
                .arg(&state.consumer);
        }
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        for (e, reply) in entries.iter_mut().zip(&replies) {
            if let Some(n) = stream::deliveries(reply).get(&e.id) {
                e.deliveries = *n;
            }
        }
        Ok(())
    }

    /// What this service accepts of an entry.
    fn bounds(&self) -> stream::Bounds {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        stream::Bounds {
            event_id: size(u64::from(self.spec.max_event_id_bytes.0)),
            payload: size(self.spec.max_payload.0),
            depth: size(u64::from(self.spec.max_json_depth.0)),
        }
    }

    /// Applies a batch, then its dead letters; then sends the dead letters
    /// to their `.dlq` streams and acknowledges every entry. A batch
    /// PostgreSQL refuses is split until the entries at fault are found
    /// ([`insert_split`]): those alone become dead letters, with
    /// PostgreSQL's reason, and the rest is applied once.
    async fn apply(
        &self,
        mut client: deadpool_postgres::Object,
        replica: &sql::Replica,
        ctx: &Context,
        state: &mut Replicating,
        entries: Vec<Entry>,
    ) -> Result<Option<Duration>, Fault> {
        let max = i64::from(self.spec.max_deliveries);
        let mapped = replica.keys().is_some();
        let bounds = self.bounds();
        let within = self.spec.pg().limits.answer_within();
        let mut events = Vec::new();
        let mut dead: Vec<(&Entry, String)> = Vec::new();
        for e in &entries {
            if e.deliveries > max {
                let last = state
                    .refusals
                    .get(&entry_key(e))
                    .map(|why| format!("; last refused: {why}"))
                    .unwrap_or_default();
                dead.push((
                    e,
                    format!(
                        "delivered {} times, more than max_deliveries ({max}){last}",
                        e.deliveries
                    ),
                ));
                continue;
            }
            match e.event_within(&bounds) {
                // Columns are filled from the payload's keys: anything but
                // an object would make a row of NULLs.
                Ok(ev)
                    if mapped
                        && serde_json::from_str::<serde_json::Map<String, Json>>(&ev.payload)
                            .is_err() =>
                {
                    dead.push((
                        e,
                        "the payload is not a JSON object (columns map its keys)".to_string(),
                    ))
                }
                Ok(ev) => events.push((e, ev)),
                Err(why) => dead.push((e, why)),
            }
        }
        // The next batch is read while this one is written (not while
        // this consumer's own pending entries are being read again).
        let ahead =
            (!state.own_first && state.prefetched.is_none() && state.janitor_from.is_empty())
                .then(|| state.redis.as_ref().map(|c| c.conn.clone()))
                .flatten();
        let (written, read_ahead) =
            tokio::join!(insert_split(&client, replica, &events, within), async {
                match ahead {
                    Some(conn) => Some(self.read_ahead(conn, &state.group, &state.consumer).await),
                    None => None,
                }
            });
        // A failed read ahead is read again: its entries are this
        // consumer's pending ones.
        match read_ahead {
            Some(Ok(next)) if !next.is_empty() => state.prefetched = Some(next),
            Some(Err(_)) => state.own_first = true,
            _ => {}
        }
        // Entries delivered again rather than acknowledged: every entry
        // the batch gave PostgreSQL was refused, and nothing tells a batch
        // of poison from a table that refuses everything (a trigger that
        // raises for every row, a stalled server cancelling every
        // statement). Past `max_deliveries` they become dead letters, with
        // the reason remembered here.
        let mut again: Vec<&Entry> = Vec::new();
        let written = match written {
            Ok(a) if !a.went_in && !a.refused.is_empty() => {
                tracing::warn!(entries = a.refused.len(), error = %a.refused[0].1, "PostgreSQL refused every entry of a batch; delivering them again after a pause");
                if state.refusals.len() > MAX_REFUSALS {
                    state.refusals.clear();
                }
                for (i, why) in a.refused {
                    let e = events[i].0;
                    state.refusals.insert(entry_key(e), why);
                    again.push(e);
                }
                match write_dead(&mut client, replica, &state.name, &dead, within).await {
                    Ok(()) => Ok((0, 0)),
                    Err(f) => Err(f),
                }
            }
            Ok(a) => {
                let applied = events.len() - a.refused.len();
                dead.extend(a.refused.into_iter().map(|(i, why)| (events[i].0, why)));
                match write_dead(&mut client, replica, &state.name, &dead, within).await {
                    Ok(()) => Ok((a.inserted, applied)),
                    Err(f) => Err(f),
                }
            }
            Err(f) => Err(f),
        };
        let (inserted, applied) = match written {
            Ok(w) => w,
            Err(f) => {
                if matches!(f, Fault::Lost(_)) {
                    // Applied again as it is once PostgreSQL is back (what
                    // went in already is a duplicate then).
                    state.held = Some(entries);
                }
                return Err(f);
            }
        };
        state.session = Some(client);
        // Committed: now the dead letters' streams, then the
        // acknowledgements (a failure here re-delivers; applying again is
        // a duplicate, a dead letter is kept under the same key).
        let conn = &mut state.redis.as_mut().expect("connected").conn;
        let mut pipe = redis::pipe();
        for (e, why) in &dead {
            // Bounded: a dead letter that comes back (a scheduled replay of
            // an entry that stays broken) must not grow the stream for ever.
            pipe.cmd("XADD")
                .arg(format!("{}.dlq", e.stream))
                .arg("MAXLEN")
                .arg("=")
                .arg(self.spec.dlq_maxlen.0)
                .arg("*")
                .arg("dlq_stream")
                .arg(&e.stream)
                .arg("dlq_entry_id")
                .arg(&e.id)
                .arg("dlq_reason")
                .arg(why)
                .arg("dlq_deliveries")
                .arg(e.deliveries);
            for (k, v) in &e.fields {
                pipe.arg(k).arg(v);
            }
            pipe.ignore();
        }
        for s in &self.spec.streams {
            let ids: Vec<&str> = entries
                .iter()
                .filter(|e| {
                    &e.stream == s && !again.iter().any(|a| a.id == e.id && a.stream == e.stream)
                })
                .map(|e| e.id.as_str())
                .collect();
            if !ids.is_empty() {
                pipe.cmd("XACK").arg(s).arg(&state.group).arg(ids).ignore();
            }
        }
        if let Err(e) = pipe.query_async::<()>(conn).await {
            return Ok(Some(self.outage(state, ctx, redis_words(&e))));
        }
        let duplicates = applied as u64 - inserted.min(applied as u64);
        state.applied += inserted;
        state.duplicates += duplicates;
        state.dead += dead.len() as u64;
        metrics::applied(&state.name, "applied", inserted);
        metrics::applied(&state.name, "duplicate", duplicates);
        metrics::applied(&state.name, "dlq", dead.len() as u64);
        metrics::dead_letters(&state.name, dead.len() as u64);
        for (e, why) in &dead {
            tracing::warn!(stream = %e.stream, entry = %e.id, reason = %why, "entry sent to the dead-letter queue");
            ctx.details()
                .set("last_error", format!("{} {}: {why}", e.stream, e.id));
        }
        ctx.details().set("applied", state.applied);
        ctx.details().set("duplicates", state.duplicates);
        ctx.details().set("dead_letters", state.dead);
        for e in &entries {
            if !again.iter().any(|a| a.id == e.id && a.stream == e.stream) {
                state.refusals.remove(&entry_key(e));
            }
        }
        if again.is_empty() {
            state.refused_rounds = 0;
            return Ok(None);
        }
        // Read again as this consumer's own pending entries, counting a
        // delivery each, after a pause (0.5 s doubling to 5 s).
        state.own_first = true;
        state.prefetched = None;
        let pause = super::data::doubling(state.refused_rounds, Duration::from_secs(5));
        state.refused_rounds += 1;
        if let Some(why) = state.refusals.get(&entry_key(again[0])) {
            ctx.details().set("last_error", why.clone());
        }
        Ok(Some(pause))
    }

    /// Pending (delivered, not acknowledged) plus not yet delivered
    /// entries of the group over its streams, and the age of the oldest.
    async fn stats(&self, state: &mut Replicating, ctx: &Context) -> redis::RedisResult<()> {
        let conn = &mut state.redis.as_mut().expect("connected").conn;
        // Entry ids carry Redis's clock: the lag is read against it, not
        // against this host's (which may differ by any amount).
        let time: Value = redis::cmd("TIME").query_async(conn).await?;
        let now_ms = stream::redis_time_ms(&time).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_millis() as f64)
        });
        let ms_of = |id: &str| id.split('-').next().and_then(|m| m.parse::<f64>().ok());
        let mut pending = 0i64;
        let mut oldest: Option<f64> = None;
        for s in &self.spec.streams {
            let summary: Value = redis::cmd("XPENDING")
                .arg(s)
                .arg(&state.group)
                .query_async(conn)
                .await?;
            let summary = stream::items(&summary);
            pending += summary.first().and_then(stream::int).unwrap_or(0);
            if let Some(ms) = summary
                .get(1)
                .and_then(stream::text)
                .and_then(|id| ms_of(&id))
            {
                oldest = Some(oldest.map_or(ms, |o: f64| o.min(ms)));
            }
            let groups: Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(s)
                .query_async(conn)
                .await?;
            let Some(info) = group_info(&groups, &state.group) else {
                continue;
            };
            // `lag` is nil when Redis cannot tell (after an XDEL), and
            // missing before Redis 7: the next entry is looked up then too.
            let undelivered = info.get("lag").and_then(stream::int);
            pending += undelivered.unwrap_or(0);
            if undelivered.is_none_or(|n| n > 0)
                && let Some(last) = info.get("last-delivered-id").and_then(stream::text)
            {
                let next: Value = redis::cmd("XRANGE")
                    .arg(s)
                    .arg(format!("({last}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(conn)
                    .await?;
                if let Some(ms) = stream::read_reply(&Value::Array(vec![Value::Array(vec![
                    Value::SimpleString(s.clone()),
                    next,
                ])]))
                .first()
                .and_then(|e| ms_of(&e.id))
                {
                    oldest = Some(oldest.map_or(ms, |o: f64| o.min(ms)));
                }
            }
        }
        let lag = oldest.map_or(0.0, |ms| ((now_ms - ms) / 1000.0).max(0.0));
        ctx.details().set("pending", pending);
        ctx.details()
            .set("lag_seconds", (lag * 1000.0).round() / 1000.0);
        metrics::stats(&state.name, pending, lag);
        Ok(())
    }
}

/// The fields `XINFO GROUPS` gives of group `group` (RESP2 flat pairs or
/// RESP3 maps).
fn group_info(reply: &Value, group: &str) -> Option<HashMap<String, Value>> {
    stream::items(reply).iter().find_map(|g| {
        let pairs: Vec<(String, Value)> = match g {
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| Some((stream::text(k)?, v.clone())))
                .collect(),
            flat => stream::items(flat)
                .chunks(2)
                .filter_map(|p| match p {
                    [k, v] => Some((stream::text(k)?, v.clone())),
                    _ => None,
                })
                .collect(),
        };
        let map: HashMap<String, Value> = pairs.into_iter().collect();
        (map.get("name").and_then(stream::text).as_deref() == Some(group)).then_some(map)
    })
}

/// Whether an error PostgreSQL raised for a statement that applied one
/// entry is that entry's fault (rather than the table's or the server's):
/// its data (class 22), a constraint (23), a limit of the server's such
/// as an index row or a nesting too large (54), a user's trigger or rule
/// (P0, 38, 39, 2F, 09, 27, 44), a cardinality (21), or a statement that
/// ran past `statement_timeout` (57014; a lock waited for past
/// `lock_timeout`, 55P03, is a passing state of the server instead).
pub fn entry_fault(code: &str) -> bool {
    const CLASSES: [&str; 11] = [
        "22", "23", "54", "P0", "38", "39", "2F", "09", "27", "44", "21",
    ];
    CLASSES.iter().any(|c| code.starts_with(c)) || code == "57014"
}

/// What applying a batch came to.
struct Applied {
    /// Rows inserted (the rest of what went in were duplicates).
    inserted: u64,
    /// Entries refused, by index in the batch, with PostgreSQL's reason.
    refused: Vec<(usize, String)>,
    /// Whether any statement of the batch went in.
    went_in: bool,
}

/// How many single entries refused for a reason that is not theirs
/// (outside [`entry_fault`]), before anything of the batch went in, it
/// takes to call the table at fault rather than the entries.
const UNDECIDED: usize = 4;

/// Applies `events`, splitting a refused statement in halves until each
/// refusal is pinned to one entry. A single entry refused for anything
/// but its own fault ([`entry_fault`]) is one too once another entry of
/// the batch went in; when none does (a few such, or all), the table is
/// at fault (dropped, no permission) and the round fails.
async fn insert_split(
    client: &deadpool_postgres::Object,
    replica: &sql::Replica,
    events: &[(&Entry, stream::Event)],
    within: Option<Duration>,
) -> Result<Applied, Fault> {
    let mut applied = Applied {
        inserted: 0,
        refused: Vec::new(),
        went_in: false,
    };
    if events.is_empty() {
        return Ok(applied);
    }
    let apply = answer(within, client.prepare_cached(&replica.apply())).await?;
    // Single entries refused for a reason not theirs, while nothing had
    // gone in: decided once the rest of the batch has been tried.
    let mut undecided: Vec<(usize, String)> = Vec::new();
    // Ranges of `events`, the next on top.
    let mut todo = vec![(0, events.len())];
    while let Some((lo, hi)) = todo.pop() {
        let attempt = insert_events(&***client, &apply, replica, &events[lo..hi]);
        let e = match super::data::within(within, attempt).await? {
            Ok(n) => {
                applied.inserted += n;
                applied.went_in = true;
                continue;
            }
            Err(e) if super::data::is_lost(&e) => return Err(Fault::from(e)),
            Err(e) => e,
        };
        let words = refusal_words(&e);
        if hi - lo > 1 {
            if (lo, hi) == (0, events.len()) {
                tracing::warn!(error = %words, entries = hi - lo, "PostgreSQL refused a batch; splitting it to find the entries at fault");
            }
            let mid = lo + (hi - lo) / 2;
            todo.push((mid, hi));
            todo.push((lo, mid));
        } else if applied.went_in || e.code().is_some_and(|c| entry_fault(c.code())) {
            applied.refused.push((lo, words));
        } else {
            undecided.push((lo, words));
            if undecided.len() >= UNDECIDED {
                break;
            }
        }
    }
    if let Some((_, words)) = undecided.first() {
        if !applied.went_in {
            return Err(Fault::Fatal(ServiceError(words.clone())));
        }
        applied.refused.extend(undecided);
        applied.refused.sort_by_key(|(i, _)| *i);
    }
    Ok(applied)
}

/// Writes the dead letters `dead`, in one statement. One that PostgreSQL
/// refuses (fields too large for a row) is kept without its fields, with
/// the reason why: they stay in its `.dlq` stream.
async fn write_dead(
    client: &mut deadpool_postgres::Object,
    replica: &sql::Replica,
    service: &str,
    dead: &[(&Entry, String)],
    within: Option<Duration>,
) -> Result<(), Fault> {
    if dead.is_empty() {
        return Ok(());
    }
    let statement = answer(within, client.prepare_cached(&replica.dead_letters())).await?;
    let all: Vec<(&Entry, String, String)> = dead
        .iter()
        .map(|(e, why)| (*e, redact(why), e.fields_json()))
        .collect();
    let e =
        match super::data::within(within, insert_dead(client, &statement, service, &all)).await? {
            Ok(()) => return Ok(()),
            Err(e) if super::data::is_lost(&e) => return Err(Fault::from(e)),
            Err(e) => e,
        };
    tracing::warn!(error = %refusal_words(&e), "PostgreSQL refused the dead letters; writing them one by one");
    for one in all {
        let attempt = insert_dead(client, &statement, service, std::slice::from_ref(&one));
        match super::data::within(within, attempt).await? {
            Ok(()) => continue,
            Err(e) if super::data::is_lost(&e) => return Err(Fault::from(e)),
            Err(e) => {
                let (entry, why, _) = one;
                let why = format!(
                    "{why} (its fields are kept only in {}.dlq: {})",
                    entry.stream,
                    refusal_words(&e)
                );
                let bare = [(entry, why, "{}".to_string())];
                let bare = insert_dead(client, &statement, service, &bare);
                super::data::within(within, bare)
                    .await?
                    .map_err(|e| Fault::Fatal(ServiceError(refusal_words(&e))))?;
            }
        }
    }
    Ok(())
}

/// Inserts dead letters (entry, reason, fields as JSON) with `statement`
/// ([`sql::Replica::dead_letters`]).
async fn insert_dead(
    client: &deadpool_postgres::Object,
    statement: &tokio_postgres::Statement,
    service: &str,
    dead: &[(&Entry, String, String)],
) -> Result<(), tokio_postgres::Error> {
    let streams: Vec<&str> = dead.iter().map(|(e, _, _)| e.stream.as_str()).collect();
    let entry_ids: Vec<&str> = dead.iter().map(|(e, _, _)| e.id.as_str()).collect();
    let event_ids: Vec<String> = dead
        .iter()
        .map(|(e, _, _)| e.event().map(|ev| ev.event_id).unwrap_or_default())
        .collect();
    let reasons: Vec<&str> = dead.iter().map(|(_, why, _)| why.as_str()).collect();
    let fields: Vec<&str> = dead.iter().map(|(_, _, f)| f.as_str()).collect();
    let deliveries: Vec<i32> = dead
        .iter()
        .map(|(e, _, _)| i32::try_from(e.deliveries).unwrap_or(i32::MAX))
        .collect();
    client
        .execute(
            statement,
            &[
                &service,
                &streams,
                &entry_ids,
                &event_ids,
                &reasons,
                &fields,
                &deliveries,
            ],
        )
        .await
        .map(|_| ())
}

/// Why PostgreSQL refused a row, without the row's values: the server's
/// message up to its first quote, the SQLSTATE, and the column,
/// constraint, type and table it names ("invalid input syntax for type
/// integer (SQLSTATE 22P02)"). The words reach logs, `last_error` and the
/// dead-letter records; the values are in the dead letter's fields.
fn refusal_words(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return pg_words(e);
    };
    // The message up to its first quoted word (values are quoted, in any
    // language's quotes, and may hold quotes themselves), then the names
    // PostgreSQL reports apart.
    let m = db.message();
    let cut = m.find(['"', '\'', '«', '»', '“', '„']).unwrap_or(m.len());
    let mut out = format!(
        "PostgreSQL: {} (SQLSTATE {}",
        m[..cut].trim_end_matches([' ', ':']),
        db.code().code()
    );
    for (what, name) in [
        ("column", db.column()),
        ("constraint", db.constraint()),
        ("type", db.datatype()),
        ("table", db.table()),
    ] {
        if let Some(n) = name {
            out.push_str(&format!(", {what} {n:?}"));
        }
    }
    out.push(')');
    out
}

/// A PostgreSQL error in words, as [`pg`] gives them.
fn pg_words(e: &tokio_postgres::Error) -> String {
    crate::services::data::pg_text(e)
}

/// Inserts `events` with the replica's statement `apply` (none: 0).
async fn insert_events(
    c: &impl tokio_postgres::GenericClient,
    apply: &tokio_postgres::Statement,
    replica: &sql::Replica,
    events: &[(&Entry, stream::Event)],
) -> Result<u64, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = events.iter().map(|(_, e)| e.event_id.as_str()).collect();
    let streams: Vec<&str> = events.iter().map(|(e, _)| e.stream.as_str()).collect();
    let keys: Vec<&str> = events
        .iter()
        .map(|(_, e)| e.partition_key.as_str())
        .collect();
    let payloads: Vec<&str> = events.iter().map(|(_, e)| e.payload.as_str()).collect();
    let headers: Vec<&str> = events.iter().map(|(_, e)| e.headers.as_str()).collect();
    let ms: Vec<f64> = events.iter().map(|(_, e)| e.ms).collect();
    match replica.keys() {
        None => {
            c.execute(apply, &[&ids, &streams, &keys, &payloads, &headers, &ms])
                .await
        }
        Some(columns) => {
            c.execute(
                apply,
                &[&ids, &streams, &keys, &payloads, &headers, &ms, &columns],
            )
            .await
        }
    }
}

/// The description of `replay-dlq`.
fn replay_dlq_action() -> Action {
    super::data::replay_action(
        "replay-dlq",
        "Dead letters not replayed yet (all, or those of `ids`) go back to their streams, keeping their event ids.",
    )
}

/// `replay-dlq`: the service's dead letters not replayed yet (all, or
/// `{"ids": [..]}`) are added to their streams again with their fields
/// and their event id (so an event applied meanwhile stays one row), and
/// marked replayed, in one transaction. Answers `{"replayed": N}`.
async fn replay_dlq(
    service: &str,
    spec: &StreamReplicatorSpec,
    args: &Json,
) -> Result<Json, ActionError> {
    let ids = super::data::replay_ids(args, "replay-dlq", "dead letter", "dead-letter ids")?;
    let pool = super::data::pool_of(service, &spec.pg(), spec.pool_size.0).await?;
    let mut client = super::data::pooled(&pool).await?;
    let candidates: Vec<i64> = match &ids {
        None => {
            client
                .query(&sql::dead_letters_to_replay(false), &[&service])
                .await
        }
        Some(ids) => {
            client
                .query(&sql::dead_letters_to_replay(true), &[&service, ids])
                .await
        }
    }
    .map_err(pg)?
    .iter()
    .map(|r| r.get(0))
    .collect();
    if candidates.is_empty() {
        return Ok(serde_json::json!({ "replayed": 0 }));
    }
    let mut redis = crate::conn::redis::connect(&spec.redis_target(), Default::default())
        .await
        .map_err(|e| ActionError::Failed(redact(&format!("Redis: {e}"))))?;
    // One dead letter at a time, each marked replayed in the transaction
    // that holds it while it goes back: a failure part-way leaves the
    // ones already back marked, so a second call does not add them twice.
    let mut replayed = 0;
    for id in candidates {
        let tx = client.transaction().await.map_err(pg)?;
        let Some(row) = tx
            .query_opt(&sql::dead_letter_to_replay(), &[&id, &service])
            .await
            .map_err(pg)?
        else {
            // Replayed meanwhile by another call.
            continue;
        };
        let (stream, fields, entry_id): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let fields: serde_json::Map<String, Json> =
            serde_json::from_str(&fields).unwrap_or_default();
        let mut pairs: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        // The event keeps its identity: its own event_id or outbox_id,
        // else the original stream and entry id.
        let has = |k: &str, pairs: &[(String, String)]| {
            pairs.iter().any(|(f, v)| f == k && !v.is_empty())
        };
        if !has("event_id", &pairs) && !has("outbox_id", &pairs) {
            pairs.retain(|(k, _)| k != "event_id");
            pairs.push(("event_id".into(), format!("{stream}:{entry_id}")));
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in &pairs {
            cmd.arg(k).arg(v);
        }
        cmd.query_async::<Value>(&mut redis.conn)
            .await
            .map_err(|e| ActionError::Failed(format!("Redis: {}", redis_words(&e))))?;
        tx.execute(&sql::replayed(), &[&id]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        replayed += 1;
    }
    Ok(serde_json::json!({ "replayed": replayed }))
}

#[cfg(test)]
mod tests {
    use super::entry_fault;

    #[test]
    fn an_entrys_own_faults_are_told_from_the_tables_and_the_servers() {
        for code in [
            "22P02", "23505", "54000", "54001", "P0001", "38000", "39P01", "2F005", "09000",
            "27000", "44000", "21000", "57014",
        ] {
            assert!(entry_fault(code), "{code} is the entry's");
        }
        for code in [
            "42P01", "42501", "55P03", "57P01", "08006", "40001", "53300", "XX000", "25006",
            "0A000",
        ] {
            assert!(!entry_fault(code), "{code} is not the entry's");
        }
    }
}
