//! Build caches (semantics §6): what a build's `cache.paths` select comes out of the container as
//! one tar with absolute paths (modes, owners, times and symlinks kept), written by the
//! container's own `tar` (sorted by name where it can) and split as it streams into segments at
//! content-defined file boundaries. Each segment is a blob named by its sha256. A save after a
//! restore hashes each segment and asks the store which it lacks: it uploads only those, so
//! saving unchanged files uploads nothing. A save with nothing restored before it (a miss) has
//! little to share, so it sends every segment as it comes, unhashed, and takes the digest the
//! store computed (the store still keeps each content once). Restoring checks that every segment
//! is there, then streams them, each checked against its digest by the store, into `tar -x` in
//! the container at `/`.
//!
//! After a restore the worker lists what the paths select (type, mode, owner, size, modification
//! time and path of each entry, with one `find` in the container); a save whose listing is the
//! same reuses the restored entry's segments without reading a file.
//!
//! Where entries and blobs live is a [`CacheStore`]'s business (the coordinator, for a worker).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use kiln_buildspec::glob::Pattern;
use kiln_proto::v1::CacheEntry;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::docker::{Engine, EngineError, ExecChunk, ExecSpec, ROOT};
use crate::source::SRC_DIR;

/// A segment ends at the first file boundary past this size that the boundary hash picks...
const MIN_SEGMENT: usize = 4 << 20;
/// ...and is cut here regardless (inside a big file).
pub const MAX_SEGMENT: usize = 16 << 20;
/// One file boundary in this many ends a segment once it has `MIN_SEGMENT` bytes.
const CUT_ONE_IN: u64 = 4;
/// Segments whose presence is asked in one call, and their bytes at most.
const BATCH: usize = 32;
const BATCH_BYTES: usize = 64 << 20;
/// Segments uploaded, or fetched ahead while restoring, at once.
const PARALLEL: usize = 4;
/// Pieces of a restore's segments (a MiB or so each) that the parser listing its files may
/// have yet to read.
const TEED: usize = 64;

