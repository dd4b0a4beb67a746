//! Registry rules beyond single-value errors: profiles overlay
//! anything, env files and the process environment, `*_file` secrets,
//! defaults, and secrets masked in every output.

mod support;

use support::{MemSources, diagnostics, load};
use warden::config::{Condition, RestartPolicy};
use warden::services::outbox::OutboxRelaySpec;
use warden::services::process::ProcessSpec;

const BASE: &str = r#"
[warden]
profile = "dev"

[defaults]
restart = { policy = "always", max_restarts = 9 }
start_timeout = "7s"

[services.db]
kind = "process"
command = ["postgres"]
ready = { tcp = "127.0.0.1:5433" }
stop = { signal = "SIGINT" }
critical = false

[services.cache]
kind = "process"
command = ["redis-server"]
restart = { max_restarts = 2 }

[services.app]
kind = "process"
command = ["app"]
depends_on = { db = "ready", cache = "started" }

[profiles.prod.services.db]
kind = "external"
ready = { postgres = "${DATABASE_URL}" }
critical = true

[profiles.prod.services.cache]
enabled = false

[profiles.prod.services.app]
depends_on = ["db"]
"#;

#[test]
fn the_file_profile_applies_without_an_overlay_section() {
    let checked = load(&MemSources::new(BASE), None);
    let reg = checked.registry().expect("valid");
    assert_eq!(reg.profile.as_deref(), Some("dev"));
    assert!(reg.services["db"].kind.settings::<ProcessSpec>().is_some());
    assert!(!reg.services["db"].common.critical);
}

#[test]
fn a_profile_swaps_a_kind_keeps_common_keys_and_disables_services() {
    let sources = MemSources::new(BASE).env("DATABASE_URL", "postgres://app:pw@db.internal/app");
    let checked = load(&sources, Some("prod"));
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
    let reg = checked.registry().expect("valid");
    let db = &reg.services["db"];
    // The kind changed: process keys (command) are gone, common keys stay.
    assert_eq!(db.kind.kind_name(), "external");
    assert!(db.kind.settings::<ProcessSpec>().is_none());
    assert!(db.common.critical, "critical comes from the overlay");
    assert_eq!(
        db.common.stop.signal.name, "SIGINT",
        "a common key of the base survives the swap"
    );
    assert!(!reg.services["cache"].enabled());
    // The list form replaces the table form of depends_on.
    let deps: Vec<(&str, Condition)> = reg.services["app"]
        .common
        .depends_on
        .0
        .iter()
        .map(|d| (d.name.as_str(), d.condition))
        .collect();
    assert_eq!(deps, vec![("db", Condition::Ready)]);
    let g = checked.graph.as_ref().unwrap();
    assert!(
        !g.contains("cache"),
        "disabled services are not in the plan"
    );
}

#[test]
fn the_flag_beats_the_environment_which_beats_the_file() {
    let sources = MemSources::new(BASE)
        .env("WARDEN_PROFILE", "prod")
        .env("DATABASE_URL", "postgres://db/app");
    assert_eq!(
        load(&sources, None).registry().unwrap().profile.as_deref(),
        Some("prod")
    );
    assert_eq!(
        load(&sources, Some("dev"))
            .registry()
            .unwrap()
            .profile
            .as_deref(),
        Some("dev")
    );
}

#[test]
fn an_unknown_profile_from_the_command_line_lists_the_known_ones() {
    let checked = load(&MemSources::new(BASE), Some("prdo"));
    assert_eq!(
        diagnostics(&checked),
        vec![
            "unknown-profile: profile \"prdo\" (from --profile) is not defined; known: prod, dev [help: did you mean \"prod\"?]"
        ]
    );
}

#[test]
fn defaults_merge_under_each_service_and_the_service_wins() {
    let checked = load(&MemSources::new(BASE), None);
    let reg = checked.registry().unwrap();
    let db = &reg.services["db"].common;
    assert_eq!(db.restart.policy, RestartPolicy::Always);
    assert_eq!(db.restart.max_restarts, 9);
    assert_eq!(db.start_timeout.as_secs(), 7);
    let cache = &reg.services["cache"].common;
    assert_eq!(cache.restart.max_restarts, 2, "the service's own key wins");
    assert_eq!(
        cache.restart.policy,
        RestartPolicy::Always,
        "and the rest of the default table stays"
    );
}

const WITH_ENV: &str = r#"
[warden]
env_files = [".env"]

[services.relay]
kind = "outbox-relay"
postgres = "${DATABASE_URL}"
redis = "redis://${REDIS_HOST:-127.0.0.1}:6379"
"#;

#[test]
fn env_files_fill_variables_and_the_process_environment_wins() {
    let sources = MemSources::new(WITH_ENV).file(
        ".env",
        "DATABASE_URL=postgres://from-file/app\nREDIS_HOST=cache.local\n",
    );
    let reg_json = |s: &MemSources| {
        let c = load(s, None);
        assert_eq!(diagnostics(&c), Vec::<String>::new());
        c.registry().unwrap().services["relay"].to_json()
    };
    let j = reg_json(&sources);
    assert_eq!(j["postgres"], "postgres://from-file/app");
    assert_eq!(j["redis"], "redis://cache.local:6379");
    let sources = sources.env("DATABASE_URL", "postgres://from-env/app");
    assert_eq!(reg_json(&sources)["postgres"], "postgres://from-env/app");
}

