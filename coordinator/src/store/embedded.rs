//! The embedded state store: a single-node durable store in one directory, the default backend.
//!
//! The whole state lives in memory ([`state`]), build rows kept prost-encoded (well under 2 KiB
//! per queued build with its indexes). Every change is applied under one lock and appended as a
//! record to the journal ([`journal`]); a call returns once its record is fsynced, and concurrent
//! calls share fsyncs ([`group_commit`]). Opening replays the journal and then compacts it into a
//! snapshot; it is compacted again whenever it outgrows the state fourfold (and
//! [`EmbeddedOptions::compact_after_bytes`]). Logs are files of their own ([`logs`]).
//!
//! Layout of the directory: `journal` (and `journal.tmp` while compacting), `logs/`, and `lock`,
//! which an open store holds locked so that a second coordinator cannot open the same directory.

mod group_commit;
mod journal;
mod logs;
mod state;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::ready;
use std::io;
use std::path::Path;

use bytes::Bytes;
use kiln_proto::v1::{CacheEntry, Project, StoredBuild};
use prost::Message;

use self::group_commit::Committer;
use self::journal::Journal;
use self::logs::Logs;
use self::state::State;
use super::{
    decode_each, decode_found, decode_row, page_builds, BuildFilter, Created, QueueChange,
    StateStore, StoreResult, StoredChunk, Updated,
};

/// Tuning for [`EmbeddedStore::open_with`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The journal is compacted once it is larger than this and four times the state's size.
    pub compact_after_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            compact_after_bytes: 64 << 20,
        }
    }
}

