//! `warden schema`: every registry we ship validates against
//! the JSON Schema, and the schema rejects what the loader rejects for
//! shape (unknown keys, wrong types, unknown kinds).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use warden::config::schema::registry_schema;
use warden::config::{LoadOptions, RealSources};
use warden::graph::load_and_check;

fn builtin_table() -> warden::config::KindTable {
    warden::services::builtin(PathBuf::from(".")).table()
}

fn shipped_registries() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("services.toml")];
    for dir in ["examples", "deploy"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "toml") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

fn as_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    serde_json::to_value(value).unwrap()
}

fn errors_of(schema: &jsonschema::Validator, doc: &Json) -> Vec<String> {
    schema
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_registry_validates_against_the_schema_and_loads() {
    let schema = jsonschema::validator_for(&registry_schema(&builtin_table()))
        .expect("the schema itself is valid");
    let files = shipped_registries();
    assert!(
        files.len() >= 3,
        "services.toml and the examples are found: {files:?}"
    );
    for f in files {
        let errs = errors_of(&schema, &as_json(&f));
        assert!(
            errs.is_empty(),
            "{} does not match the schema:\n{}",
            f.display(),
            errs.join("\n")
        );
        let checked = load_and_check(
            &LoadOptions {
                path: f.clone(),
                profile: None,
                kinds: std::sync::Arc::new(builtin_table()),
            },
            &RealSources,
        );
        let diags: Vec<String> = checked
            .loaded
            .diagnostics
            .iter()
            .map(|d| d.render(&checked.loaded.sources))
            .collect();
        assert!(
            checked.graph.is_some(),
            "{} does not check clean:\n{}",
            f.display(),
            diags.join("\n")
        );
    }
}

#[test]
fn the_schema_rejects_wrong_shapes() {
    let schema = jsonschema::validator_for(&registry_schema(&builtin_table())).unwrap();
    let bad = [
        r#"[services.a]
kind = "process"
comand = ["x"]"#,
        r#"[services.a]
kind = "proces"
command = ["x"]"#,
        r#"[services.a]
kind = "process"
command = "x""#,
        r#"[services.a]
kind = "process"
command = ["x"]
restart = { policy = "sometimes" }"#,
        r#"[services.a]
kind = "outbox-relay"
redis = "redis://h:1""#,
        r#"[warden]
shutdown_timeout = 30"#,
        r#"[services.a]
kind = "process"
command = ["x"]
ready = { tcp = "h:1", http = "http://h/" }"#,
    ];
    for text in bad {
        let v: toml::Value = toml::from_str(text).unwrap();
        let doc = serde_json::to_value(v).unwrap();
        assert!(!schema.is_valid(&doc), "the schema accepted:\n{text}");
    }
}

#[test]
fn warden_schema_prints_the_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, registry_schema(&builtin_table()));
}
