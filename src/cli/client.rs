//! The client commands of a running daemon (`status`, `health`, `start`,
//! `stop`, `restart`, `reload`, `action`, `logs`): one HTTP request each to
//! the API, with a blocking std socket (no runtime to start: `warden
//! status` is a whole command in a few milliseconds). `logs -f` and
//! `status --watch` read the API's server-sent events.

use std::io::{BufRead, BufReader, Read, Write};
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
    /// Bearer token for changes (shown by `ps`: prefer --token-file).
    #[arg(long, env = "WARDEN_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token (a trailing newline is ignored).
    #[arg(
        long,
        env = "WARDEN_API_TOKEN_FILE",
        conflicts_with = "token",
        value_name = "FILE"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// For an https:// URL: a PEM file of the CA that signed the API's
    /// certificate, trusted besides the system's roots.
    #[arg(long, env = "WARDEN_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl ClientArgs {
    /// Reads `--token-file` into the token, once, before any request. The
    /// error names the file, never its content.
    pub fn load_token_file(&mut self) -> Result<(), String> {
        let Some(path) = &self.token_file else {
            return Ok(());
        };
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let text = String::from_utf8(text)
            .map_err(|_| format!("the token file {} is not UTF-8 text", path.display()))?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.is_empty() {
            return Err(format!("the token file {} is empty", path.display()));
        }
        self.token = Some(token.to_string());
        Ok(())
    }
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

/// Where a URL points: TLS or not, host, port.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

fn target(url: &str) -> Result<Target, Unreachable> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(Unreachable(format!(
            "{url:?} is not an http:// or https:// URL"
        )));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => (
            h,
            p.parse()
                .map_err(|_| Unreachable(format!("bad port in {url:?}")))?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_matches(['[', ']']).to_string();
    if host.is_empty() {
        return Err(Unreachable(format!("no host in {url:?}")));
    }
    Ok(Target { tls, host, port })
}

/// A connection to the API, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Opens TLS over `tcp`, verifying the API's certificate for `host`
/// against the system's roots and `--ca-file`; the handshake is done here,
/// so that a certificate that is not trusted is said as such.
fn tls_connect(args: &ClientArgs, host: &str, tcp: TcpStream) -> Result<Conn, Unreachable> {
    let cas: Vec<std::path::PathBuf> = args.ca_file.iter().cloned().collect();
    let config = crate::conn::tls::blocking_client_config(&cas)
        .map_err(|e| Unreachable(format!("cannot reach warden at {}: {e}", args.url)))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| Unreachable(format!("{host:?} is not a host name TLS can verify")))?;
    let conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| Unreachable(format!("TLS setup: {e}")))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            let words = crate::conn::tls::describe(&e, "--ca-file (WARDEN_CA_FILE)")
                .map(|w| w.replace(", or verify the chain only: sslmode=verify-ca", ""))
                .unwrap_or_else(|| e.to_string());
            return Err(Unreachable(format!(
                "cannot reach warden at {}: {words}",
                args.url
            )));
        }
    }
    Ok(Conn::Tls(Box::new(stream)))
}

/// Connects and sends a request; the stream is ready for the reply.
fn send(
    args: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Conn, Unreachable> {
    let Target { tls, host, port } = target(&args.url)?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .map_err(|e| Unreachable(format!("cannot reach warden at {}: {e}", args.url)))?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let mut stream = if tls {
        tls_connect(args, &host, tcp)?
    } else {
        Conn::Plain(tcp)
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
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
    Ok(stream)
}

fn io_error(args: &ClientArgs) -> impl Fn(std::io::Error) -> Unreachable + '_ {
    |e| Unreachable(format!("talking to warden at {}: {e}", args.url))
}

/// Sends one request and reads the whole reply.
pub fn request(
    args: &ClientArgs,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Reply, Unreachable> {
    let mut stream = send(args, method, path, body)?;
    let io = io_error(args);
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: the reply is whole
        // all the same (one request per connection, closed after it).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(io(e)),
    }
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

/// Reads an HTTP/1.1 chunked body as plain bytes. A read that times out
/// keeps what it had of a chunk-size line; the connection closing before
/// the last (empty) chunk is an error, not the end of the stream.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
    size_line: Vec<u8>,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Error, ErrorKind};
        let cut = || {
            Error::new(
                ErrorKind::UnexpectedEof,
                "the connection closed in the middle of the stream",
            )
        };
        if self.done {
            return Ok(0);
        }
        while self.left == 0 {
            if self.inner.read_until(b'\n', &mut self.size_line)? == 0 {
                return Err(cut());
            }
            if !self.size_line.ends_with(b"\n") {
                continue; // the rest of the line comes with the next read
            }
            let line = String::from_utf8_lossy(&self.size_line).into_owned();
            self.size_line.clear();
            let size = line.trim().split(';').next().unwrap_or("");
            if size.is_empty() {
                continue; // the CRLF that ends the previous chunk
            }
            self.left = usize::from_str_radix(size, 16)
                .map_err(|_| Error::new(ErrorKind::InvalidData, "bad chunk size"))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(cut());
        }
        self.left -= n;
        Ok(n)
    }
}