/// How the save script names a base that is not in the container (a macro, so the script's text
/// can hold it too).
macro_rules! missing {
    () => {
        "kiln-cache-missing "
    };
}
const MISSING: &str = missing!();
/// Writes one tar of the bases given (absolute paths) that exist, named relative to `/`, and
/// names the others on stderr. Entries come sorted by name where `tar` can (GNU tar), so the same
/// files make the same segments whatever order the directories list them in.
const SAVE_SCRIPT: &str = concat!(
    r#"command -v tar >/dev/null 2>&1 || exit 127
for b; do
  shift
  if [ -e "$b" ] || [ -L "$b" ]; then set -- "$@" "${b#/}"; else echo ""#,
    missing!(),
    r#"$b" >&2; fi
done
[ $# -gt 0 ] || exit 0
if tar --sort=name -cf /dev/null /dev/null 2>/dev/null; then
  exec tar --sort=name -C / -cf - -- "$@"
fi
exec tar -C / -cf - -- "$@""#
);
/// Extracts a tar at `/`, keeping owners and modes.
const RESTORE_COMMAND: [&str; 5] = ["tar", "-C", "/", "-xpf", "-"];

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("the cache store: {0}")]
    Store(String),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("cache path {path:?}: {reason}")]
    Path { path: String, reason: String },
    #[error("reading the cached files: {0}")]
    Io(#[from] io::Error),
    #[error("{doing}: {reason}")]
    Tar { doing: &'static str, reason: String },
    #[error("{cause} ({undone})")]
    Incomplete {
        cause: Box<CacheError>,
        undone: String,
    },
}

/// Where cache entries and their segments live.
#[tonic::async_trait]
pub trait CacheStore: Send + Sync + std::fmt::Debug {
    /// The entry with `key` exactly (empty: the rolling cache), else the newest whose key starts
    /// with one of `prefixes` (tried in order), among entries with these `paths`. `restore`:
    /// for a restore (the store counts those), not the check before a keyed save.
    async fn lookup(
        &self,
        paths: &[String],
        key: &str,
        prefixes: &[String],
        restore: bool,
    ) -> Result<Option<CacheEntry>, CacheError>;
    /// Which of these blobs the store holds, in order.
    async fn present(&self, digests: &[String]) -> Result<Vec<bool>, CacheError>;
    /// Stores a segment; returns the digest the store computed.
    async fn upload(&self, segment: Bytes) -> Result<String, CacheError>;
    /// A segment, whole, in the pieces it came in. The store checks it against its digest: a
    /// damaged one is an error, and none of it is returned.
    async fn fetch(&self, digest: &str) -> Result<Vec<Bytes>, CacheError>;
    /// Records an entry whose segments are stored; false when a keyed entry exists already.
    async fn save(&self, entry: CacheEntry) -> Result<bool, CacheError>;
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// What a save did.
#[derive(Debug)]
pub struct Saved {
    pub entry: CacheEntry,
    /// Segments (and their bytes) that were not in the store yet.
    pub uploaded_segments: usize,
    pub uploaded_bytes: u64,
    /// Cache paths with nothing in the container, and entries of kinds a cache does not keep.
    pub notes: Vec<String>,
    /// Nothing changed since the restore: the restored entry's segments, no file read.
    pub unchanged: bool,
}

/// A restored cache, and the listing of what its paths selected just after.
#[derive(Debug)]
pub struct Restored {
    pub entry: CacheEntry,
    /// `None` when the container cannot list (no GNU `find`): the next save reads everything.
    listing: Option<String>,
}

/// Saves what `paths` select in the container under `key` (empty: the rolling cache). With
/// `since`, the cache restored earlier: when nothing changed since, its segments are reused.
pub async fn save(
    engine: &Engine,
    container: &str,
    store: Arc<dyn CacheStore>,
    paths: &[String],
    key: &str,
    since: Option<&Restored>,
) -> Result<Saved, CacheError> {
    let selector = Selector::new(paths)?;
    if let Some(restored) = since.filter(|r| r.entry.paths == paths) {
        let now = listing(engine, container, &selector).await;
        if now.is_some() && now == restored.listing {
            let entry = CacheEntry {
                paths: paths.to_vec(),
                key: key.to_string(),
                segments: restored.entry.segments.clone(),
                size: restored.entry.size,
                files: restored.entry.files,
                ..Default::default()
            };
            return Ok(Saved {
                entry,
                uploaded_segments: 0,
                uploaded_bytes: 0,
                notes: Vec::new(),
                unchanged: true,
            });
        }
    }
    // One tar of the bases that exist, from the container's own `tar` (as `tar -c | zstd`
    // would), read as it comes: no copy on disk.
    let mut cmd = vec![
        "sh".to_string(),
        "-c".into(),
        SAVE_SCRIPT.into(),
        "sh".into(),
    ];
    cmd.extend(selector.bases.iter().cloned());
    let spec = ExecSpec {
        cmd,
        working_dir: "/".into(),
        user: ROOT.into(),
    };
    let (id, output) = engine.exec(container, spec).await?;
    let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
    let errors = stderr.clone();
    let stdout = output.filter_map(move |chunk| {
        std::future::ready(match chunk {
            Ok(ExecChunk::Stdout(data)) => Some(Ok(data)),
            Ok(ExecChunk::Stderr(data)) => {
                lock(&errors).extend_from_slice(&data);
                None
            }
            Err(e) => Some(Err(io::Error::other(e))),
        })
    });
    let input = SyncIoBridge::new(StreamReader::new(stdout));
    let (tx, rx) = mpsc::channel(PARALLEL);
    let writer = tokio::task::spawn_blocking(move || write_tar(&selector, input, tx));
    let uploaded = upload_segments(store, rx, since.is_some()).await;
    let written = writer.await.map_err(|e| io::Error::other(e.to_string()))?;
    // A store that failed ended the upload, the writer, then tar: its error says why.
    let uploaded = uploaded?;
    let code = engine.exec_exit_code(&id).await?;
    let stderr = String::from_utf8_lossy(&lock(&stderr)).into_owned();
    let mut notes = Vec::new();
    for line in stderr.lines() {
        match line.strip_prefix(MISSING) {
            Some(base) => notes.push(format!("skipped nothing at {base}")),
            None => notes.push(line.to_string()),
        }
    }
    // tar's status 1: files changed while they were read (what it read is still a whole tar).
    if !matches!(code, Some(0 | 1)) {
        return Err(tar_failed("reading the cached files", code, &notes));
    }
    // A writer that failed ended the upload before its last batch.
    let Some((segments, uploaded_segments, uploaded_bytes)) = uploaded else {
        return Err(written.err().unwrap_or_else(|| {
            CacheError::Store("the cache tar ended before it was whole".into())
        }));
    };
    let (size, files, skipped) = written?;
    notes.extend(skipped);
    let entry = CacheEntry {
        paths: paths.to_vec(),
        key: key.to_string(),
        segments,
        size,
        files,
        ..Default::default()
    };
    Ok(Saved {
        entry,
        uploaded_segments,
        uploaded_bytes,
        notes,
        unchanged: false,
    })
}

/// The sha256 of what the selector selects in the container, one record per entry (type, mode,
/// owner, size, modification time, path, link target), sorted; `None` when it cannot be listed.
async fn listing(engine: &Engine, container: &str, selector: &Selector) -> Option<String> {
    let script = "set -e; for b; do if [ -e \"$b\" ] || [ -L \"$b\" ]; then find \"$b\" -printf '%y %m %U %G %s %T@ %p\\0%l\\0'; fi; done";
    let mut cmd = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
    cmd.extend(selector.bases.iter().cloned());
    let spec = ExecSpec {
        cmd,
        working_dir: "/".into(),
        user: ROOT.into(),
    };
    let (id, mut output) = engine.exec(container, spec).await.ok()?;
    let mut out = Vec::new();
    while let Some(chunk) = output.next().await {
        if let ExecChunk::Stdout(data) = chunk.ok()? {
            out.extend_from_slice(&data);
        }
    }
    if engine.exec_exit_code(&id).await.ok()? != Some(0) {
        return None;
    }
    let fields: Vec<&[u8]> = out.split(|&b| b == 0).collect();
    let mut records: Vec<(&[u8], &[u8])> = fields
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .filter(|(record, _)| {
            let path = record.splitn(7, |&b| b == b' ').nth(6).unwrap_or_default();
            selector.keeps(&String::from_utf8_lossy(path))
        })
        .collect();
    records.sort_unstable();
    let mut hasher = Sha256::new();
    for (record, link) in records {
        hasher.update(record);
        hasher.update([0]);
        hasher.update(link);
        hasher.update([0]);
    }
    Some(format!("{:x}", hasher.finalize()))
}

/// Restores `entry` into the container: checks that the store holds every segment, then streams
/// them, each checked against its digest by the store (the next ones fetched meanwhile), into
/// the container's `tar -x`. A segment that cannot be had after all (a store that went down, a damaged
/// blob) ends the restore, and the files it had put back are removed again: a cache is restored
/// whole or not at all. With `list` (a save may follow), then lists what its paths select (see
/// [`Restored`]).
pub async fn restore(
    engine: &Engine,
    container: &str,
    store: Arc<dyn CacheStore>,
    entry: CacheEntry,
    list: bool,
) -> Result<Restored, CacheError> {
    let selector = Selector::new(&entry.paths)?;
    for batch in entry.segments.chunks(BATCH) {
        let present = store.present(batch).await?;
        if let Some(digest) = batch
            .iter()
            .zip(present.into_iter().chain(std::iter::repeat(false)))
            .find_map(|(digest, present)| (!present).then_some(digest))
        {
            return Err(CacheError::Store(format!(
                "cache segment {digest} is no longer in the store"
            )));
        }
    }
    // The container's own `tar` extracts it (as `zstd -dc | tar -x` would).
    let spec = ExecSpec {
        cmd: RESTORE_COMMAND.map(String::from).to_vec(),
        working_dir: "/".into(),
        user: ROOT.into(),
    };
    let (id, output, mut input) = engine.exec_with_input(container, spec).await?;
    // What the tar holds, read beside it: the files to take out again if it stops short.
    let (tee, teed) = mpsc::channel::<Bytes>(TEED);
    let names = tokio::task::spawn_blocking(move || entry_names(Teed::new(teed)));
    let feed = async {
        let mut segments = futures_util::stream::iter(entry.segments.clone())
            .map(|digest| {
                let store = store.clone();
                async move { store.fetch(&digest).await }
            })
            .buffered(PARALLEL);
        let mut failed = None;
        'segments: while let Some(pieces) = segments.next().await {
            let pieces = match pieces {
                Ok(pieces) => pieces,
                Err(e) => {
                    failed = Some(Fed::Store(e));
                    break;
                }
            };
            for piece in pieces {
                // A parser that stopped (at a malformed entry) lists what it read so far.
                let _ = tee.send(piece.clone()).await;
                if let Err(e) = input.write_all(&piece).await {
                    // tar stopped reading: its status says why.
                    failed = Some(Fed::Tar(e));
                    break 'segments;
                }
            }
        }
        drop(tee);
        match (input.shutdown().await, failed) {
            (_, Some(failed)) => Err(failed),
            (Err(e), None) => Err(Fed::Tar(e)),
            (Ok(()), None) => Ok(()),
        }
    };
    let stderr = output.try_fold(Vec::new(), |mut stderr, chunk| {
        if let ExecChunk::Stderr(data) = chunk {
            stderr.extend_from_slice(&data);
        }
        std::future::ready(Ok(stderr))
    });
    let (fed, stderr) = tokio::join!(feed, stderr);
    let code = engine.exec_exit_code(&id).await?;
    let names = names.await.map_err(|e| io::Error::other(e.to_string()))?;
    if let Err(Fed::Store(cause)) = fed {
        let removed = remove(engine, container, &names).await;
        return Err(CacheError::Incomplete {
            cause: Box::new(cause),
            undone: match removed {
                Ok(()) => format!("the {} files put back before it were removed", names.len()),
                Err(e) => format!("removing the files put back before it failed: {e}"),
            },
        });
    }
    if code != Some(0) {
        let stderr = String::from_utf8_lossy(&stderr?).into_owned();
        let lines: Vec<String> = stderr.lines().map(String::from).collect();
        return Err(tar_failed("restoring the cache", code, &lines));
    }
    if let Err(Fed::Tar(e)) = fed {
        return Err(e.into());
    }
    let listing = match list {
        true => listing(engine, container, &selector).await,
        false => None,
    };
    Ok(Restored { entry, listing })
}

/// Why feeding a restore's tar stopped.
enum Fed {
    /// A segment could not be had.
    Store(CacheError),
    /// `tar` in the container stopped reading.
    Tar(io::Error),
}

/// The names (relative to `/`) of the files, links and other non-directories in a tar, as far as
/// it can be read (the files' contents are skipped, not read).
fn entry_names(input: impl Read + Seek) -> Vec<String> {
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(input);
    let Ok(entries) = archive.entries_with_seek() else {
        return names;
    };
    for entry in entries {
        let Ok(entry) = entry else { break };
        if entry.header().entry_type() == tar::EntryType::Directory {
            continue;
        }
        if let Ok(path) = entry.path() {
            names.push(path.to_string_lossy().into_owned());
        }
    }
    names
}

/// A restore's segments, in order, as the parser beside it reads them (on a blocking thread):
/// what it skips (forward only, as tar skips a file's content) is dropped without a copy.
struct Teed {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    pos: u64,
}

impl Teed {
    fn new(rx: mpsc::Receiver<Bytes>) -> Teed {
        Teed {
            rx,
            chunk: Bytes::new(),
            pos: 0,
        }
    }

    /// Takes up to `n` bytes from the current segment (the next one when it is used up); empty
    /// at the end.
    fn take(&mut self, n: usize) -> Bytes {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Bytes::new(),
            }
        }
        let taken = self.chunk.split_to(n.min(self.chunk.len()));
        self.pos += taken.len() as u64;
        taken
    }
}

