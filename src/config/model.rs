//! The typed registry: what `services.toml` means once profiles, defaults
//! and variables are applied. Every kind of DESIGN.md §5 has its settings
//! here, so the runtime never looks at TOML.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::{Map, Value as Json, json};

use super::decode::{Cx, Decode, Fields, ObjectSchema, TableReader, config_enum, config_table};
use super::node::{Node, Value};
use super::secret::Secret;
use super::source::Span;
use super::types::{
    Command, Count, Fraction, HostPort, HttpUrl, Ident, Pattern, PostgresDsn, RedisDsn, Signal,
    TableName,
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
        /// Signal sent to a process's group first.
        pub signal: Signal = Signal::TERM,
        /// Grace before SIGKILL (processes) or abort (in-process services).
        pub timeout: Duration = secs(10),
    }
}

/// Unwraps the defaults of a table whose every key has one (checked by a
/// unit test over every such table).
fn defaults_of<T>(v: Option<T>) -> T {
    match v {
        Some(v) => v,
        None => unreachable!("a table used as a default has a default for every key"),
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
    Postgres(PostgresDsn),
    /// Redis answers `PING`.
    Redis(RedisDsn),
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
            ProbeCheck::Http(u) => super::secret::redact(&u.0),
            ProbeCheck::Exec(c) => c.0.join(" "),
            ProbeCheck::Postgres(d) => d.0.redacted(),
            ProbeCheck::Redis(d) => d.0.redacted(),
            ProbeCheck::Log(p) => p.0.clone(),
            ProbeCheck::Notify => "NOTIFY_SOCKET".into(),
        }
    }

    fn decode_fields(r: &mut TableReader<'_>, cx: &mut Cx<'_>) -> Option<ProbeCheck> {
        let present: Vec<&str> = Self::KEYS.iter().copied().filter(|k| r.has(k)).collect();
        let none = None::<fn() -> Option<bool>>;
        let tcp = r.field::<Option<HostPort>>(cx, "tcp", None::<fn() -> _>);
        let http = r.field::<Option<HttpUrl>>(cx, "http", None::<fn() -> _>);
        let exec = r.field::<Option<Command>>(cx, "exec", None::<fn() -> _>);
        let postgres = r.field::<Option<PostgresDsn>>(cx, "postgres", None::<fn() -> _>);
        let redis = r.field::<Option<RedisDsn>>(cx, "redis", None::<fn() -> _>);
        let log = r.field::<Option<Pattern>>(cx, "log", None::<fn() -> _>);
        let notify = r.field::<Option<bool>>(cx, "notify", none);
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
            "postgres" => ProbeCheck::Postgres(postgres??),
            "redis" => ProbeCheck::Redis(redis??),
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

/// A scalar written for an environment variable: strings as they are,
/// numbers and booleans as TOML prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl Decode for EnvValue {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        match &node.value {
            Value::String(s) => Some(EnvValue(s.clone())),
            Value::Integer(i) => Some(EnvValue(i.to_string())),
            Value::Float(f) => Some(EnvValue(f.to_string())),
            Value::Boolean(b) => Some(EnvValue(b.to_string())),
            _ => {
                cx.type_error(node, "a string, number or boolean");
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"type": ["string", "number", "boolean"]})
    }
    fn to_json(&self) -> Json {
        Json::String(super::secret::redact(&self.0))
    }
}

config_table! {
    /// `kind = "process"`: a supervised executable.
    pub struct ProcessSpec {
        /// Program and arguments.
        pub command: Command,
        /// More arguments appended to `command`.
        pub args: Vec<String>,
        /// Environment variables added for the child.
        pub env: IndexMap<String, EnvValue>,
        /// `.env` files read for the child at each start.
        pub env_files: Vec<String>,
        /// Working directory (relative to the registry's directory).
        pub cwd: Option<String>,
        /// User to run as (name or uid) when warden runs as root.
        pub user: Option<String>,
    }
}

fn default_table(name: &str) -> TableName {
    TableName::new(name).unwrap_or_else(|| unreachable!("built-in table names are identifiers"))
}

