//! The floor of the runtime benchmark: the least a supervisor can do. It
//! starts each command of a file (one per line, arguments split on
//! spaces), starts again at once any that exits, and on SIGTERM sends
//! SIGTERM to every child, waits for them and exits. No state beyond the
//! children, no API, no logs, no groups, no backoff: what warden's start,
//! restart, stop and memory are compared with (`scripts/bench runtime`).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn spawn(argv: &[String]) -> Option<Child> {
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .spawn()
        .ok()
}

fn main() {
    let Some(file) = std::env::args().nth(1) else {
        eprintln!("usage: floor FILE (one command a line)");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let commands: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|argv| !argv.is_empty())
        .collect();
    // SAFETY: a handler that only stores to an atomic; installed without
    // SA_RESTART so that waitpid returns EINTR on SIGTERM.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    let mut running: HashMap<i32, (Child, usize)> = HashMap::new();
    for (i, argv) in commands.iter().enumerate() {
        if let Some(c) = spawn(argv) {
            running.insert(c.id() as i32, (c, i));
        }
    }
    loop {
        if TERM.load(Ordering::SeqCst) {
            for (pid, _) in running.iter() {
                // SAFETY: signalling a child of ours.
                unsafe {
                    libc::kill(*pid, libc::SIGTERM);
                }
            }
            for (_, (mut c, _)) in running.drain() {
                let _ = c.wait();
            }
            return;
        }
        let mut status = 0;
        // SAFETY: waiting for any child of ours.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid <= 0 {
            continue; // EINTR (SIGTERM), or no child yet
        }
        if let Some((_, i)) = running.remove(&pid)
            && !TERM.load(Ordering::SeqCst)
            && let Some(c) = spawn(&commands[i])
        {
            running.insert(c.id() as i32, (c, i));
        }
    }
}
