//! PostgreSQL connections: the DSN's `sslmode` and `sslrootcert` as libpq
//! means them, the service's `tls_ca`, TLS through rustls.

use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Error;
use super::tls::{self, Verify};
use crate::config::dsn::{SslMode, split_postgres};
use crate::config::types::PgTarget;

/// The task that drives a session (over a socket, with or without TLS):
/// poll it (spawn it) or nothing moves.
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Which setting names the CA of a PostgreSQL connection.
const CA_HINT: &str = "tls_ca or sslrootcert";

/// The driver's configuration of `target` and the TLS connector its
/// `sslmode` asks for: what [`connect`] uses, and what a pool of sessions
/// is built from. The CA files are read (and the system's roots loaded)
/// here, when the connection verifies the server.
pub async fn config(
    target: &PgTarget,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), Error> {
    let parts = split_postgres(target.dsn.0.expose()).map_err(Error)?;
    let mut config: tokio_postgres::Config = parts.driver.parse().map_err(|e| {
        Error(crate::config::secret::redact(&format!(
            "invalid connection string: {}",
            error_text(&e)
        )))
    })?;
    // The session's limits follow any `options` of the DSN's own (later
    // settings win, so these hold).
    let mut options = config.get_options().unwrap_or_default().to_string();
    for (name, limit) in [
        ("statement_timeout", target.limits.statement),
        ("lock_timeout", target.limits.lock),
    ] {
        if let Some(d) = limit {
            // 0 is the server's own "no limit", as written.
            options.push_str(&format!(" -c {name}={}", d.as_millis()));
        }
    }
    if !options.is_empty() {
        config.options(options.trim_start());
    }
    if let Some(network) = target.limits.network {
        // A peer that stopped answering (a partition, a failover that
        // sent no reset) is given up on within `network`: keepalive probes
        // on an idle session, TCP_USER_TIMEOUT on data left unacknowledged.
        let second = std::time::Duration::from_secs(1);
        config
            .connect_timeout(network)
            .keepalives(true)
            .keepalives_idle((network / 3).max(second))
            .keepalives_interval((network / 6).max(second))
            .keepalives_retries(3)
            .tcp_user_timeout(network);
    }
    config.ssl_mode(match parts.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let verify = parts
        .verify(target.tls_ca.is_some())
        .unwrap_or(Verify::Nothing);
    let cas: Vec<_> = parts
        .sslrootcert
        .iter()
        .cloned()
        .chain(target.tls_ca.iter().map(|c| c.0.clone()))
        .collect();
    let client = tls::client_config(verify, &cas).await.map_err(Error)?;
    Ok((config, MakeRustlsConnect::new((*client).clone())))
}

/// A PostgreSQL session, and the task that must be polled for it to work.
pub async fn connect(target: &PgTarget) -> Result<(tokio_postgres::Client, Connection), Error> {
    let (config, tls) = config(target).await?;
    config.connect(tls).await.map_err(|e| Error(error_text(&e)))
}

/// A PostgreSQL error in words: the server's message when there is one
/// (with what to do when it refused a connection without TLS), a failed
/// TLS handshake in plain words, else the driver's words and their cause.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let m = db.message();
        // The server's words for a connection pg_hba.conf accepts only
        // with TLS ("... no encryption").
        if db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && m.contains("no encryption")
        {
            return format!(
                "{m} (the server accepts this connection only over TLS: set sslmode=require or verify-full)"
            );
        }
        return m.to_string();
    }
    if let Some(words) = tls::describe(e, CA_HINT) {
        return words;
    }
    match e.source() {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// A pool of sessions (deadpool-postgres): what a service uses for every
/// statement that needs no session of its own (statistics, actions).
pub type Pool = deadpool_postgres::Pool;

/// How long taking a session from a [`Pool`] may wait for a free one,
/// and how long making a new one may take.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A pool of at most `size` sessions to `target` (TLS as for
/// [`connect`]). Sessions are made when first needed, and each is checked
/// with a round trip when taken: one that a restart of the server closed
/// is dropped and replaced there, never handed out, so a restart costs no
/// failed statement.
pub async fn pool(target: &PgTarget, size: usize) -> Result<Pool, Error> {
    use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
    let (config, tls) = config(target).await?;
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| Error(format!("cannot build a pool of sessions: {e}")))
}

/// Why a session could not be taken from a pool, in words.
pub fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => error_text(e),
        PoolError::Timeout(t) => {
            let wait = humantime::format_duration(POOL_WAIT);
            match t {
                deadpool_postgres::TimeoutType::Wait => {
                    format!("every session of the pool stayed busy for {wait} (raise pool_size)")
                }
                deadpool_postgres::TimeoutType::Create => {
                    format!("PostgreSQL did not accept a session within {wait}")
                }
                deadpool_postgres::TimeoutType::Recycle => {
                    format!("a pooled session did not answer its check within {wait}")
                }
            }
        }
        PoolError::Closed => "the pool of sessions is closed".to_string(),
        other => other.to_string(),
    }
}
