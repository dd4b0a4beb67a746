//! `kind = "process"`: a supervised executable.
//!
//! Each run spawns the command in its own process group (through the one
//! [`crate::sys::reaper::Reaper`]), captures stdout and stderr line by line into log
//! events and the service's ring, watches readiness (`ready` probe, or at
//! once), and on cancellation sends `stop.signal` to the whole group, then
//! SIGKILL after `stop.timeout`. When the main process ends, whatever it
//! left in its group is killed, so restarts never accumulate strays.

pub mod settings;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::logs::LineSplitter;
use super::{
    BoxFuture, Context, Factory, Registration, Service, ServiceError, Stream, settings_of,
};
use crate::config::{ProbeCheck, Runs, ServiceSpec};
use crate::metrics::ProbeRole;
use crate::sys::GroupGuard;
use crate::sys::reaper::{ExitStatus, Reaper};
pub use settings::{EnvValue, ProcessSpec};

/// The registration of `kind = "process"`; paths in the registry are
/// relative to `base_dir` (the registry's directory).
pub fn registration(base_dir: PathBuf) -> Registration {
    Registration::new::<ProcessSpec>("process", Runs::Process, ProcessFactory { base_dir })
}

/// Builds process services.
struct ProcessFactory {
    base_dir: PathBuf,
}

impl Factory for ProcessFactory {
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        settings_of::<ProcessSpec>(spec)?;
        Ok(Box::new(ProcessService {
            spec: spec.clone(),
            base_dir: self.base_dir.clone(),
        }))
    }
}

struct ProcessService {
    /// Its settings are a `ProcessSpec` (checked by the factory).
    spec: ServiceSpec,
    base_dir: PathBuf,
}

/// The `pid` detail of a running process, taken back when the run ends
/// however it ends (an aborted run included).
struct PidDetail(super::Details);

impl PidDetail {
    fn new(details: super::Details, pid: i32) -> PidDetail {
        details.set("pid", pid);
        PidDetail(details)
    }
}

impl Drop for PidDetail {
    fn drop(&mut self) {
        self.0.remove("pid");
    }
}

impl ProcessService {
    fn process(&self) -> &ProcessSpec {
        match self.spec.kind.settings::<ProcessSpec>() {
            Some(p) => p,
            None => unreachable!("the factory builds process services only"),
        }
    }

    /// The child's environment, for the service and its stop command
    /// alike: what it inherits of warden's (`inherit_env`, else all but
    /// warden's own and secret variables), its user's `HOME`, `USER`,
    /// `LOGNAME` and `SHELL` when `user` is set, its env files, then `env`.
    fn environment(&self, cmd: &mut std::process::Command) -> Result<(), ServiceError> {
        let p = self.process();
        crate::sys::env::scrub(cmd, p.inherit_env.as_deref());
        let user = match &p.user {
            Some(u) => Some(lookup_user(u)?),
            None => None,
        };
        // Who it runs as, from the passwd entry (as systemd's User= and
        // runuser do): not warden's HOME=/root. Its env files and `env`
        // come after and win.
        if let Some(u) = &user {
            cmd.env("HOME", &u.dir)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name)
                .env("SHELL", &u.shell);
        }
        for file in &p.env_files {
            let path = self.base_dir.join(file);
            let text = read_env_file(&path, user.as_ref())?;
            let (vars, errors) = crate::config::envfile::parse(&text);
            if let Some(e) = errors.first() {
                return Err(ServiceError(format!(
                    "{}:{}: {}",
                    path.display(),
                    e.line,
                    e.message
                )));
            }
            cmd.envs(vars);
        }
        cmd.envs(p.env.iter().map(|(k, v)| (k, &v.0)));
        Ok(())
    }

    fn command(
        &self,
        extra_env: &HashMap<String, String>,
    ) -> Result<std::process::Command, ServiceError> {
        let p = self.process();
        let argv: Vec<&String> = p.command.0.iter().chain(p.args.iter()).collect();
        let mut cmd = std::process::Command::new(argv[0]);
        cmd.args(&argv[1..]);
        let cwd = match &p.cwd {
            Some(c) => self.base_dir.join(c),
            None => self.base_dir.clone(),
        };
        cmd.current_dir(&cwd);
        self.environment(&mut cmd)?;
        cmd.envs(extra_env);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: signals reach every process it starts.
        cmd.process_group(0);
        if let Some(user) = &p.user {
            apply_user(&mut cmd, user)?;
        }
        Ok(cmd)
    }
}

