//! Artifact collection. The source tree is listed, either in place (see [`in_place`]: when the
//! worker runs as root on the Docker host) or from one tar stream out of the container (Docker's
//! archive API), spooled to a temporary file and, as it comes, listed with a sha256 for each
//! file. The pure selection rules of `kiln_buildspec::artifacts` pick files from the listing, and
//! the picked files go, read once each, into one tar, each artifact as a tree (`NONE`) or a ZIP.
//!
//! Nothing outside the source tree is read and no link is followed: links are resolved inside the
//! listing by the selection rules, and no path in the tar written has `..` or a root.

mod in_place;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use futures_util::StreamExt;
use kiln_buildspec::artifacts::{
    normalize, select, Entry, EntryKind, SelectError, Selection, Skipped,
};
use kiln_buildspec::Artifacts;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::docker::{ByteStream, Engine, EngineError};
use crate::record::{ArtifactFile, BuildArtifact};

/// How artifacts are packaged (CodeBuild's `packaging`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packaging {
    #[default]
    None,
    Zip,
}

impl Packaging {
    /// CodeBuild's name: `NONE` or `ZIP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Packaging::None => "NONE",
            Packaging::Zip => "ZIP",
        }
    }
}

impl std::str::FromStr for Packaging {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "NONE" => Ok(Packaging::None),
            "ZIP" => Ok(Packaging::Zip),
            _ => Err(format!("unknown packaging {s:?}: use NONE or ZIP")),
        }
    }
}

/// Where artifacts go. Without `tar` they are only checked and summed (the record lists them).
#[derive(Debug, Clone, Default)]
pub struct ArtifactTarget {
    /// One uncompressed tar holding the primary artifact below `primary/` (ZIP: the file
    /// `primary.zip`) and each secondary one below `secondary/<identifier>/` (ZIP:
    /// `secondary/<identifier>.zip`): what a worker uploads. A ZIP is made beside it first.
    /// The tar's sha256 goes beside it too, in [`tar_digest_path`].
    pub tar: Option<PathBuf>,
    pub packaging: Packaging,
}

/// The tar [`ArtifactTarget::tar`] names, being written (and summed).
type TarOut = tar::Builder<io::BufWriter<Hashing<File>>>;

