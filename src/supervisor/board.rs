//! What the outside reads of the supervisor: one status entry per service,
//! kept up to date entry by entry, a running tally of states, and a version
//! that watchers wait on.
//!
//! The loop changes only the entries of the services a message touched, so
//! that what it does per message does not grow with the number of
//! services. Readers pay for what they read: the API copies the entries it
//! answers with, sd_notify reads the tally.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use indexmap::IndexMap;
use tokio::sync::watch;

use super::ServiceStatus;
use super::state::State;

/// How many services are in each state, and how many critical ones are
/// ready: what `STATUS=` and `READY=1` need, kept as entries change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    by_state: [usize; State::ALL.len()],
    critical: usize,
    critical_ready: usize,
}

impl Tally {
    /// Services in state `s`.
    pub fn count(&self, s: State) -> usize {
        self.by_state[s as usize]
    }

    /// Every service.
    pub fn total(&self) -> usize {
        self.by_state.iter().sum()
    }

    /// Services something runs for (starting, ready or stopping).
    pub fn running(&self) -> usize {
        self.count(State::Starting) + self.count(State::Ready) + self.count(State::Stopping)
    }

    /// Every critical service is ready (or, a oneshot, completed); one
    /// the profile disabled is not waited for.
    pub fn critical_ready(&self) -> bool {
        self.critical_ready == self.critical
    }

    pub(super) fn add(&mut self, state: State, critical: bool) {
        self.by_state[state as usize] += 1;
        if critical && state != State::Disabled {
            self.critical += 1;
            if state.is_ready() {
                self.critical_ready += 1;
            }
        }
    }

    pub(super) fn remove(&mut self, state: State, critical: bool) {
        self.by_state[state as usize] -= 1;
        if critical && state != State::Disabled {
            self.critical -= 1;
            if state.is_ready() {
                self.critical_ready -= 1;
            }
        }
    }

    /// The tally of a list of statuses, counted afresh.
    pub fn of(status: &[ServiceStatus]) -> Tally {
        let mut t = Tally::default();
        for s in status {
            t.add(s.state, s.critical);
        }
        t
    }
}

#[derive(Default)]
struct Entries {
    by_name: IndexMap<Arc<str>, ServiceStatus>,
    tally: Tally,
}

impl Entries {
    fn put(&mut self, name: Arc<str>, status: ServiceStatus) -> bool {
        let (state, critical) = (status.state, status.critical);
        match self.by_name.get_mut(&name) {
            Some(old) if *old == status => return false,
            Some(old) => {
                self.tally.remove(old.state, old.critical);
                *old = status;
            }
            None => {
                self.by_name.insert(name, status);
            }
        }
        self.tally.add(state, critical);
        true
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.by_name.shift_remove(name) {
            Some(old) => {
                self.tally.remove(old.state, old.critical);
                true
            }
            None => false,
        }
    }
}

/// One change to the board.
pub(super) enum Change {
    Put(Arc<str>, ServiceStatus),
    Remove(Arc<str>),
}

/// The shared status of every service (see the module's words).
#[derive(Default)]
pub struct Board {
    entries: RwLock<Entries>,
}

impl Board {
    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies changes; whether any changed what a reader sees.
    pub(super) fn apply(&self, changes: impl IntoIterator<Item = Change>) -> bool {
        let mut e = self.write();
        let mut changed = false;
        for c in changes {
            changed |= match c {
                Change::Put(name, status) => e.put(name, status),
                Change::Remove(name) => e.remove(&name),
            };
        }
        changed
    }

    /// Replaces every entry (in this order); whether anything changed.
    pub(super) fn rebuild(&self, all: Vec<(Arc<str>, ServiceStatus)>) -> bool {
        let mut e = self.write();
        let same = e.by_name.len() == all.len()
            && e.by_name
                .iter()
                .zip(&all)
                .all(|((a, s), (b, t))| a == b && s == t);
        if same {
            return false;
        }
        let mut fresh = Entries::default();
        for (name, status) in all {
            fresh.put(name, status);
        }
        *e = fresh;
        true
    }

    /// A copy of every entry, in the registry's order.
    pub fn snapshot(&self) -> Vec<ServiceStatus> {
        self.read().by_name.values().cloned().collect()
    }

