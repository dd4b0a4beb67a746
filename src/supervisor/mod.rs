//! The supervisor: runs every service of a checked registry under its
//! restart policy, event-driven, and stops them in reverse dependency order.
//!
//! One task owns all service states. Everything that happens — a service
//! says it is ready, a run ends, a timer fires, an operator asks — arrives
//! as a message on one channel; the loop applies it through the state
//! machine ([`state::next`]) and then looks at what may start (or, during
//! shutdown, stop) next. There is no polling: nothing happens between
//! messages. Timers are tokio sleeps, so tests run on paused time.
//!
//! This file holds the public types and the one place a state changes
//! ([`Supervisor::transition`]); each concern of the loop has a file of its
//! own: `event_loop` (the loop, the status, the shutdown), `runs` (start
//! and stop one run, and carry out what its end leads to, which the pure
//! [`decide::decide`] decides), `controls`, `reload`,
//! `schedules`, `leadership`, `health` and `dependents`.

mod board;
mod controls;
pub mod decide;
mod dependents;
mod event_loop;
pub mod events;
mod health;
pub mod leader;
mod leadership;
mod reload;
pub mod restart;
mod runs;
mod schedules;
pub mod state;
pub mod systemd;

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Registry, ServiceSpec};
use crate::graph::Graph;
use crate::services::{Details, Kinds, Logs, Report, RingLimits, ServiceError};
pub use board::{Board, StatusWatch, Tally};
use decide::AfterStop;
use events::{Events, Happened};
use restart::{BackoffState, RestartBudget};
use state::{Event, State};

/// The `(state, event)` pairs a supervisor applied (transitions coverage).
#[cfg(test)]
type Coverage = Arc<std::sync::Mutex<std::collections::HashSet<(State, Event)>>>;

/// What the simulation reads of the loop's decisions, in their order
/// (`sim`): every transition, every run asked to stop and why, and the
/// shutdown's request and forcing.
#[cfg(test)]
#[derive(Debug, Clone)]
enum Traced {
    Transition {
        name: Arc<str>,
        from: State,
        to: State,
    },
    AskStop {
        name: Arc<str>,
        cause: StopCause,
    },
    /// A signal or an operator asked for the shutdown.
    ShutdownAsked,
    /// The shutdown began (asked, or warden's own decision).
    Shutdown,
    Forced,
}

#[cfg(test)]
type Trace = Arc<std::sync::Mutex<Vec<Traced>>>;

