//! The dependency graph (petgraph): edges with their conditions, cycle
//! detection that prints the whole chain, the startup plan as waves, the
//! reverse order for shutdown, and `--only` selection.
//!
//! Edges point from a dependency to its dependent, the direction in which
//! "may start" propagates. Only enabled services are nodes.

use std::collections::{HashMap, HashSet, VecDeque};

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::config::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::config::{Condition, DependsOn, Registry, Span};

/// The validated graph of enabled (and, with `--only`, selected) services.
#[derive(Debug, Clone)]
pub struct Graph {
    graph: DiGraph<String, Condition>,
    index: HashMap<String, NodeIndex>,
    /// Longest-path level of each node: 0 for no dependencies.
    level: Vec<usize>,
}

/// One service in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    pub name: String,
    pub kind: String,
    pub wave: usize,
    pub critical: bool,
    pub oneshot: bool,
    pub depends_on: Vec<PlanEdge>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanEdge {
    pub service: String,
    pub condition: Condition,
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The number of names listed in an error before "and N more".
const LIST_CAP: usize = 20;

fn capped(names: &[&str]) -> String {
    if names.is_empty() {
        return "(none)".into();
    }
    if names.len() <= LIST_CAP {
        names.join(", ")
    } else {
        format!(
            "{}, and {} more",
            names[..LIST_CAP].join(", "),
            names.len() - LIST_CAP
        )
    }
}

/// Why `--only` could not be applied (a usage error, exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionError(pub String);

impl std::fmt::Display for SelectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds and checks the graph of `reg`: unknown, disabled, self and
/// duplicate dependencies, `completed` on services that never complete, and
/// every cycle. All problems are returned together.
pub fn build(reg: &Registry) -> Result<Graph, Diagnostics> {
    build_partial(reg, &HashMap::new())
}

/// Like [`build`], for a registry some of whose services did not type.
/// `untyped` maps each of those to its `depends_on` (when that much could be
/// read): their edges are checked for unknown, self and duplicate names,
/// and dependencies on them are taken on trust.
pub fn build_partial(
    reg: &Registry,
    untyped: &HashMap<&str, DependsOn>,
) -> Result<Graph, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut graph = DiGraph::with_capacity(reg.services.len(), reg.services.len() * 3);
    let mut index = HashMap::with_capacity(reg.services.len());
    for s in reg.services.values().filter(|s| s.enabled()) {
        index.insert(s.name.clone(), graph.add_node(s.name.clone()));
    }
    let mut enabled: Vec<&str> = reg
        .services
        .values()
        .filter(|s| s.enabled())
        .map(|s| s.name.as_str())
        .collect();
    let mut untyped_names: Vec<&str> = untyped.keys().copied().collect();
    untyped_names.sort();
    enabled.extend(untyped_names);
    let profile_note = match &reg.profile {
        Some(p) => format!(" in profile {p:?}"),
        None => String::new(),
    };

    let typed = reg
        .services
        .values()
        .filter(|s| s.enabled())
        .map(|s| (s.name.as_str(), &s.common.depends_on));
    let mut all: Vec<(&str, &DependsOn)> =
        typed.chain(untyped.iter().map(|(n, d)| (*n, d))).collect();
    all.sort_by_key(|(n, _)| reg.services.get_index_of(*n).unwrap_or(usize::MAX));
    for (name, depends_on) in all {
        let me = index.get(name).copied();
        let mut seen = HashSet::new();
        for dep in &depends_on.0 {
            let key = format!("services.{name}.depends_on");
            let err = |code: &'static str, msg: String, span: Span| {
                Diagnostic::error(code, format!("services.{name}: {msg}"))
                    .at(span)
                    .service(name.to_string())
                    .key(key.clone())
            };
            if !seen.insert(dep.name.as_str()) {
                diags.push(err(
                    "duplicate-dependency",
                    format!("depends_on {:?}: listed twice", dep.name),
                    dep.span,
                ));
                continue;
            }
            if dep.name == name {
                diags.push(err(
                    "self-dependency",
                    format!(
                        "depends_on {:?}: a service cannot depend on itself",
                        dep.name
                    ),
                    dep.span,
                ));
                continue;
            }
            let Some(target) = reg.services.get(&dep.name) else {
                if untyped.contains_key(dep.name.as_str()) {
                    continue;
                }
                let others: Vec<&str> = enabled.iter().copied().filter(|n| *n != name).collect();
                let mut d = err(
                    "unknown-dependency",
                    format!(
                        "depends_on {:?}: no such service; known: {}",
                        dep.name,
                        capped(&others)
                    ),
                    dep.span,
                );
                if let Some(m) = did_you_mean(&dep.name, others.iter().copied()) {
                    d = d.help(format!("did you mean {m:?}?"));
                }
                diags.push(d);
                continue;
            };
            if !target.enabled() {
                let others: Vec<&str> = enabled.iter().copied().filter(|n| *n != name).collect();
                diags.push(
                    err(
                        "disabled-dependency",
                        format!(
                            "depends_on {:?}: that service is disabled{profile_note}; enabled: {}",
                            dep.name,
                            capped(&others)
                        ),
                        dep.span,
                    )
                    .help(format!(
                        "enable {} in this profile, or disable {} too",
                        dep.name, name
                    )),
                );
                continue;
            }
            if dep.condition == Condition::Completed && !target.common.oneshot {
                diags.push(
                    err(
                        "completed-needs-oneshot",
                        format!(
                            "depends_on {:?} = \"completed\": {} is not a oneshot service, so it never completes",
                            dep.name, dep.name
                        ),
                        dep.span,
                    )
                    .help(format!("use \"ready\" or \"started\", or set oneshot = true on {}", dep.name)),
                );
                continue;
            }
            if let Some(me) = me {
                graph.add_edge(index[&dep.name], me, dep.condition);
            }
        }
    }

    report_cycles(reg, &graph, &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    let level = levels(&graph);
    Ok(Graph {
        graph,
        index,
        level,
    })
}

