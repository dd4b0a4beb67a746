//! Supervision with the real `warden` binary and real processes: critical
//! failure and exit 3, no process left behind (those that left their group
//! included), PID 1 reaping, sd_notify in both directions, reload with a
//! broken file.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::daemon::{
    Message, Warden, processes_with, signal_pid, wait_until, write_registry, zombie_children_of,
};

#[test]
fn a_crash_looping_critical_process_ends_in_an_ordered_shutdown_and_exit_3() {
    let mut w = Warden::start(
        r#"
[api]
enabled = false
[services.db]
kind = "process"
command = ["sh", "-c", "echo starting; exit 1"]
critical = true
restart = { max_restarts = 2, backoff = { initial = "10ms" } }
[services.app]
kind = "process"
command = ["sleep", "876543"]
depends_on = { db = "started" }
"#,
    );
    assert_eq!(w.exit_code(), 3, "log:\n{}", w.dump());
    w.wait_log("the budget message", |v| {
        v["service"] == "db"
            && v["message"] == "failed"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("exited with status 1"))
    });
    w.wait_event("db", "critical service failed for good; shutting down");
    assert!(processes_with("876543").is_empty(), "app was stopped");
}

#[test]
fn sigterm_leaves_no_process_behind_grandchildren_included() {
    let mut w = Warden::start(
        r#"
[api]
enabled = false
[services.family]
kind = "process"
command = ["sh", "-c", "sleep 765431 & sleep 765432 & sleep 765433"]
[services.stubborn]
kind = "process"
command = ["sh", "-c", "trap '' TERM; sleep 765434 & sleep 765435"]
stop = { timeout = "500ms" }
"#,
    );
    w.wait_event("family", "ready");
    w.wait_event("stubborn", "ready");
    wait_until("all five sleeps running", || {
        processes_with("76543").len() >= 5
    });
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "log:\n{}", w.dump());
    let left = processes_with("76543");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Kills (SIGKILL) every process whose command line holds one of the
/// markers when dropped: a test that fails leaves nothing running.
struct KillMarked(&'static [&'static str]);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for marker in self.0 {
            for (pid, _) in processes_with(marker) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

#[test]
fn processes_that_left_their_group_are_stopped_when_warden_exits() {
    // Two descendants leave the service's process group (setsid) and
    // outlive their parent: they are re-parented to warden, the child
    // subreaper. One quits on SIGTERM; the other ignores it and is killed
    // once the rest of shutdown_timeout (2 s) is over.
    let _cleanup = KillMarked(&["765441", "765442", "765443"]);
    let mut w = Warden::start(
        r#"
[warden]
shutdown_timeout = "2s"
[api]
enabled = false
[services.spawner]
kind = "process"
command = ["sh", "-c", "setsid sh -c 'echo $$$$ > polite.pid; exec sleep 765441' & setsid sh -c 'trap \"\" TERM; : 765442; echo $$$$ > stubborn.pid; while :; do sleep 0.1; done' & exec sleep 765443"]
"#,
    );
    w.wait_event("spawner", "ready");
    let (polite, stubborn) = (w.dir.join("polite.pid"), w.dir.join("stubborn.pid"));
    wait_until("both escaped processes wrote their pid", || {
        [&polite, &stubborn]
            .iter()
            .all(|f| std::fs::read_to_string(f).is_ok_and(|s| s.trim().parse::<u32>().is_ok()))
    });
    let pid = |f: &std::path::Path| -> u32 {
        std::fs::read_to_string(f).unwrap().trim().parse().unwrap()
    };
    let (polite, stubborn) = (pid(&polite), pid(&stubborn));
    // Both run (the spawner's shell, whose command line names them too,
    // has become `sleep 765443` by then).
    wait_until(
        "each escaped process running, alone with its marker",
        || processes_with("765441").len() == 1 && processes_with("765442").len() == 1,
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "log:\n{}", w.dump());
    // warden reaped them before it exited: no process and no zombie left.
    for (marker, pid) in [("765441", polite), ("765442", stubborn)] {
        assert!(
            processes_with(marker).is_empty(),
            "{marker} (pid {pid}) outlived warden"
        );
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is left (a zombie?)"
        );
    }
    let found = w.wait_log("the escaped processes named", |v| {
        v["message"] == "stopping processes that left their service's process group"
    });
    assert_eq!(found["count"], 2, "{found}");
    w.wait_log("the SIGKILL said", |v| {
        v["message"] == "killed processes that outlived the grace (SIGKILL)"
    });
}

