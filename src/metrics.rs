//! warden's Prometheus metrics (DESIGN.md §4): the families, their help
//! text, and the `/metrics` page.
//!
//! Counters and histograms go through the `metrics` facade (a no-op until
//! [`install`] sets the recorder, so library users and in-process tests pay
//! nothing). The state families — `warden_service_up` and
//! `warden_service_state` — are rendered from the supervisor's live status
//! at scrape time instead of being stored: a service removed by a reload
//! then leaves no stale series behind, and 100 services × 11 states cost no
//! memory between scrapes.
//!
//! Label values are bounded: service names come from the registry, and
//! every other label takes one of a closed set of values (never an error
//! string). The counters and histograms of a service that a reload removed
//! stay until warden restarts (Prometheus counters are not taken back).
//! `probe_failures_total{probe="ready"}` counts the attempts that failed
//! before a service came up too (a database still starting): alert on
//! `probe="health"`.

use std::fmt::Write as _;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::supervisor::ServiceStatus;
use crate::supervisor::events::RestartReason;
use crate::supervisor::state::State;

pub const SERVICE_UP: &str = "warden_service_up";
pub const SERVICE_STATE: &str = "warden_service_state";
pub const RESTARTS: &str = "warden_service_restarts_total";
pub const START_SECONDS: &str = "warden_service_start_seconds";
pub const PROBE_SECONDS: &str = "warden_probe_duration_seconds";
pub const PROBE_FAILURES: &str = "warden_probe_failures_total";
pub const RELOADS: &str = "warden_config_reloads_total";
pub const BUILD_INFO: &str = "warden_build_info";
pub const OUTBOX_PUBLISHED: &str = "warden_outbox_published_total";
pub const OUTBOX_BACKLOG: &str = "warden_outbox_backlog";
pub const OUTBOX_LAG: &str = "warden_outbox_lag_seconds";
pub const OUTBOX_BATCH: &str = "warden_outbox_batch_size";
pub const MEMORY_JOBS: &str = "warden_memory_sync_jobs_total";
pub const MEMORY_BACKLOG: &str = "warden_memory_sync_backlog";
pub const MEMORY_SECONDS: &str = "warden_memory_sync_seconds";
pub const MEMORY_CIRCUIT: &str = "warden_memory_sync_circuit_open";

/// Buckets of rows per claimed batch.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// Buckets of the time from start to ready: processes are ready in
/// milliseconds, databases in seconds.
const START_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets of one probe attempt.
const PROBE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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

/// Sets the process-wide recorder and returns the handle `/metrics`
/// renders from; `None` when a recorder was set already (the first one
/// stays).
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(START_SECONDS.into()), START_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PROBE_SECONDS.into()), PROBE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(OUTBOX_BATCH.into()), BATCH_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MEMORY_SECONDS.into()), PROBE_BUCKETS))
        .ok()?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for result in ["ok", "invalid", "refused"] {
        metrics::counter!(RELOADS, "result" => result).absolute(0);
    }
    // Publishes the descriptions (HELP lines) now, not at the first upkeep.
    handle.run_upkeep();
    Some(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RESTARTS,
        "Times a service was started again, by reason (failure, exited, health, start_timeout, operator, dependency, reload)."
    );
    describe_histogram!(
        START_SECONDS,
        "Seconds from a service's start to its readiness."
    );
    describe_histogram!(PROBE_SECONDS, "Seconds one probe attempt took.");
    describe_counter!(PROBE_FAILURES, "Probe attempts that failed.");
    describe_counter!(
        RELOADS,
        "Registry reloads, by result (ok, invalid: the file did not check, refused: warden could not apply it)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version of this warden.");
    describe_counter!(
        OUTBOX_PUBLISHED,
        "Outbox rows handled, by result (sent, retry: Redis refused it and it will be tried again, failed: out of retries)."
    );
    describe_gauge!(OUTBOX_BACKLOG, "Outbox rows waiting to be published.");
    describe_gauge!(
        OUTBOX_LAG,
        "Age in seconds of the oldest outbox row waiting to be published."
    );
    describe_histogram!(OUTBOX_BATCH, "Rows per claimed outbox batch.");
    describe_counter!(
        MEMORY_JOBS,
        "Memory writes handled, by result (sent, retry, failed)."
    );
    describe_gauge!(MEMORY_BACKLOG, "Memory writes waiting to be sent.");
    describe_histogram!(
        MEMORY_SECONDS,
        "Seconds one POST to the memory backend took."
    );
    describe_gauge!(
        MEMORY_CIRCUIT,
        "1 while the circuit breaker of the memory backend is open."
    );
}

