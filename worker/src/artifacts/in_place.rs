//! The source tree read in place, through `/proc/<pid>/root` of the build container's first
//! process: possible when the worker runs as root in the Docker host's process namespace, and
//! several times faster than Docker's archive API, which tars the tree through the daemon.
//!
//! Nothing outside the source directory is read, whatever the build left there or changes while
//! the worker reads: every directory and file is opened from the source directory's descriptor
//! with `openat2` and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so a link
//! (or a directory swapped for one) fails the open instead of leading out. A file is found with
//! `O_PATH` and opened only once checked to be a regular file, so devices and fifos are never
//! opened; each is read to exactly the size listed.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, PoisonError};

use kiln_buildspec::artifacts::{normalize, Entry, EntryKind};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use sha2::{Digest, Sha256};

use super::{hex, ArtifactError, Hashing, Listing};

/// Deeper trees are read through the archive instead (one descriptor is open per level).
const MAX_DEPTH: usize = 128;

/// Files are opened, and looked at, this many at once: each is a round trip to the file
/// system, which for a container's tree is often a FUSE daemon (fuse-overlayfs) that serves
/// several at once.
const READERS: usize = 4;

/// A directory with fewer entries than this is looked at by one thread.
const FEW: usize = 64;

/// How many files the readers may have read ahead of the tar writer.
const AHEAD: usize = 64;

/// How much of each file a reader reads (and sums) ahead; the rest is read as it is written.
const HEAD: u64 = 256 << 10;

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
    if !in_container_cgroup(&cgroups, id) {
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

/// Whether `/proc/<pid>/cgroup` text `cgroups` puts the process in container `id`'s own cgroup:
/// `/docker/<id>` (cgroupfs) or `.../docker-<id>.scope` (systemd), not merely a path naming it.
fn in_container_cgroup(cgroups: &str, id: &str) -> bool {
    let scope = format!("docker-{id}.scope");
    cgroups.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        let mut segments = path.rsplit('/');
        match (segments.next(), segments.next()) {
            (Some(last), _) if last == scope => true,
            (Some(last), Some("docker")) => last == id,
            _ => false,
        }
    })
}

/// Lists the tree below `dir` as Docker's archive would: each directory before what it holds,
/// names in byte order, a file with several names held by the first.
pub(super) fn list(dir: &OwnedFd) -> io::Result<Listing> {
    let mut walk = Walk {
        root: dir,
        listing: Listing::default(),
        first_names: HashMap::new(),
    };
    walk.dir(dir, "", 0)?;
    Ok(walk.listing)
}

struct Walk<'a> {
    /// The source directory: each directory below it is opened from here.
    root: &'a OwnedFd,
    listing: Listing,
    /// The first name, and kind, of each file with more than one, by device and inode.
    first_names: HashMap<(u64, u64), (String, EntryKind)>,
}

