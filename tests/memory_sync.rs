//! `kind = "memory-sync"` end to end against a real
//! PostgreSQL 15, a real Redis (for the outbox relay that publishes the
//! WAL events) and a scripted HTTP memory backend run by the test.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::daemon::Warden;
use support::db::{sql, wait_until};
use support::http::{get_json, http, wait_http};
use support::servers::{Postgres, Redis, free_port};

/// One request the backend got.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    idempotency_key: String,
    body: String,
}

/// A memory backend: answers each POST with what `answer` says for its
/// body and the number of times that body was seen before. It keeps
/// connections alive (HTTP/1.1) and counts them.
struct Backend {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Backend {
    fn start(
        answer: impl Fn(&str, usize) -> (u16, &'static str) + Send + Sync + 'static,
    ) -> Backend {
        Backend::start_on(0, answer)
    }

    fn start_on(
        port: u16,
        answer: impl Fn(&str, usize) -> (u16, &'static str) + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let (log, count) = (seen.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (log, answer) = (log.clone(), answer.clone());
                std::thread::spawn(move || serve(stream, &log, &*answer));
            }
        });
        Backend {
            port,
            seen,
            connections,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Answers the requests of one connection until the client closes it.
fn serve(
    mut stream: std::net::TcpStream,
    log: &Mutex<Vec<Seen>>,
    answer: &dyn Fn(&str, usize) -> (u16, &'static str),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let (mut len, mut key, mut any) = (0usize, String::new(), false);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            any = true;
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("idempotency-key:") {
                key = line["idempotency-key:".len()..].trim().to_string();
            }
        }
        if !any {
            continue;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let before = log
            .lock()
            .unwrap()
            .iter()
            .filter(|s: &&Seen| s.body == body)
            .count();
        log.lock().unwrap().push(Seen {
            at: Instant::now(),
            idempotency_key: key,
            body: body.clone(),
        });
        let (status, extra) = answer(&body, before);
        if write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{extra}\r\n{{}}"
        )
        .is_err()
        {
            return;
        }
    }
}

fn registry(port: u16, pg: &Postgres, backend: &Backend, extra: &str) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.memory]
kind = "memory-sync"
postgres = "{pg}"
endpoint = "http://127.0.0.1:{backend}/v1/memories"
timeout = "2s"
max_retries = 3
poll_interval = "1h"
{extra}
"#,
        pg = pg.dsn,
        backend = backend.port
    )
}