impl Read for Teed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let taken = self.take(buf.len());
        buf[..taken.len()].copy_from_slice(&taken);
        Ok(taken.len())
    }
}

impl Seek for Teed {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let backward = || {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "a restore's tar is only skipped forward",
            )
        };
        let SeekFrom::Current(ahead) = to else {
            return Err(backward());
        };
        let mut ahead = u64::try_from(ahead).map_err(|_| backward())?;
        // Past the end, the next read finds nothing: the archive ends there.
        while ahead > 0 {
            let skipped = self.take(usize::try_from(ahead).unwrap_or(usize::MAX));
            if skipped.is_empty() {
                break;
            }
            ahead -= skipped.len() as u64;
        }
        Ok(self.pos)
    }
}

/// Removes these files (relative to `/`) from the container, with `rm -f` in batches that keep
/// each command line short.
async fn remove(engine: &Engine, container: &str, names: &[String]) -> Result<(), CacheError> {
    const ARGS_BYTES: usize = 64 << 10;
    let mut rest = names;
    while !rest.is_empty() {
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|name| {
                bytes += name.len() + 1;
                bytes <= ARGS_BYTES
            })
            .count()
            .max(1);
        let (batch, next) = rest.split_at(n);
        rest = next;
        let mut cmd = vec!["rm".to_string(), "-f".into(), "--".into()];
        cmd.extend(batch.iter().cloned());
        let spec = ExecSpec {
            cmd,
            working_dir: "/".into(),
            user: ROOT.into(),
        };
        let (id, output) = engine.exec(container, spec).await?;
        let said: Vec<ExecChunk> = output.try_collect().await?;
        let code = engine.exec_exit_code(&id).await?;
        if code != Some(0) {
            let said: Vec<String> = said
                .iter()
                .map(|chunk| match chunk {
                    ExecChunk::Stdout(data) | ExecChunk::Stderr(data) => {
                        String::from_utf8_lossy(data).trim().to_string()
                    }
                })
                .collect();
            return Err(CacheError::Tar {
                doing: "removing a partly restored cache",
                reason: format!("rm failed (status {code:?}): {}", said.join("; ")),
            });
        }
    }
    Ok(())
}

