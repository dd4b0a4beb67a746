//! The simulation's process side, with the real `warden` binary and real
//! process groups (the in-process simulation, `supervisor::sim`, has none).
//! Each seed makes a few services whose app runs under a shell without
//! `exec` (the shape of most container services): it traps SIGTERM and
//! needs a moment to flush, or exits at once, or ignores SIGTERM; some
//! report readiness on `NOTIFY_SOCKET`. Random steps stop, start and restart
//! them, kill their app, reload with `[api] enabled` off or on, and let
//! time pass; SIGTERM ends the schedule (a second one, sometimes, forces
//! it). Some run as `nobody`. Every service becomes ready first (on
//! `NOTIFY_SOCKET` as `nobody` too), then after every step:
//! - a service that does not run has no process left in its group;
//! - an app asked to stop with a flush shorter than its `stop.timeout`
//!   flushed (its grace was kept for the whole group);
//! - an app run as `nobody` saw nobody's HOME, USER, LOGNAME and SHELL;
//! - the API serves as it started, whatever a reload says of it;
//!
//! and once warden has exited: no process of any service, no notify socket
//! left, exit code 0.
//!
//! `SIM_PROCESS_SEEDS=N` (and `SIM_PROCESS_FROM`) runs more; a failure
//! names its seed and the steps that led there:
//! `SIM_PROCESS_SEED=N cargo test --test sim_process`.

mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use support::daemon::{Warden, client, processes_with};
use support::http::{get_json, wait_http};
use support::servers::free_port;

/// Schedules the suite runs.
const SEEDS: u64 = 6;

/// What a child of `user = "nobody"` must see (Debian's passwd entry).
const NOBODY_ENV: &str = "/nonexistent:nobody:nobody:/usr/sbin/nologin";

/// One service of a schedule.
struct Svc {
    name: String,
    /// In every process of its group's command line.
    marker: String,
    /// How long its app takes to flush on SIGTERM; `None`: it ignores
    /// SIGTERM (killed when the grace is over).
    flush_ms: Option<u64>,
    grace_s: u64,
    notify: bool,
    /// Runs as `nobody` (and must then see nobody's HOME, USER, LOGNAME
    /// and SHELL, and become ready on `NOTIFY_SOCKET` all the same).
    nobody: bool,
}

impl Svc {
    fn toml(&self, log: &Path) -> String {
        let log = log.display();
        let m = &self.marker;
        let on_term = match self.flush_ms {
            Some(0) => format!("echo term $$ >> {log}; exit 0"),
            Some(ms) => format!(
                "echo term $$ >> {log}; sleep {}; echo flushed $$ >> {log}; exit 0",
                ms as f64 / 1000.0
            ),
            None => format!("echo term $$ >> {log}"),
        };
        let ready = if self.notify {
            "systemd-notify --ready; "
        } else {
            ""
        };
        let env_check = if self.nobody {
            format!(
                "[ \"$HOME:$USER:$LOGNAME:$SHELL\" = {NOBODY_ENV} ] && echo envok $$ >> {log}; "
            )
        } else {
            String::new()
        };
        // `: MARKER` puts the marker in the command line of both shells;
        // `$` is written `$$` in a registry.
        let app = format!(
            ": {m}; echo start $$ >> {log}; {env_check}trap '{on_term}' TERM; {ready}while true; do sleep 0.05; done"
        )
        .replace('$', "$$");
        let mut t = format!(
            "[services.{}]\nkind = \"process\"\ncommand = [\"sh\", \"-c\", \"sh -c \\\"$$0\\\"; echo done\", {app:?}]\nstop = {{ timeout = \"{}s\" }}\nrestart = {{ policy = \"always\", backoff = {{ initial = \"200ms\", max = \"1s\" }}, max_restarts = 100 }}\n",
            self.name, self.grace_s
        );
        if self.notify {
            t += "ready = { notify = true }\nstart_timeout = \"5s\"\n";
        }
        if self.nobody {
            t += "user = \"nobody\"\n";
        }
        t
    }
}

#[derive(Debug, Clone)]
enum Step {
    Stop(usize),
    Start(usize),
    Restart(usize),
    /// SIGKILL the app (the inner shell): the outer one goes on, prints
    /// and exits, and the service restarts.
    KillApp(usize),
    Wait(u64),
    /// SIGHUP after writing the registry with `[api] enabled` so: the
    /// API keeps serving as it started until warden starts again.
    Hup {
        api: bool,
    },
}

struct Schedule {
    services: Vec<Svc>,
    steps: Vec<Step>,
    force: bool,
}