/// Reads a service's env file with its user's rights, when it has one:
/// warden (root) could read any file, and the user may own the folder, so
/// a symbolic link (which the user could point at another service's
/// secrets) is refused, and so is a file the user itself may not read.
fn read_env_file(path: &Path, user: Option<&nix::unistd::User>) -> Result<String, ServiceError> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let failed = |why: String| ServiceError(format!("env file {}: {why}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if user.is_some() {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            failed("is a symbolic link; a service with user = gets a plain file only".into())
        } else {
            failed(format!("cannot read it: {e}"))
        }
    })?;
    if let Some(u) = user {
        let meta = file
            .metadata()
            .map_err(|e| failed(format!("cannot read it: {e}")))?;
        let groups = nix::unistd::getgrouplist(
            &std::ffi::CString::new(u.name.as_str()).unwrap_or_default(),
            u.gid,
        )
        .unwrap_or_else(|_| vec![u.gid]);
        let mode = meta.mode();
        let readable = if meta.uid() == u.uid.as_raw() {
            mode & 0o400 != 0
        } else if groups.iter().any(|g| g.as_raw() == meta.gid()) {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        };
        if !readable || !meta.is_file() {
            return Err(failed(format!(
                "user {} may not read it (owner uid {}, mode {:o})",
                u.name,
                meta.uid(),
                mode & 0o7777
            )));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| failed(format!("cannot read it: {e}")))?;
    Ok(text)
}

/// The account `user` (a name or a uid) names; warden must be root to
/// run a child as another user.
fn lookup_user(user: &str) -> Result<nix::unistd::User, ServiceError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ServiceError(format!(
            "user = {user:?} needs warden to run as root"
        )));
    }
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    found
        .map_err(|e| ServiceError(format!("cannot look up user {user:?}: {e}")))?
        .ok_or_else(|| ServiceError(format!("no such user: {user:?}")))
}

/// Runs the child as `user` (a name or a uid) when warden is root.
fn apply_user(cmd: &mut std::process::Command, user: &str) -> Result<(), ServiceError> {
    let u = lookup_user(user)?;
    // std drops the supplementary groups itself (setgroups(0)) before
    // setuid when it runs as root.
    cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    Ok(())
}

fn to_nix(sig: i32) -> NixSignal {
    NixSignal::try_from(sig).unwrap_or(NixSignal::SIGTERM)
}

/// Reads lines from a child's pipe into log events, the ring, and (for a
/// `log` probe) a channel.
fn pump(
    ctx: &Context,
    stream: Stream,
    pipe: impl std::os::fd::AsFd + Into<std::os::fd::OwnedFd>,
    lines: Option<mpsc::UnboundedSender<String>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe.into())?;
    let name = ctx.name().to_string();
    let logs = ctx.logs().clone();
    Ok(tokio::spawn(async move {
        // A small buffer: 100 services are 200 pipes; long lines still work,
        // they just take more reads (and are cut at MAX_LINE bytes).
        let mut reader = BufReader::with_capacity(256, rx);
        let mut splitter = LineSplitter::default();
        let emit = |(line, cut): (String, bool)| {
            if cut {
                crate::metrics::output_cut(&name);
            }
            tracing::info!(target: "warden::output", service = %name, stream = stream.as_str(), "{line}");
            if let Some(tx) = &lines {
                let _ = tx.send(line.clone());
            }
            logs.push(stream, line);
        };
        loop {
            let n = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => {
                    for l in splitter.feed(chunk) {
                        emit(l);
                    }
                    chunk.len()
                }
            };
            reader.consume(n);
        }
        if let Some(l) = splitter.finish() {
            emit(l);
        }
    }))
}

impl Service for ProcessService {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let reaper = Reaper::get()
                .map_err(|e| ServiceError(format!("cannot watch child processes: {e}")))?;
            let ready = self.spec.common.ready.clone();
            let mut extra_env = HashMap::new();
            let notify = match ready.as_ref().map(|r| &r.check) {
                Some(ProbeCheck::Notify) => {
                    let owner = match &self.process().user {
                        Some(user) => Some(lookup_user(user)?),
                        None => None,
                    };
                    let (socket, path) = notify_socket(ctx.name(), owner.as_ref())?;
                    extra_env.insert("NOTIFY_SOCKET".to_string(), path.display().to_string());
                    Some((socket, path))
                }
                _ => None,
            };
            // Removed however the run ends: returned, failed to spawn, or
            // aborted by a forced stop (a second signal, shutdown_timeout).
            let _notify_file = notify.as_ref().map(|(_, p)| RemoveOnDrop(p.clone()));
            let program = self.process().command.0[0].clone();
            // The command goes once spawned: nothing of it stays resident.
            let (mut child, status) = reaper
                .spawn(&mut self.command(&extra_env)?)
                .map_err(|e| ServiceError(format!("cannot start {program}: {e}")))?;
            let pid = child.id() as i32;
            let guard = GroupGuard::new(pid);
            tracing::info!(service = %ctx.name(), pid, "spawned {program}");
            let _pid = PidDetail::new(ctx.details().clone(), pid);

