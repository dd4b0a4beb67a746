//! What the end of a run leads to, as a pure function of how it ended and
//! of the few facts the supervisor consults, so that the whole restart
//! policy can be read (and tested) as one table, like the state table in
//! [`super::state`].
//!
//! The supervisor gathers an [`ExitInput`] when a run ends, calls
//! [`decide`], and carries the [`Decision`] out: the state event, the
//! backoff timer, the dependents, the exit code. It decides nothing itself.

use crate::config::RestartPolicy;

use super::events::RestartReason;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ending {
    /// It returned by itself, successfully.
    Exited,
    /// It failed by itself: an error, a panic, an abort after its stop
    /// timeout, or it could not even be built.
    Failed,
    /// It was stopped because its health checks failed, and has ended.
    HealthFailed,
    /// It was stopped because it was not ready within `start_timeout`, and
    /// has ended.
    StartTimedOut,
    /// It was asked to stop, for the given purpose, and has ended.
    Stopped(AfterStop),
}

impl Ending {
    /// Every ending, for tests that enumerate them.
    pub const ALL: [Ending; 12] = [
        Ending::Exited,
        Ending::Failed,
        Ending::HealthFailed,
        Ending::StartTimedOut,
        Ending::Stopped(AfterStop::Stay),
        Ending::Stopped(AfterStop::Reset),
        Ending::Stopped(AfterStop::Restart),
        Ending::Stopped(AfterStop::Block),
        Ending::Stopped(AfterStop::Disable),
        Ending::Stopped(AfterStop::Remove),
        Ending::Stopped(AfterStop::Replace),
        Ending::Stopped(AfterStop::Standby),
    ];
}

/// What a stop on request is for: what happens once the run has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AfterStop {
    /// Stay stopped.
    Stay,
    /// Wait for the dependencies again (a dependency restarted).
    Reset,
    /// Start again at once (an operator's restart).
    Restart,
    /// A dependency failed for good.
    Block,
    /// Reload turned it off.
    Disable,
    /// Reload removed it.
    Remove,
    /// Reload changed it: take the new spec, then wait for the
    /// dependencies again.
    Replace,
    /// A singleton that lost its lock: wait in standby.
    Standby,
}

/// Everything the decision depends on. Nothing else is consulted: that is
/// what makes the table in the tests complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInput {
    pub ending: Ending,
    pub policy: RestartPolicy,
    pub oneshot: bool,
    pub critical: bool,
    /// The restart budget (`max_restarts` within `window`) allows one more
    /// restart now.
    pub budget_left: bool,
    /// Some service that depends on this one, directly or not, is critical
    /// (blocking it would leave a critical service that can never run).
    pub critical_dependent: bool,
    /// warden is stopping everything.
    pub shutting_down: bool,
}

/// What the end of a run leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What becomes of the service.
    pub service: Outcome,
    /// What becomes of the services that depend on it.
    pub dependents: Dependents,
    /// warden exits with `EXIT_CRITICAL` (and starts its shutdown if it has
    /// not yet).
    pub critical_exit: bool,
}

/// What becomes of the service whose run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `backoff`, then a new run; counted as a restart for this reason.
    Restart(RestartReason),
    /// `failed` for good; `budget_spent` when the restart budget is the
    /// reason (the error says so).
    Fail { budget_spent: bool },
    /// `completed`: a oneshot that exited successfully.
    Complete,
    /// `stopped`: a clean exit that its policy does not restart.
    Exit,
    /// `stopped` after a stop on request, then `then`; `keep_lock` says
    /// whether a singleton keeps its lock (it is about to run again).
    Stopped { then: Then, keep_lock: bool },
}

/// What follows a stop on request once the run has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Stay `stopped`.
    Stay,
    /// `pending`: wait for the dependencies again.
    Wait,
    /// Start a new run at once.
    Start,
    /// `blocked`.
    Block,
    /// `disabled`.
    Disable,
    /// Forget the service.
    Remove,
    /// `standby`: wait for the singleton's lock.
    Standby,
    /// Take the spec a reload brought, and stay `stopped`.
    Replace,
    /// Take the spec a reload brought, then wait for the dependencies.
    ReplaceAndWait,
}

