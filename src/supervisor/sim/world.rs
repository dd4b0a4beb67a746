//! The simulated world: a small universe of services a schedule may reload
//! between, the steps of a schedule, and the kind whose runs the schedule
//! drives (they become ready, exit, crash when told, or by themselves on
//! the timers their settings give) and which records every run: when it
//! began, was asked to stop, ended, and whether it was killed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::tests::MockSettings;
use crate::config::ServiceSpec;
use crate::services::{
    ActionError, BoxFuture, Context, Factory, Service as Run, ServiceError, settings_of,
};

/// The names a universe may use (the first `n` of them).
pub const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A service that runs in every registry, as the API does in real use, so
/// that warden does not end by itself when everything else is done.
pub const KEEPER: &str = "keeper";

/// The backoff's `initial` and `max` of every service.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// `[warden] shutdown_timeout` as a universe may write it: a usual one, the
/// longest the loader takes, and one it must refuse (it overflowed once).
pub const SHUTDOWN_TIMEOUTS: [&str; 3] = ["15s", "100y", "300000000000y"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Started,
    Ready,
    Completed,
}

impl Cond {
    pub fn as_str(self) -> &'static str {
        match self {
            Cond::Started => "started",
            Cond::Ready => "ready",
            Cond::Completed => "completed",
        }
    }
}

/// One way a service may be configured: what its runs do by themselves,
/// and its common settings.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Unique in the universe; the exit status its runs leave when they end
    /// by themselves, so that a run tells which variant it was built from.
    pub tag: u64,
    pub ready_after: Option<&'static str>,
    pub exit_after: Option<&'static str>,
    pub exit: &'static str,
    pub fail_times: u64,
    pub stop_delay: Option<&'static str>,
    pub stop_timeout_s: u64,
    pub start_timeout_s: u64,
    pub oneshot: bool,
    pub policy: &'static str,
    pub max_restarts: u32,
    pub critical: bool,
    pub on_dependency_restart: &'static str,
    pub schedule_every_s: Option<u64>,
    /// On services written before it (indices into `NAMES`).
    pub deps: Vec<(usize, Cond)>,
}

/// How one name appears in a registry: which variant, whether enabled,
/// and what a reload may change in place (0: nothing; 1: a description;
/// 2: another description and `critical` turned over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub variant: u8,
    pub enabled: bool,
    pub cosmetic: u8,
}

/// A registry: for each name, absent or picked.
pub type Choice = Vec<Option<Pick>>;

/// The variants of each name, which name is `main` (when present), and
/// `shutdown_timeout`.
#[derive(Clone, Debug)]
pub struct Universe {
    pub variants: Vec<Vec<Variant>>,
    pub main: Option<usize>,
    pub shutdown_timeout: &'static str,
}

/// One step of a schedule.
#[derive(Clone, Debug)]
pub enum Step {
    /// SIGHUP: reload to this registry (systemd hears `RELOADING=1`, then
    /// `READY=1`, as warden says them).
    Hup(Choice),
    /// SIGTERM: the ordered shutdown; a second one forces it.
    Term,
    /// An operator's control.
    Start(u8),
    Stop(u8),
    Restart(u8),
    /// The current run becomes ready, exits 0, crashes (exit status 5),
    /// or fails its health checks.
    Ready(u8),
    Exit(u8),
    Crash(u8),
    HealthFail(u8),
    /// This many milliseconds pass.
    Advance(u64),
}

impl Step {
    /// The step in words, with the universe's names.
    pub fn words(&self, u: &Universe) -> String {
        let name = |n: &u8| NAMES[*n as usize % u.variants.len()];
        match self {
            Step::Hup(c) => format!("SIGHUP, reload to {}", summary(u, c)),
            Step::Term => "SIGTERM".into(),
            Step::Start(n) => format!("warden start {}", name(n)),
            Step::Stop(n) => format!("warden stop {}", name(n)),
            Step::Restart(n) => format!("warden restart {}", name(n)),
            Step::Ready(n) => format!("{} becomes ready", name(n)),
            Step::Exit(n) => format!("{} exits 0", name(n)),
            Step::Crash(n) => format!("{} crashes (exit 5)", name(n)),
            Step::HealthFail(n) => format!("{} fails its health checks", name(n)),
            Step::Advance(ms) => format!("{ms} ms pass"),
        }
    }
}

