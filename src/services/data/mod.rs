//! What the data-plane kinds share: PostgreSQL sessions (plain, or
//! listening for a trigger's `pg_notify`; made by `crate::conn`, with TLS
//! as the DSN and `tls_ca` say), error wording without secrets,
//! names derived from a table's, and the abort-on-drop of driver tasks.

pub mod horizon;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{ActionError, ServiceError};
use crate::config::Action;
use crate::config::types::{PgTarget, TableName};
pub use crate::conn::AbortOnDrop;

/// A PostgreSQL error in words (the server's message when there is one;
/// never the DSN: passwords are masked).
pub fn pg(e: tokio_postgres::Error) -> ServiceError {
    ServiceError(pg_text(&e))
}

/// The words of [`pg`].
pub fn pg_text(e: &tokio_postgres::Error) -> String {
    ServiceError::redacted(format!(
        "PostgreSQL: {}",
        crate::conn::postgres::error_text(e)
    ))
    .0
}

/// A PostgreSQL session (TLS as the DSN and `tls_ca` say) and its driver.
async fn session(
    target: &PgTarget,
) -> Result<(tokio_postgres::Client, crate::conn::postgres::Connection), ServiceError> {
    crate::conn::postgres::connect(target)
        .await
        .map_err(|e| ServiceError::redacted(format!("PostgreSQL: {e}")))
}

/// The sessions of a data service's pool unless `pool_size` says.
pub const DEFAULT_POOL_SIZE: u32 = 2;

/// The largest `pool_size`: PostgreSQL's own default `max_connections` is
/// 100, for every client together.
pub const MAX_POOL_SIZE: u32 = 100;

/// The smallest `pool_size`: a worker's round holds one session (for as
/// long as a batch takes), the statistics and actions need another.
pub const MIN_POOL_SIZE: u32 = 2;

/// `pool_size` is between [`MIN_POOL_SIZE`] and [`MAX_POOL_SIZE`].
pub fn check_pool_size(
    size: crate::config::types::Count,
    problems: &mut crate::config::kind::Problems<'_>,
) {
    if size.0 < MIN_POOL_SIZE {
        problems.error(
            "invalid-value",
            &["pool_size"],
            format!(
                "{} is below the minimum of {MIN_POOL_SIZE}: the worker's round holds one session while a batch goes out, and the statistics and actions need another",
                size.0
            ),
        );
    }
    if size.0 > MAX_POOL_SIZE {
        problems.error(
            "invalid-value",
            &["pool_size"],
            format!(
                "{} is above the maximum of {MAX_POOL_SIZE}: each session is a PostgreSQL connection, and PostgreSQL's default max_connections (for every client together) is 100",
                size.0
            ),
        );
    }
}

/// The session limits of a data service are within reason: a
/// `statement_timeout` below 100 ms would cancel ordinary claims, a
/// `network_timeout` below a second would give up on a loaded but live
/// network (`lock_timeout` has no lower bound: 0 is PostgreSQL's "wait
/// for ever").
pub fn check_session_limits(
    limits: &crate::config::types::SessionLimits,
    problems: &mut crate::config::kind::Problems<'_>,
) {
    if let Some(statement) = limits.statement {
        problems.at_least(
            &["statement_timeout"],
            statement,
            Duration::from_millis(100),
            "a shorter one cancels the workers' ordinary statements",
        );
    }
    if let Some(network) = limits.network {
        problems.at_least(
            &["network_timeout"],
            network,
            Duration::from_secs(1),
            "a shorter one gives up on a network that is only busy",
        );
    }
}

/// `listen_check` is at least a second: a shorter one sends a round trip
/// more often than the poll would.
pub fn check_listen(listen_check: Duration, problems: &mut crate::config::kind::Problems<'_>) {
    problems.at_least(
        &["listen_check"],
        listen_check,
        Duration::from_secs(1),
        "a shorter one sends a round trip more often than the poll",
    );
}

