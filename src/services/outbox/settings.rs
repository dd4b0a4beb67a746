//! The settings of `kind = "outbox-relay"`.

use std::time::Duration;

use crate::config::Endpoint;
use crate::config::decode::config_table;
use crate::config::kind::{Problems, Settings};
use crate::config::types::{
    ByteSize, CaFile, Count, PgTarget, PostgresDsn, RedisDsn, RedisTarget, SessionLimits, TableName,
};

config_table! {
    /// `kind = "outbox-relay"`: PostgreSQL outbox to Redis Streams.
    pub struct OutboxRelaySpec {
        /// PostgreSQL holding the outbox.
        pub postgres: PostgresDsn,
        /// Redis receiving the streams.
        pub redis: RedisDsn,
        /// Outbox table.
        pub table: TableName = TableName::builtin("message_outbox"),
        /// Prefix of stream names: topic `t` goes to stream `<prefix>t`.
        pub stream_prefix: String = String::new(),
        /// Approximate cap of each stream (`XADD MAXLEN ~`).
        pub max_len: Option<u64>,
        /// How long a claimed batch is leased.
        pub lease: Duration = Duration::from_secs(30),
        /// Attempts before a row is marked failed.
        pub max_retries: u32 = 10,
        /// Fallback poll when no NOTIFY arrives.
        pub poll_interval: Duration = Duration::from_secs(1),
        /// While rows keep coming, how long after a claim that did not
        /// fill its batch the next claim waits, so that rows arriving one
        /// by one go out in batches: each batch costs PostgreSQL a claim
        /// and a mark, and Redis a pipeline, whatever its size. A claim
        /// after an idle wait (the first row after a quiet spell) does not
        /// wait. `0s` claims again at once.
        pub linger: Duration = Duration::from_millis(2),
        /// Delete rows once published instead of marking them sent.
        pub delete_sent: bool = false,
        /// Rows claimed per batch.
        pub batch: Count = Count(500),
        /// Bytes (payloads and headers) claimed per batch, and so sent in
        /// one Redis pipeline: a batch stops before the row that would
        /// pass it (its first row goes, however large).
        pub batch_bytes: ByteSize = ByteSize(4 << 20),
        /// How long one of the service's statements may run before
        /// PostgreSQL cancels it.
        pub statement_timeout: Duration = Duration::from_secs(30),
        /// How long one of the service's statements may wait for a lock (a
        /// table busy with a migration): the round is tried again after a
        /// pause, charging no row.
        pub lock_timeout: Duration = Duration::from_secs(5),
        /// How long a silent network may hold a connection (a partition,
        /// a failover that sent no reset): TCP keepalive and
        /// `TCP_USER_TIMEOUT` on every PostgreSQL and Redis socket, and how
        /// long past `statement_timeout` an answer is waited for.
        pub network_timeout: Duration = Duration::from_secs(15),
        /// How often the session that listens for the insert trigger is
        /// checked (a round trip that must come back within
        /// `network_timeout`); a dead one is made again.
        pub listen_check: Duration = Duration::from_secs(15),
        /// Create the table and trigger at start (idempotent DDL).
        pub create_schema: bool = true,
        /// Sessions of the service's pool (rounds, statistics, actions); the
        /// listening session is apart.
        pub pool_size: Count = Count(crate::services::data::DEFAULT_POOL_SIZE),
        /// A file of PEM CA certificates that TLS connections (to
        /// PostgreSQL and to a `rediss://` Redis) trust besides the
        /// system's roots.
        pub tls_ca: Option<CaFile>,
    }
}

impl OutboxRelaySpec {
    /// Where service `service`'s statements on its table go.
    pub fn table_at(&self, service: &str) -> crate::services::data::TableAt {
        crate::services::data::TableAt {
            service: service.to_string(),
            pg: self.pg(),
            table: self.table.clone(),
            pool_size: self.pool_size.0,
        }
    }

    /// The PostgreSQL of the outbox, with the CA its TLS trusts.
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
}

impl Settings for OutboxRelaySpec {
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint::Postgres(self.pg()),
            Endpoint::PostgresTable(
                self.pg(),
                super::sql::Outbox::needs(&self.table, self.create_schema),
            ),
            Endpoint::Redis(self.redis_target()),
        ]
    }

    fn leadership(&self) -> Option<&PostgresDsn> {
        Some(&self.postgres)
    }

    fn check(&self, problems: &mut Problems<'_>) {
        crate::services::data::check_pool_size(self.pool_size, problems);
        crate::services::data::check_session_limits(&self.pg().limits, problems);
        crate::services::data::check_listen(self.listen_check, problems);
        problems.at_least(
            &["poll_interval"],
            self.poll_interval,
            crate::services::data::MIN_POLL_INTERVAL,
            "a shorter poll queries PostgreSQL without pause",
        );
        problems.at_most(
            &["linger"],
            self.linger,
            MAX_LINGER,
            "each row may wait this long before it is claimed; batches fill by themselves when rows come faster than the relay sends them",
        );
        problems.at_least(
            &["lease"],
            self.lease,
            MIN_LEASE,
            "the relay waits for Redis up to half the lease, and at least 1s; a shorter lease runs out while Redis answers, and another relay takes the rows and sends them again",
        );
    }

    fn tls_ca(&self) -> Option<&CaFile> {
        self.tls_ca.as_ref()
    }
}

/// The longest `linger` (the claim's wait counts within the claim's own
/// time limit, `statement_timeout` + `network_timeout`, 1.1 s at their
/// lowest).
pub const MAX_LINGER: Duration = Duration::from_millis(100);

/// The shortest relay `lease`: the relay waits for Redis up to half the
/// lease but at least 1 s, which must still be within the lease.
pub const MIN_LEASE: Duration = Duration::from_secs(2);
