//! The routes of the API, one function per route family.

use std::time::{Duration, SystemTime};

use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value as Json, json};

use super::ApiState;
use crate::supervisor::state::State;
use tokio_util::sync::CancellationToken;

use crate::services::LogLine;
use crate::supervisor::events::Happened;
use crate::supervisor::{ControlError, Handle, ServiceStatus};

/// A whole answer, or a stream of server-sent events.
pub type Body = Either<Full<Bytes>, EventBody>;

/// The body of an event stream: the frames queued for it, then, once the
/// stream's task has ended, its last word (why it ended, when warden ended
/// it), which needs no room in the queue: a reader dropped for not reading
/// finds it after what was queued, if it ever reads again.
pub struct EventBody {
    queued: Channel<Bytes>,
    /// The queue has ended (it must not be polled again).
    drained: bool,
    last: std::sync::Arc<std::sync::Mutex<Option<Bytes>>>,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if !self.drained {
            match std::pin::Pin::new(&mut self.queued).poll_frame(cx) {
                Poll::Ready(None) => self.drained = true,
                other => return other,
            }
        }
        Poll::Ready(
            self.last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .map(|b| Ok(hyper::body::Frame::data(b))),
        )
    }
}

/// What an event stream's task sends through: frames, each within the
/// stream's stall limit, or the stream ends with a `dropped` event.
struct EventSender {
    tx: Sender<Bytes>,
    last: std::sync::Arc<std::sync::Mutex<Option<Bytes>>>,
    stall: Duration,
}

impl EventSender {
    /// Sends `frame`; `false` when the stream is over: the reader went
    /// away, or did not take the frame within the stall limit (then the
    /// stream ends with a `dropped` event saying so).
    async fn send(&mut self, frame: Bytes) -> bool {
        match tokio::time::timeout(self.stall, self.tx.send_data(frame)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                let why = format!(
                    "this stream was not read for {}; warden ended it (what it would have sent is lost): connect again",
                    humantime::format_duration(self.stall)
                );
                tracing::info!(stall = ?self.stall, "dropped an event stream that was not read");
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(sse_frame("dropped", &json!({"reason": why})));
                false
            }
        }
    }
}
type Resp = Response<Body>;

/// How often a quiet event stream sends a comment (proxies keep it open,
/// and a client that went away is noticed).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The console: one self-contained page (served at `/`).
const CONSOLE: &str = include_str!("console.html");

