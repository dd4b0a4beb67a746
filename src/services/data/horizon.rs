//! Where a claim starts scanning: the claim's lower bound on `id`.
//!
//! A claim reads the `pending` index in `id` order. Every row it moves on
//! leaves a dead index entry behind, and while a transaction anywhere in
//! the database holds vacuum back (a long report, a backup, a replica's
//! feedback) those entries stay and cannot even be marked dead. A claim
//! from the start of the index walks all of them: its cost grows with
//! every row ever relayed, and the queue slows to a crawl. Scanning from
//! a lower bound (`id >= low`) walks only the live end.
//!
//! The bound must never pass a row that can still become due:
//! - a row inserted by a transaction that has not committed yet (its id is
//!   lower than rows already relayed). A candidate bound found by a claim
//!   is paired with the `xmax` of the claim's own snapshot, read in the
//!   claim's statement (every transaction whose rows that claim could not
//!   see has a transaction id below it), and becomes the bound only at a
//!   later claim whose own snapshot's `xmin` is past that `xmax`: that
//!   claim saw every one of those rows, from a bound below them, and took
//!   them (a full claim that stopped short of the candidate leaves it
//!   waiting). A snapshot read apart, even just after the claim, could see
//!   a commit the claim had not, and let the bound pass a row no claim
//!   had seen. Transactions without a transaction id (reads, reports:
//!   those that hold vacuum back) never hold the bound. Nor, once the
//!   bound is held ([`Horizon::held`]: a candidate waited through a few
//!   claims), do writers that hold no lock on the table or on its `id`
//!   sequence (a batch job writing elsewhere): the claim then answers the
//!   oldest running transaction that holds one, in place of its
//!   snapshot's `xmin`;
//! - a row this worker returned to `pending` (released, or a retry not
//!   yet due): the bound goes back to it, and stays at or below a retry
//!   until its time has come and gone;
//! - anything else: a sweep from the start of the index, every
//!   [`Horizon::sweep_every`], finds it, and when the sweep claims rows
//!   below the bound, the bound goes back to them, so the claims after it
//!   drain that range at full speed (also when it claimed fewer than it
//!   asked for: after a sequence reset, new rows come there). That covers
//!   another worker's
//!   released rows or retries, a lease that ran out, a claim forgotten by
//!   a crash, a row replayed or written by hand, and ids handed out out
//!   of commit order where the transaction id says nothing (a sequence
//!   with `CACHE` above 1, ids allocated in blocks by an ORM, a
//!   `nextval()` long before the insert: taking an id assigns no
//!   transaction id). Such rows wait for the next sweep, at most 5 s.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How often a claim scans the whole table and expired leases are
/// reaped: a quarter of the lease, between 0.5 s and 5 s.
pub fn sweep_every(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// The claim's lower bound and what moves it.
#[derive(Debug)]
pub struct Horizon {
    /// Claims scan rows with `id >= low`.
    low: i64,
    /// Candidate bounds, each with the `xmax` of the snapshot of the
    /// claim that found it, oldest first.
    waiting: VecDeque<(i64, i64)>,
    /// Rows this worker gave a retry time: id → when it is due.
    retries: BTreeMap<i64, Instant>,
    /// When the next claim scans from the start.
    next_sweep: Instant,
    /// How often a claim scans from the start.
    sweep_every: Duration,
    /// Claims the oldest candidate has waited through (see
    /// [`Horizon::held`]).
    front_waits: u32,
    /// Whether the claim under way is a sweep (only a sweep brings the
    /// bound back to rows below it: a retry claimed alone must not drag
    /// the claims after it through the range the bound skips).
    sweeping: bool,
}

/// The start of every table: the lowest `bigint`. Any id may be in use
/// (rows written with negative ids, a sequence that starts at its
/// minimum), and a sweep must find them all.
pub const START: i64 = i64::MIN;

/// How long a retry keeps the bound at its row after it is due: by then
/// this worker or another one has claimed it (a sweep finds it otherwise).
const RETRY_GRACE: Duration = Duration::from_secs(2);

/// How many retries the bound tracks; past that it stays at the lowest.
const MAX_TRACKED_RETRIES: usize = 100_000;

/// A sweep taking `d` is followed by the next one `d × SWEEP_SHARE` after
/// it at the soonest ([`Horizon::swept`]).
pub const SWEEP_SHARE: u32 = 20;

/// The longest a slow sweep puts off the next one.
const MAX_SWEEP_SPACING: Duration = Duration::from_secs(60);

/// Claims a candidate waits through before the bound counts as held
/// ([`Horizon::held`]).
pub const HELD_AFTER: u32 = 4;

/// How many candidates wait for their transactions; past that the last
/// two merge (the higher bound behind the later `xmax`: later, never
/// wrong). A writer held open for an hour keeps every candidate waiting.
const MAX_WAITING: usize = 1024;

impl Horizon {
    /// A bound at the start of the table; the first claim sweeps.
    pub fn new(sweep_every: Duration, now: Instant) -> Horizon {
        Horizon {
            low: START,
            waiting: VecDeque::new(),
            retries: BTreeMap::new(),
            next_sweep: now,
            sweep_every,
            front_waits: 0,
            sweeping: false,
        }
    }

    /// Whether the next claim is a sweep (and the round reaps expired
    /// leases): its time has come.
    pub fn sweep_due(&self, now: Instant) -> bool {
        now >= self.next_sweep
    }

    /// The lower bound of the next claim: [`START`] for a sweep (which it then
    /// counts as done).
    pub fn claim_from(&mut self, now: Instant) -> i64 {
        self.retries.retain(|_, due| *due + RETRY_GRACE > now);
        self.sweeping = self.sweep_due(now);
        if self.sweeping {
            self.next_sweep = now + self.sweep_every;
            return START;
        }
        // Only retries that are due hold the claims back; one not due
        // yet only keeps the bound from passing it (see `claimed`).
        let due = self
            .retries
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(id, _)| *id)
            .next();
        match due {
            Some(first) => self.low.min(first),
            None => self.low,
        }
    }

    /// A claim took rows `ids` (any order), as its own snapshot saw the
    /// table: `xmin`, the oldest transaction then running, and `xmax`, the
    /// next to be assigned (read in the claim's statement).
    ///
    /// Candidates whose transactions had all ended when this claim's
    /// snapshot was taken become the bound: this claim saw their rows, from
    /// a bound below them, and took them. A `full` claim (as many rows as
    /// it asked for) may have stopped short of a candidate: that one waits
    /// for a claim that went past it.
    ///
    /// Then this claim's own candidate, past its highest row, waits for
    /// the transactions this snapshot could not see. A claim whose rows
    /// lie below the bound (a sweep found them: ids handed out in blocks,
    /// a replay, a sequence started again) brings the bound back to just
    /// past them: more may come there, and the claims after it go on from
    /// there (a sweep only: see [`Horizon::claim_from`]). The bound never
    /// passes a retry this worker tracks.
    pub fn claimed(&mut self, ids: &[i64], full: bool, xmin: i64, xmax: i64) {
        for id in ids {
            self.retries.remove(id);
        }
        let top = ids.iter().max().copied();
        if let Some(top) = top
            && top < self.low
            && std::mem::take(&mut self.sweeping)
        {
            self.low = top.saturating_add(1);
            self.waiting.clear();
        }
        let reached = match (full, top) {
            (false, _) => i64::MAX,
            (true, Some(top)) => top.saturating_add(1),
            (true, None) => i64::MIN,
        };
        let mut moved = false;
        while let Some(&(candidate, after)) = self.waiting.front() {
            if xmin < after || candidate > reached {
                break;
            }
            self.low = self.low.max(candidate);
            self.waiting.pop_front();
            moved = true;
        }
        self.front_waits = match (moved, self.waiting.is_empty()) {
            (false, false) => self.front_waits.saturating_add(1),
            _ => 0,
        };
        let Some(top) = top else {
            return;
        };
        let mut candidate = top.saturating_add(1);
        // A retry below the bound already is claimed from `claim_from`
        // when due; one above it keeps the bound from passing it.
        if let Some((&retry, _)) = self.retries.range(self.low..).next() {
            candidate = candidate.min(retry);
        }
        if candidate <= self.low {
            return;
        }
        let crowded = self.waiting.len() >= MAX_WAITING;
        match self.waiting.back_mut() {
            // A later candidate behind the same transactions replaces the
            // one before; so does any once the queue is full (the higher
            // bound behind the later xmax: later, never wrong).
            Some(last) if last.1 == xmax || crowded => {
                last.0 = last.0.max(candidate);
                last.1 = last.1.max(xmax);
            }
            _ => self.waiting.push_back((candidate, xmax)),
        }
    }

    /// Whether the bound is held: its oldest candidate has waited through
    /// [`HELD_AFTER`] claims for the transactions it waits for. Under load
    /// one or two claims pass before they end; more, and one of them is
    /// long, perhaps a writer that never touches this table: the next
    /// claim then asks which running transactions hold a lock on the
    /// table or its sequence (see `Leased::claim`), and only those hold
    /// the bound.
    pub fn held(&self) -> bool {
        self.front_waits >= HELD_AFTER
    }

    /// Rows `ids` went back to `pending`, due at `due` (released: now).
    /// The bound returns to the lowest, and candidates found since are
    /// dropped: the next claims find them again.
    ///
    /// Rows due later (retries) do not lower the bound: they hold it below
    /// them until they are due, and then the claims go back to them.
    pub fn returned(&mut self, ids: &[i64], due: Instant) {
        let Some(&lowest) = ids.iter().min() else {
            return;
        };
        self.waiting.retain(|(candidate, _)| *candidate <= lowest);
        if due <= Instant::now() {
            self.low = self.low.min(lowest);
        }
        for &id in ids {
            if self.retries.len() >= MAX_TRACKED_RETRIES {
                break;
            }
            self.retries.insert(id, due);
        }
    }

    /// The earliest retry of this worker's that is not due yet.
    pub fn next_retry(&self, now: Instant) -> Option<Duration> {
        self.retries
            .values()
            .filter(|due| **due > now)
            .min()
            .map(|due| *due - now)
    }

    /// A sweep (with the reap before it) began at `began` and took
    /// `took`: the next one comes no sooner than `took` ×
    /// [`SWEEP_SHARE`] after it. While a transaction holds vacuum back,
    /// a walk of the whole index grows with every row relayed meanwhile
    /// (measured: 30 ms, then 200 ms, within a minute); spaced so, the
    /// sweeps never take more than 1/[`SWEEP_SHARE`] of the worker's
    /// session, and the claims at the live end keep the rest.
    pub fn swept(&mut self, began: Instant, took: Duration) {
        self.next_sweep = self
            .next_sweep
            .max(began + took.saturating_mul(SWEEP_SHARE).min(MAX_SWEEP_SPACING));
    }

    /// Time until the next sweep.
    pub fn until_sweep(&self, now: Instant) -> Duration {
        self.next_sweep.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWEEP: Duration = Duration::from_secs(5);

    /// A horizon past its first sweep.
    fn started(now: Instant) -> Horizon {
        let mut h = Horizon::new(SWEEP, now);
        assert_eq!(h.claim_from(now), START, "the first claim sweeps");
        h
    }

    #[test]
    fn a_claimed_batch_moves_the_bound_only_after_its_transactions_end() {
        let t = Instant::now();
        let mut h = started(t);
        // The claim's own snapshot: transaction 100 still runs, 105 is
        // the next to be assigned.
        h.claimed(&[3, 1, 2], false, 100, 105);
        assert_eq!(
            h.claim_from(t),
            START,
            "transactions below 105 may still add a lower id"
        );
        h.claimed(&[], false, 104, 110);
        assert_eq!(h.claim_from(t), START, "104 still runs");
        h.claimed(&[], false, 105, 110);
        assert_eq!(h.claim_from(t), 4, "past the highest row claimed");
    }

    #[test]
    fn the_bound_never_goes_back_for_a_lower_candidate() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 11);
        // A sweep claims an old row (a late commit) below the bound: the
        // bound comes back past it (a sequence started again would put
        // the next rows there), and never lower for a candidate.
        assert_eq!(h.claim_from(t + SWEEP), START);
        h.claimed(&[5], false, 3, 4);
        assert_eq!(h.claim_from(t), 6);
        assert_eq!(h.claim_from(t + SWEEP * 2), START);
        h.claimed(&[3], false, 4, 5);
        assert_eq!(h.claim_from(t), 4, "a sweep below it again");
        h.claimed(&[], false, 5, 6);
        assert_eq!(h.claim_from(t), 4);
        // A claim that is not a sweep never brings it down (a retry
        // claimed alone, rows another worker gave back).
        h.claimed(&[2], false, 5, 6);
        assert_eq!(h.claim_from(t), 4);
        // The claims from there go on up, and the bound with them.
        h.claimed(&[11], false, 6, 7);
        h.claimed(&[], false, 7, 8);
        assert_eq!(h.claim_from(t), 12);
    }

    #[test]
    fn the_bound_is_held_once_a_candidate_has_waited_through_a_few_claims() {
        let t = Instant::now();
        let mut h = started(t);
        assert!(!h.held(), "nothing waits");
        h.claimed(&[10], false, 50, 60);
        assert!(!h.held(), "a candidate just found");
        // Transaction 50 goes on while claims come and go.
        for waited in 1..HELD_AFTER {
            h.claimed(&[10 + i64::from(waited)], false, 50, 60 + i64::from(waited));
            assert!(!h.held(), "{waited} claims waited");
        }
        h.claimed(&[], false, 50, 70);
        assert!(h.held(), "{HELD_AFTER} claims waited");
        h.claimed(&[], false, 50, 70);
        assert!(h.held(), "still");
        // A narrowed xmin lets the first candidates go: not held any more,
        // though later ones wait.
        h.claimed(&[], false, 62, 70);
        assert_eq!(h.claim_from(t), 13);
        assert!(!h.held(), "the bound moved");
        h.claimed(&[], false, 62, 70);
        assert!(!h.held(), "one claim waited");
        // Nothing waiting is never held.
        h.claimed(&[], false, 70, 71);
        assert_eq!(h.claim_from(t), 14);
        for _ in 0..=HELD_AFTER {
            h.claimed(&[], false, 71, 72);
            assert!(!h.held(), "nothing waits");
        }
    }

    #[test]
    fn a_slow_sweep_puts_off_the_next_one() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut h = started(t);
        // Quick: the next sweep comes at its time.
        h.swept(t, ms(10));
        assert_eq!(h.until_sweep(t), SWEEP);
        // 200 ms: 20 × 200 ms = 4 s, within the 5 s anyway.
        h.swept(t, ms(200));
        assert_eq!(h.until_sweep(t), SWEEP);
        // 400 ms: 8 s after it began.
        h.swept(t, ms(400));
        assert_eq!(h.until_sweep(t), ms(8000));
        assert!(!h.sweep_due(t + ms(7999)));
        assert!(h.sweep_due(t + ms(8000)));
        assert_eq!(h.claim_from(t + ms(8000)), START, "the sweep, later");
        // However slow, a sweep a minute at the latest.
        h.swept(t + ms(8000), Duration::MAX);
        assert_eq!(h.until_sweep(t + ms(8000)), Duration::from_secs(60));
    }

    #[test]
    fn later_candidates_wait_behind_the_same_transactions() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 50, 60);
        h.claimed(&[20], false, 50, 60);
        h.claimed(&[30], false, 55, 70);
        h.claimed(&[], false, 60, 70);
        assert_eq!(
            h.claim_from(t),
            21,
            "the first two are free, the third waits for 70"
        );
        h.claimed(&[], false, 70, 71);
        assert_eq!(h.claim_from(t), 31);
    }

    #[test]
    fn released_rows_bring_the_bound_back_and_drop_waiting_candidates() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 11);
        h.claimed(&[11, 12], false, 3, 4);
        h.returned(&[12, 11], t);
        h.claimed(&[], false, 4, 5);
        assert_eq!(h.claim_from(t), 11, "the released rows are claimed again");
    }

    #[test]
    fn a_retry_above_the_bound_holds_it_and_claims_go_back_when_due() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[6], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 7);
        h.claimed(&[7], false, 0, i64::MAX);
        h.returned(&[7], t + Duration::from_secs(1));
        // Later rows are claimed and their transactions end: the bound
        // does not pass the retry, and claims do not wait on it either.
        h.claimed(&[8, 9], false, 3, 4);
        h.claimed(&[], false, 4, 5);
        assert_eq!(h.claim_from(t), 7);
        assert_eq!(h.next_retry(t), Some(Duration::from_secs(1)));
        assert_eq!(
            h.next_retry(t + Duration::from_secs(1)),
            None,
            "due now: nothing to wait for"
        );
        // Claimed when due: the bound is free again.
        assert_eq!(h.claim_from(t + Duration::from_secs(1)), 7);
        h.claimed(&[7, 10], false, 5, 6);
        assert_eq!(h.next_retry(t), None);
        h.claimed(&[], false, 6, 7);
        assert_eq!(h.claim_from(t + Duration::from_secs(1)), 11);
    }

    #[test]
    fn a_retry_not_due_does_not_hold_the_claims_back() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[50], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 51);
        // Row 20, claimed by a sweep, is refused and retried in a minute.
        assert_eq!(h.claim_from(t + SWEEP), START);
        h.claimed(&[20], true, 0, i64::MAX);
        h.returned(&[20], t + Duration::from_secs(60));
        assert_eq!(h.claim_from(t), 21, "the sweep took the bound back");
        h.claimed(&[51, 52], false, 3, 4);
        h.claimed(&[], false, 4, 5);
        assert_eq!(h.claim_from(t), 53, "the claims go on");
        let due = t + Duration::from_secs(60);
        assert_eq!(h.claim_from(due), START, "a sweep");
        assert_eq!(
            h.claim_from(due),
            20,
            "and back to the retry when it is due"
        );
    }

    #[test]
    fn a_retry_another_worker_claimed_stops_holding_the_bound() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[7], false, 0, i64::MAX);
        h.returned(&[7], t);
        assert_eq!(h.claim_from(t + Duration::from_millis(100)), START);
        // Its grace is over: the next claim's candidate is not capped.
        assert_eq!(h.claim_from(t + RETRY_GRACE), START);
        h.claimed(&[8], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t + RETRY_GRACE), 9);
    }

    #[test]
    fn a_sweep_that_finds_rows_below_the_bound_brings_it_back() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[1000], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 1001);
        // A sweep finds a full batch far below (ids handed out in blocks,
        // a replay): the claims go on from there at full speed.
        assert_eq!(h.claim_from(t + SWEEP), START);
        h.claimed(&[100, 101, 102], true, 0, i64::MAX);
        assert_eq!(h.claim_from(t + SWEEP), 103);
        // A sweep that took rows at the bound leaves it there.
        assert_eq!(h.claim_from(t + SWEEP * 2), START);
        h.claimed(&[104], false, 0, i64::MAX);
        assert_eq!(h.claim_from(t + SWEEP * 2), 103);
        // A sequence started again: a sweep takes the few new rows far
        // below, fewer than it asked for; the claims go on from there,
        // where the next ones come.
        assert_eq!(h.claim_from(t + SWEEP * 3), START);
        h.claimed(&[1, 2], false, 0, i64::MAX);
        assert_eq!(h.claim_from(t + SWEEP * 3), 3);
    }

    #[test]
    fn waiting_candidates_are_bounded_behind_a_long_writer() {
        let t = Instant::now();
        let mut h = started(t);
        // Transaction 10 stays open; every claim takes a new xid.
        for i in 0..(MAX_WAITING as i64 * 3) {
            h.claimed(&[i + 1], false, 10, 11 + i);
        }
        assert!(h.waiting.len() <= MAX_WAITING);
        assert_eq!(h.claim_from(t), START, "held by transaction 10");
        h.claimed(&[], false, i64::MAX - 1, i64::MAX);
        assert_eq!(h.claim_from(t), MAX_WAITING as i64 * 3 + 1);
    }

    #[test]
    fn a_sweep_comes_every_period() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert!(!h.sweep_due(t + SWEEP - Duration::from_millis(1)));
        assert_eq!(h.until_sweep(t), SWEEP);
        assert_eq!(h.claim_from(t + SWEEP - Duration::from_millis(1)), 11);
        assert!(h.sweep_due(t + SWEEP));
        assert_eq!(h.claim_from(t + SWEEP), START);
        assert_eq!(
            h.claim_from(t + SWEEP),
            11,
            "one claim sweeps, the next goes on"
        );
        assert_eq!(h.until_sweep(t + SWEEP), SWEEP);
    }

    #[test]
    fn a_sweep_comes_every_quarter_lease_within_half_a_second_and_five() {
        assert_eq!(sweep_every(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(sweep_every(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(
            sweep_every(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_full_claim_at_the_bound_still_waits_for_its_transactions() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 11);
        h.claimed(&[11], true, 3, 4);
        assert_eq!(
            h.claim_from(t),
            11,
            "not past 11 before its transactions end"
        );
        h.claimed(&[], false, 4, 5);
        assert_eq!(h.claim_from(t), 12);
    }

    #[test]
    fn a_candidate_moves_the_bound_only_at_a_claim_that_saw_its_transactions_end() {
        let t = Instant::now();
        let mut h = started(t);
        // Transaction 5 (a producer holding a lower id) runs while the
        // claim of row 10 is taken.
        h.claimed(&[10], false, 5, 8);
        // It commits while the next claim runs: that claim's snapshot
        // still had it running, so it did not see its row.
        h.claimed(&[], false, 5, 9);
        assert_eq!(h.claim_from(t), START, "the row of 5 may still come");
        // The claim after it saw the commit (and took the row).
        h.claimed(&[4], false, 8, 10);
        assert_eq!(h.claim_from(t), 11);
    }

    #[test]
    fn a_full_claim_that_stopped_short_of_a_candidate_leaves_it_waiting() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 1, 5);
        // Late rows 3 and 4 fill the next claim: it may not have reached
        // as far as 10.
        h.claimed(&[3, 4], true, 5, 6);
        assert_eq!(h.claim_from(t), START);
        // One that took what there was releases both candidates.
        h.claimed(&[], false, 6, 7);
        assert_eq!(h.claim_from(t), 11);
        // A full claim that went past a candidate releases it.
        h.claimed(&[20], false, 7, 8);
        h.claimed(&[21, 22], true, 8, 9);
        assert_eq!(h.claim_from(t), 21);
    }

    #[test]
    fn a_full_claim_that_reached_a_candidate_exactly_releases_it() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 1, 5);
        // Full, its rows up to 10 again (given back and claimed anew):
        // it went as far as the candidate, 11.
        h.claimed(&[9, 10], true, 5, 6);
        assert_eq!(h.claim_from(t), 11);
    }

    #[test]
    fn a_sweep_that_takes_the_row_at_the_bound_keeps_the_candidates() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[10], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 11);
        // A candidate waits for transaction 3.
        h.claimed(&[20], false, 2, 4);
        // A sweep takes row 11, at the bound, not below it.
        assert_eq!(h.claim_from(t + SWEEP), START);
        h.claimed(&[11], false, 2, 5);
        assert_eq!(h.claim_from(t), 11, "the candidate still waits");
        h.claimed(&[], false, 5, 6);
        assert_eq!(h.claim_from(t), 21, "and is released");
    }

    #[test]
    fn the_highest_candidate_waits_not_the_last() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[20], false, 1, 2);
        // A claim of an old row behind the same transactions.
        h.claimed(&[15], false, 1, 2);
        h.claimed(&[], false, 2, 3);
        assert_eq!(h.claim_from(t), 21);
    }

    #[test]
    fn returned_rows_drop_the_candidates_above_them_and_keep_the_bound_down() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[3], false, 1, 2);
        h.claimed(&[10], false, 1, 3);
        // Candidates 4 (behind xmax 2) and 11 (behind 3) wait; row 5 goes
        // back: 4 may still become the bound, 11 may not.
        h.returned(&[5], t);
        h.claimed(&[], false, 5, 6);
        assert_eq!(h.claim_from(t), 4);
        // The release keeps the bound down after the retry's grace too.
        assert_eq!(h.claim_from(t + RETRY_GRACE + Duration::from_millis(1)), 4);
    }

    #[test]
    fn nothing_claimed_moves_nothing() {
        let t = Instant::now();
        let mut h = started(t);
        h.claimed(&[], false, 1, 2);
        h.claimed(&[], false, 5, 6);
        assert_eq!(h.claim_from(t), START);
        h.returned(&[], t);
        assert_eq!(h.next_retry(t), None);
    }
}
