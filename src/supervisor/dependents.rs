//! What happens to the services that depend on one whose run ended: they
//! are blocked when it failed for good, unblocked when it is started again,
//! and follow their `on_dependency_restart` when it restarts.
//!
//! A restart stops in order (rest_for_one): the dependents it stops stop
//! first, the deepest first, each before its own dependencies; the service
//! itself stops last, and starts again only once none of them is still
//! stopping. So an old run of a dependent never runs beside a new run of
//! its dependency. What waits is [`Held`] on the waiting unit, and goes on
//! ([`Supervisor::release_held`]) when a run ends.

use std::collections::HashSet;
use std::sync::Arc;

use super::events::RestartReason;
use super::state::{Event, State};
use super::{AfterStop, StopCause, Supervisor};
use crate::config::OnDependencyRestart;
use crate::services::ServiceError;

/// What of a unit's restart waits for the dependents that restart stops.
/// It is valid in the state it was set in: any change of state clears it.
#[derive(Debug)]
pub(super) enum Held {
    /// `stopping`, not asked yet: its run goes on (it still serves the
    /// dependents on their way out) and is asked to stop, its stop timer
    /// with it, once they have stopped.
    Stop,
    /// `stopping`, not asked yet, and its run ended by itself: that end
    /// is carried out once the dependents have stopped.
    Ended(Result<(), ServiceError>),
    /// Its next run (after its backoff, at once after its stop, or once
    /// its dependencies hold) starts once the dependents have stopped.
    Start,
}

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

    /// Whether blocking `dependents` blocks a critical (or the main)
    /// service: one that runs or waits to, not one that ended for good
    /// already (a completed critical oneshot is not made to fail).
    pub(super) fn blocks_critical(&self, dependents: &[Arc<str>]) -> bool {
        dependents.iter().any(|d| {
            let u = &self.units[&**d];
            let c = &u.in_force().common;
            (c.critical || c.main) && u.blocks()
        })
    }

    /// `name` failed for good: its `dependents` (every service that depends
    /// on it, directly or not) can never run. Whether that ends warden is
    /// decided with the rest ([`super::decide`]); this names the critical
    /// service that would be left blocked.
    pub(super) fn block_dependents(&mut self, name: &str, dependents: Vec<Arc<str>>) {
        // Said only when it is so: the critical one runs or waits to (is
        // blocked), and warden is not stopping already.
        if !self.shutting_down
            && let Some(c) = dependents.iter().find(|d| {
                let u = &self.units[&***d];
                let c = &u.in_force().common;
                (c.critical || c.main) && u.blocks()
            })
        {
            tracing::error!(service = %c, dependency = %name, "critical service blocked by a failed dependency; shutting down");
        }
        let why = match self.units[name].state {
            State::Failed => format!("blocked: its dependency {name} failed for good"),
            _ => format!("blocked: its dependency {name} is blocked"),
        };
        for d in dependents {
            // During the shutdown a running one stops in its turn,
            // dependents first: it is left as it is.
            if self.shutting_down && matches!(self.units[&*d].state, State::Starting | State::Ready)
            {
                continue;
            }
            if self.units[&*d].blocks() {
                self.units[&*d].last_error = Some(why.clone());
                self.touch(&d);
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
        critical |= self.blocks_critical(&dependents);
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

    /// `name` restarts (an operator's restart, a reload's new spec): its
    /// dependents follow their `on_dependency_restart` first, then it stops
    /// for `cause`, once those its restart stops have stopped.
    pub(super) fn restart_with_dependents(&mut self, name: &str, cause: AfterStop) {
        self.dependency_restarting(name);
        self.stop_for_restart(name, cause);
    }

    /// Stops a running unit for a restart (its own or a dependency's): at
    /// once when none of the dependents the restart stops is stopping,
    /// else it turns `stopping` now (nothing may count on it any more) and
    /// is asked to stop once they have stopped.
    pub(super) fn stop_for_restart(&mut self, name: &str, cause: impl Into<StopCause>) {
        if !matches!(self.units[name].state, State::Starting | State::Ready) {
            return;
        }
        if !self.dependents_stopping(name) {
            self.stop_unit(name, cause);
            return;
        }
        tracing::info!(service = %name, "waiting for its dependents to stop before it stops");
        self.units[name].stop_cause = cause.into();
        self.transition(name, Event::Stop);
        self.hold(name, Held::Stop);
    }

    /// Whether a dependent that a restart of `name` stops is still
    /// stopping: a direct dependent that restarts or stops with it, and in
    /// turn, through a dependent that restarts and does not run (a
    /// completed oneshot sent back to `pending`), the dependents of that
    /// one. A dependent that ignores the restart, or runs (a new run, or
    /// one the restart did not touch), is not waited for; nor are the
    /// dependents of one that has never run (they have not either: at
    /// start-up this looks no further than the direct dependents).
    pub(super) fn dependents_stopping(&self, name: &str) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![name];
        while let Some(n) = stack.pop() {
            for d in self.graph.dependents(n) {
                let Some(u) = self.units.get(d) else {
                    continue;
                };
                let policy = u.spec.common.on_dependency_restart;
                if policy == OnDependencyRestart::Ignore {
                    continue;
                }
                // Its stopping run counted on `n` (a run whose spec, from
                // before a reload, did not name it never did).
                if u.state == State::Stopping
                    && u.spec.common.depends_on.0.iter().any(|dep| dep.name == n)
                {
                    return true;
                }
                let passed_through = policy == OnDependencyRestart::Restart
                    && !u.state.is_running()
                    && u.generation > 0;
                if passed_through && seen.insert(d) {
                    stack.push(d);
                }
            }
        }
        false
    }

    /// A run ended (or the graph changed): whatever waited for dependents
    /// that have now all stopped goes on.
    pub(super) fn release_held(&mut self) {
        // Only the units that hold something are looked at, not every unit.
        let mut waiting = std::mem::take(&mut self.holding);
        waiting.sort_unstable();
        waiting.dedup();
        for name in waiting {
            // An earlier release may have carried this one on already.
            let Some(u) = self.units.get(&*name) else {
                continue;
            };
            if u.held.is_none() {
                continue;
            }
            // Once the shutdown has begun, a stop waits for every
            // dependent, as the shutdown's order says.
            let shutdown_waits = self.shutting_down
                && !self.forced
                && matches!(u.held, Some(Held::Stop))
                && self
                    .graph
                    .dependents(&name)
                    .iter()
                    .any(|d| self.units.get(*d).is_some_and(|d| d.state.is_running()));
            if shutdown_waits || self.dependents_stopping(&name) {
                self.holding.push(name);
                continue;
            }
            let u = &mut self.units[&*name];
            let (held, state, generation) = (u.held.take(), u.state, u.generation);
            match held {
                Some(Held::Stop) => {
                    tracing::info!(service = %name, "its dependents have stopped; stopping");
                    self.ask_to_stop(&name);
                }
                Some(Held::Ended(result)) => self.on_ended(&name, generation, result),
                // A pending (or standby) unit is started by the loop once
                // its dependencies hold, as any other.
                Some(Held::Start)
                    if matches!(state, State::Backoff | State::Stopped) && !self.shutting_down =>
                {
                    self.start_unit(&name);
                }
                // A pending (or standby) one: `schedule` looks at it again.
                Some(Held::Start) => self.touched.push(name.clone()),
                None => {}
            }
        }
    }

    /// Holds what `name` was about to do until its dependents have stopped
    /// (`release_held` carries it on).
    pub(super) fn hold(&mut self, name: &str, held: Held) {
        let u = &mut self.units[name];
        u.held = Some(held);
        self.holding.push(u.name.clone());
    }

    /// `name` is restarting: apply each direct dependent's
    /// `on_dependency_restart` (rest_for_one for `restart`), the deepest
    /// dependents first.
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
                    self.restart_with_dependents(&d, AfterStop::Reset);
                }
                // Stopping to start again at once (an operator's restart):
                // it waits for its dependency instead.
                (OnDependencyRestart::Restart, State::Stopping)
                    if self.units[&*d].stop_cause == StopCause::Asked(AfterStop::Restart) =>
                {
                    self.units[&*d].stop_cause = AfterStop::Reset.into();
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
                    self.units[&*d].release_leadership();
                    self.transition(&d, Event::Stop);
                    self.main_stopped_idle(&d);
                }
                _ => {}
            }
        }
    }
}

impl super::Unit {
    /// The spec the registry in force gives it: the one it will run next
    /// when a reload changed it while it stops, else the one it runs.
    pub(super) fn in_force(&self) -> &crate::config::ServiceSpec {
        self.next_spec.as_ref().unwrap_or(&self.spec)
    }

    /// Whether a dependency failing for good blocks this service: it runs
    /// or waits to. What is not running and not waiting to (stopped,
    /// completed, failed, already blocked, stopping to stay stopped) is
    /// left as it is.
    pub(super) fn blocks(&self) -> bool {
        match self.state {
            State::Starting | State::Ready | State::Pending | State::Backoff | State::Standby => {
                true
            }
            State::Stopping => self.stop_cause != StopCause::Asked(AfterStop::Stay),
            _ => false,
        }
    }
}
