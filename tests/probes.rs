//! Readiness and liveness with real endpoints: every probe
//! kind makes a service ready only when its check passes, and a failing
//! health check restarts it.

mod support;

use std::time::{Duration, Instant};

use support::daemon::{Warden, processes_with};
use support::servers::{Postgres, Redis, free_port};

#[test]
fn every_probe_kind_gates_readiness_on_a_real_endpoint() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let tcp_port = free_port();
    let http_port = free_port();
    let registry = format!(
        r#"
[api]
enabled = false

[services.db]
kind = "external"
ready = {{ postgres = "{pg}" }}

[services.cache]
kind = "external"
ready = {{ redis = "{redis}" }}

# Listens only after a second: the tcp probe must wait for it.
[services.listener]
kind = "process"
command = ["python3", "-c", "import socket,time; time.sleep(1); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {tcp_port})); s.listen(); time.sleep(100000)"]
ready = {{ tcp = "127.0.0.1:{tcp_port}", interval = "50ms" }}

[services.web]
kind = "process"
command = ["python3", "-m", "http.server", "{http_port}", "--bind", "127.0.0.1"]
ready = {{ http = "http://127.0.0.1:{http_port}/", interval = "50ms" }}

# Ready once a file exists, which it creates after a moment.
[services.flagged]
kind = "process"
command = ["sh", "-c", "sleep 0.5; touch ready.flag; exec sleep 909090"]
ready = {{ exec = ["test", "-e", "ready.flag"], interval = "50ms" }}

[services.app]
kind = "process"
command = ["sleep", "909091"]
depends_on = ["db", "cache", "listener", "web", "flagged"]
"#,
        pg = pg.dsn,
        redis = redis.url,
    );
    let t0 = Instant::now();
    let mut w = Warden::start(&registry);
    for s in ["db", "cache", "listener", "web", "flagged", "app"] {
        w.wait_event(s, "ready");
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "the tcp probe waited for the listener"
    );
    // (The exec probe runs in warden's working directory, which is also the
    // service's here: the registry's directory.)
    assert_eq!(
        processes_with("909091").len(),
        1,
        "app started after all of them"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "{}", w.dump());
}

#[test]
fn a_failing_health_check_restarts_the_service_and_an_external_outage_is_seen() {
    let redis = Redis::start();
    let registry = format!(
        r#"
[api]
enabled = false

[services.cache]
kind = "external"
ready = {{ redis = "{url}", interval = "50ms" }}
health = {{ redis = "{url}", interval = "100ms", timeout = "200ms", failure_threshold = 2 }}
restart = {{ max_restarts = 100, backoff = {{ initial = "100ms", max = "200ms" }} }}

[services.worker]
kind = "process"
command = ["sleep", "808080"]
depends_on = ["cache"]
on_dependency_restart = "restart"
"#,
        url = redis.url
    );
    let mut w = Warden::start(&registry);
    w.wait_event("worker", "ready");
    // The cache goes away: the health check fails twice, the external
    // service fails and restarts (waiting for readiness again), and the
    // worker is stopped meanwhile (on_dependency_restart = "restart").
    let port = redis.port;
    drop(redis);
    let failed = w.wait_log("cache health failure", |v| {
        v["service"] == "cache"
            && v["message"] == "failed"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("health check failed 2 times in a row"))
    });
    assert!(failed.is_object());
    w.wait_log("worker stopped for its dependency", |v| {
        v["service"] == "worker" && v["message"] == "stopping for its dependency's restart"
    });
    let _ = port;
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "{}", w.dump());
}
