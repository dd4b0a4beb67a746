//! DESIGN.md §3 "Custom kinds": `examples/custom_service.rs` registers its
//! own kind and runs warden's command line; this test builds and runs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
fn the_custom_kinds_settings_errors_name_the_service() {
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
    assert!(
        log.contains("services.greeter: unknown field `greting`"),
        "{log}"
    );
    // Nothing is left running, so warden ends; the failure was not critical.
    assert_eq!(out.status.code(), Some(0), "{log}");
}
