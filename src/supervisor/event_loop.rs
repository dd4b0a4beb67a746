//! The loop that owns every unit: it receives messages (controls, service
//! reports, ended runs, timers, leadership), applies each, then looks at
//! what may start (or, during the shutdown, stop) next and publishes the
//! status. It also holds the shutdown: ordered, timed, and forced by a
//! second request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::board::Change;
use super::state::{Event, State};
use super::{AfterStop, Control, Msg, ServiceStatus, Supervisor};
use crate::config::Condition;
use crate::services::Report;

impl Supervisor {
    /// Runs until every service has stopped: after `shutdown` resolves (a
    /// signal), a [`Control::Shutdown`], a critical failure, or when nothing
    /// is left that runs or could run. Returns the exit code.
    ///
    /// Each turn applies one message, then `schedule` and `publish` look
    /// only at the units that message touched: the work per message does
    /// not grow with the number of services. The urgent lane (a shutdown
    /// request, the watchdog's ping) and the shutdown's deadline are
    /// looked at before every message, so a backlog cannot delay them.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> u8 {
        tokio::pin!(shutdown);
        let mut shutdown_done = false;
        let names: Vec<Arc<str>> = self.units.keys().cloned().collect();
        for name in names {
            self.start_schedules(&name);
        }
        self.schedule();
        self.publish();
        while !self.finished() {
            self.take_urgent();
            let deadline = self.shutdown_deadline.filter(|_| !self.forced);
            let next = tokio::select! {
                Some(u) = self.urgent_rx.recv() => Next::Urgent(u),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Next::Deadline,
                Some(msg) = self.rx.recv() => Next::Msg(msg),
                Some(report) = self.reports_rx.recv() => Next::Report(report),
                Some((name, l)) = self.leader_rx.recv() => Next::Leadership(name, l),
                _ = &mut shutdown, if !shutdown_done => {
                    shutdown_done = true;
                    Next::Signal
                }
            };
            // Whatever woke the loop, what is urgent goes first.
            self.take_urgent();
            match next {
                Next::Urgent(u) => self.handle_urgent(u),
                Next::Deadline => {}
                Next::Msg(msg) => self.handle_msg(msg),
                Next::Report(report) => self.handle_report(report),
                Next::Leadership(name, l) => {
                    self.touch(&name);
                    self.touched.push(name.clone());
                    self.handle_leadership(&name, l);
                }
                Next::Signal => self.shutdown_asked(),
            }
            self.schedule();
            self.publish();
        }
        self.publish();
        let code = self.exit_code;
        if self.exit_with_loop {
            // Every run has ended; the units and the board are the
            // process's to free as it exits. What a unit's drop would end
            // (its schedule timers, its lock) ends here.
            let mut units = std::mem::take(&mut self.units);
            for u in units.values_mut() {
                u.schedule_cancel.cancel();
                u.release_leadership();
            }
            std::mem::forget(units);
            std::mem::forget(self.board.clone());
        }
        code
    }

    /// Every waiting shutdown request and ping, then the deadline.
    fn take_urgent(&mut self) {
        while let Ok(u) = self.urgent_rx.try_recv() {
            self.handle_urgent(u);
        }
        self.check_deadline();
    }

    /// A shutdown request or a ping, taken before any queued message.
    fn handle_urgent(&mut self, u: super::Urgent) {
        match u {
            super::Urgent::Shutdown => self.shutdown_asked(),
            super::Urgent::Ping(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Forces the shutdown once its `shutdown_timeout` is over.
    fn check_deadline(&mut self) {
        if let Some(d) = self.shutdown_deadline
            && !self.forced
            && Instant::now() >= d
        {
            tracing::warn!("shutdown_timeout reached; forcing the rest");
            self.force();
        }
    }

    /// Nothing runs and nothing is waiting to: done (from the tally: no
    /// walk over the units).
    fn finished(&self) -> bool {
        let t = &self.tally;
        if self.shutting_down {
            t.running() == 0
        } else {
            [
                State::Pending,
                State::Starting,
                State::Ready,
                State::Stopping,
                State::Backoff,
                State::Standby,
            ]
            .iter()
            .all(|s| t.count(*s) == 0)
        }
    }

    /// Tells the watchers what changed: only the entries of the units
    /// touched since the last time (all of them after a reload).
    pub(super) fn publish(&mut self) {
        let changed = if std::mem::take(&mut self.republish) {
            self.dirty.clear();
            let all = self.units.values().map(|u| (u.name.clone(), status_of(u)));
            self.board.rebuild(all.collect())
        } else if self.dirty.is_empty() {
            false
        } else {
            let mut dirty = std::mem::take(&mut self.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            let changes = dirty.into_iter().map(|name| match self.units.get(&name) {
                Some(u) => Change::Put(name, status_of(u)),
                None => Change::Remove(name),
            });
            let changed = self.board.apply(changes.collect::<Vec<_>>());
            self.dirty = Vec::new();
            changed
        };
        if changed {
            self.version_tx.send_modify(|v| *v += 1);
        }
        #[cfg(debug_assertions)]
        self.check_books();
    }

    /// Debug builds (every test) check that the incremental books agree
    /// with a count from scratch: the board with every unit's status, the
    /// tally with their states, and that `schedule` left nothing behind.
    #[cfg(debug_assertions)]
    fn check_books(&self) {
        let all: Vec<ServiceStatus> = self.units.values().map(status_of).collect();
        assert!(
            self.board.snapshot() == all,
            "the board differs from the units' status"
        );
        let mut t = super::Tally::default();
        for u in self.units.values() {
            t.add(u.state, false);
        }
        assert_eq!(t, self.tally, "the tally differs from the units' states");
        if !self.touched.is_empty() || self.rescan {
            return;
        }
        for u in self.units.values() {
            if self.shutting_down {
                if matches!(u.state, State::Starting | State::Ready) {
                    assert!(
                        !self.may_stop(u),
                        "{} may stop, yet schedule left it running",
                        u.name
                    );
                }
            } else if u.state == State::Pending || (u.state == State::Standby && u.leader) {
                let left = match self.waiting_on(&u.name) {
                    // (A start held until its dependents have stopped is
                    // carried on when they have.)
                    Wait::Nothing => (!u.spec.common.singleton || u.leader) && u.held.is_none(),
                    Wait::Never(_) => true,
                    Wait::Dependencies => false,
                };
                assert!(
                    !left,
                    "{} may start (or block), yet schedule left it {}",
                    u.name, u.state
                );
            }
        }
    }

    /// Sends `msg` to the loop after `after` (a tokio sleep: paused time in
    /// tests); abort the handle to cancel it.
    pub(super) fn timer(&self, after: Duration, msg: Msg) -> AbortHandle {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(msg);
        })
        .abort_handle()
    }

    /// A service reported on its current run (a report of an older run is
    /// ignored).
    fn handle_report(&mut self, report: Report) {
        match report {
            Report::Ready { name, generation } => {
                let Some(u) = self.units.get(&*name) else {
                    return;
                };
                if u.generation != generation || u.state != State::Starting {
                    return;
                }
                crate::metrics::started(&name, u.since.elapsed());
                // last_error is the current trouble: a run that is ready
                // ends it (the history and the events keep the past).
                self.units[&*name].last_error = None;
                if self.transition(&name, Event::Ready) {
                    tracing::info!(service = %name, "ready");
                    let u = &mut self.units[&*name];
                    u.ready_since = Some(Instant::now());
                    if let Some(t) = u.start_timer.take() {
                        t.abort();
                    }
                    self.watch_health(&name, generation);
                }
            }
        }
    }

    /// Applies one message; each concern's own file says what it does.
    fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Control(c) => self.handle_control(c),
            Msg::Ended {
                name,
                generation,
                result,
            } => self.on_ended(&name, generation, result),
            Msg::StartTimeout { name, generation } => self.start_timed_out(&name, generation),
            Msg::BackoffElapsed { name, generation } => self.backoff_elapsed(&name, generation),
            Msg::StopTimeout { name, generation } => self.stop_timed_out(&name, generation),
            Msg::HealthFailed {
                name,
                generation,
                error,
            } => self.health_failed(&name, generation, error),
            #[cfg(test)]
            Msg::HealthFailedNow { name } => {
                if let Some(g) = self.units.get(&name).map(|u| u.generation) {
                    self.health_failed(&name, g, "health check failed (simulated)".into());
                }
            }
            Msg::ScheduleTick { name, index } => self.schedule_tick(&name, index),
            Msg::ScheduleDone { name, index, run } => {
                // The run's result shows in the status.
                self.touch(&name);
                self.schedule_done(&name, index, run);
            }
        }
    }

    /// Carries out an operator's request and answers it.
    fn handle_control(&mut self, c: Control) {
        match c {
            Control::Shutdown => self.shutdown_asked(),
            Control::Start { name, reply } => {
                let r = self.control_start(&name);
                let _ = reply.send(r);
            }
            Control::Stop { name, reply } => {
                let r = self.control_stop(&name);
                let _ = reply.send(r);
            }
            Control::Restart { name, reply } => {
                let r = self.control_restart(&name);
                let _ = reply.send(r);
            }
            Control::Action {
                name,
                action,
                args,
                reply,
            } => self.control_action(&name, action, args, reply),
            Control::Reload {
                registry,
                graph,
                reply,
            } => {
                let r = self.reload(*registry, graph);
                let _ = reply.send(r);
            }
        }
    }

    /// A signal or an operator asks warden to stop: exit 0, unless
    /// something chose the code before. The second ask forces the
    /// shutdown; a shutdown warden began itself (a critical failure, the
    /// main service's end) is not an ask: the first signal during it
    /// (`docker stop`) keeps every grace.
    fn shutdown_asked(&mut self) {
        #[cfg(test)]
        if !self.shutting_down {
            self.traced(super::Traced::ShutdownAsked);
        }
        self.asked = self.asked.saturating_add(1);
        self.choose_exit(super::EXIT_OK);
        if self.asked >= 2 {
            if !self.forced {
                tracing::warn!("second stop request: forcing shutdown");
                self.force();
            }
            return;
        }
        self.request_shutdown();
    }

    /// Begins the ordered shutdown (once: a second ask forces it,
    /// [`Supervisor::shutdown_asked`]): nothing starts any more, and
    /// `schedule` stops services leaves first.
    pub(super) fn request_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        tracing::info!("shutting down");
        #[cfg(test)]
        self.traced(super::Traced::Shutdown);
        self.shutting_down = true;
        self.stopping_tx.send_replace(true);
        self.shutdown_deadline = Some(Instant::now() + self.shutdown_timeout);
        self.rescan = true;
        // Nothing waiting to start will start now.
        let idle: Vec<Arc<str>> = self
            .units
            .values()
            .filter(|u| {
                matches!(
                    u.state,
                    State::Pending | State::Backoff | State::Standby | State::Blocked
                )
            })
            .map(|u| u.name.clone())
            .collect();
        for name in idle {
            self.units[&*name].generation += 1;
            self.units[&*name].release_leadership();
            self.transition(&name, Event::Stop);
        }
    }

    /// Skips every grace period: aborts what still runs.
    fn force(&mut self) {
        self.forced = true;
        #[cfg(test)]
        self.traced(super::Traced::Forced);
        let running: Vec<Arc<str>> = self
            .units
            .values()
            .filter(|u| u.state.is_running())
            .map(|u| u.name.clone())
            .collect();
        for name in running {
            if self.units[&*name].state != State::Stopping {
                self.stop_unit(&name, AfterStop::Stay);
            }
            if let Some(a) = &self.units[&*name].abort {
                a.abort();
            }
        }
    }

    /// After every message: start what may start, or (shutting down) stop
    /// what may stop. Only the units touched since the last time, and
    /// their neighbours, can have changed their minds (dependents for a
    /// start, dependencies and the API for a stop); what this starts or
    /// stops is looked at again in turn, until nothing is left.
    fn schedule(&mut self) {
        loop {
            let all = std::mem::take(&mut self.rescan);
            let touched = std::mem::take(&mut self.touched);
            if !all && touched.is_empty() {
                return;
            }
            let candidates = self.candidates(all, touched);
            if self.shutting_down {
                let stop: Vec<Arc<str>> = candidates
                    .into_iter()
                    .filter(|n| self.units.get(n).is_some_and(|u| self.may_stop(u)))
                    .collect();
                for name in stop {
                    self.stop_unit(&name, AfterStop::Stay);
                }
            } else {
                self.start_ready(candidates);
            }
        }
    }

    /// The units to look at, in the registry's order: every unit, or the
    /// touched ones with their neighbours.
    fn candidates(&self, all: bool, touched: Vec<Arc<str>>) -> Vec<Arc<str>> {
        if all {
            return self.units.keys().cloned().collect();
        }
        let mut out: Vec<(usize, Arc<str>)> = Vec::new();
        let mut add = |s: &Supervisor, name: &str| {
            if let Some((i, n, _)) = s.units.get_full(name) {
                out.push((i, n.clone()));
            }
        };
        let mut api_too = false;
        for t in &touched {
            add(self, t);
            if self.shutting_down {
                if self.units.get(t).is_none_or(|u| !u.state.is_running()) {
                    for (d, _) in self.graph.dependencies(t) {
                        add(self, d);
                    }
                    api_too = true;
                }
            } else {
                for d in self.graph.dependents(t) {
                    add(self, d);
                }
            }
        }
        if api_too
            && let Some(api) = self
                .units
                .values()
                .find(|u| u.spec.is_api())
                .map(|u| u.name.clone())
        {
            add(self, &api);
        }
        out.sort_unstable_by_key(|(i, _)| *i);
        out.dedup_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, n)| n).collect()
    }

    /// Shutting down: a unit stops once every unit that depends on it has;
    /// the API stops last, so that it can say so meanwhile.
    fn may_stop(&self, u: &super::Unit) -> bool {
        if !matches!(u.state, State::Starting | State::Ready) {
            return false;
        }
        if u.spec.is_api() {
            // Itself is the one still running.
            self.tally.running() == 1
        } else {
            self.graph
                .dependents(&u.name)
                .iter()
                .all(|d| self.units.get(*d).is_none_or(|d| !d.state.is_running()))
        }
    }

    /// Starts (or seeks the lock of) the candidates whose conditions hold,
    /// and blocks those that can never start.
    fn start_ready(&mut self, candidates: Vec<Arc<str>>) {
        let mut ready = Vec::new();
        let mut stuck = Vec::new();
        for name in candidates {
            let Some(u) = self.units.get(&name) else {
                continue;
            };
            if !matches!(u.state, State::Pending | State::Standby) {
                continue;
            }
            match self.waiting_on(&u.name) {
                Wait::Nothing => ready.push(name),
                Wait::Dependencies => {}
                Wait::Never(reason) => stuck.push((name, reason)),
            }
        }
        // Blocking one may block others of the list, or start the shutdown:
        // each is judged again as it comes.
        let waiting = |s: &Supervisor, name: &str| {
            !s.shutting_down
                && s.units
                    .get(name)
                    .is_some_and(|u| matches!(u.state, State::Pending | State::Standby))
        };
        for (name, reason) in stuck {
            if waiting(self, &name) {
                self.block_for_good(&name, reason);
            }
        }
        for name in ready {
            if !waiting(self, &name) {
                continue;
            }
            if !self.units[&*name].spec.common.singleton || self.may_lead(&name) {
                self.start_unit(&name);
            } else {
                self.seek_leadership(&name);
            }
        }
    }

    /// What `name` still waits for: nothing (every edge condition holds:
    /// it may start), its dependencies, or nothing that can come (a
    /// dependency ended for good without meeting its condition).
    fn waiting_on(&self, name: &str) -> Wait {
        let mut wait = Wait::Nothing;
        for (d, c) in self.graph.dependencies(name) {
            let dep = &self.units[d];
            if holds(dep.state, dep.met, c) {
                continue;
            }
            if matches!(dep.state, State::Stopped | State::Failed | State::Blocked) {
                let how = match dep.state {
                    State::Failed => "failed for good".to_string(),
                    State::Blocked => "is blocked".to_string(),
                    _ => format!("stopped without being {c}"),
                };
                return Wait::Never(format!("blocked: its dependency {d} {how}"));
            }
            wait = Wait::Dependencies;
        }
        wait
    }
}

