//! The loader with a table of kinds made here: how a kind's registration
//! decides what its services may say (settings, probes, oneshot, actions,
//! singletons), its own checks, its schema, and the typed settings a
//! service ends up with.

use std::path::PathBuf;
use std::sync::Arc;

use super::decode::config_table;
use super::kind::Problems;
use super::types::PostgresDsn;
use super::*;

config_table! {
    /// `kind = "worker"`, a kind of these tests.
    pub struct WorkerSettings {
        /// Its database.
        pub postgres: PostgresDsn,
        /// Rows per batch.
        pub batch: u32 = 10,
        /// At most this many.
        pub limit: u32 = 100,
    }
}

impl Settings for WorkerSettings {
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![Endpoint::Postgres(self.postgres.clone().into())]
    }
    fn leadership(&self) -> Option<&PostgresDsn> {
        Some(&self.postgres)
    }
    fn check(&self, problems: &mut Problems<'_>) {
        if self.batch > self.limit {
            problems.error(
                "invalid-value",
                &["batch"],
                format!("{} is above limit ({})", self.batch, self.limit),
            );
        }
    }
}

/// A process kind, a check kind and two in-process kinds (one may be
/// oneshot, one runs continuously).
fn table() -> KindTable {
    let mut t = KindTable::new();
    t.add(KindDef::new::<NoSettings>("proc", Runs::Process));
    t.add(KindDef::new::<NoSettings>("probe", Runs::Check));
    t.add(
        KindDef::new::<WorkerSettings>("worker", Runs::InProcess)
            .continuous()
            .action(Action::new("flush", "Flushes.")),
    );
    t.add(KindDef::new::<NoSettings>("job", Runs::InProcess));
    t
}

fn load_with(text: &str, profile: Option<&str>) -> Loaded {
    let opts = LoadOptions {
        path: PathBuf::from("services.toml"),
        profile: profile.map(str::to_string),
        kinds: Arc::new(table()),
    };
    load_text(
        &opts,
        text.to_string(),
        &crate::config::NoSources,
        Default::default(),
    )
}

/// Every diagnostic as `LINE:COL code: message`.
fn diags(text: &str) -> Vec<String> {
    let l = load_with(text, None);
    l.diagnostics
        .iter()
        .map(|d| {
            let j = d.to_json(&l.sources);
            format!(
                "{}:{} {}: {}",
                j.line.unwrap_or(0),
                j.column.unwrap_or(0),
                j.code,
                j.message
            )
        })
        .collect()
}

const WORKER: &str = "[services.w]\nkind = \"worker\"\npostgres = \"postgres://u:pw@db/app\"\n";

#[test]
fn a_service_gets_its_kinds_typed_settings_with_defaults() {
    let l = load_with(&format!("{WORKER}batch = 5\n"), None);
    let reg = l.registry.expect("valid");
    let w = &reg.services["w"];
    assert_eq!(w.kind.kind_name(), "worker");
    let s = w
        .kind
        .settings::<WorkerSettings>()
        .expect("worker settings");
    assert_eq!((s.batch, s.limit), (5, 100));
    assert_eq!(s.postgres.0.expose(), "postgres://u:pw@db/app");
    assert!(w.kind.settings::<NoSettings>().is_none());
    assert_eq!(w.kind.endpoints().len(), 1);
    assert_eq!(w.kind.leadership(), Some(s.postgres.clone().into()));
    // The API is there, with a kind of its own and no settings.
    assert!(reg.services["api"].is_api());
    assert!(!w.is_api());
    assert_eq!(reg.services["api"].kind.endpoints(), vec![]);
    assert_eq!(reg.services["api"].kind.leadership(), None);
    // The JSON form has the kind's keys, its defaults and no secret.
    let j = w.to_json();
    assert_eq!(j["kind"], "worker");
    assert_eq!(j["limit"], 100);
    assert_eq!(j["postgres"], "postgres://u:***@db/app");
}

#[test]
fn kind_specs_are_equal_only_with_the_same_kind_and_settings() {
    let a = load_with(WORKER, None).registry.unwrap();
    let b = load_with(WORKER, None).registry.unwrap();
    let c = load_with(&format!("{WORKER}batch = 6\n"), None)
        .registry
        .unwrap();
    assert_eq!(a.services["w"].kind, b.services["w"].kind);
    assert_ne!(a.services["w"].kind, c.services["w"].kind);
    let p = KindSpec::new("proc", NoSettings);
    assert_eq!(p, KindSpec::new("proc", NoSettings));
    assert_ne!(
        p,
        KindSpec::new("job", NoSettings),
        "same settings, other kind"
    );
    assert_ne!(p, a.services["w"].kind, "other settings type");
}

