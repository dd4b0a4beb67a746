//! `warden check` and `warden graph`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value as Json;

use super::{CheckArgs, CheckFormat, GraphArgs, GraphFormat, RegistryArgs, exit, pretty};
use crate::config::diag::JsonDiagnostic;
use crate::config::{Endpoint, LoadOptions, ProbeCheck, RealSources, Registry};
use crate::config::{KindTable, Runs};
use crate::graph::{Checked, Graph, load_and_check};
use crate::services::Kinds;

/// Version of the JSON shape of `check --format json`.
pub const CHECK_JSON_VERSION: u32 = 1;

fn load(args: &RegistryArgs, kinds: &KindTable) -> Checked {
    let opts = LoadOptions {
        path: args.config.clone(),
        profile: args.profile.clone(),
        kinds: std::sync::Arc::new(kinds.clone()),
    };
    load_and_check(&opts, &RealSources)
}

/// `--only`, with the API kept (see [`Graph::select_only`]).
fn select(
    checked: &Checked,
    g: &Graph,
    only: &[String],
) -> Result<Graph, crate::graph::SelectionError> {
    match checked.registry() {
        Some(reg) => g.select_only(reg, only),
        None => g.select(only),
    }
}

pub fn check(args: &CheckArgs, kinds: &Kinds) -> u8 {
    let kinds = kinds.table();
    let checked = load(&args.registry, &kinds);
    let selection = match (&checked.graph, args.registry.only.is_empty()) {
        (Some(g), false) => match select(&checked, g, &args.registry.only) {
            Ok(s) => Some(s),
            Err(e) => {
                errln!("error: {e}");
                return exit::USAGE;
            }
        },
        _ => None,
    };
    let selected = selection.as_ref().or(checked.graph.as_ref());
    let connect = match (selected, checked.registry(), args.connect) {
        (Some(g), Some(reg), true) => Some(run_connect(reg, &kinds, g, args.connect_timeout)),
        _ => None,
    };
    let connect_failed = connect
        .as_ref()
        .is_some_and(|c| c.iter().any(|r| r.ok == Some(false)));
    match args.format {
        CheckFormat::Json => print_json(&checked, selected, connect.as_deref(), args.resolved),
        CheckFormat::Text => print_text(&checked, selected, connect.as_deref()),
    }
    if selected.is_none() || connect_failed {
        exit::INVALID
    } else {
        exit::OK
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn print_text(checked: &Checked, graph: Option<&Graph>, connect: Option<&[ConnectResult]>) {
    use std::fmt::Write as _;
    // One write for the whole plan: 10,000 lines are 10,000 syscalls otherwise.
    let mut o = String::new();
    macro_rules! wln {
        ($w:ident) => { let _ = writeln!($w); };
        ($w:ident, $($t:tt)*) => { let _ = writeln!($w, $($t)*); };
    }
    let loaded = &checked.loaded;
    let file = loaded
        .registry
        .as_ref()
        .map(|r| r.file.display().to_string());
    for d in loaded.diagnostics.iter() {
        err!("{}", d.render(&loaded.sources));
        errln!("");
    }
    let errors = loaded.diagnostics.errors().count();
    let warnings = loaded.diagnostics.warnings().count();
    let (Some(reg), Some(g)) = (checked.registry(), graph) else {
        errln!(
            "error: the registry is invalid: {} and {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
        return;
    };
    let profile = reg
        .profile
        .as_deref()
        .map(|p| format!(" (profile {p})"))
        .unwrap_or_default();
    let disabled = reg.services.values().filter(|s| !s.enabled()).count();
    wln!(
        o,
        "ok: {}{profile} is valid: {} in the plan, {} disabled, {}",
        file.unwrap_or_default(),
        plural(g.len(), "service"),
        disabled,
        plural(warnings, "warning")
    );
    wln!(o);
    wln!(
        o,
        "startup plan (each service starts as soon as its own dependencies are met):"
    );
    for (i, wave) in g.waves().iter().enumerate() {
        let items: Vec<String> = wave
            .iter()
            .map(|n| {
                let deps = g.dependencies(n);
                let spec = &reg.services[*n];
                let mut tags = Vec::new();
                tags.push(spec.kind.kind_name().to_string());
                if spec.common.critical {
                    tags.push("critical".into());
                }
                if spec.common.oneshot {
                    tags.push("oneshot".into());
                }
                let after = if deps.is_empty() {
                    String::new()
                } else {
                    format!(
                        " after {}",
                        deps.iter()
                            .map(|(d, c)| format!("{d} {c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                format!("{n} [{}]{after}", tags.join(", "))
            })
            .collect();
        wln!(o, "  wave {i}:");
        for item in items {
            wln!(o, "    {item}");
        }
    }
    wln!(
        o,
        "shutdown order (dependents first, each wave in parallel):"
    );
    for (i, wave) in g.shutdown_waves().iter().enumerate() {
        wln!(o, "  {}. {}", i + 1, wave.join(", "));
    }
    if let Some(results) = connect {
        wln!(o);
        wln!(o, "endpoints (--connect):");
        if results.is_empty() {
            wln!(o, "  (none)");
        }
        for r in results {
            let status = match (r.ok, &r.error) {
                (Some(true), _) => format!("ok in {} ms", r.millis.unwrap_or(0)),
                (Some(false), Some(e)) => format!("FAILED: {e}"),
                (_, Some(e)) => format!("skipped: {e}"),
                _ => "skipped".into(),
            };
            wln!(
                o,
                "  {} {} {}: {status}",
                r.services.join(","),
                r.kind,
                r.target
            );
        }
    }
    out!("{o}");
}

/// The JSON report of `check` (shape documented in the README; `version`
/// changes only when a field changes meaning or goes away).
#[derive(serde::Serialize)]
struct CheckReport<'a> {
    version: u32,
    valid: bool,
    file: Option<String>,
    profile: Option<&'a str>,
    errors: Vec<JsonDiagnostic>,
    warnings: Vec<JsonDiagnostic>,
    plan: Option<PlanReport<'a>>,
    disabled: Option<Vec<&'a str>>,
    services: Option<serde_json::Map<String, Json>>,
    connect: Option<&'a [ConnectResult]>,
}

#[derive(serde::Serialize)]
struct PlanReport<'a> {
    waves: Vec<Vec<&'a str>>,
    shutdown: Vec<Vec<&'a str>>,
    services: Vec<crate::graph::PlanEntry>,
}

/// Writes the report straight to stdout, without building a JSON tree.
fn print_json(
    checked: &Checked,
    graph: Option<&Graph>,
    connect: Option<&[ConnectResult]>,
    resolved: bool,
) {
    let loaded = &checked.loaded;
    let diags = |errors: bool| -> Vec<JsonDiagnostic> {
        loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error() == errors)
            .map(|d| d.to_json(&loaded.sources))
            .collect()
    };
    let reg = checked.registry();
    let report = CheckReport {
        version: CHECK_JSON_VERSION,
        valid: reg.is_some()
            && graph.is_some()
            && !connect.is_some_and(|c| c.iter().any(|r| r.ok == Some(false))),
        file: loaded.sources.path(0).map(|p| p.display().to_string()),
        profile: reg.and_then(|r| r.profile.as_deref()),
        errors: diags(true),
        warnings: diags(false),
        plan: reg.zip(graph).map(|(reg, g)| PlanReport {
            waves: g.waves(),
            shutdown: g.shutdown_waves(),
            services: g.plan(reg),
        }),
        disabled: reg.map(|r| {
            r.services
                .values()
                .filter(|s| !s.enabled())
                .map(|s| s.name.as_str())
                .collect()
        }),
        services: reg.filter(|_| resolved).map(|r| {
            r.services
                .values()
                .filter(|s| graph.is_some_and(|g| g.contains(&s.name)))
                .map(|s| {
                    // Every string a user wrote may hold a DSN (a command's
                    // argument, an environment value, a custom kind's key).
                    let mut j = s.to_json();
                    crate::config::secret::redact_json(&mut j);
                    (s.name.clone(), j)
                })
                .collect()
        }),
        connect,
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    // A closed pipe is not an error worth reporting.
    let _ = serde_json::to_writer_pretty(&mut w, &report);
    let _ = std::io::Write::write_all(&mut w, b"\n");
    let _ = std::io::Write::flush(&mut w);
}

/// One endpoint probed by `--connect`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectResult {
    pub services: Vec<String>,
    pub kind: &'static str,
    pub target: String,
    /// `None` when skipped.
    pub ok: Option<bool>,
    pub error: Option<String>,
    pub millis: Option<u128>,
}

/// The endpoints `--connect` probes: the checks of `external` services and
/// the stores data services talk to. A data service that depends (directly
/// or not) on a `process` service is taken to use that managed server, which
/// is not running during a dry run: its endpoints are listed as skipped.
fn endpoints(
    reg: &Registry,
    kinds: &KindTable,
    g: &Graph,
) -> Vec<(String, Endpoint, Option<String>)> {
    let runs = |name: &str| {
        kinds
            .get(reg.services[name].kind.kind_name())
            .map(|k| k.runs())
    };
    let mut out = Vec::new();
    let mut managed_cache: HashMap<String, Option<String>> = HashMap::new();
    for name in g.names() {
        let s = &reg.services[name];
        let mut eps: Vec<Endpoint> = Vec::new();
        if runs(name) == Some(Runs::Check) {
            for probe in [
                s.common.ready.as_ref().map(|p| &p.check),
                s.common.health.as_ref().map(|p| &p.check),
            ]
            .into_iter()
            .flatten()
            {
                match probe {
                    ProbeCheck::Tcp(h) => eps.push(Endpoint::Tcp(h.clone())),
                    ProbeCheck::Http(u) => eps.push(Endpoint::Http(u.clone(), None)),
                    ProbeCheck::Postgres(d) => eps.push(Endpoint::Postgres(d.clone())),
                    ProbeCheck::Redis(d) => eps.push(Endpoint::Redis(d.clone())),
                    _ => {}
                }
            }
        }
        eps.extend(s.kind.endpoints());
        if eps.is_empty() {
            continue;
        }
        let managed = managed_dependency(&runs, g, name, &mut managed_cache);
        for e in eps {
            out.push((name.to_string(), e, managed.clone()));
        }
    }
    out
}

fn managed_dependency(
    runs: &dyn Fn(&str) -> Option<Runs>,
    g: &Graph,
    name: &str,
    cache: &mut HashMap<String, Option<String>>,
) -> Option<String> {
    let mut stack = vec![name.to_string()];
    let mut seen = HashSet::new();
    while let Some(n) = stack.pop() {
        if let Some(c) = cache.get(&n) {
            if c.is_some() {
                return c.clone();
            }
            continue;
        }
        if !seen.insert(n.clone()) {
            continue;
        }
        for (d, _) in g.dependencies(&n) {
            if runs(d) == Some(Runs::Process) {
                let r = Some(d.to_string());
                cache.insert(name.to_string(), r.clone());
                return r;
            }
            stack.push(d.to_string());
        }
    }
    cache.insert(name.to_string(), None);
    None
}

fn run_connect(
    reg: &Registry,
    kinds: &KindTable,
    g: &Graph,
    timeout: Duration,
) -> Vec<ConnectResult> {
    // One probe per distinct endpoint, in parallel.
    let mut by_target: Vec<(String, Endpoint, Vec<String>, Option<String>)> = Vec::new();
    for (service, e, managed) in endpoints(reg, kinds, g) {
        let key = format!(
            "{}:{}",
            e.kind(),
            match &e {
                Endpoint::Postgres(t) => format!("{} {:?}", t.dsn.0.expose(), t.tls_ca),
                Endpoint::Redis(t) => format!("{} {:?}", t.url.0.expose(), t.tls_ca),
                other => other.display(),
            }
        );
        match by_target.iter_mut().find(|(k, ..)| *k == key) {
            Some((_, _, services, m)) => {
                services.push(service);
                if managed.is_none() {
                    *m = None;
                }
            }
            None => by_target.push((key, e, vec![service], managed)),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![ConnectResult {
                services: Vec::new(),
                kind: "runtime",
                target: String::new(),
                ok: Some(false),
                error: Some(format!("cannot start the async runtime: {e}")),
                millis: None,
            }];
        }
    };
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (_, e, services, managed) in by_target {
            tasks.push(tokio::spawn(async move {
                if let Some(m) = managed {
                    return ConnectResult {
                        kind: e.kind(),
                        target: e.display(),
                        services,
                        ok: None,
                        error: Some(format!("served by {m}, which warden starts itself")),
                        millis: None,
                    };
                }
                let o = crate::probe::check(&e, timeout).await;
                ConnectResult {
                    kind: e.kind(),
                    target: e.display(),
                    services,
                    ok: Some(o.result.is_ok()),
                    error: o.result.err().map(|e| crate::config::secret::redact(&e)),
                    millis: Some(o.elapsed.as_millis()),
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    })
}

pub fn graph(args: &GraphArgs, kinds: &Kinds) -> u8 {
    let checked = load(&args.registry, &kinds.table());
    let Some(g) = &checked.graph else {
        for d in checked.loaded.diagnostics.errors() {
            err!("{}", d.render(&checked.loaded.sources));
            errln!("");
        }
        errln!("error: the registry is invalid; run `warden check` for details");
        return exit::INVALID;
    };
    let g = if args.registry.only.is_empty() {
        g.clone()
    } else {
        match select(&checked, g, &args.registry.only) {
            Ok(s) => s,
            Err(e) => {
                errln!("error: {e}");
                return exit::USAGE;
            }
        }
    };
    match args.format {
        GraphFormat::Dot => out!("{}", g.to_dot()),
        GraphFormat::Mermaid => out!("{}", g.to_mermaid()),
        GraphFormat::Json => outln!("{}", pretty(&g.to_json())),
    }
    exit::OK
}
