//! Reload: switch to a new, already checked registry, touching only the
//! services whose configuration changed.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::events::{Happened, RestartReason};
use super::restart::{BackoffState, RestartBudget};
use super::state::{Event, State};
use super::{AfterStop, ControlError, ReloadSummary, StopCause, Supervisor, Unit};
use crate::config::{Registry, ServiceSpec};
use crate::graph::Graph;

impl Unit {
    /// Takes a new spec: restart arithmetic starts over. A changed
    /// `[[schedule]]` cancels the old timers; `true` says so, and that the
    /// new spec's are to be started ([`Supervisor::start_schedules`]: the
    /// reload does it for every service it changed, `after_stop` for a
    /// spec taken once a run has stopped).
    pub(super) fn replace_spec(&mut self, spec: ServiceSpec) -> bool {
        let r = &spec.common.restart;
        self.backoff = BackoffState::new(r.backoff.clone());
        self.budget = RestartBudget::new(r.max_restarts, r.window);
        let schedules_changed = spec.common.schedule != self.spec.common.schedule;
        if schedules_changed {
            self.schedule_cancel.cancel();
            self.schedule_cancel = CancellationToken::new();
            self.schedule_busy = vec![false; spec.common.schedule.len()];
            self.schedule_last = vec![None; spec.common.schedule.len()];
        }
        self.spec = spec;
        schedules_changed
    }
}

