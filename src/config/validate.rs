//! Cross-checks that typing one value at a time cannot see: combinations
//! of keys, a kind's allowed probes and actions, the API's exposure. The
//! dependency graph is checked by `crate::graph`.

use std::collections::HashMap;
use std::time::Duration;

use super::diag::{Diagnostic, Diagnostics, did_you_mean};
use super::kind::{KindDef, KindTable, Problems, Runs, below_minimum};
use super::model::{Endpoint, ProbeCheck, Registry, RestartPolicy, ServiceSpec};
use super::node::Node;
use super::source::Span;
use super::types::{PgTarget, RedisTarget};

pub(super) fn check(
    reg: &Registry,
    kinds: &KindTable,
    root: &Node,
    nodes: &HashMap<String, Node>,
    diags: &mut Diagnostics,
) {
    check_api(reg, root, diags);
    let mut main: Option<&str> = None;
    for s in reg.services.values() {
        // The loader typed the service with a kind of the table (the API's
        // is the one exception, and has nothing to check).
        let Some(kind) = kinds.get(s.kind.kind_name()).filter(|_| !s.is_api()) else {
            continue;
        };
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
        check_service(reg, kind, s, &mut err);
        s.kind.check(&mut Problems::new(&mut err));
        if s.common.main {
            match main {
                Some(first) => err(
                    "invalid-value",
                    &["main"],
                    format!("{first} is the main service already; a registry has at most one"),
                ),
                None => main = Some(&s.name),
            }
            if !s.enabled() {
                let by = match &reg.profile {
                    Some(p) => format!("disabled by profile {p}"),
                    None => "disabled".to_string(),
                };
                err(
                    "invalid-value",
                    &["main"],
                    format!(
                        "the main service is {by}; warden would have nothing to wait for. Enable it, or set main on another service"
                    ),
                );
            }
        }
    }
    warnings(reg, kinds, nodes, diags);
}

