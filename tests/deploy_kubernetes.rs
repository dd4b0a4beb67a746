//! The Kubernetes manifests of `deploy/kubernetes/`, checked offline:
//!
//! - every YAML file passes `kubernetes-validate --strict` (the schemas of
//!   the oldest and the newest Kubernetes the tool ships), with no warning:
//!   the tool only warns, and exits 0, on a kind or an `apiVersion` it has
//!   no schema for, which is how a typo there would look;
//! - every Deployment runs a registry this build's `warden check` accepts:
//!   the ConfigMap it mounts at the image's `WARDEN_CONFIG`, its own
//!   `--only` arguments, and the variables it sets (dummy values for those
//!   that come from a Secret);
//! - its grace period outlasts the registry's `shutdown_timeout`, its
//!   probes hit `/livez` and `/readyz` on the port warden listens on, on an
//!   address the kubelet reaches, and a Deployment of several replicas
//!   selects no critical singleton (a standby would never be ready);
//! - the Services reach that port, and the pods run locked down (non-root
//!   10001, read-only root, no capabilities, seccomp) with bounded
//!   resources.
//!
//! Each subdirectory of `deploy/kubernetes/` is one layout: a Deployment's
//! ConfigMaps and Secrets are looked up in its own layout.
//!
//! YAML is read by the PyYAML that comes with kubernetes-validate (in
//! `.venv-tools/`, from `scripts/install-deps`), turned into JSON.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The image's registry (`ENV WARDEN_CONFIG` in the Dockerfile).
const IMAGE_CONFIG: &str = "/etc/warden/services.toml";
/// The image's user and group (`useradd --uid 10001` in the Dockerfile).
const IMAGE_UID: i64 = 10001;
/// The oldest and the newest Kubernetes whose schemas kubernetes-validate
/// 1.37 ships: docs/kubernetes.md promises 1.25 and later.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];
/// After `shutdown_timeout`, warden still reaps what it killed (up to a
/// second) before it exits: the grace must cover that too.
const EXIT_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool of `.venv-tools/`: missing is a failure, never a skip.
fn venv_tool(name: &str) -> PathBuf {
    let path = root().join(".venv-tools/bin").join(name);
    let runs = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        runs,
        "{} is missing or does not run (kubernetes-validate and its PyYAML live in \
         .venv-tools/): run scripts/install-deps",
        path.display()
    );
    path
}

/// Every YAML file under deploy/kubernetes/, relative to the repository's
/// root, sorted.
fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&root().join("deploy/kubernetes"), &mut found);
    let mut files: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    for layout in ["all-in-one", "split"] {
        let prefix = format!("deploy/kubernetes/{layout}/");
        assert!(
            files.iter().any(|f| f.starts_with(&prefix)),
            "no manifest in {prefix}: {files:?}"
        );
    }
    files
}

/// One document of a manifest file.
struct Doc {
    file: String,
    /// The subdirectory of deploy/kubernetes/ it belongs to.
    layout: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn what(&self) -> String {
        format!("{} {} ({})", self.kind(), self.name(), self.file)
    }
}

/// PyYAML, with duplicate keys refused (PyYAML would keep the last one
/// silently; the API server refuses them), to JSON: {file: [documents]}.
const YAML_TO_JSON: &str = r#"
import json, sys, yaml

class Strict(yaml.SafeLoader):
    pass

def mapping(loader, node):
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value
            if k.tag != "tag:yaml.org,2002:merge"]
    dups = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dups:
        raise yaml.constructor.ConstructorError(
            None, None, "duplicate keys %s" % ", ".join(dups), node.start_mark)
    return loader.construct_mapping(node, deep=True)

Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
out = {}
for name in sys.argv[1:]:
    with open(name) as f:
        out[name] = [d for d in yaml.load_all(f, Loader=Strict) if d is not None]
json.dump(out, sys.stdout, default=str)
"#;

