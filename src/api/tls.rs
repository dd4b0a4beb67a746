//! HTTPS for the API: the certificate and key of `[api] tls_cert` and
//! `tls_key`, on the same rustls provider (ring) as every connection warden
//! makes. The files are read when the API starts, and again at the next
//! connection after either changes (a renewed certificate needs no
//! restart); a change that does not load keeps the configuration in force
//! and says why in the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::conn::tls::{Stamp, stamp};

/// The API's TLS configuration, following its files.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Stamp, Stamp, Arc<ServerConfig>)>,
}

impl ServerTls {
    /// Loads the certificate and key. The error names the file at fault
    /// and never quotes the key.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let stamps = (stamp(cert), stamp(key));
        let config = Arc::new(build(cert, key)?);
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new((stamps.0, stamps.1, config)),
        })
    }

    /// The configuration for the next connection: loaded again when a file
    /// changed since; the one in force when that fails.
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if (stamps.0, stamps.1) != (current.0, current.1) {
            // Stamped first: a bad file is reported once, not at every
            // connection until it is fixed.
            current.0 = stamps.0;
            current.1 = stamps.1;
            match build(&self.cert, &self.key) {
                Ok(c) => {
                    tracing::info!(cert = %self.cert.display(), "API TLS certificate loaded again");
                    current.2 = Arc::new(c);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "API TLS certificate changed but does not load; still serving the previous one"
                ),
            }
        }
        current.2.clone()
    }
}

/// A server configuration of the certificate chain in `cert` and the key
/// in `key`, speaking HTTP/1.1.
pub fn build(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read the certificate file {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => {
            format!("cannot read the key file {}: {e}", key.display())
        }
        _ => format!(
            "{} holds no PEM private key (expected a -----BEGIN PRIVATE KEY----- block, or an RSA or EC one)",
            key.display()
        ),
    })?;
    let mut config = ServerConfig::builder_with_provider(crate::conn::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the key in {} is not the key of the certificate in {}",
                key.display(),
                cert.display()
            ),
            other => format!(
                "the certificate {} and key {} cannot serve TLS: {other}",
                cert.display(),
                key.display()
            ),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
