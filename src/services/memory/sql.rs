//! The SQL of memory-sync, for the queue and outbox tables named in the
//! registry (quoted names only; values as parameters).

use crate::config::types::TableName;
use crate::services::data::derived_name;

/// The statements of one memory-write queue.
pub struct Queue {
    table: String,
    schema: String,
    parsed: TableName,
    outbox: String,
}

impl Queue {
    pub fn new(table: &TableName, outbox: &TableName) -> Queue {
        Queue {
            table: table.quoted(),
            schema: table
                .schema
                .as_ref()
                .map(|s| format!("{}.", s.quoted()))
                .unwrap_or_default(),
            parsed: table.clone(),
            outbox: outbox.quoted(),
        }
    }

    fn derived(&self, suffix: &str) -> String {
        format!("\"{}\"", derived_name(&self.parsed, suffix))
    }

    pub fn channel_quoted(&self) -> String {
        self.derived("inserted")
    }

    /// Idempotent DDL of the queue (the outbox's is the relay's).
    pub fn create(&self) -> String {
        let t = &self.table;
        let f = format!("{}{}", self.schema, self.derived("notify"));
        format!(
            "BEGIN;
SET LOCAL lock_timeout = '10s';
SELECT pg_advisory_xact_lock(hashtext('warden memory-sync ' || '{t_lit}'));
CREATE TABLE IF NOT EXISTS {t} (
    id              bigserial PRIMARY KEY,
    tenant          text,
    session_id      text,
    idempotency_key text NOT NULL DEFAULT gen_random_uuid()::text,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    retry_count     int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS {idem} ON {t} (idempotency_key);
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
            idem = self.derived("idempotency_key"),
            pending = self.derived("pending"),
            sending = self.derived("sending"),
            trigger = self.derived("notify"),
            trigger_bare = derived_name(&self.parsed, "notify"),
            channel = derived_name(&self.parsed, "inserted"),
        )
    }

    /// Claims up to `$1` due rows for `$2` seconds.
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
RETURNING o.id, o.idempotency_key, o.payload::text, o.claimed_until"
        )
    }

    /// Expired leases go back to `pending`.
    pub fn reap(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', claimed_until = NULL
WHERE status = 'sending' AND claimed_until < now()",
            self.table
        )
    }

    /// Row `$1` of claim `$2` was accepted: mark it sent and, in the same
    /// statement (one transaction), put its WAL event (topic `$3`) into the
    /// outbox, deduplicated on `memory:<idempotency_key>`. Answers how many
    /// rows were marked (0: the claim was lost).
    pub fn done(&self) -> String {
        format!(
            "WITH done AS (
    UPDATE {t} SET status = 'sent', sent_at = now(), claimed_until = NULL, last_error = NULL
    WHERE id = $1 AND status = 'sending' AND claimed_until = $2
    RETURNING id, tenant, session_id, idempotency_key, payload),
wal AS (
    INSERT INTO {o} (topic, payload, dedupe_key, partition_key)
    SELECT $3, jsonb_build_object('memory_id', id, 'tenant', tenant, 'session_id', session_id,
                                  'idempotency_key', idempotency_key, 'payload', payload),
           'memory:' || idempotency_key, session_id
    FROM done
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING)
SELECT count(*) FROM done",
            t = self.table,
            o = self.outbox
        )
    }

    /// Row `$1` of claim `$4` failed with `$2`: retry after at least `$5`
    /// seconds (0.5 s doubling, at most 5 min, or the backend's
    /// Retry-After), or `failed` once it has had `$3` attempts; `$6` true
    /// fails it at once (a 4xx other than 429).
    pub fn retry(&self) -> String {
        format!(
            "UPDATE {} SET
    retry_count = retry_count + 1,
    last_error = $2,
    claimed_until = NULL,
    status = CASE WHEN $6 OR retry_count + 1 >= $3 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + greatest($5::float8,
        least(300, 0.5 * power(2, least(retry_count, 20)))) * interval '1 second'
WHERE id = $1 AND status = 'sending' AND claimed_until = $4
RETURNING status = 'failed'",
            self.table
        )
    }

    /// Rows `$1` of claim `$2` go back unclaimed (the circuit opened).
    pub fn release(&self) -> String {
        format!(
            "UPDATE {} SET status = 'pending', claimed_until = NULL
WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2",
            self.table
        )
    }

    /// Seconds until the next row is due.
    pub fn next_due(&self) -> String {
        let t = &self.table;
        format!(
            "SELECT EXTRACT(EPOCH FROM least(
    (SELECT min(next_attempt_at) FROM {t} WHERE status = 'pending'),
    (SELECT min(claimed_until) FROM {t} WHERE status = 'sending')) - now())::float8"
        )
    }

    /// Backlog (pending rows).
    pub fn backlog(&self) -> String {
        format!(
            "SELECT count(*) FROM {} WHERE status = 'pending'",
            self.table
        )
    }

    /// Every failed row (or rows `$1`) back to `pending`.
    pub fn replay(&self, ids: bool) -> String {
        format!(
            "UPDATE {} SET status = 'pending', retry_count = 0, next_attempt_at = now(), last_error = NULL
WHERE status = 'failed'{}",
            self.table,
            if ids { " AND id = ANY($1)" } else { "" }
        )
    }

    pub fn notify(&self) -> String {
        format!(
            "SELECT pg_notify('{}', '')",
            derived_name(&self.parsed, "inserted")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_ddl_is_the_one_the_service_runs() {
        let q = Queue::new(
            &TableName::new("memory_write_outbox").unwrap(),
            &TableName::new("message_outbox").unwrap(),
        );
        let shipped = include_str!("../../../sql/memory-sync.sql");
        let body = shipped
            .lines()
            .skip_while(|l| l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(body.trim(), q.create().trim());
    }
}
