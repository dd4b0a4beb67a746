//! A tiny process for benchmarks: appends the current time (nanoseconds
//! since the epoch) and its pid to a file, then exits (`--exit`) or sleeps
//! until killed (`--sleep`). The same binary runs under every supervisor
//! compared, so the figures differ only by the supervisor.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(mode)) = (args.next(), args.next()) else {
        eprintln!("usage: stamp FILE --exit|--sleep");
        std::process::exit(2);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        // One write per line: appends from many processes do not interleave.
        let _ = f.write_all(format!("{now} {}\n", std::process::id()).as_bytes());
    }
    if mode == "--sleep" {
        loop {
            std::thread::park();
        }
    }
}
