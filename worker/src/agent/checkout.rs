//! Getting an assignment's source onto the worker's disk: an uploaded archive fetched from the
//! coordinator and unpacked with every entry checked, or a git repository cloned on the host.
//!
//! Archives come from outside, so each entry must pass `kiln_buildspec::archive::ArchiveCheck` (no
//! absolute paths, no `..`, no links that leave the archive, only files, directories and links),
//! and no entry may go through a link the archive made earlier (a lexical check cannot see
//! through links). One bad entry refuses the whole build. The fetched archive is checked
//! against its digest before anything is unpacked.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use kiln_buildspec::archive::{ArchiveCheck, ArchiveEntry};
use kiln_proto::v1::FetchSourceRequest;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::Client;

/// Why the source could not be had. `Refused` is the build's fault (FAILED, `CLIENT_ERROR`);
/// the others are Kiln's (FAULT).
#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("{0}")]
    Refused(String),
    #[error("fetching source {digest} from the coordinator: {status}")]
    Fetch {
        digest: String,
        status: Box<tonic::Status>,
    },
    #[error("source archive: {0}")]
    Io(#[from] io::Error),
}

/// Where a build's source is, and what version it is.
#[derive(Debug, Clone, Default)]
pub struct Checkout {
    pub dir: PathBuf,
    pub source_version: Option<String>,
    pub resolved_source_version: Option<String>,
    pub repo_url: Option<String>,
}