#[test]
fn as_pid_1_warden_reaps_orphans_and_still_sees_its_childrens_exit_codes() {
    if Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        panic!(
            "`unshare --pid --fork` does not work here (it needs root or user namespaces; util-linux provides it)"
        );
    }
    let mut w = Warden::start_with(
        r#"
[api]
enabled = false
[services.parent]
kind = "process"
# The sleep leaves the group and outlives its parent: an orphan for PID 1.
command = ["sh", "-c", "setsid sleep 0.3 & echo parent pid $$; exit 7"]
restart = { policy = "never" }
[services.keeper]
kind = "process"
command = ["sleep", "654321"]
"#,
        &[],
        Some(&["unshare", "--pid", "--fork"]),
    );
    let ended = w.wait_log("parent failing with status 7", |v| {
        v["service"] == "parent" && v["message"] == "failed"
    });
    assert_eq!(ended["error"], "exited with status 7");
    let pid1 = w.wait_log("the parent's pid", |v| {
        v["service"] == "parent" && v["stream"] == "stdout"
    });
    assert_ne!(
        pid1["message"], "parent pid 1",
        "warden, not the service, is PID 1"
    );
    w.wait_log("the orphan reaped", |v| v["message"] == "reaped an orphan");
    // No zombie is left under warden (a zombie has no command line, so
    // look for children of warden in state Z).
    std::thread::sleep(Duration::from_millis(200));
    let zombies = zombie_children_of(w.inner_pid());
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    // unshare does not forward signals: stop warden itself.
    signal_pid(w.inner_pid(), "TERM");
    assert_eq!(w.exit_code(), 0, "log:\n{}", w.dump());
}

#[test]
fn a_child_that_speaks_sd_notify_becomes_ready_through_notify() {
    let mut w = Warden::start(
        r#"
[api]
enabled = false
[services.notifier]
kind = "process"
command = ["sh", "-c", "sleep 0.3; systemd-notify --status='warming up'; systemd-notify --ready; exec sleep 543210"]
ready = { notify = true }
[services.after]
kind = "process"
command = ["sleep", "543211"]
depends_on = ["notifier"]
"#,
    );
    let spawned = w.wait_log("notifier spawned", |v| {
        v["service"] == "notifier"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("spawned"))
    });
    let ready = w.wait_event("notifier", "ready");
    let after = w.wait_log("after started", |v| {
        v["service"] == "after" && v["message"] == "started"
    });
    let ts = |v: &Json| v["timestamp"].as_str().unwrap_or_default().to_string();
    assert!(
        ts(&spawned) < ts(&ready) && ts(&ready) <= ts(&after),
        "ready only after READY=1, and `after` after that"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn wardens_own_ready_watchdog_and_stopping_reach_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut w = Warden::start_with(
        r#"
[api]
enabled = false
[services.db]
kind = "process"
command = ["sh", "-c", "sleep 0.5; echo up; exec sleep 432100"]
ready = { log = "^up$" }
critical = true
[services.optional]
kind = "process"
command = ["sleep", "432101"]
"#,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
        None,
    );
    let mut messages: Vec<Message> = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    let mut recv_until = |messages: &mut Vec<Message>, stop: &dyn Fn(&[Message]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !stop(messages) && Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    messages.push((Instant::now(), line.to_string()));
                }
            }
        }
    };
    let has = |m: &[Message], s: &str| m.iter().any(|(_, l)| l == s);
    recv_until(&mut messages, &|m| {
        has(m, "READY=1") && m.iter().filter(|(_, l)| l == "WATCHDOG=1").count() >= 2
    });
    let ready_at = messages
        .iter()
        .find(|(_, l)| l == "READY=1")
        .map(|(t, _)| *t)
        .expect("READY=1 was sent");
    assert!(
        ready_at.duration_since(t0) >= Duration::from_millis(400),
        "READY=1 waits for the critical service's readiness"
    );
    let db_ready = w.wait_event("db", "ready");
    assert!(db_ready.is_object());
    assert!(
        messages.iter().any(|(_, l)| l.starts_with("STATUS=")),
        "{messages:?}"
    );
    assert!(
        messages.iter().filter(|(_, l)| l == "WATCHDOG=1").count() >= 2,
        "watchdog pings at half of 300 ms: {messages:?}"
    );
    assert!(!has(&messages, "STOPPING=1"));
    w.signal("TERM");
    recv_until(&mut messages, &|m| has(m, "STOPPING=1"));
    assert!(has(&messages, "STOPPING=1"), "{messages:?}");
    assert_eq!(w.exit_code(), 0);
}

