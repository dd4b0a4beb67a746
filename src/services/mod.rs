//! Services: the [`Service`] trait every kind implements, the context a
//! running service gets, and the [`Kinds`] a supervisor can build: each a
//! [`Registration`] made in the kind's own folder.
//!
//! A registration is the whole description of a kind: its name, its typed
//! settings (decoding, defaults, schema and accepted keys, through
//! [`crate::config::Settings`]), its actions with their body shapes, its
//! metric families, the endpoints `check --connect` probes and the
//! database its singleton leadership uses (both from the settings), and
//! the [`Factory`] that builds its runs. Adding a built-in kind is a new
//! `services/<kind>/` folder and one line in [`builtin`]; a crate using
//! warden as a library registers its own kind the same way.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::config::{Action, KindDef, KindTable, Runs, ServiceSpec, Settings};
use crate::metrics::Family;

pub mod data;
pub mod external;
pub mod logs;
pub mod memory;
pub mod outbox;
pub mod process;
pub mod replicator;

pub use logs::{LogLine, Logs, RingLimits, Stream};

/// A boxed, sendable future (what `Service::run` returns).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a run of a service failed, in words for `last_error` and the logs.
/// Never put a secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError(pub String);

impl ServiceError {
    /// An error in `words`, passwords masked (words that quote what a
    /// driver said may hold a connection string).
    pub fn redacted(words: String) -> ServiceError {
        ServiceError(crate::config::secret::redact(&words))
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A library's error in words, passwords masked (a driver's error may
/// quote the connection string it was given).
impl<E: std::error::Error> From<E> for ServiceError {
    fn from(e: E) -> ServiceError {
        ServiceError::redacted(e.to_string())
    }
}

/// A supervised unit of work.
///
/// `run` is called once per start (a restart builds a new instance through
/// the factory). It returns `Ok(())` when the service ended cleanly, `Err`
/// when it failed; a panic counts as a failure and never takes warden down.
/// It must return promptly once `ctx.cancelled()` resolves; after the
/// service's stop timeout it is aborted.
pub trait Service: Send + 'static {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>>;
}

/// Why an action did not answer: the request was wrong (the API answers
/// 400), or running it failed (500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// The body does not fit the action.
    BadRequest(String),
    /// The action ran and failed (a store could not be reached...).
    Failed(String),
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::BadRequest(m) | ActionError::Failed(m) => f.write_str(m),
        }
    }
}

impl ActionError {
    /// The same error with its passwords masked: what leaves warden.
    pub fn redacted(self) -> ActionError {
        use crate::config::secret::redact;
        match self {
            ActionError::BadRequest(m) => ActionError::BadRequest(redact(&m)),
            ActionError::Failed(m) => ActionError::Failed(redact(&m)),
        }
    }
}

impl From<ServiceError> for ActionError {
    fn from(e: ServiceError) -> ActionError {
        ActionError::Failed(e.0)
    }
}

/// Builds the runs of one kind, and runs its actions.
pub trait Factory: Send + Sync + 'static {
    /// Builds one run of the service described by `spec` (whose settings
    /// are the kind's own type: [`settings_of`] gets them).
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError>;
    /// Runs one of the kind's actions (`replay-failed`, `validate`...) for
    /// the service described by `spec`, with JSON arguments, and answers
    /// JSON. Actions do not need the running instance: they work on the
    /// stores the service uses. Only the actions of the registration are
    /// ever asked for; the default knows none.
    fn action(
        &self,
        spec: &ServiceSpec,
        action: &str,
        args: Json,
        details: Details,
    ) -> BoxFuture<Result<Json, ActionError>> {
        let _ = (args, details);
        let msg = format!("kind {} has no action {action:?}", spec.kind.kind_name());
        Box::pin(async move { Err(ActionError::BadRequest(msg)) })
    }
}

/// The settings of `spec`, which a factory of kind `T`'s settings was
/// handed (an error only if a factory is registered under the wrong kind).
pub fn settings_of<T: Settings>(spec: &ServiceSpec) -> Result<&T, ServiceError> {
    spec.kind.settings::<T>().ok_or_else(|| {
        ServiceError(format!(
            "service {} of kind {} does not have the settings this factory reads",
            spec.name,
            spec.kind.kind_name()
        ))
    })
}

/// One kind, as a supervisor and the configuration know it.
#[derive(Clone)]
pub struct Registration {
    def: KindDef,
    metrics: &'static [Family],
    factory: Arc<dyn Factory>,
}

impl Registration {
    /// The kind `name` (kebab-case), whose settings are `S` and whose runs
    /// `factory` builds.
    pub fn new<S: Settings>(name: &'static str, runs: Runs, factory: impl Factory) -> Registration {
        Registration {
            def: KindDef::new::<S>(name, runs),
            metrics: &[],
            factory: Arc::new(factory),
        }
    }

    /// Its services run for as long as warden does: `oneshot` is an error.
    pub fn continuous(mut self) -> Registration {
        self.def = self.def.continuous();
        self
    }

    /// Adds an action (listed in `/openapi.json`, accepted by schedules).
    pub fn action(mut self, action: Action) -> Registration {
        self.def = self.def.action(action);
        self
    }

    /// The metric families the kind records.
    pub fn metrics(mut self, families: &'static [Family]) -> Registration {
        self.metrics = families;
        self
    }

    pub fn def(&self) -> &KindDef {
        &self.def
    }