/// The pool of sessions of service `service` (at most `size`, to
/// `target`): the one its run holds, when it runs with the same target
/// and size, so that an action shares the run's sessions; else a new one,
/// which lives as long as its holders (a stopped service keeps no idle
/// sessions open).
pub async fn pool_of(
    service: &str,
    target: &PgTarget,
    size: u32,
) -> Result<crate::conn::postgres::Pool, ServiceError> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Entry = (PgTarget, u32, deadpool_postgres::WeakPool);
    static POOLS: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);
    let live = |pools: &mut Option<HashMap<String, Entry>>| {
        let pools = pools.get_or_insert_with(HashMap::new);
        // Forget the pools nobody holds any more.
        pools.retain(|_, (_, _, weak)| weak.upgrade().is_some());
        pools
            .get(service)
            .filter(|(t, n, _)| t == target && *n == size)
            .and_then(|(_, _, weak)| weak.upgrade())
    };
    if let Some(pool) = live(&mut POOLS.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(pool);
    }
    let pool = crate::conn::postgres::pool(target, size as usize)
        .await
        .map_err(|e| ServiceError::redacted(format!("PostgreSQL: {e}")))?;
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    // Another caller may have made one meanwhile: theirs is kept.
    if let Some(theirs) = live(&mut pools) {
        return Ok(theirs);
    }
    pools
        .get_or_insert_with(HashMap::new)
        .insert(service.to_string(), (target.clone(), size, pool.weak()));
    Ok(pool)
}

/// A session of `pool`, checked on the way out (see [`pool_of`]).
pub async fn pooled(
    pool: &crate::conn::postgres::Pool,
) -> Result<deadpool_postgres::Object, ServiceError> {
    pool.get().await.map_err(|e| {
        ServiceError::redacted(format!(
            "PostgreSQL: {}",
            crate::conn::postgres::pool_error_text(&e)
        ))
    })
}

/// Runs a kind's idempotent DDL: `tx` (the table and its trigger, one
/// transaction), then each missing index with `CREATE INDEX CONCURRENTLY`,
/// outside any transaction, so that adopting a large table that already
/// exists never blocks the producers writing to it. An index that an
/// interrupted build left invalid is dropped and built again. On an empty
/// table (`table`, quoted: one just created) an index is built plainly:
/// that takes a moment, where `CONCURRENTLY` would wait for every
/// transaction open in the database, however unrelated (a long report
/// would hold the service's start).
pub async fn adopt(
    client: &tokio_postgres::Client,
    table: &str,
    tx: &str,
    indexes: &[(String, String)],
) -> Result<(), ServiceError> {
    // The DDL is not one of the rounds the session's limits are for: an
    // index built concurrently on a large table takes as long as it takes
    // (and waits for every older transaction first). The limits come back
    // afterwards, whatever happened.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(pg)?;
    let done = adopt_unlimited(client, table, tx, indexes).await;
    let reset = client
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .await
        .map_err(pg);
    done.and(reset)
}

