//! `kiln artifacts ID -o DIR`: downloads a build's artifacts tar and extracts it into DIR;
//! `kiln artifacts ID --url`: prints a presigned URL to the tar instead (an S3 store with
//! `presigned_artifacts`), for tools without Kiln.
//!
//! The tar is extracted as it comes, into `DIR/.kiln-artifacts-<digest>.staging`, and summed on
//! the way; the staging directory moves into DIR only once the whole tar checked out against the
//! digest on the build record. One that does not match is removed, staging and all. The tar
//! itself is not kept: how far the extraction got is (see [`progress`]), so a download cut off (a
//! dropped connection, Ctrl-C) resumes from the end of the last entry extracted when the command
//! is run again, and is checked against the same digest.
//!
//! The tar comes from the server, but what the build put in it is untrusted: every entry is
//! checked with [`check_entry`] before anything is written, and nothing is written through a link
//! (a path under an extracted symlink is refused, as is a hard link to one), so the lexical check
//! is also the physical one and no entry can land, or point, outside DIR.

mod progress;

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use kiln_buildspec::archive::{check_entry, ArchiveEntry};
use kiln_proto::v1::{DownloadArtifactRequest, GetArtifactUrlRequest, GetBuildRequest};
use progress::{Counted, Progress, RunningSha256, CHECKPOINT_BYTES};
use tar::EntryType;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::connect::{Server, ServerArgs};
use super::Failure;

#[derive(clap::Args)]
pub struct ArtifactsArgs {
    /// The build's id (`<project>:<uuid>`)
    id: String,
    /// Extract into this directory (created when missing)
    #[arg(
        short,
        long = "output",
        value_name = "DIR",
        required_unless_present = "url"
    )]
    output: Option<PathBuf>,
    /// Print a presigned URL to the artifacts tar instead of downloading it
    #[arg(long, conflicts_with = "output")]
    url: bool,
    /// How long the URL works, like 15m or 2h (default 1h, at most 7 days)
    #[arg(long, requires = "url", value_parser = crate::args::parse_duration)]
    expires: Option<std::time::Duration>,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn artifacts(args: ArtifactsArgs) -> Result<ExitCode, Failure> {
    match args.output.clone() {
        Some(output) => extract_into(args, &output).await,
        None => artifacts_url(args).await,
    }
}

async fn artifacts_url(args: ArtifactsArgs) -> Result<ExitCode, Failure> {
    let expires_in_s = match args.expires {
        None => 0,
        Some(d) => u32::try_from(d.as_secs().max(1))
            .map_err(|_| Failure::invalid("--expires: at most 7 days"))?,
    };
    let server = args.server.connect().await?;
    let answer = server
        .client()
        .get_artifact_url(GetArtifactUrlRequest {
            id: args.id.clone(),
            expires_in_s,
        })
        .await
        .map_err(|s| server.refused(s))?
        .into_inner();
    out!("{}", answer.url);
    Ok(ExitCode::SUCCESS)
}