impl Walk<'_> {
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
        let stats = stat_all(dir, &names)?;
        for (name, stat) in names.into_iter().zip(stats) {
            // A name that is not UTF-8 is left out, as the archive's listing leaves it out.
            let Some(path) = name.to_str().ok().and_then(|n| match prefix {
                "" => normalize(n),
                _ => normalize(&format!("{prefix}/{n}")),
            }) else {
                continue;
            };
            let kind = match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => {
                    let kind = EntryKind::File {
                        size: u64::try_from(stat.st_size).unwrap_or(0),
                        mode: stat.st_mode & 0o7777,
                    };
                    if stat.st_nlink > 1 {
                        // Every name takes the first's size, as the archive's links do: the
                        // bytes are read once, through the first.
                        match self.first_names.entry((stat.st_dev, stat.st_ino)) {
                            Slot::Occupied(first) => {
                                let (first, kind) = first.get().clone();
                                self.listing.hard_links.insert(path.clone(), first);
                                self.listing.entries.push(Entry { path, kind });
                                continue;
                            }
                            Slot::Vacant(slot) => {
                                slot.insert((path.clone(), kind.clone()));
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
                    // From the source directory, so one moved out of it meanwhile is not
                    // walked.
                    let below = rustix::fs::openat2(
                        self.root,
                        path.as_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                        beneath(),
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

/// `lstat` of each of `names` in `dir`, in their order; a large directory's [`READERS`] at once.
fn stat_all(dir: &OwnedFd, names: &[CString]) -> io::Result<Vec<Stat>> {
    let stat = |name: &CString| Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?);
    if names.len() < FEW {
        return names.iter().map(stat).collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = names
            .chunks(names.len().div_ceil(READERS))
            .map(|part| scope.spawn(move || part.iter().map(stat).collect::<io::Result<Vec<_>>>()))
            .collect();
        let mut stats = Vec::with_capacity(names.len());
        for part in parts {
            let part = part
                .join()
                .map_err(|_| io::Error::other("a thread listing the source tree panicked"))?;
            stats.extend(part?);
        }
        Ok(stats)
    })
}

/// A file opened, and its start read and summed, ahead of its writer.
pub(super) struct Opened {
    head: Vec<u8>,
    /// The rest, summed on from the head's state as it is read.
    rest: Hashing<Exact>,
}

impl Opened {
    /// The file's content: exactly its listed size.
    pub(super) fn content(&mut self) -> impl Read + '_ {
        self.head.as_slice().chain(&mut self.rest)
    }

    /// The file's sha256, once [`Opened::content`] was read to the end.
    pub(super) fn sum(self) -> String {
        hex(&self.rest.hasher.finalize())
    }
}

/// Opens `files` below `dir` (each with its listed size), [`READERS`] at once and up to
/// [`AHEAD`] ahead, and hands them to `each` in their order. The readers stop when `each` fails.
pub(super) fn read_ahead<'a, C: Copy + Sync>(
    dir: &OwnedFd,
    files: &[(&'a str, u64, C)],
    mut each: impl FnMut((&'a str, u64, C), Opened) -> Result<(), ArtifactError>,
) -> Result<(), ArtifactError> {
    let next = AtomicUsize::new(0);
    // How many files `each` has taken, and whether it stopped.
    let taken = (Mutex::new((0usize, false)), Condvar::new());
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..READERS.min(files.len()) {
            let (tx, next, taken) = (tx.clone(), &next, &taken);
            scope.spawn(move || loop {
                // A reader that panics stops the others, so that none waits for it forever.
                let _stop = Stop {
                    taken,
                    always: false,
                };
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(path, size, _)) = files.get(i) else {
                    break;
                };
                let mut state = taken.0.lock().unwrap_or_else(PoisonError::into_inner);
                while i >= state.0 + AHEAD && !state.1 {
                    state = taken.1.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                if state.1 {
                    break;
                }
                drop(state);
                if tx.send((i, open_ahead(dir, path, size))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Whichever way `each` ends (a panic too), the readers stop.
        let _stop = Stop {
            taken: &taken,
            always: true,
        };
        let mut arrived = HashMap::new();
        let mut run = || {
            for (i, &file) in files.iter().enumerate() {
                let opened = loop {
                    if let Some(opened) = arrived.remove(&i) {
                        break opened;
                    }
                    let (j, opened) = rx
                        .recv()
                        .map_err(|_| io::Error::other("the artifact file readers stopped"))?;
                    arrived.insert(j, opened);
                };
                each(file, opened?)?;
                taken.0.lock().unwrap_or_else(PoisonError::into_inner).0 = i + 1;
                taken.1.notify_all();
            }
            Ok(())
        };
        run()
    })
}

/// Tells the readers of [`read_ahead`] to stop when dropped: `always`, or only while a panic
/// unwinds.
struct Stop<'a> {
    taken: &'a (Mutex<(usize, bool)>, Condvar),
    always: bool,
}

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        if self.always || std::thread::panicking() {
            self.taken
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .1 = true;
            self.taken.1.notify_all();
        }
    }
}

/// Opens the regular file `path` below `dir` and reads (and sums) up to [`HEAD`] bytes of it.
fn open_ahead(dir: &OwnedFd, path: &str, size: u64) -> io::Result<Opened> {
    let mut file = open_file(dir, path, size)?;
    let mut head = vec![0; size.min(HEAD) as usize];
    file.read_exact(&mut head)?;
    let mut hasher = Sha256::new();
    hasher.update(&head);
    Ok(Opened {
        head,
        rest: Hashing {
            inner: file,
            hasher,
        },
    })
}

/// Opens the regular file `path` below `dir` for reading exactly its `size` listed bytes.
fn open_file(dir: &OwnedFd, path: &str, size: u64) -> io::Result<Exact> {
    // Found without opening it (O_PATH): a device or fifo the build put in the file's place is
    // never opened, so neither a driver's open nor a fifo's can act or hang.
    let found = rustix::fs::openat2(
        dir,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        beneath(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NOENT => {
            changed(path, "was moved, removed or replaced by a link")
        }
        e => e.into(),
    })?;
    if FileType::from_raw_mode(rustix::fs::fstat(&found)?.st_mode) != FileType::RegularFile {
        return Err(changed(path, "was replaced by something other than a file"));
    }
    // The regular file just checked, opened for reading through its descriptor.
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", found.as_raw_fd()),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(Exact {
        file: File::from(fd).take(size),
        path: path.to_string(),
    })
}

/// A file read to exactly its listed size: one that got shorter since it was listed is an error
/// (its tar header already promised the size), one that grew is cut at the size.
struct Exact {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("dir")
    }

    fn read_all(dir: &OwnedFd, files: &[(&str, u64, ())]) -> Result<Vec<String>, ArtifactError> {
        let mut read = Vec::new();
        read_ahead(dir, files, |(path, _, ()), mut opened| {
            let mut text = String::new();
            opened.content().read_to_string(&mut text)?;
            read.push(format!("{path}={text}"));
            Ok(())
        })?;
        Ok(read)
    }

    #[test]
    fn files_come_in_order_whole_and_summed_however_far_the_readers_run_ahead() {
        let tmp = tempfile::tempdir().expect("tmp");
        let names: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
        for name in &names {
            std::fs::write(tmp.path().join(name), name).expect("write");
        }
        let big = "x".repeat(HEAD as usize * 2 + 5);
        std::fs::write(tmp.path().join("big"), &big).expect("write");
        let dir = open_dir(tmp.path());
        let listing = list(&dir).expect("list");
        assert_eq!(listing.entries.len(), 301);
        let files: Vec<(&str, u64, ())> = listing
            .entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => (e.path.as_str(), size, ()),
                _ => panic!("{e:?}"),
            })
            .collect();
        let read = read_all(&dir, &files).expect("read");
        let mut expected = vec![format!("big={big}")];
        expected.extend(names.iter().map(|n| format!("{n}={n}")));
        assert_eq!(read, expected);
        let mut sums = Vec::new();
        read_ahead(&dir, &files[..1], |_, mut opened| {
            io::copy(&mut opened.content(), &mut io::sink())?;
            sums.push(opened.sum());
            Ok(())
        })
        .expect("sum");
        assert_eq!(sums, [hex(&Sha256::digest(big.as_bytes()))]);
        // A writer that fails stops the readers: this returns.
        let failed = read_ahead(&dir, &files, |(path, _, ()), _| match path {
            "f002" => Err(ArtifactError::Unsafe(path.to_string())),
            _ => Ok(()),
        });
        assert!(matches!(failed, Err(ArtifactError::Unsafe(p)) if p == "f002"));
    }

    #[test]
    fn a_writer_that_panics_stops_the_readers_too() {
        let tmp = tempfile::tempdir().expect("tmp");
        let names: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
        for name in &names {
            std::fs::write(tmp.path().join(name), name).expect("write");
        }
        let dir = open_dir(tmp.path());
        let files: Vec<(&str, u64, ())> = names.iter().map(|n| (n.as_str(), 4, ())).collect();
        // Without the stop on unwinding, readers 64 files ahead would wait forever.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_ahead(&dir, &files, |(path, _, ()), _| match path {
                "f002" => panic!("the writer failed"),
                _ => Ok(()),
            })
        }));
        assert!(panicked.is_err());
    }

    #[test]
    fn only_the_container_s_own_cgroup_vouches_for_its_process() {
        let id = "959e2addd505bb72641918cfe0dd91a334c1d14edf90ff990d00fdc6428ae3ff";
        assert!(in_container_cgroup(&format!("12:pids:/docker/{id}\n"), id));
        assert!(in_container_cgroup(
            &format!("0::/system.slice/docker-{id}.scope\n"),
            id
        ));
        assert!(!in_container_cgroup(
            &format!("0::/docker/other/{id}\n"),
            id
        ));
        assert!(!in_container_cgroup(
            &format!("0::/docker/{id}/child\n"),
            id
        ));
        assert!(!in_container_cgroup("0::/\n", id));
    }

    #[test]
    fn a_file_changed_after_it_was_listed_is_refused_not_followed() {
        let tmp = tempfile::tempdir().expect("tmp");
        for name in ["shrinks", "linked", "fifo", "gone"] {
            std::fs::write(tmp.path().join(name), "0123456789").expect("write");
        }
        let dir = open_dir(tmp.path());
        assert_eq!(list(&dir).expect("list").entries.len(), 4);
        std::fs::write(tmp.path().join("shrinks"), "0123").expect("shrink");
        std::fs::remove_file(tmp.path().join("linked")).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", tmp.path().join("linked")).expect("link");
        std::fs::remove_file(tmp.path().join("fifo")).expect("rm");
        rustix::fs::mknodat(&dir, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0)
            .expect("fifo");
        std::fs::remove_file(tmp.path().join("gone")).expect("rm");
        for (name, says) in [
            (
                "shrinks",
                "shrinks got shorter while artifacts were collected",
            ),
            ("linked", "linked was moved, removed or replaced by a link"),
            ("fifo", "fifo was replaced by something other than a file"),
            ("gone", "gone was moved, removed or replaced by a link"),
        ] {
            let error = read_all(&dir, &[(name, 10, ())]).expect_err(name);
            assert!(error.to_string().contains(says), "{error}");
        }
    }

    #[test]
    fn links_are_listed_not_followed_and_second_names_point_to_the_first() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(tmp.path().join("d")).expect("mkdir");
        std::fs::write(tmp.path().join("d/a"), "a").expect("write");
        std::fs::hard_link(tmp.path().join("d/a"), tmp.path().join("z")).expect("hard link");
        std::os::unix::fs::symlink("/etc", tmp.path().join("etc")).expect("link");
        let dir = open_dir(tmp.path());
        let listing = list(&dir).expect("list");
        let paths: Vec<&str> = listing.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["d", "d/a", "etc", "z"]);
        assert_eq!(
            listing.entries[2].kind,
            EntryKind::Symlink {
                target: "/etc".to_string()
            }
        );
        assert_eq!(listing.hard_links.get("z").map(String::as_str), Some("d/a"));
        assert!(open_file(&dir, "etc/hostname", 1).is_err());
        assert!(open_file(&dir, "../x", 1).is_err());
    }
}
