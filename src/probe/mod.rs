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
            Endpoint::Http(u) => http(u).await,
            Endpoint::Postgres(d) => postgres(d).await,
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

/// An HTTP/1.1 GET answers with a 2xx status.
pub async fn http(url: &HttpUrl) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;

    let uri: hyper::Uri = url.0.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri
        .host()
        .ok_or("URL has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(conn);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or(host);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("warden/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP request failed: {e}"));
    driver.abort();
    let status = res?.status();
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
        P::Http(u) => Endpoint::Http(u.clone()),
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
