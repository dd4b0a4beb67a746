//! What an operator asks of one service: start, stop, restart, and its
//! kind's actions.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::events::{Happened, RestartReason};
use super::restart::RestartBudget;
use super::state::{Event, State};
use super::{AfterStop, ControlError, StopCause, Supervisor, Unit};
use crate::services::ActionError;

impl Supervisor {
    /// A control names a service of this instance, or is refused: one of
    /// the registry that `--only` left to another instance is a conflict
    /// (it runs elsewhere), any other name is unknown.
    fn known(&self, name: &str) -> Result<(), ControlError> {
        if self.units.contains_key(name) {
            Ok(())
        } else if self.outside.contains(name) {
            let only = if self.only.is_empty() {
                String::new()
            } else {
                format!(" (--only {})", self.only.join(","))
            };
            Err(ControlError::conflict(format!(
                "{name} is not in this instance's selection{only}; it runs on the instance that selects it"
            )))
        } else {
            Err(ControlError::UnknownService { name: name.into() })
        }
    }

    /// The words of a control refused because the service is disabled.
    fn disabled(&self, name: &str) -> ControlError {
        let by = match &self.profile {
            Some(p) => format!("disabled by profile {p}"),
            None => "disabled in the registry".to_string(),
        };
        ControlError::conflict(format!(
            "{name} is {by} (enabled = false); enable it in the registry and reload"
        ))
    }

    /// An operator's start of a service that is not running and will not
    /// start by itself: a fresh start (budget and backoff start over), and
    /// its blocked dependents wait for it again.
    pub(super) fn control_start(&mut self, name: &str) -> Result<(), ControlError> {
        self.known(name)?;
        if self.shutting_down {
            return Err(ControlError::shutting_down());
        }
        let state = self.units[name].state;
        match state {
            State::Stopped | State::Failed | State::Completed => {
                let u = &mut self.units[name];
                u.budget = RestartBudget::new(
                    u.spec.common.restart.max_restarts,
                    u.spec.common.restart.window,
                );
                u.backoff.reset();
                self.transition(name, Event::Reset);
                self.unblock_dependents(name);
                Ok(())
            }
            State::Disabled => Err(self.disabled(name)),
            s => Err(ControlError::conflict(format!(
                "{name} is {s}; only a stopped, failed or completed service can be started"
            ))),
        }
    }

    /// An operator's stop: the service stays stopped until started again.
    /// It wins in every state: a restart in flight (stopping to start
    /// again, a backoff, a stop for a failed health check) is cancelled.
    pub(super) fn control_stop(&mut self, name: &str) -> Result<(), ControlError> {
        self.known(name)?;
        // The shutdown stops everything, dependents first: a stop now
        // would jump that order.
        if self.shutting_down {
            return Err(ControlError::shutting_down());
        }
        let state = self.units[name].state;
        match state {
            State::Starting | State::Ready => {
                self.stop_unit(name, AfterStop::Stay);
                Ok(())
            }
            State::Stopping => {
                let u = &mut self.units[name];
                match &u.stop_cause {
                    // Already not coming back.
                    StopCause::Asked(
                        AfterStop::Stay | AfterStop::Block | AfterStop::Disable | AfterStop::Remove,
                    ) => {}
                    // A failure that would have been restarted: keep its
                    // words, not its restart.
                    StopCause::HealthFailed(e) | StopCause::StartTimedOut(e) => {
                        u.last_error = Some(e.clone());
                        u.stop_cause = AfterStop::Stay.into();
                        self.touch(name);
                    }
                    // On its way to run again (a restart, a dependency's
                    // restart, a reload's new spec, standby): it stays
                    // stopped instead (a reload's spec is still taken).
                    StopCause::Asked(_) => u.stop_cause = AfterStop::Stay.into(),
                }
                tracing::info!(service = %name, "stop requested while stopping: it stays stopped");
                Ok(())
            }
            State::Pending | State::Backoff | State::Standby | State::Blocked => {
                self.units[name].generation += 1;
                self.units[name].release_leadership();
                self.transition(name, Event::Stop);
                self.main_stopped_idle(name);
                Ok(())
            }
            s => Err(ControlError::conflict(format!(
                "{name} is {s}; it is not running"
            ))),
        }
    }