#[test]
fn a_kind_the_table_does_not_have_is_refused_with_the_ones_it_has() {
    assert_eq!(
        diags("[services.x]\nkind = \"wroker\"\n"),
        vec![
            "2:8 unknown-kind: services.x.kind: unknown kind \"wroker\"; this build has: proc, probe, worker, job"
        ]
    );
    assert_eq!(
        diags("[services.x]\nkind = \"api\"\n"),
        vec![
            "2:8 invalid-kind: services.x.kind: kind \"api\" is built in: configure the API under [api], not as a service"
        ]
    );
}

#[test]
fn a_kinds_unknown_and_missing_keys_are_reported_with_their_place() {
    assert_eq!(
        diags("[services.w]\nkind = \"worker\"\nbtach = 1\n"),
        vec![
            "1:1 missing-key: services.w: missing required key `postgres`",
            "3:1 unknown-key: services.w: unknown key `btach`; known: kind, description, enabled, critical, main, oneshot, depends_on, on_dependency_restart, start_timeout, restart, stop, ready, health, singleton, schedule, postgres, batch, limit",
        ]
    );
}

#[test]
fn a_kinds_own_check_runs_after_typing() {
    assert_eq!(
        diags(&format!("{WORKER}batch = 500\n")),
        vec!["4:9 invalid-value: services.w.batch: 500 is above limit (100)"]
    );
}

