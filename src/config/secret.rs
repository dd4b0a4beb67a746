//! Secrets that must never leave warden in clear.
//!
//! A [`Secret`] prints as `***`; a [`Dsn`] prints with its password masked
//! (`postgres://app:***@db/app`). [`redact`] masks passwords in free text
//! (source lines quoted in errors, messages built from user values, the
//! errors of the database drivers), so every output path can run through
//! it; [`redact_dsn`] masks one value, and [`redact_json`] every string of
//! a JSON document.

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
        redact_dsn(self.0.expose())
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

/// What a secret is replaced with.
const MASK: &str = "***";

/// Masks every secret found in free text (a message, a quoted source line,
/// a driver's error, several DSNs at once), line by line:
///
/// - a URL's user-info (`scheme://user:password@host`): the password is
///   what follows the first `:` after `//`, up to the **last** `@` before
///   the next URL of the line (or, when there is none before it, the last
///   `@` of the line), so raw `@`, `/`, `?`, `#`, `:` and spaces in a
///   password are masked with it. The user name stays;
/// - the value of every `key=value` pair whose key names a secret
///   (`password`, `sslpassword`, `pass`, `passwd`, `token`, `secret`, and
///   keys ending so such as `PGPASSWORD` or `api.token`), in libpq's form
///   (spaces around `=`, values in single quotes with `\'` escapes, or
///   unquoted with `\` escapes), in query strings (`?password=…&…`) and
///   in TOML (`token = "…"`). An unquoted value runs until a space or `&`
///   that a known connection keyword and `=` follow (or a `"`, which ends
///   a quoted TOML or debug-printed string), so a password that holds
///   spaces or `&` is masked whole.
///
/// When in doubt it masks more than the password (never less).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        out.push_str(&redact_unit(body, Mode::Text));
        out.push_str(&line[body.len()..]);
    }
    out
}

/// Masks the secrets of one value that may be a connection string or URL
/// (a DSN, an endpoint, an argument, an environment value): as
/// [`redact`], but the whole value is one URL, so its user-info runs to
/// the value's last `@` and a `"` does not end a password.
pub fn redact_dsn(value: &str) -> String {
    redact_unit(value, Mode::Value)
}

/// Masks the secrets of every string in a JSON value, each as a value of
/// its own ([`redact_dsn`]).
pub fn redact_json(value: &mut serde_json::Value) {
    use serde_json::Value as J;
    match value {
        J::String(s) => *s = redact_dsn(s),
        J::Array(items) => items.iter_mut().for_each(redact_json),
        J::Object(fields) => fields.values_mut().for_each(redact_json),
        J::Null | J::Bool(_) | J::Number(_) => {}
    }
}

/// How much of the text one secret may span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A line of free text: several URLs, quoted strings around values.
    Text,
    /// One value: one URL, no quoting around it.
    Value,
}

fn redact_unit(s: &str, mode: Mode) -> String {
    mask_echoes(&mask_pairs(&mask_userinfo(s, mode), mode))
}

/// What the PostgreSQL driver quotes of a connection string it cannot
/// read: an unquoted password with a space (`password=a b=c`) makes it
/// say ``unknown option `b` `` or ``expected `=` but got `c` ``, a piece
/// of the password. Such a quoted word is masked unless it is a
/// connection keyword.
fn mask_echoes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let found = ["unknown option `", "but got `"]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| i + p.len()))
            .min();
        let Some(start) = found else { break };
        let Some(len) = rest[start..].find('`') else {
            break;
        };
        let word = &rest[start..start + len];
        out.push_str(&rest[..start]);
        if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
            out.push_str(word);
        } else {
            out.push_str(MASK);
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// Masks the password of every URL's user-info.
fn mask_userinfo(s: &str, mode: Mode) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let run = match mode {
            Mode::Text => next_url(tail).unwrap_or(tail.len()),
            Mode::Value => tail.len(),
        };
        // No `@` before the next URL: that "URL" may be part of a password
        // (`a b://c@host`), so the line's last `@` ends the user-info.
        let Some(at) = tail[..run].rfind('@').or_else(|| tail.rfind('@')) else {
            rest = tail;
            continue;
        };
        let info = &tail[..at];
        match info.find(':') {
            Some(colon) => {
                out.push_str(&info[..=colon]);
                out.push_str(MASK);
            }
            // A user name alone.
            None => out.push_str(info),
        }
        rest = &tail[at..];
    }
    out.push_str(rest);
    out
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// Where the next `scheme://` of `s` starts (its scheme's first letter).
fn next_url(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = s[from..].find("://") {
        let sep = from + found;
        let start = s[..sep].trim_end_matches(is_scheme_char).len();
        if s[start..sep].starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Some(start);
        }
        from = sep + 3;
    }
    None
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// Whether a key names a secret: `password`, `sslpassword`, `PGPASSWORD`,
/// `passwd`, `pass` (Redis over a Unix socket), `token`, `api.token`,
/// `secret`, `client_secret`...
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "token", "secret"]
        .iter()
        .any(|s| k.ends_with(s))
        || k == "pass"
        || k.ends_with("_pass")
}