#[test]
fn a_missing_env_file_and_a_bad_line_are_reported_where_they_are() {
    let checked = load(&MemSources::new(WITH_ENV), None);
    assert_eq!(
        diagnostics(&checked),
        vec![
            "3:14 file-read: warden.env_files: cannot read ./.env: No such file or directory (os error 2)",
            "7:13 missing-variable: services.relay.postgres: environment variable DATABASE_URL is not set [help: set DATABASE_URL in the environment or in an env file, or give a default: ${DATABASE_URL:-default}]",
        ]
    );
    let checked = load(
        &MemSources::new(WITH_ENV).file(
            ".env",
            "DATABASE_URL=postgres://db/app\nthis is not a pair\n",
        ),
        None,
    );
    let d = diagnostics(&checked);
    assert_eq!(
        d,
        vec![
            "3:14 env-file: warden.env_files: ./.env:2: expected KEY=value (the line is not shown: an env file may hold secrets)"
        ]
    );
    // The caret points at the file's name in the registry, and nothing of
    // the env file's text is shown.
    let rendered = checked
        .loaded
        .diagnostics
        .iter()
        .next()
        .unwrap()
        .render(&checked.loaded.sources);
    assert!(rendered.contains("--> services.toml:3:14"), "{rendered}");
    assert!(!rendered.contains("this is not a pair"), "{rendered}");
}

#[test]
fn secret_files_are_read_and_never_shown() {
    let text = r#"
[api]
token_file = "secrets/token"

[services.relay]
kind = "outbox-relay"
postgres_file = "secrets/db"
redis = "redis://:hunter2@127.0.0.1:6379"
"#;
    let sources = MemSources::new(text)
        .file("secrets/token", "t0ps3cret\n")
        .file("secrets/db", "postgres://app:dbpass@db/app\n");
    let checked = load(&sources, None);
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
    let reg = checked.registry().unwrap();
    assert_eq!(
        reg.api.token().map(|t| t.expose()),
        Some("t0ps3cret"),
        "the trailing newline is trimmed"
    );
    let relay = reg.services["relay"]
        .kind
        .settings::<OutboxRelaySpec>()
        .expect("kind");
    assert_eq!(relay.postgres.0.expose(), "postgres://app:dbpass@db/app");
    let shown = format!(
        "{:?} {} {}",
        reg,
        reg.services["relay"].to_json(),
        reg.api.token().unwrap()
    );
    for secret in ["t0ps3cret", "dbpass", "hunter2"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert!(shown.contains("postgres://app:***@db/app"));
}

/// A probe's DSN holds a password too: `postgres_file` and `redis_file`
/// stand in for it as they do for a kind's keys (the schema says so).
#[test]
fn probe_dsns_may_come_from_secret_files() {
    let text = r#"
[services.db]
kind = "external"
ready = { postgres_file = "secrets/db" }
health = { redis_file = "secrets/cache" }
"#;
    let sources = MemSources::new(text)
        .file("secrets/db", "postgres://app:dbpass@db/app\n")
        .file("secrets/cache", "redis://:cachepass@cache:6379\n");
    let checked = load(&sources, None);
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
    let db = &checked.registry().unwrap().services["db"];
    let ready = db.common.ready.as_ref().expect("ready probe");
    assert_eq!(ready.check.target(), "postgres://app:***@db/app");
    let health = db.common.health.as_ref().expect("health probe");
    assert_eq!(health.check.target(), "redis://:***@cache:6379");
    let both = "[services.db]\nkind = \"external\"\nready = { postgres = \"postgres://db/app\", postgres_file = \"secrets/db\" }\n";
    let checked = load(
        &MemSources::new(both).file("secrets/db", "postgres://db/x"),
        None,
    );
    assert_eq!(
        diagnostics(&checked),
        vec![
            "3:43 conflicting-keys: services.db.ready.postgres: both `postgres` and `postgres_file` are set; keep one"
        ]
    );
}

#[test]
fn a_secret_in_a_bad_value_is_masked_in_the_error_and_the_quoted_line() {
    let text = "[services.relay]\nkind = \"outbox-relay\"\npostgres = \"mysql://root:hunter2@db/app\"\nredis = \"redis://h:1\"\n";
    let checked = load(&MemSources::new(text), None);
    let rendered: String = checked
        .loaded
        .diagnostics
        .iter()
        .map(|d| d.render(&checked.loaded.sources))
        .collect();
    assert!(rendered.contains("mysql://root:***@db/app"), "{rendered}");
    assert!(!rendered.contains("hunter2"), "{rendered}");
}

#[test]
fn a_disabled_service_needs_none_of_its_variables() {
    let text = "[services.relay]\nkind = \"outbox-relay\"\nenabled = false\npostgres = \"${NOPE}\"\nredis = \"${NOPE_TOO}\"\n";
    let checked = load(&MemSources::new(text), None);
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
}

#[test]
fn only_selects_services_and_their_dependency_closure() {
    let sources = MemSources::new(BASE);
    let checked = load(&sources, None);
    let g = checked.graph.as_ref().unwrap();
    let only = g.select(&["app".to_string()]).unwrap();
    let mut names: Vec<&str> = only.names().collect();
    names.sort();
    assert_eq!(names, vec!["app", "cache", "db"]);
    let only = g.select(&["db".to_string()]).unwrap();
    assert_eq!(only.names().collect::<Vec<_>>(), vec!["db"]);
    assert_eq!(
        g.select(&["ap".to_string()]).unwrap_err().0,
        "--only \"ap\": no such enabled service; known: api, db, cache, app (did you mean \"api\"?)"
    );
}

warden::config_table! {
    /// `kind = "greeter"`, a kind of this test.
    pub struct Greeter {
        /// What to say.
        pub greeting: String,
        /// How many times.
        pub times: u32 = 1,
    }
}

impl warden::config::Settings for Greeter {}

#[test]
fn a_custom_kind_gets_its_own_typed_settings_and_common_keys_typed() {
    use std::path::PathBuf;
    use std::sync::Arc;
    use warden::config::{KindDef, LoadOptions, Runs};
    let text = r#"
[services.greeter]
kind = "greeter"
greeting = "hello"
times = 3
depends_on = ["api"]
restart = { policy = "always" }
"#;
    let sources = MemSources::new(text);
    let mut kinds = warden::services::builtin(PathBuf::from(".")).table();
    kinds.add(KindDef::new::<Greeter>("greeter", Runs::InProcess));
    let opts = LoadOptions {
        path: PathBuf::from("services.toml"),
        profile: None,
        kinds: Arc::new(kinds),
    };
    let checked = warden::graph::load_and_check(&opts, &sources);
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
    let s = &checked.registry().unwrap().services["greeter"];
    assert_eq!(s.kind.kind_name(), "greeter");
    assert_eq!(
        s.kind.settings::<Greeter>(),
        Some(&Greeter {
            greeting: "hello".into(),
            times: 3
        })
    );
    assert_eq!(s.common.restart.policy, RestartPolicy::Always);

    // A wrong key of the kind's is an error with its place, like a
    // built-in kind's.
    let bad = MemSources::new("[services.greeter]\nkind = \"greeter\"\ngreting = \"hi\"\n");
    let checked = warden::graph::load_and_check(&opts, &bad);
    let errors = diagnostics(&checked);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("1:1 missing-key: services.greeter: missing required key `greeting`")
            || errors[1]
                .starts_with("3:1 unknown-key: services.greeter.greting: unknown key `greting`"),
        "{errors:?}"
    );

    // Without the registration the kind is unknown, and the error says which
    // kinds this build has.
    let checked = load(&sources, None);
    assert_eq!(
        diagnostics(&checked),
        vec![
            "3:8 unknown-kind: services.greeter.kind: unknown kind \"greeter\"; this build has: process, external, outbox-relay, memory-sync, stream-replicator"
        ]
    );
}