/// How a singleton's lock is held: given the service, its database, where
/// to report leadership, and a token that releases the lock when cancelled.
pub type Locker = Arc<
    dyn Fn(
            Arc<str>,
            crate::config::types::PgTarget,
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
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Stop a service (it stays stopped).
    Stop {
        name: String,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Stop a service if it runs, then start it again (a pending one is
    /// left to start once its dependencies hold).
    Restart {
        name: String,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Run one of a service's kind-specific actions.
    Action {
        name: String,
        action: String,
        args: serde_json::Value,
        reply: oneshot::Sender<Result<serde_json::Value, ControlError>>,
    },
    /// Switch to a new, already checked registry: stop removed services,
    /// start added ones, restart changed ones, leave the others alone.
    Reload {
        registry: Box<Registry>,
        graph: Graph,
        reply: oneshot::Sender<Result<ReloadSummary, ControlError>>,
    },
}

/// Why a control was refused. The words (its `Display`) are what an
/// operator reads, in the API's `{"error": ...}` and from the client
/// commands; the kind is what the API answers with: a conflict of states
/// is not the caller's typo, and neither is a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No service has that name.
    UnknownService { name: String },
    /// The service's kind has no such action.
    UnknownAction {
        kind: String,
        action: String,
        known: Vec<String>,
    },
    /// The state of the service, or of warden, does not allow it now (a
    /// stopped service cannot be stopped; nothing starts during the
    /// shutdown).
    Conflict { reason: String },
    /// The request itself is malformed (an action's body that is not
    /// JSON).
    BadRequest { reason: String },
    /// Something failed that should have worked: an action's run failed.
    Fault { reason: String },
}

impl ControlError {
    /// A conflict, said in `reason`.
    pub fn conflict(reason: impl Into<String>) -> ControlError {
        ControlError::Conflict {
            reason: reason.into(),
        }
    }

    /// Nothing starts, stops or reloads once the shutdown has begun.
    pub fn shutting_down() -> ControlError {
        ControlError::conflict("warden is shutting down")
    }
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::UnknownService { name } => write!(f, "no such service: {name}"),
            ControlError::UnknownAction {
                kind,
                action,
                known,
            } => write!(
                f,
                "kind {kind} has no action {action:?}; known: {}",
                crate::config::diag::known_list(known.iter().map(String::as_str))
            ),
            ControlError::Conflict { reason }
            | ControlError::BadRequest { reason }
            | ControlError::Fault { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for ControlError {}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Settings that changed but take effect only when warden starts again
    /// (such as `api.listen`): said, never silently ignored.
    pub restart_needed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Changed only in what a run does not depend on (`description`,
    /// `critical`, `main`, `restart`, `on_dependency_restart`,
    /// `start_timeout`): applied in place, without a restart.
    pub updated: Vec<String>,
    pub unchanged: usize,
}

/// What the loop takes before any other message, however many wait: a
/// shutdown request (its `shutdown_timeout` counts from the request, not
/// from when a backlog lets it through) and the watchdog's ping.
#[derive(Debug)]
enum Urgent {
    Shutdown,
    Ping(oneshot::Sender<()>),
}

/// A handle to a running supervisor: send it controls, watch its states.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    urgent: mpsc::UnboundedSender<Urgent>,
    board: Arc<Board>,
    version: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    events: Events,
}

impl Handle {
    /// Sends a control; `false` when the supervisor has ended.
    pub fn send(&self, c: Control) -> bool {
        match c {
            Control::Shutdown => self.urgent.send(Urgent::Shutdown).is_ok(),
            c => self.tx.send(Msg::Control(c)).is_ok(),
        }
    }

    /// Asks for an ordered shutdown (a second call forces it).
    pub fn shutdown(&self) -> bool {
        self.send(Control::Shutdown)
    }

    /// Sends a control that answers, and waits for the answer.
    /// A supervisor that has ended (its loop returned once everything had
    /// stopped) refuses as warden does while it stops: a conflict.
    pub async fn request<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Control,
    ) -> Result<T, ControlError> {
        let ended = || ControlError::conflict("the supervisor has ended");
        let (tx, rx) = oneshot::channel();
        if !self.send(f(tx)) {
            return Err(ended());
        }
        rx.await.unwrap_or_else(|_| Err(ended()))
    }

    /// The latest status of every service (a copy: see
    /// [`Handle::service`] for one, [`Handle::tally`] for counts).
    pub fn status(&self) -> Arc<Vec<ServiceStatus>> {
        Arc::new(self.board.snapshot())
    }

    /// The latest status of one service.
    pub fn service(&self, name: &str) -> Option<ServiceStatus> {
        self.board.get(name)
    }

    /// How many services are in each state.
    pub fn tally(&self) -> Tally {
        self.board.tally()
    }

    /// A number that changes whenever the status does (for caches).
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Starts a stopped, failed or completed service.
    pub async fn start(&self, name: &str) -> Result<(), ControlError> {
        let name = name.to_string();
        self.request(|reply| Control::Start { name, reply }).await
    }

    /// Stops a service (it stays stopped).
    pub async fn stop(&self, name: &str) -> Result<(), ControlError> {
        let name = name.to_string();
        self.request(|reply| Control::Stop { name, reply }).await
    }

    /// Stops a service if it runs, then starts it again (a pending one is
    /// left to start once its dependencies hold).
    pub async fn restart(&self, name: &str) -> Result<(), ControlError> {
        let name = name.to_string();
        self.request(|reply| Control::Restart { name, reply }).await
    }

    /// Applies a new, checked registry and says what changed.
    pub async fn request_reload(
        &self,
        registry: Registry,
        graph: Graph,
    ) -> Result<ReloadSummary, ControlError> {
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
    ) -> Result<serde_json::Value, ControlError> {
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

    /// Whether the supervisor loop answers within `within` (the ping
    /// passes every queued message: it proves the loop turns, not that
    /// the queue is short).
    pub async fn ping(&self, within: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        self.urgent.send(Urgent::Ping(tx)).is_ok()
            && matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())))
    }

    /// Every state change, restart and action result from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Happened> {
        self.events.subscribe()
    }

    /// Wakes at every new status (for waiting in tests and sd_notify).
    pub fn watch(&self) -> StatusWatch {
        StatusWatch {
            board: self.board.clone(),
            version: self.version.clone(),
        }
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
    /// The simulation's health flip: the current run's health checks
    /// failed (`sim`; the probe loop sends [`Msg::HealthFailed`]).
    #[cfg(test)]
    HealthFailedNow {
        name: Arc<str>,
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
}

/// Why a unit that is stopping was asked to stop: what its end leads to.
#[derive(Debug, Clone, PartialEq)]
enum StopCause {
    /// On request, for this purpose.
    Asked(AfterStop),
    /// Its health checks failed (the error to report once it has ended).
    HealthFailed(String),
    /// It was not ready within `start_timeout` (the error to report).
    StartTimedOut(String),
}

impl From<AfterStop> for StopCause {
    fn from(after: AfterStop) -> StopCause {
        StopCause::Asked(after)
    }
}

struct Unit {
    name: Arc<str>,
    spec: ServiceSpec,
    state: State,
    since: Instant,
    generation: u64,
    cancel: Option<CancellationToken>,
    abort: Option<AbortHandle>,
    stop_cause: StopCause,
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
    /// The timer of the state it is in (the stop timeout while stopping,
    /// the delay while in backoff), cancelled when it leaves that state:
    /// timers do not pile up behind a crash loop or a mass stop.
    state_timer: Option<AbortHandle>,
    /// Singletons: this instance holds the service's lock.
    leader: bool,
    /// Singletons: the task holding (or waiting for) the lock, and the
    /// database it is in (a reload may move the lock elsewhere).
    leadership: Option<(CancellationToken, crate::config::types::PgTarget)>,
    /// What the latest run met of the conditions dependents wait for
    /// (`started`, `ready`); it stays met once that run has ended for
    /// good, and is cleared when the service is to run again.
    met: Met,
    /// Where the current run leaves its exit status.
    exit_status: crate::services::ExitStatusCell,
    /// A stop, an end or a start that waits for the dependents a restart
    /// stops (rest_for_one); cleared by any change of state.
    held: Option<dependents::Held>,
}

/// The conditions a run has met, for the services that depend on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Met {
    pub started: bool,
    pub ready: bool,
}

