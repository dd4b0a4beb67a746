//! The service state machine: one enum of states, one enum of events, one
//! table of the transitions allowed, and a pure [`next`].
//!
//! Everything that changes a service's state goes through [`next`]; an
//! event the table does not allow in the current state is a bug in the
//! caller and is rejected (never applied "best effort").

use std::fmt;

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for its dependencies' conditions to hold.
    Pending,
    /// Started (a process spawned, a task running), not ready yet.
    Starting,
    /// Running and ready: its probe passed, or it said so.
    Ready,
    /// Asked to stop; waiting for it to end.
    Stopping,
    /// Not running, by request or by a clean exit that is not restarted.
    Stopped,
    /// Ended unexpectedly; waiting out the backoff delay before a restart.
    Backoff,
    /// A oneshot that exited successfully.
    Completed,
    /// Failed for good: restart budget exhausted, or policy `never`.
    Failed,
    /// Cannot run: a dependency failed for good.
    Blocked,
    /// A singleton waiting for leadership on another instance's lock.
    Standby,
    /// Turned off by the profile (`enabled = false`).
    Disabled,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Pending,
        State::Starting,
        State::Ready,
        State::Stopping,
        State::Stopped,
        State::Backoff,
        State::Completed,
        State::Failed,
        State::Blocked,
        State::Standby,
        State::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Backoff => "backoff",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Blocked => "blocked",
            State::Standby => "standby",
            State::Disabled => "disabled",
        }
    }

    /// Its dependents may count on it: ready, or a oneshot that completed.
    pub fn is_ready(self) -> bool {
        matches!(self, State::Ready | State::Completed)
    }

    /// Something is running that would have to be stopped.
    pub fn is_running(self) -> bool {
        matches!(self, State::Starting | State::Ready | State::Stopping)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a service. The supervisor decides which event a fact
/// (an exit, a timeout) becomes, from the restart policy and budget; the
/// state machine only says where each event leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// Its dependencies hold (or a restart is due, or an operator asked):
    /// it is being started.
    Start,
    /// Its readiness probe passed, or it called `ready()`.
    Ready,
    /// A oneshot exited successfully.
    Complete,
    /// It ended and will be restarted after a delay.
    Retry,
    /// It ended and will not be restarted: budget exhausted, policy
    /// `never` after a failure, or it could not be built.
    Fail,
    /// It exited cleanly and its policy does not restart it.
    Exit,
    /// Stop it (shutdown, an operator, a dependency's restart).
    Stop,
    /// It has ended after being asked to stop.
    Stopped,
    /// A dependency failed for good.
    Block,
    /// The blocking dependency is back: wait for the conditions again.
    Unblock,
    /// Wait for the dependencies again (after a stop for a dependency's
    /// restart, or before an operator's restart).
    Reset,
    /// A singleton that did not get the lock.
    Standby,
    /// Turned off (reload with `enabled = false`).
    Disable,
    /// Turned on again.
    Enable,
}

impl Event {
    pub const ALL: [Event; 14] = [
        Event::Start,
        Event::Ready,
        Event::Complete,
        Event::Retry,
        Event::Fail,
        Event::Exit,
        Event::Stop,
        Event::Stopped,
        Event::Block,
        Event::Unblock,
        Event::Reset,
        Event::Standby,
        Event::Disable,
        Event::Enable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Ready => "ready",
            Event::Complete => "complete",
            Event::Retry => "retry",
            Event::Fail => "fail",
            Event::Exit => "exit",
            Event::Stop => "stop",
            Event::Stopped => "stopped",
            Event::Block => "block",
            Event::Unblock => "unblock",
            Event::Reset => "reset",
            Event::Standby => "standby",
            Event::Disable => "disable",
            Event::Enable => "enable",
        }
    }
}