/// Streams the archive with `digest` (`sha256:<hex>`) into `dest` and checks its digest.
pub async fn fetch_archive(
    client: &mut Client,
    digest: &str,
    dest: &Path,
) -> Result<(), CheckoutError> {
    let fetch_error = |status| CheckoutError::Fetch {
        digest: digest.to_string(),
        status: Box::new(status),
    };
    let mut stream = client
        .fetch_source(FetchSourceRequest {
            digest: digest.to_string(),
        })
        .await
        .map_err(fetch_error)?
        .into_inner();
    let mut file = tokio::fs::File::create(dest).await?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.message().await.map_err(fetch_error)? {
        hasher.update(&chunk.data);
        file.write_all(&chunk.data).await?;
    }
    file.flush().await?;
    let got = format!("sha256:{}", hex(&hasher.finalize()));
    // Only sha256 digests can be checked; another scheme is the coordinator's business.
    if digest.starts_with("sha256:") && !got.eq_ignore_ascii_case(digest) {
        return Err(CheckoutError::Io(io::Error::other(format!(
            "the coordinator sent {got} for {digest}"
        ))));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks the tar at `archive` into `dir` (which exists), refusing the first bad entry.
pub fn extract(archive: &Path, dir: &Path) -> Result<(), CheckoutError> {
    let mut tar = tar::Archive::new(File::open(archive)?);
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let mut checker = ArchiveCheck::default();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path_bytes = entry.path_bytes().into_owned();
        let path = std::str::from_utf8(&path_bytes)
            .map_err(|_| refused(&String::from_utf8_lossy(&path_bytes), "is not UTF-8"))?;
        let target = entry
            .link_name_bytes()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default();
        use tar::EntryType as T;
        let kind = match entry.header().entry_type() {
            T::Regular | T::Continuous | T::GNUSparse => ArchiveEntry::File,
            T::Directory => ArchiveEntry::Dir,
            T::Symlink => ArchiveEntry::Symlink { target: &target },
            T::Link => ArchiveEntry::HardLink { target: &target },
            // Metadata records the tar crate folds into the next entry.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            T::Char | T::Block => ArchiveEntry::Other { kind: "device" },
            T::Fifo => ArchiveEntry::Other { kind: "fifo" },
            _ => ArchiveEntry::Other {
                kind: "special file",
            },
        };
        let normalized = checker
            .entry(path, kind)
            .map_err(|e| CheckoutError::Refused(e.to_string()))?;
        if normalized.is_empty() {
            continue;
        }
        // `unpack_in` checks once more that nothing lands outside `dir`.
        if !entry.unpack_in(dir)? {
            return Err(refused(path, "leaves the archive"));
        }
    }
    Ok(())
}

fn refused(path: &str, reason: &str) -> CheckoutError {
    CheckoutError::Refused(format!(
        "source archive entry {path:?} {reason}; the source archive was refused"
    ))
}

/// Clones `url` into `dir` (which must not exist) and checks out `revision` when given.
pub async fn git_clone(
    url: &str,
    revision: &str,
    depth: u32,
    dir: &Path,
) -> Result<Checkout, CheckoutError> {
    if url.starts_with('-') || revision.starts_with('-') {
        return Err(CheckoutError::Refused(format!(
            "git source {url:?} revision {revision:?}: neither may start with '-'"
        )));
    }
    let dir_arg = dir.as_os_str();
    if depth == 0 {
        git(
            None,
            &[
                "clone".as_ref(),
                "--quiet".as_ref(),
                "--".as_ref(),
                url.as_ref(),
                dir_arg,
            ],
        )
        .await?;
        if !revision.is_empty() {
            git(
                Some(dir),
                &["checkout", "--quiet", "--detach", revision].map(AsRef::as_ref),
            )
            .await?;
        }
    } else {
        // A shallow clone: the default branch's tip, or the revision fetched on its own (a
        // branch, a tag, or a commit the server lets clients ask for).
        let depth_arg = format!("--depth={depth}");
        git(
            None,
            &[
                "clone".as_ref(),
                "--quiet".as_ref(),
                "--no-checkout".as_ref(),
                depth_arg.as_ref(),
                "--".as_ref(),
                url.as_ref(),
                dir_arg,
            ],
        )
        .await?;
        let target = match revision {
            "" => "HEAD",
            revision => {
                git(
                    Some(dir),
                    &["fetch", "--quiet", &depth_arg, "origin", revision].map(AsRef::as_ref),
                )
                .await?;
                "FETCH_HEAD"
            }
        };
        git(
            Some(dir),
            &["checkout", "--quiet", "--detach", target].map(AsRef::as_ref),
        )
        .await?;
    }
    let head = git(Some(dir), &["rev-parse", "HEAD"].map(AsRef::as_ref)).await?;
    Ok(Checkout {
        dir: dir.to_path_buf(),
        source_version: (!revision.is_empty()).then(|| revision.to_string()),
        resolved_source_version: Some(head.trim().to_string()),
        repo_url: Some(url.to_string()),
    })
}

/// Runs git without prompts, with only the transports the protocol allows; stdout on success.
async fn git(dir: Option<&Path>, args: &[&std::ffi::OsStr]) -> Result<String, CheckoutError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    let out = command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", "https:http:ssh:git:file")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        return Err(CheckoutError::Refused(format!(
            "git {} failed: {}",
            shown.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar from (path, kind, link target or contents) triples, written without the tar
    /// crate's own path checks so bad entries can be made.
    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("tmp");
        let mut builder = tar::Builder::new(file.reopen().expect("reopen"));
        for (path, kind, extra) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            let data = match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    header.set_link_name(extra).expect("link name");
                    &[][..]
                }
                _ => extra.as_bytes(),
            };
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data).expect("append");
        }
        builder.finish().expect("finish");
        file
    }

    fn refusal(entries: &[(&str, tar::EntryType, &str)]) -> String {
        let tar = tar_of(entries);
        let dir = tempfile::tempdir().expect("dir");
        match extract(tar.path(), dir.path()) {
            Err(CheckoutError::Refused(message)) => message,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_normal_archive_is_extracted() {
        use tar::EntryType as T;
        let tar = tar_of(&[
            ("./", T::Directory, ""),
            ("src/", T::Directory, ""),
            ("src/main.c", T::Regular, "int main;"),
            ("link", T::Symlink, "src/main.c"),
            ("hard", T::Link, "src/main.c"),
        ]);
        let dir = tempfile::tempdir().expect("dir");
        extract(tar.path(), dir.path()).expect("extracted");
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).expect(p);
        assert_eq!(read("src/main.c"), "int main;");
        assert_eq!(read("link"), "int main;");
        assert_eq!(read("hard"), "int main;");
    }

    #[test]
    fn escaping_entries_are_refused() {
        use tar::EntryType as T;
        let m = refusal(&[("../x", T::Regular, "x")]);
        assert!(m.contains("leaves the archive"), "{m}");
        let m = refusal(&[("/etc/x", T::Regular, "x")]);
        assert!(m.contains("leaves the archive"), "{m}");
        let m = refusal(&[("out", T::Symlink, "../../etc")]);
        assert!(m.contains("outside the archive"), "{m}");
        let m = refusal(&[("abs", T::Symlink, "/etc")]);
        assert!(m.contains("outside the archive"), "{m}");
        let m = refusal(&[("dev", T::Char, "")]);
        assert!(m.contains("only files"), "{m}");
    }

    #[test]
    fn nothing_is_written_through_a_link() {
        use tar::EntryType as T;
        // `a/b/up` points at `a` (inside), but `a/b/up/x` reaches outside lexical sight.
        let m = refusal(&[
            ("a/", T::Directory, ""),
            ("a/b/", T::Directory, ""),
            ("a/b/up", T::Symlink, ".."),
            ("a/b/up/x", T::Regular, "x"),
        ]);
        assert!(m.contains("below the link"), "{m}");
    }

    #[tokio::test]
    async fn a_git_repository_is_cloned_at_a_revision() {
        let repo = tempfile::tempdir().expect("repo");
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(repo.path())
                .args(["-c", "user.name=k", "-c", "user.email=k@k"])
                .args(args)
                .output()
                .expect("git")
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        run(&["init", "--quiet"]);
        std::fs::write(repo.path().join("f"), "1").expect("write");
        run(&["add", "f"]);
        run(&["commit", "--quiet", "-m", "one"]);
        run(&["tag", "v1"]);
        std::fs::write(repo.path().join("f"), "2").expect("write");
        run(&["commit", "--quiet", "-am", "two"]);
        let dest = tempfile::tempdir().expect("dest");
        let url = format!("file://{}", repo.path().display());
        let checkout = git_clone(&url, "v1", 0, &dest.path().join("src"))
            .await
            .expect("cloned");
        let text = std::fs::read_to_string(checkout.dir.join("f")).expect("f");
        assert_eq!(text, "1");
        assert_eq!(checkout.source_version.as_deref(), Some("v1"));
        assert_eq!(
            checkout.resolved_source_version.as_ref().map(|v| v.len()),
            Some(40)
        );
        let bad = git_clone(&url, "no-such-rev", 0, &dest.path().join("again")).await;
        assert!(matches!(bad, Err(CheckoutError::Refused(_))), "{bad:?}");
        // Shallow: one commit of history, at the tip or at a tag.
        let count = |dir: &Path| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(["rev-list", "--count", "HEAD"])
                .output()
                .expect("git");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let tip = git_clone(&url, "", 1, &dest.path().join("shallow"))
            .await
            .expect("shallow clone");
        assert_eq!(count(&tip.dir), "1");
        assert_eq!(std::fs::read_to_string(tip.dir.join("f")).expect("f"), "2");
        let tagged = git_clone(&url, "v1", 1, &dest.path().join("shallow-tag"))
            .await
            .expect("shallow clone of a tag");
        assert_eq!(count(&tagged.dir), "1");
        assert_eq!(
            std::fs::read_to_string(tagged.dir.join("f")).expect("f"),
            "1"
        );
        assert_eq!(
            tagged.resolved_source_version,
            checkout.resolved_source_version
        );
        let full = git_clone(&url, "", 0, &dest.path().join("full"))
            .await
            .expect("full clone");
        assert_eq!(count(&full.dir), "2");
    }
}
