//! A simulation of the supervisor's core on paused time. A schedule is a
//! small universe of services (each name with a few variants: runs that
//! crash, exit, become ready late or never, ignore their stop, fail their
//! first runs, run scheduled actions; dependencies, restart policies,
//! `critical`, `main`), a first registry, and random steps: crashes, exits,
//! readiness and health flips, operator controls, SIGHUP reloads (added,
//! removed, changed, disabled, changed only in place), SIGTERM (a second
//! one forces), and time passing (start timeouts, backoffs, stop
//! timeouts). After every step the rules in [`oracle`] are checked: what
//! warden publishes, the order of its decisions (rest_for_one, no start
//! before its conditions hold), what systemd hears, the exit code, and the
//! runs (none outlives its state, none is killed before its grace).
//!
//! Each schedule comes from a seed, so a failure replays:
//! `SIM_SEED=N cargo test --lib supervisor::sim`. A failing seed prints the
//! schedule shrunk to the fewest steps that still break the rule, and what
//! warden did at each. The suite runs a fixed number of seeds;
//! `scripts/sim` runs as many as asked.

mod oracle;
mod world;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use tokio::time::Instant;

use super::state::State;
use super::systemd::{Say, Speaker};
use super::tests::mock_table;
use super::{EXIT_CRITICAL, Handle, ServiceStatus, Supervisor, Trace};
use crate::config::{LoadOptions, Registry, Runs};
use crate::graph::Graph;
use crate::services::{Kinds, Registration};
use oracle::{Bounds, Oracle};
use world::{Cmd, Model, NAMES, Schedule, SimFactory, Step, Universe, World};

/// One step of time running on with no step of the schedule.
const SETTLE_STEP: Duration = Duration::from_secs(10);

/// How many `SETTLE_STEP`s run once the schedule's steps are done.
const SETTLE_STEPS: usize = 12;

/// Loads a registry of the simulation's kind, or says why not.
fn load(text: &str) -> Result<(Registry, Graph), String> {
    let opts = LoadOptions {
        path: "sim.toml".into(),
        profile: None,
        kinds: Arc::new(mock_table()),
    };
    let text = format!("[api]\nenabled = false\n{text}");
    let loaded =
        crate::config::load_text(&opts, text, &crate::config::NoSources, Default::default());
    let reg = loaded.registry.ok_or_else(|| {
        loaded
            .diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.key.clone().unwrap_or_default(), d.message))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let graph = crate::graph::build(&reg).map_err(|e| format!("{e:?}"))?;
    Ok((reg, graph))
}

/// A registry the loader refused must be one the universe made invalid on
/// purpose (a duration beyond the longest one), refused with the key
/// named.
fn refused_as_it_should(u: &Universe, why: &str) -> Result<(), String> {
    if u.shutdown_timeout == world::SHUTDOWN_TIMEOUTS[2] && why.contains("shutdown_timeout") {
        Ok(())
    } else {
        Err(format!(
            "the loader refused a registry it should take: {why}"
        ))
    }
}

/// Lets every message already due be handled (no time passes).
async fn drain() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// The time bounds of a universe: nothing stays starting, stopping or in
/// backoff longer than its timeouts allow.
fn bounds(u: &Universe) -> Bounds {
    let all = || u.variants.iter().flatten();
    Bounds {
        starting: Duration::from_secs(all().map(|v| v.start_timeout_s).max().unwrap_or(0)),
        chain: Duration::from_secs(all().map(|v| v.stop_timeout_s).max().unwrap_or(0))
            * (u.variants.len() as u32 + 1),
    }
}

/// What one schedule saw, for the failure message.
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
            Err(format!("warden panicked: {msg}"))
        }
        Err(e) => Err(format!("the supervisor task: {e}")),
    }
}