/// Every transition allowed: `(from, event, to)`. Anything else is illegal.
pub const TRANSITIONS: &[(State, Event, State)] = {
    use Event as E;
    use State as S;
    &[
        (S::Pending, E::Start, S::Starting),
        (S::Pending, E::Standby, S::Standby),
        (S::Pending, E::Block, S::Blocked),
        (S::Pending, E::Stop, S::Stopped),
        (S::Pending, E::Disable, S::Disabled),
        (S::Starting, E::Ready, S::Ready),
        (S::Starting, E::Complete, S::Completed),
        (S::Starting, E::Retry, S::Backoff),
        (S::Starting, E::Fail, S::Failed),
        (S::Starting, E::Exit, S::Stopped),
        (S::Starting, E::Stop, S::Stopping),
        (S::Ready, E::Complete, S::Completed),
        (S::Ready, E::Retry, S::Backoff),
        (S::Ready, E::Fail, S::Failed),
        (S::Ready, E::Exit, S::Stopped),
        (S::Ready, E::Stop, S::Stopping),
        (S::Stopping, E::Stopped, S::Stopped),
        // Stopped because it failed (start timeout, failed health check):
        // once it has ended, it retries or fails like any failure.
        (S::Stopping, E::Retry, S::Backoff),
        (S::Stopping, E::Fail, S::Failed),
        (S::Backoff, E::Start, S::Starting),
        (S::Backoff, E::Stop, S::Stopped),
        (S::Backoff, E::Block, S::Blocked),
        // An operator's restart: stopped, then started at once.
        (S::Stopped, E::Start, S::Starting),
        (S::Stopped, E::Reset, S::Pending),
        (S::Stopped, E::Block, S::Blocked),
        (S::Stopped, E::Standby, S::Standby),
        (S::Stopped, E::Disable, S::Disabled),
        (S::Completed, E::Reset, S::Pending),
        (S::Completed, E::Disable, S::Disabled),
        (S::Failed, E::Reset, S::Pending),
        (S::Failed, E::Disable, S::Disabled),
        (S::Blocked, E::Unblock, S::Pending),
        (S::Blocked, E::Stop, S::Stopped),
        (S::Blocked, E::Disable, S::Disabled),
        (S::Standby, E::Start, S::Starting),
        (S::Standby, E::Stop, S::Stopped),
        (S::Standby, E::Block, S::Blocked),
        (S::Standby, E::Disable, S::Disabled),
        (S::Disabled, E::Enable, S::Pending),
    ]
};

/// An event the current state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IllegalTransition {
    pub from: State,
    pub event: Event,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "illegal transition: {:?} in state {}",
            self.event, self.from
        )
    }
}

impl std::error::Error for IllegalTransition {}

/// The state `event` leads to from `from`, or why it cannot happen.
pub fn next(from: State, event: Event) -> Result<State, IllegalTransition> {
    TRANSITIONS
        .iter()
        .find(|(f, e, _)| *f == from && *e == event)
        .map(|(_, _, to)| *to)
        .ok_or(IllegalTransition { from, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_row_of_the_table_is_what_next_does() {
        for &(from, event, to) in TRANSITIONS {
            assert_eq!(next(from, event), Ok(to), "{from} --{event:?}-->");
        }
    }

    #[test]
    fn every_pair_outside_the_table_is_rejected() {
        let allowed: HashSet<(State, Event)> =
            TRANSITIONS.iter().map(|(f, e, _)| (*f, *e)).collect();
        let mut rejected = 0;
        for from in State::ALL {
            for event in Event::ALL {
                if !allowed.contains(&(from, event)) {
                    assert_eq!(next(from, event), Err(IllegalTransition { from, event }));
                    rejected += 1;
                }
            }
        }
        assert_eq!(
            rejected,
            State::ALL.len() * Event::ALL.len() - TRANSITIONS.len()
        );
    }

    #[test]
    fn the_table_is_a_function_and_every_state_is_reachable_and_left() {
        let pairs: HashSet<(State, Event)> = TRANSITIONS.iter().map(|(f, e, _)| (*f, *e)).collect();
        assert_eq!(
            pairs.len(),
            TRANSITIONS.len(),
            "one target per (state, event)"
        );
        for s in State::ALL {
            assert!(
                TRANSITIONS.iter().any(|(f, _, _)| *f == s),
                "{s} has no way out"
            );
            if s != State::Pending && s != State::Disabled {
                assert!(
                    TRANSITIONS.iter().any(|(_, _, t)| *t == s),
                    "{s} cannot be reached"
                );
            }
        }
    }

    #[test]
    fn a_running_service_is_never_left_without_being_stopped_or_ending() {
        // From a running state, only events that mean "it ended" or "stop
        // it" are allowed: nothing can start, block or reset a live service.
        for &(from, event, _) in TRANSITIONS {
            if matches!(from, State::Starting | State::Ready) {
                assert!(
                    matches!(
                        event,
                        Event::Ready
                            | Event::Complete
                            | Event::Retry
                            | Event::Fail
                            | Event::Exit
                            | Event::Stop
                    ),
                    "{from} --{event:?}"
                );
            }
        }
    }
}
