//! Typing the merged [`Node`] tree: the [`Decode`] trait, the table reader
//! that reports unknown and missing keys, and the `config_table!` and
//! `config_enum!` macros that derive decoding, JSON output and the JSON
//! Schema from one field list (so `warden schema` can never drift from
//! what the loader accepts).
//!
//! Decoding never stops at the first problem: a bad field is reported and
//! decoding goes on with its siblings; the result is `None` when anything
//! failed.

use std::path::PathBuf;

use serde_json::{Map, Value as Json, json};

use super::diag::{Diagnostic, Diagnostics, did_you_mean, known_list};
use super::node::{Node, Table, Value};
use super::source::{Sources, Span};

/// The decoding context: where errors go, where secret files are read from,
/// and the key path of the value being decoded (for messages).
pub struct Cx<'a> {
    pub diags: &'a mut Diagnostics,
    pub sources: &'a dyn Sources,
    /// Directory of the registry file; `*_file` paths are relative to it.
    pub base_dir: PathBuf,
    /// The service being decoded, recorded on its diagnostics.
    pub service: Option<String>,
    path: Vec<String>,
}

impl<'a> Cx<'a> {
    pub fn new(diags: &'a mut Diagnostics, sources: &'a dyn Sources, base_dir: PathBuf) -> Cx<'a> {
        Cx {
            diags,
            sources,
            base_dir,
            service: None,
            path: Vec::new(),
        }
    }

    /// Runs `f` with `key` appended to the key path.
    pub fn with_key<T>(&mut self, key: &str, f: impl FnOnce(&mut Cx<'a>) -> T) -> T {
        self.path.push(key.to_string());
        let r = f(self);
        self.path.pop();
        r
    }

    /// The dotted path of the value being decoded (`services.a.restart`).
    pub fn key_path(&self) -> String {
        self.path.join(".")
    }

    /// Reports an error about the current key: the message is prefixed with
    /// the key path, and the service and key are recorded.
    pub fn error(&mut self, code: &'static str, span: Span, message: impl std::fmt::Display) {
        let d = self.diag(code, span, message);
        self.diags.push(d);
    }

    /// Builds (without reporting) an error about the current key.
    pub fn diag(
        &self,
        code: &'static str,
        span: Span,
        message: impl std::fmt::Display,
    ) -> Diagnostic {
        let path = self.key_path();
        let text = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        let mut d = Diagnostic::error(code, text).at(span);
        if !path.is_empty() {
            d = d.key(path);
        }
        if let Some(s) = &self.service {
            d = d.service(s.clone());
        }
        d
    }

    /// Reports "expected X, found Y" for `node`.
    pub fn type_error(&mut self, node: &Node, expected: &str) {
        self.error(
            "type",
            node.span,
            format!("expected {expected}, found {}", node.describe()),
        );
    }
}

/// A typed configuration value.
pub trait Decode: Sized {
    /// Types the value, reporting every problem into `cx`; `None` if any.
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self>;
    /// The JSON Schema of the value.
    fn schema() -> Json;
    /// The value as JSON, secrets masked (for `check --format json`).
    fn to_json(&self) -> Json;
    /// The value of an absent key that has no default; `None` means the key
    /// is required.
    fn absent() -> Option<Self> {
        None
    }
    /// Whether `KEY_file = "path"` may stand in for `KEY` (secrets).
    const FILE_VARIANT: bool = false;
    /// What a `KEY_file` must hold, for the error that says it does not
    /// (without quoting what it holds).
    const EXPECTED: &'static str = "a valid value";
}

/// Reads the keys of one table, remembering which were asked for so that
/// [`TableReader::finish`] can reject the others with the list of known keys.
pub struct TableReader<'n> {
    node: &'n Node,
    table: &'n Table,
    known: Vec<&'static str>,
    file_keys: Vec<&'static str>,
}

