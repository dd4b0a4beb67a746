//! The SQL of the outbox relay, for a table named in the registry. Names
//! reach SQL only quoted (`TableName::quoted`, `Ident::quoted`); values only
//! as parameters.

use crate::config::types::TableName;

/// The statements of one outbox table.
pub struct Outbox {
    /// `"schema"."table"` or `"table"`.
    table: String,
    /// The schema prefix for the trigger function: `"schema".` or empty.
    schema: String,
    /// The table, for the names of its indexes, function and channel.
    parsed: TableName,
}

impl Outbox {
    pub fn new(table: &TableName) -> Outbox {
        Outbox {
            table: table.quoted(),
            schema: table
                .schema
                .as_ref()
                .map(|s| format!("{}.", s.quoted()))
                .unwrap_or_default(),
            parsed: table.clone(),
        }
    }

    /// A name derived from the table's, quoted.
    fn derived(&self, suffix: &str) -> String {
        format!("\"{}\"", self.derived_bare(suffix))
    }

    fn derived_bare(&self, suffix: &str) -> String {
        crate::services::data::derived_name(&self.parsed, suffix)
    }

    /// The channel the insert trigger notifies.
    pub fn channel(&self) -> String {
        self.derived_bare("inserted")
    }

    pub fn channel_quoted(&self) -> String {
        format!("\"{}\"", self.channel())
    }

    /// Idempotent DDL: the table, its indexes and the insert trigger, under
    /// a transaction-scoped advisory lock so that relays starting together
    /// do not race on `CREATE ... IF NOT EXISTS`.
    pub fn create(&self) -> String {
        let t = &self.table;
        let f = format!("{}{}", self.schema, self.derived("notify"));
        format!(
            "BEGIN;
SET LOCAL lock_timeout = '10s';
SELECT pg_advisory_xact_lock(hashtext('warden outbox ' || '{t_lit}'));
CREATE TABLE IF NOT EXISTS {t} (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    partition_key   text,
    payload         jsonb NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{{}}',
    dedupe_key      text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    retry_count     int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS {dedupe} ON {t} (dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS {pending} ON {t} (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS {sending} ON {t} (claimed_until) WHERE status = 'sending';
CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$
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
            dedupe = self.derived("dedupe_key"),
            pending = self.derived("pending"),
            sending = self.derived("sending"),
            trigger = self.derived("notify"),
            trigger_bare = self.derived_bare("notify"),
            channel = self.channel(),
        )
    }

    /// Claims up to `$1` due rows for `$2` seconds; several relays never
    /// claim the same row (`SKIP LOCKED`).
    pub fn claim(&self) -> String {
        let t = &self.table;
        format!(
            "WITH c AS (
    SELECT id FROM {t}
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY id LIMIT $1
    FOR UPDATE SKIP LOCKED)
UPDATE {t} o SET status = 'sending', claimed_until = now() + $2::float8 * interval '1 second'
FROM c WHERE o.id = c.id
RETURNING o.id, o.topic, o.partition_key, o.payload::text, o.headers::text, o.dedupe_key,
    o.claimed_until"
        )
    }

    /// Expired leases (a relay died holding them) go back to `pending`.
    pub fn reap(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', claimed_until = NULL
WHERE status = 'sending' AND claimed_until < now()",
            self.table
        )
    }

    // Every statement after the claim names the claim (`$2`: its
    // `claimed_until`, the same for the whole batch): a relay whose lease
    // ran out, and whose rows another relay took, changes nothing.

    /// Rows `$1` of claim `$2` are in their streams.
    pub fn mark_sent(&self) -> String {
        format!(
            "UPDATE {} SET status = 'sent', published_at = now(), claimed_until = NULL, last_error = NULL
WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2",
            self.table
        )
    }

    /// Rows `$1` of claim `$2` are in their streams (`delete_sent = true`).
    pub fn delete_sent(&self) -> String {
        format!(
            "DELETE FROM {} WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2",
            self.table
        )
    }

    /// Rows `$1` of claim `$2` go back unclaimed, their retries untouched
    /// (Redis outage).
    pub fn release(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', claimed_until = NULL
WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2",
            self.table
        )
    }