#[test]
fn writes_reach_the_backend_once_and_their_wal_events_reach_redis() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let backend = Backend::start(|_, _| (200, ""));
    let port = free_port();
    let relay = format!(
        "\n[services.relay]\nkind = \"outbox-relay\"\npostgres = \"{}\"\nredis = \"{}\"\n\
         depends_on = [\"memory\"]\n",
        pg.dsn, redis.url
    );
    let mut w = Warden::start(&registry(port, &pg, &backend, &relay));
    wait_http(port, "/readyz", 200);
    w.wait_event("relay", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (tenant, session_id, idempotency_key, payload)
         SELECT 't1', 's' || n, 'key-' || n, jsonb_build_object('text', 'memory ' || n)
         FROM generate_series(1, 20) n",
    );
    wait_until("20 rows sent", Duration::from_secs(20), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'",
        )[0]
        .get::<_, i64>(0)
            == 20
    });
    let seen = backend.seen();
    assert_eq!(seen.len(), 20, "each write POSTed once");
    // Writes of different sessions are in flight together: any order.
    let first = seen
        .iter()
        .find(|s| s.idempotency_key == "key-1")
        .expect("key-1 was POSTed");
    assert_eq!(first.body, r#"{"text": "memory 1"}"#);
    let mut keys: Vec<&str> = seen.iter().map(|s| s.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 20, "each with its own key");
    // Each sent write has its WAL event in the outbox, published by the
    // relay to the stream memory.wal.
    let wal = sql(
        &pg.dsn,
        "SELECT payload->>'idempotency_key', dedupe_key, partition_key FROM message_outbox
         WHERE topic = 'memory.wal' ORDER BY id",
    );
    assert_eq!(wal.len(), 20);
    assert_eq!(wal[0].get::<_, String>(0), "key-1");
    assert_eq!(wal[0].get::<_, String>(1), "memory:key-1");
    assert_eq!(wal[0].get::<_, String>(2), "s1");
    wait_until("the WAL events in Redis", Duration::from_secs(20), || {
        let n = support::db::redis_cmd(&redis.url, &["XLEN", "memory.wal"]);
        n == redis::Value::Int(20)
    });
    // Connections are kept alive and reused: far fewer than writes (a
    // connection per write before); at most one per request in flight.
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (session_id, payload)
         SELECT 'more' || n, jsonb_build_object('more', n) FROM generate_series(1, 300) n",
    );
    wait_until("320 rows sent", Duration::from_secs(30), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'",
        )[0]
        .get::<_, i64>(0)
            == 320
    });
    assert_eq!(backend.seen().len(), 320);
    assert!(
        backend.connections() <= 32,
        "{} connections carried 320 writes",
        backend.connections()
    );
    let (_, s) = get_json(port, "/v1/services/memory");
    assert_eq!(s["details"]["sent"], 320, "{s}");
    assert_eq!(s["details"]["circuit"], "closed", "{s}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn retries_honour_retry_after_4xx_fails_and_the_circuit_opens() {
    let pg = Postgres::start();
    // "later": 503 with Retry-After: 1 the first time, then 200.
    // "bad": 400, always. "down": 500, always.
    let backend = Backend::start(|body, before| {
        if body.contains("later") {
            if before == 0 {
                (503, "retry-after: 1\r\n")
            } else {
                (200, "")
            }
        } else if body.contains("bad") {
            (400, "")
        } else if body.contains("down") {
            (500, "")
        } else {
            (200, "")
        }
    });
    let port = free_port();
    let mut w = Warden::start(&registry(
        port,
        &pg,
        &backend,
        r#"circuit = { failures = 3, cooldown = "1h" }"#,
    ));
    wait_http(port, "/readyz", 200);
    w.wait_event("memory", "ready");
    sql(
        &pg.dsn,
        r#"INSERT INTO memory_write_outbox (payload) VALUES ('{"k": "later"}'), ('{"k": "bad"}')"#,
    );
    wait_until("later sent, bad failed", Duration::from_secs(20), || {
        let r = sql(
            &pg.dsn,
            "SELECT payload->>'k', status, retry_count FROM memory_write_outbox ORDER BY id",
        );
        r[0].get::<_, String>(1) == "sent" && r[1].get::<_, String>(1) == "failed"
    });
    let seen = backend.seen();
    let later: Vec<&Seen> = seen.iter().filter(|s| s.body.contains("later")).collect();
    assert_eq!(later.len(), 2);
    assert!(
        later[1].at - later[0].at >= Duration::from_millis(950),
        "Retry-After: 1 was honoured ({:?})",
        later[1].at - later[0].at
    );
    assert_eq!(
        seen.iter().filter(|s| s.body.contains("bad")).count(),
        1,
        "a 400 is not retried"
    );
    let r = sql(
        &pg.dsn,
        "SELECT last_error FROM memory_write_outbox WHERE payload->>'k' = 'bad'",
    );
    assert_eq!(r[0].get::<_, String>(0), "HTTP 400 Bad Request");

    // Three 500s in a row open the circuit: the backend hears nothing more.
    sql(
        &pg.dsn,
        r#"INSERT INTO memory_write_outbox (payload)
           SELECT jsonb_build_object('k', 'down', 'n', n) FROM generate_series(1, 5) n"#,
    );
    wait_until("the circuit open", Duration::from_secs(20), || {
        get_json(port, "/v1/services/memory").1["details"]["circuit"] == "open"
    });
    std::thread::sleep(Duration::from_millis(500));
    let down = backend
        .seen()
        .iter()
        .filter(|s| s.body.contains("down"))
        .count();
    assert_eq!(down, 3, "no POST while the circuit is open");
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"warden_memory_sync_circuit_open{service="memory"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"warden_memory_sync_jobs_total{service="memory",result="failed"} 1"#)
    );
    // The rows the circuit holds are pending, not failed.
    let held = sql(
        &pg.dsn,
        "SELECT count(*) FROM memory_write_outbox WHERE payload->>'k' = 'down' AND status = 'pending'",
    );
    assert_eq!(held[0].get::<_, i64>(0), 5);
    // replay-failed brings the 400 back (it fails again: one more POST).
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/memory/actions/replay-failed",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(r#""replayed":1"#));
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn an_unreachable_backend_charges_nothing_and_the_circuit_closes_when_it_is_back() {
    let pg = Postgres::start();
    // Nobody listens here yet.
    let backend_port = free_port();
    let port = free_port();
    let registry = format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.memory]