fn json_response(status: StatusCode, body: &Json) -> Resp {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// Starts a `text/event-stream` answer with at most `frames` frames
/// queued for a slow reader, dropped when it leaves one unread for
/// `stall`; frames go through the sender.
fn sse_response_queued(frames: usize, stall: Duration) -> (EventSender, Resp) {
    let (tx, queued) = Channel::new(frames);
    let last = std::sync::Arc::default();
    let mut r = Response::new(Either::Right(EventBody {
        queued,
        drained: false,
        last: std::sync::Arc::clone(&last),
    }));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    // nginx: pass events through as they come.
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    (EventSender { tx, last, stall }, r)
}

/// One server-sent event (serde_json never writes a raw newline, so the
/// data is one line).
fn sse_frame(event: &str, data: &Json) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn keepalive() -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

const KEEPALIVE_FRAME: &[u8] = b": keep-alive\n\n";

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_response(status, &json!({ "error": message.into() }))
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; allowed: {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// Compares two secrets in a time that tells nothing of either: their
/// SHA-256 digests, always 32 bytes, are compared in full (comparing the
/// secrets themselves returned early when their lengths differed, which
/// told the token's length).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use ring::digest::{SHA256, digest};
    let (a, b) = (digest(&SHA256, a), digest(&SHA256, b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The host of a `Host` header (or an origin's authority), without its
/// port, lowercased, without a trailing dot.
fn host_name(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        a.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(a, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether the API answers to a request for `host` (the `Host` header): a
/// loopback name, an IP address (no name to rebind), or a name the registry
/// allows. A page that made its own name point at 127.0.0.1 (DNS rebinding)
/// sends its own name, and is refused.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

/// `None` when the request's `Host` is one the API answers to; else 421.
fn refuse_host(state: &ApiState, req: &Request<Incoming>) -> Option<Resp> {
    // HTTP/1.1 requires Host; a request without one is no browser's.
    let host = req.headers().get(header::HOST)?;
    let text = host.to_str().unwrap_or("");
    if host_allowed(text, &state.spec().allowed_hosts) {
        return None;
    }
    Some(error(
        StatusCode::MISDIRECTED_REQUEST,
        "this API does not answer to that Host; add the name to [api] allowed_hosts",
    ))
}

/// `None` when nothing says the request comes from a page of another site;
/// else 403. Browsers send `Origin` with every cross-origin request (and
/// `Sec-Fetch-Site`): a page elsewhere, a sandboxed frame (`null`), or
/// another port of this host is not the console.
fn refuse_cross_site(req: &Request<Incoming>) -> Option<Resp> {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site")
        && matches!(site.as_bytes(), b"cross-site" | b"same-site")
    {
        return Some(error(
            StatusCode::FORBIDDEN,
            "a request from another site may not change anything",
        ));
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let same = origin
        .split_once("://")
        .zip(headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .is_some_and(|((scheme, authority), host)| {
            let default = if scheme == "https" { ":443" } else { ":80" };
            let strip = |a: &str| a.strip_suffix(default).unwrap_or(a).to_ascii_lowercase();
            strip(authority) == strip(host)
        });
    (!same).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "a request from another origin may not change anything",
        )
    })
}

/// `None` when the request's body, if any, is JSON: a form or a no-cors
/// fetch (`text/plain`) needs no preflight, `application/json` does, and
/// warden answers no preflight.
fn refuse_content_type(req: &Request<Incoming>) -> Option<Resp> {
    let headers = req.headers();
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let json = match headers.get(header::CONTENT_TYPE) {
        Some(ct) => ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json"),
        None => !has_body,
    };
    (!json).then(|| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send bodies as JSON, with Content-Type: application/json",
        )
    })
}

/// `None` when the request may mutate; else the refusal.
fn refuse_mutation(state: &ApiState, req: &Request<Incoming>) -> Option<Resp> {
    if let Some(r) = refuse_cross_site(req).or_else(|| refuse_content_type(req)) {
        return Some(r);
    }
    let spec = state.spec();
    match spec.token() {
        Some(token) => {
            // Bytes, not text: a token may hold any character the
            // registry can (a header's text is ASCII only).
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            match given {
                Some(g) if constant_time_eq(g.trim_ascii(), token.expose().as_bytes()) => None,
                Some(_) => Some(error(StatusCode::UNAUTHORIZED, "wrong bearer token")),
                None => Some(error(
                    StatusCode::UNAUTHORIZED,
                    "this route needs Authorization: Bearer TOKEN",
                )),
            }
        }
        None if spec.listen.ip().is_loopback() => None,
        None => Some(error(
            StatusCode::FORBIDDEN,
            "no API token is configured, so changes are refused on a non-loopback listener",
        )),
    }
}

/// Reads a JSON body of at most `max_body` bytes (an empty body is `{}`).
async fn json_body(state: &ApiState, req: Request<Incoming>) -> Result<Json, Resp> {
    let (limit, within) = {
        let spec = state.spec();
        (spec.max_body.0 as usize, spec.body_timeout)
    };
    let read = tokio::time::timeout(within, Limited::new(req.into_body(), limit).collect());
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} (body_timeout)",
                humantime::format_duration(within)
            ),
        ));
    };
    let bytes = match read {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {limit} bytes"),
            ));
        }
        Err(e) => {
            return Err(control_error(&ControlError::BadRequest {
                reason: format!("cannot read the body: {e}"),
            }));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        control_error(&ControlError::BadRequest {
            reason: format!("the body is not valid JSON: {e}"),
        })
    })
}

