//! `kind = "stream-replicator"` end to end against a real PostgreSQL 15
//! and a real Redis that the test starts: entries become rows once (a
//! duplicate event is not a second row), acknowledged only after the
//! commit; a non-JSON entry and an entry delivered too often land in the
//! dead-letter queue (stream and table) without a crash loop; an entry a
//! consumer left pending is claimed; `replay-dlq` brings dead letters
//! back; a restart of PostgreSQL costs a round, not the service.

mod support;

use std::time::Duration;

use serde_json::Value as Json;
use support::daemon::Warden;
use support::db::{redis_cmd, sql, stream, wait_until};
use support::http::{get_json, http, wait_http};
use support::servers::{Postgres, Redis, free_port};

fn registry(port: u16, pg: &Postgres, redis: &Redis, extra: &str) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.rep]
kind = "stream-replicator"
postgres = "{pg}"
redis = "{redis}"
streams = ["orders", "users"]
min_idle = "1s"
max_deliveries = 3
{extra}
"#,
        pg = pg.dsn,
        redis = redis.url
    )
}

fn count(pg: &Postgres, q: &str) -> i64 {
    sql(&pg.dsn, q)[0].get(0)
}

fn xadd(redis: &Redis, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut args = vec!["XADD", stream, "*"];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    match redis_cmd(&redis.url, &args) {
        redis::Value::BulkString(id) => String::from_utf8(id).unwrap(),
        other => panic!("XADD answered {other:?}"),
    }
}

/// Entries of `stream` the group `rep` has not acknowledged.
fn pending(redis: &Redis, stream: &str) -> i64 {
    match redis_cmd(&redis.url, &["XPENDING", stream, "rep"]) {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING answered {other:?}"),
        },
        other => panic!("XPENDING answered {other:?}"),
    }
}

/// The built-in replica table, made ahead of the replicator (so that a
/// test can put a trigger of its own on it).
const REPLICA: &str = "CREATE TABLE memory_replica (
    event_id text PRIMARY KEY, stream text NOT NULL, partition_key text,
    payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}',
    event_ts timestamptz, replicated_at timestamptz NOT NULL DEFAULT now())";

fn details(port: u16) -> Json {
    get_json(port, "/v1/services/rep").1
}

