//! Singletons: two warden instances share one PostgreSQL;
//! a `singleton = true` service runs on exactly one of them, and the other
//! takes over when the leader's session ends.

mod support;

use std::time::{Duration, Instant};

use support::daemon::{Warden, processes_with};
use support::servers::Postgres;

fn registry(dsn: &str) -> String {
    format!(
        r#"
[warden]
postgres = "{dsn}"
[api]
enabled = false
[services.cron]
kind = "process"
command = ["sleep", "111222"]
singleton = true
[services.local]
kind = "process"
command = ["sleep", "1111222"]
"#
    )
}

fn running(marker: &str) -> usize {
    processes_with(&format!("sleep {marker}"))
        .into_iter()
        .filter(|(_, state)| *state != 'Z')
        .count()
}

#[test]
fn a_singleton_runs_on_one_instance_and_the_other_takes_over() {
    let pg = Postgres::start();
    let mut a = Warden::start(&registry(&pg.dsn));
    a.wait_event("cron", "ready");
    let mut b = Warden::start(&registry(&pg.dsn));
    b.wait_event("cron", "standby: another instance runs the singleton");
    b.wait_event("local", "ready");
    assert_eq!(
        running("111222"),
        1,
        "exactly one instance runs the singleton"
    );
    assert_eq!(running("1111222"), 2, "non-singletons run everywhere");

    // The leader stops: its session ends and the standby takes over at
    // once (it was blocked in pg_advisory_lock, not polling).
    let t = Instant::now();
    a.signal("TERM");
    assert_eq!(a.exit_code(), 0);
    b.wait_event("cron", "leader: this instance runs the singleton");
    b.wait_log("cron ready again", |v| {
        v["service"] == "cron" && v["message"] == "started" && v["generation"] == 1
    });
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "takeover took {:?}",
        t.elapsed()
    );
    b.wait_event("cron", "ready");
    assert_eq!(running("111222"), 1);
    b.signal("TERM");
    assert_eq!(b.exit_code(), 0);
}