    pub fn factory(&self) -> &Arc<dyn Factory> {
        &self.factory
    }

    pub fn metric_families(&self) -> &'static [Family] {
        self.metrics
    }
}

/// The kinds known to a supervisor, by name, in registration order.
#[derive(Clone, Default)]
pub struct Kinds {
    by_name: IndexMap<&'static str, Registration>,
}

/// The built-in kinds, one line each; `base_dir` is the registry's
/// directory (relative paths start there).
pub fn builtin(base_dir: PathBuf) -> Kinds {
    let mut k = Kinds::new();
    k.register(process::registration(base_dir));
    k.register(external::registration());
    k.register(outbox::registration());
    k.register(memory::registration());
    k.register(replicator::registration());
    k
}

impl Kinds {
    pub fn new() -> Kinds {
        Kinds::default()
    }

    /// Registers a kind; a later one of the same name replaces it.
    pub fn register(&mut self, registration: Registration) -> &mut Self {
        self.by_name.insert(registration.def.name(), registration);
        self
    }

    /// Adds every kind of `other` (theirs win on the same name).
    pub fn extend(&mut self, other: &Kinds) {
        for r in other.by_name.values() {
            self.register(r.clone());
        }
    }

    pub fn get(&self, kind: &str) -> Option<&Registration> {
        self.by_name.get(kind)
    }

    /// The factory of `kind`.
    pub fn factory(&self, kind: &str) -> Option<&Arc<dyn Factory>> {
        self.by_name.get(kind).map(|r| &r.factory)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Registration> {
        self.by_name.values()
    }

    /// What the configuration is handed: each kind's name, settings and
    /// actions.
    pub fn table(&self) -> KindTable {
        let mut t = KindTable::new();
        for r in self.by_name.values() {
            t.add(r.def.clone());
        }
        t
    }

    /// Every metric family of the build: the supervisor's and each kind's.
    pub fn metric_families(&self) -> Vec<Family> {
        let mut v = crate::metrics::CORE.to_vec();
        for r in self.by_name.values() {
            v.extend_from_slice(r.metric_families());
        }
        v
    }
}

/// What a running service can tell its supervisor.
#[derive(Debug)]
pub(crate) enum Report {
    Ready { name: Arc<str>, generation: u64 },
}

/// Health details a service publishes (backlog, lag, last error...), shown
/// by the API. Cheap to clone; all clones share the same map.
#[derive(Debug, Clone, Default)]
pub struct Details(Arc<Mutex<Map<String, Json>>>);

/// Two handles are equal when they share the same map.
impl PartialEq for Details {
    fn eq(&self, other: &Details) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Counts every change to any service's details: an answer rendered from
/// the details is still current while this has not moved.
static DETAILS_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Details {
    /// Sets a detail. A text is shown with its passwords masked (details
    /// reach the API and the event stream; an error in them may quote a
    /// connection string).
    pub fn set(&self, key: &str, value: impl Into<Json>) {
        let mut value = value.into();
        if let Json::String(s) = &mut value {
            *s = crate::config::secret::redact(s);
        }
        if let Ok(mut m) = self.0.lock() {
            m.insert(key.to_string(), value);
            DETAILS_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut m) = self.0.lock()
            && m.shift_remove(key).is_some()
        {
            DETAILS_EPOCH.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// Moves whenever any service's details change.
    pub fn epoch() -> u64 {
        DETAILS_EPOCH.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Map<String, Json> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// What a running service gets: its name, its cancellation, a way to say
/// it is ready, and its health details.
#[derive(Clone)]
pub struct Context {
    name: Arc<str>,
    generation: u64,
    cancel: CancellationToken,
    reports: mpsc::UnboundedSender<Report>,
    details: Details,
    logs: Logs,
    exit_status: ExitStatusCell,
}

/// Where a run leaves the exit status it ended with, for the supervisor to
/// read once the run is over (so it arrives with the end of the run, never
/// before or after it).
#[derive(Clone, Default, Debug)]
pub struct ExitStatusCell(Arc<Mutex<Option<i32>>>);

impl ExitStatusCell {
    /// The status the run left, if any.
    pub fn get(&self) -> Option<i32> {
        self.0.lock().ok().and_then(|s| *s)
    }
}

impl Context {
    pub(crate) fn new(
        name: Arc<str>,
        generation: u64,
        cancel: CancellationToken,
        reports: mpsc::UnboundedSender<Report>,
        details: Details,
        logs: Logs,
        exit_status: ExitStatusCell,
    ) -> Context {
        Context {
            name,
            generation,
            cancel,
            reports,
            details,
            logs,
            exit_status,
        }
    }

    /// Records the exit status the run ends with (a process's exit code,
    /// or 128 + N when signal N killed it): a registry's `main` service
    /// hands it on as warden's own exit code.
    pub fn set_exit_status(&self, status: i32) {
        if let Ok(mut s) = self.exit_status.0.lock() {
            *s = Some(status);
        }
    }

    /// The service's captured output lines.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves when the service is asked to stop.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A token that is cancelled when the service is asked to stop (for
    /// tasks the service spawns).
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Says the service is ready. Later calls are ignored.
    pub fn ready(&self) {
        let _ = self.reports.send(Report::Ready {
            name: self.name.clone(),
            generation: self.generation,
        });
    }

    /// The service's health details.
    pub fn details(&self) -> &Details {
        &self.details
    }
}
