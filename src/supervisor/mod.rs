//! The supervisor: runs every service of a checked registry under its
//! restart policy, event-driven, and stops them in reverse dependency order.
//!
//! One task owns all service states. Everything that happens — a service
//! says it is ready, a run ends, a timer fires, an operator asks — arrives
//! as a message on one channel; the loop applies it through the state
//! machine ([`state::next`]) and then looks at what may start (or, during
//! shutdown, stop) next. There is no polling: nothing happens between
//! messages. Timers are tokio sleeps, so tests run on paused time.

pub mod events;
pub mod leader;
pub mod restart;
pub mod state;
pub mod systemd;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Condition, OnDependencyRestart, Registry, RestartPolicy, ServiceSpec};
use crate::graph::Graph;
use crate::services::{ActionError, Context, Details, Kinds, Logs, Report, ServiceError};
use events::{Events, Happened, RestartReason};
use restart::{BackoffState, RestartBudget};
use state::{Event, State};

/// The `(state, event)` pairs a supervisor applied (transitions coverage).
#[cfg(test)]
type Coverage = Arc<std::sync::Mutex<HashSet<(State, Event)>>>;

/// How a singleton's lock is held: given the service, its database, where
/// to report leadership, and a token that releases the lock when cancelled.
pub type Locker = Arc<
    dyn Fn(
            Arc<str>,
            crate::config::types::PostgresDsn,
            mpsc::UnboundedSender<(Arc<str>, leader::Leadership)>,
            CancellationToken,
        ) -> crate::services::BoxFuture<()>
        + Send
        + Sync,
>;

/// Exit codes of `warden run` (the same numbers as `cli::exit`).
pub const EXIT_OK: u8 = 0;
/// A critical service failed for good.
pub const EXIT_CRITICAL: u8 = 3;

/// What an operator (or a signal) asks of a running supervisor.
#[derive(Debug)]
pub enum Control {
    /// Stop everything in reverse order; a second request forces it.
    Shutdown,
    /// Start a stopped, failed or completed service.
    Start {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop a service (it stays stopped).
    Stop {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop a service if it runs, then start it again.
    Restart {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Run one of a service's kind-specific actions.
    Action {
        name: String,
        action: String,
        args: serde_json::Value,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    /// Answers at once: proves the loop is live (systemd's watchdog).
    Ping { reply: oneshot::Sender<()> },
    /// Switch to a new, already checked registry: stop removed services,
    /// start added ones, restart changed ones, leave the others alone.
    Reload {
        registry: Box<Registry>,
        graph: Graph,
        reply: oneshot::Sender<Result<ReloadSummary, String>>,
    },
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

/// A handle to a running supervisor: send it controls, watch its states.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    status: watch::Receiver<Arc<Vec<ServiceStatus>>>,
    stopping: watch::Receiver<bool>,
    events: Events,
}

impl Handle {
    /// Sends a control; `false` when the supervisor has ended.
    pub fn send(&self, c: Control) -> bool {
        self.tx.send(Msg::Control(c)).is_ok()
    }

    /// Asks for an ordered shutdown (a second call forces it).
    pub fn shutdown(&self) -> bool {
        self.send(Control::Shutdown)
    }

    /// Sends a control that answers, and waits for the answer.
    pub async fn request<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Control,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        if !self.send(f(tx)) {
            return Err("the supervisor has ended".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the supervisor has ended".into()))
    }

    /// The latest status of every service.
    pub fn status(&self) -> Arc<Vec<ServiceStatus>> {
        self.status.borrow().clone()
    }

    /// Starts a stopped, failed or completed service.
    pub async fn start(&self, name: &str) -> Result<(), String> {
        let name = name.to_string();
        self.request(|reply| Control::Start { name, reply }).await
    }

    /// Stops a service (it stays stopped).
    pub async fn stop(&self, name: &str) -> Result<(), String> {
        let name = name.to_string();
        self.request(|reply| Control::Stop { name, reply }).await
    }

    /// Stops a service if it runs, then starts it again.
    pub async fn restart(&self, name: &str) -> Result<(), String> {
        let name = name.to_string();
        self.request(|reply| Control::Restart { name, reply }).await
    }

    /// Applies a new, checked registry and says what changed.
    pub async fn request_reload(
        &self,
        registry: Registry,
        graph: Graph,
    ) -> Result<ReloadSummary, String> {
        let registry = Box::new(registry);
        self.request(|reply| Control::Reload {
            registry,
            graph,
            reply,
        })
        .await
    }

    /// Runs one of a service's actions and waits for its answer.
    pub async fn request_action(
        &self,
        name: &str,
        action: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let (name, action) = (name.to_string(), action.to_string());
        self.request(|reply| Control::Action {
            name,
            action,
            args,
            reply,
        })
        .await
    }

    /// Becomes `true` the moment the shutdown begins.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.clone()
    }

    /// Whether the supervisor loop answers within `within`.
    pub async fn ping(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(Control::Ping { reply: tx })
            && matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())))
    }

    /// Every state change, restart and action result from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Happened> {
        self.events.subscribe()
    }