impl<'n> TableReader<'n> {
    /// Starts reading `node`, which must be a table.
    pub fn new(node: &'n Node, cx: &mut Cx<'_>) -> Option<TableReader<'n>> {
        match node.as_table() {
            Some(table) => Some(TableReader {
                node,
                table,
                known: Vec::new(),
                file_keys: Vec::new(),
            }),
            None => {
                cx.type_error(node, "a table");
                None
            }
        }
    }

    pub fn span(&self) -> Span {
        self.node.span
    }

    /// Whether the table has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// Reads `key`: its value if present, else `default`, else
    /// [`Decode::absent`], else a "missing key" error.
    pub fn field<T: Decode>(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
        default: Option<impl FnOnce() -> T>,
    ) -> Option<T> {
        self.known.push(key);
        let direct = self.table.get(key);
        let file_entry = if T::FILE_VARIANT {
            self.file_keys.push(key);
            self.table.get(&format!("{key}_file"))
        } else {
            None
        };
        match (direct, file_entry) {
            (Some(_), Some(f)) => {
                cx.with_key(key, |cx| {
                    cx.error(
                        "conflicting-keys",
                        f.key_span,
                        format!("both `{key}` and `{key}_file` are set; keep one"),
                    )
                });
                None
            }
            (Some(e), None) if e.node.is_poisoned() => None,
            (Some(e), None) => cx.with_key(key, |cx| T::decode(&e.node, cx)),
            (None, Some(f)) => {
                let file_key = format!("{key}_file");
                cx.with_key(&file_key, |cx| {
                    let path = String::decode(&f.node, cx)?;
                    let full = cx.base_dir.join(&path);
                    match cx.sources.read(&full) {
                        Ok(text) => {
                            let node = Node {
                                value: Value::String(
                                    text.trim_end_matches(['\n', '\r']).to_string(),
                                ),
                                span: f.node.span,
                            };
                            // What a secret file holds is never quoted: its
                            // diagnostics give way to one that names the file.
                            let before = cx.diags.len();
                            let value = T::decode(&node, cx);
                            if let Some(code) = cx.diags.code_at(before) {
                                cx.diags.truncate(before);
                                cx.error(
                                    code,
                                    f.node.span,
                                    format!(
                                        "the content of {} is not {} (not shown: it is a secret)",
                                        full.display(),
                                        T::EXPECTED
                                    ),
                                );
                            }
                            value
                        }
                        Err(e) => {
                            cx.error(
                                "file-read",
                                f.node.span,
                                format!("cannot read secret file {}: {e}", full.display()),
                            );
                            None
                        }
                    }
                })
            }
            (None, None) => match default {
                Some(d) => Some(d()),
                None => T::absent().or_else(|| {
                    let span = self.node.span;
                    let d = cx.diag("missing-key", span, format!("missing required key `{key}`"));
                    cx.diags.push(d);
                    None
                }),
            },
        }
    }

    /// The keys no `field` call asked for, as JSON (settings of custom kinds).
    pub fn rest_json(&self) -> Json {
        Json::Object(
            self.table
                .iter()
                .filter(|(k, _)| !self.known.contains(&k.as_str()))
                .map(|(k, e)| (k.clone(), e.node.to_json()))
                .collect(),
        )
    }

    /// Reports every key that no `field` call asked for.
    pub fn finish(self, cx: &mut Cx<'_>) {
        for (k, e) in self.table {
            let is_file_variant = k
                .strip_suffix("_file")
                .is_some_and(|base| self.file_keys.contains(&base));
            if self.known.contains(&k.as_str()) || is_file_variant {
                continue;
            }
            let mut d = cx.diag(
                "unknown-key",
                e.key_span,
                format!(
                    "unknown key `{k}`; known: {}",
                    known_list(self.known.iter().copied())
                ),
            );
            if let Some(m) = did_you_mean(k, self.known.iter().copied()) {
                d = d.help(format!("did you mean `{m}`?"));
            }
            cx.diags.push(d);
        }
    }
}

