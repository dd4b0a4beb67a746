//! Parsing and validation never panic on any input: arbitrary
//! bytes, and arbitrary TOML documents built from warden's own keys so that
//! the generator reaches deep into typing, profiles and the graph. Bounded:
//! a fixed number of cases, a few seconds in all.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use support::{MemSources, load};

const KEYS: &[&str] = &[
    "warden",
    "api",
    "defaults",
    "services",
    "profiles",
    "kind",
    "command",
    "depends_on",
    "enabled",
    "critical",
    "oneshot",
    "restart",
    "policy",
    "backoff",
    "initial",
    "max",
    "multiplier",
    "jitter",
    "stop",
    "signal",
    "timeout",
    "ready",
    "health",
    "tcp",
    "http",
    "exec",
    "postgres",
    "redis",
    "log",
    "notify",
    "schedule",
    "action",
    "every",
    "rules",
    "table",
    "column",
    "keep",
    "where",
    "streams",
    "primary",
    "shadow",
    "key",
    "listen",
    "token",
    "env_files",
    "postgres_file",
    "singleton",
    "a",
    "b",
    "c",
    "dev",
    "prod",
    "profile",
    "env",
    "start_timeout",
];
const STRINGS: &[&str] = &[
    "process",
    "external",
    "outbox-relay",
    "memory-sync",
    "stream-replicator",
    "dual-write",
    "retention",
    "api",
    "a",
    "b",
    "c",
    "ready",
    "completed",
    "started",
    "always",
    "never",
    "SIGTERM",
    "5s",
    "0s",
    "1h30m",
    "100y",
    "300000000000y",
    "18446744073709551615s",
    "x",
    "${A}",
    "${A:-d}",
    "${A:?m}",
    "${",
    "$$",
    "postgres://u:p@h/d",
    "redis://h:1",
    "http://h/",
    "127.0.0.1:1",
    "0.0.0.0:9",
    "",
    "é",
    "a.b.c",
    "1bad",
    "[(",
];

fn value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        proptest::sample::select(STRINGS).prop_map(|s| toml::Value::String(s.to_string())),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |kv| {
                    toml::Value::Table(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }
            ),
        ]
    })
}

fn document() -> impl Strategy<Value = String> {
    proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..6).prop_map(|kv| {
        let t: toml::Table = kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        toml::to_string(&t).unwrap_or_default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let checked = load(&MemSources::new(&text).env("A", "1"), None);
        // Whatever the input, every diagnostic renders.
        for d in checked.loaded.diagnostics.iter() {
            let _ = d.render(&checked.loaded.sources);
        }
    }

    #[test]
    fn arbitrary_registries_never_panic(doc in document(), profile in proptest::option::of(proptest::sample::select(&["dev", "prod", "x"][..]))) {
        let checked = load(&MemSources::new(&doc).env("A", "1"), profile);
        for d in checked.loaded.diagnostics.iter() {
            let _ = d.render(&checked.loaded.sources);
            let _ = d.to_json(&checked.loaded.sources);
        }
        if let (Some(reg), Some(g)) = (checked.registry(), checked.graph.as_ref()) {
            let _ = g.plan(reg);
            let _ = g.to_dot();
            for s in reg.services.values() {
                let _ = s.to_json();
            }
        } else {
            prop_assert!(checked.loaded.diagnostics.has_errors(), "a rejected registry has at least one error");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    /// Every duration the loader accepts can be added to now and grown by
    /// a backoff without overflow: a registry `check` accepts never panics
    /// warden at its shutdown (300000000000y did).
    #[test]
    fn accepted_durations_are_within_the_clocks_reach(
        n in prop_oneof![any::<u64>(), 0u64..1000, Just(100u64), Just(101u64)],
        unit in proptest::sample::select(&["ns", "ms", "s", "m", "h", "d", "w", "M", "y"][..]),
    ) {
        let d = format!("{n}{unit}");
        let text = format!(
            "[warden]\nshutdown_timeout = \"{d}\"\n[services.a]\nkind = \"process\"\ncommand = [\"x\"]\nstart_timeout = \"{d}\"\nrestart = {{ backoff = {{ initial = \"{d}\", max = \"{d}\", multiplier = 1000.0 }} }}\n"
        );
        let checked = load(&MemSources::new(&text), None);
        if let Some(reg) = checked.registry() {
            let t = reg.warden.shutdown_timeout;
            prop_assert!(t <= Duration::from_secs(3_155_760_000), "{d} accepted");
            prop_assert!(std::time::Instant::now().checked_add(t).is_some());
            prop_assert!(tokio::time::Instant::now().checked_add(t).is_some());
            let b = &reg.services["a"].common.restart.backoff;
            let grown = b.initial.as_secs_f64() * b.multiplier.powi(1000);
            let _ = Duration::from_secs_f64(grown.min(b.max.as_secs_f64()));
            let _ = b.max.mul_f64(1.5);
        } else {
            let errors = checked.loaded.diagnostics.iter().map(|e| e.render(&checked.loaded.sources)).collect::<Vec<_>>().join("\n");
            prop_assert!(errors.contains("duration"), "{d}: {errors}");
        }
    }
}

/// A TOML document written the way people do (sections, arrays of tables)
/// with every byte flipped in turn: all rejected or accepted, never a panic.
#[test]
fn every_single_byte_mutation_of_a_real_registry_is_handled() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/data-plane.toml"
    ))
    .unwrap();
    let bytes = text.as_bytes();
    for i in (0..bytes.len()).step_by(7) {
        for replacement in [b'"', b'[', b'=', b'\n', b'x'] {
            let mut b = bytes.to_vec();
            b[i] = replacement;
            let mutated = String::from_utf8_lossy(&b).into_owned();
            let checked = load(&MemSources::new(&mutated), None);
            for d in checked.loaded.diagnostics.iter() {
                let _ = d.render(&checked.loaded.sources);
            }
        }
    }
}
