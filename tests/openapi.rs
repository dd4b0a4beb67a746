//! `GET /openapi.json` against a running warden:
//!
//! - the document is OpenAPI 3 and describes every route (the list
//!   below) and each action of each kind, no more and no less, and each of
//!   them is routed by the server;
//! - schemathesis (Python, installed by `scripts/install-deps`) fuzzes every
//!   operation it can safely call and finds no server error and no answer
//!   that departs from the document (undocumented status code or content
//!   type, body not matching its schema, invalid input accepted, a wrong
//!   answer to an undocumented method).

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::daemon::Warden;
use support::servers::free_port;

/// Every route of the API, as (method, OpenAPI path template). The
/// document must describe exactly these, and the server must route each
/// of them: a route added without documentation (or documented without
/// being added here) fails `the_document_describes_every_route`.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/livez"),
    ("get", "/readyz"),
    ("get", "/v1/health"),
    ("get", "/metrics"),
    ("get", "/v1/services"),
    ("get", "/v1/services/{name}"),
    ("get", "/v1/services/{name}/logs"),
    ("post", "/v1/services/{name}/start"),
    ("post", "/v1/services/{name}/stop"),
    ("post", "/v1/services/{name}/restart"),
    ("post", "/v1/services/{name}/actions/{action}"),
    ("post", "/v1/reload"),
    ("post", "/v1/shutdown"),
    ("get", "/v1/graph"),
    ("get", "/openapi.json"),
    ("get", "/v1/events"),
];

/// The keys of an OpenAPI path item that are operations.
const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const TOKEN: &str = "openapi-test-token";

/// How long schemathesis may run before the test gives up on it (it takes
/// seconds; this only keeps a hung run from hanging the suite).
const FUZZ_DEADLINE: Duration = Duration::from_secs(300);

/// Test cases per operation and phase.
const MAX_EXAMPLES: u32 = 100;

/// A registry with the API on `port` and a token (so every `POST` is
/// really authenticated), and services in several states: ready (`db`,
/// `app`), failed for good (`broken`: health is `degraded`, `last_error`
/// is set) and disabled (`off`). Only `api` is critical, so `/readyz`
/// stays 200 whatever the fuzzer stops.
fn registry(port: u16) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
max_body = 4096

[services.db]
kind = "process"
command = ["sh", "-c", "echo up; echo a line on stderr >&2; exec sleep 707070"]
ready = {{ log = "^up$" }}

[services.app]
kind = "process"
command = ["sh", "-c", "trap 'exit 0' TERM; echo app up; sleep 707071 & wait"]
depends_on = ["db"]

[services.broken]
kind = "process"
command = ["sh", "-c", "echo failing >&2; exit 1"]
restart = {{ policy = "never" }}

[services.off]
kind = "process"
command = ["sleep", "707072"]
enabled = false
"#
    )
}

/// One HTTP/1.1 request; returns (status, head, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn wait_http(port: u16, path: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| http(port, "GET", path).0);
        if status == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {want} (last: {status:?})"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Starts warden and waits until its services have settled.
fn start() -> (Warden, u16) {
    let port = free_port();
    let mut w = Warden::start(&registry(port));
    wait_http(port, "/readyz", 200);
    w.wait_event("db", "ready");
    w.wait_event("app", "ready");
    w.wait_event("broken", "failed");
    (w, port)
}

fn served_document(port: u16) -> Json {
    let (status, head, body) = http(port, "GET", "/openapi.json");
    assert_eq!(status, 200, "GET /openapi.json: {head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("application/json"),
        "{head}"
    );
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "/openapi.json is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// Resolves a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Json, reference: &str) -> Option<&'a Json> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` in `v`, with where it was found.
fn refs(v: &Json, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Json::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str() {
                        out.push((at.to_string(), r.to_string()));
                    }
                } else {
                    refs(x, &format!("{at}/{k}"), out);
                }
            }
        }
        Json::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// A parameter or response, following one `$ref`.
fn deref<'a>(doc: &'a Json, v: &'a Json) -> &'a Json {
    match v["$ref"].as_str() {
        Some(r) => resolve(doc, r).unwrap_or(v),
        None => v,
    }
}