impl Unit {
    /// A unit in `state` that has never run.
    fn new(spec: ServiceSpec, state: State, logs: &Arc<RingLimits>) -> Unit {
        let r = &spec.common.restart;
        Unit {
            name: Arc::from(spec.name.as_str()),
            state,
            since: Instant::now(),
            generation: 0,
            cancel: None,
            abort: None,
            stop_cause: AfterStop::Stay.into(),
            backoff: BackoffState::new(r.backoff.clone()),
            budget: RestartBudget::new(r.max_restarts, r.window),
            restarts: 0,
            last_error: None,
            details: Details::default(),
            logs: Logs::with_limits(logs.clone()),
            history: History::default(),
            next_spec: None,
            schedule_busy: vec![false; spec.common.schedule.len()],
            schedule_last: vec![None; spec.common.schedule.len()],
            schedule_cancel: CancellationToken::new(),
            ready_since: None,
            start_timer: None,
            state_timer: None,
            leader: false,
            leadership: None,
            met: Met::default(),
            exit_status: Default::default(),
            held: None,
            spec,
        }
    }
}

/// The supervisor of one registry. Build it with [`Supervisor::new`], then
/// drive it with [`Supervisor::run`].
pub struct Supervisor {
    units: IndexMap<Arc<str>, Unit>,
    graph: Graph,
    kinds: Kinds,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
    urgent_tx: mpsc::UnboundedSender<Urgent>,
    urgent_rx: mpsc::UnboundedReceiver<Urgent>,
    /// What the outside reads, changed entry by entry ([`board`]).
    board: Arc<Board>,
    version_tx: watch::Sender<u64>,
    /// How many units are in each state (states only: `critical` is the
    /// board's), kept by [`Supervisor::transition`] and where units come
    /// and go.
    tally: Tally,
    /// Units whose state changed since `schedule` last looked: only they
    /// and their neighbours can have become startable (or stoppable).
    touched: Vec<Arc<str>>,
    /// `schedule` looks at every unit once (after a reload, when the
    /// shutdown begins).
    rescan: bool,
    /// Units whose status changed since the last `publish`.
    dirty: Vec<Arc<str>>,
    /// `publish` rebuilds the whole board (after a reload).
    republish: bool,
    /// When the shutdown is forced (`shutdown_timeout` after it began).
    shutdown_deadline: Option<Instant>,
    /// The API's unit, if it runs (it stops last).
    api: Option<Arc<str>>,
    /// The units that hold a stop, an end or a start until their
    /// dependents have stopped (`Unit::held`; some may have let go since).
    holding: Vec<Arc<str>>,
    /// The process ends with the loop: its books are not freed one by one
    /// (with 20,000 services that took longer than the whole shutdown).
    exit_with_loop: bool,
    stopping_tx: watch::Sender<bool>,
    /// Where state changes, restarts and action results are broadcast.
    events: Events,
    leader_tx: mpsc::UnboundedSender<(Arc<str>, leader::Leadership)>,
    leader_rx: mpsc::UnboundedReceiver<(Arc<str>, leader::Leadership)>,
    /// `[warden] postgres`: where singletons without their own take locks.
    coordination: Option<crate::config::types::PgTarget>,
    /// Holds singleton locks ([`leader::hold`] on PostgreSQL).
    locker: Locker,
    rng: fastrand::Rng,
    shutdown_timeout: Duration,
    /// The limits of every service's output ring (`log_lines`, and an
    /// equal share of `log_memory`).
    logs: Arc<RingLimits>,
    shutting_down: bool,
    /// How many times a signal or an operator asked for the shutdown.
    asked: u8,
    forced: bool,
    exit_code: u8,
    /// Why warden is stopping, once something decided it: the first cause
    /// chooses the exit code.
    exit_chosen: bool,
    /// The profile in force (for the words of a refused start).
    profile: Option<String>,
    /// Enabled services left out of this instance by `--only`, and the
    /// `--only` list (for the words of a refused control).
    outside: std::collections::HashSet<String>,
    only: Vec<String>,
    /// Every `(state, event)` applied, for the transitions-coverage test.
    #[cfg(test)]
    coverage: Option<Coverage>,
    /// What the simulation checks its invariants against.
    #[cfg(test)]
    trace: Option<Trace>,
}