/// Which container paths the cache keeps.
struct Selector {
    patterns: Vec<(Pattern, bool)>,
    /// Paths named without wildcards: everything below them is kept too.
    literal: Vec<String>,
    /// Directories (or files) to copy out of the container: no one inside another.
    bases: Vec<String>,
}

impl Selector {
    fn new(paths: &[String]) -> Result<Selector, CacheError> {
        let mut patterns = Vec::new();
        let mut literal = Vec::new();
        let mut bases: Vec<String> = Vec::new();
        for path in paths {
            let bad = |reason: String| CacheError::Path {
                path: path.clone(),
                reason,
            };
            let pattern = Pattern::new(path).map_err(|e| bad(e.to_string()))?;
            let relative = !pattern.is_absolute();
            let absolute = |p: &str| match relative {
                true if p.is_empty() => SRC_DIR.to_string(),
                true => format!("{SRC_DIR}/{p}"),
                false => p.to_string(),
            };
            for prefix in pattern.literal_prefixes() {
                let base = absolute(&prefix);
                if base == "/" || base.split('/').any(|c| c == "..") {
                    return Err(bad(
                        "a cache path must name a directory below / without `..` (for example /root/.m2/**/*)".into(),
                    ));
                }
                bases.push(base);
            }
            if let Some(lit) = pattern.literal_path() {
                literal.push(absolute(lit));
            }
            patterns.push((pattern, relative));
        }
        bases.sort();
        bases.dedup();
        let outer: Vec<String> = bases
            .iter()
            .filter(|b| !bases.iter().any(|o| o != *b && within(b, o)))
            .cloned()
            .collect();
        Ok(Selector {
            patterns,
            literal,
            bases: outer,
        })
    }

