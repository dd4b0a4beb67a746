//! What went wrong with PostgreSQL, in words without secrets, and the
//! time limits on its answers: a lost session (`Fault::Lost`, the worker
//! pauses and tries again) told from a refusal (`Fault::Fatal`).

use std::time::Duration;

use crate::services::ServiceError;

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
