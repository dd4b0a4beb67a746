//! HTTPS where warden speaks HTTP: memory-sync's endpoint and the `http`
//! probe (so `check --connect`), against a test backend (Python's
//! `http.server` under `ssl`) presenting a certificate signed by a CA the
//! test makes with openssl:
//! - memory-sync delivers over verified TLS, trusting its `tls_ca`, and
//!   reuses its connections (the backend counts handshakes and requests);
//! - a certificate from another CA is refused in plain words, and costs
//!   the rows nothing;
//! - `check --connect` reaches the endpoint with the service's CA, and the
//!   `http` probe trusts the system's roots (`SSL_CERT_FILE`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::daemon::Warden;
use support::db::{sql, wait_until};
use support::servers::{Postgres, TlsFiles, free_port};

/// An HTTPS backend answering 200 (`{}`) to every request, over
/// keep-alive HTTP/1.1; after each request it writes
/// `<connections> <requests>` to its stats file.
struct Backend {
    port: u16,
    stats: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

const SERVER: &str = r#"
import http.server, ssl, sys, threading
port, cert, key, stats = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
lock = threading.Lock()
counts = [0, 0]
def record(i):
    with lock:
        counts[i] += 1
        with open(stats + ".tmp", "w") as f:
            f.write("%d %d" % tuple(counts))
        import os
        os.replace(stats + ".tmp", stats)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        record(0)
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        # Counted before the answer: once warden has it, the count is in.
        record(1)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    do_POST = answer
    do_GET = answer
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

impl Backend {
    fn start(tls: &TlsFiles) -> Backend {
        let dir = tempfile::tempdir().expect("temporary directory");
        let stats = dir.path().join("stats");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", SERVER, &port.to_string()])
            .arg(&tls.cert)
            .arg(&tls.key)
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 runs the test's HTTPS backend: {e}"));
        wait_until("the HTTPS backend", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Backend {
            port,
            stats,
            child,
            _dir: dir,
        }
    }

    /// (TLS connections accepted, requests answered).
    fn counts(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        let mut it = text.split(' ').map(|n| n.parse().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn memory_sync(pg: &Postgres, port: u16, ca: &Path) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{api}"

[services.memory]
kind = "memory-sync"
postgres = "{pg}"
endpoint = "https://localhost:{port}/v1/memories"
tls_ca = "{ca}"
max_retries = 1
"#,
        api = free_port(),
        pg = pg.dsn,
        ca = ca.display(),
    )
}

fn status_count(pg: &Postgres, status: &str) -> i64 {
    sql(
        &pg.dsn,
        &format!("SELECT count(*) FROM memory_write_outbox WHERE status = '{status}'"),
    )[0]
    .get(0)
}

#[test]
fn memory_sync_delivers_over_https_and_reuses_its_connections() {
    let tls = TlsFiles::make();
    let backend = Backend::start(&tls);
    let pg = Postgres::start();
    let mut w = Warden::start(&memory_sync(&pg, backend.port, &tls.ca));
    w.wait_event("memory", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (session_id, idempotency_key, payload)
         SELECT 's' || n, 'key-' || n, jsonb_build_object('n', n) FROM generate_series(1, 300) n",
    );
    wait_until("300 writes sent", Duration::from_secs(60), || {
        status_count(&pg, "sent") == 300
    });
    let (connections, requests) = backend.counts();
    assert_eq!(requests, 300, "one POST per row");
    // A handful of kept-alive connections (in_flight is 8) serve every
    // request; a connection per request would be 300 handshakes.
    assert!(
        connections <= 30,
        "{connections} TLS connections for {requests} requests"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_backend_certificate_from_another_ca_is_refused_in_plain_words() {
    let tls = TlsFiles::make();
    let backend = Backend::start(&tls);
    let pg = Postgres::start();
    let mut w = Warden::start(&memory_sync(&pg, backend.port, &tls.other_ca));
    w.wait_event("memory", "ready");
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (session_id, idempotency_key, payload) VALUES ('s', 'k', '{}')",
    );
    let log = w.wait_log("the refused handshake", |l| {
        l["message"] == "memory backend unreachable"
    });
    let error = log["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the server's TLS certificate is not trusted: unknown issuer (set tls_ca"),
        "{error}"
    );
    assert_eq!(backend.counts().1, 0, "no request went out");
    // The row was never seen by the backend: back in the queue, uncharged.
    let retries: i32 = sql(
        &pg.dsn,
        "SELECT retry_count FROM memory_write_outbox WHERE idempotency_key = 'k'",
    )[0]
    .get(0);
    assert_eq!(retries, 0);
    assert_eq!(status_count(&pg, "failed"), 0);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

fn check_connect(registry: &str, env: &[(&str, &Path)]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("services.toml");
    std::fs::write(&file, registry).expect("write services.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.arg("check")
        .arg("-c")
        .arg(&file)
        .args(["--connect", "--format", "json"])
        .current_dir(dir.path())
        .env_remove("WARDEN_CONFIG")
        .env_remove("WARDEN_PROFILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run warden check");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The `--connect` entry of kind `kind`.
fn connect_entry<'a>(j: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    j["connect"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["kind"] == kind))
        .unwrap_or_else(|| panic!("no {kind} endpoint: {j:#}"))
}

#[test]
fn check_connect_and_the_http_probe_speak_https() {
    let tls = TlsFiles::make();
    let backend = Backend::start(&tls);
    let probe = |port: u16| {
        format!(
            r#"
[api]
enabled = false

[services.web]
kind = "external"
ready = {{ http = "https://localhost:{port}/healthz" }}
"#
        )
    };
    // The probe trusts the system's roots: SSL_CERT_FILE names them.
    let j = check_connect(&probe(backend.port), &[("SSL_CERT_FILE", &tls.ca)]);
    assert_eq!(connect_entry(&j, "http")["ok"], true, "{j:#}");
    let j = check_connect(&probe(backend.port), &[("SSL_CERT_FILE", &tls.other_ca)]);
    let e = connect_entry(&j, "http");
    assert_eq!(e["ok"], false, "{j:#}");
    let error = e["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the server's TLS certificate is not trusted: unknown issuer"),
        "{error}"
    );
    // memory-sync's endpoint is reached with the service's tls_ca.
    let pg = Postgres::start();
    let j = check_connect(&memory_sync(&pg, backend.port, &tls.ca), &[]);
    assert_eq!(connect_entry(&j, "http")["ok"], true, "{j:#}");
    assert_eq!(connect_entry(&j, "postgres")["ok"], true, "{j:#}");
}
