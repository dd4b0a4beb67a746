//! Kinds as the configuration sees them: the table of kinds the loader is
//! handed, and the settings every kind decodes from its service's table.
//!
//! `config/` knows no kind by name. Each kind describes itself with a
//! [`KindDef`]: its name, how its services run (which decides the probes
//! and keys that make sense), its settings type (decoding with spans,
//! defaults, JSON Schema and accepted keys all come from that type's
//! `config_table!` field list), and its actions. The built-in kinds and a
//! library user's are registered the same way; the loader refuses a kind
//! the table does not have.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::{Map, Value as Json, json};

use super::decode::{Cx, Fields, ObjectSchema, TableReader};
use super::model::Endpoint;
use super::types::{CaFile, PgTarget, PostgresDsn};

/// The kind of the implicit service that `[api]` configures. It is part of
/// the registry's layout (the `[api]` table), not a kind one writes under
/// `[services]`.
pub const API_KIND: &str = "api";

/// Reports a problem found by a kind's own cross-key check.
pub struct Problems<'a> {
    report: &'a mut dyn FnMut(&'static str, &[&str], String),
}

impl<'a> Problems<'a> {
    pub(super) fn new(report: &'a mut dyn FnMut(&'static str, &[&str], String)) -> Problems<'a> {
        Problems { report }
    }

    /// An error about the key at `path` inside the service's table (for
    /// example `&["rules", "0", "keep"]`); `code` is one of the error codes
    /// `check` documents, such as `invalid-value`.
    pub fn error(&mut self, code: &'static str, path: &[&str], message: impl Into<String>) {
        (self.report)(code, path, message.into());
    }

    /// An `invalid-value` error about the duration at `path` when it is
    /// shorter than `min`: the message gives the minimum and `why` a
    /// shorter one cannot work.
    pub fn at_least(&mut self, path: &[&str], value: Duration, min: Duration, why: &str) {
        if value < min {
            self.error("invalid-value", path, below_minimum(value, min, why));
        }
    }

    /// An `invalid-value` error about the duration at `path` when it is
    /// longer than `max`, with `why` a longer one is refused.
    pub fn at_most(&mut self, path: &[&str], value: Duration, max: Duration, why: &str) {
        if value > max {
            self.error(
                "invalid-value",
                path,
                format!(
                    "{} is above the maximum of {}: {why}",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ),
            );
        }
    }
}

/// The words of a duration below its minimum: `0s is below the minimum of
/// 10ms: <why>`.
pub fn below_minimum(value: Duration, min: Duration, why: &str) -> String {
    format!(
        "{} is below the minimum of {}: {why}",
        humantime::format_duration(value),
        humantime::format_duration(min)
    )
}

/// The typed settings of one kind: the keys of a service's table beyond the
/// ones every service has. Declare the type with `config_table!` (which
/// derives [`Fields`]: decoding, defaults, schema, accepted keys) and
/// implement this trait for what only the kind knows.
pub trait Settings: Fields + fmt::Debug + Clone + PartialEq + Send + Sync + 'static {
    /// The endpoints `check --connect` probes (each distinct one once).
    fn endpoints(&self) -> Vec<Endpoint> {
        Vec::new()
    }

    /// The PostgreSQL database a `singleton` service of this kind takes
    /// its advisory lock in; `None` falls back to `[warden] postgres`.
    fn leadership(&self) -> Option<&PostgresDsn> {
        None
    }

    /// The CA file the kind's TLS connections trust besides the system's
    /// roots (the data kinds' `tls_ca`); it applies to the leadership
    /// database too.
    fn tls_ca(&self) -> Option<&CaFile> {
        None
    }

    /// Cross-key checks that typing one value at a time cannot see.
    fn check(&self, problems: &mut Problems<'_>) {
        let _ = problems;
    }
}

/// The settings of a kind that has none of its own (`external`, the API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoSettings;

impl Fields for NoSettings {
    const KEYS: &'static [&'static str] = &[];
    fn decode_fields(_: &mut TableReader<'_>, _: &mut Cx<'_>) -> Option<Self> {
        Some(NoSettings)
    }
    fn schema_fields(_: &mut ObjectSchema) {}
    fn fields_to_json(&self, _: &mut Map<String, Json>) {}
}

