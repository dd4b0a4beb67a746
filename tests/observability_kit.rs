//! The observability kit of `deploy/`: the Prometheus alert rules
//! (`deploy/prometheus/warden.rules.yml`) pass `promtool check rules` and
//! their unit tests, every alert is tested firing and not firing, the
//! Grafana dashboard (`deploy/grafana/warden-dashboard.json`) is importable
//! and its queries parse, and every `warden_...` metric the rules and the
//! dashboard name, with every label and label value they select on, is one
//! that a real warden exports: warden runs every kind (process, external,
//! api, outbox-relay, memory-sync, stream-replicator) against a real
//! PostgreSQL and a real Redis started here, is made to do what creates each
//! series (restarts for each reason, failing probes, a cut output line,
//! failed rows, a dead letter), and its `/metrics` is read.
//!
//! `WARDEN_KIT_DIR` points the tests at another copy of the kit (a
//! directory holding `prometheus/` and `grafana/`), to try a change first.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value as Json;
use support::daemon::Warden;
use support::db::{redis_cmd, sql};
use support::http::{http, wait_http};
use support::servers::{Postgres, Redis, closed_port, free_port};

/// Labels Prometheus adds at scrape time: the rules may select on them
/// though warden does not export them.
const SCRAPE_LABELS: &[&str] = &["job", "instance"];

/// Where the kit is: `WARDEN_KIT_DIR`, else `deploy/`.
fn kit() -> PathBuf {
    match std::env::var_os("WARDEN_KIT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
    }
}

fn rules_path() -> PathBuf {
    kit().join("prometheus/warden.rules.yml")
}

fn rules_test_path() -> PathBuf {
    kit().join("prometheus/warden.rules.test.yml")
}

fn dashboard_path() -> PathBuf {
    kit().join("grafana/warden-dashboard.json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `promtool ARGS` and fails with its output unless it succeeds.
fn run_promtool(args: &[&str]) -> String {
    support::run_ok(
        Command::new(support::promtool()).args(args),
        &format!("promtool {}", args.join(" ")),
    )
}

// --- Reading the rules, their tests and the dashboard ------------------------

/// The leading spaces of a line.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of every `key:` of a YAML file, inline or as a block scalar
/// (`key: |` or `key: >-` and the more indented lines under it). Enough
/// YAML for the rules: their keys are plain, one a line.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        i += 1;
        let Some(rest) = trimmed.strip_prefix(key).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line))
            {
                block.push(lines[i].trim());
                i += 1;
            }
            out.push(block.join("\n"));
        } else {
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    out
}

/// The rules' alerts: (name, the text of its rule).
fn alerts(rules: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            out.push((name.trim().to_string(), String::new()));
        } else if line.trim_start().starts_with("- name:") || line.trim_start().starts_with('#') {
            continue;
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// Every query of the dashboard: each target's `expr` (in rows too) and
/// each templating variable's query.
fn dashboard_queries(d: &Json) -> Vec<String> {
    fn panels(list: &Json, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            out.push(q.expect("a query variable has a query").to_string());
        }
    }
    out
}

/// A dashboard query as Prometheus would get it: Grafana's variables
/// replaced by what they stand for, `label_values(SELECTOR, LABEL)` by its
/// selector.
fn as_promql(query: &str) -> String {
    let q = query
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$service", ".*");
    let label_values = Regex::new(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\)$").unwrap();
    match label_values.captures(&q) {
        Some(c) => c[1].to_string(),
        None => q,
    }
}

/// What a query uses of warden's metrics: every `warden_...` name, and for
/// each selector `name{...}`, the labels it matches on with the values it
/// asks for (`=` and a `=~` of plain alternatives; other matchers give the
/// label with no value).
#[derive(Default, Debug)]
struct Uses {
    names: BTreeSet<String>,
    labels: BTreeMap<(String, String), BTreeSet<String>>,
}

