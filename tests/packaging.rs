//! The container image under a real engine (podman), and the Debian
//! package installed with dpkg under a real systemd (the unit verified by
//! systemd itself, then ready, reload, watchdog and stop). The heavy lifting
//! is in scripts (they run by hand too, as root); each test runs one and
//! shows its whole output when it fails. The Kubernetes manifests are
//! checked by `deploy_kubernetes.rs`, the alert rules and the dashboard by
//! `observability_kit.rs`.

mod support;

use std::path::Path;
use std::process::Command;

/// Runs `scripts/NAME ARGS` from the repository's root and returns its
/// output; fails the test, with that output, when the script fails.
fn script(name: &str, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(root.join("scripts").join(name));
    // The variables cargo sets for a test would reach the scripts' own
    // `cargo build --release`, whose build scripts track some of them
    // (ring's CARGO_MANIFEST_DIR): the release binary would be rebuilt at
    // every run, and again by the next build outside the tests.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            cmd.env_remove(&*k);
        }
    }
    support::run_ok(
        cmd.args(args).current_dir(root),
        &format!("scripts/{name} {}", args.join(" ")),
    )
}

#[test]
fn the_container_image_turns_healthy_reaps_zombies_stops_with_0_and_fails_with_3() {
    let out = script("container-test", &[]);
    for step in [
        "healthy",
        "zombies reaped",
        "podman stop: exit 0",
        "a critical failure: exit code 3",
        "an invalid registry: exit code 1",
    ] {
        assert!(out.contains(step), "{step:?} in:\n{out}");
    }
    // The figures go to the test's output, for the record.
    println!("{out}");
}

#[test]
fn the_debian_package_installs_and_its_unit_runs_under_a_real_systemd() {
    let out = script("package-test", &[]);
    for step in [
        "systemd is PID 1 in the container",
        "installed: unit enabled, systemd-analyze verify clean, warden check passes",
        "ready: active after READY=1",
        "sandbox: / read-only and a private /tmp",
        "reload: systemctl reload started the added service (as nobody, user =",
        "watchdog: pings kept it alive",
        "stop: exit 0, result success, no service left",
    ] {
        assert!(out.contains(step), "{step:?} in:\n{out}");
    }
    println!("{out}");
}