async fn extract_into(args: ArtifactsArgs, output: &Path) -> Result<ExitCode, Failure> {
    if output.exists() && !output.is_dir() {
        return Err(Failure::invalid(format!(
            "{}: exists and is not a directory; name a directory to extract into",
            output.display()
        )));
    }
    let server = args.server.connect().await?;
    let extracted = download(&server, &args.id, output).await?;
    eprintln!(
        "{extracted} entries of build {} in {}",
        args.id,
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Downloads build `id`'s artifacts tar (resuming a stopped download) and extracts it into
/// `output` (see the module docs); returns how many entries were written.
pub async fn download(server: &Server, id: &str, output: &Path) -> Result<usize, Failure> {
    let build = server
        .client()
        .get_build(GetBuildRequest { id: id.to_string() })
        .await
        .map_err(|s| server.refused(s))?
        .into_inner();
    let Some(hex) = build.artifacts_digest.strip_prefix("sha256:") else {
        // No artifacts: the server says why.
        let request = DownloadArtifactRequest {
            id: id.to_string(),
            offset: 0,
        };
        return Err(match server.client().download_artifact(request).await {
            Err(status) => server.refused(status),
            Ok(_) => Failure::failed(format!("build {id} names no artifacts digest")),
        });
    };
    let keeping = |e: io::Error| Failure::failed(format!("cannot keep the download: {e}"));
    fs::create_dir_all(output).map_err(keeping)?;
    let short: String = hex.chars().take(16).collect();
    let staging = output.join(format!(".kiln-artifacts-{short}.staging"));
    let saved = output.join(format!(".kiln-artifacts-{short}.resume"));
    let resumed = match Progress::load(&saved, build.artifacts_size) {
        Ok(Some(progress)) if staging.is_dir() => Some(progress),
        Ok(_) => None,
        Err(why) => {
            eprintln!(
                "kiln artifacts: not resuming from {}: {why}; downloading from the start",
                saved.display()
            );
            None
        }
    };
    let progress = match resumed {
        Some(progress) => {
            eprintln!(
                "kiln artifacts: resuming the download of build {id} at byte {}",
                progress.summed
            );
            progress
        }
        None => {
            forget(&staging, &saved).map_err(keeping)?;
            Progress::start()
        }
    };
    let offset = progress.summed;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(16);
    let reader = SyncIoBridge::new(StreamReader::new(ReceiverStream::new(rx)));
    // Where the extraction stands, marked by the extractor after each entry.
    let extracted = Arc::new(Mutex::new((progress.extracted, progress.entries)));
    let extractor = {
        let (staging, extracted) = (staging.clone(), extracted.clone());
        let skip = progress.extracted - progress.summed;
        tokio::task::spawn_blocking(move || {
            extract_from(reader, offset, skip, &staging, &extracted)
        })
    };
    let request = DownloadArtifactRequest {
        id: id.to_string(),
        offset,
    };
    let mut chunks = server
        .client()
        .download_artifact(request)
        .await
        .map_err(|s| server.refused(s))?
        .into_inner();
    let mut sum = progress.sum.clone();
    let mut received = offset;
    // The sum after each chunk the extraction may not have passed yet: the first is the latest at
    // or before the end of the last entry extracted, which a checkpoint takes.
    let mut sums = VecDeque::from([(offset, progress.sum)]);
    let mut saved_at = progress.extracted;
    let checkpoint = |sums: &mut VecDeque<(u64, RunningSha256)>| {
        let (at, entries) = *extracted.lock().unwrap_or_else(|e| e.into_inner());
        while sums.get(1).is_some_and(|(summed, _)| *summed <= at) {
            sums.pop_front();
        }
        let (summed, sum) = sums[0].clone();
        Progress {
            summed,
            sum,
            extracted: at,
            entries,
        }
    };
    let saving = |p: &Progress| {
        p.save(&saved).map_err(|e| {
            Failure::failed(format!(
                "cannot save how far the download got in {}: {e}",
                saved.display()
            ))
        })
    };
    let cut = loop {
        match chunks.message().await {
            Ok(Some(chunk)) => {
                sum.update(&chunk.data);
                received += chunk.data.len() as u64;
                sums.push_back((received, sum.clone()));
                // An extractor that stopped says why below.
                let _ = tx.send(Ok(chunk.data)).await;
                let now = checkpoint(&mut sums);
                if now.extracted - saved_at >= CHECKPOINT_BYTES {
                    saving(&now)?;
                    saved_at = now.extracted;
                }
            }
            Ok(None) => break None,
            Err(status) => {
                let _ = tx.send(Err(io::Error::other("the download stopped"))).await;
                break Some(status);
            }
        }
    };
    drop(tx);
    let count = extractor
        .await
        .map_err(|e| Failure::failed(format!("the extraction failed: {e}")))?;
    if let Some(status) = cut {
        saving(&checkpoint(&mut sums))?;
        return Err(Failure::failed(format!(
            "the download stopped after {received} of {} bytes ({}); run the same command \
             again to resume it",
            build.artifacts_size,
            status.message()
        )));
    }
    let outcome = match count {
        Ok(count) if sum.finish_hex() == hex.to_ascii_lowercase() => Ok(count),
        Ok(_) => Err(Failure::failed(format!(
            "the downloaded artifacts of build {id} do not match their digest {}; the \
             download was removed: run the command again",
            build.artifacts_digest
        ))),
        Err(e) => Err(Failure::failed(format!("{e:#}"))),
    };
    let Ok(count) = outcome else {
        forget(&staging, &saved).map_err(keeping)?;
        return outcome;
    };
    Progress::remove(&saved).map_err(keeping)?;
    merge(&staging, output).map_err(|e| Failure::failed(format!("{e:#}")))?;
    fs::remove_dir(&staging).map_err(keeping)?;
    Ok(count)
}

/// Removes a download's staging directory and checkpoint, where they are.
fn forget(staging: &Path, saved: &Path) -> io::Result<()> {
    if staging.symlink_metadata().is_ok() {
        fs::remove_dir_all(staging)?;
    }
    Progress::remove(saved)
}

/// Extracts the tar `stream`, which starts at byte `offset` of the tar, into `staging`, after
/// skipping `skip` bytes (the rest of entries extracted before) and the padding to the next
/// header; marks in `extracted` where each entry ends, with the count so far; returns how many
/// entries the tar held.
fn extract_from(
    stream: impl Read,
    offset: u64,
    skip: u64,
    staging: &Path,
    extracted: &Mutex<(u64, usize)>,
) -> anyhow::Result<usize> {
    let before = extracted.lock().unwrap_or_else(|e| e.into_inner()).1;
    let at = Cell::new(offset);
    let mut counted = Counted {
        inner: stream,
        offset: &at,
    };
    let end = offset + skip;
    let padding = (512 - end % 512) % 512;
    io::copy(&mut (&mut counted).take(skip + padding), &mut io::sink())
        .context("the download stopped")?;
    let count = extract(&mut counted, staging, |count| {
        *extracted.lock().unwrap_or_else(|e| e.into_inner()) = (at.get(), before + count);
    })?;
    Ok(before + count)
}

/// Moves what `from` holds into `to`, entry by entry: a directory into a directory of the same
/// name merges, anything else replaces a file or link there (as extracting into `to` would);
/// nothing is moved through a link in `to`. `from` is left empty.
fn merge(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match fs::symlink_metadata(&target) {
            Ok(meta) if is_dir && meta.is_dir() => {
                merge(&source, &target)?;
                fs::remove_dir(&source)
                    .with_context(|| format!("cannot remove {}", source.display()))?;
                continue;
            }
            Ok(meta) if is_dir && meta.file_type().is_symlink() => bail!(
                "{} is a link; the artifacts hold a directory there, which is not written \
                 through links",
                target.display()
            ),
            _ => make_room(&target)?,
        }
        fs::rename(&source, &target)
            .with_context(|| format!("cannot move {} into place", target.display()))?;
    }
    Ok(())
}

/// Extracts the tar `archive` into `dir` (created when missing), calling `done` with the count
/// after each entry written; returns how many entries were written. Stops at the first entry
/// that is refused; what came before it stays.
fn extract(archive: impl Read, dir: &Path, mut done: impl FnMut(usize)) -> anyhow::Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut archive = tar::Archive::new(archive);
    let mut count = 0;
    let mut real_dirs = HashSet::new();
    let umask = umask();
    let mut buffer = vec![0; COPY_BUFFER];
    for entry in archive
        .entries()
        .context("the artifacts archive is unreadable")?
    {
        let mut entry = entry.context("the artifacts archive is unreadable")?;
        let path = text(&entry.path_bytes(), "path")?;
        let link = match entry.link_name_bytes() {
            Some(bytes) => text(&bytes, "link target")?,
            None => String::new(),
        };
        let kind = entry.header().entry_type();
        let checked = match kind {
            EntryType::Regular | EntryType::Continuous => ArchiveEntry::File,
            EntryType::Directory => ArchiveEntry::Dir,
            EntryType::Symlink => ArchiveEntry::Symlink { target: &link },
            EntryType::Link => ArchiveEntry::HardLink { target: &link },
            // Metadata for the whole archive, not a file.
            EntryType::XGlobalHeader => continue,
            other => ArchiveEntry::Other {
                kind: kind_name(other),
            },
        };
        let relative = check_entry(&path, checked)?;
        if relative.is_empty() {
            continue;
        }
        let target = no_link_on_the_way(dir, &relative, &mut real_dirs)?;
        match kind {
            EntryType::Directory => fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?,
            EntryType::Symlink => {
                make_room(&target)?;
                std::os::unix::fs::symlink(&link, &target)
                    .with_context(|| format!("cannot create the link {}", target.display()))?;
            }
            EntryType::Link => {
                // The target was checked to be inside; it must also be a plain file already
                // extracted, not a link (a link's relative target means something else here).
                let source_relative = check_entry(&link, ArchiveEntry::File)?;
                let source = no_link_on_the_way(dir, &source_relative, &mut real_dirs)?;
                let is_file = fs::symlink_metadata(&source).is_ok_and(|m| m.is_file());
                if !is_file {
                    bail!("archive entry {path:?} is a hard link to {link:?}, which is not a file extracted before it");
                }
                make_room(&target)?;
                fs::hard_link(&source, &target)
                    .with_context(|| format!("cannot create the link {}", target.display()))?;
            }
            _ => {
                // Permission bits only: no setuid, setgid or sticky bits from a build.
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
                let mut file = create(&target, mode, umask)?;
                copy_whole(&mut entry, &mut file, &mut buffer)
                    .with_context(|| format!("cannot write {}", target.display()))?;
            }
        }
        // Whatever of the entry was not read (a directory's data, say): the next one follows it.
        io::copy(&mut entry, &mut io::sink()).context("the artifacts archive is unreadable")?;
        count += 1;
        done(count);
    }
    Ok(count)
}