fn wall_clock(since: tokio::time::Instant) -> String {
    let ago = tokio::time::Instant::now().saturating_duration_since(since);
    let t = SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn service_json(s: &ServiceStatus) -> Json {
    json!({
        "kind": s.kind,
        "state": s.state.as_str(),
        "ready": s.state.is_ready(),
        "critical": s.critical,
        "restarts": s.restarts,
        "since": wall_clock(s.since),
        "last_error": s.last_error,
        "details": Json::Object(s.details.snapshot()),
    })
}

/// A rendered `/v1/health` and what it was rendered from: load balancers
/// and orchestrators ask many times a second, and the answer changes only
/// when a state or a detail does.
pub struct HealthCache {
    /// The status's version it was rendered from.
    version: u64,
    details: u64,
    stopping: bool,
    code: StatusCode,
    body: Bytes,
}

fn health(state: &ApiState, handle: &Handle) -> Resp {
    // Read before the status: a change in between renders again next time.
    let version = handle.version();
    let details = crate::services::Details::epoch();
    let stopping = stopping(handle);
    let mut cache = state.health_cache.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = cache
        .as_ref()
        .is_some_and(|c| c.version == version && c.details == details && c.stopping == stopping);
    if !fresh {
        let status = handle.status();
        let overall = overall(&status, stopping);
        let services: serde_json::Map<String, Json> = status
            .iter()
            .map(|s| (s.name.clone(), service_json(s)))
            .collect();
        let code = if overall == "down" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let body = Bytes::from(json!({"status": overall, "services": services}).to_string());
        *cache = Some(HealthCache {
            version,
            details,
            stopping,
            code,
            body,
        });
    }
    let c = cache.as_ref().expect("filled above");
    let mut r = Response::new(Either::Left(Full::new(c.body.clone())));
    *r.status_mut() = c.code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Every service as `GET /v1/services` lists it.
fn service_list(status: &[ServiceStatus]) -> Vec<Json> {
    status
        .iter()
        .map(|s| {
            let mut j = service_json(s);
            j["name"] = json!(s.name);
            j
        })
        .collect()
}

fn line_json(l: &LogLine) -> Json {
    json!({
        "seq": l.seq,
        "at": humantime::format_rfc3339_millis(l.at).to_string(),
        "stream": l.stream.as_str(),
        "line": l.line,
    })
}

/// `GET /v1/events`: a snapshot, then every state change, restart and
/// action result as it happens.
fn events(
    handle: &Handle,
    closing: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
    stall: Duration,
) -> Resp {
    // Subscribed before the snapshot is taken: an event in between comes
    // after it (states are absolute, so seeing one twice is harmless).
    let mut rx = handle.subscribe();
    // Few frames queued: a snapshot of thousands of services is large.
    let (mut tx, resp) = sse_response_queued(4, stall);
    let handle = handle.clone();
    let snapshot = move || {
        sse_frame(
            "snapshot",
            &json!({"services": service_list(&handle.status())}),
        )
    };
    tokio::spawn(async move {
        // Held while the stream lasts.
        let _permit = permit;
        if !tx.send(snapshot()).await {
            return;
        }
        let mut tick = keepalive();
        let frame = |e: &Happened| {
            let mut b = sse_frame(e.name(), &e.to_json()).to_vec();
            if let Happened::Reloaded { .. } = e {
                // Services may have come or gone: the whole picture again.
                b.extend_from_slice(&snapshot());
            }
            Bytes::from(b)
        };
        loop {
            use tokio::sync::broadcast::error::RecvError;
            // Events first: what happened before the API began to stop
            // (the last services stopping) is still sent.
            let out = tokio::select! {
                biased;
                r = rx.recv() => match r {
                    Ok(e) => frame(&e),
                    Err(RecvError::Lagged(missed)) => {
                        // Start over from now: the older events queued
                        // behind would contradict the snapshot.
                        rx = rx.resubscribe();
                        let mut b = sse_frame("lagged", &json!({"missed": missed})).to_vec();
                        b.extend_from_slice(&snapshot());
                        Bytes::from(b)
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = closing.cancelled() => {
                    let mut b = Vec::new();
                    while let Ok(e) = rx.try_recv() {
                        b.extend_from_slice(&frame(&e));
                    }
                    tx.send(Bytes::from(b)).await;
                    return;
                }
                _ = tick.tick() => Bytes::from_static(KEEPALIVE_FRAME),
            };
            if !tx.send(out).await {
                return;
            }
        }
    });
    resp
}

/// `GET /v1/services/NAME/logs?follow=true`: the last `tail` lines, then
/// each new one as it comes.
/// The most of a service's output one frame of a log stream carries: with
/// [`FOLLOW_QUEUE`] frames queued, what a follower that stops reading holds
/// of warden's memory is bounded (it was the whole ring, 16 times).
const FOLLOW_FRAME: usize = 16 * 1024;
/// Frames queued for a log follower. (One that leaves a frame unread for
/// `[api] stall_timeout` is dropped: its stream ends with a `dropped`
/// event.)
const FOLLOW_QUEUE: usize = 2;

fn follow_logs(
    logs: crate::services::Logs,
    tail: usize,
    closing: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
    stall: Duration,
) -> Resp {
    let (mut tx, resp) = sse_response_queued(FOLLOW_QUEUE, stall);
    tokio::spawn(async move {
        // Held while the stream lasts.
        let _permit = permit;
        // The frames of `lines` (and of a `missed` count first), each of at
        // most about FOLLOW_FRAME bytes; `last` follows what was framed.
        fn framed(missed: u64, lines: &[LogLine], last: &mut u64) -> Vec<Bytes> {
            let mut out = Vec::new();
            let mut b = Vec::new();
            if missed > 0 {
                b.extend_from_slice(&sse_frame("missed", &json!({"missed": missed})));
            }
            for l in lines {
                b.extend_from_slice(&sse_frame("line", &line_json(l)));
                *last = l.seq;
                if b.len() >= FOLLOW_FRAME {
                    out.push(Bytes::from(std::mem::take(&mut b)));
                }
            }
            if !b.is_empty() {
                out.push(Bytes::from(b));
            }
            out
        }
        // The tail first, a frame at a time (never a copy of the whole
        // ring): lines older than the tail count as seen.
        let end = logs.last_seq();
        let mut last = end.saturating_sub(tail as u64);
        while last < end {
            let s = logs.since_at_most(last, FOLLOW_FRAME);
            if s.lines.is_empty() {
                break;
            }
            // What the ring dropped before the tail is no news to the reader.
            for frame in framed(0, &s.lines, &mut last) {
                if !tx.send(frame).await {
                    return;
                }
            }
        }
        let mut tick = keepalive();
        loop {
            let frames = tokio::select! {
                biased;
                s = logs.follow_at_most(last, FOLLOW_FRAME) => framed(s.missed, &s.lines, &mut last),
                _ = closing.cancelled() => {
                    // The last lines the service wrote as it stopped.
                    let s = logs.since(last);
                    for frame in framed(s.missed, &s.lines, &mut last) {
                        if !tx.send(frame).await {
                            return;
                        }
                    }
                    return;
                }
                _ = tick.tick() => vec![Bytes::from_static(KEEPALIVE_FRAME)],
            };
            for frame in frames {
                if !tx.send(frame).await {
                    return;
                }
            }
        }
    });
    resp
}

/// `ok`, `degraded` (a non-critical service failed, blocked or restarting)
/// or `down` (a critical service is not ready, or warden is stopping).
fn overall(status: &[ServiceStatus], stopping: bool) -> &'static str {
    let enabled = status.iter().filter(|s| s.state != State::Disabled);
    let mut degraded = false;
    for s in enabled {
        if s.critical && !s.state.is_ready() {
            return "down";
        }
        if matches!(s.state, State::Failed | State::Blocked | State::Backoff) {
            degraded = true;
        }
    }
    if stopping {
        "down"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    }
}

fn stopping(handle: &Handle) -> bool {
    *handle.stopping().borrow()
}

/// Answers one request. `closing` is cancelled when the API stops: event
/// streams then end cleanly.
/// A request on a connection past `max_connections`: `/livez` and
/// `/readyz` are answered, anything else waits for a connection of its own.
pub async fn handle_probe(
    state: &ApiState,
    closing: &CancellationToken,
    req: Request<Incoming>,
) -> Resp {
    if matches!(req.uri().path().trim_end_matches('/'), "/livez" | "/readyz") {
        return handle(state, closing, req).await;
    }
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "every connection is taken (max_connections); only /livez and /readyz are answered",
    );
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// A permit for one more long-lived stream (`None`: `max_streams` are
/// open).
fn stream_permit(state: &ApiState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    state.streams.clone().try_acquire_owned().ok()
}

/// The answer when `max_streams` streams are open.
fn too_many_streams(state: &ApiState) -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "too many open streams (max_streams = {}); close one or raise [api] max_streams",
            state.spec().max_streams.0
        ),
    )
}

