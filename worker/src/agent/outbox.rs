//! One build's log on its way to the coordinator: masked bytes from the phase runner are cut into
//! numbered chunks (from 0, no gaps) and kept until the coordinator acknowledges them.
//!
//! The phase runner writes through [`ProtocolSink`], a synchronous [`LogSink`]; the agent's session
//! takes what is ready to send with [`LogOutbox::take`] (every ~100 ms, or at once when a whole
//! chunk is waiting) and feeds acknowledgements back with [`LogOutbox::ack`]. After a reconnect
//! sending starts again from the first unacknowledged chunk.
//!
//! Backpressure: when more than `max_unacked` bytes are buffered (cut or not), `write` blocks until
//! acknowledgements free space, so a build whose log cannot be delivered stops being read, and its
//! commands stall on a full pipe, instead of filling the worker's memory. `write` is called from
//! async code (the runner's task), so it blocks with `tokio::task::block_in_place` on the
//! multi-thread runtime, which moves the worker thread's other tasks elsewhere first. On a
//! current-thread runtime blocking would stop the very task that delivers the acknowledgements, so
//! there the limit is not enforced. A stopped or abandoned build never blocks.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kiln_buildspec::routing::PhaseType;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::log::LogSink;

/// How chunks are cut and how much may wait for acknowledgement.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Largest chunk.
    pub chunk: usize,
    /// A partial chunk is sent once its first byte is this old.
    pub max_age: Duration,
    /// Bytes buffered (not yet acknowledged) before `write` waits.
    pub max_unacked: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            chunk: 64 * 1024,
            max_age: Duration::from_millis(100),
            max_unacked: 8 * 1024 * 1024,
        }
    }
}

/// What the session sends for a build, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Log { seq: u64, data: Vec<u8> },
    Phase(&'static str),
}

#[derive(Default)]
struct Inner {
    /// Bytes not cut into a chunk yet, and when the first of them arrived.
    pending: Vec<u8>,
    pending_since: Option<Instant>,
    /// Cut, unacknowledged chunks, oldest first: (seq, bytes).
    chunks: VecDeque<(u64, Vec<u8>)>,
    /// The seq the next cut chunk gets (= chunks cut so far).
    next_seq: u64,
    /// Every chunk below this is stored by the coordinator.
    acked: u64,
    /// The next chunk to send on the current connection.
    send_from: u64,
    /// Bytes in `pending` and `chunks`.
    buffered: usize,
    /// Phase starts not sent yet, each after the chunks below its seq.
    phases: VecDeque<(u64, &'static str)>,
    /// The build's log is complete: what is pending is cut at once.
    sealed: bool,
    /// The build was abandoned: everything is dropped and writes are discarded.
    closed: bool,
}

impl Inner {
    fn cut(&mut self, limits: &OutboxLimits, now: Instant, force: bool) {
        while self.pending.len() >= limits.chunk {
            let rest = self.pending.split_off(limits.chunk);
            let chunk = std::mem::replace(&mut self.pending, rest);
            self.push_chunk(chunk);
            self.pending_since = (!self.pending.is_empty()).then_some(now);
        }
        let old = self
            .pending_since
            .is_some_and(|t| now.saturating_duration_since(t) >= limits.max_age);
        if !self.pending.is_empty() && (force || self.sealed || old) {
            let chunk = std::mem::take(&mut self.pending);
            self.push_chunk(chunk);
            self.pending_since = None;
        }
    }