config_table! {
    /// `kind = "outbox-relay"`: PostgreSQL outbox to Redis Streams.
    pub struct OutboxRelaySpec {
        /// PostgreSQL holding the outbox.
        pub postgres: PostgresDsn,
        /// Redis receiving the streams.
        pub redis: RedisDsn,
        /// Outbox table.
        pub table: TableName = default_table("message_outbox"),
        /// Prefix of stream names: topic `t` goes to stream `<prefix>t`.
        pub stream_prefix: String = String::new(),
        /// Approximate cap of each stream (`XADD MAXLEN ~`).
        pub max_len: Option<u64>,
        /// How long a claimed batch is leased.
        pub lease: Duration = secs(30),
        /// Attempts before a row is marked failed.
        pub max_retries: u32 = 10,
        /// Fallback poll when no NOTIFY arrives.
        pub poll_interval: Duration = secs(1),
        /// Delete rows once published instead of marking them sent.
        pub delete_sent: bool = false,
        /// Rows claimed per batch.
        pub batch: Count = Count(100),
        /// Create the table and trigger at start (idempotent DDL).
        pub create_schema: bool = true,
    }
}

config_table! {
    /// Circuit breaker of the memory backend.
    pub struct Circuit {
        /// Consecutive failures that open the circuit.
        pub failures: Count = Count(5),
        /// Time the circuit stays open.
        pub cooldown: Duration = secs(30),
    }
}

config_table! {
    /// `kind = "memory-sync"`: durable delivery of queued memory writes.
    pub struct MemorySyncSpec {
        /// PostgreSQL holding the queue.
        pub postgres: PostgresDsn,
        /// Queue table.
        pub table: TableName = default_table("memory_write_outbox"),
        /// Memory backend URL receiving POSTs.
        pub endpoint: HttpUrl,
        /// Time one POST may take.
        pub timeout: Duration = secs(10),
        /// Attempts before a row is marked failed.
        pub max_retries: u32 = 10,
        /// Circuit breaker.
        pub circuit: Circuit = defaults_of(Circuit::all_defaults()),
        /// Topic of the WAL event written to the outbox on success.
        pub wal_topic: String = "memory.wal".to_string(),
        /// Outbox table receiving the WAL events.
        pub outbox_table: TableName = default_table("message_outbox"),
        /// How long a claimed batch is leased.
        pub lease: Duration = secs(30),
        /// Fallback poll when no NOTIFY arrives.
        pub poll_interval: Duration = secs(1),
        /// Rows claimed per batch.
        pub batch: Count = Count(50),
        /// Create the tables at start (idempotent DDL).
        pub create_schema: bool = true,
    }
}

/// A non-empty list of Redis stream names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streams(pub Vec<String>);

impl Decode for Streams {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let v: Vec<String> = Vec::decode(node, cx)?;
        if v.is_empty() {
            cx.error(
                "invalid-value",
                node.span,
                "the list is empty; name at least one stream",
            );
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        for s in &v {
            if s.trim().is_empty() {
                cx.error("invalid-value", node.span, "a stream name is empty");
                return None;
            }
            if !seen.insert(s) {
                cx.error(
                    "invalid-value",
                    node.span,
                    format!("stream {s:?} is listed twice"),
                );
                return None;
            }
        }
        Some(Streams(v))
    }
    fn schema() -> Json {
        json!({"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": true})
    }
    fn to_json(&self) -> Json {
        json!(self.0)
    }
}

config_table! {
    /// `kind = "stream-replicator"`: Redis Streams to PostgreSQL, idempotent.
    pub struct StreamReplicatorSpec {
        /// Redis holding the streams.
        pub redis: RedisDsn,
        /// PostgreSQL receiving the rows.
        pub postgres: PostgresDsn,
        /// Streams to consume.
        pub streams: Streams,
        /// Consumer group (default: the service's name).
        pub group: Option<String>,
        /// Target table.
        pub table: TableName = default_table("memory_replica"),
        /// Payload key to column mapping.
        pub columns: IndexMap<String, Ident>,
        /// Idle time after which a pending entry is claimed again.
        pub min_idle: Duration = secs(60),
        /// Deliveries before an entry goes to the dead-letter stream.
        pub max_deliveries: Count = Count(5),
        /// Longest block of one XREADGROUP.
        pub block: Duration = secs(1),
        /// Entries read per batch.
        pub batch: Count = Count(100),
        /// Create the tables at start (idempotent DDL).
        pub create_schema: bool = true,
    }
}

/// A non-empty list of key columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumns(pub Vec<Ident>);

impl Decode for KeyColumns {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let v: Vec<Ident> = Vec::decode(node, cx)?;
        if v.is_empty() {
            cx.error(
                "invalid-value",
                node.span,
                "the key is empty; name at least one column",
            );
            return None;
        }
        Some(KeyColumns(v))
    }
    fn schema() -> Json {
        json!({"type": "array", "items": Ident::schema(), "minItems": 1})
    }
    fn to_json(&self) -> Json {
        Json::Array(self.0.iter().map(Ident::to_json).collect())
    }
}

