//! The graph stage on small registries written inline: the plan's waves
//! and order, every dependency error with its exact words, cycles printed
//! whole, `--only`, and the three renderings.

use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::config::{KindDef, KindTable, LoadOptions, NoSettings, NoSources, Runs};

/// The kinds of these tests: a process-like `job` (no settings needed).
fn kinds() -> Arc<KindTable> {
    let mut t = KindTable::new();
    t.add(KindDef::new::<NoSettings>("job", Runs::Process));
    Arc::new(t)
}

/// The typed registry of `text` (with the API off, unless `text` says
/// otherwise); panics on a configuration error, which these tests never
/// mean to write.
fn registry(text: &str) -> Registry {
    let opts = LoadOptions {
        path: PathBuf::from("services.toml"),
        profile: None,
        kinds: kinds(),
    };
    let text = format!("[api]\nenabled = false\n{text}");
    let loaded = crate::config::load_text(&opts, text, &NoSources, Default::default());
    loaded.registry.unwrap_or_else(|| {
        panic!(
            "not a valid registry: {:?}",
            loaded
                .diagnostics
                .iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
        )
    })
}

/// Services named `names`, each `[services.X] kind = "job"` plus `extra`
/// lines keyed by name.
fn jobs(specs: &[(&str, &str)]) -> String {
    specs
        .iter()
        .map(|(name, extra)| format!("[services.{name}]\nkind = \"job\"\n{extra}\n"))
        .collect()
}

fn graph(specs: &[(&str, &str)]) -> Graph {
    build(&registry(&jobs(specs))).unwrap_or_else(|d| {
        panic!(
            "{:?}",
            d.iter().map(|d| d.message.clone()).collect::<Vec<_>>()
        )
    })
}

/// The messages of the errors `build` reports.
fn errors(specs: &[(&str, &str)]) -> Vec<String> {
    match build(&registry(&jobs(specs))) {
        Ok(_) => Vec::new(),
        Err(d) => d
            .iter()
            .map(|d| match &d.help {
                Some(h) => format!("{} [{}: {h}]", d.message, d.code),
                None => format!("{} [{}]", d.message, d.code),
            })
            .collect(),
    }
}

/// A diamond (a ← b, a ← c, b + c ← d) and a loose service e.
fn diamond() -> Graph {
    graph(&[
        ("a", ""),
        ("b", "depends_on = [\"a\"]"),
        ("c", "depends_on = { a = \"started\" }"),
        ("d", "depends_on = [\"c\", \"b\"]"),
        ("e", ""),
    ])
}

#[test]
fn waves_are_longest_paths_and_shutdown_is_their_reverse() {
    let g = diamond();
    assert_eq!(g.waves(), vec![vec!["a", "e"], vec!["b", "c"], vec!["d"]]);
    assert_eq!(
        g.shutdown_waves(),
        vec![vec!["d"], vec!["b", "c"], vec!["a", "e"]]
    );
    assert_eq!(g.wave("a"), Some(0));
    assert_eq!(g.wave("d"), Some(2));
    assert_eq!(g.wave("zzz"), None);
    // A chain longer than a shortcut: x ← y ← z, and x ← z directly.
    let g = graph(&[
        ("x", ""),
        ("y", "depends_on = [\"x\"]"),
        ("z", "depends_on = [\"x\", \"y\"]"),
    ]);
    assert_eq!(g.wave("z"), Some(2), "the longest chain decides the wave");
}

#[test]
fn dependencies_and_dependents_keep_registry_order_and_conditions() {
    let g = diamond();
    assert_eq!(
        g.dependencies("d"),
        vec![("b", Condition::Ready), ("c", Condition::Ready)]
    );
    assert_eq!(g.dependencies("c"), vec![("a", Condition::Started)]);
    assert_eq!(g.dependencies("a"), vec![]);
    assert_eq!(g.dependencies("nobody"), vec![]);
    assert_eq!(g.dependents("a"), vec!["b", "c"]);
    assert_eq!(g.dependents("d"), Vec::<&str>::new());
    assert_eq!(g.dependents("nobody"), Vec::<&str>::new());
    assert_eq!(g.len(), 5);
    assert!(!g.is_empty());
    assert!(g.contains("e") && !g.contains("f"));
    assert_eq!(g.names().collect::<Vec<_>>(), vec!["a", "b", "c", "d", "e"]);
}