impl Settings for NoSettings {}

/// [`Settings`] behind a pointer: what a [`KindSpec`] holds, whatever the
/// kind. Implemented for every `Settings` type.
pub trait AnySettings: fmt::Debug + Send + Sync + 'static {
    /// Adds the settings to a service's JSON, secrets masked.
    fn fields_to_json(&self, o: &mut Map<String, Json>);
    fn endpoints(&self) -> Vec<Endpoint>;
    fn leadership(&self) -> Option<&PostgresDsn>;
    fn tls_ca(&self) -> Option<&CaFile>;
    fn check(&self, problems: &mut Problems<'_>);
    fn as_any(&self) -> &dyn Any;
    /// Equal settings of the same type.
    fn same(&self, other: &dyn AnySettings) -> bool;
}

impl<T: Settings> AnySettings for T {
    fn fields_to_json(&self, o: &mut Map<String, Json>) {
        Fields::fields_to_json(self, o)
    }
    fn endpoints(&self) -> Vec<Endpoint> {
        Settings::endpoints(self)
    }
    fn leadership(&self) -> Option<&PostgresDsn> {
        Settings::leadership(self)
    }
    fn tls_ca(&self) -> Option<&CaFile> {
        Settings::tls_ca(self)
    }
    fn check(&self, problems: &mut Problems<'_>) {
        Settings::check(self, problems)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn same(&self, other: &dyn AnySettings) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// A service's kind and its kind-specific settings, typed by the kind.
#[derive(Debug, Clone)]
pub struct KindSpec {
    name: Arc<str>,
    settings: Arc<dyn AnySettings>,
}

impl PartialEq for KindSpec {
    fn eq(&self, other: &KindSpec) -> bool {
        self.name == other.name && self.settings.same(&*other.settings)
    }
}

impl KindSpec {
    pub fn new(name: &str, settings: impl Settings) -> KindSpec {
        KindSpec {
            name: name.into(),
            settings: Arc::new(settings),
        }
    }

    /// The `kind = "..."` of the service.
    pub fn kind_name(&self) -> &str {
        &self.name
    }

    /// The settings, if they are of type `T` (a kind's factory asks for
    /// its own type).
    pub fn settings<T: Settings>(&self) -> Option<&T> {
        self.settings.as_any().downcast_ref::<T>()
    }

    /// Every endpoint the settings name (for `check --connect`).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.settings.endpoints()
    }

    /// The database of a singleton's leadership, when the kind has one,
    /// with the CA its connections trust.
    pub fn leadership(&self) -> Option<PgTarget> {
        self.settings
            .leadership()
            .map(|dsn| PgTarget::new(dsn.clone(), self.settings.tls_ca().cloned()))
    }

    /// The CA file the kind's TLS connections trust (`tls_ca`).
    pub fn tls_ca(&self) -> Option<&CaFile> {
        self.settings.tls_ca()
    }

    pub(super) fn check(&self, problems: &mut Problems<'_>) {
        self.settings.check(problems)
    }

    pub(super) fn settings_json(&self, o: &mut Map<String, Json>) {
        self.settings.fields_to_json(o)
    }
}

/// How the services of a kind run, which decides the probes and keys that
/// make sense for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// A child process: it has output and can use `NOTIFY_SOCKET`, so the
    /// `log` and `notify` probes apply; `stop.signal` is sent to it.
    Process,
    /// A check of something warden does not run: it needs a `ready`
    /// probe, and runs for as long as warden does (never oneshot).
    Check,
    /// Inside warden: it says when it is ready itself (no `ready` probe),
    /// and is stopped by cancellation (`stop.signal` does not apply).
    InProcess,
}

/// One action of a kind (`POST /v1/services/NAME/actions/ACTION`): its
/// name and the shape of its request and response bodies, as JSON Schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: &'static str,
    /// One line for `/openapi.json` and the docs.
    pub summary: &'static str,
    /// The JSON body the action accepts.
    pub request: Json,
    /// The `result` the action answers.
    pub response: Json,
}

