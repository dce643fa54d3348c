//! Checks for archives that come from outside: uploaded source archives, artifact tars a client
//! downloads. Pure functions over an entry's path and kind, shared by the coordinator (which
//! refuses a bad upload) and by everything that extracts an archive.
//!
//! An entry is refused when its path is absolute or has a `..` component, or when it is a link
//! whose target leaves the archive: a symbolic link with an absolute target, one whose target
//! (taken from the link's directory) climbs above the archive's root, or one that points at the
//! root itself (through it, `link/..` would reach the outside); a hard link to anything but an
//! in-archive path. Other kinds (devices, fifos) are refused too.

use std::fmt;

use crate::artifacts::normalize;

/// What an archive entry is, for [`check_entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveEntry<'a> {
    File,
    Dir,
    Symlink {
        target: &'a str,
    },
    HardLink {
        target: &'a str,
    },
    /// Anything else (a device, a fifo), by its kind's name.
    Other {
        kind: &'a str,
    },
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "archive entry {:?} {}: an archive may only hold relative paths inside itself, \
             without `..` and without links that leave it; remove the entry and try again",
            self.path, self.reason
        )
    }
}

impl std::error::Error for ArchiveError {}

/// Checks one entry; returns its normalized path (`/`-separated, no `./`, no trailing `/`;
/// empty for the archive's root directory).
pub fn check_entry(path: &str, entry: ArchiveEntry<'_>) -> Result<String, ArchiveError> {
    let refuse = |reason: String| ArchiveError {
        path: path.to_string(),
        reason,
    };
    let normalized = inside(path).ok_or_else(|| refuse("leaves the archive".to_string()))?;
    match entry {
        ArchiveEntry::File | ArchiveEntry::Dir => {}
        ArchiveEntry::Symlink { target } => {
            let parent = normalized.rsplit_once('/').map_or("", |(dir, _)| dir);
            let resolved = match target.starts_with('/') {
                true => None,
                // A link at the top has no parent to join: "/x" would read as absolute.
                false if parent.is_empty() => normalize(target),
                false => normalize(&format!("{parent}/{target}")),
            };
            match resolved {
                None => {
                    return Err(refuse(format!(
                        "is a link to {target:?}, outside the archive"
                    )))
                }
                Some(r) if r.is_empty() => {
                    return Err(refuse(format!(
                        "is a link to {target:?}, the archive's root directory"
                    )))
                }
                Some(_) => {}
            }
        }
        ArchiveEntry::HardLink { target } => {
            if inside(target).is_none_or(|t| t.is_empty()) {
                return Err(refuse(format!(
                    "is a hard link to {target:?}, outside the archive"
                )));
            }
        }
        ArchiveEntry::Other { kind } => {
            return Err(refuse(format!(
                "is a {kind}; only files, directories and links are allowed"
            )))
        }
    }
    Ok(normalized)
}

/// A relative path without `..` components, normalized; `None` otherwise.
fn inside(path: &str) -> Option<String> {
    if path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return None;
    }
    normalize(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_entries_are_normalized() {
        assert_eq!(check_entry("./a/b/", ArchiveEntry::Dir), Ok("a/b".into()));
        assert_eq!(check_entry("./", ArchiveEntry::Dir), Ok(String::new()));
        assert_eq!(check_entry("a//c", ArchiveEntry::File), Ok("a/c".into()));
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        for p in ["../x", "a/../../x", "a/../b", "/etc/passwd"] {
            let e = check_entry(p, ArchiveEntry::File).expect_err(p);
            assert!(e.to_string().contains("leaves the archive"), "{e}");
        }
    }

    #[test]
    fn links_must_stay_inside() {
        let ok = |p, t| check_entry(p, ArchiveEntry::Symlink { target: t });
        assert!(ok("a/l", "../b").is_ok());
        assert!(ok("a/l", "c/d").is_ok());
        assert!(ok("l", "a/b").is_ok(), "a link at the top to a file inside");
        assert!(ok("l", "../x").is_err());
        assert!(ok("a/l", "../../x").is_err());
        assert!(ok("l", "/etc").is_err());
        assert!(ok("l", ".").is_err());
        assert!(ok("a/l", "..").is_err());
        let hard = |t| check_entry("h", ArchiveEntry::HardLink { target: t });
        assert!(hard("a/b").is_ok());
        assert!(hard("../b").is_err());
        assert!(hard("/b").is_err());
        let e = check_entry("dev", ArchiveEntry::Other { kind: "device" }).expect_err("device");
        assert!(e.to_string().contains("only files"), "{e}");
    }
}
