//! The SQL of the stream replicator: its replica table (built-in layout,
//! or a table of the user's with a mapping of payload keys to columns)
//! and the dead-letter table `warden_dlq`. Names reach SQL only quoted;
//! values (payload keys included) only as parameters.

use indexmap::IndexMap;

use crate::config::types::{Ident, TableName};

/// The dead-letter table every replicator shares (rows carry their
/// service's name).
pub const DLQ_TABLE: &str = "warden_dlq";

/// The statements of one replica table.
pub struct Replica {
    table: String,
    columns: Option<IndexMap<String, Ident>>,
}

impl Replica {
    pub fn new(table: &TableName, columns: Option<&IndexMap<String, Ident>>) -> Replica {
        Replica {
            table: table.quoted(),
            columns: columns.cloned(),
        }
    }

    /// Idempotent DDL, as shipped in `sql/stream-replicator.sql`: the
    /// built-in replica table (unless columns are mapped: that table is
    /// the user's) and the dead-letter table.
    pub fn create(&self) -> String {
        let mut out = String::from(
            "BEGIN;
SET LOCAL lock_timeout = '200ms';
SELECT pg_advisory_xact_lock(hashtext('warden stream-replicator'));
",
        );
        if self.columns.is_none() {
            out.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} (
    event_id      text PRIMARY KEY,
    stream        text NOT NULL,
    partition_key text,
    payload       jsonb NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{{}}',
    event_ts      timestamptz,
    replicated_at timestamptz NOT NULL DEFAULT now()
);
",
                self.table
            ));
        }
        out.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {DLQ_TABLE} (
    id          bigserial PRIMARY KEY,
    service     text NOT NULL,
    stream      text NOT NULL,
    entry_id    text NOT NULL,
    event_id    text,
    reason      text NOT NULL,
    fields      jsonb NOT NULL,
    deliveries  int NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    UNIQUE (service, stream, entry_id)
);
-- The size (dead letters not replayed) is read every second, and replayed
-- ones are deleted after `dlq_keep_replayed`: each from an index, not the
-- whole table.
CREATE INDEX IF NOT EXISTS warden_dlq_unreplayed ON {DLQ_TABLE} (service) WHERE replayed_at IS NULL;
CREATE INDEX IF NOT EXISTS warden_dlq_replayed ON {DLQ_TABLE} (service, replayed_at) WHERE replayed_at IS NOT NULL;
COMMIT;
"
        ));
        out
    }

    /// Applies entries given as arrays (`$1` event ids, `$2` streams, `$3`
    /// partition keys, `$4` payloads, `$5` headers, `$6` entry times in
    /// ms since the epoch); an event already there is left alone. Answers
    /// the rows inserted (the rest were duplicates).
    pub fn apply(&self) -> String {
        let t = &self.table;
        match &self.columns {
            None => format!(
                "INSERT INTO {t} (event_id, stream, partition_key, payload, headers, event_ts)
SELECT e.event_id, e.stream, NULLIF(e.partition_key, ''), e.payload::jsonb, e.headers::jsonb,
       to_timestamp(e.ms / 1000.0)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[])
     AS e(event_id, stream, partition_key, payload, headers, ms)
ON CONFLICT (event_id) DO NOTHING"
            ),
            Some(columns) => {
                // Each payload key (a parameter: `$7`, in order) becomes
                // its column, converted as `jsonb_populate_record` does.
                let cols: Vec<String> = columns.values().map(Ident::quoted).collect();
                let pairs: Vec<String> = columns
                    .values()
                    .enumerate()
                    .map(|(i, c)| {
                        format!(
                            "'{}', e.payload::jsonb -> ($7::text[])[{}]",
                            c.as_str().replace('\'', "''"),
                            i + 1
                        )
                    })
                    .collect();
                format!(
                    "INSERT INTO {t} (event_id, {cols})
SELECT e.event_id, {r_cols}
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[])
     AS e(event_id, stream, partition_key, payload, headers, ms),
     jsonb_populate_record(NULL::{t}, jsonb_build_object({pairs})) AS r
ON CONFLICT (event_id) DO NOTHING",
                    cols = cols.join(", "),
                    r_cols = cols
                        .iter()
                        .map(|c| format!("r.{c}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    pairs = pairs.join(", "),
                )
            }
        }
    }

    /// The payload keys of a mapped table, in the order of `$7`.
    pub fn keys(&self) -> Option<Vec<String>> {
        self.columns.as_ref().map(|c| c.keys().cloned().collect())
    }

    /// Dead letters given as arrays (`$1` service, `$2` streams, `$3`
    /// entry ids, `$4` event ids, `$5` reasons, `$6` fields as JSON, `$7`
    /// deliveries), each under its own key (service, stream, entry id).
    pub fn dead_letters(&self) -> String {
        format!(
            "INSERT INTO {DLQ_TABLE} (service, stream, entry_id, event_id, reason, fields, deliveries)
SELECT $1, d.stream, d.entry_id, NULLIF(d.event_id, ''), d.reason, d.fields::jsonb, d.deliveries
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[])
     AS d(stream, entry_id, event_id, reason, fields, deliveries)
ON CONFLICT (service, stream, entry_id) DO UPDATE
    SET reason = EXCLUDED.reason, deliveries = EXCLUDED.deliveries, replayed_at = NULL"
        )
    }
}