/// Builds the JSON Schema of a table, field by field.
pub struct ObjectSchema {
    description: String,
    properties: Map<String, Json>,
    required: Vec<String>,
    /// Required keys that may be given as `KEY` or `KEY_file`.
    required_either: Vec<String>,
}

impl ObjectSchema {
    pub fn new(description: &str) -> ObjectSchema {
        ObjectSchema {
            description: description.trim().to_string(),
            properties: Map::new(),
            required: Vec::new(),
            required_either: Vec::new(),
        }
    }

    pub fn field<T: Decode>(&mut self, key: &str, doc: &str, default: Option<Json>) {
        let mut s = T::schema();
        if let Json::Object(o) = &mut s {
            let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
            if !doc.is_empty() {
                o.insert("description".into(), Json::String(doc));
            }
            if let Some(d) = &default {
                o.insert("default".into(), d.clone());
            }
        }
        if T::FILE_VARIANT {
            self.properties.insert(
                format!("{key}_file"),
                json!({"type": "string", "description": format!("Path of a file holding `{key}` (Docker/Kubernetes secrets)")}),
            );
        }
        if default.is_none() && T::absent().is_none() {
            if T::FILE_VARIANT {
                self.required_either.push(key.to_string());
            } else {
                self.required.push(key.to_string());
            }
        }
        self.properties.insert(key.to_string(), s);
    }

    /// Adds a raw property (for keys decoded by hand).
    pub fn property(&mut self, key: &str, schema: Json, required: bool) {
        self.properties.insert(key.to_string(), schema);
        if required {
            self.required.push(key.to_string());
        }
    }

    pub fn properties(&self) -> &Map<String, Json> {
        &self.properties
    }

    pub fn build(self) -> Json {
        let mut o = Map::new();
        o.insert("type".into(), json!("object"));
        if !self.description.is_empty() {
            o.insert("description".into(), Json::String(self.description));
        }
        o.insert("properties".into(), Json::Object(self.properties));
        o.insert("additionalProperties".into(), json!(false));
        if !self.required.is_empty() {
            o.insert("required".into(), json!(self.required));
        }
        if !self.required_either.is_empty() {
            let all: Vec<Json> = self
                .required_either
                .iter()
                .map(|k| json!({"anyOf": [{"required": [k]}, {"required": [format!("{k}_file")]}]}))
                .collect();
            o.insert("allOf".into(), Json::Array(all));
        }
        Json::Object(o)
    }
}

/// A group of keys read from a table, possibly sharing the table with other
/// groups (a service's common keys and its kind's keys).
pub trait Fields: Sized {
    /// The keys of the group.
    const KEYS: &'static [&'static str];
    /// Reads the group's keys; `None` when any was wrong (all reported).
    fn decode_fields(r: &mut TableReader<'_>, cx: &mut Cx<'_>) -> Option<Self>;
    /// Adds the group's keys to a schema under construction.
    fn schema_fields(s: &mut ObjectSchema);
    /// Adds the group's values to a JSON object, secrets masked.
    fn fields_to_json(&self, o: &mut Map<String, Json>);
}