fn uses(queries: &[String]) -> Uses {
    let ident = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    let selector = Regex::new(r"(warden_[A-Za-z0-9_:]*)\s*\{([^}]*)\}").unwrap();
    let matcher = Regex::new(r#"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let plain = Regex::new(r"^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$").unwrap();
    let string = Regex::new(r#""[^"]*""#).unwrap();
    let mut u = Uses::default();
    for q in queries {
        // Label values and strings are not metric names.
        let code = string.replace_all(q, "\"\"");
        for m in ident.find_iter(&code) {
            if m.as_str().starts_with("warden_") {
                u.names.insert(m.as_str().to_string());
            }
        }
        for s in selector.captures_iter(q) {
            for m in matcher.captures_iter(&s[2]) {
                let values = u
                    .labels
                    .entry((s[1].to_string(), m[1].to_string()))
                    .or_default();
                let positive = &m[2] == "=" || &m[2] == "=~";
                if positive && plain.is_match(&m[3]) {
                    values.extend(m[3].split('|').map(str::to_string));
                }
            }
        }
    }
    u
}

// --- Reading /metrics --------------------------------------------------------

/// One `/metrics` page: each series name with the label sets of its
/// samples, and the type of each family.
#[derive(Default)]
struct Scrape {
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    types: BTreeMap<String, String>,
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if name.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "a label value in {{{text}}}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim().to_string(), value);
    }
}

fn parse_scrape(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut parts = t.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                s.types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let labels = match line[end..].strip_prefix('{') {
            Some(rest) => parse_labels(&rest[..rest.rfind('}').expect("a closing brace")]),
            None => BTreeMap::new(),
        };
        s.series.entry(name.to_string()).or_default().push(labels);
    }
    s
}

impl Scrape {
    /// The family a series name belongs to: a histogram's `_bucket`,
    /// `_sum` and `_count` belong to the histogram, any other name to
    /// itself.
    fn family<'a>(&self, name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.types.get(base).map(String::as_str) == Some("histogram")
            {
                return base;
            }
        }
        name
    }

    /// What of `used` this page does not have: names of no series (a
    /// histogram named bare, a suffix on a family that is no histogram),
    /// labels no series of the name carries, label values no series has.
    fn missing(&self, used: &Uses) -> Vec<String> {
        let mut out = Vec::new();
        for name in &used.names {
            if !self.series.contains_key(name) {
                let hint = match self.types.get(name.as_str()).map(String::as_str) {
                    Some("histogram") => {
                        " (a histogram: its series are _bucket, _sum and _count)".to_string()
                    }
                    _ => String::new(),
                };
                out.push(format!("{name}: no such series{hint}"));
            }
        }
        for ((name, label), values) in &used.labels {
            let Some(samples) = self.series.get(name) else {
                continue; // reported above
            };
            if SCRAPE_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !samples.iter().any(|l| l.contains_key(label)) {
                out.push(format!(
                    "{name} (family {}): no label {label:?}",
                    self.family(name)
                ));
                continue;
            }
            for v in values {
                if !samples.iter().any(|l| l.get(label) == Some(v)) {
                    out.push(format!("{name}: no series with {label}={v:?}"));
                }
            }
        }
        out
    }
}

fn scrape(port: u16) -> String {
    let (status, _, body) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "GET /metrics");
    String::from_utf8(body).expect("/metrics is UTF-8")
}

// --- The tests -----------------------------------------------------------------

