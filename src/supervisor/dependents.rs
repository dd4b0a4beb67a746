//! What happens to the services that depend on one whose run ended: they
//! are blocked when it failed for good, unblocked when it is started again,
//! and follow their `on_dependency_restart` when it restarts.

use std::collections::HashSet;
use std::sync::Arc;

use super::events::RestartReason;
use super::state::{Event, State};
use super::{AfterStop, StopCause, Supervisor};
use crate::config::OnDependencyRestart;

impl Supervisor {
    /// Every service that depends on `name`, directly or not.
    pub(super) fn transitive_dependents(&self, name: &str) -> Vec<Arc<str>> {
        let mut seen = HashSet::new();
        let mut stack = vec![name.to_string()];
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            for d in self.graph.dependents(&n) {
                if seen.insert(d.to_string()) {
                    out.push(self.units[d].name.clone());
                    stack.push(d.to_string());
                }
            }
        }
        out
    }

    /// `name` failed for good: its `dependents` (every service that depends
    /// on it, directly or not) can never run. Whether that ends warden is
    /// decided with the rest ([`super::decide`]); this names the critical
    /// service that would be left blocked.
    pub(super) fn block_dependents(&mut self, name: &str, dependents: Vec<Arc<str>>) {
        if let Some(c) = dependents.iter().find(|d| {
            let c = &self.units[&***d].spec.common;
            c.critical || c.main
        }) {
            tracing::error!(service = %c, dependency = %name, "critical service blocked by a failed dependency; shutting down");
        }
        let why = match self.units[name].state {
            State::Failed => format!("blocked: its dependency {name} failed for good"),
            _ => format!("blocked: its dependency {name} is blocked"),
        };
        for d in dependents {
            let u = &self.units[&*d];
            // What is not running and not waiting to (stopped, completed,
            // failed, already blocked) is left as it is.
            let blocks = match u.state {
                State::Starting
                | State::Ready
                | State::Pending
                | State::Backoff
                | State::Standby => true,
                State::Stopping => u.stop_cause != StopCause::Asked(AfterStop::Stay),
                _ => false,
            };
            if blocks {
                self.units[&*d].last_error = Some(why.clone());
            }
            match self.units[&*d].state {
                State::Starting | State::Ready => self.stop_unit(&d, AfterStop::Block),
                // Stopping to stay stopped (an operator's stop, a
                // dependency's `stop` policy) stays so: it must not come
                // back when it is unblocked.
                State::Stopping
                    if self.units[&*d].stop_cause != StopCause::Asked(AfterStop::Stay) =>
                {
                    self.units[&*d].stop_cause = AfterStop::Block.into()
                }
                State::Pending | State::Backoff | State::Standby => {
                    self.units[&*d].generation += 1;
                    self.units[&*d].release_leadership();
                    self.transition(&d, Event::Block);
                }
                _ => {}
            }
        }
    }

    /// `name`, pending, can never start: a dependency ended for good
    /// without meeting its condition. It is blocked with `reason`, and so is
    /// every service that depends on it; a critical (or the main) service
    /// among them can never run, which ends warden (exit 3) as a failed
    /// dependency does.
    pub(super) fn block_for_good(&mut self, name: &str, reason: String) {
        tracing::warn!(service = %name, "{reason}");
        let u = &mut self.units[name];
        u.last_error = Some(reason);
        u.generation += 1;
        u.release_leadership();
        let mut critical = u.spec.common.critical || u.spec.common.main;
        self.transition(name, Event::Block);
        let dependents = self.transitive_dependents(name);
        critical |= dependents.iter().any(|d| {
            let c = &self.units[&**d].spec.common;
            c.critical || c.main
        });
        self.block_dependents(name, dependents);
        if critical && !self.shutting_down {
            tracing::error!(service = %name, "a critical service can never run; shutting down");
            self.choose_exit(super::EXIT_CRITICAL);
            self.request_shutdown();
        }
    }

    /// `name` may run again (an operator started it): its blocked
    /// dependents wait for their conditions again, and so do those still
    /// stopping to be blocked.
    pub(super) fn unblock_dependents(&mut self, name: &str) {
        for d in self.transitive_dependents(name) {
            let u = &mut self.units[&*d];
            match u.state {
                State::Blocked => {
                    self.transition(&d, Event::Unblock);
                }
                State::Stopping if u.stop_cause == StopCause::Asked(AfterStop::Block) => {
                    u.stop_cause = AfterStop::Reset.into();
                }
                _ => {}
            }
        }
    }

    /// `name` is restarting: apply each direct dependent's
    /// `on_dependency_restart` (rest_for_one for `restart`).
    pub(super) fn dependency_restarting(&mut self, name: &str) {
        let dependents: Vec<Arc<str>> = self
            .graph
            .dependents(name)
            .iter()
            .map(|d| self.units[*d].name.clone())
            .collect();
        for d in dependents {
            let policy = self.units[&*d].spec.common.on_dependency_restart;
            let state = self.units[&*d].state;
            match (policy, state) {
                (OnDependencyRestart::Ignore, _) => {}
                (OnDependencyRestart::Restart, State::Starting | State::Ready) => {
                    tracing::info!(service = %d, dependency = %name, "stopping for its dependency's restart");
                    self.restarting(&d, RestartReason::Dependency);
                    self.stop_unit(&d, AfterStop::Reset);
                    self.dependency_restarting(&d);
                }
                (OnDependencyRestart::Restart, State::Backoff) => {
                    self.units[&*d].generation += 1;
                    self.transition(&d, Event::Stop);
                    self.transition(&d, Event::Reset);
                }
                (OnDependencyRestart::Restart, State::Completed) => {
                    self.transition(&d, Event::Reset);
                    self.dependency_restarting(&d);
                }
                (OnDependencyRestart::Stop, State::Starting | State::Ready) => {
                    tracing::info!(service = %d, dependency = %name, "stopping: its dependency restarted");
                    self.stop_unit(&d, AfterStop::Stay);
                }
                (OnDependencyRestart::Stop, State::Backoff) => {
                    self.units[&*d].generation += 1;
                    self.transition(&d, Event::Stop);
                    self.main_stopped_idle(&d);
                }
                _ => {}
            }
        }
    }
}
