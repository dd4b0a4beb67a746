//! The sessions of a data service: its pool (one per service name), the
//! session a worker's round takes, and the bounds on `pool_size` and on
//! the session limits.

use std::time::Duration;

use super::*;
use crate::config::types::PgTarget;
use crate::services::ServiceError;

/// A PostgreSQL session (TLS as the DSN and `tls_ca` say) and its driver.
pub(super) async fn session(
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
