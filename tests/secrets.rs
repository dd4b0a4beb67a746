//! No secret leaves warden: a registry whose passwords and API token hold
//! every awkward character (`#?/@:%'" \=&;` and non-ASCII), written raw,
//! percent-encoded and in libpq's key-value form, goes through `warden
//! check` (text, JSON, `--resolved`, `--connect`), a `warden run` whose
//! data services and probes fail against closed ports (the path where the
//! drivers' errors are shown) and a real PostgreSQL 15 (so that the relay
//! reaches Redis and memory-sync its backend), and every route of the
//! API. No secret, nor its percent-encoded form, nor any piece of one,
//! appears anywhere.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::db::sql;
use support::http::{EventStream, http, wait_http};
use support::servers::{Postgres, free_port};

/// What joins the pieces of every secret: each awkward character once.
const SEPARATORS: &[&str] = &[
    "#", "?", "/", "@", ":", "%", "'", "\"", " ", "\\", "=", "&", ";", "é", "密", "",
];

/// A secret: pieces `<tag>a`, `<tag>b`, ... (found nowhere else) joined by
/// every character of [`SEPARATORS`]. A leak of any piece of it shows as
/// one of its pieces.
struct Secret {
    value: String,
    pieces: Vec<String>,
}

impl Secret {
    fn new(tag: &str) -> Secret {
        let pieces: Vec<String> = (0..SEPARATORS.len())
            .map(|i| format!("{tag}{}", (b'a' + i as u8) as char))
            .collect();
        let value = pieces
            .iter()
            .zip(SEPARATORS)
            .map(|(p, s)| format!("{p}{s}"))
            .collect();
        Secret { value, pieces }
    }

    /// The secret percent-encoded (every byte but the unreserved ones).
    fn encoded(&self) -> String {
        percent_encode(&self.value)
    }