#[test]
fn disabled_services_are_not_nodes() {
    let g = graph(&[("a", ""), ("off", "enabled = false")]);
    assert_eq!(g.names().collect::<Vec<_>>(), vec!["a"]);
    let g = graph(&[]);
    assert!(g.is_empty());
    assert_eq!(g.len(), 0);
    assert_eq!(g.waves(), Vec::<Vec<&str>>::new());
}

#[test]
fn only_keeps_the_named_services_and_what_they_depend_on() {
    let g = diamond();
    let s = g.select(&["b".to_string()]).unwrap();
    assert_eq!(s.names().collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(s.waves(), vec![vec!["a"], vec!["b"]]);
    assert_eq!(s.dependencies("b"), vec![("a", Condition::Ready)]);
    let s = g.select(&["d".to_string(), "e".to_string()]).unwrap();
    assert_eq!(s.len(), 5);
    let s = g.select(&["e".to_string()]).unwrap();
    assert_eq!(s.names().collect::<Vec<_>>(), vec!["e"]);
    assert_eq!(
        g.select(&["dd".to_string()]).unwrap_err().to_string(),
        "--only \"dd\": no such enabled service; known: a, b, c, d, e (did you mean \"d\"?)"
    );
    assert_eq!(
        g.select(&["qqqqqq".to_string()]).unwrap_err().0,
        "--only \"qqqqqq\": no such enabled service; known: a, b, c, d, e"
    );
}

#[test]
fn long_lists_of_names_are_capped() {
    let names: Vec<String> = (0..25).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(capped(&refs[..20]), refs[..20].join(", "));
    assert_eq!(
        capped(&refs),
        format!("{}, and 5 more", refs[..20].join(", "))
    );
    assert_eq!(
        capped(&refs[..21]),
        format!("{}, and 1 more", refs[..20].join(", "))
    );
    assert_eq!(capped(&[]), "(none)");
}

#[test]
fn every_dependency_error_names_what_was_written() {
    assert_eq!(
        errors(&[("a", "depends_on = [\"b\", \"b\"]"), ("b", "")]),
        vec!["services.a: depends_on \"b\": listed twice [duplicate-dependency]"]
    );
    assert_eq!(
        errors(&[("a", "depends_on = [\"a\"]")]),
        vec!["services.a: depends_on \"a\": a service cannot depend on itself [self-dependency]"]
    );
    assert_eq!(
        errors(&[("app", "depends_on = [\"db\"]"), ("dbx", "")]),
        vec![
            "services.app: depends_on \"db\": no such service; known: dbx [unknown-dependency: did you mean \"dbx\"?]"
        ]
    );
    assert_eq!(
        errors(&[("app", "depends_on = [\"db\"]"), ("db", "enabled = false")]),
        vec![
            "services.app: depends_on \"db\": that service is disabled; enabled: (none) [disabled-dependency: enable db in this profile, or disable app too]"
        ]
    );
    assert_eq!(
        errors(&[
            ("app", "depends_on = { seed = \"completed\" }"),
            ("seed", "")
        ]),
        vec![
            "services.app: depends_on \"seed\" = \"completed\": seed is not a oneshot service, so it never completes [completed-needs-oneshot: use \"ready\" or \"started\", or set oneshot = true on seed]"
        ]
    );
    assert_eq!(
        errors(&[
            ("app", "depends_on = { seed = \"completed\" }"),
            ("seed", "oneshot = true")
        ]),
        Vec::<String>::new()
    );
}

#[test]
fn a_cycle_prints_its_whole_chain_from_the_service_written_first() {
    assert_eq!(
        errors(&[
            ("a", "depends_on = [\"b\"]"),
            ("b", "depends_on = [\"c\"]"),
            ("c", "depends_on = [\"a\"]"),
        ]),
        vec![
            "dependency cycle: a -> b -> c -> a [dependency-cycle: each arrow reads \"depends on\"; remove one of these dependencies]"
        ]
    );
    // Two separate cycles: each is reported, in the order written; the
    // shortest way round is printed.
    let e = errors(&[
        ("p", "depends_on = [\"q\"]"),
        ("x", "depends_on = [\"y\"]"),
        ("y", "depends_on = [\"x\", \"z\"]"),
        ("z", "depends_on = [\"x\"]"),
        ("q", "depends_on = [\"p\"]"),
    ]);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("dependency cycle: p -> q -> p "), "{e:?}");
    assert!(e[1].starts_with("dependency cycle: x -> y -> x "), "{e:?}");
}

