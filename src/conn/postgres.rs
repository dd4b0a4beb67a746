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