fn load() -> Vec<Doc> {
    let files = yaml_files();
    let out = Command::new(venv_tool("python"))
        .arg("-c")
        .arg(YAML_TO_JSON)
        .args(&files)
        .current_dir(root())
        .output()
        .expect("run .venv-tools/bin/python");
    assert!(
        out.status.success(),
        "reading the manifests as YAML failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: BTreeMap<String, Vec<Value>> =
        serde_json::from_slice(&out.stdout).expect("the converter's JSON");
    let mut docs = Vec::new();
    for file in files {
        let layout = file
            .strip_prefix("deploy/kubernetes/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(dir, _)| dir.to_string())
            .unwrap_or_default();
        let values = &parsed[&file];
        assert!(!values.is_empty(), "{file} holds no document");
        for value in values {
            docs.push(Doc {
                file: file.clone(),
                layout: layout.clone(),
                value: value.clone(),
            });
        }
    }
    docs
}

/// The resource of this kind and name in the layout.
fn lookup<'a>(docs: &'a [Doc], layout: &str, kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d.layout == layout && d.kind() == kind && d.name() == name)
        .map(|d| &d.value)
}

/// A Deployment, its pod template and its warden container.
struct Deployment<'a> {
    doc: &'a Doc,
    pod: &'a Value,
    container: &'a Value,
}

fn deployments(docs: &[Doc]) -> Vec<Deployment<'_>> {
    let found: Vec<Deployment<'_>> = docs
        .iter()
        .filter(|d| d.kind() == "Deployment")
        .map(|doc| {
            let pod = &doc.value["spec"]["template"]["spec"];
            let containers = pod["containers"].as_array().expect("containers");
            let container = containers
                .iter()
                .find(|c| c["name"] == "warden")
                .or_else(|| containers.first().filter(|_| containers.len() == 1))
                .unwrap_or_else(|| panic!("{}: no container named warden", doc.what()));
            Deployment {
                doc,
                pod,
                container,
            }
        })
        .collect();
    for layout in ["all-in-one", "split"] {
        assert!(
            found.iter().any(|d| d.doc.layout == layout),
            "no Deployment in deploy/kubernetes/{layout}/"
        );
    }
    found
}

/// A dummy of the right shape for a variable a Secret provides.
fn secret_dummy(var: &str) -> &'static str {
    match var {
        "DATABASE_URL" => "postgres://warden:dummy@postgres.invalid:5432/app",
        "REDIS_URL" => "redis://:dummy@redis.invalid:6379/0",
        "WARDEN_API_TOKEN" => "dummy-token",
        _ => panic!(
            "{var} comes from a Secret: give it a dummy value of its shape in secret_dummy()"
        ),
    }
}

