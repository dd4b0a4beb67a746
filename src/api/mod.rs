//! The `api` service: health, readiness and control over HTTP, on hyper 1
//! directly (a handful of routes does not need a router,
//! and a supervisor stays small).
//!
//! It is supervised like any other service: it says `ready` once it
//! listens, and a failure to bind is a failure (critical by default).
//!
//! Security: mutating routes (every `POST`) need `Authorization: Bearer
//! TOKEN`, compared in constant time, when a token is configured; without a
//! token they are allowed only when the listener is a loopback address.
//! Bodies are bounded (`max_body`), header reads time out, connections are
//! capped (`max_connections`). Errors are `{"error": "..."}`.

pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::config::{API_KIND, ApiSpec, KindTable, NoSettings, Registry, Runs, ServiceSpec};
use crate::graph::Graph;
use crate::services::{BoxFuture, Context, Factory, Registration, Service, ServiceError};
use crate::supervisor::{ControlError, Handle};

/// Loads and checks the registry again (for `POST /v1/reload`).
pub type Reloader = Arc<dyn Fn() -> Result<(Registry, Graph), String> + Send + Sync>;

/// What the API serves from: the supervisor's handle (set once the
/// supervisor exists), the registry's graph, and how to reload.
#[derive(Clone)]
pub struct ApiState {
    pub handle: Arc<OnceLock<Handle>>,
    /// `[api]`. A reload replaces it: the token and body limit take effect
    /// at once; the listener's address and connection cap only when warden
    /// starts again (the reload says so).
    pub spec: Arc<std::sync::RwLock<ApiSpec>>,
    pub graph: Arc<std::sync::Mutex<Graph>>,
    pub reloader: Option<Reloader>,
    /// What `/metrics` renders from (`None`: no recorder installed, only
    /// the state families).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The last `/v1/health` answer and what it was rendered from.
    pub health_cache: Arc<std::sync::Mutex<Option<routes::HealthCache>>>,
    /// One reload at a time (SIGHUP and `POST /v1/reload` alike): two
    /// checks running side by side must not apply in the wrong order.
    pub reloading: Arc<tokio::sync::Mutex<()>>,
    /// The kinds of this build: their actions are checked before a
    /// request's body is read, and listed in `/openapi.json` (rendered per
    /// request: it is asked for rarely, and a resident copy would cost
    /// more than the routes file it starts from, which stays in the
    /// binary).
    pub kinds: Arc<KindTable>,
    /// One permit per open long-lived stream (`max_streams`, sized when
    /// warden starts).
    pub streams: Arc<Semaphore>,
}

impl ApiState {
    /// Loads the registry again and applies it: the one reload path of
    /// SIGHUP and `POST /v1/reload`. An invalid registry is refused with
    /// its rendered errors and the running services are left alone.
    pub async fn reload(&self) -> Result<crate::supervisor::ReloadSummary, ReloadError> {
        let handle = self.handle.get().cloned().ok_or_else(|| {
            ReloadError::Unavailable(ControlError::conflict("warden is starting"))
        })?;
        let reloader = self.reloader.clone().ok_or_else(|| {
            ReloadError::Unavailable(ControlError::conflict("reload is not available"))
        })?;
        let _one_at_a_time = self.reloading.lock().await;
        // After STOPPING=1 nothing else may be sent to systemd: a reload
        // during the shutdown is refused before RELOADING=1.
        if *handle.stopping().borrow() {
            crate::metrics::reloaded("refused");
            return Err(ReloadError::Unavailable(ControlError::shutting_down()));
        }
        crate::supervisor::systemd::reloading();
        // Reading and checking a large registry takes a while: on the
        // blocking pool, so that the supervisor (on this thread) keeps
        // turning meanwhile.
        let loaded = tokio::task::spawn_blocking(move || reloader())
            .await
            .unwrap_or_else(|e| Err(format!("the reload's check failed: {e}")));
        let outcome = match loaded {
            Err(errors) => Err(ReloadError::Invalid(errors)),
            Ok((registry, graph)) => {
                let new_graph = graph.clone();
                let new_api = registry.api.clone();
                let r = handle.request_reload(registry, graph).await;
                if let (true, Ok(mut g)) = (r.is_ok(), self.graph.lock()) {
                    *g = new_graph;
                }
                r.map(|mut summary| {
                    summary.restart_needed = self.apply_api(new_api);
                    summary
                })
                .map_err(ReloadError::Unavailable)
            }
        };
        crate::supervisor::systemd::reloaded();
        crate::metrics::reloaded(match &outcome {
            Ok(_) => "ok",
            Err(ReloadError::Invalid(_)) => "invalid",
            Err(ReloadError::Unavailable(_)) => "refused",
        });
        outcome
    }
}

