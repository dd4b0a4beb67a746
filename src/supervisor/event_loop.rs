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

use super::state::{Event, State};
use super::{AfterStop, Control, Msg, ServiceStatus, Supervisor};
use crate::config::Condition;
use crate::services::Report;

impl Supervisor {
    /// Runs until every service has stopped: after `shutdown` resolves (a
    /// signal), a [`Control::Shutdown`], a critical failure, or when nothing
    /// is left that runs or could run. Returns the exit code.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> u8 {
        tokio::pin!(shutdown);
        let mut shutdown_done = false;
        let names: Vec<Arc<str>> = self.units.keys().cloned().collect();
        for name in names {
            self.start_schedules(&name);
        }
        self.schedule();
        while !self.finished() {
            tokio::select! {
                Some(msg) = self.rx.recv() => self.handle_msg(msg),
                Some(report) = self.reports_rx.recv() => self.handle_report(report),
                Some((name, l)) = self.leader_rx.recv() => self.handle_leadership(&name, l),
                _ = &mut shutdown, if !shutdown_done => {
                    shutdown_done = true;
                    // Asked to stop: a clean stop, unless something chose
                    // another code first.
                    self.choose_exit(super::EXIT_OK);
                    self.request_shutdown();
                }
            }
            self.schedule();
            self.publish();
        }
        self.publish();
        self.exit_code
    }

    /// Nothing runs and nothing is waiting to: done.
    fn finished(&self) -> bool {
        let live = |s: State| {
            if self.shutting_down {
                s.is_running()
            } else {
                matches!(
                    s,
                    State::Pending
                        | State::Starting
                        | State::Ready
                        | State::Stopping
                        | State::Backoff
                        | State::Standby
                )
            }
        };
        !self.units.values().any(|u| live(u.state))
    }

    /// Sends the status to its watchers, only when something changed (so
    /// that a watcher wakes for a change, not for every message).
    pub(super) fn publish(&self) {
        let status: Vec<ServiceStatus> = self
            .units
            .values()
            .map(|u| ServiceStatus {
                name: u.name.to_string(),
                kind: u.spec.kind.kind_name().to_string(),
                state: u.state,
                critical: u.spec.common.critical,
                restarts: u.restarts,
                last_error: u.last_error.clone(),
                since: u.since,
                schedules: u.schedule_last.clone(),
                details: u.details.clone(),
                logs: u.logs.clone(),
                history: u.history.clone(),
            })
            .collect();
        self.status_tx.send_if_modified(|old| {
            if **old == status {
                false
            } else {
                *old = Arc::new(status);
                true
            }
        });
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
            Msg::ScheduleTick { name, index } => self.schedule_tick(&name, index),
            Msg::ScheduleDone { name, index, run } => self.schedule_done(&name, index, run),
            Msg::ShutdownTimeout => {
                if self.shutting_down && !self.forced {
                    tracing::warn!("shutdown_timeout reached; forcing the rest");
                    self.force();
                }
            }
        }
    }

    /// Carries out an operator's request and answers it.
    fn handle_control(&mut self, c: Control) {
        match c {
            Control::Shutdown => {
                self.choose_exit(super::EXIT_OK);
                self.request_shutdown();
            }
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
            Control::Ping { reply } => {
                let _ = reply.send(());
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

    /// Begins the ordered shutdown (a second request forces it): nothing
    /// starts any more, and `schedule` stops services leaves first.
    pub(super) fn request_shutdown(&mut self) {
        if self.shutting_down {
            if !self.forced {
                tracing::warn!("second stop request: forcing shutdown");
                self.force();
            }
            return;
        }
        tracing::info!("shutting down");
        self.shutting_down = true;
        self.stopping_tx.send_replace(true);
        self.timer(self.shutdown_timeout, Msg::ShutdownTimeout);
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
    /// what may stop.
    fn schedule(&mut self) {
        if self.shutting_down {
            let candidates: Vec<Arc<str>> = self
                .units
                .values()
                .filter(|u| matches!(u.state, State::Starting | State::Ready))
                .filter(|u| {
                    // A service stops only after all its dependents have;
                    // the API stops last, so that it can say so meanwhile.
                    if u.spec.is_api() {
                        self.units
                            .values()
                            .all(|o| o.name == u.name || !o.state.is_running())
                    } else {
                        self.graph
                            .dependents(&u.name)
                            .iter()
                            .all(|d| !self.units[*d].state.is_running())
                    }
                })
                .map(|u| u.name.clone())
                .collect();
            for name in candidates {
                self.stop_unit(&name, AfterStop::Stay);
            }
            return;
        }
        // A service that starts may let others start (`started`), and one
        // that is blocked may block others: look again until a pass
        // changes nothing (there is no other message to wait for).
        while self.start_what_may_start() {}
    }

    /// One pass of `schedule` outside the shutdown: starts every pending
    /// service whose conditions hold and blocks those that can never
    /// start. Whether it started or blocked any.
    fn start_what_may_start(&mut self) -> bool {
        let mut changed = false;
        let mut ready = Vec::new();
        let mut stuck = Vec::new();
        for u in self.units.values() {
            if !matches!(u.state, State::Pending | State::Standby) {
                continue;
            }
            match self.waiting_on(&u.name) {
                Wait::Nothing => ready.push(u.name.clone()),
                Wait::Dependencies => {}
                Wait::Never(reason) => stuck.push((u.name.clone(), reason)),
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
                changed = true;
            }
        }
        for name in ready {
            if !waiting(self, &name) {
                continue;
            }
            let u = &self.units[&*name];
            if !u.spec.common.singleton || u.leader {
                self.start_unit(&name);
                changed = true;
            } else {
                // Waiting for the lock is no change: its task reports.
                self.seek_leadership(&name);
            }
        }
        changed
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