/// A reload while a critical service is still starting says nothing to
/// systemd: `READY=1` comes once, when every critical service is ready
/// (a SIGHUP sent `RELOADING=1` then `READY=1` at once, and `systemctl
/// start` returned early). After that, a reload is `RELOADING=1` then
/// `READY=1`.
#[test]
fn ready_goes_to_systemd_only_once_ready_reloads_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut w = Warden::start_with(
        r#"
[api]
enabled = false
[services.db]
kind = "process"
command = ["sh", "-c", "sleep 2; echo up; exec sleep 432102"]
ready = { log = "^up$" }
critical = true
"#,
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
        None,
    );
    let mut lines: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv_for = |lines: &mut Vec<String>, d: Duration| {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
            }
        }
    };
    w.wait_event("db", "spawned sh");
    w.signal("HUP");
    w.wait_log("the reload", |v| v["message"] == "reloaded");
    recv_for(&mut lines, Duration::from_millis(300));
    assert!(
        !lines.iter().any(|l| l == "READY=1" || l == "RELOADING=1"),
        "db is not ready yet: {lines:?}"
    );
    w.wait_event("db", "ready");
    recv_for(&mut lines, Duration::from_millis(300));
    assert_eq!(
        lines.iter().filter(|l| *l == "READY=1").count(),
        1,
        "{lines:?}"
    );
    w.signal("HUP");
    w.wait_log("the second reload", |v| v["message"] == "reloaded");
    recv_for(&mut lines, Duration::from_millis(300));
    assert!(lines.iter().any(|l| l == "RELOADING=1"), "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| *l == "READY=1").count(),
        2,
        "{lines:?}"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A notify service's socket file is removed however its run ends, a
/// forced stop included (a second SIGTERM: one file was left per forced
/// notify service at each run).
#[test]
fn a_forced_stop_leaves_no_notify_socket_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Warden::start_with(
        r#"
[api]
enabled = false
[services.stubborn]
kind = "process"
command = ["sh", "-c", "trap '' TERM; systemd-notify --ready; while true; do sleep 0.1; done"]
ready = { notify = true, timeout = "10s" }
stop = { timeout = "60s" }
"#,
        &[("XDG_RUNTIME_DIR", dir.path().to_str().unwrap())],
        None,
    );
    w.wait_event("stubborn", "ready");
    let sockets = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".notify"))
            .collect::<Vec<_>>()
    };
    assert_eq!(sockets().len(), 1, "the socket while it runs");
    w.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    w.signal("TERM");
    w.exit_code();
    assert_eq!(sockets(), Vec::<String>::new(), "left behind");
}

