//! What the data-plane kinds share: PostgreSQL sessions (plain, or
//! listening for a trigger's `pg_notify`), error wording without secrets,
//! names derived from a table's, and the abort-on-drop of driver tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::ServiceError;
use crate::config::types::{PostgresDsn, TableName};

/// A PostgreSQL error in words (the server's message when there is one;
/// never the DSN).
pub fn pg(e: tokio_postgres::Error) -> ServiceError {
    use std::error::Error;
    ServiceError(match (e.as_db_error(), e.source()) {
        (Some(db), _) => format!("PostgreSQL: {}", db.message()),
        (None, Some(src)) => format!("PostgreSQL: {e}: {src}"),
        (None, None) => format!("PostgreSQL: {e}"),
    })
}

/// Aborts a task when dropped (a session's driver ends with its user).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A PostgreSQL session and the task driving it.
pub async fn connect(
    dsn: &PostgresDsn,
) -> Result<(tokio_postgres::Client, AbortOnDrop), ServiceError> {
    let (client, conn) = tokio_postgres::connect(dsn.0.expose(), tokio_postgres::NoTls)
        .await
        .map_err(pg)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, AbortOnDrop(driver)))
}

/// A PostgreSQL session that listens on `channel` (a quoted identifier);
/// each notification wakes the returned `Notify`. The session's own error
/// is logged when it ends (queries then fail).
pub async fn listening(
    dsn: &PostgresDsn,
    channel_quoted: &str,
) -> Result<(tokio_postgres::Client, Arc<Notify>, AbortOnDrop), ServiceError> {
    let (client, mut conn) = tokio_postgres::connect(dsn.0.expose(), tokio_postgres::NoTls)
        .await
        .map_err(pg)?;
    let wake = Arc::new(Notify::new());
    let driver = {
        let wake = wake.clone();
        tokio::spawn(async move {
            use tokio_postgres::AsyncMessage;
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %pg(e), "PostgreSQL session ended");
                        break;
                    }
                }
            }
        })
    };
    let driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {channel_quoted}"))
        .await
        .map_err(pg)?;
    Ok((client, wake, driver))
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

/// 0.5 s doubling per attempt, capped.
pub fn doubling(attempt: u32, max: Duration) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(16))
        .min(max)
}