/// The TOML key of a struct field: `r#where` is the key `where`.
pub const fn key_name(field: &'static str) -> &'static str {
    let b = field.as_bytes();
    if b.len() > 2 && b[0] == b'r' && b[1] == b'#' {
        let (_, rest) = b.split_at(2);
        match std::str::from_utf8(rest) {
            Ok(s) => s,
            Err(_) => field,
        }
    } else {
        field
    }
}

#[doc(hidden)]
pub use serde_json as __serde_json;

/// Unwraps the defaults of a table whose every key has one, for a field
/// whose default is such a table (`= defaults_of(Backoff::all_defaults())`).
pub fn defaults_of<T>(v: Option<T>) -> T {
    match v {
        Some(v) => v,
        None => unreachable!("a table used as a default has a default for every key"),
    }
}

/// Declares a configuration table: the struct, its decoding (unknown keys
/// rejected, defaults applied, every error reported), its JSON output and
/// its JSON Schema, from one list of fields.
///
/// A field without `= default` is required unless its type is an `Option`
/// or a collection. A kind's settings are declared this way, in warden and
/// in a crate that adds its own kind (`warden::config_table!`).
#[macro_export]
macro_rules! config_table {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                pub $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl $crate::config::decode::Fields for $name {
            const KEYS: &'static [&'static str] =
                &[$($crate::config::decode::key_name(stringify!($field))),*];

            fn decode_fields(
                r: &mut $crate::config::decode::TableReader<'_>,
                cx: &mut $crate::config::decode::Cx<'_>,
            ) -> Option<Self> {
                $( let $field = r.field::<$ty>(
                    cx,
                    $crate::config::decode::key_name(stringify!($field)),
                    $crate::config_table!(@default $ty $(, $default)?),
                ); )*
                Some(Self { $( $field: $field?, )* })
            }

            fn schema_fields(s: &mut $crate::config::decode::ObjectSchema) {
                $( s.field::<$ty>(
                    $crate::config::decode::key_name(stringify!($field)),
                    concat!($($doc, " ",)* ""),
                    $crate::config_table!(@default $ty $(, $default)?)
                        .map(|d| $crate::config::decode::Decode::to_json(&d())),
                ); )*
            }

            fn fields_to_json(&self, o: &mut $crate::config::decode::__serde_json::Map<String, $crate::config::decode::__serde_json::Value>) {
                $( o.insert(
                    $crate::config::decode::key_name(stringify!($field)).into(),
                    $crate::config::decode::Decode::to_json(&self.$field),
                ); )*
            }
        }

        impl $name {
            /// The value with every key at its default (`None` when a key is
            /// required).
            #[allow(dead_code)]
            pub fn all_defaults() -> Option<Self> {
                Some(Self { $( $field: $crate::config_table!(@default $ty $(, $default)?)
                    .map(|f| f())
                    .or_else(<$ty as $crate::config::decode::Decode>::absent)?, )* })
            }
        }

        impl $crate::config::decode::Decode for $name {
            fn decode(
                node: &$crate::config::node::Node,
                cx: &mut $crate::config::decode::Cx<'_>,
            ) -> Option<Self> {
                let mut r = $crate::config::decode::TableReader::new(node, cx)?;
                let v = <Self as $crate::config::decode::Fields>::decode_fields(&mut r, cx);
                r.finish(cx);
                v
            }

            fn schema() -> $crate::config::decode::__serde_json::Value {
                let mut s = $crate::config::decode::ObjectSchema::new(concat!($($sdoc, " ",)* ""));
                <Self as $crate::config::decode::Fields>::schema_fields(&mut s);
                s.build()
            }

            fn to_json(&self) -> $crate::config::decode::__serde_json::Value {
                let mut o = $crate::config::decode::__serde_json::Map::new();
                <Self as $crate::config::decode::Fields>::fields_to_json(self, &mut o);
                $crate::config::decode::__serde_json::Value::Object(o)
            }
        }
    };
    (@default $ty:ty) => { None::<fn() -> $ty> };
    (@default $ty:ty, $d:expr) => { Some(|| -> $ty { $d }) };
}
pub use crate::config_table;