/// A [`StateStore`] in a local directory. Dropping it waits for queued journal writes and
/// releases the directory.
pub struct EmbeddedStore {
    // Fields drop in order: the writer stops before the directory lock is released.
    committer: Committer,
    logs: Logs,
    _lock: File,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with default options. Blocks while it replays and
    /// compacts the journal (about a second per 100,000 builds); async callers run it on the
    /// blocking pool, as [`crate::store::AnyStore::open`] does.
    pub fn open(dir: &Path) -> StoreResult<EmbeddedStore> {
        EmbeddedStore::open_with(dir, EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::open`] with options.
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> StoreResult<EmbeddedStore> {
        fs::create_dir_all(dir.join("logs"))?;
        let lock = lock_dir(dir)?;
        let mut state = State::default();
        journal::replay(dir, |record| state.apply(record))?;
        let journal = Journal::rewrite(dir, &state.snapshot())?;
        Ok(EmbeddedStore {
            committer: Committer::start(state, journal, options.compact_after_bytes)?,
            logs: Logs::new(dir.join("logs")),
            _lock: lock,
        })
    }

    /// Removes the logs of every build of the store in `dir`, which must not be open: the lock is
    /// taken meanwhile (an error of kind `WouldBlock` when the store is open, in this process or
    /// another). The builds stay, with empty logs. For stores whose logs nobody reads once the
    /// builds are over, like `kiln run`'s.
    pub fn remove_logs(dir: &Path) -> StoreResult<()> {
        let _lock = lock_dir(dir)?;
        match fs::remove_dir_all(dir.join("logs")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Takes the store directory's lock (an error of kind `WouldBlock` when someone holds it); it is
/// released when the file is closed, also when the process dies.
fn lock_dir(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    lock.try_lock().map_err(|err| match err {
        TryLockError::WouldBlock => io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "state store {} is open in another process; stop it or use another directory",
                dir.display()
            ),
        ),
        TryLockError::Error(err) => err,
    })?;
    Ok(lock)
}

impl StateStore for EmbeddedStore {
    async fn create_build(
        &self,
        build: StoredBuild,
        idempotency_token: Option<String>,
    ) -> StoreResult<Created> {
        self.committer
            .write(|state| state.create(build, idempotency_token))
            .await
    }

    async fn get_build(&self, id: &str) -> StoreResult<Option<StoredBuild>> {
        decode_found(self.committer.read(|state| state.row(id)))
    }

    async fn get_builds(&self, ids: &[String]) -> StoreResult<Vec<Option<StoredBuild>>> {
        let rows: Vec<_> = self
            .committer
            .read(|state| ids.iter().map(|id| state.row(id)).collect());
        decode_each(rows)
    }

    async fn list_builds(
        &self,
        filter: &BuildFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<StoredBuild>> {
        let before = match after {
            None => None,
            Some(id) => match self.committer.read(|state| state.seq_of(id)) {
                Some(seq) => Some(seq),
                None => return Ok(Vec::new()),
            },
        };
        let project = filter.project.as_deref();
        page_builds(filter, before, limit, |before, n| {
            let page = self
                .committer
                .read(|state| state.index_page(project, before, n));
            ready(
                page.into_iter()
                    .map(|(seq, row)| Ok((seq, Some(decode_row(&row)?))))
                    .collect(),
            )
        })
        .await
    }

    async fn update_build(&self, build: StoredBuild, change: QueueChange) -> StoreResult<Updated> {
        self.committer
            .write(|state| state.update(build, change))
            .await
    }

    async fn queue_head(&self, limit: usize) -> StoreResult<Vec<String>> {
        Ok(self.committer.read(|state| state.queue_head(limit)))
    }

    async fn queue_len(&self) -> StoreResult<u64> {
        Ok(self.committer.read(State::queue_len))
    }

    async fn queue_expired(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<String>> {
        Ok(self
            .committer
            .read(|state| state.queue_expired(now_ms, limit)))
    }

    async fn active_builds(&self) -> StoreResult<Vec<String>> {
        Ok(self.committer.read(State::active))
    }

    async fn put_project(&self, project: Project, create_only: bool) -> StoreResult<bool> {
        let row = Bytes::from(project.encode_to_vec());
        self.committer
            .write(|state| Ok(state.put_project(project.name, row, create_only)))
            .await
    }

    async fn get_project(&self, name: &str) -> StoreResult<Option<Project>> {
        decode_found(self.committer.read(|state| state.project(name)))
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let rows = self.committer.read(State::projects);
        rows.iter().map(|row| decode_row(row)).collect()
    }

    async fn delete_project(&self, name: &str) -> StoreResult<bool> {
        self.committer
            .write(|state| Ok(state.delete_project(name)))
            .await
    }

    async fn append_log(&self, build_id: &str, seq: u64, data: &[u8]) -> StoreResult<u64> {
        self.logs.append(build_id, seq, data).await
    }

    async fn read_log(
        &self,
        build_id: &str,
        from_seq: u64,
        max_chunks: usize,
    ) -> StoreResult<Vec<StoredChunk>> {
        self.logs.read(build_id, from_seq, max_chunks).await
    }

    async fn log_len(&self, build_id: &str) -> StoreResult<u64> {
        self.logs.len(build_id).await
    }

    async fn put_cache(&self, entry: CacheEntry, immutable: bool) -> StoreResult<bool> {
        self.committer
            .write(|state| Ok(state.put_cache(entry, immutable)))
            .await
    }

    async fn caches(&self, project: &str) -> StoreResult<Vec<CacheEntry>> {
        let rows = self.committer.read(|state| state.caches(project));
        rows.iter().map(|row| decode_row(row)).collect()
    }

    async fn touch_cache(&self, project: &str, slot: &str, used_ms: i64) -> StoreResult<()> {
        self.committer
            .write(|state| state.touch_cache(project, slot, used_ms))
            .await
    }

    async fn cache_projects(&self) -> StoreResult<Vec<String>> {
        Ok(self.committer.read(State::cache_projects))
    }

    async fn delete_caches(&self, project: &str, entries: &[CacheEntry]) -> StoreResult<u64> {
        self.committer
            .write(|state| state.delete_caches(project, entries))
            .await
    }
}
