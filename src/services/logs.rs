//! The last output lines of each service, kept for the API and
//! `warden logs` (a bounded ring: memory stays flat however chatty a
//! service is).
//!
//! Every line gets a sequence number, counted from 1 for the life of the
//! service (across restarts), so a follower asks for "everything after N"
//! and learns how many lines it missed when the ring moved past them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

/// The longest line kept, in bytes: a child that writes megabytes without
/// a newline costs this much, and the rest of its line is counted, not
/// kept (the line ends with a marker that says how much was cut).
pub const MAX_LINE: usize = 16 * 1024;

/// The most bytes of lines a service's ring holds, whatever `log_lines`
/// and `log_memory` say: the oldest lines go first.
pub const MAX_RING_BYTES: usize = 1024 * 1024;

/// What a kept line costs besides its text: its slot in the ring (the
/// string's header, sequence number, time and stream), twice, since a
/// ring holds up to twice the slots it uses (it doubles as it grows, and
/// gives back what it no longer needs past that). Counted against the
/// ring's bytes so that many short lines are bounded too.
pub const LINE_OVERHEAD: usize = 2 * std::mem::size_of::<LogLine>();

/// The fewest bytes a ring is given, however many services share
/// `log_memory`: room for a few short lines.
pub const MIN_RING_BYTES: usize = 1024;

/// The limits every ring of a supervisor follows, shared so that a reload
/// changes them at once for all: at most `lines` lines and `bytes` bytes
/// (text plus [`LINE_OVERHEAD`] a line) each.
#[derive(Debug)]
pub struct RingLimits {
    lines: AtomicUsize,
    bytes: AtomicUsize,
}

impl RingLimits {
    pub fn new(lines: usize, bytes: usize) -> Arc<RingLimits> {
        let l = Arc::new(RingLimits {
            lines: AtomicUsize::new(1),
            bytes: AtomicUsize::new(MIN_RING_BYTES),
        });
        l.set(lines, bytes);
        l
    }

    /// The limits of each of `services` rings that together hold at most
    /// `total` bytes: an equal share, between [`MIN_RING_BYTES`] and
    /// [`MAX_RING_BYTES`].
    pub fn shared(lines: usize, total: u64, services: usize) -> Arc<RingLimits> {
        RingLimits::new(lines, share(total, services))
    }

    /// Sets new limits (rings follow at their next line, or at
    /// [`Logs::trim`]).
    pub fn set(&self, lines: usize, bytes: usize) {
        self.lines.store(lines.max(1), Ordering::Relaxed);
        self.bytes.store(
            bytes.clamp(MIN_RING_BYTES, MAX_RING_BYTES),
            Ordering::Relaxed,
        );
    }

    /// [`RingLimits::set`] with an equal share of `total` bytes.
    pub fn set_shared(&self, lines: usize, total: u64, services: usize) {
        self.set(lines, share(total, services));
    }

    pub fn lines(&self) -> usize {
        self.lines.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// What a kept line costs: its slot in the ring, and the heap block its
/// text takes (glibc's malloc: at least 32 bytes, 8 of header, rounded up
/// to 16), so that many short lines are bounded by what they really hold.
fn held(line: &str) -> usize {
    let text = match line.len() {
        0 => 0,
        n => ((n + 8 + 15) & !15).max(32),
    };
    text + LINE_OVERHEAD
}

/// `total` bytes shared by `services` rings.
fn share(total: u64, services: usize) -> usize {
    let each = total / services.max(1) as u64;
    usize::try_from(each).unwrap_or(usize::MAX)
}

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
    /// The bytes of the lines held, [`LINE_OVERHEAD`] each included
    /// (bounded by [`RingLimits`]).
    bytes: usize,
    /// The sequence number the next line gets, minus one.
    last: u64,
}

impl Ring {
    /// Gives back the slots of lines dropped when the limits shrank (a
    /// ring that only grows never has twice the slots it uses).
    fn shrink(&mut self) {
        let keep = self.lines.len().max(16);
        if self.lines.capacity() > 2 * keep {
            self.lines.shrink_to(keep);
        }
    }
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
    limits: Arc<RingLimits>,
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
    /// A ring of at most `capacity` lines and [`MAX_RING_BYTES`].
    pub fn new(capacity: usize) -> Logs {
        Logs::with_limits(RingLimits::new(capacity, MAX_RING_BYTES))
    }

    /// A ring that follows shared limits.
    pub fn with_limits(limits: Arc<RingLimits>) -> Logs {
        // Grows as lines come: a quiet service costs next to nothing.
        Logs {
            shared: Arc::default(),
            limits,
        }
    }

