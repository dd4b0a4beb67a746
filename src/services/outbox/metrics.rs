//! The outbox relay's metric families and how it records them.

use crate::metrics::{BATCH_BUCKETS, Family, Shape};

pub const PUBLISHED: &str = "warden_outbox_published_total";
pub const BACKLOG: &str = "warden_outbox_backlog";
pub const LAG: &str = "warden_outbox_lag_seconds";
pub const BATCH: &str = "warden_outbox_batch_size";

pub const FAMILIES: &[Family] = &[
    Family {
        name: PUBLISHED,
        help: "Outbox rows handled, by result (sent, retry: Redis refused it and it will be tried again, failed: out of retries).",
        shape: Shape::Counter,
    },
    Family {
        name: BACKLOG,
        help: "Outbox rows waiting to be published.",
        shape: Shape::Gauge,
    },
    Family {
        name: LAG,
        help: "Age in seconds of the oldest outbox row waiting to be published.",
        shape: Shape::Gauge,
    },
    Family {
        name: BATCH,
        help: "Rows per claimed outbox batch.",
        shape: Shape::Histogram(BATCH_BUCKETS),
    },
];

/// Counts outbox rows by result (`sent`, `retry`, `failed`).
pub fn published(service: &str, result: &'static str, rows: usize) {
    metrics::counter!(PUBLISHED, "service" => service.to_string(), "result" => result)
        .increment(rows as u64);
}

/// The outbox's backlog and lag.
pub fn stats(service: &str, backlog: i64, lag_seconds: f64) {
    metrics::gauge!(BACKLOG, "service" => service.to_string()).set(backlog as f64);
    metrics::gauge!(LAG, "service" => service.to_string()).set(lag_seconds);
}

/// The size of a claimed batch.
pub fn batch(service: &str, rows: usize) {
    metrics::histogram!(BATCH, "service" => service.to_string()).record(rows as f64);
}