/// Counts memory writes by result (`sent`, `retry`, `failed`).
pub fn memory_jobs(service: &str, result: &'static str) {
    metrics::counter!(MEMORY_JOBS, "service" => service.to_string(), "result" => result)
        .increment(1);
}

pub fn memory_backlog(service: &str, rows: i64) {
    metrics::gauge!(MEMORY_BACKLOG, "service" => service.to_string()).set(rows as f64);
}

pub fn memory_seconds(service: &str, took: Duration) {
    metrics::histogram!(MEMORY_SECONDS, "service" => service.to_string())
        .record(took.as_secs_f64());
}

pub fn memory_circuit(service: &str, open: bool) {
    metrics::gauge!(MEMORY_CIRCUIT, "service" => service.to_string())
        .set(f64::from(u8::from(open)));
}

/// Counts outbox rows by result (`sent`, `retry`, `failed`).
pub fn outbox_published(service: &str, result: &'static str, rows: usize) {
    metrics::counter!(OUTBOX_PUBLISHED, "service" => service.to_string(), "result" => result)
        .increment(rows as u64);
}

/// The outbox's backlog and lag.
pub fn outbox_stats(service: &str, backlog: i64, lag_seconds: f64) {
    metrics::gauge!(OUTBOX_BACKLOG, "service" => service.to_string()).set(backlog as f64);
    metrics::gauge!(OUTBOX_LAG, "service" => service.to_string()).set(lag_seconds);
}

/// The size of a claimed batch.
pub fn outbox_batch(service: &str, rows: usize) {
    metrics::histogram!(OUTBOX_BATCH, "service" => service.to_string()).record(rows as f64);
}

/// Counts a restart.
pub fn restart(service: &str, reason: RestartReason) {
    metrics::counter!(RESTARTS, "service" => service.to_string(), "reason" => reason.as_str())
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

/// Counts a reload.
pub fn reloaded(result: &'static str) {
    metrics::counter!(RELOADS, "result" => result).increment(1);
}

/// Escapes a label value for the text exposition format.
fn label(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The `/metrics` page: what the recorder holds, then the state families
/// from `status`.
pub fn render(handle: Option<&PrometheusHandle>, status: &[ServiceStatus]) -> String {
    let mut out = handle.map(PrometheusHandle::render).unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# HELP {SERVICE_UP} 1 when the service is ready (or a oneshot completed), else 0.\n# TYPE {SERVICE_UP} gauge"
    );
    for s in status {
        let _ = writeln!(
            out,
            "{SERVICE_UP}{{service=\"{}\"}} {}",
            label(&s.name),
            u8::from(s.state.is_ready())
        );
    }
    let _ = writeln!(
        out,
        "# HELP {SERVICE_STATE} 1 for the state the service is in, 0 for the others.\n# TYPE {SERVICE_STATE} gauge"
    );
    for s in status {
        let name = label(&s.name);
        for state in State::ALL {
            let _ = writeln!(
                out,
                "{SERVICE_STATE}{{service=\"{name}\",state=\"{state}\"}} {}",
                u8::from(s.state == state)
            );
        }
    }
    out
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
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }
}
