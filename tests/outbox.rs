//! `kind = "outbox-relay"` end to end against a real
//! PostgreSQL 15 and a real Redis that the test starts: rows become stream
//! entries in order with the documented fields, an insert is relayed at
//! once (LISTEN/NOTIFY, not the poll), a row Redis refuses is retried and
//! then failed, and `replay-failed` brings it back.

mod support;

use std::time::Duration;

use support::daemon::Warden;
use support::db::{redis_cmd, sql, sql_result, stream, wait_until};
use support::http::{get_json, http, wait_http};
use support::servers::{Postgres, Redis, free_port};

fn registry(port: u16, pg: &Postgres, redis: &Redis, extra: &str) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.relay]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
stream_prefix = "app."
max_retries = 2
poll_interval = "1h"
{extra}
"#,
        pg = pg.dsn,
        redis = redis.url
    )
}

#[test]
fn rows_become_stream_entries_in_order_at_once() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    // The relay made its table (create_schema defaults to true).
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload, headers, dedupe_key, partition_key)
         SELECT 'orders', jsonb_build_object('n', n), '{\"h\": 1}', 'k' || n, 'p'
         FROM generate_series(1, 250) n",
    );
    // The poll is an hour: only the insert trigger's NOTIFY can wake it.
    wait_until("250 entries", Duration::from_secs(20), || {
        stream(&redis.url, "app.orders").len() == 250
    });
    let entries = stream(&redis.url, "app.orders");
    let ids: Vec<i64> = entries
        .iter()
        .map(|e| e["outbox_id"].parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "in outbox order");
    let first = &entries[0];
    assert_eq!(first["payload"], r#"{"n": 1}"#);
    assert_eq!(first["headers"], r#"{"h": 1}"#);
    assert_eq!(first["dedupe_key"], "k1");
    assert_eq!(first["partition_key"], "p");
    let event_id: String = sql(
        &pg.dsn,
        "SELECT event_id::text FROM message_outbox WHERE dedupe_key = 'k1'",
    )[0]
    .get(0);
    assert_eq!(first["event_id"], event_id, "the row's own identity");
    wait_until("every row marked sent", Duration::from_secs(10), || {
        let r = sql(
            &pg.dsn,
            "SELECT count(*) FROM message_outbox WHERE status = 'sent' AND published_at IS NOT NULL",
        );
        r[0].get::<_, i64>(0) == 250
    });
    // A duplicate dedupe_key is refused by the table itself.
    let dup = support::db::sql_result(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload, dedupe_key) VALUES ('orders', '{}', 'k1')",
    );
    assert!(dup.is_err(), "dedupe_key is unique");
    // The service reports its backlog and what it published.
    wait_until("details", Duration::from_secs(5), || {
        let (_, s) = get_json(port, "/v1/services/relay");
        s["details"]["published"] == 250 && s["details"]["backlog"] == 0
    });
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"warden_outbox_published_total{service="relay",result="sent"} 250"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"warden_outbox_backlog{service="relay"} 0"#));
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn refused_rows_are_retried_then_failed_and_replayed() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    // A key of the wrong type: Redis refuses every XADD to it.
    redis_cmd(&redis.url, &["SET", "app.broken", "not a stream"]);
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, "delete_sent = true"));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('broken', '{\"a\": 1}'), ('fine', '{\"b\": 2}')",
    );
    // The good row goes (and is deleted: delete_sent); the bad one fails
    // after max_retries = 2 attempts, its error kept.
    wait_until("the refused row to fail", Duration::from_secs(20), || {
        let r = sql(
            &pg.dsn,
            "SELECT status, retry_count, last_error FROM message_outbox",
        );
        r.len() == 1 && r[0].get::<_, String>(0) == "failed"
    });
    let r = sql(
        &pg.dsn,
        "SELECT retry_count, last_error FROM message_outbox",
    );
    assert_eq!(r[0].get::<_, i32>(0), 2);
    assert!(
        r[0].get::<_, String>(1).contains("WRONGTYPE"),
        "{:?}",
        r[0].get::<_, String>(1)
    );
    assert_eq!(stream(&redis.url, "app.fine").len(), 1);
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"warden_outbox_published_total{service="relay",result="failed"} 1"#)
    );
    assert!(metrics.contains(r#"warden_outbox_published_total{service="relay",result="retry"} 1"#));

    // Fix the key, replay: the row is published.
    redis_cmd(&redis.url, &["DEL", "app.broken"]);
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/relay/actions/replay-failed",
        &[],
        b"{}",
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["replayed"], 1, "{body}");
    // The poll is an hour: the replay itself wakes the relay.
    wait_until(
        "the replayed row in its stream",
        Duration::from_secs(20),
        || redis_cmd(&redis.url, &["EXISTS", "app.broken"]) == redis::Value::Int(1),
    );
    assert_eq!(
        stream(&redis.url, "app.broken")[0]["payload"],
        r#"{"a": 1}"#
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_redis_outage_releases_the_claim_and_the_relay_recovers() {
    let (pg, mut redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('t', '{}')",
    );
    wait_until("the first row", Duration::from_secs(20), || {
        stream(&redis.url, "app.t").len() == 1
    });
    redis.pause();
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('t', '{\"during\": true}')",
    );
    w.wait_log("the outage", |v| {
        v["message"] == "Redis unavailable; claim released"
    });
    // Released, not charged: pending again with no retry counted.
    wait_until("the claim released", Duration::from_secs(10), || {
        let r = sql(
            &pg.dsn,
            "SELECT status, retry_count FROM message_outbox WHERE payload ? 'during'",
        );
        r[0].get::<_, String>(0) == "pending" && r[0].get::<_, i32>(1) == 0
    });
    redis.resume();
    // Redis restarted empty (no persistence): the row arrives again.
    wait_until("the row after the outage", Duration::from_secs(30), || {
        stream(&redis.url, "app.t")
            .iter()
            .any(|e| e["payload"] == r#"{"during": true}"#)
    });
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn two_relays_share_the_table_and_expired_leases_come_back() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let second = format!(
        "\n[services.relay2]\nkind = \"outbox-relay\"\npostgres = \"{}\"\nredis = \"{}\"\n\
         stream_prefix = \"app.\"\nbatch = 7\n",
        pg.dsn, redis.url
    );
    let mut w = Warden::start(&registry(
        port,
        &pg,
        &redis,
        &format!("batch = 7\n{second}"),
    ));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    w.wait_event("relay2", "ready");
    // A row a dead relay had claimed: its lease ended a minute ago.
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload, status, claimed_until)
         VALUES ('t', '{\"orphan\": true}', 'sending', now() - interval '1 minute')",
    );
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 't', jsonb_build_object('n', n) FROM generate_series(1, 500) n",
    );
    wait_until("501 entries", Duration::from_secs(30), || {
        stream(&redis.url, "app.t").len() >= 501
    });
    std::thread::sleep(Duration::from_millis(300));
    let entries = stream(&redis.url, "app.t");
    let mut ids: Vec<i64> = entries
        .iter()
        .map(|e| e["outbox_id"].parse().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), entries.len(), "no row was published twice");
    assert_eq!(entries.len(), 501);
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    for relay in ["relay", "relay2"] {
        let line = format!("warden_outbox_published_total{{service=\"{relay}\",result=\"sent\"}} ");
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("{relay} published nothing:\n{metrics}"))
            .parse()
            .unwrap();
        assert!(n > 0.0, "{relay}");
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_full_redis_is_an_outage_not_the_rows_fault_and_long_table_names_work() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    // 60 bytes: the trigger's channel and the index names are derived
    // from it and must stay within PostgreSQL's 63.
    let table = format!("outbox_{}", "x".repeat(53));
    let mut w = Warden::start(&registry(
        port,
        &pg,
        &redis,
        &format!("table = \"{table}\""),
    ));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    // Out of memory: Redis refuses every write with OOM.
    redis_cmd(&redis.url, &["CONFIG", "SET", "maxmemory", "1"]);
    sql(
        &pg.dsn,
        &format!("INSERT INTO {table} (topic, payload) VALUES ('t', '{{}}')"),
    );
    w.wait_log("the outage", |v| {
        v["message"] == "Redis unavailable; claim released"
    });
    let r = sql(&pg.dsn, &format!("SELECT status, retry_count FROM {table}"));
    assert_eq!(r[0].get::<_, i32>(1), 0, "no retry charged to the row");
    redis_cmd(&redis.url, &["CONFIG", "SET", "maxmemory", "0"]);
    wait_until(
        "the row once Redis has room",
        Duration::from_secs(30),
        || stream(&redis.url, "app.t").len() == 1,
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Adopting an outbox table that already exists, with rows, no trigger and
/// no indexes, while a producer's transaction is open on it: warden waits
/// for its locks in short attempts and builds the indexes concurrently, so
/// another producer's insert meanwhile goes through (with a plain
/// `CREATE INDEX`, or a trigger waiting 10 s for its lock, that insert
/// queued behind warden's DDL until the open transaction ended).
#[test]
fn adopting_an_existing_table_never_blocks_its_producers() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    sql(
        &pg.dsn,
        "CREATE TABLE message_outbox (
            id bigserial PRIMARY KEY, topic text NOT NULL, partition_key text,
            payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', dedupe_key text,
            status text NOT NULL DEFAULT 'pending', retry_count int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(), claimed_until timestamptz,
            last_error text, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)",
    );
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'orders', jsonb_build_object('n', n) FROM generate_series(1, 1000) n",
    );
    // A producer's transaction, open across warden's start.
    let rt = runtime();
    let open = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "BEGIN; INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{\"open\": 1}')",
            )
            .await
            .unwrap();
        client
    });
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    // warden's DDL is waiting for the open transaction.
    wait_until("warden's DDL waiting", Duration::from_secs(20), || {
        !sql(
            &pg.dsn,
            "SELECT 1 FROM pg_stat_activity
             WHERE wait_event_type IN ('Lock') AND (query ILIKE '%TRIGGER%' OR query ILIKE '%INDEX%'
                   OR query ILIKE '%pg_advisory%' OR query ILIKE '%CREATE%')
               AND datname = 'postgres'",
        )
        .is_empty()
            || !sql(
                &pg.dsn,
                "SELECT 1 FROM pg_stat_activity WHERE query ILIKE '%CONCURRENTLY%'",
            )
            .is_empty()
    });
    // A producer that would rather fail than wait 3 s for a lock.
    let impatient = format!("{}?options=-c%20lock_timeout%3D3000", pg.dsn);
    for n in 0..5 {
        let inserted = sql_result(
            &impatient,
            &format!(
                "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{{\"meanwhile\": {n}}}')"
            ),
        );
        assert!(
            inserted.is_ok(),
            "a producer's insert waited behind warden's DDL: {inserted:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    rt.block_on(async { open.batch_execute("COMMIT").await.unwrap() });
    w.wait_event("relay", "ready");
    wait_until("every row published", Duration::from_secs(30), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(1006)
    });
    let valid = sql(
        &pg.dsn,
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname IN ('message_outbox_dedupe_key', 'message_outbox_pending',
                             'message_outbox_sending') AND i.indisvalid",
    );
    assert_eq!(valid[0].get::<_, i64>(0), 3, "the three indexes, valid");
    // The table got its event_id column; the rows inserted before it was
    // added carry an id derived from the row (a uuid too), each its own.
    let entries = stream(&redis.url, "app.orders");
    let ids: std::collections::HashSet<&str> =
        entries.iter().map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids.len(), 1006, "an event id each");
    assert!(
        ids.iter().all(|id| id.len() == 36),
        "uuids: {:?}",
        ids.iter().next()
    );
    let given: bool = sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{}')
         RETURNING event_id IS NOT NULL",
    )[0]
    .get(0);
    assert!(given, "an insert now gets an event id of its own");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A row `sending` without a lease (written so by another program: no
/// relay holds it) is reaped back to `pending` and published, not left
/// waiting forever.
#[test]
fn a_row_sending_without_a_lease_is_reaped() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload, status, claimed_until)
         VALUES ('orders', '{\"stuck\": 1}', 'sending', NULL)",
    );
    // An ordinary insert wakes the relay (the poll is an hour).
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{\"n\": 2}')",
    );
    wait_until("both rows published", Duration::from_secs(20), || {
        stream(&redis.url, "app.orders").len() == 2
    });
    let left = sql(
        &pg.dsn,
        "SELECT count(*) FROM message_outbox WHERE status <> 'sent'",
    );
    assert_eq!(left[0].get::<_, i64>(0), 0);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// The rows Redis refuses in a batch are settled in one statement: 100
