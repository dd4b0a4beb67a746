//! Every connection warden makes to PostgreSQL, Redis and HTTP servers: the data kinds'
//! sessions, the `postgres` and `redis` probes (so `check --connect`), and
//! singleton leadership all connect here, and only here, so they share
//! one reading of the connection string and one TLS configuration
//! ([`tls`]: rustls with the system's roots plus an optional CA file).
//!
//! - [`postgres`]: `sslmode` (`disable`, `prefer` (the default), `require`,
//!   `verify-ca`, `verify-full`) and `sslrootcert` as libpq means them;
//!   [`postgres::config`] is the driver's configuration and TLS connector,
//!   which a pool of sessions can be built from.
//! - [`redis`]: `redis://`, Unix sockets, and `rediss://` (verified; with
//!   `#insecure` only encrypted).
//! - [`http`]: `http://` and `https://` (the `http` probe, memory-sync's
//!   backend), hyper-rustls on the same configuration.
//!
//! Errors are words for an operator: the server's message, or a failed
//! TLS handshake said plainly ("the server's TLS certificate is not
//! trusted: unknown issuer (set tls_ca ...)"), never a connection string.

pub mod http;
pub mod postgres;
pub mod redis;
pub mod tls;

use std::fmt;

/// Why a connection could not be made, in words (no password in them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Aborts a task when dropped (a session's driver ends with its user).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
