//! The rules a schedule must never break, checked after every step: on
//! what warden publishes (the status), on the order of its decisions (the
//! trace), on the runs the world saw, and on what systemd hears.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::super::state::State;
use super::super::systemd::Say;
use super::super::{AfterStop, ServiceStatus, StopCause, Traced};
use super::world::{BACKOFF_MAX, Cond, KEEPER, Model, Runs, Service};

/// Slack for the time bounds: messages due at the same instant as the
/// check may not have been handled yet.
pub const SLACK: Duration = Duration::from_millis(100);

/// What the trace has said so far of each service, and of warden.
#[derive(Default)]
pub struct Oracle {
    /// Each service's state, and what its latest run met (`started`,
    /// `ready`) of what dependents wait for.
    states: HashMap<String, (State, bool, bool)>,
    /// How much of the trace was read.
    read: usize,
    /// What each service's current run depends on (its spec when it
    /// started).
    run_deps: HashMap<String, (Vec<String>, &'static str)>,
    /// A main service stopped: its end, unless it runs again at once.
    main_stopped: Option<(String, Vec<u8>, String)>,
    pub shutdown: Option<Duration>,
    pub forced: Option<Duration>,
    /// The exit codes the first cause to end warden allows, and the cause.
    pub expected: Option<(Vec<u8>, String)>,
    /// `READY=1` was said (since then, one after a reload only ends the
    /// reload).
    ready_said: bool,
    /// Services a reload made critical (or not) in place while they were
    /// not running: whether their failure or block ends warden is not
    /// settled (left out of the exit rule; see the notes in sim/mod.rs).
    pub critical_moved: HashSet<String>,
}

/// The longest a service may stay in a state its timers bound.
pub struct Bounds {
    pub starting: Duration,
    /// A stop that waits for its dependents' stops first (a restart stops
    /// them deepest first): one stop per service of the universe.
    pub chain: Duration,
}

impl Oracle {
    /// Reads the trace from where it stopped, and checks each decision
    /// against the rules (with `model`, the registry in force).
    pub fn read(
        &mut self,
        trace: &[Traced],
        model: &Model,
        runs: &Runs,
        now: Duration,
    ) -> Result<(), String> {
        for t in &trace[self.read..] {
            match t {
                Traced::ShutdownAsked => {
                    self.cause(vec![super::super::EXIT_OK], "the shutdown was asked");
                }
                // Warden's own shutdown right after a main service stopped
                // is that stop's end.
                Traced::Shutdown => {
                    self.settle_main();
                    self.shutdown = Some(now);
                }
                Traced::Forced => self.forced = Some(now),
                Traced::AskStop { name, cause } => {
                    self.ordered_stop(name, cause, model)?;
                    // A main (or critical) service stopped because a
                    // dependency failed for good can never run: 3.
                    if *cause == StopCause::Asked(AfterStop::Block)
                        && model.get(name).is_some_and(|s| s.main || s.critical)
                    {
                        self.cause(
                            vec![super::super::EXIT_CRITICAL],
                            &format!("{name} was stopped for good by a dependency that failed"),
                        );
                    }
                }
                Traced::Transition { name, from, to } => {
                    // A main service's stop is its end unless it runs
                    // again at once (a restart, a reload's new spec).
                    if let Some((n, ..)) = &self.main_stopped
                        && **n == **name
                        && *from == State::Stopped
                    {
                        self.main_stopped = None;
                    }
                    if *to == State::Starting {
                        self.may_start(name, model)?;
                        if let Some(s) = model.get(name) {
                            let deps = s.deps.iter().map(|(d, _)| d.clone()).collect();
                            self.run_deps
                                .insert(name.to_string(), (deps, s.on_dependency_restart));
                        }
                    }
                    let entry = self
                        .states
                        .entry(name.to_string())
                        .or_insert((*from, false, false));
                    entry.0 = *to;
                    match to {
                        State::Starting => (entry.1, entry.2) = (true, false),
                        State::Ready => entry.2 = true,
                        State::Pending | State::Backoff | State::Standby => {
                            (entry.1, entry.2) = (false, false)
                        }
                        _ => {}
                    }
                    self.exit_cause(name, *from, *to, model, runs);
                }
            }
        }
        self.read = trace.len();
        self.settle_main();
        Ok(())
    }