/// Where the sha256 of the artifacts tar at `tar` is kept (`sha256:<hex>`), written once the
/// tar is whole.
pub fn tar_digest_path(tar: &Path) -> PathBuf {
    let mut name = tar.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

#[derive(Debug, Error)]
pub enum ArtifactError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{prefix}{source}{}", skipped_note(source))]
    Select {
        prefix: String,
        #[source]
        source: SelectError,
    },
    #[error("writing artifacts: {0}")]
    Io(#[from] io::Error),
    #[error("refusing to write artifact file {0:?}: it would leave the output directory")]
    Unsafe(String),
}

/// Names what the rules refused when nothing matched, since that is usually why.
fn skipped_note(error: &SelectError) -> String {
    match error {
        SelectError::NoMatch { skipped } if !skipped.is_empty() => {
            let reasons: Vec<String> = skipped
                .iter()
                .map(|s| format!("{}: {}", s.path, s.reason))
                .collect();
            format!(" (skipped {})", reasons.join("; "))
        }
        _ => String::new(),
    }
}

/// What [`collect`] produced.
#[derive(Debug)]
pub struct Collected {
    pub primary: BuildArtifact,
    pub secondary: Vec<BuildArtifact>,
    /// Paths the rules refused (escaping the source directory, links out): logged, never read.
    pub skipped: Vec<Skipped>,
}

/// The source tree artifacts are collected from.
pub struct Tree(Source);

enum Source {
    /// A tar of it (Docker's archive API), whose top entry is the source directory.
    Archive(ByteStream),
    /// The directory itself, read in place, and its listing.
    InPlace { dir: OwnedFd, listing: Listing },
}

impl Tree {
    /// Directory `dir` of the running `container`: read in place when this worker may (see
    /// [`in_place`]), else through Docker's archive API.
    pub async fn of(engine: &Engine, container: &str, dir: &str) -> Tree {
        match Tree::in_place(engine, container, dir).await {
            Ok(tree) => tree,
            Err(e) => {
                tracing::debug!(%container, "reading artifacts through Docker's archive API: {e}");
                Tree::archive(engine, container, dir)
            }
        }
    }

    /// Directory `dir` of `container` through Docker's archive API, which works wherever the
    /// daemon is.
    pub fn archive(engine: &Engine, container: &str, dir: &str) -> Tree {
        Tree(Source::Archive(engine.download(container, dir)))
    }

    /// Directory `dir` of the running `container`, opened and listed in place; fails when the
    /// container's files cannot be reached from here (another host or process namespace, or
    /// not root) or the tree is not a plain directory.
    pub async fn in_place(
        engine: &Engine,
        container: &str,
        dir: &str,
    ) -> Result<Tree, ArtifactError> {
        let (id, pid) = engine.first_process(container).await?.ok_or_else(|| {
            ArtifactError::Io(io::Error::other(format!(
                "container {container} is not running"
            )))
        })?;
        let dir = dir.to_string();
        tokio::task::spawn_blocking(move || {
            let dir = in_place::open(&id, pid, &dir)?;
            let listing = in_place::list(&dir)?;
            Ok(Tree(Source::InPlace { dir, listing }))
        })
        .await
        .map_err(joined)?
    }
}

/// Collects the primary artifact and every secondary one from `tree` (`CODEBUILD_SRC_DIR`).
/// `names[0]` is the primary's evaluated name, then one per secondary.
pub async fn collect(
    tree: Tree,
    spec: &Artifacts,
    names: &[String],
    target: &ArtifactTarget,
) -> Result<Collected, ArtifactError> {
    let (contents, listing) = match tree.0 {
        Source::Archive(download) => {
            let (spool, listing) = spool(download).await?;
            (Contents::Spool(spool), listing)
        }
        Source::InPlace { dir, listing } => (Contents::InPlace(dir), listing),
    };
    let spec = spec.clone();
    let names = names.to_vec();
    let target = target.clone();
    tokio::task::spawn_blocking(move || assemble(contents, listing, &spec, &names, &target))
        .await
        .map_err(joined)?
}

/// A blocking task that panicked or was cancelled, as an error of the collection.
fn joined(e: tokio::task::JoinError) -> ArtifactError {
    ArtifactError::Io(io::Error::other(e))
}

/// Spools the archive `download` to a temporary file, listing it and summing each file as it
/// comes, beside the spool.
async fn spool(download: ByteStream) -> Result<(File, Listing), ArtifactError> {
    let mut spool = tempfile::tempfile().map(tokio::fs::File::from_std)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(64);
    let reader = SyncIoBridge::new(StreamReader::new(ReceiverStream::new(rx)));
    let lister = tokio::task::spawn_blocking(move || list_entries(reader));
    let mut download = download;
    let spooled = async {
        while let Some(chunk) = download.next().await {
            let chunk = chunk?;
            spool.write_all(&chunk).await?;
            // A lister that stopped says why below.
            let _ = tx.send(Ok(chunk)).await;
        }
        spool.flush().await?;
        Ok::<(), ArtifactError>(())
    }
    .await;
    drop(tx);
    let listing = lister.await.map_err(joined)?;
    spooled?;
    Ok((spool.into_std().await, listing?))
}

/// Where the listed files' bytes are read from.
enum Contents {
    /// The archive, spooled; the listing has each file's sum.
    Spool(File),
    /// The source directory, read in place and summed as it is read.
    InPlace(OwnedFd),
}

/// The (plan, file) pairs that want one path of the tree, by index.
type Consumers = Vec<(usize, usize)>;

/// One artifact being assembled.
struct Plan {
    identifier: Option<String>,
    name: String,
    s3_prefix: Option<String>,
    selection: Selection,
    writer: Writer,
    location: String,
}

/// Selects each artifact's files from `listing` and writes them, reading each wanted file once
/// from `contents`.
fn assemble(
    contents: Contents,
    listing: Listing,
    spec: &Artifacts,
    names: &[String],
    target: &ArtifactTarget,
) -> Result<Collected, ArtifactError> {
    let Listing {
        entries,
        hard_links,
        sums,
    } = listing;
    let mut tar_out = match &target.tar {
        Some(path) => Some(tar::Builder::new(io::BufWriter::with_capacity(
            1 << 20,
            Hashing {
                inner: File::create(path)?,
                hasher: Sha256::new(),
            },
        ))),
        None => None,
    };
    let definitions =
        std::iter::once((None, spec)).chain(spec.secondary.iter().map(|(id, a)| (Some(id), a)));
    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    for (i, (id, definition)) in definitions.enumerate() {
        let selection = select(&entries, definition).map_err(|source| ArtifactError::Select {
            prefix: id
                .map(|id| format!("secondary artifact {id}: "))
                .unwrap_or_default(),
            source,
        })?;
        skipped.extend(selection.skipped.iter().cloned());
        let (writer, location) = Writer::open(target, id.map(String::as_str))?;
        plans.push(Plan {
            identifier: id.cloned(),
            name: names.get(i).cloned().unwrap_or_default(),
            s3_prefix: definition.s3_prefix.clone(),
            selection,
            writer,
            location,
        });
    }
    // Which (plan, file) pairs want each archive path, so the tar is read once.
    let mut wanted: HashMap<String, Consumers> = HashMap::new();
    for (p, plan) in plans.iter().enumerate() {
        for (f, file) in plan.selection.files.iter().enumerate() {
            if file.symlink.is_none() {
                let holder = hard_links.get(&file.source).unwrap_or(&file.source);
                wanted.entry(holder.clone()).or_default().push((p, f));
            }
        }
    }
    let sums = match contents {
        Contents::Spool(mut spool) => {
            spool.rewind()?;
            let mut archive = tar::Archive::new(&mut spool);
            for entry in archive.entries_with_seek()? {
                let mut entry = entry?;
                let Some(path) = tree_path(&entry.path()?) else {
                    continue;
                };
                if let Some(consumers) = wanted.get(&path) {
                    write_entry(&mut entry, consumers, &mut plans, tar_out.as_mut())?;
                }
            }
            sums
        }
        Contents::InPlace(dir) => {
            let files: Vec<(&str, u64, &Consumers)> = entries
                .iter()
                .filter_map(|entry| match (wanted.get(&entry.path), &entry.kind) {
                    (Some(consumers), EntryKind::File { size, .. }) => {
                        Some((entry.path.as_str(), *size, consumers))
                    }
                    _ => None,
                })
                .collect();
            let mut sums = HashMap::new();
            in_place::read_ahead(&dir, &files, |(path, _, consumers), mut file| {
                write_entry(&mut file.content(), consumers, &mut plans, tar_out.as_mut())?;
                sums.insert(path.to_string(), file.sum());
                Ok(())
            })?;
            sums
        }
    };
    // A file's sum is its holder's; a kept link has none.
    let sum_of = |file: &kiln_buildspec::artifacts::SelectedFile| match file.symlink {
        Some(_) => None,
        None => sums
            .get(hard_links.get(&file.source).unwrap_or(&file.source))
            .cloned(),
    };
    let digests: Vec<Vec<Option<String>>> = plans
        .iter()
        .map(|plan| plan.selection.files.iter().map(sum_of).collect())
        .collect();
    let mut artifacts = Vec::new();
    for (plan, digests) in plans.into_iter().zip(digests) {
        artifacts.push(plan.finish(digests, target.packaging, tar_out.as_mut())?);
    }
    if let (Some(tar_out), Some(path)) = (tar_out, &target.tar) {
        let written = tar_out
            .into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        std::fs::write(
            tar_digest_path(path),
            format!("sha256:{}", hex(&written.hasher.finalize())),
        )?;
    }
    let mut artifacts = artifacts.into_iter();
    let primary = artifacts
        .next()
        .ok_or_else(|| ArtifactError::Io(io::Error::other("no primary artifact")))?;
    Ok(Collected {
        primary,
        secondary: artifacts.collect(),
        skipped,
    })
}

/// The archive's top entry is the source directory itself (`src/...`): paths below it, normalized.
fn tree_path(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    let (_, rest) = text.split_once('/')?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return None;
    }
    normalize(rest)
}

