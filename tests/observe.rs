//! What an operator or a scraper watches over HTTP:
//! `/metrics` (checked by Prometheus's own `promtool`), the `/v1/events`
//! stream, following a service's output, and the clients built on them
//! (`warden logs`, `warden status --watch`).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::Warden;
use support::http::{EventStream, http, wait_http};
use support::servers::free_port;

fn registry(port: u16) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.ticker]
kind = "process"
command = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; echo warn $i >&2; sleep 0.2; done"]
ready = {{ log = "^tick 1$" }}

[services.web]
kind = "process"
command = ["sh", "-c", "exec sleep 808080"]
ready = {{ exec = ["true"] }}
health = {{ tcp = "127.0.0.1:{port}", interval = "200ms" }}
depends_on = ["ticker"]

[services.flaky]
kind = "process"
command = ["sh", "-c", "sleep 0.3; exit 1"]
restart = {{ policy = "on-failure", max_restarts = 1000, window = "60s", backoff = {{ initial = "100ms", max = "100ms" }} }}
"#
    )
}

fn metrics(port: u16) -> String {
    let (status, head, body) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    String::from_utf8(body).unwrap()
}

/// The value of the one sample `series` (name and labels exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_pass_promtool_and_follow_the_services() {
    let port = free_port();
    let mut w = Warden::start(&registry(port));
    wait_http(port, "/readyz", 200);
    w.wait_event("web", "ready");
    // flaky has failed and restarted at least twice.
    w.wait_log("flaky's second restart", |v| {
        v["message"] == "restarting" && v["restarts"] == 2
    });
    std::thread::sleep(Duration::from_millis(500)); // a few health probes

    let text = metrics(port);
    let mut check = Command::new(support::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused /metrics:\n{}{}\n--- page:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for s in ["api", "ticker", "web", "flaky"] {
        // One-hot state: exactly one state is 1.
        let ones = text
            .lines()
            .filter(|l| l.starts_with(&format!("warden_service_state{{service=\"{s}\",")))
            .filter(|l| l.ends_with(" 1"))
            .count();
        assert_eq!(ones, 1, "{s} must be in exactly one state:\n{text}");
    }
    assert_eq!(
        sample(&text, r#"warden_service_up{service="ticker"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"warden_service_state{service="web",state="ready"}"#
        ),
        Some(1.0)
    );
    let restarts = sample(
        &text,
        r#"warden_service_restarts_total{service="flaky",reason="failure"}"#,
    )
    .expect("flaky's restarts are counted");
    assert!(restarts >= 2.0, "{restarts}");
    assert!(
        sample(
            &text,
            r#"warden_service_start_seconds_count{service="ticker"}"#
        ) == Some(1.0)
    );
    let health_probes = sample(
        &text,
        r#"warden_probe_duration_seconds_count{service="web",probe="health"}"#,
    )
    .expect("web's health probes are timed");
    assert!(health_probes >= 1.0);
    assert_eq!(
        sample(&text, r#"warden_build_info{version="0.1.0"}"#),
        Some(1.0)
    );

    // An operator's restart and a failed reload are counted by reason.
    let (status, _, _) = http(port, "POST", "/v1/services/web/restart", &[], b"");
    assert_eq!(status, 200);
    std::fs::write(w.dir.join("services.toml"), "[services.x]\nkind = 1\n").unwrap();
    w.signal("HUP");
    w.wait_log("the refused reload", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload rejected"))
    });
    let text = metrics(port);
    assert_eq!(
        sample(
            &text,
            r#"warden_service_restarts_total{service="web",reason="operator"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"warden_config_reloads_total{result="invalid"}"#),
        Some(1.0)
    );
    // Bounded labels: no error text ever becomes a label value.
    assert!(!text.contains("exited with status"), "{text}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn events_stream_every_state_change_restart_and_action() {
    let port = free_port();
    let mut w = Warden::start(&registry(port));
    wait_http(port, "/readyz", 200);
    w.wait_event("web", "ready");
    let events = EventStream::open(port, "/v1/events");
    assert!(events.head.starts_with("HTTP/1.0 200"), "{}", events.head);
    assert!(
        events
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    let (name, snapshot) = events.next("the snapshot", Duration::from_secs(10));
    assert_eq!(name, "snapshot");
    let names: Vec<&str> = snapshot["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "ticker", "web", "flaky"]);

    // An operator's restart: the restart, then web's states in order.
    let (status, _, _) = http(port, "POST", "/v1/services/web/restart", &[], b"");
    assert_eq!(status, 200);
    let r = events.wait("web's restart", |e, v| {
        e == "restart" && v["service"] == "web"
    });
    assert_eq!(r["reason"], "operator");
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("ready") {
        let v = events.wait("web's states", |e, v| e == "state" && v["service"] == "web");
        assert!(v["at"].as_str().is_some_and(|t| t.ends_with('Z')));
        states.push(v["state"].as_str().unwrap().to_string());
    }
    assert_eq!(states, ["stopping", "stopped", "starting", "ready"]);

    // Failures come as they happen, with their reason.
    let f = events.wait("flaky's restart", |e, v| {
        e == "restart" && v["service"] == "flaky"
    });
    assert_eq!(f["reason"], "failure");
    assert!(f["restarts"].as_u64().unwrap() >= 1);

    // One service's history: its last changes of state, oldest first.
    let (_, web) = support::http::get_json(port, "/v1/services/web");
    let moves: Vec<(String, String)> = web["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["to"].as_str().unwrap().into(),
                t["event"].as_str().unwrap().into(),
            )
        })
        .collect();
    let tail: Vec<(&str, &str)> = moves[moves.len() - 4..]
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            ("stopping", "stop"),
            ("stopped", "stopped"),
            ("starting", "start"),
            ("ready", "ready")
        ],
        "{web}"
    );

    // A process publishes its pid while it runs, and how its last run ended.
    let (_, ticker) = support::http::get_json(port, "/v1/services/ticker");
    assert!(
        ticker["details"]["pid"].as_u64().is_some_and(|p| p > 1),
        "{ticker}"
    );
    let (_, flaky) = support::http::get_json(port, "/v1/services/flaky");
    assert_eq!(
        flaky["details"]["last_exit"], "exited with status 1",
        "{flaky}"
    );

    // An action's result (process has none: the failure is the event).
    let (status, _, _) = http(port, "POST", "/v1/services/web/actions/nope", &[], b"{}");
    assert_eq!(status, 404, "unknown actions are refused before running");

    // A reload that adds a service: `reloaded`, then a snapshot with it.
    let added = format!(
        "{}\n[services.extra]\nkind = \"process\"\ncommand = [\"sleep\", \"818181\"]\n",
        registry(port)
    );
    std::fs::write(w.dir.join("services.toml"), added).unwrap();
    w.signal("HUP");
    events.wait("the reload", |e, _| e == "reloaded");
    let snap = events.wait("a snapshot after the reload", |e, _| e == "snapshot");
    assert!(
        snap["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "extra"),
        "{snap}"
    );

    // At shutdown the stream carries every service's last state before
    // it ends (the API stops last, so its own end is not in it).
    w.signal("TERM");
    let mut stopped = std::collections::BTreeSet::new();
    while stopped.len() < 4 {
        let v = events.wait("the services stopping", |e, v| {
            e == "state" && matches!(v["state"].as_str(), Some("stopped" | "failed"))
        });
        stopped.insert(v["service"].as_str().unwrap().to_string());
    }
    assert_eq!(
        stopped.into_iter().collect::<Vec<_>>(),
        ["extra", "flaky", "ticker", "web"]
    );
    assert_eq!(w.exit_code(), 0);
}

fn warden_client(port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warden"));
    c.env("WARDEN_URL", format!("http://127.0.0.1:{port}"))
        .env_remove("WARDEN_API_TOKEN");
    c
}

#[test]
fn logs_print_and_follow_a_services_output() {
    let port = free_port();
    let mut w = Warden::start(&registry(port));
    wait_http(port, "/readyz", 200);
    w.wait_log("tick 5", |v| v["message"] == "tick 5");

    // The tail, each line to the stream it came from.
    let out = warden_client(port)
        .args(["logs", "ticker", "--tail", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(stdout.lines().all(|l| l.starts_with("tick ")), "{stdout}");
    assert!(stderr.lines().all(|l| l.starts_with("warn ")), "{stderr}");

    // The API gives every line a sequence number.
    let (_, body) = support::http::get_json(port, "/v1/services/ticker/logs?tail=2");
    let seqs: Vec<u64> = body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs[1], seqs[0] + 1);

    // -f: the tail, then new lines as they come, in order, none twice.
    let mut follow = warden_client(port)
        .args(["logs", "ticker", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let numbers: Vec<u64> = (0..6)
        .map(|_| {
            let l = lines.next().expect("a followed line").unwrap();
            l.strip_prefix("tick ").unwrap().parse().unwrap()
        })
        .collect();
    for pair in numbers.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "{numbers:?}");
    }
    // A reader that goes away (`| head -n 6`) ends the follower.
    drop(lines);
    let status = follow.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a closed pipe ends logs -f");

    // When warden stops, the stream ends and the client exits 0.
    let mut follow = warden_client(port)
        .args(["logs", "ticker", "-f", "--tail", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
    let status = follow.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    // Unknown services are named.
    let port2 = free_port();
    let mut w2 = Warden::start(&registry(port2));
    wait_http(port2, "/livez", 200);
    let out = warden_client(port2)
        .args(["logs", "nope", "-f"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such service: \"nope\""));
    w2.signal("TERM");
    assert_eq!(w2.exit_code(), 0);
}

#[test]
fn a_daemon_that_dies_is_not_a_clean_end_for_followers() {
    let port = free_port();
    let mut w = Warden::start(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n\n[services.quiet]\nkind = \"process\"\n\
         command = [\"sh\", \"-c\", \"echo hi; exec sleep 909090\"]\n"
    ));
    wait_http(port, "/readyz", 200);
    let follow = warden_client(port)
        .args(["logs", "quiet", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watch = warden_client(port)
        .args(["status", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    w.signal("KILL");
    let _ = w.exit_code();
    for (pid, _) in support::daemon::processes_with("909090") {
        support::daemon::signal_pid(pid, "KILL");
    }
    for (what, child) in [("logs -f", follow), ("status --watch", watch)] {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{what}: {stderr}");
        assert!(
            stderr.contains("closed in the middle of the stream"),
            "{what}: {stderr}"
        );
    }
}

#[test]
fn status_watch_redraws_as_states_change() {
    let port = free_port();
    let mut w = Warden::start(&registry(port));
    wait_http(port, "/readyz", 200);
    let mut watch = warden_client(port)
        .args(["status", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // Tables come one after another (not a terminal: no redraw codes);
    // flaky's restart count grows from one to the next.
    let mut restarts_seen = std::collections::BTreeSet::new();
    while restarts_seen.len() < 3 {
        let l = lines.next().expect("a table line").unwrap();
        assert!(!l.contains('\x1b'), "no terminal codes in a pipe: {l:?}");
        if l.starts_with("flaky ") {
            let cols: Vec<&str> = l.split_whitespace().collect();
            restarts_seen.insert(cols[3].parse::<u64>().unwrap());
        }
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
    let out = watch.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warden closed the stream"));
}

/// What a service prints cannot drive the operator's terminal: `warden
/// logs` on a terminal shows control characters escaped (a title set, a
/// cursor sent back), `--raw` and a pipe get them as they are; warden's
/// own text log shows a carriage return as `\r`.
#[test]
fn a_services_control_characters_do_not_reach_the_terminal_raw() {
    let port = free_port();
    let registry = format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
[services.esc]
kind = "process"
command = ["sh", "-c", "printf 'a\\033]0;pwned\\007b\\rc\\033[31mred\\n'; exec sleep 565656"]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.toml"), &registry).unwrap();
    /// Stops warden when the test ends, passed or not.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
    let mut warden = Running(
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["run", "--log-format", "text"])
            .current_dir(dir.path())
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(warden.0.stderr.take().unwrap());
    let logged = loop {
        let mut line = Vec::new();
        assert!(
            stderr.read_until(b'\n', &mut line).unwrap() > 0,
            "warden's log ended before the service's line"
        );
        if line.windows(5).any(|w| w == b"pwned") {
            break line;
        }
    };
    let text = String::from_utf8_lossy(&logged).into_owned();
    assert!(
        !logged.contains(&b'\r'),
        "a raw CR in warden's text log: {text:?}"
    );
    assert!(text.contains(r"b\rc"), "{text:?}");
    assert!(
        !logged.contains(&0x1b),
        "a raw ESC in warden's text log: {text:?}"
    );

    // On a terminal (util-linux `script` gives the client a pty).
    let url = format!("http://127.0.0.1:{port}");
    let warden_bin = env!("CARGO_BIN_EXE_warden");
    let on_tty = |extra: &str| -> Vec<u8> {
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("WARDEN_URL={url} {warden_bin} logs esc {extra}"),
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run script (util-linux)");
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    let shown = on_tty("");
    let shown_text = String::from_utf8_lossy(&shown);
    assert!(
        !shown.contains(&0x1b),
        "escape sequences reached the terminal: {shown_text:?}"
    );
    assert!(
        shown_text.contains(r"a\x1b]0;pwned\x07b\rc\x1b[31mred"),
        "{shown_text:?}"
    );
    let raw = on_tty("--raw");
    assert!(
        raw.windows(4).any(|w| w == b"\x1b]0;"),
        "--raw keeps them: {raw:?}"
    );
    // Through a pipe, as the service wrote it.
    let piped = Command::new(warden_bin)
        .args(["logs", "esc"])
        .env("WARDEN_URL", &url)
        .output()
        .unwrap();
    assert_eq!(
        piped.stdout, b"a\x1b]0;pwned\x07b\rc\x1b[31mred\n",
        "a pipe gets the bytes"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &warden.0.id().to_string()])
        .status();
    assert!(warden.0.wait().unwrap().success());
}

/// Followers that stop reading hold little of warden's memory each: what a
/// follower may have queued is bounded (250 stalled followers took warden
/// from 7 MB to 155 MB).
#[test]
fn stalled_followers_hold_bounded_memory() {
    use std::io::Write;
    let port = free_port();
    let mut w = Warden::start(&format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
max_streams = 200
max_connections = 300
[services.chatty]
kind = "process"
command = ["sh", "-c", "while true; do head -c 30000 /dev/urandom | base64; sleep 0.01; done"]
"#
    ));
    wait_http(port, "/readyz", 200);
    std::thread::sleep(Duration::from_secs(1));
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .expect("VmRSS")
    };
    let pid = w.pid();
    let before = rss(pid);
    let mut stalled = Vec::new();
    for _ in 0..150 {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let sock = socket_with_small_receive_buffer(s);
        let mut sock = sock;
        write!(
            sock,
            "GET /v1/services/chatty/logs?follow=true&tail=100000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .unwrap();
        stalled.push(sock);
    }
    std::thread::sleep(Duration::from_secs(6));
    let grown = rss(pid).saturating_sub(before);
    drop(stalled);
    assert!(
        grown < 16 * 1024,
        "150 stalled followers grew warden by {grown} kB (from {before} kB)"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A connection to `port` whose receive buffer is small from the start
/// (set before the handshake: shrunk later, the window the peer was told
/// no longer holds, and the peer backs off for seconds at a time).
fn connect_with_small_receive_buffer(port: u16) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: a new socket, set up and connected through libc with
    // pointers to live values of the lengths given, then owned by the
    // TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// A client socket that takes little before the sender must wait.
fn socket_with_small_receive_buffer(s: std::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt on an open socket, with a pointer to an int of
    // the length given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s
}

/// `[warden] log_memory` bounds the output kept of all services together:
/// each ring keeps an equal share, its newest lines.
#[test]
fn the_output_kept_of_all_services_stays_within_log_memory() {
    let port = free_port();
    let mut registry = format!(
        r#"
[warden]
log_memory = "128KiB"
[api]
listen = "127.0.0.1:{port}"
"#
    );
    for i in 0..8 {
        registry.push_str(&format!(
            r#"
[services.chatty{i}]
kind = "process"
command = ["sh", "-c", "i=0; while [ $i -lt 3000 ]; do printf 'line %05d %0100d\n' $i 0; i=$((i+1)); done; echo done; exec sleep 909090"]
"#
        ));
    }
    let mut w = Warden::start(&registry);
    wait_http(port, "/readyz", 200);
    let mut total = 0;
    for i in 0..8 {
        let path = format!("/v1/services/chatty{i}/logs?tail=100000");
        let lines = support::daemon::wait_for(&format!("chatty{i} to be done"), || {
            let (_, logs) = support::http::get_json(port, &path);
            let lines: Vec<String> = logs["lines"]
                .as_array()?
                .iter()
                .filter_map(|l| l["line"].as_str().map(String::from))
                .collect();
            (lines.last()? == "done").then_some(lines)
        });
        assert!(lines.len() < 3000, "chatty{i}: {} lines kept", lines.len());
        assert_eq!(lines[lines.len() - 2], format!("line 02999 {:0100}", 0));
        total += lines.iter().map(String::len).sum::<usize>();
    }
    assert!(total <= 128 * 1024, "{total} bytes of text kept");
    // Lines of 111 bytes take a 128-byte block and a 112-byte slot.
    assert!(total > 48 * 1024, "{total} bytes: the shares are used");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A stream left unread for `[api] stall_timeout` is ended by warden, and
/// says so: a reader that reads again finds a last `dropped` event after
/// what was queued.
#[test]
fn an_unread_stream_is_dropped_with_a_last_word() {
    use std::io::{Read, Write};
    let port = free_port();
    let mut registry = format!(
        r#"
[warden]
log_memory = "256MiB"
[api]
listen = "127.0.0.1:{port}"
stall_timeout = "1s"
[services.chatty]
kind = "process"
command = ["sh", "-c", "while true; do head -c 300000 /dev/urandom | base64; done"]
"#
    );
    // Each reload sends the event stream a snapshot of them all: enough
    // to fill what the kernel buffers between warden and the reader.
    for i in 0..800 {
        registry.push_str(&format!(
            "[services.idle{i}]\nkind = \"process\"\ncommand = [\"true\"]\nenabled = false\n"
        ));
    }
    // Its output is not copied into warden's log: the test reads that log
    // slower than the service writes.
    let mut w = Warden::start_with(
        &registry,
        &[("WARDEN_LOG", "info,warden::output=off")],
        None,
    );
    wait_http(port, "/readyz", 200);
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds(w.pid());
    // Readers that never read again: warden closes their connections.
    let never: Vec<_> = (0..10)
        .map(|_| {
            let mut sock = connect_with_small_receive_buffer(port);
            write!(
                sock,
                "GET /v1/services/chatty/logs?follow=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            .unwrap();
            sock
        })
        .collect();
    let paths = [
        "/v1/services/chatty/logs?follow=true&tail=100000",
        "/v1/events",
    ];
    let socks: Vec<_> = paths
        .iter()
        .map(|path| {
            let mut sock = connect_with_small_receive_buffer(port);
            write!(sock, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            sock
        })
        .collect();
    // Reloads until warden has dropped every stream, the ten that never
    // read and the two read below (how many reloads it takes depends on
    // the kernel's buffers and the machine's load).
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.count_logs(|v| v["message"] == "dropped an event stream that was not read") < 12 {
        assert!(
            Instant::now() < deadline,
            "warden never dropped the unread streams"
        );
        w.signal("HUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (path, mut sock) in paths.iter().zip(socks) {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !String::from_utf8_lossy(&got).contains("event: dropped") {
            assert!(
                std::time::Instant::now() < deadline,
                "{path}: no dropped event in {} bytes",
                got.len()
            );
            match sock.read(&mut buf) {
                Ok(0) => panic!("{path}: closed without a dropped event"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("this stream was not read for 1s; warden ended it"),
            "{path}"
        );
    }
    // 30 s past the stall limit without taking anything: closed, and what
    // was queued for them is gone with their connections.
    let deadline = Instant::now() + Duration::from_secs(45);
    while fds(w.pid()) > before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "readers that never read still hold {} descriptors",
            fds(w.pid()) - before
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(never);
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
