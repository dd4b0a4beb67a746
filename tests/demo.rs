//! The README's first command runs warden on the root `services.toml`: the
//! data plane it describes must come up (its own PostgreSQL, initialised by
//! a oneshot, and Redis; the memory backend, memory-sync, the relay, the
//! replicator and the producer; the crashing worker and the API), events
//! must flow from `memory_write_outbox` to `memory_replica`, and everything
//! must stop cleanly. Run here on free ports, in a scratch folder that only
//! its owner may enter (mode 0700, as a clone under `/root` is): as root
//! (CI), PostgreSQL runs as `postgres`, who cannot enter it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::daemon::Warden;
use support::db::{sql, wait_until};
use support::http::{get_json, http, wait_http};
use support::servers::free_port;

/// The demo's memory backend (`examples/memory_backend.rs`), built now:
/// the test profile builds no example binary.
fn memory_backend() -> PathBuf {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--example",
            "memory_backend",
            "--message-format",
            "json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build --example memory_backend: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| {
            (v["target"]["name"] == "memory_backend")
                .then(|| v["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
        .expect("cargo names the example's executable")
}

fn nix_is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// Removes PostgreSQL's data folder outside the scratch folder (as root,
/// ./var/pg links there) when the test ends, passed or not.
struct Store(Option<PathBuf>);

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(target) = &self.0 {
            let _ = std::fs::remove_dir_all(target);
        }
    }
}

#[test]
fn the_demo_moves_memory_writes_into_the_replica_and_stops() {
    for (what, path) in [
        ("redis-server", "redis-server"),
        ("PostgreSQL 15", "/usr/lib/postgresql/15/bin/postgres"),
    ] {
        assert!(
            std::process::Command::new(path)
                .arg("--version")
                .output()
                .is_ok(),
            "{what} is missing: run scripts/install-deps --demo"
        );
    }
    let backend = memory_backend();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = std::fs::read_to_string(root.join("services.toml")).unwrap();
    let (api, redis, pg, memory) = (free_port(), free_port(), free_port(), free_port());
    let listen = format!("127.0.0.1:{api}");
    let (redis_port, pg_port, memory_port) =
        (redis.to_string(), pg.to_string(), memory.to_string());
    // Declared before warden, so dropped after it: PostgreSQL has stopped
    // before its folder goes.
    let mut store = Store(None);
    let mut w = Warden::start_private(
        &registry,
        &[
            ("WARDEN_API_LISTEN", &listen),
            ("DEMO_REDIS_PORT", &redis_port),
            ("DEMO_PG_PORT", &pg_port),
            ("DEMO_MEMORY_PORT", &memory_port),
            ("DEMO_MEMORY_BACKEND", backend.to_str().unwrap()),
        ],
    );
    wait_http(api, "/readyz", 200);
    store.0 = std::fs::read_link(w.dir.join("var/pg")).ok();
    w.wait_event("producer", "ready");
    assert!(
        w.dir.join("var/pg/data/PG_VERSION").is_file(),
        "the oneshot initialised ./var/pg/data"
    );
    let link = std::fs::read_link(w.dir.join("var/pg"));
    if nix_is_root() {
        // PostgreSQL's data lives where the postgres user may go.
        let store = link.expect("as root, ./var/pg links to PostgreSQL's own folder");
        assert!(
            store.starts_with("/var/tmp/") && store.to_string_lossy().contains("warden-demo-pg."),
            "{}",
            store.display()
        );
    } else {
        assert!(link.is_err(), "not root: ./var/pg is a folder of its own");
    }
    let dsn = format!("postgres://postgres@127.0.0.1:{pg}/postgres");
    // Memory writes reach the replica: backend, event row, stream, table.
    wait_until("events in memory_replica", Duration::from_secs(60), || {
        sql(&dsn, "SELECT count(*) FROM memory_replica")[0].get::<_, i64>(0) >= 10
    });
    let r = sql(
        &dsn,
        "SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE stream = 'memory.wal')
         FROM memory_replica",
    );
    let (rows, distinct, from_wal): (i64, i64, i64) = (r[0].get(0), r[0].get(1), r[0].get(2));
    assert_eq!(rows, distinct, "each event once");
    assert_eq!(rows, from_wal, "from the stream memory.wal");
    // Each replica row is a memory write the backend took.
    let sent: i64 = sql(
        &dsn,
        "SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'",
    )[0]
    .get(0);
    assert!(sent >= rows, "{sent} writes sent, {rows} events replicated");

    let (status, health) = get_json(api, "/v1/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    for (name, state) in [
        ("api", "ready"),
        ("prepare", "completed"),
        ("postgres-init", "completed"),
        ("postgres", "ready"),
        ("redis", "ready"),
        ("memory-backend", "ready"),
        ("memory-sync", "ready"),
        ("relay", "ready"),
        ("replicator", "ready"),
        ("producer", "ready"),
    ] {
        assert_eq!(health["services"][name]["state"], state, "{name}: {health}");
    }
    assert!(
        ["ready", "starting", "backoff"]
            .contains(&health["services"]["flaky"]["state"].as_str().unwrap()),
        "{health}"
    );
    let (status, _, body) = http(api, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&body);
    for family in [
        r#"warden_service_up{service="postgres"} 1"#,
        "warden_outbox_published_total",
        "warden_replicator_applied_total",
    ] {
        assert!(metrics.contains(family), "{family} in /metrics");
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
    for (what, port) in [
        ("Redis", redis),
        ("PostgreSQL", pg),
        ("the backend", memory),
    ] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{what} stopped with warden"
        );
    }
}
