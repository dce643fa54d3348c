//! The embedded store's journal file: the record format, replay at open, and rewriting it as a
//! snapshot (compaction).
//!
//! File `DIR/journal`: the magic `KILNJRN1`, then frames of `[payload length: u32 LE]
//! [CRC-32 (IEEE) of the payload: u32 LE][payload]`. A payload is one record, a kind byte first:
//!
//! - `1` build: placement (`0` queued, `1` claimed, `2` finished), the length of the idempotency
//!   token that created the build as a u32 LE (0 = none), the token, then the `StoredBuild` row
//!   (prost) to the end;
//! - `2` project: the `Project` row (prost) to the end;
//! - `3` project deleted: its name (UTF-8) to the end;
//! - `4` cache entry: the `CacheEntry` row (prost) to the end;
//! - `5` caches deleted: the project, then each removed slot, each UTF-8 and ended by a NUL byte.
//!
//! A record states what a build or project now is, never a delta, so applying one twice leaves
//! the same state: a snapshot may include changes whose records follow it (see `group_commit`).
//! Build numbers and `queue_seq`s are not recorded apart: they are the highest ones in the rows,
//! and rows are never dropped, so they never repeat across restarts.
//!
//! Replay stops at the first frame that is cut short or fails its checksum: only the last batch
//! can be torn by a crash, since each batch is fsynced before the next is written. Nothing after
//! that point was acknowledged to a caller, and the compaction that follows every open drops it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::state::Placement;
use crate::store::{StoreError, StoreResult};

const MAGIC: &[u8; 8] = b"KILNJRN1";
const JOURNAL: &str = "journal";
const JOURNAL_TMP: &str = "journal.tmp";
/// Frames claiming more are damage, not records (a row is a few KiB).
const MAX_RECORD: usize = 64 << 20;

const KIND_BUILD: u8 = 1;
const KIND_PROJECT: u8 = 2;
const KIND_PROJECT_DELETED: u8 = 3;
const KIND_CACHE: u8 = 4;
const KIND_CACHES_DELETED: u8 = 5;

/// One journal record.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Record {
    Build {
        placement: Placement,
        token: Option<String>,
        row: Bytes,
    },
    Project(Bytes),
    ProjectDeleted(String),
    Cache(Bytes),
    CachesDeleted {
        project: String,
        slots: Vec<String>,
    },
}

impl Record {
    /// Appends the record, framed, to `out`.
    pub(super) fn write_framed(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        match self {
            Record::Build {
                placement,
                token,
                row,
            } => {
                let token = token.as_deref().unwrap_or("").as_bytes();
                let placement = match placement {
                    Placement::Queued => 0,
                    Placement::Claimed => 1,
                    Placement::Finished => 2,
                };
                out.extend_from_slice(&[KIND_BUILD, placement]);
                out.extend_from_slice(&(token.len() as u32).to_le_bytes());
                out.extend_from_slice(token);
                out.extend_from_slice(row);
            }
            Record::Project(row) => {
                out.push(KIND_PROJECT);
                out.extend_from_slice(row);
            }
            Record::ProjectDeleted(name) => {
                out.push(KIND_PROJECT_DELETED);
                out.extend_from_slice(name.as_bytes());
            }
            Record::Cache(row) => {
                out.push(KIND_CACHE);
                out.extend_from_slice(row);
            }
            Record::CachesDeleted { project, slots } => {
                out.push(KIND_CACHES_DELETED);
                for name in std::iter::once(project).chain(slots) {
                    out.extend_from_slice(name.as_bytes());
                    out.push(0);
                }
            }
        }
        let payload = &out[start + 8..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32(payload).to_le_bytes();
        out[start..start + 4].copy_from_slice(&len);
        out[start + 4..start + 8].copy_from_slice(&crc);
    }

    fn decode(payload: &[u8]) -> StoreResult<Record> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("journal record: {what}"));
        let (&kind, rest) = payload.split_first().ok_or_else(|| corrupt("empty"))?;
        match kind {
            KIND_BUILD => {
                let [placement, l0, l1, l2, l3, rest @ ..] = rest else {
                    return Err(corrupt("short build record"));
                };
                let placement = match placement {
                    0 => Placement::Queued,
                    1 => Placement::Claimed,
                    2 => Placement::Finished,
                    other => return Err(corrupt(&format!("placement {other}"))),
                };
                let len = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
                if rest.len() < len {
                    return Err(corrupt("short token"));
                }
                let (token, row) = rest.split_at(len);
                let token = String::from_utf8(token.to_vec()).map_err(|_| corrupt("token"))?;
                Ok(Record::Build {
                    placement,
                    token: (!token.is_empty()).then_some(token),
                    row: Bytes::copy_from_slice(row),
                })
            }
            KIND_PROJECT => Ok(Record::Project(Bytes::copy_from_slice(rest))),
            KIND_PROJECT_DELETED => String::from_utf8(rest.to_vec())
                .map(Record::ProjectDeleted)
                .map_err(|_| corrupt("project name")),
            KIND_CACHE => Ok(Record::Cache(Bytes::copy_from_slice(rest))),
            KIND_CACHES_DELETED => {
                let names = String::from_utf8(rest.to_vec()).map_err(|_| corrupt("cache slot"))?;
                let mut names = names.split_terminator('\0').map(str::to_owned);
                let project = names.next().ok_or_else(|| corrupt("caches deleted"))?;
                Ok(Record::CachesDeleted {
                    project,
                    slots: names.collect(),
                })
            }
            other => Err(corrupt(&format!("unknown kind {other}"))),
        }
    }
}

