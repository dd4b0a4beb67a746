//! The one reaper of child processes.
//!
//! warden collects exit statuses in exactly one place: a task woken by
//! SIGCHLD that calls `waitpid(-1, WNOHANG)` until nothing is left. A
//! managed child's status goes to the waiter registered at spawn; anything
//! else (an orphan re-parented to warden as PID 1 or subreaper) is reaped
//! and dropped. Two mechanisms (tokio's `Child::wait` and a `waitpid(-1)`
//! loop) would steal statuses from each other, so nothing in warden spawns
//! children except through [`Reaper::spawn`], and nothing else waits.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The status as a shell reports it: the exit code, or 128 + N for a
    /// process killed by signal N.
    pub fn as_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                write!(f, "killed by {name}")
            }
        }
    }
}

type Waiters = HashMap<i32, oneshot::Sender<ExitStatus>>;

/// The process-wide reaper. Cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
    orphans: Arc<std::sync::atomic::AtomicU64>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

impl Reaper {
    /// The reaper, started on first use (inside a tokio runtime).
    pub fn get() -> io::Result<Reaper> {
        if let Some(r) = REAPER.get() {
            return Ok(r.clone());
        }
        let reaper = Reaper {
            waiters: Default::default(),
            orphans: Default::default(),
        };
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = REAPER.get_or_init(|| reaper.clone()).clone();
        if Arc::ptr_eq(&r.waiters, &reaper.waiters) {
            let task = r.clone();
            tokio::spawn(async move {
                loop {
                    task.reap_all();
                    if sigchld.recv().await.is_none() {
                        break;
                    }
                }
            });
        }
        Ok(r)
    }

    /// Spawns `cmd` and registers its pid before any SIGCHLD for it can be
    /// handled: the returned receiver always gets the child's status.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let (tx, rx) = oneshot::channel();
        // Holding the lock across the spawn makes the reaping task wait to
        // dispatch, so a child that dies at once still finds its waiter.
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        waiters.insert(child.id() as i32, tx);
        drop(waiters);
        // A status may have arrived before the SIGCHLD handler existed.
        self.reap_all();
        Ok((child, rx))
    }

    /// Orphans reaped so far (processes warden did not start itself).
    /// At exit: reaps until no child is left, for at most `within`, so
    /// that the processes killed on the way out (a group's leftovers,
    /// re-parented to warden) are gone before warden is, instead of being
    /// handed to init still dying. Returns whether none is left.
    pub fn drain(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            self.reap_all();
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Err(nix::errno::Errno::ECHILD) => return true,
                Ok(WaitStatus::StillAlive) if std::time::Instant::now() >= deadline => {
                    return false;
                }
                Ok(WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => {
                    self.waiters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&pid.as_raw());
                }
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    }

    /// At exit, when warden is not PID 1: stops what is left among its
    /// children once every service has stopped. Those are descendants of
    /// services that left their process group (`setsid`) and outlived
    /// their parent, re-parented to warden as child subreaper (the groups
    /// of the services themselves were killed with them). Each gets
    /// SIGTERM (its whole group too when it leads one), then `grace` for
    /// all of them to exit, then SIGKILL; what they leave in turn comes to
    /// warden and is treated alike. What it signalled is reaped here, or
    /// by [`Reaper::drain`] after it (at most a second past `grace`).
    ///
    /// It runs without yielding: the reaping task cannot run meanwhile, so
    /// a pid listed here stays this child's (alive or a zombie) until it
    /// is reaped here, and signalling it cannot hit another process.
    pub fn stop_escaped(&self, grace: std::time::Duration) {
        use nix::sys::signal::Signal;
        use std::collections::HashSet;
        use std::time::{Duration, Instant};
        let term_until = Instant::now() + grace;
        let mut termed = HashSet::new();
        let mut killed = HashSet::new();
        let mut kill_until = None;
        loop {
            self.reap_all();
            let live = live_children();
            let now = Instant::now();
            if live.is_empty() {
                break;
            }
            let sig = if now < term_until {
                Signal::SIGTERM
            } else {
                let until = *kill_until.get_or_insert(now + Duration::from_secs(1));
                if now >= until {
                    tracing::warn!(pids = ?live, "some processes could not be stopped");
                    break;
                }
                Signal::SIGKILL
            };
            if termed.is_empty() && killed.is_empty() {
                tracing::warn!(
                    count = live.len(),
                    pids = ?live,
                    grace = ?grace,
                    "stopping processes that left their service's process group"
                );
            }
            if sig == Signal::SIGKILL && killed.is_empty() {
                tracing::warn!(
                    count = live.len(),
                    pids = ?live,
                    "killed processes that outlived the grace (SIGKILL)"
                );
            }
            for pid in live {
                let sent = match sig {
                    Signal::SIGKILL => &mut killed,
                    _ => &mut termed,
                };
                if sent.insert(pid) {
                    signal_with_group(pid, sig);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.orphans.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn reap_all(&self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let (pid, status) = status;
            let waiter = self
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pid.as_raw());
            match waiter {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    self.orphans
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(pid = pid.as_raw(), %status, "reaped an orphan");
                }
            }
        }
    }
}

/// The children of warden that live on: of any of its threads
/// (`/proc/self/task/*/children`), else, where the kernel lacks that file,
/// of warden's pid (a scan of `/proc`); without those already dying (a
/// zombie, or SIGKILL pending: what was left in a service's group, killed
/// with it).
fn live_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                listed = true;
                pids.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    if !listed && let Ok(all) = std::fs::read_dir("/proc") {
        pids.extend(
            all.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| ppid_of(p) == Some(me)),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&p| p != me && !dying(p));
    pids
}

/// A zombie, or a process with SIGKILL pending (`SigPnd`/`ShdPnd` of
/// `/proc/PID/status`); also one that is gone.
fn dying(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let sigkill = 1u64 << (nix::sys::signal::Signal::SIGKILL as u64 - 1);
    status.lines().any(|l| {
        let (key, value) = l.split_once(':').unwrap_or((l, ""));
        match key {
            "State" => value.trim_start().starts_with(['Z', 'X']),
            "SigPnd" | "ShdPnd" => {
                u64::from_str_radix(value.trim(), 16).is_ok_and(|m| m & sigkill != 0)
            }
            _ => false,
        }
    })
}

/// A process's parent pid, from `/proc/PID/stat`.
fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `sig` to `pid`, and to its process group when it leads one that is
/// not warden's own (a process that called setsid(): what it started in
/// its group goes with it).
fn signal_with_group(pid: i32, sig: nix::sys::signal::Signal) {
    use nix::sys::signal::{kill, killpg};
    use nix::unistd::{Pid, getpgid};
    let p = Pid::from_raw(pid);
    let _ = kill(p, sig);
    if getpgid(Some(p)) == Ok(p) && getpgid(None) != Ok(p) {
        let _ = killpg(p, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::{dying, ppid_of};

    #[test]
    fn parent_and_dying_are_read_from_proc() {
        let me = std::process::id() as i32;
        assert_eq!(ppid_of(me), Some(nix::unistd::getppid().as_raw()));
        assert!(!dying(me));
        // An exited child that nobody has reaped yet is a zombie.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !dying(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} never ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.wait();
        // A pid that is gone counts as dying: nothing is left to stop.
        assert!(dying(pid));
    }
}
