//! Uploaded source archives: checked entry by entry when they arrive (no `..`, no absolute
//! paths, no links leaving the archive, no devices), and read for their `buildspec.yml`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use kiln_buildspec::archive::{check_entry, ArchiveCheck, ArchiveEntry};
use tonic::Status;

/// The largest buildspec read out of an archive.
const MAX_BUILDSPEC: u64 = 1 << 20;

/// Checks every entry of a tar file.
pub fn check(path: &Path) -> Result<(), Status> {
    let mut archive = open(path)?;
    let mut checker = ArchiveCheck::default();
    for entry in archive.entries().map_err(bad_tar)? {
        let entry = entry.map_err(bad_tar)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let link = link.as_deref().unwrap_or("");
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => ArchiveEntry::File,
            tar::EntryType::Directory => ArchiveEntry::Dir,
            tar::EntryType::Symlink => ArchiveEntry::Symlink { target: link },
            tar::EntryType::Link => ArchiveEntry::HardLink { target: link },
            // Extended headers describe the next entry; the tar reader already applied them.
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => continue,
            other => ArchiveEntry::Other {
                kind: kind_name(other),
            },
        };
        checker
            .entry(&name, kind)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    Ok(())
}

/// The text of `name` (normalized path) in a checked tar file, if it holds that file.
pub fn read_file(path: &Path, name: &str) -> Result<Option<String>, Status> {
    let mut archive = open(path)?;
    for entry in archive.entries().map_err(bad_tar)? {
        let entry = entry.map_err(bad_tar)?;
        let entry_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Ok(normalized) = check_entry(&entry_name, ArchiveEntry::File) else {
            continue;
        };
        if normalized != name || entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let mut text = String::new();
        entry
            .take(MAX_BUILDSPEC)
            .read_to_string(&mut text)
            .map_err(|e| Status::invalid_argument(format!("{name} in the source archive: {e}")))?;
        return Ok(Some(text));
    }
    Ok(None)
}

fn open(path: &Path) -> Result<tar::Archive<File>, Status> {
    let file = File::open(path).map_err(|e| Status::internal(format!("opening archive: {e}")))?;
    Ok(tar::Archive::new(file))
}

fn bad_tar(e: std::io::Error) -> Status {
    Status::invalid_argument(format!(
        "the source is not a readable tar archive ({e}): upload an uncompressed tar of the checkout"
    ))
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        _ => "special entry",
    }
}
