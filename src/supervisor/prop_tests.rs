//! A property test of the supervisor on paused time: random sequences of
//! reloads (services added, removed, changed, disabled, restored while
//! still stopping), operator controls and the passing of time, over a small
//! universe of mock services that crash, panic, never become ready, ignore
//! their stop, complete or fail for good. After every step, and once time
//! has run on with no more steps, the states the supervisor publishes must
//! make sense; a shutdown must end it within `shutdown_timeout`.
//!
//! A failure prints the shrunk sequence of steps, the registries it
//! reloaded (as TOML) and what the supervisor published after each step.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value as Json;
use tokio::time::Instant;

use super::state::State;
use super::tests::{Log, MockFactory, MockSettings, checked, poke};
use super::{EXIT_CRITICAL, EXIT_OK, Handle, ServiceStatus, Supervisor};
use crate::config::Runs;
use crate::services::{Kinds, Registration};

/// The names a universe may use (the first `n` of them).
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A service that runs in every registry, as the API does in real use, so
/// that the supervisor does not end by itself when everything else is done.
const KEEPER: &str = "keeper";

/// `[warden] shutdown_timeout` of every registry.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// The backoff's `max` of every service.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One step of time running on with no step of the sequence.
const SETTLE_STEP: Duration = Duration::from_secs(10);

/// Slack for the time bounds: messages due at the same instant as the
/// check may not have been handled yet.
const SLACK: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cond {
    Started,
    Ready,
    Completed,
}

impl Cond {
    fn as_str(self) -> &'static str {
        match self {
            Cond::Started => "started",
            Cond::Ready => "ready",
            Cond::Completed => "completed",
        }
    }
}

/// One way a service may be configured: the mock's behaviour and the
/// common settings.
#[derive(Clone)]
struct Variant {
    /// Unique in the universe; the mock's `status`, so that the test can
    /// tell which variant a run was built from.
    tag: u64,
    ready_after: Option<&'static str>,
    exit_after: Option<&'static str>,
    exit: &'static str,
    fail_times: u64,
    stop_delay: Option<&'static str>,
    stop_timeout_s: u64,
    start_timeout_s: u64,
    oneshot: bool,
    policy: &'static str,
    max_restarts: u32,
    critical: bool,
    on_dependency_restart: &'static str,
    schedule_every_s: Option<u64>,
    /// On services written before it (indices into `NAMES`).
    deps: Vec<(usize, Cond)>,
}

impl Variant {
    /// The service's table, with the dependencies it has in a registry.
    fn toml(&self, name: &str, enabled: bool, deps: &[(usize, Cond)]) -> String {
        let mut t = format!(
            "[services.{name}]\nkind = \"mock\"\nstatus = {}\n",
            self.tag
        );
        if !enabled {
            t += "enabled = false\n";
        }
        if self.critical {
            t += "critical = true\n";
        }
        if self.oneshot {
            t += "oneshot = true\n";
        }
        for (key, value) in [
            ("ready_after", self.ready_after),
            ("exit_after", self.exit_after),
            ("stop_delay", self.stop_delay),
        ] {
            if let Some(v) = value {
                t += &format!("{key} = \"{v}\"\n");
            }
        }
        if self.exit != "ok" {
            t += &format!("exit = \"{}\"\n", self.exit);
        }
        if self.fail_times > 0 {
            t += &format!("fail_times = {}\n", self.fail_times);
        }
        t += &format!(
            "start_timeout = \"{}s\"\non_dependency_restart = \"{}\"\nstop = {{ timeout = \"{}s\" }}\n",
            self.start_timeout_s, self.on_dependency_restart, self.stop_timeout_s
        );
        t += &format!(
            "restart = {{ policy = \"{}\", max_restarts = {}, window = \"10s\", backoff = {{ initial = \"100ms\", max = \"{}ms\" }} }}\n",
            self.policy,
            self.max_restarts,
            BACKOFF_MAX.as_millis()
        );
        if !deps.is_empty() {
            let d: Vec<String> = deps
                .iter()
                .map(|(j, c)| format!("{} = \"{}\"", NAMES[*j], c.as_str()))
                .collect();
            t += &format!("depends_on = {{ {} }}\n", d.join(", "));
        }
        if let Some(every) = self.schedule_every_s {
            t += &format!(
                "[[services.{name}.schedule]]\naction = \"poke\"\nevery = \"{every}s\"\nargs = {{ takes = \"500ms\" }}\n"
            );
        }
        t
    }
}