pub async fn handle(state: &ApiState, closing: &CancellationToken, req: Request<Incoming>) -> Resp {
    let Some(handle) = state.handle.get().cloned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "warden is starting");
    };
    if let Some(r) = refuse_host(state, &req) {
        return r;
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // HEAD is GET without the body (hyper leaves the body out).
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    match (segments.as_slice(), &method) {
        ([], &Method::GET) => {
            let mut r = text_response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                CONSOLE.to_string(),
            );
            let h = r.headers_mut();
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            // No page of another site may frame the console (clickjacking).
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static("frame-ancestors 'none'"),
            );
            h.insert(
                header::X_FRAME_OPTIONS,
                header::HeaderValue::from_static("DENY"),
            );
            r
        }
        ([], _) => method_not_allowed("GET"),
        (["livez"], &Method::GET) => json_response(StatusCode::OK, &json!({"status": "live"})),
        (["livez"], _) => method_not_allowed("GET"),
        (["readyz"], &Method::GET) => {
            let ready = !stopping(&handle) && handle.tally().critical_ready();
            if ready {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready"}),
                )
            }
        }
        (["readyz"], _) => method_not_allowed("GET"),
        (["v1", "health"], &Method::GET) => health(state, &handle),
        (["v1", "health"], _) => method_not_allowed("GET"),
        (["v1", "services"], &Method::GET) => json_response(
            StatusCode::OK,
            &json!({"services": service_list(&handle.status())}),
        ),
        (["v1", "services"], _) => method_not_allowed("GET"),
        (["v1", "services", name], m) => {
            if m != Method::GET {
                return method_not_allowed("GET");
            }
            match handle.service(name) {
                Some(s) => {
                    let s = &s;
                    let mut j = service_json(s);
                    j["name"] = json!(s.name);
                    j["history"] = Json::Array(
                        s.history
                            .snapshot()
                            .iter()
                            .map(|t| {
                                json!({
                                    "at": humantime::format_rfc3339_millis(t.at).to_string(),
                                    "from": t.from.as_str(),
                                    "to": t.to.as_str(),
                                    "event": t.event.as_str(),
                                })
                            })
                            .collect(),
                    );
                    j["schedules"] = Json::Array(
                        s.schedules
                            .iter()
                            .map(|r| match r {
                                None => Json::Null,
                                Some(r) => json!({
                                    "action": r.action,
                                    "finished": humantime::format_rfc3339_seconds(r.finished).to_string(),
                                    "duration_ms": r.duration.as_millis() as u64,
                                    "result": r.result.as_ref().ok(),
                                    "error": r.result.as_ref().err(),
                                }),
                            })
                            .collect(),
                    );
                    json_response(StatusCode::OK, &j)
                }
                None => unknown_service(&handle, name),
            }
        }
        (["v1", "services", name, "logs"], m) => {
            if m != Method::GET {
                return method_not_allowed("GET");
            }
            let Some(s) = handle.service(name) else {
                return unknown_service(&handle, name);
            };
            let tail = match query_param(&query, "tail").map(|t| t.parse::<usize>()) {
                None => 100,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "tail must be a non-negative integer",
                    );
                }
            };
            match query_param(&query, "follow").as_deref() {
                None | Some("false" | "0") => {}
                Some("true" | "1") => {
                    return match stream_permit(state) {
                        Some(p) => follow_logs(
                            s.logs.clone(),
                            tail,
                            closing.clone(),
                            p,
                            state.spec().stall_timeout,
                        ),
                        None => too_many_streams(state),
                    };
                }
                Some(_) => return error(StatusCode::BAD_REQUEST, "follow must be true or false"),
            }
            let lines: Vec<Json> = s.logs.tail(tail).iter().map(line_json).collect();
            json_response(StatusCode::OK, &json!({"service": s.name, "lines": lines}))
        }
        (["v1", "services", name, op @ ("start" | "stop" | "restart")], m) => {
            if m != Method::POST {
                return method_not_allowed("POST");
            }
            if let Some(r) = refuse_mutation(state, &req) {
                return r;
            }
            if let Some(s) = handle.service(name)
                && s.kind == crate::config::API_KIND
                && *op != "start"
            {
                return control_error(&ControlError::conflict(format!(
                    "the API cannot {op} itself (it would cut this very connection); \
                     use POST /v1/reload, POST /v1/shutdown or a signal"
                )));
            }
            // The supervisor knows the services this instance does not run
            // (another instance's, under --only), and says so.
            let result = match *op {
                "start" => handle.start(name).await,
                "stop" => handle.stop(name).await,
                _ => handle.restart(name).await,
            };
            match result {
                Ok(()) => json_response(
                    StatusCode::OK,
                    &json!({"ok": true, "service": name, "requested": op}),
                ),
                Err(ControlError::UnknownService { .. }) => unknown_service(&handle, name),
                Err(e) => control_error(&e),
            }
        }
        (["v1", "services", name, "actions", action], m) => {
            if m != Method::POST {
                return method_not_allowed("POST");
            }
            if let Some(r) = refuse_mutation(state, &req) {
                return r;
            }
            let Some(s) = handle.service(name) else {
                return unknown_service(&handle, name);
            };
            // Checked before the body is read (the supervisor checks again).
            let actions = state
                .kinds
                .get(&s.kind)
                .map(|k| k.action_names())
                .unwrap_or_default();
            if !actions.contains(action) {
                return control_error(&ControlError::UnknownAction {
                    kind: s.kind.clone(),
                    action: action.to_string(),
                    known: actions.into_iter().map(String::from).collect(),
                });
            }
            let (name, action) = (name.to_string(), action.to_string());
            let args = match json_body(state, req).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            match handle.request_action(&name, &action, args).await {
                Ok(result) => json_response(
                    StatusCode::OK,
                    &json!({"service": name, "action": action, "result": result}),
                ),
                Err(e) => control_error(&e),
            }
        }
        (["v1", "reload"], m) => {
            if m != Method::POST {
                return method_not_allowed("POST");
            }
            if let Some(r) = refuse_mutation(state, &req) {
                return r;
            }
            match state.reload().await {
                Ok(s) => json_response(
                    StatusCode::OK,
                    &json!({"restart_needed": s.restart_needed, "added": s.added, "removed": s.removed, "changed": s.changed, "updated": s.updated, "unchanged": s.unchanged}),
                ),
                Err(super::ReloadError::Invalid(errors)) => error(
                    StatusCode::BAD_REQUEST,
                    format!("the registry is invalid; the running one is kept:\n{errors}"),
                ),
                Err(super::ReloadError::Unavailable(e)) => control_error(&e),
            }
        }
        (["v1", "shutdown"], m) => {
            if m != Method::POST {
                return method_not_allowed("POST");
            }
            if let Some(r) = refuse_mutation(state, &req) {
                return r;
            }
            handle.shutdown();
            json_response(
                StatusCode::ACCEPTED,
                &json!({"ok": true, "shutting_down": true}),
            )
        }
        (["v1", "graph"], &Method::GET) => {
            let Ok(g) = state.graph.lock().map(|g| g.clone()) else {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the graph is unavailable",
                );
            };
            match query_param(&query, "format").as_deref().unwrap_or("json") {
                "json" => json_response(StatusCode::OK, &g.to_json()),
                "dot" => text_response(StatusCode::OK, "text/vnd.graphviz", g.to_dot()),
                "mermaid" => {
                    text_response(StatusCode::OK, "text/plain; charset=utf-8", g.to_mermaid())
                }
                other => error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown format {other:?}; expected json, dot or mermaid"),
                ),
            }
        }
        (["v1", "graph"], _) => method_not_allowed("GET"),
        (["v1", "events"], &Method::GET) => match stream_permit(state) {
            Some(p) => events(&handle, closing.clone(), p, state.spec().stall_timeout),
            None => too_many_streams(state),
        },
        (["v1", "events"], _) => method_not_allowed("GET"),
        (["metrics"], &Method::GET) => text_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::render(state.metrics.as_ref(), &handle.status()),
        ),
        (["metrics"], _) => method_not_allowed("GET"),
        (["openapi.json"], &Method::GET) => text_response(
            StatusCode::OK,
            "application/json",
            super::openapi::document(&state.kinds).to_string(),
        ),
        (["openapi.json"], _) => method_not_allowed("GET"),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}"),
        ),
    }
}

