//! Process plumbing below both the probes and the process kind: the one
//! reaper of child processes, the guard that kills a process group, and
//! what children inherit of warden (descriptors, environment).

pub mod env;
pub mod fds;
pub mod reaper;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Kills a process group with SIGKILL when dropped, unless disarmed: a run
/// that is aborted (or panics) never leaves its processes behind.
pub struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl GroupGuard {
    pub fn new(pgid: i32) -> GroupGuard {
        GroupGuard { pgid, armed: true }
    }

    /// The leader has exited: kill what is left of its group, and stop
    /// guarding.
    pub fn disarm_and_kill_rest(mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
    }
}
