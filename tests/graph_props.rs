//! Property tests of the graph stage (a service starts once its dependencies hold):
//! for random DAGs the plan respects every edge; for random graphs with
//! cycles every reported chain is a real cycle of the input.

mod support;

use std::collections::HashSet;

use proptest::prelude::*;
use support::{MemSources, load};

/// A registry of `n` processes `s0..s{n-1}` with the given edges
/// (`(a, b)`: `a` depends on `b`).
fn registry(n: usize, edges: &[(usize, usize)]) -> String {
    let mut text = String::from("[api]\nenabled = false\n");
    for i in 0..n {
        let deps: Vec<String> = edges
            .iter()
            .filter(|(a, _)| *a == i)
            .map(|(_, b)| format!("\"s{b}\""))
            .collect();
        text.push_str(&format!(
            "[services.s{i}]\nkind = \"process\"\ncommand = [\"true\"]\ndepends_on = [{}]\n",
            deps.join(", ")
        ));
    }
    text
}

/// Random DAG: edges only from a later service to an earlier one.
fn dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (1usize..40).prop_flat_map(|n| {
        let edges = proptest::collection::vec((0..n, 0..n), 0..n * 3).prop_map(|v| {
            let set: HashSet<(usize, usize)> = v
                .into_iter()
                .filter(|(a, b)| a != b)
                .map(|(a, b)| (a.max(b), a.min(b)))
                .collect();
            let mut v: Vec<_> = set.into_iter().collect();
            v.sort();
            v
        });
        (Just(n), edges)
    })
}

/// Random graph with at least one cycle: a DAG plus back edges.
fn cyclic() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (2usize..30).prop_flat_map(|n| {
        let edges = proptest::collection::vec((0..n, 0..n), 1..n * 3);
        let back = proptest::collection::vec((0..n, 0..n), 1..4);
        (Just(n), edges, back).prop_map(|(n, edges, back)| {
            let mut set: HashSet<(usize, usize)> =
                edges.into_iter().filter(|(a, b)| a != b).collect();
            // Close a cycle for certain: a chain 0 <- 1 and 1 <- 0.
            set.insert((0, 1));
            set.insert((1, 0));
            set.extend(back.into_iter().filter(|(a, b)| a != b));
            let mut v: Vec<_> = set.into_iter().collect();
            v.sort();
            (n, v)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn the_plan_respects_every_edge((n, edges) in dag()) {
        let sources = MemSources::new(&registry(n, &edges));
        let checked = load(&sources, None);
        let g = checked.graph.as_ref().expect("a DAG is a valid registry");
        let waves = g.waves();
        let wave_of = |name: &str| waves.iter().position(|w| w.contains(&name)).unwrap();
        // Every service is in exactly one wave.
        let total: usize = waves.iter().map(Vec::len).sum();
        prop_assert_eq!(total, n);
        for (a, b) in &edges {
            let (a, b) = (format!("s{a}"), format!("s{b}"));
            // A dependency starts in an earlier wave and stops in a later one.
            prop_assert!(wave_of(&b) < wave_of(&a), "{} depends on {} but is not after it", a, b);
            let stop = g.shutdown_waves();
            let stop_of = |name: &str| stop.iter().position(|w| w.contains(&name)).unwrap();
            prop_assert!(stop_of(&a) < stop_of(&b));
        }
        // Waves are longest-path levels: each service not in wave 0 has a
        // dependency in the wave just before.
        for name in g.names() {
            let w = g.wave(name).unwrap();
            if w > 0 {
                prop_assert!(g.dependencies(name).iter().any(|(d, _)| g.wave(d) == Some(w - 1)));
            }
        }
    }

    #[test]
    fn every_reported_cycle_is_real((n, edges) in cyclic()) {
        let sources = MemSources::new(&registry(n, &edges));
        let checked = load(&sources, None);
        prop_assert!(checked.graph.is_none());
        let chains: Vec<Vec<String>> = checked
            .loaded
            .diagnostics
            .iter()
            .filter(|d| d.code == "dependency-cycle")
            .map(|d| {
                d.message
                    .trim_start_matches("dependency cycle: ")
                    .split(" -> ")
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        prop_assert!(!chains.is_empty(), "a cycle was not reported");
        let edge_set: HashSet<(String, String)> =
            edges.iter().map(|(a, b)| (format!("s{a}"), format!("s{b}"))).collect();
        for chain in chains {
            prop_assert!(chain.len() >= 3);
            prop_assert_eq!(chain.first(), chain.last());
            for pair in chain.windows(2) {
                prop_assert!(
                    edge_set.contains(&(pair[0].clone(), pair[1].clone())),
                    "{} -> {} is not an edge of the input", pair[0], pair[1]
                );
            }
            // A simple cycle: no service repeats before the end.
            let inner: HashSet<&String> = chain[..chain.len() - 1].iter().collect();
            prop_assert_eq!(inner.len(), chain.len() - 1);
        }
    }
}
