//! In-process supervisor tests on paused time, with mock services that
//! crash, panic, never become ready or are slow to stop.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::time::Instant;

use super::leader;
use super::state::{State, TRANSITIONS};
use super::*;
use crate::config::types::PostgresDsn;
use crate::config::{KindTable, LoadOptions, Runs, Settings};
use crate::services::{
    ActionError, BoxFuture, Context, Factory, Kinds, Registration, Service, settings_of,
};

/// What the mock services did, with the (paused) time since the test began.
#[derive(Clone, Default)]
pub(super) struct Log(Arc<Mutex<Vec<(u128, String)>>>);

impl Log {
    fn push(&self, t0: Instant, what: String) {
        self.0
            .lock()
            .unwrap()
            .push((t0.elapsed().as_millis(), what));
    }
    fn entries(&self) -> Vec<(u128, String)> {
        self.0.lock().unwrap().clone()
    }
    /// The times at which `what` happened.
    pub(super) fn times(&self, what: &str) -> Vec<u128> {
        self.entries()
            .into_iter()
            .filter(|(_, w)| w == what)
            .map(|(t, _)| t)
            .collect()
    }
}

/// A mock kind. Settings: `ready_after` (duration or "never"), `exit_after`
/// (duration), `exit` ("ok", "err", "panic"), `fail_times` (the first N runs
/// fail at once), `stop_delay` (duration or "forever"). Its runs log
/// `start NAME`, `ready NAME`, `exit NAME` (ended by itself) and `stop NAME`
/// (ended on request, after the stop delay).
pub(super) struct MockFactory {
    pub(super) log: Log,
    pub(super) t0: Instant,
    pub(super) runs: Arc<Mutex<HashMap<String, u32>>>,
    /// The settings of each service's latest build (what its current run
    /// runs), as the run reads them.
    pub(super) built: Arc<Mutex<HashMap<String, Json>>>,
}

struct Mock {
    name: String,
    settings: Json,
    log: Log,
    t0: Instant,
    run: u32,
}

fn dur(v: &Json) -> Option<Duration> {
    v.as_str().and_then(|s| humantime::parse_duration(s).ok())
}

crate::config_table! {
    /// The mock kind's settings (durations as written, "never" and
    /// "forever" included).
    pub struct MockSettings {
        /// A duration, or "never".
        pub ready_after: Option<String>,
        /// A duration.
        pub exit_after: Option<String>,
        /// "ok", "err" or "panic".
        pub exit: Option<String>,
        /// The first N runs fail at once.
        pub fail_times: Option<u64>,
        /// A duration, or "forever".
        pub stop_delay: Option<String>,
        /// The factory refuses to build it.
        pub unbuildable: Option<bool>,
        /// The database of its singleton leadership.
        pub postgres: Option<PostgresDsn>,
        /// The exit status its runs leave when they end by themselves.
        pub status: Option<u64>,
    }
}

impl Settings for MockSettings {
    fn leadership(&self) -> Option<&PostgresDsn> {
        self.postgres.as_ref()
    }
}

/// The mock kind's one action: `poke` answers `{"poked": NAME}`, fails with
/// `{"fail": true}` and refuses `{"bad": true}`.
pub(super) fn poke() -> crate::config::Action {
    crate::config::Action::new("poke", "Logs the poke.")
}

/// What the loader knows of the mock kind.
pub(super) fn mock_table() -> KindTable {
    let mut t = KindTable::new();
    t.add(crate::config::KindDef::new::<MockSettings>("mock", Runs::InProcess).action(poke()));
    t
}

impl Factory for MockFactory {
    fn action(
        &self,
        spec: &ServiceSpec,
        action: &str,
        args: Json,
        _details: crate::services::Details,
    ) -> BoxFuture<Result<Json, ActionError>> {
        let log = self.log.clone();
        let t0 = self.t0;
        let name = spec.name.clone();
        let action = action.to_string();
        Box::pin(async move {
            log.push(t0, format!("action {name} {action}"));
            let takes = args.get("takes").and_then(dur).unwrap_or_default();
            tokio::time::sleep(takes).await;
            if args.get("bad").is_some() {
                return Err(ActionError::BadRequest(format!(
                    "{action}: bad is not an argument"
                )));
            }
            if args.get("fail").is_some() {
                return Err(ActionError::Failed(format!("{action} failed")));
            }
            Ok(serde_json::json!({"poked": name}))
        })
    }

    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        let typed = settings_of::<MockSettings>(spec)?;
        if typed.unbuildable.is_some() {
            return Err(ServiceError("cannot build".into()));
        }
        // The run reads its settings as JSON, without the absent ones.
        let mut settings = crate::config::decode::Decode::to_json(typed);
        if let Json::Object(o) = &mut settings {
            o.retain(|_, v| !v.is_null());
        }
        self.built
            .lock()
            .unwrap()
            .insert(spec.name.clone(), settings.clone());
        let mut runs = self.runs.lock().unwrap();
        let run = runs.entry(spec.name.clone()).or_insert(0);
        *run += 1;
        Ok(Box::new(Mock {
            name: spec.name.clone(),
            settings: settings.clone(),
            log: self.log.clone(),
            t0: self.t0,
            run: *run,
        }))
    }
}

impl Service for Mock {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let s = &self.settings;
            self.log.push(self.t0, format!("start {}", self.name));
            let fail_times = s.get("fail_times").and_then(Json::as_u64).unwrap_or(0);
            if u64::from(self.run) <= fail_times {
                return Err(ServiceError(format!("run {} failed", self.run)));
            }
            let ready_after = match s.get("ready_after") {
                Some(Json::String(v)) if v == "never" => None,
                Some(v) => dur(v),
                None => Some(Duration::ZERO),
            };
            let exit_after = s.get("exit_after").and_then(dur);
            let started = Instant::now();
            let outcome = async {
                if let Some(r) = ready_after {
                    tokio::time::sleep(r).await;
                    self.log.push(self.t0, format!("ready {}", self.name));
                    ctx.ready();
                }
                match exit_after {
                    Some(e) => tokio::time::sleep_until(started + e).await,
                    None => std::future::pending::<()>().await,
                }
                if let Some(code) = s.get("status").and_then(Json::as_i64) {
                    ctx.set_exit_status(code as i32);
                }
                match s.get("exit").and_then(Json::as_str).unwrap_or("ok") {
                    "err" => Err(ServiceError("exited with status 1".into())),
                    "panic" => panic!("mock {} panicked", self.name),
                    _ => Ok(()),
                }
            };
            tokio::select! {
                r = outcome => {
                    self.log.push(self.t0, format!("exit {}", self.name));
                    r
                }
                _ = ctx.cancelled() => {
                    match s.get("stop_delay") {
                        Some(Json::String(v)) if v == "forever" => std::future::pending::<()>().await,
                        Some(v) => tokio::time::sleep(dur(v).unwrap_or_default()).await,
                        None => {}
                    }
                    self.log.push(self.t0, format!("stop {}", self.name));
                    Ok(())
                }
            }
        })
    }
}

struct Harness {
    log: Log,
    handle: Handle,
    done: tokio::task::JoinHandle<u8>,
    t0: Instant,
}

pub(super) fn checked(registry: &str) -> (crate::config::Registry, crate::graph::Graph) {
    let text = format!("[api]\nenabled = false\n{registry}");
    let opts = LoadOptions {
        path: PathBuf::from("test.toml"),
        profile: None,
        kinds: Arc::new(mock_table()),
    };
    let loaded =
        crate::config::load_text(&opts, text, &crate::config::NoSources, Default::default());
    let reg = loaded.registry.clone().unwrap_or_else(|| {
        panic!(
            "bad test registry: {:?}",
            loaded
                .diagnostics
                .iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
        )
    });
    let graph = crate::graph::build(&reg).unwrap();
    (reg, graph)
}

fn supervisor(registry: &str, coverage: Option<Coverage>) -> (Supervisor, Log, Instant) {
    supervisor_only(registry, coverage, &[])
}

/// A supervisor of the `--only` selection `only` (all when empty).
fn supervisor_only(
    registry: &str,
    coverage: Option<Coverage>,
    only: &[&str],
) -> (Supervisor, Log, Instant) {
    let (reg, graph) = checked(registry);
    let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
    let graph = if only.is_empty() {
        graph
    } else {
        graph.select_only(&reg, &only).unwrap()
    };
    let log = Log::default();
    let t0 = Instant::now();
    let mut kinds = Kinds::new();
    kinds.register(
        Registration::new::<MockSettings>(
            "mock",
            Runs::InProcess,
            MockFactory {
                log: log.clone(),
                t0,
                runs: Default::default(),
                built: Default::default(),
            },
        )
        .action(poke()),
    );
    let mut sup = Supervisor::new(&reg, graph, kinds)
        .with_seed(1)
        .with_only(only);
    sup.coverage = coverage;
    (sup, log, t0)
}

fn start(registry: &str) -> Harness {
    start_with(registry, None)
}

fn start_with(registry: &str, coverage: Option<Coverage>) -> Harness {
    let (sup, log, t0) = supervisor(registry, coverage);
    let handle = sup.handle();
    let done = tokio::spawn(sup.run(std::future::pending()));
    Harness {
        log,
        handle,
        done,
        t0,
    }
}

