//! Redis connections: `redis://` and Unix sockets through the redis
//! crate's own client; `rediss://` over a TLS stream made here (rustls,
//! the same trust as PostgreSQL's: the system's roots plus `tls_ca`), on
//! which the redis crate then speaks. (The crate's own rustls support
//! would replace the system's roots by the CA file rather than add it,
//! and read the system's roots again at every connection.)

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo};
use rustls::pki_types::ServerName;

use super::tls;
use super::{AbortOnDrop, Error};
use crate::config::dsn::split_redis;
use crate::config::types::RedisTarget;

/// Which setting names the CA of a Redis connection.
const CA_HINT: &str = "tls_ca";

/// How long connecting and an answer may take (`None`: the redis crate's
/// defaults).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// TCP connect, TLS handshake and the first exchange.
    pub connect: Option<Duration>,
    /// Each answer.
    pub response: Option<Duration>,
    /// How long a silent network may hold the connection: TCP keepalive
    /// probes and `TCP_USER_TIMEOUT` give up on a peer that stopped
    /// answering within it.
    pub network: Option<Duration>,
}

/// Keepalive probes and `TCP_USER_TIMEOUT` that give up on a silent
/// peer within `network`.
fn tcp_settings(network: Duration) -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let second = Duration::from_secs(1);
    redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time((network / 3).max(second))
                .with_interval((network / 6).max(second))
                .with_retries(3),
        )
        .set_user_timeout(network)
}

/// A Redis connection; the task that drives a TLS one ends with it.
pub struct Connection {
    pub conn: MultiplexedConnection,
    _driver: Option<AbortOnDrop>,
}

/// Connects to `target` (`rediss://`: over TLS, the certificate and host
/// name verified unless the URL ends in `#insecure`).
pub async fn connect(target: &RedisTarget, timeouts: Timeouts) -> Result<Connection, Error> {
    let parts = split_redis(target.url.0.expose()).map_err(Error)?;
    let mut config = AsyncConnectionConfig::new();
    if let Some(t) = timeouts.connect {
        config = config.set_connection_timeout(Some(t));
    }
    if let Some(t) = timeouts.response {
        config = config.set_response_timeout(Some(t));
    }
    let bad_url = |e: redis::RedisError| {
        Error(format!(
            "bad Redis URL: {}",
            crate::config::secret::redact(&e.to_string())
        ))
    };
    let Some(verify) = parts.verify else {
        let mut info = parts
            .driver
            .as_str()
            .into_connection_info()
            .map_err(bad_url)?;
        if let Some(network) = timeouts.network {
            info = info.set_tcp_settings(tcp_settings(network));
        }
        let client = redis::Client::open(info).map_err(bad_url)?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| Error(e.to_string()))?;
        return Ok(Connection {
            conn,
            _driver: None,
        });
    };
    let info = parts
        .driver
        .as_str()
        .into_connection_info()
        .map_err(bad_url)?;
    let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        return Err(Error("rediss:// needs a host and a port".into()));
    };
    let cas: Vec<_> = target.tls_ca.iter().map(|c| c.0.clone()).collect();
    let tls_config = tls::client_config(verify, &cas).await.map_err(Error)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|_| Error(format!("{host:?} is not a host name TLS can verify")))?;
    let open = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Error(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if let Some(network) = timeouts.network {
            let settings = tcp_settings(network);
            let socket = redis::io::tcp::socket2::SockRef::from(&tcp);
            if let Some(keepalive) = settings.keepalive() {
                let _ = socket.set_tcp_keepalive(keepalive);
            }
            let _ = socket.set_tcp_user_timeout(settings.user_timeout());
        }
        let stream = tokio_rustls::TlsConnector::from(tls_config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                Error(
                    tls::describe(&e, CA_HINT)
                        .unwrap_or_else(|| format!("TLS handshake with {host}:{port} failed: {e}")),
                )
            })?;
        MultiplexedConnection::new_with_config(info.redis_settings(), stream, config)
            .await
            .map_err(|e| Error(e.to_string()))
    };
    let (conn, driver) = match timeouts.connect {
        Some(t) => tokio::time::timeout(t, open).await.map_err(|_| {
            Error(format!(
                "no connection within {}",
                humantime::format_duration(t)
            ))
        })??,
        None => open.await?,
    };
    Ok(Connection {
        conn,
        _driver: Some(AbortOnDrop(tokio::spawn(driver))),
    })
}
