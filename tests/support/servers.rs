//! Real PostgreSQL and Redis servers for integration tests.
//!
//! Each server runs as a child process on a free port of 127.0.0.1 with its
//! data in a temporary directory; dropping the handle stops the server and
//! removes the directory. A missing binary is a test failure with a message
//! saying how to install it, never a silent skip.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian's `postgresql-15` package puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

const INSTALL_HINT: &str = "run scripts/install-deps (apt-get install postgresql redis-server)";

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times a server is started on a fresh port when it dies before
/// being ready (another process may grab the port between [`free_port`]
/// and the server's bind).
const START_ATTEMPTS: usize = 3;

/// A port of 127.0.0.1 nobody listened on a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address of a listener").port()
}

/// A port of 127.0.0.1 that refuses connections for as long as this
/// lives: a socket bound to it that never listens. (A port from
/// [`free_port`] is free only until another test's server takes it.)
pub struct ClosedPort {
    pub port: u16,
    _socket: std::os::fd::OwnedFd,
}

#[allow(dead_code)]
pub fn closed_port() -> ClosedPort {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // structures passed are sized as the calls expect.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, (&raw const addr).cast(), len);
        assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut blen = len;
        let rc = libc::getsockname(fd, (&raw mut bound).cast(), &mut blen);
        assert!(rc == 0, "getsockname: {}", std::io::Error::last_os_error());
        ClosedPort {
            port: u16::from_be(bound.sin_port),
            _socket: socket,
        }
    }
}

/// A running PostgreSQL 15 server with trust authentication: user
/// `postgres`, any password (or none) is accepted.
pub struct Postgres {
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub dsn: String,
    child: Option<Child>,
    dir: Option<TempDir>,
    /// The user and group it runs as (when the tests run as root).
    ids: Option<(u32, u32)>,
}

/// A running Redis server, no persistence.
pub struct Redis {
    pub port: u16,
    /// `redis://127.0.0.1:PORT`
    pub url: String,
    child: Option<Child>,
    dir: Option<TempDir>,
    /// Appends every write to a file, synced before it answers: a
    /// killed server comes back with its data.
    durable: bool,
}

/// The persistence arguments of a Redis: none, or an append-only file
/// synced at every write.
fn redis_persistence(durable: bool) -> [&'static str; 6] {
    if durable {
        [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
    } else {
        ["--save", "", "--appendonly", "no", "--appendfsync", "no"]
    }
}

impl Postgres {
    /// Runs `initdb` into a temporary directory and starts `postgres` on a
    /// free port; returns once it accepts connections. Panics on failure.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A PostgreSQL that accepts only TLS connections: `ssl = on` with the
    /// server certificate of `tls`, and a `pg_hba.conf` of `hostssl` lines
    /// only (a plain connection finds no entry). Its `dsn` asks for
    /// nothing (`prefer`): tests add the `sslmode` they mean.
    pub fn start_tls(tls: &TlsFiles) -> Postgres {
        Postgres::start_with(Some(tls))
    }

    fn start_with(tls: Option<&TlsFiles>) -> Postgres {
        let bin = Path::new(PG_BIN);
        for b in ["initdb", "postgres", "pg_isready"] {
            if !bin.join(b).is_file() {
                panic!(
                    "PostgreSQL 15 is not installed ({} is missing): {INSTALL_HINT}",
                    bin.join(b).display()
                );
            }
        }
        // PostgreSQL refuses to run as root: run it as the `postgres`
        // system user of the Debian package instead.
        let ids = if current_uid() == 0 {
            Some(postgres_ids())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("warden-pg-")
            .tempdir()
            .expect("create a temporary directory for PostgreSQL");
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory to the postgres user");
        }
        let data = dir.path().join("data");
        let out = as_user(Command::new(bin.join("initdb")), ids)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .current_dir(dir.path())
            .env("LC_ALL", "C")
            .output()
            .expect("run initdb");
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(tls) = tls {
            tls.serve_from(&data, ids);
        }
        let log_path = dir.path().join("postgres.log");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let child = spawn_postgres(dir.path(), port, ids);
            let mut pg = Postgres {
                port,
                dsn: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                child: Some(child),
                dir: None,
                ids,
            };
            match wait_ready(pg.child.as_mut().expect("child"), || pg_ready(port)) {
                Ok(()) => {
                    pg.dir = Some(dir);
                    return pg;
                }
                Err(why) => {
                    last_log = format!("{why}\n{}", read_log(&log_path));
                    // `pg` is dropped here: the server is stopped, the data
                    // directory kept for the next attempt.
                }
            }
        }
        panic!("PostgreSQL did not start after {START_ATTEMPTS} attempts: {last_log}");
    }
}

impl Postgres {
    /// Stops the server and starts it again on the same port and data,
    /// returning once it accepts connections: `"fast"` (SIGINT: sessions
    /// are told and closed) or `"immediate"` (SIGQUIT: no checkpoint,
    /// crash recovery at the next start).
    pub fn restart(&mut self, mode: &str) {
        self.stop(mode);
        self.start_again();
    }