            let wants_lines = matches!(ready.as_ref().map(|r| &r.check), Some(ProbeCheck::Log(_)));
            let (line_tx, line_rx) = mpsc::unbounded_channel();
            let mut pumps = Vec::new();
            if let Some(out) = child.stdout.take() {
                pumps.push(pump(
                    &ctx,
                    Stream::Stdout,
                    out,
                    wants_lines.then(|| line_tx.clone()),
                )?);
            }
            if let Some(err) = child.stderr.take() {
                pumps.push(pump(
                    &ctx,
                    Stream::Stderr,
                    err,
                    wants_lines.then(|| line_tx.clone()),
                )?);
            }
            drop(line_tx);

            // Without a probe the run is ready now; with one, the watch is
            // boxed so that its (large) future is held only by services
            // that have a probe.
            let mut readiness_done = ready.is_none();
            let mut readiness: BoxFuture<()> = match ready {
                None => {
                    ctx.ready();
                    Box::pin(std::future::pending())
                }
                Some(probe) => Box::pin(watch_readiness(
                    ctx.clone(),
                    probe,
                    line_rx,
                    notify.map(|(s, _)| s),
                )),
            };
            tokio::pin!(status);
            let outcome = loop {
                tokio::select! {
                    s = &mut status => break Ok(s.unwrap_or(ExitStatus::Code(-1))),
                    _ = &mut readiness, if !readiness_done => readiness_done = true,
                    _ = ctx.cancelled() => break Err(()),
                }
            };
            let result = match outcome {
                Ok(s) => {
                    ctx.details().set("last_exit", s.to_string());
                    ctx.set_exit_status(s.as_code());
                    guard.disarm_and_kill_rest();
                    let success = match s {
                        ExitStatus::Code(c) => self.process().success_exit_codes.contains(c),
                        ExitStatus::Signal(_) => false,
                    };
                    if success {
                        Ok(())
                    } else {
                        Err(ServiceError(s.to_string()))
                    }
                }
                Err(()) => {
                    let stop = &self.spec.common.stop;
                    let mut exited = None;
                    // The grace in force: the whole group has until then.
                    let mut grace_ends = tokio::time::Instant::now() + stop.timeout;
                    if let Some(command) = &stop.command
                        && self.run_stop_command(&ctx, &reaper, command, &extra_env)
                    {
                        // The graceful way first; the signal only if the
                        // process is still there a grace period later.
                        exited = tokio::time::timeout(stop.timeout, &mut status).await.ok();
                    }
                    // A run stopped on request leaves no exit status: the
                    // stop, not the process, decided how it ended.
                    let _ = match exited {
                        Some(s) => s,
                        None => {
                            let _ = killpg(Pid::from_raw(pid), to_nix(stop.signal.number));
                            grace_ends = tokio::time::Instant::now() + stop.timeout;
                            match tokio::time::timeout(stop.timeout, &mut status).await {
                                Ok(s) => s,
                                Err(_) => {
                                    tracing::warn!(service = %ctx.name(), "did not stop within {}; sending SIGKILL", humantime::format_duration(stop.timeout));
                                    let _ = killpg(Pid::from_raw(pid), NixSignal::SIGKILL);
                                    status.await
                                }
                            }
                        }
                    };
                    // The leader is gone; what it started in its group (a
                    // shell's app, run without exec) keeps what is left of
                    // the grace to finish, then SIGKILL.
                    if !crate::sys::group_gone_by(pid, grace_ends).await {
                        tracing::warn!(service = %ctx.name(), "its process group outlived the stop's grace; sending SIGKILL");
                    }
                    guard.disarm_and_kill_rest();
                    Ok(())
                }
            };
            // The pipes close once every process holding them is gone;
            // give the readers a moment to drain the last lines.
            for p in pumps {
                let _ = tokio::time::timeout(Duration::from_millis(200), p).await;
            }
            result
        })
    }
}

