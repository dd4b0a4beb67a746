//! Redis stream replies read into entries: `XREADGROUP` (RESP2 arrays or
//! RESP3 maps), `XAUTOCLAIM`, `XPENDING`, and the event an entry carries.

use redis::Value;

/// One stream entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    /// Field/value pairs, in order (text: non-UTF-8 bytes replaced).
    pub fields: Vec<(String, String)>,
    /// Deliveries so far, this one included.
    pub deliveries: i64,
}

/// What an entry says, ready for the replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub partition_key: String,
    pub payload: String,
    pub headers: String,
    /// The entry's time (its id), in ms since the epoch.
    pub ms: f64,
}

/// A reply as text: bytes that are not UTF-8, and NUL (which no
/// PostgreSQL text or jsonb can hold), become U+FFFD, so that whatever an
/// entry holds can at least be kept as a dead letter.
pub fn text(v: &Value) -> Option<String> {
    let s = match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(i) => return Some(i.to_string()),
        _ => return None,
    };
    Some(if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    })
}

pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// The items of an array (or set) reply; nothing for anything else.
pub fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// `[id, [field, value, ...]]` as an entry of `stream`; an entry deleted
/// from the stream but still pending (`[id, nil]`) has no fields.
fn entry(stream: &str, v: &Value) -> Option<Entry> {
    let parts = items(v);
    let id = text(parts.first()?)?;
    let mut fields = Vec::new();
    match parts.get(1) {
        Some(Value::Map(pairs)) => {
            for (k, v) in pairs {
                fields.push((text(k)?, text(v).unwrap_or_default()));
            }
        }
        Some(flat) => {
            for pair in items(flat).chunks(2) {
                if let [k, v] = pair {
                    fields.push((text(k)?, text(v).unwrap_or_default()));
                }
            }
        }
        None => {}
    }
    Some(Entry {
        stream: stream.to_string(),
        id,
        fields,
        deliveries: 1,
    })
}

/// The entries of an `XREADGROUP` reply (nil: none).
pub fn read_reply(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut add = |name: &Value, entries: &Value| {
        if let Some(stream) = text(name) {
            out.extend(items(entries).iter().filter_map(|e| entry(&stream, e)));
        }
    };
    match v {
        Value::Map(streams) => {
            for (name, entries) in streams {
                add(name, entries);
            }
        }
        other => {
            for s in items(other) {
                if let [name, entries] = items(s) {
                    add(name, entries);
                }
            }
        }
    }
    out
}

/// Redis's clock in ms since the epoch, from a `TIME` reply (`[seconds,
/// microseconds]`).
pub fn redis_time_ms(v: &Value) -> Option<f64> {
    let parts = items(v);
    let seconds = int(parts.first()?)?;
    let micros = int(parts.get(1)?)?;
    Some(seconds as f64 * 1000.0 + micros as f64 / 1000.0)
}

/// What an `XAUTOCLAIM` reply says (`[next, [entries], [deleted]]`).
pub struct Autoclaimed {
    /// Where the next scan starts (`0-0`: the scan is complete).
    pub next: String,
    /// The entries claimed, and (without fields) those that were pending
    /// but deleted from the stream, which Redis dropped from the pending
    /// list as it answered: their fields are lost.
    pub entries: Vec<Entry>,
}

pub fn autoclaim_reply(stream: &str, v: &Value) -> Autoclaimed {
    let parts = items(v);
    let mut entries: Vec<Entry> = parts
        .get(1)
        .map(|es| items(es).iter().filter_map(|e| entry(stream, e)).collect())
        .unwrap_or_default();
    if let Some(deleted) = parts.get(2) {
        entries.extend(items(deleted).iter().filter_map(text).map(|id| Entry {
            stream: stream.to_string(),
            id,
            fields: Vec::new(),
            deliveries: 1,
        }));
    }
    Autoclaimed {
        next: parts.first().and_then(text).unwrap_or_else(|| "0-0".into()),
        entries,
    }
}

