//! Health checks: while a run is ready, its `health` probe runs, and
//! `failure_threshold` failures in a row end the run as a failure.

use super::state::State;
use super::{Msg, StopCause, Supervisor};

impl Supervisor {
    /// Runs the unit's `health` probe while this run lives; crossing
    /// `failure_threshold` consecutive failures reports a failure.
    pub(super) fn watch_health(&self, name: &str, generation: u64) {
        let u = &self.units[name];
        let (Some(health), Some(cancel)) = (u.spec.common.health.clone(), u.cancel.clone()) else {
            return;
        };
        let tx = self.tx.clone();
        let name = u.name.clone();
        tokio::spawn(async move {
            let t = &health.timing;
            let watch = async {
                tokio::time::sleep(t.initial_delay).await;
                let mut failures = 0u32;
                loop {
                    match crate::probe::measured(
                        &name,
                        crate::metrics::ProbeRole::Health,
                        &health.check,
                        t.timeout,
                    )
                    .await
                    {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(service = %name, failures, error = %e, "health check failed");
                            if failures >= t.failure_threshold.0 {
                                let error =
                                    format!("health check failed {failures} times in a row: {e}");
                                let _ = tx.send(Msg::HealthFailed {
                                    name: name.clone(),
                                    generation,
                                    error,
                                });
                                return;
                            }
                        }
                    }
                    tokio::time::sleep(t.interval).await;
                }
            };
            tokio::select! {
                _ = watch => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// The health checks failed too often: stop the run, as a failure.
    pub(super) fn health_failed(&mut self, name: &str, generation: u64, error: String) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        // During the shutdown it is stopped in its turn (dependents first),
        // not out of order for a restart that will not come.
        if u.generation == generation && u.state == State::Ready && !self.shutting_down {
            let error = crate::config::secret::redact(&error);
            // The ordered path of any restart: the dependents that restart
            // or stop with it first, then its own stop.
            self.dependency_restarting(name);
            self.stop_for_restart(name, StopCause::HealthFailed(error));
        }
    }
}