/// [`adopt`], on a session without statement or lock limits.
async fn adopt_unlimited(
    client: &tokio_postgres::Client,
    table: &str,
    tx: &str,
    indexes: &[(String, String)],
) -> Result<(), ServiceError> {
    // Short attempts at the table's lock (for the trigger), so that the
    // producers queued behind an attempt wait at most its 200 ms.
    let mut attempt = 0u32;
    loop {
        match client.batch_execute(tx).await {
            Ok(()) => break,
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                    && attempt < 100 =>
            {
                let _ = client.batch_execute("ROLLBACK").await;
                if attempt == 0 {
                    tracing::info!("the table is busy; taking its lock in short attempts");
                }
                attempt += 1;
                tokio::time::sleep(doubling(attempt - 1, Duration::from_secs(1))).await;
            }
            Err(e) => return Err(pg(e)),
        }
    }
    for (name, create) in indexes {
        let valid: Option<bool> = client
            .query_opt(
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
                &[&name.as_str()],
            )
            .await
            .map_err(pg)?
            .map(|r| r.get(0));
        match valid {
            Some(true) => continue,
            Some(false) => {
                tracing::warn!(index = %name, "an earlier build left this index invalid; building it again");
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    .await
                    .map_err(pg)?;
            }
            None => {}
        }
        let empty: bool = client
            .query_one(
                &format!("SELECT NOT EXISTS (SELECT 1 FROM {table} LIMIT 1)"),
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        if empty {
            client
                .batch_execute(&create.replacen(" CONCURRENTLY ", " ", 1))
                .await
                .map_err(pg)?;
        } else {
            client.batch_execute(create).await.map_err(pg)?;
        }
    }
    Ok(())
}

/// Column `i` (`column`) of a claimed row, which `worker` needs as text:
/// the text, or why the row cannot be sent (a NULL in a table that allows
/// it, another type). Such a row fails at once with these words.
pub fn needed_text(
    r: &tokio_postgres::Row,
    i: usize,
    column: &str,
    worker: &str,
) -> Result<String, String> {
    r.try_get::<_, Option<String>>(i)
        .map_err(|e| format!("{column}: {e}"))?
        .ok_or_else(|| format!("{column} is NULL; {worker} needs a value to send"))
}

/// Why a round of a worker's loop stopped short.
#[derive(Debug)]
pub enum Fault {
    /// PostgreSQL could not be reached or dropped the session (a restart,
    /// a failover, the network): the worker tries again on a new session
    /// of its pool after a pause; its claimed rows come back with their
    /// lease.
    Lost(ServiceError),
    /// Anything else (a statement PostgreSQL refused): the run fails, and
    /// the restart policy decides.
    Fatal(ServiceError),
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Fault {
        if is_lost(&e) {
            Fault::Lost(pg(e))
        } else {
            Fault::Fatal(pg(e))
        }
    }
}

impl From<ServiceError> for Fault {
    fn from(e: ServiceError) -> Fault {
        Fault::Fatal(e)
    }
}

/// Whether `e` says the session is gone or the server cannot serve now
/// (rather than that it refused the statement): the connection closed or
/// failed (but not a TLS handshake: that needs the operator), the server
/// is shutting down or starting (57P01-57P03), a connection exception
/// (class 08), short of resources (class 53: too many clients), a
/// serialization failure or deadlock (40001, 40P01), a lock not had
/// within `lock_timeout` (55P03: a migration holds the table), or a
/// read-only server (25006: a replica after a failover).
pub fn is_lost(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    // A TLS handshake that failed (an untrusted certificate) fails the
    // same way next time: the operator must act.
    if crate::conn::tls::describe(e, "").is_some() {
        return false;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        // 08: connection exceptions; 53: the server is short of resources
        // (too many clients after a restart, out of memory or disk);
        // 40001/40P01: a serialization failure or deadlock, which a new
        // attempt clears.
        return ["08", "53"]
            .iter()
            .any(|class| code.code().starts_with(class))
            || [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::READ_ONLY_SQL_TRANSACTION,
                SqlState::LOCK_NOT_AVAILABLE,
            ]
            .contains(code);
    }
    // No answer from the server: the connection itself failed.
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Waits for PostgreSQL's answer to `fut` at most `within`
/// ([`SessionLimits::answer_within`]): a session that stays silent longer
/// (a network that drops everything without a reset, a frozen server) is
/// lost, and the worker goes on with a new one after a pause.
///
/// [`SessionLimits::answer_within`]: crate::config::types::SessionLimits::answer_within
pub async fn answer<T>(
    within: Option<Duration>,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Fault> {
    step(within, async { fut.await.map_err(Fault::from) }).await
}

/// [`answer`] for a step of a worker that already says what failed.
pub async fn step<T>(
    within: Option<Duration>,
    fut: impl std::future::Future<Output = Result<T, Fault>>,
) -> Result<T, Fault> {
    let Some(limit) = within else {
        return fut.await;
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Fault::Lost(ServiceError(format!(
            "PostgreSQL: no answer within {} (statement_timeout and network_timeout)",
            humantime::format_duration(limit)
        )))),
    }
}

/// `fut`'s own result, or a [`Fault::Lost`] when PostgreSQL does not
/// answer within `within` (a result the caller reads itself: a refusal
/// may be a row's fault, not the round's).
pub async fn within<T>(
    within: Option<Duration>,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, Fault> {
    step(within, async { Ok(fut.await) }).await
}

/// A session of `pool` for a worker's round: a session that cannot be
/// had (PostgreSQL down or every session busy) is a [`Fault::Lost`].
pub async fn take(pool: &crate::conn::postgres::Pool) -> Result<deadpool_postgres::Object, Fault> {
    use deadpool_postgres::PoolError;
    pool.get().await.map_err(|e| {
        let words = ServiceError::redacted(format!(
            "PostgreSQL: {}",
            crate::conn::postgres::pool_error_text(&e)
        ));
        match &e {
            PoolError::Backend(b) if !is_lost(b) => Fault::Fatal(words),
            PoolError::Backend(_) | PoolError::Timeout(_) => Fault::Lost(words),
            _ => Fault::Fatal(words),
        }
    })
}

/// Prepares `sqls` on a pooled session (each once per session: the
/// session keeps its prepared statements).
pub async fn prepare_all<const N: usize>(
    client: &deadpool_postgres::Object,
    sqls: &[String; N],
) -> Result<[tokio_postgres::Statement; N], tokio_postgres::Error> {
    let mut out = Vec::with_capacity(N);
    for sql in sqls {
        out.push(client.prepare_cached(sql).await?);
    }
    Ok(out
        .try_into()
        .unwrap_or_else(|_| unreachable!("N statements")))
}

/// After a lost round: the idle sessions of `pool` are dropped (the one
/// that failed among them), so the next round connects anew, also when
/// the old sessions still answer the pool's check (a server that became
/// read-only after a failover, behind a name that now points elsewhere).
pub fn forget_sessions(pool: &crate::conn::postgres::Pool) {
    let _ = pool.retain(|_, _| false);
}

/// The pause before a worker's next round after `attempt` lost rounds in
/// a row: 0.5 s doubling to 30 s.
pub fn lost_delay(attempt: u32) -> Duration {
    doubling(attempt, Duration::from_secs(30))
}

/// The insert trigger's notifications, on a session of their own (the
/// protocol needs one: `LISTEN` belongs to a session). When that session
/// ends (a restart of PostgreSQL), it is made again in the background,
/// 0.5 s doubling to 30 s between attempts; meanwhile the worker falls
/// back on its poll. Each notification wakes [`Listener::wake`], and so
/// does each new session (a notification may have been missed).
///
/// A worker that has rows without pause needs no wake-up: it stops
/// hearing ([`Hearing::stop`], an `UNLISTEN`), so that PostgreSQL does not
/// deliver, nor warden read, a notification per producer's commit, and
/// hears again ([`Listener::resume`]) before it waits, then looks for
/// rows once more: a row committed while it was deaf is found by that
/// look, and one committing meanwhile is notified (`LISTEN` hears every
/// notification not yet committed when it takes effect).
pub struct Listener {
    pub wake: Arc<Notify>,
    hearing: Hearing,
    /// The latest [`Wish`] generation the session has confirmed listening
    /// for.
    heard: watch::Receiver<u64>,
    _task: AbortOnDrop,
}

/// Turns a [`Listener`]'s hearing off (cheap to clone and call).
#[derive(Clone)]
pub struct Hearing(Arc<watch::Sender<Wish>>);

/// What the worker wants of the listening session: to hear or not, and
/// the generation of its latest wish to hear (so that a confirmation is
/// never one of an earlier wish, with an `UNLISTEN` still on its way).
#[derive(Clone, Copy)]
struct Wish {
    on: bool,
    generation: u64,
}

impl Hearing {
    /// Stops hearing (an `UNLISTEN`, sent in the background).
    pub fn stop(&self) {
        self.0
            .send_if_modified(|w| std::mem::replace(&mut w.on, false));
    }
}

impl Listener {
    /// The handle that stops hearing.
    pub fn hearing(&self) -> Hearing {
        self.hearing.clone()
    }

    /// Whether hearing was stopped ([`Hearing::stop`]).
    pub fn stopped(&self) -> bool {
        !self.hearing.0.borrow().on
    }

    /// Hears again after [`Hearing::stop`]: true once the session listens,
    /// false after `within` (the session is being made again: the worker
    /// falls back on its poll meanwhile).
    pub async fn resume(&mut self, within: Duration) -> bool {
        let mut generation = 0;
        self.hearing.0.send_modify(|w| {
            w.on = true;
            w.generation += 1;
            generation = w.generation;
        });
        tokio::time::timeout(within, self.heard.wait_for(|h| *h >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Listens on `channel_quoted` (a quoted identifier). The first session
/// is made here: an error means PostgreSQL cannot be reached at start.
///
/// Every `check`, the session must answer a round trip within the
/// target's `network` limit: one behind a dead network (no reset ever
/// came) is dropped and made again, rather than leaving the worker on its
/// poll without a word.
pub async fn listen(
    target: &PgTarget,
    channel_quoted: &str,
    check: Duration,
) -> Result<Listener, ServiceError> {
    let wake = Arc::new(Notify::new());
    let network = target.limits.network.unwrap_or(Duration::from_secs(30));
    let first = listen_within(network, target, channel_quoted, &wake).await?;
    let (want, mut wanted) = watch::channel(Wish {
        on: true,
        generation: 0,
    });
    let (heard_tx, heard) = watch::channel(0u64);
    let task = {
        let (target, channel, wake) = (target.clone(), channel_quoted.to_string(), wake.clone());
        tokio::spawn(async move {
            let (mut client, mut driver) = first;
            loop {
                // The session listens (as made): LISTEN or UNLISTEN as the
                // worker wants, then wait for a change, the session's end
                // or the next check.
                let mut listening = true;
                loop {
                    let Wish { on, generation } = *wanted.borrow_and_update();
                    if on == listening && on {
                        heard_tx.send_replace(generation);
                    }
                    if on != listening {
                        let sql = if on {
                            format!("LISTEN {channel}")
                        } else {
                            format!("UNLISTEN {channel}")
                        };
                        match tokio::time::timeout(network, client.batch_execute(&sql)).await {
                            Ok(Ok(())) => {
                                listening = on;
                            }
                            _ => {
                                tracing::warn!(within = ?network, "the listening session did not answer; making it again");
                                break;
                            }
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = &mut driver.0 => break,
                        r = wanted.changed() => if r.is_err() {
                            return; // the worker is gone
                        },
                        _ = tokio::time::sleep(check) => {
                            let alive = tokio::time::timeout(network, client.simple_query("SELECT 1")).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                tracing::warn!(within = ?network, "the listening session did not answer; making it again");
                                break;
                            }
                        }
                    }
                }
                drop(client);
                drop(driver);
                wake.notify_one();
                let mut attempt = 0u32;
                (client, driver) = loop {
                    tokio::time::sleep(doubling(attempt, Duration::from_secs(30))).await;
                    match listen_within(network, &target, &channel, &wake).await {
                        Ok(session) => {
                            tracing::info!("listening for new rows again");
                            wake.notify_one();
                            break session;
                        }
                        Err(e) => {
                            if attempt == 0 {
                                tracing::warn!(error = %e, "cannot listen for new rows; polling meanwhile, trying again");
                            }
                            attempt += 1;
                        }
                    }
                };
            }
        })
    };
    Ok(Listener {
        wake,
        hearing: Hearing(Arc::new(want)),
        heard,
        _task: AbortOnDrop(task),
    })
}

/// [`listen_once`], given up after `network`.
async fn listen_within(
    network: Duration,
    target: &PgTarget,
    channel_quoted: &str,
    wake: &Arc<Notify>,
) -> Result<(tokio_postgres::Client, AbortOnDrop), ServiceError> {
    tokio::time::timeout(network, listen_once(target, channel_quoted, wake))
        .await
        .unwrap_or_else(|_| {
            Err(ServiceError(format!(
                "PostgreSQL: no answer within {} (network_timeout)",
                humantime::format_duration(network)
            )))
        })
}

/// One listening session: the client (kept, or the session closes) and
/// its driver, which wakes `wake` at each notification and ends with the
/// session.
async fn listen_once(
    target: &PgTarget,
    channel_quoted: &str,
    wake: &Arc<Notify>,
) -> Result<(tokio_postgres::Client, AbortOnDrop), ServiceError> {
    let (client, mut conn) = session(target).await?;
    let driver = {
        let wake = wake.clone();
        AbortOnDrop(tokio::spawn(async move {
            use tokio_postgres::AsyncMessage;
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %pg(e), "the listening session ended");
                        break;
                    }
                }
            }
        }))
    };
    client
        .batch_execute(&format!("LISTEN {channel_quoted}"))
        .await
        .map_err(pg)?;
    Ok((client, driver))
}

/// `<table>_<suffix>`, within PostgreSQL's 63 bytes: a long table name is
/// cut and a hash of it added, so that two long names never share an
/// index or a channel (and `pg_notify` never refuses the channel).
pub fn derived_name(table: &TableName, suffix: &str) -> String {
    let name = table.name.as_str();
    let full = format!("{name}_{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let hash = name.bytes().fold(0xcbf29ce4_84222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    // Identifiers are ASCII (checked at load): cutting bytes is safe.
    let keep = 63 - suffix.len() - 1 - 9;
    format!("{}_{:08x}_{suffix}", &name[..keep], hash as u32)
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

/// The description of `replay-failed` (see [`replay_failed`]).
pub fn replay_failed_action() -> Action {
    replay_action(
        "replay-failed",
        "Failed rows (all, or those of `ids`) go back to pending with their retries reset.",
    )
}

/// An action that replays things kept aside (all, or `{"ids": [..]}`)
/// and answers `{"replayed": N}`.
pub fn replay_action(name: &'static str, summary: &'static str) -> Action {
    Action::new(name, summary)
    .request(serde_json::json!({
        "type": "object",
        "properties": {"ids": {"type": "array", "items": {"type": "integer"}, "nullable": true}},
        "additionalProperties": false
    }))
    .response(serde_json::json!({
        "type": "object",
        "properties": {"replayed": {"type": "integer", "minimum": 0}},
        "required": ["replayed"]
    }))
}

/// The arguments of a replay action (`action`): `{}` for every `thing`,
/// or `{"ids": [..]}` (a list of `ids`). Any other key is refused: a
/// misspelt key must not mean "every row".
pub fn replay_ids(
    args: &serde_json::Value,
    action: &str,
    thing: &str,
    ids: &str,
) -> Result<Option<Vec<i64>>, ActionError> {
    let Some(fields) = args.as_object() else {
        return Err(ActionError::BadRequest(format!(
            "the body must be a JSON object: {{}} for every {thing}, or {{\"ids\": [..]}}"
        )));
    };
    if let Some(k) = fields.keys().find(|k| *k != "ids") {
        return Err(ActionError::BadRequest(format!(
            "unknown argument {k:?}; {action} takes only ids"
        )));
    }
    match args.get("ids") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(serde_json::Value::as_i64).collect())
            .map(Some)
            .ok_or_else(|| ActionError::BadRequest(format!("ids must be a list of {ids}"))),
    }
}

/// Where a leased table's statements go: its service, its database, the
/// table, and the size of the service's pool of sessions.
#[derive(Debug, Clone)]
pub struct TableAt {
    pub service: String,
    pub pg: PgTarget,
    pub table: TableName,
    pub pool_size: u32,
}

/// `replay-failed` on a service's table (or why its settings could not
/// be read), as a factory answers it: on the service's pool of sessions.
pub fn replay_failed_in(
    at: Result<TableAt, ServiceError>,
    args: serde_json::Value,
) -> super::BoxFuture<Result<serde_json::Value, ActionError>> {
    Box::pin(async move {
        let at = at?;
        let pool = pool_of(&at.service, &at.pg, at.pool_size).await?;
        replay_failed(&pool, &at.table, &args).await
    })
}

/// The `replay-failed` action of a leased table: failed rows (all, or
/// `{"ids": [..]}`) go back to `pending` with their retries reset, and
/// the workers are woken. Answers `{"replayed": N}`.
pub async fn replay_failed(
    pool: &crate::conn::postgres::Pool,
    table: &TableName,
    args: &serde_json::Value,
) -> Result<serde_json::Value, ActionError> {
    let ids = replay_ids(args, "replay-failed", "failed row", "row ids")?;
    let l = Leased::new(table);
    let client = pooled(pool).await?;
    let n = match &ids {
        None => client.execute(&l.replay(false), &[]).await,
        Some(ids) => client.execute(&l.replay(true), &[ids]).await,
    }
    .map_err(pg)?;
    if n > 0 {
        client.batch_execute(&l.notify()).await.map_err(pg)?;
    }
    Ok(serde_json::json!({ "replayed": n }))
}

/// What a claim ([`Leased::claim`]) answered: the rows it took, its own
/// snapshot's `xmin` and `xmax`, and how many rows were due (more than
/// it took when `size` cut the batch).
pub struct Claimed {
    pub rows: Vec<tokio_postgres::Row>,
    pub xmin: i64,
    pub xmax: i64,
    pub due: i64,
}

impl Claimed {
    /// Reads a claim's answer (the row of NULLs it gives when it took
    /// nothing is no row).
    pub fn read(mut rows: Vec<tokio_postgres::Row>) -> Claimed {
        let (xmin, xmax, due) = rows
            .first()
            .map(|r| (r.get(r.len() - 3), r.get(r.len() - 2), r.get(r.len() - 1)))
            .unwrap_or((0, 0, 0));
        rows.retain(|r| r.get::<_, Option<i64>>(0).is_some());
        Claimed {
            rows,
            xmin,
            xmax,
            due,
        }
    }

    /// Whether more rows may wait beyond those the claim took: every row
    /// it asked for (`asked`) was due, or `size` cut the batch short of
    /// the rows it had locked.
    pub fn full(&self, asked: i64) -> bool {
        self.due >= asked || (self.rows.len() as i64) < self.due
    }
}

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
    details: super::Details,
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

/// The statements every leased work table shares (the outbox, the memory
/// queue): rows are claimed for a lease with `SKIP LOCKED`, expired
/// leases return to `pending`, an insert trigger notifies the workers.
/// Names reach SQL only quoted.
pub struct Leased {
    /// `"schema"."table"` or `"table"`.
    pub table: String,
    /// `"schema".` or empty, for the trigger function.
    schema: String,
    parsed: TableName,
}

impl Leased {
    pub fn new(table: &TableName) -> Leased {
        Leased {
            table: table.quoted(),
            schema: table
                .schema
                .as_ref()
                .map(|s| format!("{}.", s.quoted()))
                .unwrap_or_default(),
            parsed: table.clone(),
        }
    }

    /// An index of the table, built without blocking writers: its
    /// schema-qualified quoted name, and its statement.
    pub fn index(&self, suffix: &str, unique: bool, on: &str) -> (String, String) {
        let name = self.derived(suffix);
        (
            format!("{}{name}", self.schema),
            format!(
                "CREATE {u}INDEX CONCURRENTLY IF NOT EXISTS {name} ON {t} {on}",
                u = if unique { "UNIQUE " } else { "" },
                t = self.table
            ),
        )
    }

    /// A name derived from the table's, quoted.
    pub fn derived(&self, suffix: &str) -> String {
        format!("\"{}\"", derived_name(&self.parsed, suffix))
    }

    /// The channel the insert trigger notifies (unquoted).
    pub fn channel(&self) -> String {
        derived_name(&self.parsed, "inserted")
    }

    pub fn channel_quoted(&self) -> String {
        self.derived("inserted")
    }

    /// The start of the idempotent DDL: a transaction that waits at most
    /// 200 ms for a lock (a producer's insert queued behind it waits no
    /// longer; [`adopt`] tries again), under an advisory lock so that
    /// workers starting together do not race on `CREATE ... IF NOT
    /// EXISTS`.
    pub fn ddl_begin(&self, kind: &str) -> String {
        format!(
            "BEGIN;
SET LOCAL lock_timeout = '200ms';
SELECT pg_advisory_xact_lock(hashtext('warden {kind} ' || '{t_lit}'));
",
            t_lit = self.table.replace('\'', "''"),
        )
    }

    /// The whole DDL as shipped in `sql/`: the transaction `tx` (table and
    /// trigger), then each index's statement.
    pub fn script(tx: String, indexes: &[(String, String)]) -> String {
        let mut out = tx;
        for (_, index) in indexes {
            out.push_str(index);
            out.push_str(";\n");
        }
        out
    }

    /// The claim's indexes (quoted name, statement), built without
    /// blocking writers (see [`adopt`]).
    pub fn indexes(&self) -> Vec<(String, String)> {
        let t = &self.table;
        let (pending, sending) = (self.derived("pending"), self.derived("sending"));
        vec![
            (
                format!("{}{pending}", self.schema),
                format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {pending} ON {t} (id) WHERE status = 'pending'"
                ),
            ),
            (
                format!("{}{sending}", self.schema),
                format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {sending} ON {t} (claimed_until) WHERE status = 'sending'"
                ),
            ),
        ]
    }

    /// The end of the idempotent DDL: the insert trigger (created only
    /// when missing: no lock on every start), commit.
    pub fn ddl_end(&self) -> String {
        let t = &self.table;
        let f = format!("{}{}", self.schema, self.derived("notify"));
        format!(
            "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = '{trigger_bare}' AND tgrelid = '{t_lit}'::regclass) THEN
        CREATE TRIGGER {trigger} AFTER INSERT ON {t}
            FOR EACH STATEMENT EXECUTE FUNCTION {f}();
    END IF;
END
$$;
COMMIT;
",
            t_lit = t.replace('\'', "''"),
            trigger = self.derived("notify"),
            trigger_bare = derived_name(&self.parsed, "notify"),
            channel = self.channel(),
        )
    }

    /// Claims up to `$1` due rows with `id >= $3` (the claim's
    /// [`horizon::Horizon`]) for `$2` seconds, answering `returning`
    /// (columns of `o`, the id first), then the claim's token (its lease
    /// end), then the `xmin` and `xmax` of the statement's own snapshot
    /// (what the claim could see, for the horizon), then how many rows
    /// were due (locked, at most `$1`). Always one row at least: with
    /// nothing claimed, its `returning` columns are NULL
    /// ([`Claimed::read`]).
    ///
    /// With `size` (an expression over the table's columns: a row's
    /// bytes), the claim stops before the row that would take the batch
    /// past `$4` bytes: the first row always goes, however large.
    ///
    /// With `narrow` (used when [`horizon::Horizon::held`]: a statement
    /// of its own, so that the plain claim keeps its plans), the `xmin`
    /// it answers is narrowed: the oldest of the
    /// snapshot's running transactions, leaving out those still running
    /// that hold no lock on the table nor on its `id` sequence. Only the
    /// others can hold a row the claim could not see: an insert locks the
    /// table, a `nextval()` the sequence, each until its transaction ends,
    /// and a transaction that took neither gets an id above every row
    /// already claimed when it does. One that has ended since the
    /// snapshot was taken (its locks gone, its rows unseen by the claim)
    /// is kept. A writer elsewhere in the database (a long batch job, a
    /// migration) then no longer holds the bound back. It reads
    /// `pg_locks` (every backend's locks, once), so only when the bound is
    /// held.
    pub fn claim(&self, returning: &str, size: Option<&str>, narrow: bool) -> String {
        let t = &self.table;
        let (size_col, take) = match size {
            None => (String::new(), "c"),
            Some(size) => (format!(", {size} AS size"), "b"),
        };
        let bounded = if size.is_some() {
            "
b AS (
    SELECT id FROM (SELECT id, size, sum(size) OVER (ORDER BY id) - size AS before,
                           row_number() OVER (ORDER BY id) AS n FROM c) w
    WHERE n = 1 OR before + size <= $4),"
        } else {
            ""
        };
        let xmin = if narrow {
            let t_lit = t.replace('\'', "''");
            format!(
                "(WITH k AS MATERIALIZED (
          SELECT locktype, database, relation, virtualtransaction, transactionid, mode, granted
          FROM pg_locks),
      free AS (
          SELECT x.transactionid::text::int8 AS xid FROM k x
          WHERE x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock' AND x.granted
            AND NOT EXISTS (
                SELECT 1 FROM k l
                WHERE l.virtualtransaction = x.virtualtransaction AND l.locktype = 'relation'
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.relation IN ('{t_lit}'::regclass, pg_get_serial_sequence('{t_lit}', 'id')::regclass)))
      SELECT COALESCE(min(r::text::int8), pg_snapshot_xmax(x)::text::int8)
      FROM pg_snapshot_xip(x) r
      WHERE r::text::int8 & 4294967295 NOT IN (SELECT xid FROM free))"
            )
        } else {
            "pg_snapshot_xmin(x)::text::int8".to_string()
        };
        format!(
            "WITH c AS (
    SELECT id{size_col} FROM {t}
    WHERE status = 'pending' AND id >= $3 AND next_attempt_at <= now()
    ORDER BY id LIMIT $1
    FOR UPDATE SKIP LOCKED),{bounded}
u AS (
    UPDATE {t} o SET status = 'sending', claimed_until = now() + $2::float8 * interval '1 second'
    FROM {take} WHERE o.id = {take}.id
    RETURNING {returning}, o.claimed_until)
SELECT u.*, s.snap_xmin, s.snap_xmax, (SELECT count(*) FROM c) AS due
FROM (SELECT {xmin} AS snap_xmin, pg_snapshot_xmax(x)::text::int8 AS snap_xmax
      FROM pg_current_snapshot() x) s
LEFT JOIN u ON true"
        )
    }

    /// Expired leases (a worker died holding them) go back to `pending`,
    /// and so does a row `sending` without a lease (written so by hand or
    /// by another program: no worker holds it, so it would wait forever).
    /// Answers the ids.
    pub fn reap(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', claimed_until = NULL
WHERE status = 'sending' AND (claimed_until < now() OR claimed_until IS NULL)
RETURNING id",
            self.table
        )
    }

    /// Rows `$1` of claim `$2` go back unclaimed, their retries untouched.
    pub fn release(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', claimed_until = NULL
WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2",
            self.table
        )
    }

    /// Backlog (rows not delivered yet: pending, counted on the pending
    /// index, and `sending`, on the sending index: a row stuck there must
    /// show) and lag (age in seconds of the oldest of them: one probe of
    /// each index).
    pub fn stats(&self) -> String {
        let t = &self.table;
        format!(
            "SELECT (SELECT count(*) FROM {t} WHERE status = 'pending')
     + (SELECT count(*) FROM {t} WHERE status = 'sending'),
       greatest(0, COALESCE(EXTRACT(EPOCH FROM now() - LEAST(
           (SELECT created_at FROM {t} WHERE status = 'pending' ORDER BY id LIMIT 1),
           (SELECT min(created_at) FROM {t} WHERE status = 'sending'))), 0))::float8"
        )
    }

    /// Wakes the workers (an update fires no insert trigger).
    pub fn notify(&self) -> String {
        format!("SELECT pg_notify('{}', '')", self.channel())
    }

    /// Every failed row (or the rows `$1`) back to `pending`, retries reset.
    pub fn replay(&self, ids: bool) -> String {
        format!(
            "UPDATE {} SET status = 'pending', retry_count = 0, next_attempt_at = now(), last_error = NULL
WHERE status = 'failed'{}",
            self.table,
            if ids { " AND id = ANY($1)" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
