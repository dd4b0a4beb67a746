//! TLS everywhere warden connects, against servers that speak nothing
//! else: a PostgreSQL 15 with `ssl = on` whose `pg_hba.conf` has only
//! `hostssl` lines, and a Redis 7 listening only on a TLS port, both
//! presenting a certificate signed by a CA the test makes with openssl.
//! The data kinds, the `postgres` and `redis` probes, `check --connect` and
//! singleton leadership all get through; a certificate from another CA
//! and a plain connection are refused in words an operator can act on.
//!
//! What the test itself reads and writes goes through `psql` and
//! `redis-cli`, verifying the servers' certificate as well.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value as Json;
use support::daemon::Warden;
use support::db::wait_until;
use support::servers::{PG_BIN, Postgres, Redis, TlsFiles};

/// The TLS-only servers of one test and the certificates they present.
struct Servers {
    pg: Postgres,
    redis: Redis,
    tls: TlsFiles,
}

fn servers() -> Servers {
    let tls = TlsFiles::make();
    Servers {
        pg: Postgres::start_tls(&tls),
        redis: Redis::start_tls(&tls),
        tls,
    }
}

impl Servers {
    /// A DSN of the TLS PostgreSQL with these query parameters.
    fn pg_url(&self, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{params}",
            self.pg.port
        )
    }

    /// The DSN that verifies everything, trusting the test's CA.
    fn pg_verified(&self) -> String {
        self.pg_url(&format!(
            "sslmode=verify-full&sslrootcert={}",
            self.tls.ca.display()
        ))
    }

    /// Runs SQL through `psql` over verified TLS; its rows as text.
    fn psql(&self, q: &str) -> String {
        let out = Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.pg_verified())
            .args(["-c", q])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -c {q:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a command through `redis-cli --tls`, verifying the server.
    fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.tls.ca)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.redis.port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn ca(&self) -> String {
        self.tls.ca.display().to_string()
    }

    fn other_ca(&self) -> String {
        self.tls.other_ca.display().to_string()
    }
}

/// Writes `services.toml` into a fresh directory and runs `warden check
/// --connect --format json` there.
fn check_connect(registry: &str) -> (Output, Json) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("services.toml");
    std::fs::write(&file, registry).expect("write services.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("check")
        .arg("-c")
        .arg(&file)
        .args(["--connect", "--format", "json"])
        .current_dir(dir.path())
        .env_remove("WARDEN_CONFIG")
        .env_remove("WARDEN_PROFILE")
        .output()
        .expect("run warden check");
    let j = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, j)
}

/// The `--connect` entry of the service `name`.
fn entry<'a>(j: &'a Json, name: &str) -> &'a Json {
    j["connect"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|e| {
                e["services"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n == name))
            })
        })
        .unwrap_or_else(|| panic!("no endpoint of {name}: {j:#}"))
}