    /// Row `$1` of claim `$4` was refused with error `$2`: retry later
    /// (0.5 s doubling, at most 5 min), or `failed` once it has had `$3`
    /// attempts. Answers whether it failed for good (no row: the claim was
    /// lost).
    pub fn retry(&self) -> String {
        format!(
            "UPDATE {} SET
    retry_count = retry_count + 1,
    last_error = $2,
    claimed_until = NULL,
    status = CASE WHEN retry_count + 1 >= $3 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + least(300, 0.5 * power(2, least(retry_count, 20))) * interval '1 second'
WHERE id = $1 AND status = 'sending' AND claimed_until = $4
RETURNING status = 'failed'",
            self.table
        )
    }

    /// Backlog (pending rows) and lag (age of the oldest, in seconds).
    pub fn stats(&self) -> String {
        format!(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
FROM {} WHERE status = 'pending'",
            self.table
        )
    }

    /// Seconds until the next row is due: a retry's `next_attempt_at`, or
    /// the end of a lease (`NULL`: nothing is waiting).
    pub fn next_due(&self) -> String {
        let t = &self.table;
        format!(
            "SELECT EXTRACT(EPOCH FROM least(
    (SELECT min(next_attempt_at) FROM {t} WHERE status = 'pending'),
    (SELECT min(claimed_until) FROM {t} WHERE status = 'sending')) - now())::float8"
        )
    }

    /// Wakes the relays (after a replay: an update fires no insert trigger).
    pub fn notify(&self) -> String {
        format!("SELECT pg_notify('{}', '')", self.channel())
    }

    /// Every failed row back to `pending`.
    pub fn replay_all(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', retry_count = 0, next_attempt_at = now(), last_error = NULL
WHERE status = 'failed'",
            self.table
        )
    }

    /// Failed rows `$1` back to `pending`.
    pub fn replay_ids(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', retry_count = 0, next_attempt_at = now(), last_error = NULL
WHERE status = 'failed' AND id = ANY($1)",
            self.table
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_ddl_is_the_one_the_relay_runs() {
        let t = Outbox::new(&TableName::new("message_outbox").unwrap());
        let shipped = include_str!("../../../sql/outbox-relay.sql");
        let body = shipped
            .lines()
            .skip_while(|l| l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(body.trim(), t.create().trim());
    }

    #[test]
    fn names_are_quoted_and_schema_qualified() {
        let t = Outbox::new(&TableName::new("app.events").unwrap());
        assert!(
            t.create()
                .contains(r#"CREATE TABLE IF NOT EXISTS "app"."events" ("#)
        );
        assert!(t.create().contains(r#"FUNCTION "app"."events_notify"()"#));
        assert_eq!(t.channel_quoted(), r#""events_inserted""#);
        assert!(t.claim().contains(r#"FROM "app"."events""#));
    }

    #[test]
    fn derived_names_fit_in_63_bytes_and_stay_distinct() {
        let a = Outbox::new(&TableName::new(&"a".repeat(63)).unwrap());
        let b = Outbox::new(&TableName::new(&format!("{}b", "a".repeat(62))).unwrap());
        for t in [&a, &b] {
            for suffix in ["inserted", "dedupe_key", "pending", "sending", "notify"] {
                assert!(
                    t.derived_bare(suffix).len() <= 63,
                    "{}",
                    t.derived_bare(suffix)
                );
                assert!(t.derived_bare(suffix).ends_with(suffix));
            }
        }
        assert_ne!(a.channel(), b.channel());
        assert_ne!(a.derived_bare("pending"), b.derived_bare("pending"));
        let short = Outbox::new(&TableName::new("message_outbox").unwrap());
        assert_eq!(short.channel(), "message_outbox_inserted");
    }
}