impl fmt::Debug for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let deps: Vec<(usize, Cond)> = self.deps.clone();
        write!(f, "{:?}", self.toml("_", true, &deps))
    }
}

/// The variants of each name.
#[derive(Clone, Debug)]
struct Universe {
    variants: Vec<Vec<Variant>>,
}

/// A registry: for each name, absent or (variant, enabled).
type Choice = Vec<Option<(u8, bool)>>;

#[derive(Clone, Debug)]
enum Step {
    Reload(Choice),
    Start(u8),
    Stop(u8),
    Restart(u8),
    /// Let this many milliseconds of paused time pass.
    Advance(u64),
}

/// What the test knows of a registry it applied.
struct Model {
    text: String,
    services: Vec<Service>,
    summary: String,
}

/// One service of a registry the test applied.
struct Service {
    name: String,
    /// The variant's tag (the mock's `status`).
    tag: u64,
    enabled: bool,
    /// Dependencies with their conditions.
    deps: Vec<(String, Cond)>,
    /// Its `[[schedule]]` entry's period, in seconds.
    every_s: Option<u64>,
}

impl Model {
    fn get(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The registry `choice` picks from `u`, made valid: a dependency on a
/// service that is absent (or disabled while the dependent is enabled) is
/// dropped, and `completed` on a service that is not a oneshot is `ready`.
fn render(u: &Universe, choice: &Choice) -> Model {
    let n = u.variants.len();
    let pick = |i: usize| -> Option<(&Variant, bool)> {
        choice
            .get(i)
            .copied()
            .flatten()
            .map(|(v, e)| (&u.variants[i][v as usize % u.variants[i].len()], e))
    };
    let mut text = format!(
        "[warden]\nshutdown_timeout = \"{}s\"\n[services.{KEEPER}]\nkind = \"mock\"\n",
        SHUTDOWN_TIMEOUT.as_secs()
    );
    let mut services = Vec::new();
    let mut summary = Vec::new();
    for (i, name) in NAMES.iter().enumerate().take(n) {
        let Some((v, enabled)) = pick(i) else {
            summary.push(format!("{name}=-"));
            continue;
        };
        let mut deps: Vec<(usize, Cond)> = Vec::new();
        for &(j, c) in &v.deps {
            let Some((dv, dep_enabled)) = pick(j) else {
                continue;
            };
            if enabled && !dep_enabled || deps.iter().any(|(k, _)| *k == j) {
                continue;
            }
            let c = if c == Cond::Completed && !dv.oneshot {
                Cond::Ready
            } else {
                c
            };
            deps.push((j, c));
        }
        text += &v.toml(name, enabled, &deps);
        let idx = v.tag % 10;
        summary.push(format!(
            "{}=v{idx}{}",
            name,
            if enabled { "" } else { "(off)" }
        ));
        services.push(Service {
            name: name.to_string(),
            tag: v.tag,
            enabled,
            deps: deps
                .iter()
                .map(|(j, c)| (NAMES[*j].to_string(), *c))
                .collect(),
            every_s: v.schedule_every_s,
        });
    }
    Model {
        text,
        services,
        summary: summary.join(" "),
    }
}

fn variant(i: usize) -> impl Strategy<Value = Variant> {
    let deps = if i == 0 {
        Just(Vec::new()).boxed()
    } else {
        let cond = prop_oneof![
            Just(Cond::Started),
            Just(Cond::Ready),
            Just(Cond::Completed)
        ];
        proptest::collection::vec((0..i, cond), 0..=2).boxed()
    };
    let behaviour = (
        prop_oneof![
            3 => Just(None),
            1 => Just(Some("300ms")),
            1 => Just(Some("2s")),
            1 => Just(Some("never")),
        ],
        prop_oneof![
            2 => Just(None),
            1 => Just(Some("500ms")),
            1 => Just(Some("1500ms")),
            1 => Just(Some("4s")),
        ],
        prop_oneof![3 => Just("ok"), 3 => Just("err"), 1 => Just("panic")],
        prop_oneof![4 => Just(0u64), 1 => 1u64..3],
        prop_oneof![
            2 => Just(None),
            1 => Just(Some("200ms")),
            1 => Just(Some("2s")),
            1 => Just(Some("forever")),
        ],
    );
    let common = (
        prop_oneof![Just(1u64), Just(3u64)],
        prop_oneof![Just(1u64), Just(3u64), Just(10u64)],
        prop_oneof![3 => Just(false), 1 => Just(true)],
        prop_oneof![Just("always"), Just("on-failure"), Just("never")],
        1u32..4,
        prop_oneof![9 => Just(false), 1 => Just(true)],
        prop_oneof![Just("ignore"), Just("restart"), Just("stop")],
        prop_oneof![3 => Just(None), 1 => Just(Some(1u64)), 1 => Just(Some(2u64))],
    );
    (behaviour, common, deps).prop_map(
        |(
            (ready_after, exit_after, exit, fail_times, stop_delay),
            (
                stop_timeout_s,
                start_timeout_s,
                oneshot,
                policy,
                max_restarts,
                critical,
                on_dependency_restart,
                schedule_every_s,
            ),
            deps,
        )| Variant {
            tag: 0,
            ready_after,
            exit_after,
            exit,
            fail_times,
            stop_delay,
            stop_timeout_s,
            start_timeout_s,
            oneshot,
            // A oneshot may not be restarted after a clean exit.
            policy: if oneshot && policy == "always" {
                "on-failure"
            } else {
                policy
            },
            max_restarts,
            critical,
            on_dependency_restart,
            schedule_every_s,
            deps,
        },
    )
}

fn universe() -> impl Strategy<Value = Universe> {
    (3usize..=NAMES.len())
        .prop_flat_map(|n| {
            (0..n)
                .map(|i| proptest::collection::vec(variant(i), 1..=3))
                .collect::<Vec<_>>()
        })
        .prop_map(|mut variants| {
            for (i, vs) in variants.iter_mut().enumerate() {
                for (k, v) in vs.iter_mut().enumerate() {
                    v.tag = 100 + 10 * i as u64 + k as u64;
                }
            }
            Universe { variants }
        })
}

fn choice() -> impl Strategy<Value = Choice> {
    proptest::collection::vec(
        prop_oneof![
            1 => Just(None),
            4 => (0u8..3, prop_oneof![4 => Just(true), 1 => Just(false)]).prop_map(Some),
        ],
        NAMES.len(),
    )
}

fn step() -> impl Strategy<Value = Step> {
    let name = 0u8..NAMES.len() as u8;
    prop_oneof![
        3 => choice().prop_map(Step::Reload),
        1 => name.clone().prop_map(Step::Start),
        1 => name.clone().prop_map(Step::Stop),
        1 => name.prop_map(Step::Restart),
        4 => prop_oneof![Just(0u64), Just(100), 0u64..=5000].prop_map(Step::Advance),
    ]
}

/// Lets every message already due be handled (no time passes).
async fn drain() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// What one case saw, for the failure message.
struct Transcript(Vec<String>);

impl Transcript {
    fn note(&mut self, t0: Instant, what: String, status: &[ServiceStatus]) {
        let states: Vec<String> = status
            .iter()
            .map(|s| format!("{}:{}", s.name, s.state))
            .collect();
        self.0.push(format!(
            "{:>7}ms {what}\n           -> {}",
            t0.elapsed().as_millis(),
            states.join(" ")
        ));
    }
}

/// The time bounds of a universe: nothing stays starting, stopping or in
/// backoff longer than its timeouts allow.
struct Bounds {
    starting: Duration,
    /// A stop that waits for its dependents' stops first (a restart stops
    /// them deepest first): one stop per service of the universe.
    chain: Duration,
}

fn bounds(u: &Universe) -> Bounds {
    let all = || u.variants.iter().flatten();
    Bounds {
        starting: Duration::from_secs(all().map(|v| v.start_timeout_s).max().unwrap_or(0)),
        chain: Duration::from_secs(all().map(|v| v.stop_timeout_s).max().unwrap_or(0))
            * (u.variants.len() as u32 + 1),
    }
}

/// The invariants that hold after every step. `settled`: time has run on
/// with no step for longer than any timeout.
fn check(
    status: &[ServiceStatus],
    model: &Model,
    bounds: &Bounds,
    shutting_down: bool,
    settled: bool,
    built: &HashMap<String, Json>,
) -> Result<(), String> {
    let state = |name: &str| status.iter().find(|s| s.name == name).map(|s| s.state);
    // The services listed are those of the last registry applied; a removed
    // one only while it stops (and not once time has run on).
    if state(KEEPER).is_none() {
        return Err(format!("{KEEPER} is not listed"));
    }
    for Service { name, enabled, .. } in &model.services {
        match state(name) {
            None => return Err(format!("{name} is in the registry but not listed")),
            Some(State::Disabled) if *enabled => {
                return Err(format!("{name} is enabled but disabled"));
            }
            Some(s) if !enabled && !matches!(s, State::Disabled | State::Stopping) => {
                return Err(format!("{name} is disabled in the registry but {s}"));
            }
            _ => {}
        }
    }
    for s in status {
        if s.name != KEEPER
            && model.get(&s.name).is_none()
            && (settled || s.state != State::Stopping)
        {
            return Err(format!(
                "{} was removed by the reload but is still listed, {}",
                s.name, s.state
            ));
        }
    }
    // last_error is the current trouble: none once a run is ready or has
    // completed.
    for s in status {
        if matches!(s.state, State::Ready | State::Completed) && s.last_error.is_some() {
            return Err(format!(
                "{} is {} with last_error {:?}",
                s.name, s.state, s.last_error
            ));
        }
    }
    // Nothing is starting, stopping or in backoff longer than its timers
    // allow.
    for s in status {
        let took = s.since.elapsed();
        let limit = match s.state {
            State::Starting => bounds.starting,
            State::Stopping => bounds.chain,
            // Its next run also waits for dependents its restart stops.
            State::Backoff => BACKOFF_MAX + bounds.chain,
            _ => continue,
        };
        if took > limit + SLACK {
            return Err(format!(
                "{} has been {} for {took:?} (its timers allow {limit:?})",
                s.name, s.state
            ));
        }
    }
    if !shutting_down {
        for Service { name, deps, .. } in &model.services {
            let dep_state = |d: &str| state(d).expect("a dependency is listed");
            match state(name) {
                // A pending service waits for a dependency that may still
                // meet its condition: the loop starts it as soon as they all
                // hold, and blocks it once one never can.
                Some(State::Pending) => {
                    let waits = deps.iter().any(|(d, c)| match dep_state(d) {
                        State::Pending | State::Stopping | State::Backoff | State::Standby => true,
                        State::Starting => *c != Cond::Started,
                        State::Ready => *c == Cond::Completed,
                        _ => false,
                    });
                    // A start also waits for dependents still stopping (a
                    // run of theirs may have counted on it), directly or
                    // through dependents waiting to run again: they stop in
                    // bounded time, and it starts then.
                    let mut stack = vec![name.as_str()];
                    let mut seen = std::collections::HashSet::new();
                    let mut dependent_stopping = false;
                    while let Some(n) = stack.pop() {
                        for o in &model.services {
                            if o.deps.iter().any(|(d, _)| d == n) && seen.insert(o.name.as_str()) {
                                if state(&o.name) == Some(State::Stopping) {
                                    dependent_stopping = true;
                                }
                                stack.push(o.name.as_str());
                            }
                        }
                    }
                    if !waits && !dependent_stopping {
                        let ds: Vec<String> = deps
                            .iter()
                            .map(|(d, c)| format!("{d} ({}) is {}", c.as_str(), dep_state(d)))
                            .collect();
                        return Err(format!(
                            "{name} is pending but waits for nothing that may come: {}",
                            ds.join(", ")
                        ));
                    }
                }
                // A blocked service has a dependency, direct or not, that
                // ended for good (or is stopping): starting that one again
                // unblocks it.
                Some(State::Blocked) => {
                    let mut stack: Vec<&str> = deps.iter().map(|(d, _)| d.as_str()).collect();
                    let mut cause = false;
                    while let Some(d) = stack.pop() {
                        if matches!(
                            dep_state(d),
                            State::Failed | State::Blocked | State::Stopped | State::Stopping
                        ) {
                            cause = true;
                            break;
                        }
                        if let Some(dep) = model.get(d) {
                            stack.extend(dep.deps.iter().map(|(d, _)| d.as_str()));
                        }
                    }
                    if !cause {
                        return Err(format!(
                            "{name} is blocked but none of its dependencies ended for good"
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    if settled {
        // What runs, runs the registry's settings.
        for Service { name, tag, .. } in &model.services {
            if matches!(state(name), Some(State::Starting | State::Ready)) {
                let ran = built
                    .get(name)
                    .and_then(|j| j.get("status"))
                    .and_then(Json::as_u64);
                if ran != Some(*tag) {
                    return Err(format!(
                        "{name} runs variant {ran:?}, but the registry has {tag}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Once time runs on with no step, in steps of `SETTLE_STEP`: a service
/// that was ready through the whole step ran its spec's `[[schedule]]`
/// entry about once a period (each run takes 500 ms, less than any
/// period), and one whose spec has none ran nothing (no timer of an older
/// spec is left).
fn check_schedules(
    status: &[ServiceStatus],
    model: &Model,
    log: &Log,
    now: Duration,
) -> Result<(), String> {
    let from = now.saturating_sub(SETTLE_STEP).as_millis();
    for s in status {
        let Some(service) = model.get(&s.name) else {
            continue;
        };
        if s.state != State::Ready || s.since.elapsed() < SETTLE_STEP {
            continue;
        }
        let ran = log
            .times(&format!("action {} poke", s.name))
            .into_iter()
            .filter(|t| *t > from)
            .count() as u64;
        let ok = match service.every_s {
            Some(every) => ran.abs_diff(SETTLE_STEP.as_secs() / every) <= 1,
            None => ran == 0,
        };
        if !ok {
            return Err(format!(
                "{} ran its scheduled action {ran} times in the last {SETTLE_STEP:?}, ready all along; its schedule: every {:?} s",
                s.name, service.every_s
            ));
        }
    }
    Ok(())
}

/// Whether the supervisor task has ended: `Err` if it panicked (a rejected
/// transition is a panic too: debug assertions are on in tests).
async fn ended(done: &mut tokio::task::JoinHandle<u8>) -> Result<Option<u8>, String> {
    if !done.is_finished() {
        return Ok(None);
    }
    match done.await {
        Ok(code) => Ok(Some(code)),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("the supervisor panicked: {msg}"))
        }
        Err(e) => Err(format!("the supervisor task: {e}")),
    }
}

/// Runs one case; `Err` says what broke, with the transcript.
async fn run_case(u: Universe, initial: Choice, steps: Vec<Step>) -> Result<(), String> {
    let t0 = Instant::now();
    let built: Arc<Mutex<HashMap<String, Json>>> = Default::default();
    let actions = Log::default();
    let mut model = render(&u, &initial);
    let (reg, graph) = checked(&model.text);
    let mut kinds = Kinds::new();
    kinds.register(
        Registration::new::<MockSettings>(
            "mock",
            Runs::InProcess,
            MockFactory {
                log: actions.clone(),
                t0,
                runs: Default::default(),
                built: built.clone(),
            },
        )
        .action(poke()),
    );
    let sup = Supervisor::new(&reg, graph, kinds).with_seed(1);
    let handle: Handle = sup.handle();
    let mut done = tokio::spawn(sup.run(std::future::pending()));
    let bounds = bounds(&u);
    let mut registries = vec![model.text.clone()];
    let mut log = Transcript(Vec::new());
    let mut finished: Option<u8> = None;
    let fail = |log: &Transcript, registries: &[String], why: String| -> String {
        let mut texts = String::new();
        for (i, t) in registries.iter().enumerate() {
            texts += &format!("--- registry {i}\n{t}");
        }
        format!(
            "{why}\n\nwhat happened:\n{}\n\nthe registries applied:\n{texts}",
            log.0.join("\n")
        )
    };
    drain().await;
    log.note(t0, format!("start: {}", model.summary), &handle.status());

    // Every step, then time running on with no more steps.
    let settle = std::iter::repeat_n(Step::Advance(SETTLE_STEP.as_millis() as u64), 12);
    let n_steps = steps.len();
    for (i, step) in steps.into_iter().chain(settle).enumerate() {
        let settled = i >= n_steps + 2;
        let what = match &step {
            Step::Reload(c) => {
                let m = render(&u, c);
                let (reg, graph) = checked(&m.text);
                match handle.request_reload(reg, graph).await {
                    Ok(s) => {
                        let what = format!(
                            "reload to registry {}: {} (added {:?}, removed {:?}, changed {:?})",
                            registries.len(),
                            m.summary,
                            s.added,
                            s.removed,
                            s.changed
                        );
                        registries.push(m.text.clone());
                        model = m;
                        what
                    }
                    Err(e) => format!("reload to {}: refused: {e}", m.summary),
                }
            }
            Step::Start(n) | Step::Stop(n) | Step::Restart(n) => {
                let name = NAMES[*n as usize % u.variants.len()];
                let (verb, r) = match &step {
                    Step::Start(_) => ("start", handle.start(name).await),
                    Step::Stop(_) => ("stop", handle.stop(name).await),
                    _ => ("restart", handle.restart(name).await),
                };
                match r {
                    Ok(()) => format!("{verb} {name}"),
                    Err(e) => format!("{verb} {name}: refused: {e}"),
                }
            }
            Step::Advance(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                format!("{ms}ms pass")
            }
        };
        drain().await;
        let status = handle.status();
        log.note(t0, what, &status);
        if finished.is_none() {
            match ended(&mut done).await {
                Err(why) => return Err(fail(&log, &registries, why)),
                Ok(Some(code)) => {
                    // Only a critical failure ends it before the shutdown:
                    // the keeper runs.
                    if code != EXIT_CRITICAL {
                        return Err(fail(
                            &log,
                            &registries,
                            format!("the supervisor ended by itself with exit code {code}"),
                        ));
                    }
                    finished = Some(code);
                }
                Ok(None) => {}
            }
        }
        if finished.is_none() {
            let shutting_down = *handle.stopping().borrow();
            let built = built.lock().unwrap().clone();
            if let Err(why) = check(&status, &model, &bounds, shutting_down, settled, &built) {
                return Err(fail(&log, &registries, why));
            }
            if settled
                && !shutting_down
                && let Err(why) = check_schedules(&status, &model, &actions, t0.elapsed())
            {
                return Err(fail(&log, &registries, why));
            }
        }
    }

    // The shutdown ends the supervisor within shutdown_timeout.
    if finished.is_none() {
        handle.shutdown();
        match tokio::time::timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(1), &mut done).await {
            Err(_) => {
                drain().await;
                log.note(t0, "shutdown".into(), &handle.status());
                return Err(fail(
                    &log,
                    &registries,
                    "the shutdown did not end within shutdown_timeout".into(),
                ));
            }
            Ok(Ok(code)) => finished = Some(code),
            Ok(Err(e)) => {
                let why = if e.is_panic() {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("the supervisor panicked during the shutdown: {msg}")
                } else {
                    format!("the supervisor task: {e}")
                };
                return Err(fail(&log, &registries, why));
            }
        }
    }
    match finished {
        Some(EXIT_OK | EXIT_CRITICAL) => Ok(()),
        other => Err(fail(
            &log,
            &registries,
            format!("exit code {other:?}, not 0 or 3"),
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=N runs more (a longer hunt by hand).
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96),
        // Every failure found becomes a focused test in tests.rs.
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_reloads_controls_and_crashes_keep_the_supervisor_sound(
        u in universe(),
        initial in choice(),
        steps in proptest::collection::vec(step(), 1..20),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        if let Err(why) = rt.block_on(run_case(u, initial, steps)) {
            prop_assert!(false, "{}", why);
        }
    }
}