#[test]
fn how_a_kind_runs_decides_its_probes_and_oneshot() {
    assert_eq!(
        diags("[services.p]\nkind = \"probe\"\n"),
        vec![
            "1:1 missing-key: services.p: kind probe needs a `ready` probe: the check of the thing warden does not run, e.g. ready = { tcp = \"db:5432\" }"
        ]
    );
    assert_eq!(
        diags("[services.p]\nkind = \"probe\"\nready = { tcp = \"db:5432\" }\noneshot = true\n"),
        vec![
            "4:11 invalid-value: services.p.oneshot: kind probe runs continuously and cannot be oneshot"
        ]
    );
    assert_eq!(
        diags("[services.j]\nkind = \"job\"\nready = { tcp = \"db:5432\" }\n"),
        vec![
            "3:9 invalid-probe: services.j.ready: kind job says when it is ready itself; remove `ready` (use `health` for an extra liveness check)"
        ]
    );
    assert_eq!(
        diags("[services.p]\nkind = \"probe\"\nready = { log = \"up\" }\n"),
        vec![
            "3:9 invalid-probe: services.p.ready: a log probe reads a child process's output or socket; kind probe has none"
        ]
    );
    // A process may use log and notify, and be a oneshot; so may an
    // in-process kind unless it runs continuously.
    assert_eq!(
        diags(
            "[services.a]\nkind = \"proc\"\nready = { log = \"up\" }\noneshot = true\n[services.j]\nkind = \"job\"\noneshot = true\n"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        diags(&format!("{WORKER}oneshot = true\n")),
        vec![
            "4:11 invalid-value: services.w.oneshot: kind worker runs continuously and cannot be oneshot"
        ]
    );
}

#[test]
fn a_stop_signal_warns_only_for_a_kind_that_runs_inside_warden() {
    assert_eq!(
        diags("[services.j]\nkind = \"job\"\nstop = { signal = \"SIGINT\" }\n"),
        vec![
            "3:19 ignored-key: services.j.stop.signal has no effect: kind job runs inside warden and is stopped by cancellation"
        ]
    );
    assert_eq!(
        diags(
            "[services.a]\nkind = \"proc\"\nstop = { signal = \"SIGINT\" }\n[services.p]\nkind = \"probe\"\nready = { tcp = \"h:1\" }\nstop = { signal = \"SIGINT\" }\n"
        ),
        Vec::<String>::new()
    );
}

#[test]
fn schedules_name_actions_of_the_kind() {
    assert_eq!(
        diags(&format!(
            "{WORKER}[[services.w.schedule]]\naction = \"flsh\"\nevery = \"1m\"\n"
        )),
        vec![
            "5:10 unknown-action: services.w.schedule.0.action: \"flsh\" is not an action of kind worker; known: flush (did you mean \"flush\"?)"
        ]
    );
    assert_eq!(
        diags(&format!(
            "{WORKER}[[services.w.schedule]]\naction = \"flush\"\nevery = \"1m\"\n"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn a_singleton_takes_its_kinds_database_or_the_coordination_one() {
    assert_eq!(
        diags(&format!("{WORKER}singleton = true\n")),
        Vec::<String>::new(),
        "the worker's settings name its database"
    );
    assert_eq!(
        diags("[services.j]\nkind = \"job\"\nsingleton = true\n"),
        vec![
            "3:13 missing-key: services.j.singleton: a singleton takes a PostgreSQL advisory lock, but this service has no `postgres` setting and [warden] postgres is not set"
        ]
    );
    assert_eq!(
        diags(
            "[warden]\npostgres = \"postgres://db/locks\"\n[services.j]\nkind = \"job\"\nsingleton = true\n"
        ),
        Vec::<String>::new()
    );
}

#[test]
fn a_profile_that_changes_the_kind_keeps_only_the_keys_the_new_kind_takes() {
    let text = format!("{WORKER}critical = true\n[profiles.lite.services.w]\nkind = \"job\"\n");
    let l = load_with(&text, Some("lite"));
    assert_eq!(
        l.diagnostics
            .iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
    let w = &l.registry.unwrap().services["w"];
    assert_eq!(w.kind.kind_name(), "job");
    assert!(w.common.critical, "a common key survives the swap");
}

#[test]
fn the_schema_has_one_branch_per_writable_kind() {
    let s = schema::registry_schema(&table());
    let service = &s["properties"]["services"]["additionalProperties"];
    assert_eq!(
        service["properties"]["kind"]["enum"],
        serde_json::json!(["proc", "probe", "worker", "job"])
    );
    let worker = &service["oneOf"][2];
    assert_eq!(worker["properties"]["kind"]["const"], "worker");
    assert_eq!(worker["properties"]["limit"]["default"], 100);
    assert_eq!(
        worker["properties"]["batch"]["description"],
        "Rows per batch."
    );
    assert!(worker["properties"]["postgres_file"].is_object());
    assert!(
        worker["properties"]["depends_on"].is_object(),
        "common keys too"
    );
    assert_eq!(worker["additionalProperties"], false);
    let mut with_api = table();
    with_api.add(KindDef::new::<NoSettings>(API_KIND, Runs::InProcess));
    assert_eq!(with_api.names(), vec!["proc", "probe", "worker", "job"]);
    assert_eq!(
        schema::registry_schema(&with_api)["properties"]["services"]["additionalProperties"]
            ["oneOf"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
}

#[test]
fn a_later_registration_of_a_name_replaces_the_earlier_one() {
    let mut t = table();
    assert_eq!(t.get("job").map(KindDef::runs), Some(Runs::InProcess));
    t.add(KindDef::new::<NoSettings>("job", Runs::Process));
    assert_eq!(t.get("job").map(KindDef::runs), Some(Runs::Process));
    assert_eq!(t.names().len(), 4);
    let worker = t.get("worker").unwrap();
    assert!(!worker.may_be_oneshot());
    assert!(t.get("job").unwrap().may_be_oneshot());
    assert!(!t.get("probe").unwrap().may_be_oneshot());
    assert_eq!(worker.action_names(), vec!["flush"]);
    assert_eq!(worker.keys(), &["postgres", "batch", "limit"]);
    assert_eq!(worker.name(), "worker");
}

/// The variables that filled a secret setting, which children do not
/// inherit: those read by a key that names a secret, and those whose value
/// ends up holding one (a DSN's password), not the others.
#[test]
fn the_variables_behind_secrets_are_known() {
    struct Env;
    impl Sources for Env {
        fn read(&self, path: &std::path::Path) -> std::io::Result<String> {
            crate::config::NoSources.read(path)
        }
        fn var(&self, name: &str) -> Option<String> {
            Some(match name {
                "KEY" => "k-123".into(),
                "DB_URL" => "postgres://app:pw@db/app".into(),
                "DB_PASS" => "pw".into(),
                "HOST" => "db".into(),
                "PLAIN_DB" => "postgres://app@db/app".into(),
                _ => return None,
            })
        }
    }
    let opts = LoadOptions {
        path: PathBuf::from("services.toml"),
        profile: None,
        kinds: Arc::new(table()),
    };
    let loaded = load_text(
        &opts,
        r#"
[api]
token = "${KEY}"
[services.a]
kind = "worker"
postgres = "${DB_URL}"
[services.b]
kind = "worker"
postgres = "postgres://app:${DB_PASS}@${HOST}/app"
[services.c]
kind = "worker"
postgres = "${PLAIN_DB}"
"#
        .to_string(),
        &Env,
        Default::default(),
    );
    let registry = loaded.registry.expect("valid");
    let vars: Vec<&str> = registry.secret_vars.iter().map(String::as_str).collect();
    // HOST sits in a string that holds a password: it goes with it.
    assert_eq!(vars, ["DB_PASS", "DB_URL", "HOST", "KEY"]);
}

#[test]
fn amounts_of_memory_take_iec_and_si_units() {
    use super::types::ByteSize;
    let cases = [
        ("65536", Some(65536)),
        ("64KiB", Some(64 << 10)),
        (" 16MiB ", Some(16 << 20)),
        ("16 MiB", Some(16 << 20)),
        ("2GiB", Some(2 << 30)),
        ("100kB", Some(100_000)),
        ("100KB", Some(100_000)),
        ("20MB", Some(20_000_000)),
        ("1GB", Some(1_000_000_000)),
        ("7B", Some(7)),
        ("16mib", None),
        ("MiB", None),
        ("1.5MiB", None),
        ("-1MiB", None),
        ("99999999999GiB", None),
    ];
    for (text, want) in cases {
        assert_eq!(ByteSize::parse(text), want, "{text:?}");
    }
    let reg = load_with("[warden]\nlog_memory = 131072\n", None)
        .registry
        .unwrap();
    assert_eq!(reg.warden.log_memory, ByteSize(128 << 10));
    assert_eq!(reg.warden.log_memory.to_json(), "128KiB");
    assert_eq!(ByteSize(16 << 20).to_json(), "16MiB");
    assert_eq!(ByteSize(100_000).to_json(), "100000B");
    let reg = load_with("", None).registry.unwrap();
    assert_eq!(reg.warden.log_memory, ByteSize(16 << 20), "the default");
    assert_eq!(
        diags("[warden]\nlog_memory = 1000\n"),
        vec![
            "2:14 invalid-value: warden.log_memory: 1000 bytes is too small; expected at least 64KiB"
        ]
    );
    assert_eq!(
        diags("[warden]\nlog_memory = true\n"),
        vec![
            "2:14 type: warden.log_memory: expected an amount of memory such as \"16MiB\", found boolean true"
        ]
    );
}

#[test]
fn a_table_is_told_what_it_lacks_naming_column_type_and_fix() {
    use super::TableNeeds;
    const COLUMNS: &[(&str, Option<&str>)] = &[
        ("id", Some("bigint")),
        ("topic", None),
        ("event_id", Some("uuid")),
    ];
    let needs = |create_schema| TableNeeds {
        table: "\"t\"".into(),
        columns: COLUMNS,
        create_schema,
        added: &["event_id"],
    };
    let cols = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let good = cols(&[
        ("id", "bigint"),
        ("topic", "text"),
        ("event_id", "uuid"),
        ("extra", "int"),
    ]);
    assert!(needs(false).problems(Some(&good)).is_empty());
    assert!(needs(true).problems(None).is_empty(), "made at the start");
    assert_eq!(
        needs(false).problems(None),
        [
            "table \"t\" does not exist (create it with the statements shipped in sql/, or set create_schema = true)"
        ]
    );
    let bad = cols(&[("id", "integer"), ("topic", "text")]);
    assert_eq!(
        needs(false).problems(Some(&bad)),
        [
            "table \"t\": column id is integer; warden needs bigint (ALTER TABLE \"t\" ALTER COLUMN id TYPE bigint)",
            "table \"t\" has no column event_id; warden needs event_id uuid (create_schema = true adds it at the start)",
        ]
    );
    assert_eq!(
        needs(true).problems(Some(&bad)).len(),
        1,
        "event_id is added at the start; id's type is not changed"
    );
    let no_topic = cols(&[("id", "bigint"), ("event_id", "uuid")]);
    assert_eq!(
        needs(true).problems(Some(&no_topic)),
        ["table \"t\" has no column topic; warden needs topic"]
    );
}