/// Finds every strongly connected component with more than one service
/// and prints one concrete cycle through it, in `depends_on` direction,
/// starting from the service written first.
fn report_cycles(reg: &Registry, graph: &DiGraph<String, Condition>, diags: &mut Diagnostics) {
    let order: HashMap<&str, usize> = reg
        .services
        .keys()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut sccs: Vec<Vec<NodeIndex>> = petgraph::algo::tarjan_scc(graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    sccs.sort_by_key(|c| c.iter().map(|n| order[graph[*n].as_str()]).min());
    for scc in sccs {
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let Some(&start) = scc.iter().min_by_key(|n| order[graph[**n].as_str()]) else {
            continue;
        };
        let chain = cycle_from(graph, start, &members);
        let names: Vec<&str> = chain.iter().map(|n| graph[*n].as_str()).collect();
        let first = names[0];
        let second = names.get(1).copied().unwrap_or(first);
        let span = reg.services[first]
            .common
            .depends_on
            .0
            .iter()
            .find(|d| d.name == second)
            .map(|d| d.span);
        diags.push(
            Diagnostic::error(
                "dependency-cycle",
                format!("dependency cycle: {}", names.join(" -> ")),
            )
            .at_opt(span)
            .service(first.to_string())
            .key(format!("services.{first}.depends_on"))
            .help("each arrow reads \"depends on\"; remove one of these dependencies"),
        );
    }
}

/// The shortest cycle from `start` back to itself following "depends on"
/// (incoming edges), staying inside `members`. The result starts and ends
/// with `start`.
fn cycle_from(
    graph: &DiGraph<String, Condition>,
    start: NodeIndex,
    members: &HashSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut deps: Vec<NodeIndex> = graph
            .neighbors_directed(n, Direction::Incoming)
            .filter(|d| members.contains(d))
            .collect();
        deps.sort();
        for d in deps {
            if d == start {
                // Walk back from n to start, then read it forwards.
                let mut chain = vec![n];
                let mut cur = n;
                while cur != start {
                    cur = prev[&cur];
                    chain.push(cur);
                }
                chain.reverse();
                chain.push(start);
                return chain;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(d) {
                e.insert(n);
                queue.push_back(d);
            }
        }
    }
    vec![start, start]
}

/// Longest-path level of every node (the graph is acyclic here).
fn levels(graph: &DiGraph<String, Condition>) -> Vec<usize> {
    let mut level = vec![0usize; graph.node_count()];
    match petgraph::algo::toposort(graph, None) {
        Ok(order) => {
            for n in order {
                let l = graph
                    .neighbors_directed(n, Direction::Incoming)
                    .map(|d| level[d.index()] + 1)
                    .max()
                    .unwrap_or(0);
                level[n.index()] = l;
            }
        }
        Err(_) => unreachable!("cycles are rejected before levels are computed"),
    }
    level
}

impl Graph {
    /// Restricts the graph to `names` and everything they depend on.
    pub fn select(&self, names: &[String]) -> Result<Graph, SelectionError> {
        let mut keep: HashSet<NodeIndex> = HashSet::new();
        let mut stack = Vec::new();
        for n in names {
            match self.index.get(n) {
                Some(&i) => stack.push(i),
                None => {
                    let known: Vec<&str> = self
                        .graph
                        .node_indices()
                        .map(|i| self.graph[i].as_str())
                        .collect();
                    let mut msg = format!(
                        "--only {n:?}: no such enabled service; known: {}",
                        capped(&known)
                    );
                    if let Some(m) = did_you_mean(n, known.iter().copied()) {
                        msg.push_str(&format!(" (did you mean {m:?}?)"));
                    }
                    return Err(SelectionError(msg));
                }
            }
        }
        while let Some(i) = stack.pop() {
            if keep.insert(i) {
                stack.extend(self.graph.neighbors_directed(i, Direction::Incoming));
            }
        }
        let graph = self
            .graph
            .filter_map(|i, n| keep.contains(&i).then(|| n.clone()), |_, e| Some(*e));
        let index = graph
            .node_indices()
            .map(|i| (graph[i].clone(), i))
            .collect();
        let level = levels(&graph);
        Ok(Graph {
            graph,
            index,
            level,
        })
    }

    /// `--only`: the services named, what they depend on, and the API
    /// service, which belongs to every selection unless the registry
    /// disables it (probes and the client commands reach each instance
    /// through it).
    pub fn select_only(&self, reg: &Registry, names: &[String]) -> Result<Graph, SelectionError> {
        let mut names = names.to_vec();
        if let Some(api) = reg.services.values().find(|s| s.is_api())
            && self.contains(&api.name)
            && !names.contains(&api.name)
        {
            names.push(api.name.clone());
        }
        self.select(&names)
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Service names in registry order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.graph.node_indices().map(|i| self.graph[i].as_str())
    }

    /// The wave of a service: the length of its longest dependency chain.
    pub fn wave(&self, name: &str) -> Option<usize> {
        self.index.get(name).map(|i| self.level[i.index()])
    }

    /// Direct dependencies of a service with their conditions.
    pub fn dependencies(&self, name: &str) -> Vec<(&str, Condition)> {
        let Some(&i) = self.index.get(name) else {
            return Vec::new();
        };
        let mut v: Vec<(NodeIndex, &str, Condition)> = self
            .graph
            .edges_directed(i, Direction::Incoming)
            .map(|e| {
                use petgraph::visit::EdgeRef;
                (e.source(), self.graph[e.source()].as_str(), *e.weight())
            })
            .collect();
        v.sort_by_key(|(n, _, _)| *n);
        v.into_iter().map(|(_, n, c)| (n, c)).collect()
    }

    /// Services that depend directly on `name`.
    pub fn dependents(&self, name: &str) -> Vec<&str> {
        let Some(&i) = self.index.get(name) else {
            return Vec::new();
        };
        let mut v: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(i, Direction::Outgoing)
            .collect();
        v.sort();
        v.into_iter().map(|n| self.graph[n].as_str()).collect()
    }

    /// The startup plan: waves of services, each wave after the one before.
    /// (The supervisor starts each service as soon as its own edges hold;
    /// waves are the order a reader can follow.)
    pub fn waves(&self) -> Vec<Vec<&str>> {
        let max = self.level.iter().copied().max().map(|m| m + 1).unwrap_or(0);
        let mut waves = vec![Vec::new(); max];
        for i in self.graph.node_indices() {
            waves[self.level[i.index()]].push(self.graph[i].as_str());
        }
        waves
    }

    /// The shutdown order: the waves reversed, dependents before their
    /// dependencies.
    pub fn shutdown_waves(&self) -> Vec<Vec<&str>> {
        let mut w = self.waves();
        w.reverse();
        w
    }

    /// The plan of every service, for `check`.
    pub fn plan(&self, reg: &Registry) -> Vec<PlanEntry> {
        self.graph
            .node_indices()
            .map(|i| {
                let name = &self.graph[i];
                let spec = &reg.services[name];
                PlanEntry {
                    name: name.clone(),
                    kind: spec.kind.kind_name().to_string(),
                    wave: self.level[i.index()],
                    critical: spec.common.critical,
                    oneshot: spec.common.oneshot,
                    depends_on: self
                        .dependencies(name)
                        .into_iter()
                        .map(|(d, c)| PlanEdge {
                            service: d.to_string(),
                            condition: c,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Graphviz DOT; edge labels name the condition.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph warden {\n  rankdir=LR;\n");
        for name in self.names() {
            out.push_str(&format!("  {name:?};\n"));
        }
        for name in self.names() {
            for (dep, c) in self.dependencies(name) {
                out.push_str(&format!(
                    "  {dep:?} -> {name:?} [label={:?}];\n",
                    c.as_str()
                ));
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart. Node ids are the names with `-` as `_`, made
    /// unique (`a-b` and `a_b` would be one node) and never Mermaid's
    /// `end`; the label keeps the name as written.
    pub fn to_mermaid(&self) -> String {
        let mut ids: HashMap<&str, String> = HashMap::new();
        let mut taken: HashSet<String> = HashSet::new();
        for (i, name) in self.names().enumerate() {
            let base = name.replace('-', "_");
            let mut id = base.clone();
            let mut k = i;
            while id.eq_ignore_ascii_case("end") || taken.contains(&id) {
                id = format!("{base}_{k}");
                k += 1;
            }
            taken.insert(id.clone());
            ids.insert(name, id);
        }
        let id = |n: &str| ids[n].clone();
        let mut out = String::from("flowchart LR\n");
        for name in self.names() {
            out.push_str(&format!("  {}[\"{}\"]\n", id(name), name));
        }
        for name in self.names() {
            for (dep, c) in self.dependencies(name) {
                out.push_str(&format!("  {} -->|{}| {}\n", id(dep), c.as_str(), id(name)));
            }
        }
        out
    }

    /// JSON: nodes with their waves, edges with their conditions.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<_> = self
            .names()
            .map(|n| serde_json::json!({"name": n, "wave": self.wave(n)}))
            .collect();
        let mut edges = Vec::new();
        for name in self.names() {
            for (dep, c) in self.dependencies(name) {
                edges.push(serde_json::json!({"from": dep, "to": name, "condition": c.as_str()}));
            }
        }
        serde_json::json!({"nodes": nodes, "edges": edges})
    }
}

#[cfg(test)]
mod tests;

/// A registry loaded and its graph checked: what `check`, `graph` and
/// `run` all start from.
#[derive(Debug)]
pub struct Checked {
    pub loaded: crate::config::Loaded,
    /// The graph, when the registry and its graph are valid.
    pub graph: Option<Graph>,
}

impl Checked {
    pub fn registry(&self) -> Option<&Registry> {
        self.loaded.registry.as_ref()
    }
}

/// Loads the registry and checks its graph; every diagnostic of both
/// stages ends up in `loaded.diagnostics`.
pub fn load_and_check(
    opts: &crate::config::LoadOptions,
    sources: &dyn crate::config::Sources,
) -> Checked {
    let mut loaded = crate::config::load(opts, sources);
    let graph = match &loaded.registry {
        Some(reg) => match build(reg) {
            Ok(g) => Some(g),
            Err(d) => {
                loaded.diagnostics.extend(d);
                loaded.diagnostics.sort();
                loaded.registry = None;
                None
            }
        },
        None => {
            // Graph errors are independent of typing errors elsewhere in the
            // file: check what typed, so that one run reports everything.
            if let Some(partial) = &loaded.partial {
                let untyped = untyped_dependencies(&loaded.nodes, partial);
                if let Err(d) = build_partial(partial, &untyped) {
                    loaded.diagnostics.extend(d);
                    loaded.diagnostics.sort();
                }
            }
            None
        }
    };
    Checked { loaded, graph }
}

/// The `depends_on` of each enabled service that did not type, read on its
/// own (its errors, if any, were reported when the service was typed).
fn untyped_dependencies<'a>(
    nodes: &'a HashMap<String, crate::config::node::Node>,
    partial: &Registry,
) -> HashMap<&'a str, DependsOn> {
    use crate::config::decode::{Cx, Decode};
    let mut out = HashMap::new();
    let mut scratch = Diagnostics::default();
    for (name, node) in nodes {
        if partial.services.contains_key(name) {
            continue;
        }
        if node.get("enabled").and_then(|n| n.as_bool()) == Some(false) {
            continue;
        }
        let mut cx = Cx::new(
            &mut scratch,
            &crate::config::NoSources,
            std::path::PathBuf::new(),
        );
        let deps = node
            .get("depends_on")
            .and_then(|d| DependsOn::decode(d, &mut cx))
            .unwrap_or_default();
        out.insert(name.as_str(), deps);
    }
    out
}