impl Supervisor {
    /// Prepares (without starting anything) the services of `graph`, which
    /// was checked against `registry`.
    pub fn new(registry: &Registry, graph: Graph, kinds: Kinds) -> Supervisor {
        crate::sys::env::withhold(&registry.secret_vars);
        let mut units = IndexMap::new();
        let mut tally = Tally::default();
        let mut outside = std::collections::HashSet::new();
        let logs = RingLimits::new(registry.warden.log_lines.0 as usize, 0);
        for spec in registry.services.values() {
            let state = if graph.contains(&spec.name) {
                State::Pending
            } else if !spec.enabled() {
                State::Disabled
            } else {
                outside.insert(spec.name.clone());
                continue; // left out by --only
            };
            let unit = Unit::new(spec.clone(), state, &logs);
            tally.add(state, false);
            units.insert(unit.name.clone(), unit);
        }
        logs.set_shared(
            registry.warden.log_lines.0 as usize,
            registry.warden.log_memory.0,
            units.len(),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (version_tx, _) = watch::channel(0);
        let (stopping_tx, _) = watch::channel(false);
        let (leader_tx, leader_rx) = mpsc::unbounded_channel();
        let mut s = Supervisor {
            units,
            graph,
            kinds,
            tx,
            rx,
            reports_tx,
            reports_rx,
            urgent_tx,
            urgent_rx,
            board: Arc::default(),
            version_tx,
            tally,
            touched: Vec::new(),
            rescan: true,
            dirty: Vec::new(),
            republish: true,
            shutdown_deadline: None,
            api: None,
            holding: Vec::new(),
            exit_with_loop: false,
            stopping_tx,
            events: Events::default(),
            leader_tx,
            leader_rx,
            coordination: registry.warden.postgres.clone().map(Into::into),
            locker: Arc::new(|name, dsn, tx, cancel| Box::pin(leader::hold(name, dsn, tx, cancel))),
            rng: fastrand::Rng::new(),
            shutdown_timeout: registry.warden.shutdown_timeout,
            logs,
            shutting_down: false,
            asked: 0,
            forced: false,
            exit_code: EXIT_OK,
            exit_chosen: false,
            profile: registry.profile.clone(),
            outside,
            only: Vec::new(),
            #[cfg(test)]
            coverage: None,
            #[cfg(test)]
            trace: None,
        };
        s.api = s.find_api();
        s.publish();
        s
    }

    /// The API's unit (looked for when the units change wholesale).
    fn find_api(&self) -> Option<Arc<str>> {
        self.units
            .values()
            .find(|u| u.spec.is_api())
            .map(|u| u.name.clone())
    }

    /// Settles warden's exit code: the first cause to stop warden chooses
    /// it (a critical failure, the main service's end); a later one does
    /// not change it.
    fn choose_exit(&mut self, code: u8) {
        if !self.exit_chosen {
            self.exit_chosen = true;
            self.exit_code = code;
        }
    }

    /// Holds singleton locks with `locker` instead of PostgreSQL (tests).
    pub fn with_locker(mut self, locker: Locker) -> Supervisor {
        self.locker = locker;
        self
    }

    /// The `--only` list this instance runs (named in the words of a
    /// control refused for a service outside it).
    pub fn with_only(mut self, only: Vec<String>) -> Supervisor {
        self.only = only;
        self
    }

    /// The process exits once `run` returns (`warden run`): what the
    /// supervisor holds is left for the process's end to free, rather than
    /// freed entry by entry first.
    pub fn exiting_with_loop(mut self) -> Supervisor {
        self.exit_with_loop = true;
        self
    }

    /// Records the loop's decisions in `trace` (the simulation).
    #[cfg(test)]
    fn with_trace(mut self, trace: Trace) -> Supervisor {
        self.trace = Some(trace);
        self
    }

    /// Records one decision, if something traces them.
    #[cfg(test)]
    fn traced(&self, what: Traced) {
        if let Some(t) = &self.trace {
            t.lock().unwrap().push(what);
        }
    }

    /// Seeds the jitter (tests).
    pub fn with_seed(mut self, seed: u64) -> Supervisor {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// A handle for the API, the signals and tests: it outlives nothing,
    /// and sending to a supervisor that has ended fails softly.
    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.tx.clone(),
            urgent: self.urgent_tx.clone(),
            board: self.board.clone(),
            version: self.version_tx.subscribe(),
            stopping: self.stopping_tx.subscribe(),
            events: self.events.clone(),
        }
    }