    /// A main service that stopped and did not run again at once ended.
    fn settle_main(&mut self) {
        if let Some((_, codes, why)) = self.main_stopped.take() {
            self.cause(codes, &why);
        }
    }

    fn cause(&mut self, codes: Vec<u8>, why: &str) {
        self.settle_main();
        if self.expected.is_none() {
            self.expected = Some((codes, why.to_string()));
        }
    }

    fn state(&self, name: &str) -> State {
        self.states.get(name).map(|s| s.0).unwrap_or(State::Pending)
    }

    /// The first cause to end warden chooses its exit code: a critical
    /// service failing for good or never able to run (3), the main
    /// service's end (its status: 0 when stopped, 1 for a failure without
    /// an exit status), the shutdown (0).
    fn exit_cause(&mut self, name: &str, from: State, to: State, model: &Model, runs: &Runs) {
        let Some(s) = model.get(name) else { return };
        let mut codes = Vec::new();
        if s.critical
            && !s.main
            && s.enabled
            && matches!(to, State::Failed | State::Blocked)
            && !self.critical_moved.contains(name)
        {
            codes.push(super::super::EXIT_CRITICAL);
        }
        if s.main {
            let status = runs
                .last_of(name)
                .filter(|r| r.by_itself)
                .and_then(|r| r.status);
            let code = match (to, from) {
                (State::Blocked, _) => Some(super::super::EXIT_CRITICAL as i32),
                (State::Completed, _) => Some(status.unwrap_or(0)),
                (State::Stopped, State::Starting | State::Ready) => Some(status.unwrap_or(0)),
                // Stopped to stay stopped (an operator's stop, a
                // dependency's `stop` policy), not to run again at once.
                (State::Stopped, _) => {
                    // A run that ended by itself as it was asked to stop
                    // may leave its own status; a stop while no run went
                    // (backoff, pending) is 0.
                    let mut codes = vec![0];
                    if from == State::Stopping {
                        codes.extend(status.map(|s| s as u8));
                    }
                    self.main_stopped =
                        Some((name.to_string(), codes, format!("{name} was stopped")));
                    None
                }
                (State::Failed, State::Starting | State::Ready) => Some(status.unwrap_or(1)),
                // A run that ended by itself as it was stopped for a
                // failure may leave its own status.
                (State::Failed, _) => {
                    self.cause(
                        std::iter::once(1).chain(status.map(|s| s as u8)).collect(),
                        &format!("{name} failed"),
                    );
                    None
                }
                _ => None,
            };
            if let Some(c) = code {
                codes.push(c as u8);
            }
        }
        if !codes.is_empty() {
            self.cause(codes, &format!("{name} went from {from} to {to}"));
        }
    }

    /// No service starts while a condition it depends on is unmet, nor
    /// once the shutdown has begun.
    fn may_start(&self, name: &str, model: &Model) -> Result<(), String> {
        if self.shutdown.is_some() {
            return Err(format!("{name} started during the shutdown"));
        }
        let Some(s) = model.get(name) else {
            return Ok(());
        };
        for (d, c) in &s.deps {
            let (state, started, ready) =
                self.states
                    .get(d.as_str())
                    .copied()
                    .unwrap_or((State::Pending, false, false));
            let met = match (c, state) {
                // A completed oneshot meets every condition.
                (_, State::Completed) => true,
                (Cond::Completed, _) => false,
                (_, State::Ready) => true,
                (Cond::Started, State::Starting) => true,
                (Cond::Started, State::Stopped) => started,
                (Cond::Ready, State::Stopped) => ready,
                _ => false,
            };
            if !met {
                return Err(format!(
                    "{name} started while its dependency {d} ({}) was {state}",
                    c.as_str()
                ));
            }
        }
        Ok(())
    }

