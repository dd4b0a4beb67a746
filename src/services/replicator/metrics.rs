//! The metric families of `stream-replicator`.

use crate::metrics::{Family, Shape};

pub const APPLIED: &str = "warden_replicator_applied_total";
pub const PENDING: &str = "warden_replicator_pending";
pub const LAG: &str = "warden_replicator_lag_seconds";
pub const DLQ: &str = "warden_dlq_total";
pub const DLQ_SIZE: &str = "warden_replicator_dlq_size";

pub const FAMILIES: &[Family] = &[
    Family {
        name: APPLIED,
        help: "Stream entries handled, by result (applied: a new row; duplicate: the event was there already; dlq: sent to the dead-letter queue).",
        shape: Shape::Counter,
    },
    Family {
        name: PENDING,
        help: "Entries of the service's streams its group has not acknowledged: delivered and pending, or not delivered yet.",
        shape: Shape::Gauge,
    },
    Family {
        name: LAG,
        help: "Age in seconds of the oldest entry the group has not acknowledged.",
        shape: Shape::Gauge,
    },
    Family {
        name: DLQ,
        help: "Entries sent to the dead-letter queue (the stream's .dlq and the warden_dlq table).",
        shape: Shape::Counter,
    },
    Family {
        name: DLQ_SIZE,
        help: "Dead letters of the service in warden_dlq not replayed yet.",
        shape: Shape::Gauge,
    },
];

pub fn applied(service: &str, result: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(APPLIED, "service" => service.to_string(), "result" => result)
            .increment(n);
    }
}

pub fn dead_letters(service: &str, n: u64) {
    if n > 0 {
        metrics::counter!(DLQ, "service" => service.to_string()).increment(n);
    }
}

pub fn stats(service: &str, pending: i64, lag_seconds: f64) {
    metrics::gauge!(PENDING, "service" => service.to_string()).set(pending as f64);
    metrics::gauge!(LAG, "service" => service.to_string()).set(lag_seconds);
}

pub fn dlq_size(service: &str, n: i64) {
    metrics::gauge!(DLQ_SIZE, "service" => service.to_string()).set(n as f64);
}
