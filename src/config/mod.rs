//! Configuration: `services.toml` text in, a typed [`Registry`] or every
//! error out.
//!
//! The stages, in order: read and parse (all syntax errors), check the
//! top-level layout, choose the profile and deep-merge its overlay, read
//! `env_files`, interpolate `${VAR}`, merge `[defaults]` into each service,
//! type every table, then cross-check what typing alone cannot see. The
//! only I/O is through [`Sources`]: the registry, its env files and
//! `*_file` secrets.

pub mod decode;
pub mod diag;
pub mod dsn;
pub mod envfile;
pub mod interp;
pub mod kind;
pub mod model;
pub mod node;
pub mod schema;
pub mod secret;
pub mod source;
pub mod types;
mod validate;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

pub use diag::{Diagnostic, Diagnostics, Severity};
/// The implicit `api` service that `[api]` configures: critical, with no
/// dependencies, the common defaults otherwise.
pub fn api_service() -> ServiceSpec {
    ServiceSpec {
        name: "api".into(),
        common: CommonSpec {
            critical: true,
            ..CommonSpec::all_defaults()
                .unwrap_or_else(|| unreachable!("every common key has a default"))
        },
        kind: KindSpec::new(API_KIND, NoSettings),
        span: Span::default(),
    }
}

pub use kind::{API_KIND, Action, KindDef, KindSpec, KindTable, NoSettings, Runs, Settings};
pub use model::*;
pub use source::{NoSources, RealSources, SourceMap, Sources, Span};

use decode::{Cx, Decode, Fields, TableReader};
use diag::{did_you_mean, known_list};
use interp::{InterpError, InterpErrorKind};
use node::{Entry, Node, Value};

/// What to load and how.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The registry file.
    pub path: PathBuf,
    /// The profile asked for on the command line (`--profile`); when absent
    /// `WARDEN_PROFILE`, then `[warden] profile` decide.
    pub profile: Option<String>,
    /// The kinds a service may have: the built-in ones and those a crate
    /// using warden as a library registers. The loader knows no other.
    pub kinds: Arc<KindTable>,
}

/// The outcome of loading: the registry when there was no error, every
/// diagnostic (errors and warnings), and the texts they point into.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub registry: Option<Registry>,
    /// The services that typed, even when others did not: later stages
    /// check what they can of them, so one run reports every error.
    pub partial: Option<Registry>,
    pub diagnostics: Diagnostics,
    pub sources: SourceMap,
    /// Each service's merged table, for later stages that point at keys.
    pub nodes: HashMap<String, Node>,
}

const TOP_KEYS: &[&str] = &["warden", "api", "defaults", "services", "profiles"];
const PROFILE_KEYS: &[&str] = &["warden", "api", "defaults", "services"];

/// Reads and loads the registry at `opts.path`.
pub fn load(opts: &LoadOptions, sources: &dyn Sources) -> Loaded {
    let mut map = SourceMap::default();
    match sources.read(&opts.path) {
        Ok(text) => load_text(opts, text, sources, map),
        Err(e) => {
            let mut diagnostics = Diagnostics::default();
            diagnostics.push(
                Diagnostic::error(
                    "file-read",
                    format!("cannot read {}: {e}", opts.path.display()),
                )
                .help("pass the registry with -c FILE or WARDEN_CONFIG"),
            );
            map.add(opts.path.clone(), String::new());
            Loaded {
                registry: None,
                partial: None,
                diagnostics,
                sources: map,
                nodes: HashMap::new(),
            }
        }
    }
}

/// Loads a registry from text already read (tests, fuzzing, reload).
pub fn load_text(
    opts: &LoadOptions,
    text: String,
    sources: &dyn Sources,
    mut map: SourceMap,
) -> Loaded {
    let mut diags = Diagnostics::default();
    let file = map.add(opts.path.clone(), text);
    let text = map.file(file).map(|f| f.text.clone()).unwrap_or_default();
    let mut nodes = HashMap::new();
    let partial = match node::parse(file, &text) {
        Ok(root) => Loader {
            opts,
            sources,
            diags: &mut diags,
            map: &mut map,
            nodes: &mut nodes,
            secret_vars: BTreeSet::new(),
        }
        .run(root),
        Err(errors) => {
            for e in errors {
                let msg = e
                    .message
                    .lines()
                    .next()
                    .unwrap_or("invalid TOML")
                    .to_string();
                diags.push(
                    Diagnostic::error("toml-syntax", format!("invalid TOML: {msg}")).at_opt(e.span),
                );
            }
            None
        }
    };
    diags.sort();
    // Exactly one of the two is set: the registry when it is valid, the
    // partial one (for later stages' checks) when it is not.
    let (registry, partial) = if diags.has_errors() {
        (None, partial)
    } else {
        (partial, None)
    };
    Loaded {
        registry,
        partial,
        diagnostics: diags,
        sources: map,
        nodes,
    }
}

