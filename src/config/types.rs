//! Validated value types of the registry: signals, SQL identifiers,
//! connection strings, addresses, URLs, patterns.
//!
//! Each one is checked where the user wrote it, so that the error carries
//! the caret; what comes out is known to be well-formed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::decode::{Cx, Decode};
use super::node::{Node, Value};
use super::secret::{Dsn, Secret};

/// Signals a service may be stopped with, with their Linux numbers.
pub const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGABRT", 6),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGCONT", 18),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
];

/// A POSIX signal, written `"SIGTERM"` or `"TERM"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub name: &'static str,
    pub number: i32,
}

impl Signal {
    pub const TERM: Signal = Signal {
        name: "SIGTERM",
        number: 15,
    };
    pub const INT: Signal = Signal {
        name: "SIGINT",
        number: 2,
    };
    pub const KILL: Signal = Signal {
        name: "SIGKILL",
        number: 9,
    };

    pub fn parse(s: &str) -> Option<Signal> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        SIGNALS
            .iter()
            .find(|(n, _)| *n == full)
            .map(|&(name, number)| Signal { name, number })
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Decode for Signal {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let names = || {
            SIGNALS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(s) = node.as_str() else {
            cx.type_error(node, &format!("a signal name ({})", names()));
            return None;
        };
        Signal::parse(s).or_else(|| {
            cx.error(
                "invalid-signal",
                node.span,
                format!("unknown signal {s:?}; known: {}", names()),
            );
            None
        })
    }
    fn schema() -> Json {
        let mut names: Vec<String> = Vec::new();
        for (n, _) in SIGNALS {
            names.push(n.to_string());
            names.push(n.trim_start_matches("SIG").to_string());
        }
        json!({"type": "string", "enum": names})
    }
    fn to_json(&self) -> Json {
        Json::String(self.name.into())
    }
}

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

fn is_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_IDENT
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A SQL identifier (a column name): letters, digits and `_`, not starting
/// with a digit, at most 63 bytes. Always quoted when put in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    pub fn new(s: &str) -> Option<Ident> {
        is_ident(s).then(|| Ident(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The identifier quoted for SQL: `"name"`.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const IDENT_RULE: &str = "letters, digits and _, not starting with a digit, at most 63 characters";

impl Decode for Ident {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        Ident::new(&s).or_else(|| {
            cx.error(
                "invalid-identifier",
                node.span,
                format!("{s:?} is not a valid SQL identifier ({IDENT_RULE})"),
            );
            None
        })
    }
    fn schema() -> Json {
        json!({"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,62}$"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.0.clone())
    }
}

/// A table name, optionally schema-qualified (`archive.events`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<Ident>,
    pub name: Ident,
}

impl TableName {
    /// A table name written in warden's own code, such as a kind's default
    /// table (each kind's tests decode its defaults, so a bad one fails
    /// there, not in a user's hands).
    pub fn builtin(s: &'static str) -> TableName {
        TableName::new(s).unwrap_or_else(|| unreachable!("{s:?} is not an identifier"))
    }

    pub fn new(s: &str) -> Option<TableName> {
        match s.split_once('.') {
            Some((schema, name)) => Some(TableName {
                schema: Some(Ident::new(schema)?),
                name: Ident::new(name)?,
            }),
            None => Some(TableName {
                schema: None,
                name: Ident::new(s)?,
            }),
        }
    }
    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", s.quoted(), self.name.quoted()),
            None => self.name.quoted(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

impl Decode for TableName {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        TableName::new(&s).or_else(|| {
            cx.error(
                "invalid-identifier",
                node.span,
                format!("{s:?} is not a valid table name (schema.table or table; each part {IDENT_RULE})"),
            );
            None
        })
    }
    fn schema() -> Json {
        json!({"type": "string", "pattern": "^([A-Za-z_][A-Za-z0-9_]{0,62}\\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.to_string())
    }
}

/// A PostgreSQL connection string: `postgres://` / `postgresql://` URL or
/// libpq `key=value` pairs. Its TLS keys (`sslmode`, `sslrootcert`) are read
/// as libpq reads them ([`super::dsn::split_postgres`]); the rest is
/// checked by the driver's own parser when loaded, so a DSN that loads is
/// one warden can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresDsn(pub Dsn);

impl Decode for PostgresDsn {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        let t = s.trim();
        let ok = t.starts_with("postgres://")
            || t.starts_with("postgresql://")
            || (t.contains('=') && !t.contains("://"));
        if !ok {
            cx.error(
                "invalid-dsn",
                node.span,
                format!(
                    "{:?} is not a PostgreSQL connection string; expected postgres://user@host:port/database or host=... dbname=...",
                    super::secret::redact_dsn(t)
                ),
            );
            return None;
        }
        let bad = |cx: &mut Cx<'_>, why: &str| {
            cx.error(
                "invalid-dsn",
                node.span,
                format!("{:?}: {why}", super::secret::redact(t)),
            );
        };
        let parts = match super::dsn::split_postgres(t) {
            Ok(p) => p,
            Err(why) => {
                bad(cx, &why);
                return None;
            }
        };
        if let Err(e) = parts.driver.parse::<tokio_postgres::Config>() {
            bad(cx, &super::secret::redact(&driver_words(&e)));
            return None;
        }
        if let Some(root) = &parts.sslrootcert {
            // As libpq: relative to the working directory.
            if let Err((code, why)) = check_ca_file(root, cx) {
                cx.error(code, node.span, format!("sslrootcert {why}"));
                return None;
            }
        }
        Some(PostgresDsn(Dsn::new(t)))
    }
    fn schema() -> Json {
        json!({"type": "string", "description": "PostgreSQL DSN: postgres://user:password@host:port/db[?sslmode=verify-full&sslrootcert=FILE]"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.0.redacted())
    }
    const FILE_VARIANT: bool = true;
    const EXPECTED: &'static str = "a PostgreSQL connection string";
}

/// What the driver's parser says is wrong with a DSN (its own words,
/// "invalid connection string: ..."): the cause, which names an option,
/// never a value.
fn driver_words(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(cause) => cause.to_string(),
        None => e.to_string(),
    }
}

/// A Redis connection URL: `redis://`, `rediss://` (TLS) or
/// `redis+unix://`/`unix://`. Checked by the driver's own parser when
/// loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisDsn(pub Dsn);

impl Decode for RedisDsn {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        let t = s.trim();
        let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|p| t.starts_with(p))
            && t.len() > t.find("://").unwrap_or(0) + 3;
        if !ok {
            cx.error(
                "invalid-dsn",
                node.span,
                format!(
                    "{:?} is not a Redis URL; expected redis://host:port[/db], rediss://... or unix:///path",
                    super::secret::redact_dsn(t)
                ),
            );
            return None;
        }
        let parsed = super::dsn::split_redis(t).and_then(|p| {
            redis::IntoConnectionInfo::into_connection_info(p.driver.as_str())
                .map(drop)
                // Its words end in " - InvalidClientConfig".
                .map_err(|e| e.to_string().replace(" - InvalidClientConfig", ""))
        });
        if let Err(why) = parsed {
            cx.error(
                "invalid-dsn",
                node.span,
                format!(
                    "{:?}: {}",
                    super::secret::redact(t),
                    super::secret::redact(&why)
                ),
            );
            return None;
        }
        Some(RedisDsn(Dsn::new(t)))
    }
    fn schema() -> Json {
        json!({"type": "string", "description": "Redis URL: redis://[:password@]host:port[/db], rediss://... for TLS"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.0.redacted())
    }
    const FILE_VARIANT: bool = true;
    const EXPECTED: &'static str = "a Redis URL";
}

/// A file of PEM certificates: a CA trusted in addition to the system's
/// roots (`tls_ca`). Written relative to the registry's directory; checked
/// when loaded (readable, at least one certificate), read again at each
/// connection that needs it (a renewed CA needs no reload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaFile(pub PathBuf);

impl fmt::Display for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl Decode for CaFile {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        if s.trim().is_empty() {
            cx.error(
                "invalid-value",
                node.span,
                "the CA file is empty; name a file of PEM certificates",
            );
            return None;
        }
        // Relative to the registry's directory (as written when that is
        // the working directory).
        let path = if cx.base_dir == Path::new(".") {
            PathBuf::from(s.trim())
        } else {
            cx.base_dir.join(s.trim())
        };
        match check_ca_file(&path, cx) {
            Ok(()) => Some(CaFile(path)),
            Err((code, why)) => {
                cx.error(code, node.span, why);
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"type": "string", "description": "A file of PEM CA certificates trusted besides the system's roots"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.to_string())
    }
}

/// A path written in the registry, relative to the registry's directory
/// (as written when that is the working directory); `None` (reported) when
/// empty.
fn registry_path(node: &Node, cx: &mut Cx<'_>, what: &str) -> Option<PathBuf> {
    let s = String::decode(node, cx)?;
    if s.trim().is_empty() {
        cx.error(
            "invalid-value",
            node.span,
            format!("the path is empty; name {what}"),
        );
        return None;
    }
    Some(if cx.base_dir == Path::new(".") {
        PathBuf::from(s.trim())
    } else {
        cx.base_dir.join(s.trim())
    })
}

/// The API's TLS certificate (`[api] tls_cert`): a PEM file of the
/// server's certificate, then its intermediates. Checked when loaded;
/// read again when it changes (a renewed certificate needs no restart).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFile(pub PathBuf);

impl Decode for CertFile {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let path = registry_path(node, cx, "a PEM certificate file")?;
        match check_pem_certificates(&path, cx, "certificate file") {
            Ok(()) => Some(CertFile(path)),
            Err((code, why)) => {
                cx.error(code, node.span, why);
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"type": "string", "description": "A PEM file of the server's certificate and its intermediates"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.0.display().to_string())
    }
}

/// The API's TLS private key (`[api] tls_key`): a PEM file of one key
/// (PKCS#8, PKCS#1 or SEC1). Its content is never quoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyFile(pub PathBuf);

impl Decode for KeyFile {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let path = registry_path(node, cx, "a PEM private key file")?;
        let text = match cx.sources.read(&path) {
            Ok(t) => t,
            Err(e) => {
                cx.error(
                    "file-read",
                    node.span,
                    format!("cannot read the key file {}: {e}", path.display()),
                );
                return None;
            }
        };
        if PrivateKeyDer::from_pem_slice(text.as_bytes()).is_err() {
            cx.error(
                "invalid-value",
                node.span,
                format!(
                    "{} holds no PEM private key (expected a -----BEGIN PRIVATE KEY----- block, or an RSA or EC one)",
                    path.display()
                ),
            );
            return None;
        }
        Some(KeyFile(path))
    }
    fn schema() -> Json {
        json!({"type": "string", "description": "A PEM file of the server's private key"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.0.display().to_string())
    }
}

/// Whether `path` is a readable file of PEM certificates (the error code
/// and words if not).
fn check_ca_file(path: &Path, cx: &Cx<'_>) -> Result<(), (&'static str, String)> {
    check_pem_certificates(path, cx, "CA file")
}

/// Whether `path` is a readable file of PEM certificates; `what` names it
/// in the words of an error.
fn check_pem_certificates(
    path: &Path,
    cx: &Cx<'_>,
    what: &str,
) -> Result<(), (&'static str, String)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let text = cx.sources.read(path).map_err(|e| {
        (
            "file-read",
            format!("cannot read the {what} {}: {e}", path.display()),
        )
    })?;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(text.as_bytes()) {
        if let Err(e) = c {
            return Err((
                "invalid-value",
                format!("{} is not a PEM certificate file: {e}", path.display()),
            ));
        }
        n += 1;
    }
    if n == 0 {
        return Err((
            "invalid-value",
            format!(
                "{} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// A PostgreSQL to connect to: its DSN, and the CA file its TLS
/// connections trust besides the system's roots and the DSN's
/// `sslrootcert` (the service's `tls_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub dsn: PostgresDsn,
    pub tls_ca: Option<CaFile>,
    /// What warden's own sessions ask of the server (none for a probe).
    pub limits: SessionLimits,
}

/// Limits a data service sets on its own PostgreSQL sessions, so that a
/// statement stuck behind a lock or a dead network fails instead of
/// hanging (`None`: the server's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionLimits {
    /// `statement_timeout`: the server cancels a longer statement.
    pub statement: Option<std::time::Duration>,
    /// `lock_timeout`: the server gives up a longer wait for a lock.
    pub lock: Option<std::time::Duration>,
    /// How long a silent network may keep a session: TCP keepalive probes
    /// and `TCP_USER_TIMEOUT` give up on a peer that stopped answering,
    /// and an answer is waited for at most this long past `statement`.
    pub network: Option<std::time::Duration>,
}

impl SessionLimits {
    /// How long a worker waits for the answer to one statement before it
    /// counts the session lost: the server cancels at `statement`, and
    /// its answer may take `network` more (`None`: no bound).
    pub fn answer_within(&self) -> Option<std::time::Duration> {
        Some(self.statement? + self.network?)
    }
}

impl PgTarget {
    pub fn new(dsn: PostgresDsn, tls_ca: Option<CaFile>) -> PgTarget {
        PgTarget {
            dsn,
            tls_ca,
            limits: SessionLimits::default(),
        }
    }

    /// The same server, with `limits` on each session.
    pub fn with_limits(self, limits: SessionLimits) -> PgTarget {
        PgTarget { limits, ..self }
    }
    /// The DSN with its password masked.
    pub fn redacted(&self) -> String {
        self.dsn.0.redacted()
    }
}

impl From<PostgresDsn> for PgTarget {
    fn from(dsn: PostgresDsn) -> PgTarget {
        PgTarget::new(dsn, None)
    }
}

/// A Redis to connect to: its URL, and the CA file a `rediss://`
/// connection trusts besides the system's roots (`tls_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub url: RedisDsn,
    pub tls_ca: Option<CaFile>,
}

impl RedisTarget {
    pub fn new(url: RedisDsn, tls_ca: Option<CaFile>) -> RedisTarget {
        RedisTarget { url, tls_ca }
    }
    /// The URL with its password masked.
    pub fn redacted(&self) -> String {
        self.url.0.redacted()
    }
}

impl From<RedisDsn> for RedisTarget {
    fn from(url: RedisDsn) -> RedisTarget {
        RedisTarget { url, tls_ca: None }
    }
}

impl Decode for Secret {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        String::decode(node, cx).map(Secret::new)
    }
    fn schema() -> Json {
        json!({"type": "string"})
    }
    fn to_json(&self) -> Json {
        Json::String(if self.is_empty() {
            String::new()
        } else {
            "***".into()
        })
    }
    const FILE_VARIANT: bool = true;
    const EXPECTED: &'static str = "the secret (text)";
}

/// An address to listen on: `IP:PORT`.
impl Decode for SocketAddr {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        s.trim().parse().ok().or_else(|| {
            cx.error(
                "invalid-address",
                node.span,
                format!("{s:?} is not an address to listen on; expected IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\""),
            );
            None
        })
    }
    fn schema() -> Json {
        json!({"type": "string", "description": "IP:PORT"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.to_string())
    }
}

/// `host:port` of a TCP endpoint (a name or an address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Decode for HostPort {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        let parsed = s.trim().rsplit_once(':').and_then(|(h, p)| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = p.parse().ok()?;
            (!h.is_empty() && port != 0).then(|| HostPort {
                host: h.to_string(),
                port,
            })
        });
        parsed.or_else(|| {
            cx.error(
                "invalid-address",
                node.span,
                format!("{s:?} is not host:port, such as \"127.0.0.1:5432\" or \"db:5432\""),
            );
            None
        })
    }
    fn schema() -> Json {
        json!({"type": "string", "pattern": "^.+:[0-9]{1,5}$"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.to_string())
    }
}