config_table! {
    /// The primary store of a dual-write: the source of truth.
    pub struct PrimaryStore {
        /// PostgreSQL of the primary table.
        pub postgres: PostgresDsn,
        /// Primary table.
        pub table: TableName,
        /// Key columns (upsert conflict target and comparison key).
        pub key: KeyColumns,
    }
}

/// The shadow store of a dual-write.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowStore {
    /// Another PostgreSQL table (in the primary's database unless
    /// `postgres` is given).
    Postgres {
        postgres: Option<PostgresDsn>,
        table: TableName,
    },
    /// A Redis hash per row, at `<prefix><key>`.
    Redis { redis: RedisDsn, prefix: String },
}

config_table! {
    /// `shadow = { postgres, table }`.
    pub struct ShadowPostgres {
        /// PostgreSQL of the shadow table (default: the primary's).
        pub postgres: Option<PostgresDsn>,
        /// Shadow table.
        pub table: TableName,
    }
}

config_table! {
    /// `shadow = { redis, prefix }`.
    pub struct ShadowRedis {
        /// Redis holding the shadow hashes.
        pub redis: RedisDsn,
        /// Key prefix of the hashes.
        pub prefix: String = "shadow:".to_string(),
    }
}

impl Decode for ShadowStore {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let redis = node.get("redis").is_some() || node.get("redis_file").is_some();
        if redis {
            let s = ShadowRedis::decode(node, cx)?;
            Some(ShadowStore::Redis {
                redis: s.redis,
                prefix: s.prefix,
            })
        } else {
            let s = ShadowPostgres::decode(node, cx)?;
            Some(ShadowStore::Postgres {
                postgres: s.postgres,
                table: s.table,
            })
        }
    }
    fn schema() -> Json {
        json!({"oneOf": [ShadowPostgres::schema(), ShadowRedis::schema()]})
    }
    fn to_json(&self) -> Json {
        match self {
            ShadowStore::Postgres { postgres, table } => {
                json!({"postgres": postgres.to_json(), "table": table.to_json()})
            }
            ShadowStore::Redis { redis, prefix } => {
                json!({"redis": redis.to_json(), "prefix": prefix})
            }
        }
    }
}

config_table! {
    /// Pass/fail thresholds of a validation run.
    pub struct Thresholds {
        /// Lowest acceptable share of matching rows.
        pub match_ratio: Fraction = Fraction(0.999),
        /// Most rows allowed missing on either side.
        pub max_missing: Option<u64>,
        /// Most rows allowed to differ.
        pub max_mismatched: Option<u64>,
    }
}

config_table! {
    /// `kind = "dual-write"`: primary + shadow store, kill switch, validation.
    pub struct DualWriteSpec {
        /// Redis holding the input stream.
        pub redis: RedisDsn,
        /// Input stream.
        pub stream: String,
        /// Consumer group (default: the service's name).
        pub group: Option<String>,
        /// Primary store (source of truth).
        pub primary: PrimaryStore,
        /// Shadow store (best effort).
        pub shadow: ShadowStore,
        /// Fields compared by validation (default: every column).
        pub compare: Vec<Ident>,
        /// Relative tolerance of numeric comparisons.
        pub tolerance: f64 = 0.0,
        /// Pass/fail thresholds.
        pub thresholds: Thresholds = defaults_of(Thresholds::all_defaults()),
        /// Rows per validation chunk (bounds memory).
        pub chunk: Count = Count(1000),
        /// Mismatched keys kept in a validation result.
        pub sample: u32 = 20,
        /// Initial state of the persisted shadow-write switch.
        pub shadow_writes: bool = true,
        /// Entries read per batch.
        pub batch: Count = Count(100),
        /// Create the tables at start (idempotent DDL).
        pub create_schema: bool = true,
    }
}

config_enum! {
    /// What a retention rule does with old rows.
    pub enum RetentionAction {
        /// Delete them.
        Delete = "delete",
        /// Move them to `<table>_archive` in the same transaction.
        Archive = "archive",
    }
}

config_table! {
    /// `[[services.NAME.rules]]`: one retention rule.
    pub struct RetentionRule {
        /// Table to clean.
        pub table: TableName,
        /// Timestamp column compared with `keep`.
        pub column: Ident,
        /// Age past which rows go.
        pub keep: Duration,
        /// Extra SQL condition, such as `status = 'sent'`.
        pub r#where: Option<String>,
        /// delete or archive.
        pub action: RetentionAction = RetentionAction::Delete,
        /// Rows per transaction.
        pub batch: Count = Count(5000),
    }
}

