//! A small memory backend for benchmarks and the demo: answers every
//! `POST` with `200 {}` over HTTP/1.1 keep-alive, and `GET /stats` with the
//! requests and connections it has seen so far.
//!
//! usage: cargo run --release --example memory_backend -- 127.0.0.1:PORT

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("memory_backend: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("memory_backend: listening on {addr}");
        let stats = Arc::new(Stats::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let stats = stats.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let stats = stats.clone();
                    async move {
                        let get_stats = req.method() == Method::GET && req.uri().path() == "/stats";
                        // Read the whole body, as a real backend would.
                        let _ = req.into_body().collect().await;
                        let body = if get_stats {
                            format!(
                                "{{\"requests\": {}, \"connections\": {}}}",
                                stats.requests.load(Ordering::Relaxed),
                                stats.connections.load(Ordering::Relaxed)
                            )
                        } else {
                            stats.requests.fetch_add(1, Ordering::Relaxed);
                            "{}".to_string()
                        };
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
