//! The source tree read in place, through `/proc/<pid>/root` of the build container's first
//! process: possible when the worker runs as root in the Docker host's process namespace, and
//! several times faster than Docker's archive API, which tars the tree through the daemon.
//!
//! Nothing outside the source directory is read, whatever the build left there or changes while
//! the worker reads: below the directory's descriptor, every path is opened with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, and every directory walked
//! with `O_NOFOLLOW` from its parent's descriptor, so a link (or a directory swapped for one)
//! fails the open instead of leading out. Only regular files are read, each exactly to the size
//! listed; devices and fifos are never opened.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;

use kiln_buildspec::artifacts::{normalize, Entry, EntryKind};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};

use super::Listing;

/// Deeper trees are read through the archive instead (one descriptor is open per level).
const MAX_DEPTH: usize = 128;

/// No link of any kind is followed and nothing above the descriptor is reached.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Opens directory `dir` (absolute, as the container sees it) of the container `id` whose first
/// process is `pid`, checking that the process is that container's (a worker in another process
/// namespace would see some other process under that number).
pub(super) fn open(id: &str, pid: u32, dir: &str) -> io::Result<OwnedFd> {
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Read after the open: the process held the root then, and it is the container's.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    if !cgroups.contains(id) {
        return Err(io::Error::other(format!(
            "process {pid} here is not container {id}'s: the worker and the Docker daemon see different processes"
        )));
    }
    let relative = dir.trim_start_matches('/');
    Ok(rustix::fs::openat2(
        &root,
        relative,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        beneath(),
    )?)
}

/// Lists the tree below `dir` as Docker's archive would: each directory before what it holds,
/// names in byte order, a file with several names held by the first.
pub(super) fn list(dir: &OwnedFd) -> io::Result<Listing> {
    let mut walk = Walk::default();
    walk.dir(dir, "", 0)?;
    Ok(walk.listing)
}

#[derive(Default)]
struct Walk {
    listing: Listing,
    /// The first name of each file with more than one, by device and inode.
    first_names: HashMap<(u64, u64), String>,
}

impl Walk {
    fn dir(&mut self, dir: &OwnedFd, prefix: &str, depth: usize) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{prefix} is more than {MAX_DEPTH} directories deep"
            )));
        }
        let mut names: Vec<CString> = Vec::new();
        for entry in Dir::read_from(dir)? {
            let name = entry?.file_name().to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            // A name that is not UTF-8 is left out, as the archive's listing leaves it out.
            let Some(path) = name.to_str().ok().and_then(|n| match prefix {
                "" => normalize(n),
                _ => normalize(&format!("{prefix}/{n}")),
            }) else {
                continue;
            };
            let stat = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            let kind = match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => {
                    let kind = EntryKind::File {
                        size: u64::try_from(stat.st_size).unwrap_or(0),
                        mode: stat.st_mode & 0o7777,
                    };
                    if stat.st_nlink > 1 {
                        match self.first_names.entry((stat.st_dev, stat.st_ino)) {
                            Slot::Occupied(first) => {
                                let first = first.get().clone();
                                self.listing.hard_links.insert(path.clone(), first);
                            }
                            Slot::Vacant(slot) => {
                                slot.insert(path.clone());
                            }
                        }
                    }
                    kind
                }
                FileType::Directory => {
                    self.listing.entries.push(Entry {
                        path: path.clone(),
                        kind: EntryKind::Dir,
                    });
                    let below = rustix::fs::openat(
                        dir,
                        name.as_c_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    self.dir(&below, &path, depth + 1)?;
                    continue;
                }
                FileType::Symlink => EntryKind::Symlink {
                    target: rustix::fs::readlinkat(dir, name.as_c_str(), Vec::new())?
                        .to_string_lossy()
                        .into_owned(),
                },
                // Devices, fifos and sockets are never artifact content.
                _ => continue,
            };
            self.listing.entries.push(Entry { path, kind });
        }
        Ok(())
    }
}

/// Opens the regular file `path` below `dir` for reading exactly its `size` listed bytes.
pub(super) fn open_file(dir: &OwnedFd, path: &str, size: u64) -> io::Result<Exact> {
    // Non-blocking: a fifo put in the file's place must not hang the open.
    let fd = rustix::fs::openat2(
        dir,
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        beneath(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NOENT => {
            changed(path, "was moved, removed or replaced by a link")
        }
        e => e.into(),
    })?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Err(changed(path, "was replaced by something other than a file"));
    }
    Ok(Exact {
        file: File::from(fd).take(size),
        path: path.to_string(),
    })
}

/// A file read to exactly its listed size: one that got shorter since it was listed is an error
/// (its tar header already promised the size), one that grew is cut at the size.
pub(super) struct Exact {
    file: io::Take<File>,
    path: String,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 && !buf.is_empty() && self.file.limit() > 0 {
            return Err(changed(&self.path, "got shorter"));
        }
        Ok(n)
    }
}

/// Names a file the build changed under the worker's feet, and what to do about it.
fn changed(path: &str, what: &str) -> io::Error {
    io::Error::other(format!(
        "{path} {what} while artifacts were collected: a process of the build still changes the source directory (stop background processes before the build ends)"
    ))
}