#[test]
fn the_document_describes_every_route() {
    let (_w, port) = start();
    let doc = served_document(port);

    // It is the routes of src/api/openapi.json with the actions of this
    // build's kinds (the binary is not stale).
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/openapi.json");
    let _: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
    let kinds = warden::services::builtin(PathBuf::from(".")).table();
    assert!(
        doc == warden::api::openapi::document(&kinds),
        "/openapi.json differs from src/api/openapi.json with the kinds' actions"
    );
    // Each action of each kind has its own operation.
    let mut actions = BTreeSet::new();
    for kind in kinds.writable() {
        for a in kind.actions() {
            let path = warden::api::openapi::action_path(a.name);
            assert!(
                doc["paths"][&path]["post"]["summary"]
                    .as_str()
                    .is_some_and(|s| s.contains(kind.name())),
                "{path} does not name kind {}",
                kind.name()
            );
            actions.insert(path);
        }
    }
    assert!(actions.contains("/v1/services/{name}/actions/replay-failed"));

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.0."),
        "not OpenAPI 3.0: openapi = {:?}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let bearer = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (bearer["type"].as_str(), bearer["scheme"].as_str()),
        (Some("http"), Some("bearer")),
        "components.securitySchemes.bearerAuth: {bearer}"
    );

    for name in [
        "Error",
        "Health",
        "ServiceStatus",
        "ServiceDetail",
        "LogLine",
        "Graph",
        "ReloadSummary",
        "ActionResult",
        "StateEvent",
        "RestartEvent",
        "ActionEvent",
        "SnapshotEvent",
        "LaggedEvent",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "components.schemas.{name} is missing"
        );
    }

    // Exactly the routes of the API, and the actions' own operations.
    let paths = doc["paths"].as_object().expect("paths is an object");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .filter(|(p, _)| !actions.contains(*p))
        .flat_map(|(p, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|m| m.keys())
                .filter(|m| HTTP_METHODS.contains(&m.as_str()))
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = listed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&listed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes not documented in src/api/openapi.json: {missing:?}; \
         documented but not in this test's list: {extra:?}"
    );

    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, "#", &mut all);
    let dangling: Vec<_> = all
        .iter()
        .filter(|(_, r)| resolve(&doc, r).is_none())
        .collect();
    assert!(dangling.is_empty(), "unresolved $ref: {dangling:?}");

    // Each route, every problem collected so that one run shows them all.
    let mut problems = Vec::new();
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        let what = format!("{} {path}", method.to_uppercase());
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(format!("{what}: {problem}"));
            }
        };
        check(
            op["operationId"].is_string() && op["summary"].is_string(),
            "no operationId or summary".into(),
        );
        let no_responses = serde_json::Map::new();
        let responses = op["responses"].as_object().unwrap_or(&no_responses);
        check(
            responses.keys().any(|c| c.starts_with('2')),
            "no 2xx answer documented".into(),
        );
        // Another method on the path is 405 with `Allow`.
        check(
            deref(&doc, &op["responses"]["405"])["headers"]["Allow"].is_object(),
            "405 with an Allow header is not documented".into(),
        );
        // Path parameters are declared.
        let params: Vec<&Json> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| deref(&doc, p))
            .collect();
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            check(
                params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true),
                format!("path parameter {name} is not declared"),
            );
        }
        // Mutations need the bearer token; reads do not.
        if *method == "post" {
            check(
                op["security"] == serde_json::json!([{"bearerAuth": []}]),
                format!("security is {}, not [{{bearerAuth: []}}]", op["security"]),
            );
            check(
                responses.contains_key("401") && responses.contains_key("403"),
                "401 and 403 are not documented".into(),
            );
        } else {
            check(op.get("security").is_none(), "a read needs no token".into());
        }
        // The server routes it: a method the document does not list is
        // 405 with the documented one in `Allow` (never 404 "no route").
        let concrete = path.replace("{name}", "db").replace("{action}", "x");
        let (status, head, body) = http(port, "DELETE", &concrete);
        let allow = header(&head, "allow").unwrap_or_default().to_string();
        check(
            status == 405 && allow == method.to_uppercase(),
            format!(
                "the server does not route it: DELETE {concrete} answered {status} \
                 (Allow: {allow:?}) {}",
                String::from_utf8_lossy(&body)
            ),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The schemathesis command: the one `scripts/install-deps` puts in
/// `.venv-tools/`, else one on PATH.
fn schemathesis() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-tools/bin/schemathesis");
    let candidates = [venv, PathBuf::from("schemathesis")];
    for c in candidates {
        let works = Command::new(&c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return c;
        }
    }
    panic!(
        "schemathesis is missing (neither .venv-tools/bin/schemathesis nor schemathesis on \
         PATH runs): run scripts/install-deps"
    );
}

