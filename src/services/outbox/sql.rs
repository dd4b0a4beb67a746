//! The SQL of the outbox relay, for a table named in the registry. Names
//! reach SQL only quoted (`TableName::quoted`, `Ident::quoted`); values only
//! as parameters. The claim and lease statements are the shared ones of
//! [`Leased`].

use crate::config::types::TableName;
use crate::services::data::Leased;

/// The statements of one outbox table.
pub struct Outbox {
    l: Leased,
}

impl Outbox {
    pub fn new(table: &TableName) -> Outbox {
        Outbox {
            l: Leased::new(table),
        }
    }

    /// The channel the insert trigger notifies.
    pub fn channel(&self) -> String {
        self.l.channel()
    }

    pub fn channel_quoted(&self) -> String {
        self.l.channel_quoted()
    }

    /// Idempotent DDL, as shipped in `sql/outbox-relay.sql`: the table and
    /// its insert trigger in one transaction, then its indexes.
    pub fn create(&self) -> String {
        Leased::script(self.create_tx(), &self.indexes())
    }

    /// The indexes, built without blocking writers ([`adopt`]).
    ///
    /// [`adopt`]: crate::services::data::adopt
    pub fn indexes(&self) -> Vec<(String, String)> {
        let mut v = vec![self.l.index(
            "dedupe_key",
            true,
            "(dedupe_key) WHERE dedupe_key IS NOT NULL",
        )];
        v.extend(self.l.indexes());
        v
    }

