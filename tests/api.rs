//! The HTTP API over real HTTP against a running warden: every route of
//! this first cut, the auth matrix, bad requests, and readiness flipping
//! during startup and at SIGTERM.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::daemon::{Warden, client};
use support::http::{get_json, http, wait_http};
use support::servers::free_port;

fn registry(port: u16, extra_api: &str) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
max_body = 64
{extra_api}

[services.db]
kind = "process"
command = ["sh", "-c", "sleep 0.6; echo up; echo a line on stderr >&2; exec sleep 707070"]
ready = {{ log = "^up$" }}
critical = true

[services.app]
kind = "process"
command = ["sh", "-c", "trap 'sleep 0.5; exit 0' TERM; sleep 707071 & wait"]
depends_on = ["db"]

[services.broken]
kind = "process"
command = ["sh", "-c", "exit 1"]
restart = {{ policy = "never" }}

# A kind with an action (its stores cannot be reached: it fails, which is
# fine for the routes that check actions and bodies).
[services.janitor]
kind = "outbox-relay"
postgres = "postgres://nobody@127.0.0.1:1/none"
redis = "redis://127.0.0.1:1"
restart = {{ policy = "never" }}
"#
    )
}

#[test]
fn routes_answer_and_readiness_follows_startup_and_shutdown() {
    let port = free_port();
    let mut w = Warden::start(&registry(port, ""));
    // While db is not ready, the API is up but not ready.
    wait_http(port, "/livez", 200);
    let (status, _) = get_json(port, "/readyz");
    assert_eq!(status, 503, "not ready before the critical db");
    let (status, health) = get_json(port, "/v1/health");
    assert_eq!((status, health["status"].as_str()), (503, Some("down")));

    wait_http(port, "/readyz", 200);
    w.wait_event("app", "ready");
    w.wait_event("broken", "failed");
    let (status, health) = get_json(port, "/v1/health");
    assert_eq!(status, 200);
    assert_eq!(
        health["status"], "degraded",
        "a non-critical service failed: {health}"
    );
    let db = &health["services"]["db"];
    assert_eq!(
        (
            db["state"].as_str(),
            db["ready"].as_bool(),
            db["critical"].as_bool()
        ),
        (Some("ready"), Some(true), Some(true))
    );
    assert!(
        db["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{db}"
    );
    assert_eq!(
        health["services"]["broken"]["last_error"],
        "exited with status 1"
    );

    let (status, list) = get_json(port, "/v1/services");
    assert_eq!(status, 200);
    let names: Vec<&str> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["api", "db", "app", "broken", "janitor"]);
    let (status, one) = get_json(port, "/v1/services/db");
    assert_eq!((status, one["name"].as_str()), (200, Some("db")));
    let (status, logs) = get_json(port, "/v1/services/db/logs?tail=5");
    assert_eq!(status, 200);
    let lines: Vec<(&str, &str)> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["stream"].as_str().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    assert!(
        lines.contains(&("stdout", "up")) && lines.contains(&("stderr", "a line on stderr")),
        "{lines:?}"
    );
    let (status, graph) = get_json(port, "/v1/graph");
    assert_eq!(status, 200);
    assert!(
        graph["edges"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"from": "db", "to": "app", "condition": "ready"}))
    );
    let (status, _, dot) = http(port, "GET", "/v1/graph?format=dot", &[], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&dot).starts_with("digraph"));

    // Errors are JSON with the right status.
    let (status, body) = get_json(port, "/nope");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().is_some());
    let (status, body) = get_json(port, "/v1/services/ghost");
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        "no such service: \"ghost\"; known: api, db, app, broken, janitor"
    );
    let (status, head, _) = http(port, "DELETE", "/v1/health", &[], b"");
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
    let (status, _, _) = http(port, "GET", "/v1/services/db/stop", &[], b"");
    assert_eq!(status, 405);

    // Control: stop and start a service (loopback, no token: allowed).
    let (status, _, _) = http(port, "POST", "/v1/services/app/stop", &[], b"");
    assert_eq!(status, 200);
    w.wait_event("app", "stopped");
    let (status, _, body) = http(port, "POST", "/v1/services/app/stop", &[], b"");
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "app is stopped; it is not running");
    let (status, _, _) = http(port, "POST", "/v1/services/app/start", &[], b"");
    assert_eq!(status, 200);
    wait_http(port, "/v1/health", 200);
    // Each refusal has its own status: an unknown service is 404 for every
    // control, a conflict of states 409 (above), a bad body 400 and a
    // failed action 500 (below).
    for op in ["start", "stop", "restart"] {
        let (status, _, body) = http(port, "POST", &format!("/v1/services/ghost/{op}"), &[], b"");
        assert_eq!(status, 404, "{op}: {}", String::from_utf8_lossy(&body));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["error"],
            "no such service: \"ghost\"; known: api, db, app, broken, janitor"
        );
    }
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/janitor/actions/replay-failed",
        &[],
        b"{}",
    );
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    // A body that does not fit the action is the caller's mistake (400),
    // found before any store is touched: a misspelt key must not replay
    // every failed row.
    for (sent, words) in [
        (
            &br#"{"id": [1]}"#[..],
            "unknown argument \"id\"; replay-failed takes only ids",
        ),
        (
            &b"[12, 13]"[..],
            "the body must be a JSON object: {} for every failed row, or {\"ids\": [..]}",
        ),
        (&br#"{"ids": "x"}"#[..], "ids must be a list of row ids"),
    ] {
        let (status, _, body) = http(
            port,
            "POST",
            "/v1/services/janitor/actions/replay-failed",
            &[],
            sent,
        );
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], words);
    }

    // Actions: unknown ones are 404, malformed JSON 400, big bodies 413.
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/db/actions/replay-failed",
        &[],
        b"{}",
    );
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("kind process has no action"));

    // SIGTERM: readiness goes 503 at once, while app takes 0.5 s to stop
    // and the API (stopped last) still answers.
    w.wait_event("app", "ready");
    w.signal("TERM");
    let deadline = Instant::now() + Duration::from_millis(400);
    let mut saw_503 = false;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 503
        {
            saw_503 = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(saw_503, "readyz turned 503 during the shutdown");
    assert_eq!(w.exit_code(), 0, "{}", w.dump());
}

