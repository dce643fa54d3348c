//! The build's source: a checkout directory streamed into the container as a tar archive.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::ignore::IgnoreRules;

/// Where the primary source lives in the container (`CODEBUILD_SRC_DIR`).
pub const SRC_DIR: &str = "/codebuild/output/src1/src";

/// A `Write` that sends what it gets down a channel, in chunks of at most `CHUNK` bytes.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

/// A file or directory Kiln adds to the archive besides the source (the build's state files).
#[derive(Debug, Clone)]
pub struct ExtraEntry {
    /// Relative to `/`.
    pub path: String,
    pub mode: u32,
    /// `None`: a directory.
    pub contents: Option<Vec<u8>>,
}

/// Streams `dir` as a tar whose entries sit under `SRC_DIR` (relative to `/`), then `extra`.
/// Symlinks are archived as links, never followed, so nothing outside `dir` is read. The returned
/// task yields the archiving error, if any (the stream then ends early and the upload fails).
pub fn archive_dir(
    dir: &Path,
    extra: Vec<ExtraEntry>,
) -> (
    impl Stream<Item = Bytes> + Send + 'static,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    archive_under(dir, SRC_DIR, extra, None)
}

/// Streams `dir` as a tar with the checkout's files at the archive's root (`buildspec.yml`,
/// `src/main.rs`), the layout `BuildService.UploadSource` expects, leaving out what its
/// `.kilnignore` names (see [`crate::ignore`]); otherwise as [`archive_dir`].
pub fn archive_checkout(
    dir: &Path,
) -> io::Result<(
    impl Stream<Item = Bytes> + Send + 'static,
    tokio::task::JoinHandle<io::Result<()>>,
)> {
    let rules = IgnoreRules::load(dir)?;
    Ok(archive_under(dir, "", Vec::new(), Some(rules)))
}

/// `dir` under `root` (absolute, or empty for the archive's root), then `extra`; with `ignore`,
/// without what its rules leave out.
fn archive_under(
    dir: &Path,
    root: &'static str,
    extra: Vec<ExtraEntry>,
    ignore: Option<IgnoreRules>,
) -> (
    impl Stream<Item = Bytes> + Send + 'static,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let dir: PathBuf = dir.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx,
            buf: Vec::new(),
        };
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        let mut prefix = PathBuf::new();
        // Parent directories first, so the extraction creates them with sane modes.
        for part in root.split('/').filter(|part| !part.is_empty()) {
            prefix.push(part);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &prefix, io::empty())?;
        }
        match &ignore {
            Some(rules) => append_filtered(&mut builder, &dir, &prefix, "", rules)?,
            None => builder.append_dir_all(&prefix, &dir)?,
        }
        for entry in extra {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode);
            match &entry.contents {
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, &entry.path, io::empty())?;
                }
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    builder.append_data(&mut header, &entry.path, bytes.as_slice())?;
                }
            }
        }
        let mut writer = builder.into_inner()?;
        writer.flush()
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (stream, task)
}

/// Appends what is in `dir/rel` (in name order) under `prefix/rel`, leaving out what `rules`
/// exclude; symlinks go in as links.
fn append_filtered<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
    rel: &str,
    rules: &IgnoreRules,
) -> io::Result<()> {
    let mut entries = std::fs::read_dir(dir.join(rel))?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let child = match rel {
            "" => name.to_string_lossy().into_owned(),
            rel => format!("{rel}/{}", name.to_string_lossy()),
        };
        let is_dir = entry.file_type()?.is_dir();
        if rules.excluded(&child, is_dir) {
            continue;
        }
        let inside = prefix.join(&child);
        if is_dir {
            builder.append_dir(&inside, entry.path())?;
            append_filtered(builder, dir, prefix, &child, rules)?;
        } else {
            builder.append_path_with_name(entry.path(), &inside)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_checkout_archive_holds_the_files_at_its_root() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("buildspec.yml"), "version: 0.2\n").expect("write");
        std::fs::create_dir(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").expect("write");
        let paths = listed(dir.path()).await;
        assert_eq!(paths, ["buildspec.yml", "src", "src/main.rs"]);
    }

    async fn listed(dir: &Path) -> Vec<String> {
        let (stream, task) = archive_checkout(dir).expect("archive");
        let bytes: Vec<u8> = stream.flat_map(futures_util::stream::iter).collect().await;
        task.await.expect("join").expect("archive");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut paths: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let kind = if e.header().entry_type().is_symlink() {
                    "@"
                } else {
                    ""
                };
                format!("{}{kind}", e.path().expect("path").display())
            })
            .collect();
        paths.sort();
        paths
    }

    #[tokio::test]
    async fn a_checkout_archive_leaves_out_what_kilnignore_names() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = [
            "buildspec.yml",
            "a.log",
            "keep.log",
            "target/debug/app",
            "web/node_modules/x/index.js",
            "docs/private/secret.md",
            "docs/guide.md",
            "src/main.rs",
        ];
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, "x").expect("write");
        }
        std::os::unix::fs::symlink("src/main.rs", dir.path().join("main-link")).expect("link");
        std::fs::write(
            dir.path().join(".kilnignore"),
            "# not uploaded\ntarget/\n*.log\n!keep.log\n/docs/private\nnode_modules/\n",
        )
        .expect("write");
        assert_eq!(
            listed(dir.path()).await,
            [
                ".kilnignore",
                "buildspec.yml",
                "docs",
                "docs/guide.md",
                "keep.log",
                "main-link@",
                "src",
                "src/main.rs",
                "web",
            ]
        );
        std::fs::write(dir.path().join(".kilnignore"), "ok\n../up\n").expect("write");
        let e = archive_checkout(dir.path()).err().expect("refused");
        assert!(e.to_string().contains(".kilnignore:2:"), "{e}");
    }
}