    fn push_chunk(&mut self, chunk: Vec<u8>) {
        self.chunks.push_back((self.next_seq, chunk));
        self.next_seq += 1;
    }
}

/// One build's log buffer (see the module docs). Shared by the sink and the session.
pub struct LogOutbox {
    inner: Mutex<Inner>,
    /// Signalled when acknowledgements free space or the outbox closes.
    space: Condvar,
    /// Wakes the session when a whole chunk is ready.
    ready: Arc<Notify>,
    /// The build was stopped: its writes must not wait any more.
    stop: CancellationToken,
    limits: OutboxLimits,
}

impl LogOutbox {
    pub fn new(
        limits: OutboxLimits,
        ready: Arc<Notify>,
        stop: CancellationToken,
    ) -> Arc<LogOutbox> {
        Arc::new(LogOutbox {
            inner: Mutex::new(Inner::default()),
            space: Condvar::new(),
            ready,
            stop,
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is one assignment
        // or push), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends log bytes, waiting while the buffer is over its limit (see the module docs).
    pub fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.buffered >= self.limits.max_unacked && !inner.closed && may_block() {
            inner = tokio::task::block_in_place(|| self.wait_for_space(inner));
        }
        if inner.closed {
            return;
        }
        inner.pending.extend_from_slice(bytes);
        inner.buffered += bytes.len();
        if inner.pending_since.is_none() {
            inner.pending_since = Some(Instant::now());
        }
        let whole_chunk = inner.pending.len() >= self.limits.chunk;
        drop(inner);
        if whole_chunk {
            self.ready.notify_one();
        }
    }

    /// Waits until acknowledgements bring the buffer under its limit, the outbox closes or the
    /// build is stopped (checked every 200 ms: stopping does not signal the condvar).
    fn wait_for_space<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        while inner.buffered >= self.limits.max_unacked && !inner.closed {
            if self.stop.is_cancelled() {
                break;
            }
            inner = match self.space.wait_timeout(inner, Duration::from_millis(200)) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        inner
    }

    /// A phase starts: what is pending goes out first, then `PhaseStarted`.
    pub fn phase(&self, phase: PhaseType) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        inner.cut(&self.limits, Instant::now(), true);
        let at = inner.next_seq;
        inner.phases.push_back((at, phase.as_str()));
        drop(inner);
        self.ready.notify_one();
    }

    /// The log is complete: cuts what is pending and returns the number of chunks in all.
    pub fn seal(&self) -> u64 {
        let mut inner = self.lock();
        inner.sealed = true;
        inner.cut(&self.limits, Instant::now(), true);
        let chunks = inner.next_seq;
        drop(inner);
        self.ready.notify_one();
        chunks
    }

    /// Everything ready to go on the current connection, in order; each chunk is taken once per
    /// connection (see [`LogOutbox::rewind`]).
    pub fn take(&self, now: Instant) -> Vec<Outgoing> {
        let mut inner = self.lock();
        if inner.closed {
            return Vec::new();
        }
        inner.cut(&self.limits, now, false);
        let mut out = Vec::new();
        let from = inner.send_from;
        let inner = &mut *inner;
        for (seq, data) in inner.chunks.iter().filter(|(seq, _)| *seq >= from) {
            while let Some(&(at, phase)) = inner.phases.front() {
                if at > *seq {
                    break;
                }
                out.push(Outgoing::Phase(phase));
                inner.phases.pop_front();
            }
            out.push(Outgoing::Log {
                seq: *seq,
                data: data.clone(),
            });
        }
        while let Some((_, phase)) = inner.phases.pop_front() {
            out.push(Outgoing::Phase(phase));
        }
        inner.send_from = inner.next_seq;
        out
    }

    /// The coordinator stored every chunk below `next_seq`. Stale or impossible values are
    /// ignored (an ack can never name a chunk that was not cut).
    pub fn ack(&self, next_seq: u64) {
        let mut inner = self.lock();
        if next_seq <= inner.acked || next_seq > inner.next_seq {
            return;
        }
        inner.acked = next_seq;
        while inner.chunks.front().is_some_and(|(seq, _)| *seq < next_seq) {
            if let Some((_, data)) = inner.chunks.pop_front() {
                inner.buffered -= data.len();
            }
        }
        inner.send_from = inner.send_from.max(next_seq);
        drop(inner);
        self.space.notify_all();
    }

    /// A new connection: unacknowledged chunks go out again. With the coordinator's `next_seq`
    /// (a resumed build), everything below it counts as acknowledged first.
    pub fn rewind(&self, next_seq: Option<u64>) {
        if let Some(n) = next_seq {
            self.ack(n);
        }
        let mut inner = self.lock();
        inner.send_from = inner.acked;
    }

    /// Sealed, and every chunk acknowledged.
    pub fn all_acked(&self) -> bool {
        let inner = self.lock();
        inner.sealed && inner.acked == inner.next_seq
    }

    /// The build was abandoned: drops the buffer and wakes a waiting writer for good.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.chunks.clear();
        inner.pending.clear();
        inner.phases.clear();
        inner.buffered = 0;
        drop(inner);
        self.space.notify_all();
    }
}

/// Blocking is only safe on a multi-thread runtime (see the module docs); outside any runtime
/// (a plain thread) it is safe too.
fn may_block() -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
        Err(_) => true,
    }
}

