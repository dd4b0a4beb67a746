//! The memory backend over HTTP or HTTPS: hyper's pooled client
//! (`hyper-util`'s legacy `Client`, on `crate::conn::http`'s rustls
//! connector), so that connections are kept alive and reused, and a name
//! is resolved (and a TLS handshake made) once per connection, not per
//! request.
//!
//! One POST, from taking a connection (or making one) to the end of the
//! body, gets one `timeout`: a row never takes longer than that.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// What the backend said about one row.
#[derive(Debug)]
pub enum Answer {
    /// 2xx.
    Accepted,
    /// The backend could not be reached (no connection, no handshake):
    /// it never saw the row, which is not charged a retry.
    Unreachable(String),
    /// 429, 5xx or no answer in time: try again, not before the given
    /// seconds (the backend's `Retry-After`, else 0).
    Later(f64, String),
    /// Any other status: the row is refused for good.
    Refused(String),
}

/// The longest `Retry-After` honoured (seconds); a larger or malformed
/// value is read as this or as absent.
const MAX_RETRY_AFTER: f64 = 300.0;

/// The most of an answer's body read (it is drained to keep the
/// connection reusable, never used).
const MAX_BODY: usize = 64 * 1024;

/// An idle connection is closed after this.
const IDLE: Duration = Duration::from_secs(60);

/// `Retry-After` in seconds (the delay form; an HTTP date is ignored).
pub fn retry_after(v: Option<&hyper::header::HeaderValue>) -> f64 {
    v.and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(0.0, |s| s.min(MAX_RETRY_AFTER))
}

/// The backend of one memory-sync service.
pub struct Backend {
    client: Client<crate::conn::http::Connector, Full<Bytes>>,
    uri: hyper::Uri,
    timeout: Duration,
}

impl Backend {
    /// A backend at `uri` (checked: `http://` or `https://`, no
    /// credentials; https trusts the system's roots and `cas`), each POST
    /// within `timeout`, up to `in_flight` at once (as many connections
    /// are kept).
    pub async fn new(
        uri: hyper::Uri,
        cas: &[std::path::PathBuf],
        timeout: Duration,
        in_flight: usize,
    ) -> Result<Backend, crate::conn::Error> {
        let connector = crate::conn::http::connector(&uri, cas, timeout).await?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(in_flight.max(1))
            .build(connector);
        Ok(Backend {
            client,
            uri,
            timeout,
        })
    }

    /// POSTs one payload with its idempotency key. The status decides; the
    /// body is drained within the same `timeout` (so that the connection
    /// can serve the next row) and never changes the answer.
    pub async fn post(&self, key: &str, body: String) -> Answer {
        let req = match hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("warden/", env!("CARGO_PKG_VERSION")),
            )
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return Answer::Refused(format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let res = self.client.request(req).await?;
            let status = res.status();
            let after = retry_after(res.headers().get(hyper::header::RETRY_AFTER));
            // The body only keeps the connection reusable; a body too
            // large or broken closes the connection, not the answer.
            let _ = http_body_util::Limited::new(res.into_body(), MAX_BODY)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>((status, after))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Answer::Later(
                0.0,
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
            Ok(Err(e)) if e.is_connect() => Answer::Unreachable(format!(
                "cannot connect to {}: {}",
                self.uri.authority().map_or("", |a| a.as_str()),
                crate::conn::http::error_words(&e, "tls_ca")
            )),
            Ok(Err(e)) => Answer::Later(
                0.0,
                format!(
                    "HTTP request failed: {}",
                    crate::conn::http::error_words(&e, "tls_ca")
                ),
            ),
            Ok(Ok((status, after))) => {
                if status.is_success() {
                    Answer::Accepted
                } else if status.as_u16() == 429 || status.is_server_error() {
                    Answer::Later(after, format!("HTTP {status}"))
                } else {
                    Answer::Refused(format!("HTTP {status}"))
                }
            }
        }
    }
}
