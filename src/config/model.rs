//! The typed registry: what `services.toml` means once profiles, defaults
//! and variables are applied, so the runtime never looks at TOML. The keys
//! every service has are here; each kind's own settings are its own type
//! (see [`super::kind`]), declared in the kind's folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::{Map, Value as Json, json};

use super::decode::{
    Cx, Decode, Fields, ObjectSchema, TableReader, config_enum, config_table, defaults_of,
};
use super::kind::KindSpec;
use super::node::{Node, Value};
use super::secret::Secret;
use super::source::Span;
use super::types::{
    ByteSize, CaFile, CertFile, Command, Count, Fraction, HostPort, HttpUrl, KeyFile, Pattern,
    PgTarget, PostgresDsn, RedisDsn, RedisTarget, Signal,
};

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

// ---------------------------------------------------------------------------
// [warden] and [api]

config_table! {
    /// `[warden]`: the daemon itself.
    pub struct WardenSpec {
        /// Default profile; `--profile` and `WARDEN_PROFILE` win.
        pub profile: Option<String>,
        /// Cap on the whole ordered shutdown.
        pub shutdown_timeout: Duration = secs(30),
        /// `.env` files read once at start; the process environment wins.
        pub env_files: Vec<String>,
        /// Coordination database for `singleton` services that have no
        /// `postgres` setting of their own.
        pub postgres: Option<PostgresDsn>,
        /// Output lines kept per service for the API and `warden logs`.
        pub log_lines: Count = Count(1000),
        /// Memory for the output kept of all services together: each
        /// service's ring holds an equal share (at least 1KiB, at most
        /// 1MiB), whatever `log_lines` says.
        pub log_memory: ByteSize = ByteSize(16 << 20),
    }
}

config_table! {
    /// `[api]`: the HTTP API service (health, metrics, control).
    pub struct ApiSpec {
        /// Run the API service.
        pub enabled: bool = true,
        /// Address to listen on.
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9464)),
        /// Bearer token for mutating routes; empty means none.
        pub token: Option<Secret>,
        /// Largest request body accepted, in bytes.
        pub max_body: Count = Count(1 << 20),
        /// Most connections served at once.
        pub max_connections: Count = Count(256),
        /// Most long-lived streams (`/v1/events`, `logs?follow=true`) open
        /// at once, out of `max_connections`.
        pub max_streams: Count = Count(64),
        /// How long a client may take to send a request's body (after
        /// its headers): a body sent a byte at a time would hold a
        /// connection for ever.
        pub body_timeout: Duration = secs(10),
        /// How long a stream (`/v1/events`, `logs?follow=true`) may leave
        /// what warden sends unread before warden ends it, with a last
        /// `dropped` event that says so: a reader that stops reading holds
        /// a stream and its queue no longer than this.
        pub stall_timeout: Duration = secs(30),
        /// Host names the API answers to besides loopback names
        /// (`localhost`, `*.localhost`) and IP addresses: the names clients
        /// reach it by (`warden.internal`). Any other `Host` is refused
        /// (DNS rebinding).
        pub allowed_hosts: Vec<String>,
        /// Serve HTTPS with this PEM certificate (then its intermediates);
        /// needs `tls_key`. Read again when the file changes.
        pub tls_cert: Option<CertFile>,
        /// The PEM private key of `tls_cert`.
        pub tls_key: Option<KeyFile>,
    }
}

impl ApiSpec {
    /// The token, if one is configured and not empty.
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref().filter(|t| !t.is_empty())
    }
}

// ---------------------------------------------------------------------------
// Supervision settings shared by every kind.

config_enum! {
    /// What to do when a service ends.
    pub enum RestartPolicy {
        /// Restart whatever the exit.
        Always = "always",
        /// Restart after a failure (non-zero exit, crash, failed probe).
        OnFailure = "on-failure",
        /// Never restart.
        Never = "never",
    }
}

