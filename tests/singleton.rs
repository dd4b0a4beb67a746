//! DESIGN.md §3 "Singletons": two warden instances share one PostgreSQL;
//! a `singleton = true` service runs on exactly one of them, and the other
//! takes over when the leader's session ends.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::servers::Postgres;

struct Instance {
    child: Child,
    logs: mpsc::Receiver<serde_json::Value>,
    seen: std::cell::RefCell<Vec<serde_json::Value>>,
    _dir: tempfile::TempDir,
}

impl Instance {
    fn start(dsn: &str, marker: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let registry = format!(
            r#"
[warden]
postgres = "{dsn}"
[api]
enabled = false
[services.cron]
kind = "process"
command = ["sleep", "{marker}"]
singleton = true
[services.local]
kind = "process"
command = ["sleep", "1{marker}"]
"#
        );
        std::fs::write(dir.path().join("services.toml"), registry).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["run", "--log-format", "json"])
            .current_dir(dir.path())
            .env_remove("NOTIFY_SOCKET")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or_default();
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Instance {
            child,
            logs: rx,
            seen: Default::default(),
            _dir: dir,
        }
    }

    /// Waits for a log line of `service` with `message` (lines already
    /// read are searched first).
    fn wait_message(&self, service: &str, message: &str) {
        let matches = |v: &serde_json::Value| v["service"] == service && v["message"] == message;
        if self.seen.borrow().iter().any(matches) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.logs.recv_timeout(left) {
                Ok(v) => {
                    let hit = matches(&v);
                    self.seen.borrow_mut().push(v);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let seen: Vec<String> = self.seen.borrow().iter().map(|v| v.to_string()).collect();
        panic!("{service}: no {message:?}; saw:\n{}", seen.join("\n"));
    }

    /// Forgets the lines read so far (to wait for a new occurrence).
    fn forget(&self) {
        self.seen.borrow_mut().clear();
    }

    fn stop(&mut self) -> i32 {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Instance {
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

fn running(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).replace('\0', " ").trim_end()
                        == format!("sleep {marker}")
                })
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn a_singleton_runs_on_one_instance_and_the_other_takes_over() {
    let pg = Postgres::start();
    let mut a = Instance::start(&pg.dsn, "111222");
    a.wait_message("cron", "ready");
    let b = Instance::start(&pg.dsn, "111222");
    b.wait_message("cron", "standby: another instance runs the singleton");
    b.wait_message("local", "ready");
    assert_eq!(
        running("111222"),
        1,
        "exactly one instance runs the singleton"
    );
    assert_eq!(running("1111222"), 2, "non-singletons run everywhere");

    // The leader stops: its session ends, the standby takes over at once.
    let t = Instant::now();
    b.forget();
    assert_eq!(a.stop(), 0);
    b.wait_message("cron", "leader: this instance runs the singleton");
    b.wait_message("cron", "ready");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "takeover took {:?}",
        t.elapsed()
    );
    assert_eq!(running("111222"), 1);
}