/// An `http://` or `https://` URL (https verified against the system's
/// roots, and for memory-sync its `tls_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(pub String);

impl Decode for HttpUrl {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        let t = s.trim();
        let rest = t
            .strip_prefix("http://")
            .or_else(|| t.strip_prefix("https://"));
        let host_ok = rest.is_some_and(|r| {
            let authority = r.split(['/', '?', '#']).next().unwrap_or("");
            !authority.is_empty() && !authority.contains(char::is_whitespace)
        });
        if host_ok {
            Some(HttpUrl(t.to_string()))
        } else {
            cx.error(
                "invalid-url",
                node.span,
                format!(
                    "{:?} is not an http:// or https:// URL such as \"http://127.0.0.1:8080/healthz\"",
                    super::secret::redact_dsn(t)
                ),
            );
            None
        }
    }
    fn schema() -> Json {
        json!({"type": "string", "pattern": "^(https?://|.*\\$\\{)"})
    }
    fn to_json(&self) -> Json {
        Json::String(super::secret::redact_dsn(&self.0))
    }
}

/// A regular expression (for the `log` probe), checked when loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub String);

impl Decode for Pattern {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let s = String::decode(node, cx)?;
        match regex::Regex::new(&s) {
            Ok(_) => Some(Pattern(s)),
            Err(e) => {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_string();
                cx.error(
                    "invalid-regex",
                    node.span,
                    format!("{s:?} is not a valid regular expression: {first}"),
                );
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"type": "string", "format": "regex"})
    }
    fn to_json(&self) -> Json {
        Json::String(self.0.clone())
    }
}