/// The keywords a connection string may hold after a password: libpq's,
/// and the query keys of Redis URLs. A space (or `&`) ends an unquoted
/// password only when one of them and `=` follow.
const KEYWORDS: &[&str] = &[
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "db",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "load_balance_hosts",
    "options",
    "pass",
    "passfile",
    "password",
    "port",
    "protocol",
    "replication",
    "require_auth",
    "requirepeer",
    "service",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslmode",
    "sslnegotiation",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
];

/// The index after the spaces and tabs from `i`.
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// The index after the key bytes from `i`.
fn key_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_key_byte(b[i]) {
        i += 1;
    }
    i
}

/// Whether a connection keyword and `=` start at `i` (blanks allowed
/// before the `=`).
fn keyword_at(b: &[u8], i: usize) -> bool {
    let end = key_end(b, i);
    let key = &b[i..end];
    KEYWORDS
        .iter()
        .any(|k| key.eq_ignore_ascii_case(k.as_bytes()))
        && b.get(skip_blanks(b, end)) == Some(&b'=')
}

/// Masks the value of every `key=value` pair whose key names a secret.
fn mask_pairs(s: &str, mode: Mode) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if !is_key_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        i = key_end(b, i);
        if !is_secret_key(&s[start..i]) {
            continue;
        }
        let eq = skip_blanks(b, i);
        if b.get(eq) != Some(&b'=') {
            continue;
        }
        let from = skip_blanks(b, eq + 1);
        let query = start > 0 && matches!(b[start - 1], b'?' | b'&');
        let (begin, end) = value_span(b, from, query, mode);
        i = end;
        if begin == end || is_reference(&s[begin..end]) {
            continue;
        }
        out.push_str(&s[copied..begin]);
        out.push_str(MASK);
        copied = end;
    }
    out.push_str(&s[copied..]);
    out
}

/// The span of the value that starts at `i`: inside its quotes when it is
/// quoted (to the end when the quote is not closed); else up to a space or
/// (in a query string) `&` followed by a keyword and `=`, or in text a
/// `"`, or the end.
fn value_span(b: &[u8], i: usize, query: bool, mode: Mode) -> (usize, usize) {
    let Some(&first) = b.get(i) else {
        return (i, i);
    };
    if first == b'\'' || first == b'"' {
        let mut k = i + 1;
        while k < b.len() {
            match b[k] {
                b'\\' => k += 2,
                c if c == first => return (i + 1, k),
                _ => k += 1,
            }
        }
        return (i + 1, b.len());
    }
    let mut k = i;
    while k < b.len() {
        match b[k] {
            b'\\' => k += 2,
            b'"' if mode == Mode::Text => return (i, k),
            b'&' if query && keyword_at(b, k + 1) => return (i, k),
            c if c.is_ascii_whitespace() => {
                let next = skip_spaces(b, k);
                if next == b.len() || keyword_at(b, next) {
                    return (i, k);
                }
                k = next;
            }
            _ => k += 1,
        }
    }
    (i, b.len())
}

