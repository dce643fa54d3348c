//! Artifact collection: the source tree comes out of the container as one tar stream, the pure
//! selection rules of `kiln_buildspec::artifacts` pick files from its listing, and the picked files
//! are written as a tree (`NONE`) or a ZIP, with a sha256 for each file.
//!
//! Nothing is read from the host's filesystem and no link is followed outside the archive: links
//! are resolved inside the listing by the selection rules, and the writer refuses to write through
//! a link it created itself.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use futures_util::StreamExt;
use kiln_buildspec::artifacts::{
    normalize, select, Entry, EntryKind, SelectError, Selection, Skipped,
};
use kiln_buildspec::Artifacts;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::docker::{ByteStream, EngineError};
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

/// Where artifacts go. Without `out_dir` they are only checked and summed (the record lists them).
#[derive(Debug, Clone, Default)]
pub struct ArtifactTarget {
    /// The primary artifact goes to `OUT/primary/` (ZIP: `OUT/primary.zip`), each secondary one to
    /// `OUT/secondary/<identifier>/` (ZIP: `OUT/secondary/<identifier>.zip`).
    pub out_dir: Option<PathBuf>,
    pub packaging: Packaging,
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

/// Collects the primary artifact and every secondary one from `download` (a tar of
/// `CODEBUILD_SRC_DIR`). `names[0]` is the primary's evaluated name, then one per secondary.
pub async fn collect(
    download: ByteStream,
    spec: &Artifacts,
    names: &[String],
    target: &ArtifactTarget,
) -> Result<Collected, ArtifactError> {
    let mut spool = tempfile::tempfile().map(tokio::fs::File::from_std)?;
    let mut download = download;
    while let Some(chunk) = download.next().await {
        spool.write_all(&chunk?).await?;
    }
    spool.flush().await?;
    let spool = spool.into_std().await;
    let spec = spec.clone();
    let names = names.to_vec();
    let target = target.clone();
    tokio::task::spawn_blocking(move || collect_from_tar(spool, &spec, &names, &target))
        .await
        .map_err(|e| ArtifactError::Io(io::Error::other(e)))?
}

/// One artifact being assembled.
struct Plan {
    identifier: Option<String>,
    name: String,
    selection: Selection,
    writer: Writer,
    location: String,
}

fn collect_from_tar(
    mut spool: File,
    spec: &Artifacts,
    names: &[String],
    target: &ArtifactTarget,
) -> Result<Collected, ArtifactError> {
    spool.rewind()?;
    let (entries, hard_links) = list_entries(&mut spool)?;
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
            selection,
            writer,
            location,
        });
    }
    // Which (plan, file) pairs want each archive path, so the tar is read once.
    let mut wanted: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (p, plan) in plans.iter().enumerate() {
        for (f, file) in plan.selection.files.iter().enumerate() {
            if file.symlink.is_none() {
                let holder = hard_links.get(&file.source).unwrap_or(&file.source);
                wanted.entry(holder.clone()).or_default().push((p, f));
            }
        }
    }
    let mut digests: Vec<Vec<Option<String>>> = plans
        .iter()
        .map(|p| vec![None; p.selection.files.len()])
        .collect();
    spool.rewind()?;
    let mut archive = tar::Archive::new(&mut spool);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(path) = tree_path(&entry.path()?) else {
            continue;
        };
        let Some(consumers) = wanted.get(&path) else {
            continue;
        };
        let digest = write_entry(&mut entry, consumers, &mut plans)?;
        for &(p, f) in consumers {
            digests[p][f] = Some(digest.clone());
        }
    }
    let mut artifacts = Vec::new();
    for (plan, digests) in plans.into_iter().zip(digests) {
        artifacts.push(plan.finish(digests, target.packaging)?);
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

/// The source tree as the archive lists it, and its hard links (a second name for a file earlier
/// in the archive, which the archive does not repeat): link path to the path holding the bytes.
fn list_entries(spool: &mut File) -> Result<(Vec<Entry>, HashMap<String, String>), ArtifactError> {
    let mut archive = tar::Archive::new(spool);
    let mut entries = Vec::new();
    let mut files: HashMap<String, EntryKind> = HashMap::new();
    let mut hard_links = HashMap::new();
    for entry in archive.entries()? {
        let entry = entry?;
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
    Ok((entries, hard_links))
}

/// Streams one archive entry to every artifact that wants it; returns its sha256. An entry wanted
/// more than once (by several artifacts, or through in-tree links) is spooled once and copied.
fn write_entry(
    entry: &mut impl Read,
    consumers: &[(usize, usize)],
    plans: &mut [Plan],
) -> Result<String, ArtifactError> {
    if let [(p, f)] = consumers {
        let mut sink = plans[*p]
            .writer
            .start_file(&plans[*p].selection.files[*f])?;
        let digest = copy_hashing(entry, &mut sink)?;
        sink.flush()?;
        return Ok(digest);
    }
    let mut spool = tempfile::tempfile()?;
    let digest = copy_hashing(entry, &mut spool)?;
    for &(p, f) in consumers {
        spool.rewind()?;
        let mut sink = plans[p].writer.start_file(&plans[p].selection.files[f])?;
        io::copy(&mut spool, &mut sink)?;
        sink.flush()?;
    }
    Ok(digest)
}

/// Copies `from` into `to`; returns the hex sha256 of what was copied.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
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
    ) -> Result<BuildArtifact, ArtifactError> {
        let mut files = Vec::new();
        for (file, digest) in self.selection.files.iter().zip(digests) {
            if let Some(target) = &file.symlink {
                self.writer.link(&file.dest, target)?;
            }
            files.push(ArtifactFile {
                path: file.dest.clone(),
                size_in_bytes: if file.symlink.is_some() { 0 } else { file.size },
                sha256sum: digest.unwrap_or_default(),
                symlink_target: file.symlink.clone(),
            });
        }
        let zip_digest = self.writer.close()?;
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
        })
    }
}

