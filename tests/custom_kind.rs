//! Kinds from a library: `examples/custom_service.rs` registers its own
//! kind and runs warden's command line; these tests build and run it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::http::{get_json, http, wait_http};
use support::servers::free_port;

fn example_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--example", "custom_service"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "cargo build --example custom_service failed"
    );
    // target/debug/deps/custom_kind-* -> target/debug/examples/custom_service
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("custom_service")
}

const REGISTRY: &str = r#"
[api]
enabled = false

[services.greeter]
kind = "greeter"
greeting = "hello from a custom kind"
every = "50ms"

[services.after]
kind = "process"
command = ["sleep", "210987"]
depends_on = ["greeter"]
"#;

#[test]
fn a_user_crate_registers_a_kind_and_runs_it_under_warden() {
    let bin = example_binary();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.toml"), REGISTRY).unwrap();

    let check = Command::new(&bin)
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("greeter [greeter]"), "{out}");

    let mut child = Command::new(&bin)
        .args(["run", "--log-format", "json"])
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut greetings, mut after_started) = (0, false);
    for line in lines.map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        // The event carries the service's name through warden's span.
        if v["message"] == "hello from a custom kind" && v["span"]["service"] == "greeter" {
            greetings += 1;
        }
        if v["service"] == "after" && v["message"] == "ready" {
            after_started = true;
        }
        if (greetings >= 3 && after_started) || Instant::now() > deadline {
            break;
        }
    }
    assert!(
        greetings >= 3 && after_started,
        "greetings: {greetings}, after started: {after_started}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_custom_kinds_settings_are_checked_before_anything_runs() {
    let bin = example_binary();
    let dir = tempfile::tempdir().unwrap();
    let registry = "[api]\nenabled = false\n[services.greeter]\nkind = \"greeter\"\ngreting = \"typo\"\nrestart = { policy = \"never\" }\n";
    std::fs::write(dir.path().join("services.toml"), registry).unwrap();
    let out = Command::new(&bin)
        .args(["run", "--log-format", "json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    // The run refuses the registry, as for a built-in kind: nothing starts.
    assert!(
        log.contains("services.greeter: unknown key `greting`; known:"),
        "{log}"
    );
    assert_eq!(out.status.code(), Some(1), "{log}");
}

/// The library's kind gets what a built-in kind gets: its settings in
/// `warden schema`, a wrong key reported by `warden check` with file, line
/// and caret, its action in `/openapi.json`, and the action over the API.
#[test]
fn a_library_kind_is_in_the_schema_the_check_the_openapi_and_the_api() {
    let bin = example_binary();
    let dir = tempfile::tempdir().unwrap();

    // warden schema: the kind and its typed settings.
    let out = Command::new(&bin).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let service = &schema["properties"]["services"]["additionalProperties"];
    let kinds = service["properties"]["kind"]["enum"].as_array().unwrap();
    assert!(kinds.contains(&"greeter".into()), "{kinds:?}");
    let greeter = service["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["properties"]["kind"]["const"] == "greeter")
        .expect("a schema for kind greeter");
    assert_eq!(greeter["properties"]["every"]["default"], "1s");
    assert_eq!(greeter["properties"]["greeting"]["type"], "string");
    assert_eq!(greeter["additionalProperties"], false);
    assert!(
        greeter["required"]
            .as_array()
            .unwrap()
            .contains(&"greeting".into())
    );

    // warden check: a wrong key of the kind, with file, line and caret.
    let bad = "[services.greeter]\nkind = \"greeter\"\ngreeting = \"hi\"\nevry = \"2s\"\n";
    std::fs::write(dir.path().join("services.toml"), bad).unwrap();
    let out = Command::new(&bin)
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error[unknown-key]: services.greeter: unknown key `evry`; known:"),
        "{text}"
    );
    assert!(text.contains("--> services.toml:4:1"), "{text}");
    assert!(text.contains("4 | evry = \"2s\""), "{text}");
    assert!(text.contains("  | ^^^^"), "{text}");
    assert!(text.contains("did you mean `every`?"), "{text}");

    // /openapi.json lists the action, with the shape of its body; the
    // action runs over the API.
    let port = free_port();
    let good = format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n[services.greeter]\nkind = \"greeter\"\ngreeting = \"hello\"\nevery = \"20ms\"\n"
    );
    std::fs::write(dir.path().join("services.toml"), good).unwrap();
    let mut child = Command::new(&bin)
        .args(["run", "--log-format", "json"])
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_http(port, "/readyz", 200);
    let (status, doc) = get_json(port, "/openapi.json");
    assert_eq!(status, 200);
    let op = &doc["paths"]["/v1/services/{name}/actions/greet"]["post"];
    assert!(op["summary"].as_str().unwrap().contains("greeter"), "{op}");
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["properties"]["name"]["type"],
        "string"
    );
    let generic = doc["paths"]["/v1/services/{name}/actions/{action}"]["post"]["description"]
        .as_str()
        .unwrap();
    assert!(generic.contains("| `greeter` | `greet` |"), "{generic}");

    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/greeter/actions/greet",
        &[],
        br#"{"name": "tests"}"#,
    );
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["said"], "hello, tests", "{answer}");
    assert_eq!(answer["action"], "greet");
    // A body the action cannot take is the caller's mistake: 400.
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/greeter/actions/greet",
        &[],
        br#"{"name": 7}"#,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // An action the kind does not have: 404, naming the ones it has.
    let (status, _, body) = http(
        port,
        "POST",
        "/v1/services/greeter/actions/wave",
        &[],
        b"{}",
    );
    assert_eq!(status, 404);
    assert!(
        String::from_utf8_lossy(&body).contains("known: greet"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