    /// A copy of one service's entry.
    pub fn get(&self, name: &str) -> Option<ServiceStatus> {
        self.read().by_name.get(name).cloned()
    }

    /// How many services are in each state.
    pub fn tally(&self) -> Tally {
        self.read().tally
    }
}

/// Waits for changes of the status and reads it (what a `watch` channel of
/// the whole list was, without copying the list on every change).
#[derive(Clone)]
pub struct StatusWatch {
    pub(super) board: Arc<Board>,
    pub(super) version: watch::Receiver<u64>,
}

impl StatusWatch {
    /// Resolves at the next change (an error once the supervisor has
    /// ended).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.version.changed().await
    }

    /// The status now, marking it seen.
    pub fn borrow_and_update(&mut self) -> Arc<Vec<ServiceStatus>> {
        self.version.borrow_and_update();
        Arc::new(self.board.snapshot())
    }

    /// The tally now, marking it seen.
    pub fn tally_and_update(&mut self) -> Tally {
        self.version.borrow_and_update();
        self.board.tally()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn status(name: &str, state: State, critical: bool) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            kind: "mock".into(),
            state,
            critical,
            restarts: 0,
            last_error: None,
            since: Instant::now(),
            schedules: Vec::new(),
            details: Default::default(),
            logs: crate::services::Logs::new(10),
            history: Default::default(),
        }
    }

    fn put(b: &Board, s: ServiceStatus) -> bool {
        b.apply([Change::Put(Arc::from(s.name.as_str()), s)])
    }

    #[test]
    fn the_tally_follows_every_change_and_agrees_with_a_count() {
        let b = Board::default();
        assert!(b.tally().critical_ready(), "nothing to wait for");
        assert!(put(&b, status("db", State::Starting, true)));
        assert!(put(&b, status("web", State::Pending, false)));
        assert!(!b.tally().critical_ready());
        assert_eq!(b.tally().running(), 1);
        let mut db = status("db", State::Ready, true);
        assert!(put(&b, db.clone()));
        assert!(b.tally().critical_ready());
        // The same entry again changes nothing a reader sees.
        db.since = b.get("db").unwrap().since;
        db.logs = b.get("db").unwrap().logs;
        db.details = b.get("db").unwrap().details;
        db.history = b.get("db").unwrap().history;
        assert!(!put(&b, db));
        assert!(put(&b, status("job", State::Completed, true)));
        assert!(b.tally().critical_ready(), "a completed oneshot counts");
        assert_eq!(b.tally(), Tally::of(&b.snapshot()));
        assert!(b.apply([Change::Remove(Arc::from("db"))]));
        assert!(!b.apply([Change::Remove(Arc::from("db"))]), "already gone");
        assert_eq!(b.tally().total(), 2);
        assert_eq!(b.tally().count(State::Pending), 1);
        assert_eq!(b.tally(), Tally::of(&b.snapshot()));
        let names: Vec<String> = b.snapshot().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["web", "job"], "the registry's order is kept");
    }

    #[test]
    fn a_disabled_critical_service_is_not_waited_for() {
        let b = Board::default();
        put(&b, status("api", State::Ready, true));
        put(&b, status("off", State::Disabled, true));
        assert!(b.tally().critical_ready());
        put(&b, status("off", State::Pending, true));
        assert!(!b.tally().critical_ready(), "enabled again: waited for");
        put(&b, status("off", State::Disabled, true));
        assert!(b.tally().critical_ready());
    }

    #[test]
    fn a_rebuild_replaces_every_entry_and_says_whether_anything_changed() {
        let b = Board::default();
        put(&b, status("a", State::Ready, false));
        let a = b.get("a").unwrap();
        assert!(!b.rebuild(vec![(Arc::from("a"), a.clone())]));
        let z = status("z", State::Failed, true);
        assert!(b.rebuild(vec![(Arc::from("z"), z), (Arc::from("a"), a)]));
        let names: Vec<String> = b.snapshot().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["z", "a"]);
        assert_eq!(b.tally(), Tally::of(&b.snapshot()));
        assert_eq!(b.tally().count(State::Failed), 1);
        assert!(!b.tally().critical_ready());
    }
}