/// The source tree as the archive (or a walk of the directory) lists it.
#[derive(Default)]
struct Listing {
    entries: Vec<Entry>,
    /// Hard links (a second name for a file earlier in the archive, which the archive does not
    /// repeat): link path to the path holding the bytes.
    hard_links: HashMap<String, String>,
    /// Each file's sha256, by the path holding its bytes.
    sums: HashMap<String, String>,
}

/// Lists the tar `archive` reads and sums each file in it.
fn list_entries(archive: impl Read) -> Result<Listing, ArtifactError> {
    let mut archive = tar::Archive::new(archive);
    let mut entries = Vec::new();
    let mut files: HashMap<String, EntryKind> = HashMap::new();
    let mut hard_links = HashMap::new();
    let mut sums = HashMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(path) = tree_path(&entry.path()?) else {
            continue;
        };
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let kind = EntryKind::File {
                    size: header.size()?,
                    mode: header.mode()?,
                };
                let mut hasher = Sha256::new();
                io::copy(&mut entry, &mut hasher)?;
                sums.insert(path.clone(), hex(&hasher.finalize()));
                files.insert(path.clone(), kind.clone());
                kind
            }
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink {
                target: entry
                    .link_name()?
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            },
            tar::EntryType::Link => {
                let target = entry.link_name()?.and_then(|l| tree_path(&l));
                match target.and_then(|t| files.get(&t).cloned().map(|kind| (t, kind))) {
                    Some((target, kind)) => {
                        hard_links.insert(path.clone(), target);
                        kind
                    }
                    None => continue,
                }
            }
            // Devices and fifos are never artifact content.
            _ => continue,
        };
        entries.push(Entry { path, kind });
    }
    Ok(Listing {
        entries,
        hard_links,
        sums,
    })
}

