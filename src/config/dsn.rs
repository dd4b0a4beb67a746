//! What a connection string says about TLS, read the way libpq and the
//! Redis clients read it.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only;
//! libpq also has `verify-ca` and `verify-full`, and `sslrootcert`. So warden
//! takes those keys out of a PostgreSQL DSN itself ([`split_postgres`]) and
//! hands the driver the rest. A Redis URL asks for TLS with `rediss://`
//! (and `#insecure` for encryption without verification,
//! [`split_redis`]). Pure functions: the loader uses them to report a bad
//! value where it was written, the connections (`crate::conn`) to connect.

use std::fmt;
use std::path::PathBuf;

/// libpq's `sslmode`. `allow` (plain first, TLS only if refused) is not
/// offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, not verified; plain otherwise. The
    /// default, as in libpq.
    Prefer,
    /// TLS or nothing; verified as `verify-ca` when a CA is given
    /// (`sslrootcert` or `tls_ca`), else only encrypted.
    Require,
    /// TLS, the certificate chain checked; not the host name.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static [&'static str] =
        &["disable", "prefer", "require", "verify-ca", "verify-full"];

    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a TLS connection checks the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verify {
    /// Encrypted, the certificate not checked (`sslmode=prefer`,
    /// `require` without a CA, `rediss://...#insecure`).
    Nothing,
    /// The chain must lead to a trusted CA; the host name is not checked
    /// (`verify-ca`, `require` with a CA).
    Chain,
    /// The chain and the host name (`verify-full`, `rediss://`).
    Full,
}

/// A PostgreSQL DSN with its TLS keys taken out.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresParts {
    /// The DSN without `sslmode` and `sslrootcert`, for the driver. It
    /// holds the password: never show it.
    pub driver: String,
    /// `sslmode`, or `prefer` when absent (libpq's default).
    pub sslmode: SslMode,
    /// `sslrootcert` as written (relative to warden's working directory,
    /// as libpq reads it); `None` when absent or `system` (the system's
    /// roots, which are trusted anyway).
    pub sslrootcert: Option<PathBuf>,
}

impl fmt::Debug for PostgresParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresParts")
            .field("driver", &super::secret::redact(&self.driver))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish()
    }
}

impl PostgresParts {
    /// Whether TLS is used at all, and how the certificate is checked,
    /// given the CA file of the service (`tls_ca`), with libpq's meaning:
    /// `require` with a root certificate checks the chain.
    pub fn verify(&self, tls_ca: bool) -> Option<Verify> {
        match self.sslmode {
            SslMode::Disable => None,
            SslMode::Prefer => Some(Verify::Nothing),
            SslMode::Require if self.sslrootcert.is_some() || tls_ca => Some(Verify::Chain),
            SslMode::Require => Some(Verify::Nothing),
            SslMode::VerifyCa => Some(Verify::Chain),
            SslMode::VerifyFull => Some(Verify::Full),
        }
    }
}

/// Keys of libpq that ask for what warden does not do: a client
/// certificate, revocation lists.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("sslcert", "client certificates are not supported"),
    ("sslkey", "client certificates are not supported"),
    ("sslpassword", "client certificates are not supported"),
    ("sslcrl", "certificate revocation lists are not supported"),
    (
        "sslcrldir",
        "certificate revocation lists are not supported",
    ),
];

/// A DSN's TLS key and its value, or why it is refused.
fn tls_key(key: &str, value: &str, parts: &mut PostgresParts) -> Result<bool, String> {
    match key {
        "sslmode" => {
            parts.sslmode = match SslMode::parse(value) {
                Some(m) => m,
                None if value == "allow" => {
                    return Err("sslmode \"allow\" is not supported (it tries a plain connection first); use prefer, require or a verify mode".into());
                }
                None => {
                    return Err(format!(
                        "sslmode {value:?} is not one of {}",
                        SslMode::NAMES.join(", ")
                    ));
                }
            };
            Ok(true)
        }
        "sslrootcert" => {
            parts.sslrootcert = match value {
                "" => return Err("sslrootcert is empty; name a CA certificate file".into()),
                "system" => None,
                path => Some(PathBuf::from(path)),
            };
            Ok(true)
        }
        _ => match UNSUPPORTED.iter().find(|(k, _)| *k == key) {
            Some((k, why)) => Err(format!("{k}: {why}")),
            None => Ok(false),
        },
    }
}