    /// An operator's restart: stop the run (its dependents follow their
    /// `on_dependency_restart` first, and those that stop stop before it)
    /// and start again at once. A service that is
    /// not running is started; one that cannot be is refused with words
    /// about a restart, saying what to do instead.
    pub(super) fn control_restart(&mut self, name: &str) -> Result<(), ControlError> {
        self.known(name)?;
        if self.shutting_down {
            return Err(ControlError::shutting_down());
        }
        let refuse = |why: &str| Err(ControlError::conflict(format!("{name} {why}")));
        match self.units[name].state {
            State::Starting | State::Ready => {
                self.restarting(name, RestartReason::Operator);
                self.restart_with_dependents(name, AfterStop::Restart);
                Ok(())
            }
            State::Backoff => {
                // Already counted as restarting (its failure); this only
                // skips the rest of the delay.
                self.start_after_backoff(name);
                Ok(())
            }
            // Already waiting for its dependencies, with nothing running to
            // stop: the run it gets once they hold is the fresh start asked
            // for. Refusing would fail a restart of a service about to start.
            State::Pending => Ok(()),
            State::Stopped | State::Failed | State::Completed => self.control_start(name),
            State::Stopping => refuse("is stopping; restart it once it has stopped"),
            State::Blocked => refuse(
                "is blocked; a dependency failed for good: start that dependency to unblock it",
            ),
            State::Standby => refuse(
                "is standby; another instance holds its singleton lock and runs it: restart it there",
            ),
            State::Disabled => Err(self.disabled(name)),
        }
    }

    /// Runs one of a service's actions in a task of its own (an action may
    /// take long; the loop does not wait), and answers when it is done.
    pub(super) fn control_action(
        &self,
        name: &str,
        action: String,
        args: serde_json::Value,
        reply: oneshot::Sender<Result<serde_json::Value, ControlError>>,
    ) {
        let Some(u) = self.units.get(name) else {
            let _ = reply.send(Err(ControlError::UnknownService { name: name.into() }));
            return;
        };
        let Some(fut) = self.action_future(u, &action, args) else {
            let known = self
                .kinds
                .get(u.spec.kind.kind_name())
                .map(|k| k.def().action_names())
                .unwrap_or_default();
            let _ = reply.send(Err(ControlError::UnknownAction {
                kind: u.spec.kind.kind_name().to_string(),
                action,
                known: known.into_iter().map(String::from).collect(),
            }));
            return;
        };
        let (events, service) = (self.events.clone(), u.name.clone());
        tokio::spawn(async move {
            let began = Instant::now();
            let outcome = fut.await;
            events.send(Happened::Action {
                service,
                action,
                result: outcome.clone().map_err(|e| e.to_string()),
                duration: began.elapsed(),
                at: std::time::SystemTime::now(),
            });
            // A body the action cannot take is the caller's mistake; an
            // action that ran and failed is a fault.
            let _ = reply.send(outcome.map_err(|e| match e {
                ActionError::BadRequest(reason) => ControlError::BadRequest { reason },
                ActionError::Failed(reason) => ControlError::Fault { reason },
            }));
        });
    }

    /// The future of one action run, built by the service's factory;
    /// `None` when the service's kind has no such action (schedules are
    /// checked at load, so only a control can ask for one).
    pub(super) fn action_future(
        &self,
        u: &Unit,
        action: &str,
        args: serde_json::Value,
    ) -> Option<crate::services::BoxFuture<Result<serde_json::Value, ActionError>>> {
        let kind = self.kinds.get(u.spec.kind.kind_name())?;
        kind.def().action_names().contains(&action).then(|| {
            let fut = kind
                .factory()
                .action(&u.spec, action, args, u.details.clone());
            // What an action answers leaves warden: no password in it.
            Box::pin(async move { fut.await.map_err(ActionError::redacted) })
                as crate::services::BoxFuture<_>
        })
    }
}