/// Streams one archive entry to every artifact that wants it. An entry wanted more than once
/// (by several artifacts, or through in-tree links) is spooled once and copied.
fn write_entry(
    entry: &mut impl Read,
    consumers: &[(usize, usize)],
    plans: &mut [Plan],
    mut tar: Option<&mut TarOut>,
) -> Result<(), ArtifactError> {
    if let [(p, f)] = consumers {
        let plan = &mut plans[*p];
        return plan
            .writer
            .write_file(&plan.selection.files[*f], entry, tar);
    }
    let mut spool = tempfile::tempfile()?;
    io::copy(entry, &mut spool)?;
    for &(p, f) in consumers {
        spool.rewind()?;
        let plan = &mut plans[p];
        plan.writer
            .write_file(&plan.selection.files[f], &mut spool, tar.as_deref_mut())?;
    }
    Ok(())
}

/// A reader that counts what passes through it.
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A reader or writer that sums what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Plan {
    fn finish(
        mut self,
        digests: Vec<Option<String>>,
        packaging: Packaging,
        mut tar: Option<&mut TarOut>,
    ) -> Result<BuildArtifact, ArtifactError> {
        let mut files = Vec::new();
        for (file, digest) in self.selection.files.iter().zip(digests) {
            if let Some(target) = &file.symlink {
                self.writer.link(&file.dest, target, tar.as_deref_mut())?;
            }
            files.push(ArtifactFile {
                path: file.dest.clone(),
                size_in_bytes: if file.symlink.is_some() { 0 } else { file.size },
                sha256sum: digest.unwrap_or_default(),
                symlink_target: file.symlink.clone(),
            });
        }
        let zip_digest = self.writer.close(tar)?;
        let manifest: String = files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256sum, f.path))
            .collect();
        Ok(BuildArtifact {
            artifact_identifier: self.identifier,
            location: self.location,
            name: self.name,
            packaging: packaging.as_str().to_string(),
            sha256sum: zip_digest.unwrap_or_else(|| hex(&Sha256::digest(manifest.as_bytes()))),
            size_in_bytes: files.iter().map(|f| f.size_in_bytes).sum(),
            files,
            s3_prefix: self.s3_prefix,
        })
    }
}