    /// A receiver that sees every new status (for waiting in tests, the
    /// API's events and sd_notify).
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<ServiceStatus>>> {
        self.status.clone()
    }
}

/// One service as the outside sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: String,
    pub state: State,
    pub critical: bool,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// When the service entered its current state (supervisor clock).
    pub since: Instant,
    /// The last run of each `[[schedule]]` entry, in order (`None`: not run
    /// yet).
    pub schedules: Vec<Option<ActionRun>>,
    /// The details the service publishes (shared, live).
    pub details: Details,
    /// The service's captured output (shared, live).
    pub logs: Logs,
    /// Its last changes of state (shared, live).
    pub history: History,
}

/// One change of state, as kept in a service's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub at: std::time::SystemTime,
    pub from: State,
    pub to: State,
    pub event: Event,
}

/// The last changes of state of a service (a bounded ring, shared: the
/// status carries a handle, not a copy).
#[derive(Debug, Clone, Default)]
pub struct History(Arc<std::sync::Mutex<std::collections::VecDeque<Transition>>>);

/// Transitions kept per service.
const HISTORY: usize = 20;

/// Two handles are equal when they share the same ring.
impl PartialEq for History {
    fn eq(&self, other: &History) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl History {
    fn push(&self, t: Transition) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(t);
    }

    /// Oldest first.
    pub fn snapshot(&self) -> Vec<Transition> {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().copied().collect()
    }
}

/// One finished run of an action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRun {
    pub action: String,
    pub finished: std::time::SystemTime,
    pub duration: Duration,
    pub result: Result<serde_json::Value, String>,
}

#[derive(Debug)]
enum Msg {
    Control(Control),
    /// A run ended (returned, failed, panicked or was aborted).
    Ended {
        name: Arc<str>,
        generation: u64,
        result: Result<(), ServiceError>,
    },
    StartTimeout {
        name: Arc<str>,
        generation: u64,
    },
    BackoffElapsed {
        name: Arc<str>,
        generation: u64,
    },
    StopTimeout {
        name: Arc<str>,
        generation: u64,
    },
    HealthFailed {
        name: Arc<str>,
        generation: u64,
        error: String,
    },
    /// A `[[schedule]]` entry is due.
    ScheduleTick {
        name: Arc<str>,
        index: usize,
    },
    /// A scheduled run finished.
    ScheduleDone {
        name: Arc<str>,
        index: usize,
        run: ActionRun,
    },
    ShutdownTimeout,
}

/// What to do once a service that is stopping has ended.
#[derive(Debug, Clone, PartialEq)]
enum AfterStop {
    /// Stay stopped.
    Stay,
    /// Wait for the dependencies again (a dependency restarted).
    Reset,
    /// Start again at once (an operator's restart).
    Restart,
    /// Count it as a failure (start timeout, failed health check).
    Failure(RestartReason, String),
    /// A dependency failed for good.
    Block,
    /// Reload turned it off.
    Disable,
    /// Reload removed it.
    Remove,
    /// Reload changed it: take `Unit::next_spec`, then wait for the
    /// dependencies again.
    Replace,
    /// A singleton that lost its lock: wait in standby.
    Standby,
}