fn text(bytes: &[u8], what: &str) -> anyhow::Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        anyhow!(
            "archive entry {:?}: its {what} is not UTF-8; Kiln extracts only UTF-8 names",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        _ => "special entry",
    }
}

/// `dir/relative`, after checking that no directory on the way there is a symlink (writing
/// through one could leave `dir`); the missing ones are created, as real directories. `checked`
/// holds the directories this extraction already found real (no entry can replace a directory).
fn no_link_on_the_way(
    dir: &Path,
    relative: &str,
    checked: &mut HashSet<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let mut path = dir.to_path_buf();
    let mut parts = relative.split('/').peekable();
    while let Some(part) = parts.next() {
        path.push(part);
        if parts.peek().is_none() {
            break;
        }
        if checked.contains(&path) {
            continue;
        }
        checked.insert(path.clone());
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => bail!(
                "archive entry {relative:?} lies under the link {}; an archive may not write \
                 through links",
                path.display()
            ),
            Ok(meta) if !meta.is_dir() => bail!(
                "archive entry {relative:?} lies under the file {}",
                path.display()
            ),
            Ok(_) => {}
            // Its parent was checked (or created) in the step before.
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&path)
                .with_context(|| format!("cannot create {}", path.display()))?,
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        }
    }
    Ok(path)
}