/// Declares a string enumeration (`"on-failure"`), decoded with the list of
/// accepted spellings in its error.
#[macro_export]
macro_rules! config_enum {
    (
        $(#[doc = $sdoc:literal])*
        pub enum $name:ident { $( $(#[doc = $doc:literal])* $variant:ident = $text:literal ),* $(,)? }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[doc = $doc])* $variant, )* }

        impl $name {
            /// Every accepted spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),*];

            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $( $text => Some($name::$variant), )* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::config::decode::Decode for $name {
            fn decode(
                node: &$crate::config::node::Node,
                cx: &mut $crate::config::decode::Cx<'_>,
            ) -> Option<Self> {
                let Some(s) = node.as_str() else {
                    cx.type_error(node, &format!("one of {}", Self::NAMES.join(", ")));
                    return None;
                };
                Self::parse(s).or_else(|| {
                    let mut d = cx.diag(
                        "invalid-value",
                        node.span,
                        format!("unknown value {:?}; expected one of {}", s, Self::NAMES.join(", ")),
                    );
                    if let Some(m) = $crate::config::diag::did_you_mean(s, Self::NAMES.iter().copied()) {
                        d = d.help(format!("did you mean {m:?}?"));
                    }
                    cx.diags.push(d);
                    None
                })
            }

            fn schema() -> $crate::config::decode::__serde_json::Value {
                $crate::config::decode::__serde_json::json!({"type": "string", "enum": Self::NAMES})
            }

            fn to_json(&self) -> $crate::config::decode::__serde_json::Value {
                $crate::config::decode::__serde_json::Value::String(self.as_str().into())
            }
        }
    };
}
pub use crate::config_enum;

// ---------------------------------------------------------------------------
// Primitive types.

impl Decode for bool {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        node.as_bool().or_else(|| {
            cx.type_error(node, "true or false");
            None
        })
    }
    fn schema() -> Json {
        json!({"type": "boolean"})
    }
    fn to_json(&self) -> Json {
        Json::Bool(*self)
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
                match node.value {
                    Value::Integer(i) => <$t>::try_from(i).ok().or_else(|| {
                        cx.error("invalid-value", node.span, format!(
                            "{i} is out of range; expected an integer from 0 to {}", <$t>::MAX));
                        None
                    }),
                    _ => {
                        cx.type_error(node, "a non-negative integer");
                        None
                    }
                }
            }
            fn schema() -> Json {
                json!({"type": "integer", "minimum": 0, "maximum": <$t>::MAX})
            }
            fn to_json(&self) -> Json {
                json!(*self)
            }
        }
    )*};
}
unsigned!(u16, u32, u64);

impl Decode for f64 {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        match node.value {
            Value::Float(f) if f.is_finite() => Some(f),
            Value::Integer(i) => Some(i as f64),
            _ => {
                cx.type_error(node, "a number");
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"type": "number"})
    }
    fn to_json(&self) -> Json {
        json!(*self)
    }
}

impl Decode for String {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        match node.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                cx.type_error(node, "a string");
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"type": "string"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.clone())
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        T::decode(node, cx).map(Some)
    }
    fn schema() -> Json {
        T::schema()
    }
    fn to_json(&self) -> Json {
        self.as_ref().map(T::to_json).unwrap_or(Json::Null)
    }
    fn absent() -> Option<Self> {
        Some(None)
    }
    const FILE_VARIANT: bool = T::FILE_VARIANT;
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let Value::Array(items) = &node.value else {
            cx.type_error(node, "an array");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            if item.is_poisoned() {
                ok = false;
                continue;
            }
            match cx.with_key(&i.to_string(), |cx| T::decode(item, cx)) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
    fn schema() -> Json {
        json!({"type": "array", "items": T::schema()})
    }
    fn to_json(&self) -> Json {
        Json::Array(self.iter().map(T::to_json).collect())
    }
    fn absent() -> Option<Self> {
        Some(Vec::new())
    }
}

