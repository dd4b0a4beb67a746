//! "Every error names what the user wrote and where": a table
//! of bad registries, each with the exact diagnostics `warden check` gives
//! (line:column, code, message with the alternatives, help).

mod support;

use support::{MemSources, diagnostics, load};

struct Case {
    name: &'static str,
    registry: &'static str,
    expected: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "toml_syntax",
        registry: r#"[services.a]
kind = "process"
command = ["x"
"#,
        expected: &["3:15 toml-syntax: invalid TOML: unclosed array, expected `]`"],
    },
    Case {
        name: "unknown_top_level_key",
        registry: r#"[warden]
shutdown_timeout = "5s"
[service.a]
kind = "process"
"#,
        expected: &[
            "3:2 unknown-key: unknown key `service`; known: warden, api, defaults, services, profiles [help: did you mean `services`?]",
        ],
    },
    Case {
        name: "unknown_service_key_suggests",
        registry: r#"[services.a]
kind = "process"
comand = ["x"]
"#,
        expected: &[
            "1:1 missing-key: services.a: missing required key `command`",
            "3:1 unknown-key: services.a: unknown key `comand`; known: kind, description, enabled, critical, main, oneshot, depends_on, on_dependency_restart, start_timeout, restart, stop, ready, health, singleton, schedule, command, args, env, env_files, inherit_env, cwd, user, success_exit_codes [help: did you mean `command`?]",
        ],
    },
    Case {
        name: "missing_kind",
        registry: r#"[services.a]
command = ["x"]
"#,
        expected: &["1:1 missing-key: services.a: missing required key `kind`"],
    },
    Case {
        name: "unknown_kind_suggests",
        registry: r#"[services.a]
kind = "outbox-rely"
"#,
        expected: &[
            "2:8 unknown-kind: services.a.kind: unknown kind \"outbox-rely\"; this build has: process, external, outbox-relay, memory-sync, stream-replicator [help: did you mean \"outbox-relay\"?]",
        ],
    },
    Case {
        name: "api_kind_is_reserved",
        registry: r#"[services.web]
kind = "api"
"#,
        expected: &[
            "2:8 invalid-kind: services.web.kind: kind \"api\" is built in: configure the API under [api], not as a service",
        ],
    },
    Case {
        name: "process_without_command",
        registry: r#"[services.a]
kind = "process"
"#,
        expected: &["1:1 missing-key: services.a: missing required key `command`"],
    },
    Case {
        name: "command_as_string",
        registry: r#"[services.a]
kind = "process"
command = "redis-server --port 6390"
"#,
        expected: &[
            "3:11 type: services.a.command: expected an array of strings, found \"redis-server --port 6390\"; write the program and its arguments as [\"prog\", \"arg\", ...], or [\"sh\", \"-c\", \"...\"] for a shell line",
        ],
    },
    Case {
        name: "empty_command",
        registry: r#"[services.a]
kind = "process"
command = []
"#,
        expected: &[
            "3:11 invalid-value: services.a.command: the command is empty; it needs at least the program to run",
        ],
    },
    Case {
        name: "bad_duration",
        registry: r#"[services.a]
kind = "process"
command = ["x"]
start_timeout = "5 parsecs"
"#,
        expected: &[
            "4:17 invalid-duration: services.a.start_timeout: \"5 parsecs\" is not a duration; expected a number with a unit, such as \"250ms\", \"5s\" or \"1h30m\"",
        ],
    },
    Case {
        name: "duration_as_integer",
        registry: r#"[warden]
shutdown_timeout = 30
"#,
        expected: &[
            "2:20 type: warden.shutdown_timeout: expected a duration string such as \"250ms\", \"5s\" or \"1h30m\", found integer 30",
        ],
    },
    Case {
        name: "unknown_signal",
        registry: r#"[services.a]
kind = "process"
command = ["x"]
stop = { signal = "SIGSTAHP" }
"#,
        expected: &[
            "4:19 invalid-signal: services.a.stop.signal: unknown signal \"SIGSTAHP\"; known: SIGHUP, SIGINT, SIGQUIT, SIGABRT, SIGKILL, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGCONT, SIGWINCH, SIGPWR",
        ],
    },
    Case {
        name: "unknown_restart_policy_suggests",
        registry: r#"[services.a]
kind = "process"
command = ["x"]
restart = { policy = "on_failure" }
"#,
        expected: &[
            "4:22 invalid-value: services.a.restart.policy: unknown value \"on_failure\"; expected one of always, on-failure, never [help: did you mean \"on-failure\"?]",
        ],
    },
    Case {
        name: "negative_max_restarts",
        registry: r#"[services.a]
kind = "process"
command = ["x"]
restart = { max_restarts = -1 }
"#,
        expected: &[
            "4:28 invalid-value: services.a.restart.max_restarts: -1 is out of range; expected an integer from 0 to 4294967295",
        ],
    },
    Case {
        name: "jitter_out_of_range",
        registry: r#"[services.a]
kind = "process"
command = ["x"]
restart = { backoff = { jitter = 1.5 } }
"#,
        expected: &[
            "4:34 invalid-value: services.a.restart.backoff.jitter: 1.5 is out of range; expected a number from 0 to 1",
        ],
    },
    Case {
        name: "multiplier_below_one",
        registry: r#"[services.a]
kind = "process"
command = ["x"]
restart = { backoff = { multiplier = 0.5 } }
"#,
        expected: &[
            "4:38 invalid-value: services.a.restart.backoff.multiplier: 0.5 is below 1; the delay must not shrink between restarts",
        ],
    },
    Case {
        name: "backoff_initial_above_max",
        registry: r#"[services.a]
kind = "process"
command = ["x"]
restart = { backoff = { initial = "1m", max = "10s" } }
"#,
        expected: &[
            "4:35 invalid-value: services.a.restart.backoff.initial: 1m is longer than backoff.max (10s)",
        ],
    },
    Case {
        name: "unknown_dependency_lists_known",
        registry: r#"[services.postgres]
kind = "process"
command = ["postgres"]
[services.redis]
kind = "process"
command = ["redis-server"]
[services.relay]
kind = "process"
command = ["relay"]
depends_on = ["pg", "redis"]
"#,
        expected: &[
            "10:15 unknown-dependency: services.relay: depends_on \"pg\": no such service; known: api, postgres, redis",
        ],
    },
    Case {
        name: "unknown_dependency_suggests",
        registry: r#"[services.postgres]
kind = "process"
command = ["postgres"]
[services.relay]
kind = "process"
command = ["relay"]
depends_on = ["postgre"]
"#,
        expected: &[
            "7:15 unknown-dependency: services.relay: depends_on \"postgre\": no such service; known: api, postgres [help: did you mean \"postgres\"?]",
        ],
    },
    Case {
        name: "cycle_prints_whole_chain",
        registry: r#"[api]
enabled = false
[services.a]
kind = "process"
command = ["a"]
depends_on = ["b"]
[services.b]
kind = "process"
command = ["b"]
depends_on = ["c"]
[services.c]
kind = "process"
command = ["c"]
depends_on = ["a"]
"#,
        expected: &[
            "6:15 dependency-cycle: dependency cycle: a -> b -> c -> a [help: each arrow reads \"depends on\"; remove one of these dependencies]",
        ],
    },
    Case {
        name: "two_cycles_both_reported",
        registry: r#"[api]
enabled = false
[services.a]
kind = "process"
command = ["a"]
depends_on = ["b"]
[services.b]
kind = "process"
command = ["b"]
depends_on = ["a"]
[services.x]
kind = "process"
command = ["x"]
depends_on = ["y"]
[services.y]
kind = "process"
command = ["y"]
depends_on = ["x"]
"#,
        expected: &[
            "6:15 dependency-cycle: dependency cycle: a -> b -> a [help: each arrow reads \"depends on\"; remove one of these dependencies]",
            "14:15 dependency-cycle: dependency cycle: x -> y -> x [help: each arrow reads \"depends on\"; remove one of these dependencies]",
        ],
    },
    Case {
        name: "self_dependency",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
depends_on = ["a"]
"#,
        expected: &[
            "4:15 self-dependency: services.a: depends_on \"a\": a service cannot depend on itself",
        ],
    },
    Case {
        name: "completed_needs_oneshot",
        registry: r#"[services.db]
kind = "process"
command = ["db"]
[services.app]
kind = "process"
command = ["app"]
depends_on = { db = "completed" }
"#,
        expected: &[
            "7:16 completed-needs-oneshot: services.app: depends_on \"db\" = \"completed\": db is not a oneshot service, so it never completes [help: use \"ready\" or \"started\", or set oneshot = true on db]",
        ],
    },
    Case {
        name: "disabled_dependency",
        registry: r#"[warden]
profile = "dev"
[services.db]
kind = "process"
command = ["db"]
[services.app]
kind = "process"
command = ["app"]
depends_on = ["db"]
[profiles.dev.services.db]
enabled = false
"#,
        expected: &[
            "9:15 disabled-dependency: services.app: depends_on \"db\": that service is disabled in profile \"dev\"; enabled: api [help: enable db in this profile, or disable app too]",
        ],
    },
    Case {
        name: "duplicate_dependency",
        registry: r#"[services.db]
kind = "process"
command = ["db"]
[services.app]
kind = "process"
command = ["app"]
depends_on = ["db", "db"]
"#,
        expected: &["7:21 duplicate-dependency: services.app: depends_on \"db\": listed twice"],
    },
    Case {
        name: "unknown_condition",
        registry: r#"[services.db]
kind = "process"
command = ["db"]
[services.app]
kind = "process"
command = ["app"]
depends_on = { db = "healthy" }
"#,
        expected: &[
            "7:21 invalid-value: services.app.depends_on.db: unknown value \"healthy\"; expected one of started, ready, completed",
        ],
    },
    Case {
        name: "missing_variable",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "${DATABASE_URL}"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "3:13 missing-variable: services.relay.postgres: environment variable DATABASE_URL is not set [help: set DATABASE_URL in the environment or in an env file, or give a default: ${DATABASE_URL:-default}]",
        ],
    },
    Case {
        name: "missing_variable_with_message",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "${DATABASE_URL:?the outbox database}"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "3:13 missing-variable: services.relay.postgres: environment variable DATABASE_URL is not set: the outbox database",
        ],
    },
    Case {
        name: "every_missing_variable_reported",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://${PGUSER}@${PGHOST}/app"
redis = "${REDIS_URL}"
"#,
        expected: &[
            "3:24 missing-variable: services.relay.postgres: environment variable PGUSER is not set [help: set PGUSER in the environment or in an env file, or give a default: ${PGUSER:-default}]",
            "3:34 missing-variable: services.relay.postgres: environment variable PGHOST is not set [help: set PGHOST in the environment or in an env file, or give a default: ${PGHOST:-default}]",
            "4:10 missing-variable: services.relay.redis: environment variable REDIS_URL is not set [help: set REDIS_URL in the environment or in an env file, or give a default: ${REDIS_URL:-default}]",
        ],
    },
    Case {
        name: "bad_interpolation_syntax",
        registry: r#"[services.a]
kind = "process"
command = ["echo", "${1BAD}"]
"#,
        expected: &[
            "3:21 invalid-interpolation: services.a.command.1: `${1BAD}` is not a variable reference; expected ${NAME}, ${NAME:-default} or ${NAME:?message}",
        ],
    },
    Case {
        name: "bad_table_identifier",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
table = "outbox; drop table users"
"#,
        expected: &[
            "5:9 invalid-identifier: services.relay.table: \"outbox; drop table users\" is not a valid table name (schema.table or table; each part letters, digits and _, not starting with a digit, at most 63 characters)",
        ],
    },
    Case {
        name: "a_kind_this_build_does_not_have",
        registry: r#"[services.clean]
kind = "retention"
postgres = "postgres://db/app"
[[services.clean.rules]]
table = "events"
column = "created-at"
keep = "30d"
"#,
        expected: &[
            "2:8 unknown-kind: services.clean.kind: unknown kind \"retention\"; this build has: process, external, outbox-relay, memory-sync, stream-replicator",
        ],
    },
    Case {
        name: "another_kind_this_build_does_not_have",
        registry: r#"[services.dual]
kind = "dual-write"
"#,
        expected: &[
            "2:8 unknown-kind: services.dual.kind: unknown kind \"dual-write\"; this build has: process, external, outbox-relay, memory-sync, stream-replicator",
        ],
    },
    Case {
        name: "replicator_settings_that_cannot_work",
        registry: r#"[services.rep]
kind = "stream-replicator"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
streams = ["a", "", "a"]
group = " "
min_idle = "0s"
max_deliveries = 0
columns = { id = "event_id", x = "c", y = "c" }

[services.none]
kind = "stream-replicator"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
streams = []
columns = {}
"#,
        expected: &[
            "5:11 invalid-value: services.rep.streams: stream 2 is empty: name a Redis stream",
            "5:11 invalid-value: services.rep.streams: stream \"a\" is named twice",
            "6:9 invalid-value: services.rep.group: an empty group name: leave group out to use the service's name",
            "7:12 invalid-value: services.rep.min_idle: 0s is below the minimum of 1s: a shorter one takes entries over from a consumer that is still applying them",
            "8:18 invalid-value: services.rep.max_deliveries: 0 is below the minimum of 1: every entry would go to the dead-letter queue unread",
            "9:18 invalid-value: services.rep.columns.id: event_id is filled by the replicator (the entry's outbox_id, else its stream and id): map the key to another column",
            "9:43 invalid-value: services.rep.columns.y: column c is mapped twice",
            "15:11 invalid-value: services.none.streams: no stream to read: name at least one, such as [\"orders\"]",
            "16:11 invalid-value: services.none.columns: no column: map at least one payload key to a column, or leave columns out for the built-in layout",
        ],
    },
    Case {
        name: "bad_postgres_dsn",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "mysql://root:hunter2@db/app"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "3:12 invalid-dsn: services.relay.postgres: \"mysql://root:***@db/app\" is not a PostgreSQL connection string; expected postgres://user@host:port/database or host=... dbname=...",
        ],
    },
    Case {
        name: "bad_redis_url",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "127.0.0.1:6379"
"#,
        expected: &[
            "4:9 invalid-dsn: services.relay.redis: \"127.0.0.1:6379\" is not a Redis URL; expected redis://host:port[/db], rediss://... or unix:///path",
        ],
    },
    Case {
        name: "bad_sslmode",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://app:hunter2@db/app?sslmode=verify_full"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "3:12 invalid-dsn: services.relay.postgres: \"postgres://app:***@db/app?sslmode=verify_full\": sslmode \"verify_full\" is not one of disable, prefer, require, verify-ca, verify-full",
        ],
    },
    Case {
        name: "sslmode_allow_is_not_offered",
        registry: r#"[services.db]
kind = "external"
ready = { postgres = "host=db dbname=app sslmode=allow" }
"#,
        expected: &[
            "3:22 invalid-dsn: services.db.ready.postgres: \"host=db dbname=app sslmode=allow\": sslmode \"allow\" is not supported (it tries a plain connection first); use prefer, require or a verify mode",
        ],
    },
    Case {
        name: "sslrootcert_that_cannot_be_read",
        registry: r#"[warden]
postgres = "postgres://db/app?sslmode=verify-full&sslrootcert=/no/such/ca.pem"
"#,
        expected: &[
            "2:12 file-read: warden.postgres: sslrootcert cannot read the CA file /no/such/ca.pem: No such file or directory (os error 2)",
        ],
    },
    Case {
        name: "unknown_dsn_option",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app?sslmod=require"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "3:12 invalid-dsn: services.relay.postgres: \"postgres://db/app?sslmod=require\": unknown option `***`",
        ],
    },
    Case {
        name: "client_certificates_are_not_offered",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "host=db sslmode=verify-full sslcert=/c.pem sslkey=/c.key"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "3:12 invalid-dsn: services.relay.postgres: \"host=db sslmode=verify-full sslcert=/c.pem sslkey=/c.key\": sslcert: client certificates are not supported",
        ],
    },
    Case {
        name: "tls_ca_that_cannot_be_read",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app?sslmode=verify-full"
redis = "rediss://cache:6380"
tls_ca = "/no/such/ca.pem"
"#,
        expected: &[
            "5:10 file-read: services.relay.tls_ca: cannot read the CA file /no/such/ca.pem: No such file or directory (os error 2)",
        ],
    },
    Case {
        name: "rediss_with_an_unknown_fragment",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "rediss://:hunter2@cache:6380#insecur"
"#,
        expected: &[
            "4:9 invalid-dsn: services.relay.redis: \"rediss://:***@cache:6380#insecur\": #insecur is not understood after a rediss:// URL; only #insecure (TLS without verifying the certificate) is",
        ],
    },
    Case {
        name: "redis_url_with_a_bad_database",
        registry: r#"[services.cache]
kind = "external"
ready = { redis = "redis://127.0.0.1:6379/zero" }
"#,
        expected: &[
            "3:19 invalid-dsn: services.cache.ready.redis: \"redis://127.0.0.1:6379/zero\": Invalid database number",
        ],
    },
    Case {
        name: "tls_ca_on_a_check_without_tls",
        registry: r#"[services.web]
kind = "external"
ready = { http = "http://127.0.0.1:8080/", tls_ca = "/etc/ssl/certs/ca-certificates.crt" }
"#,
        expected: &[
            "3:9 invalid-probe: services.web.ready: `tls_ca` applies to the postgres and redis checks, not to http",
        ],
    },
    Case {
        name: "secret_and_secret_file",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
postgres_file = "/run/secrets/db"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "4:1 conflicting-keys: services.relay.postgres: both `postgres` and `postgres_file` are set; keep one",
        ],
    },
    Case {
        name: "secret_file_missing",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres_file = "secrets/db_url"
redis = "redis://127.0.0.1:6379"
"#,
        expected: &[
            "3:17 file-read: services.relay.postgres_file: cannot read secret file ./secrets/db_url: No such file or directory (os error 2)",
        ],
    },
    Case {
        name: "probe_with_two_checks",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
ready = { tcp = "127.0.0.1:80", http = "http://127.0.0.1/" }
"#,
        expected: &[
            "4:9 invalid-probe: services.a.ready: a probe checks one thing, found tcp and http; split them or keep one",
        ],
    },
    Case {
        name: "probe_with_no_check",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
ready = { interval = "1s" }
"#,
        expected: &[
            "4:9 invalid-probe: services.a.ready: a probe needs one of tcp, http, exec, postgres, redis, log, notify",
        ],
    },
    Case {
        name: "external_without_ready",
        registry: r#"[services.db]
kind = "external"
"#,
        expected: &[
            "1:1 missing-key: services.db: kind external needs a `ready` probe: the check of the thing warden does not run, e.g. ready = { tcp = \"db:5432\" }",
        ],
    },
    Case {
        name: "ready_on_in_process_kind",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
ready = { tcp = "127.0.0.1:6379" }
"#,
        expected: &[
            "5:9 invalid-probe: services.relay.ready: kind outbox-relay says when it is ready itself; remove `ready` (use `health` for an extra liveness check)",
        ],
    },
    Case {
        name: "log_probe_on_external",
        registry: r#"[services.db]
kind = "external"
ready = { log = "ready" }
"#,
        expected: &[
            "3:9 invalid-probe: services.db.ready: a log probe reads a child process's output or socket; kind external has none",
        ],
    },
    Case {
        name: "notify_health_probe",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
health = { notify = true }
"#,
        expected: &[
            "4:10 invalid-probe: services.a.health: a notify probe only says when a process is ready; use tcp, http, exec, postgres or redis for health",
        ],
    },
    Case {
        name: "oneshot_restart_always",
        registry: r#"[services.seed]
kind = "process"
command = ["seed"]
oneshot = true
restart = { policy = "always" }
"#,
        expected: &[
            "5:22 invalid-value: services.seed.restart.policy: a oneshot service with restart policy \"always\" would run forever; use \"on-failure\" or \"never\"",
        ],
    },
    Case {
        name: "schedule_unknown_action",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
[[services.relay.schedule]]
action = "replay-faild"
every = "30m"
"#,
        expected: &[
            "6:10 unknown-action: services.relay.schedule.0.action: \"replay-faild\" is not an action of kind outbox-relay; known: replay-failed (did you mean \"replay-failed\"?)",
        ],
    },
    Case {
        name: "singleton_without_postgres",
        registry: r#"[services.cron]
kind = "process"
command = ["cron"]
singleton = true
"#,
        expected: &[
            "4:13 missing-key: services.cron.singleton: a singleton takes a PostgreSQL advisory lock, but this service has no `postgres` setting and [warden] postgres is not set",
        ],
    },
    Case {
        name: "public_api_without_token",
        registry: r#"[api]
listen = "0.0.0.0:9464"
"#,
        expected: &[
            "2:10 insecure-api: api.listen: 0.0.0.0:9464 is not a loopback address and no token is set, so anyone who reaches it could stop services [help: set api.token (e.g. token = \"${WARDEN_API_TOKEN}\") or listen on 127.0.0.1]",
        ],
    },
    Case {
        name: "bad_listen_address",
        registry: r#"[api]
listen = "localhost"
"#,
        expected: &[
            "2:10 invalid-address: api.listen: \"localhost\" is not an address to listen on; expected IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\"",
        ],
    },
    Case {
        name: "bad_service_name",
        registry: r#"[services."my service"]
kind = "process"
command = ["x"]
"#,
        expected: &[
            "1:11 invalid-name: service name \"my service\" is not valid; use letters, digits, - and _, starting with a letter or digit, at most 63 characters",
        ],
    },
    Case {
        name: "service_named_api",
        registry: r#"[services.api]
kind = "process"
command = ["x"]
"#,
        expected: &[
            "1:11 reserved-name: service name \"api\" is taken by the built-in API service configured under [api]; rename this service or set [api] enabled = false",
        ],
    },
    Case {
        name: "unknown_defaults_key",
        registry: r#"[defaults]
restart = { policy = "always" }
command = ["x"]
"#,
        expected: &[
            "3:1 unknown-key: defaults: unknown key `command`; known: critical, on_dependency_restart, start_timeout, restart, stop, health",
        ],
    },
    Case {
        name: "bad_value_in_defaults_reported_once",
        registry: r#"[defaults]
start_timeout = "soon"
[services.a]
kind = "process"
command = ["a"]
[services.b]
kind = "process"
command = ["b"]
"#,
        expected: &[
            "2:17 invalid-duration: services.a.start_timeout: \"soon\" is not a duration; expected a number with a unit, such as \"250ms\", \"5s\" or \"1h30m\"",
        ],
    },
    Case {
        name: "unknown_profile_key",
        registry: r#"[profiles.prod]
service = {}
"#,
        expected: &[
            "2:1 unknown-key: profiles.prod: unknown key `service`; known: warden, api, defaults, services [help: did you mean `services`?]",
        ],
    },
    Case {
        name: "bad_regex",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
ready = { log = "ready (" }
"#,
        expected: &[
            "4:17 invalid-regex: services.a.ready.log: \"ready (\" is not a valid regular expression: unclosed group",
        ],
    },
    Case {
        name: "endpoint_of_another_scheme",
        registry: r#"[services.mem]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "ftp://memory.internal/v1/write"
"#,
        expected: &[
            "4:12 invalid-url: services.mem.endpoint: \"ftp://memory.internal/v1/write\" is not an http:// or https:// URL such as \"http://127.0.0.1:8080/healthz\"",
        ],
    },
    Case {
        name: "schedule_on_a_kind_without_actions",
        registry: r#"[services.web]
kind = "process"
command = ["web"]
[[services.web.schedule]]
action = "validate"
every = "30m"
"#,
        expected: &[
            "5:10 unknown-action: services.web.schedule.0.action: \"validate\" is not an action of kind process; known: (none)",
        ],
    },
    Case {
        name: "a_data_kind_cannot_be_oneshot",
        registry: r#"[services.mem]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "http://memory.internal/v1/write"
oneshot = true
"#,
        expected: &[
            "5:11 invalid-value: services.mem.oneshot: kind memory-sync runs continuously and cannot be oneshot",
        ],
    },
    Case {
        name: "memory_sync_without_endpoint",
        registry: r#"[services.mem]
kind = "memory-sync"
postgres = "postgres://db/app"
"#,
        expected: &["1:1 missing-key: services.mem: missing required key `endpoint`"],
    },
    Case {
        name: "exit_code_out_of_range",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
success_exit_codes = [0, 256, -1]
"#,
        expected: &[
            "4:26 invalid-value: services.a.success_exit_codes.1: exit code 256 is outside 0-255; a process can only exit with 0 to 255",
            "4:31 invalid-value: services.a.success_exit_codes.2: exit code -1 is outside 0-255; a process can only exit with 0 to 255",
        ],
    },
    Case {
        name: "two_main_services",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
main = true
[services.b]
kind = "process"
command = ["b"]
main = true
"#,
        expected: &[
            "8:8 invalid-value: services.b.main: a is the main service already; a registry has at most one",
        ],
    },
    Case {
        name: "main_service_disabled_by_the_profile",
        registry: r#"[warden]
profile = "dev"
[services.a]
kind = "process"
command = ["a"]
main = true
[profiles.dev.services.a]
enabled = false
"#,
        expected: &[
            "6:8 invalid-value: services.a.main: the main service is disabled by profile dev; warden would have nothing to wait for. Enable it, or set main on another service",
        ],
    },
    Case {
        name: "stop_command_without_a_process",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
stop = { command = ["true"] }
"#,
        expected: &[
            "5:20 invalid-value: services.relay.stop.command: kind outbox-relay runs no process of its own to stop with a command; it is stopped by cancellation",
        ],
    },
    Case {
        name: "relay_durations_below_their_minimum",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
poll_interval = "0s"
lease = "1s"
linger = "2s"
"#,
        expected: &[
            "5:17 invalid-value: services.relay.poll_interval: 0s is below the minimum of 10ms: a shorter poll queries PostgreSQL without pause",
            "6:9 invalid-value: services.relay.lease: 1s is below the minimum of 2s: the relay waits for Redis up to half the lease, and at least 1s; a shorter lease runs out while Redis answers, and another relay takes the rows and sends them again",
            "7:10 invalid-value: services.relay.linger: 2s is above the maximum of 100ms: each row may wait this long before it is claimed; batches fill by themselves when rows come faster than the relay sends them",
        ],
    },
    Case {
        name: "pool_sizes_out_of_range",
        registry: r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
pool_size = 101

[services.memory]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "http://127.0.0.1:8700/v1/memories"
pool_size = 1

[services.zero]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "http://127.0.0.1:8700/v1/memories"
pool_size = 0
"#,
        expected: &[
            "5:13 invalid-value: services.relay.pool_size: 101 is above the maximum of 100: each session is a PostgreSQL connection, and PostgreSQL's default max_connections (for every client together) is 100",
            "11:13 invalid-value: services.memory.pool_size: 1 is below the minimum of 2: the worker's round holds one session while a batch goes out, and the statistics and actions need another",
            "17:13 invalid-value: services.zero.pool_size: 0 is out of range; expected an integer of at least 1",
        ],
    },
    Case {
        name: "memory_sync_durations_below_their_minimum",
        registry: r#"[services.memory]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "http://127.0.0.1:8700/v1/memories"
timeout = "0s"
poll_interval = "5ms"
circuit = { failures = 3, cooldown = "0s" }
"#,
        expected: &[
            "5:11 invalid-value: services.memory.timeout: 0s is below the minimum of 100ms: a request needs time to connect and to be answered; with less every request fails, and the circuit never closes",
            "6:17 invalid-value: services.memory.poll_interval: 5ms is below the minimum of 10ms: a shorter poll queries PostgreSQL without pause",
            "7:38 invalid-value: services.memory.circuit.cooldown: 0s is below the minimum of 100ms: an open circuit would let the next request through at once, giving the backend no pause",
        ],
    },
    Case {
        name: "memory_sync_lease_shorter_than_a_post",
        registry: r#"[services.memory]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "http://127.0.0.1:8700/v1/memories"
timeout = "10s"
lease = "10s"
"#,
        expected: &[
            "6:9 invalid-value: services.memory.lease: 10s is below the minimum of 11s: the timeout (10s) and 1s: a POST starts only while a whole timeout fits in what is left of the lease, less a margin to mark the batch, and a lease that runs out while a row is sent lets another instance send it again",
        ],
    },
    Case {
        name: "memory_sync_default_lease_shorter_than_a_post",
        registry: r#"[services.memory]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "http://127.0.0.1:8700/v1/memories"
timeout = "30s"
"#,
        expected: &[
            "1:1 invalid-value: services.memory.lease: 30s is below the minimum of 31s: the timeout (30s) and 1s: a POST starts only while a whole timeout fits in what is left of the lease, less a margin to mark the batch, and a lease that runs out while a row is sent lets another instance send it again",
        ],
    },
    Case {
        name: "probe_timings_below_their_minimum",
        registry: r#"[services.db]
kind = "external"
ready = { tcp = "127.0.0.1:5432", interval = "0s", timeout = "0s" }
health = { tcp = "127.0.0.1:5432", interval = "9ms", timeout = "0ms" }
"#,
        expected: &[
            "3:46 invalid-value: services.db.ready.interval: 0s is below the minimum of 10ms: a shorter interval checks without pause",
            "3:62 invalid-value: services.db.ready.timeout: 0s is below the minimum of 10ms: an attempt needs time to connect; with less every attempt fails",
            "4:47 invalid-value: services.db.health.interval: 9ms is below the minimum of 10ms: a shorter interval checks without pause",
            "4:64 invalid-value: services.db.health.timeout: 0s is below the minimum of 10ms: an attempt needs time to connect; with less every attempt fails",
        ],
    },
    Case {
        name: "a_probe_timing_in_defaults_is_reported_once",
        registry: r#"[defaults]
health = { interval = "0s" }
[services.a]
kind = "process"
command = ["a"]
health = { tcp = "127.0.0.1:1" }
[services.b]
kind = "process"
command = ["b"]
health = { tcp = "127.0.0.1:2" }
"#,
        expected: &[
            "2:23 invalid-value: services.a.health.interval: 0s is below the minimum of 10ms: a shorter interval checks without pause",
        ],
    },
    Case {
        name: "boolean_as_string",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
enabled = "yes"
"#,
        expected: &["4:11 type: services.a.enabled: expected true or false, found \"yes\""],
    },
    Case {
        name: "several_errors_in_one_file",
        registry: r#"[services.a]
kind = "process"
command = ["a"]
restart = { policy = "sometimes", max_restarts = "five" }
stop = { signal = "SIGNOPE", timout = "5s" }
[services.b]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
table = "1events"
lease = "forever"
[services.c]
kind = "process"
command = ["c"]
depends_on = ["d"]
"#,
        expected: &[
            "4:22 invalid-value: services.a.restart.policy: unknown value \"sometimes\"; expected one of always, on-failure, never",
            "4:50 type: services.a.restart.max_restarts: expected a non-negative integer, found \"five\"",
            "5:19 invalid-signal: services.a.stop.signal: unknown signal \"SIGNOPE\"; known: SIGHUP, SIGINT, SIGQUIT, SIGABRT, SIGKILL, SIGUSR1, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGCONT, SIGWINCH, SIGPWR",
            "5:30 unknown-key: services.a.stop: unknown key `timout`; known: signal, timeout, command [help: did you mean `timeout`?]",
            "10:9 invalid-identifier: services.b.table: \"1events\" is not a valid table name (schema.table or table; each part letters, digits and _, not starting with a digit, at most 63 characters)",
            "11:9 invalid-duration: services.b.lease: \"forever\" is not a duration; expected a number with a unit, such as \"250ms\", \"5s\" or \"1h30m\"",
            "15:15 unknown-dependency: services.c: depends_on \"d\": no such service; known: api, a, b",
        ],
    },
    Case {
        name: "log_memory_not_an_amount",
        registry: r#"[warden]
log_memory = "16 potatoes"
"#,
        expected: &[
            "2:14 invalid-value: warden.log_memory: \"16 potatoes\" is not an amount of memory; expected a number with a unit, such as \"16MiB\", \"512KiB\" or \"1GiB\"",
        ],
    },
    Case {
        name: "duration_past_what_the_clock_can_add",
        registry: r#"[warden]
shutdown_timeout = "300000000000y"
"#,
        expected: &[
            "2:20 invalid-duration: warden.shutdown_timeout: \"300000000000y\" is too long; expected at most 100y",
        ],
    },
    Case {
        name: "stall_timeout_too_short",
        registry: r#"[api]
stall_timeout = "100ms"
"#,
        expected: &[
            "2:17 invalid-value: api.stall_timeout: 100ms is too short; a stream whose reader is only busy for a moment would be dropped [help: use at least 1s (the default is 30s)]",
        ],
    },
    Case {
        name: "log_memory_too_small",
        registry: r#"[warden]
log_memory = "1KiB"
"#,
        expected: &[
            "2:14 invalid-value: warden.log_memory: \"1KiB\" is too small; expected at least 64KiB",
        ],
    },
];