    /// The table and the insert trigger, one transaction.
    pub fn create_tx(&self) -> String {
        let t = &self.l.table;
        format!(
            "{begin}CREATE TABLE IF NOT EXISTS {t} (
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
    published_at    timestamptz,
    event_id        uuid NOT NULL DEFAULT gen_random_uuid()
);
{event_id}{end}",
            begin = self.l.ddl_begin("outbox"),
            event_id = self.event_id_column(),
            end = self.l.ddl_end(),
        )
    }

    /// An outbox made before events had an identity of their own gets its
    /// `event_id` column: added empty, then given its default (neither
    /// rewrites the table, where a volatile default added with the column
    /// would); rows already there fall back on [`Outbox::EVENT_ID`]'s
    /// derived id. Checked first, so that no start takes the table's lock
    /// once the column is there.
    fn event_id_column(&self) -> String {
        let t = &self.l.table;
        format!(
            "DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = '{t_lit}'::regclass AND attname = 'event_id' AND NOT attisdropped) THEN
        ALTER TABLE {t} ADD COLUMN event_id uuid;
        ALTER TABLE {t} ALTER COLUMN event_id SET DEFAULT gen_random_uuid();
    END IF;
END
$$;
",
            t_lit = t.replace('\'', "''"),
        )
    }

    /// What the relay needs of its table (checked at its start and by
    /// `check --connect`): every column its statements name; `id` a
    /// `bigint` (bound as one), `claimed_until` a `timestamptz` (the
    /// claim's token), `event_id` a `uuid` (added at the start with
    /// `create_schema`).
    pub const COLUMNS: &'static [(&'static str, Option<&'static str>)] = &[
        ("id", Some("bigint")),
        ("topic", None),
        ("partition_key", None),
        ("payload", None),
        ("headers", None),
        ("dedupe_key", None),
        ("status", None),
        ("retry_count", None),
        ("next_attempt_at", None),
        ("claimed_until", Some("timestamp with time zone")),
        ("last_error", None),
        ("created_at", None),
        ("published_at", None),
        ("event_id", Some("uuid")),
    ];

    /// [`Outbox::COLUMNS`] of `table`.
    pub fn needs(table: &TableName, create_schema: bool) -> crate::config::TableNeeds {
        crate::config::TableNeeds {
            table: table.quoted(),
            columns: Self::COLUMNS,
            create_schema,
            added: &["event_id"],
        }
    }

    /// What a row weighs in a batch, as `batch_bytes` counts it: its
    /// payload and headers as the relay sends them.
    pub const SIZE: &'static str =
        "COALESCE(octet_length(payload::text), 0) + COALESCE(octet_length(headers::text), 0)";

    /// A claimed row's event id, as text: its `event_id`, made when the
    /// row was inserted and unique across the table's lives (a `TRUNCATE
    /// ... RESTART IDENTITY` or a table made again gives out the same ids)
    /// and across outbox tables. A row inserted before the column was
    /// added has none: its id is derived from the table's oid, the row's
    /// id and its creation time, the same at every claim.
    pub const EVENT_ID: &'static str = "COALESCE(o.event_id::text, md5(o.tableoid::text || ':' || o.id || ':' || COALESCE(EXTRACT(EPOCH FROM o.created_at)::text, ''))::uuid::text)";

    /// Claims up to `$1` due rows for `$2` seconds, holding at most `$4`
    /// bytes (the first row always); several relays never claim the same
    /// row (`SKIP LOCKED`).
    ///
    /// `narrow`: see `Leased::claim`.
    pub fn claim(&self, narrow: bool) -> String {
        self.l.claim(
            &format!(
                "o.id, o.topic, o.partition_key, o.payload::text, o.headers::text, o.dedupe_key, {}",
                Self::EVENT_ID
            ),
            Some(Self::SIZE),
            narrow,
        )
    }

    /// Expired leases (a relay died holding them) go back to `pending`.
    pub fn reap(&self) -> String {
        self.l.reap()
    }

    // Every statement after the claim names the claim (`$2`: its
    // `claimed_until`, the same for the whole batch): a relay whose lease
    // ran out, and whose rows another relay took, changes nothing.

    /// Rows `$1` of claim `$2` are in their streams.
    pub fn mark_sent(&self) -> String {
        format!(
            "UPDATE {} SET status = 'sent', published_at = now(), claimed_until = NULL, last_error = NULL
WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2",
            self.l.table
        )
    }

    /// Rows `$1` of claim `$2` are in their streams (`delete_sent = true`).
    pub fn delete_sent(&self) -> String {
        format!(
            "DELETE FROM {} WHERE id = ANY($1) AND status = 'sending' AND claimed_until = $2",
            self.l.table
        )
    }

    /// Rows `$1` of claim `$2` go back unclaimed, their retries untouched
    /// (Redis outage).
    pub fn release(&self) -> String {
        self.l.release()
    }

    /// Row `$1` of claim `$4` was refused with error `$2`: retry later
    /// (a random time between half and all of 0.5 s doubling per attempt,
    /// at most 5 min: see [`crate::services::data::RETRY_DELAY`]), or
    /// `failed` once it has had `$3` attempts. Answers whether it failed
    /// for good (no row: the claim was lost).
    pub fn retry(&self) -> String {
        format!(
            "UPDATE {} SET
    retry_count = retry_count + 1,
    last_error = $2,
    claimed_until = NULL,
    status = CASE WHEN retry_count + 1 >= $3 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + {delay} * interval '1 second'
WHERE id = $1 AND status = 'sending' AND claimed_until = $4
RETURNING status = 'failed'",
            self.l.table,
            delay = crate::services::data::RETRY_DELAY
        )
    }

    /// Rows `$1` of claim `$4` were refused, each with its error in `$2`
    /// (arrays, in the same order): all settled in one statement, as
    /// [`Outbox::retry`] settles one. Answers each settled row's id, the
    /// seconds until its retry, and whether it failed for good (a row
    /// missing: the claim was lost).
    pub fn retry_many(&self) -> String {
        format!(
            "UPDATE {} o SET
    retry_count = o.retry_count + 1,
    last_error = r.error,
    claimed_until = NULL,
    status = CASE WHEN o.retry_count + 1 >= $3 THEN 'failed' ELSE 'pending' END,
    next_attempt_at = now() + {delay} * interval '1 second'
FROM unnest($1::bigint[], $2::text[]) AS r(id, error)
WHERE o.id = r.id AND o.status = 'sending' AND o.claimed_until = $4
RETURNING o.id, EXTRACT(EPOCH FROM o.next_attempt_at - now())::float8, o.status = 'failed'",
            self.l.table,
            delay = crate::services::data::RETRY_DELAY
        )
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
    fn the_shipped_ddl_is_the_one_the_relay_runs() {
        let t = Outbox::new(&TableName::new("message_outbox").unwrap());
        let shipped = include_str!("../../../sql/outbox-relay.sql");
        let body = shipped
            .lines()
            .skip_while(|l| l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if std::env::var_os("WARDEN_BLESS_SQL").is_some() {
            // Rewrites the shipped file from the code (its comment kept).
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/outbox-relay.sql");
            let head: String = shipped
                .lines()
                .take_while(|l| l.starts_with("--"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(path, format!("{head}{}", t.create())).unwrap();
            return;
        }
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
        assert!(t.claim(false).contains(r#"FROM "app"."events""#));
    }

    #[test]
    fn derived_names_fit_in_63_bytes_and_stay_distinct() {
        use crate::services::data::derived_name;
        let a = TableName::new(&"a".repeat(63)).unwrap();
        let b = TableName::new(&format!("{}b", "a".repeat(62))).unwrap();
        for t in [&a, &b] {
            for suffix in ["inserted", "dedupe_key", "pending", "sending", "notify"] {
                let name = derived_name(t, suffix);
                assert!(name.len() <= 63, "{name}");
                assert!(name.ends_with(suffix), "{name}");
            }
        }
        assert_ne!(derived_name(&a, "inserted"), derived_name(&b, "inserted"));
        assert_ne!(derived_name(&a, "pending"), derived_name(&b, "pending"));
        let short = Outbox::new(&TableName::new("message_outbox").unwrap());
        assert_eq!(short.channel(), "message_outbox_inserted");
    }
}