/// How long an event stream may stay silent (warden sends a keep-alive
/// every 15 s) before the daemon counts as gone.
const SILENCE: Duration = Duration::from_secs(45);

/// Opens a stream of server-sent events at `path` and hands each event
/// (name, data) to `on_event`, and `None` whenever `tick` passes without
/// one; `on_event` returns `false` to stop. A non-200 answer is an error
/// with the API's message. The stream ending cleanly (warden stopping) is
/// `Ok`; the connection breaking or going silent is `Unreachable`.
fn events(
    args: &ClientArgs,
    path: &str,
    tick: Duration,
    mut on_event: impl FnMut(Option<(&str, &str)>) -> bool,
) -> Result<Result<(), String>, Unreachable> {
    let stream = send(args, "GET", path, None)?;
    let io = io_error(args);
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(&io)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Unreachable("a malformed HTTP status line".into()))?;
    if status != 200 {
        let mut body = Vec::new();
        let _ = reader.read_to_end(&mut body);
        let text = String::from_utf8_lossy(&body).into_owned();
        // The body of an error is small; it may be chunked.
        let json_start = text.find('{').unwrap_or(0);
        let reply = Reply {
            status,
            body: text[json_start..].trim_end().as_bytes().to_vec(),
        };
        return Ok(Err(format!("HTTP {status}: {}", reply.error_text())));
    }
    // The headers are in: from now on a read waits at most `tick`.
    let _ = reader.get_ref().tcp().set_read_timeout(Some(tick));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body: Box<dyn Read> = if chunked {
        Box::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
            size_line: Vec::new(),
        })
    } else {
        Box::new(reader)
    };
    let mut lines = BufReader::new(body);
    let (mut event, mut data) = (String::new(), String::new());
    // Kept across a timeout: a line read in part is finished next time.
    let mut line = Vec::new();
    let mut heard = std::time::Instant::now();
    loop {
        let before = line.len();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(Ok(())),
            Ok(_) => heard = std::time::Instant::now(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if line.len() > before {
                    heard = std::time::Instant::now();
                }
                if heard.elapsed() > SILENCE {
                    return Err(Unreachable(format!(
                        "warden at {} went silent (no keep-alive for {} s)",
                        args.url,
                        SILENCE.as_secs()
                    )));
                }
                if !on_event(None) {
                    return Ok(Ok(()));
                }
                continue;
            }
            Err(e) => return Err(io(e)),
        }
        if !line.ends_with(b"\n") {
            continue; // the rest of the line comes with the next read
        }
        let whole = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        let text = whole.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if event == "dropped" {
                // warden ended the stream: its reader fell too far behind.
                let v: Json = serde_json::from_str(&data).unwrap_or(Json::Null);
                let why = v["reason"].as_str().unwrap_or("warden ended the stream");
                return Ok(Err(why.to_string()));
            }
            if !event.is_empty() && !on_event(Some((&event, &data))) {
                return Ok(Ok(()));
            }
            event.clear();
            data.clear();
        } else if let Some(e) = text.strip_prefix("event:") {
            event = e.trim().to_string();
        } else if let Some(d) = text.strip_prefix("data:") {
            data.push_str(d.trim_start());
        }
    }
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
    out!(
        "{}",
        table(
            reply.json()["services"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
        )
    );
    exit::OK
}

/// The status table of `services` (the items of `GET /v1/services`).
fn table(services: &[Json]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "STATE".into(),
        "READY".into(),
        "RESTARTS".into(),
        "UPTIME".into(),
        "LAST ERROR".into(),
    ]];
    for s in services {
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
    text
}

