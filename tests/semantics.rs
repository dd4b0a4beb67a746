//! Supervision semantics that users of other supervisors rely on, with the
//! real binary: a registry where nothing can run any more ends by itself,
//! `--only` keeps the API, the main service's exit status becomes warden's,
//! a stop command stops a process its own way, and `success_exit_codes`.

mod support;

use std::time::{Duration, Instant};

use support::daemon::{Warden, client};
use support::http::{get_json, wait_http};
use support::servers::free_port;

#[test]
fn a_registry_where_nothing_can_run_any_more_ends_by_itself() {
    // `setup` exits 0 before its readiness line: it is not restarted
    // (on-failure), so `app` can never start. warden says why and ends,
    // with 0: no critical service is involved.
    let registry = r#"
[api]
enabled = false

[services.setup]
kind = "process"
command = ["sh", "-c", "echo working; exit 0"]
ready = { log = "^listening$" }

[services.app]
kind = "process"
command = ["sleep", "424242"]
depends_on = ["setup"]
"#;
    let mut w = Warden::start(registry);
    let blocked = w.wait_log("app blocked", |v| {
        v["service"] == "app"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("blocked"))
    });
    assert_eq!(
        blocked["message"],
        "blocked: its dependency setup stopped without being ready"
    );
    assert_eq!(w.exit_code(), 0, "{}", w.dump());

    // The same with a critical dependent: it can never run, exit 3.
    let mut w = Warden::start(&registry.replace(
        "depends_on = [\"setup\"]",
        "depends_on = [\"setup\"]\ncritical = true",
    ));
    assert_eq!(w.exit_code(), 3, "{}", w.dump());
}

#[test]
fn only_keeps_the_api_so_probes_and_client_commands_work() {
    let port = free_port();
    let registry = format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.web]
kind = "process"
command = ["sleep", "424243"]

[services.worker]
kind = "process"
command = ["sleep", "424244"]

