//! The supervisor's side of singletons: it asks for the lock when a
//! singleton may start (the lock itself is held by [`super::leader`]), and
//! follows what the lock's task reports.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::events::RestartReason;

use super::leader;
use super::state::{Event, State};
use super::{AfterStop, Msg, Supervisor, Unit};
use crate::config::ServiceSpec;
use crate::config::types::PgTarget;
use crate::services::ServiceError;

/// A unit that is forgotten (removed by a reload) takes its lock and its
/// schedule timers with it, whichever path removed it.
impl Drop for Unit {
    fn drop(&mut self) {
        self.release_leadership();
        self.schedule_cancel.cancel();
    }
}

impl Unit {
    /// Gives up the singleton lock (its session ends, so another instance
    /// takes over).
    pub(super) fn release_leadership(&mut self) {
        if let Some((c, _)) = self.leadership.take() {
            c.cancel();
        }
        self.leader = false;
    }
}

impl Supervisor {
    /// The database a singleton takes its lock in: its kind's, or
    /// `[warden] postgres`.
    pub(super) fn lock_database(&self, spec: &ServiceSpec) -> Option<PgTarget> {
        singleton_dsn(spec).or_else(|| self.coordination.clone())
    }

    /// Whether a singleton may start now: it holds its lock in the
    /// database its spec names. A lock held in another one (a reload moved
    /// it; the run that held it has ended) is given up first, so that it
    /// is sought where the other instances now look.
    pub(super) fn may_lead(&mut self, name: &str) -> bool {
        let want = self.lock_database(&self.units[name].spec);
        let u = &mut self.units[name];
        if u.leadership
            .as_ref()
            .is_some_and(|(_, db)| Some(db) != want.as_ref())
        {
            tracing::info!(service = %name, "its lock moved to another database; giving up the old one");
            u.release_leadership();
        }
        u.leader
    }

    /// `[warden] postgres` changed: every singleton that runs on a lock in
    /// another database than its own now restarts (as a changed service:
    /// its dependents first), and takes the lock where its spec now says
    /// before it runs again. Those that do not run give theirs up when
    /// they are next about to start ([`Supervisor::may_lead`]).
    pub(super) fn move_locks(&mut self) -> Vec<String> {
        let moved: Vec<Arc<str>> = self
            .units
            .values()
            .filter(|u| {
                matches!(u.state, State::Starting | State::Ready)
                    && u.next_spec.is_none()
                    && u.leadership
                        .as_ref()
                        .is_some_and(|(_, db)| Some(db) != self.lock_database(&u.spec).as_ref())
            })
            .map(|u| u.name.clone())
            .collect();
        for name in &moved {
            tracing::info!(service = %name, "its lock moved to another database; restarting");
            let u = &mut self.units[&**name];
            u.next_spec = Some(u.spec.clone());
            self.restarting(name, RestartReason::Reload);
            self.restart_with_dependents(name, AfterStop::Replace);
        }
        moved.iter().map(|n| n.to_string()).collect()
    }

    /// A singleton wants to run: make sure a task is after its lock.
    pub(super) fn seek_leadership(&mut self, name: &str) {
        let u = &self.units[name];
        if u.leadership.is_some() {
            return;
        }
        let Some(dsn) = self.lock_database(&u.spec) else {
            // Validation requires a database; be safe all the same.
            let _ = self.tx.send(Msg::Ended {
                name: u.name.clone(),
                generation: u.generation,
                result: Err(ServiceError(
                    "a singleton needs a PostgreSQL database for its lock".into(),
                )),
            });
            return;
        };
        let cancel = CancellationToken::new();
        tokio::spawn((self.locker)(
            u.name.clone(),
            dsn.clone(),
            self.leader_tx.clone(),
            cancel.clone(),
        ));
        self.units[name].leadership = Some((cancel, dsn));
    }

    /// The lock's task reports: the leader runs the singleton, a standby
    /// waits, and losing the lock stops the run into standby (two
    /// instances must never run it at once).
    pub(super) fn handle_leadership(&mut self, name: &str, l: leader::Leadership) {
        let Some(u) = self.units.get_mut(name) else {
            return;
        };
        if u.leadership.is_none() {
            return; // released since; a stale report
        }
        match l {
            leader::Leadership::Acquired => {
                tracing::info!(service = %name, "leader: this instance runs the singleton");
                u.leader = true;
            }
            leader::Leadership::Standby => {
                tracing::info!(service = %name, "standby: another instance runs the singleton");
                u.leader = false;
                if u.state == State::Pending {
                    self.transition(name, Event::Standby);
                }
            }
            leader::Leadership::Lost(why) => {
                u.leader = false;
                u.last_error = Some(format!("singleton lock lost: {why}"));
                match u.state {
                    State::Starting | State::Ready => self.stop_unit(name, AfterStop::Standby),
                    State::Backoff => {
                        self.units[name].generation += 1;
                        self.transition(name, Event::Stop);
                        self.transition(name, Event::Standby);
                    }
                    State::Pending => {
                        self.transition(name, Event::Standby);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The database a singleton takes its lock in: the one its kind's
/// settings name (a kind without one uses `[warden] postgres`).
fn singleton_dsn(spec: &ServiceSpec) -> Option<PgTarget> {
    spec.kind.leadership()
}