    /// Adds a unit (a reload's new service).
    fn add_unit(&mut self, unit: Unit) {
        self.tally.add(unit.state, false);
        self.touched.push(unit.name.clone());
        self.dirty.push(unit.name.clone());
        self.units.insert(unit.name.clone(), unit);
    }

    /// Forgets a unit (removed by a reload); its lock and schedule timers
    /// go with it (`Drop for Unit`).
    fn remove_unit(&mut self, name: &str) {
        if let Some(u) = self.units.shift_remove(name) {
            self.tally.remove(u.state, false);
            self.dirty.push(u.name.clone());
        }
    }

    /// Something the outside sees of `name` changed without a change of
    /// state (its last error, its schedules' runs).
    fn touch(&mut self, name: &str) {
        if let Some(u) = self.units.get(name) {
            self.dirty.push(u.name.clone());
        }
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
                #[cfg(test)]
                if let Some(t) = &self.trace {
                    t.lock().unwrap().push(Traced::Transition {
                        name: u.name.clone(),
                        from: u.state,
                        to,
                    });
                }
                u.history.push(Transition {
                    at: std::time::SystemTime::now(),
                    from: u.state,
                    to,
                    event,
                });
                self.tally.remove(u.state, false);
                self.tally.add(to, false);
                if to != u.state {
                    if let Some(t) = u.state_timer.take() {
                        t.abort();
                    }
                    if u.state == State::Starting
                        && let Some(t) = u.start_timer.take()
                    {
                        t.abort();
                    }
                }
                u.state = to;
                u.since = Instant::now();
                self.touched.push(u.name.clone());
                self.dirty.push(u.name.clone());
                u.held = None;
                // A new run meets the conditions anew; a service on its
                // way to run again meets none of them meanwhile.
                match to {
                    State::Starting => {
                        u.met = Met {
                            started: true,
                            ready: false,
                        }
                    }
                    State::Ready => u.met.ready = true,
                    State::Pending | State::Backoff | State::Standby => u.met = Met::default(),
                    _ => {}
                }
                // A singleton that will not run again (until an operator or
                // a reload says so) gives its lock to the other instances.
                if matches!(
                    to,
                    State::Failed | State::Completed | State::Blocked | State::Disabled
                ) {
                    u.release_leadership();
                }
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
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim;