[services.off]
kind = "process"
command = ["sleep", "424245"]
enabled = false
"#
    );
    let mut w = Warden::start_args(&registry, &["--only", "web"]);
    wait_http(port, "/readyz", 200);
    let (status, health) = get_json(port, "/v1/health");
    assert_eq!(status, 200);
    let services = health["services"].as_object().unwrap();
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["api", "off", "web"],
        "worker is another instance's"
    );

    let (code, out, err) = client(port, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web") && !out.contains("worker"), "{out}");
    let (code, _, err) = client(port, &["start", "worker"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: HTTP 409: worker is not in this instance's selection (--only web); it runs on the instance that selects it\n"
    );
    let (code, _, err) = client(port, &["start", "off"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: HTTP 409: off is disabled in the registry (enabled = false); enable it in the registry and reload\n"
    );
    let (code, _, err) = client(port, &["stop", "web"]);
    assert_eq!(code, 0, "{err}");
    // A stop is asked, not awaited: a restart while web is still stopping
    // is refused, so wait for the stop to be done.
    w.wait_event("web", "stopped");
    let (code, _, err) = client(port, &["restart", "web"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_main_services_exit_status_becomes_warden_s() {
    let registry = r#"
[api]
enabled = false

[services.app]
kind = "process"
command = ["sh", "-c", "sleep 0.3; exit 7"]
main = true
restart = { policy = "never" }

[services.side]
kind = "process"
command = ["sleep", "424246"]
"#;
    let mut w = Warden::start(registry);
    assert_eq!(w.exit_code(), 7, "{}", w.dump());
    w.wait_log("side stopped", |v| {
        v["service"] == "side" && v["message"] == "stopped"
    });
    assert!(support::daemon::processes_with("424246").is_empty());

    // Killed by a signal: 128 + N, as a shell says.
    let mut w = Warden::start(&registry.replace("sleep 0.3; exit 7", "sleep 0.3; kill -USR1 $$$$"));
    assert_eq!(w.exit_code(), 128 + 10, "{}", w.dump());
}

#[test]
fn a_stop_command_stops_the_process_its_own_way_before_any_signal() {
    // The process ignores SIGTERM and quits when the file `quit` appears:
    // the stop command creates it. Without the command this stop would
    // take the whole timeout and a SIGKILL.
    let registry = r#"
[api]
enabled = false

[services.daemon]
kind = "process"
command = ["sh", "-c", "trap '' TERM; echo up; while [ ! -e quit ]; do sleep 0.05; done; echo graceful exit"]
ready = { log = "^up$" }
stop = { command = ["sh", "-c", "echo asked to quit; touch quit"], timeout = "10s" }
"#;
    let mut w = Warden::start(registry);
    w.wait_event("daemon", "ready");
    let began = Instant::now();
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "{}", w.dump());
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "stopped by the command, not by the timeout ({:?})",
        began.elapsed()
    );
    assert!(w.dir.join("quit").exists());
    w.wait_log("the command's output", |v| v["message"] == "asked to quit");
    w.wait_log("the graceful exit", |v| v["message"] == "graceful exit");
}

#[test]
fn success_exit_codes_count_as_success_for_the_policy_and_completed() {
    let registry = r#"
[api]
enabled = false

[services.migrate]
kind = "process"
command = ["sh", "-c", "exit 3"]
oneshot = true
success_exit_codes = [0, 3]

[services.report]
kind = "process"
command = ["sh", "-c", "echo reported"]
oneshot = true
depends_on = { migrate = "completed" }
"#;
    let mut w = Warden::start(registry);
    w.wait_event("migrate", "completed");
    w.wait_event("report", "completed");
    assert_eq!(w.exit_code(), 0, "{}", w.dump());
}

#[test]
fn a_line_without_end_is_cut_and_what_was_cut_is_said() {
    let port = free_port();
    let registry = format!(
        r#"
[api]
listen = "127.0.0.1:{port}"

[services.noisy]
kind = "process"
command = ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\000' x; echo; echo done; exec sleep 424251"]
"#
    );
    let mut w = Warden::start(&registry);
    w.wait_log("the line after", |v| {
        v["service"] == "noisy" && v["message"] == "done"
    });
    let (status, logs) = get_json(port, "/v1/services/noisy/logs");
    assert_eq!(status, 200);
    let lines = logs["lines"].as_array().unwrap();
    let long = lines[0]["line"].as_str().unwrap();
    assert_eq!(
        long,
        format!("{} … [983616 bytes cut]", "x".repeat(16 * 1024))
    );
    assert_eq!(lines[1]["line"], "done");
    let (_, _, metrics) = support::http::http(port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("warden_output_lines_cut_total{service=\"noisy\"} 1"),
        "{metrics}"
    );
}

/// The longest durations a registry may give (100y) are kept without a
/// panic: a deadline that far ahead, a backoff that long, and a shutdown
/// whose cap is that far (300000000000y passed `check` and panicked warden
/// at its SIGTERM, exit 101 with no ordered stop).
#[test]
fn the_longest_durations_do_not_overflow_the_clock() {
    let port = free_port();
    let mut w = Warden::start(&format!(
        r#"
[warden]
shutdown_timeout = "100y"
[api]
listen = "127.0.0.1:{port}"
[services.slow]
kind = "process"
command = ["sleep", "616161"]
start_timeout = "100y"
stop = {{ timeout = "100y" }}
health = {{ exec = ["true"], interval = "100y", timeout = "100y" }}
[services.crashy]
kind = "process"
command = ["sh", "-c", "exit 1"]
restart = {{ policy = "always", max_restarts = 100, window = "100y", reset_after = "100y", backoff = {{ initial = "100y", max = "100y", multiplier = 1000.0, jitter = 0.5 }} }}
"#
    ));
    wait_http(port, "/readyz", 200);
    w.wait_event("crashy", "restarting");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "{}", w.dump());
}

/// A stop keeps its grace for the whole process group: a shell that runs
/// the app without `exec` exits at once on SIGTERM, and the app, which
/// needs a moment to flush, gets what is left of `stop.timeout` before
/// SIGKILL (it was killed 2 ms after the shell, mid-flush). A service
/// that exits on SIGTERM still stops at once.
#[test]
fn a_stop_keeps_its_grace_for_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let flushed = dir.path().join("flushed");
    let app = format!(
        "trap 'sleep 1; echo flushed > {}; exit 0' TERM; while true; do sleep 0.05; done",
        flushed.display()
    );
    let port = free_port();
    let mut w = Warden::start(&format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
[services.app]
kind = "process"
command = ["sh", "-c", "sh -c \"$$0\"; echo done", {app:?}]
stop = {{ timeout = "10s" }}
[services.quick]
kind = "process"
command = ["sleep", "818181"]
"#
    ));
    wait_http(port, "/readyz", 200);
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let (code, _, err) = client(port, &["stop", "quick"]);
    assert_eq!(code, 0, "{err}");
    w.wait_event("quick", "stopped");
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "a process that exits on SIGTERM stops at once: {:?}",
        began.elapsed()
    );
    let (code, _, err) = client(port, &["stop", "app"]);
    assert_eq!(code, 0, "{err}");
    w.wait_event("app", "stopped");
    assert_eq!(
        std::fs::read_to_string(&flushed).unwrap_or_default(),
        "flushed\n",
        "the app was killed before its grace was over"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}