/// Where one artifact's files go.
enum Writer {
    /// Only summed.
    Discard,
    /// Entries below this path in [`ArtifactTarget::tar`].
    Tree(String),
    Zip {
        /// Made beside the tar, which takes it once it is whole, under `name`.
        temp: tempfile::NamedTempFile,
        zip: Box<zip::ZipWriter<File>>,
        name: String,
    },
}

/// The tar writer, which a [`Writer::Tree`] or [`Writer::Zip`] must have.
fn tar_of(tar: Option<&mut TarOut>) -> io::Result<&mut TarOut> {
    tar.ok_or_else(|| io::Error::other("the artifacts tar is not open"))
}

impl Writer {
    /// The writer of the artifact `id` (`None`: the primary one) and its location in the tar.
    fn open(target: &ArtifactTarget, id: Option<&str>) -> Result<(Writer, String), ArtifactError> {
        let Some(tar) = &target.tar else {
            return Ok((Writer::Discard, String::new()));
        };
        let relative = match id {
            None => "primary".to_string(),
            Some(id) => format!("secondary/{id}"),
        };
        safe_relative(&relative)?;
        match target.packaging {
            Packaging::None => Ok((Writer::Tree(relative.clone()), relative)),
            Packaging::Zip => {
                let dir = tar.parent().unwrap_or(Path::new("."));
                let temp = tempfile::NamedTempFile::new_in(dir)?;
                let zip = Box::new(zip::ZipWriter::new(temp.reopen()?));
                let name = format!("{relative}.zip");
                Ok((
                    Writer::Zip {
                        temp,
                        zip,
                        name: name.clone(),
                    },
                    name,
                ))
            }
        }
    }

    /// Writes one selected file, whose content `data` yields (`file.size` bytes).
    fn write_file(
        &mut self,
        file: &kiln_buildspec::artifacts::SelectedFile,
        data: &mut impl Read,
        tar: Option<&mut TarOut>,
    ) -> Result<(), ArtifactError> {
        match self {
            Writer::Discard => {
                io::copy(data, &mut io::sink())?;
            }
            Writer::Tree(prefix) => {
                safe_relative(&file.dest)?;
                let mut header = tar_header(tar::EntryType::Regular, file.mode & 0o777 | 0o600);
                header.set_size(file.size);
                // The tar stays in step only if exactly the size in the header follows it.
                let mut counted = Counted {
                    inner: data.take(file.size),
                    count: 0,
                };
                let path = format!("{prefix}/{}", file.dest);
                tar_of(tar)?.append_data(&mut header, &path, &mut counted)?;
                if counted.count != file.size {
                    return Err(ArtifactError::Io(io::Error::other(format!(
                        "{} changed size while artifacts were collected ({} bytes listed, {} read): a process of the build still changes the source directory (stop background processes before the build ends)",
                        file.source, file.size, counted.count
                    ))));
                }
            }
            Writer::Zip { zip, .. } => {
                let options = zip::write::SimpleFileOptions::default()
                    .unix_permissions(file.mode & 0o777)
                    .large_file(file.size >= u32::MAX as u64);
                zip.start_file(file.dest.as_str(), options)
                    .map_err(zip_error)?;
                io::copy(data, zip.as_mut())?;
            }
        }
        Ok(())
    }

