//! The TLS client configuration of every connection (rustls, ring).
//!
//! Trusted: the system's roots (`rustls-native-certs`: the OpenSSL
//! locations, `SSL_CERT_FILE` and `SSL_CERT_DIR` honoured) plus the CA
//! files a connection names (`tls_ca`, `sslrootcert`). Nothing is loaded
//! until a connection needs it: the system's roots when the first
//! verified connection is made (on the blocking pool), a CA file at each
//! connection that names it whose file changed since (so a renewed CA
//! needs no restart). A configuration is kept per way of verifying and
//! set of CA files, so later connections share it.
//!
//! [`describe`] turns a failed handshake into words an operator can act
//! on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

pub use crate::config::dsn::Verify;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's roots, and what went wrong reading them.
struct SystemRoots {
    store: Arc<RootCertStore>,
    /// Why some or all could not be read (shown when nothing else is
    /// trusted).
    problem: Option<String>,
}

static SYSTEM_ROOTS: OnceLock<SystemRoots> = OnceLock::new();

fn system_roots() -> &'static SystemRoots {
    SYSTEM_ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(found.certs);
        let problem = found.errors.first().map(|e| e.to_string());
        tracing::debug!(certificates = added, problem = ?problem, "loaded the system's TLS roots");
        SystemRoots {
            store: Arc::new(store),
            problem,
        }
    })
}

/// What identifies a CA file's content without reading it.
pub(crate) type Stamp = Option<(SystemTime, u64)>;

pub(crate) fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct Cached {
    verify: Verify,
    cas: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    config: Arc<ClientConfig>,
}

static CONFIGS: Mutex<Vec<Cached>> = Mutex::new(Vec::new());

/// The client configuration that verifies as `verify` asks, trusting the
/// system's roots and `cas` (unused for [`Verify::Nothing`]). The error
/// names the CA file at fault, or says that nothing is trusted.
pub async fn client_config(verify: Verify, cas: &[PathBuf]) -> Result<Arc<ClientConfig>, String> {
    let cas: Vec<PathBuf> = if verify == Verify::Nothing {
        Vec::new()
    } else {
        cas.to_vec()
    };
    if verify != Verify::Nothing && SYSTEM_ROOTS.get().is_none() {
        // Reading a few hundred files: not on the supervisor's thread.
        let _ = tokio::task::spawn_blocking(|| {
            system_roots();
        })
        .await;
    }
    let stamps: Vec<Stamp> = cas.iter().map(|p| stamp(p)).collect();
    let mut cache = CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache
        .iter()
        .find(|c| c.verify == verify && c.cas == cas && c.stamps == stamps)
    {
        return Ok(c.config.clone());
    }
    let config = Arc::new(build(verify, &cas)?);
    cache.retain(|c| !(c.verify == verify && c.cas == cas));
    cache.push(Cached {
        verify,
        cas,
        stamps,
        config: config.clone(),
    });
    Ok(config)
}

/// A client configuration that verifies the chain and the host name
/// against the system's roots and `cas`, made on the calling thread (for
/// the blocking CLI clients; not cached).
pub fn blocking_client_config(cas: &[PathBuf]) -> Result<Arc<ClientConfig>, String> {
    build(Verify::Full, cas).map(Arc::new)
}

fn build(verify: Verify, cas: &[PathBuf]) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NoVerification(provider)),
        Verify::Chain | Verify::Full => {
            let system = system_roots();
            let roots = if cas.is_empty() {
                system.store.clone()
            } else {
                let mut roots = (*system.store).clone();
                for ca in cas {
                    add_ca_file(&mut roots, ca)?;
                }
                Arc::new(roots)
            };
            if roots.is_empty() {
                return Err(format!(
                    "no CA certificate is trusted: the system has none{} and no CA file is set (set tls_ca or sslrootcert)",
                    system
                        .problem
                        .as_ref()
                        .map(|p| format!(" ({p})"))
                        .unwrap_or_default()
                ));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if verify == Verify::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Adds the certificates of a PEM file to `roots`.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert =
            cert.map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
        roots.add(cert).map_err(|e| {
            format!(
                "certificate {} of {} cannot be a CA: {}",
                n + 1,
                path.display(),
                match &e {
                    rustls::Error::InvalidCertificate(c) => certificate_words(c),
                    _ => None,
                }
                .unwrap_or_else(|| e.to_string())
            )
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        ));
    }
    Ok(())
}

