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

/// Waits until no process is left in group `pgid`, or `deadline`;
/// whether the group is gone. (Its members are reaped by warden's reaper,
/// so a member that exited leaves the group at once.)
pub async fn group_gone_by(pgid: i32, deadline: tokio::time::Instant) -> bool {
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        // Signal 0: is anyone left? ESRCH: no one.
        if killpg(Pid::from_raw(pgid), None).is_err() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}
