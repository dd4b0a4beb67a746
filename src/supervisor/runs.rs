//! One run of a unit: building and spawning it, asking it to stop, and
//! what its end leads to (a restart after the backoff, a failure for good,
//! a completion, or what the stop was for).

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{Happened, RestartReason};
use super::state::{Event, State};
use super::{AfterStop, EXIT_CRITICAL, Msg, Supervisor};
use crate::config::RestartPolicy;
use crate::services::{Context, ServiceError};

impl Supervisor {
    /// Builds and spawns one run of a unit.
    pub(super) fn start_unit(&mut self, name: &str) {
        if !self.transition(name, Event::Start) {
            return;
        }
        let u = &mut self.units[name];
        u.generation += 1;
        u.after_stop = AfterStop::Stay;
        u.ready_since = None;
        if let Some(t) = u.start_timer.take() {
            t.abort();
        }
        let generation = u.generation;
        let built = match self.factories.get(u.spec.kind.kind_name()) {
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

    /// Asks a running unit to stop; `after` says what happens once it has.
    pub(super) fn stop_unit(&mut self, name: &str, after: AfterStop) {
        let u = &mut self.units[name];
        if !matches!(u.state, State::Starting | State::Ready) {
            return;
        }
        u.after_stop = after;
        if let Some(c) = &u.cancel {
            c.cancel();
        }
        let generation = u.generation;
        let timeout = u.spec.common.stop.timeout;
        let timer_name = u.name.clone();
        self.transition(name, Event::Stop);
        if self.forced {
            if let Some(a) = &self.units[name].abort {
                a.abort();
            }
        } else {
            self.timer(
                timeout,
                Msg::StopTimeout {
                    name: timer_name,
                    generation,
                },
            );
        }
    }

    /// The run was not ready within `start_timeout`: stop it, as a failure.
    pub(super) fn start_timed_out(&mut self, name: &str, generation: u64) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        if u.generation == generation && u.state == State::Starting {
            let t = humantime::format_duration(u.spec.common.start_timeout);
            self.stop_unit(
                name,
                AfterStop::Failure(
                    RestartReason::StartTimeout,
                    format!("not ready within start_timeout ({t})"),
                ),
            );
        }
    }

    /// The backoff delay is over: start the next run.
    pub(super) fn backoff_elapsed(&mut self, name: &str, generation: u64) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        if u.generation == generation && u.state == State::Backoff && !self.shutting_down {
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
        u.cancel = None;
        u.abort = None;
        match u.state {
            State::Stopping => {
                let after = std::mem::replace(&mut u.after_stop, AfterStop::Stay);
                if let AfterStop::Failure(cause, reason) = after {
                    self.failed(name, cause, reason);
                    return;
                }
                self.transition(name, Event::Stopped);
                tracing::info!(service = %name, "stopped");
                if !matches!(
                    after,
                    AfterStop::Standby | AfterStop::Restart | AfterStop::Reset | AfterStop::Replace
                ) || self.shutting_down
                {
                    self.units[name].release_leadership();
                }
                match after {
                    AfterStop::Reset if !self.shutting_down => {
                        self.transition(name, Event::Reset);
                    }
                    AfterStop::Restart if !self.shutting_down => {
                        self.start_unit(name);
                    }
                    AfterStop::Block => {
                        self.transition(name, Event::Block);
                    }
                    AfterStop::Disable => {
                        self.transition(name, Event::Disable);
                    }
                    AfterStop::Remove => {
                        if let Some(u) = self.units.shift_remove(name) {
                            u.schedule_cancel.cancel();
                        }
                    }
                    AfterStop::Standby if !self.shutting_down => {
                        self.transition(name, Event::Standby);
                    }
                    AfterStop::Replace => {
                        let u = &mut self.units[name];
                        if let Some(spec) = u.next_spec.take() {
                            u.replace_spec(spec);
                        }
                        if !self.shutting_down {
                            self.transition(name, Event::Reset);
                        }
                    }
                    _ => {}
                }
            }
            State::Starting | State::Ready => match result {
                Ok(()) => {
                    let c = &u.spec.common;
                    if c.oneshot {
                        tracing::info!(service = %name, "completed");
                        self.transition(name, Event::Complete);
                    } else if c.restart.policy == RestartPolicy::Always && !self.shutting_down {
                        tracing::info!(service = %name, "exited; restarting (policy always)");
                        self.retry_or_fail(name, RestartReason::Exited, "exited".into());
                    } else {
                        tracing::info!(service = %name, "exited");
                        self.transition(name, Event::Exit);
                    }
                }
                Err(e) => self.failed(name, RestartReason::Failure, e.0),
            },
            // A build failure arrives while still Starting; anything else
            // is a stale message.
            _ => {}
        }
    }

    /// A run failed: restart it within its budget, or fail it for good.
    fn failed(&mut self, name: &str, cause: RestartReason, reason: String) {
        tracing::warn!(service = %name, error = %reason, "failed");
        let u = &mut self.units[name];
        u.last_error = Some(reason.clone());
        if u.spec.common.restart.policy == RestartPolicy::Never || self.shutting_down {
            self.fail_for_good(name);
        } else {
            self.retry_or_fail(name, cause, reason);
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

    fn retry_or_fail(&mut self, name: &str, cause: RestartReason, reason: String) {
        let now = Instant::now();
        let u = &mut self.units[name];
        // Stable readiness for reset_after starts the backoff over (judged
        // when the run ends: no timer per service is needed).
        let stable = u.ready_since.take().map(|t| now.duration_since(t));
        if stable.is_some_and(|d| d >= u.spec.common.restart.reset_after) {
            u.backoff.reset();
        }
        if u.budget.try_restart(now) {
            let delay = u.backoff.next_delay(&mut self.rng);
            u.restarts += 1;
            let generation = u.generation;
            let timer_name = u.name.clone();
            tracing::info!(service = %name, reason = %reason, delay = ?delay, restarts = u.restarts, "restarting");
            self.restarting(name, cause);
            self.transition(name, Event::Retry);
            self.timer(
                delay,
                Msg::BackoffElapsed {
                    name: timer_name,
                    generation,
                },
            );
            self.dependency_restarting(name);
        } else {
            let r = &u.spec.common.restart;
            u.last_error = Some(format!(
                "{reason} (restart budget of {} in {} exhausted)",
                r.max_restarts,
                humantime::format_duration(r.window)
            ));
            self.fail_for_good(name);
        }
    }

    fn fail_for_good(&mut self, name: &str) {
        self.transition(name, Event::Fail);
        let critical = self.units[name].spec.common.critical;
        if critical && !self.shutting_down {
            tracing::error!(service = %name, "critical service failed for good; shutting down");
            self.exit_code = EXIT_CRITICAL;
            self.request_shutdown();
        } else if critical {
            self.exit_code = EXIT_CRITICAL;
        } else {
            self.block_dependents(name);
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}
