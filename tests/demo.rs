//! The README's first command runs warden on the root `services.toml`: the
//! stack it describes must come up (Redis, the producer and consumer, the
//! oneshot, the crashing worker and the API) and stop cleanly. Run here on
//! free ports, in a scratch directory.

mod support;

use std::path::Path;

use support::daemon::Warden;
use support::http::{get_json, http, wait_http};
use support::servers::free_port;

#[test]
fn the_demo_stack_comes_up_serves_and_stops() {
    assert!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "redis-server is missing: run scripts/install-deps"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = std::fs::read_to_string(root.join("services.toml")).unwrap();
    let (api, redis) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{api}");
    let redis_port = redis.to_string();
    let mut w = Warden::start_with(
        &registry,
        &[
            ("WARDEN_API_LISTEN", &listen),
            ("DEMO_REDIS_PORT", &redis_port),
        ],
        None,
    );
    wait_http(api, "/readyz", 200);
    w.wait_event("consumer", "ready");
    w.wait_log("an event produced", |v| {
        v["service"] == "producer" && v["message"] == "produced event 2"
    });
    w.wait_log("the consumer's report", |v| {
        v["service"] == "consumer"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("demo:events holds"))
    });
    let (status, health) = get_json(api, "/v1/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    for (name, state) in [
        ("api", "ready"),
        ("prepare", "completed"),
        ("redis", "ready"),
        ("producer", "ready"),
        ("consumer", "ready"),
    ] {
        assert_eq!(health["services"][name]["state"], state, "{name}: {health}");
    }
    assert!(
        ["ready", "starting", "backoff"]
            .contains(&health["services"]["flaky"]["state"].as_str().unwrap()),
        "{health}"
    );
    assert!(
        w.dir.join("var/redis").is_dir(),
        "the oneshot laid out ./var"
    );
    let (status, _, body) = http(api, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains(r#"warden_service_up{service="redis"} 1"#));
    w.signal("TERM");
    assert_eq!(w.exit_code(), 0);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", redis)).is_err(),
        "Redis stopped with warden"
    );
}
