//! Diagnostics: what went wrong, where the user wrote it, and what would be
//! accepted instead.
//!
//! Validation never stops at the first problem: every stage pushes into a
//! [`Diagnostics`] list and the caller reports them all at once.

use serde::Serialize;

use super::secret::redact;
use super::source::{SourceMap, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a registry.
///
/// `code` is a stable, kebab-case identifier for scripts; `message` is the
/// human sentence, quoting what the user wrote and listing alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub span: Option<Span>,
    pub service: Option<String>,
    pub key: Option<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            service: None,
            key: None,
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn at(mut self, span: Span) -> Diagnostic {
        self.span = Some(span);
        self
    }

    pub fn at_opt(mut self, span: Option<Span>) -> Diagnostic {
        self.span = span;
        self
    }

    pub fn service(mut self, name: impl Into<String>) -> Diagnostic {
        self.service = Some(name.into());
        self
    }

    pub fn key(mut self, key: impl Into<String>) -> Diagnostic {
        self.key = Some(key.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic as text: a headline, the position, the quoted
    /// source line with a caret under the value, and help. Passwords are
    /// masked in everything printed.
    pub fn render(&self, sources: &SourceMap) -> String {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!("{level}[{}]: {}\n", self.code, redact(&self.message));
        if let Some(span) = self.span
            && let (Some(pos), Some(path)) = (sources.position(span), sources.path(span.file))
        {
            let line_no = pos.line.to_string();
            let pad = " ".repeat(line_no.len());
            out.push_str(&format!(
                "{pad}--> {}:{}:{}\n",
                path.display(),
                pos.line,
                pos.column
            ));
            if let Some(line) = sources.line_text(span.file, pos.line) {
                let line = line.replace('\t', " ");
                let shown = redact(&line);
                // The caret covers the span, or the rest of the line when
                // the span runs past it; at least one character.
                let width = sources
                    .slice(span)
                    .map(|s| s.lines().next().unwrap_or("").chars().count())
                    .unwrap_or(1)
                    .max(1);
                let width = if shown != line {
                    // Masking changed the line's length: underline to its end.
                    shown.chars().count().saturating_sub(pos.column - 1).max(1)
                } else {
                    width.min(line.chars().count().saturating_sub(pos.column - 1).max(1))
                };
                out.push_str(&format!(
                    "{pad} |\n{line_no} | {shown}\n{pad} | {}{}\n",
                    " ".repeat(pos.column - 1),
                    "^".repeat(width)
                ));
            }
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("  = help: {}\n", redact(help)));
        }
        out
    }

    /// The machine-readable form used by `warden check --format json`.
    pub fn to_json(&self, sources: &SourceMap) -> JsonDiagnostic {
        let pos = self.span.and_then(|s| sources.position(s));
        JsonDiagnostic {
            severity: self.severity,
            code: self.code,
            message: redact(&self.message),
            file: self
                .span
                .and_then(|s| sources.path(s.file))
                .map(|p| p.display().to_string()),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            service: self.service.clone(),
            key: self.key.clone(),
            help: self.help.as_deref().map(redact),
        }
    }
}

/// The stable JSON shape of a diagnostic (documented in the README).
#[derive(Debug, Clone, Serialize)]
pub struct JsonDiagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub service: Option<String>,
    pub key: Option<String>,
    pub help: Option<String>,
}

/// Every diagnostic found so far, in the order found.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records a diagnostic, dropping repeats: the same problem at the same
    /// place (a bad value in `[defaults]` is merged into every service but
    /// reported once, for the first).
    pub fn push(&mut self, d: Diagnostic) {
        fn without_path(m: &str) -> &str {
            m.split_once(": ").map(|(_, rest)| rest).unwrap_or(m)
        }
        let dup = d.span.is_some()
            && self.items.iter().any(|x| {
                x.span == d.span
                    && x.code == d.code
                    && without_path(&x.message) == without_path(&d.message)
            });
        if !dup {
            self.items.push(d);
        }
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.items {
            self.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| !d.is_error())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The code of the diagnostic recorded at `index`, if any.
    pub fn code_at(&self, index: usize) -> Option<&'static str> {
        self.items.get(index).map(|d| d.code)
    }

    /// Forgets the diagnostics recorded from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.items.truncate(len);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorts by file position so output follows the file, top to bottom;
    /// diagnostics without a position come last in the order found.
    pub fn sort(&mut self) {
        self.items
            .sort_by_key(|d| d.span.map(|s| (0, s.file, s.start)).unwrap_or((1, 0, 0)));
    }
}

/// A comma-separated list of the names a user could have written.
pub fn known_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.into_iter().collect();
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}

/// The closest candidate to `word`, if one is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase());
        let longest = c.chars().count().max(word.chars().count());
        let limit = (longest / 3).max(1);
        // Replacing every character is not a typo ("d" is not "a").
        if d <= limit && d < longest && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance: Levenshtein plus swaps of two
/// neighbours (`prdo` is one edit from `prod`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_only() {
        let names = ["postgres", "redis", "relay"];
        assert_eq!(did_you_mean("postgre", names), Some("postgres"));
        assert_eq!(did_you_mean("pg", names), None);
        assert_eq!(did_you_mean("reddis", names), Some("redis"));
        assert_eq!(did_you_mean("rlay", names), Some("relay"));
        assert_eq!(did_you_mean("prdo", ["prod", "dev"]), Some("prod"));
    }

    #[test]
    fn rendering_quotes_the_line_with_a_caret() {
        let mut map = SourceMap::default();
        let id = map.add("s.toml".into(), "[services.a]\ncommand = 5\n".into());
        let d = Diagnostic::error("type", "command: expected an array, found integer 5").at(Span {
            file: id,
            start: 23,
            end: 24,
        });
        assert_eq!(
            d.render(&map),
            "error[type]: command: expected an array, found integer 5\n --> s.toml:2:11\n  |\n2 | command = 5\n  |           ^\n"
        );
    }
}
