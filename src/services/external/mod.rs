//! `kind = "external"`: something warden does not run (a managed database,
//! another pod). Ready once its `ready` check passes; from then on the
//! check is repeated and the service fails when it fails
//! `failure_threshold` times in a row, so dependents see the outage.

use std::time::Duration;

use super::{BoxFuture, Context, Factory, Registration, Service, ServiceError};
use crate::config::{HealthTiming, NoSettings, Probe, ReadyTiming, Runs, ServiceSpec};
use crate::metrics::ProbeRole;

/// The registration of `kind = "external"`: no settings of its own (its
/// check is the `ready` probe every service may have, which this kind
/// requires).
pub fn registration() -> Registration {
    Registration::new::<NoSettings>("external", Runs::Check, ExternalFactory)
}

struct ExternalFactory;

impl Factory for ExternalFactory {
    fn build(&self, spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        let ready = spec
            .common
            .ready
            .clone()
            .ok_or_else(|| ServiceError("an external service needs a ready probe".into()))?;
        let watch = HealthTiming::all_defaults()
            .ok_or_else(|| ServiceError("no health defaults".into()))?;
        Ok(Box::new(External { ready, watch }))
    }
}

struct External {
    ready: Probe<ReadyTiming>,
    /// How the check is repeated once ready (the defaults of `health`).
    watch: HealthTiming,
}

impl Service for External {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let check = &self.ready.check;
            let target = check.target();
            ctx.details().set("target", target.clone());
            let until_ready = async {
                loop {
                    match crate::probe::measured(
                        ctx.name(),
                        ProbeRole::Ready,
                        check,
                        self.ready.timing.timeout,
                    )
                    .await
                    {
                        Ok(()) => return,
                        Err(e) => ctx.details().set("last_error", e),
                    }
                    tokio::time::sleep(self.ready.timing.interval).await;
                }
            };
            tokio::select! {
                _ = until_ready => ctx.ready(),
                _ = ctx.cancelled() => return Ok(()),
            }
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.watch.interval) => {}
                    _ = ctx.cancelled() => return Ok(()),
                }
                match crate::probe::measured(
                    ctx.name(),
                    ProbeRole::Health,
                    check,
                    self.watch.timeout.max(Duration::from_millis(1)),
                )
                .await
                {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        ctx.details().set("last_error", e.clone());
                        if failures >= self.watch.failure_threshold.0 {
                            return Err(ServiceError(format!(
                                "{} check of {target} failed {failures} times: {e}",
                                check.name()
                            )));
                        }
                    }
                }
            }
        })
    }
}
