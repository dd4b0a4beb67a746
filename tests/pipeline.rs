//! The whole data pipeline against a real PostgreSQL 15 and a real Redis
//! that the test starts: `memory_write_outbox` → memory-sync → an HTTP
//! backend → the WAL event in `message_outbox` → outbox-relay → the Redis
//! stream `memory.wal` → stream-replicator → `memory_replica`. Every
//! write arrives exactly once: with one warden, with two sharing the work,
//! and across a SIGKILL of warden in the middle.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::daemon::Warden;
use support::db::{sql, wait_until};
use support::http::{get_json, ok_backend};
use support::servers::{Postgres, Redis, free_port};

/// The three data services, with short leases so that a killed warden's
/// rows come back within seconds.
fn registry(api: u16, pg: &Postgres, redis: &Redis, backend: u16) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{api}"

[services.memory]
kind = "memory-sync"
postgres = "{pg}"
endpoint = "http://127.0.0.1:{backend}/v1/memories"
timeout = "1s"
lease = "3s"
depends_on = ["relay"]

[services.relay]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
lease = "2s"

[services.replicator]
kind = "stream-replicator"
postgres = "{pg}"
redis = "{redis}"
streams = ["memory.wal"]
min_idle = "1s"
"#,
        pg = pg.dsn,
        redis = redis.url
    )
}

fn insert_writes(pg: &Postgres, from: u32, to: u32) {
    sql(
        &pg.dsn,
        &format!(
            "INSERT INTO memory_write_outbox (tenant, session_id, idempotency_key, payload)
             SELECT 't', 's' || (n % 17), 'w-' || n, jsonb_build_object('n', n)
             FROM generate_series({from}, {to}) n"
        ),
    );
}

fn replica_count(pg: &Postgres) -> i64 {
    sql(&pg.dsn, "SELECT count(*) FROM memory_replica")[0].get(0)
}

/// Every write `w-1` .. `w-n` is in the replica, once.
fn assert_each_write_once(pg: &Postgres, n: u32) {
    let keys: Vec<String> = sql(
        &pg.dsn,
        "SELECT payload->>'idempotency_key' FROM memory_replica",
    )
    .iter()
    .map(|r| r.get(0))
    .collect();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), n as usize, "one row per write");
    assert_eq!(distinct.len(), n as usize, "no write twice");
    for i in 1..=n {
        assert!(distinct.contains(&format!("w-{i}")), "w-{i} is missing");
    }
}

fn start(pg: &Postgres, redis: &Redis, backend: u16) -> (Warden, u16) {
    let api = free_port();
    let mut w = Warden::start(&registry(api, pg, redis, backend));
    w.wait_event("memory", "ready");
    w.wait_event("replicator", "ready");
    (w, api)
}

#[test]
fn every_write_reaches_the_replica_once() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let (backend, posts) = ok_backend();
    let (mut w, api) = start(&pg, &redis, backend);
    insert_writes(&pg, 1, 500);
    wait_until("500 events in the replica", Duration::from_secs(60), || {
        replica_count(&pg) == 500
    });
    assert_each_write_once(&pg, 500);
    // At least once to the backend (a lease that ran out on a loaded
    // machine sends a write again; the backend dedupes on its key).
    assert!(posts.load(Ordering::SeqCst) >= 500, "a POST per write");
    let (_, h) = get_json(api, "/v1/health");
    assert_eq!(h["status"], "ok", "{h:#}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn two_wardens_share_the_pipeline_and_apply_nothing_twice() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let (backend, _) = ok_backend();
    let (mut a, api_a) = start(&pg, &redis, backend);
    let (mut b, api_b) = start(&pg, &redis, backend);
    insert_writes(&pg, 1, 1000);
    wait_until(
        "1000 events in the replica",
        Duration::from_secs(90),
        || replica_count(&pg) == 1000,
    );
    assert_each_write_once(&pg, 1000);
    // The two replicators applied the events between them: a row each
    // (above); an event delivered twice (a lease or min_idle that ran out
    // on a loaded machine) is a duplicate, not a second row.
    let entries = support::db::stream(&redis.url, "memory.wal");
    assert!(entries.len() >= 1000);
    let detail = |api: u16, service: &str, key: &str| -> u64 {
        get_json(api, &format!("/v1/services/{service}")).1["details"][key]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until("the details", Duration::from_secs(5), || {
        detail(api_a, "replicator", "applied") + detail(api_b, "replicator", "applied") == 1000
    });
    assert!(
        detail(api_a, "relay", "published") > 0 && detail(api_b, "relay", "published") > 0,
        "both relays took rows"
    );
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.exit_code(), 0);
    assert_eq!(b.exit_code(), 0);
}