/// The document as schemathesis gets it: the served one less what cannot
/// be fuzzed against a daemon the test needs alive:
/// - `GET /v1/events` and `GET /v1/services/{name}/logs?follow=true` are
///   endless streams: each case would wait for the request timeout;
/// - `POST /v1/shutdown` ends the daemon, so every later case would fail.
///
/// Everything else is fuzzed as documented.
fn fuzzable(mut doc: Json) -> Json {
    let paths = doc["paths"].as_object_mut().unwrap();
    paths.remove("/v1/events");
    paths.remove("/v1/shutdown");
    if let Some(params) =
        doc["paths"]["/v1/services/{name}/logs"]["get"]["parameters"].as_array_mut()
    {
        params.retain(|p| p["name"] != "follow");
    }
    doc
}

/// schemathesis's configuration (`--config-file`).
///
/// - The stateful phase is off, and so is the reuse of values read from
///   answers: both feed the names that `GET /v1/services` lists, `api`
///   included, into `POST /v1/services/{name}/stop`, and stopping the API
///   service ends the run (it stays stopped). Names come from the
///   document's examples (`db`: real starts, stops and restarts) and from
///   generated strings (404s).
const SCHEMATHESIS_CONFIG: &str = r#"
[phases.stateful]
enabled = false

[phases.examples.extra-data-sources]
responses = false

[phases.coverage.extra-data-sources]
responses = false

[phases.fuzzing.extra-data-sources]
responses = false
"#;

/// The `name="..."` attribute of each `<testcase>` whose element holds a
/// `<failure` or `<error`.
fn failed_testcases(junit: &str) -> Vec<String> {
    junit
        .split("<testcase ")
        .skip(1)
        .filter(|case| {
            let body = case.split("</testcase>").next().unwrap_or("");
            body.contains("<failure") || body.contains("<error")
        })
        .filter_map(|case| {
            let rest = case.split_once("name=\"")?.1;
            Some(rest.split('"').next()?.to_string())
        })
        .collect()
}

/// An attribute of the `<testsuites>` element.
fn suites_attribute(junit: &str, name: &str) -> Option<u64> {
    let suites = junit.split("<testsuites").nth(1)?.split('>').next()?;
    let rest = suites.split_once(&format!(" {name}=\""))?.1;
    rest.split('"').next()?.parse().ok()
}

#[test]
fn schemathesis_finds_no_server_error_nor_departure_from_the_document() {
    let st = schemathesis();
    let (mut w, port) = start();
    let doc = fuzzable(served_document(port));
    let operations = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|m| m.keys()))
        .filter(|m| HTTP_METHODS.contains(&m.as_str()))
        .count() as u64;

    let work = tempfile::Builder::new()
        .prefix("warden-schemathesis-")
        .tempdir()
        .unwrap();
    let spec = work.path().join("openapi.json");
    std::fs::write(&spec, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let config = work.path().join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_CONFIG).unwrap();
    let junit_path = work.path().join("junit.xml");
    let out_path = work.path().join("output.txt");

    let started = Instant::now();
    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&spec)
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        // Every check: not_a_server_error, status_code_conformance,
        // content_type_conformance, response_schema_conformance,
        // response_headers_conformance, negative_data_rejection,
        // positive_data_acceptance, unsupported_method, ignored_auth...
        .args(["--checks", "all"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--report", "junit"])
        .arg("--report-junit-path")
        .arg(&junit_path)
        .args(["--no-color", "--output-truncate", "false"])
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > FUZZ_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis ran longer than {FUZZ_DEADLINE:?}; its output so far:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let junit = std::fs::read_to_string(&junit_path).unwrap_or_default();
    eprintln!("schemathesis took {took:.1?} ({status})");

    let failed = failed_testcases(&junit);
    let tests = suites_attribute(&junit, "tests");
    let failures = suites_attribute(&junit, "failures");
    let errors = suites_attribute(&junit, "errors");
    let clean = status.success()
        && failed.is_empty()
        && failures == Some(0)
        && errors == Some(0)
        && tests == Some(operations);
    if !clean {
        panic!(
            "schemathesis found problems ({status}; JUnit: tests {tests:?} of {operations} \
             operations, failures {failures:?}, errors {errors:?}; failing: {failed:?}).\n\
             Each is a server bug or a gap in src/api/openapi.json.\n\
             --- schemathesis output ---\n{output}\n--- warden log (last lines) ---\n{}",
            last_lines(&w.dump(), 60)
        );
    }
    // The daemon survived the fuzzing.
    assert_eq!(
        http(port, "GET", "/livez").0,
        200,
        "{}",
        last_lines(&w.dump(), 60)
    );
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
