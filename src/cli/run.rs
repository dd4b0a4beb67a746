//! `warden run`: load, check, and supervise until stopped.

use std::io::IsTerminal;
use std::sync::Arc;

use super::{LogFormat, RunArgs, exit};
use crate::config::{LoadOptions, RealSources};
use crate::graph::load_and_check;
use crate::services::Kinds;
use crate::supervisor::Supervisor;

/// Sets up `tracing`: `WARDEN_LOG` filters (default `info`); text on a
/// terminal, JSON otherwise, unless `--log-format` says.
pub fn init_logging(format: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    // A closed stderr must not take warden down: tracing-subscriber would
    // otherwise report the failed write with eprintln!, which panics.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    let _ = if json {
        builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            // The `service` span (around every service's run) shows as
            // "span": {"name": "service", "service": NAME}.
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_writer(|| EscapeCr(std::io::stderr()))
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

/// stderr for the text log. The formatter escapes a child's escape
/// sequences but not a carriage return, which would send the terminal's
/// cursor back and let a child's output hide what warden wrote before it
/// on the line: it is shown as `\r`. (JSON escapes it already.)
struct EscapeCr<W>(W);

impl<W: std::io::Write> std::io::Write for EscapeCr<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.contains(&b'\r') {
            return self.0.write(buf);
        }
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in buf {
            if b == b'\r' {
                out.extend_from_slice(b"\\r");
            } else {
                out.push(b);
            }
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub fn run(args: &RunArgs, mut kinds: Kinds) -> u8 {
    // Before anything is spawned: no inherited descriptor reaches a child.
    let inherited = crate::sys::fds::close_inherited_on_exec();
    init_logging(args.log_format);
    if inherited > 0 {
        tracing::debug!(
            count = inherited,
            "inherited descriptors marked close-on-exec"
        );
    }
    let table = Arc::new(kinds.table());
    let opts = LoadOptions {
        path: args.registry.config.clone(),
        profile: args.registry.profile.clone(),
        kinds: table.clone(),
    };
    let checked = load_and_check(&opts, &RealSources);
    let (Some(registry), Some(graph)) = (checked.registry(), checked.graph.as_ref()) else {
        for d in checked.loaded.diagnostics.iter() {
            errln!("{}", d.render(&checked.loaded.sources));
        }
        errln!("error: the registry is invalid; nothing was started");
        return exit::INVALID;
    };
    for d in checked.loaded.diagnostics.warnings() {
        errln!("{}", d.render(&checked.loaded.sources));
    }
    let graph = if args.registry.only.is_empty() {
        graph.clone()
    } else {
        match graph.select_only(registry, &args.registry.only) {
            Ok(g) => g,
            Err(e) => {
                errln!("error: {e}");
                return exit::USAGE;
            }
        }
    };
    // Keep the typed registry only: the parse trees and source texts of the
    // check go now, before the services start (a supervisor stays
    // resident; see drop_cold_code).
    let registry = registry.clone();
    drop(checked);
    let only = args.registry.only.clone();
    let only_list = only.clone();
    let reload_opts = opts.clone();
    // The shutdown_timeout of the registry last loaded: what is left of it
    // once the services have stopped is the grace of the processes that
    // left their groups (see stop_escaped below).
    let shutdown_timeout = Arc::new(std::sync::Mutex::new(registry.warden.shutdown_timeout));
    let reloaded_timeout = shutdown_timeout.clone();
    // `[api] enabled` takes effect when warden starts again: a reload keeps
    // the API as warden started it.
    let api_at_start = registry.api.enabled;
    let reloader: crate::api::Reloader = std::sync::Arc::new(move || {
        let checked = load_and_check(&reload_opts, &RealSources);
        match (checked.registry(), checked.graph.as_ref()) {
            (Some(r), Some(g)) => {
                let kept;
                let (r, g) = if r.api.enabled == api_at_start {
                    (r, g.clone())
                } else {
                    kept = keep_api_as_started(r.clone(), api_at_start)?;
                    let g = crate::graph::build(&kept).map_err(|d| {
                        d.errors()
                            .map(|e| e.render(&checked.loaded.sources))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })?;
                    (&kept, g)
                };
                let g = if only.is_empty() {
                    g
                } else {
                    g.select_only(r, &only).map_err(|e| e.to_string())?
                };
                *reloaded_timeout.lock().unwrap_or_else(|e| e.into_inner()) =
                    r.warden.shutdown_timeout;
                Ok((r.clone(), g))
            }
            _ => Err(checked
                .loaded
                .diagnostics
                .errors()
                .map(|d| d.render(&checked.loaded.sources))
                .collect::<Vec<_>>()
                .join("\n")),
        }
    });
    let metrics = crate::metrics::install(&kinds.metric_families());
    let api = crate::api::ApiState {
        handle: Default::default(),
        spec: std::sync::Arc::new(std::sync::RwLock::new(registry.api.clone())),
        graph: std::sync::Arc::new(std::sync::Mutex::new(graph.clone())),
        reloader: Some(reloader),
        metrics: metrics.clone(),
        health_cache: Default::default(),
        reloading: Default::default(),
        kinds: table,
        streams: std::sync::Arc::new(tokio::sync::Semaphore::new(
            registry.api.max_streams.0 as usize,
        )),
    };
    kinds.register(crate::api::registration(api.clone()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return exit::CRITICAL_FAILED;
        }
    };
    let code = runtime.block_on(async move {
        become_reaper();
        // Install the reaper before the first child exists.
        if let Err(e) = crate::sys::reaper::Reaper::get() {
            tracing::error!(error = %e, "cannot watch child processes");
            return exit::CRITICAL_FAILED;
        }
        let supervisor = Supervisor::new(&registry, graph, kinds)
            .with_only(only_list)
            .exiting_with_loop();
        let handle = supervisor.handle();
        let _ = api.handle.set(handle.clone());
        // Loading the registry and starting every service leave freed heap
        // behind that glibc keeps, and start-up code that never runs again;
        // give both back once things have settled: a supervisor stays
        // resident all day.
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            // SAFETY: malloc_trim only walks glibc's own free lists.
            unsafe {
                libc::malloc_trim(0);
            }
            drop_cold_code();
        });
        tokio::spawn(crate::supervisor::systemd::notifier(handle.clone()));
        if let Some(m) = metrics {
            tokio::spawn(crate::metrics::upkeep(m));
        }
        // When the shutdown begins (a signal, the API, a critical failure).
        let mut stopping = handle.stopping();
        tokio::spawn(forward_signals(handle, api));
        tracing::info!(
            file = %registry.file.display(),
            profile = registry.profile.as_deref().unwrap_or(""),
            services = registry.services.len(),
            "warden starting"
        );
        // The supervisor holds each service's spec: the registry can go.
        drop(registry);
        let shutdown_began = tokio::spawn(async move {
            let _ = stopping.wait_for(|s| *s).await;
            std::time::Instant::now()
        });
        let code = supervisor.run(std::future::pending()).await;
        let began = if shutdown_began.is_finished() {
            shutdown_began.await.ok()
        } else {
            // It ended by itself (nothing runs or could run).
            shutdown_began.abort();
            None
        };
        let Ok(reaper) = crate::sys::reaper::Reaper::get() else {
            return code;
        };
        if std::process::id() != 1 {
            // Processes that left their service's group came to warden (the
            // child subreaper) when their parent ended: stop them within
            // what is left of shutdown_timeout, so that none outlives warden.
            let timeout = *shutdown_timeout.lock().unwrap_or_else(|e| e.into_inner());
            let grace = timeout.saturating_sub(began.map(|b| b.elapsed()).unwrap_or_default());
            reaper.stop_escaped(grace);
        }
        // As PID 1, what is left ends with the PID namespace when warden
        // exits.
        if !reaper.drain(std::time::Duration::from_secs(1)) {
            tracing::warn!("some processes outlived their services (not in their groups)");
        }
        code
    });
    // Do not wait for stray tasks (probes, timers): everything is stopped.
    runtime.shutdown_background();
    code
}

