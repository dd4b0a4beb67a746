//! Cross-checks that typing one value at a time cannot see: combinations
//! of keys, a kind's allowed probes and actions, the API's exposure. The
//! dependency graph is checked by `crate::graph`.

use std::collections::HashMap;

use super::diag::{Diagnostic, Diagnostics, did_you_mean};
use super::model::{Kind, KindSpec, ProbeCheck, Registry, RestartPolicy, ServiceSpec};
use super::node::Node;
use super::source::Span;

pub(super) fn check(
    reg: &Registry,
    root: &Node,
    nodes: &HashMap<String, Node>,
    diags: &mut Diagnostics,
) {
    check_api(reg, root, diags);
    for s in reg.services.values() {
        if matches!(s.kind, KindSpec::Api) {
            continue;
        }
        let node = nodes.get(&s.name);
        let at = |path: &[&str]| -> Span {
            let mut n = node;
            let mut span = s.span;
            for p in path {
                n = n.and_then(|x| match (&x.value, p.parse::<usize>()) {
                    (super::node::Value::Array(items), Ok(i)) => items.get(i),
                    _ => x.get(p),
                });
                match n {
                    Some(x) => span = x.span,
                    None => break,
                }
            }
            span
        };
        let mut err = |code: &'static str, path: &[&str], msg: String| {
            let key = std::iter::once("services")
                .chain(std::iter::once(s.name.as_str()))
                .chain(path.iter().copied())
                .collect::<Vec<_>>()
                .join(".");
            diags.push(
                Diagnostic::error(code, format!("{key}: {msg}"))
                    .at(at(path))
                    .service(s.name.clone())
                    .key(key),
            );
        };
        check_service(reg, s, &mut err);
    }
    warnings(reg, nodes, diags);
}

fn check_api(reg: &Registry, root: &Node, diags: &mut Diagnostics) {
    let api = &reg.api;
    if api.enabled && api.token().is_none() && !api.listen.ip().is_loopback() {
        let span = root
            .get("api")
            .and_then(|a| a.get("listen"))
            .map(|n| n.span);
        diags.push(
            Diagnostic::error(
                "insecure-api",
                format!(
                    "api.listen: {} is not a loopback address and no token is set, so anyone who reaches it could stop services",
                    api.listen
                ),
            )
            .at_opt(span)
            .key("api.listen")
            .help("set api.token (e.g. token = \"${WARDEN_API_TOKEN}\") or listen on 127.0.0.1"),
        );
    }
}

