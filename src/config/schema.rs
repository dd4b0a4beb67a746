//! The JSON Schema of `services.toml` (`warden schema`), assembled from the
//! same field lists the loader decodes with.

use serde_json::{Value as Json, json};

use super::decode::{Decode, Fields, ObjectSchema};
use super::kind::{KindDef, KindTable};
use super::model::{ApiSpec, CommonSpec, DEFAULTS_KEYS, WardenSpec};

/// The schema of the service table of one kind: the common keys and the
/// kind's own.
pub fn service_schema(kind: &KindDef) -> Json {
    let mut s = ObjectSchema::new(&format!("A service of kind {}.", kind.name()));
    s.property("kind", json!({"const": kind.name()}), true);
    CommonSpec::schema_fields(&mut s);
    kind.schema_fields(&mut s);
    s.build()
}

/// The schema, draft 2020-12, for a registry whose services may be of the
/// kinds in `kinds`.
pub fn registry_schema(kinds: &KindTable) -> Json {
    let per_kind: Vec<Json> = kinds.writable().map(service_schema).collect();
    let service = json!({
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"type": "string", "enum": kinds.names()}},
        "oneOf": per_kind,
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