    /// Drops the oldest lines until the ring is within its limits, with
    /// room for `incoming` more bytes and one more line.
    fn make_room(&self, r: &mut Ring, incoming: usize) {
        let (lines, bytes) = (self.limits.lines(), self.limits.bytes());
        while r.lines.len() >= lines || (!r.lines.is_empty() && r.bytes + incoming > bytes) {
            if let Some(old) = r.lines.pop_front() {
                r.bytes -= held(&old.line);
            }
        }
        r.shrink();
    }

    /// Brings the ring within limits that have shrunk (a reload).
    pub fn trim(&self) {
        let mut r = self.ring();
        let (lines, bytes) = (self.limits.lines(), self.limits.bytes());
        while r.lines.len() > lines || r.bytes > bytes {
            match r.lines.pop_front() {
                Some(old) => r.bytes -= held(&old.line),
                None => break,
            }
        }
        r.shrink();
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.shared.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, stream: Stream, mut line: String) {
        {
            let mut r = self.ring();
            // A line larger than the whole ring is cut to fit it alone.
            let room = self.limits.bytes().saturating_sub(LINE_OVERHEAD);
            if line.len() > room {
                // Room for the marker (" … [", digits, " bytes cut]") and
                // the heap block's rounding.
                let mut keep = room.saturating_sub(64);
                while !line.is_char_boundary(keep) {
                    keep -= 1;
                }
                let cut = line.len() - keep;
                line.truncate(keep);
                line.push_str(&format!(" … [{cut} bytes cut]"));
            }
            // What the line holds is its capacity, not its length (a
            // marker pushed onto a line may have doubled it).
            line.shrink_to_fit();
            let cost = held(&line);
            self.make_room(&mut r, cost);
            r.bytes += cost;
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
        assert_eq!(kept.len(), MAX_RING_BYTES / (MAX_LINE + LINE_OVERHEAD));
        assert_eq!(kept.last().unwrap().seq, 200, "the newest stay");
        // A line larger than the whole budget is cut to fit it, alone.
        let logs = Logs::with_limits(RingLimits::new(10, 4096));
        logs.push(Stream::Stdout, "é".repeat(3000));
        let kept = logs.tail(10);
        assert_eq!(kept.len(), 1);
        let line = &kept[0].line;
        assert!(held(line) <= 4096, "{}", line.len());
        assert!(line.len() + LINE_OVERHEAD > 4000, "{}", line.len());
        let keep = line.find(" … [").unwrap();
        assert!(
            line.ends_with(&format!(" … [{} bytes cut]", 6000 - keep)),
            "{}",
            &line[keep..]
        );
        logs.push(Stream::Stdout, "z".into());
        assert_eq!(texts(&logs.tail(10)), vec!["z"], "the big one makes room");
    }

    #[test]
    fn a_line_costs_what_it_holds_not_its_length() {
        let logs = Logs::new(10);
        let mut roomy = String::with_capacity(8192);
        roomy.push('x');
        logs.push(Stream::Stdout, roomy);
        let r = logs.ring();
        assert_eq!(r.bytes, 32 + LINE_OVERHEAD, "one small allocation");
        assert!(
            r.bytes < 200,
            "{}: the spare capacity was given back",
            r.bytes
        );
    }

    #[test]
    fn rings_sharing_limits_hold_their_share_of_the_total() {
        let total = 64 * 1024;
        let limits = RingLimits::shared(1000, total, 8);
        assert_eq!(limits.bytes(), 8 * 1024);
        let rings: Vec<Logs> = (0..8).map(|_| Logs::with_limits(limits.clone())).collect();
        for ring in &rings {
            for i in 0..1000 {
                ring.push(Stream::Stdout, format!("{i:0100}"));
            }
        }
        let held: usize = rings.iter().map(|r| r.ring().bytes).sum();
        assert!(held <= total as usize, "{held} > {total}");
        assert!(held > total as usize * 9 / 10, "{held}: the share is used");
        for ring in &rings {
            let r = ring.ring();
            let text: usize = r.lines.iter().map(|l| super::held(&l.line)).sum();
            assert_eq!(text, r.bytes, "the count follows the lines");
            assert_eq!(r.lines.back().unwrap().seq, 1000, "the newest stay");
        }
        // A reload that adds services shrinks every share at once.
        limits.set_shared(1000, total, 16);
        rings.iter().for_each(Logs::trim);
        let held: usize = rings.iter().map(|r| r.ring().bytes).sum();
        assert!(held <= total as usize / 2, "{held}");
        // And fewer lines: the line limit holds too.
        limits.set(5, MAX_RING_BYTES);
        rings[0].trim();
        assert_eq!(rings[0].tail(100).len(), 5);
        // The share stays within its floor and ceiling.
        assert_eq!(RingLimits::shared(10, 1 << 40, 1).bytes(), MAX_RING_BYTES);
        assert_eq!(RingLimits::shared(10, 1000, 100).bytes(), MIN_RING_BYTES);
        assert_eq!(RingLimits::shared(0, 1000, 0).lines(), 1);
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