    fn link(
        &mut self,
        dest: &str,
        target: &str,
        tar: Option<&mut TarOut>,
    ) -> Result<(), ArtifactError> {
        match self {
            Writer::Discard => Ok(()),
            Writer::Tree(prefix) => {
                safe_relative(dest)?;
                let mut header = tar_header(tar::EntryType::Symlink, 0o777);
                tar_of(tar)?.append_link(&mut header, format!("{prefix}/{dest}"), target)?;
                Ok(())
            }
            Writer::Zip { zip, .. } => zip
                .add_symlink(dest, target, zip::write::SimpleFileOptions::default())
                .map_err(zip_error),
        }
    }

    /// Finishes the artifact; for a ZIP returns the sha256 of the file.
    fn close(self, tar: Option<&mut TarOut>) -> Result<Option<String>, ArtifactError> {
        match self {
            Writer::Discard | Writer::Tree(_) => Ok(None),
            Writer::Zip { temp, zip, name } => {
                zip.finish().map_err(zip_error)?;
                let mut hasher = Sha256::new();
                io::copy(&mut temp.reopen()?, &mut hasher)?;
                let mut header = tar_header(tar::EntryType::Regular, 0o644);
                header.set_size(temp.as_file().metadata()?.len());
                tar_of(tar)?.append_data(&mut header, name, temp.reopen()?)?;
                Ok(Some(hex(&hasher.finalize())))
            }
        }
    }
}

/// A tar header of this kind and mode, with the time now and size 0 (a file's comes later).
fn tar_header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    header.set_mtime(now);
    header
}

fn zip_error(e: zip::result::ZipError) -> ArtifactError {
    ArtifactError::Io(io::Error::other(e))
}

/// Refuses a path with `..`, `.` or a root: artifact paths stay below their directory (and the
/// tar then extracts inside the directory it is extracted into).
fn safe_relative(dest: &str) -> Result<(), ArtifactError> {
    match Path::new(dest)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        true => Ok(()),
        false => Err(ArtifactError::Unsafe(dest.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_stay_below_their_directory() {
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("a/../../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("a/b/c.txt").is_ok());
    }

    #[test]
    fn tree_paths_drop_the_top_directory() {
        assert_eq!(tree_path(Path::new("src/a/b")), Some("a/b".to_string()));
        assert_eq!(tree_path(Path::new("src/")), None);
        assert_eq!(tree_path(Path::new("src")), None);
        assert_eq!(tree_path(Path::new("src/../x")), None);
    }

    #[test]
    fn a_file_shorter_than_listed_fails_rather_than_put_the_tar_out_of_step() {
        let out = tempfile::tempdir().expect("tmp");
        let mut tar = tar::Builder::new(io::BufWriter::new(Hashing {
            inner: File::create(out.path().join("a.tar")).expect("tar"),
            hasher: Sha256::new(),
        }));
        let file = kiln_buildspec::artifacts::SelectedFile {
            source: "out/log".to_string(),
            dest: "out/log".to_string(),
            symlink: None,
            size: 10,
            mode: 0o644,
        };
        let mut writer = Writer::Tree("primary".to_string());
        let error = writer
            .write_file(&file, &mut &b"four"[..], Some(&mut tar))
            .expect_err("short");
        assert!(
            error.to_string().contains(
                "out/log changed size while artifacts were collected (10 bytes listed, 4 read)"
            ),
            "{error}"
        );
    }

    #[test]
    fn packaging_parses() {
        assert_eq!("zip".parse(), Ok(Packaging::Zip));
        assert!("tar".parse::<Packaging>().is_err());
    }
}