struct Loader<'a> {
    opts: &'a LoadOptions,
    sources: &'a dyn Sources,
    diags: &'a mut Diagnostics,
    map: &'a mut SourceMap,
    nodes: &'a mut HashMap<String, Node>,
    /// The variables that filled a secret setting (see `Registry`).
    secret_vars: BTreeSet<String>,
}

/// Where the profile in force was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileOrigin {
    Flag,
    Env,
    File,
}

impl Loader<'_> {
    fn base_dir(&self) -> PathBuf {
        self.opts
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    fn run(mut self, mut root: Node) -> Option<Registry> {
        let root_table = root.as_table()?;
        for (k, e) in root_table {
            if !TOP_KEYS.contains(&k.as_str()) {
                self.unknown_key("", k, e.key_span, TOP_KEYS);
            } else if e.node.as_table().is_none() {
                self.diags.push(
                    Diagnostic::error(
                        "type",
                        format!("{k}: expected a table, found {}", e.node.describe()),
                    )
                    .at(e.node.span)
                    .key(k.clone()),
                );
            }
        }
        if self.diags.has_errors() {
            return None;
        }

        let profiles = root.as_table_mut().and_then(|t| t.shift_remove("profiles"));
        let profile = self.apply_profile(&mut root, profiles);

        let env = self.read_env_files(&root);
        self.interpolate(&mut root, &env);

        let services_node = root.as_table_mut().and_then(|t| t.shift_remove("services"));
        let mut services_node = services_node
            .map(|e| e.node)
            .unwrap_or_else(|| Node::table(root.span));
        self.merge_defaults(&root, &mut services_node);

        let mut diags = Diagnostics::default();
        let registry = {
            let mut cx = Cx::new(&mut diags, self.sources, self.base_dir());
            let warden = decode_section::<WardenSpec>(&root, "warden", &mut cx);
            let api = decode_section::<ApiSpec>(&root, "api", &mut cx);
            let services = decode_services(&services_node, api.as_ref(), &self.opts.kinds, &mut cx);
            let warden = warden.or_else(WardenSpec::all_defaults);
            let api = api.or_else(ApiSpec::all_defaults);
            warden.zip(api).map(|(warden, api)| Registry {
                file: self.opts.path.clone(),
                profile: profile.clone(),
                warden,
                api,
                services,
                secret_vars: std::mem::take(&mut self.secret_vars),
            })
        };
        self.diags.extend(diags);
        if let Value::Table(t) = services_node.value {
            for (k, e) in t {
                self.nodes.insert(k, e.node);
            }
        }
        let registry = registry?;
        validate::check(&registry, &self.opts.kinds, &root, self.nodes, self.diags);
        Some(registry)
    }

    fn unknown_key(&mut self, path: &str, key: &str, span: Span, known: &[&str]) {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}: ")
        };
        let mut d = Diagnostic::error(
            "unknown-key",
            format!(
                "{prefix}unknown key `{key}`; known: {}",
                known_list(known.iter().copied())
            ),
        )
        .at(span)
        .key(if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        });
        if let Some(m) = did_you_mean(key, known.iter().copied()) {
            d = d.help(format!("did you mean `{m}`?"));
        }
        self.diags.push(d);
    }

    /// Chooses the profile and merges its overlay into `root`.
    fn apply_profile(&mut self, root: &mut Node, profiles: Option<Entry>) -> Option<String> {
        let file_profile = root
            .get("warden")
            .and_then(|w| w.get("profile"))
            .and_then(|p| p.as_str())
            .map(str::to_string);
        let (name, origin) = if let Some(p) = &self.opts.profile {
            (p.clone(), ProfileOrigin::Flag)
        } else if let Some(p) = self.sources.var("WARDEN_PROFILE").filter(|p| !p.is_empty()) {
            (p, ProfileOrigin::Env)
        } else if let Some(p) = file_profile.clone() {
            (p, ProfileOrigin::File)
        } else {
            (String::new(), ProfileOrigin::File)
        };

        let mut overlays: IndexMap<String, Entry> = IndexMap::new();
        if let Some(p) = profiles
            && let Some(t) = p.node.as_table()
        {
            for (pname, e) in t {
                match e.node.as_table() {
                    Some(pt) => {
                        for (k, ke) in pt {
                            if !PROFILE_KEYS.contains(&k.as_str()) {
                                self.unknown_key(
                                    &format!("profiles.{pname}"),
                                    k,
                                    ke.key_span,
                                    PROFILE_KEYS,
                                );
                            }
                        }
                        overlays.insert(pname.clone(), e.clone());
                    }
                    None => self.diags.push(
                        Diagnostic::error(
                            "type",
                            format!(
                                "profiles.{pname}: expected a table, found {}",
                                e.node.describe()
                            ),
                        )
                        .at(e.node.span)
                        .key(format!("profiles.{pname}")),
                    ),
                }
            }
        }
        if name.is_empty() {
            return None;
        }
        match overlays.shift_remove(&name) {
            Some(overlay) => {
                self.merge_overlay(root, overlay.node);
            }
            None if origin != ProfileOrigin::File
                && file_profile.as_deref() != Some(name.as_str()) =>
            {
                let mut known: Vec<&str> = overlays.keys().map(String::as_str).collect();
                if let Some(fp) = &file_profile
                    && !known.contains(&fp.as_str())
                {
                    known.push(fp);
                }
                let from = if origin == ProfileOrigin::Flag {
                    "--profile"
                } else {
                    "WARDEN_PROFILE"
                };
                let mut d = Diagnostic::error(
                    "unknown-profile",
                    format!(
                        "profile {name:?} (from {from}) is not defined; known: {}",
                        known_list(known.iter().copied())
                    ),
                )
                .key("profile");
                if let Some(m) = did_you_mean(&name, known.iter().copied()) {
                    d = d.help(format!("did you mean {m:?}?"));
                }
                self.diags.push(d);
            }
            // The file's own default profile may have no overlay: it names
            // the base configuration.
            None => {}
        }
        Some(name)
    }

    /// Deep-merges a profile overlay. A service whose overlay changes its
    /// `kind` keeps only the keys the new kind accepts.
    fn merge_overlay(&mut self, root: &mut Node, mut overlay: Node) {
        let over_services = overlay
            .as_table_mut()
            .and_then(|t| t.shift_remove("services"));
        if let (Some(os), Some(root_t)) = (over_services, root.as_table_mut()) {
            let base = root_t
                .entry("services".to_string())
                .or_insert_with(|| Entry {
                    key_span: os.key_span,
                    node: Node::table(os.node.span),
                });
            if let (Some(base_services), Value::Table(over_t)) =
                (base.node.as_table_mut(), os.node.value)
            {
                for (name, e) in over_t {
                    match base_services.get_mut(&name) {
                        Some(b) => {
                            let old_kind = b
                                .node
                                .get("kind")
                                .and_then(Node::as_str)
                                .map(str::to_string);
                            let new_kind = e
                                .node
                                .get("kind")
                                .and_then(Node::as_str)
                                .map(str::to_string);
                            if let (Some(old), Some(new)) = (old_kind, new_kind)
                                && old != new
                            {
                                let allowed = keys_of_kind(&new, &self.opts.kinds);
                                if let Some(t) = b.node.as_table_mut() {
                                    t.retain(|k, _| allowed.contains(&k.as_str()));
                                }
                            }
                            merge_service(&mut b.node, e.node);
                        }
                        None => {
                            base_services.insert(name, e);
                        }
                    }
                }
            }
        }
        root.merge(overlay);
    }

    /// Reads `[warden] env_files`; every bad line of every file is reported.
    fn read_env_files(&mut self, root: &Node) -> HashMap<String, String> {
        let mut env = HashMap::new();
        let Some(files) = root.get("warden").and_then(|w| w.get("env_files")) else {
            return env;
        };
        let Value::Array(items) = &files.value else {
            return env; // reported by typing
        };
        for item in items {
            let Some(path) = item.as_str() else { continue };
            let full = self.base_dir().join(path);
            match self.sources.read(&full) {
                Ok(text) => {
                    let (vars, errors) = envfile::parse(&text);
                    env.extend(vars);
                    // The file's line and what is wrong with it, never its
                    // text: an env file holds secrets (and a path may name
                    // any file). The caret goes under the file's name.
                    for e in errors {
                        self.diags.push(
                            Diagnostic::error(
                                "env-file",
                                format!(
                                    "warden.env_files: {}:{}: {}",
                                    full.display(),
                                    e.line,
                                    e.message
                                ),
                            )
                            .at(item.span)
                            .key("warden.env_files"),
                        );
                    }
                }
                Err(e) => self.diags.push(
                    Diagnostic::error(
                        "file-read",
                        format!("warden.env_files: cannot read {}: {e}", full.display()),
                    )
                    .at(item.span)
                    .key("warden.env_files"),
                ),
            }
        }
        env
    }

    /// Replaces `${VAR}` in every string value. Missing variables in a
    /// disabled service are not errors: it will not run.
    fn interpolate(&mut self, root: &mut Node, env: &HashMap<String, String>) {
        let sources = self.sources;
        let lookup = |name: &str| sources.var(name).or_else(|| env.get(name).cloned());
        let Some(t) = root.as_table_mut() else { return };
        for (section, e) in t.iter_mut() {
            if section == "services" {
                if let Some(st) = e.node.as_table_mut() {
                    for (name, se) in st.iter_mut() {
                        let enabled = se
                            .node
                            .get("enabled")
                            .and_then(Node::as_bool)
                            .unwrap_or(true);
                        let path = format!("services.{name}");
                        let mut errs = Vec::new();
                        walk_strings(
                            &mut se.node,
                            &PathSeg::Root(&path),
                            &lookup,
                            &mut errs,
                            &mut self.secret_vars,
                        );
                        for (node_span, key, err) in errs {
                            if enabled || !matches!(err.kind, InterpErrorKind::Missing { .. }) {
                                let d =
                                    self.interp_diag(node_span, &key, err).service(name.clone());
                                self.diags.push(d);
                            }
                        }
                    }
                }
            } else {
                let mut errs = Vec::new();
                walk_strings(
                    &mut e.node,
                    &PathSeg::Root(section),
                    &lookup,
                    &mut errs,
                    &mut self.secret_vars,
                );
                for (node_span, key, err) in errs {
                    let d = self.interp_diag(node_span, &key, err);
                    self.diags.push(d);
                }
            }
        }
    }

    fn interp_diag(&self, span: Span, key: &str, err: InterpError) -> Diagnostic {
        // Point at the `${...}` itself when the string has no escapes (its
        // source text is the value between quotes).
        let precise = self.map.slice(span).and_then(|src| {
            let q = src.chars().next()?;
            (matches!(q, '"' | '\'') && src.len() >= 2).then_some(())?;
            let inner = &src[1..src.len() - 1];
            inner.get(err.offset..err.end).map(|_| Span {
                file: span.file,
                start: span.start + 1 + err.offset as u32,
                end: span.start + 1 + err.end as u32,
            })
        });
        let at = precise.unwrap_or(span);
        match err.kind {
            InterpErrorKind::Missing { var, message: None } => Diagnostic::error(
                "missing-variable",
                format!("{key}: environment variable {var} is not set"),
            )
            .help(format!("set {var} in the environment or in an env file, or give a default: ${{{var}:-default}}")),
            InterpErrorKind::Missing { var, message: Some(m) } => {
                Diagnostic::error("missing-variable", format!("{key}: environment variable {var} is not set: {m}"))
            }
            InterpErrorKind::Syntax(m) => Diagnostic::error("invalid-interpolation", format!("{key}: {m}")),
        }
        .at(at)
        .key(key.to_string())
    }

    /// Merges `[defaults]` under every service table (the service wins).
    fn merge_defaults(&mut self, root: &Node, services: &mut Node) {
        let Some(defaults) = root.get("defaults") else {
            return;
        };
        if let Some(t) = defaults.as_table() {
            for (k, e) in t {
                if !DEFAULTS_KEYS.contains(&k.as_str()) {
                    self.unknown_key("defaults", k, e.key_span, DEFAULTS_KEYS);
                }
            }
        }
        let mut clean = defaults.clone();
        if let Some(t) = clean.as_table_mut() {
            t.retain(|k, _| DEFAULTS_KEYS.contains(&k.as_str()));
        }
        if let Some(st) = services.as_table_mut() {
            for (_, e) in st.iter_mut() {
                if e.node.as_table().is_some() {
                    let mut merged = clean.clone();
                    merged.span = e.node.span;
                    let own = std::mem::replace(&mut e.node, Node::table(merged.span));
                    merge_service(&mut merged, own);
                    e.node = merged;
                }
            }
        }
    }
}