#[test]
fn mutations_need_the_token_when_one_is_set() {
    let port = free_port();
    let mut w = Warden::start(&registry(port, "token = \"s3cr3t-token\""));
    wait_http(port, "/readyz", 200);
    let post =
        |headers: &[(&str, &str)], path: &str, body: &[u8]| http(port, "POST", path, headers, body);
    assert_eq!(
        post(&[], "/v1/services/app/restart", b"").0,
        401,
        "no token"
    );
    assert_eq!(
        post(
            &[("Authorization", "Bearer nope")],
            "/v1/services/app/restart",
            b""
        )
        .0,
        401,
        "wrong token"
    );
    assert_eq!(
        post(&[("Authorization", "Basic czNjcjN0")], "/v1/shutdown", b"").0,
        401,
        "wrong scheme"
    );
    assert_eq!(
        post(
            &[("Authorization", "Bearer s3cr3t-token")],
            "/v1/services/app/restart",
            b""
        )
        .0,
        200,
        "right token"
    );
    // Reads need no token.
    assert_eq!(get_json(port, "/v1/health").0, 200);
    // Bad bodies, with the right token.
    let auth = [("Authorization", "Bearer s3cr3t-token")];
    let (status, _, body) = post(&auth, "/v1/services/db/actions/x", b"{not json");
    assert_eq!(
        status,
        404,
        "the action is checked first: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = post(
        &auth,
        "/v1/services/janitor/actions/replay-failed",
        b"{not json",
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not valid JSON"));
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1000));
    let (status, _, body) = post(
        &auth,
        "/v1/services/janitor/actions/replay-failed",
        big.as_bytes(),
    );
    assert_eq!(
        status,
        413,
        "max_body = 64: {}",
        String::from_utf8_lossy(&body)
    );
    // The API does not stop or restart itself (that would cut the
    // caller's own connection); it can be "started" (a 409: it runs).
    for op in ["stop", "restart", "start"] {
        let (status, _, body) = post(&auth, &format!("/v1/services/api/{op}"), b"");
        assert_eq!(status, 409, "{op}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(get_json(port, "/livez").0, 200);
    // HEAD is GET without a body; the console is the root page.
    let (status, head, body) = http(port, "HEAD", "/v1/health", &[], b"");
    assert_eq!((status, body.len()), (200, 0), "{head}");
    let (status, head, body) = http(port, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html")
    );
    assert!(String::from_utf8_lossy(&body).contains("/v1/events"));
    // Query values are percent-decoded.
    let (status, _, body) = http(port, "GET", "/v1/graph?format=%6Aso%6E", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // No secret in any response.
    let (_, _, body) = http(port, "GET", "/v1/services", &[], b"");
    assert!(!String::from_utf8_lossy(&body).contains("s3cr3t"));
    let (status, _, _) = post(&auth, "/v1/shutdown", b"");
    assert_eq!(status, 202);
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn the_client_commands_talk_to_the_daemon() {
    let port = free_port();
    let mut w = Warden::start(&registry(port, ""));
    // Not ready yet (db takes 0.6 s): health says so.
    wait_http(port, "/livez", 200);
    assert_eq!(client(port, &["health"]).0, 1);
    wait_http(port, "/readyz", 200);
    w.wait_event("app", "ready");
    assert_eq!(client(port, &["health"]).0, 0);

    let (code, table, _) = client(port, &["status"]);
    assert_eq!(code, 0);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("STATE") && header.contains("LAST ERROR"),
        "{table}"
    );
    let db = table
        .lines()
        .find(|l| l.starts_with("db "))
        .unwrap_or_default();
    assert!(db.contains("ready") && db.contains("yes"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("broken ") && l.contains("exited with status 1")),
        "{table}"
    );
    let (code, json, _) = client(port, &["status", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["services"].as_array().unwrap().len(), 5);

    assert_eq!(client(port, &["stop", "app"]).0, 0);
    w.wait_event("app", "stopped");
    let (code, _, err) = client(port, &["stop", "app"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 409") && err.contains("not running"),
        "{err}"
    );
    // The client prints the API's own words for every kind of refusal.
    for (args, path, body) in [
        (&["stop", "app"][..], "/v1/services/app/stop", &b""[..]),
        (
            &["restart", "ghost"][..],
            "/v1/services/ghost/restart",
            &b""[..],
        ),
        (
            &["action", "janitor", "run", "{}"][..],
            "/v1/services/janitor/actions/run",
            &b"{}"[..],
        ),
        (
            &["action", "janitor", "replay-failed", "{}"][..],
            "/v1/services/janitor/actions/replay-failed",
            &b"{}"[..],
        ),
    ] {
        let (status, _, answer) = http(port, "POST", path, &[], body);
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        let words = answer["error"].as_str().unwrap();
        let (code, _, err) = client(port, args);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(err, format!("error: HTTP {status}: {words}\n"), "{args:?}");
    }
    assert_eq!(client(port, &["start", "app"]).0, 0);
    let (code, _, err) = client(port, &["action", "db", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("has no action"), "{err}");
    let (code, _, err) = client(port, &["action", "janitor", "replay-failed", "{not json"]);
    assert_eq!(code, 2, "{err}");

    // A daemon that is not there: exit 4, with a clear message.
    let dead = support::servers::closed_port();
    let (code, _, err) = client(dead.port, &["status"]);
    assert_eq!(code, 4);
    assert!(
        err.contains("cannot reach warden at http://127.0.0.1:"),
        "{err}"
    );
    assert_eq!(client(dead.port, &["health"]).0, 4);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn a_reload_takes_a_new_token_at_once_and_names_what_needs_a_restart() {
    let port = free_port();
    let text = |token: &str, max: u32| {
        format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\nmax_connections = {max}\n[services.a]\nkind = \"process\"\ncommand = [\"sleep\", \"424250\"]\n"
        )
    };
    let w = Warden::start(&text("old-token", 64));
    wait_http(port, "/readyz", 200);
    support::daemon::write_registry(&w.dir, &text("new-token", 32));
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/reload",
        &[("Authorization", "Bearer old-token")],
        b"",
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let summary: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        summary["restart_needed"],
        serde_json::json!(["api.max_connections"]),
        "{summary}"
    );
    // A credential change is never silent: the old token is refused now,
    // the new one works.
    let restart = |token: &str| {
        http(
            port,
            "POST",
            "/v1/services/a/restart",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .0
    };
    assert_eq!(restart("old-token"), 401);
    assert_eq!(restart("new-token"), 200);
}

/// The client reads its token from a file (`--token-file`, or
/// `WARDEN_API_TOKEN_FILE`), which `ps` does not show as it shows
/// `--token`; an unreadable file is a usage error that names the file.
#[test]
fn the_client_takes_its_token_from_a_file() {
    let port = free_port();
    let mut w = Warden::start(&registry(port, "token = \"s3cr3t-token\""));
    wait_http(port, "/readyz", 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cr3t-token\n").unwrap();
    let client = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .env("WARDEN_URL", format!("http://127.0.0.1:{port}"))
            .env_remove("WARDEN_API_TOKEN")
            .env_remove("WARDEN_API_TOKEN_FILE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let path = file.to_str().unwrap();
    assert_eq!(
        client(&["restart", "app", "--token-file", path], &[]).0,
        Some(0),
        "the token from the file (its newline trimmed)"
    );
    assert_eq!(
        client(&["reload"], &[("WARDEN_API_TOKEN_FILE", path)]).0,
        Some(0),
        "the file named by WARDEN_API_TOKEN_FILE"
    );
    let missing = dir.path().join("missing");
    let (code, err) = client(
        &["restart", "app", "--token-file", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    std::fs::write(&file, "wrong\n").unwrap();
    let (code, err) = client(&["reload", "--token-file", path], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("wrong\n") && !err.contains("s3cr3t"), "{err}");
    let (code, _) = client(
        &["restart", "app", "--token-file", path, "--token", "x"],
        &[],
    );
    assert_eq!(code, Some(2), "--token and --token-file together");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A web page in the operator's browser cannot drive the API, token or
/// not: a foreign `Origin` or `Sec-Fetch-Site`, a body that is not
/// `application/json` (a form, a no-cors fetch with text/plain), and a
/// `Host` that is not loopback nor allowed (DNS rebinding) are refused; the
/// console may not be framed. The API's own clients and the console's
/// same-origin requests go through.
#[test]
fn cross_site_requests_and_foreign_hosts_are_refused() {
    let port = free_port();
    let mut w = Warden::start(&registry(port, "allowed_hosts = [\"warden.internal\"]"));
    wait_http(port, "/readyz", 200);
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        http(port, "POST", "/v1/services/app/restart", headers, body).0
    };
    let own = format!("http://127.0.0.1:{port}");
    let host = format!("127.0.0.1:{port}");
    // Refused: another origin, a cross-site or same-site fetch, a form.
    for (what, headers, body) in [
        (
            "foreign Origin",
            vec![("Origin", "http://evil.example")],
            &b""[..],
        ),
        ("Origin null", vec![("Origin", "null")], b""),
        (
            "another port of this host",
            vec![("Origin", "http://127.0.0.1:1")],
            b"",
        ),
        (
            "Sec-Fetch-Site: cross-site",
            vec![("Sec-Fetch-Site", "cross-site")],
            b"",
        ),
        (
            "Sec-Fetch-Site: same-site",
            vec![("Sec-Fetch-Site", "same-site")],
            b"",
        ),
        (
            "text/plain body",
            vec![("Content-Type", "text/plain")],
            b"{}",
        ),
        (
            "form",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            b"a=b",
        ),
        (
            "empty form",
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            b"",
        ),
    ] {
        let mut h = headers.clone();
        h.push(("Host", &host));
        let status = post(&h, body);
        assert!(
            status == 403 || status == 415,
            "{what}: {status}, not refused"
        );
    }
    // Allowed: the CLI (no Origin), the console (same origin), JSON bodies.
    assert_eq!(post(&[("Host", &host)], b""), 200, "the CLI");
    assert_eq!(
        http(
            port,
            "POST",
            "/v1/reload",
            &[
                ("Host", &host),
                ("Origin", &own),
                ("Sec-Fetch-Site", "same-origin")
            ],
            b""
        )
        .0,
        200,
        "the console"
    );
    assert_eq!(
        http(
            port,
            "POST",
            "/v1/reload",
            &[
                ("Host", &host),
                ("Content-Type", "application/json; charset=utf-8")
            ],
            b"{}"
        )
        .0,
        200,
        "JSON"
    );
    // Hosts: loopback names, IP literals, the allowed ones; not others.
    for (h, want) in [
        ("localhost:1234", 200),
        ("app.localhost", 200),
        ("[::1]:9464", 200),
        ("10.1.2.3:9464", 200),
        ("warden.internal:9464", 200),
        ("WARDEN.INTERNAL", 200),
        ("rebind.attacker.example", 421),
        ("warden.internal.attacker.example", 421),
    ] {
        assert_eq!(
            http(port, "GET", "/v1/services", &[("Host", h)], b"").0,
            want,
            "GET with Host {h}"
        );
    }
    assert_eq!(
        post(&[("Host", "rebind.attacker.example")], b""),
        421,
        "POST with a foreign Host"
    );
    let (_, head, _) = http(port, "GET", "/", &[], b"");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: frame-ancestors 'none'"),
        "{head}"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A body announced and sent a byte at a time no longer holds its
/// connection for ever: past `[api] body_timeout` the request gets 408.
#[test]
fn a_body_that_trickles_in_times_out() {
    use std::io::{Read, Write};
    let port = free_port();
    let mut w = Warden::start(&registry(port, "body_timeout = \"1s\""));
    wait_http(port, "/readyz", 200);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(
        s,
        "POST /v1/services/janitor/actions/replay-failed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{{"
    )
    .unwrap();
    let started = std::time::Instant::now();
    // A byte every 200 ms: the 60 bytes would take 12 s.
    let trickle = std::thread::spawn({
        let mut s = s.try_clone().unwrap();
        move || {
            for _ in 0..100 {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if s.write_all(b" ").is_err() {
                    break;
                }
            }
        }
    });
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "answered after {:?}",
        started.elapsed()
    );
    drop(s);
    let _ = trickle.join();
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Long-lived streams have a cap of their own (`max_streams`), and when
/// every connection is taken, `/livez` and `/readyz` still answer (a
/// container's health check must not fail because of open streams).
#[test]
fn streams_have_a_cap_and_probes_keep_room() {
    use std::io::{Read, Write};
    let port = free_port();
    let mut w = Warden::start(&registry(port, "max_connections = 4\nmax_streams = 2"));
    wait_http(port, "/readyz", 200);
    let open_stream = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(s, "GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).unwrap();
        (s, String::from_utf8_lossy(&first).into_owned())
    };
    let (a, status_a) = open_stream();
    let (b, status_b) = open_stream();
    assert_eq!(
        (status_a.as_str(), status_b.as_str()),
        ("HTTP/1.1 200", "HTTP/1.1 200")
    );
    let (_c, status_c) = open_stream();
    assert_eq!(
        status_c, "HTTP/1.1 503",
        "a third stream is over max_streams"
    );
    // Two idle connections: with the two streams, every connection is taken.
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        http(port, "GET", "/readyz", &[], b"").0,
        200,
        "readyz keeps room"
    );
    assert_eq!(
        http(port, "GET", "/livez", &[], b"").0,
        200,
        "livez keeps room"
    );
    assert_eq!(
        http(port, "GET", "/v1/services", &[], b"").0,
        503,
        "other routes wait for a connection of their own"
    );
    drop((a, b, idle));
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// `[api] enabled` waits for warden's next start, as the reload says: a
/// reload that turns the API off keeps it serving (it stopped at once, and
/// the container's health check with it), and one that turns it on does
/// not start it (it started listening at once).
#[test]
fn a_reload_leaves_the_api_as_warden_started_it() {
    let port = free_port();
    let on = format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n[services.a]\nkind = \"process\"\ncommand = [\"sleep\", \"717171\"]\n"
    );
    let off = on.replace("[api]\n", "[api]\nenabled = false\n");
    let mut w = Warden::start(&on);
    wait_http(port, "/readyz", 200);
    support::daemon::write_registry(&w.dir, &off);
    let (status, _, body) = http(port, "POST", "/v1/reload", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let summary: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        summary["restart_needed"],
        serde_json::json!(["api.enabled"])
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, health) = get_json(port, "/v1/health");
    assert_eq!(status, 200);
    assert_eq!(health["services"]["api"]["state"], "ready", "{health}");
    // Reloaded again with the API back on: nothing to do.
    support::daemon::write_registry(&w.dir, &on);
    assert_eq!(http(port, "POST", "/v1/reload", &[], b"").0, 200);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);

    // Started without the API: a reload that enables it starts nothing.
    let mut w = Warden::start(&off);
    w.wait_event("a", "ready");
    support::daemon::write_registry(&w.dir, &on);
    w.signal("HUP");
    w.wait_log("the reload", |v| v["message"] == "reloaded");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the API started listening at a reload"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
