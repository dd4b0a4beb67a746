//! The systemd side (`Type=notify`): `READY=1` once every enabled critical
//! service is ready, `STATUS=` summaries as states change, `STOPPING=1` when the
//! shutdown begins, and `WATCHDOG=1` at half of `WATCHDOG_USEC` while the
//! supervisor loop is live. Without `NOTIFY_SOCKET` every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
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
    let mut ready_sent = false;
    let mut stopping_sent = false;
    let mut last_status = String::new();
    loop {
        let tally = status.tally_and_update();
        if *stopping.borrow_and_update() && !stopping_sent {
            stopping_sent = true;
            let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
        if !stopping_sent {
            let line = summary(&tally);
            if !ready_sent && tally.critical_ready() {
                ready_sent = true;
                READY_SENT.store(true, Ordering::SeqCst);
                let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
                last_status = line;
            } else if line != last_status {
                let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
                last_status = line;
            }
        }
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

/// Whether `READY=1` has been sent (once every critical service was
/// ready): a reload says `RELOADING=1` and `READY=1` only after that.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Tells systemd a reload is under way (`RELOADING=1` with the monotonic
/// time systemd asks for), then `READY=1` once done.
///
/// Nothing before `READY=1` was first sent: systemd is still waiting for
/// the start, and a `READY=1` after the reload would end that wait before
/// every critical service is ready.
pub fn reloading() {
    if std::env::var_os("NOTIFY_SOCKET").is_none() || !READY_SENT.load(Ordering::SeqCst) {
        return;
    }
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

pub fn reloaded() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() && READY_SENT.load(Ordering::SeqCst) {
        let _ = sd_notify::notify(&[NotifyState::Ready]);
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
}