    /// What goes into the tar: what the paths select, and the directories copied out (so
    /// `node_modules` of `node_modules/**/*` comes back with its owner and mode).
    fn keeps(&self, absolute: &str) -> bool {
        self.bases.iter().any(|b| b == absolute) || self.wants(absolute)
    }

    fn wants(&self, absolute: &str) -> bool {
        if self.literal.iter().any(|l| within(absolute, l)) {
            return true;
        }
        let relative = absolute
            .strip_prefix(SRC_DIR)
            .and_then(|rest| rest.strip_prefix('/'));
        self.patterns
            .iter()
            .any(|(p, is_relative)| match is_relative {
                true => relative.is_some_and(|r| p.matches(r)),
                false => p.matches(absolute),
            })
    }
}

/// Whether `path` is `dir` or below it.
fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The container's `tar` failed (`code`, when it ended): what it said, or why it cannot run.
fn tar_failed(doing: &'static str, code: Option<i64>, stderr: &[String]) -> CacheError {
    let reason = match code {
        Some(126 | 127) => {
            "the build image has no `tar` command, which caches need (add tar to the image)"
                .to_string()
        }
        Some(code) => format!(
            "tar in the container failed (status {code}): {}",
            stderr.join("; ")
        ),
        None => "tar in the container did not end".to_string(),
    };
    CacheError::Tar { doing, reason }
}

/// A segment of the cache tar (the `index`th), and its digest.
struct Segment {
    index: usize,
    digest: String,
    data: Bytes,
}

