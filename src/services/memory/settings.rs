//! The settings of `kind = "memory-sync"`.

use std::time::Duration;

use crate::config::Endpoint;
use crate::config::decode::{config_table, defaults_of};
use crate::config::kind::{Problems, Settings, below_minimum};
use crate::config::types::{
    CaFile, Count, HttpUrl, PgTarget, PostgresDsn, SessionLimits, TableName,
};

config_table! {
    /// Circuit breaker of the memory backend.
    pub struct Circuit {
        /// Consecutive failures that open the circuit.
        pub failures: Count = Count(5),
        /// Time the circuit stays open.
        pub cooldown: Duration = Duration::from_secs(30),
    }
}

config_table! {
    /// `kind = "memory-sync"`: durable delivery of queued memory writes.
    pub struct MemorySyncSpec {
        /// PostgreSQL holding the queue.
        pub postgres: PostgresDsn,
        /// Queue table.
        pub table: TableName = TableName::builtin("memory_write_outbox"),
        /// Memory backend URL receiving POSTs.
        pub endpoint: HttpUrl,
        /// Time one POST may take.
        pub timeout: Duration = Duration::from_secs(10),
        /// Attempts before a row is marked failed.
        pub max_retries: u32 = 10,
        /// Circuit breaker.
        pub circuit: Circuit = defaults_of(Circuit::all_defaults()),
        /// Topic of the WAL event written to the outbox on success.
        pub wal_topic: String = "memory.wal".to_string(),
        /// Outbox table receiving the WAL events.
        pub outbox_table: TableName = TableName::builtin("message_outbox"),
        /// How long a claimed batch is leased.
        pub lease: Duration = Duration::from_secs(30),
        /// Fallback poll when no NOTIFY arrives.
        pub poll_interval: Duration = Duration::from_secs(1),
        /// Rows claimed per batch.
        pub batch: Count = Count(50),
        /// Requests in flight at once (never two of one session).
        pub in_flight: Count = Count(8),
        /// How long one of the service's statements may run before
        /// PostgreSQL cancels it.
        pub statement_timeout: Duration = Duration::from_secs(30),
        /// How long one of the service's statements may wait for a lock (a
        /// table busy with a migration): the round is tried again after a
        /// pause, charging no row.
        pub lock_timeout: Duration = Duration::from_secs(5),
        /// How long a silent network may hold a connection (a partition,
        /// a failover that sent no reset): TCP keepalive and
        /// `TCP_USER_TIMEOUT` on every PostgreSQL socket, and how
        /// long past `statement_timeout` an answer is waited for.
        pub network_timeout: Duration = Duration::from_secs(15),
        /// How often the session that listens for the insert trigger is
        /// checked (a round trip that must come back within
        /// `network_timeout`); a dead one is made again.
        pub listen_check: Duration = Duration::from_secs(15),
        /// Create the tables at start (idempotent DDL).
        pub create_schema: bool = true,
        /// Sessions of the service's pool (rounds, statistics, actions); the
        /// listening session is apart.
        pub pool_size: Count = Count(crate::services::data::DEFAULT_POOL_SIZE),
        /// A file of PEM CA certificates that TLS connections (to
        /// PostgreSQL and an `https://` endpoint) trust besides the
        /// system's roots.
        pub tls_ca: Option<CaFile>,
    }
}

impl MemorySyncSpec {
    /// Where service `service`'s statements on its table go.
    pub fn table_at(&self, service: &str) -> crate::services::data::TableAt {
        crate::services::data::TableAt {
            service: service.to_string(),
            pg: self.pg(),
            table: self.table.clone(),
            pool_size: self.pool_size.0,
        }
    }

    /// The PostgreSQL of the queue, with the CA its TLS trusts.
    pub fn pg(&self) -> PgTarget {
        PgTarget::new(self.postgres.clone(), self.tls_ca.clone()).with_limits(SessionLimits {
            statement: Some(self.statement_timeout),
            lock: Some(self.lock_timeout),
            network: Some(self.network_timeout),
        })
    }
}

impl Settings for MemorySyncSpec {
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint::Postgres(self.pg()),
            Endpoint::PostgresTable(
                self.pg(),
                super::sql::Queue::needs(&self.table, self.create_schema),
            ),
            Endpoint::Http(self.endpoint.clone(), self.tls_ca.clone()),
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
        problems.at_least(
            &["timeout"],
            self.timeout,
            MIN_TIMEOUT,
            "a request needs time to connect and to be answered; with less every request fails, and the circuit never closes",
        );
        problems.at_least(
            &["circuit", "cooldown"],
            self.circuit.cooldown,
            MIN_COOLDOWN,
            "an open circuit would let the next request through at once, giving the backend no pause",
        );
        let min_lease = min_lease(self.timeout);
        if self.lease < min_lease {
            problems.error(
                "invalid-value",
                &["lease"],
                below_minimum(
                    self.lease,
                    min_lease,
                    &format!(
                        "the timeout ({}) and 1s: a POST starts only while a whole timeout fits in what is left of the lease, less a margin to mark the batch, and a lease that runs out while a row is sent lets another instance send it again",
                        humantime::format_duration(self.timeout)
                    ),
                ),
            );
        }
    }

    fn tls_ca(&self) -> Option<&CaFile> {
        self.tls_ca.as_ref()
    }
}

/// The shortest `timeout` of a POST.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// The shortest `circuit.cooldown`.
pub const MIN_COOLDOWN: Duration = Duration::from_millis(100);

/// The shortest `lease` for a POST `timeout`: one POST takes at most the
/// timeout (connection, answer and body), a POST starts only while a whole
/// timeout fits before the lease's end less a margin (a tenth of the
/// lease, at most 1 s) kept to mark the batch.
pub fn min_lease(timeout: Duration) -> Duration {
    timeout.saturating_add(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_has_a_default_for_every_key() {
        assert!(Circuit::all_defaults().is_some());
    }
}
