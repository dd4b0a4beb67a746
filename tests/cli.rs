//! The dry-run commands: the real `warden` binary, its
//! output and its exit codes (0 valid, 1 invalid, 2 usage).

use std::path::Path;
use std::process::{Command, Output};

fn warden(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(dir)
        .env_remove("WARDEN_CONFIG")
        .env_remove("WARDEN_PROFILE")
        .env_remove("WARDEN_API_TOKEN")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .expect("run warden")
}

fn dir_with(registry: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.toml"), registry).unwrap();
    dir
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const GOOD: &str = r#"
[services.db]
kind = "process"
command = ["db"]
critical = true

[services.seed]
kind = "process"
command = ["seed"]
oneshot = true
depends_on = ["db"]

[services.app]
kind = "process"
command = ["app"]
depends_on = { db = "ready", seed = "completed" }

[services.side]
kind = "process"
command = ["side"]
"#;

#[test]
fn a_valid_registry_prints_its_plan_and_exits_0() {
    let dir = dir_with(GOOD);
    let out = warden(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ok: services.toml is valid: 5 services in the plan"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  wave 0:\n    api [api, critical]\n    db [process, critical]\n    side [process]\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("  wave 2:\n    app [process] after db ready, seed completed\n"),
        "{stdout}"
    );
    assert!(stdout.contains("shutdown order (dependents first, each wave in parallel):\n  1. app\n  2. seed\n  3. api, db, side\n"), "{stdout}");
}

#[test]
fn errors_show_file_line_column_and_a_caret_and_exit_1() {
    let dir = dir_with(
        "[services.app]\nkind = \"process\"\ncommand = [\"app\"]\ndepends_on = [\"db\"]\nstart_timeout = \"5 parsecs\"\n",
    );
    let out = warden(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error[unknown-dependency]: services.app: depends_on \"db\": no such service; known: api
 --> services.toml:4:15
  |
4 | depends_on = [\"db\"]
  |               ^^^^

error[invalid-duration]: services.app.start_timeout: \"5 parsecs\" is not a duration; expected a number with a unit, such as \"250ms\", \"5s\" or \"1h30m\"
 --> services.toml:5:17
  |
5 | start_timeout = \"5 parsecs\"
  |                 ^^^^^^^^^^^

error: the registry is invalid: 2 errors and 0 warnings
"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn json_output_has_the_documented_shape() {
    let dir = dir_with(
        "[services.app]\nkind = \"process\"\ncommand = [\"app\"]\ndepends_on = [\"db\"]\n",
    );
    let out = warden(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["version"], 1);
    assert_eq!(j["valid"], false);
    assert!(j["plan"].is_null());
    assert_eq!(
        j["errors"][0],
        serde_json::json!({
            "severity": "error", "code": "unknown-dependency",
            "message": "services.app: depends_on \"db\": no such service; known: api",
            "file": "services.toml", "line": 4, "column": 15,
            "service": "app", "key": "services.app.depends_on", "help": null
        })
    );

    let dir = dir_with(GOOD);
    let out = warden(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["valid"], true);
    assert_eq!(j["errors"], serde_json::json!([]));
    assert_eq!(
        j["plan"]["waves"],
        serde_json::json!([["api", "db", "side"], ["seed"], ["app"]])
    );
    assert_eq!(
        j["plan"]["shutdown"],
        serde_json::json!([["app"], ["seed"], ["api", "db", "side"]])
    );
    let app = j["plan"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app")
        .unwrap()
        .clone();
    assert_eq!(
        app,
        serde_json::json!({"name": "app", "kind": "process", "wave": 2, "critical": false, "oneshot": false,
            "depends_on": [{"service": "db", "condition": "ready"}, {"service": "seed", "condition": "completed"}]})
    );
}

#[test]
fn only_narrows_the_plan_to_the_dependency_closure() {
    let dir = dir_with(GOOD);
    let out = warden(dir.path(), &["check", "--only", "seed", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        j["plan"]["waves"],
        serde_json::json!([["api", "db"], ["seed"]]),
        "the API belongs to every selection"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = dir_with(GOOD);
    let out = warden(dir.path(), &["check", "--only", "sed"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: --only \"sed\": no such enabled service; known: api, db, seed, app, side (did you mean \"seed\"?)\n"
    );
    assert_eq!(
        warden(dir.path(), &["check", "--format", "yaml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(warden(dir.path(), &["frobnicate"]).status.code(), Some(2));
    assert_eq!(warden(dir.path(), &[]).status.code(), Some(2));
    assert_eq!(warden(dir.path(), &["--help"]).status.code(), Some(0));
}

#[test]
fn config_path_comes_from_the_flag_or_warden_config() {
    let dir = dir_with(GOOD);
    std::fs::rename(
        dir.path().join("services.toml"),
        dir.path().join("other.toml"),
    )
    .unwrap();
    assert_eq!(warden(dir.path(), &["check"]).status.code(), Some(1));
    assert_eq!(
        warden(dir.path(), &["check", "-c", "other.toml"])
            .status
            .code(),
        Some(0)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check"])
        .current_dir(dir.path())
        .env("WARDEN_CONFIG", "other.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn graph_prints_dot_mermaid_and_json() {
    let dir = dir_with(GOOD);
    let dot = text(&warden(dir.path(), &["graph"]).stdout);
    assert!(dot.starts_with("digraph warden {"), "{dot}");
    assert!(
        dot.contains("\"seed\" -> \"app\" [label=\"completed\"];"),
        "{dot}"
    );
    let mermaid = text(&warden(dir.path(), &["graph", "--format", "mermaid"]).stdout);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains("  db -->|ready| app\n"), "{mermaid}");
    let j: serde_json::Value =
        serde_json::from_slice(&warden(dir.path(), &["graph", "--format", "json"]).stdout).unwrap();
    assert!(
        j["edges"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"from": "seed", "to": "app", "condition": "completed"}))
    );
    let bad =
        dir_with("[services.a]\nkind = \"process\"\ncommand = [\"a\"]\ndepends_on = [\"a\"]\n");
    assert_eq!(warden(bad.path(), &["graph"]).status.code(), Some(1));
}

#[test]
fn a_closed_pipe_is_not_a_crash() {
    let dir = dir_with(GOOD);
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["schema"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_root_services_toml_checks_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = warden(root, &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).is_empty(),
        "no warnings either: {}",
        text(&out.stderr)
    );
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish_from_the_command_line_itself() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _warden"),
        ("zsh", "#compdef warden"),
        ("fish", "complete -c warden"),
    ] {
        let out = warden(dir.path(), &["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {marker:?} in\n{script}");
        // Every command and a flag of `check` are offered.
        for word in ["check", "status", "completions", "connect"] {
            assert!(script.contains(word), "{shell}: {word:?} offered");
        }
    }
    // The bash script is valid bash.
    let bash = warden(dir.path(), &["completions", "bash"]).stdout;
    let path = dir.path().join("warden.bash");
    std::fs::write(&path, bash).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));

    let out = warden(dir.path(), &["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    assert!(text(&out.stderr).contains("bash"), "{}", text(&out.stderr));
}

#[test]
fn man_prints_warden_s_page_and_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = warden(dir.path(), &["man"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains(".TH warden 1"),
        "{}",
        text(&out.stdout)
    );
    let out = warden(dir.path(), &["man", "run"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("\\-\\-only"),
        "{}",
        text(&out.stdout)
    );
    let out = warden(dir.path(), &["man", "runn"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(r#"no command "runn"; known: run, check"#),
        "{}",
        text(&out.stderr)
    );
}

/// The registry the image and the package ship checks clean as it is, and
/// so do the examples it holds in comments once uncommented (they would
/// otherwise rot); so does the compose file's.
#[test]
fn the_shipped_registries_check_clean_and_so_do_their_commented_examples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("deploy/services.toml")).unwrap();
    let uncommented: String = shipped
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || rest.split(" = ").count() > 1 => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        uncommented.matches("[services.").count() >= 5,
        "{uncommented}"
    );
    let compose = std::fs::read_to_string(root.join("deploy/compose/services.toml")).unwrap();
    for (what, registry) in [
        ("as shipped", shipped.as_str()),
        ("uncommented", &uncommented),
        ("compose", &compose),
    ] {
        let dir = dir_with(registry);
        let out = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["check"])
            .current_dir(dir.path())
            .env("DATABASE_URL", "postgres://app:secret@db:5432/app")
            .env("REDIS_URL", "redis://redis:6379")
            .env("MEMORY_URL", "http://memory:8700")
            .env("WARDEN_API_LISTEN", "0.0.0.0:9464")
            .env("WARDEN_API_TOKEN", "a-token")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// The fenced block that follows `<!-- MARKER -->` in a document.
fn block_after(doc: &str, marker: &str) -> String {
    let at = doc
        .find(&format!("<!-- {marker} -->"))
        .unwrap_or_else(|| panic!("no <!-- {marker} --> in the document"));
    let rest = &doc[at..];
    let open = rest.find("```").expect("a fenced block after the marker");
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").expect("the block ends")].to_string()
}

/// The CI recipe's example in docs/operations.md is what `warden check
/// --format json` really prints for its broken registry.
#[test]
fn the_ci_recipe_shows_the_real_output_on_a_broken_registry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let dir = dir_with(&block_after(&doc, "ci-example-registry"));
    let out = warden(dir.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let real: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&block_after(&doc, "ci-example-output")).unwrap();
    assert_eq!(real, shown, "docs/operations.md shows another output");
    assert_eq!(real["errors"].as_array().unwrap().len(), 3, "{real}");
    // The snippets in the document are the files in deploy/ci/, and each
    // names the repository's registry: in the image, WARDEN_CONFIG points
    // at the baked-in one, which a bare `warden check` would read instead.
    for file in ["deploy/ci/github-actions.yml", "deploy/ci/gitlab-ci.yml"] {
        let snippet = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            doc.contains(&snippet),
            "{file} is not in docs/operations.md as it is"
        );
        let checks: Vec<&str> = snippet
            .lines()
            .filter(|l| l.contains(" check ") && !l.trim_start().starts_with('#'))
            .collect();
        assert!(!checks.is_empty(), "{file} runs warden check");
        for line in checks {
            assert!(line.contains(" check -c services.toml "), "{file}: {line}");
        }
    }
    // `-c` wins over the image's WARDEN_CONFIG.
    std::fs::write(dir.path().join("baked.toml"), "[warden]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "-c", "services.toml", "--format", "json"])
        .current_dir(dir.path())
        .env("WARDEN_CONFIG", dir.path().join("baked.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}
