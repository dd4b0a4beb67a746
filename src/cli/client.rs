//! The client commands of a running daemon (`status`, `health`, `start`,
//! `stop`, `restart`, `reload`, `action`): one HTTP request each to the
//! API, with a blocking std socket (no runtime to start: `warden status`
//! is a whole command in a few milliseconds).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value as Json;

use super::exit;

/// Where the daemon is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The API's URL.
    #[arg(long, env = "WARDEN_URL", default_value = "http://127.0.0.1:9464")]
    pub url: String,
    /// Bearer token for changes.
    #[arg(long, env = "WARDEN_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A response: status code and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or(Json::Null)
    }
    /// The API's `{"error": ...}`, or the raw body.
    pub fn error_text(&self) -> String {
        match self.json().get("error").and_then(Json::as_str) {
            Some(e) => e.to_string(),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

/// Why the daemon could not be asked.
pub struct Unreachable(pub String);

fn host_port(url: &str) -> Result<(String, u16), Unreachable> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Unreachable(format!("{url:?} is not an http:// URL")))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, p)) => p
            .parse()
            .map(|p| (h.trim_matches(['[', ']']).to_string(), p))
            .map_err(|_| Unreachable(format!("bad port in {url:?}"))),
        None => Ok((authority.to_string(), 80)),
    }
}

/// Sends one request and reads the whole reply.
pub fn request(
    args: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Reply, Unreachable> {
    let (host, port) = host_port(&args.url)?;
    let mut stream = TcpStream::connect((host.as_str(), port))
        .map_err(|e| Unreachable(format!("cannot reach warden at {}: {e}", args.url)))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let body = body.unwrap_or(b"");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = &args.token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| Unreachable(format!("talking to warden at {}: {e}", args.url));
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Unreachable("a malformed HTTP reply".into()))?;
    let status = std::str::from_utf8(&raw[..split])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Unreachable("a malformed HTTP status line".into()))?;
    Ok(Reply {
        status,
        body: raw[split + 4..].to_vec(),
    })
}

fn unreachable(e: Unreachable) -> u8 {
    errln!("error: {}", e.0);
    exit::UNREACHABLE
}

/// `warden health`: exit 0 when `/readyz` answers 200.
pub fn health(args: &ClientArgs) -> u8 {
    match request(args, "GET", "/readyz", None) {
        Ok(r) if r.status == 200 => exit::OK,
        Ok(r) => {
            errln!("not ready (HTTP {})", r.status);
            1
        }
        Err(e) => unreachable(e),
    }
}

fn uptime(since: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339(since) else {
        return "?".into();
    };
    let secs = std::time::SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `warden status`: a table of every service, or the JSON of the API.
pub fn status(args: &ClientArgs, json: bool) -> u8 {
    let reply = match request(args, "GET", "/v1/services", None) {
        Ok(r) => r,
        Err(e) => return unreachable(e),
    };
    if reply.status != 200 {
        errln!("error: HTTP {}: {}", reply.status, reply.error_text());
        return 1;
    }
    if json {
        out!("{}", String::from_utf8_lossy(&reply.body));
        outln!("");
        return exit::OK;
    }
    let v = reply.json();
    let mut rows = vec![[
        "NAME".to_string(),
        "STATE".into(),
        "READY".into(),
        "RESTARTS".into(),
        "UPTIME".into(),
        "LAST ERROR".into(),
    ]];
    for s in v["services"].as_array().into_iter().flatten() {
        rows.push([
            s["name"].as_str().unwrap_or("?").to_string(),
            s["state"].as_str().unwrap_or("?").to_string(),
            if s["ready"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            s["restarts"].as_u64().unwrap_or(0).to_string(),
            s["since"].as_str().map(uptime).unwrap_or_default(),
            s["last_error"].as_str().unwrap_or("").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in &rows {
        for (c, w) in widths.iter().enumerate() {
            text.push_str(&format!("{:<w$}  ", r[c], w = w));
        }
        text.push_str(&r[5]);
        text.push('\n');
    }
    out!("{text}");
    exit::OK
}

/// `warden start|stop|restart NAME`, `reload`, `action NAME ACTION [JSON]`.
pub fn control(args: &ClientArgs, path: &str, body: Option<&str>) -> u8 {
    if let Some(Err(e)) = body.map(serde_json::from_str::<Json>) {
        errln!("error: the arguments are not valid JSON: {e}");
        return exit::USAGE;
    }
    match request(args, "POST", path, body.map(str::as_bytes)) {
        Ok(r) if (200..300).contains(&r.status) => {
            let v = r.json();
            match v.get("result") {
                Some(result) => outln!(
                    "{}",
                    serde_json::to_string_pretty(result).unwrap_or_default()
                ),
                None => outln!("{}", v),
            }
            exit::OK
        }
        Ok(r) => {
            errln!("error: HTTP {}: {}", r.status, r.error_text());
            1
        }
        Err(e) => unreachable(e),
    }
}
