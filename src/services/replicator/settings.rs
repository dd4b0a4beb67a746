//! The settings of `kind = "stream-replicator"`.

use std::time::Duration;

use indexmap::IndexMap;

use crate::config::Endpoint;
use crate::config::decode::config_table;
use crate::config::kind::{Problems, Settings};
use crate::config::types::{
    ByteSize, CaFile, Count, Ident, PgTarget, PostgresDsn, RedisDsn, RedisTarget, SessionLimits,
    TableName,
};

config_table! {
    /// `kind = "stream-replicator"`: Redis Streams to PostgreSQL, idempotent.
    pub struct StreamReplicatorSpec {
        /// PostgreSQL receiving the entries.
        pub postgres: PostgresDsn,
        /// Redis holding the streams.
        pub redis: RedisDsn,
        /// Streams read (one consumer group on each).
        pub streams: Vec<String>,
        /// Consumer group (default: the service's name).
        pub group: Option<String>,
        /// Table receiving the entries.
        pub table: TableName = TableName::builtin("memory_replica"),
        /// Payload keys to columns of `table` (a table of your own, with a
        /// unique `event_id` column); unset: the built-in layout.
        pub columns: Option<IndexMap<String, Ident>>,
        /// Pending entries idle this long are claimed from their consumer.
        pub min_idle: Duration = Duration::from_secs(60),
        /// Deliveries after which an entry goes to the dead-letter queue.
        pub max_deliveries: u32 = 5,
        /// Entries each `<stream>.dlq` stream keeps: the oldest go when a
        /// new dead letter comes (the table `warden_dlq` keeps every one).
        pub dlq_maxlen: Count = Count(10_000),
        /// How long a replayed dead letter stays in `warden_dlq` (what was
        /// replayed, and why it had failed) before it is deleted.
        pub dlq_keep_replayed: Duration = Duration::from_secs(7 * 86_400),
        /// Entries read per batch from each stream.
        pub batch: Count = Count(500),
        /// The longest event id accepted (bytes): a longer one is a dead
        /// letter (PostgreSQL cannot index ids of a few kilobytes).
        pub max_event_id_bytes: Count = Count(512),
        /// The largest `payload` (and `headers`) accepted: a larger one is
        /// a dead letter.
        pub max_payload: ByteSize = ByteSize(16 << 20),
        /// The deepest nesting of arrays and objects accepted in `payload`
        /// and `headers`: a deeper one is a dead letter (PostgreSQL's
        /// parser stops at its stack's depth).
        pub max_json_depth: Count = Count(128),
        /// How long one of the service's statements may run before
        /// PostgreSQL cancels it: a batch that takes longer is split until
        /// the entry at fault is found, and that entry is a dead letter.
        pub statement_timeout: Duration = Duration::from_secs(30),
        /// How long one of the service's statements may wait for a lock
        /// (a table busy with a migration): the round is tried again
        /// after a pause, charging no entry.
        pub lock_timeout: Duration = Duration::from_secs(5),
        /// How long a silent network may hold a connection (a partition,
        /// a failover that sent no reset): TCP keepalive and
        /// `TCP_USER_TIMEOUT` on every PostgreSQL and Redis socket, and how
        /// long past `statement_timeout` (or a read's wait) an answer is
        /// waited for.
        pub network_timeout: Duration = Duration::from_secs(15),
        /// Create the tables at start (idempotent DDL).
        pub create_schema: bool = true,
        /// Sessions of the service's pool (rounds, statistics, actions).
        pub pool_size: Count = Count(crate::services::data::DEFAULT_POOL_SIZE),
        /// A file of PEM CA certificates that TLS connections (to
        /// PostgreSQL and to a `rediss://` Redis) trust besides the
        /// system's roots.
        pub tls_ca: Option<CaFile>,
    }
}

/// The shortest `min_idle`: below it an entry still being applied by
/// its consumer is taken over and applied twice (idempotent, but wasted).
pub const MIN_MIN_IDLE: Duration = Duration::from_secs(1);

impl StreamReplicatorSpec {
    /// The PostgreSQL of the replica, with the CA its TLS trusts.
    pub fn pg(&self) -> PgTarget {
        PgTarget::new(self.postgres.clone(), self.tls_ca.clone()).with_limits(SessionLimits {
            statement: Some(self.statement_timeout),
            lock: Some(self.lock_timeout),
            network: Some(self.network_timeout),
        })
    }

    /// The Redis of the streams, with the CA its TLS trusts.
    pub fn redis_target(&self) -> RedisTarget {
        RedisTarget::new(self.redis.clone(), self.tls_ca.clone())
    }

    /// The consumer group of service `service`.
    pub fn group_of(&self, service: &str) -> String {
        self.group.clone().unwrap_or_else(|| service.to_string())
    }
}

impl Settings for StreamReplicatorSpec {
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint::Postgres(self.pg()),
            Endpoint::Redis(self.redis_target()),
        ]
    }

    fn leadership(&self) -> Option<&PostgresDsn> {
        Some(&self.postgres)
    }

    fn check(&self, problems: &mut Problems<'_>) {
        crate::services::data::check_pool_size(self.pool_size, problems);
        crate::services::data::check_session_limits(&self.pg().limits, problems);
        if self.streams.is_empty() {
            problems.error(
                "invalid-value",
                &["streams"],
                "no stream to read: name at least one, such as [\"orders\"]",
            );
        }
        for (i, s) in self.streams.iter().enumerate() {
            if s.trim().is_empty() {
                problems.error(
                    "invalid-value",
                    &["streams"],
                    format!("stream {} is empty: name a Redis stream", i + 1),
                );
            }
            if self.streams[..i].contains(s) {
                problems.error(
                    "invalid-value",
                    &["streams"],
                    format!("stream {s:?} is named twice"),
                );
            }
        }
        if self.group.as_deref().is_some_and(|g| g.trim().is_empty()) {
            problems.error(
                "invalid-value",
                &["group"],
                "an empty group name: leave group out to use the service's name",
            );
        }
        problems.at_least(
            &["min_idle"],
            self.min_idle,
            MIN_MIN_IDLE,
            "a shorter one takes entries over from a consumer that is still applying them",
        );
        if self.max_deliveries == 0 {
            problems.error(
                "invalid-value",
                &["max_deliveries"],
                "0 is below the minimum of 1: every entry would go to the dead-letter queue unread",
            );
        }
        if let Some(columns) = &self.columns {
            if columns.is_empty() {
                problems.error(
                    "invalid-value",
                    &["columns"],
                    "no column: map at least one payload key to a column, or leave columns out for the built-in layout",
                );
            }
            let mut seen: Vec<&Ident> = Vec::new();
            for (key, column) in columns {
                if column.as_str() == "event_id" {
                    problems.error(
                        "invalid-value",
                        &["columns", key],
                        "event_id is filled by the replicator (the entry's outbox_id, else its stream and id): map the key to another column",
                    );
                }
                if seen.contains(&column) {
                    problems.error(
                        "invalid-value",
                        &["columns", key],
                        format!("column {} is mapped twice", column.as_str()),
                    );
                }
                seen.push(column);
            }
        }
    }

    fn tls_ca(&self) -> Option<&CaFile> {
        self.tls_ca.as_ref()
    }
}