#[test]
fn a_reload_with_a_broken_file_keeps_the_old_services_running() {
    let registry = r#"
[api]
enabled = false
[services.steady]
kind = "process"
command = ["sleep", "321987"]
"#;
    let mut w = Warden::start(registry);
    w.wait_event("steady", "ready");
    let before = processes_with("321987");
    assert_eq!(before.len(), 1);
    write_registry(
        &w.dir,
        "[services.steady]\nkind = \"process\"\ncommand = \"not an array\"\n",
    );
    w.signal("HUP");
    let rejected = w.wait_log("reload rejected", |v| {
        v["message"] == "reload rejected: the registry is invalid; keeping the running one"
    });
    assert!(
        rejected["errors"]
            .as_str()
            .is_some_and(|e| e.contains("services.steady.command: expected an array of strings")),
        "{rejected}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let pids = |v: Vec<(u32, char)>| v.into_iter().map(|(p, _)| p).collect::<Vec<_>>();
    assert_eq!(
        pids(processes_with("321987")),
        pids(before),
        "the same process still runs"
    );

    // A valid change is applied: the service is restarted with its new command.
    write_registry(&w.dir, &registry.replace("321987", "321988"));
    w.signal("HUP");
    w.wait_log("reload applied", |v| v["message"] == "reload applied");
    wait_until("the new command runs", || {
        processes_with("321988").len() == 1 && processes_with("321987").is_empty()
    });
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

#[test]
fn user_drops_privileges_when_warden_is_root() {
    let mut w = Warden::start(
        r#"
[api]
enabled = false
[services.unprivileged]
kind = "process"
command = ["sh", "-c", "echo uid=$(id -u) gids=$(id -G); exec sleep 313131"]
user = "nobody"
restart = { policy = "never" }
"#,
    );
    let root = is_root();
    if root {
        let line = w.wait_log("the child's ids", |v| {
            v["service"] == "unprivileged" && v["stream"] == "stdout"
        });
        assert_eq!(
            line["message"], "uid=65534 gids=65534",
            "runs as nobody, without root's groups"
        );
    } else {
        let failed = w.wait_event("unprivileged", "failed");
        assert_eq!(
            failed["error"],
            "user = \"nobody\" needs warden to run as root"
        );
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A child that runs as another user gets that user's `HOME`, `USER`,
/// `LOGNAME` and `SHELL` from the passwd entry (as systemd's `User=` and
/// `runuser` do; it had root's `HOME=/root` and no `USER`), unless the
/// service's own `env` sets them.
#[test]
fn a_child_running_as_another_user_gets_its_home_and_names() {
    assert!(
        is_root(),
        "this test runs warden as root (user =): run it as root, as CI does"
    );
    let passwd = Command::new("getent")
        .args(["passwd", "nobody"])
        .output()
        .unwrap();
    let entry = String::from_utf8_lossy(&passwd.stdout).trim().to_string();
    let fields: Vec<&str> = entry.split(':').collect();
    let (home, shell) = (fields[5], fields[6]);
    let mut w = Warden::start(
        r#"
[api]
enabled = false
[services.plain]
kind = "process"
command = ["sh", "-c", "echo \"$HOME|$USER|$LOGNAME|$SHELL\"; exec sleep 414142"]
user = "nobody"
[services.own]
kind = "process"
command = ["sh", "-c", "echo \"$HOME|$USER|$LOGNAME|$SHELL\"; exec sleep 414143"]
user = "nobody"
env = { HOME = "/srv/own", USER = "svc" }
"#,
    );
    for (service, want) in [
        ("plain", format!("{home}|nobody|nobody|{shell}")),
        ("own", format!("/srv/own|svc|nobody|{shell}")),
    ] {
        let line = w.wait_log(&format!("{service}'s environment"), |v| {
            v["service"] == service && v["stream"] == "stdout"
        });
        assert_eq!(line["message"], want.as_str(), "{service}");
    }
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A child that runs as another user reaches its notify socket (it was
/// root's, mode 0755: EACCES, and the service never became ready), and
/// nobody else may write to it.
#[test]
fn a_notify_child_running_as_another_user_becomes_ready() {
    let root = is_root();
    assert!(
        root,
        "this test runs warden as root (user =): run it as root, as CI does"
    );
    let mut w = Warden::start(
        r#"
[api]
enabled = false
[services.notifier]
kind = "process"
command = ["sh", "-c", "stat -c '%U %a' \"$NOTIFY_SOCKET\"; systemd-notify --ready; exec sleep 543212"]
user = "nobody"
ready = { notify = true, timeout = "10s" }
"#,
    );
    let line = w.wait_log("the socket's owner and mode", |v| {
        v["service"] == "notifier" && v["stream"] == "stdout"
    });
    assert_eq!(
        line["message"], "nobody 600",
        "the service's user alone may write"
    );
    w.wait_event("notifier", "ready");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A descriptor open when warden started (here fd 7, a file only root may
/// read) does not reach its children: they would read it whatever their
/// user.
#[test]
fn descriptors_warden_inherited_do_not_reach_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root-only-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let script = format!("exec 7<{}; exec \"$@\"", secret.display());
    let mut w = Warden::start_with(
        r#"
[api]
enabled = false
[services.peek]
kind = "process"
command = ["sh", "-c", "if cat <&7; then echo leaked; else echo closed; fi; exec sleep 545454"]
"#,
        &[],
        Some(&["sh", "-c", &script, "sh"]),
    );
    let line = w.wait_log("the child's verdict", |v| {
        v["service"] == "peek" && v["stream"] == "stdout" && v["message"] != "root-only-secret"
    });
    assert_eq!(line["message"], "closed", "log:\n{}", w.dump());
    assert!(
        !w.dump().contains("root-only-secret"),
        "the child read fd 7"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Children do not see warden's own variables (`WARDEN_*`) nor those that
/// filled a secret setting (the API token, a DSN's password), which a
/// child running as another user could otherwise use against the API;
/// `inherit_env` names exactly what a service inherits.
#[test]
fn children_do_not_inherit_wardens_secrets_unless_named() {
    let mut w = Warden::start_with(
        r#"
[api]
listen = "127.0.0.1:0"
token = "${API_KEY}"

[services.db]
kind = "external"
ready = { tcp = "127.0.0.1:1" }
enabled = false
health = { postgres = "${DB_URL}" }

[services.plain]
kind = "process"
command = ["sh", "-c", "env | sort | sed 's/^/env: /'; exec sleep 575757"]

[services.named]
kind = "process"
command = ["/bin/sh", "-c", "env | sort | sed 's/^/env: /'; exec sleep 575758"]
inherit_env = ["API_KEY", "PLAIN"]
"#,
        &[
            ("WARDEN_API_TOKEN", "tok-from-env"),
            ("API_KEY", "key-1234"),
            ("DB_URL", "postgres://app:pw-5678@127.0.0.1:1/app"),
            ("PLAIN", "plain-value"),
        ],
        None,
    );
    let env_of = |w: &mut Warden, service: &str| -> Vec<String> {
        let s = service.to_string();
        w.wait_log(&format!("{service}'s PLAIN or its end"), move |v| {
            v["service"] == s.as_str()
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("env: "))
                && v["message"].as_str().is_some_and(|m| m > "env: PLAIN")
        });
        w.dump()
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter(|v| v["service"] == service && v["stream"] == "stdout")
            .filter_map(|v| {
                v["message"]
                    .as_str()?
                    .strip_prefix("env: ")
                    .map(String::from)
            })
            .collect()
    };
    let plain = env_of(&mut w, "plain");
    assert!(
        plain.contains(&"PLAIN=plain-value".to_string()),
        "{plain:?}"
    );
    assert!(plain.iter().any(|l| l.starts_with("PATH=")), "{plain:?}");
    for secret in ["WARDEN_", "API_KEY=", "DB_URL=", "WARDEN_LOG="] {
        assert!(
            !plain.iter().any(|l| l.starts_with(secret)),
            "{secret} reached the child: {plain:?}"
        );
    }
    let named = env_of(&mut w, "named");
    assert!(named.contains(&"API_KEY=key-1234".to_string()), "{named:?}");
    assert!(
        named.contains(&"PLAIN=plain-value".to_string()),
        "{named:?}"
    );
    assert!(
        !named
            .iter()
            .any(|l| l.starts_with("PATH=") || l.starts_with("DB_URL=")),
        "exactly what it names: {named:?}"
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A service's env file that is not one (here shaped like /etc/shadow) is
/// reported by its line, never quoted: `last_error` is served by the API
/// and the event stream.
#[test]
fn a_bad_env_file_line_is_never_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.env");
    std::fs::write(&file, "OK=1\nroot:*:20228:0:99999:7:::\n").unwrap();
    let registry = format!(
        r#"
[api]
enabled = false
[services.app]
kind = "process"
command = ["sleep", "585858"]
env_files = ["{}"]
restart = {{ policy = "never" }}
"#,
        file.display()
    );
    let mut w = Warden::start(&registry);
    let failed = w.wait_event("app", "failed");
    let error = failed["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("app.env:2: expected KEY=value"), "{error}");
    assert!(
        !w.dump().contains("root:*"),
        "the line was shown:\n{}",
        w.dump()
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// A service's env files are read with its user's rights: a symbolic link
/// (which the user, owning the folder, could point at another service's
/// secrets) and a file its user may not read are refused, and nothing of
/// them reaches the child.
#[test]
fn env_files_are_read_with_the_service_users_rights() {
    let root = is_root();
    assert!(
        root,
        "this test runs warden as root (user =): run it as root, as CI does"
    );
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(dir.path(), 0o755);
    let secret = dir.path().join("other-service.env");
    std::fs::write(&secret, "DB_PASSWORD=other-services-secret\n").unwrap();
    mode(&secret, 0o600);
    std::os::unix::fs::symlink(&secret, dir.path().join("linked.env")).unwrap();
    let open = dir.path().join("open.env");
    std::fs::write(&open, "GREETING=hello\n").unwrap();
    mode(&open, 0o644);
    let registry = |file: &str| {
        format!(
            r#"
[api]
enabled = false
[services.app]
kind = "process"
command = ["sh", "-c", "echo got=$${{DB_PASSWORD:-}}$${{GREETING:-}}; exec sleep 595950"]
user = "nobody"
env_files = ["{}"]
restart = {{ policy = "never" }}
"#,
            dir.path().join(file).display()
        )
    };
    for (file, why) in [
        ("linked.env", "is a symbolic link"),
        ("other-service.env", "user nobody may not read it"),
    ] {
        let mut w = Warden::start(&registry(file));
        let failed = w.wait_event("app", "failed");
        let error = failed["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(why), "{file}: {error}");
        assert!(!w.dump().contains("other-services-secret"), "{}", w.dump());
        w.signal("TERM");
        assert_eq!(w.exit_code(), 0);
    }
    let mut w = Warden::start(&registry("open.env"));
    let line = w.wait_log("the child's line", |v| {
        v["service"] == "app" && v["stream"] == "stdout"
    });
    assert_eq!(line["message"], "got=hello");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

/// Whether the tests run as root (CI does): `user =` needs it.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}