/// Cuts the tar into segments as it is written and hands them to the uploader; `None` after the
/// last one says the tar is whole. Each segment is written in place, in a buffer that holds
/// [`MAX_SEGMENT`] bytes.
struct Segmenter {
    buf: Vec<u8>,
    /// Bytes of the tar so far.
    written: u64,
    tx: mpsc::Sender<Option<Bytes>>,
}

impl Segmenter {
    fn new(tx: mpsc::Sender<Option<Bytes>>) -> Segmenter {
        Segmenter {
            buf: Vec::with_capacity(MAX_SEGMENT),
            written: 0,
            tx,
        }
    }

    /// Hands the segment so far to the uploader.
    fn cut(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_SEGMENT));
        self.tx
            .blocking_send(Some(Bytes::from(data)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cache upload stopped"))
    }

    /// Room left in the segment, after cutting a full one.
    fn room(&mut self) -> io::Result<usize> {
        if self.buf.len() == MAX_SEGMENT {
            self.cut()?;
        }
        Ok(MAX_SEGMENT - self.buf.len())
    }

    /// Reads `size` bytes of a file's content from `input` straight into the segments, then the
    /// padding that ends its tar entry.
    fn read_content(&mut self, input: &mut impl Read, size: u64) -> io::Result<()> {
        let mut left = size;
        while left > 0 {
            let want = left.min(self.room()? as u64);
            let n = input.by_ref().take(want).read_to_end(&mut self.buf)?;
            if n as u64 != want {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.written += want;
            left -= want;
        }
        let padding = (512 - size % 512) % 512;
        self.write_all(&[0; 512][..padding as usize])
    }

    /// After each file: ends the segment here when the path's hash picks this boundary, so the
    /// same files cut the same segments wherever they start.
    fn boundary(&mut self, path: &str) -> io::Result<()> {
        if self.buf.len() >= MIN_SEGMENT && fnv1a(path.as_bytes()).is_multiple_of(CUT_ONE_IN) {
            self.cut()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.cut()?;
        }
        self.tx
            .blocking_send(None)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cache upload stopped"))
    }
}

impl Write for Segmenter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.room()?.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes the selected entries of the container's tar (paths relative to `/`) as one tar with
/// absolute paths (without the leading `/`), read to its end. Returns its size, the files in it,
/// and notes on what was left out.
fn write_tar(
    selector: &Selector,
    input: impl Read,
    tx: mpsc::Sender<Option<Bytes>>,
) -> Result<(u64, u64, Vec<String>), CacheError> {
    let mut out = tar::Builder::new(Segmenter::new(tx));
    let mut files = 0;
    let mut skipped = Vec::new();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let absolute = format!("/{name}");
        if !selector.keeps(&absolute) {
            continue;
        }
        let source = entry.header();
        let kind = source.entry_type();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(source.mode()?);
        header.set_uid(source.uid()?);
        header.set_gid(source.gid()?);
        header.set_mtime(source.mtime()?);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                header.set_size(size);
                // With no data, `append_data` writes the header (after a long-name entry when
                // the name needs one) and no padding; the content follows, read in place.
                out.append_data(&mut header, &name, io::empty())?;
                out.get_mut().read_content(&mut entry, size)?;
                files += 1;
            }
            tar::EntryType::Directory => {
                header.set_size(0);
                out.append_data(&mut header, &name, io::empty())?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.unwrap_or_default().into_owned();
                header.set_size(0);
                out.append_link(&mut header, &name, target)?;
                files += 1;
            }
            tar::EntryType::Link => {
                // A hard link names its target inside the archive (relative to `/` too).
                let target = entry.link_name()?.unwrap_or_default();
                let target = target.to_string_lossy().into_owned();
                if !selector.keeps(&format!("/{target}")) {
                    skipped.push(format!(
                        "skipped {absolute} (a hard link to /{target}, which is not cached)"
                    ));
                    continue;
                }
                header.set_size(0);
                out.append_link(&mut header, &name, &target)?;
                files += 1;
            }
            _ => {
                skipped.push(format!(
                    "skipped {absolute} (not a file, directory or link)"
                ));
                continue;
            }
        }
        out.get_mut().boundary(&absolute)?;
    }
    // The padding after the end of the archive, so tar ends having written everything.
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    out.finish()?;
    let mut segmenter = out.into_inner()?;
    segmenter.finish()?;
    Ok((segmenter.written, files, skipped))
}