/// Encrypts without checking who is at the other end: `sslmode=prefer`,
/// `require` without a CA, `rediss://...#insecure`. The handshake's
/// signatures are still checked (against the certificate presented).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted CA, the host name
/// is not checked. (rustls checks the name last, once the chain holds, so
/// a name error means the chain was good.)
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls error somewhere in `e`'s chain (through `io::Error`s, which
/// hide their inner error from `source()`).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            cur = Some(inner);
            continue;
        }
        cur = e.source();
    }
    None
}

/// A failed TLS handshake in plain words, when `e` is one; `ca_hint` says
/// which setting names the CA (`tls_ca or sslrootcert`, `tls_ca`).
pub fn describe(e: &(dyn std::error::Error + 'static), ca_hint: &str) -> Option<String> {
    let r = find_rustls(e)?;
    Some(match r {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "the server's TLS certificate is not trusted: unknown issuer (set {ca_hint} to the CA that signed it)"
            ),
            CertificateError::NotValidForName => {
                "the server's TLS certificate is not valid for the host name connected to (connect by a name it was issued for, or verify the chain only: sslmode=verify-ca)".to_string()
            }
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "the server's TLS certificate is not valid for {} (it is for {}; connect by one of those names, or verify the chain only: sslmode=verify-ca)",
                expected.to_str(),
                if presented.is_empty() {
                    "no host name".to_string()
                } else {
                    presented
                        .iter()
                        .map(|n| bare_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            other => format!(
                "the server's TLS certificate is not trusted: {}",
                certificate_words(other).unwrap_or_else(|| other.to_string())
            ),
        },
        rustls::Error::AlertReceived(a) => format!(
            "the server refused the TLS handshake: {}",
            alert_words(*a)
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server did not answer in TLS (is this its TLS port?)".to_string()
        }
        rustls::Error::NoCertificatesPresented => {
            "the server presented no TLS certificate".to_string()
        }
        rustls::Error::PeerIncompatible(_) => {
            "the server offers no TLS version or cipher warden accepts (TLS 1.2 or 1.3)".to_string()
        }
        other => format!("TLS handshake failed: {other}"),
    })
}

/// A name as rustls presents it (`DnsName("db")`, `IpAddress(10.0.0.1)`)
/// as a person writes it.
fn bare_name(n: &str) -> &str {
    match n.split_once('(') {
        Some((kind, rest)) if kind.chars().all(|c| c.is_ascii_alphabetic()) => {
            rest.strip_suffix(')').unwrap_or(rest).trim_matches('"')
        }
        _ => n,
    }
}

fn certificate_words(e: &CertificateError) -> Option<String> {
    Some(
        match e {
            CertificateError::UnknownIssuer => "unknown issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "it is not valid yet (is the clock right?)"
            }
            CertificateError::Revoked => "it was revoked",
            CertificateError::BadSignature => "its signature is wrong",
            CertificateError::BadEncoding => "it is malformed",
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "it is signed with an algorithm warden does not accept"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "it is not issued for TLS servers"
            }
            CertificateError::UnhandledCriticalExtension => {
                "it has a critical extension warden does not know"
            }
            _ => return None,
        }
        .to_string(),
    )
}

fn alert_words(a: AlertDescription) -> String {
    match a {
        AlertDescription::CertificateRequired => {
            "it asks for a client certificate, which warden does not send".into()
        }
        AlertDescription::HandshakeFailure => "no common TLS parameters".into(),
        AlertDescription::ProtocolVersion => "no common TLS version".into(),
        AlertDescription::UnrecognisedName => "it does not know the host name asked for".into(),
        other => format!("{other:?}"),
    }
}
