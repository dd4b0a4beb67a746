//! The replay actions: things kept aside (failed rows, dead letters)
//! brought back, all or by id.

use super::*;
use crate::config::Action;
use crate::config::types::{PgTarget, TableName};
use crate::services::{ActionError, ServiceError};

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
) -> crate::services::BoxFuture<Result<serde_json::Value, ActionError>> {
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