/// A non-empty list of retention rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules(pub Vec<RetentionRule>);

impl Decode for Rules {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let v: Vec<RetentionRule> = Vec::decode(node, cx)?;
        if v.is_empty() {
            cx.error(
                "invalid-value",
                node.span,
                "no rules; add at least one [[services.NAME.rules]]",
            );
            return None;
        }
        Some(Rules(v))
    }
    fn schema() -> Json {
        json!({"type": "array", "items": RetentionRule::schema(), "minItems": 1})
    }
    fn to_json(&self) -> Json {
        Json::Array(self.0.iter().map(Decode::to_json).collect())
    }
}

config_table! {
    /// `kind = "retention"`: batched delete or archive-then-delete by age.
    pub struct RetentionSpec {
        /// PostgreSQL holding the tables.
        pub postgres: PostgresDsn,
        /// The rules.
        pub rules: Rules,
        /// Create the run-log table at start (idempotent DDL).
        pub create_schema: bool = true,
    }
}

config_enum! {
    /// The built-in kinds.
    pub enum Kind {
        Process = "process",
        External = "external",
        Api = "api",
        OutboxRelay = "outbox-relay",
        MemorySync = "memory-sync",
        StreamReplicator = "stream-replicator",
        DualWrite = "dual-write",
        Retention = "retention",
    }
}

impl Kind {
    /// Kind-specific keys (besides [`CommonSpec::KEYS`]).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Process => ProcessSpec::KEYS,
            Kind::External | Kind::Api => &[],
            Kind::OutboxRelay => OutboxRelaySpec::KEYS,
            Kind::MemorySync => MemorySyncSpec::KEYS,
            Kind::StreamReplicator => StreamReplicatorSpec::KEYS,
            Kind::DualWrite => DualWriteSpec::KEYS,
            Kind::Retention => RetentionSpec::KEYS,
        }
    }

    /// The actions `POST /v1/services/NAME/actions/ACTION` accepts.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Kind::Process | Kind::External | Kind::Api => &[],
            Kind::OutboxRelay | Kind::MemorySync => &["replay-failed"],
            Kind::StreamReplicator => &["replay-dlq"],
            Kind::DualWrite => &["enable", "disable", "validate", "repair"],
            Kind::Retention => &["run"],
        }
    }

    /// Runs inside warden (and says `ready` itself) rather than as a child.
    pub fn in_process(self) -> bool {
        !matches!(self, Kind::Process | Kind::External)
    }
}

/// A kind registered by a crate using warden as a library.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomKind {
    pub name: String,
    pub actions: Vec<String>,
}

/// A service's kind and its kind-specific settings.
#[derive(Debug, Clone, PartialEq)]
pub enum KindSpec {
    Process(ProcessSpec),
    External,
    Api,
    OutboxRelay(OutboxRelaySpec),
    MemorySync(MemorySyncSpec),
    StreamReplicator(StreamReplicatorSpec),
    DualWrite(DualWriteSpec),
    Retention(RetentionSpec),
    /// A kind registered by a library user; its settings are handed to its
    /// factory as JSON.
    Custom {
        kind: String,
        settings: Json,
    },
}

impl KindSpec {
    pub fn kind_name(&self) -> &str {
        match self {
            KindSpec::Process(_) => "process",
            KindSpec::External => "external",
            KindSpec::Api => "api",
            KindSpec::OutboxRelay(_) => "outbox-relay",
            KindSpec::MemorySync(_) => "memory-sync",
            KindSpec::StreamReplicator(_) => "stream-replicator",
            KindSpec::DualWrite(_) => "dual-write",
            KindSpec::Retention(_) => "retention",
            KindSpec::Custom { kind, .. } => kind,
        }
    }

    pub fn builtin(&self) -> Option<Kind> {
        Kind::parse(self.kind_name()).filter(|_| !matches!(self, KindSpec::Custom { .. }))
    }