fn unknown_service(handle: &Handle, name: &str) -> Resp {
    let known: Vec<String> = handle.status().iter().map(|s| s.name.clone()).collect();
    error(
        StatusCode::NOT_FOUND,
        format!("no such service: {name:?}; known: {}", known.join(", ")),
    )
}

/// The status of a refused control: a conflict of states is 409, an
/// unknown service 404, a malformed request 400, and only a real fault
/// (an action that failed) 500.
fn control_status(e: &ControlError) -> StatusCode {
    match e {
        ControlError::UnknownService { .. } | ControlError::UnknownAction { .. } => {
            StatusCode::NOT_FOUND
        }
        ControlError::Conflict { .. } => StatusCode::CONFLICT,
        ControlError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        ControlError::Fault { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refused control as `{"error": ...}` with its status; the words are the
/// supervisor's, so the client commands print the same.
fn control_error(e: &ControlError) -> Resp {
    error(control_status(e), e.to_string())
}

/// The value of `key` in a query string, percent-decoded (`None`: absent;
/// an undecodable value comes back as given, and is refused by its
/// parser).
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| decode(k) == key)
        .map(|(_, v)| decode(v))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h * 16 + l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_param("tail=%31&format=%6Ason", "tail").as_deref(),
            Some("1")
        );
        assert_eq!(
            query_param("tail=%31&format=%6Ason", "format").as_deref(),
            Some("json")
        );
        assert_eq!(query_param("a=x+y%2", "a").as_deref(), Some("x y%2"));
        assert_eq!(query_param("follow", "follow").as_deref(), Some(""));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(
            query_param("a=%ff", "a").as_deref(),
            Some("%ff"),
            "not UTF-8: as given"
        );
    }

    #[test]
    fn each_kind_of_refused_control_has_its_status_and_its_words() {
        let cases = [
            (
                ControlError::UnknownService {
                    name: "ghost".into(),
                },
                404,
                "no such service: ghost",
            ),
            (
                ControlError::conflict("app is stopped; it is not running"),
                409,
                "app is stopped; it is not running",
            ),
            (
                ControlError::BadRequest {
                    reason: "the body is not valid JSON".into(),
                },
                400,
                "the body is not valid JSON",
            ),
            (
                ControlError::Fault {
                    reason: "cannot connect".into(),
                },
                500,
                "cannot connect",
            ),
        ];
        for (e, status, words) in cases {
            assert_eq!(control_status(&e).as_u16(), status, "{e:?}");
            let r = control_error(&e);
            assert_eq!(r.status().as_u16(), status);
            let Either::Left(body) = r.into_body() else {
                panic!("a whole answer");
            };
            let bytes = body_bytes(body);
            let v: Json = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v, json!({ "error": words }));
        }
    }

    /// The bytes of a whole answer's body.
    fn body_bytes(body: Full<Bytes>) -> Bytes {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(body.collect()).unwrap().to_bytes()
    }

    #[test]
    fn hosts_are_loopback_names_ip_addresses_or_allowed() {
        let allowed = ["warden.internal".to_string()];
        for ok in [
            "localhost",
            "LOCALHOST:9464",
            "app.localhost.",
            "127.0.0.1:9464",
            "[::1]:9464",
            "[fe80::1]",
            "10.0.0.5",
            "warden.internal:80",
            "Warden.Internal.",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in [
            "rebind.attacker.example",
            "localhost.attacker.example",
            "warden.internal.evil",
            "evilwarden.internal",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
        assert_eq!(host_name("[::1]:9464"), "::1");
        assert_eq!(host_name("Example.COM.:8080"), "example.com");
        assert_eq!(host_name("example.com:x"), "example.com:x");
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"Secret", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
