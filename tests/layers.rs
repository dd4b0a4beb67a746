//! The layers of the crate: which top-level module uses which. The arrows
//! must point one way only (cli → api → supervisor → services → probe →
//! conn → graph → config, with `metrics` and `sys` at the bottom), so that no two
//! modules import each other, even through a third.
//!
//! `cargo test --test layers -- --nocapture` prints the module graph (as
//! `from -> to (uses)` lines, then as DOT).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first. A module may use only modules of later layers.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["api"],
    &["supervisor"],
    &["services"],
    &["probe"],
    &["conn"],
    &["graph"],
    &["config"],
    &["metrics", "sys"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments (line comments, doc comments
/// and block comments), keeping string literals as they are.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        if in_str {
            if b[i] == b'\\' {
                out.push_str(&text[i..(i + 2).min(b.len())]);
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                in_str = false;
            }
            out.push(b[i] as char);
            i += 1;
        } else if text[i..].starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if text[i..].starts_with("/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'\'' && i + 2 < b.len() && b[i + 2] == b'\'' {
            // A char literal such as '"' must not open a string.
            out.push_str(&text[i..i + 3]);
            i += 3;
        } else {
            if b[i] == b'"' {
                in_str = true;
            }
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The top-level modules a piece of code names through `crate::`, in
/// paths (`crate::config::X`) and in grouped imports (`use crate::{a, b}`).
fn used_modules(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        // `$crate::` in a macro is the defining module's own path.
        if at > 0 && code.as_bytes()[at - 1] == b'$' {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: skip nested braces.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && depth == 0 && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            used.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                used.insert(name);
            }
        }
    }
    used
}

/// The top-level module of a file under `src/`.
fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every edge between top-level modules, with the files that make it.
fn module_graph() -> BTreeMap<(String, String), Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // `#[macro_export]` macros live at the crate root (`crate::name!`):
    // they belong to the module that defines them.
    let mut macros: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = top_module(rel);
        let code = std::fs::read_to_string(f).unwrap();
        for (at, _) in code.match_indices("macro_rules! ") {
            let name: String = code[at + "macro_rules! ".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            macros.insert(name, module.clone());
        }
    }
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = top_module(rel);
        if module == "lib" || module == "main" {
            continue;
        }
        let code = strip_comments(&std::fs::read_to_string(&f).unwrap());
        for used in used_modules(&code) {
            let used = macros.get(&used).cloned().unwrap_or(used);
            if used != module {
                edges
                    .entry((module.clone(), used))
                    .or_default()
                    .push(rel.display().to_string());
            }
        }
    }
    edges
}

#[test]
fn the_arrows_between_top_level_modules_point_one_way() {
    let edges = module_graph();
    println!("module graph (from -> to: files):");
    for ((from, to), files) in &edges {
        println!("  {from} -> {to}: {}", files.join(", "));
    }
    println!("digraph modules {{");
    for (from, to) in edges.keys() {
        println!("  \"{from}\" -> \"{to}\";");
    }
    println!("}}");

    let mut wrong = Vec::new();
    for ((from, to), files) in &edges {
        match (layer_of(from), layer_of(to)) {
            (Some(a), Some(b)) if a < b => {}
            (None, _) => wrong.push(format!("{from} is in no layer; add it to LAYERS")),
            (_, None) => wrong.push(format!("{to} is in no layer; add it to LAYERS")),
            _ => wrong.push(format!(
                "{from} -> {to} points up or sideways (in {})",
                files.join(", ")
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_scanner_sees_paths_groups_and_skips_comments() {
    let code = strip_comments(
        "use crate::{config::X, graph::{A, B}, metrics};\n// crate::api\n/* crate::cli */\nlet s = \"//\"; crate::sys::f(); $crate::probe::g();",
    );
    let used = used_modules(&code);
    let want: BTreeSet<String> = ["config", "graph", "metrics", "sys"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(used, want);
}

/// Every connection to PostgreSQL and Redis is made in `src/conn/`, which
/// applies the DSN's TLS settings: no code elsewhere opens one by itself
/// (a `NoTls`, a bare `tokio_postgres::connect`, a redis `Client`).
#[test]
fn no_connection_bypasses_conn() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        if top_module(rel) == "conn" {
            continue;
        }
        let code = strip_comments(&std::fs::read_to_string(&f).unwrap());
        for needle in [
            "NoTls",
            "tokio_postgres::connect(",
            "Config::connect(",
            "redis::Client::",
            "get_multiplexed_",
            "MultiplexedConnection::new",
        ] {
            if code.contains(needle) {
                found.push(format!("{}: {needle}", rel.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "connections made outside src/conn/:\n{}",
        found.join("\n")
    );
}
