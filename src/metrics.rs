//! Recording warden's Prometheus metrics: a low-level module any part may
//! call (it imports nothing of warden's).
//!
//! Every family is declared once as a [`Family`] (name, help, shape):
//! [`CORE`] holds the supervisor's, and each kind lists its own in its
//! registration. [`install`] is handed all of them, sets the recorder and
//! describes each family, so `/metrics` has a `HELP` line for every family
//! the build has. Recording goes through the `metrics` facade, a no-op
//! until [`install`] sets the recorder, so library users and in-process
//! tests pay nothing. Rendering the page is the API's business.
//!
//! Label values are bounded: service names come from the registry, and
//! every other label takes one of a closed set of values (never an error
//! string). The counters and histograms of a service that a reload removed
//! stay until warden restarts (Prometheus counters are not taken back).
//! `probe_failures_total{probe="ready"}` counts the attempts that failed
//! before a service came up too (a database still starting): alert on
//! `probe="health"`.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const SERVICE_UP: &str = "warden_service_up";
pub const SERVICE_STATE: &str = "warden_service_state";
pub const SERVICE_INFO: &str = "warden_service_info";
pub const RESTARTS: &str = "warden_service_restarts_total";
pub const START_SECONDS: &str = "warden_service_start_seconds";
pub const PROBE_SECONDS: &str = "warden_probe_duration_seconds";
pub const PROBE_FAILURES: &str = "warden_probe_failures_total";
pub const RELOADS: &str = "warden_config_reloads_total";
pub const BUILD_INFO: &str = "warden_build_info";
pub const OUTPUT_CUT: &str = "warden_output_lines_cut_total";

/// What a family is, and for a histogram its buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
}

/// One metric family: its full name (`warden_...`), its help text and its
/// shape. Families rendered from live state rather than recorded (the
/// service states) are listed too, so the table is the whole inventory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub shape: Shape,
}

/// Buckets of the time from start to ready: processes are ready in
/// milliseconds, databases in seconds.
pub const START_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets of one short network call (a probe attempt, one request).
pub const CALL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of rows per batch.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// The supervisor's own families.
pub const CORE: &[Family] = &[
    Family {
        name: SERVICE_UP,
        help: "1 when the service is ready (or a oneshot completed), else 0.",
        shape: Shape::Gauge,
    },
    Family {
        name: SERVICE_STATE,
        help: "1 for the state the service is in, 0 for the others.",
        shape: Shape::Gauge,
    },
    Family {
        name: SERVICE_INFO,
        help: "Always 1; a service's kind and whether it is critical (for alerts on critical services).",
        shape: Shape::Gauge,
    },
    Family {
        name: RESTARTS,
        help: "Times a service was started again, by reason (failure, exited, health, start_timeout, operator, dependency, reload).",
        shape: Shape::Counter,
    },
    Family {
        name: START_SECONDS,
        help: "Seconds from a service's start to its readiness.",
        shape: Shape::Histogram(START_BUCKETS),
    },
    Family {
        name: PROBE_SECONDS,
        help: "Seconds one probe attempt took.",
        shape: Shape::Histogram(CALL_BUCKETS),
    },
    Family {
        name: PROBE_FAILURES,
        help: "Probe attempts that failed.",
        shape: Shape::Counter,
    },
    Family {
        name: RELOADS,
        help: "Registry reloads, by result (ok, invalid: the file did not check, refused: warden could not apply it).",
        shape: Shape::Counter,
    },
    Family {
        name: OUTPUT_CUT,
        help: "Output lines of a service's processes cut at 16 KiB (the rest of each is counted in its marker, not kept).",
        shape: Shape::Counter,
    },
    Family {
        name: BUILD_INFO,
        help: "Always 1; the version of this warden.",
        shape: Shape::Gauge,
    },
];

/// Which probe of a service ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRole {
    /// Readiness (`ready`): before the service counts as ready.
    Ready,
    /// Liveness (`health`): while it runs.
    Health,
}

impl ProbeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeRole::Ready => "ready",
            ProbeRole::Health => "health",
        }
    }
}

/// The families recorded through the facade: the ones whose series the
/// recorder holds (the state families are rendered, not recorded).
fn recorded(f: &Family) -> bool {
    ![SERVICE_UP, SERVICE_STATE, SERVICE_INFO].contains(&f.name)
}

/// Sets the process-wide recorder for `families` (the core ones and each
/// registered kind's) and returns the handle `/metrics` renders from;
/// `None` when a recorder was set already (the first one stays).
pub fn install(families: &[Family]) -> Option<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for f in families.iter().filter(|f| recorded(f)) {
        if let Shape::Histogram(buckets) = f.shape {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(f.name.into()), buckets)
                .ok()?;
        }
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    for f in families.iter().filter(|f| recorded(f)) {
        match f.shape {
            Shape::Counter => metrics::describe_counter!(f.name, f.help),
            Shape::Gauge => metrics::describe_gauge!(f.name, f.help),
            Shape::Histogram(_) => metrics::describe_histogram!(f.name, f.help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for result in ["ok", "invalid", "refused"] {
        metrics::counter!(RELOADS, "result" => result).absolute(0);
    }
    // Publishes the descriptions (HELP lines) now, not at the first upkeep.
    handle.run_upkeep();
    Some(handle)
}

/// Counts a restart; `reason` is one of a closed set of words.
pub fn restart(service: &str, reason: impl Into<&'static str>) {
    metrics::counter!(RESTARTS, "service" => service.to_string(), "reason" => reason.into())
        .increment(1);
}

/// Records how long a service took to become ready.
pub fn started(service: &str, took: Duration) {
    metrics::histogram!(START_SECONDS, "service" => service.to_string()).record(took.as_secs_f64());
}

/// Records one probe attempt.
pub fn probed(service: &str, role: ProbeRole, took: Duration, ok: bool) {
    let service = service.to_string();
    if !ok {
        metrics::counter!(PROBE_FAILURES, "service" => service.clone(), "probe" => role.as_str())
            .increment(1);
    }
    metrics::histogram!(PROBE_SECONDS, "service" => service, "probe" => role.as_str())
        .record(took.as_secs_f64());
}

/// Counts an output line cut at its length limit.
pub fn output_cut(service: &str) {
    metrics::counter!(OUTPUT_CUT, "service" => service.to_string()).increment(1);
}

/// Counts a reload.
pub fn reloaded(result: &'static str) {
    metrics::counter!(RELOADS, "result" => result).increment(1);
}

/// Drains the recorder's histogram samples into their buckets now and
/// then, so that memory stays flat when nobody scrapes (a scrape drains
/// them too). Every five minutes: a busy registry buffers a few thousand
/// samples at most, and an idle warden wakes for it twelve times an hour.
pub async fn upkeep(handle: PrometheusHandle) {
    let period = Duration::from_secs(300);
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_family_is_named_warden_and_described() {
        for f in CORE {
            assert!(f.name.starts_with("warden_"), "{}", f.name);
            assert!(!f.help.is_empty(), "{}", f.name);
        }
        // The state families, rendered at scrape time, come first.
        assert!(CORE[..3].iter().all(|f| !recorded(f)));
        assert!(CORE[3..].iter().all(recorded));
    }
}
