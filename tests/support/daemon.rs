//! A running `warden run` for integration tests: its JSON log lines, its
//! signals and exit code, and looks at the processes it runs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// A running `warden run`, its JSON log lines arriving on a channel.
pub struct Warden {
    child: Child,
    logs: mpsc::Receiver<Json>,
    seen: Vec<Json>,
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
}

pub fn write_registry(dir: &Path, text: &str) {
    std::fs::write(dir.join("services.toml"), text).unwrap();
}

impl Warden {
    pub fn start(registry: &str) -> Warden {
        Warden::start_with(registry, &[], None)
    }

    /// `warden run ARGS...` (such as `--only a`).
    pub fn start_args(registry: &str, args: &[&str]) -> Warden {
        Warden::start_full(registry, &[], None, args, 0o755)
    }

    pub fn start_with(registry: &str, env: &[(&str, &str)], wrapper: Option<&[&str]>) -> Warden {
        Warden::start_full(registry, env, wrapper, &[], 0o755)
    }

    /// Like `start_with`, in a folder that only its owner may enter (mode
    /// 0700, as `/root` is): the servers a registry runs as other users
    /// cannot reach it.
    pub fn start_private(registry: &str, env: &[(&str, &str)]) -> Warden {
        Warden::start_full(registry, env, None, &[], 0o700)
    }

    fn start_full(
        registry: &str,
        env: &[(&str, &str)],
        wrapper: Option<&[&str]>,
        args: &[&str],
        mode: u32,
    ) -> Warden {
        let dir = tempfile::tempdir().unwrap();
        // 0755: others may pass through (a server the registry runs as
        // another user, PostgreSQL under its ./var/).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
        write_registry(dir.path(), registry);
        let bin = env!("CARGO_BIN_EXE_warden");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["run", "--log-format", "json"])
            .args(args)
            .current_dir(dir.path())
            .env("WARDEN_LOG", "warden=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start warden");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"raw": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let path = dir.path().to_path_buf();
        Warden {
            child,
            logs: rx,
            seen: Vec::new(),
            _dir: dir,
            dir: path,
        }
    }

    /// Waits up to 20 s for a log line matching `pred`.
    pub fn wait_log(&mut self, what: &str, pred: impl Fn(&Json) -> bool) -> Json {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.logs.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no log line for {what}; saw:\n{}", self.dump());
    }

    pub fn wait_event(&mut self, service: &str, message: &str) -> Json {
        let (s, m) = (service.to_string(), message.to_string());
        self.wait_log(&format!("{service}: {message}"), move |v| {
            v["service"] == s.as_str() && v["message"] == m.as_str()
        })
    }

    /// How many log lines so far match `pred` (without waiting).
    pub fn count_logs(&mut self, pred: impl Fn(&Json) -> bool) -> usize {
        while let Ok(v) = self.logs.try_recv() {
            self.seen.push(v);
        }
        self.seen.iter().filter(|v| pred(v)).count()
    }

    pub fn dump(&mut self) -> String {
        while let Ok(v) = self.logs.try_recv() {
            self.seen.push(v);
        }
        self.seen
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn signal(&self, sig: &str) {
        signal_pid(self.child.id(), sig);
    }

    /// warden's own pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid (as this test sees it) of warden's first child: warden
    /// itself when it runs under `unshare --fork`.
    pub fn inner_pid(&self) -> u32 {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("unshare has a child")
    }

    /// Waits for the exit code (20 s at most).
    pub fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("warden did not exit; log:\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        // Stop it the way an operator would, so that a failed test leaves
        // no process behind; kill it only if that does not work.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client command (`warden status`, `warden stop NAME`...) against
/// the API on `port`, without a token; returns (exit code, stdout, stderr).
pub fn client(port: u16, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env("WARDEN_URL", format!("http://127.0.0.1:{port}"))
        .env_remove("WARDEN_API_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A line received on the notify socket, and when.
pub type Message = (Instant, String);

/// Children of `ppid` in state Z.
pub fn zombie_children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let (state, parent) = (rest.next(), rest.next().and_then(|p| p.parse::<u32>().ok()));
        if state == Some("Z") && parent == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

pub fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {sig} {pid}");
}

/// Processes whose command line contains `marker`, as (pid, state).
pub fn processes_with(marker: &str) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.trim().chars().next())
                .unwrap_or('?');
            out.push((pid, state));
        }
    }
    out
}

pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 10 s for `f` to give a value.
pub fn wait_for<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