impl ApiState {
    /// Takes a reloaded `[api]`: what can change at once does (the token,
    /// the body limit); what cannot is named, for the reload to say so.
    fn apply_api(&self, new: ApiSpec) -> Vec<String> {
        let Ok(mut spec) = self.spec.write() else {
            return Vec::new();
        };
        let mut later = Vec::new();
        if new.listen != spec.listen {
            later.push("api.listen".to_string());
        }
        if new.max_connections != spec.max_connections {
            later.push("api.max_connections".to_string());
        }
        if new.tls_cert != spec.tls_cert || new.tls_key != spec.tls_key {
            later.push("api.tls".to_string());
        }
        if new.max_streams != spec.max_streams {
            later.push("api.max_streams".to_string());
        }
        if new.enabled != spec.enabled {
            later.push("api.enabled".to_string());
        }
        for key in &later {
            tracing::warn!(key = %key, "changed; takes effect when warden starts again");
        }
        // The listener keeps its address and cap: keep them in the spec it
        // checks mutations against (loopback or not).
        *spec = ApiSpec {
            listen: spec.listen,
            max_connections: spec.max_connections,
            max_streams: spec.max_streams,
            enabled: spec.enabled,
            tls_cert: spec.tls_cert.clone(),
            tls_key: spec.tls_key.clone(),
            ..new
        };
        later
    }