#[test]
fn entries_become_rows_once_and_are_acknowledged() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    // Entries written before the group exists are replicated too.
    for i in 1..=150 {
        let n = i.to_string();
        let payload = format!(r#"{{"n": {i}}}"#);
        xadd(
            &redis,
            "orders",
            &[
                ("payload", &payload),
                ("headers", r#"{"h": 1}"#),
                ("outbox_id", &n),
                ("dedupe_key", ""),
                ("partition_key", "p"),
            ],
        );
    }
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    wait_http(port, "/readyz", 200);
    w.wait_event("rep", "ready");
    // More while it runs: another stream, without outbox ids, and an
    // event delivered twice (the relay sent it again).
    for i in 1..=50 {
        xadd(&redis, "users", &[("payload", &format!(r#"{{"u": {i}}}"#))]);
    }
    xadd(
        &redis,
        "orders",
        &[("payload", r#"{"n": 5}"#), ("outbox_id", "5")],
    );
    wait_until("200 rows", Duration::from_secs(20), || {
        count(&pg, "SELECT count(*) FROM memory_replica") == 200
    });
    wait_until("every entry acknowledged", Duration::from_secs(10), || {
        pending(&redis, "orders") == 0 && pending(&redis, "users") == 0
    });
    wait_until("the details", Duration::from_secs(5), || {
        let d = &details(port)["details"];
        d["applied"] == 200 && d["duplicates"] == 1 && d["pending"] == 0
    });
    let row = &sql(
        &pg.dsn,
        "SELECT stream, partition_key, payload::text, headers::text, event_ts IS NOT NULL
         FROM memory_replica WHERE event_id = '5'",
    )[0];
    assert_eq!(row.get::<_, String>(0), "orders");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("p"));
    assert_eq!(row.get::<_, String>(2), r#"{"n": 5}"#, "the first delivery");
    assert_eq!(row.get::<_, String>(3), r#"{"h": 1}"#);
    assert!(row.get::<_, bool>(4));
    // Without an outbox id, the event is the stream and entry id.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM memory_replica WHERE stream = 'users' AND event_id LIKE 'users:%-%' AND partition_key IS NULL"
        ),
        50
    );
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        r#"warden_replicator_applied_total{service="rep",result="applied"} 200"#,
        r#"warden_replicator_applied_total{service="rep",result="duplicate"} 1"#,
        r#"warden_replicator_pending{service="rep"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn poison_entries_go_to_the_dead_letter_queue_and_replay_dlq_brings_them_back() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    // An entry another consumer was given 4 times (more than
    // max_deliveries = 3) and left pending.
    redis_cmd(
        &redis.url,
        &["XGROUP", "CREATE", "orders", "rep", "0", "MKSTREAM"],
    );
    let tired = xadd(
        &redis,
        "orders",
        &[("payload", r#"{"ok": 1}"#), ("outbox_id", "100")],
    );
    redis_cmd(
        &redis.url,
        &[
            "XREADGROUP",
            "GROUP",
            "rep",
            "ghost",
            "COUNT",
            "1",
            "STREAMS",
            "orders",
            ">",
        ],
    );
    for _ in 0..3 {
        redis_cmd(
            &redis.url,
            &["XCLAIM", "orders", "rep", "ghost", "0", &tired],
        );
    }
    // An entry that is not JSON, and a good one after it.
    let broken = xadd(
        &redis,
        "orders",
        &[("payload", "not json"), ("outbox_id", "101")],
    );
    xadd(
        &redis,
        "orders",
        &[("payload", r#"{"ok": 3}"#), ("outbox_id", "102")],
    );

    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    wait_http(port, "/readyz", 200);
    w.wait_event("rep", "ready");
    wait_until("two dead letters", Duration::from_secs(20), || {
        count(&pg, "SELECT count(*) FROM memory_replica") == 1
            && sql_result_count(&pg, "SELECT count(*) FROM warden_dlq") == Some(2)
    });
    let reasons = sql(
        &pg.dsn,
        "SELECT entry_id, reason, event_id, deliveries FROM warden_dlq ORDER BY entry_id",
    );
    assert_eq!(reasons[0].get::<_, String>(0), tired);
    let why: String = reasons[0].get(1);
    assert!(why.contains("more than max_deliveries (3)"), "{why}");
    assert_eq!(
        reasons[0].get::<_, Option<String>>(2).as_deref(),
        Some("100")
    );
    assert!(reasons[0].get::<_, i32>(3) > 3);
    assert_eq!(reasons[1].get::<_, String>(0), broken);
    assert_eq!(reasons[1].get::<_, String>(1), "the payload is not JSON");
    // Each under a key of its own in the dead-letter stream (written
    // after the commit), with its fields and why.
    wait_until("two entries in orders.dlq", Duration::from_secs(10), || {
        stream(&redis.url, "orders.dlq").len() == 2
    });
    let dlq = stream(&redis.url, "orders.dlq");
    let dead = dlq
        .iter()
        .find(|e| e["dlq_entry_id"] == broken)
        .expect("the broken entry in orders.dlq");
    assert_eq!(dead["payload"], "not json");
    assert_eq!(dead["dlq_reason"], "the payload is not JSON");
    assert!(dlq.iter().any(|e| e["dlq_entry_id"] == tired));
    wait_until("nothing pending", Duration::from_secs(10), || {
        pending(&redis, "orders") == 0
    });
    let (_, s) = get_json(port, "/v1/services/rep");
    assert_eq!(s["state"], "ready", "{s:#}");
    assert_eq!(s["restarts"], 0, "no crash loop: {s:#}");
    // The queue's size: in the details and in /metrics.
    wait_until("dlq_size 2", Duration::from_secs(10), || {
        details(port)["details"]["dlq_size"] == 2
    });
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains(r#"warden_replicator_dlq_size{service="rep"} 2"#),
        "{}",
        String::from_utf8_lossy(&metrics)
    );

    // The tired entry back on its stream: applied this time.
    let id: i64 = sql(
        &pg.dsn,
        &format!("SELECT id FROM warden_dlq WHERE entry_id = '{tired}'"),
    )[0]
    .get(0);
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/rep/actions/replay-dlq",
        &[],
        format!(r#"{{"ids": [{id}]}}"#).as_bytes(),
    );
    let body: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["replayed"], 1, "{body}");
    wait_until(
        "the replayed event applied",
        Duration::from_secs(20),
        || {
            count(
                &pg,
                "SELECT count(*) FROM memory_replica WHERE event_id = '100'",
            ) == 1
        },
    );
    // The rest: the broken entry goes back, and to the queue again.
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/rep/actions/replay-dlq",
        &[],
        b"{}",
    );
    let body: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, &body["result"]["replayed"]),
        (200, &Json::from(1)),
        "{body}"
    );
    wait_until(
        "the broken entry dead again",
        Duration::from_secs(20),
        || {
            sql_result_count(
                &pg,
                "SELECT count(*) FROM warden_dlq WHERE replayed_at IS NULL",
            ) == Some(1)
        },
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM warden_dlq WHERE replayed_at IS NOT NULL"
        ),
        2
    );
    wait_until("dlq_size 1", Duration::from_secs(10), || {
        details(port)["details"]["dlq_size"] == 1
    });
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/rep/actions/replay-dlq",
        &[],
        br#"{"id": 1}"#,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Every text in a Redis reply, depth first.
fn texts(v: &redis::Value) -> Vec<String> {
    match v {
        redis::Value::BulkString(b) => vec![String::from_utf8_lossy(b).into_owned()],
        redis::Value::SimpleString(s) => vec![s.clone()],
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().flat_map(texts).collect()
        }
        redis::Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| texts(k).into_iter().chain(texts(v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// `count(*)` of `q`, or `None` while the table does not exist yet.
fn sql_result_count(pg: &Postgres, q: &str) -> Option<i64> {
    support::db::sql_rows(&pg.dsn, q)
        .ok()
        .map(|rows| rows[0].get(0))
}

#[test]
fn a_consumer_that_went_away_leaves_nothing_behind() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    redis_cmd(
        &redis.url,
        &["XGROUP", "CREATE", "users", "rep", "0", "MKSTREAM"],
    );
    for i in 0..20 {
        xadd(&redis, "users", &[("payload", &format!("{{\"i\": {i}}}"))]);
    }
    // Another warden read them and died before acknowledging.
    redis_cmd(
        &redis.url,
        &[
            "XREADGROUP",
            "GROUP",
            "rep",
            "gone",
            "COUNT",
            "20",
            "STREAMS",
            "users",
            ">",
        ],
    );
    assert_eq!(pending(&redis, "users"), 20);
    // One of them is deleted from the stream meanwhile (XDEL, or trimmed):
    // pending, but its fields are gone.
    let first = match redis_cmd(&redis.url, &["XRANGE", "users", "-", "+", "COUNT", "1"]) {
        redis::Value::Array(es) => match &es[0] {
            redis::Value::Array(e) => match &e[0] {
                redis::Value::BulkString(id) => String::from_utf8(id.clone()).unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    redis_cmd(&redis.url, &["XDEL", "users", &first]);
    let port = free_port();
    // Batches of 5: the janitor's scan takes four rounds.
    let mut w = Warden::start(&registry(port, &pg, &redis, "batch = 5"));
    w.wait_event("rep", "ready");
    wait_until(
        "the 19 claimed entries applied",
        Duration::from_secs(20),
        || count(&pg, "SELECT count(*) FROM memory_replica") == 19 && pending(&redis, "users") == 0,
    );
    // The deleted one is a dead letter that says so, not a silent loss.
    wait_until(
        "the deleted entry's record",
        Duration::from_secs(10),
        || {
            count(
                &pg,
                &format!(
                    "SELECT count(*) FROM warden_dlq WHERE entry_id = '{first}' AND reason LIKE '%deleted from the stream%'"
                ),
            ) == 1
        },
    );
    // The consumer that went away, holding nothing now, leaves the group.
    wait_until("the gone consumer removed", Duration::from_secs(20), || {
        let consumers = redis_cmd(&redis.url, &["XINFO", "CONSUMERS", "users", "rep"]);
        let names = texts(&consumers);
        assert!(names.iter().any(|n| n == "name"), "{consumers:?}");
        !names.iter().any(|n| n == "gone")
    });
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn mapped_columns_fill_a_table_of_ones_own() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    sql(
        &pg.dsn,
        "CREATE TABLE users_copy (event_id text PRIMARY KEY, name text, age int, tags jsonb)",
    );
    let port = free_port();
    let mut w = Warden::start(&registry(
        port,
        &pg,
        &redis,
        "table = \"users_copy\"\ncolumns = { name = \"name\", years = \"age\", labels = \"tags\" }",
    ));
    w.wait_event("rep", "ready");
    xadd(
        &redis,
        "users",
        &[
            (
                "payload",
                r#"{"name": "Ada", "years": 36, "labels": ["x"], "other": 1}"#,
            ),
            ("outbox_id", "1"),
        ],
    );
    // A value PostgreSQL cannot take (not an int): that entry alone is
    // dead, the one after it applied.
    xadd(
        &redis,
        "users",
        &[
            ("payload", r#"{"name": "Bob", "years": "old"}"#),
            ("outbox_id", "2"),
        ],
    );
    xadd(
        &redis,
        "users",
        &[("payload", r#"{"name": "Cy"}"#), ("outbox_id", "3")],
    );
    // Not an object: no keys to map.
    xadd(
        &redis,
        "users",
        &[("payload", "[1, 2]"), ("outbox_id", "4")],
    );
    wait_until(
        "two rows and two dead letters",
        Duration::from_secs(20),
        || {
            count(&pg, "SELECT count(*) FROM users_copy") == 2
                && count(&pg, "SELECT count(*) FROM warden_dlq") == 2
        },
    );
    let row = &sql(
        &pg.dsn,
        "SELECT name, age, tags::text FROM users_copy WHERE event_id = '1'",
    )[0];
    assert_eq!(row.get::<_, String>(0), "Ada");
    assert_eq!(row.get::<_, i32>(1), 36);
    assert_eq!(row.get::<_, String>(2), r#"["x"]"#);
    let why: String = sql(
        &pg.dsn,
        "SELECT reason FROM warden_dlq WHERE event_id = '2'",
    )[0]
    .get(0);
    let not_object: String = sql(
        &pg.dsn,
        "SELECT reason FROM warden_dlq WHERE event_id = '4'",
    )[0]
    .get(0);
    assert_eq!(
        not_object,
        "the payload is not a JSON object (columns map its keys)"
    );
    assert!(
        why.contains("invalid input syntax for type integer") && why.contains("22P02"),
        "{why}"
    );
    // The value refused is in the dead letter's fields, not in the words
    // that reach logs and last_error.
    assert!(!why.contains("old"), "{why}");
    let (_, s) = get_json(port, "/v1/services/rep");
    assert_eq!(s["restarts"], 0, "{s:#}");
    let last_error = s["details"]["last_error"].to_string();
    assert!(!last_error.contains("old"), "{last_error}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_restart_of_postgresql_costs_a_round_not_the_service() {
    let (mut pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("rep", "ready");
    let mut total = 0;
    for mode in ["", "fast", "immediate"] {
        if !mode.is_empty() {
            pg.restart(mode);
        }
        for _ in 0..50 {
            total += 1;
            xadd(
                &redis,
                "orders",
                &[("payload", "{}"), ("outbox_id", &total.to_string())],
            );
        }
        wait_until(
            &format!("{total} rows (restart: {mode:?})"),
            Duration::from_secs(30),
            || count(&pg, "SELECT count(*) FROM memory_replica") == total,
        );
    }
    let (_, s) = get_json(port, "/v1/services/rep");
    assert_eq!(s["restarts"], 0, "{s:#}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn an_outage_of_postgresql_sends_no_good_entry_to_the_dead_letter_queue() {
    // max_deliveries = 3: reading the batch again at each attempt would
    // push it past that within two seconds of outage.
    let (mut pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("rep", "ready");
    xadd(&redis, "orders", &[("payload", "{}"), ("outbox_id", "0")]);
    wait_until("the first row", Duration::from_secs(20), || {
        count(&pg, "SELECT count(*) FROM memory_replica") == 1
    });
    pg.stop("fast");
    for i in 1..=50 {
        xadd(
            &redis,
            "orders",
            &[("payload", "{}"), ("outbox_id", &i.to_string())],
        );
    }
    // Long enough for several attempts (0.5 s doubling).
    std::thread::sleep(Duration::from_secs(8));
    pg.start_again();
    wait_until("51 rows", Duration::from_secs(40), || {
        count(&pg, "SELECT count(*) FROM memory_replica") == 51
    });
    assert_eq!(
        count(&pg, "SELECT count(*) FROM warden_dlq"),
        0,
        "no dead letter"
    );
    let (_, s) = get_json(port, "/v1/services/rep");
    assert_eq!(s["restarts"], 0, "{s:#}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_nul_byte_in_an_entry_is_kept_without_a_crash_loop() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, ""));
    w.wait_event("rep", "ready");
    // Not JSON, NUL included: a dead letter. A NUL in the partition key:
    // applied, the NUL replaced (PostgreSQL's text cannot hold it).
    xadd(
        &redis,
        "orders",
        &[("payload", "bin\0ary"), ("outbox_id", "1")],
    );
    xadd(
        &redis,
        "orders",
        &[
            ("payload", "{}"),
            ("outbox_id", "2"),
            ("partition_key", "a\0b"),
        ],
    );
    xadd(&redis, "orders", &[("payload", "{}"), ("outbox_id", "3")]);
    wait_until(
        "two rows and a dead letter",
        Duration::from_secs(20),
        || {
            count(&pg, "SELECT count(*) FROM memory_replica") == 2
                && sql_result_count(&pg, "SELECT count(*) FROM warden_dlq") == Some(1)
        },
    );
    let key: String = sql(
        &pg.dsn,
        "SELECT partition_key FROM memory_replica WHERE event_id = '2'",
    )[0]
    .get(0);
    assert_eq!(key, "a\u{FFFD}b");
    let (_, s) = get_json(port, "/v1/services/rep");
    assert_eq!(s["restarts"], 0, "{s:#}");
    assert_eq!(pending(&redis, "orders"), 0);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A `.dlq` stream keeps at most `dlq_maxlen` entries (the oldest go):
/// it was written without a bound, so an entry that stays broken and is
/// replayed on a schedule grew it for ever.
#[test]
fn a_dead_letter_stream_keeps_at_most_dlq_maxlen_entries() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    for n in 0..30 {
        xadd(
            &redis,
            "orders",
            &[
                ("payload", "not json"),
                ("outbox_id", &(1000 + n).to_string()),
            ],
        );
    }
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, "dlq_maxlen = 10\n"));
    w.wait_event("rep", "ready");
    wait_until("30 dead letters", Duration::from_secs(20), || {
        sql_result_count(&pg, "SELECT count(*) FROM warden_dlq") == Some(30)
    });
    wait_until("the stream written", Duration::from_secs(10), || {
        pending(&redis, "orders") == 0
    });
    let dlq = stream(&redis.url, "orders.dlq");
    assert_eq!(dlq.len(), 10, "the newest 10 dead letters");
    assert_eq!(dlq[9]["outbox_id"], "1029", "the newest last");
    // The size read every second has an index of its own.
    let index = sql(
        &pg.dsn,
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'warden_dlq_unreplayed'",
    );
    assert!(
        index.first().is_some_and(|r| r
            .get::<_, String>(0)
            .contains("WHERE (replayed_at IS NULL)")),
        "no partial index on the dead letters not replayed"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Replayed dead letters are deleted `dlq_keep_replayed` after their
/// replay: `warden_dlq` was never pruned, and a scheduled `replay-dlq` of
/// an entry that stays broken added a row each time.
#[test]
fn replayed_dead_letters_are_deleted_after_dlq_keep_replayed() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    for n in 0..3 {
        xadd(
            &redis,
            "orders",
            &[
                ("payload", "not json"),
                ("outbox_id", &(2000 + n).to_string()),
            ],
        );
    }
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &redis, "dlq_keep_replayed = \"2s\"\n"));
    w.wait_event("rep", "ready");
    wait_until("3 dead letters", Duration::from_secs(20), || {
        sql_result_count(&pg, "SELECT count(*) FROM warden_dlq") == Some(3)
    });
    // Replayed, they fail again: 3 replayed rows and 3 new ones.
    let (code, _, body) = http(
        port,
        "POST",
        "/v1/services/rep/actions/replay-dlq",
        &[],
        b"{}",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    wait_until("3 new dead letters", Duration::from_secs(20), || {
        sql_result_count(
            &pg,
            "SELECT count(*) FROM warden_dlq WHERE replayed_at IS NULL",
        ) == Some(3)
    });
    // Two seconds after the replay, the replayed rows go.
    wait_until("the replayed rows deleted", Duration::from_secs(10), || {
        sql_result_count(
            &pg,
            "SELECT count(*) FROM warden_dlq WHERE replayed_at IS NOT NULL",
        ) == Some(0)
    });
    assert_eq!(
        sql_result_count(&pg, "SELECT count(*) FROM warden_dlq"),
        Some(3),
        "the dead letters not replayed stay"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// An entry that PostgreSQL (or warden's own bounds) refuses is a dead
/// letter alone, with its real reason, and the rest of its batch is
/// applied once: only classes 22 and 23 were treated as an entry's fault,
/// so one of these crash-looped the service and, after `max_deliveries`,
/// sent its whole batch to the dead letters as "delivered too often".
#[test]
fn each_poison_entry_is_a_dead_letter_alone_with_its_real_reason() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    // The replica made ahead, with a trigger of the application's that
    // refuses some events and takes too long over others.
    sql(&pg.dsn, REPLICA);
    sql(
        &pg.dsn,
        "CREATE FUNCTION app_check() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.payload->>'p' = 'raise' THEN
                 RAISE EXCEPTION 'the application refuses this order';
             END IF;
             IF NEW.payload->>'p' = 'slow' THEN PERFORM pg_sleep(3); END IF;
             RETURN NEW;
         END $$",
    );
    sql(
        &pg.dsn,
        "CREATE TRIGGER app_check BEFORE INSERT ON memory_replica
         FOR EACH ROW EXECUTE FUNCTION app_check()",
    );
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(100_000));
    let long_id = "e".repeat(3_000);
    let poison: [(&str, Vec<(&str, &str)>); 5] = [
        ("long id", vec![("payload", "{}"), ("event_id", &long_id)]),
        ("deep", vec![("payload", &deep), ("event_id", "deep")]),
        ("big", vec![("payload", &big), ("event_id", "big")]),
        (
            "raise",
            vec![("payload", r#"{"p": "raise"}"#), ("event_id", "raise")],
        ),
        (
            "slow",
            vec![("payload", r#"{"p": "slow"}"#), ("event_id", "slow")],
        ),
    ];
    // One batch: each poison entry among good ones.
    let mut good = 0;
    for (_, fields) in &poison {
        for _ in 0..2 {
            good += 1;
            let id = format!("good-{good}");
            xadd(
                &redis,
                "orders",
                &[("payload", r#"{"ok": 1}"#), ("event_id", &id)],
            );
        }
        xadd(&redis, "orders", fields);
    }
    let port = free_port();
    let extra = "statement_timeout = \"1s\"\nmax_payload = \"64KiB\"\n";
    let mut w = Warden::start(&registry(port, &pg, &redis, extra));
    w.wait_event("rep", "ready");
    wait_until(
        "10 rows and 5 dead letters",
        Duration::from_secs(30),
        || {
            count(&pg, "SELECT count(*) FROM memory_replica") == 10
                && sql_result_count(&pg, "SELECT count(*) FROM warden_dlq") == Some(5)
        },
    );
    wait_until("every entry acknowledged", Duration::from_secs(10), || {
        pending(&redis, "orders") == 0
    });
    let reasons: Vec<(String, String, i32)> = sql(
        &pg.dsn,
        "SELECT COALESCE(left(event_id, 8), ''), reason, deliveries FROM warden_dlq ORDER BY id",
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    let reason_of = |id: &str| {
        reasons
            .iter()
            .find(|(e, _, _)| e == id)
            .unwrap_or_else(|| panic!("no dead letter {id}: {reasons:#?}"))
            .clone()
    };
    for (id, want) in [
        (
            "eeeeeeee",
            "the event id is 3000 bytes, more than max_event_id_bytes (512)",
        ),
        (
            "deep",
            "the payload field nests arrays or objects deeper than max_json_depth (128)",
        ),
        (
            "big",
            "the payload field is 100009 bytes, more than max_payload (65536 bytes)",
        ),
        (
            "raise",
            "the application refuses this order (SQLSTATE P0001",
        ),
        ("slow", "statement timeout (SQLSTATE 57014"),
    ] {
        let (_, reason, deliveries) = reason_of(id);
        assert!(
            reason.contains(want),
            "{id}: {reason:?} should say {want:?}"
        );
        assert_eq!(deliveries, 1, "{id} was dead at its first delivery");
    }
    let d = &details(port)["details"];
    assert_eq!(d["applied"], 10, "{d:#}");
    assert_eq!(d["duplicates"], 0, "each good entry applied once: {d:#}");
    assert_eq!(d["dead_letters"], 5, "{d:#}");
    let (_, s) = get_json(port, "/v1/services/rep");
    assert_eq!(s["restarts"], 0, "{s:#}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// When PostgreSQL refuses every entry of a batch (a trigger of the
/// application that raises for every row, a stalled server cancelling
/// every statement), nothing tells a poison entry from a table-wide
/// refusal: the entries are delivered again after a pause rather than
/// dumped into the dead letters at once, and one that is still refused
/// past `max_deliveries` becomes a dead letter with the real reason. A
/// refusal that spared some entries of the batch pins the rest, as ever.
#[test]
fn a_refusal_of_every_entry_is_tried_again_before_any_dead_letter() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    sql(&pg.dsn, REPLICA);
    sql(
        &pg.dsn,
        "CREATE FUNCTION maintenance() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.payload->>'p' = 'poison' OR EXISTS (SELECT 1 FROM pg_class WHERE relname = 'closed_for_maintenance') THEN
                 RAISE EXCEPTION 'the application refuses this order';
             END IF;
             RETURN NEW;
         END $$",
    );
    sql(
        &pg.dsn,
        "CREATE TRIGGER maintenance BEFORE INSERT ON memory_replica
         FOR EACH ROW EXECUTE FUNCTION maintenance()",
    );
    sql(&pg.dsn, "CREATE TABLE closed_for_maintenance ()");
    for n in 0..5 {
        xadd(
            &redis,
            "orders",
            &[("payload", "{}"), ("event_id", &format!("e{n}"))],
        );
    }
    let port = free_port();
    let registry = format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.rep]
kind = "stream-replicator"
postgres = "{pg}"
redis = "{redis}"
streams = ["orders"]
max_deliveries = 4
"#,
        pg = pg.dsn,
        redis = redis.url
    );
    let mut w = Warden::start(&registry);
    w.wait_event("rep", "ready");
    // Refused as a whole, and again (pauses of 0.5 s, then 1 s): still no
    // dead letter.
    w.wait_log("a refused batch", |v| {
        v["message"]
            == "PostgreSQL refused every entry of a batch; delivering them again after a pause"
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        sql_result_count(&pg, "SELECT count(*) FROM warden_dlq"),
        Some(0),
        "no dead letter while the whole table refuses"
    );
    // The maintenance ends: every entry goes in, none is a dead letter.
    sql(&pg.dsn, "DROP TABLE closed_for_maintenance");
    wait_until("5 rows", Duration::from_secs(30), || {
        count(&pg, "SELECT count(*) FROM memory_replica") == 5
    });
    // A poison entry alone in its batch: delivered again, then a dead
    // letter with its real reason once past max_deliveries (4).
    xadd(
        &redis,
        "orders",
        &[("payload", r#"{"p": "poison"}"#), ("event_id", "poison")],
    );
    wait_until(
        "the poison entry a dead letter",
        Duration::from_secs(60),
        || sql_result_count(&pg, "SELECT count(*) FROM warden_dlq") == Some(1),
    );
    let reason: String = sql(&pg.dsn, "SELECT reason FROM warden_dlq")[0].get(0);
    assert!(
        reason.contains("more than max_deliveries (4)")
            && reason.contains("the application refuses this order (SQLSTATE P0001"),
        "{reason}"
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM memory_replica"), 5);
    let (_, s) = get_json(port, "/v1/services/rep");
    assert_eq!(s["restarts"], 0, "{s:#}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