impl Supervisor {
    /// Applies a new registry (already loaded and checked).
    pub(super) fn reload(
        &mut self,
        registry: Registry,
        graph: Graph,
    ) -> Result<ReloadSummary, ControlError> {
        if self.shutting_down {
            return Err(ControlError::shutting_down());
        }
        let mut summary = ReloadSummary::default();
        // Children started from now on withhold the new registry's secrets.
        crate::sys::env::withhold(&registry.secret_vars);
        self.shutdown_timeout = registry.warden.shutdown_timeout;
        // Gone from the registry, or (under --only) now another instance's:
        // an enabled service the new graph leaves out is not this one's.
        let elsewhere = |name: &str| {
            registry
                .services
                .get(name)
                .is_none_or(|s| s.enabled() && !graph.contains(name))
        };
        let removed: Vec<Arc<str>> = self
            .units
            .keys()
            .filter(|n| elsewhere(n))
            .cloned()
            .collect();
        for name in removed {
            summary.removed.push(name.to_string());
            match self.units[&*name].state {
                State::Starting | State::Ready => self.stop_unit(&name, AfterStop::Remove),
                State::Stopping => self.units[&*name].stop_cause = AfterStop::Remove.into(),
                _ => self.remove_unit(&name),
            }
        }
        // New services first, then the new graph: what a change sets off
        // (dependents restarted, unblocked) follows the new registry's
        // edges, over units that all exist (the old graph names services
        // removed just above).
        let mut new = std::collections::HashSet::new();
        for spec in registry.services.values() {
            if self.units.contains_key(spec.name.as_str()) {
                continue;
            }
            let state = if graph.contains(&spec.name) {
                State::Pending
            } else if !spec.enabled() {
                State::Disabled
            } else {
                continue; // another instance's (--only)
            };
            summary.added.push(spec.name.clone());
            new.insert(spec.name.as_str());
            self.add_unit(Unit::new(spec.clone(), state, &self.logs));
        }
        self.graph = graph;
        for spec in registry.services.values() {
            if spec.enabled() && !self.graph.contains(&spec.name) {
                continue; // another instance's (--only)
            }
            if new.contains(spec.name.as_str()) {
                continue;
            }
            let Some(u) = self.units.get(spec.name.as_str()) else {
                continue;
            };
            let name = spec.name.as_str();
            // Leaving: it is stopping to be removed, yet the new registry
            // has it. It comes back with this spec once it has stopped.
            if u.state == State::Stopping && u.stop_cause == StopCause::Asked(AfterStop::Remove) {
                summary.added.push(spec.name.clone());
                let u = &mut self.units[name];
                u.next_spec = Some(spec.clone());
                u.stop_cause = if spec.enabled() {
                    AfterStop::Replace.into()
                } else {
                    AfterStop::Disable.into()
                };
                continue;
            }
            // Compared with the spec that will run next: a change made by
            // an earlier reload and not applied yet counts.
            let next = u.next_spec.as_ref().unwrap_or(&u.spec);
            if same_config(next, spec) {
                summary.unchanged += 1;
                continue;
            }
            if u.next_spec.is_none() && same_run(&u.spec, spec) {
                summary.updated.push(spec.name.clone());
                let u = &mut self.units[name];
                if u.spec.common.restart != spec.common.restart {
                    // A new budget and backoff, as a new spec gets.
                    let r = &spec.common.restart;
                    u.backoff = BackoffState::new(r.backoff.clone());
                    u.budget = RestartBudget::new(r.max_restarts, r.window);
                }
                u.spec = spec.clone();
                self.touch(name);
                continue;
            }
            summary.changed.push(spec.name.clone());
            if u.next_spec.is_some() && same_config(&u.spec, spec) {
                // Back to the spec it runs: the abandoned one is dropped
                // (the run stopping for it starts again as it was), and so
                // is what the abandoned one made the stop for: a spec that
                // is off is disabled once stopped; an enabled one that the
                // abandoned spec had turned off (removed, then restored
                // disabled) comes back, and one blocked by a dependency of
                // the abandoned spec waits for its own again (judged anew,
                // they may block it again).
                let u = &mut self.units[name];
                u.next_spec = None;
                if !spec.enabled() {
                    u.stop_cause = AfterStop::Disable.into();
                } else if matches!(
                    u.stop_cause,
                    StopCause::Asked(AfterStop::Disable | AfterStop::Block)
                ) {
                    u.stop_cause = AfterStop::Replace.into();
                }
                continue;
            }
            let state = u.state;
            if !spec.enabled() {
                self.units[name].next_spec = None;
                match state {
                    State::Starting | State::Ready => self.stop_unit(name, AfterStop::Disable),
                    State::Backoff => {
                        self.units[name].generation += 1;
                        self.transition(name, Event::Stop);
                        self.transition(name, Event::Disable);
                    }
                    State::Standby => {
                        self.units[name].release_leadership();
                        self.transition(name, Event::Disable);
                    }
                    // Whatever it was stopping for, it is disabled once
                    // it has stopped (it must not come back); a failure's
                    // words are kept.
                    State::Stopping => {
                        let u = &mut self.units[name];
                        if let StopCause::HealthFailed(e) | StopCause::StartTimedOut(e) =
                            &u.stop_cause
                        {
                            u.last_error = Some(e.clone());
                        }
                        u.stop_cause = AfterStop::Disable.into();
                    }
                    State::Disabled => {}
                    _ => {
                        self.transition(name, Event::Disable);
                    }
                }
                // A run still stopping keeps the spec it runs (what its
                // dependencies and dependents are); the new one is taken
                // once it has stopped.
                if matches!(state, State::Starting | State::Ready | State::Stopping) {
                    self.units[name].next_spec = Some(spec.clone());
                } else {
                    self.units[name].replace_spec(spec.clone());
                }
                continue;
            }
            match state {
                State::Starting | State::Ready => {
                    tracing::info!(service = %name, "configuration changed; restarting");
                    self.units[name].next_spec = Some(spec.clone());
                    self.restarting(name, RestartReason::Reload);
                    // A restart is a restart, whatever asked for it.
                    self.restart_with_dependents(name, AfterStop::Replace);
                }
                State::Stopping => {
                    let u = &mut self.units[name];
                    u.next_spec = Some(spec.clone());
                    // A stop for a failure (health, start timeout) ends as
                    // that failure, and the new spec is taken then
                    // (`on_ended`); any other stop ends in the new spec.
                    if let StopCause::Asked(_) = u.stop_cause {
                        u.stop_cause = AfterStop::Replace.into();
                    }
                }
                _ => {
                    self.take_changed_spec(name, spec.clone());
                }
            }
        }
        // `[warden] postgres` moved: the singletons that take their lock
        // there and run on the old one restart to take it in the new one.
        let coordination = registry.warden.postgres.clone().map(Into::into);
        if coordination != self.coordination {
            self.coordination = coordination;
            summary.changed.extend(self.move_locks());
        }
        self.profile = registry.profile.clone();
        self.outside = registry
            .services
            .values()
            .filter(|s| s.enabled() && !self.graph.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        // Edges changed, and so may have what any service waits for or
        // shows: look at every service once.
        self.rescan = true;
        self.republish = true;
        // Listed in the order the registry gives (new services were added
        // at the end); those on their way out last.
        let position: std::collections::HashMap<&str, usize> = registry
            .services
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        self.units
            .sort_by_cached_key(|name, _| position.get(&**name).copied().unwrap_or(usize::MAX));
        self.api = self.find_api();
        // A restart that waited for dependents the new graph no longer
        // has (removed, or now ignoring it) goes on.
        self.release_held();
        // Timers of removed services and of changed schedules were
        // cancelled; start those of added services and new schedules.
        for name in summary.added.iter().chain(summary.changed.iter()) {
            let Some(u) = self.units.get_mut(name.as_str()) else {
                continue;
            };
            u.schedule_cancel.cancel();
            u.schedule_cancel = CancellationToken::new();
            self.start_schedules(name);
        }
        // Every ring takes the new limits now: more services, a smaller
        // share each, and `log_memory` still holds.
        self.logs.set_shared(
            registry.warden.log_lines.0 as usize,
            registry.warden.log_memory.0,
            self.units.len(),
        );
        self.units.values().for_each(|u| u.logs.trim());
        tracing::info!(
            added = summary.added.len(),
            removed = summary.removed.len(),
            changed = summary.changed.len(),
            unchanged = summary.unchanged,
            "reloaded"
        );
        self.events.send(Happened::Reloaded {
            at: std::time::SystemTime::now(),
        });
        Ok(summary)
    }
}

impl Supervisor {
    /// A changed, enabled spec for a unit that runs nothing (neither
    /// starting, ready nor stopping): it takes it and waits for its
    /// dependencies again (a failed, stopped or completed one runs again,
    /// and what it blocked waits for it again). `true` when the
    /// `[[schedule]]` changed (its timers are to be started).
    pub(super) fn take_changed_spec(&mut self, name: &str, spec: ServiceSpec) -> bool {
        let schedules_changed = self.units[name].replace_spec(spec);
        match self.units[name].state {
            State::Disabled => {
                self.transition(name, Event::Enable);
            }
            State::Backoff => {
                self.units[name].generation += 1;
                self.transition(name, Event::Stop);
                self.transition(name, Event::Reset);
            }
            State::Blocked => {
                self.transition(name, Event::Unblock);
                self.unblock_dependents(name);
            }
            State::Stopped | State::Completed | State::Failed => {
                self.transition(name, Event::Reset);
                // It may run again: what it blocked waits for it again.
                self.unblock_dependents(name);
            }
            State::Pending | State::Standby => {}
            State::Starting | State::Ready | State::Stopping => {
                debug_assert!(false, "{name}: a new spec for a unit that runs");
            }
        }
        schedules_changed
    }
}

/// Whether `a` and `b` differ only in what the supervisor reads when it
/// decides (never the run itself, nor its probes): `description`,
/// `critical`, `main`, `restart`, `on_dependency_restart` and
/// `start_timeout` are applied in place by a reload.
fn same_run(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    let mut b = b.clone();
    let (from, to) = (&a.common, &mut b.common);
    to.description.clone_from(&from.description);
    to.critical = from.critical;
    to.main = from.main;
    to.restart = from.restart.clone();
    to.on_dependency_restart = from.on_dependency_restart;
    to.start_timeout = from.start_timeout;
    same_config(a, &b)
}

/// The spec without source positions: two registries that differ only in
/// where things were written configure the same service.
fn same_config(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    fn strip(s: &ServiceSpec) -> ServiceSpec {
        let mut s = s.clone();
        s.span = Default::default();
        for d in &mut s.common.depends_on.0 {
            d.span = Default::default();
        }
        s
    }
    strip(a) == strip(b)
}