struct Unit {
    name: Arc<str>,
    spec: ServiceSpec,
    state: State,
    since: Instant,
    generation: u64,
    cancel: Option<CancellationToken>,
    abort: Option<AbortHandle>,
    after_stop: AfterStop,
    backoff: BackoffState,
    budget: RestartBudget,
    restarts: u64,
    last_error: Option<String>,
    details: Details,
    logs: Logs,
    history: History,
    /// The spec a reload will apply once this run has stopped.
    next_spec: Option<ServiceSpec>,
    /// Per `[[schedule]]` entry: whether a run is in flight, the last run.
    schedule_busy: Vec<bool>,
    schedule_last: Vec<Option<ActionRun>>,
    /// Cancels the schedule timers (on reload or removal).
    schedule_cancel: CancellationToken,
    /// When the current run became ready (for `reset_after`).
    ready_since: Option<Instant>,
    /// The current run's start_timeout timer, cancelled once it is ready.
    start_timer: Option<AbortHandle>,
    /// Singletons: this instance holds the service's lock.
    leader: bool,
    /// Singletons: the task holding (or waiting for) the lock.
    leadership: Option<CancellationToken>,
}

impl Unit {
    fn new(spec: ServiceSpec, state: State, log_lines: usize) -> Unit {
        let r = &spec.common.restart;
        Unit {
            name: Arc::from(spec.name.as_str()),
            state,
            since: Instant::now(),
            generation: 0,
            cancel: None,
            abort: None,
            after_stop: AfterStop::Stay,
            backoff: BackoffState::new(r.backoff.clone()),
            budget: RestartBudget::new(r.max_restarts, r.window),
            restarts: 0,
            last_error: None,
            details: Details::default(),
            logs: Logs::new(log_lines),
            history: History::default(),
            next_spec: None,
            schedule_busy: vec![false; spec.common.schedule.len()],
            schedule_last: vec![None; spec.common.schedule.len()],
            schedule_cancel: CancellationToken::new(),
            ready_since: None,
            start_timer: None,
            leader: false,
            leadership: None,
            spec,
        }
    }

    /// Gives up the singleton lock (its session ends, so another instance
    /// takes over).
    fn release_leadership(&mut self) {
        if let Some(c) = self.leadership.take() {
            c.cancel();
        }
        self.leader = false;
    }

    /// Takes a new spec: restart arithmetic starts over.
    fn replace_spec(&mut self, spec: ServiceSpec) {
        let r = &spec.common.restart;
        self.backoff = BackoffState::new(r.backoff.clone());
        self.budget = RestartBudget::new(r.max_restarts, r.window);
        if spec.common.schedule != self.spec.common.schedule {
            self.schedule_cancel.cancel();
            self.schedule_cancel = CancellationToken::new();
            self.schedule_busy = vec![false; spec.common.schedule.len()];
            self.schedule_last = vec![None; spec.common.schedule.len()];
        }
        self.spec = spec;
    }
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

/// The supervisor of one registry. Build it with [`Supervisor::new`], then
/// drive it with [`Supervisor::run`].
pub struct Supervisor {
    units: IndexMap<Arc<str>, Unit>,
    graph: Graph,
    factories: Kinds,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
    status_tx: watch::Sender<Arc<Vec<ServiceStatus>>>,
    status_rx: watch::Receiver<Arc<Vec<ServiceStatus>>>,
    stopping_tx: watch::Sender<bool>,
    /// Where state changes, restarts and action results are broadcast.
    events: Events,
    leader_tx: mpsc::UnboundedSender<(Arc<str>, leader::Leadership)>,
    leader_rx: mpsc::UnboundedReceiver<(Arc<str>, leader::Leadership)>,
    /// `[warden] postgres`: where singletons without their own take locks.
    coordination: Option<crate::config::types::PostgresDsn>,
    /// Holds singleton locks ([`leader::hold`] on PostgreSQL).
    locker: Locker,
    rng: fastrand::Rng,
    shutdown_timeout: Duration,
    shutting_down: bool,
    forced: bool,
    exit_code: u8,
    /// Every `(state, event)` applied, for the transitions-coverage test.
    #[cfg(test)]
    coverage: Option<Coverage>,
}

impl Supervisor {
    /// Prepares (without starting anything) the services of `graph`, which
    /// was checked against `registry`.
    pub fn new(registry: &Registry, graph: Graph, factories: Kinds) -> Supervisor {
        let mut units = IndexMap::new();
        let log_lines = registry.warden.log_lines.0 as usize;
        for spec in registry.services.values() {
            let state = if graph.contains(&spec.name) {
                State::Pending
            } else if !spec.enabled() {
                State::Disabled
            } else {
                continue; // left out by --only
            };
            let unit = Unit::new(spec.clone(), state, log_lines);
            units.insert(unit.name.clone(), unit);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Arc::new(Vec::new()));
        let (stopping_tx, _) = watch::channel(false);
        let (leader_tx, leader_rx) = mpsc::unbounded_channel();
        let s = Supervisor {
            units,
            graph,
            factories,
            tx,
            rx,
            reports_tx,
            reports_rx,
            status_tx,
            status_rx,
            stopping_tx,
            events: Events::default(),
            leader_tx,
            leader_rx,
            coordination: registry.warden.postgres.clone(),
            locker: Arc::new(|name, dsn, tx, cancel| Box::pin(leader::hold(name, dsn, tx, cancel))),
            rng: fastrand::Rng::new(),
            shutdown_timeout: registry.warden.shutdown_timeout,
            shutting_down: false,
            forced: false,
            exit_code: EXIT_OK,
            #[cfg(test)]
            coverage: None,
        };
        s.publish();
        s
    }

