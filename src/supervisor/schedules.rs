//! `[[schedule]]`: one timer per entry, whose ticks run the entry's action
//! while the service is ready, never two runs of an entry at once.

use tokio::time::Instant;

use super::events::Happened;
use super::state::State;
use super::{ActionRun, Msg, Supervisor};

impl Supervisor {
    /// Starts one timer per `[[schedule]]` entry of a unit.
    pub(super) fn start_schedules(&self, name: &str) {
        let u = &self.units[name];
        for (index, entry) in u.spec.common.schedule.iter().enumerate() {
            let tx = self.tx.clone();
            let every = entry.every;
            let cancel = u.schedule_cancel.clone();
            let name = u.name.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {
                            if tx.send(Msg::ScheduleTick { name: name.clone(), index }).is_err() {
                                return;
                            }
                        }
                        _ = cancel.cancelled() => return,
                    }
                }
            });
        }
    }

    /// A schedule is due: run it if the service is ready and the last run
    /// has finished (runs never overlap).
    pub(super) fn schedule_tick(&mut self, name: &str, index: usize) {
        let Some(u) = self.units.get(name) else {
            return;
        };
        let Some(entry) = u.spec.common.schedule.get(index) else {
            return;
        };
        if self.shutting_down || u.state != State::Ready {
            tracing::debug!(service = %name, action = %entry.action, state = %u.state, "scheduled action skipped: not ready");
            return;
        }
        if u.schedule_busy[index] {
            tracing::warn!(service = %name, action = %entry.action, "scheduled action skipped: the previous run is still going");
            return;
        }
        let action = entry.action.clone();
        let Some(fut) = self.action_future(u, &action, entry.args.clone()) else {
            // A reload changed the kind under the schedule; check refuses
            // a schedule of an action the kind does not have.
            tracing::warn!(service = %name, action = %entry.action, "scheduled action skipped: the kind has no such action");
            return;
        };
        let tx = self.tx.clone();
        let name_arc = u.name.clone();
        self.units[name].schedule_busy[index] = true;
        tokio::spawn(async move {
            let started = Instant::now();
            let result = fut.await.map_err(|e| e.to_string());
            let run = ActionRun {
                action,
                finished: std::time::SystemTime::now(),
                duration: started.elapsed(),
                result,
            };
            let _ = tx.send(Msg::ScheduleDone {
                name: name_arc,
                index,
                run,
            });
        });
    }

    /// A scheduled run finished: record it and tell the listeners.
    pub(super) fn schedule_done(&mut self, name: &str, index: usize, run: ActionRun) {
        let Some(u) = self
            .units
            .get_mut(name)
            .filter(|u| index < u.schedule_busy.len())
        else {
            return;
        };
        u.schedule_busy[index] = false;
        match &run.result {
            Ok(_) => {
                tracing::info!(service = %name, action = %run.action, duration = ?run.duration, "scheduled action done")
            }
            Err(e) => {
                tracing::warn!(service = %name, action = %run.action, error = %e, "scheduled action failed")
            }
        }
        self.events.send(Happened::Action {
            service: u.name.clone(),
            action: run.action.clone(),
            result: run.result.clone(),
            duration: run.duration,
            at: run.finished,
        });
        u.schedule_last[index] = Some(run);
    }
}