    /// Stops the server (`"fast"` or `"immediate"`, as [`Postgres::restart`]),
    /// keeping its port and data for [`Postgres::start_again`].
    pub fn stop(&mut self, mode: &str) {
        let sig = match mode {
            "fast" => "-INT",
            "immediate" => "-QUIT",
            other => panic!("unknown shutdown mode {other:?}: fast or immediate"),
        };
        let mut child = self.child.take().expect("a running server");
        let _ = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    /// Starts the server again after [`Postgres::stop`], on the same port
    /// and data; returns once it accepts connections.
    pub fn start_again(&mut self) {
        let dir = self.dir.as_ref().expect("the server's directory").path();
        self.child = Some(spawn_postgres(dir, self.port, self.ids));
        let port = self.port;
        if let Err(why) = wait_ready(self.child.as_mut().expect("child"), || pg_ready(port)) {
            panic!(
                "PostgreSQL did not start again: {why}\n{}",
                read_log(&dir.join("postgres.log"))
            );
        }
    }
}

/// Starts `postgres` on the data under `dir` (`dir/data`), listening on
/// `port` of 127.0.0.1 and a socket in `dir`, its log in
/// `dir/postgres.log`.
fn spawn_postgres(dir: &Path, port: u16, ids: Option<(u32, u32)>) -> Child {
    let log_path = dir.join("postgres.log");
    let log = File::create(&log_path).expect("create postgres.log");
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).expect("chown postgres.log");
    }
    as_user(Command::new(Path::new(PG_BIN).join("postgres")), ids)
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        // What a statement cost (tests read `pg_stat_statements`).
        .args(["-c", "shared_preload_libraries=pg_stat_statements"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone a file handle"))
        .stderr(log)
        .spawn()
        .expect("spawn postgres")
}

/// The server on `port` accepts connections (`pg_isready`).
fn pg_ready(port: u16) -> bool {
    tcp_open(port)
        && Command::new(Path::new(PG_BIN).join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-t", "2", "-U", "postgres"])
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

impl Redis {
    /// A Redis that listens only on a TLS port (`--port 0 --tls-port P`),
    /// with the server certificate of `tls` and no client certificates
    /// asked for. Its `url` is `rediss://127.0.0.1:P`; returns once it
    /// answers `PING` over TLS (`redis-cli --tls`).
    pub fn start_tls(tls: &TlsFiles) -> Redis {
        let Some(server) = find_in_path("redis-server") else {
            panic!("redis-server is not installed: {INSTALL_HINT}");
        };
        let Some(cli) = find_in_path("redis-cli") else {
            panic!("redis-cli is not installed: {INSTALL_HINT}");
        };
        let dir = tempfile::Builder::new()
            .prefix("warden-redis-tls-")
            .tempdir()
            .expect("create a temporary directory for Redis");
        let log_path = dir.path().join("redis.log");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let log = File::create(&log_path).expect("create redis.log");
            let child = Command::new(&server)
                .args(["--port", "0", "--tls-port"])
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone a file handle"))
                .stderr(log)
                .spawn()
                .expect("spawn redis-server");
            let mut redis = Redis {
                port,
                url: format!("rediss://127.0.0.1:{port}"),
                durable: false,
                child: Some(child),
                dir: None,
            };
            let ready = || {
                tcp_open(port)
                    && Command::new(&cli)
                        .args(["--tls", "--cacert"])
                        .arg(&tls.ca)
                        .args(["-h", "127.0.0.1", "-p"])
                        .arg(port.to_string())
                        .arg("PING")
                        .stdin(Stdio::null())
                        .output()
                        .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
            };
            match wait_ready(redis.child.as_mut().expect("child"), ready) {
                Ok(()) => {
                    redis.dir = Some(dir);
                    return redis;
                }
                Err(why) => last_log = format!("{why}\n{}", read_log(&log_path)),
            }
        }
        panic!("redis-server (TLS) did not start after {START_ATTEMPTS} attempts: {last_log}");
    }

    /// Starts `redis-server` on a free port without persistence; returns
    /// once it answers `PING`. Panics on failure.
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// A Redis that keeps its data across a kill: every write is appended
    /// to a file and synced before Redis answers (`appendfsync always`).
    pub fn start_durable() -> Redis {
        Redis::start_with(true)
    }

    fn start_with(durable: bool) -> Redis {
        let Some(server) = find_in_path("redis-server") else {
            panic!("redis-server is not installed: {INSTALL_HINT}");
        };
        let dir = tempfile::Builder::new()
            .prefix("warden-redis-")
            .tempdir()
            .expect("create a temporary directory for Redis");
        let log_path = dir.path().join("redis.log");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let log = File::create(&log_path).expect("create redis.log");
            let child = Command::new(&server)
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1"])
                .args(redis_persistence(durable))
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone a file handle"))
                .stderr(log)
                .spawn()
                .expect("spawn redis-server");
            let mut redis = Redis {
                port,
                url: format!("redis://127.0.0.1:{port}"),
                durable,
                child: Some(child),
                dir: None,
            };
            match wait_ready(redis.child.as_mut().expect("child"), || redis_ping(port)) {
                Ok(()) => {
                    redis.dir = Some(dir);
                    return redis;
                }
                Err(why) => last_log = format!("{why}\n{}", read_log(&log_path)),
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last_log}");
    }

    /// Stops the server's process (SIGSTOP) without closing anything:
    /// connections stay open and commands get no answer, until
    /// [`Redis::thaw`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`Redis::freeze`]d server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("a running server");
        let ok = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} redis-server");
    }

    /// Kills the server (SIGKILL): nothing is saved on the way out.
    /// [`Redis::resume`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server, as an outage would.
    pub fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Starts it again on the same port after [`Redis::pause`].
    pub fn resume(&mut self) {
        let server = find_in_path("redis-server").expect("redis-server");
        let dir = self.dir.as_ref().expect("the server's directory").path();
        let log_path = dir.join("redis.log");
        let log = File::create(&log_path).expect("create redis.log");
        let child = Command::new(&server)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(redis_persistence(self.durable))
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a file handle"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        if let Err(why) = wait_ready(self.child.as_mut().expect("child"), || redis_ping(port)) {
            panic!(
                "redis-server did not start again: {why}\n{}",
                read_log(&log_path)
            );
        }
    }
}