/// refused rows cost the relay two write transactions (the claim and the
/// settling), not one per row. Counted exactly by PostgreSQL's
/// transaction ids, which only writing transactions take.
#[test]
fn refused_rows_are_settled_in_one_statement_per_batch() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    redis_cmd(&redis.url, &["SET", "app.broken", "not a stream"]);
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, "batch = 100\n"));
    w.wait_event("relay", "ready");
    let xid = || sql(&pg.dsn, "SELECT pg_current_xact_id()::text::bigint")[0].get::<_, i64>(0);
    let before = xid();
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'broken', jsonb_build_object('n', n) FROM generate_series(1, 100) n",
    );
    wait_until("100 rows refused once", Duration::from_secs(20), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM message_outbox WHERE retry_count = 1 AND status = 'pending'",
        )[0]
        .get::<_, i64>(0)
            == 100
    });
    let spent = xid() - before;
    // The insert, the claim, the settling, and this test's two readings
    // of the counter: about five; one per row would be over a hundred.
    assert!(
        spent <= 10,
        "{spent} write transactions for one batch of 100 refused rows"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn the_backlog_is_read_while_the_relay_waits_on_redis() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    // Redis may take half the lease (30 s) to answer a batch.
    let mut w = Warden::start(&registry(port, &pg, &redis, r#"lease = "60s""#));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    let published =
        |n: u64| move || get_json(port, "/v1/services/relay").1["details"]["published"] == n;
    let insert = |n: u32| {
        sql(
            &pg.dsn,
            &format!(
                "INSERT INTO message_outbox (topic, payload) SELECT 'o', '{{}}' FROM generate_series(1, {n})"
            ),
        );
    };
    insert(1);
    wait_until("the first row", Duration::from_secs(10), published(1));
    // Redis stops answering: the relay's next batch waits in XADD.
    redis.freeze();
    insert(5);
    wait_until("a claimed batch", Duration::from_secs(10), || {
        let n: i64 = sql(
            &pg.dsn,
            "SELECT count(*) FROM message_outbox WHERE status = 'sending'",
        )[0]
        .get(0);
        n == 5
    });
    // Meanwhile the backlog grows, and the relay says so: the 100 rows
    // pending and the 5 in flight.
    insert(100);
    wait_until("the backlog of 105", Duration::from_secs(10), || {
        get_json(port, "/v1/services/relay").1["details"]["backlog"] == 105
    });
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert!(
        String::from_utf8_lossy(&metrics).contains(r#"warden_outbox_backlog{service="relay"} 105"#)
    );
    redis.thaw();
    wait_until("every row", Duration::from_secs(40), published(106));
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_restart_of_postgresql_costs_a_round_not_the_service() {
    let (mut pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    let insert = |pg: &Postgres| {
        sql(
            &pg.dsn,
            "INSERT INTO message_outbox (topic, payload) SELECT 'r', jsonb_build_object('n', n) FROM generate_series(1, 100) n",
        );
    };
    let published =
        |n: u64| move || get_json(port, "/v1/services/relay").1["details"]["published"] == n;
    insert(&pg);
    wait_until("100 rows", Duration::from_secs(20), published(100));
    let mut total = 100;
    for mode in ["fast", "immediate"] {
        pg.restart(mode);
        // The poll is an hour: only a new LISTEN session brings these.
        insert(&pg);
        total += 100;
        wait_until(
            &format!("{total} rows after a {mode} restart"),
            Duration::from_secs(30),
            published(total),
        );
    }
    let (_, s) = get_json(port, "/v1/services/relay");
    assert_eq!(s["state"], "ready", "{s:#}");
    assert_eq!(s["restarts"], 0, "the run went on: {s:#}");
    let entries = stream(&redis.url, "app.r");
    let ids: std::collections::HashSet<&str> =
        entries.iter().map(|e| e["outbox_id"].as_str()).collect();
    assert_eq!(ids.len(), 300, "every row");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_long_transaction_elsewhere_does_not_hold_the_start_of_a_new_table() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    // A report in another session: a transaction with a snapshot, open
    // for the whole test. CREATE INDEX CONCURRENTLY would wait for it.
    let rt = runtime();
    let report = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class")
            .await
            .unwrap();
        client
    });
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    // The new table's indexes are built at once (it is empty).
    w.wait_event("relay", "ready");
    let valid: i64 = sql(
        &pg.dsn,
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relname = 'message_outbox' AND i.indisvalid",
    )[0]
    .get(0);
    assert_eq!(valid, 4, "the primary key and the three indexes");
    drop(report);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A runtime for the test's own sessions.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens a session on `dsn` and runs `setup` in it, leaving whatever
/// transaction it began open until the session is dropped.
fn open_session(rt: &tokio::runtime::Runtime, dsn: &str, setup: &str) -> tokio_postgres::Client {
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(setup).await.unwrap();
        client
    })
}

#[test]
fn claims_walk_only_the_live_end_while_a_transaction_holds_vacuum_back() {
    // A report holds a snapshot for the whole run: no row version the
    // claims leave behind can be removed, nor its index entry marked dead.
    claims_walk_only_the_live_end_behind(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class",
        10_000,
        0,
    );
}

/// A transaction that has written elsewhere and stays open (a batch job, a
/// migration) holds vacuum back as a report does, and its transaction id
/// is older than every row: it must not hold the claims' bound either,
/// as it holds no lock on the outbox nor on its sequence.
#[test]
fn claims_walk_only_the_live_end_while_a_writer_elsewhere_stays_open() {
    // The bound is found held after 4 claims (`HELD_AFTER`): each claim
    // may walk up to 4 batches behind it, 4N in all; from the start, the
    // claims would walk about N²/1000 (20N here).
    claims_walk_only_the_live_end_behind(
        "CREATE TABLE batch_job (n int); BEGIN; INSERT INTO batch_job VALUES (1)",
        20_000,
        4,
    );
}

/// Relays `n` rows while a session that ran `holder` stays open, and
/// counts the pending index's entries the claims read: at most `lag` × `n`
/// more than claims from the live end would.
fn claims_walk_only_the_live_end_behind(holder: &str, n: i64, lag: i64) {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    let rt = runtime();
    let report = open_session(&rt, &pg.dsn, holder);
    sql(&pg.dsn, "CREATE EXTENSION pg_stat_statements");
    sql(
        &pg.dsn,
        &format!(
            "INSERT INTO message_outbox (topic, payload)
             SELECT 'orders', jsonb_build_object('n', n) FROM generate_series(1, {n}) n"
        ),
    );
    wait_until("every row relayed", Duration::from_secs(60), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(n)
    });
    // Sessions report their index statistics when they end.
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
    drop(report);
    // The entries read from the pending index. A claim from the start of
    // the index walks the entries every claim before it left, dead but
    // not removable (about N²/200, 500,000, for batches of 100). From the
    // live end the claims read each entry a few times (the planner's
    // probes among them; about 6N measured); besides them, the first claim
    // and each sweep (every 5 s) read the whole index once, and so does
    // each backlog reading (twice: the count and the lag).
    let read: i64 = sql(
        &pg.dsn,
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'message_outbox_pending'",
    )[0]
    .get(0);
    let readings: i64 = sql(
        &pg.dsn,
        "SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_statements WHERE query LIKE 'SELECT count(*),%'",
    )[0]
    .get(0);
    eprintln!("{read} pending-index entries read; {readings} backlog readings");
    assert!(
        read >= n,
        "the claims used the pending index ({read} entries read)"
    );
    assert!(
        read <= 10 * n + lag * n + readings * 2 * n,
        "{read} index entries read to claim {n} rows ({readings} backlog readings): the claims walk the dead entries"
    );
}

#[test]
fn a_row_committed_after_rows_with_higher_ids_is_relayed() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    let rt = runtime();
    // A producer takes the lowest id and commits last.
    let late = open_session(
        &rt,
        &pg.dsn,
        "BEGIN; INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{\"late\": true}')",
    );
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'orders', jsonb_build_object('n', n) FROM generate_series(1, 300) n",
    );
    wait_until("300 entries", Duration::from_secs(20), || {
        stream(&redis.url, "app.orders").len() == 300
    });
    rt.block_on(late.batch_execute("COMMIT")).unwrap();
    wait_until("the late row", Duration::from_secs(30), || {
        stream(&redis.url, "app.orders")
            .iter()
            .any(|e| e["payload"] == r#"{"late": true}"#)
    });
    let entries = stream(&redis.url, "app.orders");
    assert_eq!(entries.len(), 301);
    assert_eq!(
        entries[300]["outbox_id"], "1",
        "the lowest id, relayed last"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// While a writer elsewhere holds the oldest transaction (so the claims
/// look only at transactions holding a lock on the outbox), a producer
/// that took a low id and commits late still holds the claims' bound: its
/// row comes with the next claim after its commit, not with a sweep.
#[test]
fn a_late_producer_holds_the_bound_while_a_writer_elsewhere_stays_open() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, "batch = 10"));
    w.wait_event("relay", "ready");
    let rt = runtime();
    let _job = open_session(
        &rt,
        &pg.dsn,
        "CREATE TABLE batch_job (n int); BEGIN; INSERT INTO batch_job VALUES (1)",
    );
    // Just after a sweep: the relay reaps a row whose lease ran out (the
    // next sweep is 5 s away).
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload, status, claimed_until)
         VALUES ('orders', '{\"expired\": true}', 'sending', now() - interval '1 hour')",
    );
    w.wait_log("a sweep", |v| {
        v["message"] == "expired leases returned to pending" && v["rows"] == 1
    });
    let late = open_session(
        &rt,
        &pg.dsn,
        "BEGIN; INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{\"late\": true}')",
    );
    // 30 claims of 10 rows, one statement each: the bound is held.
    for n in 0..30 {
        sql(
            &pg.dsn,
            &format!(
                "INSERT INTO message_outbox (topic, payload)
                 SELECT 'orders', jsonb_build_object('n', {n} * 10 + i) FROM generate_series(1, 10) i"
            ),
        );
    }
    wait_until("301 entries", Duration::from_secs(20), || {
        stream(&redis.url, "app.orders").len() == 301
    });
    rt.block_on(late.batch_execute("COMMIT")).unwrap();
    let committed = std::time::Instant::now();
    wait_until("the late row", Duration::from_secs(15), || {
        stream(&redis.url, "app.orders")
            .iter()
            .any(|e| e["payload"] == r#"{"late": true}"#)
    });
    let took = committed.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "the late row came {took:?} after its commit: it waited for a sweep"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn replayed_rows_far_below_the_claims_are_drained_at_once() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    // Small batches: 200 rows are 20 claims.
    let mut w = Warden::start(&registry(port, &pg, &redis, "batch = 10"));
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'orders', jsonb_build_object('n', n) FROM generate_series(1, 200) n",
    );
    wait_until("200 entries", Duration::from_secs(20), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(200)
    });
    // The claims have moved on past these rows; now they failed (as if
    // refused) and are replayed: all of them lie below the claims' bound.
    sql(&pg.dsn, "UPDATE message_outbox SET status = 'failed'");
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/relay/actions/replay-failed",
        &[],
        b"{}",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The next sweep (within 5 s) finds them; the claims after it drain
    // them all, not one batch per sweep (which would take 100 s).
    wait_until(
        "the 200 replayed rows sent again",
        Duration::from_secs(30),
        || redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(400),
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Every row of the table is claimable, whatever its id: rows with
/// negative ids (written so by hand, or from a sequence that starts at its
/// minimum) were below every claim's bound and stayed `pending` for ever.
#[test]
fn rows_with_negative_ids_are_relayed_too() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (id, topic, payload) OVERRIDING SYSTEM VALUE
         VALUES (-9223372036854775808, 'orders', '{\"n\": 1}'), (-5, 'orders', '{\"n\": 2}')",
    );
    // An ordinary insert wakes the relay (the poll is an hour).
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{\"n\": 3}')",
    );
    wait_until("the three rows published", Duration::from_secs(20), || {
        stream(&redis.url, "app.orders").len() == 3
    });
    let left = sql(
        &pg.dsn,
        "SELECT count(*) FROM message_outbox WHERE status <> 'sent'",
    );
    assert_eq!(left[0].get::<_, i64>(0), 0);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A row the relay cannot send (a NULL `topic`, `payload` or `headers` in a
/// table the user made, which allows them) fails at once with its reason;
/// the good rows of the same batch are published. The relay used to panic
/// on the NULL: the service crashed once per lease and the batch's good
/// rows stayed `sending`.
#[test]
fn a_row_with_a_null_column_fails_with_its_reason_and_the_batch_goes_on() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    sql(
        &pg.dsn,
        "CREATE TABLE message_outbox (
            id bigserial PRIMARY KEY, topic text, partition_key text,
            payload jsonb, headers jsonb DEFAULT '{}', dedupe_key text,
            status text NOT NULL DEFAULT 'pending', retry_count int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(), claimed_until timestamptz,
            last_error text, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)",
    );
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload, headers) VALUES
            ('orders', '{\"n\": 1}', '{}'),
            (NULL, '{\"n\": 2}', '{}'),
            ('orders', NULL, '{}'),
            ('orders', '{\"n\": 4}', NULL),
            ('orders', '{\"n\": 5}', '{}')",
    );
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    wait_until("the good rows published", Duration::from_secs(20), || {
        stream(&redis.url, "app.orders").len() == 2
    });
    wait_until("the bad rows failed", Duration::from_secs(10), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM message_outbox WHERE status = 'failed'",
        )[0]
        .get::<_, i64>(0)
            == 3
    });
    let reasons: Vec<String> = sql(
        &pg.dsn,
        "SELECT last_error FROM message_outbox WHERE status = 'failed' ORDER BY id",
    )
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(reasons[0].contains("topic is NULL"), "{reasons:?}");
    assert!(reasons[1].contains("payload is NULL"), "{reasons:?}");
    assert!(reasons[2].contains("headers is NULL"), "{reasons:?}");
    let (_, s) = get_json(port, "/v1/services/relay");
    assert_eq!(s["state"], "ready", "the relay did not crash: {s}");
    assert_eq!(s["restarts"], 0, "{s}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A table whose `id` is an `integer` (`serial`) is refused at the start,
/// naming the column and the fix: it used to pass the start and fail at
/// the first claim ("error serializing parameter 2"), with its rows stuck.
#[test]
fn a_table_with_an_integer_id_is_refused_at_the_start_naming_the_column() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    sql(
        &pg.dsn,
        "CREATE TABLE message_outbox (
            id serial PRIMARY KEY, topic text NOT NULL, partition_key text,
            payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', dedupe_key text,
            status text NOT NULL DEFAULT 'pending', retry_count int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(), claimed_until timestamptz,
            last_error text, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)",
    );
    let port = free_port();
    let mut w = Warden::start(&registry(
        port,
        &pg,
        &redis,
        "restart = { policy = \"never\" }\n",
    ));
    wait_http(port, "/livez", 200);
    wait_until(
        "the relay refused the table",
        Duration::from_secs(20),
        || {
            let (_, s) = get_json(port, "/v1/services/relay");
            s["state"] == "failed"
        },
    );
    let (_, s) = get_json(port, "/v1/services/relay");
    let error = s["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("column id is integer; warden needs bigint")
            && error.contains("ALTER COLUMN id TYPE bigint"),
        "{s}"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Rows stuck in `sending` show in the backlog and the lag: they were
/// counted in neither, so monitoring saw `backlog 0, lag 0` while rows
/// waited (a lease far in the future, taken by a worker that is gone).
#[test]
fn rows_stuck_in_sending_show_in_the_backlog_and_the_lag() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload, status, claimed_until, created_at)
         VALUES ('orders', '{\"stuck\": 1}', 'sending', now() + interval '1 hour',
                 now() - interval '1 minute')",
    );
    wait_until(
        "the stuck row in the backlog",
        Duration::from_secs(10),
        || {
            let (_, s) = get_json(port, "/v1/services/relay");
            s["details"]["backlog"] == 1
                && s["details"]["lag_seconds"].as_f64().unwrap_or(0.0) >= 59.0
        },
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A row whose transaction commits while a claim runs comes with the
/// claim after it, not with a sweep. The claims' bound was released by a
/// snapshot read after the claim, which saw a commit the claim had not:
/// the bound moved past the row, and only the next sweep (up to 5 s
/// later, out of order) found it.
#[test]
fn a_row_committed_while_a_claim_runs_comes_with_the_next_claim() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    // The claim of a row marked slow takes a second: the window.
    sql(
        &pg.dsn,
        "CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.status = 'sending' AND NEW.payload ? 'slow' THEN PERFORM pg_sleep(1); END IF;
             RETURN NEW;
         END $$",
    );
    sql(
        &pg.dsn,
        "CREATE TRIGGER slow_claim BEFORE UPDATE ON message_outbox
         FOR EACH ROW EXECUTE FUNCTION slow_claim()",
    );
    let rt = runtime();
    let has = |payload: &str| {
        stream(&redis.url, "app.orders")
            .iter()
            .any(|e| e["payload"] == payload)
    };
    for trial in 1..=2 {
        // Just after a sweep: the relay reaps `trial` rows whose lease ran
        // out (the next sweep is 5 s away).
        sql(
            &pg.dsn,
            &format!(
                "INSERT INTO message_outbox (topic, payload, status, claimed_until)
                 SELECT 'orders', jsonb_build_object('expired', n), 'sending', now() - interval '1 hour'
                 FROM generate_series(1, {trial}) n"
            ),
        );
        w.wait_log("a sweep", |v| {
            v["message"] == "expired leases returned to pending" && v["rows"] == trial
        });
        // A producer takes the lowest id and stays open across a claim.
        let late = open_session(
            &rt,
            &pg.dsn,
            &format!(
                "BEGIN; INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{{\"late\": {trial}}}')"
            ),
        );
        sql(
            &pg.dsn,
            &format!(
                "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{{\"quick\": {trial}}}')"
            ),
        );
        wait_until("the quick row", Duration::from_secs(10), || {
            has(&format!(r#"{{"quick": {trial}}}"#))
        });
        // It commits while the slow row's claim runs.
        sql(
            &pg.dsn,
            &format!(
                "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{{\"slow\": {trial}}}')"
            ),
        );
        std::thread::sleep(Duration::from_millis(300));
        rt.block_on(late.batch_execute("COMMIT")).unwrap();
        let committed = std::time::Instant::now();
        wait_until("the late row", Duration::from_secs(15), || {
            has(&format!(r#"{{"late": {trial}}}"#))
        });
        let took = committed.elapsed();
        assert!(
            took < Duration::from_millis(2500),
            "trial {trial}: the late row came {took:?} after its commit: it waited for a sweep"
        );
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// After its sequence starts again, the table's new rows come with the
/// next claim once a sweep has found the first: a sweep that claimed
/// fewer rows than it asked for never brought the bound back, so at a
/// low rate every new row waited for a sweep (up to 5 s) until warden
/// restarted.
#[test]
fn after_a_sequence_reset_new_rows_come_with_the_next_claim() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    let insert = |what: &str| {
        sql(
            &pg.dsn,
            &format!(
                "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{{\"{what}\": 1}}')"
            ),
        );
    };
    let has = |what: &str| {
        stream(&redis.url, "app.orders")
            .iter()
            .any(|e| e["payload"] == format!(r#"{{"{what}": 1}}"#))
    };
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'orders', jsonb_build_object('n', n) FROM generate_series(1, 1000) n",
    );
    wait_until("1000 entries", Duration::from_secs(30), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(1000)
    });
    // The rows are kept (sent); only the sequence starts again, far below.
    sql(&pg.dsn, "DELETE FROM message_outbox");
    sql(
        &pg.dsn,
        "ALTER SEQUENCE message_outbox_id_seq RESTART WITH 1",
    );
    insert("first");
    wait_until("the first new row", Duration::from_secs(15), || {
        has("first")
    });
    for n in 0..3 {
        let what = format!("next{n}");
        insert(&what);
        let inserted = std::time::Instant::now();
        wait_until("the next row", Duration::from_secs(15), || has(&what));
        let took = inserted.elapsed();
        assert!(
            took < Duration::from_millis(2500),
            "{what} came {took:?} after its insert: it waited for a sweep"
        );
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A relay to `redis` through a TCP proxy that forwards 200 KB/s (half
/// of its 2 s lease carries about four 50 KB rows), claiming 20 rows at a
/// time, with `extra` settings; answers its API port and warden, ready.
fn relay_over_a_slow_link(
    pg: &Postgres,
    redis: &Redis,
    link: &support::proxy::Proxy,
    extra: &str,
) -> (u16, Warden) {
    link.limit(200_000);
    let port = free_port();
    let registry = format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.relay]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
stream_prefix = "app."
lease = "2s"
batch = 20
{extra}
"#,
        pg = pg.dsn,
        redis = link.url(&redis.url, redis.port)
    );
    let mut w = Warden::start(&registry);
    w.wait_event("relay", "ready");
    (port, w)
}

/// Large rows over a slow link: a batch Redis cannot take within half
/// the lease is given back and claimed again smaller, until it fits (a
/// single row that cannot is charged, not retried for ever). The batch
/// was released uncharged and claimed again, whole, after each backoff:
/// each cycle published the rows that had got through once more, the
/// stream grew without end, and the rows stayed `pending`.
#[test]
fn a_batch_too_large_for_the_link_is_split_until_it_fits() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let link = support::proxy::Proxy::start(redis.port);
    let (_, mut w) = relay_over_a_slow_link(&pg, &redis, &link, "");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'orders', jsonb_build_object('n', n, 'pad', repeat('x', 50000))
         FROM generate_series(1, 20) n",
    );
    wait_until("20 rows sent", Duration::from_secs(90), || {
        let r = sql(
            &pg.dsn,
            "SELECT count(*) FROM message_outbox WHERE status = 'sent'",
        );
        r[0].get::<_, i64>(0) == 20
    });
    let xlen = match redis_cmd(&redis.url, &["XLEN", "app.orders"]) {
        redis::Value::Int(n) => n,
        other => panic!("XLEN answered {other:?}"),
    };
    // A batch that timed out may have reached Redis whole (the link
    // holds what was sent): each halving can send it again, about twice
    // the batch at most, never without end.
    assert!(
        (20..=60).contains(&xlen),
        "{xlen} entries for 20 rows: the rows that got through were sent again and again"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// `batch_bytes` bounds what one batch (and so one Redis pipeline)
/// carries: over the same slow link, batches of about 64 KiB each fit in
/// half the lease, and no row goes twice.
#[test]
fn batch_bytes_bounds_each_pipeline() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let link = support::proxy::Proxy::start(redis.port);
    let (port, mut w) = relay_over_a_slow_link(&pg, &redis, &link, "batch_bytes = \"64KiB\"");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'orders', jsonb_build_object('n', n, 'pad', repeat('x', 30000))
         FROM generate_series(1, 20) n",
    );
    wait_until("20 entries", Duration::from_secs(60), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(20)
    });
    wait_until("20 rows sent", Duration::from_secs(10), || {
        let r = sql(
            &pg.dsn,
            "SELECT count(*) FROM message_outbox WHERE status = 'sent'",
        );
        r[0].get::<_, i64>(0) == 20
    });
    // Two 30 KB rows at most per batch: at least 10 batches for 20 rows.
    let batches = batches(port);
    assert!(batches >= 10.0, "{batches} batches for 20 rows of 30 KB");
    assert_eq!(
        redis_cmd(&redis.url, &["XLEN", "app.orders"]),
        redis::Value::Int(20),
        "no row twice"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A Redis user allowed some stream keys only: a row for another key is
/// that row's fault (`NOPERM` on the key), so it is charged and ends
/// `failed` with its reason, while the rest of its batch goes through
/// once. `NOPERM` was an outage: the whole batch was released uncharged
/// and sent again after each backoff, for ever.
#[test]
fn a_key_the_redis_user_may_not_write_fails_its_rows_only() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    redis_cmd(
        &redis.url,
        &[
            "ACL",
            "SETUSER",
            "relay",
            "on",
            ">secret-pw",
            "~app.orders*",
            "+@all",
        ],
    );
    let port = free_port();
    let url = redis.url.replace("redis://", "redis://relay:secret-pw@");
    let mut w = Warden::start(&registry(port, &pg, &redis, "").replace(&redis.url, &url));
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT CASE WHEN n % 5 = 0 THEN 'secret' ELSE 'orders' END, jsonb_build_object('n', n)
         FROM generate_series(1, 50) n",
    );
    wait_until("40 sent and 10 failed", Duration::from_secs(30), || {
        let r = sql(
            &pg.dsn,
            "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'failed')
             FROM message_outbox",
        );
        (r[0].get::<_, i64>(0), r[0].get::<_, i64>(1)) == (40, 10)
    });
    let error: String = sql(
        &pg.dsn,
        "SELECT last_error FROM message_outbox WHERE status = 'failed' LIMIT 1",
    )[0]
    .get(0);
    assert!(error.to_lowercase().contains("noperm"), "{error}");
    assert!(!error.contains("secret-pw"), "{error}");
    assert_eq!(
        redis_cmd(&redis.url, &["XLEN", "app.orders"]),
        redis::Value::Int(40),
        "each allowed row once"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Rows whose mark was lost (the lease ran out first, or the row was
/// changed under the relay) are not counted as sent: the relay counted
/// every row it had sent to Redis, marked or not.
#[test]
fn rows_whose_mark_was_lost_are_not_counted_as_sent() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("relay", "ready");
    // The mark of rows marked "keep" does not take.
    sql(
        &pg.dsn,
        "CREATE FUNCTION keep_sending() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.status = 'sent' AND NEW.payload ? 'keep' THEN RETURN NULL; END IF;
             RETURN NEW;
         END $$",
    );
    sql(
        &pg.dsn,
        "CREATE TRIGGER keep_sending BEFORE UPDATE ON message_outbox
         FOR EACH ROW EXECUTE FUNCTION keep_sending()",
    );
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload)
         SELECT 'orders', CASE WHEN n <= 3 THEN jsonb_build_object('keep', n) ELSE jsonb_build_object('n', n) END
         FROM generate_series(1, 10) n",
    );
    wait_until("10 entries", Duration::from_secs(20), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(10)
    });
    wait_until("the details", Duration::from_secs(5), || {
        get_json(port, "/v1/services/relay").1["details"]["published"] == 7
    });
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    let line = r#"warden_outbox_published_total{service="relay",result="sent"} 7"#;
    assert!(metrics.contains(line), "{line} in:\n{metrics}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// The count of `warden_outbox_batch_size` in `/metrics`: batches claimed.
fn batches(port: u16) -> f64 {
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    metrics
        .lines()
        .find(|l| l.starts_with("warden_outbox_batch_size_count{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no batch histogram in:\n{metrics}"))
}

/// Rows committed one by one, each its own transaction and NOTIFY, while
/// the relay is busy go out together: after a claim that did not fill its
/// batch, the next one waits `linger`. Each batch costs PostgreSQL a claim
/// and a mark and Redis a pipeline, so a claim per arriving row took half
/// of what the producers could insert on a busy server.
#[test]
fn rows_arriving_one_by_one_while_the_relay_is_busy_go_out_together() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, "linger = \"100ms\""));
    w.wait_event("relay", "ready");
    let rt = runtime();
    let client = open_session(&rt, &pg.dsn, "");
    // Rows, each committed on its own, without pause for a second: a
    // claim per arriving row would be hundreds of batches; with a linger
    // of 100 ms, about one batch per 100 ms.
    let inserted = rt.block_on(async {
        let began = std::time::Instant::now();
        let mut n = 0i32;
        while began.elapsed() < Duration::from_secs(1) {
            n += 1;
            client
                .execute(
                    "INSERT INTO message_outbox (topic, payload) VALUES ('orders', jsonb_build_object('n', $1::int))",
                    &[&n],
                )
                .await
                .unwrap();
        }
        n
    });
    assert!(inserted > 100, "only {inserted} rows in a second");
    wait_until("every entry", Duration::from_secs(20), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(inserted.into())
    });
    let entries = stream(&redis.url, "app.orders");
    let ns: Vec<&str> = entries.iter().map(|e| e["payload"].as_str()).collect();
    let want: Vec<String> = (1..=inserted).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    assert_eq!(ns, want, "each row once, in order");
    let batches = batches(port);
    assert!(
        batches <= 25.0,
        "{inserted} rows over a second went out in {batches} batches: the claims did not linger"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// The last statement of the session that listens for the insert trigger.
fn listening_statement(dsn: &str) -> String {
    sql(
        dsn,
        "SELECT query FROM pg_stat_activity WHERE query LIKE '%LISTEN%' \
         AND pid <> pg_backend_pid()",
    )[0]
    .get(0)
}

/// A relay that finds rows claim after claim stops hearing the insert
/// trigger: each producer's commit would otherwise cost PostgreSQL a
/// notification to deliver and warden a wake-up to read, for rows the
/// relay takes anyway. Once the rows stop, it hears again: a single row
/// later is relayed at once, with a poll of an hour.
#[test]
fn a_relay_busy_with_rows_stops_hearing_each_insert_and_hears_again_when_idle() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, "linger = \"20ms\""));
    w.wait_event("relay", "ready");
    assert_eq!(
        listening_statement(&pg.dsn),
        "LISTEN \"message_outbox_inserted\""
    );
    let rt = runtime();
    let client = open_session(&rt, &pg.dsn, "");
    // 300 rows, one per transaction every 5 ms: every claim finds some.
    let mut heard = Vec::new();
    rt.block_on(async {
        for n in 1..=300 {
            client
                .execute(
                    "INSERT INTO message_outbox (topic, payload) VALUES ('orders', jsonb_build_object('n', $1::int))",
                    &[&n],
                )
                .await
                .unwrap();
            if n % 20 == 0 {
                let row = client
                    .query_one(
                        "SELECT query FROM pg_stat_activity WHERE query LIKE '%LISTEN%' \
                         AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap();
                heard.push(row.get::<_, String>(0));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(
        heard.iter().any(|q| q.starts_with("UNLISTEN")),
        "the relay kept hearing every insert while rows kept coming: {heard:?}"
    );
    wait_until("300 entries", Duration::from_secs(20), || {
        redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(300)
    });
    wait_until("the relay listening again", Duration::from_secs(20), || {
        listening_statement(&pg.dsn).starts_with("LISTEN")
    });
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('orders', '{\"n\": 301}')",
    );
    wait_until(
        "the row after the rush, at once",
        Duration::from_secs(10),
        || redis_cmd(&redis.url, &["XLEN", "app.orders"]) == redis::Value::Int(301),
    );
    let entries = stream(&redis.url, "app.orders");
    let ns: Vec<&str> = entries.iter().map(|e| e["payload"].as_str()).collect();
    let want: Vec<String> = (1..=301).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    assert_eq!(ns, want, "each row once, in order");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