/// Splits a PostgreSQL DSN (`postgres://` URL or libpq `key=value` pairs)
/// into what the driver reads and its TLS settings. The error says what is
/// wrong in words that never quote the password.
pub fn split_postgres(dsn: &str) -> Result<PostgresParts, String> {
    let mut parts = PostgresParts {
        driver: String::new(),
        sslmode: SslMode::Prefer,
        sslrootcert: None,
    };
    let rest = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| dsn.strip_prefix(p));
    parts.driver = match rest {
        Some(rest) => split_url(dsn, dsn.len() - rest.len(), &mut parts)?,
        None => split_pairs(dsn, &mut parts)?,
    };
    Ok(parts)
}

/// The query of a URL without its TLS parameters. As tokio-postgres reads
/// it: the user information runs to the first `@`, the query starts at
/// the first `?` after it, parameters are `&`-separated `key=value`.
fn split_url(dsn: &str, after_scheme: usize, parts: &mut PostgresParts) -> Result<String, String> {
    let rest = &dsn[after_scheme..];
    let host_start = rest.find('@').map_or(0, |i| i + 1);
    let Some(q) = rest[host_start..].find('?') else {
        return Ok(dsn.to_string());
    };
    let query_start = after_scheme + host_start + q + 1;
    let mut kept: Vec<&str> = Vec::new();
    for param in dsn[query_start..].split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = percent_decode(key);
        if !tls_key(&key, &percent_decode(value), parts)? {
            kept.push(param);
        }
    }
    let head = &dsn[..query_start - 1];
    Ok(if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq `key = value` pairs without the TLS ones. Values may be quoted
/// (`'...'`) and use `\` escapes, as tokio-postgres reads them.
fn split_pairs(dsn: &str, parts: &mut PostgresParts) -> Result<String, String> {
    let s = dsn.as_bytes();
    let mut i = 0;
    let mut kept: Vec<&str> = Vec::new();
    let ws = |c: u8| c.is_ascii_whitespace();
    loop {
        while i < s.len() && ws(s[i]) {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let start = i;
        while i < s.len() && !ws(s[i]) && s[i] != b'=' {
            i += 1;
        }
        let key = &dsn[start..i];
        while i < s.len() && ws(s[i]) {
            i += 1;
        }
        if i >= s.len() || s[i] != b'=' {
            return Err(format!("expected `=` after {key:?}"));
        }
        i += 1;
        while i < s.len() && ws(s[i]) {
            i += 1;
        }
        let mut value = Vec::new();
        if i < s.len() && s[i] == b'\'' {
            i += 1;
            loop {
                match s.get(i) {
                    None => return Err(format!("the quoted value of {key:?} is not closed")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < s.len() => {
                        value.push(s[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < s.len() && !ws(s[i]) {
                if s[i] == b'\\' && i + 1 < s.len() {
                    i += 1;
                }
                value.push(s[i]);
                i += 1;
            }
            if value.is_empty() {
                return Err(format!("{key:?} has no value"));
            }
        }
        let value = String::from_utf8_lossy(&value);
        if !tls_key(key, &value, parts)? {
            kept.push(&dsn[start..i]);
        }
    }
    Ok(kept.join(" "))
}

/// A Redis URL with its TLS part taken out.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisParts {
    /// The URL the driver reads (`redis://` for a `rediss://` one, without
    /// `#insecure`). It may hold the password: never show it.
    pub driver: String,
    /// `None`: no TLS (`redis://`, `unix://`).
    pub verify: Option<Verify>,
}

impl fmt::Debug for RedisParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisParts")
            .field("driver", &super::secret::redact(&self.driver))
            .field("verify", &self.verify)
            .finish()
    }
}

/// Splits a Redis URL: `rediss://` is TLS with the certificate and the
/// host name checked, `rediss://...#insecure` TLS without verification
/// (the Redis clients' convention).
pub fn split_redis(url: &str) -> Result<RedisParts, String> {
    let Some(rest) = url.strip_prefix("rediss://") else {
        return Ok(RedisParts {
            driver: url.to_string(),
            verify: None,
        });
    };
    let (rest, verify) = match rest.split_once('#') {
        None => (rest, Verify::Full),
        Some((rest, "insecure")) => (rest, Verify::Nothing),
        Some((_, other)) => {
            return Err(format!(
                "#{other} is not understood after a rediss:// URL; only #insecure (TLS without verifying the certificate) is"
            ));
        }
    };
    Ok(RedisParts {
        driver: format!("redis://{rest}"),
        verify: Some(verify),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(dsn: &str) -> (String, SslMode, Option<String>) {
        let p = split_postgres(dsn).unwrap_or_else(|e| panic!("{dsn}: {e}"));
        (
            p.driver,
            p.sslmode,
            p.sslrootcert.map(|p| p.display().to_string()),
        )
    }

    #[test]
    fn tls_keys_are_taken_out_of_urls() {
        assert_eq!(
            split("postgres://u:p@db:5432/app"),
            ("postgres://u:p@db:5432/app".into(), SslMode::Prefer, None)
        );
        assert_eq!(
            split("postgres://u:p@db/app?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
            (
                "postgres://u:p@db/app".into(),
                SslMode::VerifyFull,
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            split("postgresql://db/app?application_name=x&sslmode=verify-ca&connect_timeout=5"),
            (
                "postgresql://db/app?application_name=x&connect_timeout=5".into(),
                SslMode::VerifyCa,
                None
            )
        );
        // Percent-encoded names and values; a `?` in the password.
        assert_eq!(
            split("postgres://u:a?b@db/app?ssl%6dode=require&sslrootcert=%2Fa%20b.pem"),
            (
                "postgres://u:a?b@db/app".into(),
                SslMode::Require,
                Some("/a b.pem".into())
            )
        );
        assert_eq!(
            split("postgres://db/app?sslrootcert=system&sslmode=disable"),
            ("postgres://db/app".into(), SslMode::Disable, None)
        );
    }

    #[test]
    fn tls_keys_are_taken_out_of_key_value_pairs() {
        assert_eq!(
            split("host=db dbname=app"),
            ("host=db dbname=app".into(), SslMode::Prefer, None)
        );
        assert_eq!(
            split("host=db sslmode = verify-full  sslrootcert='/my certs/ca.pem' dbname=app"),
            (
                "host=db dbname=app".into(),
                SslMode::VerifyFull,
                Some("/my certs/ca.pem".into())
            )
        );
        assert_eq!(
            split("password='it\\'s' sslmode=require host=db"),
            ("password='it\\'s' host=db".into(), SslMode::Require, None)
        );
    }

    #[test]
    fn bad_tls_values_are_refused_in_words() {
        let err = |dsn: &str| split_postgres(dsn).unwrap_err();
        assert_eq!(
            err("postgres://db/app?sslmode=verify_full"),
            "sslmode \"verify_full\" is not one of disable, prefer, require, verify-ca, verify-full"
        );
        assert!(err("host=db sslmode=allow").contains("\"allow\" is not supported"));
        assert_eq!(
            err("host=db sslcert=/c.pem"),
            "sslcert: client certificates are not supported"
        );
        assert_eq!(
            err("host=db sslrootcert=''"),
            "sslrootcert is empty; name a CA certificate file"
        );
        assert_eq!(
            err("host=db password='x"),
            "the quoted value of \"password\" is not closed"
        );
        // The password is never quoted back.
        assert!(!err("password=s3cret sslmode=nope").contains("s3cret"));
    }

    #[test]
    fn verification_follows_libpq() {
        let v = |dsn: &str, ca: bool| split_postgres(dsn).unwrap().verify(ca);
        assert_eq!(v("host=db sslmode=disable", true), None);
        assert_eq!(v("host=db", false), Some(Verify::Nothing));
        assert_eq!(v("host=db", true), Some(Verify::Nothing));
        assert_eq!(v("host=db sslmode=require", false), Some(Verify::Nothing));
        assert_eq!(v("host=db sslmode=require", true), Some(Verify::Chain));
        assert_eq!(
            v("host=db sslmode=require sslrootcert=/ca.pem", false),
            Some(Verify::Chain)
        );
        assert_eq!(v("host=db sslmode=verify-ca", false), Some(Verify::Chain));
        assert_eq!(v("host=db sslmode=verify-full", false), Some(Verify::Full));
    }

    #[test]
    fn rediss_asks_for_tls() {
        let r = split_redis("redis://:pw@h:6379/1").unwrap();
        assert_eq!(
            (r.driver.as_str(), r.verify),
            ("redis://:pw@h:6379/1", None)
        );
        let r = split_redis("rediss://:pw@h:6380/1").unwrap();
        assert_eq!(
            (r.driver.as_str(), r.verify),
            ("redis://:pw@h:6380/1", Some(Verify::Full))
        );
        let r = split_redis("rediss://h:6380#insecure").unwrap();
        assert_eq!(
            (r.driver.as_str(), r.verify),
            ("redis://h:6380", Some(Verify::Nothing))
        );
        assert!(
            split_redis("rediss://h#nope")
                .unwrap_err()
                .contains("only #insecure")
        );
    }
}
