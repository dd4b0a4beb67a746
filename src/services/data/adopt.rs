//! A kind's table made or adopted (its idempotent DDL), what a claimed
//! row's columns must hold, and the names derived from a table's.

use std::time::Duration;

use super::*;
use crate::config::types::TableName;
use crate::services::ServiceError;

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
