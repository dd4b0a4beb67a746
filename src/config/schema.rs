//! The JSON Schema of `services.toml` (`warden schema`), assembled from the
//! same field lists the loader decodes with.

use serde_json::{Value as Json, json};

use super::decode::{Decode, Fields, ObjectSchema};
use super::model::{ApiSpec, CommonSpec, DEFAULTS_KEYS, Kind, WardenSpec, service_schema};

/// The schema, draft 2020-12.
pub fn registry_schema() -> Json {
    let kinds: Vec<Json> = Kind::NAMES
        .iter()
        .filter_map(|k| Kind::parse(k))
        .filter(|k| *k != Kind::Api)
        .map(service_schema)
        .collect();
    let service = json!({
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"type": "string", "enum": Kind::NAMES.iter().filter(|k| **k != "api").collect::<Vec<_>>()}},
        "oneOf": kinds,
    });
    let mut common = ObjectSchema::new("");
    CommonSpec::schema_fields(&mut common);
    let defaults_props: serde_json::Map<String, Json> = common
        .properties()
        .iter()
        .filter(|(k, _)| DEFAULTS_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let defaults = json!({
        "type": "object",
        "description": "Merged into every service; the service's own keys win.",
        "properties": defaults_props,
        "additionalProperties": false,
    });
    // A profile overlays anything, partially: its services need no `kind`.
    let partial_service =
        json!({"type": "object", "description": "Overlay of a service: any of its keys."});
    let profile = json!({
        "type": "object",
        "properties": {
            "warden": {"type": "object"},
            "api": {"type": "object"},
            "defaults": {"type": "object"},
            "services": {"type": "object", "additionalProperties": partial_service},
        },
        "additionalProperties": false,
    });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://warden.dev/schema/services.json",
        "title": "warden services.toml",
        "type": "object",
        "properties": {
            "warden": WardenSpec::schema(),
            "api": ApiSpec::schema(),
            "defaults": defaults,
            "services": {
                "type": "object",
                "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"},
                "additionalProperties": service,
            },
            "profiles": {"type": "object", "additionalProperties": profile},
        },
        "additionalProperties": false,
    })
}