config_table! {
    /// Exponential backoff between restarts.
    pub struct Backoff {
        /// First delay.
        pub initial: Duration = millis(100),
        /// Largest delay.
        pub max: Duration = secs(30),
        /// Growth factor per restart (at least 1).
        pub multiplier: f64 = 2.0,
        /// Random spread, as a fraction of the delay (0 to 1).
        pub jitter: Fraction = Fraction(0.2),
    }
}

config_table! {
    /// Restart policy and budget (`max_restarts` within `window`).
    pub struct RestartSpec {
        /// always, on-failure or never.
        pub policy: RestartPolicy = RestartPolicy::OnFailure,
        /// Restarts allowed within `window` before the service fails for good.
        pub max_restarts: u32 = 5,
        /// Sliding window of the restart budget.
        pub window: Duration = secs(60),
        /// Stable readiness after which the backoff starts over.
        pub reset_after: Duration = secs(30),
        /// Delay between restarts.
        pub backoff: Backoff = defaults_of(Backoff::all_defaults()),
    }
}

config_table! {
    /// How a service is stopped.
    pub struct StopSpec {
        /// Signal sent to a process's group (after `command`, if any).
        pub signal: Signal = Signal::TERM,
        /// Grace before SIGKILL (processes) or abort (in-process services);
        /// with a `command`, also the grace between the command and the
        /// signal.
        pub timeout: Duration = secs(10),
        /// A command run first to stop a process gracefully (such as
        /// `["nginx", "-s", "quit"]`); the signal follows if the process
        /// is still running `timeout` later.
        pub command: Option<Command>,
    }
}

config_enum! {
    /// The condition a dependency edge waits for.
    pub enum Condition {
        /// The dependency has been started.
        Started = "started",
        /// The dependency is ready (its probe passed, or it said so).
        Ready = "ready",
        /// The dependency, a oneshot, exited successfully.
        Completed = "completed",
    }
}

config_enum! {
    /// What a service does when one of its dependencies restarts.
    pub enum OnDependencyRestart {
        /// Keep running.
        Ignore = "ignore",
        /// Stop, and start again once the dependency is ready (rest_for_one).
        Restart = "restart",
        /// Stop and stay stopped.
        Stop = "stop",
    }
}

/// One dependency edge as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependency {
    pub name: String,
    pub condition: Condition,
    /// Where the dependency's name was written.
    pub span: Span,
}

/// `depends_on = ["a", "b"]` (condition `ready`) or
/// `depends_on = { a = "started", b = "completed" }`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DependsOn(pub Vec<Dependency>);

impl Decode for DependsOn {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        match &node.value {
            Value::Array(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(name) => out.push(Dependency {
                            name: name.to_string(),
                            condition: Condition::Ready,
                            span: item.span,
                        }),
                        None => {
                            cx.with_key(&i.to_string(), |cx| cx.type_error(item, "a service name"));
                            ok = false;
                        }
                    }
                }
                ok.then_some(DependsOn(out))
            }
            Value::Table(t) => {
                let mut out = Vec::new();
                let mut ok = true;
                for (name, e) in t {
                    match cx.with_key(name, |cx| Condition::decode(&e.node, cx)) {
                        Some(condition) => out.push(Dependency {
                            name: name.clone(),
                            condition,
                            span: e.key_span,
                        }),
                        None => ok = false,
                    }
                }
                ok.then_some(DependsOn(out))
            }
            _ => {
                cx.type_error(
                    node,
                    "a list of service names or a table of name = condition",
                );
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"oneOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": Condition::schema()}
        ]})
    }
    fn to_json(&self) -> Json {
        Json::Object(
            self.0
                .iter()
                .map(|d| (d.name.clone(), json!(d.condition.as_str())))
                .collect(),
        )
    }
    fn absent() -> Option<Self> {
        Some(DependsOn::default())
    }
}

// ---------------------------------------------------------------------------
// Probes