impl Harness {
    fn state(&self, name: &str) -> State {
        self.handle
            .status()
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.state)
            .unwrap()
    }
    fn status(&self, name: &str) -> ServiceStatus {
        self.handle
            .status()
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap()
    }
    /// Waits (on paused time) until `name` is in `state`; panics after an
    /// hour of simulated time.
    async fn wait(&self, name: &str, state: State) {
        let mut rx = self.handle.watch();
        let r = tokio::time::timeout(Duration::from_secs(3600), async {
            loop {
                if rx
                    .borrow_and_update()
                    .iter()
                    .any(|s| s.name == name && s.state == state)
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    panic!("supervisor ended while waiting for {name} to be {state}");
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "{name} never became {state}; now {}",
            self.state(name)
        );
    }
    fn ms(&self) -> u128 {
        self.t0.elapsed().as_millis()
    }
    async fn shutdown(self) -> (u8, Log) {
        self.handle.shutdown();
        let code = self.done.await.unwrap();
        (code, self.log)
    }
}

const NO_JITTER: &str =
    "restart.backoff = { initial = \"100ms\", max = \"1s\", multiplier = 2.0, jitter = 0.0 }";

#[tokio::test(start_paused = true)]
async fn services_start_as_soon_as_their_own_conditions_hold() {
    let h = start(
        r#"
[services.db]
kind = "mock"
ready_after = "1s"
[services.sidecar]
kind = "mock"
depends_on = { db = "started" }
[services.app]
kind = "mock"
depends_on = { db = "ready" }
[services.seed]
kind = "mock"
oneshot = true
exit_after = "2s"
depends_on = { db = "ready" }
[services.report]
kind = "mock"
depends_on = { seed = "completed" }
[services.lone]
kind = "mock"
"#,
    );
    h.wait("report", State::Ready).await;
    assert_eq!(h.log.times("start db"), vec![0]);
    assert_eq!(
        h.log.times("start lone"),
        vec![0],
        "independent branches start in parallel"
    );
    assert_eq!(
        h.log.times("start sidecar"),
        vec![0],
        "started: as soon as db runs"
    );
    assert_eq!(
        h.log.times("start app"),
        vec![1000],
        "ready: when db is ready"
    );
    assert_eq!(h.log.times("start seed"), vec![1000]);
    assert_eq!(
        h.log.times("start report"),
        vec![3000],
        "completed: when the oneshot exited 0"
    );
    assert_eq!(h.state("seed"), State::Completed);
    let (code, _) = h.shutdown().await;
    assert_eq!(code, EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn failures_restart_with_growing_backoff_until_the_budget_is_spent() {
    let h = start(&format!(
        r#"
[services.crash]
kind = "mock"
exit = "err"
exit_after = "0s"
{NO_JITTER}
restart.max_restarts = 3
restart.window = "1m"
[services.after]
kind = "mock"
depends_on = {{ crash = "started" }}
"#
    ));
    h.wait("crash", State::Failed).await;
    // Runs at 0, then after 100, 200 and 400 ms of backoff.
    assert_eq!(h.log.times("start crash"), vec![0, 100, 300, 700]);
    let st = h.status("crash");
    assert_eq!(st.restarts, 3);
    assert_eq!(
        st.last_error.as_deref(),
        Some("exited with status 1 (restart budget of 3 in 1m exhausted)")
    );
    h.wait("after", State::Blocked).await;
    let (code, _) = h.shutdown().await;
    assert_eq!(code, EXIT_OK, "a non-critical failure does not fail warden");
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_a_failure_not_a_crash_of_warden() {
    let h = start(
        r#"
[services.boom]
kind = "mock"
exit = "panic"
exit_after = "10ms"
restart = { policy = "never" }
[services.fine]
kind = "mock"
"#,
    );
    h.wait("boom", State::Failed).await;
    assert_eq!(
        h.status("boom").last_error.as_deref(),
        Some("panicked: mock boom panicked")
    );
    assert_eq!(h.state("fine"), State::Ready);
    assert_eq!(h.shutdown().await.0, EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn a_critical_failure_shuts_everything_down_in_order_and_exits_3() {
    let h = start(&format!(
        r#"
[services.db]
kind = "mock"
critical = true
exit = "err"
exit_after = "1s"
{NO_JITTER}
restart.max_restarts = 1
[services.app]
kind = "mock"
stop_delay = "50ms"
"#
    ));
    let code = h.done.await.unwrap();
    assert_eq!(code, EXIT_CRITICAL);
    let log = h.log.entries();
    assert!(log.iter().any(|(_, w)| w == "stop app"), "{log:?}");
}

/// The shutdown warden starts itself (a critical failure) is not a first
/// request: the first SIGTERM that comes during it (`docker stop`,
/// `systemctl stop`) keeps every grace; a second one forces.
#[tokio::test(start_paused = true)]
async fn the_first_signal_during_warden_s_own_shutdown_keeps_the_grace() {
    let h = start(&format!(
        r#"
[services.db]
kind = "mock"
critical = true
exit = "err"
exit_after = "1s"
{NO_JITTER}
restart.max_restarts = 0
[services.app]
kind = "mock"
stop_delay = "3s"
stop = {{ timeout = "10s" }}
"#
    ));
    h.wait("app", State::Stopping).await;
    h.handle.shutdown();
    let code = h.done.await.unwrap();
    assert_eq!(code, EXIT_CRITICAL);
    let log = h.log.entries();
    assert!(
        log.iter().any(|(_, w)| w == "stop app"),
        "app was aborted: the first signal forced the shutdown: {log:?}"
    );
}

/// A singleton that ends for good cleanly (exit 0 under `on-failure`)
/// releases its lock, as every other end does: another instance takes over.
#[tokio::test(start_paused = true)]
async fn a_singleton_that_exits_for_good_releases_its_lock() {
    let exits = SINGLETON.replace(
        "[services.cron]\nkind = \"mock\"",
        "[services.cron]\nkind = \"mock\"\nexit_after = \"1s\"\nrestart = { policy = \"on-failure\" }",
    );
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(&exits, &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let b = start_singleton(SINGLETON, &locks, 2, None);
    b.wait("cron", State::Standby).await;
    a.wait("cron", State::Stopped).await;
    b.wait("cron", State::Ready).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn never_ready_fails_at_start_timeout() {
    let h = start(
        r#"
[services.slow]
kind = "mock"
ready_after = "never"
start_timeout = "5s"
restart = { policy = "on-failure", max_restarts = 0 }
"#,
    );
    h.wait("slow", State::Failed).await;
    assert_eq!(h.ms(), 5000);
    let err = h.status("slow").last_error.unwrap();
    assert!(
        err.starts_with("not ready within start_timeout (5s)"),
        "{err}"
    );
    assert_eq!(
        h.log.times("stop slow"),
        vec![5000],
        "the run was stopped before being counted"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_starts_over_after_reset_after_of_stable_readiness() {
    // Two failures at once, then a run that stays up 10 s (past reset_after
    // = 5 s) and fails: the next delay is the initial one again.
    let h = start(
        r#"
[services.flaky]
kind = "mock"
fail_times = 2
exit = "err"
exit_after = "10s"
restart = { max_restarts = 10, reset_after = "5s", backoff = { initial = "100ms", max = "10s", multiplier = 2.0, jitter = 0.0 } }
"#,
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    // Runs: 0 (fails), +100 ms (fails), +200 ms = 300 (up 10 s, fails at
    // 10 300), then +100 ms (reset) = 10 400.
    assert_eq!(h.log.times("start flaky"), vec![0, 100, 300, 10_400]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_bounds() {
    let h = start(
        r#"
[services.crash]
kind = "mock"
exit = "err"
exit_after = "0s"
restart = { max_restarts = 6, window = "1h", backoff = { initial = "1s", max = "100s", multiplier = 2.0, jitter = 0.5 } }
"#,
    );
    h.wait("crash", State::Failed).await;
    let starts = h.log.times("start crash");
    assert_eq!(starts.len(), 7);
    for (i, w) in starts.windows(2).enumerate() {
        let base = 1000.0 * 2f64.powi(i as i32);
        let gap = (w[1] - w[0]) as f64;
        assert!(
            gap >= base * 0.5 - 1.0 && gap <= base * 1.5 + 1.0,
            "restart {i}: {gap} ms vs {base} ms ± 50%"
        );
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_dependents_and_ignore_and_stop_do_what_they_say() {
    let h = start(&format!(
        r#"
[services.db]
kind = "mock"
ready_after = "100ms"
fail_times = 0
exit = "err"
exit_after = "1s"
{NO_JITTER}
restart.max_restarts = 1
[services.restarting]
kind = "mock"
on_dependency_restart = "restart"
depends_on = ["db"]
[services.downstream]
kind = "mock"
on_dependency_restart = "restart"
depends_on = ["restarting"]
[services.indifferent]
kind = "mock"
on_dependency_restart = "ignore"
depends_on = ["restarting"]
[services.ignoring]
kind = "mock"
on_dependency_restart = "ignore"
depends_on = ["db"]
[services.stopping]
kind = "mock"
on_dependency_restart = "stop"
depends_on = ["db"]
"#
    ));
    // db is ready at 100 ms, fails at 1 s, restarts at 1.1 s, ready at 1.2 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.log.times("start db"), vec![0, 1100]);
    assert_eq!(h.log.times("stop restarting"), vec![1000]);
    assert_eq!(
        h.log.times("start restarting"),
        vec![100, 1200],
        "started again once db was ready again"
    );
    assert_eq!(
        h.log.times("start downstream"),
        vec![100, 1200],
        "rest_for_one: its own dependency restarted"
    );
    assert_eq!(
        h.log.times("start indifferent"),
        vec![100],
        "each service's own policy decides"
    );
    assert_eq!(h.log.times("start ignoring"), vec![100]);
    assert!(h.log.times("stop ignoring").is_empty());
    assert_eq!(h.log.times("stop stopping"), vec![1000]);
    assert_eq!(h.state("stopping"), State::Stopped);
    h.shutdown().await;
}

/// a <- b <- c, both dependents rest_for_one; every stop takes 1 s and
/// every start 100 ms to be ready.
const CHAIN: &str = r#"
[services.a]
kind = "mock"
ready_after = "100ms"
stop_delay = "1s"
restart = { backoff = { initial = "100ms", jitter = 0.0 } }
[services.b]
kind = "mock"
ready_after = "100ms"
stop_delay = "1s"
depends_on = ["a"]
on_dependency_restart = "restart"
[services.c]
kind = "mock"
ready_after = "100ms"
stop_delay = "1s"
depends_on = ["b"]
on_dependency_restart = "restart"
"#;

/// What the mocks did from `t` on, as (ms after `t`, what).
fn since(log: &Log, t: u128) -> Vec<(u128, String)> {
    log.entries()
        .into_iter()
        .filter(|(at, _)| *at >= t)
        .map(|(at, w)| (at - t, w))
        .collect()
}

/// The whole restart of `a` in CHAIN, from the moment it began: the
/// dependents stop first, deepest first, each after the one that depends
/// on it; `a` stops last and starts at once; each dependent starts once
/// its own dependency is ready again. `ready_a` is when the new `a` is
/// ready (after its start).
fn chain_restart(ready_a: u128) -> Vec<(u128, String)> {
    [
        (1000, "stop c"),
        (2000, "stop b"),
        (3000, "stop a"),
        (3000, "start a"),
        (3000 + ready_a, "ready a"),
        (3000 + ready_a, "start b"),
        (3100 + ready_a, "ready b"),
        (3100 + ready_a, "start c"),
        (3200 + ready_a, "ready c"),
    ]
    .into_iter()
    .map(|(t, w)| (t, w.to_string()))
    .collect()
}

/// No run of a dependent that began before `dependency`'s restart is still
/// going when its new run starts.
fn no_old_dependent_with_new_dependency(log: &Log, dependency: &str, dependents: &[&str]) {
    let new_start = log.times(&format!("start {dependency}"))[1];
    for d in dependents {
        let old_end = log
            .entries()
            .into_iter()
            .find(|(_, w)| *w == format!("stop {d}") || *w == format!("exit {d}"))
            .map(|(t, _)| t)
            .unwrap_or_else(|| panic!("the old {d} never ended"));
        assert!(
            old_end <= new_start,
            "the old {d} ran until {old_end} ms, the new {dependency} started at {new_start} ms"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_operators_restart_stops_the_dependents_first_deepest_first_and_starts_them_after() {
    let h = start(CHAIN);
    h.wait("c", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = h.ms();
    h.handle.restart("a").await.unwrap();
    // While the dependents stop, `a` waits, still running, in `stopping`:
    // nothing may count on it, and it is not asked to stop yet.
    assert_eq!(h.state("a"), State::Stopping);
    assert_eq!(h.state("b"), State::Stopping);
    assert_eq!(h.state("c"), State::Stopping);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(since(&h.log, t), chain_restart(100));
    no_old_dependent_with_new_dependency(&h.log, "a", &["b", "c"]);
    assert_eq!(h.state("c"), State::Ready);
    h.shutdown().await;
}

/// A reload that changes `a` restarts it as an operator's restart does
/// (the same path: `restart_with_dependents`), in the same order.
#[tokio::test(start_paused = true)]
async fn a_reload_restart_stops_the_dependents_first_deepest_first_and_starts_them_after() {
    let h = start(CHAIN);
    h.wait("c", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = h.ms();
    let changed = CHAIN.replacen("ready_after = \"100ms\"", "ready_after = \"150ms\"", 1);
    let summary = reload_to(&h, &changed).await;
    assert_eq!(summary.changed, vec!["a"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(since(&h.log, t), chain_restart(150));
    no_old_dependent_with_new_dependency(&h.log, "a", &["b", "c"]);
    h.shutdown().await;
}

/// A crash: `a` is gone at once, its dependents stop deepest first, and its
/// next run waits for them past the end of its backoff (100 ms).
#[tokio::test(start_paused = true)]
async fn a_crashed_dependency_starts_again_only_once_its_dependents_have_stopped() {
    let h = start(&CHAIN.replacen(
        "ready_after = \"100ms\"",
        "ready_after = \"100ms\"\nexit = \"err\"\nexit_after = \"1s\"",
        1,
    ));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // From the crash on.
    let expected: Vec<(u128, String)> = [
        (0, "exit a"),
        (1000, "stop c"),
        (2000, "stop b"),
        (2000, "start a"),
        (2100, "ready a"),
        (2100, "start b"),
        (2200, "ready b"),
        (2200, "start c"),
        (2300, "ready c"),
    ]
    .into_iter()
    .map(|(t, w)| (t, w.to_string()))
    .collect();
    assert_eq!(since(&h.log, 1000), expected);
    no_old_dependent_with_new_dependency(&h.log, "a", &["b", "c"]);
    h.shutdown().await;
}

/// `a` waits for its dependents to stop, and its run ends by itself
/// meanwhile: what follows (its new run) waits for them all the same.
#[tokio::test(start_paused = true)]
async fn a_dependency_that_ends_while_its_dependents_stop_starts_again_after_them() {
    let h = start(&CHAIN.replacen(
        "ready_after = \"100ms\"",
        "ready_after = \"100ms\"\nexit = \"err\"\nexit_after = \"2500ms\"",
        1,
    ));
    h.wait("c", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = h.ms();
    assert_eq!(t, 1300);
    h.handle.restart("a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected: Vec<(u128, String)> = [
        (1000, "stop c"),
        (1200, "exit a"),
        (2000, "stop b"),
        (2000, "start a"),
        (2100, "ready a"),
        (2100, "start b"),
        (2200, "ready b"),
        (2200, "start c"),
        (2300, "ready c"),
    ]
    .into_iter()
    .map(|(t, w)| (t, w.to_string()))
    .collect();
    assert_eq!(since(&h.log, t), expected);
    assert_eq!(
        h.status("a").restarts,
        0,
        "a stop on request, not a failure"
    );
    h.shutdown().await;
}

/// A shutdown during a restart stops what is left in the same order, and
/// nothing starts again.
#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_restart_keeps_the_order_and_starts_nothing() {
    let h = start(CHAIN);
    h.wait("c", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = h.ms();
    h.handle.restart("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, log) = h.shutdown().await;
    assert_eq!(code, EXIT_OK);
    let expected: Vec<(u128, String)> = [(1000, "stop c"), (2000, "stop b"), (3000, "stop a")]
        .into_iter()
        .map(|(t, w)| (t, w.to_string()))
        .collect();
    assert_eq!(since(&log, t), expected);
}

/// `b` is stopping on its own account (not ready in time) when `a`
/// restarts: `a` waits for it, and `b`'s backoff, over before `a` has
/// stopped, does not start it against the old `a`: it waits for the new one.
#[tokio::test(start_paused = true)]
async fn a_dependent_whose_backoff_ends_while_its_dependency_restarts_waits_for_it() {
    let h = start(
        r#"
[services.a]
kind = "mock"
stop_delay = "1s"
[services.b]
kind = "mock"
ready_after = "never"
start_timeout = "1s"
stop_delay = "2s"
depends_on = ["a"]
on_dependency_restart = "restart"
restart = { backoff = { initial = "100ms", jitter = 0.0 } }
"#,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.state("b"), State::Stopping, "not ready within 1 s");
    h.handle.restart("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let expected: Vec<(u128, String)> = [
        (1500, "stop b"),
        (2500, "stop a"),
        (2500, "start a"),
        (2500, "ready a"),
        (2500, "start b"),
    ]
    .into_iter()
    .map(|(t, w)| (t, w.to_string()))
    .collect();
    assert_eq!(since(&h.log, 1500), expected);
    h.shutdown().await;
}

/// Through a completed oneshot that runs again: `c` depends on `a` only
/// through `seed`, which has nothing left running, and still stops before
/// `a` does.
#[tokio::test(start_paused = true)]
async fn a_restart_waits_for_dependents_behind_a_completed_oneshot() {
    let h = start(
        r#"
[services.a]
kind = "mock"
stop_delay = "500ms"
[services.seed]
kind = "mock"
oneshot = true
exit_after = "10ms"
depends_on = ["a"]
on_dependency_restart = "restart"
[services.c]
kind = "mock"
stop_delay = "1s"
depends_on = { seed = "completed" }
on_dependency_restart = "restart"
"#,
    );
    h.wait("c", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = h.ms();
    h.handle.restart("a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected: Vec<(u128, String)> = [
        (1000, "stop c"),
        (1500, "stop a"),
        (1500, "start a"),
        (1500, "ready a"),
        (1500, "start seed"),
        (1500, "ready seed"),
        (1510, "exit seed"),
        (1510, "start c"),
        (1510, "ready c"),
    ]
    .into_iter()
    .map(|(t, w)| (t, w.to_string()))
    .collect();
    assert_eq!(since(&h.log, t), expected);
    h.shutdown().await;
}

/// The restart waits for a dependent that stops for good (`stop`), not for
/// one that keeps running (`ignore`).
#[tokio::test(start_paused = true)]
async fn a_restart_waits_for_dependents_that_stop_and_not_for_those_that_ignore_it() {
    let h = start(
        r#"
[services.a]
kind = "mock"
stop_delay = "1s"
[services.quits]
kind = "mock"
stop_delay = "2500ms"
depends_on = ["a"]
on_dependency_restart = "stop"
[services.stays]
kind = "mock"
stop_delay = "5s"
depends_on = ["a"]
on_dependency_restart = "ignore"
"#,
    );
    h.wait("stays", State::Ready).await;
    h.wait("quits", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = h.ms();
    h.handle.restart("a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let expected: Vec<(u128, String)> = [
        (2500, "stop quits"),
        (3500, "stop a"),
        (3500, "start a"),
        (3500, "ready a"),
    ]
    .into_iter()
    .map(|(t, w)| (t, w.to_string()))
    .collect();
    assert_eq!(since(&h.log, t), expected);
    assert_eq!(h.state("quits"), State::Stopped);
    assert_eq!(h.state("stays"), State::Ready);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stop_runs_in_reverse_dependency_order_with_branches_in_parallel() {
    //      a <- b <- c
    //      a <- d
    let h = start(
        r#"
[services.a]
kind = "mock"
stop_delay = "1s"
[services.b]
kind = "mock"
stop_delay = "1s"
depends_on = ["a"]
[services.c]
kind = "mock"
stop_delay = "1s"
depends_on = ["b"]
[services.d]
kind = "mock"
stop_delay = "1s"
depends_on = ["a"]
"#,
    );
    h.wait("c", State::Ready).await;
    h.wait("d", State::Ready).await;
    let t = h.ms();
    let (code, log) = h.shutdown().await;
    assert_eq!(code, EXIT_OK);
    let at = |s: &str| log.times(&format!("stop {s}"))[0] - t;
    assert_eq!(
        (at("c"), at("d")),
        (1000, 1000),
        "leaves stop first, in parallel"
    );
    assert_eq!(at("b"), 2000, "b after c");
    assert_eq!(at("a"), 3000, "a after both b and d");
}

#[tokio::test(start_paused = true)]
async fn a_service_slow_to_stop_is_aborted_after_its_stop_timeout() {
    let h = start(
        r#"
[services.stuck]
kind = "mock"
stop_delay = "forever"
stop = { timeout = "3s" }
"#,
    );
    h.wait("stuck", State::Ready).await;
    let t0 = Instant::now();
    let (code, log) = h.shutdown().await;
    assert_eq!(code, EXIT_OK);
    assert!(
        log.times("stop stuck").is_empty(),
        "it never stopped by itself"
    );
    assert_eq!(
        t0.elapsed().as_millis(),
        3000,
        "aborted at its stop timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_shutdown_request_skips_the_grace() {
    let h = start(
        r#"
[services.stuck]
kind = "mock"
stop_delay = "forever"
stop = { timeout = "30s" }
"#,
    );
    h.wait("stuck", State::Ready).await;
    let t0 = Instant::now();
    h.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.handle.shutdown();
    let code = h.done.await.unwrap();
    assert_eq!(code, EXIT_OK);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "forced, not 30 s: {:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_caps_the_whole_stop() {
    let h = start(
        r#"
[warden]
shutdown_timeout = "2s"
[services.stuck]
kind = "mock"
stop_delay = "forever"
stop = { timeout = "30s" }
"#,
    );
    h.wait("stuck", State::Ready).await;
    let t0 = Instant::now();
    let code = {
        h.handle.shutdown();
        h.done.await.unwrap()
    };
    assert_eq!(code, EXIT_OK);
    assert_eq!(t0.elapsed().as_millis(), 2000);
}

#[tokio::test(start_paused = true)]
async fn a_build_failure_is_a_failure() {
    let h = start(
        r#"
[services.broken]
kind = "mock"
unbuildable = true
restart = { policy = "never" }
"#,
    );
    h.wait("broken", State::Failed).await;
    assert_eq!(
        h.status("broken").last_error.as_deref(),
        Some("cannot build")
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn operators_stop_start_and_restart_services() {
    let h = start(
        r#"
[services.db]
kind = "mock"
[services.app]
kind = "mock"
depends_on = ["db"]
on_dependency_restart = "restart"
"#,
    );
    h.wait("app", State::Ready).await;
    assert_eq!(h.handle.stop("app").await, Ok(()));
    h.wait("app", State::Stopped).await;
    let refused = h.handle.stop("app").await.unwrap_err();
    assert_eq!(refused.to_string(), "app is stopped; it is not running");
    assert!(
        matches!(refused, ControlError::Conflict { .. }),
        "{refused:?}"
    );
    assert_eq!(h.handle.start("app").await, Ok(()));
    h.wait("app", State::Ready).await;
    assert_eq!(h.handle.restart("db").await, Ok(()));
    h.wait("db", State::Ready).await;
    h.wait("app", State::Ready).await;
    assert_eq!(h.log.times("start db").len(), 2);
    assert_eq!(
        h.log.times("start app").len(),
        3,
        "rest_for_one on an operator's restart too"
    );
    let refused = h.handle.start("nope").await.unwrap_err();
    assert_eq!(refused.to_string(), "no such service: nope");
    assert_eq!(
        refused,
        ControlError::UnknownService {
            name: "nope".into()
        }
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_of_a_pending_service_is_accepted_and_it_starts_once_its_dependencies_hold() {
    let h = start(
        r#"
[services.db]
kind = "mock"
ready_after = "1s"
[services.app]
kind = "mock"
depends_on = ["db"]
"#,
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.state("app"), State::Pending);
    assert_eq!(h.handle.restart("app").await, Ok(()));
    assert_eq!(h.state("app"), State::Pending, "still waiting for db");
    h.wait("app", State::Ready).await;
    assert_eq!(
        h.log.times("start app"),
        vec![1000],
        "one run, once db was ready: nothing else to restart"
    );
    assert_eq!(h.status("app").restarts, 0);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_that_cannot_be_done_says_so_in_words_about_a_restart() {
    let h = start(
        r#"
[services.dep]
kind = "mock"
exit = "err"
exit_after = "1s"
restart = { policy = "never" }
[services.user]
kind = "mock"
depends_on = ["dep"]
[services.slow]
kind = "mock"
stop_delay = "10s"
[services.off]
kind = "mock"
enabled = false
[services.crash]
kind = "mock"
exit = "err"
exit_after = "0s"
restart = { max_restarts = 5, backoff = { initial = "1h", max = "1h" } }
"#,
    );
    h.wait("user", State::Blocked).await;
    h.wait("slow", State::Ready).await;
    h.wait("crash", State::Backoff).await;
    h.handle.stop("slow").await.unwrap();
    assert_eq!(h.state("slow"), State::Stopping);
    let refusals = [
        ("slow", "slow is stopping; restart it once it has stopped"),
        (
            "user",
            "user is blocked; a dependency failed for good: start that dependency to unblock it",
        ),
        (
            "off",
            "off is disabled in the registry (enabled = false); enable it in the registry and reload",
        ),
    ];
    for (name, words) in refusals {
        let refused = h.handle.restart(name).await.unwrap_err();
        assert_eq!(refused, ControlError::conflict(words), "{name}");
    }
    // In backoff, a restart skips the rest of the delay.
    let t = h.ms();
    assert_eq!(h.handle.restart("crash").await, Ok(()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.log.times("start crash"), vec![0, t]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_of_a_standby_singleton_points_to_the_instance_that_runs_it() {
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(SINGLETON, &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let b = start_singleton(SINGLETON, &locks, 2, None);
    b.wait("cron", State::Standby).await;
    assert_eq!(
        b.handle.restart("cron").await,
        Err(ControlError::conflict(
            "cron is standby; another instance holds its singleton lock and runs it: restart it there"
        ))
    );
    assert_eq!(b.state("cron"), State::Standby);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_dependency_blocks_until_an_operator_starts_it_again() {
    let h = start(
        r#"
[services.dep]
kind = "mock"
exit = "err"
exit_after = "1s"
restart = { policy = "never" }
[services.user]
kind = "mock"
depends_on = ["dep"]
[services.keeper]
kind = "mock"
"#,
    );
    h.wait("user", State::Blocked).await;
    assert_eq!(
        h.log.times("stop user"),
        vec![1000],
        "a running dependent is stopped, then blocked"
    );
    h.handle.start("dep").await.unwrap();
    h.wait("user", State::Ready).await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_critical_service_blocked_for_good_is_a_critical_failure() {
    let h = start(
        r#"
[services.dep]
kind = "mock"
exit = "err"
exit_after = "1s"
restart = { policy = "never" }
[services.core]
kind = "mock"
critical = true
depends_on = ["dep"]
"#,
    );
    assert_eq!(h.done.await.unwrap(), EXIT_CRITICAL);
}

#[tokio::test(start_paused = true)]
async fn policies_on_clean_exits() {
    let h = start(
        r#"
[services.always]
kind = "mock"
exit_after = "1s"
restart = { policy = "always", max_restarts = 1, backoff = { initial = "0s" } }
[services.onfail]
kind = "mock"
exit_after = "1s"
restart = { policy = "on-failure" }
"#,
    );
    h.wait("onfail", State::Stopped).await;
    h.wait("always", State::Failed).await;
    assert_eq!(h.log.times("start always"), vec![0, 1000]);
    assert_eq!(h.log.times("start onfail"), vec![0]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn reload_stops_removed_starts_added_restarts_changed_and_leaves_the_rest() {
    let before = r#"
[services.keep]
kind = "mock"
[services.change]
kind = "mock"
ready_after = "10ms"
[services.drop]
kind = "mock"
[services.off]
kind = "mock"
[services.later]
kind = "mock"
enabled = false
"#;
    let h = start(before);
    h.wait("off", State::Ready).await;
    assert_eq!(h.state("later"), State::Disabled);
    let after = r#"
# comments move every line: positions alone are not a change
[services.keep]
kind = "mock"
[services.change]
kind = "mock"
ready_after = "20ms"
[services.off]
kind = "mock"
enabled = false
[services.later]
kind = "mock"
[services.new]
kind = "mock"
depends_on = ["keep"]
"#;
    let (reg, graph) = checked(after);
    let summary = h.handle.request_reload(reg, graph).await.unwrap();
    assert_eq!(summary.added, vec!["new"]);
    assert_eq!(summary.removed, vec!["drop"]);
    assert_eq!(summary.changed, vec!["change", "off", "later"]);
    assert_eq!(summary.unchanged, 1);
    h.wait("new", State::Ready).await;
    h.wait("later", State::Ready).await;
    h.wait("off", State::Disabled).await;
    h.wait("change", State::Ready).await;
    assert_eq!(h.log.times("start keep").len(), 1, "unchanged: left alone");
    assert_eq!(h.log.times("start change").len(), 2, "changed: restarted");
    assert_eq!(h.log.times("stop drop").len(), 1, "removed: stopped");
    assert!(h.handle.status().iter().all(|s| s.name != "drop"));
    let (code, _) = h.shutdown().await;
    assert_eq!(code, EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn scheduled_actions_run_when_ready_never_overlap_and_record_results() {
    let h = start(
        r#"
[services.db]
kind = "mock"
ready_after = "25s"
[[services.db.schedule]]
action = "poke"
every = "10s"
args = { takes = "15s" }
"#,
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    // Ticks at 10 and 20 s find db not ready; at 30 s a run starts that
    // takes 15 s, so the 40 s tick is skipped; runs at 30 and 50 s.
    assert_eq!(h.log.times("action db poke"), vec![30_000, 50_000]);
    let last = h.status("db").schedules[0].clone().expect("a recorded run");
    assert_eq!(last.action, "poke");
    assert_eq!(last.result, Ok(serde_json::json!({"poked": "db"})));
    assert_eq!(last.duration, Duration::from_secs(15));
    let answer = h
        .handle
        .request_action("db", "poke", serde_json::json!({}))
        .await;
    assert_eq!(answer, Ok(serde_json::json!({"poked": "db"})));
    assert_eq!(
        h.handle
            .request_action("db", "nope", serde_json::json!({}))
            .await,
        Err(ControlError::UnknownAction {
            kind: "mock".into(),
            action: "nope".into(),
            known: vec!["poke".into()],
        }),
        "an action the kind does not have"
    );
    assert_eq!(
        h.handle
            .request_action("db", "poke", serde_json::json!({"fail": true}))
            .await,
        Err(ControlError::Fault {
            reason: "poke failed".to_string()
        }),
        "an action that runs and fails is a fault"
    );
    assert_eq!(
        h.handle
            .request_action("db", "poke", serde_json::json!({"bad": true}))
            .await,
        Err(ControlError::BadRequest {
            reason: "poke: bad is not an argument".to_string()
        }),
        "a body the action cannot take is the caller's mistake"
    );
    h.shutdown().await;
}

/// Singleton locks in memory, shared by the supervisors of one test, with a
/// way to break an owner's "session".
#[derive(Default)]
struct MemLocks {
    /// service (`name` when the database is `postgres://locks/db`,
    /// `name@dsn` in any other) -> owner
    held: Mutex<HashMap<String, u32>>,
    changed: tokio::sync::Notify,
    broken: Mutex<HashSet<u32>>,
}

impl MemLocks {
    fn locker(self: &Arc<Self>, owner: u32) -> Locker {
        let locks = self.clone();
        Arc::new(move |name, dsn, tx, cancel| {
            let locks = locks.clone();
            // A lock lives in one database: the same name in another is
            // another lock.
            let key = match dsn.dsn.0.expose() {
                "postgres://locks/db" => name.to_string(),
                other => format!("{name}@{other}"),
            };
            Box::pin(async move {
                let mut told_standby = false;
                loop {
                    let got = {
                        let mut held = locks.held.lock().unwrap();
                        match held.get(&key) {
                            None => {
                                held.insert(key.clone(), owner);
                                true
                            }
                            Some(o) => *o == owner,
                        }
                    };
                    if got {
                        let _ = tx.send((name.clone(), leader::Leadership::Acquired));
                        // Hold until released, or until the "session" breaks.
                        loop {
                            let notified = locks.changed.notified();
                            if locks.broken.lock().unwrap().remove(&owner) {
                                locks.held.lock().unwrap().remove(&key);
                                locks.changed.notify_waiters();
                                let _ = tx.send((
                                    name.clone(),
                                    leader::Leadership::Lost("session broken".into()),
                                ));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                break;
                            }
                            tokio::select! {
                                _ = cancel.cancelled() => {
                                    locks.held.lock().unwrap().remove(&key);
                                    locks.changed.notify_waiters();
                                    return;
                                }
                                _ = notified => {}
                            }
                        }
                        continue;
                    }
                    if !told_standby {
                        told_standby = true;
                        let _ = tx.send((name.clone(), leader::Leadership::Standby));
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = locks.changed.notified() => {}
                    }
                }
            })
        })
    }

    fn break_session(&self, owner: u32) {
        self.broken.lock().unwrap().insert(owner);
        self.changed.notify_waiters();
    }
}

fn start_singleton(
    registry: &str,
    locks: &Arc<MemLocks>,
    owner: u32,
    coverage: Option<Coverage>,
) -> Harness {
    let (sup, log, t0) = supervisor(registry, coverage);
    let sup = sup.with_locker(locks.locker(owner));
    let handle = sup.handle();
    let done = tokio::spawn(sup.run(std::future::pending()));
    Harness {
        log,
        handle,
        done,
        t0,
    }
}

const SINGLETON: &str = r#"
[services.cron]
kind = "mock"
singleton = true
postgres = "postgres://locks/db"
[services.keeper]
kind = "mock"
"#;

#[tokio::test(start_paused = true)]
async fn a_singleton_runs_on_one_supervisor_and_fails_over() {
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(SINGLETON, &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let b = start_singleton(SINGLETON, &locks, 2, None);
    b.wait("cron", State::Standby).await;
    b.wait("keeper", State::Ready).await;
    // A's lock session breaks: A stops into standby, B takes over.
    locks.break_session(1);
    a.wait("cron", State::Standby).await;
    b.wait("cron", State::Ready).await;
    assert_eq!(a.log.times("stop cron").len(), 1);
    // B shuts down: A takes over again.
    b.shutdown().await;
    a.wait("cron", State::Ready).await;
    assert_eq!(a.log.times("start cron").len(), 2);
    a.shutdown().await;
}

/// Every row of the transitions table is exercised by these scenarios
/// (run again with a recorder, plus reloads, operator actions and
/// singletons on in-memory locks), and nothing outside it is attempted.
#[tokio::test(start_paused = true)]
async fn the_scenarios_cover_every_row_of_the_transitions_table() {
    let cov: Coverage = Default::default();
    let scenarios: &[(&str, bool)] = &[
        // Left blocked until the shutdown.
        (
            r#"
[services.dep]
kind = "mock"
exit = "err"
exit_after = "1s"
restart = { policy = "never" }
[services.user]
kind = "mock"
depends_on = ["dep"]
[services.done]
kind = "mock"
oneshot = true
exit_after = "10ms"
"#,
            false,
        ),
        (
            r#"
[services.db]
kind = "mock"
ready_after = "100ms"
exit = "err"
exit_after = "1s"
restart = { max_restarts = 1, backoff = { initial = "100ms", jitter = 0.0 } }
[services.r]
kind = "mock"
on_dependency_restart = "restart"
depends_on = ["db"]
[services.s]
kind = "mock"
on_dependency_restart = "stop"
depends_on = ["db"]
[services.seed]
kind = "mock"
oneshot = true
exit_after = "10ms"
on_dependency_restart = "restart"
depends_on = ["db"]
[services.early]
kind = "mock"
oneshot = true
ready_after = "never"
exit_after = "10ms"
"#,
            true,
        ),
        (
            r#"
[services.a_pending]
kind = "mock"
depends_on = ["z_gate"]
[services.z_gate]
kind = "mock"
ready_after = "never"
start_timeout = "1h"
[services.crash]
kind = "mock"
exit = "err"
exit_after = "0s"
restart = { max_restarts = 2, backoff = { initial = "1s", jitter = 0.0 } }
[services.user]
kind = "mock"
ready_after = "never"
depends_on = { crash = "started" }
[services.waiter]
kind = "mock"
depends_on = ["user"]
[services.looping]
kind = "mock"
exit = "err"
exit_after = "0s"
restart = { max_restarts = 50, window = "1h", backoff = { initial = "1h", max = "1h" } }
[services.dep2]
kind = "mock"
exit = "err"
exit_after = "1s"
restart = { policy = "never" }
[services.in_backoff]
kind = "mock"
exit = "err"
exit_after = "0s"
depends_on = { dep2 = "started" }
restart = { max_restarts = 5, backoff = { initial = "1h", max = "1h" } }
[services.neverready]
kind = "mock"
ready_after = "never"
start_timeout = "1h"
[services.pend]
kind = "mock"
depends_on = ["neverready"]
"#,
            true,
        ),
        (
            r#"
[services.slow]
kind = "mock"
ready_after = "never"
start_timeout = "1s"
restart = { max_restarts = 1, backoff = { initial = "10ms", jitter = 0.0 } }
[services.quits]
kind = "mock"
ready_after = "never"
exit_after = "10ms"
restart = { policy = "never" }
[services.quits_ready]
kind = "mock"
exit_after = "10ms"
restart = { policy = "never" }
[services.fails_ready]
kind = "mock"
exit = "err"
exit_after = "10ms"
restart = { policy = "never" }
[services.fails_starting]
kind = "mock"
ready_after = "never"
exit = "err"
exit_after = "10ms"
restart = { policy = "never" }
[services.broken]
kind = "mock"
unbuildable = true
restart = { policy = "never" }
"#,
            true,
        ),
    ];
    // Scenario 0 is also run once without the reloads, so that something is
    // still blocked when the shutdown comes.
    let plain = start_with(
        &format!("{}\n[services.keeper]\nkind = \"mock\"\n", scenarios[0].0),
        Some(cov.clone()),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    plain.shutdown().await;
    for (text, operate) in scenarios {
        // Something that runs throughout, as the API does in real use, so
        // that the supervisor is still there for the operator's requests.
        let text = format!("{text}\n[services.keeper]\nkind = \"mock\"\n");
        let h = start_with(&text, Some(cov.clone()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        if *operate {
            operate_everything(&h).await;
        }
        // A reload that disables everything, then one that enables it all.
        let names: Vec<String> = h.handle.status().iter().map(|s| s.name.clone()).collect();
        let off: String = names
            .iter()
            .map(|n| {
                format!(
                    "[services.{n}]\nkind = \"mock\"\nenabled = {}\n",
                    n == "keeper"
                )
            })
            .collect();
        let (reg, graph) = checked(&off);
        h.handle.request_reload(reg, graph).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let on: String = names
            .iter()
            .map(|n| format!("[services.{n}]\nkind = \"mock\"\n"))
            .collect();
        let (reg, graph) = checked(&on);
        h.handle.request_reload(reg, graph).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.shutdown().await;
    }
    // Singletons: standby, stop and start in standby, failover, a blocked
    // standby, a reload that disables a standby.
    let locks = Arc::new(MemLocks::default());
    let text = format!(
        "{SINGLETON}\n[services.dep]\nkind = \"mock\"\nexit = \"err\"\nexit_after = \"2s\"\nrestart = {{ policy = \"never\" }}\n[services.blocked_single]\nkind = \"mock\"\nsingleton = true\npostgres = \"postgres://locks/db\"\ndepends_on = [\"dep\"]\n"
    );
    let a = start_singleton(&text, &locks, 1, Some(cov.clone()));
    a.wait("cron", State::Ready).await;
    a.wait("blocked_single", State::Ready).await;
    let b = start_singleton(&text, &locks, 2, Some(cov.clone()));
    b.wait("cron", State::Standby).await;
    b.wait("blocked_single", State::Standby).await;
    b.handle.stop("cron").await.unwrap();
    b.handle.start("cron").await.unwrap();
    b.wait("cron", State::Standby).await;
    // dep fails for good on both: B's standby singleton is blocked.
    b.wait("blocked_single", State::Blocked).await;
    locks.break_session(1);
    a.wait("cron", State::Standby).await;
    b.wait("cron", State::Ready).await;
    // A reload on A disables its standby cron.
    let (reg, graph) = checked(&text.replace(
        "[services.cron]\nkind = \"mock\"",
        "[services.cron]\nkind = \"mock\"\nenabled = false",
    ));
    a.handle.request_reload(reg, graph).await.unwrap();
    a.wait("cron", State::Disabled).await;
    b.shutdown().await;
    a.shutdown().await;

    let seen = cov.lock().unwrap().clone();
    let missing: Vec<_> = TRANSITIONS
        .iter()
        .filter(|(f, e, _)| !seen.contains(&(*f, *e)))
        .collect();
    assert!(
        missing.is_empty(),
        "rows no scenario exercised: {missing:?}"
    );
    for (f, e) in &seen {
        assert!(
            TRANSITIONS.iter().any(|(tf, te, _)| tf == f && te == e),
            "an illegal transition was attempted: {e:?} in {f}"
        );
    }
}

/// Starts, restarts, stops and starts again every service (but the keeper).
async fn operate_everything(h: &Harness) {
    // Operator actions on whatever each scenario left behind; refusals
    // (a running service cannot be started) are part of the exercise.
    for s in h.handle.status().iter() {
        let _ = h.handle.start(&s.name).await;
        let _ = h.handle.restart(&s.name).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for s in h.handle.status().iter().filter(|s| s.name != "keeper") {
        let _ = h.handle.stop(&s.name).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for s in h.handle.status().iter() {
        let _ = h.handle.start(&s.name).await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

// ---------------------------------------------------------------------------
// Conditions once met, a clean end that blocks, the operator's stop, the
// main service's exit code.

#[tokio::test(start_paused = true)]
async fn started_holds_once_the_dependency_has_started_even_after_it_exited() {
    let h = start(
        r#"
[services.quick]
kind = "mock"
exit_after = "100ms"
restart = { policy = "on-failure" }
[services.slow]
kind = "mock"
oneshot = true
exit_after = "1s"
[services.app]
kind = "mock"
depends_on = { quick = "started", slow = "completed" }
"#,
    );
    h.wait("app", State::Ready).await;
    assert_eq!(
        h.state("quick"),
        State::Stopped,
        "quick exited 0 long before"
    );
    assert_eq!(h.log.times("start app"), vec![1000], "when slow completed");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_dependency_that_ends_cleanly_before_it_is_ready_blocks_its_dependents() {
    let h = start(
        r#"
[services.flaky]
kind = "mock"
ready_after = "never"
exit_after = "200ms"
restart = { policy = "on-failure" }
[services.app]
kind = "mock"
depends_on = ["flaky"]
[services.web]
kind = "mock"
depends_on = { app = "started" }
"#,
    );
    h.wait("app", State::Blocked).await;
    h.wait("web", State::Blocked).await;
    assert_eq!(h.state("flaky"), State::Stopped);
    assert_eq!(
        h.status("app").last_error.as_deref(),
        Some("blocked: its dependency flaky stopped without being ready")
    );
    assert_eq!(
        h.status("web").last_error.as_deref(),
        Some("blocked: its dependency app is blocked")
    );
    assert!(h.log.times("start app").is_empty());
    // Nothing runs or could run: warden ends by itself, and cleanly (no
    // critical service was involved).
    let code = tokio::time::timeout(Duration::from_secs(5), h.done)
        .await
        .expect("warden ends by itself")
        .unwrap();
    assert_eq!(code, EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn a_ready_dependency_that_then_exits_cleanly_still_counts_as_ready() {
    let h = start(
        r#"
[services.setup]
kind = "mock"
ready_after = "100ms"
exit_after = "300ms"
restart = { policy = "never" }
[services.gate]
kind = "mock"
oneshot = true
exit_after = "1s"
[services.app]
kind = "mock"
depends_on = { setup = "ready", gate = "completed" }
"#,
    );
    h.wait("app", State::Ready).await;
    assert_eq!(h.state("setup"), State::Stopped);
    assert_eq!(h.log.times("start app"), vec![1000]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_critical_service_blocked_by_a_clean_end_is_a_critical_failure() {
    let h = start(
        r#"
[services.flaky]
kind = "mock"
ready_after = "never"
exit_after = "200ms"
[services.app]
kind = "mock"
critical = true
depends_on = ["flaky"]
[services.other]
kind = "mock"
"#,
    );
    let code = tokio::time::timeout(Duration::from_secs(60), h.done)
        .await
        .expect("warden ends")
        .unwrap();
    assert_eq!(code, EXIT_CRITICAL);
}

#[tokio::test(start_paused = true)]
async fn a_start_after_a_block_waits_again_and_an_operator_stop_of_a_pending_dependency_blocks() {
    let h = start(
        r#"
[services.db]
kind = "mock"
ready_after = "1s"
[services.app]
kind = "mock"
depends_on = ["db"]
[services.keeper]
kind = "mock"
"#,
    );
    // Stopped before it was ready: app can never start, until db is
    // started again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.handle.stop("db").await.unwrap();
    h.wait("app", State::Blocked).await;
    h.handle.start("db").await.unwrap();
    h.wait("app", State::Ready).await;
    h.shutdown().await;
}

/// A service in every state an operator's stop may find it in, and a check
/// that it ends `stopped` and never runs again.
#[tokio::test(start_paused = true)]
async fn an_operators_stop_wins_in_every_state_and_cancels_a_restart_in_flight() {
    let h = start(
        r#"
[services.gate]
kind = "mock"
ready_after = "1h"
[services.pending]
kind = "mock"
depends_on = ["gate"]
[services.starting]
kind = "mock"
ready_after = "1h"
[services.crashy]
kind = "mock"
exit = "err"
exit_after = "10ms"
restart.backoff = { initial = "1s", max = "1s", jitter = 0.0 }
[services.restarting]
kind = "mock"
stop_delay = "500ms"
[services.keeper]
kind = "mock"
"#,
    );
    h.wait("starting", State::Starting).await;
    h.wait("crashy", State::Backoff).await;
    h.wait("restarting", State::Ready).await;
    // Stopping on the way to a restart: the stop wins.
    h.handle.restart("restarting").await.unwrap();
    assert_eq!(h.state("restarting"), State::Stopping);
    h.handle.stop("restarting").await.unwrap();
    for name in ["pending", "starting", "crashy"] {
        h.handle.stop(name).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    for name in ["pending", "starting", "crashy", "restarting"] {
        assert_eq!(h.state(name), State::Stopped, "{name}");
    }
    assert_eq!(
        h.log.times("start restarting").len(),
        1,
        "the restart was cancelled"
    );
    assert_eq!(
        h.log.times("start crashy").len(),
        1,
        "the backoff was cancelled"
    );
    assert!(h.log.times("start pending").is_empty());
    // A stop of what is not running is refused, in words that say so.
    let refused = h.handle.stop("crashy").await.unwrap_err();
    assert_eq!(refused.to_string(), "crashy is stopped; it is not running");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_operators_stop_wins_over_a_restart_after_a_failed_health_check() {
    // The run is stopping because its start timed out, which its policy
    // would restart: the operator's stop keeps it stopped, and the reason
    // of the failure stays in last_error.
    let h = start(
        r#"
[services.slow]
kind = "mock"
ready_after = "never"
start_timeout = "1s"
stop_delay = "2s"
[services.keeper]
kind = "mock"
"#,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.state("slow"), State::Stopping);
    h.handle.stop("slow").await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.state("slow"), State::Stopped);
    assert_eq!(h.log.times("start slow"), vec![0]);
    assert_eq!(
        h.status("slow").last_error.as_deref(),
        Some("not ready within start_timeout (1s)")
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_main_services_exit_status_becomes_warden_s_exit_code() {
    // It exits 7 and is not restarted (policy on-failure counts 7 as a
    // failure: restarted twice, then failed for good with its last code).
    let h = start(
        r#"
[services.app]
kind = "mock"
main = true
exit = "err"
exit_after = "1s"
status = 7
restart = { policy = "on-failure", max_restarts = 2, backoff = { initial = "10ms", jitter = 0.0 } }
[services.side]
kind = "mock"
"#,
    );
    let code = tokio::time::timeout(Duration::from_secs(60), h.done)
        .await
        .expect("warden ends with its main service")
        .unwrap();
    assert_eq!(code, 7);
    assert_eq!(h.log.times("start app").len(), 3);
    assert_eq!(h.log.times("stop side").len(), 1, "the rest was stopped");

    // A clean exit: 0, at once.
    let h = start(
        "[services.app]\nkind = \"mock\"\nmain = true\nexit_after = \"1s\"\n[services.side]\nkind = \"mock\"\n",
    );
    let code = tokio::time::timeout(Duration::from_secs(60), h.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
}

#[tokio::test(start_paused = true)]
async fn the_first_cause_to_stop_warden_chooses_its_exit_code() {
    // A critical failure first: 3, whatever the main service does next.
    let h = start(
        r#"
[services.db]
kind = "mock"
critical = true
exit = "err"
exit_after = "100ms"
restart = { policy = "never" }
[services.app]
kind = "mock"
main = true
status = 9
exit = "err"
stop_delay = "10ms"
"#,
    );
    let code = tokio::time::timeout(Duration::from_secs(60), h.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, EXIT_CRITICAL);
    // A shutdown asked for first: 0, though the main service is stopped
    // by it.
    let h = start("[services.app]\nkind = \"mock\"\nmain = true\nstatus = 143\n");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.shutdown().await.0, EXIT_OK);
}

#[test]
fn the_main_services_code_is_its_status_else_how_it_ended() {
    use super::decide::Ending;
    use super::runs::main_exit_code;
    assert_eq!(main_exit_code(Some(7), Ending::Failed), 7);
    assert_eq!(main_exit_code(Some(0), Ending::Exited), 0);
    assert_eq!(
        main_exit_code(Some(143), Ending::Stopped(AfterStop::Stay)),
        143
    );
    assert_eq!(main_exit_code(Some(300), Ending::Failed), 1, "not a code");
    assert_eq!(main_exit_code(Some(-1), Ending::Failed), 1, "not a code");
    assert_eq!(main_exit_code(None, Ending::Exited), 0);
    assert_eq!(main_exit_code(None, Ending::Stopped(AfterStop::Stay)), 0);
    assert_eq!(main_exit_code(None, Ending::Failed), 1);
    assert_eq!(main_exit_code(None, Ending::HealthFailed), 1);
    assert_eq!(main_exit_code(None, Ending::StartTimedOut), 1);
}

#[test]
fn conditions_hold_while_met_and_stay_met_once_ended_for_good() {
    use super::event_loop::holds;
    use crate::config::Condition::{Completed, Ready, Started};
    let none = Met::default();
    let started = Met {
        started: true,
        ready: false,
    };
    let ready = Met {
        started: true,
        ready: true,
    };
    // (state, what its run met) -> (started, ready, completed)
    let table = [
        (State::Pending, none, [false, false, false]),
        (State::Starting, started, [true, false, false]),
        (State::Ready, ready, [true, true, false]),
        (State::Completed, ready, [true, true, true]),
        (State::Stopped, none, [false, false, false]),
        (State::Stopped, started, [true, false, false]),
        (State::Stopped, ready, [true, true, false]),
        (State::Stopping, ready, [false, false, false]),
        (State::Backoff, none, [false, false, false]),
        (State::Failed, ready, [false, false, false]),
        (State::Blocked, none, [false, false, false]),
        (State::Standby, none, [false, false, false]),
    ];
    for (state, met, want) in table {
        let got = [
            holds(state, met, Started),
            holds(state, met, Ready),
            holds(state, met, Completed),
        ];
        assert_eq!(got, want, "{state} {met:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn services_blocked_together_are_each_blocked_once() {
    // migrate and app both wait on db, and app on migrate too: db ends
    // before it is ready, and both are blocked in the same pass.
    let h = start(
        r#"
[services.db]
kind = "mock"
ready_after = "never"
exit_after = "100ms"
[services.migrate]
kind = "mock"
depends_on = ["db"]
[services.app]
kind = "mock"
depends_on = ["db", "migrate"]
[services.keeper]
kind = "mock"
"#,
    );
    h.wait("migrate", State::Blocked).await;
    h.wait("app", State::Blocked).await;
    assert_eq!(
        h.status("migrate").last_error.as_deref(),
        Some("blocked: its dependency db stopped without being ready")
    );
    assert!(h.log.times("start app").is_empty());
    assert_eq!(h.shutdown().await.0, EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn an_operators_stop_survives_a_block_and_an_unblock() {
    let h = start(
        r#"
[services.db]
kind = "mock"
exit = "err"
exit_after = "1s"
restart = { policy = "never" }
[services.worker]
kind = "mock"
depends_on = ["db"]
[services.keeper]
kind = "mock"
"#,
    );
    h.wait("worker", State::Ready).await;
    h.handle.stop("worker").await.unwrap();
    h.wait("db", State::Failed).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        h.state("worker"),
        State::Stopped,
        "a stopped service is not blocked"
    );
    h.handle.start("db").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.state("worker"), State::Stopped, "it does not come back");
    assert_eq!(h.log.times("start worker").len(), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_critical_failure_during_a_requested_shutdown_does_not_change_the_code() {
    // The shutdown stops app first (it takes 5 s); meanwhile db, critical
    // and not yet asked to stop, crashes. The shutdown was asked for first:
    // 0, not 3.
    let h = start(
        r#"
[services.db]
kind = "mock"
critical = true
exit = "err"
exit_after = "2s"
[services.app]
kind = "mock"
depends_on = ["db"]
stop_delay = "5s"
"#,
    );
    h.wait("app", State::Ready).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = h.log.clone();
    assert_eq!(h.shutdown().await.0, EXIT_OK);
    assert_eq!(
        log.times("exit db"),
        vec![2000],
        "db crashed during the shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_under_only_leaves_another_instances_services_alone() {
    let text = "[services.web]\nkind = \"mock\"\n[services.worker]\nkind = \"mock\"\n[services.off]\nkind = \"mock\"\nenabled = false\n";
    let (sup, log, _t0) = supervisor_only(text, None, &["web"]);
    let handle = sup.handle();
    let done = tokio::spawn(sup.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let names = |h: &Handle| -> Vec<String> { h.status().iter().map(|s| s.name.clone()).collect() };
    assert_eq!(names(&handle), vec!["web", "off"]);
    let refused = handle.start("worker").await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "worker is not in this instance's selection (--only web); it runs on the instance that selects it"
    );
    // A reload enables `off`: it is not in this instance's selection either.
    let (reg, graph) = checked(&text.replace("enabled = false\n", ""));
    let graph = graph.select_only(&reg, &["web".to_string()]).unwrap();
    let summary = handle.request_reload(reg, graph).await.unwrap();
    assert_eq!(summary.removed, vec!["off"]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(names(&handle), vec!["web"]);
    assert!(log.times("start off").is_empty());
    assert!(log.times("start worker").is_empty());
    assert_eq!(
        handle.stop("off").await.unwrap_err().to_string(),
        "off is not in this instance's selection (--only web); it runs on the instance that selects it"
    );
    handle.shutdown();
    assert_eq!(done.await.unwrap(), EXIT_OK);
}

// ---------------------------------------------------------------------------
// Reload defects.

/// Applies `text` as a reload.
async fn reload_to(h: &Harness, text: &str) -> ReloadSummary {
    let (reg, graph) = checked(text);
    h.handle.request_reload(reg, graph).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_service_removed_then_restored_while_it_stops_comes_back_and_nothing_panics() {
    let text = "[services.x]\nkind = \"mock\"\nstop_delay = \"3s\"\n[services.y]\nkind = \"mock\"\ndepends_on = [\"x\"]\n[services.keeper]\nkind = \"mock\"\n";
    let h = start(text);
    h.wait("y", State::Ready).await;
    reload_to(&h, "[services.keeper]\nkind = \"mock\"\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.state("x"), State::Stopping);
    let summary = reload_to(&h, text).await;
    assert!(summary.added.contains(&"x".to_string()), "{summary:?}");
    h.wait("x", State::Ready).await;
    h.wait("y", State::Ready).await;
    assert_eq!(h.log.times("start x").len(), 2);
    // The loop is alive and stops everything in order.
    assert_eq!(h.shutdown().await.0, EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn a_service_disabled_by_reload_while_it_stops_stays_disabled() {
    let text =
        "[services.a]\nkind = \"mock\"\nstop_delay = \"2s\"\n[services.keeper]\nkind = \"mock\"\n";
    let h = start(text);
    h.wait("a", State::Ready).await;
    h.handle.restart("a").await.unwrap();
    assert_eq!(h.state("a"), State::Stopping);
    reload_to(
        &h,
        &text.replace("stop_delay", "enabled = false\nstop_delay"),
    )
    .await;
    h.wait("a", State::Disabled).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.state("a"), State::Disabled);
    assert_eq!(h.log.times("start a").len(), 1, "it did not come back");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_configuration_reverted_during_a_restart_runs_as_it_was() {
    let v1 = "[services.a]\nkind = \"mock\"\nstop_delay = \"2s\"\n";
    // v2 would crash at once.
    let v2 = "[services.a]\nkind = \"mock\"\nstop_delay = \"2s\"\nexit = \"err\"\nexit_after = \"10ms\"\nrestart = { policy = \"never\" }\n";
    let h = start(v1);
    h.wait("a", State::Ready).await;
    let s = reload_to(&h, v2).await;
    assert_eq!(s.changed, vec!["a"]);
    assert_eq!(h.state("a"), State::Stopping);
    let s = reload_to(&h, v1).await;
    assert_eq!(s.changed, vec!["a"], "the change not applied yet is undone");
    h.wait("a", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.state("a"), State::Ready, "v1 runs, not the abandoned v2");
    // The same file once more: unchanged.
    assert_eq!(reload_to(&h, v1).await.unchanged, 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_fixes_a_failed_dependency_unblocks_its_dependents() {
    let broken = "[services.db]\nkind = \"mock\"\nexit = \"err\"\nexit_after = \"100ms\"\nrestart = { policy = \"never\" }\n[services.app]\nkind = \"mock\"\ndepends_on = [\"db\"]\n[services.keeper]\nkind = \"mock\"\n";
    let h = start(broken);
    h.wait("app", State::Blocked).await;
    let fixed = broken.replace("exit = \"err\"\nexit_after = \"100ms\"\n", "");
    reload_to(&h, &fixed).await;
    h.wait("db", State::Ready).await;
    h.wait("app", State::Ready).await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unblocking_a_dependent_respects_its_other_failed_dependencies() {
    let h = start(
        r#"
[services.a]
kind = "mock"
exit = "err"
exit_after = "100ms"
restart = { policy = "never" }
[services.b]
kind = "mock"
exit = "err"
exit_after = "100ms"
restart = { policy = "never" }
[services.c]
kind = "mock"
depends_on = ["a", "b"]
[services.keeper]
kind = "mock"
"#,
    );
    h.wait("c", State::Blocked).await;
    h.wait("b", State::Failed).await;
    h.handle.start("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.state("c"), State::Blocked, "b is still failed");
    assert_eq!(
        h.status("c").last_error.as_deref(),
        Some("blocked: its dependency b failed for good")
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_caused_by_reload_applies_on_dependency_restart() {
    let text = "[services.db]\nkind = \"mock\"\n[services.app]\nkind = \"mock\"\non_dependency_restart = \"restart\"\ndepends_on = [\"db\"]\n";
    let h = start(text);
    h.wait("app", State::Ready).await;
    reload_to(
        &h,
        &text.replace(
            "[services.db]\nkind = \"mock\"\n",
            "[services.db]\nkind = \"mock\"\nready_after = \"1s\"\n",
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(h.state("app"), State::Ready, "app waits for the new db");
    h.wait("app", State::Ready).await;
    assert_eq!(h.log.times("start app").len(), 2);
    assert!(
        h.log.times("start app")[1] >= 1000,
        "after db was ready again"
    );
    h.shutdown().await;
}

/// A mock run that spawned a task on its token: the task must end when the
/// run ends by itself (health watchers and the like live on that token).
struct Spawner;

impl Service for Spawner {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            ctx.ready();
            let token = ctx.token();
            let details = ctx.details().clone();
            tokio::spawn(async move {
                token.cancelled().await;
                details.set("watcher", "ended");
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(ServiceError("crashed".into()))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn what_a_run_leaves_on_its_token_ends_when_the_run_ends_by_itself() {
    struct SpawnerFactory;
    impl Factory for SpawnerFactory {
        fn build(&self, _: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
            Ok(Box::new(Spawner))
        }
    }
    let (reg, graph) = checked("[services.s]\nkind = \"mock\"\nrestart = { policy = \"never\" }\n");
    let mut kinds = Kinds::new();
    kinds.register(Registration::new::<MockSettings>(
        "mock",
        Runs::InProcess,
        SpawnerFactory,
    ));
    let sup = Supervisor::new(&reg, graph, kinds);
    let handle = sup.handle();
    let done = tokio::spawn(sup.run(std::future::pending()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = handle.status();
    let s = st.iter().find(|s| s.name == "s").unwrap();
    assert_eq!(s.state, State::Failed);
    assert_eq!(
        s.details.snapshot().get("watcher"),
        Some(&serde_json::json!("ended"))
    );
    assert_eq!(done.await.unwrap(), EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_moves_a_singletons_lock_takes_the_lock_in_the_new_database() {
    // A runs cron with its lock in db1; B, configured with db2, waits there
    // behind C. A reload moves A's cron to db2: it must leave db1 and queue
    // for db2's lock (standby), not keep running on the old one beside C.
    let at = |db: &str| SINGLETON.replace("postgres://locks/db", db);
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(&at("postgres://db1/x"), &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let c = start_singleton(&at("postgres://db2/x"), &locks, 3, None);
    c.wait("cron", State::Ready).await;
    let summary = reload_to(&a, &at("postgres://db2/x")).await;
    assert_eq!(summary.changed, ["cron"]);
    a.wait("cron", State::Standby).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.state("cron"), State::Standby, "two instances run cron");
    assert_eq!(
        locks.held.lock().unwrap().get("cron@postgres://db1/x"),
        None,
        "A still holds its lock in the old database"
    );
    // C goes: A takes db2's lock and runs cron.
    c.shutdown().await;
    a.wait("cron", State::Ready).await;
    a.shutdown().await;

    // The same with the lock in `[warden] postgres`: a reload that moves
    // it moves every singleton that takes its lock there.
    let warden_db = |db: &str| {
        format!(
            "[warden]\npostgres = \"{db}\"\n[services.cron]\nkind = \"mock\"\nsingleton = true\n[services.keeper]\nkind = \"mock\"\n"
        )
    };
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(&warden_db("postgres://db1/x"), &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let c = start_singleton(&warden_db("postgres://db2/x"), &locks, 3, None);
    c.wait("cron", State::Ready).await;
    let summary = reload_to(&a, &warden_db("postgres://db2/x")).await;
    assert_eq!(summary.changed, ["cron"], "{summary:?}");
    a.wait("cron", State::Standby).await;
    assert_eq!(
        locks.held.lock().unwrap().get("cron@postgres://db1/x"),
        None,
        "A still holds its lock in the old [warden] postgres"
    );
    c.shutdown().await;
    a.wait("cron", State::Ready).await;
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_singleton_removed_or_disabled_while_waiting_gives_up_its_lock() {
    // A runs cron; B waits for the lock. A reload removes cron from B, then
    // A stops: nobody must hold the lock (B's waiting session is gone).
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(SINGLETON, &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let b = start_singleton(SINGLETON, &locks, 2, None);
    b.wait("cron", State::Standby).await;
    let without = "[services.keeper]\nkind = \"mock\"\n";
    reload_to(&b, without).await;
    a.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        locks.held.lock().unwrap().get("cron"),
        None,
        "B took a lock it cannot use"
    );
    b.shutdown().await;

    // A singleton that fails for good lets the standby take over.
    let failing = SINGLETON.replace(
        "[services.cron]\nkind = \"mock\"",
        "[services.cron]\nkind = \"mock\"\nexit = \"err\"\nexit_after = \"1s\"\nrestart = { policy = \"never\" }",
    );
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(&failing, &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let b = start_singleton(SINGLETON, &locks, 2, None);
    b.wait("cron", State::Standby).await;
    a.wait("cron", State::Failed).await;
    b.wait("cron", State::Ready).await;
    a.shutdown().await;
    b.shutdown().await;

    // Disabled by a reload while it waits for its dependency (pending, its
    // lock task started by nothing yet) or for the lock (standby).
    let locks = Arc::new(MemLocks::default());
    let a = start_singleton(SINGLETON, &locks, 1, None);
    a.wait("cron", State::Ready).await;
    let b = start_singleton(SINGLETON, &locks, 2, None);
    b.wait("cron", State::Standby).await;
    reload_to(
        &b,
        &SINGLETON.replace(
            "[services.cron]\nkind = \"mock\"",
            "[services.cron]\nkind = \"mock\"\nenabled = false",
        ),
    )
    .await;
    b.wait("cron", State::Disabled).await;
    a.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(locks.held.lock().unwrap().get("cron"), None);
    b.shutdown().await;
}

/// A dependent on `started` starts with its dependency, in the same turn:
/// nothing else has to happen first (a dependency that never becomes
/// ready and has no start_timeout sends nothing more).
#[tokio::test(start_paused = true)]
async fn a_dependent_on_started_starts_in_the_same_turn_as_its_dependency() {
    let h = start(
        r#"
[services.db]
kind = "mock"
ready_after = "never"
start_timeout = "0s"
[services.app]
kind = "mock"
depends_on = { db = "started" }
[services.web]
kind = "mock"
depends_on = { app = "started" }
"#,
    );
    h.wait("web", State::Ready).await;
    assert_eq!(h.log.times("start app"), vec![0]);
    assert_eq!(h.log.times("start web"), vec![0]);
    let (code, _) = h.shutdown().await;
    assert_eq!(code, EXIT_OK);
}

/// A stop's timer ends with the stop: a mass stop of services that stop at
/// once leaves no timers behind (each would wake the loop for nothing).
#[tokio::test(start_paused = true)]
async fn stop_timers_end_with_the_stop() {
    let mut reg = String::new();
    for i in 0..200 {
        reg.push_str(&format!(
            "[services.s{i}]\nkind = \"mock\"\nstop = {{ timeout = \"1h\" }}\n"
        ));
    }
    let h = start(&reg);
    h.wait("s199", State::Ready).await;
    for i in 0..200 {
        h.handle.stop(&format!("s{i}")).await.unwrap();
    }
    h.wait("s199", State::Stopped).await;
    tokio::task::yield_now().await;
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(alive < 20, "{alive} tasks alive after every stop ended");
    let (code, _) = h.shutdown().await;
    assert_eq!(code, EXIT_OK);
}

/// A shutdown request passes every message already queued: controls sent
/// before it are answered as refused, because the shutdown has begun
/// (its `shutdown_timeout` counts from the request, not from the end of a
/// backlog).
#[tokio::test(start_paused = true)]
async fn a_shutdown_request_overtakes_queued_controls() {
    let h = start(
        r#"
[services.a]
kind = "mock"
"#,
    );
    h.wait("a", State::Ready).await;
    let mut replies = Vec::new();
    for _ in 0..100 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(h.handle.send(Control::Restart {
            name: "a".into(),
            reply: tx
        }));
        replies.push(rx);
    }
    h.handle.shutdown();
    for rx in replies {
        assert_eq!(rx.await.unwrap(), Err(ControlError::shutting_down()));
    }
    assert_eq!(h.done.await.unwrap(), EXIT_OK);
}

#[tokio::test(start_paused = true)]
async fn a_service_removed_restored_disabled_then_enabled_while_it_stops_comes_back() {
    // Removed (stopping to go), restored disabled, then restored as it
    // was, all before it has stopped: it is enabled, so it comes back.
    let on =
        "[services.a]\nkind = \"mock\"\nstop_delay = \"2s\"\n[services.keeper]\nkind = \"mock\"\n";
    let off = on.replace("stop_delay", "enabled = false\nstop_delay");
    let h = start(on);
    h.wait("a", State::Ready).await;
    reload_to(&h, "[services.keeper]\nkind = \"mock\"\n").await;
    assert_eq!(h.state("a"), State::Stopping);
    reload_to(&h, &off).await;
    reload_to(&h, on).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.state("a"), State::Ready);
    assert_eq!(h.log.times("start a").len(), 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_service_restored_disabled_while_it_stops_takes_that_spec_and_can_be_enabled_again() {
    // Removed, restored disabled before it has stopped: once stopped it is
    // disabled with the restored spec, so a reload enabling it is a change.
    let on =
        "[services.a]\nkind = \"mock\"\nstop_delay = \"2s\"\n[services.keeper]\nkind = \"mock\"\n";
    let off = on.replace("stop_delay", "enabled = false\nstop_delay");
    let h = start(on);
    h.wait("a", State::Ready).await;
    reload_to(&h, "[services.keeper]\nkind = \"mock\"\n").await;
    reload_to(&h, &off).await;
    h.wait("a", State::Disabled).await;
    let summary = reload_to(&h, on).await;
    assert_eq!(summary.changed, vec!["a"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.state("a"), State::Ready);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_dependent_on_started_starts_with_its_dependency_without_waiting_for_another_message() {
    // Nothing else happens for an hour: b must not wait for some other
    // message to be looked at again once a has started.
    let text = r#"
[services.a]
kind = "mock"
ready_after = "never"
start_timeout = "1h"
[services.b]
kind = "mock"
depends_on = { a = "started" }
"#;
    let h = start(text);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.log.times("start a"), vec![0]);
    assert_eq!(h.log.times("start b"), vec![0]);
    // The same when a reload adds both.
    let h2 = start("[services.keeper]\nkind = \"mock\"\n");
    tokio::time::sleep(Duration::from_secs(1)).await;
    reload_to(&h2, &format!("{text}[services.keeper]\nkind = \"mock\"\n")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h2.log.times("start b"), vec![1000]);
    h.shutdown().await;
    h2.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_service_disabled_enabled_and_disabled_again_while_it_stops_stays_disabled() {
    let on =
        "[services.a]\nkind = \"mock\"\nstop_delay = \"2s\"\n[services.keeper]\nkind = \"mock\"\n";
    let off = on.replace("stop_delay", "enabled = false\nstop_delay");
    let h = start(on);
    h.wait("a", State::Ready).await;
    reload_to(&h, &off).await;
    assert_eq!(h.state("a"), State::Stopping);
    reload_to(&h, on).await;
    reload_to(&h, &off).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.state("a"), State::Disabled);
    assert_eq!(h.log.times("start a").len(), 1, "it did not come back");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_removes_a_dependent_and_changes_its_dependency_does_not_panic() {
    // x failed for good and blocked y; the reload removes y (it goes at
    // once: nothing runs) and changes x, which may run again: what it
    // blocked is looked up in the registry being applied, not the old one.
    let text = "[services.x]\nkind = \"mock\"\nexit = \"err\"\nexit_after = \"100ms\"\nrestart = { policy = \"never\" }\n[services.y]\nkind = \"mock\"\ndepends_on = [\"x\"]\n[services.keeper]\nkind = \"mock\"\n";
    let h = start(text);
    h.wait("y", State::Blocked).await;
    let s = reload_to(
        &h,
        "[services.x]\nkind = \"mock\"\n[services.keeper]\nkind = \"mock\"\n",
    )
    .await;
    assert_eq!((s.removed, s.changed), (vec!["y".into()], vec!["x".into()]));
    h.wait("x", State::Ready).await;
    h.shutdown().await;

    // x runs and y failed for good; the reload removes y and changes x,
    // whose restart applies its dependents' on_dependency_restart.
    let text = "[services.x]\nkind = \"mock\"\n[services.y]\nkind = \"mock\"\ndepends_on = [\"x\"]\nexit = \"err\"\nexit_after = \"100ms\"\nrestart = { policy = \"never\" }\n[services.keeper]\nkind = \"mock\"\n";
    let h = start(text);
    h.wait("y", State::Failed).await;
    reload_to(
        &h,
        "[services.x]\nkind = \"mock\"\nready_after = \"1s\"\n[services.keeper]\nkind = \"mock\"\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.state("x"), State::Ready);
    assert_eq!(h.log.times("start x").len(), 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_dependent_stopping_for_a_block_comes_back_when_its_dependency_is_started_again() {
    // b's first run fails for good: c stops to be blocked. Before c has
    // stopped, an operator starts b again: c waits for it, not blocked.
    let h = start(
        r#"
[services.b]
kind = "mock"
fail_times = 1
restart = { policy = "never" }
ready_after = "100ms"
[services.c]
kind = "mock"
depends_on = { b = "started" }
stop_delay = "2s"
[services.keeper]
kind = "mock"
"#,
    );
    h.wait("b", State::Failed).await;
    h.wait("c", State::Stopping).await;
    h.handle.start("b").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.state("b"), State::Ready);
    assert_eq!(h.state("c"), State::Ready);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_dependent_stopping_for_a_block_comes_back_when_a_reload_reverts_it() {
    // c is restarting for a reload that made it depend on b; b fails for
    // good (c's stop is now for a block); a reload reverts both: c runs
    // as it was, with no dependency to be blocked by.
    let v1 =
        "[services.c]\nkind = \"mock\"\nstop_delay = \"2s\"\n[services.keeper]\nkind = \"mock\"\n";
    let v2 = "[services.b]\nkind = \"mock\"\nfail_times = 1\nrestart = { policy = \"never\" }\n[services.c]\nkind = \"mock\"\nstop_delay = \"2s\"\ndepends_on = { b = \"started\" }\n[services.keeper]\nkind = \"mock\"\n";
    let h = start(v1);
    h.wait("c", State::Ready).await;
    reload_to(&h, v2).await;
    h.wait("b", State::Failed).await;
    assert_eq!(h.state("c"), State::Stopping);
    reload_to(&h, v1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.state("c"), State::Ready);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_a_running_services_schedule_runs_the_new_one() {
    let v1 = "[services.db]\nkind = \"mock\"\n[[services.db.schedule]]\naction = \"poke\"\nevery = \"10s\"\n";
    let v2 = v1.replace("10s", "4s");
    for other in ["", "ready_after = \"10ms\"\n"] {
        let h = start(v1);
        h.wait("db", State::Ready).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let v2 = v2.replace("kind = \"mock\"\n", &format!("kind = \"mock\"\n{other}"));
        assert_eq!(reload_to(&h, &v2).await.changed, vec!["db"]);
        tokio::time::sleep(Duration::from_millis(19_500)).await;
        // The new entry, from the reload on; the old one never again.
        assert_eq!(
            h.log.times("action db poke"),
            vec![5000, 9000, 13000, 17000],
            "changed besides the schedule: {other:?}"
        );
        h.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_while_a_service_stops_for_a_failure_keeps_the_failure_and_runs_the_new_spec() {
    // slow is not ready within its start_timeout (1 s) and takes 2 s to
    // stop; meanwhile a reload changes it. The failure is still one: its
    // words, a restart counted (reason start_timeout), within the budget in
    // force; the run after it is the new spec's.
    let v1 = "[services.slow]\nkind = \"mock\"\nready_after = \"never\"\nstart_timeout = \"1s\"\nstop_delay = \"2s\"\n[services.keeper]\nkind = \"mock\"\n";
    let v2 = v1.replace("\"never\"", "\"500ms\"");
    let h = start(v1);
    let mut events = h.handle.subscribe();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.state("slow"), State::Stopping);
    assert_eq!(reload_to(&h, &v2).await.changed, vec!["slow"]);
    tokio::time::sleep(Duration::from_millis(1600)).await; // the stop ended at 3 s
    let s = h.status("slow");
    assert_eq!(s.state, State::Starting, "the new spec's run");
    assert_eq!(
        s.last_error.as_deref(),
        Some("not ready within start_timeout (1s)")
    );
    assert_eq!(s.restarts, 1);
    let mut reasons = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let events::Happened::Restart { reason, .. } = e {
            reasons.push(reason);
        }
    }
    assert_eq!(reasons, vec![events::RestartReason::StartTimeout]);
    h.wait("slow", State::Ready).await;
    assert_eq!(h.log.times("start slow"), vec![0, 3000]);
    h.shutdown().await;

    // The budget in force decides: with it spent, the failure is for good
    // (and says so); the reload's spec then runs, as a reload runs a
    // failed service it changes.
    let v1 = v1.replace("stop_delay", "restart = { max_restarts = 0 }\nstop_delay");
    let v2 = v1.replace("\"never\"", "\"500ms\"");
    let h = start(&v1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reload_to(&h, &v2).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let s = h.status("slow");
    assert_eq!(s.state, State::Starting);
    assert_eq!(
        s.last_error.as_deref(),
        Some("not ready within start_timeout (1s) (restart budget of 0 in 1m exhausted)")
    );
    assert_eq!(
        s.history
            .snapshot()
            .iter()
            .map(|t| t.to)
            .collect::<Vec<_>>(),
        vec![
            State::Starting,
            State::Stopping,
            State::Failed,
            State::Pending,
            State::Starting
        ]
    );
    h.wait("slow", State::Ready).await;
    h.shutdown().await;

    // A reload that turns it off meanwhile: disabled once stopped, with the
    // words of its failure.
    let h = start(&v1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reload_to(&h, &v1.replace("stop_delay", "enabled = false\nstop_delay")).await;
    h.wait("slow", State::Disabled).await;
    assert_eq!(
        h.status("slow").last_error.as_deref(),
        Some("not ready within start_timeout (1s)")
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn last_error_describes_the_current_trouble_and_clears_once_a_run_succeeds() {
    let h = start(&format!(
        r#"
[services.flaky]
kind = "mock"
fail_times = 2
{NO_JITTER}
[services.job]
kind = "mock"
oneshot = true
fail_times = 1
exit_after = "1s"
{NO_JITTER}
[services.db]
kind = "mock"
fail_times = 1
restart = {{ policy = "never" }}
[services.app]
kind = "mock"
depends_on = ["db"]
"#
    ));
    let mut events = h.handle.subscribe();
    // While it crashes, the error is there.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.state("flaky"), State::Backoff);
    assert_eq!(
        h.status("flaky").last_error.as_deref(),
        Some("run 1 failed")
    );
    assert_eq!(h.status("job").last_error.as_deref(), Some("run 1 failed"));
    h.wait("app", State::Blocked).await;
    assert_eq!(h.status("db").last_error.as_deref(), Some("run 1 failed"));
    // A run that becomes ready, or completes, clears it; the restarts
    // and the history keep the past.
    h.wait("flaky", State::Ready).await;
    let s = h.status("flaky");
    assert_eq!((s.last_error, s.restarts), (None, 2));
    assert!(s.history.snapshot().iter().any(|t| t.to == State::Backoff));
    h.wait("job", State::Completed).await;
    assert_eq!(h.status("job").last_error, None);
    // Started again by an operator, db and what it blocked run: no error.
    h.handle.start("db").await.unwrap();
    h.wait("app", State::Ready).await;
    assert_eq!(h.status("db").last_error, None);
    assert_eq!(h.status("app").last_error, None);
    // The state event of the readiness says so too.
    let mut ready_errors = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let events::Happened::State {
            service,
            state: State::Ready,
            last_error,
            ..
        } = e
        {
            ready_errors.push((service.to_string(), last_error));
        }
    }
    assert!(
        ready_errors.iter().any(|(s, _)| s == "flaky"),
        "{ready_errors:?}"
    );
    assert!(
        ready_errors.iter().all(|(_, e)| e.is_none()),
        "{ready_errors:?}"
    );
    h.shutdown().await;
}

/// Services are listed in the order the registry gives them, after a
/// reload too: one inserted between two others is listed between them
/// (it was listed last), and so is one removed and added back.
#[tokio::test(start_paused = true)]
async fn services_keep_the_registrys_order_across_reloads() {
    let svc = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("[services.{n}]\nkind = \"mock\"\n"))
            .collect::<String>()
    };
    let names = |h: &Harness| -> Vec<String> {
        h.handle
            .status()
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    };
    let h = start(&svc(&["a", "b", "c"]));
    h.wait("c", State::Ready).await;
    reload_to(&h, &svc(&["a", "mid", "b", "c"])).await;
    h.wait("mid", State::Ready).await;
    assert_eq!(names(&h), ["a", "mid", "b", "c"]);
    reload_to(&h, &svc(&["a", "mid", "b"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    reload_to(&h, &svc(&["c", "a", "b", "mid"])).await;
    h.wait("c", State::Ready).await;
    assert_eq!(names(&h), ["c", "a", "b", "mid"]);
    assert_eq!(h.shutdown().await.0, EXIT_OK);
}

/// An operator's stop of the main service ends warden with 0 whatever the
/// moment: while it runs, and while it waits in backoff after a run that
/// exited 5 (that gave 5: a deliberate stop read as a crash).
#[tokio::test(start_paused = true)]
async fn an_operators_stop_of_the_main_service_is_exit_0_in_every_state() {
    let registry = r#"
[services.app]
kind = "mock"
main = true
exit = "err"
exit_after = "1s"
status = 5
restart = { policy = "on-failure", max_restarts = 5, backoff = { initial = "1h", max = "1h", jitter = 0.0 } }
"#;
    let h = start(registry);
    h.wait("app", State::Backoff).await;
    h.handle.stop("app").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(60), h.done)
        .await
        .expect("warden ends with its main service")
        .unwrap();
    assert_eq!(code, EXIT_OK, "stopped in backoff");

    let h = start(registry);
    h.wait("app", State::Ready).await;
    h.handle.stop("app").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(60), h.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, EXIT_OK, "stopped while running");
}

/// A reload applies in place what does not change a run: `description`,
/// `critical`, `main`, `restart`, `on_dependency_restart` and
/// `start_timeout`. The service keeps running, and so do its dependents
/// that restart with it (a new description restarted both).
#[tokio::test(start_paused = true)]
async fn a_reload_applies_in_place_what_does_not_change_a_run() {
    let before = r#"
[services.db]
kind = "mock"
description = "the database"
[services.app]
kind = "mock"
depends_on = ["db"]
on_dependency_restart = "restart"
"#;
    let h = start(before);
    h.wait("app", State::Ready).await;
    let after = r#"
[services.db]
kind = "mock"
description = "the database, described anew"
critical = true
start_timeout = "5m"
restart = { policy = "always", max_restarts = 9, backoff = { initial = "2s" } }
[services.app]
kind = "mock"
depends_on = ["db"]
on_dependency_restart = "stop"
"#;
    let summary = reload_to(&h, after).await;
    assert_eq!(summary.updated, vec!["db", "app"]);
    assert!(summary.changed.is_empty(), "{summary:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.log.times("start db").len(), 1, "db kept running");
    assert_eq!(h.log.times("start app").len(), 1, "app kept running");
    let db = h.status("db");
    assert!(db.critical, "critical applies at once");
    // What shapes a run still restarts it.
    let summary = reload_to(
        &h,
        &after.replace(
            "kind = \"mock\"\ndescription",
            "kind = \"mock\"\nready_after = \"10ms\"\ndescription",
        ),
    )
    .await;
    assert_eq!(summary.changed, vec!["db"]);
    h.shutdown().await;
}

/// A dependent about to start again after its own backoff waits for its
/// dependencies as any start does, whatever its `on_dependency_restart`
/// (it was started while its dependency was still in backoff: a critical
/// dependent spent its budget on a dependency that would have come back,
/// and warden exited 3).
#[tokio::test(start_paused = true)]
async fn a_restart_from_backoff_waits_for_the_dependencies() {
    let h = start(
        r#"
[services.a]
kind = "mock"
exit = "err"
exit_after = "1s"
restart = { max_restarts = 100, window = "1h", backoff = { initial = "6s", max = "6s", jitter = 0.0 } }
[services.b]
kind = "mock"
depends_on = ["a"]
critical = true
exit = "err"
exit_after = "2s"
restart = { max_restarts = 3, window = "1h", backoff = { initial = "200ms", max = "200ms", jitter = 0.0 } }
"#,
    );
    h.wait("b", State::Ready).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    // a: runs 0-1 s, backoff to 7 s, runs 7-8 s. b: 0-2 s; at 2.2 s a is
    // in backoff, so b waits; it starts again at 7 s, once a is ready.
    let a_starts = h.log.times("start a");
    let b_starts = h.log.times("start b");
    assert_eq!(a_starts.len(), 2, "{a_starts:?}");
    assert!(
        b_starts
            .iter()
            .skip(1)
            .all(|t| a_starts.contains(t) || *t >= 7000),
        "b started while a was in backoff: a {a_starts:?}, b {b_starts:?}"
    );
    assert!(h.state("b") != State::Failed);
    h.shutdown().await;
}

/// A restart after a start timeout takes the ordered path of an
/// operator's restart: the dependents that restart with it stop first, and
/// the dependency's own stop begins only once they have stopped (it got
/// its stop first, and the dependent drained against a dependency that was
/// gone).
#[tokio::test(start_paused = true)]
async fn a_restart_after_a_start_timeout_stops_the_dependents_first() {
    let h = start(
        r#"
[services.db]
kind = "mock"
ready_after = "never"
start_timeout = "1s"
stop_delay = "500ms"
restart = { backoff = { initial = "100ms", jitter = 0.0 } }
[services.app]
kind = "mock"
depends_on = { db = "started" }
on_dependency_restart = "restart"
stop_delay = "2s"
"#,
    );
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let first_stops: Vec<String> = h
        .log
        .entries()
        .into_iter()
        .filter(|(_, w)| w.starts_with("stop "))
        .map(|(t, w)| format!("{t} {w}"))
        .take(2)
        .collect();
    // app is asked to stop at 1 s and takes 2 s; db is asked only then.
    assert_eq!(first_stops, ["3000 stop app", "3500 stop db"]);
    h.shutdown().await;
}
