//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod db;
pub mod http;
pub mod proxy;
pub mod servers;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use warden::config::{LoadOptions, Sources};
use warden::graph::{Checked, load_and_check};

/// An in-memory file system and environment, so a test controls exactly
/// what the loader sees.
#[derive(Default)]
pub struct MemSources {
    pub files: HashMap<PathBuf, String>,
    pub env: HashMap<String, String>,
}

impl MemSources {
    pub fn new(registry: &str) -> MemSources {
        let mut s = MemSources::default();
        s.files
            .insert(PathBuf::from("services.toml"), registry.to_string());
        s
    }
    pub fn file(mut self, path: &str, text: &str) -> MemSources {
        self.files.insert(PathBuf::from(path), text.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> MemSources {
        self.env.insert(k.into(), v.into());
        self
    }
}

impl Sources for MemSources {
    fn read(&self, path: &Path) -> io::Result<String> {
        let p = path.strip_prefix("./").unwrap_or(path);
        self.files.get(p).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "No such file or directory (os error 2)",
            )
        })
    }
    fn var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}

/// Loads `services.toml` from `sources` with an optional `--profile`.
pub fn load(sources: &MemSources, profile: Option<&str>) -> Checked {
    let opts = LoadOptions {
        path: PathBuf::from("services.toml"),
        profile: profile.map(str::to_string),
        kinds: std::sync::Arc::new(warden::services::builtin(PathBuf::from(".")).table()),
    };
    load_and_check(&opts, sources)
}

/// Every diagnostic as `LINE:COLUMN code: message [help: ...]`.
pub fn diagnostics(checked: &Checked) -> Vec<String> {
    let l = &checked.loaded;
    l.diagnostics
        .iter()
        .map(|d| {
            let j = d.to_json(&l.sources);
            let pos = match (j.line, j.column) {
                (Some(line), Some(col)) => format!("{line}:{col} "),
                _ => String::new(),
            };
            let help = j.help.map(|h| format!(" [help: {h}]")).unwrap_or_default();
            format!("{pos}{}: {}{help}", j.code, j.message)
        })
        .collect()
}

/// Runs `cmd` and returns what it printed, stdout then stderr; fails the
/// test with all of it, naming `what`, unless the command succeeds.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// `promtool`, or a failure saying how to install it.
pub fn promtool() -> &'static str {
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "promtool (Debian package prometheus) is missing: run scripts/install-deps, \
             which installs it"
        );
    }
    "promtool"
}
