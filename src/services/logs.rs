//! The last output lines of each service, kept for the API and
//! `warden logs` (a bounded ring: memory stays flat however chatty a
//! service is).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One captured line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at: SystemTime,
    pub stream: Stream,
    pub line: String,
}

/// A service's ring of recent lines. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct Logs {
    lines: Arc<Mutex<VecDeque<LogLine>>>,
    capacity: usize,
}

/// Two handles are equal when they share the same ring.
impl PartialEq for Logs {
    fn eq(&self, other: &Logs) -> bool {
        Arc::ptr_eq(&self.lines, &other.lines)
    }
}

impl Logs {
    pub fn new(capacity: usize) -> Logs {
        // Grows as lines come: a quiet service costs next to nothing.
        Logs {
            lines: Arc::new(Mutex::new(VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&self, stream: Stream, line: String) {
        let mut l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == self.capacity {
            l.pop_front();
        }
        l.push_back(LogLine {
            at: SystemTime::now(),
            stream,
            line,
        });
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().skip(l.len().saturating_sub(n)).cloned().collect()
    }
}

impl Default for Logs {
    fn default() -> Logs {
        Logs::new(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_lines() {
        let logs = Logs::new(3);
        for i in 0..5 {
            logs.push(Stream::Stdout, format!("line {i}"));
        }
        let tail: Vec<String> = logs.tail(10).into_iter().map(|l| l.line).collect();
        assert_eq!(tail, vec!["line 2", "line 3", "line 4"]);
        assert_eq!(logs.tail(1)[0].line, "line 4");
    }
}
