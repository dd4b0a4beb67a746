//! The data plane behind a dead network, against a real PostgreSQL 15
//! and a real Redis that the test starts, each reached through a TCP
//! proxy on loopback that can turn into a black hole (it stops
//! forwarding and closes nothing: a partition, or a failover that sends
//! no reset). The workers notice within their timeouts, connect again
//! once the path heals, and lose nothing.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value as Json;
use support::daemon::Warden;
use support::db::{sql, wait_until};
use support::proxy::Proxy;
use support::servers::{Postgres, Redis, free_port};

/// A relay and a replicator with short timeouts, through the proxies.
fn registry(api: u16, pg: &str, redis: &str) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{api}"

[services.relay]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
lease = "4s"
statement_timeout = "1s"
network_timeout = "2s"
listen_check = "1s"

[services.replicator]
kind = "stream-replicator"
postgres = "{pg}"
redis = "{redis}"
streams = ["orders"]
min_idle = "2s"
statement_timeout = "1s"
network_timeout = "2s"
"#
    )
}

fn insert(pg: &Postgres, from: u32, to: u32) {
    sql(
        &pg.dsn,
        &format!(
            "INSERT INTO message_outbox (topic, payload)
             SELECT 'orders', jsonb_build_object('n', n) FROM generate_series({from}, {to}) n"
        ),
    );
}

/// The events in the replica, each counted once.
fn replicated(pg: &Postgres) -> HashSet<i64> {
    sql(&pg.dsn, "SELECT (payload->>'n')::int8 FROM memory_replica")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A warning of `service` whose error says `words`.
fn warned(w: &mut Warden, service: &str, message: &str, words: &str) -> Json {
    let (s, m, e) = (service.to_string(), message.to_string(), words.to_string());
    w.wait_log(&format!("{service}: {message} ({words})"), move |v| {
        v["span"]["service"] == s.as_str()
            && v["message"] == m.as_str()
            && v["error"].as_str().is_some_and(|x| x.contains(e.as_str()))
    })
}

#[test]
fn a_black_hole_is_noticed_within_the_timeouts_and_nothing_is_lost() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let (pg_path, redis_path) = (Proxy::start(pg.port), Proxy::start(redis.port));
    let api = free_port();
    let mut w = Warden::start(&registry(
        api,
        &pg_path.url(&pg.dsn, pg.port),
        &redis_path.url(&redis.url, redis.port),
    ));
    w.wait_event("relay", "ready");
    w.wait_event("replicator", "ready");
    insert(&pg, 1, 50);
    wait_until("50 events", Duration::from_secs(20), || {
        replicated(&pg).len() == 50
    });

    // PostgreSQL stops answering: each worker's statement waits no longer
    // than statement_timeout + network_timeout, and the listening session
    // is checked every listen_check.
    pg_path.black_hole();
    insert(&pg, 51, 100);
    warned(
        &mut w,
        "relay",
        "PostgreSQL unavailable; trying again",
        "no answer within",
    );
    warned(
        &mut w,
        "replicator",
        "PostgreSQL unavailable; trying again",
        "no answer within",
    );
    w.wait_log("the listening session given up", |v| {
        v["message"] == "the listening session did not answer; making it again"
    });
    pg_path.heal();
    wait_until("100 events", Duration::from_secs(60), || {
        replicated(&pg).len() == 100
    });

    // Redis stops answering.
    redis_path.black_hole();
    insert(&pg, 101, 150);
    w.wait_log("the relay's Redis given up", |v| {
        v["span"]["service"] == "relay" && v["message"] == "Redis unavailable; claim released"
    });
    w.wait_log("the replicator's Redis given up", |v| {
        v["span"]["service"] == "replicator" && v["message"] == "Redis unavailable; trying again"
    });
    redis_path.heal();
    wait_until("150 events", Duration::from_secs(60), || {
        replicated(&pg).len() == 150
    });
    let rows: i64 = sql(&pg.dsn, "SELECT count(*) FROM memory_replica")[0].get(0);
    assert_eq!(rows, 150, "each event once");
    assert_eq!(replicated(&pg), (1..=150).collect::<HashSet<i64>>());
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