    /// Holds singleton locks with `locker` instead of PostgreSQL (tests).
    pub fn with_locker(mut self, locker: Locker) -> Supervisor {
        self.locker = locker;
        self
    }

    /// Seeds the jitter (tests).
    pub fn with_seed(mut self, seed: u64) -> Supervisor {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.tx.clone(),
            status: self.status_rx.clone(),
            stopping: self.stopping_tx.subscribe(),
            events: self.events.clone(),
        }
    }

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

    fn publish(&self) {
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

    /// Applies `event` to a unit through the state machine.
    fn transition(&mut self, name: &str, event: Event) -> bool {
        let Some(u) = self.units.get_mut(name) else {
            return false;
        };
        #[cfg(test)]
        if let Some(c) = &self.coverage {
            c.lock().unwrap().insert((u.state, event));
        }
        match state::next(u.state, event) {
            Ok(to) => {
                tracing::debug!(service = %u.name, from = %u.state, to = %to, ?event, "state");
                u.history.push(Transition {
                    at: std::time::SystemTime::now(),
                    from: u.state,
                    to,
                    event,
                });
                u.state = to;
                u.since = Instant::now();
                if self.events.listened() {
                    self.events.send(Happened::State {
                        service: u.name.clone(),
                        state: to,
                        restarts: u.restarts,
                        last_error: u.last_error.clone(),
                        at: std::time::SystemTime::now(),
                    });
                }
                true
            }
            Err(e) => {
                // A bug in the supervisor, not in the service: say so loudly
                // and leave the state as it was.
                tracing::error!(service = %u.name, error = %e, "rejected state transition");
                debug_assert!(false, "{name}: {e}");
                false
            }
        }
    }

    fn timer(&self, after: Duration, msg: Msg) -> AbortHandle {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(msg);
        })
        .abort_handle()
    }

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

    fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Control(c) => self.handle_control(c),
            Msg::Ended {
                name,
                generation,
                result,
            } => self.on_ended(&name, generation, result),
            Msg::StartTimeout { name, generation } => {
                let Some(u) = self.units.get(&*name) else {
                    return;
                };
                if u.generation == generation && u.state == State::Starting {
                    let t = humantime::format_duration(u.spec.common.start_timeout);
                    self.stop_unit(
                        &name,
                        AfterStop::Failure(
                            RestartReason::StartTimeout,
                            format!("not ready within start_timeout ({t})"),
                        ),
                    );
                }
            }
            Msg::BackoffElapsed { name, generation } => {
                let Some(u) = self.units.get(&*name) else {
                    return;
                };
                if u.generation == generation && u.state == State::Backoff && !self.shutting_down {
                    self.start_unit(&name);
                }
            }
            Msg::StopTimeout { name, generation } => {
                if let Some(u) = self
                    .units
                    .get(&*name)
                    .filter(|u| u.generation == generation && u.state == State::Stopping)
                {
                    tracing::warn!(service = %name, "did not stop in time; aborting");
                    if let Some(a) = &u.abort {
                        a.abort();
                    }
                }
            }
            Msg::HealthFailed {
                name,
                generation,
                error,
            } => {
                let Some(u) = self.units.get(&*name) else {
                    return;
                };
                if u.generation == generation && u.state == State::Ready {
                    self.stop_unit(&name, AfterStop::Failure(RestartReason::Health, error));
                }
            }
            Msg::ScheduleTick { name, index } => self.schedule_tick(&name, index),
            Msg::ScheduleDone { name, index, run } => {
                let Some(u) = self
                    .units
                    .get_mut(&*name)
                    .filter(|u| index < u.schedule_busy.len())
                else {
                    return;
                };
                u.schedule_busy[index] = false;
                match &run.result {
                    Ok(_) => {
                        tracing::info!(service = %name, action = %run.action, duration = ?run.duration, "scheduled action done")
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, action = %run.action, error = %e, "scheduled action failed")
                    }
                }
                self.events.send(Happened::Action {
                    service: u.name.clone(),
                    action: run.action.clone(),
                    result: run.result.clone(),
                    duration: run.duration,
                    at: run.finished,
                });
                u.schedule_last[index] = Some(run);
            }
            Msg::ShutdownTimeout => {
                if self.shutting_down && !self.forced {
                    tracing::warn!("shutdown_timeout reached; forcing the rest");
                    self.force();
                }
            }
        }
    }

    fn handle_control(&mut self, c: Control) {
        match c {
            Control::Shutdown => self.request_shutdown(),
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
            } => {
                let Some(u) = self.units.get(name.as_str()) else {
                    let _ = reply.send(Err(format!("no such service: {name}")));
                    return;
                };
                let fut = self.action_future(u, &action, args);
                let (events, service) = (self.events.clone(), u.name.clone());
                tokio::spawn(async move {
                    let began = Instant::now();
                    let result = fut.await.map_err(|e| e.to_string());
                    events.send(Happened::Action {
                        service,
                        action,
                        result: result.clone(),
                        duration: began.elapsed(),
                        at: std::time::SystemTime::now(),
                    });
                    let _ = reply.send(result);
                });
            }
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

    fn known(&self, name: &str) -> Result<(), String> {
        if self.units.contains_key(name) {
            Ok(())
        } else {
            Err(format!("no such service: {name}"))
        }
    }

    fn control_start(&mut self, name: &str) -> Result<(), String> {
        self.known(name)?;
        if self.shutting_down {
            return Err("warden is shutting down".into());
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
            s => Err(format!(
                "{name} is {s}; only a stopped, failed or completed service can be started"
            )),
        }
    }

    fn control_stop(&mut self, name: &str) -> Result<(), String> {
        self.known(name)?;
        let state = self.units[name].state;
        match state {
            State::Starting | State::Ready => {
                self.stop_unit(name, AfterStop::Stay);
                Ok(())
            }
            State::Pending | State::Backoff | State::Standby | State::Blocked => {
                self.units[name].generation += 1;
                self.units[name].release_leadership();
                self.transition(name, Event::Stop);
                Ok(())
            }
            s => Err(format!("{name} is {s}; it is not running")),
        }
    }

    fn control_restart(&mut self, name: &str) -> Result<(), String> {
        self.known(name)?;
        if self.shutting_down {
            return Err("warden is shutting down".into());
        }
        match self.units[name].state {
            State::Starting | State::Ready => {
                self.restarting(name, RestartReason::Operator);
                self.stop_unit(name, AfterStop::Restart);
                self.dependency_restarting(name);
                Ok(())
            }
            State::Backoff => {
                // Already counted as restarting (its failure); this only
                // skips the rest of the delay.
                self.start_unit(name);
                Ok(())
            }
            _ => self.control_start(name),
        }
    }

    /// Applies a new registry (already loaded and checked).
    fn reload(&mut self, registry: Registry, graph: Graph) -> Result<ReloadSummary, String> {
        if self.shutting_down {
            return Err("warden is shutting down".into());
        }
        let mut summary = ReloadSummary::default();
        let log_lines = registry.warden.log_lines.0 as usize;
        self.shutdown_timeout = registry.warden.shutdown_timeout;
        let removed: Vec<Arc<str>> = self
            .units
            .keys()
            .filter(|n| !registry.services.contains_key(&***n))
            .cloned()
            .collect();
        for name in removed {
            summary.removed.push(name.to_string());
            match self.units[&*name].state {
                State::Starting | State::Ready => self.stop_unit(&name, AfterStop::Remove),
                State::Stopping => self.units[&*name].after_stop = AfterStop::Remove,
                _ => {
                    if let Some(u) = self.units.shift_remove(&*name) {
                        u.schedule_cancel.cancel();
                    }
                }
            }
        }
        for spec in registry.services.values() {
            let in_graph = graph.contains(&spec.name);
            let Some(u) = self.units.get(spec.name.as_str()) else {
                let state = if in_graph {
                    State::Pending
                } else if !spec.enabled() {
                    State::Disabled
                } else {
                    continue;
                };
                summary.added.push(spec.name.clone());
                let unit = Unit::new(spec.clone(), state, log_lines);
                self.units.insert(unit.name.clone(), unit);
                continue;
            };
            if same_config(&u.spec, spec) {
                summary.unchanged += 1;
                continue;
            }
            summary.changed.push(spec.name.clone());
            let name = spec.name.as_str();
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
                    State::Disabled | State::Stopping => {}
                    _ => {
                        self.transition(name, Event::Disable);
                    }
                }
                self.units[name].replace_spec(spec.clone());
                continue;
            }
            match state {
                State::Starting | State::Ready => {
                    tracing::info!(service = %name, "configuration changed; restarting");
                    self.units[name].next_spec = Some(spec.clone());
                    self.restarting(name, RestartReason::Reload);
                    self.stop_unit(name, AfterStop::Replace);
                }
                State::Stopping => {
                    self.units[name].next_spec = Some(spec.clone());
                    self.units[name].after_stop = AfterStop::Replace;
                }
                State::Disabled => {
                    self.units[name].replace_spec(spec.clone());
                    self.transition(name, Event::Enable);
                }
                State::Backoff => {
                    self.units[name].replace_spec(spec.clone());
                    self.units[name].generation += 1;
                    self.transition(name, Event::Stop);
                    self.transition(name, Event::Reset);
                }
                State::Blocked => {
                    self.units[name].replace_spec(spec.clone());
                    self.transition(name, Event::Unblock);
                }
                State::Stopped | State::Completed | State::Failed => {
                    self.units[name].replace_spec(spec.clone());
                    self.transition(name, Event::Reset);
                }
                State::Pending | State::Standby => {
                    self.units[name].replace_spec(spec.clone());
                }
            }
        }
        self.graph = graph;
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

    /// The future of one action run, built by the service's factory.
    fn action_future(
        &self,
        u: &Unit,
        action: &str,
        args: serde_json::Value,
    ) -> crate::services::BoxFuture<Result<serde_json::Value, ActionError>> {
        let kind = self.factories.get(u.spec.kind.kind_name());
        match kind.filter(|k| k.def().action_names().contains(&action)) {
            Some(k) => k.factory().action(&u.spec, action, args, u.details.clone()),
            None => {
                let msg = format!(
                    "kind {} has no action {action:?}; known: {}",
                    u.spec.kind.kind_name(),
                    crate::config::diag::known_list(
                        kind.map(|k| k.def().action_names()).unwrap_or_default()
                    )
                );
                Box::pin(async move { Err(ActionError::BadRequest(msg)) })
            }
        }
    }

    /// Starts one timer per `[[schedule]]` entry of a unit.
    fn start_schedules(&self, name: &str) {
        let u = &self.units[name];
        for (index, entry) in u.spec.common.schedule.iter().enumerate() {
            let tx = self.tx.clone();
            let every = entry.every;
            let cancel = u.schedule_cancel.clone();
            let name = u.name.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {
                            if tx.send(Msg::ScheduleTick { name: name.clone(), index }).is_err() {
                                return;
                            }
                        }
                        _ = cancel.cancelled() => return,
                    }
                }
            });
        }
    }

    /// A schedule is due: run it if the service is ready and the last run
    /// has finished (runs never overlap).
    fn schedule_tick(&mut self, name: &str, index: usize) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        let Some(entry) = u.spec.common.schedule.get(index) else {
            return;
        };
        if self.shutting_down || u.state != State::Ready {
            tracing::debug!(service = %name, action = %entry.action, state = %u.state, "scheduled action skipped: not ready");
            return;
        }
        if u.schedule_busy[index] {
            tracing::warn!(service = %name, action = %entry.action, "scheduled action skipped: the previous run is still going");
            return;
        }
        let action = entry.action.clone();
        let fut = self.action_future(u, &action, entry.args.clone());
        let tx = self.tx.clone();
        let name_arc = u.name.clone();
        self.units[name].schedule_busy[index] = true;
        tokio::spawn(async move {
            let started = Instant::now();
            let result = fut.await.map_err(|e| e.to_string());
            let run = ActionRun {
                action,
                finished: std::time::SystemTime::now(),
                duration: started.elapsed(),
                result,
            };
            let _ = tx.send(Msg::ScheduleDone {
                name: name_arc,
                index,
                run,
            });
        });
    }

    fn request_shutdown(&mut self) {
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
        let ready: Vec<Arc<str>> = self
            .units
            .values()
            .filter(|u| {
                matches!(u.state, State::Pending | State::Standby)
                    && self.dependencies_hold(&u.name)
            })
            .map(|u| u.name.clone())
            .collect();
        for name in ready {
            let u = &self.units[&*name];
            if !u.spec.common.singleton || u.leader {
                self.start_unit(&name);
            } else {
                self.seek_leadership(&name);
            }
        }
    }

    /// A singleton wants to run: make sure a task is after its lock.
    fn seek_leadership(&mut self, name: &str) {
        let u = &self.units[name];
        if u.leadership.is_some() {
            return;
        }
        let Some(dsn) = singleton_dsn(&u.spec).or_else(|| self.coordination.clone()) else {
            // Validation requires a database; be safe all the same.
            let _ = self.tx.send(Msg::Ended {
                name: u.name.clone(),
                generation: u.generation,
                result: Err(ServiceError(
                    "a singleton needs a PostgreSQL database for its lock".into(),
                )),
            });
            return;
        };
        let cancel = CancellationToken::new();
        tokio::spawn((self.locker)(
            u.name.clone(),
            dsn,
            self.leader_tx.clone(),
            cancel.clone(),
        ));
        self.units[name].leadership = Some(cancel);
    }

    fn handle_leadership(&mut self, name: &str, l: leader::Leadership) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        if u.leadership.is_none() {
            return; // released since; a stale report
        }
        match l {
            leader::Leadership::Acquired => {
                tracing::info!(service = %name, "leader: this instance runs the singleton");
                u.leader = true;
            }
            leader::Leadership::Standby => {
                tracing::info!(service = %name, "standby: another instance runs the singleton");
                u.leader = false;
                if u.state == State::Pending {
                    self.transition(name, Event::Standby);
                }
            }
            leader::Leadership::Lost(why) => {
                u.leader = false;
                u.last_error = Some(format!("singleton lock lost: {why}"));
                match u.state {
                    State::Starting | State::Ready => self.stop_unit(name, AfterStop::Standby),
                    State::Backoff => {
                        self.units[name].generation += 1;
                        self.transition(name, Event::Stop);
                        self.transition(name, Event::Standby);
                    }
                    State::Pending => {
                        self.transition(name, Event::Standby);
                    }
                    _ => {}
                }
            }
        }
    }

    fn dependencies_hold(&self, name: &str) -> bool {
        self.graph.dependencies(name).iter().all(|(d, c)| {
            let s = self.units[*d].state;
            match c {
                Condition::Started => {
                    matches!(s, State::Starting | State::Ready | State::Completed)
                }
                Condition::Ready => matches!(s, State::Ready | State::Completed),
                Condition::Completed => s == State::Completed,
            }
        })
    }

    /// Builds and spawns one run of a unit.
    fn start_unit(&mut self, name: &str) {
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
        let built = match self.factories.factory(u.spec.kind.kind_name()) {
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

    /// Runs the unit's `health` probe while this run lives; crossing
    /// `failure_threshold` consecutive failures reports a failure.
    fn watch_health(&self, name: &str, generation: u64) {
        let u = &self.units[name];
        let (Some(health), Some(cancel)) = (u.spec.common.health.clone(), u.cancel.clone()) else {
            return;
        };
        let tx = self.tx.clone();
        let name = u.name.clone();
        tokio::spawn(async move {
            let t = &health.timing;
            let watch = async {
                tokio::time::sleep(t.initial_delay).await;
                let mut failures = 0u32;
                loop {
                    match crate::probe::measured(
                        &name,
                        crate::metrics::ProbeRole::Health,
                        &health.check,
                        t.timeout,
                    )
                    .await
                    {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(service = %name, failures, error = %e, "health check failed");
                            if failures >= t.failure_threshold.0 {
                                let error =
                                    format!("health check failed {failures} times in a row: {e}");
                                let _ = tx.send(Msg::HealthFailed {
                                    name: name.clone(),
                                    generation,
                                    error,
                                });
                                return;
                            }
                        }
                    }
                    tokio::time::sleep(t.interval).await;
                }
            };
            tokio::select! {
                _ = watch => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Asks a running unit to stop; `after` says what happens once it has.
    fn stop_unit(&mut self, name: &str, after: AfterStop) {
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

    fn on_ended(&mut self, name: &str, generation: u64, result: Result<(), ServiceError>) {
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
    fn restarting(&self, name: &str, reason: RestartReason) {
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

    /// Every service that depends on `name`, directly or not.
    fn transitive_dependents(&self, name: &str) -> Vec<Arc<str>> {
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

    fn block_dependents(&mut self, name: &str) {
        let dependents = self.transitive_dependents(name);
        if let Some(c) = dependents
            .iter()
            .find(|d| self.units[&***d].spec.common.critical)
        {
            // A critical service that can never run is a critical failure.
            tracing::error!(service = %c, dependency = %name, "critical service blocked by a failed dependency; shutting down");
            self.units[&**c].last_error =
                Some(format!("blocked: its dependency {name} failed for good"));
            self.exit_code = EXIT_CRITICAL;
        }
        for d in dependents {
            match self.units[&*d].state {
                State::Starting | State::Ready => self.stop_unit(&d, AfterStop::Block),
                State::Stopping => self.units[&*d].after_stop = AfterStop::Block,
                State::Pending | State::Backoff | State::Stopped | State::Standby => {
                    self.units[&*d].generation += 1;
                    self.units[&*d].release_leadership();
                    self.transition(&d, Event::Block);
                }
                _ => {}
            }
        }
        if self.exit_code == EXIT_CRITICAL && !self.shutting_down {
            self.request_shutdown();
        }
    }

    fn unblock_dependents(&mut self, name: &str) {
        for d in self.transitive_dependents(name) {
            if self.units[&*d].state == State::Blocked {
                self.transition(&d, Event::Unblock);
            }
        }
    }

    /// `name` is restarting: apply each direct dependent's
    /// `on_dependency_restart` (rest_for_one for `restart`).
    fn dependency_restarting(&mut self, name: &str) {
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
                }
                _ => {}
            }
        }
    }
}

/// The database a singleton takes its lock in: the one its kind names.
fn singleton_dsn(spec: &ServiceSpec) -> Option<crate::config::types::PostgresDsn> {
    spec.kind.leadership().cloned()
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

#[cfg(test)]
mod tests;