    /// The secret as a quoted libpq value: `\` and `'` escaped.
    fn libpq_quoted(&self) -> String {
        self.value.replace('\\', "\\\\").replace('\'', "\\'")
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A TOML basic string's content.
fn toml(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Every output collected, by where it came from.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn add_output(&mut self, what: &str, out: &Output) {
        self.add(
            format!("{what} (stdout)"),
            String::from_utf8_lossy(&out.stdout),
        );
        self.add(
            format!("{what} (stderr)"),
            String::from_utf8_lossy(&out.stderr),
        );
    }

    /// Fails naming every output that holds a secret, its encoded form or
    /// a piece of it, with the line it is on.
    fn assert_no_secret(&self, secrets: &[&Secret]) {
        let mut leaks = Vec::new();
        for (what, text) in &self.0 {
            for s in secrets {
                let found = [s.value.clone(), s.encoded()]
                    .into_iter()
                    .chain(s.pieces.iter().cloned())
                    .find(|needle| text.contains(needle.as_str()));
                if let Some(needle) = found {
                    let line = text
                        .lines()
                        .find(|l| l.contains(needle.as_str()))
                        .unwrap_or_default();
                    leaks.push(format!("{what}: {needle:?} in: {line}"));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

struct Secrets {
    warden_pg: Secret,
    relay_pg: Secret,
    relay_redis: Secret,
    raw_pg: Secret,
    raw_redis: Secret,
    bad_redis: Secret,
    relay2_pg: Secret,
    memory_pg: Secret,
    probe_pg: Secret,
    probe_redis: Secret,
    probe_redis_encoded: Secret,
    exec_arg: Secret,
    env_value: Secret,
    unquoted_pg: Secret,
    web_pw: Secret,
    token: Secret,
}

impl Secrets {
    fn new() -> Secrets {
        Secrets {
            warden_pg: Secret::new("Wq1"),
            relay_pg: Secret::new("Wq2"),
            relay_redis: Secret::new("Wq3"),
            raw_pg: Secret::new("Wq4"),
            raw_redis: Secret::new("Wq5"),
            bad_redis: Secret::new("Wq6"),
            relay2_pg: Secret::new("Wq7"),
            memory_pg: Secret::new("Wq8"),
            probe_pg: Secret::new("Wq9"),
            probe_redis: Secret::new("Vk1"),
            probe_redis_encoded: Secret::new("Vk2"),
            exec_arg: Secret::new("Vk3"),
            env_value: Secret::new("Vk4"),
            unquoted_pg: Secret::new("Vk6"),
            web_pw: Secret::new("Vk7"),
            token: Secret::new("Vk5"),
        }
    }

    fn all(&self) -> Vec<&Secret> {
        vec![
            &self.warden_pg,
            &self.relay_pg,
            &self.relay_redis,
            &self.raw_pg,
            &self.raw_redis,
            &self.bad_redis,
            &self.relay2_pg,
            &self.memory_pg,
            &self.probe_pg,
            &self.probe_redis,
            &self.probe_redis_encoded,
            &self.exec_arg,
            &self.env_value,
            &self.unquoted_pg,
            &self.web_pw,
            &self.token,
        ]
    }
}

/// The registry: secrets in every place a DSN or a token goes. `pg` is a
/// real PostgreSQL (trust authentication: any password is accepted);
/// `closed` a port nothing listens on.
///
/// `raw`: passwords written with their raw characters in URLs (and a
/// key-value password with a space, unquoted), which the drivers cannot
/// read and `check` refuses (its errors are scanned too); otherwise
/// percent-encoded (and quoted), as they must be written to run.
fn registry(s: &Secrets, api: u16, pg: u16, closed: u16, raw: bool) -> String {
    let url = |x: &Secret| {
        if raw { toml(&x.value) } else { x.encoded() }
    };
    let unquoted = if raw {
        toml(&s.unquoted_pg.value)
    } else {
        format!("'{}'", toml(&s.unquoted_pg.libpq_quoted()))
    };
    format!(
        r#"[warden]
postgres = "postgres://warden:{warden_pg}@127.0.0.1:{closed}/coord"

[api]
listen = "127.0.0.1:{api}"
token = "{token}"

# Key-value form, a quoted password with spaces and escaped quotes; Redis
# percent-encoded. PostgreSQL is real: the relay gets to Redis.
[services.relay]
kind = "outbox-relay"
postgres = "host=127.0.0.1 port={pg} user=postgres password = '{relay_pg}' dbname=postgres"
redis = "redis://:{relay_redis}@127.0.0.1:{closed}/0"

# Raw characters in URLs, nothing listening.
[services.relay-raw]
kind = "outbox-relay"
table = "raw_outbox"
postgres = "postgres://relay:{raw_pg}@127.0.0.1:{closed}/app"
redis = "redis://:{raw_redis}@127.0.0.1:{closed}/0"
restart = {{ backoff = {{ initial = "200ms", max = "1s" }}, max_restarts = 1000 }}

# A real PostgreSQL, a Redis URL its client cannot read.
[services.relay-badredis]
kind = "outbox-relay"
table = "bad_outbox"
postgres = "postgres://postgres:{relay2_pg}@127.0.0.1:{pg}/postgres"
redis = "redis://:{bad_redis}@127.0.0.1:{closed}/0"
restart = {{ backoff = {{ initial = "200ms", max = "1s" }}, max_restarts = 1000 }}

# A key-value password with a space, not quoted: the driver cannot read
# it, and its error quotes a piece of it.
[services.relay-unquoted]
kind = "outbox-relay"
table = "unquoted_outbox"
postgres = "host=127.0.0.1 port={closed} user=relay password={unquoted_pg} dbname=app"
redis = "redis://127.0.0.1:{closed}/0"
restart = {{ backoff = {{ initial = "200ms", max = "1s" }}, max_restarts = 1000 }}

[services.memory]
kind = "memory-sync"
postgres = "postgres://postgres:{memory_pg}@127.0.0.1:{pg}/postgres"
endpoint = "http://127.0.0.1:{closed}/v1/memories"
timeout = "200ms"

[services.db]
kind = "external"
ready = {{ postgres = "postgres://probe:{probe_pg}@127.0.0.1:{closed}/db", interval = "100ms" }}
start_timeout = "2s"

[services.cache]
kind = "external"
ready = {{ redis = "redis://:{probe_redis}@127.0.0.1:{closed}", interval = "100ms" }}
start_timeout = "2s"

[services.cache-encoded]
kind = "external"
ready = {{ redis = "redis://:{probe_redis_encoded}@127.0.0.1:{closed}", interval = "100ms" }}
start_timeout = "2s"

[services.web]
kind = "external"
ready = {{ http = "http://web:{web_pw}@127.0.0.1:{closed}/healthz", interval = "100ms" }}
start_timeout = "2s"

[services.tool]
kind = "external"
ready = {{ exec = ["sh", "-c", "exit 1", "sh", "postgres://tool:{exec_arg}@127.0.0.1:{closed}/db"], interval = "100ms" }}
start_timeout = "2s"

# A singleton takes its lock in [warden] postgres.
[services.job]
kind = "process"
command = ["sleep", "60"]
env = {{ DATABASE_URL = "postgres://job:{env_value}@127.0.0.1:{closed}/db" }}
singleton = true
"#,
        warden_pg = url(&s.warden_pg),
        token = toml(&s.token.value),
        relay_pg = toml(&s.relay_pg.libpq_quoted()),
        relay_redis = s.relay_redis.encoded(),
        raw_pg = url(&s.raw_pg),
        raw_redis = url(&s.raw_redis),
        relay2_pg = s.relay2_pg.encoded(),
        bad_redis = url(&s.bad_redis),
        memory_pg = s.memory_pg.encoded(),
        probe_pg = url(&s.probe_pg),
        probe_redis = url(&s.probe_redis),
        probe_redis_encoded = s.probe_redis_encoded.encoded(),
        exec_arg = toml(&s.exec_arg.value),
        env_value = toml(&s.env_value.value),
        unquoted_pg = unquoted,
        web_pw = url(&s.web_pw),
    )
}

fn warden(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warden"));
    c.args(args)
        .current_dir(dir)
        .env_remove("WARDEN_CONFIG")
        .env_remove("WARDEN_PROFILE")
        .env_remove("WARDEN_API_TOKEN")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    c
}

/// `warden run`, its stdout and stderr read as they come.
struct Run {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Run {
    fn start(dir: &Path) -> Run {
        let mut child = warden(dir, &["run", "--log-format", "json"])
            .env("WARDEN_LOG", "warden=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start warden");
        let read = |r: Box<dyn Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut t = sink.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            text
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        Run {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits (20 s at most) for a JSON log line of `service` (its field, or
    /// the span of its run) whose message is `message`.
    fn wait_log(&self, service: &str, message: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.stderr.lock().unwrap().lines().any(|l| {
                serde_json::from_str::<Json>(l).is_ok_and(|v| {
                    (v["service"] == service || v["span"]["service"] == service)
                        && v["message"] == message
                })
            });
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {service}: {message}; log:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it with SIGTERM and waits for its end (20 s at most).
    fn stop(&mut self) {
        support::daemon::signal_pid(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "warden did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The readers see the pipes close.
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(seen: &mut Seen, port: u16, path: &str) -> Vec<u8> {
    let (status, head, body) = http(port, "GET", path, &[], b"");
    assert!(status > 0, "GET {path}: no answer");
    seen.add(
        format!("GET {path}"),
        format!("{head}\n\n{}", String::from_utf8_lossy(&body)),
    );
    body
}

#[test]
fn no_secret_reaches_any_output() {
    let secrets = Secrets::new();
    let pg = Postgres::start();
    let api = free_port();
    let closed_port = support::servers::closed_port();
    let closed = closed_port.port;
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(&secrets, api, pg.port, closed, false);
    std::fs::write(dir.path().join("services.toml"), &reg).unwrap();
    let mut seen = Seen::default();

    // Raw characters in URLs: check refuses them, and says so without
    // showing them.
    let raw_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        raw_dir.path().join("services.toml"),
        registry(&secrets, api, pg.port, closed, true),
    )
    .unwrap();
    for args in [&["check"][..], &["check", "--format", "json", "--resolved"]] {
        let out = warden(raw_dir.path(), args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "raw characters are refused");
        seen.add_output(&format!("raw: {}", args.join(" ")), &out);
    }

    // check, every form.
    for args in [
        &["check"][..],
        &["check", "--resolved"],
        &["check", "--format", "json"],
        &["check", "--format", "json", "--resolved"],
        &["check", "--connect"],
        &["check", "--format", "json", "--resolved", "--connect"],
        &["graph"],
        &["graph", "--format", "json"],
    ] {
        let out = warden(dir.path(), args).output().unwrap();
        seen.add_output(&args.join(" "), &out);
    }
    // The resolved settings are there, masked (not left out).
    let out = warden(dir.path(), &["check", "--format", "json", "--resolved"])
        .output()
        .unwrap();
    let j: Json = serde_json::from_slice(&out.stdout).expect("check --format json");
    assert_eq!(
        j["services"]["relay-raw"]["postgres"],
        format!("postgres://relay:***@127.0.0.1:{closed}/app"),
        "{j:#}"
    );
    assert_eq!(
        j["services"]["relay"]["postgres"],
        format!(
            "host=127.0.0.1 port={} user=postgres password = '***' dbname=postgres",
            pg.port
        ),
    );
    // --connect reached the drivers: the closed ports failed.
    let out = warden(dir.path(), &["check", "--format", "json", "--connect"])
        .output()
        .unwrap();
    let j: Json = serde_json::from_slice(&out.stdout).expect("check --connect");
    let failed = j["connect"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|e| e["ok"] == false).count());
    assert!(failed >= 5, "the closed endpoints failed: {j:#}");

    // A bad registry quoting a line with a secret.
    let bad = reg.replace("[services.job]", "[services.job]\nbogus = 1");
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::write(bad_dir.path().join("services.toml"), bad).unwrap();
    for args in [&["check"][..], &["check", "--format", "json"]] {
        let out = warden(bad_dir.path(), args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "the bogus key is an error");
        seen.add_output(&format!("bad registry: {}", args.join(" ")), &out);
    }

    // warden run: the data services and probes fail, and say why.
    let mut run = Run::start(dir.path());
    wait_http(api, "/livez", 200);
    run.wait_log("relay", "relaying");
    run.wait_log("memory", "syncing");
    sql(
        &pg.dsn,
        "INSERT INTO message_outbox (topic, payload) VALUES ('t', '{}')",
    );
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (payload) VALUES ('{}')",
    );
    run.wait_log("relay", "Redis unavailable; claim released");
    run.wait_log("memory", "memory backend unreachable");
    run.wait_log("relay-raw", "failed");
    run.wait_log("relay-unquoted", "failed");
    run.wait_log("job", "singleton lock lost or unavailable");
    for s in ["db", "cache", "cache-encoded", "tool"] {
        run.wait_log(s, "failed");
    }

    // Every GET route.
    let names = [
        "api",
        "relay",
        "relay-raw",
        "relay-badredis",
        "relay-unquoted",
        "memory",
        "db",
        "cache",
        "cache-encoded",
        "tool",
        "job",
    ];
    for path in [
        "/",
        "/livez",
        "/readyz",
        "/v1/health",
        "/v1/services",
        "/metrics",
        "/openapi.json",
        "/v1/graph",
        "/v1/graph?format=dot",
        "/v1/graph?format=mermaid",
    ] {
        get(&mut seen, api, path);
    }
    let services: Json = serde_json::from_slice(&get(&mut seen, api, "/v1/services")).unwrap();
    let last_error = |name: &str| {
        services["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .map(|s| s["last_error"].to_string() + &s["details"].to_string())
            .unwrap_or_default()
    };
    // The drivers' errors are shown, masked (the scan below checks the
    // masking; these that they are there at all).
    assert!(
        last_error("db").contains("PostgreSQL"),
        "{}",
        last_error("db")
    );
    assert!(
        last_error("relay-raw").contains("PostgreSQL"),
        "{}",
        last_error("relay-raw")
    );
    for name in names {
        get(&mut seen, api, &format!("/v1/services/{name}"));
        get(&mut seen, api, &format!("/v1/services/{name}/logs"));
        get(
            &mut seen,
            api,
            &format!("/v1/services/{name}/logs?tail=1000"),
        );
    }
    // The event stream's snapshot, and a followed log's first lines.
    for path in ["/v1/events", "/v1/services/relay/logs?follow=true"] {
        let events = EventStream::open(api, path);
        let mut text = events.head.clone();
        if path == "/v1/events" {
            let (e, v) = events.next("the snapshot", Duration::from_secs(10));
            text.push_str(&format!("{e}: {v}\n"));
        }
        while let Ok((e, d)) = events.rx.recv_timeout(Duration::from_millis(300)) {
            text.push_str(&format!("{e}: {d}\n"));
        }
        seen.add(format!("GET {path}"), text);
    }
    // An action that reaches the closed database, with the token; and the
    // refusals of a wrong one and of none.
    let bearer = format!("Bearer {}", secrets.token.value);
    for (what, headers) in [
        ("token", vec![("Authorization", bearer.as_str())]),
        ("wrong token", vec![("Authorization", "Bearer nope")]),
        ("no token", vec![]),
    ] {
        let (status, head, body) = http(
            api,
            "POST",
            "/v1/services/relay-raw/actions/replay-failed",
            &headers,
            b"{}",
        );
        if what == "token" {
            assert_eq!(status, 500, "the closed database fails the action");
        }
        seen.add(
            format!("POST replay-failed ({what})"),
            format!("{head}\n\n{}", String::from_utf8_lossy(&body)),
        );
    }
    // The client commands read the same answers.
    for args in [&["status"][..], &["health"], &["logs", "relay"]] {
        let out = warden(dir.path(), args)
            .env("WARDEN_URL", format!("http://127.0.0.1:{api}"))
            .output()
            .unwrap();
        seen.add_output(&args.join(" "), &out);
    }

    run.stop();
    seen.add("run (stdout)", run.stdout.lock().unwrap().clone());
    let log = run.stderr.lock().unwrap().clone();
    assert!(
        log.contains("cannot connect to Redis"),
        "the relay's Redis error is logged:\n{log}"
    );
    seen.add("run (stderr)", log);

    seen.assert_no_secret(&secrets.all());
}