/// `warden status --watch`: the table, redrawn as states change (and every
/// second, for the uptimes), until interrupted, the reader goes away
/// (`| head`), or the daemon stops.
pub fn watch(args: &ClientArgs) -> u8 {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    let mut services: Vec<Json> = Vec::new();
    let mut reader_gone = false;
    // Whether the table reached its reader.
    let draw = |services: &[Json]| {
        let mut out = std::io::stdout().lock();
        let r = if terminal {
            // Home, clear, then the table.
            write!(out, "\x1b[H\x1b[2J{}", table(services))
        } else {
            writeln!(out, "{}", table(services))
        };
        r.and_then(|()| out.flush()).is_ok()
    };
    let r = events(args, "/v1/events", Duration::from_secs(1), |e| {
        let drawn = match e {
            None if terminal => draw(&services),
            None => true,
            Some(("snapshot", data)) => {
                let v: Json = serde_json::from_str(data).unwrap_or(Json::Null);
                services = v["services"].as_array().cloned().unwrap_or_default();
                draw(&services)
            }
            Some(("state", data)) => {
                let v: Json = serde_json::from_str(data).unwrap_or(Json::Null);
                if let Some(s) = services.iter_mut().find(|s| s["name"] == v["service"]) {
                    for k in ["state", "ready", "restarts", "last_error"] {
                        s[k] = v[k].clone();
                    }
                    s["since"] = v["at"].clone();
                }
                draw(&services)
            }
            Some(_) => true,
        };
        reader_gone = !drawn;
        drawn
    });
    match r {
        Ok(Ok(())) if reader_gone => exit::OK,
        Ok(Ok(())) => {
            errln!("warden closed the stream (it is stopping)");
            exit::OK
        }
        Ok(Err(e)) => {
            errln!("error: {e}");
            1
        }
        Err(e) => unreachable(e),
    }
}

/// `text` with its control characters written out (`\r`, `\x1b`,
/// `\u{9b}`), a tab aside: printed on a terminal, they cannot set its
/// title, move its cursor or hide what came before.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    let is_control = |c: char| c != '\t' && c.is_control();
    if !text.chars().any(is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if is_control(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.into()
}

/// `warden logs NAME [-f] [--tail N] [--raw]`: a service's captured output,
/// each line to the stream it came from (control characters escaped on a
/// terminal, unless `--raw`); `-f` keeps printing new lines until
/// warden stops (exit 0), the reader goes away (exit 0), or the connection
/// breaks (exit 4).
pub fn logs(args: &ClientArgs, name: &str, tail: usize, follow: bool, raw: bool) -> u8 {
    use std::io::IsTerminal as _;
    // A terminal would act on a line's control characters (a title, a
    // cursor moved back over what came before): shown escaped there.
    let (escape_out, escape_err) = (
        !raw && std::io::stdout().is_terminal(),
        !raw && std::io::stderr().is_terminal(),
    );
    // Whether the line reached its reader.
    let print = |line: &Json| -> bool {
        let text = line["line"].as_str().unwrap_or("");
        if line["stream"] == "stderr" {
            let text = if escape_err {
                escape_controls(text)
            } else {
                text.into()
            };
            let mut err = std::io::stderr().lock();
            writeln!(err, "{text}").is_ok()
        } else {
            let text = if escape_out {
                escape_controls(text)
            } else {
                text.into()
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
        }
    };
    if !follow {
        let reply = match request(
            args,
            "GET",
            &format!("/v1/services/{name}/logs?tail={tail}"),
            None,
        ) {
            Ok(r) => r,
            Err(e) => return unreachable(e),
        };
        if reply.status != 200 {
            errln!("error: HTTP {}: {}", reply.status, reply.error_text());
            return 1;
        }
        for line in reply.json()["lines"].as_array().into_iter().flatten() {
            if !print(line) {
                break;
            }
        }
        return exit::OK;
    }
    let path = format!("/v1/services/{name}/logs?tail={tail}&follow=true");
    let r = events(args, &path, Duration::from_secs(5), |e| match e {
        Some(("line", data)) => print(&serde_json::from_str(data).unwrap_or(Json::Null)),
        Some(("missed", data)) => {
            let v: Json = serde_json::from_str(data).unwrap_or(Json::Null);
            errln!(
                "[warden: {} lines dropped from the ring while following]",
                v["missed"]
            );
            true
        }
        _ => true,
    });
    match r {
        Ok(Ok(())) => exit::OK,
        Ok(Err(e)) => {
            errln!("error: {e}");
            1
        }
        Err(e) => unreachable(e),
    }
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

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_characters_are_written_out_and_the_rest_kept() {
        assert_eq!(escape_controls("plain\ttext, été"), "plain\ttext, été");
        assert_eq!(
            escape_controls("a\x1b]0;pwned\x07b\rc\x1b[31mred\x7f"),
            r"a\x1b]0;pwned\x07b\rc\x1b[31mred\x7f"
        );
        // C1 controls: some terminals take U+009B as CSI.
        assert_eq!(escape_controls("x\u{9b}31m"), r"x\u{9b}31m");
        assert_eq!(escape_controls("\0"), r"\x00");
    }
}