/// Becomes the child subreaper (unless already PID 1), so that orphans of
/// managed services are re-parented to warden and reaped here.
fn become_reaper() {
    if std::process::id() == 1 {
        return;
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become child subreaper; orphans will go to PID 1");
    }
}

/// SIGINT and SIGTERM ask for an ordered shutdown; a second one forces it.
/// SIGHUP reloads the registry: an invalid one is reported and the running
/// services are left as they are.
async fn forward_signals(handle: crate::supervisor::Handle, api: crate::api::ApiState) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => { tracing::info!("SIGINT"); handle.shutdown(); }
            _ = term.recv() => { tracing::info!("SIGTERM"); handle.shutdown(); }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the registry");
                // On its own task: a signal that follows (SIGTERM) is
                // taken at once, not after the reload.
                let api = api.clone();
                tokio::spawn(async move {
                    match api.reload().await {
                        Ok(s) => tracing::info!(added = ?s.added, removed = ?s.removed, changed = ?s.changed, "reload applied"),
                        Err(crate::api::ReloadError::Invalid(errors)) => {
                            tracing::error!(errors = %errors, "reload rejected: the registry is invalid; keeping the running one");
                        }
                        Err(crate::api::ReloadError::Unavailable(e)) => tracing::error!(error = %e, "reload failed"),
                    }
                });
            }
        }
    }
}

