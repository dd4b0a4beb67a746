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

/// The longest line kept, in bytes: a child that writes megabytes without
/// a newline costs this much, and the rest of its line is counted, not
/// kept (the line ends with a marker that says how much was cut).
pub const MAX_LINE: usize = 16 * 1024;

/// The most bytes of lines a service's ring holds, whatever `log_lines`
/// says: the oldest lines go first.
pub const MAX_RING_BYTES: usize = 1024 * 1024;

/// Splits a child's output into lines of at most [`MAX_LINE`] bytes. Bytes
/// of a line past the limit are dropped and counted; the line then ends
/// with `… [N bytes cut]`.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    cut: usize,
}

impl LineSplitter {
    /// Takes the next bytes read; returns the lines they complete (each
    /// with whether it was cut).
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let (part, ended) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            let room = MAX_LINE - self.buf.len();
            let take = part.len().min(room);
            self.buf.extend_from_slice(&part[..take]);
            self.cut += part.len() - take;
            match ended {
                Some(next) => {
                    out.push(self.line());
                    chunk = &chunk[next..];
                }
                None => break,
            }
        }
        out
    }

    /// The last line, if the output ended without a newline.
    pub fn finish(&mut self) -> Option<(String, bool)> {
        (!self.buf.is_empty() || self.cut > 0).then(|| self.line())
    }

    fn line(&mut self) -> (String, bool) {
        let mut line = String::from_utf8_lossy(&self.buf)
            .trim_end_matches('\r')
            .to_string();
        let cut = self.cut > 0;
        if cut {
            line.push_str(&format!(" … [{} bytes cut]", self.cut));
        }
        self.buf.clear();
        self.cut = 0;
        (line, cut)
    }
}

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
    /// The bytes of the lines held (bounded by [`MAX_RING_BYTES`]).
    bytes: usize,
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
            while r.lines.len() >= self.capacity
                || (!r.lines.is_empty() && r.bytes + line.len() > MAX_RING_BYTES)
            {
                if let Some(old) = r.lines.pop_front() {
                    r.bytes -= old.line.len();
                }
            }
            r.bytes += line.len();
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
        self.since_at_most(seq, usize::MAX)
    }

    /// The lines after `seq`, as [`Logs::since`], but no more than about
    /// `bytes` of their text (one line at least): a reader that takes them
    /// a piece at a time never holds a copy of the whole ring.
    pub fn since_at_most(&self, seq: u64, bytes: usize) -> Since {
        let r = self.ring();
        let first = r.lines.front().map_or(r.last + 1, |l| l.seq);
        let missed = first.saturating_sub(seq + 1);
        let mut taken = 0usize;
        let lines = r
            .lines
            .iter()
            .filter(|l| l.seq > seq)
            .take_while(|l| {
                let fits = taken < bytes || taken == 0;
                taken = taken.saturating_add(l.line.len().max(1));
                fits
            })
            .cloned()
            .collect();
        Since { lines, missed }
    }

    /// Waits for the first line after `seq`, then returns every line after
    /// it (at once when there are some already).
    pub async fn follow(&self, seq: u64) -> Since {
        self.follow_at_most(seq, usize::MAX).await
    }

    /// [`Logs::follow`], no more than about `bytes` of text at a time.
    pub async fn follow_at_most(&self, seq: u64, bytes: usize) -> Since {
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            // Registered before looking, so no line slips in between.
            arrived.as_mut().enable();
            if self.last_seq() > seq {
                return self.since_at_most(seq, bytes);
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
    #[test]
    fn since_at_most_takes_a_piece_at_a_time_and_at_least_one_line() {
        let logs = Logs::new(100);
        for i in 0..10 {
            logs.push(Stream::Stdout, format!("line {i:04}")); // 9 bytes
        }
        let piece = logs.since_at_most(0, 20);
        let seqs: Vec<u64> = piece.lines.iter().map(|l| l.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "9 + 9 < 20, then one more");
        assert_eq!(logs.since_at_most(3, 0).lines.len(), 1, "one line at least");
        assert_eq!(
            logs.since_at_most(10, 100).lines.len(),
            0,
            "nothing after the last"
        );
        assert_eq!(logs.since(0).lines.len(), 10);
    }

    use super::*;

    #[test]
    fn lines_are_split_across_reads_and_cut_at_the_limit() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"he"), vec![]);
        assert_eq!(s.feed(b"llo\r\nwor"), vec![("hello".to_string(), false)]);
        assert_eq!(
            s.feed(b"ld\n\n"),
            vec![("world".into(), false), (String::new(), false)]
        );
        assert_eq!(s.finish(), None);
        // A line of MAX_LINE bytes is whole; one byte more is cut.
        let exact = vec![b'a'; MAX_LINE];
        assert_eq!(s.feed(&exact), vec![]);
        assert_eq!(s.feed(b"\n"), vec![("a".repeat(MAX_LINE), false)]);
        let long = vec![b'b'; MAX_LINE + 5];
        s.feed(&long[..100]);
        s.feed(&long[100..]);
        assert_eq!(
            s.feed(b"bb\nnext"),
            vec![(format!("{} … [7 bytes cut]", "b".repeat(MAX_LINE)), true)]
        );
        // Megabytes without a newline cost MAX_LINE bytes.
        for _ in 0..64 {
            assert_eq!(s.feed(&vec![b'c'; 1 << 16]), vec![]);
        }
        assert!(s.buf.len() <= MAX_LINE);
        let (last, cut) = s.finish().unwrap();
        assert!(cut && last.starts_with("nextccc"), "{}", &last[..20]);
        assert!(last.ends_with(&format!("[{} bytes cut]", 4 + 64 * (1 << 16) - MAX_LINE)));
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_too() {
        let logs = Logs::new(1000);
        let line = "x".repeat(MAX_LINE);
        for _ in 0..200 {
            logs.push(Stream::Stdout, line.clone());
        }
        let kept = logs.tail(1000);
        assert_eq!(kept.len(), MAX_RING_BYTES / MAX_LINE);
        assert_eq!(kept.last().unwrap().seq, 200, "the newest stay");
        // A line larger than the whole budget is still kept, alone.
        let logs = Logs::new(10);
        logs.push(Stream::Stdout, "y".repeat(MAX_RING_BYTES + 1));
        logs.push(Stream::Stdout, "z".into());
        assert_eq!(texts(&logs.tail(10)), vec!["z"]);
    }

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