    /// rest_for_one: when a service is asked to stop for a restart (an
    /// operator's, a failed health check, a start timeout, a dependency's
    /// restart, a reload's change) or for the shutdown, each dependent
    /// that the restart stops (`on_dependency_restart` `restart` or
    /// `stop`; every one in the shutdown) has stopped already.
    fn ordered_stop(&self, name: &str, cause: &StopCause, model: &Model) -> Result<(), String> {
        if self.forced.is_some() {
            return Ok(());
        }
        let restart = matches!(
            cause,
            StopCause::HealthFailed(_)
                | StopCause::StartTimedOut(_)
                | StopCause::Asked(AfterStop::Restart | AfterStop::Reset | AfterStop::Replace)
        );
        let shutdown = self.shutdown.is_some();
        if !restart && !shutdown {
            return Ok(());
        }
        // The dependents in the graph (enabled) whose run depends on it,
        // as the spec of that run says.
        for d in model.dependents(name).filter(|d| d.enabled) {
            let Some((deps, odr)) = self.run_deps.get(&d.name) else {
                continue;
            };
            if !deps.iter().any(|x| x == name) || !shutdown && *odr == "ignore" {
                continue;
            }
            let st = self.state(&d.name);
            if matches!(st, State::Starting | State::Ready | State::Stopping) {
                return Err(format!(
                    "{name} was asked to stop ({}) while its dependent {} (on_dependency_restart = {}) was still {st}",
                    if shutdown {
                        "shutdown".to_string()
                    } else {
                        format!("{cause:?}")
                    },
                    d.name,
                    d.on_dependency_restart
                ));
            }
        }
        Ok(())
    }