fn check_service(
    reg: &Registry,
    s: &ServiceSpec,
    err: &mut dyn FnMut(&'static str, &[&str], String),
) {
    let kind = s.kind.builtin();
    let kind_name = s.kind.kind_name();
    let c = &s.common;

    // Probes.
    match kind {
        Some(Kind::External) if c.ready.is_none() => err(
            "missing-key",
            &[],
            "kind external needs a `ready` probe: the check of the thing warden does not run, e.g. ready = { tcp = \"db:5432\" }".into(),
        ),
        Some(k) if k.in_process() && c.ready.is_some() => err(
            "invalid-probe",
            &["ready"],
            format!("kind {k} says when it is ready itself; remove `ready` (use `health` for an extra liveness check)"),
        ),
        _ => {}
    }
    if let Some(ready) = &c.ready
        && matches!(ready.check, ProbeCheck::Log(_) | ProbeCheck::Notify)
        && kind != Some(Kind::Process)
    {
        err(
            "invalid-probe",
            &["ready"],
            format!(
                "a {} probe reads a child process's output or socket; kind {kind_name} has none",
                ready.check.name()
            ),
        );
    }
    if let Some(health) = &c.health
        && matches!(health.check, ProbeCheck::Log(_) | ProbeCheck::Notify)
    {
        err(
            "invalid-probe",
            &["health"],
            format!(
                "a {} probe only says when a process is ready; use tcp, http, exec, postgres or redis for health",
                health.check.name()
            ),
        );
    }

    // Oneshot.
    if c.oneshot {
        if matches!(kind, Some(Kind::External))
            || kind.is_some_and(|k| k.in_process() && k != Kind::Retention)
        {
            err(
                "invalid-value",
                &["oneshot"],
                format!("kind {kind_name} runs continuously and cannot be oneshot"),
            );
        } else if c.restart.policy == RestartPolicy::Always {
            err(
                "invalid-value",
                &["restart", "policy"],
                "a oneshot service with restart policy \"always\" would run forever; use \"on-failure\" or \"never\"".into(),
            );
        }
    }

    // Restart backoff.
    let b = &c.restart.backoff;
    if b.multiplier < 1.0 {
        err(
            "invalid-value",
            &["restart", "backoff", "multiplier"],
            format!(
                "{} is below 1; the delay must not shrink between restarts",
                b.multiplier
            ),
        );
    }
    if b.initial > b.max {
        err(
            "invalid-value",
            &["restart", "backoff", "initial"],
            format!(
                "{} is longer than backoff.max ({})",
                humantime::format_duration(b.initial),
                humantime::format_duration(b.max)
            ),
        );
    }

    // Scheduled actions.
    let actions: Vec<&str> = match (&s.kind, kind) {
        (_, Some(k)) => k.actions().to_vec(),
        (KindSpec::Custom { .. }, None) => Vec::new(),
        _ => Vec::new(),
    };
    let custom = matches!(s.kind, KindSpec::Custom { .. });
    for (i, sched) in c.schedule.iter().enumerate() {
        if !custom && !actions.contains(&sched.action.as_str()) {
            let idx = i.to_string();
            let known = if actions.is_empty() {
                "(none)".to_string()
            } else {
                actions.join(", ")
            };
            let mut m = format!(
                "{:?} is not an action of kind {kind_name}; known: {known}",
                sched.action
            );
            if let Some(g) = did_you_mean(&sched.action, actions.iter().copied()) {
                m.push_str(&format!(" (did you mean {g:?}?)"));
            }
            err("unknown-action", &["schedule", &idx, "action"], m);
        }
        if sched.every.is_zero() {
            let idx = i.to_string();
            err(
                "invalid-value",
                &["schedule", &idx, "every"],
                "a period of zero would run the action without pause".into(),
            );
        }
    }

    // Singletons need a PostgreSQL session to hold their lock.
    if c.singleton {
        let own_pg = match &s.kind {
            KindSpec::OutboxRelay(_)
            | KindSpec::MemorySync(_)
            | KindSpec::StreamReplicator(_)
            | KindSpec::DualWrite(_)
            | KindSpec::Retention(_) => true,
            KindSpec::Custom { settings, .. } => settings.get("postgres").is_some(),
            _ => false,
        };
        if !own_pg && reg.warden.postgres.is_none() {
            err(
                "missing-key",
                &["singleton"],
                "a singleton takes a PostgreSQL advisory lock, but this service has no `postgres` setting and [warden] postgres is not set".into(),
            );
        }
    }

    // Kind-specific checks.
    match &s.kind {
        KindSpec::Retention(r) => {
            for (i, rule) in r.rules.0.iter().enumerate() {
                let idx = i.to_string();
                if let Some(w) = &rule.r#where
                    && (w.contains(';') || w.contains("--") || w.contains("/*"))
                {
                    err(
                        "invalid-value",
                        &["rules", &idx, "where"],
                        format!("{w:?} must be one SQL condition, without `;` or comments"),
                    );
                }
                if rule.keep.is_zero() {
                    err(
                        "invalid-value",
                        &["rules", &idx, "keep"],
                        "keep = 0 would delete every row; give an age such as \"30d\"".into(),
                    );
                }
            }
        }
        KindSpec::DualWrite(d) if d.tolerance < 0.0 => {
            err(
                "invalid-value",
                &["tolerance"],
                format!(
                    "{} is negative; a relative tolerance is 0 or more",
                    d.tolerance
                ),
            );
        }
        _ => {}
    }
}

fn warnings(reg: &Registry, nodes: &HashMap<String, Node>, diags: &mut Diagnostics) {
    for s in reg.services.values() {
        if !s.enabled() || matches!(s.kind, KindSpec::Api) {
            continue;
        }
        let node = nodes.get(&s.name);
        if s.common.stop.timeout > reg.warden.shutdown_timeout {
            let span = node
                .and_then(|n| n.get("stop"))
                .and_then(|n| n.get("timeout"))
                .map(|n| n.span);
            diags.push(
                Diagnostic::warning(
                    "stop-timeout",
                    format!(
                        "services.{}.stop.timeout ({}) is longer than warden.shutdown_timeout ({}); the shutdown cap will cut it short",
                        s.name,
                        humantime::format_duration(s.common.stop.timeout),
                        humantime::format_duration(reg.warden.shutdown_timeout)
                    ),
                )
                .at_opt(span.or(Some(s.span)))
                .service(s.name.clone()),
            );
        }
        let signal_set = node
            .and_then(|n| n.get("stop"))
            .and_then(|n| n.get("signal"));
        if let (Some(sig), Some(k)) = (signal_set, s.kind.builtin())
            && k.in_process()
        {
            diags.push(
                    Diagnostic::warning(
                        "ignored-key",
                        format!("services.{}.stop.signal has no effect: kind {k} runs inside warden and is stopped by cancellation", s.name),
                    )
                    .at(sig.span)
                    .service(s.name.clone()),
                );
        }
    }
}
