//! Secrets that must never leave warden in clear.
//!
//! A [`Secret`] prints as `***`; a [`Dsn`] prints with its password masked
//! (`postgres://app:***@db/app`). [`redact`] masks passwords in free text
//! (source lines quoted in errors, messages built from user values), so
//! every output path can run through it.

use std::fmt;

/// A secret value: its `Debug`, `Display` and `Serialize` show `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The clear value, for the one place that needs it (a connection, a
    /// comparison). Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A connection string (PostgreSQL or Redis URL, or libpq `key=value` form)
/// whose password is masked whenever it is shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn(Secret);

impl Dsn {
    pub fn new(value: impl Into<String>) -> Dsn {
        Dsn(Secret::new(value))
    }
    /// The clear connection string, for the driver only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
    /// The connection string with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(self.0.expose())
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl serde::Serialize for Dsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Masks every password found in `text`: the `user:password@` part of URLs,
/// and `password=...` pairs of libpq keyword strings and query strings.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URL user-info: scheme://user:password@host
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    redact_password_pairs(&out)
}

fn redact_password_pairs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find("password=") {
        let start = search + found + "password=".len();
        // Only a whole word: `password=` at the start, or after a separator.
        let before = lower[..search + found].chars().next_back();
        let whole = matches!(before, None | Some(' ' | '?' | '&' | ';' | '"' | '\''));
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || c == '&' || c == '"' || c == ';')
            .map(|e| start + e)
            .unwrap_or(text.len());
        if whole && end > start {
            out.push_str(&text[last..start]);
            out.push_str("***");
            last = end;
        }
        search = end.max(start);
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_every_form() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("postgres://app@db/app", "postgres://app@db/app"),
            (
                "host=db user=app password=s3cret dbname=app",
                "host=db user=app password=*** dbname=app",
            ),
            (
                "postgres://db/app?password=x&sslmode=off",
                "postgres://db/app?password=***&sslmode=off",
            ),
            (
                "a = \"postgres://u:p@h/d\" # b",
                "a = \"postgres://u:***@h/d\" # b",
            ),
            ("no secret here", "no secret here"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "input: {input}");
        }
    }

    #[test]
    fn secrets_never_format_in_clear() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        let d = Dsn::new("redis://:hunter2@h:1");
        assert_eq!(format!("{d}"), "redis://:***@h:1");
        assert!(!format!("{d:?}").contains("hunter2"));
    }
}
