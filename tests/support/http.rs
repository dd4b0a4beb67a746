//! A plain HTTP/1 client for the API tests: raw sockets, so that what is
//! tested is exactly what goes over the wire.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// One HTTP/1.1 request (`Host: 127.0.0.1` and, with a body, `Content-Type:
/// application/json` unless `headers` give their own); answers the status,
/// the head and the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    // A JSON client's defaults, unless the test says otherwise.
    if !has("Host") {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    if !body.is_empty() && !has("Content-Type") {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), rest.as_bytes().to_vec())
}

pub fn get_json(port: u16, path: &str) -> (u16, Json) {
    let (status, _, body) = http(port, "GET", path, &[], b"");
    (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
}

pub fn wait_http(port: u16, path: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| http(port, "GET", path, &[], b"").0);
        if status == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {want} (last: {status:?})"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A stream of server-sent events read on a thread: `(event, data)` pairs
/// arrive on the channel. Asked over HTTP/1.0, so the body is the bare
/// event stream (no chunk framing).
pub struct EventStream {
    pub rx: mpsc::Receiver<(String, String)>,
    pub head: String,
}

impl EventStream {
    pub fn open(port: u16, path: &str) -> EventStream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut event, mut data) = (String::new(), String::new());
            for line in reader.lines().map_while(Result::ok) {
                if line.is_empty() {
                    if !event.is_empty()
                        && tx
                            .send((std::mem::take(&mut event), std::mem::take(&mut data)))
                            .is_err()
                    {
                        return;
                    }
                } else if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_string();
                }
            }
        });
        EventStream { rx, head }
    }

    /// The next event within `within`, parsed; panics with `what` if none.
    pub fn next(&self, what: &str, within: Duration) -> (String, Json) {
        let (e, d) = self
            .rx
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no event while waiting for {what}"));
        let v = serde_json::from_str(&d).unwrap_or_else(|_| panic!("event data is not JSON: {d}"));
        (e, v)
    }

    /// Skips events until one satisfies `pred` (20 s at most).
    pub fn wait(&self, what: &str, pred: impl Fn(&str, &Json) -> bool) -> Json {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (e, v) = self.next(what, left);
            if pred(&e, &v) {
                return v;
            }
        }
    }
}

/// An HTTP backend answering 200 (`{}`) to every request, a connection
/// per request (a thread each); counts the requests. A memory backend that
/// takes every write.
pub fn ok_backend() -> (u16, Arc<AtomicUsize>) {
    backend(|_| "200 OK")
}

/// An HTTP backend whose answer to each request (`{}` with the status line
/// `status(body)` gives) depends on its body, a connection per request (a
/// thread each); counts the requests.
pub fn backend(status: fn(&[u8]) -> &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the backend");
    let port = listener.local_addr().expect("its address").port();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                count.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}",
                    status(&body)
                );
            });
        }
    });
    (port, seen)
}
