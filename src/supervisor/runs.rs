//! One run of a unit: building and spawning it, asking it to stop, and
//! what its end leads to (a restart after the backoff, a failure for good,
//! a completion, or what the stop was for).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::decide::{Dependents, Ending, ExitInput, Outcome, Then, decide};
use super::dependents::Held;
use super::event_loop::holds;
use super::events::{Happened, RestartReason};
use super::state::{Event, State};
use super::{AfterStop, EXIT_CRITICAL, Msg, StopCause, Supervisor};
use crate::config::Runs;
use crate::services::{Context, ServiceError};

impl Supervisor {
    /// Builds and spawns one run of a unit, unless a dependent that its
    /// restart stopped is still stopping: then the start waits for it
    /// ([`Held::Start`]).
    pub(super) fn start_unit(&mut self, name: &str) {
        if self.dependents_stopping(name) {
            let u = &mut self.units[name];
            if u.held.is_none() {
                tracing::info!(service = %name, "waiting for its dependents to stop before it starts");
            }
            self.hold(name, Held::Start);
            return;
        }
        if !self.transition(name, Event::Start) {
            return;
        }
        let u = &mut self.units[name];
        u.generation += 1;
        u.stop_cause = AfterStop::Stay.into();
        u.exit_status = Default::default();
        u.ready_since = None;
        if let Some(t) = u.start_timer.take() {
            t.abort();
        }
        let generation = u.generation;
        let built = match self.kinds.factory(u.spec.kind.kind_name()) {
            Some(f) => f.build(&u.spec),
            None => Err(ServiceError(format!(
                "kind {} has no implementation in this build of warden",
                u.spec.kind.kind_name()
            ))),
        };
        let service = match built {
            Ok(s) => s,
            Err(e) => {
                // Building is part of starting: a failure like any other.
                let name: Arc<str> = u.name.clone();
                let _ = self.tx.send(Msg::Ended {
                    name,
                    generation,
                    result: Err(e),
                });
                return;
            }
        };
        let cancel = CancellationToken::new();
        let ctx = Context::new(
            u.name.clone(),
            generation,
            cancel.clone(),
            self.reports_tx.clone(),
            u.details.clone(),
            u.logs.clone(),
            u.exit_status.clone(),
        );
        // Every event the service emits carries its name (the span's field).
        let span = tracing::info_span!("service", service = %u.name);
        let task = tokio::spawn(tracing::Instrument::instrument(service.run(ctx), span));
        u.abort = Some(task.abort_handle());
        u.cancel = Some(cancel);
        let tx = self.tx.clone();
        let task_name = u.name.clone();
        tokio::spawn(async move {
            let result = match task.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(ServiceError(format!(
                    "panicked: {}",
                    panic_message(e.into_panic())
                ))),
                Err(_) => Err(ServiceError("aborted after its stop timeout".into())),
            };
            let _ = tx.send(Msg::Ended {
                name: task_name,
                generation,
                result,
            });
        });
        tracing::info!(service = %u.name, generation, "started");
        let timeout = u.spec.common.start_timeout;
        let timer_name = u.name.clone();
        if !timeout.is_zero() {
            let t = self.timer(
                timeout,
                Msg::StartTimeout {
                    name: timer_name,
                    generation,
                },
            );
            self.units[name].start_timer = Some(t);
        }
    }

    /// Asks a running unit to stop; `cause` says what happens once it has.
    pub(super) fn stop_unit(&mut self, name: &str, cause: impl Into<StopCause>) {
        let u = &mut self.units[name];
        if !matches!(u.state, State::Starting | State::Ready) {
            return;
        }
        u.stop_cause = cause.into();
        self.transition(name, Event::Stop);
        self.ask_to_stop(name);
    }

    /// Asks the run of a `stopping` unit to end (its token is cancelled),
    /// and gives it its stop timeout (when forced, aborts it at once).
    pub(super) fn ask_to_stop(&mut self, name: &str) {
        let process = self
            .kinds
            .get(self.units[name].spec.kind.kind_name())
            .is_some_and(|k| k.def().runs() == Runs::Process);
        let u = &self.units[name];
        if let Some(c) = &u.cancel {
            c.cancel();
        }
        #[cfg(test)]
        self.traced(super::Traced::AskStop {
            name: u.name.clone(),
            cause: u.stop_cause.clone(),
        });
        let generation = u.generation;
        // A stop command has its own grace before the signal's. A process
        // escalates to SIGKILL by itself when its grace is over; aborting
        // the run is the last resort a moment after that, so that the
        // process is reaped and its last lines read first.
        let stop = &u.spec.common.stop;
        let mut timeout = stop
            .timeout
            .saturating_mul(if stop.command.is_some() { 2 } else { 1 });
        if process {
            timeout = timeout.saturating_add(Duration::from_secs(1));
        }
        let timer_name = u.name.clone();
        if self.forced {
            if let Some(a) = &self.units[name].abort {
                a.abort();
            }
        } else {
            let t = self.timer(
                timeout,
                Msg::StopTimeout {
                    name: timer_name,
                    generation,
                },
            );
            self.units[name].state_timer = Some(t);
        }
    }

    /// The run was not ready within `start_timeout`: stop it, as a failure.
    pub(super) fn start_timed_out(&mut self, name: &str, generation: u64) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        // During the shutdown it is stopped in its turn (dependents first),
        // not out of order for a restart that will not come.
        if u.generation == generation && u.state == State::Starting && !self.shutting_down {
            let t = humantime::format_duration(u.spec.common.start_timeout);
            // The ordered path of any restart: the dependents that restart
            // or stop with it first, then its own stop.
            self.dependency_restarting(name);
            self.stop_for_restart(
                name,
                StopCause::StartTimedOut(format!("not ready within start_timeout ({t})")),
            );
        }
    }

    /// The backoff delay is over: start the next run.
    pub(super) fn backoff_elapsed(&mut self, name: &str, generation: u64) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        if u.generation == generation && u.state == State::Backoff && !self.shutting_down {
            self.start_after_backoff(name);
        }
    }

    /// The next run of a unit in backoff (its delay over, or an operator's
    /// restart). One that restarts with its dependencies
    /// (`on_dependency_restart = "restart"`) and finds one of them on its
    /// way to restart waits for it in `pending` instead.
    /// Conditions are checked whenever a service is about to start: a
    /// dependency that is itself restarting (in backoff, stopping) is
    /// waited for, whatever `on_dependency_restart` says.
    fn conditions_hold(&self, name: &str) -> bool {
        self.graph
            .dependencies(name)
            .iter()
            .all(|(d, c)| self.units.get(*d).is_none_or(|d| holds(d.state, d.met, *c)))
    }

    pub(super) fn start_after_backoff(&mut self, name: &str) {
        if !self.conditions_hold(name) {
            self.units[name].generation += 1;
            self.transition(name, Event::Stop);
            self.transition(name, Event::Reset);
        } else {
            self.start_unit(name);
        }
    }

    /// The run did not stop within its stop timeout: abort it.
    pub(super) fn stop_timed_out(&mut self, name: &str, generation: u64) {
        if let Some(u) = self
            .units
            .get(name)
            .filter(|u| u.generation == generation && u.state == State::Stopping)
        {
            tracing::warn!(service = %name, "did not stop in time; aborting");
            if let Some(a) = &u.abort {
                a.abort();
            }
        }
    }

    /// A run ended: work out what that leads to ([`decide`]) and carry it
    /// out. Reports of older runs, and anything that is not the end of a
    /// live run, are ignored.
    pub(super) fn on_ended(
        &mut self,
        name: &str,
        generation: u64,
        result: Result<(), ServiceError>,
    ) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        if u.generation != generation {
            return;
        }
        // The run is over, however it ended: what it left running (its
        // health watch, tasks it spawned on its token) ends with it.
        if let Some(c) = u.cancel.take() {
            c.cancel();
        }
        u.abort = None;
        if u.state == State::Stopping && matches!(u.held, Some(Held::Stop)) {
            // It ended before it was asked to stop, while its dependents
            // stop: what follows its end waits for them too.
            self.hold(name, Held::Ended(result));
            return;
        }
        let (ending, error) = match u.state {
            State::Stopping => match std::mem::replace(&mut u.stop_cause, AfterStop::Stay.into()) {
                StopCause::Asked(after) => (Ending::Stopped(after), None),
                StopCause::HealthFailed(e) => (Ending::HealthFailed, Some(e)),
                StopCause::StartTimedOut(e) => (Ending::StartTimedOut, Some(e)),
            },
            State::Starting | State::Ready => match result {
                Ok(()) => (Ending::Exited, None),
                // A run's error reaches the log, last_error and the API:
                // no password in it, whatever the service wrote.
                Err(e) => (Ending::Failed, Some(crate::config::secret::redact(&e.0))),
            },
            // A build failure arrives while still Starting; anything else
            // is a stale message.
            _ => return,
        };
        let c = &u.spec.common;
        // Critical as the registry in force says (a reload may have changed
        // it while the run stopped).
        let (policy, oneshot, critical) =
            (c.restart.policy, c.oneshot, u.in_force().common.critical);
        let budget_left = u.budget.allows(Instant::now());
        // Whether a critical service would be blocked matters only when the
        // run may fail for good; the walk is skipped when it cannot.
        let dependents = if critical || matches!(ending, Ending::Stopped(_)) {
            Vec::new()
        } else {
            self.transitive_dependents(name)
        };
        let critical_dependent = self.blocks_critical(&dependents);
        // As the registry in force says (a reload may have made it main
        // while it stopped).
        let main = self.units[name].in_force().common.main;
        let status = self.units[name].exit_status.get();
        let decision = decide(ExitInput {
            ending,
            policy,
            oneshot,
            critical,
            budget_left,
            critical_dependent,
            shutting_down: self.shutting_down,
        });
        // What the run itself said, whatever follows.
        match &error {
            Some(e) => {
                tracing::warn!(service = %name, error = %e, "failed");
                self.units[name].last_error = Some(e.clone());
            }
            None if ending == Ending::Exited => match decision.service {
                Outcome::Complete => tracing::info!(service = %name, "completed"),
                Outcome::Exit => tracing::info!(service = %name, "exited"),
                _ => tracing::info!(service = %name, "exited; restarting (policy always)"),
            },
            None => {}
        }
        let reason = error.unwrap_or_else(|| "exited".into());
        match decision.service {
            Outcome::Restart(cause) => self.restart_after_backoff(name, cause, &reason),
            Outcome::Fail { budget_spent } => {
                if budget_spent {
                    let u = &mut self.units[name];
                    let r = &u.spec.common.restart;
                    u.last_error = Some(format!(
                        "{reason} (restart budget of {} in {} exhausted)",
                        r.max_restarts,
                        humantime::format_duration(r.window)
                    ));
                }
                self.transition(name, Event::Fail);
                if critical && !self.shutting_down {
                    tracing::error!(service = %name, "critical service failed for good; shutting down");
                }
            }
            Outcome::Complete => {
                // A run that did what it was for ends the trouble.
                self.units[name].last_error = None;
                self.transition(name, Event::Complete);
            }
            Outcome::Exit => {
                self.transition(name, Event::Exit);
                // Ended for good: another instance may run the singleton.
                self.units[name].release_leadership();
            }
            Outcome::Stopped { then, keep_lock } => {
                self.transition(name, Event::Stopped);
                tracing::info!(service = %name, "stopped");
                if !keep_lock {
                    self.units[name].release_leadership();
                }
                self.after_stop(name, then);
            }
        }
        match decision.dependents {
            Dependents::Untouched => {}
            Dependents::Restart => self.dependency_restarting(name),
            Dependents::Block => self.block_dependents(name, dependents),
        }
        // The main service's own end chooses its status, even when that
        // end also fails a critical service or blocks one: it is the
        // cause, and its status says more than 3.
        if main && ends_for_good(decision.service) {
            self.main_ended(name, main_exit_code(status, ending));
        }
        if decision.critical_exit {
            self.choose_exit(EXIT_CRITICAL);
            if !self.shutting_down {
                self.request_shutdown();
            }
        }
        // A reload changed it while it stopped for a failure: the failure
        // was carried out above as if the reload had not come; the new
        // spec is taken now, as a reload takes it in the state the failure
        // led to (backoff or failed: it waits for its dependencies again,
        // so the next run is the new spec's).
        if let Some(spec) = self.units.get_mut(name).and_then(|u| u.next_spec.take()) {
            let schedules_changed = if self.shutting_down {
                self.units[name].replace_spec(spec)
            } else {
                self.take_changed_spec(name, spec)
            };
            if schedules_changed {
                self.start_schedules(name);
            }
        }
        // A restart that waited for this run to end may go on.
        self.release_held();
    }

    /// The main service has ended for good (its run ended, or it was
    /// stopped while not running): warden stops the rest and exits with
    /// `code`, unless something else chose the exit code first.
    pub(super) fn main_ended(&mut self, name: &str, code: u8) {
        if self.shutting_down {
            return;
        }
        tracing::info!(service = %name, code, "the main service has ended; stopping the rest");
        self.choose_exit(code);
        self.request_shutdown();
    }

    /// A main service stopped while no run was going (in backoff, waiting
    /// for its dependencies): 0, as a stop of a running one is (its last
    /// run's status belongs to a run that was going to be restarted).
    pub(super) fn main_stopped_idle(&mut self, name: &str) {
        if self.units[name].spec.common.main {
            self.main_ended(name, main_exit_code(None, Ending::Stopped(AfterStop::Stay)));
        }
    }

    /// A run that was stopped on request has ended: what the stop was for.
    fn after_stop(&mut self, name: &str, then: Then) {
        // Whatever the stop ended up being for (an operator's stop that
        // overrode a reload's restart, a block, a reload that turned it
        // off), the spec a reload brought meanwhile is the one to run next.
        if then != Then::Remove {
            let u = &mut self.units[name];
            if let Some(spec) = u.next_spec.take() {
                // The reload started the timers of the spec then running:
                // the new spec's replace them.
                if u.replace_spec(spec) {
                    self.start_schedules(name);
                }
            }
        }
        match then {
            Then::Stay => {}
            Then::Wait => {
                self.transition(name, Event::Reset);
            }
            // An operator's restart starts again at once, unless a
            // dependency does not meet its condition now (it restarts
            // too): then it waits for it, as any start does.
            Then::Start if self.conditions_hold(name) => self.start_unit(name),
            Then::Start => {
                self.transition(name, Event::Reset);
            }
            Then::Block => {
                self.transition(name, Event::Block);
            }
            Then::Disable => {
                self.transition(name, Event::Disable);
            }
            Then::Remove => self.remove_unit(name),
            Then::Standby => {
                self.transition(name, Event::Standby);
            }
            Then::Replace => {}
            Then::ReplaceAndWait => {
                self.transition(name, Event::Reset);
            }
        }
    }

    /// Counts a restart in the metrics and tells the listeners.
    pub(super) fn restarting(&self, name: &str, reason: RestartReason) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        crate::metrics::restart(name, reason);
        self.events.send(Happened::Restart {
            service: u.name.clone(),
            restarts: u.restarts,
            reason,
            at: std::time::SystemTime::now(),
        });
    }

    /// The run ended and the budget allows another: count the restart and
    /// start again after the backoff delay.
    fn restart_after_backoff(&mut self, name: &str, cause: RestartReason, reason: &str) {
        let now = Instant::now();
        let u = &mut self.units[name];
        // Stable readiness for reset_after starts the backoff over (judged
        // when the run ends: no timer per service is needed).
        let stable = u.ready_since.take().map(|t| now.duration_since(t));
        if stable.is_some_and(|d| d >= u.spec.common.restart.reset_after) {
            u.backoff.reset();
        }
        let counted = u.budget.try_restart(now);
        debug_assert!(counted, "decide() restarts only within the budget");
        let delay = u.backoff.next_delay(&mut self.rng);
        u.restarts += 1;
        let generation = u.generation;
        let timer_name = u.name.clone();
        tracing::info!(service = %name, reason = %reason, delay = ?delay, restarts = u.restarts, "restarting");
        self.restarting(name, cause);
        self.transition(name, Event::Retry);
        let t = self.timer(
            delay,
            Msg::BackoffElapsed {
                name: timer_name,
                generation,
            },
        );
        self.units[name].state_timer = Some(t);
    }
}

/// Whether an outcome ends the service for good: it will not run again
/// unless an operator starts it (what a registry's main service ending
/// means).
pub(super) fn ends_for_good(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Complete
            | Outcome::Exit
            | Outcome::Fail { .. }
            | Outcome::Stopped {
                then: Then::Stay | Then::Replace,
                ..
            }
    )
}

/// warden's exit code when the main service has ended for good: the exit
/// status its run left (a process's code, 128 + N for signal N), else 0
/// for a run that ended cleanly or was stopped, 1 for one that failed.
pub(super) fn main_exit_code(status: Option<i32>, ending: Ending) -> u8 {
    match status {
        Some(s) => u8::try_from(s).unwrap_or(1),
        None => match ending {
            Ending::Exited | Ending::Stopped(_) => 0,
            Ending::Failed | Ending::HealthFailed | Ending::StartTimedOut => 1,
        },
    }
}

/// The message of a run's panic, so that a panic reads as the run's
/// failure (`last_error`) rather than as a crash of warden.
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}
