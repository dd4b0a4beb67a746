//! A TCP proxy on loopback for fault tests, between warden and a server
//! the test started: it forwards; or it holds every byte in both
//! directions without closing anything (a black hole: a partition, or a
//! failover that sends no reset); or it forwards at a bounded rate (a
//! slow link). Connections made during a black hole are accepted and
//! held too.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

#[derive(Default)]
struct State {
    hole: AtomicBool,
    /// Bytes per second in each direction of each connection (0: as fast
    /// as it goes).
    rate: AtomicU64,
}

/// A proxy to `127.0.0.1:target`, listening on `127.0.0.1:port`.
pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let state = shared.clone();
                        thread::spawn(move || pump(from, to, &state));
                    }
                }
            }
        });
        Proxy { port, state }
    }

    /// `url` (a DSN or a URL naming `127.0.0.1:<target>`) through the proxy.
    pub fn url(&self, url: &str, target: u16) -> String {
        url.replace(
            &format!("127.0.0.1:{target}"),
            &format!("127.0.0.1:{}", self.port),
        )
    }

    /// Stops forwarding, closing nothing.
    pub fn black_hole(&self) {
        self.state.hole.store(true, Ordering::SeqCst);
    }

    /// Forwards again (what was held goes on its way).
    pub fn heal(&self) {
        self.state.hole.store(false, Ordering::SeqCst);
    }

    /// Forwards at most `bytes_per_second` in each direction of each
    /// connection (0: no bound).
    pub fn limit(&self, bytes_per_second: u64) {
        self.state.rate.store(bytes_per_second, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either end closes, holding while the
/// proxy is a black hole and pacing to its rate.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if state.hole.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let rate = state.rate.load(Ordering::SeqCst);
        // A twentieth of a second's worth at a time, paced.
        let chunk = if rate == 0 {
            buf.len()
        } else {
            (rate / 20).clamp(1, buf.len() as u64) as usize
        };
        match from.read(&mut buf[..chunk]) {
            Ok(0) => break,
            Ok(n) => {
                if state.hole.load(Ordering::SeqCst) {
                    // Read just as the hole opened: held until it heals.
                    while state.hole.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if rate > 0 {
                    thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