    /// The `[api]` in force.
    pub fn spec(&self) -> ApiSpec {
        self.spec
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// Why a reload was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The new registry is invalid (its rendered diagnostics).
    Invalid(String),
    /// The supervisor could not take it (not now, or not at all).
    Unavailable(ControlError),
}

/// The registration of the `api` service's kind: the implicit service that
/// `[api]` configures (no settings of its own under `[services]`).
pub fn registration(state: ApiState) -> Registration {
    Registration::new::<NoSettings>(API_KIND, Runs::InProcess, ApiFactory { state }).continuous()
}

/// Builds the `api` service.
struct ApiFactory {
    state: ApiState,
}

impl Factory for ApiFactory {
    fn build(&self, _spec: &ServiceSpec) -> Result<Box<dyn Service>, ServiceError> {
        Ok(Box::new(Api {
            state: self.state.clone(),
        }))
    }
}

struct Api {
    state: ApiState,
}

/// Gives the heap's free pages back to the OS when a connection ends:
/// answers about many services allocate and free a lot, and a supervisor is
/// resident all day. (Keep-alive clients end connections rarely, so this
/// costs nothing under load; one trim walks glibc's free lists, tens of
/// microseconds on warden's small heap.)
fn release_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted past `max_connections` to answer `/livez` and
/// `/readyz` only: a container's health check and Kubernetes' probes go
/// through when streams and slow clients hold every other connection.
const PROBE_RESERVE: usize = 8;

impl Service for Api {
    fn run(self: Box<Self>, ctx: Context) -> BoxFuture<Result<(), ServiceError>> {
        Box::pin(async move {
            let spec = self.state.spec();
            let addr: SocketAddr = spec.listen;
            let tls = match (&spec.tls_cert, &spec.tls_key) {
                (Some(cert), Some(key)) => Some(Arc::new(
                    tls::ServerTls::load(&cert.0, &key.0).map_err(ServiceError)?,
                )),
                _ => None,
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServiceError(format!("cannot listen on {addr}: {e}")))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(%addr, scheme, "API listening");
            ctx.details().set("listen", addr.to_string());
            ctx.details().set("scheme", scheme);
            ctx.ready();
            let limit = Arc::new(Semaphore::new(self.state.spec().max_connections.0 as usize));
            let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
            let shared = Arc::new(self.state);
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    },
                    _ = ctx.cancelled() => return Ok(()),
                };
                // Past max_connections, the reserve serves the probes only;
                // past it too, the connection is closed at once.
                let (permit, probes_only) = match limit.clone().try_acquire_owned() {
                    Ok(p) => (p, false),
                    Err(_) => match reserve.clone().try_acquire_owned() {
                        Ok(p) => (p, true),
                        Err(_) => continue,
                    },
                };
                let state = shared.clone();
                let cancel = ctx.token();
                let acceptor = tls
                    .as_ref()
                    .map(|t| tokio_rustls::TlsAcceptor::from(t.config()));
                tokio::spawn(async move {
                    let _permit = permit;
                    match acceptor {
                        None => serve(stream, state, cancel, probes_only).await,
                        Some(acceptor) => {
                            // The handshake has the headers' time limit: a
                            // client that opens and says nothing holds no
                            // connection for long.
                            let shake = tokio::select! {
                                r = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)) => r,
                                _ = cancel.cancelled() => return,
                            };
                            match shake {
                                Ok(Ok(stream)) => serve(stream, state, cancel, probes_only).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                    release_memory();
                });
            }
        })
    }
}

/// How long past `stall_timeout` a reader that stopped reading may come
/// back for a stream's last word before its connection is closed.
const LAST_WORD_GRACE: Duration = Duration::from_secs(30);

/// A connection whose writes may wait for its reader at most `limit` at
/// a time: past it, a write fails and the connection is closed. A client
/// that stops reading a stream has it ended after `stall_timeout` (with a
/// last `dropped` event it finds if it reads again); one that still reads
/// nothing [`LAST_WORD_GRACE`] later holds no connection, and nothing
/// queued for it.
struct WriteStall<I> {
    io: I,
    limit: Duration,
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteStall<I> {
    fn new(io: I, limit: Duration) -> WriteStall<I> {
        WriteStall {
            io,
            limit,
            waiting: None,
        }
    }

    /// A write that could not go through: `Pending` until the limit, then
    /// an error.
    fn stalled<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        let limit = self.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing for too long",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStall<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStall<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.io).poll_write(cx, buf) {
            std::task::Poll::Pending => self.stalled(cx),
            done => {
                self.waiting = None;
                done
            }
        }
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            std::task::Poll::Pending => self.stalled(cx),
            done => {
                self.waiting = None;
                done
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.io).poll_flush(cx) {
            std::task::Poll::Pending => self.stalled(cx),
            done => {
                self.waiting = None;
                done
            }
        }
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves one connection (plain or TLS) until it ends, or until the API
/// stops (then it finishes the request in hand, for a second at most).
async fn serve<I>(
    io: I,
    state: Arc<ApiState>,
    cancel: tokio_util::sync::CancellationToken,
    probes_only: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = WriteStall::new(io, state.spec().stall_timeout + LAST_WORD_GRACE);
    let closing = cancel.clone();
    let service = hyper::service::service_fn(move |req| {
        let (state, closing) = (state.clone(), closing.clone());
        async move {
            Ok::<_, std::convert::Infallible>(if probes_only {
                routes::handle_probe(&state, &closing, req).await
            } else {
                routes::handle(&state, &closing, req).await
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}
