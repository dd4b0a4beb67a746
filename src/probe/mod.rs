//! One-shot checks of endpoints: a TCP connect, an HTTP GET answering 2xx,
//! a PostgreSQL connection running `SELECT 1`, a Redis `PING` (both
//! connected by `crate::conn`, TLS included).
//!
//! `warden check --connect` uses them once per endpoint; the supervisor's
//! readiness and liveness probes are built on the same functions.

use std::time::{Duration, Instant};

use crate::config::Endpoint;
use crate::config::types::{HostPort, HttpUrl, PgTarget, RedisTarget};

/// The outcome of one check: how long it took, and why it failed. Error
/// texts never contain a password.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub elapsed: Duration,
    pub result: Result<(), String>,
}

/// Checks an endpoint once, within `timeout`.
pub async fn check(endpoint: &Endpoint, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let fut = async {
        match endpoint {
            Endpoint::Tcp(h) => tcp(h).await,
            Endpoint::Http(u, ca) => http(u, ca.as_ref()).await,
            Endpoint::Postgres(d) => postgres(d).await,
            Endpoint::PostgresTable(d, needs) => postgres_table(d, needs).await,
            Endpoint::Redis(d) => redis(d).await,
        }
    };
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|e| crate::config::secret::redact(&e)),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    };
    Outcome {
        elapsed: started.elapsed(),
        result,
    }
}

/// A TCP connection is accepted.
pub async fn tcp(h: &HostPort) -> Result<(), String> {
    tokio::net::TcpStream::connect((h.host.as_str(), h.port))
        .await
        .map(drop)
        .map_err(|e| format!("cannot connect to {h}: {e}"))
}

/// An HTTP/1.1 GET answers with a 2xx status, over TLS for `https://`
/// (verified against the system's roots and `ca`, for the URL's host
/// name), on a connection of its own.
pub async fn http(url: &HttpUrl, ca: Option<&crate::config::types::CaFile>) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;

    let uri: hyper::Uri = url.0.parse().map_err(|e| format!("bad URL: {e}"))?;
    // The caller's timeout bounds the whole check; the connector's own
    // is only a backstop.
    let cas: Vec<_> = ca.iter().map(|c| c.0.clone()).collect();
    let connector = crate::conn::http::connector(&uri, &cas, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let client: Client<_, Empty<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let req = hyper::Request::get(uri.clone())
        .header(
            hyper::header::USER_AGENT,
            concat!("warden/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    // Host and port only: the authority may hold credentials.
    let what = match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    // Where the CA of the server's certificate can be named.
    let hint = if ca.is_some() {
        "tls_ca"
    } else {
        "SSL_CERT_FILE"
    };
    let status = match client.request(req).await {
        Ok(res) => res.status(),
        Err(e) if e.is_connect() => {
            return Err(format!(
                "cannot connect to {what}: {}",
                crate::conn::http::error_words(&e, hint)
            ));
        }
        Err(e) => {
            return Err(format!(
                "HTTP request failed: {}",
                crate::conn::http::error_words(&e, hint)
            ));
        }
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    }
}

/// PostgreSQL accepts a connection (TLS as the DSN and `tls_ca` say) and
/// answers `SELECT 1`.
pub async fn postgres(target: &PgTarget) -> Result<(), String> {
    let (client, conn) = crate::conn::postgres::connect(target)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    let driver = tokio::spawn(conn);
    let r = client
        .simple_query("SELECT 1")
        .await
        .map(drop)
        .map_err(|e| format!("SELECT 1 failed: {}", crate::conn::postgres::error_text(&e)));
    drop(client);
    driver.abort();
    r
}

/// The table of `needs` can be used as its service needs it (see
/// [`table`]).
pub async fn postgres_table(
    target: &PgTarget,
    needs: &crate::config::TableNeeds,
) -> Result<(), String> {
    let (client, conn) = crate::conn::postgres::connect(target)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    let driver = tokio::spawn(conn);
    let r = table(&client, needs).await;
    drop(client);
    driver.abort();
    r
}

/// Reads the table's columns and says what is wrong with them for its
/// service ([`crate::config::TableNeeds::problems`]), every problem in one
/// error.
pub async fn table(
    client: &tokio_postgres::Client,
    needs: &crate::config::TableNeeds,
) -> Result<(), String> {
    let words = |e: tokio_postgres::Error| {
        format!(
            "cannot read table {}: {}",
            needs.table,
            crate::conn::postgres::error_text(&e)
        )
    };
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&needs.table])
        .await
        .map_err(words)?
        .get(0);
    let found: Option<Vec<(String, String)>> = if exists {
        Some(
            client
                .query(
                    "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
                     WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                    &[&needs.table],
                )
                .await
                .map_err(words)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
        )
    } else {
        None
    };
    let problems = needs.problems(found.as_deref());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Redis answers `PING` (over TLS for `rediss://`).
pub async fn redis(target: &RedisTarget) -> Result<(), String> {
    let mut c = crate::conn::redis::connect(target, Default::default())
        .await
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut c.conn)
        .await
        .map_err(|e| format!("PING failed: {e}"))?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {pong:?}"))
    }
}

/// Runs one attempt of a probe check that needs nothing from the service
/// (tcp, http, exec, postgres, redis), within `timeout`. `log` and `notify`
/// are watched by the process itself and answer an error here.
pub async fn attempt(check: &crate::config::ProbeCheck, timeout: Duration) -> Result<(), String> {
    use crate::config::ProbeCheck as P;
    let endpoint = match check {
        P::Tcp(h) => Endpoint::Tcp(h.clone()),
        P::Http(u) => Endpoint::Http(u.clone(), None),
        P::Postgres(d) => Endpoint::Postgres(d.clone()),
        P::Redis(d) => Endpoint::Redis(d.clone()),
        P::Exec(cmd) => {
            return match tokio::time::timeout(timeout, exec(&cmd.0)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "{} did not finish within {}",
                    cmd.0[0],
                    humantime::format_duration(timeout)
                )),
            };
        }
        P::Log(_) | P::Notify => {
            return Err(format!(
                "a {} probe is watched by its process",
                check.name()
            ));
        }
    };
    check_endpoint(&endpoint, timeout).await
}

/// [`attempt`], timed and counted in the probe metrics under `service`.
pub async fn measured(
    service: &str,
    role: crate::metrics::ProbeRole,
    check: &crate::config::ProbeCheck,
    timeout: Duration,
) -> Result<(), String> {
    let began = std::time::Instant::now();
    let r = attempt(check, timeout).await;
    crate::metrics::probed(service, role, began.elapsed(), r.is_ok());
    r
}

/// Runs `one attempt` of an endpoint check.
async fn check_endpoint(endpoint: &Endpoint, timeout: Duration) -> Result<(), String> {
    check(endpoint, timeout).await.result
}

/// Runs a command (through the one reaper) and succeeds when it exits 0.
/// If the attempt is abandoned (timeout), the command's process group is
/// killed.
pub async fn exec(argv: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let reaper =
        crate::sys::reaper::Reaper::get().map_err(|e| format!("cannot watch children: {e}"))?;
    let mut cmd = std::process::Command::new(&argv[0]);
    // A check is a child like any other: no warden or secret variables.
    crate::sys::env::scrub(&mut cmd, None);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let (child, status) = reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    let guard = crate::sys::GroupGuard::new(child.id() as i32);
    let status = status
        .await
        .map_err(|_| "the reaper went away".to_string())?;
    guard.disarm_and_kill_rest();
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} {status}", argv[0]))
    }
}
