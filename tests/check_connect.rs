//! `warden check --connect` against real PostgreSQL and Redis servers: every
//! endpoint is probed once, a dead one makes the registry invalid (exit 1),
//! secrets never reach the output, and without `--connect` nothing touches
//! the network.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value as Json;
use support::servers::{Postgres, Redis, free_port};
use tempfile::TempDir;

const PASSWORD: &str = "s3cretpw";

/// The registry of the brief: an external PostgreSQL (with a password, which
/// trust authentication ignores), an external Redis and a relay using both.
fn registry(pg_port: u16, redis_port: u16) -> String {
    format!(
        r#"[api]
enabled = false

[services.db]
kind = "external"
ready = {{ postgres = "postgres://postgres:{PASSWORD}@127.0.0.1:{pg_port}/postgres" }}

[services.cache]
kind = "external"
ready = {{ redis = "redis://127.0.0.1:{redis_port}" }}

[services.relay]
kind = "outbox-relay"
depends_on = ["db", "cache"]
postgres = "postgres://postgres@127.0.0.1:{pg_port}/postgres"
redis = "redis://127.0.0.1:{redis_port}"
"#
    )
}

/// An external service whose TCP check points at `port`.
fn gone(port: u16) -> String {
    format!(
        r#"
[services.gone]
kind = "external"
ready = {{ tcp = "127.0.0.1:{port}" }}
"#
    )
}

/// Writes `services.toml` into a fresh directory and runs `warden check`
/// there with `args`.
fn check(registry: &str, args: &[&str]) -> (TempDir, Output) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("services.toml");
    std::fs::write(&file, registry).expect("write services.toml");
    let out = run(dir.path(), &file, args);
    (dir, out)
}

fn run(dir: &Path, file: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("check")
        .arg("-c")
        .arg(file)
        .args(args)
        .current_dir(dir)
        .env_remove("WARDEN_CONFIG")
        .env_remove("WARDEN_PROFILE")
        .env_remove("WARDEN_API_TOKEN")
        .output()
        .expect("run warden")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Json {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

fn connect(j: &Json) -> &Vec<Json> {
    j["connect"]
        .as_array()
        .unwrap_or_else(|| panic!("`connect` is not an array: {j:#}"))
}

/// The `connect` entries whose `services` include `name`.
fn entries_of<'a>(j: &'a Json, name: &str) -> Vec<&'a Json> {
    connect(j)
        .iter()
        .filter(|e| {
            e["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == name))
        })
        .collect()
}

#[test]
fn all_endpoints_reachable() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (_dir, out) = check(
        &registry(pg.port, redis.port),
        &["--connect", "--format", "json", "--resolved"],
    );
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{o}\nstderr:\n{e}");
    assert!(!o.contains(PASSWORD), "the password leaked to stdout:\n{o}");
    assert!(!e.contains(PASSWORD), "the password leaked to stderr:\n{e}");

    let j = json(&out);
    assert_eq!(j["valid"], true, "{j:#}");
    for key in [
        "version", "valid", "file", "profile", "errors", "warnings", "plan", "disabled",
        "services", "connect",
    ] {
        assert!(j.get(key).is_some(), "no `{key}` in {j:#}");
    }
    let entries = connect(&j);
    assert!(!entries.is_empty(), "{j:#}");
    for entry in entries {
        assert_eq!(entry["ok"], true, "{entry:#}");
        assert!(entry["error"].is_null(), "{entry:#}");
        assert!(entry["millis"].is_u64(), "{entry:#}");
        assert!(entry["target"].is_string(), "{entry:#}");
    }
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"postgres"), "kinds: {kinds:?}");
    assert!(kinds.contains(&"redis"), "kinds: {kinds:?}");
    for name in ["db", "cache", "relay"] {
        assert!(
            !entries_of(&j, name).is_empty(),
            "no endpoint of {name}: {j:#}"
        );
    }
    // The resolved settings are there, with the password masked.
    assert_eq!(
        j["services"]["db"]["ready"]["postgres"],
        format!("postgres://postgres:***@127.0.0.1:{}/postgres", pg.port),
        "{j:#}"
    );
    // The password is redacted, not the whole target.
    let db = entries_of(&j, "db");
    let target = db[0]["target"].as_str().unwrap_or_default();
    assert!(
        target.contains(&format!("127.0.0.1:{}", pg.port)),
        "target of db: {target}"
    );
}

