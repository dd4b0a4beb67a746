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
        Json::String(crate::config::secret::redact(&self.0))
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
        /// Working directory (relative to the registry's directory).
        pub cwd: Option<String>,
        /// User to run as (name or uid) when warden runs as root.
        pub user: Option<String>,
    }
}

impl Settings for ProcessSpec {}