/// Certificates made with `openssl` for a test: a CA, a server
/// certificate it signed for `127.0.0.1` and `localhost` (CN and SAN), and
/// another CA that signed nothing the servers present.
pub struct TlsFiles {
    /// The CA that signed the servers' certificate (PEM).
    pub ca: PathBuf,
    /// A CA the servers' certificate does not chain to (PEM).
    pub other_ca: PathBuf,
    /// The servers' certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: TempDir,
}

impl TlsFiles {
    /// Makes the CAs and the server certificate in a temporary directory.
    /// Panics (with openssl's words) on failure.
    pub fn make() -> TlsFiles {
        let Some(openssl) = find_in_path("openssl") else {
            panic!("openssl is not installed: run scripts/install-deps (apt-get install openssl)");
        };
        let dir = tempfile::Builder::new()
            .prefix("warden-tls-")
            .tempdir()
            .expect("create a temporary directory for certificates");
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            if !out.status.success() {
                panic!(
                    "openssl {} failed ({}):\n{}{}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "warden test CA"), ("other-ca", "warden other CA")] {
            let subj = format!("/CN={cn}");
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem, "-days", "30", "-subj", &subj]);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            run(&args);
        }
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&args);
        fs::write(
            dir.path().join("server.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n",
        )
        .expect("write server.ext");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "30",
            "-extfile",
            "server.ext",
        ]);
        let p = |f: &str| dir.path().join(f);
        TlsFiles {
            ca: p("ca.pem"),
            other_ca: p("other-ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
            dir,
        }
    }

    /// Sets up a PostgreSQL data directory to serve TLS only: its
    /// certificate and key (owned by the server's user, the key private),
    /// `ssl = on`, and `hostssl` lines only in `pg_hba.conf`.
    fn serve_from(&self, data: &Path, ids: Option<(u32, u32)>) {
        use std::os::unix::fs::PermissionsExt;
        for (from, to, mode) in [
            (&self.cert, "server.crt", 0o644),
            (&self.key, "server.key", 0o600),
        ] {
            let dest = data.join(to);
            fs::copy(from, &dest).expect("copy the server certificate into the data directory");
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some((uid, gid)) = ids {
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        conf.write_all(b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            .expect("write postgresql.conf");
        fs::write(
            data.join("pg_hba.conf"),
            "# TLS only: a plain TCP connection matches no line.\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n",
        )
        .expect("write pg_hba.conf");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop(child);
        }
        // `dir` (a TempDir) is removed when dropped after this.
        drop(self.dir.take());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop(child);
        }
        drop(self.dir.take());
    }
}

/// SIGTERM, up to 10 s for the process to exit, then SIGKILL.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => sleep(Duration::from_millis(25)),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ready` until it holds, the child exits or [`START_TIMEOUT`] passes.
fn wait_ready(child: &mut Child, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited ({status}) before being ready"));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the server was not ready within {} s",
                START_TIMEOUT.as_secs()
            ));
        }
        sleep(Duration::from_millis(50));
    }
}

fn tcp_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Sends `PING` and expects `+PONG`.
fn redis_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 7 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"+PONG")
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// The effective user id, from `id -u` (the tests have no libc).
fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("run `id -u`");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("`id -u` prints a number")
}

/// User and group id of the `postgres` system user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run `id`");
        if !out.status.success() {
            panic!(
                "the tests run as root and PostgreSQL refuses to run as root, but there is no \
                 `postgres` user to run it as: {INSTALL_HINT}"
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("`id` prints a number")
    };
    (id("-u"), id("-g"))
}

/// Runs `cmd` as `ids` (user, group) when given. The server is then a
/// direct child of the test, so stopping it is a plain signal (`runuser`
/// in between would forward signals with its own delays and messages).
fn as_user(mut cmd: Command, ids: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid).env("HOME", "/var/lib/postgresql");
        cmd.env("USER", "postgres").env("LOGNAME", "postgres");
    }
    cmd
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