#[test]
fn every_bad_registry_gets_its_exact_errors() {
    assert!(
        CASES.len() >= 40,
        "the table keeps at least 40 bad registries"
    );
    let mut failures = Vec::new();
    for case in CASES {
        let sources = MemSources::new(case.registry);
        let checked = load(&sources, None);
        let got = diagnostics(&checked);
        assert!(
            checked.registry().is_none() || checked.graph.is_none(),
            "{}: a bad registry was accepted",
            case.name
        );
        if got != case.expected {
            failures.push(format!("case {}:\n  got: {:#?}", case.name, got));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Each duration's minimum is itself accepted, and the zeros that mean
/// "none" (no start timeout, no stop grace, no delay, no budget window,
/// restart at once, kill at once on shutdown) stay valid.
#[test]
fn durations_at_their_minimum_and_meaningful_zeros_are_accepted() {
    let text = r#"[warden]
shutdown_timeout = "0s"
[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://127.0.0.1:6379"
poll_interval = "10ms"
lease = "2s"
stop = { timeout = "0s" }
[services.memory]
kind = "memory-sync"
postgres = "postgres://db/app"
endpoint = "http://127.0.0.1:8700/v1/memories"
timeout = "100ms"
lease = "1200ms"
poll_interval = "10ms"
circuit = { cooldown = "100ms" }
stop = { timeout = "0s" }
[services.db]
kind = "external"
ready = { tcp = "127.0.0.1:5432", interval = "10ms", timeout = "10ms" }
health = { tcp = "127.0.0.1:5432", interval = "10ms", timeout = "10ms", initial_delay = "0s" }
start_timeout = "0s"
stop = { timeout = "0s" }
restart = { window = "0s", reset_after = "0s", backoff = { initial = "0s", max = "0s" } }
"#;
    let checked = load(&MemSources::new(text), None);
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
    assert!(checked.registry().is_some() && checked.graph.is_some());
}

/// A CA certificate (PEM) for registries that name one.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBmjCCAT+gAwIBAgIUYSgZJi1zVwG+GLuDRnx6XcWyhH4wCgYIKoZIzj0EAwIw\nIjEgMB4GA1UEAwwXd2FyZGVuIHJlZ2lzdHJ5IHRlc3QgQ0EwHhcNMjYxMTI5MDYy\nNTM3WhcNMzYxMTI2MDYyNTM3WjAiMSAwHgYDVQQDDBd3YXJkZW4gcmVnaXN0cnkg\ndGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABB+HH7E+O9nMIkjFxmZ9\n2b24jX2/oCcJ3PKQDGCEISh3GyjyMA93kJYLohhxc95NXZOp5r2v0zlZCORHn7EZ\nB8SjUzBRMB0GA1UdDgQWBBSyWxKs0DXBWx/tqHpe7vExr4gPnTAfBgNVHSMEGDAW\ngBSyWxKs0DXBWx/tqHpe7vExr4gPnTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49\nBAMCA0kAMEYCIQDkX8KGI1ejhzKVK3ZufUn1SCBv78a4zRTMPlp8iZpMXwIhAPZ8\nrogNwOKgya7IyA3IapgjV2VTkPkptYd2PhQSTfzE\n-----END CERTIFICATE-----";

/// `tls_ca` and `sslrootcert` name files of PEM certificates: one that
/// holds none is refused where it is named; a good one loads, relative to
/// the registry's directory (`tls_ca`) or as written (`sslrootcert`).
#[test]
fn ca_files_must_hold_pem_certificates() {
    let registry = r#"[warden]
postgres = "host=db sslmode=verify-full sslrootcert=certs/notes.txt"

[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app?sslmode=verify-full"
redis = "rediss://cache:6380"
tls_ca = "certs/empty.pem"
"#;
    let sources = MemSources::new(registry)
        .file("certs/notes.txt", "not a certificate\n")
        .file("certs/empty.pem", "");
    let got = diagnostics(&load(&sources, None));
    assert_eq!(
        got,
        [
            "2:12 invalid-value: warden.postgres: sslrootcert certs/notes.txt holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            "8:10 invalid-value: services.relay.tls_ca: certs/empty.pem holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
        ]
    );
    let broken = CA_PEM.replace("MIIB", "M!IB");
    let sources = MemSources::new(registry)
        .file("certs/notes.txt", CA_PEM)
        .file("certs/empty.pem", &broken);
    let got = diagnostics(&load(&sources, None));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("8:10 invalid-value: services.relay.tls_ca: certs/empty.pem is not a PEM certificate file"),
        "{got:#?}"
    );
    let sources = MemSources::new(registry)
        .file("certs/notes.txt", CA_PEM)
        .file("certs/empty.pem", CA_PEM);
    let checked = load(&sources, None);
    assert_eq!(diagnostics(&checked), Vec::<String>::new());
    assert!(checked.registry().is_some());
}

/// `tls_ca` does not turn TLS on: one that no connection of its service
/// (or probe) uses is a warning, with what to set.
#[test]
fn a_tls_ca_that_nothing_uses_is_a_warning() {
    let registry = r#"[services.relay]
kind = "outbox-relay"
postgres = "postgres://db/app"
redis = "redis://cache:6379"
tls_ca = "ca.pem"

[services.cache]
kind = "external"
ready = { redis = "redis://cache:6379", tls_ca = "ca.pem" }

[services.db]
kind = "external"
ready = { postgres = "postgres://db/app?sslmode=require", tls_ca = "ca.pem" }

[services.memory]
kind = "memory-sync"
postgres = "postgres://db/app?sslmode=verify-full"
endpoint = "http://memory:8700/v1/memories"
tls_ca = "ca.pem"
"#;
    let sources = MemSources::new(registry).file("ca.pem", CA_PEM);
    let checked = load(&sources, None);
    assert!(checked.registry().is_some(), "warnings only");
    let help = " [help: tls_ca does not turn TLS on: set sslmode=verify-full (or require) in the PostgreSQL DSN, use rediss:// for Redis, or https:// for an endpoint]";
    assert_eq!(
        diagnostics(&checked),
        [
            format!(
                "5:10 unused-tls-ca: services.relay.tls_ca (ca.pem) is not used: no connection it applies to checks the server's certificate{help}"
            ),
            format!(
                "9:50 unused-tls-ca: services.cache.ready.tls_ca (ca.pem) is not used: no connection it applies to checks the server's certificate{help}"
            ),
        ]
    );
}
