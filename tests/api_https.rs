//! The API over HTTPS (`[api] tls_cert` and `tls_key`) and the client
//! commands on `https://` URLs (`--ca-file`), with certificates openssl
//! makes for the test:
//! - the client verifies the API's certificate: trusted through
//!   `--ca-file`, refused in plain words without it or with another CA;
//! - nothing is answered in clear on the HTTPS port;
//! - a renewed certificate is served at the next connection, no restart;
//! - a registry with half a TLS setting, or a key file that holds no key,
//!   is refused by `check` without quoting the file; a key that is not the
//!   certificate's fails the API's start in words that name both files.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::daemon::{Warden, wait_until};
use support::servers::{TlsFiles, free_port};

/// A client command against `url`; (exit code, stdout, stderr).
fn client(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env("WARDEN_URL", url)
        .env_remove("WARDEN_API_TOKEN")
        .env_remove("WARDEN_CA_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn registry(port: u16, cert: &Path, key: &Path) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:{port}"
token = "s3cret-token"
tls_cert = "{}"
tls_key = "{}"

[services.web]
kind = "process"
command = ["sleep", "515151"]
"#,
        cert.display(),
        key.display()
    )
}

/// Runs openssl in `dir`, failing with its words.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_api_serves_https_and_the_client_verifies_it() {
    let tls = TlsFiles::make();
    let dir = tempfile::tempdir().unwrap();
    // Copies: the test replaces them with a renewed pair later.
    let (cert, key) = (dir.path().join("api.pem"), dir.path().join("api.key"));
    std::fs::copy(&tls.cert, &cert).unwrap();
    std::fs::copy(&tls.key, &key).unwrap();
    let port = free_port();
    let mut w = Warden::start(&registry(port, &cert, &key));
    let url = format!("https://127.0.0.1:{port}");
    let ca = tls.ca.to_str().unwrap();
    wait_until("the API to answer over HTTPS", || {
        client(&url, &["health", "--ca-file", ca]).0 == 0
    });

    let (code, out, err) = client(&url, &["status", "--ca-file", ca]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web"), "{out}");
    // By the certificate's other name, with the token: a change.
    let by_name = format!("https://localhost:{port}");
    let (code, _, err) = client(
        &by_name,
        &["stop", "web", "--ca-file", ca, "--token", "s3cret-token"],
    );
    assert_eq!(code, 0, "{err}");
    w.wait_event("web", "stopped");

    // Not trusted: no CA given, or another one.
    for extra in [&[][..], &["--ca-file", tls.other_ca.to_str().unwrap()][..]] {
        let mut args = vec!["status"];
        args.extend_from_slice(extra);
        let (code, out, err) = client(&url, &args);
        assert_eq!(code, 4, "{out}{err}");
        assert_eq!(
            err,
            format!(
                "error: cannot reach warden at {url}: the server's TLS certificate is not trusted: unknown issuer (set --ca-file (WARDEN_CA_FILE) to the CA that signed it)\n"
            ),
            "{extra:?}"
        );
    }
    // Nothing in clear on the HTTPS port.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "served in clear: {}",
        String::from_utf8_lossy(&answer)
    );
    let (code, _, err) = client(&format!("http://127.0.0.1:{port}"), &["status"]);
    assert_ne!(code, 0, "{err}");

    // Renewed (signed by the other CA now): served at the next connection.
    let other_key = tls.other_ca.with_file_name("other-ca.key");
    openssl(
        dir.path(),
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "new.key",
            "-out",
            "new.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.path().join("new.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "new.csr",
            "-CA",
            tls.other_ca.to_str().unwrap(),
            "-CAkey",
            other_key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            "new.pem",
            "-days",
            "30",
            "-extfile",
            "new.ext",
        ],
    );
    std::fs::rename(dir.path().join("new.key"), &key).unwrap();
    std::fs::rename(dir.path().join("new.pem"), &cert).unwrap();
    let other = tls.other_ca.to_str().unwrap();
    let (code, out, err) = client(&url, &["status", "--ca-file", other]);
    assert_eq!(code, 0, "renewed certificate: {out}{err}");
    let (code, _, _) = client(&url, &["status", "--ca-file", ca]);
    assert_eq!(code, 4, "the old CA no longer signs what is served");

    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
}

fn check(dir: &Path, text: &str) -> (i32, String) {
    std::fs::write(dir.join("services.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "-c"])
        .arg(dir.join("services.toml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn half_a_tls_setting_or_a_file_that_holds_no_key_is_refused() {
    let tls = TlsFiles::make();
    let dir = tempfile::tempdir().unwrap();
    let cert = tls.cert.display();
    let (code, out) = check(dir.path(), &format!("[api]\ntls_cert = \"{cert}\"\n"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("api.tls_cert is set without api.tls_key"),
        "{out}"
    );
    let (code, out) = check(
        dir.path(),
        &format!("[api]\ntls_key = \"{}\"\n", tls.key.display()),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("api.tls_key is set without api.tls_cert"),
        "{out}"
    );
    // A key file that holds something else: named, never quoted.
    let secret = dir.path().join("not-a-key");
    std::fs::write(&secret, "Hunter2-the-password\n").unwrap();
    let (code, out) = check(
        dir.path(),
        &format!(
            "[api]\ntls_cert = \"{cert}\"\ntls_key = \"{}\"\n",
            secret.display()
        ),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{} holds no PEM private key", secret.display())),
        "{out}"
    );
    assert!(!out.contains("Hunter2"), "{out}");
    let (code, out) = check(
        dir.path(),
        &format!(
            "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            secret.display(),
            tls.key.display()
        ),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("holds no certificate"), "{out}");
    assert!(!out.contains("Hunter2"), "{out}");
}

#[test]
fn a_key_that_is_not_the_certificates_fails_the_start_in_words() {
    let tls = TlsFiles::make();
    let other_key = tls.other_ca.with_file_name("other-ca.key");
    let port = free_port();
    let mut w = Warden::start(&registry(port, &tls.cert, &other_key));
    assert_eq!(w.exit_code(), 3, "the API is critical");
    let dump = w.dump();
    assert!(
        dump.contains(&format!(
            "the key in {} is not the key of the certificate in {}",
            other_key.display(),
            tls.cert.display()
        )),
        "{dump}"
    );
}