/// A command line: program and arguments, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command(pub Vec<String>);

impl Decode for Command {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        if let Some(s) = node.as_str() {
            cx.error(
                "type",
                node.span,
                format!("expected an array of strings, found {s:?}; write the program and its arguments as [\"prog\", \"arg\", ...], or [\"sh\", \"-c\", \"...\"] for a shell line"),
            );
            return None;
        }
        let v: Vec<String> = Vec::decode(node, cx)?;
        if v.first().is_none_or(|p| p.trim().is_empty()) {
            cx.error(
                "invalid-value",
                node.span,
                "the command is empty; it needs at least the program to run",
            );
            return None;
        }
        Some(Command(v))
    }
    fn schema() -> Json {
        json!({"type": "array", "items": {"type": "string"}, "minItems": 1})
    }
    fn to_json(&self) -> Json {
        json!(self.0)
    }
}

/// A number from 0 to 1 (jitter, ratios).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(pub f64);

impl Decode for Fraction {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let f = f64::decode(node, cx)?;
        if (0.0..=1.0).contains(&f) {
            Some(Fraction(f))
        } else {
            cx.error(
                "invalid-value",
                node.span,
                format!("{f} is out of range; expected a number from 0 to 1"),
            );
            None
        }
    }
    fn schema() -> Json {
        json!({"type": "number", "minimum": 0, "maximum": 1})
    }
    fn to_json(&self) -> Json {
        json!(self.0)
    }
}

