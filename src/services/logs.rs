//! The last output lines of each service, kept for the API and
//! `warden logs` (a bounded ring: memory stays flat however chatty a
//! service is).
//!
//! Every line gets a sequence number, counted from 1 for the life of the
//! service (across restarts), so a follower asks for "everything after N"
//! and learns how many lines it missed when the ring moved past them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

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
    /// Its place in the service's output, from 1.
    pub seq: u64,
    pub at: SystemTime,
    pub stream: Stream,
    pub line: String,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    /// The sequence number the next line gets, minus one.
    last: u64,
}

#[derive(Debug, Default)]
struct Shared {
    ring: Mutex<Ring>,
    /// Wakes followers when a line arrives.
    arrived: Notify,
}

/// A service's ring of recent lines. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct Logs {
    shared: Arc<Shared>,
    capacity: usize,
}

/// Two handles are equal when they share the same ring.
impl PartialEq for Logs {
    fn eq(&self, other: &Logs) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// Lines after a given sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub lines: Vec<LogLine>,
    /// Lines after the one asked for that the ring no longer holds.
    pub missed: u64,
}

impl Logs {
    pub fn new(capacity: usize) -> Logs {
        // Grows as lines come: a quiet service costs next to nothing.
        Logs {
            shared: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.shared.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, stream: Stream, line: String) {
        {
            let mut r = self.ring();
            if r.lines.len() == self.capacity {
                r.lines.pop_front();
            }
            r.last += 1;
            let seq = r.last;
            r.lines.push_back(LogLine {
                seq,
                at: SystemTime::now(),
                stream,
                line,
            });
        }
        self.shared.arrived.notify_waiters();
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let r = self.ring();
        r.lines
            .iter()
            .skip(r.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The sequence number of the newest line (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.ring().last
    }

    /// Every line after `seq` that the ring still holds.
    pub fn since(&self, seq: u64) -> Since {
        let r = self.ring();
        let first = r.lines.front().map_or(r.last + 1, |l| l.seq);
        let missed = first.saturating_sub(seq + 1);
        let lines = r.lines.iter().filter(|l| l.seq > seq).cloned().collect();
        Since { lines, missed }
    }

    /// Waits for the first line after `seq`, then returns every line after
    /// it (at once when there are some already).
    pub async fn follow(&self, seq: u64) -> Since {
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            // Registered before looking, so no line slips in between.
            arrived.as_mut().enable();
            if self.last_seq() > seq {
                return self.since(seq);
            }
            arrived.await;
        }
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

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.line.as_str()).collect()
    }

    #[test]
    fn the_ring_keeps_the_last_lines() {
        let logs = Logs::new(3);
        for i in 0..5 {
            logs.push(Stream::Stdout, format!("line {i}"));
        }
        assert_eq!(texts(&logs.tail(10)), vec!["line 2", "line 3", "line 4"]);
        assert_eq!(logs.tail(1)[0].line, "line 4");
        assert_eq!(logs.tail(1)[0].seq, 5);
    }

    #[test]
    fn since_says_how_many_lines_the_ring_dropped() {
        let logs = Logs::new(3);
        assert_eq!(logs.since(0).missed, 0);
        for i in 1..=5 {
            logs.push(Stream::Stderr, format!("{i}"));
        }
        let s = logs.since(1);
        assert_eq!(texts(&s.lines), vec!["3", "4", "5"]);
        assert_eq!(s.missed, 1, "line 2 is gone");
        let s = logs.since(4);
        assert_eq!((texts(&s.lines), s.missed), (vec!["5"], 0));
        assert!(logs.since(5).lines.is_empty());
    }

    #[tokio::test]
    async fn follow_wakes_on_the_next_line() {
        let logs = Logs::new(10);
        logs.push(Stream::Stdout, "old".into());
        let follower = tokio::spawn({
            let logs = logs.clone();
            async move { logs.follow(1).await }
        });
        tokio::task::yield_now().await;
        logs.push(Stream::Stdout, "new".into());
        let got = follower.await.unwrap();
        assert_eq!(texts(&got.lines), vec!["new"]);
        assert_eq!(got.lines[0].seq, 2);
    }
}
