//! A web page in the operator's browser (a real Chromium, driven by
//! playwright-core) cannot drive warden's API: the attacks of the security
//! review, a `no-cors` fetch with `text/plain` and an auto-submitted form,
//! from a page of another origin, change nothing. warden has no token here,
//! as the demo's registry has none by default.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use support::daemon::Warden;
use support::http::{get_json, wait_http};
use support::servers::free_port;

/// Serves `page` (HTML) to every request, from another origin than
/// warden's; answers its port.
fn attacker(page: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the attacker's server");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

/// Opens `url` in Chromium for `ms` milliseconds; the page's console lines.
fn visit(url: &str, ms: u32) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    support::run_ok(
        Command::new("node")
            .arg(root.join("tests/browser/visit.mjs"))
            .args([url, &ms.to_string()]),
        &format!(
            "chromium visiting {url} (scripts/install-deps installs node, chromium and playwright-core)"
        ),
    )
}

#[test]
fn a_page_of_another_origin_cannot_stop_services_nor_warden() {
    let api = free_port();
    let mut w = Warden::start(&format!(
        r#"
[api]
listen = "127.0.0.1:{api}"

[services.victim]
kind = "process"
command = ["sleep", "595959"]
"#
    ));
    wait_http(api, "/readyz", 200);
    let pid_before = get_json(api, "/v1/services/victim").1["details"]["pid"].clone();
    assert!(pid_before.is_number(), "the victim runs");
    let target = format!("http://127.0.0.1:{api}");
    // The review's page: a no-cors fetch that needs no preflight, then a
    // form that posts itself.
    let page = format!(
        r#"<!doctype html><html><body>
<form id="f" method="POST" action="{target}/v1/shutdown" target="sink"><input name="x" value="1"></form>
<iframe name="sink"></iframe>
<script>
fetch("{target}/v1/services/victim/stop", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}})
  .then(() => console.log("fetch sent"), (e) => console.log("fetch failed " + e));
fetch("{target}/v1/services/victim/restart", {{method: "POST", mode: "no-cors"}})
  .then(() => console.log("bodyless fetch sent"), (e) => console.log("fetch failed " + e));
setTimeout(() => {{ document.getElementById("f").submit(); console.log("form sent"); }}, 300);
</script></body></html>"#
    );
    let evil = attacker(page);
    let seen = visit(&format!("http://127.0.0.1:{evil}/"), 2500);
    for line in [
        "page: fetch sent",
        "page: bodyless fetch sent",
        "page: form sent",
    ] {
        assert!(
            seen.contains(line),
            "the page ran its attack ({line}):\n{seen}"
        );
    }
    // Nothing changed: warden runs, the victim is the same process.
    assert_eq!(get_json(api, "/livez").0, 200, "warden is still running");
    let victim = get_json(api, "/v1/services/victim").1;
    assert_eq!(victim["state"], "ready", "{victim}");
    assert_eq!(
        victim["details"]["pid"], pid_before,
        "the victim was not restarted"
    );
    assert_eq!(victim["restarts"], 0, "{victim}");
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0, "{}", w.dump());
}