#[test]
fn a_sigkill_of_warden_mid_flow_loses_nothing() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let (backend, _) = ok_backend();
    let (mut w, _) = start(&pg, &redis, backend);
    insert_writes(&pg, 1, 3000);
    wait_until("the flow under way", Duration::from_secs(60), || {
        replica_count(&pg) > 0
    });
    w.signal("KILL");
    let _ = w.exit_code();
    let done = replica_count(&pg);
    // Another warden takes over what the first one claimed and read.
    let (mut w, _) = start(&pg, &redis, backend);
    wait_until(
        "3000 events in the replica",
        Duration::from_secs(90),
        || replica_count(&pg) == 3000,
    );
    assert_each_write_once(&pg, 3000);
    assert!(
        done < 3000,
        "the kill came mid-flow ({done} applied before it)"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn killing_redis_mid_flow_loses_nothing() {
    // A Redis that keeps what it acknowledged (an append-only file synced
    // at every write): what warden marked sent survives the kill.
    let (pg, mut redis) = (Postgres::start(), Redis::start_durable());
    let (backend, _) = ok_backend();
    let (mut w, api) = start(&pg, &redis, backend);
    insert_writes(&pg, 1, 2000);
    wait_until("the flow under way", Duration::from_secs(60), || {
        replica_count(&pg) > 0
    });
    redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    redis.resume();
    wait_until(
        "2000 events in the replica",
        Duration::from_secs(90),
        || replica_count(&pg) == 2000,
    );
    assert_each_write_once(&pg, 2000);
    let (_, h) = get_json(api, "/v1/health");
    for s in ["memory", "relay", "replicator"] {
        assert_eq!(h["services"][s]["restarts"], 0, "{s}: {h:#}");
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn restarting_postgresql_mid_flow_loses_nothing() {
    let (mut pg, redis) = (Postgres::start(), Redis::start());
    let (backend, _) = ok_backend();
    let (mut w, api) = start(&pg, &redis, backend);
    let mut total = 0;
    for mode in ["fast", "immediate"] {
        insert_writes(&pg, total + 1, total + 1500);
        total += 1500;
        let before = replica_count(&pg);
        wait_until("the flow under way", Duration::from_secs(60), || {
            replica_count(&pg) > before
        });
        pg.restart(mode);
        wait_until(
            &format!("{total} events after a {mode} restart"),
            Duration::from_secs(90),
            || replica_count(&pg) == i64::from(total),
        );
    }
    assert_each_write_once(&pg, total);
    let (_, h) = get_json(api, "/v1/health");
    for s in ["memory", "relay", "replicator"] {
        assert_eq!(h["services"][s]["restarts"], 0, "{s}: {h:#}");
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Two outbox tables (`a_outbox`, `b_outbox`) feed one replica through
/// one stream.
fn two_outboxes(api: u16, pg: &Postgres, redis: &Redis) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{api}"

[services.relay-a]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
table = "a_outbox"
restart = {{ policy = "always" }}

[services.relay-b]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
table = "b_outbox"

[services.replicator]
kind = "stream-replicator"
postgres = "{pg}"
redis = "{redis}"
streams = ["orders"]
"#,
        pg = pg.dsn,
        redis = redis.url
    )
}

fn insert_orders(pg: &Postgres, table: &str, from: u32, to: u32) {
    sql(
        &pg.dsn,
        &format!(
            "INSERT INTO {table} (topic, payload)
             SELECT 'orders', jsonb_build_object('table', '{table}', 'n', n)
             FROM generate_series({from}, {to}) n"
        ),
    );
}

/// Every event keeps an identity of its own across the outbox table's
/// lives and across outbox tables: the replica's event id was the row's
/// `id`, which a `TRUNCATE ... RESTART IDENTITY`, a table dropped and made
/// again, or a second outbox table gives out again, so the replicator
/// discarded the new events as duplicates and acknowledged them.
#[test]
fn events_of_a_recreated_outbox_and_of_two_outboxes_are_all_replicated() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let api = free_port();
    let mut w = Warden::start(&two_outboxes(api, &pg, &redis));
    for s in ["relay-a", "relay-b", "replicator"] {
        w.wait_event(s, "ready");
    }
    // Ids 1..5 in each table.
    insert_orders(&pg, "a_outbox", 1, 5);
    insert_orders(&pg, "b_outbox", 1, 5);
    wait_until("10 events", Duration::from_secs(30), || {
        replica_count(&pg) == 10
    });
    // A new life of a_outbox: its ids start at 1 again.
    sql(&pg.dsn, "TRUNCATE a_outbox RESTART IDENTITY");
    insert_orders(&pg, "a_outbox", 6, 10);
    wait_until("15 events", Duration::from_secs(30), || {
        replica_count(&pg) == 15
    });
    // Another: the table dropped (the relay fails and is restarted, and
    // makes it again).
    sql(&pg.dsn, "DROP TABLE a_outbox");
    wait_until("a_outbox made again", Duration::from_secs(30), || {
        support::db::sql_rows(&pg.dsn, "SELECT 1 FROM a_outbox").is_ok()
    });
    insert_orders(&pg, "a_outbox", 11, 15);
    wait_until("20 events", Duration::from_secs(30), || {
        replica_count(&pg) == 20
    });
    let per_table: Vec<(String, i64)> = sql(
        &pg.dsn,
        "SELECT payload->>'table', count(DISTINCT payload->>'n') FROM memory_replica
         GROUP BY 1 ORDER BY 1",
    )
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(
        per_table,
        [("a_outbox".to_string(), 15), ("b_outbox".to_string(), 5)]
    );
    let (_, d) = get_json(api, "/v1/services/replicator");
    assert_eq!(d["details"]["duplicates"], 0, "{d:#}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