kind = "memory-sync"
postgres = "{pg}"
endpoint = "http://127.0.0.1:{backend_port}/m"
timeout = "1s"
poll_interval = "1h"
circuit = {{ failures = 2, cooldown = "300ms" }}
"#,
        pg = pg.dsn
    );
    let mut w = Warden::start(&registry);
    wait_http(port, "/readyz", 200);
    w.wait_event("memory", "ready");
    sql(
        &pg.dsn,
        r#"INSERT INTO memory_write_outbox (payload) VALUES ('{"k": 1}')"#,
    );
    w.wait_log("the circuit opening", |v| {
        v["message"] == "circuit open: holding writes"
    });
    let r = sql(
        &pg.dsn,
        "SELECT status, retry_count FROM memory_write_outbox",
    );
    assert_eq!(r[0].get::<_, String>(0), "pending");
    assert_eq!(
        r[0].get::<_, i32>(1),
        0,
        "an unreachable backend charges no retry"
    );
    // The backend comes up: after the cooldown one POST closes the circuit.
    let backend = Backend::start_on(backend_port, |_, _| (200, ""));
    wait_until("the row sent", Duration::from_secs(20), || {
        sql(&pg.dsn, "SELECT status FROM memory_write_outbox")[0].get::<_, String>(0) == "sent"
    });
    assert_eq!(backend.seen().len(), 1);
    wait_until("the circuit closed", Duration::from_secs(5), || {
        get_json(port, "/v1/services/memory").1["details"]["circuit"] == "closed"
    });
    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains(r#"warden_memory_sync_circuit_open{service="memory"} 0"#)
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// The writes of one session reach the backend one after the other, in
/// the order they were queued, while other sessions' go in parallel.
#[test]
fn a_sessions_writes_arrive_in_order() {
    let pg = Postgres::start();
    let backend = Backend::start(|_, _| (200, ""));
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &backend, "in_flight = 8\n"));
    w.wait_event("memory", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (session_id, idempotency_key, payload)
         SELECT CASE WHEN n % 2 = 0 THEN 'even' ELSE 'odd-' || n END, 'k' || n,
                jsonb_build_object('n', n)
         FROM generate_series(1, 60) n",
    );
    wait_until("60 rows sent", Duration::from_secs(20), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'",
        )[0]
        .get::<_, i64>(0)
            == 60
    });
    let even: Vec<u32> = backend
        .seen()
        .iter()
        .filter_map(|s| s.idempotency_key.strip_prefix('k')?.parse().ok())
        .filter(|n| n % 2 == 0)
        .collect();
    let queued: Vec<u32> = (1..=60).filter(|n| n % 2 == 0).collect();
    assert_eq!(even, queued, "session `even` in its order");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_restart_of_postgresql_costs_a_round_not_the_service() {
    let mut pg = Postgres::start();
    let backend = Backend::start(|_, _| (200, ""));
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &backend, ""));
    wait_http(port, "/readyz", 200);
    w.wait_event("memory", "ready");
    let sent = |pg: &Postgres| -> i64 {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'",
        )[0]
        .get(0)
    };
    let mut total = 0;
    for (round, mode) in ["", "fast", "immediate"].into_iter().enumerate() {
        if !mode.is_empty() {
            pg.restart(mode);
        }
        // The poll is an hour: only a (new) LISTEN session brings these.
        sql(
            &pg.dsn,
            &format!(
                "INSERT INTO memory_write_outbox (session_id, idempotency_key, payload)
                 SELECT 's' || n, 'r{round}-' || n, '{{}}' FROM generate_series(1, 50) n"
            ),
        );
        total += 50;
        wait_until(
            &format!("{total} writes sent (restart: {mode:?})"),
            Duration::from_secs(30),
            || sent(&pg) == total,
        );
    }
    let (_, s) = get_json(port, "/v1/services/memory");
    assert_eq!(s["state"], "ready", "{s:#}");
    assert_eq!(s["restarts"], 0, "the run went on: {s:#}");
    let keys: std::collections::HashSet<String> = backend
        .seen()
        .into_iter()
        .map(|s| s.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 150, "every write reached the backend");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A row memory-sync cannot send (a NULL `idempotency_key` or `payload`,
/// which a table the user changed allows) fails at once with its reason;
/// the good rows of the same batch are sent. It used to panic on the NULL,
/// once per lease, with the good rows left `sending`.
#[test]
fn a_row_with_a_null_column_fails_with_its_reason_and_the_batch_goes_on() {
    let pg = Postgres::start();
    let backend = Backend::start(|_, _| (200, ""));
    let port = free_port();
    let mut w = Warden::start(&registry(port, &pg, &backend, ""));
    w.wait_event("memory", "ready");
    sql(
        &pg.dsn,
        "ALTER TABLE memory_write_outbox ALTER COLUMN idempotency_key DROP NOT NULL,
                                         ALTER COLUMN payload DROP NOT NULL",
    );
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (idempotency_key, payload) VALUES
            ('k1', '{\"n\": 1}'), (NULL, '{\"n\": 2}'), ('k3', NULL), ('k4', '{\"n\": 4}')",
    );
    wait_until("the good rows sent", Duration::from_secs(20), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'",
        )[0]
        .get::<_, i64>(0)
            == 2
    });
    wait_until("the bad rows failed", Duration::from_secs(10), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM memory_write_outbox WHERE status = 'failed'",
        )[0]
        .get::<_, i64>(0)
            == 2
    });
    let reasons: Vec<String> = sql(
        &pg.dsn,
        "SELECT last_error FROM memory_write_outbox WHERE status = 'failed' ORDER BY id",
    )
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(
        reasons[0].contains("idempotency_key is NULL"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("payload is NULL"), "{reasons:?}");
    // Sent together in a wave (no session): in either order.
    let mut keys: Vec<String> = backend
        .seen()
        .into_iter()
        .map(|s| s.idempotency_key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["k1", "k4"]);
    let (_, s) = get_json(port, "/v1/services/memory");
    assert_eq!(s["state"], "ready", "memory-sync did not crash: {s}");
    assert_eq!(s["restarts"], 0, "{s}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// `warden_memory_sync_seconds` records one duration per wave of requests
/// in flight together: it recorded the wave's time once per row, so a
/// wave of 8 counted 8 observations of the same time.
#[test]
fn the_request_histogram_counts_waves_not_rows() {
    let pg = Postgres::start();
    let backend = Backend::start(|_, _| (200, ""));
    let port = free_port();
    let mut w = Warden::start(&registry(
        port,
        &pg,
        &backend,
        "in_flight = 8\nbatch = 16\n",
    ));
    w.wait_event("memory", "ready");
    // 16 writes of 16 sessions: two waves of 8.
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (tenant, session_id, idempotency_key, payload)
         SELECT 't1', 's' || n, 'key-' || n, jsonb_build_object('n', n)
         FROM generate_series(1, 16) n",
    );
    wait_until("16 rows sent", Duration::from_secs(20), || {
        sql(
            &pg.dsn,
            "SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'",
        )[0]
        .get::<_, i64>(0)
            == 16
    });
    let (_, _, metrics) = support::http::http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    let observations: f64 = metrics
        .lines()
        .find(|l| l.starts_with("warden_memory_sync_seconds_count{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no histogram in:\n{metrics}"));
    assert!(
        (2.0..=4.0).contains(&observations),
        "{observations} observations for 16 writes in waves of 8"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
