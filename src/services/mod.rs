//! Services: the [`Service`] trait every kind implements, the context a
//! running service gets, and the [`Factories`] that build a service of a
//! kind from its spec.
//!
//! A crate using warden as a library implements `Service` and `Factory`
//! for its own kind and registers the factory; the built-in kinds are
//! registered the same way.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::config::{CustomKind, ServiceSpec};

pub mod data;
pub mod external;
pub mod logs;
pub mod memory;
pub mod outbox;
pub mod process;

pub use logs::{LogLine, Logs, Stream};

/// A boxed, sendable future (what `Service::run` returns).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a run of a service failed, in words for `last_error` and the logs.
/// Never put a secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError(pub String);

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for ServiceError {
    fn from(e: E) -> ServiceError {
        ServiceError(e.to_string())
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

/// Builds services of one kind.
pub trait Factory: Send + Sync + 'static {
    /// The `kind = "..."` this factory builds.
    fn kind(&self) -> &str;
    /// The kind's actions (for validation of schedules and the API).
    fn actions(&self) -> Vec<String> {
        Vec::new()
    }
    /// Builds one run of the service described by `spec`.
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError>;
    /// Runs one of the kind's actions (`replay-failed`, `validate`...) for
    /// the service described by `spec`, with JSON arguments, and answers
    /// JSON. Actions do not need the running instance: they work on the
    /// stores the service uses. The default knows no action.
    fn action(
        &self,
        spec: &ServiceSpec,
        action: &str,
        args: Json,
        details: Details,
    ) -> BoxFuture<Result<Json, ServiceError>> {
        let _ = (args, details);
        let msg = format!("kind {} has no action {action:?}", spec.kind.kind_name());
        Box::pin(async move { Err(ServiceError(msg)) })
    }
}

/// The factories known to a supervisor, by kind.
#[derive(Clone, Default)]
pub struct Factories {
    by_kind: HashMap<String, Arc<dyn Factory>>,
}

impl Factories {
    pub fn new() -> Factories {
        Factories::default()
    }

    /// The factories of the built-in kinds implemented so far; `base_dir`
    /// is the registry's directory (relative paths start there).
    pub fn builtin(base_dir: std::path::PathBuf) -> Factories {
        let mut f = Factories::new();
        f.register(process::ProcessFactory { base_dir });
        f.register(external::ExternalFactory);
        f.register(outbox::OutboxFactory);
        f.register(memory::MemorySyncFactory);
        f
    }

    /// Registers a factory; a later one for the same kind replaces it.
    pub fn register(&mut self, factory: impl Factory) -> &mut Self {
        self.by_kind
            .insert(factory.kind().to_string(), Arc::new(factory));
        self
    }

    /// Adds every factory of `other` (theirs win on the same kind).
    pub fn extend(&mut self, other: &Factories) {
        for (k, f) in &other.by_kind {
            self.by_kind.insert(k.clone(), f.clone());
        }
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Factory>> {
        self.by_kind.get(kind)
    }

    /// The registered kinds that the configuration does not know itself,
    /// for [`crate::config::LoadOptions::custom_kinds`].
    pub fn custom_kinds(&self) -> Vec<CustomKind> {
        let mut v: Vec<CustomKind> = self
            .by_kind
            .values()
            .filter(|f| crate::config::Kind::parse(f.kind()).is_none())
            .map(|f| CustomKind {
                name: f.kind().to_string(),
                actions: f.actions(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
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
    pub fn set(&self, key: &str, value: impl Into<Json>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key.to_string(), value.into());
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
}

impl Context {
    pub(crate) fn new(
        name: Arc<str>,
        generation: u64,
        cancel: CancellationToken,
        reports: mpsc::UnboundedSender<Report>,
        details: Details,
        logs: Logs,
    ) -> Context {
        Context {
            name,
            generation,
            cancel,
            reports,
            details,
            logs,
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