#[test]
fn a_cycle_points_at_the_first_edge_of_its_chain() {
    let reg = registry(&jobs(&[
        ("a", "depends_on = [\"b\"]"),
        ("b", "depends_on = [\"a\"]"),
    ]));
    let d = build(&reg).unwrap_err();
    let d = d.iter().next().unwrap();
    assert_eq!(d.service.as_deref(), Some("a"));
    assert_eq!(d.key.as_deref(), Some("services.a.depends_on"));
    let span = d.span.expect("a span");
    let dep = &reg.services["a"].common.depends_on.0[0];
    assert_eq!(span, dep.span, "the caret is under \"b\" in a's depends_on");
}

#[test]
fn untyped_services_are_trusted_as_dependencies_and_their_edges_checked() {
    let reg = registry(&jobs(&[("app", "depends_on = [\"broken\"]")]));
    let mut untyped = HashMap::new();
    untyped.insert(
        "broken",
        DependsOn(vec![crate::config::Dependency {
            name: "ghost".into(),
            condition: Condition::Ready,
            span: reg.services["app"].span,
        }]),
    );
    let d = build_partial(&reg, &untyped).unwrap_err();
    let msgs: Vec<String> = d.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        msgs,
        vec!["services.broken: depends_on \"ghost\": no such service; known: app"]
    );
}

#[test]
fn the_renderings_list_nodes_and_labelled_edges() {
    let g = graph(&[
        ("db-main", ""),
        ("app", "depends_on = { db-main = \"started\" }"),
    ]);
    assert_eq!(
        g.to_dot(),
        "digraph warden {\n  rankdir=LR;\n  \"db-main\";\n  \"app\";\n  \"db-main\" -> \"app\" [label=\"started\"];\n}\n"
    );
    assert_eq!(
        g.to_mermaid(),
        "flowchart LR\n  db_main[\"db-main\"]\n  app[\"app\"]\n  db_main -->|started| app\n"
    );
    assert_eq!(
        g.to_json(),
        serde_json::json!({
            "nodes": [{"name": "db-main", "wave": 0}, {"name": "app", "wave": 1}],
            "edges": [{"from": "db-main", "to": "app", "condition": "started"}]
        })
    );
}

#[test]
fn mermaid_ids_stay_distinct_when_names_differ_only_by_dash_or_are_end() {
    let g = graph(&[
        ("a-b", ""),
        ("a_b", "depends_on = [\"a-b\"]"),
        ("end", "depends_on = [\"a_b\"]"),
    ]);
    assert_eq!(
        g.to_mermaid(),
        "flowchart LR\n  a_b[\"a-b\"]\n  a_b_1[\"a_b\"]\n  end_2[\"end\"]\n  \
         a_b -->|ready| a_b_1\n  a_b_1 -->|ready| end_2\n"
    );
}

#[test]
fn the_plan_carries_each_services_kind_flags_and_edges() {
    let reg = registry(&jobs(&[
        ("seed", "oneshot = true"),
        (
            "app",
            "critical = true\ndepends_on = { seed = \"completed\" }",
        ),
    ]));
    let g = build(&reg).unwrap();
    let plan = g.plan(&reg);
    assert_eq!(plan.len(), 2);
    assert_eq!(
        (plan[0].name.as_str(), plan[0].kind.as_str(), plan[0].wave),
        ("seed", "job", 0)
    );
    assert!(plan[0].oneshot && !plan[0].critical);
    assert_eq!(plan[1].wave, 1);
    assert!(plan[1].critical && !plan[1].oneshot);
    assert_eq!(plan[1].depends_on.len(), 1);
    assert_eq!(plan[1].depends_on[0].service, "seed");
    assert_eq!(plan[1].depends_on[0].condition, Condition::Completed);
    assert_eq!(
        serde_json::to_value(&plan[1].depends_on[0]).unwrap(),
        serde_json::json!({"service": "seed", "condition": "completed"})
    );
}
