//! The settings of `kind = "process"`.

use indexmap::IndexMap;
use serde_json::{Value as Json, json};

use crate::config::decode::{Cx, Decode, config_table};
use crate::config::kind::Settings;
use crate::config::node::{Node, Value};
use crate::config::types::Command;

/// A scalar written for an environment variable: strings as they are,
/// numbers and booleans as TOML prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl Decode for EnvValue {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        match &node.value {
            Value::String(s) => Some(EnvValue(s.clone())),
            Value::Integer(i) => Some(EnvValue(i.to_string())),
            Value::Float(f) => Some(EnvValue(f.to_string())),
            Value::Boolean(b) => Some(EnvValue(b.to_string())),
            _ => {
                cx.type_error(node, "a string, number or boolean");
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"type": ["string", "number", "boolean"]})
    }
    fn to_json(&self) -> Json {
        Json::String(crate::config::secret::redact_dsn(&self.0))
    }
}

/// The exit codes that count as success: a non-empty list of codes from 0
/// to 255.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitCodes(pub Vec<u8>);

impl ExitCodes {
    pub fn contains(&self, code: i32) -> bool {
        u8::try_from(code).is_ok_and(|c| self.0.contains(&c))
    }
}

impl Decode for ExitCodes {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let Value::Array(items) = &node.value else {
            cx.type_error(node, "a list of exit codes (0 to 255)");
            return None;
        };
        if items.is_empty() {
            cx.error(
                "invalid-value",
                node.span,
                "the list is empty; name at least one exit code (0 is the usual success)",
            );
            return None;
        }
        let mut codes = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match &item.value {
                Value::Integer(n) => match u8::try_from(*n) {
                    Ok(c) => codes.push(c),
                    Err(_) => {
                        cx.with_key(&i.to_string(), |cx| {
                            cx.error(
                                "invalid-value",
                                item.span,
                                format!("exit code {n} is outside 0-255; a process can only exit with 0 to 255"),
                            )
                        });
                        ok = false;
                    }
                },
                _ => {
                    cx.with_key(&i.to_string(), |cx| {
                        cx.type_error(item, "an exit code (0 to 255)")
                    });
                    ok = false;
                }
            }
        }
        ok.then_some(ExitCodes(codes))
    }
    fn schema() -> Json {
        json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}, "minItems": 1})
    }
    fn to_json(&self) -> Json {
        json!(self.0)
    }
}

config_table! {
    /// `kind = "process"`: a supervised executable.
    pub struct ProcessSpec {
        /// Program and arguments.
        pub command: Command,
        /// More arguments appended to `command`.
        pub args: Vec<String>,
        /// Environment variables added for the child.
        pub env: IndexMap<String, EnvValue>,
        /// `.env` files read for the child at each start.
        pub env_files: Vec<String>,
        /// The variables of warden's environment the child inherits, exactly
        /// (`PATH` too, if it needs it). Unset: all of them but warden's own
        /// (`WARDEN_*`) and those that filled a secret setting.
        pub inherit_env: Option<Vec<String>>,
        /// Working directory (relative to the registry's directory).
        pub cwd: Option<String>,
        /// User to run as (name or uid) when warden runs as root.
        pub user: Option<String>,
        /// Exit codes that count as success (for the restart policy and
        /// for a oneshot's `completed`); any other code is a failure.
        pub success_exit_codes: ExitCodes = ExitCodes(vec![0]),
    }
}

impl Settings for ProcessSpec {}