/// Deep-merges one service table over another, except for tables that
/// hold one of several alternatives: a probe whose overlay names a check
/// (`tcp`, `http`, ...) drops the base's check, and a dual-write `shadow`
/// that changes store replaces the base's. Otherwise `ready = { tcp }` over
/// `ready = { http }` would merge into a probe checking two things.
fn merge_service(base: &mut Node, overlay: Node) {
    if let (Some(bt), Some(ot)) = (base.as_table_mut(), overlay.as_table()) {
        for probe in ["ready", "health"] {
            let names_check = ot
                .get(probe)
                .and_then(|e| e.node.as_table())
                .is_some_and(|t| t.keys().any(|k| is_probe_check_key(k)));
            if let Some(t) = bt
                .get_mut(probe)
                .and_then(|e| e.node.as_table_mut())
                .filter(|_| names_check)
            {
                // The CA belongs to the check it was written for.
                t.retain(|k, _| !is_probe_check_key(k) && k != "tls_ca");
            }
        }
        let store = |t: &node::Table| t.contains_key("redis") || t.contains_key("redis_file");
        let changes_store = match (
            ot.get("shadow").and_then(|e| e.node.as_table()),
            bt.get("shadow").and_then(|e| e.node.as_table()),
        ) {
            (Some(o), Some(b)) => store(o) != store(b),
            _ => false,
        };
        if changes_store {
            bt.shift_remove("shadow");
        }
    }
    base.merge(overlay);
}