/// One schedule: the universe, the first registry, the steps.
#[derive(Clone)]
pub struct Schedule {
    pub universe: Universe,
    pub initial: Choice,
    pub steps: Vec<Step>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.universe;
        writeln!(f, "the first registry:\n{}", render(u, &self.initial).text)?;
        writeln!(f, "then:")?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {}. {}", i + 1, s.words(u))?;
            if let Step::Hup(c) = s {
                for line in render(u, c).text.lines() {
                    writeln!(f, "       {line}")?;
                }
            }
        }
        Ok(())
    }
}

/// A registry's names and variants in a few words.
pub fn summary(u: &Universe, choice: &Choice) -> String {
    let mut words = Vec::new();
    for (i, name) in NAMES.iter().enumerate().take(u.variants.len()) {
        match choice.get(i).copied().flatten() {
            None => words.push(format!("{name}=-")),
            Some(p) => words.push(format!(
                "{name}=v{}{}{}",
                p.variant as usize % u.variants[i].len(),
                if p.enabled { "" } else { "(off)" },
                match p.cosmetic {
                    0 => "",
                    1 => "+description",
                    _ => "+description,critical",
                }
            )),
        }
    }
    words.join(" ")
}

/// What the simulation knows of a registry it rendered.
pub struct Model {
    pub text: String,
    /// In the order written (the keeper first).
    pub services: Vec<Service>,
    pub summary: String,
    pub shutdown_timeout: Option<Duration>,
}

/// One service of a registry.
pub struct Service {
    pub name: String,
    pub tag: u64,
    pub enabled: bool,
    pub critical: bool,
    pub main: bool,
    pub on_dependency_restart: &'static str,
    /// Dependencies with their conditions.
    pub deps: Vec<(String, Cond)>,
    /// Its `[[schedule]]` entry's period, in seconds.
    pub every_s: Option<u64>,
    /// Its table; and its table without what a reload applies in place.
    pub block: String,
    pub run_block: String,
}

impl Model {
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The services that depend on `name` directly.
    pub fn dependents<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .iter()
            .filter(move |s| s.deps.iter().any(|(d, _)| d == name))
    }
}

