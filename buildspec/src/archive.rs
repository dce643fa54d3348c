//! Checks for archives that come from outside: uploaded source archives, artifact tars a client
//! downloads. Pure functions over an entry's path and kind, shared by the coordinator (which
//! refuses a bad upload) and by everything that extracts an archive.
//!
//! An entry is refused when its path is absolute or has a `..` component, or when it is a link
//! whose target leaves the archive: a symbolic link with an absolute target, one whose target
//! (taken from the link's directory) climbs above the archive's root, or one that points at the
//! root itself (through it, `link/..` would reach the outside); a hard link to anything but an
//! in-archive path. Other kinds (devices, fifos) are refused too.

use std::collections::HashSet;
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
            let resolved = match (target.starts_with('/'), parent) {
                (true, _) => None,
                // A link at the root: `format!("/{target}")` would read as absolute.
                (false, "") => normalize(target),
                (false, parent) => normalize(&format!("{parent}/{target}")),
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

/// Checks a whole archive, entry by entry in order: each with [`check_entry`], and none may go
/// through a symbolic link an earlier entry made: no entry below such a link (it would be written
/// through it), no link target and no hard link that passes through one (`a/link/../..` reads as
/// inside but, through the link, may lead out).
#[derive(Debug, Default)]
pub struct ArchiveCheck {
    links: HashSet<String>,
}

impl ArchiveCheck {
    /// Checks the next entry; returns its normalized path.
    pub fn entry(&mut self, path: &str, entry: ArchiveEntry<'_>) -> Result<String, ArchiveError> {
        let normalized = check_entry(path, entry)?;
        let refuse = |reason: String| ArchiveError {
            path: path.to_string(),
            reason,
        };
        if let Some(link) = self.link_on(&normalized, false) {
            return Err(refuse(format!("lies below the link {link:?}")));
        }
        match entry {
            ArchiveEntry::Symlink { target } => {
                let parent = normalized.rsplit_once('/').map_or("", |(dir, _)| dir);
                if let Some(link) = self.link_on(&format!("{parent}/{target}"), true) {
                    return Err(refuse(format!(
                        "is a link to {target:?}, which goes through the link {link:?}"
                    )));
                }
                self.links.insert(normalized.clone());
            }
            ArchiveEntry::HardLink { target } => {
                if let Some(link) = self.link_on(target, true) {
                    return Err(refuse(format!(
                        "is a hard link to {target:?}, which goes through the link {link:?}"
                    )));
                }
            }
            _ => {}
        }
        Ok(normalized)
    }

    /// The first known link met walking `path` component by component (`..` steps back); the
    /// last component counts only with `whole`.
    fn link_on(&self, path: &str, whole: bool) -> Option<String> {
        let parts: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut at: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if *part == ".." {
                at.pop();
                continue;
            }
            at.push(part);
            let last = i + 1 == parts.len();
            let here = at.join("/");
            if (whole || !last) && self.links.contains(&here) {
                return Some(here);
            }
        }
        None
    }
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
        assert!(ok("l", "c/d").is_ok());
        assert!(ok("./l", "c").is_ok());
        assert!(ok("l", "../c").is_err());
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

    #[test]
    fn links_made_earlier_cannot_be_gone_through() {
        let mut check = ArchiveCheck::default();
        let link = |t| ArchiveEntry::Symlink { target: t };
        assert!(check.entry("d1/d2/s", link("..")).is_ok(), "points at d1");
        let e = check
            .entry("out", link("d1/d2/s/../.."))
            .expect_err("through s");
        assert!(
            e.to_string().contains("goes through the link \"d1/d2/s\""),
            "{e}"
        );
        let e = check
            .entry("d1/d2/s/file", ArchiveEntry::File)
            .expect_err("below");
        assert!(e.to_string().contains("lies below the link"), "{e}");
        let e = check
            .entry(
                "h",
                ArchiveEntry::HardLink {
                    target: "d1/d2/s/x",
                },
            )
            .expect_err("hard link through");
        assert!(e.to_string().contains("goes through the link"), "{e}");
        assert!(check.entry("ok", link("d1/d2")).is_ok());
        assert!(check.entry("d1/d2/file", ArchiveEntry::File).is_ok());
    }
}