/// The keys of a Secret (`stringData` and `data`).
fn secret_keys(secret: &Value) -> Vec<String> {
    ["stringData", "data"]
        .iter()
        .filter_map(|k| secret[k].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect()
}

impl Deployment<'_> {
    fn what(&self) -> String {
        self.doc.what()
    }

    fn replicas(&self) -> i64 {
        self.doc.value["spec"]["replicas"].as_i64().unwrap_or(1)
    }

    /// The container's variables as Kubernetes gives them: `envFrom` first,
    /// `env` over it; Secret values replaced by dummies.
    fn env(&self, docs: &[Doc]) -> BTreeMap<String, String> {
        let layout = &self.doc.layout;
        let what = self.what();
        let mut env = BTreeMap::new();
        for from in self.container["envFrom"].as_array().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            if let Some(name) = from["secretRef"]["name"].as_str() {
                let secret = lookup(docs, layout, "Secret", name)
                    .unwrap_or_else(|| panic!("{what}: envFrom names the Secret {name}, which deploy/kubernetes/{layout}/ does not hold"));
                for key in secret_keys(secret) {
                    let var = format!("{prefix}{key}");
                    let dummy = secret_dummy(&var).to_string();
                    env.insert(var, dummy);
                }
            } else if let Some(name) = from["configMapRef"]["name"].as_str() {
                let map = lookup(docs, layout, "ConfigMap", name)
                    .unwrap_or_else(|| panic!("{what}: envFrom names the ConfigMap {name}, which deploy/kubernetes/{layout}/ does not hold"));
                for (key, value) in map["data"].as_object().into_iter().flatten() {
                    let value = value.as_str().expect("ConfigMap data are strings");
                    env.insert(format!("{prefix}{key}"), value.to_string());
                }
            } else {
                panic!("{what}: envFrom {from} is neither secretRef nor configMapRef");
            }
        }
        for var in self.container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name").to_string();
            let from = &var["valueFrom"];
            let value = if from.is_null() {
                var["value"].as_str().unwrap_or("").to_string()
            } else if let Some(secret) = from["secretKeyRef"]["name"].as_str() {
                let key = from["secretKeyRef"]["key"]
                    .as_str()
                    .expect("secretKeyRef key");
                let s = lookup(docs, layout, "Secret", secret).unwrap_or_else(|| {
                    panic!("{what}: {name} comes from the Secret {secret}, which deploy/kubernetes/{layout}/ does not hold")
                });
                assert!(
                    secret_keys(s).iter().any(|k| k == key),
                    "{what}: {name} comes from the key {key} of the Secret {secret}, which has no such key"
                );
                secret_dummy(&name).to_string()
            } else if let Some(map) = from["configMapKeyRef"]["name"].as_str() {
                let key = from["configMapKeyRef"]["key"]
                    .as_str()
                    .expect("configMapKeyRef key");
                let m = lookup(docs, layout, "ConfigMap", map).unwrap_or_else(|| {
                    panic!("{what}: {name} comes from the ConfigMap {map}, which deploy/kubernetes/{layout}/ does not hold")
                });
                m["data"][key]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("{what}: the ConfigMap {map} has no key {key} for {name}")
                    })
                    .to_string()
            } else if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
                format!("dummy-{field}")
            } else {
                panic!("{what}: {name}: valueFrom {from} is not supported by this test");
            };
            // Kubernetes expands $(VAR) in values; this test does not.
            assert!(
                !value.contains("$("),
                "{what}: {name} = {value:?}: $(VAR) references are not expanded by this test"
            );
            env.insert(name, value);
        }
        env
    }

    /// The container's arguments (after the image's `warden run`).
    fn args(&self) -> Vec<String> {
        assert!(
            self.container["command"].is_null(),
            "{}: `command` replaces the image's entry point `warden run`; set `args` only",
            self.what()
        );
        let args: Vec<String> = self.container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a.as_str().expect("args are strings").to_string())
            .collect();
        for a in &args {
            assert!(
                !a.contains("$("),
                "{}: argument {a:?}: $(VAR) references are not expanded by this test",
                self.what()
            );
        }
        args
    }

    /// The arguments `warden run` shares with `warden check` (`--only`,
    /// `--profile`), the registry path they name if any (`-c`), and the
    /// profile they choose.
    fn check_args(&self) -> (Vec<String>, Option<String>, Option<String>) {
        let mut out = Vec::new();
        let (mut config, mut profile) = (None, None);
        let mut args = self.args().into_iter();
        while let Some(a) = args.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let takes_value =
                ["-c", "--config", "--profile", "--only", "--log-format"].contains(&flag.as_str());
            let value = if takes_value {
                inline.or_else(|| args.next())
            } else {
                None
            };
            match flag.as_str() {
                "-c" | "--config" => config = value,
                "--log-format" => {} // `run` only
                "--profile" => {
                    profile.clone_from(&value);
                    out.extend([flag, value.unwrap_or_default()]);
                }
                _ => {
                    out.push(flag);
                    out.extend(value);
                }
            }
        }
        (out, config, profile)
    }

    /// The registry the pod runs: the ConfigMap entry mounted where warden
    /// reads it (`-c`, else `WARDEN_CONFIG`, else the image's), and which
    /// entry that is.
    fn registry(&self, docs: &[Doc], env: &BTreeMap<String, String>) -> (String, String) {
        let what = self.what();
        let (_, config, _) = self.check_args();
        let path = config
            .or_else(|| env.get("WARDEN_CONFIG").cloned())
            .unwrap_or_else(|| IMAGE_CONFIG.to_string());
        for mount in self.container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let at = mount["mountPath"].as_str().unwrap_or("");
            let sub = mount["subPath"].as_str();
            let rel = match sub {
                Some(sub) if at == path => sub.to_string(),
                Some(_) => continue,
                None => match path.strip_prefix(&format!("{}/", at.trim_end_matches('/'))) {
                    Some(rel) => rel.to_string(),
                    None => continue,
                },
            };
            let volume = self.pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{what}: the mount {} has no volume", mount["name"]));
            let Some(map) = volume["configMap"]["name"].as_str() else {
                panic!(
                    "{what}: {path} comes from the volume {}, which is not a ConfigMap",
                    volume["name"]
                );
            };
            let key = match volume["configMap"]["items"].as_array() {
                Some(items) => items
                    .iter()
                    .find(|i| i["path"] == rel.as_str())
                    .and_then(|i| i["key"].as_str())
                    .unwrap_or_else(|| {
                        panic!("{what}: no item of the ConfigMap {map} is mounted as {rel}")
                    })
                    .to_string(),
                None => rel,
            };
            let m = lookup(docs, &self.doc.layout, "ConfigMap", map).unwrap_or_else(|| {
                panic!(
                    "{what}: mounts the ConfigMap {map}, which deploy/kubernetes/{}/ does not hold",
                    self.doc.layout
                )
            });
            let text = m["data"][&key]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: the ConfigMap {map} has no key {key}"));
            return (format!("ConfigMap {map}, key {key}"), text.to_string());
        }
        panic!("{what}: nothing is mounted at {path}, where warden reads its registry");
    }

    /// A container port, by number or by name.
    fn port(&self, port: &Value) -> i64 {
        if let Some(n) = port.as_i64() {
            return n;
        }
        let name = port.as_str().expect("a port is a number or a name");
        self.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("{}: no container port named {name}", self.what()))
    }

    /// `warden check` on what this Deployment runs: the registry file and
    /// the JSON report (`--resolved`). Fails the test unless it is valid
    /// with no warning.
    fn check(&self, docs: &[Doc]) -> (String, Value) {
        let env = self.env(docs);
        let (source, registry) = self.registry(docs, &env);
        let (args, _, _) = self.check_args();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services.toml");
        std::fs::write(&file, &registry).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("check")
            .arg("-c")
            .arg(&file)
            .args(&args)
            .args(["--format", "json", "--resolved"])
            .env_clear()
            .envs(&env)
            .current_dir(dir.path())
            .output()
            .expect("run warden check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = format!(
            "{}: warden check -c services.toml ({source}) {} with {:?}:\n{stdout}{}",
            self.what(),
            args.join(" "),
            env.keys().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{report}");
        let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {report}"));
        assert_eq!(json["valid"], true, "{report}");
        assert_eq!(json["warnings"], serde_json::json!([]), "{report}");
        (registry, json)
    }
}