fn schedule(seed: u64) -> Schedule {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = rng.usize(2..=3);
    let services = (0..n)
        .map(|i| {
            let grace_s = rng.u64(1..=2);
            Svc {
                name: format!("s{i}"),
                marker: format!("simproc{seed}x{i}z"),
                flush_ms: match rng.u8(0..4) {
                    0 => Some(0),
                    1 => Some(300),
                    2 => Some(700),
                    _ => None,
                },
                grace_s,
                notify: rng.u8(0..3) == 0,
                nobody: rng.u8(0..3) == 0,
            }
        })
        .collect();
    let steps = (0..rng.usize(3..=7))
        .map(|_| {
            let s = rng.usize(0..n);
            match rng.u8(0..7) {
                0 => Step::Stop(s),
                1 => Step::Start(s),
                2 => Step::Restart(s),
                3 => Step::KillApp(s),
                4 => Step::Hup { api: rng.bool() },
                _ => Step::Wait([100, 400, 1200][rng.usize(0..3)]),
            }
        })
        .collect();
    Schedule {
        services,
        steps,
        force: rng.u8(0..4) == 0,
    }
}

/// The live processes of a marker (zombies are on their way out).
fn live(marker: &str) -> Vec<u32> {
    processes_with(marker)
        .into_iter()
        .filter(|(_, s)| *s != 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// The app log's lines: (word, pid).
fn lines(log: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (w, p) = l.split_once(' ')?;
            Some((w.to_string(), p.trim().parse().ok()?))
        })
        .collect()
}

