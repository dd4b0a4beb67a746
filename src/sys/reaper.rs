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
