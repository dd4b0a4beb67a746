//! An owned TOML tree in which every key and value remembers its span.
//!
//! Profiles and `[defaults]` are merged on this tree, before typing, so that
//! a value keeps pointing at the file and line it came from whichever layer
//! won.

use indexmap::IndexMap;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::source::{FileId, Span};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
    /// A value whose problem was already reported (a failed `${VAR}`):
    /// typing skips it silently instead of reporting it a second time.
    Poisoned,
}

/// A table entry: the key's own span (for "unknown key" carets) and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key_span: Span,
    pub node: Node,
}

/// Keys in the order they were written.
pub type Table = IndexMap<String, Entry>;

impl Node {
    pub fn table(span: Span) -> Node {
        Node {
            value: Value::Table(Table::new()),
            span,
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match &self.value {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_table_mut(&mut self) -> Option<&mut Table> {
        match &mut self.value {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_poisoned(&self) -> bool {
        matches!(self.value, Value::Poisoned)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// Looks up a key of a table node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_table()?.get(key).map(|e| &e.node)
    }

    /// A short description of the value's type, for "expected X, found Y".
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::String(_) => "string",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Boolean(_) => "boolean",
            Value::Datetime(_) => "datetime",
            Value::Array(_) => "array",
            Value::Table(_) => "table",
            Value::Poisoned => "invalid value",
        }
    }

    /// The value as the user would recognise it, for messages. Strings are
    /// quoted; tables and arrays are only named.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::String(s) => format!("{s:?}"),
            Value::Integer(i) => format!("integer {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Boolean(b) => format!("boolean {b}"),
            Value::Datetime(d) => format!("datetime {d}"),
            Value::Array(_) => "an array".into(),
            Value::Table(_) => "a table".into(),
            Value::Poisoned => "an invalid value".into(),
        }
    }

    /// Deep merge: tables merge key by key, anything else in `overlay`
    /// replaces what `self` had.
    pub fn merge(&mut self, overlay: Node) {
        match (&mut self.value, overlay.value) {
            (Value::Table(base), Value::Table(over)) => {
                for (k, e) in over {
                    match base.get_mut(&k) {
                        Some(b) => b.node.merge(e.node),
                        None => {
                            base.insert(k, e);
                        }
                    }
                }
            }
            (_, v) => {
                self.value = v;
                self.span = overlay.span;
            }
        }
    }

    /// Converts to JSON (for kind settings handed to custom factories, and
    /// for validating examples against the JSON Schema).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::String(s) => J::String(s.clone()),
            Value::Integer(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Boolean(b) => J::Bool(*b),
            Value::Datetime(d) => J::String(d.clone()),
            Value::Array(a) => J::Array(a.iter().map(Node::to_json).collect()),
            Value::Table(t) => J::Object(
                t.iter()
                    .map(|(k, e)| (k.clone(), e.node.to_json()))
                    .collect(),
            ),
            Value::Poisoned => J::Null,
        }
    }
}

/// Parse errors of a document: message and span.
#[derive(Debug)]
pub struct SyntaxError {
    pub message: String,
    pub span: Option<Span>,
}

/// Parses TOML text into a [`Node`] tree, collecting every syntax error the
/// parser can recover from.
pub fn parse(file: FileId, text: &str) -> Result<Node, Vec<SyntaxError>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .into_iter()
            .map(|e| SyntaxError {
                message: e.message().trim().to_string(),
                span: e.span().map(|r| Span::new(file, r)),
            })
            .collect());
    }
    let span = Span::new(file, doc.span());
    Ok(Node {
        value: Value::Table(convert_table(file, doc.into_inner())),
        span,
    })
}

fn convert_table(file: FileId, t: DeTable<'_>) -> Table {
    let mut out = Table::with_capacity(t.len());
    for (k, v) in t {
        let key_span = Span::new(file, k.span());
        out.insert(
            k.into_inner().into_owned(),
            Entry {
                key_span,
                node: convert(file, v),
            },
        );
    }
    out
}

fn convert(file: FileId, v: Spanned<DeValue<'_>>) -> Node {
    let span = Span::new(file, v.span());
    let value = match v.into_inner() {
        DeValue::String(s) => Value::String(s.into_owned()),
        DeValue::Integer(i) => match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
            Ok(n) => Value::Integer(n),
            // Out of range for i64: keep the text so the typed stage can say so.
            Err(_) => Value::String(i.as_str().to_string()),
        },
        DeValue::Float(f) => {
            let s = f.as_str().replace('_', "");
            let n = match s.as_str() {
                "inf" | "+inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" | "+nan" | "-nan" => f64::NAN,
                other => other.parse().unwrap_or(f64::NAN),
            };
            Value::Float(n)
        }
        DeValue::Boolean(b) => Value::Boolean(b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(a.into_iter().map(|e| convert(file, e)).collect()),
        DeValue::Table(t) => Value::Table(convert_table(file, t)),
    };
    Node { value, span }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_deep_and_overlay_wins() {
        let mut base = parse(0, "a = 1\n[t]\nx = 1\ny = [1]\n").unwrap();
        let over = parse(1, "[t]\ny = [2, 3]\nz = true\n").unwrap();
        base.merge(over);
        let j = base.to_json();
        assert_eq!(
            j,
            serde_json::json!({"a": 1, "t": {"x": 1, "y": [2, 3], "z": true}})
        );
        // The replaced value points at the overlay's file.
        assert_eq!(base.get("t").unwrap().get("y").unwrap().span.file, 1);
        assert_eq!(base.get("t").unwrap().get("x").unwrap().span.file, 0);
    }

    #[test]
    fn every_syntax_error_is_kept() {
        let errs = parse(0, "a = \nb = = 2\n").err().unwrap();
        assert!(!errs.is_empty());
        assert!(errs.iter().all(|e| e.span.is_some()));
    }
}