/// One schedule running: the supervisor, the world, and what is known.
struct Sim {
    t0: Instant,
    universe: Universe,
    handle: Handle,
    done: tokio::task::JoinHandle<u8>,
    world: World,
    trace: Trace,
    oracle: Oracle,
    speaker: Speaker,
    model: Model,
    bounds: Bounds,
    log: Transcript,
    finished: Option<u8>,
    terms: u32,
}

impl Sim {
    fn name(&self, n: u8) -> &'static str {
        NAMES[n as usize % self.universe.variants.len()]
    }

    /// What systemd hears now, checked.
    fn speak(&mut self, say: Option<Say>) -> Result<(), String> {
        if let Some(say) = say {
            let status = self.handle.status();
            self.oracle.said(&say, &status, &self.model)?;
        }
        Ok(())
    }

    /// Carries out one step; the words for the transcript.
    async fn step(&mut self, step: &Step) -> Result<String, String> {
        let name = |n: &u8| self.name(*n);
        Ok(match step {
            Step::Hup(choice) => {
                let m = world::render(&self.universe, choice);
                let before = self.handle.status();
                let say = self.speaker.reloading();
                self.speak(say)?;
                let words = match load(&m.text) {
                    Err(why) => {
                        refused_as_it_should(&self.universe, &why)?;
                        format!("SIGHUP: {}: refused: {why}", m.summary)
                    }
                    Ok((reg, graph)) => match self.handle.request_reload(reg, graph).await {
                        Ok(s) => {
                            oracle::reload_summary(&self.model, &m, &before, &s)?;
                            for n in &s.updated {
                                let was = |m: &Model| m.get(n).is_some_and(|x| x.critical);
                                let running = before.iter().any(|x| {
                                    x.name == *n
                                        && matches!(x.state, State::Starting | State::Ready)
                                });
                                if was(&self.model) != was(&m) && !running {
                                    self.oracle.critical_moved.insert(n.clone());
                                }
                            }
                            let w = format!(
                                "SIGHUP: reload to {} (added {:?}, removed {:?}, changed {:?}, updated {:?})",
                                m.summary, s.added, s.removed, s.changed, s.updated
                            );
                            self.model = m;
                            w
                        }
                        Err(e) => format!("SIGHUP: reload to {}: refused: {e}", m.summary),
                    },
                };
                let say = self.speaker.reloaded();
                self.speak(say)?;
                words
            }
            Step::Term => {
                self.terms += 1;
                self.handle.shutdown();
                "SIGTERM".into()
            }
            Step::Start(n) | Step::Stop(n) | Step::Restart(n) => {
                let n = name(n);
                let (verb, r) = match step {
                    Step::Start(_) => ("start", self.handle.start(n).await),
                    Step::Stop(_) => ("stop", self.handle.stop(n).await),
                    _ => ("restart", self.handle.restart(n).await),
                };
                match r {
                    Ok(()) => format!("warden {verb} {n}"),
                    Err(e) => format!("warden {verb} {n}: refused: {e}"),
                }
            }
            Step::Ready(n) | Step::Exit(n) | Step::Crash(n) => {
                let n = name(n);
                let (cmd, verb) = match step {
                    Step::Ready(_) => (Cmd::Ready, "becomes ready"),
                    Step::Exit(_) => (Cmd::Exit, "exits 0"),
                    _ => (Cmd::Crash, "crashes"),
                };
                if self.world.lock().unwrap().tell(n, cmd) {
                    format!("{n} {verb}")
                } else {
                    format!("{n} {verb}: it has no run")
                }
            }
            Step::HealthFail(n) => {
                let n = name(n);
                let _ = self
                    .handle
                    .tx
                    .send(super::Msg::HealthFailedNow { name: Arc::from(n) });
                format!("{n} fails its health checks")
            }
            Step::Advance(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                format!("{ms} ms pass")
            }
        })
    }

    /// Every rule, after a step.
    async fn check(&mut self, settled: bool) -> Result<(), String> {
        let status = self.handle.status();
        let now = self.t0.elapsed();
        {
            let trace = self.trace.lock().unwrap().clone();
            let runs = self.world.lock().unwrap();
            self.oracle.read(&trace, &self.model, &runs, now)?;
            oracle::runs(&runs, &status, &self.oracle, self.model.shutdown_timeout)?;
        }
        if self.finished.is_none() {
            match ended(&mut self.done).await? {
                Some(code) => {
                    self.finished = Some(code);
                    self.exit_code(code)?;
                }
                None => {
                    let shutting_down = *self.handle.stopping().borrow();
                    let say = self.speaker.follow(&self.handle.tally(), shutting_down);
                    self.speak(say)?;
                    if !shutting_down {
                        oracle::readyz(self.handle.tally().critical_ready(), &status, &self.model)?;
                    }
                    oracle::order(&status, &self.model)?;
                    let runs = self.world.lock().unwrap();
                    oracle::status(
                        &status,
                        &self.model,
                        &self.bounds,
                        shutting_down,
                        settled,
                        &runs,
                    )?;
                    if settled && !shutting_down {
                        oracle::schedules(&status, &self.model, &runs, now, SETTLE_STEP)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The exit code follows the first cause to end warden.
    fn exit_code(&self, code: u8) -> Result<(), String> {
        // A service made critical (or not) in place while it was not
        // running: its failure may or may not end warden with 3.
        if code == EXIT_CRITICAL && !self.oracle.critical_moved.is_empty() {
            return Ok(());
        }
        match &self.oracle.expected {
            Some((codes, _)) if codes.contains(&code) => Ok(()),
            Some((codes, why)) => Err(format!(
                "warden exited with {code}, but first {why}, which gives {codes:?}"
            )),
            None => Err(format!("warden ended by itself with exit code {code}")),
        }
    }
}

/// Runs one schedule; `Err` says which rule broke, with what happened.
async fn run(schedule: &Schedule, seed: u64) -> Result<(), String> {
    let t0 = Instant::now();
    let u = schedule.universe.clone();
    let model = world::render(&u, &schedule.initial);
    let (reg, graph) = match load(&model.text) {
        Ok(r) => r,
        Err(why) => return refused_as_it_should(&u, &why),
    };
    let world: World = Arc::default();
    let mut kinds = Kinds::new();
    kinds.register(
        Registration::new::<super::tests::MockSettings>(
            "mock",
            Runs::InProcess,
            SimFactory {
                world: world.clone(),
                t0,
            },
        )
        .action(super::tests::poke()),
    );
    let trace: Trace = Arc::new(Mutex::new(Vec::new()));
    let sup = Supervisor::new(&reg, graph, kinds)
        .with_seed(seed)
        .with_trace(trace.clone());
    let handle = sup.handle();
    let done = tokio::spawn(sup.run(std::future::pending()));
    let mut sim = Sim {
        t0,
        bounds: bounds(&u),
        universe: u,
        handle,
        done,
        world,
        trace,
        oracle: Oracle::default(),
        speaker: Speaker::default(),
        log: Transcript(Vec::new()),
        finished: None,
        terms: 0,
        model,
    };
    let fail = |sim: &Sim, why: String| -> String {
        let trace = sim.trace.lock().unwrap();
        let last: Vec<String> = trace
            .iter()
            .skip(trace.len().saturating_sub(40))
            .map(|t| format!("  {t:?}"))
            .collect();
        format!(
            "{why}\n\nwhat happened:\n{}\n\nwarden's last decisions:\n{}",
            sim.log.0.join("\n"),
            last.join("\n")
        )
    };
    drain().await;
    let status = sim.handle.status();
    sim.log
        .note(t0, format!("start: {}", sim.model.summary), &status);
    if let Err(why) = sim.check(false).await {
        return Err(fail(&sim, why));
    }

    // Every step, then time running on with no more steps, then SIGTERM
    // (and a second one, if the first has not ended it in time).
    let settle = std::iter::repeat_n(Step::Advance(SETTLE_STEP.as_millis() as u64), SETTLE_STEPS);
    let n = schedule.steps.len();
    for (i, step) in schedule.steps.iter().cloned().chain(settle).enumerate() {
        if sim.finished.is_some() {
            break;
        }
        let settled = i >= n + 2 && sim.terms == 0;
        let what = match sim.step(&step).await {
            Ok(w) => w,
            Err(why) => return Err(fail(&sim, why)),
        };
        drain().await;
        let status = sim.handle.status();
        sim.log.note(t0, what, &status);
        if let Err(why) = sim.check(settled).await {
            return Err(fail(&sim, why));
        }
    }
    if sim.finished.is_none() {
        if sim.terms == 0 {
            sim.handle.shutdown();
            sim.terms = 1;
        }
        // An ordered shutdown ends within shutdown_timeout, and within the
        // stop timeouts of the chain of services: whichever is shorter.
        let limit = sim
            .model
            .shutdown_timeout
            .unwrap_or(Duration::MAX)
            .min(sim.bounds.chain + SETTLE_STEP)
            + Duration::from_secs(1);
        let t = tokio::time::timeout(limit, &mut sim.done).await;
        drain().await;
        sim.log.note(t0, "SIGTERM".into(), &sim.handle.status());
        match t {
            Err(_) => {
                return Err(fail(
                    &sim,
                    format!("the shutdown did not end within {limit:?}"),
                ));
            }
            Ok(Ok(code)) => {
                sim.finished = Some(code);
                let r = sim.check(true).await.and_then(|_| sim.exit_code(code));
                if let Err(why) = r {
                    return Err(fail(&sim, why));
                }
            }
            Ok(Err(e)) => return Err(fail(&sim, format!("warden panicked: {e}"))),
        }
    }
    // Once warden has ended, no run of it is left.
    drain().await;
    let live = sim.world.lock().unwrap().live_count();
    if live > 0 {
        return Err(fail(&sim, format!("{live} runs outlived warden")));
    }
    Ok(())
}

/// Runs the schedule of `seed`; on a failure, shrinks it and says how to
/// replay it.
fn run_seed(seed: u64) -> Result<(), String> {
    let config = Config {
        cases: 1,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let r = runner.run(&world::schedule(), |s| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(&s, seed)).map_err(TestCaseError::fail)
    });
    match r {
        Ok(()) => Ok(()),
        Err(TestError::Fail(why, s)) => Err(format!(
            "seed {seed} broke a rule: {why}\n\nthe schedule, shrunk:\n{s:?}\nreplay: SIM_SEED={seed} cargo test --lib supervisor::sim -- --nocapture"
        )),
        Err(TestError::Abort(why)) => Err(format!("seed {seed}: {why}")),
    }
}

/// The seeds a test runs: `SIM_SEED` alone if set; else `SIM_SEEDS` (or
/// `default`) seeds from `SIM_FROM` (or 0), this test's share of them
/// (`part` of `parts`).
fn seeds(part: u64, parts: u64, default: u64) -> Vec<u64> {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(s) = var("SIM_SEED") {
        return if part == 0 { vec![s] } else { Vec::new() };
    }
    let count = var("SIM_SEEDS").unwrap_or(default);
    let from = var("SIM_FROM").unwrap_or(0);
    (from..from + count).filter(|s| s % parts == part).collect()
}

fn run_part(part: u64) {
    let seeds = seeds(part, PARTS, SEEDS);
    for seed in seeds {
        if let Err(why) = run_seed(seed) {
            panic!("{why}");
        }
    }
}

/// Schedules the suite runs, split over `PARTS` tests.
const SEEDS: u64 = 3000;
const PARTS: u64 = 4;

#[test]
fn schedules_part_0() {
    run_part(0);
}

#[test]
fn schedules_part_1() {
    run_part(1);
}

#[test]
fn schedules_part_2() {
    run_part(2);
}

#[test]
fn schedules_part_3() {
    run_part(3);
}