/// Where one artifact's files go.
enum Writer {
    /// Only summed.
    Discard,
    Tree(PathBuf),
    Zip {
        path: PathBuf,
        zip: Box<zip::ZipWriter<File>>,
    },
}

/// An open output file of a [`Writer`].
enum FileSink<'a> {
    Discard,
    File(File),
    Zip(&'a mut zip::ZipWriter<File>),
}

impl Write for FileSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            FileSink::Discard => Ok(buf.len()),
            FileSink::File(f) => f.write(buf),
            FileSink::Zip(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            FileSink::Discard => Ok(()),
            FileSink::File(f) => f.flush(),
            FileSink::Zip(z) => z.flush(),
        }
    }
}

impl Writer {
    fn open(target: &ArtifactTarget, id: Option<&str>) -> Result<(Writer, String), ArtifactError> {
        let Some(out) = &target.out_dir else {
            return Ok((Writer::Discard, String::new()));
        };
        let base = match id {
            None => out.join("primary"),
            Some(id) => out.join("secondary").join(id),
        };
        match target.packaging {
            Packaging::None => {
                if base.symlink_metadata().is_ok() {
                    fs::remove_dir_all(&base)?;
                }
                fs::create_dir_all(&base)?;
                let location = base.display().to_string();
                Ok((Writer::Tree(base), location))
            }
            Packaging::Zip => {
                let path = base.with_extension("zip");
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                let file = File::create(&path)?;
                let location = path.display().to_string();
                Ok((
                    Writer::Zip {
                        path,
                        zip: Box::new(zip::ZipWriter::new(file)),
                    },
                    location,
                ))
            }
        }
    }

    fn start_file(
        &mut self,
        file: &kiln_buildspec::artifacts::SelectedFile,
    ) -> Result<FileSink<'_>, ArtifactError> {
        match self {
            Writer::Discard => Ok(FileSink::Discard),
            Writer::Tree(base) => {
                let path = safe_join(base, &file.dest)?;
                Ok(FileSink::File(open_with_mode(&path, file.mode)?))
            }
            Writer::Zip { zip, .. } => {
                let options = zip::write::SimpleFileOptions::default()
                    .unix_permissions(file.mode & 0o777)
                    .large_file(file.size >= u32::MAX as u64);
                zip.start_file(file.dest.as_str(), options)
                    .map_err(zip_error)?;
                Ok(FileSink::Zip(zip))
            }
        }
    }

    fn link(&mut self, dest: &str, target: &str) -> Result<(), ArtifactError> {
        match self {
            Writer::Discard => Ok(()),
            Writer::Tree(base) => {
                let path = safe_join(base, dest)?;
                std::os::unix::fs::symlink(target, path)?;
                Ok(())
            }
            Writer::Zip { zip, .. } => zip
                .add_symlink(dest, target, zip::write::SimpleFileOptions::default())
                .map_err(zip_error),
        }
    }

    /// Finishes the artifact; for a ZIP returns the sha256 of the file.
    fn close(self) -> Result<Option<String>, ArtifactError> {
        match self {
            Writer::Discard | Writer::Tree(_) => Ok(None),
            Writer::Zip { path, zip, .. } => {
                zip.finish().map_err(zip_error)?;
                let mut hasher = Sha256::new();
                io::copy(&mut File::open(&path)?, &mut hasher)?;
                Ok(Some(hex(&hasher.finalize())))
            }
        }
    }
}

fn zip_error(e: zip::result::ZipError) -> ArtifactError {
    ArtifactError::Io(io::Error::other(e))
}

/// `base/dest`, creating parents, refusing `..`, absolute paths and any existing link on the way.
fn safe_join(base: &Path, dest: &str) -> Result<PathBuf, ArtifactError> {
    let unsafe_path = || ArtifactError::Unsafe(dest.to_string());
    let relative = Path::new(dest);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(unsafe_path());
    }
    let mut path = base.to_path_buf();
    let parts: Vec<_> = relative.components().collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        match path.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => return Err(unsafe_path()),
            Ok(meta) if i + 1 < parts.len() && !meta.is_dir() => return Err(unsafe_path()),
            Ok(_) => {}
            Err(_) if i + 1 < parts.len() => fs::create_dir(&path)?,
            Err(_) => {}
        }
    }
    Ok(path)
}

fn open_with_mode(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o777 | 0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes_and_links() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(safe_join(dir.path(), "../x").is_err());
        assert!(safe_join(dir.path(), "/etc/passwd").is_err());
        let ok = safe_join(dir.path(), "a/b/c.txt").expect("ok");
        assert!(ok.starts_with(dir.path()) && dir.path().join("a/b").is_dir());
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).expect("link");
        assert!(safe_join(dir.path(), "link/x").is_err());
    }

    #[test]
    fn tree_paths_drop_the_top_directory() {
        assert_eq!(tree_path(Path::new("src/a/b")), Some("a/b".to_string()));
        assert_eq!(tree_path(Path::new("src/")), None);
        assert_eq!(tree_path(Path::new("src")), None);
        assert_eq!(tree_path(Path::new("src/../x")), None);
    }

    #[test]
    fn packaging_parses() {
        assert_eq!("zip".parse(), Ok(Packaging::Zip));
        assert!("tar".parse::<Packaging>().is_err());
    }
}