#[test]
fn the_alert_rules_pass_promtool_and_each_alert_is_tested_firing_and_not() {
    let (rules, tests) = (rules_path(), rules_test_path());
    let checked = run_promtool(&["check", "rules", &rules.to_string_lossy()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&["test", "rules", &tests.to_string_lossy()]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let rules_text = read(&rules);
    let tests_text = read(&tests);
    let alerts = alerts(&rules_text);
    assert!(!alerts.is_empty(), "no alert in {}", rules.display());
    // Each rule's expression is read (the cross-check below relies on it).
    let records = rules_text
        .lines()
        .filter(|l| l.trim_start().starts_with("- record:"))
        .count();
    assert_eq!(
        yaml_values(&rules_text, "expr").len(),
        alerts.len() + records,
        "an expression of {} was not read",
        rules.display()
    );
    // The kinds of this build each have theirs.
    for family in [
        "warden_service_up",
        "warden_service_state",
        "warden_service_restarts_total",
        "warden_outbox_lag_seconds",
        "warden_outbox_backlog",
        "warden_replicator_pending",
        "warden_dlq_total",
        "warden_memory_sync_circuit_open",
    ] {
        assert!(
            yaml_values(&rules_text, "expr")
                .iter()
                .any(|e| e.contains(family)),
            "no alert on {family}"
        );
    }
    // Which alerts the tests show firing, and which not firing.
    let lines: Vec<&str> = tests_text.lines().collect();
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim_start().strip_prefix("alertname:") else {
            continue;
        };
        let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        match next {
            "exp_alerts: []" => silent.insert(name.trim().to_string()),
            "exp_alerts:" => firing.insert(name.trim().to_string()),
            other => panic!("after alertname {name}: expected exp_alerts, found {other:?}"),
        };
    }
    let mut problems = Vec::new();
    for (name, rule) in &alerts {
        if !firing.contains(name) {
            problems.push(format!("{name}: never tested firing"));
        }
        if !silent.contains(name) {
            problems.push(format!("{name}: never tested not firing"));
        }
        for key in ["for:", "severity:", "summary:", "description:"] {
            if !rule.contains(key) {
                problems.push(format!("{name}: no {key}"));
            }
        }
        for key in ["summary", "description"] {
            let text = yaml_values(rule, key).join(" ");
            if !text.contains("$labels.service") && !text.contains("$labels.instance") {
                problems.push(format!(
                    "{name}: its {key} names neither service nor instance"
                ));
            }
        }
    }
    for name in firing.union(&silent) {
        if !alerts.iter().any(|(a, _)| a == name) {
            problems.push(format!("the tests name {name}, which is no alert"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dashboard_is_importable_and_its_queries_parse() {
    let path = dashboard_path();
    let d: Json = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 30),
        "schemaVersion"
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()), "uid");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let service = var("service").expect("a service variable");
    assert_eq!(service["type"], "query");

    // Every panel placed on the grid, without overlapping another, each
    // query panel on the datasource variable with queries that have an
    // expression and a distinct refId.
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    let mut all = Vec::new();
    fn flatten<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            flatten(&p["panels"], out);
        }
    }
    flatten(&d["panels"], &mut all);
    assert!(all.len() > 10, "a dashboard of {} panels", all.len());
    for p in &all {
        let title = p["title"].as_str().unwrap_or("(no title)");
        if !p["id"].as_u64().is_some_and(|id| ids.insert(id)) {
            problems.push(format!("{title}: no id, or one another panel has"));
        }
        if p["type"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{title}: no type"));
        }
        let g = &p["gridPos"];
        let [Some(x), Some(y), Some(w), Some(h)] = ["x", "y", "w", "h"].map(|k| g[k].as_u64())
        else {
            problems.push(format!("{title}: no complete gridPos"));
            continue;
        };
        if w == 0 || h == 0 || x + w > 24 {
            problems.push(format!("{title}: gridPos {g} is off the 24 columns"));
        }
        for cy in y..y + h {
            for cx in x..x + w {
                if let Some(other) = cells.insert((cx, cy), title) {
                    problems.push(format!("{title} overlaps {other} at ({cx}, {cy})"));
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{title}: not on the datasource variable"));
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if targets.is_empty() {
            problems.push(format!("{title}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in targets {
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("{title}: a target without expr"));
            }
            if !t["refId"]
                .as_str()
                .is_some_and(|r| refs.insert(r.to_string()))
            {
                problems.push(format!("{title}: a target without a distinct refId"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Every query parses as PromQL: promtool checks them as recording
    // rules.
    let queries = dashboard_queries(&d);
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = serde_json::to_string(&as_promql(q)).unwrap();
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {q}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("dashboard-queries.yml");
    std::fs::write(&rules, &file).unwrap();
    let out = run_promtool(&["check", "rules", &rules.to_string_lossy()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}\n{file}"
    );
}

/// A memory backend that accepts every write (200) except those whose body
/// says `reject` (422: refused for good, so the write is `failed`).
fn picky_backend() -> u16 {
    support::http::backend(|body| {
        if String::from_utf8_lossy(body).contains("reject") {
            "422 Unprocessable Entity"
        } else {
            "200 OK"
        }
    })
    .0
}

/// Every kind, and services that make each event of the rules happen:
/// restarts after a failure, a clean exit, a failed health check and a
/// start timeout; failing probes; a line over 16 KiB.
fn registry(api: u16, pg: &Postgres, redis: &Redis, backend: u16, closed: u16) -> String {
    let churn = r#"restart = { max_restarts = 100000, window = "60s", backoff = { initial = "100ms", max = "200ms" } }"#;
    format!(
        r#"
[api]
listen = "127.0.0.1:{api}"

[services.chatty]
kind = "process"
command = ["sh", "-c", "head -c 20000 /dev/urandom | base64 -w0; echo; exec sleep 100000"]

[services.crasher]
kind = "process"
command = ["sh", "-c", "sleep 0.3; exit 1"]
{churn}

[services.looper]
kind = "process"
command = ["sh", "-c", "sleep 0.3"]
restart = {{ policy = "always", max_restarts = 100000, window = "60s", backoff = {{ initial = "100ms", max = "200ms" }} }}

[services.sick]
kind = "process"
command = ["sh", "-c", "exec sleep 100000"]
health = {{ tcp = "127.0.0.1:{closed}", interval = "100ms", timeout = "100ms", failure_threshold = 2 }}
{churn}

[services.slow]
kind = "process"
command = ["sh", "-c", "exec sleep 100000"]
ready = {{ tcp = "127.0.0.1:{closed}", interval = "100ms", timeout = "100ms" }}
start_timeout = "500ms"
{churn}

[services.database]
kind = "external"
ready = {{ postgres = "{pg}" }}

[services.cache]
kind = "external"
ready = {{ redis = "{redis}" }}

[services.relay]
kind = "outbox-relay"
postgres = "{pg}"
redis = "{redis}"
lease = "2s"
max_retries = 1
depends_on = ["database", "cache"]

[services.memory]
kind = "memory-sync"
postgres = "{pg}"
endpoint = "http://127.0.0.1:{backend}/v1/memories"
timeout = "1s"
lease = "3s"
depends_on = ["relay"]

[services.replicator]
kind = "stream-replicator"
postgres = "{pg}"
redis = "{redis}"
streams = ["memory.wal", "poison"]
min_idle = "1s"
depends_on = ["cache", "database"]
"#,
        pg = pg.dsn,
        redis = redis.url
    )
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_exported_by_a_real_warden() {
    let began = Instant::now();
    // What the kit uses.
    let rules_text = read(&rules_path());
    let dashboard: Json = serde_json::from_str(&read(&dashboard_path())).expect("dashboard JSON");
    let mut queries = yaml_values(&rules_text, "expr");
    let from_rules = queries.len();
    queries.extend(dashboard_queries(&dashboard).iter().map(|q| as_promql(q)));
    assert!(
        from_rules > 0 && queries.len() > from_rules,
        "queries found"
    );
    let used = uses(&queries);
    assert!(
        used.names.len() > 10,
        "metric names found: {:?}",
        used.names
    );

    // A warden running every kind, on servers of its own.
    let (pg, redis) = (Postgres::start(), Redis::start());
    let backend = picky_backend();
    let closed = closed_port();
    let api = free_port();
    let mut w = Warden::start(&registry(api, &pg, &redis, backend, closed.port));
    wait_http(api, "/readyz", 200);
    for s in [
        "chatty",
        "database",
        "cache",
        "relay",
        "memory",
        "replicator",
    ] {
        w.wait_event(s, "ready");
    }

    // Traffic through the whole data plane: memory writes (one the
    // backend refuses for good), their WAL events published by the relay
    // and applied by the replicator; an outbox row Redis refuses (its
    // stream key holds a string) until it fails; a poison stream entry (no
    // payload) that becomes a dead letter.
    sql(
        &pg.dsn,
        "INSERT INTO memory_write_outbox (tenant, session_id, idempotency_key, payload)
         SELECT 't', 's' || n, 'kit-' || n, jsonb_build_object('n', n)
         FROM generate_series(1, 50) n",
    );
    sql(
        &pg.dsn,
        r#"INSERT INTO memory_write_outbox (idempotency_key, payload)
           VALUES ('kit-rejected', '{"reject": true}')"#,
    );
    redis_cmd(&redis.url, &["SET", "not-a-stream", "x"]);
    sql(
        &pg.dsn,
        r#"INSERT INTO message_outbox (topic, payload) VALUES ('not-a-stream', '{"n": 1}')"#,
    );
    redis_cmd(&redis.url, &["XADD", "poison", "*", "junk", "1"]);

    // Until every name, label and value is there (a minute at most).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (text, missing) = loop {
        let text = scrape(api);
        let missing = parse_scrape(&text).missing(&used);
        if missing.is_empty() || Instant::now() >= deadline {
            break (text, missing);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let page = parse_scrape(&text);
    let exported: BTreeSet<&str> = page.series.keys().map(|n| page.family(n)).collect();
    assert!(
        missing.is_empty(),
        "the rules or the dashboard use what a running warden does not export:\n  {}\n\
         families exported: {exported:?}\n--- /metrics:\n{text}",
        missing.join("\n  ")
    );

    // The check itself can fail: a made-up name, a histogram named bare, a
    // histogram suffix on a gauge, a label and a value no series has.
    let made_up = uses(&[
        "warden_made_up_total".to_string(),
        "warden_service_start_seconds".to_string(),
        "warden_outbox_backlog_count".to_string(),
        r#"warden_outbox_backlog{relay="x"}"#.to_string(),
        r#"warden_service_state{state="crashed"}"#.to_string(),
    ]);
    let caught = page.missing(&made_up);
    assert_eq!(caught.len(), 5, "the check misses some of: {caught:#?}");

    let families: BTreeSet<&str> = used.names.iter().map(|n| page.family(n)).collect();
    println!(
        "{} metric families used by the kit, all exported, in {:.1} s: {families:?}",
        families.len(),
        began.elapsed().as_secs_f64()
    );
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "warden's exit code");
}