    /// What systemd hears: `READY=1` only when every critical service is
    /// ready, or, once it was said, to end a reload.
    pub fn said(
        &mut self,
        say: &Say,
        status: &[ServiceStatus],
        model: &Model,
    ) -> Result<(), String> {
        if let Say::Ready(_) | Say::Reloaded = say {
            if !self.ready_said
                && let Some(s) = not_ready_critical(status, model)
            {
                return Err(format!("systemd heard {say:?} while {s}"));
            }
            self.ready_said = true;
        }
        Ok(())
    }
}

/// The first enabled critical service that is not ready (or completed),
/// in words.
fn not_ready_critical(status: &[ServiceStatus], model: &Model) -> Option<String> {
    model
        .services
        .iter()
        .filter(|s| s.critical && s.enabled)
        .find_map(|s| {
            let st = status.iter().find(|x| x.name == s.name)?.state;
            (!st.is_ready()).then(|| format!("the critical {} was {st}", s.name))
        })
}

/// `/readyz` (the board's tally) agrees with the states listed: ready
/// exactly when every enabled critical service is.
pub fn readyz(critical_ready: bool, status: &[ServiceStatus], model: &Model) -> Result<(), String> {
    // A service stopping to be removed, disabled or changed counts with
    // the spec it stops (its old `critical`) until it has stopped.
    if status
        .iter()
        .any(|s| s.state == State::Stopping || model.get(&s.name).is_none())
    {
        return Ok(());
    }
    let computed = not_ready_critical(status, model);
    if critical_ready != computed.is_none() {
        return Err(format!(
            "/readyz says ready = {critical_ready}, but {}",
            computed.unwrap_or_else(|| "every critical service is ready".into())
        ));
    }
    Ok(())
}

/// The runs the world saw agree with the states: at most one run of a
/// service at a time, none once its state says it does not run, and none
/// killed before its stop timeout (unless the shutdown was forced or ran
/// out of time).
pub fn runs(
    runs: &Runs,
    status: &[ServiceStatus],
    oracle: &Oracle,
    shutdown_timeout: Option<Duration>,
) -> Result<(), String> {
    let listed: HashSet<&str> = status.iter().map(|s| s.name.as_str()).collect();
    for s in status {
        let live = runs.live_of(&s.name);
        if live.len() > 1 {
            return Err(format!("{} has {} runs at once", s.name, live.len()));
        }
        if !live.is_empty() && !matches!(s.state, State::Starting | State::Ready | State::Stopping)
        {
            return Err(format!("{} is {} but its run still runs", s.name, s.state));
        }
    }
    for r in &runs.all {
        if r.ended.is_none() && !listed.contains(r.name.as_str()) {
            return Err(format!(
                "{} is no longer listed but its run still runs",
                r.name
            ));
        }
        if !r.killed {
            continue;
        }
        let ended = r.ended.unwrap_or_default();
        let excused = oracle.forced.is_some_and(|f| f <= ended)
            || matches!((oracle.shutdown, shutdown_timeout), (Some(s), Some(t)) if s + t <= ended + SLACK);
        if excused {
            continue;
        }
        match r.cancelled {
            None => {
                return Err(format!(
                    "a run of {} was killed at {ended:?} without being asked to stop",
                    r.name
                ));
            }
            Some(c) if ended + SLACK < c + r.stop_timeout => {
                return Err(format!(
                    "a run of {} was asked to stop at {c:?} and killed at {ended:?}, before its stop timeout of {:?}",
                    r.name, r.stop_timeout
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Listed in the order the registry is written, whatever the reloads.
pub fn order(status: &[ServiceStatus], model: &Model) -> Result<(), String> {
    let listed: Vec<&str> = status
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| model.get(n).is_some())
        .collect();
    let written: Vec<&str> = model.services.iter().map(|s| s.name.as_str()).collect();
    if listed != written {
        return Err(format!(
            "listed in the order {listed:?}, written in the order {written:?}"
        ));
    }
    Ok(())
}

/// A reload restarts only what changes a run: a running service changed
/// only in `description` or `critical` is updated in place, one not
/// changed at all is left alone. (`status`: before the reload.)
pub fn reload_summary(
    before: &Model,
    after: &Model,
    status: &[ServiceStatus],
    summary: &super::super::ReloadSummary,
) -> Result<(), String> {
    let running = |name: &str| {
        status
            .iter()
            .any(|s| s.name == name && matches!(s.state, State::Starting | State::Ready))
    };
    for s in &after.services {
        let Some(old) = before.get(&s.name) else {
            continue;
        };
        if s.name == KEEPER || old.enabled != s.enabled {
            continue;
        }
        let changed = summary.changed.contains(&s.name);
        let updated = summary.updated.contains(&s.name);
        if old.block == s.block && (changed || updated) {
            return Err(format!(
                "{} did not change, yet the reload says it {}",
                s.name,
                if changed { "changed" } else { "was updated" }
            ));
        }
        if old.block != s.block && old.run_block == s.run_block && changed && running(&s.name) {
            return Err(format!(
                "{} changed only in description or critical, yet the reload restarts it",
                s.name
            ));
        }
    }
    Ok(())
}

/// The invariants of what warden publishes. `settled`: time has run on
/// with no step for longer than any timeout.
pub fn status(
    status: &[ServiceStatus],
    model: &Model,
    bounds: &Bounds,
    shutting_down: bool,
    settled: bool,
    runs: &Runs,
) -> Result<(), String> {
    let state = |name: &str| status.iter().find(|s| s.name == name).map(|s| s.state);
    // The services listed are those of the last registry applied; a removed
    // one only while it stops (and not once time has run on).
    for Service { name, enabled, .. } in &model.services {
        match state(name) {
            None => return Err(format!("{name} is in the registry but not listed")),
            Some(State::Disabled) if *enabled => {
                return Err(format!("{name} is enabled but disabled"));
            }
            Some(s) if !enabled && !matches!(s, State::Disabled | State::Stopping) => {
                return Err(format!("{name} is disabled in the registry but {s}"));
            }
            _ => {}
        }
    }
    for s in status {
        if model.get(&s.name).is_none() && (settled || s.state != State::Stopping) {
            return Err(format!(
                "{} was removed by the reload but is still listed, {}",
                s.name, s.state
            ));
        }
    }
    // last_error is the current trouble: none once a run is ready or has
    // completed.
    for s in status {
        if matches!(s.state, State::Ready | State::Completed) && s.last_error.is_some() {
            return Err(format!(
                "{} is {} with last_error {:?}",
                s.name, s.state, s.last_error
            ));
        }
    }
    // Nothing is starting, stopping or in backoff longer than its timers
    // allow.
    for s in status {
        let took = s.since.elapsed();
        let limit = match s.state {
            State::Starting => bounds.starting,
            State::Stopping => bounds.chain,
            // Its next run also waits for dependents its restart stops.
            State::Backoff => BACKOFF_MAX + bounds.chain,
            _ => continue,
        };
        if took > limit + SLACK {
            return Err(format!(
                "{} has been {} for {took:?} (its timers allow {limit:?})",
                s.name, s.state
            ));
        }
    }
    if !shutting_down {
        waiting(status, model)?;
    }
    if settled {
        // What runs, runs the registry's settings.
        for s in &model.services {
            if s.name != KEEPER && matches!(state(&s.name), Some(State::Starting | State::Ready)) {
                let ran = runs.last_of(&s.name).map(|r| r.tag);
                if ran != Some(s.tag) {
                    return Err(format!(
                        "{} runs variant {ran:?}, but the registry has {}",
                        s.name, s.tag
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A pending service waits for something that may come; a blocked one has
/// a dependency that ended for good.
fn waiting(status: &[ServiceStatus], model: &Model) -> Result<(), String> {
    let state = |name: &str| status.iter().find(|s| s.name == name).map(|s| s.state);
    for Service { name, deps, .. } in &model.services {
        let dep_state = |d: &str| state(d).unwrap_or(State::Pending);
        match state(name) {
            Some(State::Pending) => {
                let waits = deps.iter().any(|(d, c)| match dep_state(d) {
                    State::Pending | State::Stopping | State::Backoff | State::Standby => true,
                    State::Starting => *c != Cond::Started,
                    State::Ready => *c == Cond::Completed,
                    _ => false,
                });
                // A start also waits for dependents still stopping (a run of
                // theirs may have counted on it), directly or through
                // dependents waiting to run again.
                let mut stack = vec![name.as_str()];
                let mut seen = HashSet::new();
                let mut dependent_stopping = false;
                while let Some(n) = stack.pop() {
                    for o in model.dependents(n) {
                        if seen.insert(o.name.as_str()) {
                            if state(&o.name) == Some(State::Stopping) {
                                dependent_stopping = true;
                            }
                            stack.push(o.name.as_str());
                        }
                    }
                }
                if !waits && !dependent_stopping {
                    let ds: Vec<String> = deps
                        .iter()
                        .map(|(d, c)| format!("{d} ({}) is {}", c.as_str(), dep_state(d)))
                        .collect();
                    return Err(format!(
                        "{name} is pending but waits for nothing that may come: {}",
                        ds.join(", ")
                    ));
                }
            }
            Some(State::Blocked) => {
                let mut stack: Vec<&str> = deps.iter().map(|(d, _)| d.as_str()).collect();
                let mut cause = false;
                while let Some(d) = stack.pop() {
                    if matches!(
                        dep_state(d),
                        State::Failed | State::Blocked | State::Stopped | State::Stopping
                    ) {
                        cause = true;
                        break;
                    }
                    if let Some(dep) = model.get(d) {
                        stack.extend(dep.deps.iter().map(|(d, _)| d.as_str()));
                    }
                }
                if !cause {
                    return Err(format!(
                        "{name} is blocked but none of its dependencies ended for good"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Once time runs on with no step, over `window`: a service that was
/// ready through the whole of it ran its `[[schedule]]` entry about once a
/// period, and one whose spec has none ran nothing.
pub fn schedules(
    status: &[ServiceStatus],
    model: &Model,
    runs: &Runs,
    now: Duration,
    window: Duration,
) -> Result<(), String> {
    let from = now.saturating_sub(window);
    for s in status {
        let Some(service) = model.get(&s.name) else {
            continue;
        };
        if s.state != State::Ready || s.since.elapsed() < window {
            continue;
        }
        let ran = runs
            .actions
            .iter()
            .filter(|(n, t)| *n == s.name && *t > from)
            .count() as u64;
        let ok = match service.every_s {
            Some(every) => ran.abs_diff(window.as_secs() / every) <= 1,
            None => ran == 0,
        };
        if !ok {
            return Err(format!(
                "{} ran its scheduled action {ran} times in the last {window:?}, ready all along; its schedule: every {:?} s",
                s.name, service.every_s
            ));
        }
    }
    Ok(())
}