impl ProcessService {
    /// Starts `stop.command` beside the running process (same working
    /// directory, environment and user), its output going to the service's
    /// log. It runs in a process group of its own, killed if it has not
    /// ended within the whole stop's time (twice `stop.timeout`). Answers
    /// whether it started (if not, the signal need not wait for it).
    fn run_stop_command(
        &self,
        ctx: &Context,
        reaper: &Reaper,
        command: &crate::config::types::Command,
        extra_env: &HashMap<String, String>,
    ) -> bool {
        let cmd = match self.command(extra_env) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(service = %ctx.name(), error = %e, "cannot run the stop command");
                return false;
            }
        };
        // The service's own settings, another program.
        let mut stop = std::process::Command::new(&command.0[0]);
        stop.args(&command.0[1..]);
        if let Some(dir) = cmd.get_current_dir() {
            stop.current_dir(dir);
        }
        if let Err(e) = self.environment(&mut stop) {
            tracing::warn!(service = %ctx.name(), error = %e, "cannot run the stop command");
            return false;
        }
        stop.envs(extra_env);
        stop.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(user) = &self.process().user
            && let Err(e) = apply_user(&mut stop, user)
        {
            tracing::warn!(service = %ctx.name(), error = %e, "cannot run the stop command");
            return false;
        }
        drop(cmd);
        // The program only: arguments may hold a secret.
        tracing::info!(service = %ctx.name(), "running the stop command {}", command.0[0]);
        match reaper.spawn(&mut stop) {
            Ok((mut child, status)) => {
                let guard = GroupGuard::new(child.id() as i32);
                let out = child
                    .stdout
                    .take()
                    .and_then(|o| pump(ctx, Stream::Stdout, o, None).ok());
                let err = child
                    .stderr
                    .take()
                    .and_then(|e| pump(ctx, Stream::Stderr, e, None).ok());
                let name = ctx.name().to_string();
                let limit = self.spec.common.stop.timeout.saturating_mul(2);
                tokio::spawn(async move {
                    let _guard = guard;
                    // The guard kills whatever is left of it afterwards.
                    match tokio::time::timeout(limit, status).await {
                        Ok(Ok(s)) if !s.success() => {
                            tracing::warn!(service = %name, "the stop command {s}")
                        }
                        Ok(_) => {}
                        Err(_) => {
                            tracing::warn!(service = %name, "the stop command did not end; killing it")
                        }
                    }
                    for p in [out, err].into_iter().flatten() {
                        let _ = tokio::time::timeout(Duration::from_millis(200), p).await;
                    }
                });
                true
            }
            Err(e) => {
                tracing::warn!(service = %ctx.name(), error = %e, "cannot run the stop command {}", command.0[0]);
                false
            }
        }
    }
}

/// A file removed when this goes (the notify socket's).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The datagram socket a `notify` child reports to (sd_notify protocol).
/// A child that runs as another user (`owner`) gets the socket as its own,
/// mode 0600: it may write to it, and no other user may (a `READY=1` from
/// anyone else would be a lie).
fn notify_socket(
    name: &str,
    owner: Option<&nix::unistd::User>,
) -> Result<(tokio::net::UnixDatagram, PathBuf), ServiceError> {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("warden-{}-{name}.notify", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let failed = |e: &dyn std::fmt::Display| {
        ServiceError(format!(
            "cannot create NOTIFY_SOCKET {}: {e}",
            path.display()
        ))
    };
    let socket = tokio::net::UnixDatagram::bind(&path).map_err(|e| failed(&e))?;
    if let Some(u) = owner {
        let handed =
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    nix::unistd::chown(&path, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())
                });
        if let Err(e) = handed {
            let _ = std::fs::remove_file(&path);
            return Err(failed(&format!("cannot hand it to user {}: {e}", u.name)));
        }
    }
    Ok((socket, path))
}

/// Says `ready` when the service's readiness holds: at once without a
/// probe; on a matching line for `log`; on `READY=1` for `notify`; when an
/// attempt passes for the other checks (polled every `interval`).
async fn watch_readiness(
    ctx: Context,
    probe: crate::config::Probe<crate::config::ReadyTiming>,
    mut lines: mpsc::UnboundedReceiver<String>,
    notify: Option<tokio::net::UnixDatagram>,
) {
    match &probe.check {
        ProbeCheck::Log(pattern) => {
            let Ok(re) = regex::Regex::new(&pattern.0) else {
                return;
            };
            while let Some(line) = lines.recv().await {
                if re.is_match(&line) {
                    ctx.ready();
                    break;
                }
            }
            // Keep draining so the pumps never block on a full channel.
            while lines.recv().await.is_some() {}
        }
        ProbeCheck::Notify => {
            let Some(socket) = notify else { return };
            let mut buf = vec![0u8; 4096];
            // Read for as long as the process lives: later messages (STATUS=,
            // systemd-notify's BARRIER=1, whose passed descriptor is closed
            // by reading it) must not pile up unread.
            while let Ok(n) = socket.recv(&mut buf).await {
                let msg = String::from_utf8_lossy(&buf[..n]);
                for line in msg.lines().map(str::trim) {
                    if line == "READY=1" {
                        ctx.ready();
                    } else if let Some(status) = line.strip_prefix("STATUS=") {
                        ctx.details().set("status", status.to_string());
                    }
                }
            }
        }
        check => loop {
            if crate::probe::measured(ctx.name(), ProbeRole::Ready, check, probe.timing.timeout)
                .await
                .is_ok()
            {
                ctx.ready();
                return;
            }
            tokio::time::sleep(probe.timing.interval).await;
        },
    }
}

/// The registry directory of a registry file (where relative paths start).
pub fn base_dir_of(registry_file: &Path) -> PathBuf {
    match registry_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
