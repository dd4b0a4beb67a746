//! memory-sync's metric families and how it records them.

use std::time::Duration;

use crate::metrics::{CALL_BUCKETS, Family, Shape};

pub const JOBS: &str = "warden_memory_sync_jobs_total";
pub const BACKLOG: &str = "warden_memory_sync_backlog";
pub const SECONDS: &str = "warden_memory_sync_seconds";
pub const CIRCUIT: &str = "warden_memory_sync_circuit_open";

pub const FAMILIES: &[Family] = &[
    Family {
        name: JOBS,
        help: "Memory writes handled, by result (sent, retry, failed).",
        shape: Shape::Counter,
    },
    Family {
        name: BACKLOG,
        help: "Memory writes waiting to be sent.",
        shape: Shape::Gauge,
    },
    Family {
        name: SECONDS,
        help: "Seconds one POST to the memory backend took.",
        shape: Shape::Histogram(CALL_BUCKETS),
    },
    Family {
        name: CIRCUIT,
        help: "1 while the circuit breaker of the memory backend is open.",
        shape: Shape::Gauge,
    },
];

/// Counts memory writes by result (`sent`, `retry`, `failed`).
pub fn jobs(service: &str, result: &'static str) {
    jobs_n(service, result, 1);
}

pub fn jobs_n(service: &str, result: &'static str, n: u64) {
    metrics::counter!(JOBS, "service" => service.to_string(), "result" => result).increment(n);
}

pub fn backlog(service: &str, rows: i64) {
    metrics::gauge!(BACKLOG, "service" => service.to_string()).set(rows as f64);
}

pub fn seconds(service: &str, took: Duration) {
    metrics::histogram!(SECONDS, "service" => service.to_string()).record(took.as_secs_f64());
}

pub fn circuit(service: &str, open: bool) {
    metrics::gauge!(CIRCUIT, "service" => service.to_string()).set(f64::from(u8::from(open)));
}