/// What becomes of the dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependents {
    /// Nothing.
    Untouched,
    /// Each direct dependent follows its own `on_dependency_restart`.
    Restart,
    /// Every dependent, direct or not, is `blocked`: it can never run.
    Block,
}

/// What the end of a run leads to.
pub fn decide(input: ExitInput) -> Decision {
    let ExitInput {
        ending,
        policy,
        oneshot,
        critical,
        budget_left,
        critical_dependent,
        shutting_down,
    } = input;
    // Failed for good: a critical service takes warden down with it; any
    // other blocks its dependents, which is critical if one of them is.
    let fail = |budget_spent: bool| Decision {
        service: Outcome::Fail { budget_spent },
        dependents: if critical {
            Dependents::Untouched
        } else {
            Dependents::Block
        },
        critical_exit: critical || critical_dependent,
    };
    // A restart the policy wants: within the budget, or failed for good.
    let retry = |reason: RestartReason| {
        if budget_left {
            Decision {
                service: Outcome::Restart(reason),
                dependents: Dependents::Restart,
                critical_exit: false,
            }
        } else {
            fail(true)
        }
    };
    let failure = |reason: RestartReason| {
        if policy == RestartPolicy::Never || shutting_down {
            fail(false)
        } else {
            retry(reason)
        }
    };
    let just = |service: Outcome| Decision {
        service,
        dependents: Dependents::Untouched,
        critical_exit: false,
    };
    match ending {
        Ending::Exited if oneshot => just(Outcome::Complete),
        Ending::Exited if policy == RestartPolicy::Always && !shutting_down => {
            retry(RestartReason::Exited)
        }
        Ending::Exited => just(Outcome::Exit),
        Ending::Failed => failure(RestartReason::Failure),
        Ending::HealthFailed => failure(RestartReason::Health),
        Ending::StartTimedOut => failure(RestartReason::StartTimeout),
        Ending::Stopped(after) => {
            // During a shutdown nothing starts or waits to start again.
            let then = match (after, shutting_down) {
                (AfterStop::Reset, false) => Then::Wait,
                (AfterStop::Restart, false) => Then::Start,
                (AfterStop::Standby, false) => Then::Standby,
                (AfterStop::Replace, false) => Then::ReplaceAndWait,
                (AfterStop::Replace, true) => Then::Replace,
                (AfterStop::Block, _) => Then::Block,
                (AfterStop::Disable, _) => Then::Disable,
                (AfterStop::Remove, _) => Then::Remove,
                (
                    AfterStop::Stay | AfterStop::Reset | AfterStop::Restart | AfterStop::Standby,
                    _,
                ) => Then::Stay,
            };
            // A singleton keeps its lock only when it is about to run again.
            let keep_lock = matches!(
                then,
                Then::Wait | Then::Start | Then::Standby | Then::ReplaceAndWait
            );
            just(Outcome::Stopped { then, keep_lock })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AfterStop as A;
    use Ending as E;
    use RestartPolicy as P;

    const POLICIES: [P; 3] = [P::Never, P::OnFailure, P::Always];
    const BOOLS: [bool; 2] = [false, true];

    /// A column of the table: the values a row accepts.
    type Col<T> = &'static [T];
    const ANY: Col<bool> = &BOOLS;
    const YES: Col<bool> = &[true];
    const NO: Col<bool> = &[false];
    const ANY_POLICY: Col<P> = &POLICIES;
    const RESTARTING: Col<P> = &[P::OnFailure, P::Always];
    const FAILURES: Col<E> = &[E::Failed, E::HealthFailed, E::StartTimedOut];

    /// One row: the inputs it covers, and the decision for all of them.
    struct Row {
        ending: Col<E>,
        policy: Col<P>,
        oneshot: Col<bool>,
        critical: Col<bool>,
        budget_left: Col<bool>,
        critical_dependent: Col<bool>,
        shutting_down: Col<bool>,
        service: Outcome,
        dependents: Dependents,
        critical_exit: bool,
    }

    impl Row {
        fn covers(&self, i: &ExitInput) -> bool {
            self.ending.contains(&i.ending)
                && self.policy.contains(&i.policy)
                && self.oneshot.contains(&i.oneshot)
                && self.critical.contains(&i.critical)
                && self.budget_left.contains(&i.budget_left)
                && self.critical_dependent.contains(&i.critical_dependent)
                && self.shutting_down.contains(&i.shutting_down)
        }
    }

    /// `row!(ending, policy, oneshot, critical, budget_left,
    /// critical_dependent, shutting_down => service, dependents, exit 3)`.
    macro_rules! row {
        ($e:expr, $p:expr, $o:expr, $c:expr, $b:expr, $cd:expr, $sd:expr
            => $s:expr, $d:ident, $x:expr) => {
            Row {
                ending: $e,
                policy: $p,
                oneshot: $o,
                critical: $c,
                budget_left: $b,
                critical_dependent: $cd,
                shutting_down: $sd,
                service: $s,
                dependents: Dependents::$d,
                critical_exit: $x,
            }
        };
    }

    use Outcome::{Complete, Exit, Fail, Restart};
    const SPENT: Outcome = Fail { budget_spent: true };
    const FAIL: Outcome = Fail {
        budget_spent: false,
    };

    const fn stopped(then: Then, keep_lock: bool) -> Outcome {
        Outcome::Stopped { then, keep_lock }
    }

    /// The whole policy. Every input is covered by exactly one row (checked
    /// below), so the rows can be read one at a time.
    #[rustfmt::skip]
    const TABLE: &[Row] = &[
        // ending              policy      oneshot crit  budget c.dep shutdown => service, dependents, exit 3
        // A clean exit.
        row!(&[E::Exited],     ANY_POLICY, YES,    ANY,  ANY,   ANY,  ANY  => Complete, Untouched, false),
        row!(&[E::Exited],     &[P::Never, P::OnFailure], NO, ANY, ANY, ANY, ANY => Exit, Untouched, false),
        row!(&[E::Exited],     &[P::Always], NO,   ANY,  ANY,   ANY,  YES  => Exit, Untouched, false),
        row!(&[E::Exited],     &[P::Always], NO,   ANY,  YES,   ANY,  NO   => Restart(RestartReason::Exited), Restart, false),
        row!(&[E::Exited],     &[P::Always], NO,   YES,  NO,    ANY,  NO   => SPENT, Untouched, true),
        row!(&[E::Exited],     &[P::Always], NO,   NO,   NO,    YES,  NO   => SPENT, Block, true),
        row!(&[E::Exited],     &[P::Always], NO,   NO,   NO,    NO,   NO   => SPENT, Block, false),
        // A failure with policy `never`: failed for good at once.
        row!(FAILURES,         &[P::Never], ANY,   YES,  ANY,   ANY,  ANY  => FAIL, Untouched, true),
        row!(FAILURES,         &[P::Never], ANY,   NO,   ANY,   YES,  ANY  => FAIL, Block, true),
        row!(FAILURES,         &[P::Never], ANY,   NO,   ANY,   NO,   ANY  => FAIL, Block, false),
        // A failure during the shutdown is not restarted, whatever the policy.
        row!(FAILURES,         RESTARTING, ANY,    YES,  ANY,   ANY,  YES  => FAIL, Untouched, true),
        row!(FAILURES,         RESTARTING, ANY,    NO,   ANY,   YES,  YES  => FAIL, Block, true),
        row!(FAILURES,         RESTARTING, ANY,    NO,   ANY,   NO,   YES  => FAIL, Block, false),
        // A failure the policy restarts, within the budget.
        row!(&[E::Failed],     RESTARTING, ANY,    ANY,  YES,   ANY,  NO   => Restart(RestartReason::Failure), Restart, false),
        row!(&[E::HealthFailed], RESTARTING, ANY,  ANY,  YES,   ANY,  NO   => Restart(RestartReason::Health), Restart, false),
        row!(&[E::StartTimedOut], RESTARTING, ANY, ANY,  YES,   ANY,  NO   => Restart(RestartReason::StartTimeout), Restart, false),
        // ... or with the budget spent.
        row!(FAILURES,         RESTARTING, ANY,    YES,  NO,    ANY,  NO   => SPENT, Untouched, true),
        row!(FAILURES,         RESTARTING, ANY,    NO,   NO,    YES,  NO   => SPENT, Block, true),
        row!(FAILURES,         RESTARTING, ANY,    NO,   NO,    NO,   NO   => SPENT, Block, false),
        // A stop on request: only its purpose and the shutdown matter.
        row!(&[E::Stopped(A::Stay)],    ANY_POLICY, ANY, ANY, ANY, ANY, ANY => stopped(Then::Stay, false), Untouched, false),
        row!(&[E::Stopped(A::Reset)],   ANY_POLICY, ANY, ANY, ANY, ANY, NO  => stopped(Then::Wait, true), Untouched, false),
        row!(&[E::Stopped(A::Reset)],   ANY_POLICY, ANY, ANY, ANY, ANY, YES => stopped(Then::Stay, false), Untouched, false),
        row!(&[E::Stopped(A::Restart)], ANY_POLICY, ANY, ANY, ANY, ANY, NO  => stopped(Then::Start, true), Untouched, false),
        row!(&[E::Stopped(A::Restart)], ANY_POLICY, ANY, ANY, ANY, ANY, YES => stopped(Then::Stay, false), Untouched, false),
        row!(&[E::Stopped(A::Block)],   ANY_POLICY, ANY, ANY, ANY, ANY, ANY => stopped(Then::Block, false), Untouched, false),
        row!(&[E::Stopped(A::Disable)], ANY_POLICY, ANY, ANY, ANY, ANY, ANY => stopped(Then::Disable, false), Untouched, false),
        row!(&[E::Stopped(A::Remove)],  ANY_POLICY, ANY, ANY, ANY, ANY, ANY => stopped(Then::Remove, false), Untouched, false),
        row!(&[E::Stopped(A::Replace)], ANY_POLICY, ANY, ANY, ANY, ANY, NO  => stopped(Then::ReplaceAndWait, true), Untouched, false),
        row!(&[E::Stopped(A::Replace)], ANY_POLICY, ANY, ANY, ANY, ANY, YES => stopped(Then::Replace, false), Untouched, false),
        row!(&[E::Stopped(A::Standby)], ANY_POLICY, ANY, ANY, ANY, ANY, NO  => stopped(Then::Standby, true), Untouched, false),
        row!(&[E::Stopped(A::Standby)], ANY_POLICY, ANY, ANY, ANY, ANY, YES => stopped(Then::Stay, false), Untouched, false),
    ];

    /// Every combination of the inputs.
    fn every_input() -> Vec<ExitInput> {
        let mut all = Vec::new();
        for ending in Ending::ALL {
            for policy in POLICIES {
                for oneshot in BOOLS {
                    for critical in BOOLS {
                        for budget_left in BOOLS {
                            for critical_dependent in BOOLS {
                                for shutting_down in BOOLS {
                                    all.push(ExitInput {
                                        ending,
                                        policy,
                                        oneshot,
                                        critical,
                                        budget_left,
                                        critical_dependent,
                                        shutting_down,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        all
    }

    #[test]
    fn every_input_is_decided_as_its_one_row_of_the_table_says() {
        let inputs = every_input();
        assert_eq!(inputs.len(), 12 * 3 * 2 * 2 * 2 * 2 * 2);
        let mut used = vec![0usize; TABLE.len()];
        for input in &inputs {
            let rows: Vec<usize> = (0..TABLE.len())
                .filter(|&r| TABLE[r].covers(input))
                .collect();
            assert_eq!(rows.len(), 1, "{input:?} is covered by rows {rows:?}");
            let row = &TABLE[rows[0]];
            used[rows[0]] += 1;
            let expected = Decision {
                service: row.service,
                dependents: row.dependents,
                critical_exit: row.critical_exit,
            };
            assert_eq!(decide(*input), expected, "{input:?} (row {})", rows[0]);
        }
        for (r, n) in used.iter().enumerate() {
            assert!(*n > 0, "row {r} covers no input");
        }
    }

    #[test]
    fn a_restart_always_involves_the_dependents_and_never_the_exit_code() {
        // Read off the table from the other side: whatever the inputs, a
        // restart tells the dependents, and only a failure for good ends
        // warden.
        for input in every_input() {
            let d = decide(input);
            match d.service {
                Outcome::Restart(_) => {
                    assert_eq!(d.dependents, Dependents::Restart, "{input:?}");
                    assert!(!d.critical_exit && !input.shutting_down, "{input:?}");
                }
                Outcome::Fail { .. } => {}
                _ => assert!(
                    !d.critical_exit && d.dependents == Dependents::Untouched,
                    "{input:?}"
                ),
            }
        }
    }
}