/// The index after the ASCII white space from `i`.
fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// `${NAME}`: a reference to a variable, not a secret.
fn is_reference(v: &str) -> bool {
    v.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|name| {
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `redact` of each input is exactly the expected text.
    fn table(cases: &[(&str, &str)]) {
        for (input, want) in cases {
            assert_eq!(redact(input), *want, "input: {input:?}");
        }
    }

    #[test]
    fn url_passwords_are_masked_up_to_the_last_at_sign() {
        table(&[
            (
                "postgres://app:s3cret@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "redis://:hunter2@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            // Raw characters a password may hold.
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p/ss@h/db", "postgres://u:***@h/db"),
            ("redis://:p?a#b@h:1/0", "redis://:***@h:1/0"),
            ("postgres://u:p:q@h", "postgres://u:***@h"),
            ("postgres://u:a b@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p%40ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pässwörd@h/d", "postgres://u:***@h/d"),
            ("redis://u:@h", "redis://u:***@h"),
            ("rediss://default:pw@h:6380", "rediss://default:***@h:6380"),
            (
                "http://user:pw@127.0.0.1:8080/x",
                "http://user:***@127.0.0.1:8080/x",
            ),
        ]);
    }

    #[test]
    fn urls_without_a_password_are_left_alone() {
        table(&[
            ("postgres://app@db/app", "postgres://app@db/app"),
            ("postgres://db/app", "postgres://db/app"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("postgres://[::1]:5432/db", "postgres://[::1]:5432/db"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            (
                "postgres://h/db?application_name=a@b",
                "postgres://h/db?application_name=a@b",
            ),
            ("see ://", "see ://"),
            ("no secret here", "no secret here"),
            ("", ""),
        ]);
    }

    #[test]
    fn a_url_in_a_line_keeps_what_surrounds_it() {
        table(&[
            (
                "a = \"postgres://u:p@h/d\" # b",
                "a = \"postgres://u:***@h/d\" # b",
            ),
            (
                "error: \"postgres://u:p@h/d\" refused",
                "error: \"postgres://u:***@h/d\" refused",
            ),
            // A TOML line with an escaped quote in the password.
            (
                r#"postgres = "postgres://u:a\"b@h/db""#,
                r#"postgres = "postgres://u:***@h/db""#,
            ),
        ]);
    }

    #[test]
    fn several_urls_in_one_text_are_each_masked() {
        table(&[
            (
                "postgres://u:p@h1/db and redis://:q@h2/0",
                "postgres://u:***@h1/db and redis://:***@h2/0",
            ),
            (
                "postgres://u:p@h1/db,redis://:q@h2/0",
                "postgres://u:***@h1/db,redis://:***@h2/0",
            ),
            // Line by line: a line's `@` never ends another line's URL.
            (
                "postgres://u:p@h1/db\nredis://h2:1\nredis://:q@h3\n",
                "postgres://u:***@h1/db\nredis://h2:1\nredis://:***@h3\n",
            ),
            ("a://u:p@h\r\nb://h", "a://u:***@h\r\nb://h"),
            // A URL without user-info before one with it: masking more
            // than needed, never less.
            (
                "postgres://h1/db redis://:q@h2",
                "postgres://h1/db redis:***@h2",
            ),
            // What looks like a URL inside a password is part of it.
            ("postgres://u:a b://c@h/db", "postgres://u:***@h/db"),
            ("postgres://u:a:b://c@h/db", "postgres://u:***@h/db"),
        ]);
    }

    #[test]
    fn a_url_start_needs_a_scheme_that_starts_with_a_letter() {
        assert_eq!(next_url("x ab+c.d-e://h"), Some(2));
        assert_eq!(next_url("redis://h"), Some(0));
        assert_eq!(next_url(" 1a://h b://h"), Some(8));
        assert_eq!(next_url("://h"), None);
        assert_eq!(next_url("é://h"), None);
        assert_eq!(next_url("no url"), None);
        // Non-ASCII before the scheme.
        assert_eq!(next_url("é b://h"), Some(3));
        assert!(is_scheme_char('+') && is_scheme_char('-') && is_scheme_char('.'));
        assert!(is_scheme_char('a') && is_scheme_char('Z') && is_scheme_char('0'));
        assert!(!is_scheme_char(':') && !is_scheme_char('/') && !is_scheme_char('_'));
    }

    #[test]
    fn a_whole_value_is_one_url() {
        // A `"` or a line break ends nothing in a value.
        assert_eq!(
            redact_dsn("postgres://u:a\"b@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_dsn("postgres://u:p\n@h/db"), "postgres://u:***@h/db");
        // Nor does what looks like a second URL.
        assert_eq!(
            redact_dsn("postgres://u:x@y b://c@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_dsn("host=h password=a\"b"), "host=h password=***");
        assert_eq!(redact_dsn("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn key_value_passwords_are_masked_in_libpq_form() {
        table(&[
            (
                "host=db user=app password=s3cret dbname=app",
                "host=db user=app password=*** dbname=app",
            ),
            ("password=s3cret", "password=***"),
            ("PASSWORD = x host=h", "PASSWORD = *** host=h"),
            ("password\t=\tx", "password\t=\t***"),
            ("password=  x", "password=  ***"),
            // Quoted, with spaces and escaped quotes.
            (
                r"host=h password='a b\' c' dbname=x",
                r"host=h password='***' dbname=x",
            ),
            (r"password='a\\' dbname=x", r"password='***' dbname=x"),
            ("password='' dbname=x", "password='' dbname=x"),
            // Not closed: to the end.
            ("password='abc dbname=x", "password='***"),
            // Unquoted: up to a keyword and `=`.
            ("password=a b c dbname=x", "password=*** dbname=x"),
            (r"password=a\ b dbname=x", "password=*** dbname=x"),
            ("password=a b=c dbname=x", "password=*** dbname=x"),
            ("password=a dbname = x", "password=*** dbname = x"),
            ("password=a  HOST=x", "password=***  HOST=x"),
            ("password=a&host=b c", "password=***"),
            ("password=x  ", "password=***  "),
            ("password=x\tend", "password=***"),
            (
                "password=ä ö sslmode=disable",
                "password=*** sslmode=disable",
            ),
            // Nothing to mask.
            ("password=", "password="),
            ("password=   ", "password=   "),
            ("password", "password"),
            ("password x", "password x"),
            ("the password is wrong", "the password is wrong"),
        ]);
    }

    #[test]
    fn several_pairs_and_several_dsns_are_each_masked() {
        table(&[
            ("password=a password=b", "password=*** password=***"),
            (
                "host=a password=x\nhost=b password=y",
                "host=a password=***\nhost=b password=***",
            ),
            (
                "\"host=a password=x\" and \"host=b password=y\"",
                "\"host=a password=***\" and \"host=b password=***\"",
            ),
            (
                "password='a b' sslpassword=c user=u",
                "password='***' sslpassword=*** user=u",
            ),
        ]);
    }

    #[test]
    fn query_string_passwords_end_at_the_next_parameter() {
        table(&[
            (
                "postgres://db/app?password=x&sslmode=off",
                "postgres://db/app?password=***&sslmode=off",
            ),
            (
                "postgres://db/app?password=a&b&sslmode=off",
                "postgres://db/app?password=***&sslmode=off",
            ),
            (
                "postgres://db/app?password=a&b=c",
                "postgres://db/app?password=***",
            ),
            (
                "postgres://db/app?sslmode=off&password=x",
                "postgres://db/app?sslmode=off&password=***",
            ),
            (
                "redis+unix:///tmp/r.sock?db=0&pass=s3cret",
                "redis+unix:///tmp/r.sock?db=0&pass=***",
            ),
            ("unix:///r.sock?pass=a&db=1", "unix:///r.sock?pass=***&db=1"),
        ]);
    }

    #[test]
    fn a_quote_ends_an_unquoted_password_in_text_only() {
        table(&[
            ("\"host=h password=x\"", "\"host=h password=***\""),
            (r#"password=a\"b" c"#, r#"password=***" c"#),
            (
                "postgres = \"host=h password=x\" # db",
                "postgres = \"host=h password=***\" # db",
            ),
        ]);
        assert_eq!(redact_dsn("password=x\" c"), "password=***");
    }

    #[test]
    fn tokens_and_secrets_in_toml_and_env_lines_are_masked() {
        table(&[
            ("token = \"t0p\"", "token = \"***\""),
            ("token = 't0p'", "token = '***'"),
            ("api.token = \"t0p\"", "api.token = \"***\""),
            ("WARDEN_API_TOKEN=t0p", "WARDEN_API_TOKEN=***"),
            ("PGPASSWORD=x", "PGPASSWORD=***"),
            ("passwd=x", "passwd=***"),
            ("pass=x", "pass=***"),
            ("db_pass=x", "db_pass=***"),
            ("secret=x", "secret=***"),
            ("client_secret=x", "client_secret=***"),
            ("mypassword=x", "mypassword=***"),
            ("(password=x)", "(password=***"),
            ("é password=x", "é password=***"),
            // Keys that name no secret.
            ("passwords=x", "passwords=x"),
            ("password_file=x", "password_file=x"),
            ("compass=x", "compass=x"),
            ("tokens=x", "tokens=x"),
            ("user=x", "user=x"),
            // A reference to a variable is not a secret; a default may be.
            (
                "token = \"${WARDEN_API_TOKEN}\"",
                "token = \"${WARDEN_API_TOKEN}\"",
            ),
            ("token = \"${A:-dflt}\"", "token = \"***\""),
            ("token = \"${1A}\"", "token = \"***\""),
            ("token = \"${}\"", "token = \"***\""),
            ("token = \"x${A}\"", "token = \"***\""),
            ("token = \"${A}x\"", "token = \"***\""),
        ]);
    }

    #[test]
    fn secret_keys_and_references_are_told_apart() {
        for k in [
            "password",
            "PassWord",
            "sslpassword",
            "passwd",
            "token",
            "api.token",
            "secret",
            "pass",
            "db_pass",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "passwords",
            "pass_",
            "compass",
            "user",
            "tokens",
            "secrets",
            "passfile",
            "",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
        for r in ["${A}", "${_a9}", "${ABC_1}"] {
            assert!(is_reference(r), "{r}");
        }
        for r in [
            "${}", "${1A}", "${A-b}", "$A", "{A}", "${A", "x${A}", "${A}}",
        ] {
            assert!(!is_reference(r), "{r}");
        }
    }

    #[test]
    fn a_keyword_ends_a_value_only_with_its_equals_sign() {
        let b = b"host=x dbname =y user x passfile";
        assert!(keyword_at(b, 0));
        assert!(keyword_at(b, 7));
        assert!(!keyword_at(b, 16), "no `=` after user");
        assert!(!keyword_at(b, 21), "x is no keyword");
        assert!(!keyword_at(b, 23), "passfile at the end");
        assert!(!keyword_at(b"hostname=x", 0));
        assert!(keyword_at(b"DBNAME=x", 0));
        assert_eq!(skip_blanks(b" \t x", 0), 3);
        assert_eq!(skip_blanks(b"\nx", 0), 0, "a line break is no blank");
        assert_eq!(skip_spaces(b" \t\nx", 0), 3);
        assert_eq!(skip_spaces(b"   ", 1), 3);
        assert_eq!(key_end(b"ab_c-d.e=", 0), 8);
        assert_eq!(key_end(b"a b", 2), 3);
    }

    #[test]
    fn value_spans_are_exact() {
        let t = Mode::Text;
        assert_eq!(value_span(b"", 0, false, t), (0, 0));
        assert_eq!(value_span(b"'ab'c", 0, false, t), (1, 3));
        assert_eq!(value_span(b"\"ab\"c", 0, false, t), (1, 3));
        assert_eq!(value_span(b"'a\\'b'", 0, false, t), (1, 5));
        assert_eq!(value_span(b"'ab", 0, false, t), (1, 3));
        assert_eq!(value_span(b"'a\\", 0, false, t), (1, 3));
        assert_eq!(value_span(b"ab port=1", 0, false, t), (0, 2));
        assert_eq!(value_span(b"ab&port=1", 0, true, t), (0, 2));
        assert_eq!(value_span(b"ab&port=1", 0, false, t), (0, 9));
        assert_eq!(value_span(b"ab&x=1", 0, true, t), (0, 6));
        assert_eq!(value_span(b"a\\ b", 0, false, t), (0, 4));
        assert_eq!(value_span(b"a\\", 0, false, t), (0, 2));
        assert_eq!(value_span(b"a\"b", 0, false, t), (0, 1));
        assert_eq!(value_span(b"a\"b", 0, false, Mode::Value), (0, 3));
        assert_eq!(value_span(b"a  ", 0, false, t), (0, 1));
        assert_eq!(value_span(b"a b", 0, false, t), (0, 3));
        assert_eq!(value_span(b"x=ab c", 2, false, t), (2, 6));
    }

    #[test]
    fn what_the_driver_quotes_of_a_password_is_masked() {
        table(&[
            (
                "PostgreSQL: invalid connection string: unknown option `b`",
                "PostgreSQL: invalid connection string: unknown option `***`",
            ),
            (
                "unexpected character at byte 12: expected `=` but got `c`",
                "unexpected character at byte 12: expected `=` but got `***`",
            ),
            // Keywords are no secret; the first echo is not the last.
            ("unknown option `PASSWORD`", "unknown option `PASSWORD`"),
            (
                "unknown option `dbname` or unknown option `x` but got `y`!",
                "unknown option `dbname` or unknown option `***` but got `***`!",
            ),
            (
                "but got `x` and unknown option `y`",
                "but got `***` and unknown option `***`",
            ),
            (
                "invalid value for option `port`",
                "invalid value for option `port`",
            ),
            // Not closed: left as it is.
            ("unknown option `b", "unknown option `b"),
        ]);
    }

    #[test]
    fn redacting_twice_changes_nothing_more() {
        for s in [
            "postgres://u:p@ss@h/db and redis://:q@h2",
            r"host=h password='a b\' c' dbname=x",
            "postgres://db/app?password=a&b&sslmode=off",
            "token = \"t0p\"",
            "password=a b c",
        ] {
            let once = redact(s);
            assert_eq!(redact(&once), once, "{s}");
            let value = redact_dsn(s);
            assert_eq!(redact_dsn(&value), value, "{s}");
        }
    }

    #[test]
    fn every_string_of_a_json_document_is_masked() {
        let mut j = serde_json::json!({
            "command": ["psql", "postgres://u:p@h/db", "--password=x"],
            "env": {"URL": "redis://:q@h:1", "N": 5, "B": true, "Z": null},
            "plain": "hello",
        });
        redact_json(&mut j);
        assert_eq!(
            j,
            serde_json::json!({
                "command": ["psql", "postgres://u:***@h/db", "--password=***"],
                "env": {"URL": "redis://:***@h:1", "N": 5, "B": true, "Z": null},
                "plain": "hello",
            })
        );
    }

    #[test]
    fn secrets_never_format_in_clear() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
        assert!(!s.is_empty());
        assert!(Secret::default().is_empty());
        let d = Dsn::new("redis://:hunter2@h:1");
        assert_eq!(format!("{d}"), "redis://:***@h:1");
        assert_eq!(format!("{d:?}"), "\"redis://:***@h:1\"");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"redis://:***@h:1\"");
        assert_eq!(d.expose(), "redis://:hunter2@h:1");
        // A DSN is one value: a raw `"` in its password is masked too.
        let d = Dsn::new("postgres://u:a\"b@h/db");
        assert_eq!(d.redacted(), "postgres://u:***@h/db");
    }

    proptest::proptest! {
        /// Whatever a password holds, the forms users write are shown
        /// with exactly the password masked.
        #[test]
        fn no_password_survives_in_any_form(pw in "[a-zA-Z0-9#?/@:%'\" \\\\=&;éü密]{1,24}") {
            let url = format!("postgres://app:{pw}@db:5432/app");
            proptest::prop_assert_eq!(redact_dsn(&url), "postgres://app:***@db:5432/app");
            let quoted = pw.replace('\\', "\\\\").replace('\'', "\\'");
            let kv = format!("host=db password='{quoted}' dbname=app");
            proptest::prop_assert_eq!(redact_dsn(&kv), "host=db password='***' dbname=app");
            proptest::prop_assert_eq!(redact(&kv), "host=db password='***' dbname=app");
            let toml = format!(
                "postgres = \"{}\"",
                url.replace('\\', "\\\\").replace('"', "\\\"")
            );
            if !pw.contains("://") {
                proptest::prop_assert_eq!(redact(&toml), "postgres = \"postgres://app:***@db:5432/app\"");
                let line = format!("cannot reach {url}: refused");
                proptest::prop_assert_eq!(redact(&line), "cannot reach postgres://app:***@db:5432/app: refused");
            }
        }
    }
}
