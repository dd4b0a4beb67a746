//! The SQL of memory-sync, for the queue and outbox tables named in the
//! registry (quoted names only; values as parameters). The claim and lease
//! statements are the shared ones of [`Leased`].

use crate::config::types::TableName;
use crate::services::data::Leased;

/// The statements of one memory-write queue.
pub struct Queue {
    l: Leased,
    outbox: String,
}

impl Queue {
    pub fn new(table: &TableName, outbox: &TableName) -> Queue {
        Queue {
            l: Leased::new(table),
            outbox: outbox.quoted(),
        }
    }

    pub fn channel_quoted(&self) -> String {
        self.l.channel_quoted()
    }

    /// What memory-sync needs of its queue (checked at its start and by
    /// `check --connect`): every column its statements name; `id` a
    /// `bigint`, `claimed_until` a `timestamptz`.
    pub const COLUMNS: &'static [(&'static str, Option<&'static str>)] = &[
        ("id", Some("bigint")),
        ("tenant", None),
        ("session_id", None),
        ("idempotency_key", None),
        ("payload", None),
        ("status", None),
        ("retry_count", None),
        ("next_attempt_at", None),
        ("claimed_until", Some("timestamp with time zone")),
        ("last_error", None),
        ("created_at", None),
        ("sent_at", None),
    ];

    /// [`Queue::COLUMNS`] of `table`.
    pub fn needs(table: &TableName, create_schema: bool) -> crate::config::TableNeeds {
        crate::config::TableNeeds {
            table: table.quoted(),
            columns: Self::COLUMNS,
            create_schema,
            added: &[],
        }
    }

    /// Idempotent DDL of the queue (the outbox's is the relay's), as
    /// shipped in `sql/memory-sync.sql`: the table and its insert trigger
    /// in one transaction, then its indexes.
    pub fn create(&self) -> String {
        Leased::script(self.create_tx(), &self.indexes())
    }

    /// The indexes, built without blocking writers
    /// ([`crate::services::data::adopt`]).
    pub fn indexes(&self) -> Vec<(String, String)> {
        let mut v = vec![self.l.index("idempotency_key", true, "(idempotency_key)")];
        v.extend(self.l.indexes());
        v
    }

    /// The table and the insert trigger, one transaction.
    pub fn create_tx(&self) -> String {
        let t = &self.l.table;
        format!(
            "{begin}CREATE TABLE IF NOT EXISTS {t} (
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
{end}",
            begin = self.l.ddl_begin("memory-sync"),
            end = self.l.ddl_end(),
        )
    }

    /// Claims up to `$1` due rows for `$2` seconds (`narrow`: see
    /// `Leased::claim`).
    pub fn claim(&self, narrow: bool) -> String {
        self.l.claim(
            "o.id, o.idempotency_key, o.payload::text, o.session_id",
            None,
            narrow,
        )
    }

    /// Expired leases go back to `pending`.
    pub fn reap(&self) -> String {
        self.l.reap()
    }

    /// Rows `$1` (an array) of claim `$2` were accepted: mark them sent
    /// and, in the same statement (one transaction), put their WAL events
    /// (topic `$3`) into the outbox, deduplicated on
    /// `memory:<idempotency_key>`. One statement per batch, not per row.
    /// Answers how many rows were marked (fewer: the claim was lost).
    pub fn done(&self) -> String {
        format!(
            "WITH done AS (
    UPDATE {t} SET status = 'sent', sent_at = now(), claimed_until = NULL, last_error = NULL
    WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2
    RETURNING id, tenant, session_id, idempotency_key, payload),
wal AS (
    INSERT INTO {o} (topic, payload, dedupe_key, partition_key)
    SELECT $3, jsonb_build_object('memory_id', id, 'tenant', tenant, 'session_id', session_id,
                                  'idempotency_key', idempotency_key, 'payload', payload),
           'memory:' || idempotency_key, session_id
    FROM done ORDER BY id
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING)
SELECT count(*) FROM done",
            t = self.l.table,
            o = self.outbox
        )
    }

    /// Row `$1` of claim `$4` failed with `$2`: retry after the jittered
    /// backoff ([`crate::services::data::RETRY_DELAY`]: a random time
    /// between half and all of 0.5 s doubling, at most 5 min), but never
    /// before `$5` seconds (the backend's Retry-After), or `failed` once
    /// it has had `$3` attempts; `$6` true fails it at once (a 4xx other
    /// than 429).
    pub fn retry(&self) -> String {
        format!(
            "UPDATE {} SET
    retry_count = retry_count + 1,
    last_error = $2,
    claimed_until = NULL,
    status = CASE WHEN $6 OR retry_count + 1 >= $3 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + greatest($5::float8, {delay}) * interval '1 second'
WHERE id = $1 AND status = 'sending' AND claimed_until = $4
RETURNING EXTRACT(EPOCH FROM next_attempt_at - now())::float8, status = 'failed'",
            self.l.table,
            delay = crate::services::data::RETRY_DELAY
        )
    }

    /// Rows `$1` of claim `$2` go back unclaimed (the circuit opened).
    pub fn release(&self) -> String {
        self.l.release()
    }

    /// The shared statements of the table (statistics among them).
    pub fn leased(&self) -> &Leased {
        &self.l
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
        if std::env::var_os("WARDEN_BLESS_SQL").is_some() {
            // Rewrites the shipped file from the code (its comment kept).
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/memory-sync.sql");
            let head: String = shipped
                .lines()
                .take_while(|l| l.starts_with("--"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(path, format!("{head}{}", q.create())).unwrap();
            return;
        }
        assert_eq!(body.trim(), q.create().trim());
    }
}