impl Action {
    /// An action that takes any JSON object and answers any JSON value;
    /// narrow both with [`Action::request`] and [`Action::response`].
    pub fn new(name: &'static str, summary: &'static str) -> Action {
        Action {
            name,
            summary,
            request: json!({"type": "object"}),
            response: json!({}),
        }
    }

    pub fn request(mut self, schema: Json) -> Action {
        self.request = schema;
        self
    }

    pub fn response(mut self, schema: Json) -> Action {
        self.response = schema;
        self
    }
}

type DecodeFn = fn(&mut TableReader<'_>, &mut Cx<'_>) -> Option<Arc<dyn AnySettings>>;

fn decode_settings<S: Settings>(
    r: &mut TableReader<'_>,
    cx: &mut Cx<'_>,
) -> Option<Arc<dyn AnySettings>> {
    S::decode_fields(r, cx).map(|s| Arc::new(s) as Arc<dyn AnySettings>)
}

/// What the configuration knows of one kind.
#[derive(Clone)]
pub struct KindDef {
    name: &'static str,
    runs: Runs,
    oneshot: bool,
    keys: &'static [&'static str],
    decode: DecodeFn,
    schema_fields: fn(&mut ObjectSchema),
    actions: Vec<Action>,
}

impl fmt::Debug for KindDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindDef")
            .field("name", &self.name)
            .field("runs", &self.runs)
            .field("oneshot", &self.oneshot)
            .field("keys", &self.keys)
            .field("actions", &self.actions)
            .finish()
    }
}

impl KindDef {
    /// A kind named `name` (kebab-case) whose settings are `S`. Processes
    /// and in-process kinds may be oneshot unless [`KindDef::continuous`]
    /// says otherwise; checks never are.
    pub fn new<S: Settings>(name: &'static str, runs: Runs) -> KindDef {
        KindDef {
            name,
            runs,
            oneshot: runs != Runs::Check,
            keys: S::KEYS,
            decode: decode_settings::<S>,
            schema_fields: S::schema_fields,
            actions: Vec::new(),
        }
    }

    /// Its services run for as long as warden does: `oneshot` is an error.
    pub fn continuous(mut self) -> KindDef {
        self.oneshot = false;
        self
    }

    /// Adds an action.
    pub fn action(mut self, action: Action) -> KindDef {
        self.actions.push(action);
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn runs(&self) -> Runs {
        self.runs
    }

    /// Whether a service of this kind may be `oneshot`.
    pub fn may_be_oneshot(&self) -> bool {
        self.oneshot
    }

    /// The kind's own keys (besides the ones every service has).
    pub fn keys(&self) -> &'static [&'static str] {
        self.keys
    }

    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    pub fn action_names(&self) -> Vec<&'static str> {
        self.actions.iter().map(|a| a.name).collect()
    }

    /// Decodes the kind's keys of a service table.
    pub(super) fn decode(&self, r: &mut TableReader<'_>, cx: &mut Cx<'_>) -> Option<KindSpec> {
        (self.decode)(r, cx).map(|settings| KindSpec {
            name: self.name.into(),
            settings,
        })
    }

    /// Adds the kind's keys to a schema under construction.
    pub(super) fn schema_fields(&self, s: &mut ObjectSchema) {
        (self.schema_fields)(s)
    }
}

/// The kinds a registry may use, in the order they were registered (the
/// order error messages list them in). A later kind of the same name
/// replaces an earlier one.
#[derive(Debug, Clone, Default)]
pub struct KindTable {
    by_name: IndexMap<&'static str, KindDef>,
}

impl KindTable {
    pub fn new() -> KindTable {
        KindTable::default()
    }

    pub fn add(&mut self, def: KindDef) -> &mut KindTable {
        self.by_name.insert(def.name, def);
        self
    }

    pub fn get(&self, name: &str) -> Option<&KindDef> {
        self.by_name.get(name)
    }

    /// The kinds one may write under `[services]` (all but the API's).
    pub fn writable(&self) -> impl Iterator<Item = &KindDef> {
        self.by_name.values().filter(|k| k.name != API_KIND)
    }

    /// The names of [`KindTable::writable`].
    pub fn names(&self) -> Vec<&'static str> {
        self.writable().map(|k| k.name).collect()
    }
}
