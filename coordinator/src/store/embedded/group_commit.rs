//! Group commit: how a change to the embedded store becomes durable without one fsync per call.
//!
//! A change is applied to the in-memory [`State`] under one lock, and its journal record is
//! queued in the same critical section, so the journal's order is the order of application. A
//! writer thread takes everything queued, writes it with one `write`, fsyncs once (`sync_data`)
//! and only then answers each caller: a call returns after its record is on disk. While the
//! writer waits for the disk the next batch fills, so throughput grows with the number of
//! concurrent callers instead of being capped by the fsync latency.
//!
//! Readers see a change as soon as it is applied, slightly before it is durable. A crash in that
//! window loses the change and every later one (they are behind it in the journal), never one a
//! caller was told succeeded, and a change that depends on what a reader saw is itself journaled
//! after it.
//!
//! After a journal write fails the store refuses every further change: memory may now hold
//! changes the disk does not. Restarting replays the journal.
//!
//! Compaction runs on the writer thread between batches. The state is snapshotted under the lock
//! (rows are shared `Bytes`, so this copies pointers) and written out while callers go on
//! changing the state; their records, queued meanwhile, go to the new journal after the snapshot.
//! The snapshot may already hold some of those changes, and replaying a record over a state that
//! has it changes nothing (see `journal`).

use std::io;
use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use tokio::sync::oneshot;

use super::journal::{Journal, Record};
use super::state::State;
use crate::store::{StoreError, StoreResult};

/// What the writer tells a caller about its batch.
type Outcome = Result<(), Arc<io::Error>>;

/// The in-memory state and the writer thread that makes its changes durable.
pub(super) struct Committer {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Signalled when a record is queued or the store closes.
    wake: Condvar,
    compact_after: u64,
}

struct Inner {
    state: State,
    /// Framed records not yet written, and the callers waiting for them.
    batch: Vec<u8>,
    waiters: Vec<oneshot::Sender<Outcome>>,
    failed: Option<Arc<io::Error>>,
    closing: bool,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Nothing panics with the lock held half way through a change; take the state as it is.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(err: &io::Error) -> StoreError {
    StoreError::Io(io::Error::new(err.kind(), err.to_string()))
}

impl Committer {
    /// Starts the writer on `journal`, which must already hold `state`.
    pub(super) fn start(
        state: State,
        journal: Journal,
        compact_after: u64,
    ) -> io::Result<Committer> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                state,
                batch: Vec::new(),
                waiters: Vec::new(),
                failed: None,
                closing: false,
            }),
            wake: Condvar::new(),
            compact_after,
        });
        let writer = thread::Builder::new().name("kiln-journal".into()).spawn({
            let shared = shared.clone();
            move || write_batches(&shared, journal)
        })?;
        Ok(Committer {
            shared,
            writer: Some(writer),
        })
    }

    pub(super) fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&lock(&self.shared.inner).state)
    }

    /// Applies `change`; when it returns a record, waits until that record is on disk.
    pub(super) async fn write<T>(
        &self,
        change: impl FnOnce(&mut State) -> StoreResult<(T, Option<Record>)>,
    ) -> StoreResult<T> {
        let (out, durable) = {
            let mut inner = lock(&self.shared.inner);
            if let Some(err) = &inner.failed {
                return Err(io_error(err));
            }
            let (out, record) = change(&mut inner.state)?;
            let Some(record) = record else {
                return Ok(out);
            };
            record.write_framed(&mut inner.batch);
            let (done, durable) = oneshot::channel();
            inner.waiters.push(done);
            (out, durable)
        };
        self.shared.wake.notify_one();
        match durable.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(err)) => Err(io_error(&err)),
            Err(_) => Err(StoreError::Io(io::Error::other(
                "the journal writer stopped",
            ))),
        }
    }
}

impl Drop for Committer {
    /// Writes what is queued and stops the writer, so the directory can be opened again.
    fn drop(&mut self) {
        lock(&self.shared.inner).closing = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("journal writer panicked");
            }
        }
    }
}

/// The writer thread: one write and one fsync per batch, until the store closes.
fn write_batches(shared: &Shared, mut journal: Journal) {
    let mut spare = Vec::new();
    loop {
        let (batch, waiters) = {
            let mut inner = lock(&shared.inner);
            while inner.batch.is_empty() && !inner.closing {
                inner = shared
                    .wake
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if inner.batch.is_empty() {
                return;
            }
            (
                mem::replace(&mut inner.batch, spare),
                mem::take(&mut inner.waiters),
            )
        };
        let outcome = journal.append(&batch).map_err(Arc::new);
        if let Err(err) = &outcome {
            tracing::error!(error = %err, "journal write failed; refusing changes until restarted");
            lock(&shared.inner).failed = Some(err.clone());
        }
        for waiter in waiters {
            // A caller that went away needs no answer.
            let _ = waiter.send(outcome.clone());
        }
        spare = batch;
        spare.clear();
        if outcome.is_ok() && journal.wants_compaction(shared.compact_after) {
            let records = lock(&shared.inner).state.snapshot();
            match Journal::rewrite(journal.dir(), &records) {
                Ok(compacted) => journal = compacted,
                Err(err) => {
                    tracing::warn!(error = %err, "journal compaction failed; appending to the old journal");
                    journal.postpone_compaction();
                }
            }
        }
    }
}