/// What a probe checks. Exactly one per probe.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeCheck {
    /// A TCP connection succeeds.
    Tcp(HostPort),
    /// An HTTP GET answers 2xx.
    Http(HttpUrl),
    /// A command exits 0.
    Exec(Command),
    /// PostgreSQL accepts a connection and `SELECT 1`.
    Postgres(PgTarget),
    /// Redis answers `PING`.
    Redis(RedisTarget),
    /// A line of the process's output matches.
    Log(Pattern),
    /// The process sends `READY=1` on `NOTIFY_SOCKET` (sd_notify).
    Notify,
}

impl ProbeCheck {
    pub const KEYS: &'static [&'static str] =
        &["tcp", "http", "exec", "postgres", "redis", "log", "notify"];

    pub fn name(&self) -> &'static str {
        match self {
            ProbeCheck::Tcp(_) => "tcp",
            ProbeCheck::Http(_) => "http",
            ProbeCheck::Exec(_) => "exec",
            ProbeCheck::Postgres(_) => "postgres",
            ProbeCheck::Redis(_) => "redis",
            ProbeCheck::Log(_) => "log",
            ProbeCheck::Notify => "notify",
        }
    }

    /// The probe's target as it may be shown (passwords masked).
    pub fn target(&self) -> String {
        match self {
            ProbeCheck::Tcp(h) => h.to_string(),
            ProbeCheck::Http(u) => super::secret::redact_dsn(&u.0),
            ProbeCheck::Exec(c) => {
                c.0.iter()
                    .map(|a| super::secret::redact_dsn(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            ProbeCheck::Postgres(t) => t.redacted(),
            ProbeCheck::Redis(t) => t.redacted(),
            ProbeCheck::Log(p) => p.0.clone(),
            ProbeCheck::Notify => "NOTIFY_SOCKET".into(),
        }
    }

    fn decode_fields(r: &mut TableReader<'_>, cx: &mut Cx<'_>) -> Option<ProbeCheck> {
        // A DSN may come from its secret file (`postgres_file`).
        let present: Vec<&str> = Self::KEYS
            .iter()
            .copied()
            .filter(|k| {
                r.has(k) || (matches!(*k, "postgres" | "redis") && r.has(&format!("{k}_file")))
            })
            .collect();
        let none = None::<fn() -> Option<bool>>;
        let tcp = r.field::<Option<HostPort>>(cx, "tcp", None::<fn() -> _>);
        let http = r.field::<Option<HttpUrl>>(cx, "http", None::<fn() -> _>);
        let exec = r.field::<Option<Command>>(cx, "exec", None::<fn() -> _>);
        let postgres = r.field::<Option<PostgresDsn>>(cx, "postgres", None::<fn() -> _>);
        let redis = r.field::<Option<RedisDsn>>(cx, "redis", None::<fn() -> _>);
        let log = r.field::<Option<Pattern>>(cx, "log", None::<fn() -> _>);
        let notify = r.field::<Option<bool>>(cx, "notify", none);
        // The CA of a check that uses none is reported once, as misplaced.
        let tls_applies = matches!(present.as_slice(), ["postgres" | "redis"]);
        let tls_ca = if tls_applies || !r.has("tls_ca") {
            r.field::<Option<CaFile>>(cx, "tls_ca", None::<fn() -> _>)
        } else {
            r.field::<Option<String>>(cx, "tls_ca", None::<fn() -> _>)
                .map(|_| None)
        };
        match present.len() {
            0 => {
                let d = cx.diag(
                    "invalid-probe",
                    r.span(),
                    format!("a probe needs one of {}", Self::KEYS.join(", ")),
                );
                cx.diags.push(d);
                return None;
            }
            1 => {}
            _ => {
                let d = cx.diag(
                    "invalid-probe",
                    r.span(),
                    format!(
                        "a probe checks one thing, found {}; split them or keep one",
                        present.join(" and ")
                    ),
                );
                cx.diags.push(d);
                return None;
            }
        }
        if r.has("tls_ca") && !tls_applies {
            let d = cx.diag(
                "invalid-probe",
                r.span(),
                format!(
                    "`tls_ca` applies to the postgres and redis checks, not to {}",
                    present[0]
                ),
            );
            cx.diags.push(d);
            return None;
        }
        if notify.flatten() == Some(false) {
            let d = cx.diag(
                "invalid-probe",
                r.span(),
                "`notify = false` checks nothing; write `notify = true` or choose another probe",
            );
            cx.diags.push(d);
            return None;
        }
        Some(match present[0] {
            "tcp" => ProbeCheck::Tcp(tcp??),
            "http" => ProbeCheck::Http(http??),
            "exec" => ProbeCheck::Exec(exec??),
            "postgres" => ProbeCheck::Postgres(PgTarget::new(postgres??, tls_ca?)),
            "redis" => ProbeCheck::Redis(RedisTarget::new(redis??, tls_ca?)),
            "log" => ProbeCheck::Log(log??),
            _ => {
                notify??;
                ProbeCheck::Notify
            }
        })
    }

    fn schema_fields(s: &mut ObjectSchema) {
        s.property(
            "tcp",
            json!({"type": "string", "description": "host:port accepts a TCP connection"}),
            false,
        );
        s.property(
            "http",
            json!({"type": "string", "pattern": "^(http://|.*\\$\\{)", "description": "GET answers 2xx"}),
            false,
        );
        s.property("exec", json!({"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "command exits 0"}), false);
        s.property(
            "postgres",
            json!({"type": "string", "description": "connect and SELECT 1"}),
            false,
        );
        s.property("postgres_file", json!({"type": "string"}), false);
        s.property(
            "redis",
            json!({"type": "string", "description": "PING answers"}),
            false,
        );
        s.property("redis_file", json!({"type": "string"}), false);
        s.property(
            "tls_ca",
            json!({"type": "string", "description": "postgres and redis checks: a file of PEM CA certificates trusted besides the system's roots"}),
            false,
        );
        s.property(
            "log",
            json!({"type": "string", "description": "regex on an output line"}),
            false,
        );
        s.property(
            "notify",
            json!({"const": true, "description": "sd_notify READY=1"}),
            false,
        );
    }
}

config_table! {
    /// Timing of a readiness probe, polled until it passes.
    pub struct ReadyTiming {
        /// Time between attempts.
        pub interval: Duration = millis(250),
        /// Time one attempt may take.
        pub timeout: Duration = secs(1),
    }
}

config_table! {
    /// Timing of a liveness probe.
    pub struct HealthTiming {
        /// Time between checks.
        pub interval: Duration = secs(10),
        /// Time one check may take.
        pub timeout: Duration = secs(2),
        /// Consecutive failures that count as a failure of the service.
        pub failure_threshold: Count = Count(3),
        /// Wait after readiness before the first check.
        pub initial_delay: Duration = secs(0),
    }
}

/// A probe: one check and its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe<T> {
    pub check: ProbeCheck,
    pub timing: T,
}

impl<T: Fields> Decode for Probe<T> {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let mut r = TableReader::new(node, cx)?;
        let check = ProbeCheck::decode_fields(&mut r, cx);
        let timing = T::decode_fields(&mut r, cx);
        r.finish(cx);
        Some(Probe {
            check: check?,
            timing: timing?,
        })
    }
    fn schema() -> Json {
        let mut s = ObjectSchema::new(
            "A probe: exactly one of tcp, http, exec, postgres, redis, log, notify.",
        );
        ProbeCheck::schema_fields(&mut s);
        T::schema_fields(&mut s);
        let mut j = s.build();
        j["oneOf"] = Json::Array(
            ProbeCheck::KEYS
                .iter()
                .map(|k| {
                    if matches!(*k, "postgres" | "redis") {
                        json!({"anyOf": [{"required": [k]}, {"required": [format!("{k}_file")]}]})
                    } else {
                        json!({"required": [k]})
                    }
                })
                .collect(),
        );
        j
    }
    fn to_json(&self) -> Json {
        let mut o = Map::new();
        o.insert(self.check.name().into(), json!(self.check.target()));
        if let ProbeCheck::Postgres(PgTarget {
            tls_ca: Some(ca), ..
        })
        | ProbeCheck::Redis(RedisTarget {
            tls_ca: Some(ca), ..
        }) = &self.check
        {
            o.insert("tls_ca".into(), ca.to_json());
        }
        self.timing.fields_to_json(&mut o);
        Json::Object(o)
    }
}

// ---------------------------------------------------------------------------
// Schedules

config_table! {
    /// `[[services.NAME.schedule]]`: run a kind's action periodically.
    pub struct Schedule {
        /// The action to run (one of the kind's actions).
        pub action: String,
        /// Period between runs; runs never overlap.
        pub every: Duration,
        /// JSON arguments passed to the action.
        pub args: Json,
    }
}

// ---------------------------------------------------------------------------
// Service keys shared by every kind

config_table! {
    /// Keys every service accepts, whatever its kind.
    pub struct CommonSpec {
        /// Free text shown by `warden status` and the console.
        pub description: Option<String>,
        /// Run this service (profiles turn services off and on).
        pub enabled: bool = true,
        /// When it fails for good, warden shuts down (exit 3).
        pub critical: bool = false,
        /// The registry's main service (at most one): when it ends for
        /// good, warden stops the rest and exits with its exit status.
        pub main: bool = false,
        /// Runs to completion once; exit 0 is `completed`.
        pub oneshot: bool = false,
        /// Dependencies and the condition each must meet first.
        pub depends_on: DependsOn,
        /// ignore, restart (rest_for_one) or stop.
        pub on_dependency_restart: OnDependencyRestart = OnDependencyRestart::Ignore,
        /// Longest wait from start to ready; past it the start failed.
        pub start_timeout: Duration = secs(60),
        /// Restart policy, budget and backoff.
        pub restart: RestartSpec = defaults_of(RestartSpec::all_defaults()),
        /// Stop signal and grace.
        pub stop: StopSpec = defaults_of(StopSpec::all_defaults()),
        /// Readiness probe (process and external kinds).
        pub ready: Option<Probe<ReadyTiming>>,
        /// Liveness probe.
        pub health: Option<Probe<HealthTiming>>,
        /// Run on exactly one warden instance (PostgreSQL advisory lock).
        pub singleton: bool = false,
        /// Periodic actions.
        pub schedule: Vec<Schedule>,
    }
}

/// Keys `[defaults]` may set for every service.
pub const DEFAULTS_KEYS: &[&str] = &[
    "critical",
    "on_dependency_restart",
    "start_timeout",
    "restart",
    "stop",
    "health",
];

// ---------------------------------------------------------------------------
// Kinds

/// Something outside warden a service talks to (with the CA file its TLS
/// connections trust, for the stores).
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Postgres(PgTarget),
    Redis(RedisTarget),
    /// A URL, and the CA file its `https://` trusts besides the system's
    /// roots (memory-sync's `tls_ca`; none for probes).
    Http(HttpUrl, Option<CaFile>),
    Tcp(HostPort),
    /// A table a data service works on, in that PostgreSQL.
    PostgresTable(PgTarget, TableNeeds),
}

/// What a data service needs of a table it adopts: checked by `warden
/// check --connect` and at the service's start, so that a table it cannot
/// use is refused naming the column, not found at the first claim.
#[derive(Debug, Clone, PartialEq)]
pub struct TableNeeds {
    /// The table, quoted as SQL names it.
    pub table: String,
    /// Its columns, each with the type it must have (`None`: any).
    pub columns: &'static [(&'static str, Option<&'static str>)],
    /// Whether the service makes the table at its start when it is
    /// missing (`create_schema`), with the columns of `added`.
    pub create_schema: bool,
    /// Columns the service adds to an existing table at its start (with
    /// `create_schema`).
    pub added: &'static [&'static str],
}

impl TableNeeds {
    /// What is wrong with the table, given its columns and their types
    /// (`None`: there is no such table); nothing when it can be used.
    pub fn problems(&self, found: Option<&[(String, String)]>) -> Vec<String> {
        let t = &self.table;
        let Some(found) = found else {
            return if self.create_schema {
                Vec::new()
            } else {
                vec![format!(
                    "table {t} does not exist (create it with the statements shipped in sql/, or set create_schema = true)"
                )]
            };
        };
        let mut out = Vec::new();
        for (column, want) in self.columns {
            match found.iter().find(|(name, _)| name == column) {
                None if self.create_schema && self.added.contains(column) => {}
                None => out.push(format!(
                    "table {t} has no column {column}; warden needs {column}{}{}",
                    want.map(|w| format!(" {w}")).unwrap_or_default(),
                    if self.added.contains(column) {
                        " (create_schema = true adds it at the start)"
                    } else {
                        ""
                    }
                )),
                Some((_, ty)) => {
                    if let Some(want) = want
                        && ty != want
                    {
                        out.push(format!(
                            "table {t}: column {column} is {ty}; warden needs {want} (ALTER TABLE {t} ALTER COLUMN {column} TYPE {want})"
                        ));
                    }
                }
            }
        }
        out
    }
}

impl Endpoint {
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::PostgresTable(..) => "postgres-table",
            Endpoint::Postgres(_) => "postgres",
            Endpoint::Redis(_) => "redis",
            Endpoint::Http(..) => "http",
            Endpoint::Tcp(_) => "tcp",
        }
    }
    /// The target with passwords masked.
    pub fn display(&self) -> String {
        match self {
            Endpoint::Postgres(t) => t.redacted(),
            Endpoint::PostgresTable(t, needs) => format!("{} table {}", t.redacted(), needs.table),
            Endpoint::Redis(t) => t.redacted(),
            Endpoint::Http(u, _) => super::secret::redact_dsn(&u.0),
            Endpoint::Tcp(h) => h.to_string(),
        }
    }
}