/// What woke the loop.
enum Next {
    Urgent(super::Urgent),
    Deadline,
    Msg(Msg),
    Report(Report),
    Leadership(Arc<str>, super::leader::Leadership),
    Signal,
}

/// One service's status as the outside sees it.
fn status_of(u: &super::Unit) -> ServiceStatus {
    ServiceStatus {
        name: u.name.to_string(),
        kind: u.spec.kind.kind_name().to_string(),
        state: u.state,
        // The registry in force says: a service stopping to take a changed
        // spec is critical (or not) as the new one says.
        critical: u.in_force().common.critical,
        restarts: u.restarts,
        last_error: u.last_error.clone(),
        since: u.since,
        schedules: u.schedule_last.clone(),
        details: u.details.clone(),
        logs: u.logs.clone(),
        history: u.history.clone(),
    }
}

/// What a pending service waits for.
enum Wait {
    Nothing,
    Dependencies,
    /// It can never start: why.
    Never(String),
}

/// Whether a dependency in `state`, whose latest run met `met`, meets the
/// condition `c`. A condition holds while the dependency is in it
/// (`started`: starting or ready; `ready`: ready; all three once it
/// completed). Once the dependency has stopped for good (it exited
/// cleanly and is not restarted, or an operator stopped it), what its
/// latest run met stays met; on its way to run again (stopping to
/// restart, in backoff, waiting) only a new run meets it.
pub(super) fn holds(state: State, met: super::Met, c: Condition) -> bool {
    let stopped = state == State::Stopped;
    match c {
        Condition::Started => {
            matches!(state, State::Starting | State::Ready | State::Completed)
                || (stopped && met.started)
        }
        Condition::Ready => {
            matches!(state, State::Ready | State::Completed) || (stopped && met.ready)
        }
        Condition::Completed => state == State::Completed,
    }
}