fn states(port: u16) -> Vec<(String, String)> {
    let (_, list) = get_json(port, "/v1/services");
    list["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or_default().to_string(),
                        s["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks the rules once nothing is on its way (starting or stopping), or
/// after 8 s.
fn check(port: u16, s: &Schedule, logs: &[std::path::PathBuf]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut st = states(port);
    while st.iter().any(|(_, x)| x == "stopping" || x == "starting") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        st = states(port);
    }
    for (i, svc) in s.services.iter().enumerate() {
        let state = st
            .iter()
            .find(|(n, _)| *n == svc.name)
            .map(|(_, x)| x.as_str())
            .unwrap_or("?");
        if !matches!(state, "starting" | "ready" | "stopping") {
            // Give the reaper a moment for the last zombies; a service in
            // backoff may meanwhile start a new run (its processes are not
            // left behind): the state is read again with the processes.
            let running = |port| {
                states(port).iter().any(|(n, x)| {
                    *n == svc.name && matches!(x.as_str(), "starting" | "ready" | "stopping")
                })
            };
            let t = Instant::now();
            let mut left = live(&svc.marker);
            while !left.is_empty() && t.elapsed() < Duration::from_millis(500) {
                std::thread::sleep(Duration::from_millis(20));
                if running(port) {
                    break;
                }
                left = live(&svc.marker);
            }
            if !left.is_empty() && !running(port) {
                return Err(format!(
                    "{} is {state} but processes of its group are left: {left:?}",
                    svc.name
                ));
            }
        }
        grace_kept(svc, &logs[i])?;
        if svc.nobody {
            // The two lines come one after the other: let a run that just
            // started write its second.
            std::thread::sleep(Duration::from_millis(100));
            let ls = lines(&logs[i]);
            for (w, pid) in &ls {
                if w == "start" && !ls.iter().any(|(w2, p2)| w2 == "envok" && p2 == pid) {
                    return Err(format!(
                        "{}'s app {pid}, run as nobody, did not see HOME:USER:LOGNAME:SHELL = {NOBODY_ENV}",
                        svc.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Every app that was asked to stop and flushes within its grace flushed
/// (checked for apps no longer alive).
fn grace_kept(svc: &Svc, log: &Path) -> Result<(), String> {
    let Some(ms) = svc.flush_ms.filter(|ms| *ms > 0) else {
        return Ok(());
    };
    if ms >= svc.grace_s * 1000 {
        return Ok(());
    }
    let ls = lines(log);
    for (w, pid) in &ls {
        if w != "term" {
            continue;
        }
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && live(&svc.marker).contains(pid);
        if !alive && !ls.iter().any(|(w2, p2)| w2 == "flushed" && p2 == pid) {
            return Err(format!(
                "{}'s app {pid} got SIGTERM and was gone before it flushed ({ms} ms, grace {} s)",
                svc.name, svc.grace_s
            ));
        }
    }
    Ok(())
}

fn run(seed: u64) -> Result<(), String> {
    let s = schedule(seed);
    let port = free_port();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Apps that run as nobody write their log here too.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let logs: Vec<_> = (0..s.services.len())
        .map(|i| dir.path().join(format!("app{i}.log")))
        .collect();
    for log in &logs {
        std::fs::write(log, "").unwrap();
        std::fs::set_permissions(log, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let mut text = format!("[api]\nlisten = \"127.0.0.1:{port}\"\n");
    for (svc, log) in s.services.iter().zip(&logs) {
        text += &svc.toml(log);
    }
    let mut story = format!("seed {seed}, the registry:\n{text}\nsteps:\n");
    let mut w = Warden::start_with(
        &text,
        &[("XDG_RUNTIME_DIR", runtime.to_str().unwrap())],
        None,
    );
    wait_http(port, "/livez", 200);
    let fail = |story: &str, w: &mut Warden, why: String| -> String {
        format!("{why}\n\n{story}\nwarden's log:\n{}", w.dump())
    };
    // Every service becomes ready, those on NOTIFY_SOCKET as nobody too.
    let t = Instant::now();
    while states(port).iter().any(|(_, x)| x != "ready") && t.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = states(port);
    if let Some((n, x)) = st.iter().find(|(_, x)| x != "ready") {
        return Err(fail(&story, &mut w, format!("{n} never became ready: {x}")));
    }
    if let Err(why) = check(port, &s, &logs) {
        return Err(fail(&story, &mut w, why));
    }
    for step in &s.steps {
        let name = |i: &usize| s.services[*i].name.clone();
        match step {
            Step::Stop(i) | Step::Start(i) | Step::Restart(i) => {
                let verb = match step {
                    Step::Stop(_) => "stop",
                    Step::Start(_) => "start",
                    _ => "restart",
                };
                let (code, _, err) = client(port, &[verb, &name(i)]);
                let _ = writeln!(
                    story,
                    "  warden {verb} {} -> {code} {}",
                    name(i),
                    err.trim()
                );
            }
            Step::KillApp(i) => {
                // The newest app of the service: the last `start` logged.
                let pid = lines(&logs[*i])
                    .into_iter()
                    .rev()
                    .find(|(w, _)| w == "start")
                    .map(|(_, p)| p);
                match pid.filter(|p| live(&s.services[*i].marker).contains(p)) {
                    Some(p) => {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &p.to_string()])
                            .status();
                        let _ = writeln!(story, "  SIGKILL {}'s app {p}", name(i));
                    }
                    None => {
                        let _ = writeln!(story, "  SIGKILL {}'s app: none runs", name(i));
                    }
                }
            }
            Step::Wait(ms) => {
                std::thread::sleep(Duration::from_millis(*ms));
                let _ = writeln!(story, "  {ms} ms pass");
            }
            Step::Hup { api } => {
                let text = text.replacen("[api]\n", &format!("[api]\nenabled = {api}\n"), 1);
                support::daemon::write_registry(&w.dir, &text);
                w.signal("HUP");
                let _ = writeln!(story, "  SIGHUP with [api] enabled = {api}");
                std::thread::sleep(Duration::from_millis(300));
                // Refused, or not 200: either way the API is gone.
                let code = std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(|_| get_json(port, "/livez").0)
                    .unwrap_or(0);
                if code != 200 {
                    return Err(fail(
                        &story,
                        &mut w,
                        format!(
                            "the API answered {code} after a reload: it serves as it started until warden starts again"
                        ),
                    ));
                }
            }
        }
        if let Err(why) = check(port, &s, &logs) {
            return Err(fail(&story, &mut w, why));
        }
    }
    w.signal("TERM");
    if s.force {
        std::thread::sleep(Duration::from_millis(100));
        w.signal("TERM");
        let _ = writeln!(story, "  SIGTERM, SIGTERM");
    } else {
        let _ = writeln!(story, "  SIGTERM");
    }
    let code = w.exit_code();
    if code != 0 {
        return Err(fail(&story, &mut w, format!("exit code {code}, not 0")));
    }
    for (svc, log) in s.services.iter().zip(&logs) {
        let t = Instant::now();
        while !live(&svc.marker).is_empty() && t.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = live(&svc.marker);
        if !left.is_empty() {
            return Err(fail(
                &story,
                &mut w,
                format!("{}'s processes outlived warden: {left:?}", svc.name),
            ));
        }
        if !s.force
            && let Err(why) = grace_kept(svc, log)
        {
            return Err(fail(&story, &mut w, why));
        }
    }
    let sockets: Vec<String> = std::fs::read_dir(&runtime)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !sockets.is_empty() {
        return Err(fail(
            &story,
            &mut w,
            format!("notify sockets left after warden exited: {sockets:?}"),
        ));
    }
    Ok(())
}

#[test]
fn random_schedules_of_real_process_groups_keep_their_grace_and_leave_nothing() {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds: Vec<u64> = match var("SIM_PROCESS_SEED") {
        Some(s) => vec![s],
        None => {
            let from = var("SIM_PROCESS_FROM").unwrap_or(0);
            (from..from + var("SIM_PROCESS_SEEDS").unwrap_or(SEEDS)).collect()
        }
    };
    for seed in seeds {
        if let Err(why) = run(seed) {
            panic!("{why}\n\nreplay: SIM_PROCESS_SEED={seed} cargo test --test sim_process");
        }
    }
}