fn is_probe_check_key(k: &str) -> bool {
    ProbeCheck::KEYS.contains(&k) || k == "postgres_file" || k == "redis_file"
}

/// The keys a service of `kind` accepts (an unknown kind: the common
/// ones; the kind itself is reported later).
fn keys_of_kind(kind: &str, kinds: &KindTable) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = vec!["kind"];
    keys.extend_from_slice(CommonSpec::KEYS);
    if let Some(k) = kinds.get(kind) {
        keys.extend_from_slice(k.keys());
    }
    keys
}

/// A key path built only when an error needs it: each level of the walk
/// links to its parent on the stack.
enum PathSeg<'a> {
    Root(&'a str),
    Key(&'a PathSeg<'a>, &'a str),
    Index(&'a PathSeg<'a>, usize),
}

impl PathSeg<'_> {
    /// Whether the nearest key names a secret (`token`, `password`, ...).
    fn names_secret(&self) -> bool {
        match self {
            PathSeg::Root(r) => secret::is_secret_key(r.rsplit('.').next().unwrap_or(r)),
            PathSeg::Key(_, k) => secret::is_secret_key(k),
            PathSeg::Index(p, _) => p.names_secret(),
        }
    }

    fn render(&self) -> String {
        match self {
            PathSeg::Root(r) => r.to_string(),
            PathSeg::Key(p, k) => format!("{}.{k}", p.render()),
            PathSeg::Index(p, i) => format!("{}.{i}", p.render()),
        }
    }
}

