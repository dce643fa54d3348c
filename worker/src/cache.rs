//! Build caches (semantics §6): what a build's `cache.paths` select comes out of the container as
//! one tar with absolute paths (modes, owners, times and symlinks kept), split into segments at
//! content-defined file boundaries. Each segment is a blob named by its sha256: a save uploads
//! only the segments the store lacks, so saving unchanged files uploads nothing. Restoring
//! streams the segments, each checked against its digest, back into the container at `/`.
//!
//! After a restore the worker lists what the paths select (type, mode, owner, size, modification
//! time and path of each entry, with one `find` in the container); a save whose listing is the
//! same reuses the restored entry's segments without reading a file.
//!
//! Where entries and blobs live is a [`CacheStore`]'s business (the coordinator, for a worker).

use std::fs::File;
use std::io::{self, Seek, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use kiln_buildspec::glob::Pattern;
use kiln_proto::v1::CacheEntry;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::io::ReaderStream;

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
    #[error(
        "cache segment {digest} does not match its digest (got {got}): the stored cache is damaged"
    )]
    Corrupt { digest: String, got: String },
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
    async fn fetch(&self, digest: &str) -> Result<Bytes, CacheError>;
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
    store: &dyn CacheStore,
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
    let mut spools = Vec::new();
    let mut notes = Vec::new();
    for base in &selector.bases {
        let mut spool = tokio::fs::File::from_std(tempfile::tempfile()?);
        let mut download = engine.download(container, base);
        let mut missing = false;
        while let Some(chunk) = download.next().await {
            match chunk {
                Ok(chunk) => spool.write_all(&chunk).await?,
                Err(e) if e.is_not_found() => {
                    missing = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if missing {
            notes.push(format!("nothing at {base}"));
            continue;
        }
        spool.flush().await?;
        spools.push((base.clone(), spool.into_std().await));
    }
    let (tx, rx) = mpsc::channel(PARALLEL);
    let writer = tokio::task::spawn_blocking(move || write_tar(&selector, spools, tx));
    let uploaded = upload_segments(store, rx).await;
    let written = writer.await.map_err(|e| io::Error::other(e.to_string()))?;
    // An upload failure closes the channel, which fails the writer: the upload's error tells
    // why. A writer that failed first ended the upload before its last batch.
    let Some((segments, uploaded_segments, uploaded_bytes)) = uploaded? else {
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
    // The output can end a moment before Docker reports the exec over.
    let mut code = None;
    for _ in 0..40 {
        code = engine.exec_finished(&id).await.ok()?;
        if code.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    if code != Some(0) {
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

/// Restores `entry` into the container. Every segment is fetched and checked first, into a
/// temporary file: a cache that cannot be had whole leaves the container untouched. With `list`
/// (a save may follow), then lists what its paths select (see [`Restored`]).
pub async fn restore(
    engine: &Engine,
    container: &str,
    store: Arc<dyn CacheStore>,
    entry: CacheEntry,
    list: bool,
) -> Result<Restored, CacheError> {
    let selector = Selector::new(&entry.paths)?;
    let mut staged = tokio::fs::File::from_std(tempfile::tempfile()?);
    let mut segments = futures_util::stream::iter(entry.segments.clone())
        .map(|digest| {
            let store = store.clone();
            async move {
                let data = store.fetch(&digest).await?;
                let got = digest_of(&data);
                match got == digest {
                    true => Ok(data),
                    false => Err(CacheError::Corrupt { digest, got }),
                }
            }
        })
        .buffered(PARALLEL);
    while let Some(data) = segments.next().await {
        staged.write_all(&data?).await?;
    }
    staged.flush().await?;
    staged.rewind().await?;
    let failure: Arc<Mutex<Option<io::Error>>> = Arc::default();
    let seen = failure.clone();
    let tar = ReaderStream::with_capacity(staged, 1 << 20).scan((), move |_, chunk| {
        std::future::ready(match chunk {
            Ok(data) => Some(data),
            Err(e) => {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        })
    });
    let uploaded = engine.upload(container, "/", tar).await;
    if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e.into());
    }
    uploaded?;
    let listing = match list {
        true => listing(engine, container, &selector).await,
        false => None,
    };
    Ok(Restored { entry, listing })
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

/// A segment of the cache tar and its digest.
struct Segment {
    digest: String,
    data: Bytes,
}

/// Cuts the tar into segments as it is written and hands them to the uploader; `None` after the
/// last one says the tar is whole.
struct Segmenter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Option<Segment>>,
}

impl Segmenter {
    fn emit(&mut self, data: Vec<u8>) -> io::Result<()> {
        let segment = Segment {
            digest: digest_of(&data),
            data: Bytes::from(data),
        };
        self.tx
            .blocking_send(Some(segment))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cache upload stopped"))
    }

    /// After each file: ends the segment here when the path's hash picks this boundary, so the
    /// same files cut the same segments wherever they start.
    fn boundary(&mut self, path: &str) -> io::Result<()> {
        if self.buf.len() >= MIN_SEGMENT && fnv1a(path.as_bytes()).is_multiple_of(CUT_ONE_IN) {
            let data = std::mem::take(&mut self.buf);
            self.emit(data)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.emit(data)?;
        }
        self.tx
            .blocking_send(None)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the cache upload stopped"))
    }
}

impl Write for Segmenter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= MAX_SEGMENT {
            let rest = self.buf.split_off(MAX_SEGMENT);
            let full = std::mem::replace(&mut self.buf, rest);
            self.emit(full)?;
        }
        Ok(data.len())
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

/// Writes the selected entries of each base's tar (paths relative to the base's parent) as one
/// tar with absolute paths (without the leading `/`). Returns its size, the files in it, and
/// notes on what was left out.
fn write_tar(
    selector: &Selector,
    spools: Vec<(String, File)>,
    tx: mpsc::Sender<Option<Segment>>,
) -> Result<(u64, u64, Vec<String>), CacheError> {
    let segmenter = Segmenter {
        buf: Vec::with_capacity(MAX_SEGMENT),
        tx,
    };
    let mut out = tar::Builder::new(Counting {
        inner: segmenter,
        written: 0,
    });
    let mut files = 0;
    let mut skipped = Vec::new();
    for (base, mut spool) in spools {
        spool.rewind()?;
        let parent = match base.rsplit_once('/') {
            Some((parent, _)) => parent.to_string(),
            None => String::new(),
        };
        let mut archive = tar::Archive::new(spool);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry
                .path()?
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string();
            let absolute = format!("{parent}/{name}");
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
            let path = absolute.trim_start_matches('/');
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    header.set_size(entry.size());
                    out.append_data(&mut header, path, &mut entry)?;
                    files += 1;
                }
                tar::EntryType::Directory => {
                    header.set_size(0);
                    out.append_data(&mut header, path, io::empty())?;
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name()?.unwrap_or_default().into_owned();
                    header.set_size(0);
                    out.append_link(&mut header, path, target)?;
                    files += 1;
                }
                tar::EntryType::Link => {
                    // A hard link names its target inside the archive: make that absolute too.
                    let target = entry.link_name()?.unwrap_or_default();
                    let target = format!("{parent}/{}", target.to_string_lossy());
                    if !selector.keeps(&target) {
                        skipped.push(format!(
                            "{absolute} (a hard link to {target}, which is not cached)"
                        ));
                        continue;
                    }
                    header.set_size(0);
                    out.append_link(&mut header, path, target.trim_start_matches('/'))?;
                    files += 1;
                }
                _ => {
                    skipped.push(format!("{absolute} (not a file, directory or link)"));
                    continue;
                }
            }
            out.get_mut().inner.boundary(&absolute)?;
        }
    }
    out.finish()?;
    let mut counting = out.into_inner()?;
    counting.inner.finish()?;
    Ok((counting.written, files, skipped))
}

/// Counts the bytes of the tar.
struct Counting {
    inner: Segmenter,
    written: u64,
}

impl Write for Counting {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Uploads the segments the store lacks, in batches; returns every segment's digest in order,
/// and how many segments and bytes went up; `None` when the writer stopped before the end of
/// the tar (its error says why; the last batch is not sent).
async fn upload_segments(
    store: &dyn CacheStore,
    mut rx: mpsc::Receiver<Option<Segment>>,
) -> Result<Option<(Vec<String>, usize, u64)>, CacheError> {
    let mut digests = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    let mut batch: Vec<Segment> = Vec::new();
    loop {
        let next = match rx.recv().await {
            Some(next) => next,
            None => return Ok(None),
        };
        let done = next.is_none();
        batch.extend(next);
        let batch_bytes: usize = batch.iter().map(|s| s.data.len()).sum();
        if !(done || batch.len() >= BATCH || batch_bytes >= BATCH_BYTES) {
            continue;
        }
        let asked: Vec<String> = batch.iter().map(|s| s.digest.clone()).collect();
        let present = match asked.is_empty() {
            true => Vec::new(),
            false => store.present(&asked).await?,
        };
        // Equal segments (equal files) in one batch go up once.
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<Segment> = batch
            .drain(..)
            .zip(present.into_iter().chain(std::iter::repeat(false)))
            .filter(|(s, p)| !p && seen.insert(s.digest.clone()))
            .map(|(s, _)| s)
            .collect();
        count += missing.len();
        bytes += missing.iter().map(|s| s.data.len() as u64).sum::<u64>();
        futures_util::stream::iter(missing)
            .map(|s| async move {
                let stored = store.upload(s.data).await?;
                match stored == s.digest {
                    true => Ok(()),
                    false => Err(CacheError::Store(format!(
                        "the store named segment {} {stored}",
                        s.digest
                    ))),
                }
            })
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        digests.extend(asked);
        if done {
            return Ok(Some((digests, count, bytes)));
        }
    }
}
