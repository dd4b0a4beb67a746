//! Singletons: leadership of a service among several warden instances
//! sharing one PostgreSQL, held as `pg_advisory_lock` on a dedicated
//! session (made by `crate::conn`, with TLS as the DSN and `tls_ca` say).
//!
//! The session asks `pg_try_advisory_lock` first (leader at once, or
//! standby), then blocks in `pg_advisory_lock` until the leader's session
//! ends: takeover is immediate, without polling. If our own session ends,
//! leadership is lost and the task connects again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::types::PgTarget;

/// What the leadership task tells the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This instance holds the lock.
    Acquired,
    /// Another instance holds it; waiting.
    Standby,
    /// The session ended (or could not start): not the leader any more.
    Lost(String),
}

/// A stable 64-bit key for a service's lock (FNV-1a of `warden:NAME`), the
/// same on every instance and every version.
pub fn lock_key(service: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"warden:".iter().chain(service.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Runs until `cancel`: keeps trying to hold the lock of `service`, and
/// reports every change through `report`.
pub async fn hold(
    service: Arc<str>,
    target: PgTarget,
    report: mpsc::UnboundedSender<(Arc<str>, Leadership)>,
    cancel: CancellationToken,
) {
    let key = lock_key(&service);
    let send = |l: Leadership| report.send((service.clone(), l)).is_ok();
    let mut retry = Duration::from_millis(200);
    loop {
        let session = async {
            let (client, conn) = crate::conn::postgres::connect(&target).await.map_err(|e| {
                format!(
                    "cannot connect for the singleton lock: {}",
                    crate::config::secret::redact(&e.0)
                )
            })?;
            let conn = tokio::spawn(conn);
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(|e| format!("pg_try_advisory_lock: {e}"))?;
            let got: bool = row.get(0);
            if !got {
                if !send(Leadership::Standby) {
                    return Ok(());
                }
                client
                    .query_one("SELECT pg_advisory_lock($1)", &[&key])
                    .await
                    .map_err(|e| format!("pg_advisory_lock: {e}"))?;
            }
            if !send(Leadership::Acquired) {
                return Ok(());
            }
            // Hold the session (and the lock) until it ends.
            let ended = conn.await;
            drop(client);
            Err(match ended {
                Ok(Ok(())) => "the lock session was closed".to_string(),
                Ok(Err(e)) => format!("the lock session ended: {e}"),
                Err(e) => format!("the lock session task ended: {e}"),
            })
        };
        tokio::select! {
            r = session => match r {
                Ok(()) => return,
                Err(e) => {
                    let e = crate::config::secret::redact(&e);
                    tracing::warn!(service = %service, error = %e, "singleton lock lost or unavailable");
                    if !send(Leadership::Lost(e)) {
                        return;
                    }
                }
            },
            _ = cancel.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = cancel.cancelled() => return,
        }
        retry = (retry * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("relay"), lock_key("relay"));
        assert_ne!(lock_key("relay"), lock_key("replicator"));
        // Pinned: changing the key would let two versions lead at once.
        assert_eq!(
            lock_key("relay"),
            3_037_121_623_172_311_371,
            "FNV-1a 64 of warden:relay"
        );
    }
}