/// An amount of memory: an integer of bytes, or a string with a unit,
/// `"16MiB"`, `"512KiB"`, `"1GiB"` (powers of 1024), `"20MB"` (of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The smallest amount accepted.
    pub const MIN: u64 = 64 * 1024;

    /// Parses `"16MiB"` and the like (`None`: not an amount).
    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(digits);
        let n: u64 = n.parse().ok()?;
        let unit: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return None,
        };
        n.checked_mul(unit)
    }
}

impl Decode for ByteSize {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let (n, written) = match &node.value {
            Value::Integer(i) => (u64::try_from(*i).ok(), format!("{i} bytes")),
            Value::String(s) => match ByteSize::parse(s) {
                Some(n) => (Some(n), format!("{s:?}")),
                None => {
                    cx.error(
                        "invalid-value",
                        node.span,
                        format!("{s:?} is not an amount of memory; expected a number with a unit, such as \"16MiB\", \"512KiB\" or \"1GiB\""),
                    );
                    return None;
                }
            },
            _ => {
                cx.type_error(node, "an amount of memory such as \"16MiB\"");
                return None;
            }
        };
        match n {
            Some(n) if n >= ByteSize::MIN => Some(ByteSize(n)),
            _ => {
                cx.error(
                    "invalid-value",
                    node.span,
                    format!("{written} is too small; expected at least 64KiB"),
                );
                None
            }
        }
    }
    fn schema() -> Json {
        json!({"anyOf": [
            {"type": "integer", "minimum": ByteSize::MIN},
            {"type": "string", "pattern": r"^\s*([0-9]+\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?|.*\$\{.+\}.*)\s*$"}
        ], "description": "bytes, or a number with a unit: 16MiB, 512KiB, 1GiB"})
    }
    fn to_json(&self) -> Json {
        const MIB: u64 = 1 << 20;
        const KIB: u64 = 1 << 10;
        Json::String(match self.0 {
            n if n % MIB == 0 => format!("{}MiB", n / MIB),
            n if n % KIB == 0 => format!("{}KiB", n / KIB),
            n => format!("{n}B"),
        })
    }
}

/// A positive whole number (batch sizes, thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u32);

impl Decode for Count {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Option<Self> {
        let n = u32::decode(node, cx)?;
        if n == 0 {
            cx.error(
                "invalid-value",
                node.span,
                "0 is out of range; expected an integer of at least 1",
            );
            return None;
        }
        Some(Count(n))
    }
    fn schema() -> Json {
        json!({"type": "integer", "minimum": 1, "maximum": u32::MAX})
    }
    fn to_json(&self) -> Json {
        json!(self.0)
    }
}