/// Uploads the segments: with `ask`, only those the store lacks (hashed as they come, then asked
/// in batches), else every one as it comes. Returns every segment's digest in order, and how many
/// segments and bytes went up; `None` when the writer stopped before the end of the tar (its error
/// says why; the last batch is not sent).
async fn upload_segments(
    store: Arc<dyn CacheStore>,
    mut rx: mpsc::Receiver<Option<Bytes>>,
    ask: bool,
) -> Result<Option<(Vec<String>, usize, u64)>, CacheError> {
    let mut uploads = Uploads::default();
    // Each segment is hashed on a blocking thread as it comes, beside the tar writer's.
    let mut hashing = Vec::new();
    let mut batch_bytes = 0;
    // Equal segments (equal files) asked about in one save go up once.
    let mut seen = std::collections::HashSet::new();
    loop {
        let next = match rx.recv().await {
            Some(next) => next,
            None => return Ok(None),
        };
        let done = next.is_none();
        if let Some(data) = next {
            let index = uploads.digests.len();
            uploads.digests.push(String::new());
            if ask {
                batch_bytes += data.len();
                hashing.push(tokio::task::spawn_blocking(move || Segment {
                    index,
                    digest: digest_of(&data),
                    data,
                }));
            } else {
                uploads.start(&store, index, data, None).await?;
            }
        }
        if ask && (done || hashing.len() >= BATCH || batch_bytes >= BATCH_BYTES) {
            let mut batch = Vec::with_capacity(hashing.len());
            for task in hashing.drain(..) {
                batch.push(task.await.map_err(|e| io::Error::other(e.to_string()))?);
            }
            batch_bytes = 0;
            let asked: Vec<String> = batch.iter().map(|s| s.digest.clone()).collect();
            let present = match asked.is_empty() {
                true => Vec::new(),
                false => store.present(&asked).await?,
            };
            let present = present.into_iter().chain(std::iter::repeat(false));
            for (segment, present) in batch.into_iter().zip(present) {
                uploads.digests[segment.index] = segment.digest.clone();
                if present || !seen.insert(segment.digest.clone()) {
                    continue;
                }
                let Segment {
                    index,
                    digest,
                    data,
                } = segment;
                uploads.start(&store, index, data, Some(digest)).await?;
            }
        }
        if done {
            while uploads.finish_one().await? {}
            return Ok(Some((uploads.digests, uploads.count, uploads.bytes)));
        }
    }
}

/// A save's uploads: tasks that run while the next segments come, [`PARALLEL`] at once; every
/// segment's digest by its index, and the segments and bytes that went up.
#[derive(Default)]
struct Uploads {
    tasks: tokio::task::JoinSet<Result<(usize, String), CacheError>>,
    digests: Vec<String>,
    count: usize,
    bytes: u64,
}

impl Uploads {
    /// Starts uploading segment `index`, once fewer than [`PARALLEL`] uploads run.
    async fn start(
        &mut self,
        store: &Arc<dyn CacheStore>,
        index: usize,
        data: Bytes,
        expected: Option<String>,
    ) -> Result<(), CacheError> {
        self.count += 1;
        self.bytes += data.len() as u64;
        while self.tasks.len() >= PARALLEL {
            self.finish_one().await?;
        }
        self.tasks
            .spawn(upload_segment(store.clone(), index, data, expected));
        Ok(())
    }

    /// Waits for one upload to end and records its digest; false when none was running.
    async fn finish_one(&mut self) -> Result<bool, CacheError> {
        let Some(joined) = self.tasks.join_next().await else {
            return Ok(false);
        };
        let (index, digest) = joined.map_err(|e| io::Error::other(e.to_string()))??;
        self.digests[index] = digest;
        Ok(true)
    }
}

/// Uploads segment `index` (whose digest, when `expected`, the store must agree with); returns
/// the index and the digest the store computed.
async fn upload_segment(
    store: Arc<dyn CacheStore>,
    index: usize,
    data: Bytes,
    expected: Option<String>,
) -> Result<(usize, String), CacheError> {
    let stored = store.upload(data).await?;
    match expected {
        Some(expected) if stored != expected => Err(CacheError::Store(format!(
            "the store named segment {expected} {stored}"
        ))),
        _ => Ok((index, stored)),
    }
}