/// One service of the registry, fully typed.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub common: CommonSpec,
    pub kind: KindSpec,
    /// Where the service's table starts (its `[services.NAME]` header).
    pub span: Span,
}

impl ServiceSpec {
    pub fn enabled(&self) -> bool {
        self.common.enabled
    }

    /// The implicit service that `[api]` configures.
    pub fn is_api(&self) -> bool {
        self.kind.kind_name() == super::kind::API_KIND
    }

    /// The service as JSON: every setting, defaults applied, secrets masked.
    pub fn to_json(&self) -> Json {
        let mut o = Map::new();
        o.insert("kind".into(), json!(self.kind.kind_name()));
        self.common.fields_to_json(&mut o);
        self.kind.settings_json(&mut o);
        Json::Object(o)
    }
}

/// A whole registry, ready for the graph and the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    /// The registry file.
    pub file: PathBuf,
    /// The profile applied, if any.
    pub profile: Option<String>,
    pub warden: WardenSpec,
    pub api: ApiSpec,
    /// Services in the order they were written (the API service first when
    /// enabled).
    pub services: IndexMap<String, ServiceSpec>,
    /// The environment variables that filled a secret setting: one whose
    /// key names a secret (`token`, `password`, ...) or whose value holds
    /// one (a DSN's password). Children do not inherit them.
    pub secret_vars: std::collections::BTreeSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_used_as_defaults_have_a_default_for_every_key() {
        assert!(Backoff::all_defaults().is_some());
        assert!(RestartSpec::all_defaults().is_some());
        assert!(StopSpec::all_defaults().is_some());
        assert!(ApiSpec::all_defaults().is_some());
        assert!(WardenSpec::all_defaults().is_some());
    }

    #[test]
    fn raw_identifiers_are_keys_without_prefix() {
        assert_eq!(super::super::decode::key_name("r#where"), "where");
        assert_eq!(super::super::decode::key_name("r#"), "r#");
        assert_eq!(super::super::decode::key_name("table"), "table");
    }
}
