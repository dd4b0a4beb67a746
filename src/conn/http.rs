//! HTTP and HTTPS connections (the `http` probe, memory-sync's backend):
//! hyper-util's connector under hyper-rustls, on the same rustls
//! configuration as every other connection (the system's roots plus the
//! CA files given). The roots are loaded only for an `https://` URL.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

use super::Error;
use super::tls::{self, Verify};

/// Connects `http://` and `https://` URLs (HTTP/1.1).
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Whether `uri` asks for TLS.
pub fn is_https(uri: &hyper::Uri) -> bool {
    uri.scheme_str() == Some("https")
}

/// A connector for `uri`'s scheme: for `https://`, the server's
/// certificate is verified against the system's roots and `cas`, for its
/// host name; a connection (TCP) is given `connect_timeout`.
pub async fn connector(
    uri: &hyper::Uri,
    cas: &[PathBuf],
    connect_timeout: Duration,
) -> Result<Connector, Error> {
    let https = is_https(uri);
    // An http:// URL never uses its TLS configuration: the one that
    // verifies nothing costs no roots.
    let verify = if https { Verify::Full } else { Verify::Nothing };
    let config = tls::client_config(verify, cas).await.map_err(Error)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*config).clone());
    let builder = if https {
        builder.https_only()
    } else {
        builder.https_or_http()
    };
    Ok(builder.enable_http1().wrap_connector(http))
}

/// A failed request in words: a TLS handshake said plainly (`ca_hint`
/// names the setting of the CA), else the error and its causes.
pub fn error_words(e: &(dyn std::error::Error + 'static), ca_hint: &str) -> String {
    if let Some(words) = tls::describe(e, ca_hint) {
        return words;
    }
    let mut words = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        words.push_str(": ");
        words.push_str(&c.to_string());
        cause = c.source();
    }
    words
}
