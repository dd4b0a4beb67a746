//! What happened, as it happens: every state change, restart and action
//! result, broadcast to whoever listens (`GET /v1/events`, the console,
//! `warden status --watch`).
//!
//! A bounded broadcast channel: a listener that falls behind loses the
//! oldest events and is told how many (it then takes a fresh snapshot), so
//! a slow client never holds memory or the supervisor back. Sending with
//! nobody listening costs next to nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::state::State;

/// Events kept for a listener that is behind.
const CAPACITY: usize = 128;

/// Why a service is started again. A closed set: it labels the
/// `warden_service_restarts_total` metric, whose label values must stay
/// bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// The run failed (a non-zero exit, an error, a panic).
    Failure,
    /// It exited cleanly under `policy = "always"`.
    Exited,
    /// Its health probe failed `failure_threshold` times in a row.
    Health,
    /// It was not ready within `start_timeout`.
    StartTimeout,
    /// An operator asked (`POST …/restart`).
    Operator,
    /// A dependency restarted (`on_dependency_restart = "restart"`).
    Dependency,
    /// A reload changed its configuration.
    Reload,
}

impl RestartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Failure => "failure",
            RestartReason::Exited => "exited",
            RestartReason::Health => "health",
            RestartReason::StartTimeout => "start_timeout",
            RestartReason::Operator => "operator",
            RestartReason::Dependency => "dependency",
            RestartReason::Reload => "reload",
        }
    }
}

/// The metric label of a reason.
impl From<RestartReason> for &'static str {
    fn from(r: RestartReason) -> &'static str {
        r.as_str()
    }
}

/// One thing that happened to a service.
#[derive(Debug, Clone)]
pub enum Happened {
    State {
        service: Arc<str>,
        state: State,
        restarts: u64,
        last_error: Option<String>,
        at: SystemTime,
    },
    Restart {
        service: Arc<str>,
        restarts: u64,
        reason: RestartReason,
        at: SystemTime,
    },
    Action {
        service: Arc<str>,
        action: String,
        result: Result<serde_json::Value, String>,
        duration: Duration,
        at: SystemTime,
    },
    /// A reload was applied: services may have come or gone (listeners
    /// take a fresh snapshot).
    Reloaded { at: SystemTime },
}

impl Happened {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Happened::State { .. } => "state",
            Happened::Restart { .. } => "restart",
            Happened::Action { .. } => "action",
            Happened::Reloaded { .. } => "reloaded",
        }
    }

    /// The SSE event's data.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let at = |t: &SystemTime| humantime::format_rfc3339_millis(*t).to_string();
        match self {
            Happened::State {
                service,
                state,
                restarts,
                last_error,
                at: t,
            } => json!({
                "service": &**service,
                "state": state.as_str(),
                "ready": state.is_ready(),
                "restarts": restarts,
                "last_error": last_error,
                "at": at(t),
            }),
            Happened::Restart {
                service,
                restarts,
                reason,
                at: t,
            } => json!({
                "service": &**service,
                "restarts": restarts,
                "reason": reason.as_str(),
                "at": at(t),
            }),
            Happened::Action {
                service,
                action,
                result,
                duration,
                at: t,
            } => json!({
                "service": &**service,
                "action": action,
                "ok": result.is_ok(),
                "result": result.as_ref().ok(),
                "error": result.as_ref().err(),
                "duration_ms": duration.as_millis() as u64,
                "at": at(t),
            }),
            Happened::Reloaded { at: t } => json!({ "at": at(t) }),
        }
    }
}

/// The sending side, shared by the supervisor and its handles.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Happened>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            tx: broadcast::Sender::new(CAPACITY),
        }
    }
}

impl Events {
    pub fn send(&self, e: Happened) {
        // Nobody listening is not an error.
        let _ = self.tx.send(e);
    }

    /// Whether anyone listens (to skip building events nobody reads).
    pub fn listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Happened> {
        self.tx.subscribe()
    }
}