/// A key of `[warden]` or `[api]` as the chosen profile leaves it.
fn registry_key(registry: &str, profile: Option<&str>, table: &str, key: &str) -> Option<String> {
    let doc: toml::Table = toml::from_str(registry).expect("the registry is TOML");
    let over = profile.and_then(|p| doc.get("profiles")?.get(p)?.get(table)?.get(key));
    let base = doc.get(table).and_then(|t| t.get(key));
    over.or(base).map(|v| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    })
}

/// The profile warden picks: `--profile`, else `WARDEN_PROFILE`, else
/// `[warden] profile`.
fn profile(d: &Deployment<'_>, env: &BTreeMap<String, String>, registry: &str) -> Option<String> {
    d.check_args()
        .2
        .or_else(|| env.get("WARDEN_PROFILE").filter(|p| !p.is_empty()).cloned())
        .or_else(|| registry_key(registry, None, "warden", "profile"))
}

/// `${VAR}`, `${VAR:-default}` and `${VAR:?message}` as warden expands
/// them (`$$` is a `$`).
fn interpolate(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').expect("a closed ${...}");
            let expr = &inner[..end];
            let value = if let Some((var, default)) = expr.split_once(":-") {
                env.get(var)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or(default.to_string())
            } else if let Some((var, message)) = expr.split_once(":?") {
                env.get(var)
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| panic!("{var}: {message}"))
            } else {
                env.get(expr)
                    .cloned()
                    .unwrap_or_else(|| panic!("{expr} is not set"))
            };
            out.push_str(&value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let files = yaml_files();
    let docs = load();
    let mut cmd = Command::new(venv_tool("kubernetes-validate"));
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    let text = support::run_ok(
        cmd.args(&files).current_dir(root()),
        "kubernetes-validate --strict",
    );
    let complaints: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO ")).collect();
    assert!(
        complaints.is_empty(),
        "kubernetes-validate complained (a kind or apiVersion without a schema is only a \
         warning to it):\n{}",
        complaints.join("\n")
    );
    // And it did look at every document, against every version.
    for d in &docs {
        for v in KUBERNETES_VERSIONS {
            let minor = v.rsplit_once('.').unwrap().0;
            let line = format!(
                "INFO {} passed for resource {}/{} against version {minor}",
                d.file,
                d.kind().to_lowercase(),
                d.name()
            );
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}

#[test]
fn every_deployment_runs_a_registry_that_warden_check_accepts() {
    let docs = load();
    for d in deployments(&docs) {
        let (_, report) = d.check(&docs);
        // The slice its --only names is what the pod runs.
        let planned: Vec<&str> = report["plan"]["services"]
            .as_array()
            .expect("plan.services")
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        let (args, _, _) = d.check_args();
        if let Some(i) = args.iter().position(|a| a == "--only") {
            for name in args[i + 1].split(',') {
                assert!(
                    planned.contains(&name),
                    "{}: {name} not in {planned:?}",
                    d.what()
                );
            }
        }
        assert!(
            planned.contains(&"api"),
            "{}: no API in {planned:?}",
            d.what()
        );
    }
}

#[test]
fn every_grace_period_outlasts_the_registry_shutdown_timeout() {
    let docs = load();
    for d in deployments(&docs) {
        let env = d.env(&docs);
        let (registry, _) = d.check(&docs);
        let profile = profile(&d, &env, &registry);
        let timeout = registry_key(&registry, profile.as_deref(), "warden", "shutdown_timeout")
            .unwrap_or_else(|| "30s".to_string());
        let timeout = humantime::parse_duration(&interpolate(&timeout, &env))
            .unwrap_or_else(|e| panic!("{}: shutdown_timeout {timeout:?}: {e}", d.what()));
        // Kubernetes' default when the key is absent.
        let grace = d.pod["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        assert!(
            Duration::from_secs(grace) > timeout + EXIT_AFTER_SHUTDOWN,
            "{}: terminationGracePeriodSeconds {grace} does not outlast [warden] \
             shutdown_timeout ({timeout:?}) plus warden's last second: the kubelet's SIGKILL \
             would cut the ordered stop short",
            d.what()
        );
    }
}

#[test]
fn the_probes_hit_livez_and_readyz_where_warden_listens() {
    let docs = load();
    for d in deployments(&docs) {
        let what = d.what();
        let env = d.env(&docs);
        let (registry, _) = d.check(&docs);
        let profile = profile(&d, &env, &registry);
        let enabled = registry_key(&registry, profile.as_deref(), "api", "enabled");
        assert_ne!(
            enabled.as_deref(),
            Some("false"),
            "{what}: the API is off: nothing to probe"
        );
        let listen = registry_key(&registry, profile.as_deref(), "api", "listen")
            .unwrap_or_else(|| "127.0.0.1:9464".to_string());
        let listen: SocketAddr = interpolate(&listen, &env)
            .parse()
            .unwrap_or_else(|e| panic!("{what}: [api] listen {listen:?}: {e}"));
        assert!(
            !listen.ip().is_loopback(),
            "{what}: the API listens on {listen}, which the kubelet's httpGet probes (sent to \
             the pod's IP) cannot reach: set WARDEN_API_LISTEN=0.0.0.0:{}",
            listen.port()
        );
        for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
            let get = &d.container[probe]["httpGet"];
            assert!(get.is_object(), "{what}: no {probe}.httpGet");
            assert_eq!(get["path"], path, "{what}: {probe} path");
            assert!(get["host"].is_null(), "{what}: {probe} sets a host");
            assert!(
                get["scheme"].is_null() || get["scheme"] == "HTTP",
                "{what}: {probe} scheme {} (warden's API is plain HTTP)",
                get["scheme"]
            );
            assert_eq!(
                d.port(&get["port"]),
                i64::from(listen.port()),
                "{what}: {probe} port is not the API's ({listen})"
            );
        }
    }
}

#[test]
fn replicated_deployments_select_no_critical_singleton() {
    let docs = load();
    let mut split_singletons = Vec::new();
    for d in deployments(&docs) {
        let (_, report) = d.check(&docs);
        let services = report["services"].as_object().expect("--resolved services");
        if d.doc.layout == "split" {
            assert!(
                d.replicas() > 1,
                "{}: the split layout runs several replicas of each slice",
                d.what()
            );
            split_singletons.extend(
                services
                    .iter()
                    .filter(|(_, s)| s["singleton"] == true)
                    .map(|(n, _)| n.clone()),
            );
        }
        if d.replicas() < 2 {
            continue;
        }
        for (name, s) in services {
            assert!(
                !(s["singleton"] == true && s["critical"] == true),
                "{}: {name} is a critical singleton in a Deployment of {} replicas: on the \
                 standby pods it is never ready, so /readyz stays 503 there",
                d.what(),
                d.replicas()
            );
        }
    }
    assert!(
        !split_singletons.is_empty(),
        "the split layout runs no singleton"
    );
}

#[test]
fn every_service_reaches_the_api_port_of_its_pods() {
    let docs = load();
    let all = deployments(&docs);
    let services: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Service").collect();
    for layout in ["all-in-one", "split"] {
        assert!(
            services.iter().any(|s| s.layout == layout),
            "no Service in deploy/kubernetes/{layout}/"
        );
    }
    for s in services {
        let selector = s.value["spec"]["selector"].as_object().expect("a selector");
        let selected: Vec<&Deployment<'_>> = all
            .iter()
            .filter(|d| d.doc.layout == s.layout)
            .filter(|d| {
                let labels = &d.doc.value["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| &labels[k] == v)
            })
            .collect();
        assert!(
            !selected.is_empty(),
            "{} selects no Deployment's pods",
            s.what()
        );
        for port in s.value["spec"]["ports"].as_array().expect("ports") {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            for d in &selected {
                assert_eq!(
                    d.port(target),
                    9464,
                    "{}: port {} does not reach the API of {}",
                    s.what(),
                    port["name"],
                    d.what()
                );
            }
        }
    }
}

#[test]
fn the_pods_run_locked_down_with_bounded_resources() {
    let docs = load();
    for d in deployments(&docs) {
        let what = d.what();
        let pod = &d.pod["securityContext"];
        let c = &d.container["securityContext"];
        // The container's setting wins over the pod's.
        let either = |key: &str| {
            if c[key].is_null() {
                pod[key].clone()
            } else {
                c[key].clone()
            }
        };
        assert_eq!(either("runAsNonRoot"), true, "{what}: runAsNonRoot");
        assert_eq!(either("runAsUser"), IMAGE_UID, "{what}: runAsUser");
        assert_eq!(pod["fsGroup"], IMAGE_UID, "{what}: fsGroup");
        assert_eq!(
            either("seccompProfile")["type"],
            "RuntimeDefault",
            "{what}: seccomp"
        );
        assert_eq!(
            c["allowPrivilegeEscalation"], false,
            "{what}: allowPrivilegeEscalation"
        );
        assert_eq!(
            c["readOnlyRootFilesystem"], true,
            "{what}: readOnlyRootFilesystem"
        );
        assert!(
            c["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "ALL")),
            "{what}: capabilities.drop ALL"
        );
        assert!(
            c["capabilities"]["add"].is_null(),
            "{what}: capabilities.add"
        );
        assert!(
            d.pod["hostNetwork"] != true && d.pod["hostname"].is_null(),
            "{what}: the pods' host names must differ (the replicator's consumer is named after it)"
        );
        // A read-only root: /tmp (sd_notify sockets) must be writable.
        let tmp = d.container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == "/tmp")
            .unwrap_or_else(|| panic!("{what}: nothing writable mounted on /tmp"));
        let volume = d.pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == tmp["name"])
            .unwrap_or_else(|| panic!("{what}: no volume {}", tmp["name"]));
        assert!(
            volume["emptyDir"].is_object(),
            "{what}: /tmp is not an emptyDir"
        );
        assert_ne!(tmp["readOnly"], true, "{what}: /tmp is read-only");
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    d.container["resources"][bound][resource].is_string(),
                    "{what}: resources.{bound}.{resource}"
                );
            }
        }
    }
}
