//! The `/metrics` page: what the recorder holds, then the state families
//! (`warden_service_up`, `warden_service_state`, `warden_service_info`)
//! rendered from the supervisor's live status at scrape time instead of
//! being stored: a service removed by a reload then leaves no stale series
//! behind, and 100 services × 11 states cost no memory between scrapes.

use std::fmt::Write as _;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics::{CORE, SERVICE_INFO, SERVICE_STATE, SERVICE_UP};
use crate::supervisor::ServiceStatus;
use crate::supervisor::state::State;

/// Escapes a label value for the text exposition format.
fn label(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The help text of a core family.
fn help(name: &str) -> &'static str {
    CORE.iter().find(|f| f.name == name).map_or("", |f| f.help)
}

/// The `/metrics` page: what the recorder holds, then the state families
/// from `status`.
pub fn render(handle: Option<&PrometheusHandle>, status: &[ServiceStatus]) -> String {
    let mut out = handle.map(PrometheusHandle::render).unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {SERVICE_UP} {}", help(SERVICE_UP));
    let _ = writeln!(out, "# TYPE {SERVICE_UP} gauge");
    for s in status {
        let _ = writeln!(
            out,
            "{SERVICE_UP}{{service=\"{}\"}} {}",
            label(&s.name),
            u8::from(s.state.is_ready())
        );
    }
    let _ = writeln!(out, "# HELP {SERVICE_INFO} {}", help(SERVICE_INFO));
    let _ = writeln!(out, "# TYPE {SERVICE_INFO} gauge");
    for s in status {
        let _ = writeln!(
            out,
            "{SERVICE_INFO}{{service=\"{}\",kind=\"{}\",critical=\"{}\"}} 1",
            label(&s.name),
            label(&s.kind),
            s.critical
        );
    }
    let _ = writeln!(out, "# HELP {SERVICE_STATE} {}", help(SERVICE_STATE));
    let _ = writeln!(out, "# TYPE {SERVICE_STATE} gauge");
    for s in status {
        let name = label(&s.name);
        for state in State::ALL {
            let _ = writeln!(
                out,
                "{SERVICE_STATE}{{service=\"{name}\",state=\"{state}\"}} {}",
                u8::from(s.state == state)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }
}