/// The phase runner's sink for a build run by the agent.
pub struct ProtocolSink(pub Arc<LogOutbox>);

impl LogSink for ProtocolSink {
    fn phase(&mut self, phase: PhaseType) {
        self.0.phase(phase);
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(chunk: usize, max_unacked: usize) -> Arc<LogOutbox> {
        let limits = OutboxLimits {
            chunk,
            max_age: Duration::from_millis(100),
            max_unacked,
        };
        LogOutbox::new(limits, Arc::new(Notify::new()), CancellationToken::new())
    }

    fn seqs(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outgoing::Log { seq, data } => format!("{seq}:{}", String::from_utf8_lossy(data)),
                Outgoing::Phase(p) => format!("<{p}>"),
            })
            .collect()
    }

    #[test]
    fn chunks_are_cut_by_size_and_by_age() {
        let o = outbox(4, 1 << 20);
        let t0 = Instant::now();
        o.write(b"abcdefghij");
        // Two whole chunks at once; the rest waits for its age.
        assert_eq!(seqs(&o.take(t0)), ["0:abcd", "1:efgh"]);
        assert!(o.take(t0).is_empty(), "nothing is sent twice");
        let later = Instant::now() + Duration::from_millis(150);
        assert_eq!(seqs(&o.take(later)), ["2:ij"]);
        o.write(b"k");
        assert_eq!(o.seal(), 4);
        assert_eq!(seqs(&o.take(Instant::now())), ["3:k"]);
    }

    #[test]
    fn phases_follow_the_output_before_them() {
        let o = outbox(64, 1 << 20);
        o.phase(PhaseType::Provisioning);
        o.write(b"one");
        o.phase(PhaseType::Build);
        o.write(b"two");
        o.seal();
        assert_eq!(
            seqs(&o.take(Instant::now())),
            ["<PROVISIONING>", "0:one", "<BUILD>", "1:two"]
        );
    }

    #[test]
    fn acks_release_chunks_and_a_reconnect_resends_the_rest() {
        let o = outbox(2, 1 << 20);
        o.write(b"aabbcc");
        o.seal();
        assert_eq!(seqs(&o.take(Instant::now())), ["0:aa", "1:bb", "2:cc"]);
        o.ack(1);
        o.ack(0); // stale
        o.ack(9); // impossible
        assert!(!o.all_acked());
        o.rewind(None);
        assert_eq!(seqs(&o.take(Instant::now())), ["1:bb", "2:cc"]);
        // The coordinator had chunk 1 after all.
        o.rewind(Some(2));
        assert_eq!(seqs(&o.take(Instant::now())), ["2:cc"]);
        o.ack(3);
        assert!(o.all_acked());
        o.rewind(None);
        assert!(o.take(Instant::now()).is_empty());
    }

    #[test]
    fn a_full_buffer_blocks_the_writer_until_an_ack() {
        let o = outbox(4, 8);
        o.write(b"12345678");
        let writer = {
            let o = o.clone();
            std::thread::spawn(move || o.write(b"more"))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!writer.is_finished(), "the writer waits for space");
        assert_eq!(seqs(&o.take(Instant::now())), ["0:1234", "1:5678"]);
        o.ack(1);
        writer.join().expect("writer");
        o.seal();
        assert_eq!(seqs(&o.take(Instant::now())), ["2:more"]);
    }

    #[test]
    fn stopping_or_closing_releases_a_blocked_writer() {
        for how in ["stop", "close"] {
            let stop = CancellationToken::new();
            let limits = OutboxLimits {
                chunk: 4,
                max_age: Duration::ZERO,
                max_unacked: 4,
            };
            let o = LogOutbox::new(limits, Arc::new(Notify::new()), stop.clone());
            o.write(b"full");
            let writer = {
                let o = o.clone();
                std::thread::spawn(move || o.write(b"x"))
            };
            std::thread::sleep(Duration::from_millis(50));
            assert!(!writer.is_finished(), "{how}: the writer waits");
            match how {
                "stop" => stop.cancel(),
                _ => o.close(),
            }
            writer.join().expect("writer");
        }
    }
}