#[test]
fn dead_endpoint_fails_the_check() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let dead = support::servers::closed_port();
    let reg = registry(pg.port, redis.port) + &gone(dead.port);
    let (_dir, out) = check(&reg, &["--connect", "--format", "json"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "stdout:\n{o}\nstderr:\n{e}");
    assert!(!o.contains(PASSWORD), "the password leaked to stdout:\n{o}");
    assert!(!e.contains(PASSWORD), "the password leaked to stderr:\n{e}");

    let j = json(&out);
    assert_eq!(j["valid"], false, "{j:#}");
    let gone = entries_of(&j, "gone");
    assert_eq!(gone.len(), 1, "{j:#}");
    assert_eq!(gone[0]["ok"], false, "{:#}", gone[0]);
    assert_eq!(gone[0]["kind"], "tcp", "{:#}", gone[0]);
    let error = gone[0]["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "no error for a dead port: {:#}", gone[0]);
    for entry in connect(&j) {
        if !gone.contains(&entry) {
            assert_eq!(entry["ok"], true, "{entry:#}");
        }
    }
}

#[test]
fn without_connect_nothing_is_probed() {
    // Every endpoint is dead: a probe of any would fail.
    let (pg, redis, dead) = (free_port(), free_port(), free_port());
    let reg = registry(pg, redis) + &gone(dead);
    let (_dir, out) = check(&reg, &["--format", "json"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{o}\nstderr:\n{e}");
    assert!(!o.contains(PASSWORD), "the password leaked to stdout:\n{o}");
    let j = json(&out);
    assert_eq!(j["valid"], true, "{j:#}");
    assert!(j.get("connect").is_some_and(Json::is_null), "{j:#}");
}

#[test]
fn text_format_lists_endpoints() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (_dir, out) = check(&registry(pg.port, redis.port), &["--connect"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{o}\nstderr:\n{e}");
    assert!(o.contains("endpoints (--connect):"), "stdout:\n{o}");
    assert!(
        o.lines().any(|l| l.contains("ok in")),
        "no `ok in` line:\n{o}"
    );
    assert!(!o.contains(PASSWORD), "the password leaked to stdout:\n{o}");
    assert!(!e.contains(PASSWORD), "the password leaked to stderr:\n{e}");
}

/// `check --connect` looks at the tables the data services adopt: an
/// outbox whose `id` is an `integer` (serial), which every statement binds
/// as a `bigint`, is reported naming the column, what it needs and the fix
/// (it passed, and the relay failed at its first claim once it was ready);
/// a missing table is fine when the service makes it (`create_schema`).
#[test]
fn a_table_warden_cannot_use_fails_the_check_naming_the_column() {
    let pg = Postgres::start();
    let redis = Redis::start();
    support::db::sql(
        &pg.dsn,
        "CREATE TABLE message_outbox (
            id serial PRIMARY KEY, topic text NOT NULL, partition_key text,
            payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', dedupe_key text,
            status text NOT NULL DEFAULT 'pending', retry_count int NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(), claimed_until timestamptz,
            last_error text, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)",
    );
    let reg = registry(pg.port, redis.port)
        + &format!(
            r#"
[services.sync]
kind = "memory-sync"
postgres = "postgres://postgres@127.0.0.1:{}/postgres"
endpoint = "http://127.0.0.1:9/v1/memories"
"#,
            pg.port
        );
    let (_dir, out) = check(&reg, &["--connect", "--format", "json"]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "stdout:\n{o}\nstderr:\n{e}");
    let j = json(&out);
    let relay = entries_of(&j, "relay");
    let table = relay
        .iter()
        .find(|e| e["kind"] == "postgres-table")
        .unwrap_or_else(|| panic!("no table check for relay: {j:#}"));
    assert_eq!(table["ok"], false, "{table:#}");
    let error = table["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("column id is integer; warden needs bigint")
            && error.contains("ALTER TABLE \"message_outbox\" ALTER COLUMN id TYPE bigint"),
        "{error}"
    );
    // memory-sync's queue does not exist yet: it makes it at its start.
    let sync = entries_of(&j, "sync");
    let queue = sync
        .iter()
        .find(|e| {
            e["kind"] == "postgres-table"
                && e["target"]
                    .as_str()
                    .is_some_and(|t| t.contains("memory_write_outbox"))
        })
        .unwrap_or_else(|| panic!("no table check for sync: {j:#}"));
    assert_eq!(queue["ok"], true, "{queue:#}");
}