/// Files are written in pieces of up to this much (most in one write).
const COPY_BUFFER: usize = 1 << 20;

/// Creates the file `target` with permission bits `mode` (set exactly, whatever `umask` takes
/// away at creation), replacing a file or link there.
fn create(target: &Path, mode: u32, umask: Option<u32>) -> anyhow::Result<fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(target)
    };
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            make_room(target)?;
            open()
        }
        opened => opened,
    }
    .with_context(|| format!("cannot create {}", target.display()))?;
    if umask.is_none_or(|umask| mode & umask != 0) {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", target.display()))?;
    }
    Ok(file)
}

/// This process's umask, from `/proc/self/status` (`None` where that does not say).
fn umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Copies `from` to `to` to its end through `buffer`, filling the buffer before each write.
fn copy_whole(from: &mut impl Read, to: &mut impl Write, buffer: &mut [u8]) -> io::Result<()> {
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            match from.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        to.write_all(&buffer[..filled])?;
        if filled < buffer.len() {
            return Ok(());
        }
    }
}

/// Removes a file or link where an entry goes (a later entry replaces an earlier one, as with
/// `tar`), so that creating the entry never follows an existing link.
fn make_room(target: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => bail!(
            "{} is a directory; the archive also holds a file there",
            target.display()
        ),
        Ok(_) => {
            fs::remove_file(target).with_context(|| format!("cannot replace {}", target.display()))
        }
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar entry with raw `path` and `link` bytes: the tar crate's builder refuses `..` and
    /// absolute paths, which is what these tests need to write.
    fn entry(
        builder: &mut tar::Builder<Vec<u8>>,
        kind: EntryType,
        path: &str,
        link: &str,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_old();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }

    fn tar_of(entries: &[(EntryType, &str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (kind, path, link) in entries {
            let data: &[u8] = match kind {
                EntryType::Regular => b"hello\n",
                _ => b"",
            };
            entry(&mut builder, *kind, path, link, data);
        }
        builder.into_inner().expect("tar")
    }

    /// Extracts into `out/inside`, so that an escape would show up in `out`.
    fn extract_tar(
        entries: &[(EntryType, &str, &str)],
    ) -> (tempfile::TempDir, anyhow::Result<usize>) {
        let out = tempfile::tempdir().expect("tmp");
        let result = extract(
            tar_of(entries).as_slice(),
            &out.path().join("inside"),
            |_| {},
        );
        (out, result)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_plain_tree_is_extracted() {
        let (out, result) = extract_tar(&[
            (EntryType::Directory, "primary/", ""),
            (EntryType::Regular, "primary/app.txt", ""),
            (EntryType::Regular, "secondary/docs/index.html", ""),
            (EntryType::Symlink, "primary/latest", "app.txt"),
            (EntryType::Link, "primary/copy.txt", "primary/app.txt"),
            (EntryType::Symlink, "latest", "primary/app.txt"),
        ]);
        assert_eq!(result.expect("extracted"), 6);
        let inside = out.path().join("inside");
        assert_eq!(
            fs::read_to_string(inside.join("primary/latest")).expect("read"),
            "hello\n"
        );
        assert_eq!(
            fs::read_to_string(inside.join("primary/copy.txt")).expect("read"),
            "hello\n"
        );
        assert!(inside.join("secondary/docs/index.html").is_file());
        assert_eq!(
            fs::read_to_string(inside.join("latest")).expect("read"),
            "hello\n"
        );
    }

    #[test]
    fn files_keep_their_exact_modes_and_replace_what_was_there() {
        let big: Vec<u8> = (0..COPY_BUFFER * 2 + 7).map(|i| (i % 251) as u8).collect();
        let mut builder = tar::Builder::new(Vec::new());
        for (path, mode, data) in [
            ("open.sh", 0o777, b"#!/bin/sh\n".as_slice()),
            ("private", 0o600, b"secret"),
            ("setuid", 0o4755, b"x"),
            ("big.bin", 0o644, &big),
            ("was-a-link", 0o644, b"file now"),
            ("empty", 0o640, b""),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            builder
                .append_data(&mut header, path, data)
                .expect("append");
        }
        let archive = builder.into_inner().expect("tar");
        let out = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink("/etc/hostname", out.path().join("was-a-link")).expect("link");
        fs::write(out.path().join("big.bin"), "old and shorter").expect("old");
        assert_eq!(
            extract(archive.as_slice(), out.path(), |_| {}).expect("extracted"),
            6
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            fs::symlink_metadata(out.path().join(name))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("open.sh"), 0o777, "whatever the umask");
        assert_eq!(mode("private"), 0o600);
        assert_eq!(mode("setuid"), 0o755, "no setuid bit from a build");
        assert_eq!(mode("empty"), 0o640);
        assert_eq!(fs::read(out.path().join("big.bin")).expect("big"), big);
        assert_eq!(
            fs::read_to_string(out.path().join("was-a-link")).expect("read"),
            "file now"
        );
        assert!(!fs::symlink_metadata(out.path().join("was-a-link"))
            .expect("meta")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn parent_paths_are_refused() {
        let (out, result) = extract_tar(&[(EntryType::Regular, "../x", "")]);
        let e = result.expect_err("refused").to_string();
        assert!(
            e.contains("\"../x\"") && e.contains("leaves the archive"),
            "{e}"
        );
        assert_eq!(names(out.path()), ["inside"]);
    }

    #[test]
    fn absolute_paths_are_refused() {
        let (out, result) = extract_tar(&[(EntryType::Regular, "/tmp/kiln-escape", "")]);
        assert!(result
            .expect_err("refused")
            .to_string()
            .contains("leaves the archive"));
        assert_eq!(names(out.path()), ["inside"]);
    }

    #[test]
    fn symlinks_out_are_refused() {
        for target in ["../x", "/etc/passwd", "a/../../x", "."] {
            let (out, result) = extract_tar(&[(EntryType::Symlink, "link", target)]);
            let e = result.expect_err(target).to_string();
            assert!(e.contains("link"), "{e}");
            assert_eq!(names(out.path()), ["inside"]);
            assert!(names(&out.path().join("inside")).is_empty(), "{target}");
        }
    }

    #[test]
    fn nothing_is_written_through_a_link() {
        // Each link stays inside when read from where its path says, but `l` would really be
        // created in `k` (through `s`), and three levels up from `k` is outside.
        let (out, result) = extract_tar(&[
            (EntryType::Directory, "k/", ""),
            (EntryType::Symlink, "d1/d2/s", "../../k"),
            (EntryType::Symlink, "d1/d2/s/l", "../../../x"),
        ]);
        let e = result.expect_err("refused").to_string();
        assert!(e.contains("through links"), "{e}");
        assert!(names(&out.path().join("inside/k")).is_empty());
        let (_out, result) = extract_tar(&[
            (EntryType::Symlink, "s", "k"),
            (EntryType::Regular, "s/file", ""),
        ]);
        let e = result.expect_err("refused").to_string();
        assert!(e.contains("through links"), "{e}");
    }

    #[test]
    fn hard_links_must_name_an_extracted_file() {
        let (_out, result) = extract_tar(&[
            (EntryType::Symlink, "a/b/l", "../x"),
            (EntryType::Link, "l2", "a/b/l"),
        ]);
        assert!(result
            .expect_err("refused")
            .to_string()
            .contains("not a file"));
        let (_out, result) = extract_tar(&[(EntryType::Link, "h", "../outside")]);
        assert!(result
            .expect_err("refused")
            .to_string()
            .contains("outside the archive"));
    }

    #[test]
    fn devices_are_refused() {
        let (_out, result) = extract_tar(&[(EntryType::Char, "tty", "")]);
        assert!(result
            .expect_err("refused")
            .to_string()
            .contains("character device"));
    }
}