/// The error `--connect` reported for the service `name`.
fn error_of(j: &Json, name: &str) -> String {
    let e = entry(j, name);
    assert_eq!(e["ok"], false, "{name} should have been refused: {e:#}");
    e["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_relay_delivers_through_tls_postgres_to_tls_redis() {
    let s = servers();
    let mut w = Warden::start(&format!(
        r#"
[api]
enabled = false

[services.relay]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
tls_ca = "{ca}"
stream_prefix = "events."
"#,
        pg = s.pg_url("sslmode=verify-full"),
        redis = s.redis.url,
        ca = s.ca(),
    ));
    w.wait_event("relay", "ready");
    s.psql(
        "INSERT INTO message_outbox (topic, payload, dedupe_key) \
         VALUES ('orders', '{\"order\": 42}', 'order-42')",
    );
    wait_until("the row in the stream", Duration::from_secs(20), || {
        s.redis_cli(&["XLEN", "events.orders"]) == "1"
    });
    let entry = s.redis_cli(&["XRANGE", "events.orders", "-", "+"]);
    assert!(entry.contains(r#"{"order": 42}"#), "{entry}");
    assert!(entry.contains("order-42"), "{entry}");
    wait_until("the row marked sent", Duration::from_secs(20), || {
        s.psql("SELECT status FROM message_outbox WHERE dedupe_key = 'order-42'") == "sent"
    });
    // Every session of the relay is encrypted (the server allows no other).
    assert_eq!(
        s.psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE backend_type = 'client backend' AND NOT ssl"
        ),
        "0"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn memory_sync_works_over_tls_postgres() {
    let s = servers();
    let (port, seen) = support::http::ok_backend();
    let mut w = Warden::start(&format!(
        r#"
[api]
enabled = false

[services.memory]
kind = "memory-sync"
postgres = "{pg}"
endpoint = "http://127.0.0.1:{port}/v1/memories"
"#,
        pg = s.pg_verified(),
    ));
    w.wait_event("memory", "ready");
    s.psql(
        "INSERT INTO memory_write_outbox (tenant, session_id, idempotency_key, payload) \
         VALUES ('t1', 's1', 'key-1', '{\"text\": \"I prefer tea\"}')",
    );
    wait_until("the write sent", Duration::from_secs(20), || {
        s.psql("SELECT status FROM memory_write_outbox WHERE idempotency_key = 'key-1'") == "sent"
    });
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        s.psql("SELECT dedupe_key FROM message_outbox WHERE topic = 'memory.wal'"),
        "memory:key-1",
        "the WAL event is in the outbox"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn check_connect_reaches_tls_postgres_and_tls_redis() {
    let s = servers();
    let (out, j) = check_connect(&format!(
        r#"
[api]
enabled = false

[services.db]
kind = "external"
ready = {{ postgres = "{pg}" }}

[services.cache]
kind = "external"
ready = {{ redis = "{redis}", tls_ca = "{ca}" }}

[services.relay]
kind = "outbox-relay"
depends_on = ["db", "cache"]
postgres = "{pg_ca}"
redis = "rediss://localhost:{redis_port}"
tls_ca = "{ca}"
"#,
        pg = s.pg_verified(),
        redis = s.redis.url,
        ca = s.ca(),
        pg_ca = s.pg_url("sslmode=verify-full"),
        redis_port = s.redis.port,
    ));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{j:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = j["connect"].as_array().expect("connect entries");
    // db, cache, and the relay's PostgreSQL, table (not made yet: the
    // relay makes it) and Redis.
    assert_eq!(entries.len(), 5, "{j:#}");
    for e in entries {
        assert_eq!(e["ok"], true, "{e:#}");
    }
    assert_eq!(entry(&j, "db")["kind"], "postgres");
    assert_eq!(entry(&j, "cache")["kind"], "redis");
}

#[test]
fn the_postgres_and_redis_probes_pass_over_tls() {
    let s = servers();
    let mut w = Warden::start(&format!(
        r#"
[api]
enabled = false

[services.db]
kind = "external"
ready = {{ postgres = "{pg}" }}

[services.cache]
kind = "external"
ready = {{ redis = "{redis}", tls_ca = "{ca}" }}

[services.app]
kind = "process"
command = ["sleep", "707070"]
depends_on = ["db", "cache"]
"#,
        pg = s.pg_verified(),
        redis = s.redis.url,
        ca = s.ca(),
    ));
    for name in ["db", "cache", "app"] {
        w.wait_event(name, "ready");
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn singletons_take_their_lock_over_tls() {
    let s = servers();
    let mut w = Warden::start(&format!(
        r#"
[warden]
postgres = "{pg}"

[api]
enabled = false

# Locks in [warden] postgres (sslrootcert in the DSN).
[services.cron]
kind = "process"
command = ["sleep", "717171"]
singleton = true

# Locks in its own database, trusting its tls_ca.
[services.relay]
kind = "outbox-relay"
postgres = "{pg_ca}"
redis = "{redis}"
tls_ca = "{ca}"
singleton = true
"#,
        pg = s.pg_verified(),
        pg_ca = s.pg_url("sslmode=verify-full"),
        redis = s.redis.url,
        ca = s.ca(),
    ));
    for name in ["cron", "relay"] {
        w.wait_event(name, "leader: this instance runs the singleton");
        w.wait_event(name, "ready");
    }
    assert_eq!(
        s.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"),
        "2",
        "both locks are held"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_certificate_from_another_ca_is_refused_in_plain_words() {
    let s = servers();
    let (out, j) = check_connect(&format!(
        r#"
[api]
enabled = false

[services.db]
kind = "external"
ready = {{ postgres = "{pg}" }}

[services.cache]
kind = "external"
ready = {{ redis = "{redis}", tls_ca = "{other}" }}

# require with a root certificate verifies the chain, as in libpq.
[services.relay]
kind = "outbox-relay"
postgres = "{pg_require}"
redis = "{redis}"
"#,
        pg = s.pg_url(&format!("sslmode=verify-full&sslrootcert={}", s.other_ca())),
        redis = s.redis.url,
        other = s.other_ca(),
        pg_require = s.pg_url(&format!("sslmode=require&sslrootcert={}", s.other_ca())),
    ));
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    let pg_words = "cannot connect to PostgreSQL: the server's TLS certificate is not trusted: \
                    unknown issuer (set tls_ca or sslrootcert to the CA that signed it)";
    let redis_words = "cannot connect to Redis: the server's TLS certificate is not trusted: \
                       unknown issuer (set tls_ca to the CA that signed it)";
    assert_eq!(error_of(&j, "db"), pg_words);
    assert_eq!(error_of(&j, "cache"), redis_words);
    // The relay's endpoints: its PostgreSQL (require + another CA), the
    // check of its table there (the same connection, refused the same
    // way), and its Redis without tls_ca (the system's roots do not know
    // the CA).
    let relay: Vec<String> = j["connect"]
        .as_array()
        .expect("connect entries")
        .iter()
        .filter(|e| {
            e["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == "relay"))
        })
        .map(|e| e["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        relay,
        vec![
            pg_words.to_string(),
            pg_words.to_string(),
            redis_words.to_string()
        ]
    );
}

#[test]
fn verify_ca_checks_the_chain_and_verify_full_the_host_name_too() {
    let s = servers();
    // `host` is the name TLS checks, `hostaddr` where the connection goes.
    let pg = |mode: &str| {
        format!(
            "host=not-this-server.test hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode} sslrootcert={}",
            s.pg.port,
            s.ca()
        )
    };
    let (_, j) = check_connect(&format!(
        r#"
[api]
enabled = false

[services.full]
kind = "external"
ready = {{ postgres = "{full}" }}

[services.chain]
kind = "external"
ready = {{ postgres = "{chain}" }}

[services.encrypted]
kind = "external"
ready = {{ postgres = "postgres://postgres@127.0.0.1:{pg_port}/postgres?sslmode=require" }}

[services.by-name]
kind = "external"
ready = {{ redis = "rediss://localhost:{redis_port}", tls_ca = "{ca}" }}

[services.unverified]
kind = "external"
ready = {{ redis = "rediss://127.0.0.1:{redis_port}#insecure" }}

[services.unknown-ca]
kind = "external"
ready = {{ redis = "rediss://127.0.0.1:{redis_port}" }}
"#,
        full = pg("verify-full"),
        chain = pg("verify-ca"),
        pg_port = s.pg.port,
        redis_port = s.redis.port,
        ca = s.ca(),
    ));
    assert_eq!(
        error_of(&j, "full"),
        "cannot connect to PostgreSQL: the server's TLS certificate is not valid for \
         not-this-server.test (it is for 127.0.0.1, localhost; connect by one of those names, \
         or verify the chain only: sslmode=verify-ca)"
    );
    for ok in ["chain", "encrypted", "by-name", "unverified"] {
        assert_eq!(entry(&j, ok)["ok"], true, "{:#}", entry(&j, ok));
    }
    assert!(
        error_of(&j, "unknown-ca").contains("not trusted: unknown issuer"),
        "{j:#}"
    );
}

#[test]
fn a_plain_connection_is_refused_by_a_tls_only_server_in_clear_words() {
    let s = servers();
    let (_, j) = check_connect(&format!(
        r#"
[api]
enabled = false

[services.db]
kind = "external"
ready = {{ postgres = "{pg}" }}

[services.cache]
kind = "external"
ready = {{ redis = "redis://127.0.0.1:{redis_port}" }}
"#,
        pg = s.pg_url("sslmode=disable"),
        redis_port = s.redis.port,
    ));
    assert_eq!(
        error_of(&j, "db"),
        "cannot connect to PostgreSQL: no pg_hba.conf entry for host \"127.0.0.1\", user \
         \"postgres\", database \"postgres\", no encryption (the server accepts this connection \
         only over TLS: set sslmode=require or verify-full)"
    );
    // A plain Redis client on a TLS port gets no answer it can read.
    assert!(!error_of(&j, "cache").is_empty(), "{j:#}");
}