fn check_api(reg: &Registry, root: &Node, diags: &mut Diagnostics) {
    let api = &reg.api;
    let span_of = |key: &str| root.get("api").and_then(|a| a.get(key)).map(|n| n.span);
    if api.stall_timeout < Duration::from_secs(1) {
        diags.push(
            Diagnostic::error(
                "invalid-value",
                format!(
                    "api.stall_timeout: {} is too short; a stream whose reader is only busy for a moment would be dropped",
                    humantime::format_duration(api.stall_timeout)
                ),
            )
            .at_opt(span_of("stall_timeout"))
            .key("api.stall_timeout")
            .help("use at least 1s (the default is 30s)"),
        );
    }
    match (&api.tls_cert, &api.tls_key) {
        (Some(_), None) => diags.push(
            Diagnostic::error(
                "missing-key",
                "api.tls_cert is set without api.tls_key: HTTPS needs the certificate's private key",
            )
            .at_opt(span_of("tls_cert"))
            .key("api.tls_key")
            .help("set tls_key to the PEM file of the certificate's private key"),
        ),
        (None, Some(_)) => diags.push(
            Diagnostic::error(
                "missing-key",
                "api.tls_key is set without api.tls_cert: HTTPS needs the certificate too",
            )
            .at_opt(span_of("tls_key"))
            .key("api.tls_cert")
            .help("set tls_cert to the PEM file of the certificate (then its intermediates)"),
        ),
        _ => {}
    }
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

/// The shortest probe `interval` and `timeout`.
pub const MIN_PROBE_TIME: Duration = Duration::from_millis(10);
const INTERVAL_WHY: &str = "a shorter interval checks without pause";
const TIMEOUT_WHY: &str = "an attempt needs time to connect; with less every attempt fails";

fn check_service(
    reg: &Registry,
    kind: &KindDef,
    s: &ServiceSpec,
    err: &mut dyn FnMut(&'static str, &[&str], String),
) {
    let kind_name = kind.name();
    let c = &s.common;

    // Probes.
    match kind.runs() {
        Runs::Check if c.ready.is_none() => err(
            "missing-key",
            &[],
            format!(
                "kind {kind_name} needs a `ready` probe: the check of the thing warden does not run, e.g. ready = {{ tcp = \"db:5432\" }}"
            ),
        ),
        Runs::InProcess if c.ready.is_some() => err(
            "invalid-probe",
            &["ready"],
            format!(
                "kind {kind_name} says when it is ready itself; remove `ready` (use `health` for an extra liveness check)"
            ),
        ),
        _ => {}
    }
    if let Some(ready) = &c.ready
        && matches!(ready.check, ProbeCheck::Log(_) | ProbeCheck::Notify)
        && kind.runs() != Runs::Process
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

    // Probe timings: a zero interval polls without pause, a zero timeout
    // fails every attempt.
    let mut at_least = |path: &[&str], value: Duration, why: &str| {
        if value < MIN_PROBE_TIME {
            err(
                "invalid-value",
                path,
                below_minimum(value, MIN_PROBE_TIME, why),
            );
        }
    };
    if let Some(ready) = &c.ready {
        at_least(&["ready", "interval"], ready.timing.interval, INTERVAL_WHY);
        at_least(&["ready", "timeout"], ready.timing.timeout, TIMEOUT_WHY);
    }
    if let Some(health) = &c.health {
        at_least(
            &["health", "interval"],
            health.timing.interval,
            INTERVAL_WHY,
        );
        at_least(&["health", "timeout"], health.timing.timeout, TIMEOUT_WHY);
    }

    // A stop command runs beside a child process.
    if c.stop.command.is_some() && kind.runs() != Runs::Process {
        err(
            "invalid-value",
            &["stop", "command"],
            format!(
                "kind {kind_name} runs no process of its own to stop with a command; it is stopped by cancellation"
            ),
        );
    }

    // Oneshot.
    if c.oneshot {
        if !kind.may_be_oneshot() {
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
    let actions = kind.action_names();
    for (i, sched) in c.schedule.iter().enumerate() {
        if !actions.contains(&sched.action.as_str()) {
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
        let own_pg = s.kind.leadership().is_some();
        if !own_pg && reg.warden.postgres.is_none() {
            err(
                "missing-key",
                &["singleton"],
                "a singleton takes a PostgreSQL advisory lock, but this service has no `postgres` setting and [warden] postgres is not set".into(),
            );
        }
    }
}

fn warnings(
    reg: &Registry,
    kinds: &KindTable,
    nodes: &HashMap<String, Node>,
    diags: &mut Diagnostics,
) {
    for s in reg.services.values() {
        let Some(kind) = kinds.get(s.kind.kind_name()).filter(|_| !s.is_api()) else {
            continue;
        };
        if !s.enabled() {
            continue;
        }
        let node = nodes.get(&s.name);
        // With a stop command, the grace runs twice: command, then signal.
        let stop = &s.common.stop;
        let steps = if stop.command.is_some() { 2 } else { 1 };
        if stop.timeout.saturating_mul(steps) > reg.warden.shutdown_timeout {
            let span = node
                .and_then(|n| n.get("stop"))
                .and_then(|n| n.get("timeout"))
                .map(|n| n.span);
            let twice = if steps == 2 {
                " (twice: once for stop.command, once for the signal)"
            } else {
                ""
            };
            diags.push(
                Diagnostic::warning(
                    "stop-timeout",
                    format!(
                        "services.{}.stop.timeout ({}){twice} is longer than warden.shutdown_timeout ({}); the shutdown cap will cut it short",
                        s.name,
                        humantime::format_duration(stop.timeout),
                        humantime::format_duration(reg.warden.shutdown_timeout)
                    ),
                )
                .at_opt(span.or(Some(s.span)))
                .service(s.name.clone()),
            );
        }
        unused_tls_ca(s, node, diags);
        let signal_set = node
            .and_then(|n| n.get("stop"))
            .and_then(|n| n.get("signal"));
        if let Some(sig) = signal_set
            && kind.runs() == Runs::InProcess
        {
            diags.push(
                    Diagnostic::warning(
                        "ignored-key",
                        format!("services.{}.stop.signal has no effect: kind {} runs inside warden and is stopped by cancellation", s.name, kind.name()),
                    )
                    .at(sig.span)
                    .service(s.name.clone()),
                );
        }
    }
}

/// Whether a connection to `e` checks the server's certificate against
/// the CA its `tls_ca` names.
fn checks_certificate(e: &Endpoint) -> bool {
    use super::dsn::{Verify, split_postgres, split_redis};
    let verify = match e {
        Endpoint::Postgres(t) => split_postgres(t.dsn.0.expose())
            .ok()
            .and_then(|p| p.verify(true)),
        Endpoint::Redis(t) => split_redis(t.url.0.expose()).ok().and_then(|p| p.verify),
        Endpoint::Http(u, _) if u.0.trim_start().starts_with("https://") => Some(Verify::Full),
        _ => None,
    };
    matches!(verify, Some(Verify::Chain | Verify::Full))
}

/// A `tls_ca` that no connection of its service (or probe) uses: it does
/// not turn TLS on, and a reader would think the server is verified.
fn unused_tls_ca(s: &ServiceSpec, node: Option<&Node>, diags: &mut Diagnostics) {
    let mut warn = |path: &[&str], ca: &super::types::CaFile| {
        let span = node
            .and_then(|n| path.iter().try_fold(n, |n, k| n.get(k)))
            .map(|n| n.span);
        diags.push(
            Diagnostic::warning(
                "unused-tls-ca",
                format!(
                    "services.{}.{} ({ca}) is not used: no connection it applies to checks the server's certificate",
                    s.name,
                    path.join(".")
                ),
            )
            .help("tls_ca does not turn TLS on: set sslmode=verify-full (or require) in the PostgreSQL DSN, use rediss:// for Redis, or https:// for an endpoint")
            .at_opt(span.or(Some(s.span)))
            .service(s.name.clone()),
        );
    };
    if let Some(ca) = s.kind.tls_ca()
        && !s.kind.endpoints().iter().any(checks_certificate)
        && !s
            .kind
            .leadership()
            .is_some_and(|t| checks_certificate(&Endpoint::Postgres(t)))
    {
        warn(&["tls_ca"], ca);
    }
    for (key, probe) in [
        ("ready", s.common.ready.as_ref().map(|p| &p.check)),
        ("health", s.common.health.as_ref().map(|p| &p.check)),
    ] {
        let endpoint = match probe {
            Some(ProbeCheck::Postgres(t)) if t.tls_ca.is_some() => Endpoint::Postgres(t.clone()),
            Some(ProbeCheck::Redis(t)) if t.tls_ca.is_some() => Endpoint::Redis(t.clone()),
            _ => continue,
        };
        if !checks_certificate(&endpoint) {
            let (Endpoint::Postgres(PgTarget {
                tls_ca: Some(ca), ..
            })
            | Endpoint::Redis(RedisTarget {
                tls_ca: Some(ca), ..
            })) = &endpoint
            else {
                continue;
            };
            warn(&[key, "tls_ca"], ca);
        }
    }
}