/// Deliveries by entry id, from an extended `XPENDING` reply
/// (`[[id, consumer, idle, deliveries], ...]`).
pub fn deliveries(v: &Value) -> std::collections::HashMap<String, i64> {
    items(v)
        .iter()
        .filter_map(|p| {
            let p = items(p);
            Some((text(p.first()?)?, int(p.get(3)?)?))
        })
        .collect()
}

/// What warden accepts of an entry: beyond these it is a dead letter,
/// with a reason that names the bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// The longest event id, in bytes (`max_event_id_bytes`).
    pub event_id: usize,
    /// The largest payload or headers, in bytes (`max_payload`).
    pub payload: usize,
    /// The deepest nesting of arrays and objects (`max_json_depth`).
    pub depth: usize,
}

/// Whether JSON text `s` nests arrays and objects deeper than `max`,
/// read without recursion (brackets inside strings do not count), so
/// that no depth, however large, costs more than a pass over the bytes.
pub fn deeper_than(s: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in s.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl Entry {
    /// [`Entry::event`], within `bounds`: an event id, a payload or
    /// headers beyond them is refused, naming the bound and the setting.
    pub fn event_within(&self, bounds: &Bounds) -> Result<Event, String> {
        for name in ["payload", "headers"] {
            let Some(text) = self.field(name) else {
                continue;
            };
            if text.len() > bounds.payload {
                return Err(format!(
                    "the {name} field is {} bytes, more than max_payload ({} bytes)",
                    text.len(),
                    bounds.payload
                ));
            }
            if deeper_than(text, bounds.depth) {
                return Err(format!(
                    "the {name} field nests arrays or objects deeper than max_json_depth ({})",
                    bounds.depth
                ));
            }
        }
        let event = self.event()?;
        if event.event_id.len() > bounds.event_id {
            return Err(format!(
                "the event id is {} bytes, more than max_event_id_bytes ({})",
                event.event_id.len(),
                bounds.event_id
            ));
        }
        Ok(event)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The event this entry carries, or why it cannot be applied: no
    /// `payload`, or a payload or `headers` that is not JSON. The event id
    /// is the `event_id` field (a replayed dead letter keeps its own), else
    /// `outbox_id` (the relay's), else the stream and entry id.
    pub fn event(&self) -> Result<Event, String> {
        let is_json = |s: &str| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok();
        if self.fields.is_empty() {
            return Err("the entry was deleted from the stream before it was applied".into());
        }
        let payload = self
            .field("payload")
            .ok_or("the entry has no payload field")?;
        if !is_json(payload) {
            return Err("the payload is not JSON".into());
        }
        let headers = match self.field("headers") {
            None | Some("") => "{}",
            Some(h) if is_json(h) => h,
            Some(_) => return Err("the headers are not JSON".into()),
        };
        let non_empty = |k: &str| self.field(k).filter(|v| !v.is_empty());
        let event_id = non_empty("event_id")
            .or_else(|| non_empty("outbox_id"))
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}:{}", self.stream, self.id));
        let ms = self
            .id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<f64>().ok())
            .unwrap_or(0.0);
        Ok(Event {
            event_id,
            partition_key: self.field("partition_key").unwrap_or("").to_string(),
            payload: payload.to_string(),
            headers: headers.to_string(),
            ms,
        })
    }

    /// The fields as a JSON object (for the dead-letter table).
    pub fn fields_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(map).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry_value(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn xreadgroup_replies_in_resp2_and_resp3_read_alike() {
        let e1 = entry_value("1-0", &[("payload", "{}"), ("outbox_id", "7")]);
        let e2 = entry_value("2-0", &[("payload", "[1]")]);
        let resp2 = Value::Array(vec![
            Value::Array(vec![bulk("a"), Value::Array(vec![e1.clone()])]),
            Value::Array(vec![bulk("b"), Value::Array(vec![e2.clone()])]),
        ]);
        let resp3 = Value::Map(vec![
            (bulk("a"), Value::Array(vec![e1])),
            (bulk("b"), Value::Array(vec![e2])),
        ]);
        for v in [resp2, resp3] {
            let es = read_reply(&v);
            assert_eq!(es.len(), 2);
            assert_eq!((es[0].stream.as_str(), es[0].id.as_str()), ("a", "1-0"));
            assert_eq!(es[0].field("outbox_id"), Some("7"));
            assert_eq!((es[1].stream.as_str(), es[1].id.as_str()), ("b", "2-0"));
        }
        assert!(read_reply(&Value::Nil).is_empty());
    }

    #[test]
    fn an_event_id_is_the_event_id_field_else_the_outbox_id_else_the_entry() {
        let e = |fields: &[(&str, &str)]| Entry {
            stream: "s".into(),
            id: "1700000000123-4".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            deliveries: 1,
        };
        let ev = e(&[("payload", "{}"), ("outbox_id", "9"), ("event_id", "x")])
            .event()
            .unwrap();
        assert_eq!(ev.event_id, "x");
        assert_eq!(
            e(&[("payload", "{}"), ("outbox_id", "9")])
                .event()
                .unwrap()
                .event_id,
            "9"
        );
        let ev = e(&[("payload", "{}"), ("outbox_id", "")]).event().unwrap();
        assert_eq!(ev.event_id, "s:1700000000123-4");
        assert_eq!(ev.ms, 1_700_000_000_123.0);
        assert_eq!(ev.headers, "{}");
        let with_headers = e(&[("payload", "{}"), ("headers", r#"{"h": 1}"#)]);
        assert_eq!(with_headers.event().unwrap().headers, r#"{"h": 1}"#);
        assert_eq!(
            e(&[("payload", "nope")]).event(),
            Err("the payload is not JSON".to_string())
        );
        assert_eq!(
            e(&[("payload", "{}"), ("headers", "{")]).event(),
            Err("the headers are not JSON".to_string())
        );
        assert_eq!(
            e(&[("other", "1")]).event(),
            Err("the entry has no payload field".to_string())
        );
        assert!(e(&[]).event().is_err(), "a deleted entry");
    }

    #[test]
    fn every_text_reply_reads_as_text_nul_and_bad_utf8_replaced() {
        assert_eq!(text(&bulk("a")), Some("a".to_string()));
        assert_eq!(
            text(&Value::SimpleString("OK".into())),
            Some("OK".to_string())
        );
        assert_eq!(
            text(&Value::VerbatimString {
                format: redis::VerbatimFormat::Text,
                text: "v".into()
            }),
            Some("v".to_string())
        );
        assert_eq!(text(&Value::Int(-7)), Some("-7".to_string()));
        assert_eq!(text(&Value::Nil), None);
        assert_eq!(text(&bulk("a\0b")), Some("a\u{FFFD}b".to_string()));
        assert_eq!(
            text(&Value::BulkString(vec![b'x', 0xff])),
            Some("x\u{FFFD}".to_string())
        );
        assert_eq!(int(&Value::Int(3)), Some(3));
        assert_eq!(int(&bulk("12")), Some(12));
        assert_eq!(int(&bulk("x")), None);
    }

    #[test]
    fn an_entrys_fields_are_kept_as_a_json_object_of_strings() {
        let e = Entry {
            stream: "s".into(),
            id: "1-0".into(),
            fields: vec![
                ("payload".into(), "{}".into()),
                ("q\"uote".into(), "v\u{FFFD}".into()),
            ],
            deliveries: 1,
        };
        let json: serde_json::Value = serde_json::from_str(&e.fields_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"payload": "{}", "q\"uote": "v\u{FFFD}"})
        );
    }

    #[test]
    fn redis_time_is_read_in_milliseconds() {
        let reply = Value::Array(vec![bulk("1700000000"), bulk("123456")]);
        assert_eq!(redis_time_ms(&reply), Some(1_700_000_000_123.456));
        assert_eq!(redis_time_ms(&Value::Nil), None);
        assert_eq!(redis_time_ms(&Value::Array(vec![bulk("1")])), None);
    }

    #[test]
    fn nesting_is_counted_outside_strings_without_recursion() {
        assert!(!deeper_than("{}", 1));
        assert!(deeper_than("[[]]", 1));
        assert!(!deeper_than("[[]]", 2));
        assert!(!deeper_than(r#"{"a": [1, {"b": 2}], "c": {}}"#, 3));
        assert!(deeper_than(r#"{"a": [1, {"b": 2}], "c": {}}"#, 2));
        // Brackets in strings, escaped quotes among them, do not count.
        assert!(!deeper_than(r#"["[[[[", "\"[[[[", "\\"]"#, 1));
        assert!(
            deeper_than(r#"["\\", ["x"]]"#, 1),
            "an escaped backslash ends"
        );
        // Closing brackets bring the depth down again.
        assert!(!deeper_than("[[],[],[]]", 2));
        assert!(!deeper_than("]]]][[", 2), "never below zero");
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(deeper_than(&deep, 128));
        assert!(!deeper_than(&deep, 100_000));
    }

    #[test]
    fn an_entry_beyond_the_bounds_is_refused_naming_the_setting() {
        let bounds = Bounds {
            event_id: 8,
            payload: 20,
            depth: 2,
        };
        let e = |fields: &[(&str, &str)]| Entry {
            stream: "s".into(),
            id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            deliveries: 1,
        };
        assert!(
            e(&[("payload", "[[1]]"), ("event_id", "12345678")])
                .event_within(&bounds)
                .is_ok()
        );
        assert_eq!(
            e(&[("payload", "{}"), ("event_id", "123456789")]).event_within(&bounds),
            Err("the event id is 9 bytes, more than max_event_id_bytes (8)".to_string())
        );
        assert_eq!(
            e(&[("payload", "[[[1]]]")]).event_within(&bounds),
            Err(
                "the payload field nests arrays or objects deeper than max_json_depth (2)"
                    .to_string()
            )
        );
        assert_eq!(
            e(&[("payload", "{}"), ("headers", "[[[1]]]")]).event_within(&bounds),
            Err(
                "the headers field nests arrays or objects deeper than max_json_depth (2)"
                    .to_string()
            )
        );
        assert_eq!(
            e(&[("payload", &format!("\"{}\"", "x".repeat(19)))]).event_within(&bounds),
            Err("the payload field is 21 bytes, more than max_payload (20 bytes)".to_string())
        );
        assert!(
            e(&[("payload", &format!("\"{}\"", "x".repeat(18)))])
                .event_within(&bounds)
                .is_ok(),
            "20 bytes is within"
        );
        // The stream and entry id, when it is the event id, is bounded too.
        let long = Entry {
            stream: "a-long-stream-name".into(),
            ..e(&[("payload", "{}")])
        };
        assert!(long.event_within(&bounds).is_err());
        // Other faults are still found.
        assert_eq!(
            e(&[("payload", "nope")]).event_within(&bounds),
            Err("the payload is not JSON".to_string())
        );
    }

    #[test]
    fn pending_deliveries_and_autoclaimed_entries_are_read() {
        let pending = Value::Array(vec![Value::Array(vec![
            bulk("5-0"),
            bulk("c1"),
            Value::Int(1000),
            Value::Int(6),
        ])]);
        assert_eq!(deliveries(&pending).get("5-0"), Some(&6));
        let claimed = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![entry_value("5-0", &[("payload", "{}")])]),
            Value::Array(vec![]),
        ]);
        let c = autoclaim_reply("s", &claimed);
        assert_eq!(c.next, "0-0");
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.entries[0].id, "5-0");
        // A scan that goes on, and an entry deleted while pending.
        let more = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![entry_value("6-0", &[("payload", "{}")])]),
            Value::Array(vec![bulk("6-1")]),
        ]);
        let c = autoclaim_reply("s", &more);
        assert_eq!(c.next, "7-0");
        let ids: Vec<&str> = c.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["6-0", "6-1"]);
        assert!(c.entries[1].fields.is_empty());
        assert_eq!(
            c.entries[1].event().unwrap_err(),
            "the entry was deleted from the stream before it was applied"
        );
    }
}
