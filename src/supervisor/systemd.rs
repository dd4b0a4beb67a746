//! The systemd side (`Type=notify`): `READY=1` once every enabled critical
//! service is ready, `STATUS=` summaries as states change, `STOPPING=1` when the
//! shutdown begins, and `WATCHDOG=1` at half of `WATCHDOG_USEC` while the
//! supervisor loop is live. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

use super::Tally;
use super::state::State;

/// A one-line summary for `STATUS=`.
pub fn summary(t: &Tally) -> String {
    let mut parts = vec![format!(
        "{}/{} ready",
        t.count(State::Ready) + t.count(State::Completed),
        t.total()
    )];
    for s in [
        State::Starting,
        State::Backoff,
        State::Failed,
        State::Blocked,
        State::Stopping,
    ] {
        let n = t.count(s);
        if n > 0 {
            parts.push(format!("{n} {s}"));
        }
    }
    parts.join(", ")
}

/// What warden says to systemd, decided from the status alone (the socket
/// is [`notifier`]'s): `READY=1` once every critical service is ready,
/// `STATUS=` as the summary changes, `STOPPING=1` once, and around a
/// reload `RELOADING=1` and `READY=1`, only after the first `READY=1` (before
/// it systemd still waits for the start, and a `READY=1` would end that
/// wait before every critical service is ready). Nothing after
/// `STOPPING=1`.
#[derive(Debug, Default)]
pub struct Speaker {
    ready_sent: bool,
    stopping_sent: bool,
    last_status: String,
}

/// One message of the sd_notify protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say {
    /// `READY=1` with the first `STATUS=`.
    Ready(String),
    Status(String),
    Stopping,
    Reloading,
    /// `READY=1` that ends a reload.
    Reloaded,
}

impl Speaker {
    /// What to say now that the status is `tally` (`stopping`: the
    /// shutdown has begun).
    pub fn follow(&mut self, tally: &Tally, stopping: bool) -> Option<Say> {
        if self.stopping_sent {
            return None;
        }
        if stopping {
            self.stopping_sent = true;
            return Some(Say::Stopping);
        }
        let line = summary(tally);
        if !self.ready_sent && tally.critical_ready() {
            self.ready_sent = true;
            self.last_status.clone_from(&line);
            return Some(Say::Ready(line));
        }
        if line != self.last_status {
            self.last_status.clone_from(&line);
            return Some(Say::Status(line));
        }
        None
    }

    /// A reload begins.
    pub fn reloading(&self) -> Option<Say> {
        (self.ready_sent && !self.stopping_sent).then_some(Say::Reloading)
    }

    /// A reload is done.
    pub fn reloaded(&self) -> Option<Say> {
        (self.ready_sent && !self.stopping_sent).then_some(Say::Reloaded)
    }
}

/// The process's one speaker: the notifier follows the status with it, a
/// reload (from the API or SIGHUP) asks it around the reload.
static SPEAKER: std::sync::Mutex<Speaker> = std::sync::Mutex::new(Speaker {
    ready_sent: false,
    stopping_sent: false,
    last_status: String::new(),
});

fn speaker() -> std::sync::MutexGuard<'static, Speaker> {
    SPEAKER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `say` on `NOTIFY_SOCKET` (errors ignored: systemd may be gone).
fn send(say: Option<Say>) {
    let Some(say) = say else { return };
    let _ = match &say {
        Say::Ready(line) => sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(line)]),
        Say::Status(line) => sd_notify::notify(&[NotifyState::Status(line)]),
        Say::Stopping => {
            sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")])
        }
        Say::Reloading => {
            let mut states = vec![NotifyState::Reloading];
            if let Ok(now) = NotifyState::monotonic_usec_now() {
                states.push(now);
            }
            sd_notify::notify(&states)
        }
        Say::Reloaded => sd_notify::notify(&[NotifyState::Ready]),
    };
}

/// Follows the supervisor's status and speaks the sd_notify protocol until
/// the status channel closes. `stopping` resolves when shutdown begins.
pub async fn notifier(handle: super::Handle) {
    let mut status = handle.watch();
    let mut stopping = handle.stopping();
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut ticker = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let tally = status.tally_and_update();
        let say = speaker().follow(&tally, *stopping.borrow_and_update());
        send(say);
        tokio::select! {
            r = status.changed() => if r.is_err() { return },
            r = stopping.changed() => if r.is_err() { return },
            _ = ticker.tick(), if watchdog.is_some() => {
                // Only a loop that answers earns the ping.
                if handle.ping(watchdog.unwrap_or_default()).await {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                }
            }
        }
    }
}

/// Tells systemd a reload is under way (`RELOADING=1` with the monotonic
/// time systemd asks for), if [`Speaker::reloading`] says so.
pub fn reloading() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let say = speaker().reloading();
        send(say);
    }
}

/// Tells systemd the reload is done (`READY=1`), if
/// [`Speaker::reloaded`] says so.
pub fn reloaded() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let say = speaker().reloaded();
        send(say);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_ready_and_names_only_the_states_present() {
        let mut t = Tally::default();
        for (s, n) in [
            (State::Ready, 6),
            (State::Completed, 1),
            (State::Starting, 1),
            (State::Backoff, 1),
            (State::Stopped, 2),
        ] {
            for _ in 0..n {
                t.add(s, false);
            }
        }
        assert_eq!(summary(&t), "7/11 ready, 1 starting, 1 backoff");
        t.add(State::Failed, false);
        t.add(State::Blocked, false);
        t.add(State::Stopping, false);
        assert_eq!(
            summary(&t),
            "7/14 ready, 1 starting, 1 backoff, 1 failed, 1 blocked, 1 stopping"
        );
        assert_eq!(summary(&Tally::default()), "0/0 ready");
    }

    #[test]
    fn ready_once_every_critical_service_is_ready_and_a_reload_is_spoken_of_only_after_it() {
        let mut sp = Speaker::default();
        let mut t = Tally::default();
        t.add(State::Starting, true);
        t.add(State::Ready, false);
        assert_eq!(
            sp.follow(&t, false),
            Some(Say::Status("1/2 ready, 1 starting".into()))
        );
        assert_eq!(
            sp.follow(&t, false),
            None,
            "the same line is not said twice"
        );
        // A reload before READY=1: systemd still waits for the start.
        assert_eq!(sp.reloading(), None);
        assert_eq!(sp.reloaded(), None);
        t.remove(State::Starting, true);
        t.add(State::Ready, true);
        assert_eq!(sp.follow(&t, false), Some(Say::Ready("2/2 ready".into())));
        assert_eq!(sp.follow(&t, false), None);
        assert_eq!(sp.reloading(), Some(Say::Reloading));
        assert_eq!(sp.reloaded(), Some(Say::Reloaded));
        // READY=1 is said once; a critical service restarting is a status.
        t.remove(State::Ready, true);
        t.add(State::Backoff, true);
        assert_eq!(
            sp.follow(&t, false),
            Some(Say::Status("1/2 ready, 1 backoff".into()))
        );
        t.remove(State::Backoff, true);
        t.add(State::Ready, true);
        assert_eq!(sp.follow(&t, false), Some(Say::Status("2/2 ready".into())));
        // STOPPING=1 once, then nothing at all.
        assert_eq!(sp.follow(&t, true), Some(Say::Stopping));
        assert_eq!(sp.follow(&t, true), None);
        assert_eq!(sp.follow(&t, false), None);
        assert_eq!(sp.reloading(), None);
        assert_eq!(sp.reloaded(), None);
    }
}