fn walk_strings(
    node: &mut Node,
    path: &PathSeg<'_>,
    lookup: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<(Span, String, InterpError)>,
    secret_vars: &mut BTreeSet<String>,
) {
    match &mut node.value {
        Value::String(s) => {
            if !s.contains('$') {
                return;
            }
            // The variables this string reads: secret ones when the key
            // names a secret or the value holds one (a DSN's password).
            let read = std::cell::RefCell::new(Vec::new());
            let recording = |name: &str| {
                read.borrow_mut().push(name.to_string());
                lookup(name)
            };
            match interp::interpolate(s, &recording) {
                Ok(v) => {
                    if path.names_secret() || secret::redact_dsn(&v) != v {
                        secret_vars.extend(read.into_inner());
                    }
                    *s = v;
                }
                Err(es) => {
                    let rendered = path.render();
                    errs.extend(es.into_iter().map(|e| (node.span, rendered.clone(), e)));
                    node.value = Value::Poisoned;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk_strings(item, &PathSeg::Index(path, i), lookup, errs, secret_vars);
            }
        }
        Value::Table(t) => {
            for (k, e) in t.iter_mut() {
                walk_strings(
                    &mut e.node,
                    &PathSeg::Key(path, k),
                    lookup,
                    errs,
                    secret_vars,
                );
            }
        }
        _ => {}
    }
}

fn decode_section<T: Decode + Fields>(root: &Node, key: &str, cx: &mut Cx<'_>) -> Option<T> {
    match root.get(key) {
        Some(node) => cx.with_key(key, |cx| T::decode(node, cx)),
        None => T::decode(&Node::table(root.span), cx),
    }
}

/// Checks a service name: it appears in URLs, metrics labels and logs.
fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

fn decode_services(
    services: &Node,
    api: Option<&ApiSpec>,
    kinds: &KindTable,
    cx: &mut Cx<'_>,
) -> IndexMap<String, ServiceSpec> {
    let mut out = IndexMap::new();
    let api_enabled = api.is_none_or(|a| a.enabled);
    if api_enabled {
        let mut spec = api_service();
        spec.span = services.span;
        out.insert("api".to_string(), spec);
    }
    let Some(table) = services.as_table() else {
        return out;
    };
    for (name, e) in table {
        if !valid_service_name(name) {
            let d = Diagnostic::error(
                "invalid-name",
                format!("service name {name:?} is not valid; use letters, digits, - and _, starting with a letter or digit, at most 63 characters"),
            )
            .at(e.key_span)
            .key(format!("services.{name}"));
            cx.diags.push(d);
            continue;
        }
        if name == "api" && api_enabled {
            let d = Diagnostic::error(
                "reserved-name",
                "service name \"api\" is taken by the built-in API service configured under [api]; rename this service or set [api] enabled = false",
            )
            .at(e.key_span)
            .key("services.api")
            .service("api");
            cx.diags.push(d);
            continue;
        }
        cx.service = Some(name.clone());
        let spec = cx.with_key("services", |cx| {
            cx.with_key(name, |cx| decode_service(name, &e.node, kinds, cx))
        });
        cx.service = None;
        if let Some(s) = spec {
            out.insert(name.clone(), s);
        }
    }
    out
}

fn decode_service(
    name: &str,
    node: &Node,
    kinds: &KindTable,
    cx: &mut Cx<'_>,
) -> Option<ServiceSpec> {
    let mut r = TableReader::new(node, cx)?;
    let kind_name = r.field::<String>(cx, "kind", None::<fn() -> String>);
    let kind_span = node.get("kind").map(|n| n.span).unwrap_or(node.span);
    let kind = match kind_name.as_deref() {
        None => None,
        Some(API_KIND) => {
            cx.with_key("kind", |cx| {
                cx.error(
                    "invalid-kind",
                    kind_span,
                    "kind \"api\" is built in: configure the API under [api], not as a service",
                )
            });
            None
        }
        Some(k) => match kinds.get(k) {
            Some(def) => Some(def),
            None => {
                let known = kinds.names();
                let mut d = cx.with_key("kind", |cx| {
                    cx.diag(
                        "unknown-kind",
                        kind_span,
                        format!(
                            "unknown kind {k:?}; this build has: {}",
                            known_list(known.iter().copied())
                        ),
                    )
                });
                if let Some(m) = did_you_mean(k, known.iter().copied()) {
                    d = d.help(format!("did you mean {m:?}?"));
                }
                cx.diags.push(d);
                None
            }
        },
    };
    let common = CommonSpec::decode_fields(&mut r, cx);
    let kind = kind?.decode(&mut r, cx);
    r.finish(cx);
    Some(ServiceSpec {
        name: name.to_string(),
        common: common?,
        kind: kind?,
        span: node.span,
    })
}

#[cfg(test)]
mod tests;