/// The reloaded registry `r` with the API service as warden started
/// (`running`): added back when `r` turns it off, taken out when `r`
/// turns it on. (`r.api` still says what `r` asks, so that the reload
/// reports `api.enabled` as waiting for a restart.) A registry that
/// turns the API off and gives its name to a service of its own cannot be
/// applied until warden starts again.
fn keep_api_as_started(
    mut r: crate::config::Registry,
    running: bool,
) -> Result<crate::config::Registry, String> {
    if running {
        if r.services.contains_key("api") {
            return Err(
                "services.api: the API is still running (api.enabled takes effect when warden starts again), so the name api is not free yet; restart warden to apply this registry".to_string(),
            );
        }
        r.services
            .shift_insert(0, "api".to_string(), crate::config::api_service());
    } else {
        r.services.shift_remove("api");
    }
    Ok(r)
}

/// Unmaps the code and constants start-up used once it is over, so that
/// only what the running supervisor uses comes back (on its next use).
///
/// Start-up (argument parsing, the TOML parser, validation) touches code
/// that never runs again, and the kernel maps code 64 KiB around every
/// page touched ("fault-around"); for a process that stays resident all
/// day that is most of the binary and of libc. Only mappings the process
/// never writes are dropped: every executable one (`r-xp`: warden's and
/// the shared libraries') and warden's read-only one at the start of the
/// file (offset 0: headers, symbols, `.rodata`). Read-only mappings
/// elsewhere may be RELRO, written by the loader's relocations: they are
/// left alone, as is everything writable. (Pages used again still come
/// back 64 KiB at a time: `MADV_RANDOM` does not turn fault-around off on
/// Linux 6.x, measured.)
fn drop_cold_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, offset, _dev, _inode, path] = fields[..] else {
            continue;
        };
        let ours = std::path::Path::new(path) == exe;
        let never_written = (perms == "r-xp" && path.starts_with('/'))
            || (ours && perms == "r--p" && offset.trim_start_matches('0').is_empty());
        if !never_written {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: a private, read-only file mapping of our own binary that
        // nothing writes: MADV_DONTNEED drops its pages, which fault back in
        // from the file unchanged when used again.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn the_text_log_shows_a_carriage_return_as_backslash_r() {
        let mut w = EscapeCr(Vec::new());
        assert_eq!(w.write(b"a\rb\n").unwrap(), 4, "every byte taken");
        w.write_all(b"plain\n").unwrap();
        assert_eq!(w.0, b"a\\rb\nplain\n");
    }
}
