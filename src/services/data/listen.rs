//! The insert trigger's notifications, on a session of their own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::*;
use crate::config::types::PgTarget;
use crate::services::ServiceError;

/// The insert trigger's notifications, on a session of their own (the
/// protocol needs one: `LISTEN` belongs to a session). When that session
/// ends (a restart of PostgreSQL), it is made again in the background,
/// 0.5 s doubling to 30 s between attempts; meanwhile the worker falls
/// back on its poll. Each notification wakes [`Listener::wake`], and so
/// does each new session (a notification may have been missed).
///
/// A worker that has rows without pause needs no wake-up: it stops
/// hearing ([`Hearing::stop`], an `UNLISTEN`), so that PostgreSQL does not
/// deliver, nor warden read, a notification per producer's commit, and
/// hears again ([`Listener::resume`]) before it waits, then looks for
/// rows once more: a row committed while it was deaf is found by that
/// look, and one committing meanwhile is notified (`LISTEN` hears every
/// notification not yet committed when it takes effect).
pub struct Listener {
    pub wake: Arc<Notify>,
    hearing: Hearing,
    /// The latest [`Wish`] generation the session has confirmed listening
    /// for.
    heard: watch::Receiver<u64>,
    _task: AbortOnDrop,
}

/// Turns a [`Listener`]'s hearing off (cheap to clone and call).
#[derive(Clone)]
pub struct Hearing(Arc<watch::Sender<Wish>>);

/// What the worker wants of the listening session: to hear or not, and
/// the generation of its latest wish to hear (so that a confirmation is
/// never one of an earlier wish, with an `UNLISTEN` still on its way).
#[derive(Clone, Copy)]
struct Wish {
    on: bool,
    generation: u64,
}

impl Hearing {
    /// Stops hearing (an `UNLISTEN`, sent in the background).
    pub fn stop(&self) {
        self.0
            .send_if_modified(|w| std::mem::replace(&mut w.on, false));
    }
}

impl Listener {
    /// The handle that stops hearing.
    pub fn hearing(&self) -> Hearing {
        self.hearing.clone()
    }

    /// Whether hearing was stopped ([`Hearing::stop`]).
    pub fn stopped(&self) -> bool {
        !self.hearing.0.borrow().on
    }

    /// Hears again after [`Hearing::stop`]: true once the session listens,
    /// false after `within` (the session is being made again: the worker
    /// falls back on its poll meanwhile).
    pub async fn resume(&mut self, within: Duration) -> bool {
        let mut generation = 0;
        self.hearing.0.send_modify(|w| {
            w.on = true;
            w.generation += 1;
            generation = w.generation;
        });
        tokio::time::timeout(within, self.heard.wait_for(|h| *h >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Listens on `channel_quoted` (a quoted identifier). The first session
/// is made here: an error means PostgreSQL cannot be reached at start.
///
/// Every `check`, the session must answer a round trip within the
/// target's `network` limit: one behind a dead network (no reset ever
/// came) is dropped and made again, rather than leaving the worker on its
/// poll without a word.
pub async fn listen(
    target: &PgTarget,
    channel_quoted: &str,
    check: Duration,
) -> Result<Listener, ServiceError> {
    let wake = Arc::new(Notify::new());
    let network = target.limits.network.unwrap_or(Duration::from_secs(30));
    let first = listen_within(network, target, channel_quoted, &wake).await?;
    let (want, mut wanted) = watch::channel(Wish {
        on: true,
        generation: 0,
    });
    let (heard_tx, heard) = watch::channel(0u64);
    let task = {
        let (target, channel, wake) = (target.clone(), channel_quoted.to_string(), wake.clone());
        tokio::spawn(async move {
            let (mut client, mut driver) = first;
            loop {
                // The session listens (as made): LISTEN or UNLISTEN as the
                // worker wants, then wait for a change, the session's end
                // or the next check.
                let mut listening = true;
                loop {
                    let Wish { on, generation } = *wanted.borrow_and_update();
                    if on == listening && on {
                        heard_tx.send_replace(generation);
                    }
                    if on != listening {
                        let sql = if on {
                            format!("LISTEN {channel}")
                        } else {
                            format!("UNLISTEN {channel}")
                        };
                        match tokio::time::timeout(network, client.batch_execute(&sql)).await {
                            Ok(Ok(())) => {
                                listening = on;
                            }
                            _ => {
                                tracing::warn!(within = ?network, "the listening session did not answer; making it again");
                                break;
                            }
                        }
                        continue;
                    }
                    tokio::select! {
                        _ = &mut driver.0 => break,
                        r = wanted.changed() => if r.is_err() {
                            return; // the worker is gone
                        },
                        _ = tokio::time::sleep(check) => {
                            let alive = tokio::time::timeout(network, client.simple_query("SELECT 1")).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                tracing::warn!(within = ?network, "the listening session did not answer; making it again");
                                break;
                            }
                        }
                    }
                }
                drop(client);
                drop(driver);
                wake.notify_one();
                let mut attempt = 0u32;
                (client, driver) = loop {
                    tokio::time::sleep(doubling(attempt, Duration::from_secs(30))).await;
                    match listen_within(network, &target, &channel, &wake).await {
                        Ok(session) => {
                            tracing::info!("listening for new rows again");
                            wake.notify_one();
                            break session;
                        }
                        Err(e) => {
                            if attempt == 0 {
                                tracing::warn!(error = %e, "cannot listen for new rows; polling meanwhile, trying again");
                            }
                            attempt += 1;
                        }
                    }
                };
            }
        })
    };
    Ok(Listener {
        wake,
        hearing: Hearing(Arc::new(want)),
        heard,
        _task: AbortOnDrop(task),
    })
}

/// [`listen_once`], given up after `network`.
async fn listen_within(
    network: Duration,
    target: &PgTarget,
    channel_quoted: &str,
    wake: &Arc<Notify>,
) -> Result<(tokio_postgres::Client, AbortOnDrop), ServiceError> {
    tokio::time::timeout(network, listen_once(target, channel_quoted, wake))
        .await
        .unwrap_or_else(|_| {
            Err(ServiceError(format!(
                "PostgreSQL: no answer within {} (network_timeout)",
                humantime::format_duration(network)
            )))
        })
}

/// One listening session: the client (kept, or the session closes) and
/// its driver, which wakes `wake` at each notification and ends with the
/// session.
async fn listen_once(
    target: &PgTarget,
    channel_quoted: &str,
    wake: &Arc<Notify>,
) -> Result<(tokio_postgres::Client, AbortOnDrop), ServiceError> {
    let (client, mut conn) = session(target).await?;
    let driver = {
        let wake = wake.clone();
        AbortOnDrop(tokio::spawn(async move {
            use tokio_postgres::AsyncMessage;
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %pg(e), "the listening session ended");
                        break;
                    }
                }
            }
        }))
    };
    client
        .batch_execute(&format!("LISTEN {channel_quoted}"))
        .await
        .map_err(pg)?;
    Ok((client, driver))
}