impl<T: Decode> Decode for indexmap::IndexMap<String, T> {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let Some(t) = node.as_table() else {
            cx.type_error(node, "a table");
            return None;
        };
        let mut out = indexmap::IndexMap::with_capacity(t.len());
        let mut ok = true;
        for (k, e) in t {
            if e.node.is_poisoned() {
                ok = false;
                continue;
            }
            match cx.with_key(k, |cx| T::decode(&e.node, cx)) {
                Some(v) => {
                    out.insert(k.clone(), v);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
    fn schema() -> Json {
        json!({"type": "object", "additionalProperties": T::schema()})
    }
    fn to_json(&self) -> Json {
        Json::Object(self.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
    }
    fn absent() -> Option<Self> {
        Some(indexmap::IndexMap::new())
    }
}

/// The longest duration a registry may give (100 years of 365.25 days, as
/// humantime counts `100y`): a deadline that
/// far ahead is still a valid instant, and backoff arithmetic on it does
/// not overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(3_155_760_000);

/// Durations are humantime strings: `250ms`, `5m`, `1h30m`.
impl Decode for std::time::Duration {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let Some(s) = node.as_str() else {
            cx.type_error(
                node,
                "a duration string such as \"250ms\", \"5s\" or \"1h30m\"",
            );
            return None;
        };
        let Ok(d) = humantime::parse_duration(s.trim()) else {
            cx.error(
                "invalid-duration",
                node.span,
                format!("{s:?} is not a duration; expected a number with a unit, such as \"250ms\", \"5s\" or \"1h30m\""),
            );
            return None;
        };
        // A deadline this far ahead would overflow the clock's arithmetic
        // (a panic at the shutdown); nothing needs more.
        if d > MAX_DURATION {
            cx.error(
                "invalid-duration",
                node.span,
                format!("{s:?} is too long; expected at most 100y"),
            );
            return None;
        }
        Some(d)
    }
    fn schema() -> Json {
        json!({"type": "string", "pattern": r"^(\s*([0-9]+\s*[a-zA-Zµ]+\s*)+|.*\$\{.+\}.*)$",
               "description": "humantime duration: 250ms, 5s, 1h30m"})
    }
    fn to_json(&self) -> Json {
        Json::String(humantime::format_duration(*self).to_string())
    }
}

/// A table kept as JSON (arguments of scheduled actions, settings of custom
/// kinds, which the kind's own factory types).
impl Decode for Json {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        if node.as_table().is_none() {
            cx.type_error(node, "a table");
            return None;
        }
        Some(node.to_json())
    }
    fn schema() -> Json {
        json!({"type": "object"})
    }
    fn to_json(&self) -> Json {
        self.clone()
    }
    fn absent() -> Option<Self> {
        Some(Json::Object(Map::new()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::node;
    use crate::config::source::SourceMap;

    pub(crate) use crate::config::source::NoSources;

    config_table! {
        /// A test table.
        pub struct Sample {
            /// A count.
            pub count: u32 = 3,
            pub name: String,
            pub wait: Option<std::time::Duration>,
        }
    }

    fn decode_sample(text: &str) -> (Option<Sample>, Vec<String>) {
        let mut map = SourceMap::default();
        let id = map.add("t.toml".into(), text.into());
        let root = node::parse(id, text).ok().unwrap();
        let mut diags = Diagnostics::default();
        let mut cx = Cx::new(&mut diags, &NoSources, ".".into());
        let v = Sample::decode(&root, &mut cx);
        (v, diags.iter().map(|d| d.message.clone()).collect())
    }

    #[test]
    fn tables_apply_defaults_and_report_every_problem() {
        let (v, errs) = decode_sample("name = \"x\"\n");
        assert_eq!(
            v,
            Some(Sample {
                count: 3,
                name: "x".into(),
                wait: None
            })
        );
        assert!(errs.is_empty());

        let (v, errs) = decode_sample("count = -1\nwait = \"soon\"\nnmae = 1\n");
        assert_eq!(v, None);
        assert_eq!(
            errs,
            vec![
                "count: -1 is out of range; expected an integer from 0 to 4294967295",
                "missing required key `name`",
                "wait: \"soon\" is not a duration; expected a number with a unit, such as \"250ms\", \"5s\" or \"1h30m\"",
                "unknown key `nmae`; known: count, name, wait",
            ]
        );
    }

    #[test]
    fn schema_lists_keys_defaults_and_required() {
        let s = Sample::schema();
        assert_eq!(s["required"], json!(["name"]));
        assert_eq!(s["properties"]["count"]["default"], json!(3));
        assert_eq!(s["additionalProperties"], json!(false));
    }
}
