//! The SQL of a leased work table (the outbox, the memory queue) and what
//! a claim answers.

use super::*;
use crate::config::types::TableName;

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