#[test]
fn an_empty_registry_is_valid_and_runs_only_the_api() {
    let checked = load(&MemSources::new(""), None);
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
    assert_eq!(
        checked.graph.as_ref().unwrap().names().collect::<Vec<_>>(),
        vec!["api"]
    );
    let checked = load(&MemSources::new("[api]\nenabled = false\n"), None);
    assert!(checked.graph.as_ref().unwrap().is_empty());
}

/// A value read from a `*_file` is never quoted in a diagnostic (it
/// showed `"Hunter2-…" is not a PostgreSQL connection string`, and a
/// file such as /etc/shadow whole): the error names the file and what it
/// should hold, not what it holds.
#[test]
fn a_bad_secret_file_is_named_never_quoted() {
    let text = r#"
[services.relay]
kind = "outbox-relay"
postgres_file = "secrets/db"
redis_file = "secrets/cache"
"#;
    let sources = MemSources::new(text)
        .file("secrets/db", "Hunter2-only-a-password\n")
        .file("secrets/cache", "root:*:20228:0:99999:7:::\nbin:*:20228\n");
    let checked = load(&sources, None);
    let all = diagnostics(&checked);
    assert_eq!(all.len(), 2, "{all:?}");
    for secret in ["Hunter2", "root:*", "20228"] {
        assert!(
            !all.iter().any(|d| d.contains(secret)),
            "{secret} shown: {all:?}"
        );
    }
    let rendered: String = checked
        .loaded
        .diagnostics
        .iter()
        .map(|d| d.render(&checked.loaded.sources))
        .collect();
    assert!(
        !rendered.contains("Hunter2") && !rendered.contains("root:*"),
        "{rendered}"
    );
    assert!(
        all[0].contains("services.relay.postgres_file: the content of ./secrets/db is not a PostgreSQL connection string"),
        "{all:?}"
    );
    assert!(
        all[1].contains("the content of ./secrets/cache is not"),
        "{all:?}"
    );
}