/// CRC-32 (IEEE 802.3, the one zlib and gzip use), table-driven.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

/// Reads into `buf` until it is full or the file ends; returns how much it read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Applies every intact record of the journal in `dir` (none if there is no journal yet).
pub(super) fn replay(
    dir: &Path,
    mut apply: impl FnMut(Record) -> StoreResult<()>,
) -> StoreResult<()> {
    let path = dir.join(JOURNAL);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0; 8];
    if read_up_to(&mut reader, &mut magic)? < magic.len() || &magic != MAGIC {
        return Err(StoreError::Corrupt(format!(
            "{} does not start with {}",
            path.display(),
            String::from_utf8_lossy(MAGIC)
        )));
    }
    let mut offset = MAGIC.len() as u64;
    let mut header = [0; 8];
    let mut payload = Vec::new();
    loop {
        let got = read_up_to(&mut reader, &mut header)?;
        if got == 0 {
            return Ok(());
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let intact = got == header.len() && len <= MAX_RECORD && {
            payload.resize(len, 0);
            read_up_to(&mut reader, &mut payload)? == len
                && crc32(&payload) == u32::from_le_bytes([c0, c1, c2, c3])
        };
        if !intact {
            tracing::warn!(
                journal = %path.display(),
                offset,
                dropped_bytes = file_len - offset,
                "journal ends in a torn record; dropping it"
            );
            return Ok(());
        }
        apply(Record::decode(&payload)?)?;
        offset += (header.len() + len) as u64;
    }
}

/// The open journal. Only the group-commit writer writes it.
pub(super) struct Journal {
    dir: PathBuf,
    file: File,
    len: u64,
    /// The size of the last snapshot: what the state takes when written out.
    live_len: u64,
}

impl Journal {
    /// Writes `records` as a new journal beside the current one, fsyncs it and renames it over
    /// the current one. Until the rename, the current journal is untouched; after it, the
    /// returned `Journal` is the only one to write to.
    pub(super) fn rewrite(dir: &Path, records: &[Record]) -> io::Result<Journal> {
        let tmp = dir.join(JOURNAL_TMP);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC)?;
        let mut len = MAGIC.len() as u64;
        let mut buf = Vec::new();
        for record in records {
            buf.clear();
            record.write_framed(&mut buf);
            out.write_all(&buf)?;
            len += buf.len() as u64;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(JOURNAL))?;
        // The rename is durable once the directory is. Past the rename the new file is the
        // journal whatever happens, so a failure here is reported, not returned.
        if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %err, "could not fsync the store directory");
        }
        Ok(Journal {
            dir: dir.to_owned(),
            file,
            len,
            live_len: len,
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a batch of framed records and waits until they are on disk.
    pub(super) fn append(&mut self, batch: &[u8]) -> io::Result<()> {
        self.file.write_all(batch)?;
        self.file.sync_data()?;
        self.len += batch.len() as u64;
        Ok(())
    }

    /// After a failed compaction: not again before the journal grows fourfold.
    pub(super) fn postpone_compaction(&mut self) {
        self.live_len = self.len;
    }

    /// Past `min_bytes` and four times the state's own size, a rewrite pays for itself.
    pub(super) fn wants_compaction(&self, min_bytes: u64) -> bool {
        self.len > min_bytes.max(self.live_len.saturating_mul(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn records_round_trip_through_frames() {
        let records = [
            Record::Build {
                placement: Placement::Claimed,
                token: Some("tok".into()),
                row: Bytes::from_static(b"\x08\x01"),
            },
            Record::Build {
                placement: Placement::Finished,
                token: None,
                row: Bytes::new(),
            },
            Record::Project(Bytes::from_static(b"\x0a\x01p")),
            Record::ProjectDeleted("web".into()),
        ];
        for record in records {
            let mut framed = Vec::new();
            record.write_framed(&mut framed);
            let payload = &framed[8..];
            assert_eq!(framed[..4], (payload.len() as u32).to_le_bytes());
            assert_eq!(framed[4..8], crc32(payload).to_le_bytes());
            assert_eq!(Record::decode(payload).expect("decodes"), record);
        }
    }
}