    fn settings_json(&self, o: &mut Map<String, Json>) {
        match self {
            KindSpec::Process(s) => s.fields_to_json(o),
            KindSpec::External | KindSpec::Api => {}
            KindSpec::OutboxRelay(s) => s.fields_to_json(o),
            KindSpec::MemorySync(s) => s.fields_to_json(o),
            KindSpec::StreamReplicator(s) => s.fields_to_json(o),
            KindSpec::DualWrite(s) => s.fields_to_json(o),
            KindSpec::Retention(s) => s.fields_to_json(o),
            KindSpec::Custom { settings, .. } => {
                if let Json::Object(m) = settings {
                    for (k, v) in m {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }

    /// Every endpoint this kind's settings name (for `check --connect`).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let pg = |d: &PostgresDsn| Endpoint::Postgres(d.clone());
        let rd = |d: &RedisDsn| Endpoint::Redis(d.clone());
        match self {
            KindSpec::OutboxRelay(s) => vec![pg(&s.postgres), rd(&s.redis)],
            KindSpec::MemorySync(s) => vec![pg(&s.postgres), Endpoint::Http(s.endpoint.clone())],
            KindSpec::StreamReplicator(s) => vec![rd(&s.redis), pg(&s.postgres)],
            KindSpec::DualWrite(s) => {
                let mut v = vec![rd(&s.redis), pg(&s.primary.postgres)];
                match &s.shadow {
                    ShadowStore::Postgres {
                        postgres: Some(p), ..
                    } => v.push(pg(p)),
                    ShadowStore::Postgres { postgres: None, .. } => {}
                    ShadowStore::Redis { redis, .. } => v.push(rd(redis)),
                }
                v
            }
            KindSpec::Retention(s) => vec![pg(&s.postgres)],
            _ => Vec::new(),
        }
    }
}

/// Something outside warden a service talks to.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Postgres(PostgresDsn),
    Redis(RedisDsn),
    Http(HttpUrl),
    Tcp(HostPort),
}

impl Endpoint {
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Postgres(_) => "postgres",
            Endpoint::Redis(_) => "redis",
            Endpoint::Http(_) => "http",
            Endpoint::Tcp(_) => "tcp",
        }
    }
    /// The target with passwords masked.
    pub fn display(&self) -> String {
        match self {
            Endpoint::Postgres(d) => d.0.redacted(),
            Endpoint::Redis(d) => d.0.redacted(),
            Endpoint::Http(u) => super::secret::redact(&u.0),
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
}

/// The schema of the service table of one kind.
pub(super) fn service_schema(kind: Kind) -> Json {
    let mut s = ObjectSchema::new(&format!("A service of kind {kind}."));
    s.property("kind", json!({"const": kind.as_str()}), true);
    CommonSpec::schema_fields(&mut s);
    match kind {
        Kind::Process => ProcessSpec::schema_fields(&mut s),
        Kind::External | Kind::Api => {}
        Kind::OutboxRelay => OutboxRelaySpec::schema_fields(&mut s),
        Kind::MemorySync => MemorySyncSpec::schema_fields(&mut s),
        Kind::StreamReplicator => StreamReplicatorSpec::schema_fields(&mut s),
        Kind::DualWrite => DualWriteSpec::schema_fields(&mut s),
        Kind::Retention => RetentionSpec::schema_fields(&mut s),
    }
    s.build()
}

/// Decodes the kind-specific keys of a service table.
pub(super) fn decode_kind(
    kind: Kind,
    r: &mut TableReader<'_>,
    cx: &mut Cx<'_>,
) -> Option<KindSpec> {
    Some(match kind {
        Kind::Process => KindSpec::Process(ProcessSpec::decode_fields(r, cx)?),
        Kind::External => KindSpec::External,
        Kind::Api => KindSpec::Api,
        Kind::OutboxRelay => KindSpec::OutboxRelay(OutboxRelaySpec::decode_fields(r, cx)?),
        Kind::MemorySync => KindSpec::MemorySync(MemorySyncSpec::decode_fields(r, cx)?),
        Kind::StreamReplicator => {
            KindSpec::StreamReplicator(StreamReplicatorSpec::decode_fields(r, cx)?)
        }
        Kind::DualWrite => KindSpec::DualWrite(DualWriteSpec::decode_fields(r, cx)?),
        Kind::Retention => KindSpec::Retention(RetentionSpec::decode_fields(r, cx)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_used_as_defaults_have_a_default_for_every_key() {
        assert!(Backoff::all_defaults().is_some());
        assert!(RestartSpec::all_defaults().is_some());
        assert!(StopSpec::all_defaults().is_some());
        assert!(Circuit::all_defaults().is_some());
        assert!(Thresholds::all_defaults().is_some());
        assert!(ApiSpec::all_defaults().is_some());
        assert!(WardenSpec::all_defaults().is_some());
    }

    #[test]
    fn raw_identifiers_are_keys_without_prefix() {
        assert!(RetentionRule::KEYS.contains(&"where"));
    }
}