/// The ids of service `$1`'s dead letters not replayed yet (all, or ids
/// `$2`).
pub fn dead_letters_to_replay(ids: bool) -> String {
    format!(
        "SELECT id FROM {DLQ_TABLE}
WHERE service = $1 AND replayed_at IS NULL{}
ORDER BY id",
        if ids { " AND id = ANY($2)" } else { "" }
    )
}

/// Dead letter `$1` of service `$2`, locked for its replay unless another
/// call holds it or replayed it: its stream, fields and entry id.
pub fn dead_letter_to_replay() -> String {
    format!(
        "SELECT stream, fields::text, entry_id FROM {DLQ_TABLE}
WHERE id = $1 AND service = $2 AND replayed_at IS NULL
FOR UPDATE SKIP LOCKED"
    )
}

/// Dead letter `$1` went back to its stream.
pub fn replayed() -> String {
    format!("UPDATE {DLQ_TABLE} SET replayed_at = now() WHERE id = $1")
}

/// Dead letters of service `$1` replayed more than `$2` seconds ago go.
pub fn prune_replayed() -> String {
    format!(
        "DELETE FROM {DLQ_TABLE} WHERE service = $1 AND replayed_at < now() - $2::float8 * interval '1 second'"
    )
}

/// Dead letters of service `$1` not replayed yet.
pub fn dead_letter_count() -> String {
    format!("SELECT count(*) FROM {DLQ_TABLE} WHERE service = $1 AND replayed_at IS NULL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_ddl_is_the_one_the_replicator_runs() {
        let r = Replica::new(&TableName::new("memory_replica").unwrap(), None);
        let shipped = include_str!("../../../sql/stream-replicator.sql");
        let head: String = shipped
            .lines()
            .take_while(|l| l.starts_with("--"))
            .map(|l| format!("{l}\n"))
            .collect();
        if std::env::var_os("WARDEN_BLESS_SQL").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/stream-replicator.sql");
            std::fs::write(path, format!("{head}{}", r.create())).unwrap();
            return;
        }
        assert_eq!(shipped[head.len()..].trim(), r.create().trim());
    }

    #[test]
    fn a_mapped_table_is_the_users_and_keys_are_parameters() {
        let mut columns = IndexMap::new();
        columns.insert("it's".to_string(), Ident::new("name").unwrap());
        let r = Replica::new(&TableName::new("app.people").unwrap(), Some(&columns));
        assert!(!r.create().contains("app"), "no replica table is made");
        assert!(r.create().contains("warden_dlq"));
        let apply = r.apply();
        assert!(
            apply.contains(r#"INSERT INTO "app"."people" (event_id, "name")"#),
            "{apply}"
        );
        assert!(
            !apply.contains("it's"),
            "a payload key is a parameter: {apply}"
        );
        assert_eq!(r.keys(), Some(vec!["it's".to_string()]));
    }
}