impl Variant {
    /// The service's table in a registry.
    fn toml(&self, name: &str, pick: Pick, main: bool, deps: &[(usize, Cond)]) -> String {
        let mut t = format!(
            "[services.{name}]\nkind = \"mock\"\nstatus = {}\n",
            self.tag
        );
        match pick.cosmetic {
            0 => {}
            1 => t += "description = \"one\"\n",
            _ => t += "description = \"two\"\n",
        }
        if !pick.enabled {
            t += "enabled = false\n";
        }
        if self.critical != (pick.cosmetic >= 2) {
            t += "critical = true\n";
        }
        if main {
            t += "main = true\n";
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

/// The registry `choice` picks from `u`, made valid: a dependency on a
/// service that is absent (or disabled while the dependent is enabled) is
/// dropped, and `completed` on a service that is not a oneshot is `ready`.
pub fn render(u: &Universe, choice: &Choice) -> Model {
    let n = u.variants.len();
    let pick = |i: usize| -> Option<(&Variant, Pick)> {
        choice
            .get(i)
            .copied()
            .flatten()
            .map(|p| (&u.variants[i][p.variant as usize % u.variants[i].len()], p))
    };
    let mut text = format!(
        "[warden]\nshutdown_timeout = \"{}\"\n[services.{KEEPER}]\nkind = \"mock\"\n",
        u.shutdown_timeout
    );
    let mut services = vec![Service {
        name: KEEPER.into(),
        tag: 0,
        enabled: true,
        critical: false,
        main: false,
        on_dependency_restart: "ignore",
        deps: Vec::new(),
        every_s: None,
        block: String::new(),
        run_block: String::new(),
    }];
    for (i, name) in NAMES.iter().enumerate().take(n) {
        let Some((v, p)) = pick(i) else {
            continue;
        };
        let mut deps: Vec<(usize, Cond)> = Vec::new();
        for &(j, c) in &v.deps {
            let Some((dv, dp)) = pick(j) else {
                continue;
            };
            if p.enabled && !dp.enabled || deps.iter().any(|(k, _)| *k == j) {
                continue;
            }
            let c = if c == Cond::Completed && !dv.oneshot {
                Cond::Ready
            } else {
                c
            };
            deps.push((j, c));
        }
        // A main service that is disabled is a `check` error: it is main
        // only while enabled.
        let main = u.main == Some(i) && p.enabled;
        let block = v.toml(name, p, main, &deps);
        let plain = Pick { cosmetic: 0, ..p };
        let run_block = v
            .toml(name, plain, main, &deps)
            .replace("critical = true\n", "");
        text += &block;
        services.push(Service {
            name: name.to_string(),
            tag: v.tag,
            enabled: p.enabled,
            critical: v.critical != (p.cosmetic >= 2),
            main,
            on_dependency_restart: v.on_dependency_restart,
            deps: deps
                .iter()
                .map(|(j, c)| (NAMES[*j].to_string(), *c))
                .collect(),
            every_s: v.schedule_every_s,
            block,
            run_block,
        });
    }
    Model {
        text,
        services,
        summary: summary(u, choice),
        shutdown_timeout: humantime::parse_duration(u.shutdown_timeout).ok(),
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
            2 => Just(Some("never")),
        ],
        prop_oneof![
            3 => Just(None),
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
        prop_oneof![3 => Just(false), 1 => Just(true)],
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

pub fn universe() -> impl Strategy<Value = Universe> {
    (3usize..=NAMES.len())
        .prop_flat_map(|n| {
            (
                (0..n)
                    .map(|i| proptest::collection::vec(variant(i), 1..=3))
                    .collect::<Vec<_>>(),
                prop_oneof![2 => Just(None), 1 => (0..n).prop_map(Some)],
                prop_oneof![
                    12 => Just(SHUTDOWN_TIMEOUTS[0]),
                    1 => Just(SHUTDOWN_TIMEOUTS[1]),
                    1 => Just(SHUTDOWN_TIMEOUTS[2]),
                ],
            )
        })
        .prop_map(|(mut variants, main, shutdown_timeout)| {
            for (i, vs) in variants.iter_mut().enumerate() {
                for (k, v) in vs.iter_mut().enumerate() {
                    v.tag = 100 + 10 * i as u64 + k as u64;
                }
            }
            Universe {
                variants,
                main,
                shutdown_timeout,
            }
        })
}

pub fn choice() -> impl Strategy<Value = Choice> {
    let pick = (
        0u8..3,
        prop_oneof![4 => Just(true), 1 => Just(false)],
        prop_oneof![2 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
    )
        .prop_map(|(variant, enabled, cosmetic)| Pick {
            variant,
            enabled,
            cosmetic,
        });
    proptest::collection::vec(
        prop_oneof![1 => Just(None), 4 => pick.prop_map(Some)],
        NAMES.len(),
    )
}

fn step() -> impl Strategy<Value = Step> {
    let name = 0u8..NAMES.len() as u8;
    prop_oneof![
        3 => choice().prop_map(Step::Hup),
        1 => name.clone().prop_map(Step::Start),
        1 => name.clone().prop_map(Step::Stop),
        1 => name.clone().prop_map(Step::Restart),
        2 => name.clone().prop_map(Step::Ready),
        1 => name.clone().prop_map(Step::Exit),
        2 => name.clone().prop_map(Step::Crash),
        2 => name.prop_map(Step::HealthFail),
        1 => Just(Step::Term),
        5 => prop_oneof![Just(0u64), Just(100), 0u64..=5000].prop_map(Step::Advance),
    ]
}

pub fn schedule() -> impl Strategy<Value = Schedule> {
    (
        universe(),
        choice(),
        proptest::collection::vec(step(), 1..24),
    )
        .prop_map(|(universe, initial, steps)| Schedule {
            universe,
            initial,
            steps,
        })
}

/// The exit status a run leaves when the schedule makes it crash (a
/// process that exits 5).
pub const CRASH_STATUS: i32 = 5;

/// What the schedule tells a live run.
#[derive(Debug)]
pub enum Cmd {
    Ready,
    Exit,
    Crash,
}

/// One run of a service, as the world saw it (times since the start).
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub name: String,
    pub tag: u64,
    pub stop_timeout: Duration,
    /// When it was asked to stop.
    pub cancelled: Option<Duration>,
    pub ended: Option<Duration>,
    /// Dropped before it returned: killed.
    pub killed: bool,
    /// It ended by itself (not asked to stop), leaving this exit status.
    pub by_itself: bool,
    pub status: Option<i32>,
}

/// Every run, and a way to reach each live one.
#[derive(Default)]
pub struct Runs {
    pub all: Vec<RunRecord>,
    live: HashMap<usize, mpsc::UnboundedSender<Cmd>>,
    /// When each service's scheduled action ran.
    pub actions: Vec<(String, Duration)>,
}

impl Runs {
    /// The live runs of `name` (indices into `all`).
    pub fn live_of(&self, name: &str) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .live
            .keys()
            .copied()
            .filter(|i| self.all[*i].name == name)
            .collect();
        v.sort_unstable();
        v
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Tells `name`'s live run; `false` when it has none.
    pub fn tell(&self, name: &str, cmd: Cmd) -> bool {
        match self.live_of(name).last() {
            Some(i) => self.live[i].send(cmd).is_ok(),
            None => false,
        }
    }

    /// The last run of `name`.
    pub fn last_of(&self, name: &str) -> Option<&RunRecord> {
        self.all.iter().rev().find(|r| r.name == name)
    }
}

pub type World = Arc<Mutex<Runs>>;

/// The kind `mock` of the simulation.
pub struct SimFactory {
    pub world: World,
    pub t0: Instant,
}

struct SimRun {
    name: String,
    settings: Json,
    stop_timeout: Duration,
    world: World,
    t0: Instant,
    /// Which run of this service it is (the first `fail_times` fail).
    run: u64,
}

/// Marks the run's end in the world, whichever way it ends: dropped while
/// it still runs (and not unwinding from its own panic) is killed.
struct Alive {
    world: World,
    index: usize,
    t0: Instant,
    returned: bool,
}

impl Drop for Alive {
    fn drop(&mut self) {
        let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        w.live.remove(&self.index);
        let r = &mut w.all[self.index];
        r.ended = Some(self.t0.elapsed());
        if !self.returned && !std::thread::panicking() {
            r.killed = true;
        }
        if std::thread::panicking() {
            r.by_itself = true;
        }
    }
}

impl Factory for SimFactory {
    fn action(
        &self,
        spec: &ServiceSpec,
        _action: &str,
        args: Json,
        _details: crate::services::Details,
    ) -> BoxFuture<Result<Json, ActionError>> {
        self.world
            .lock()
            .unwrap()
            .actions
            .push((spec.name.clone(), self.t0.elapsed()));
        Box::pin(async move {
            let takes = args
                .get("takes")
                .and_then(Json::as_str)
                .and_then(|s| humantime::parse_duration(s).ok())
                .unwrap_or_default();
            tokio::time::sleep(takes).await;
            Ok(Json::Null)
        })
    }

    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Run>, ServiceError> {
        let typed = settings_of::<MockSettings>(spec)?;
        let mut settings = crate::config::decode::Decode::to_json(typed);
        if let Json::Object(o) = &mut settings {
            o.retain(|_, v| !v.is_null());
        }
        let run = self
            .world
            .lock()
            .unwrap()
            .all
            .iter()
            .filter(|r| r.name == spec.name)
            .count() as u64
            + 1;
        Ok(Box::new(SimRun {
            name: spec.name.clone(),
            settings,
            stop_timeout: spec.common.stop.timeout,
            world: self.world.clone(),
            t0: self.t0,
            run,
        }))
    }
}

fn dur(s: &Json, key: &str) -> Option<Duration> {
    s.get(key)
        .and_then(Json::as_str)
        .and_then(|v| humantime::parse_duration(v).ok())
}

impl Run for SimRun {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let s = &self.settings;
            let tag = s.get("status").and_then(Json::as_u64).unwrap_or(0);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let index = {
                let mut w = self.world.lock().unwrap();
                w.all.push(RunRecord {
                    name: self.name.clone(),
                    tag,
                    stop_timeout: self.stop_timeout,
                    cancelled: None,
                    ended: None,
                    killed: false,
                    by_itself: false,
                    status: None,
                });
                let i = w.all.len() - 1;
                w.live.insert(i, tx);
                i
            };
            let mut alive = Alive {
                world: self.world.clone(),
                index,
                t0: self.t0,
                returned: false,
            };
            let record = |f: &dyn Fn(&mut RunRecord)| {
                let mut w = self.world.lock().unwrap();
                f(&mut w.all[index]);
            };
            let fail_times = s.get("fail_times").and_then(Json::as_u64).unwrap_or(0);
            if self.run <= fail_times {
                record(&|r| r.by_itself = true);
                alive.returned = true;
                return Err(ServiceError(format!("run {} failed", self.run)));
            }
            let started = Instant::now();
            let ready_at = match s.get("ready_after") {
                Some(Json::String(v)) if v == "never" => None,
                Some(_) => dur(s, "ready_after").map(|d| started + d),
                None => Some(started),
            };
            let exit_at = dur(s, "exit_after").map(|d| started + d);
            let far = started + Duration::from_secs(1 << 40);
            let outcome = async {
                let mut ready = false;
                loop {
                    tokio::select! {
                        biased;
                        cmd = rx.recv() => match cmd {
                            Some(Cmd::Ready) => if !ready {
                                ready = true;
                                ctx.ready();
                            },
                            Some(Cmd::Exit) => {
                                ctx.set_exit_status(0);
                                record(&|r| r.status = Some(0));
                                return Ok(());
                            }
                            Some(Cmd::Crash) => {
                                ctx.set_exit_status(CRASH_STATUS);
                                record(&|r| r.status = Some(CRASH_STATUS));
                                return Err(ServiceError("exited with status 5".into()));
                            }
                            None => std::future::pending::<()>().await,
                        },
                        _ = tokio::time::sleep_until(ready_at.unwrap_or(far)), if !ready && ready_at.is_some() => {
                            ready = true;
                            ctx.ready();
                        }
                        _ = tokio::time::sleep_until(exit_at.unwrap_or(far)), if exit_at.is_some() => {
                            ctx.set_exit_status(tag as i32);
                            record(&|r| r.status = Some(tag as i32));
                            return match s.get("exit").and_then(Json::as_str).unwrap_or("ok") {
                                "err" => Err(ServiceError("exited with status 1".into())),
                                "panic" => panic!("mock {} panicked", self.name),
                                _ => Ok(()),
                            };
                        }
                    }
                }
            };
            let r = tokio::select! {
                biased;
                _ = ctx.cancelled() => {
                    let at = self.t0.elapsed();
                    record(&|r| r.cancelled = Some(at));
                    match s.get("stop_delay") {
                        Some(Json::String(v)) if v == "forever" => std::future::pending::<()>().await,
                        Some(_) => tokio::time::sleep(dur(s, "stop_delay").unwrap_or_default()).await,
                        None => {}
                    }
                    Ok(())
                }
                r = outcome => {
                    record(&|r| r.by_itself = true);
                    r
                }
            };
            alive.returned = true;
            r
        })
    }
}
