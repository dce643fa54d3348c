//! Build logs in the embedded store: one append-only file per build under `DIR/logs/`, kept out
//! of the journal so that log volume neither slows state changes down nor bloats compaction.
//!
//! A log file is a run of frames `[seq: u64 LE][length: u32 LE][data]`, chunk 0 first. Chunks
//! are not fsynced: an acknowledged chunk survives a coordinator restart (it is in the page
//! cache), but a machine crash can lose the tail of a running build's log. A fsync per chunk would
//! cost far more than the journal's shared one, and a lost tail only shortens a log.
//!
//! Per build a small index (next seq, byte length, and the file position and log offset of every
//! [`MARK_EVERY`]th chunk) is loaded lazily by scanning the frame headers; a frame cut short or out
//! of sequence ends the log there and the file is truncated to match. Indexes nobody is using are
//! dropped when [`MAX_INDEXES`] builds have one, and loaded again when needed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::store::{StoreError, StoreResult, StoredChunk};

const MARK_EVERY: u64 = 64;
const MAX_INDEXES: usize = 4096;
const HEADER: usize = 12;

type Slot = Arc<Mutex<Option<LogIndex>>>;

/// The log files of every build.
pub(super) struct Logs {
    dir: PathBuf,
    indexes: Mutex<HashMap<String, Slot>>,
}

#[derive(Debug, Default)]
struct LogIndex {
    next_seq: u64,
    /// Bytes of log data (the offset of the next chunk).
    bytes: u64,
    file_len: u64,
    /// (file position, log offset) of chunk `i * MARK_EVERY`.
    marks: Vec<(u64, u64)>,
}

impl Logs {
    pub(super) fn new(dir: PathBuf) -> Logs {
        Logs {
            dir,
            indexes: Mutex::default(),
        }
    }

    pub(super) async fn append(&self, build_id: &str, seq: u64, data: &[u8]) -> StoreResult<u64> {
        let build = build_id.to_owned();
        let data = data.to_vec();
        self.with_index(build_id, move |path, index| {
            if seq < index.next_seq {
                return Ok(index.next_seq);
            }
            if seq > index.next_seq {
                return Err(StoreError::LogGap {
                    build,
                    expected: index.next_seq,
                    got: seq,
                });
            }
            index.append(path, &data)?;
            Ok(index.next_seq)
        })
        .await
    }

    pub(super) async fn read(
        &self,
        build_id: &str,
        from_seq: u64,
        max_chunks: usize,
    ) -> StoreResult<Vec<StoredChunk>> {
        self.with_index(build_id, move |path, index| {
            Ok(index.read(path, from_seq, max_chunks)?)
        })
        .await
    }

    pub(super) async fn len(&self, build_id: &str) -> StoreResult<u64> {
        self.with_index(build_id, |_, index| Ok(index.next_seq))
            .await
    }

    /// Runs `op` on the build's log index (loading it first if needed) on the blocking pool,
    /// holding the build's lock. After an error the index is loaded afresh from the file.
    async fn with_index<T: Send + 'static>(
        &self,
        build_id: &str,
        op: impl FnOnce(&Path, &mut LogIndex) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let slot = {
            let mut indexes = self.indexes.lock().unwrap_or_else(PoisonError::into_inner);
            if indexes.len() >= MAX_INDEXES && !indexes.contains_key(build_id) {
                indexes.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            indexes.entry(build_id.to_owned()).or_default().clone()
        };
        let path = self.dir.join(file_name(build_id));
        let run = move || {
            let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let index = match guard.take() {
                Some(index) => index,
                None => LogIndex::load(&path)?,
            };
            let index = guard.insert(index);
            let out = op(&path, index);
            if out.is_err() {
                *guard = None;
            }
            out
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|err| StoreError::Io(io::Error::other(err)))?
    }
}

impl LogIndex {
    fn load(path: &Path) -> io::Result<LogIndex> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(LogIndex::default()),
            Err(err) => return Err(err),
        };
        let len = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let mut index = LogIndex::default();
        let mut header = [0; HEADER];
        while index.file_len + HEADER as u64 <= len {
            reader.read_exact(&mut header)?;
            let (seq, n) = parse_header(&header);
            let end = index.file_len + (HEADER as u64) + u64::from(n);
            if seq != index.next_seq || end > len {
                break;
            }
            reader.seek_relative(i64::from(n))?;
            index.push(u64::from(n));
        }
        if index.file_len < len {
            tracing::warn!(
                log = %path.display(),
                dropped_bytes = len - index.file_len,
                "log ends in a torn chunk; truncating it"
            );
            OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(index.file_len)?;
        }
        Ok(index)
    }

    /// Accounts for one more chunk of `n` bytes at the end of the file.
    fn push(&mut self, n: u64) {
        if self.next_seq.is_multiple_of(MARK_EVERY) {
            self.marks.push((self.file_len, self.bytes));
        }
        self.file_len += HEADER as u64 + n;
        self.bytes += n;
        self.next_seq += 1;
    }

    fn append(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        let n = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "a log chunk of 4 GiB or more")
        })?;
        let mut frame = Vec::with_capacity(HEADER + data.len());
        frame.extend_from_slice(&self.next_seq.to_le_bytes());
        frame.extend_from_slice(&n.to_le_bytes());
        frame.extend_from_slice(data);
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?
            .write_all(&frame)?;
        self.push(u64::from(n));
        Ok(())
    }

    fn read(&self, path: &Path, from_seq: u64, max_chunks: usize) -> io::Result<Vec<StoredChunk>> {
        let end = self
            .next_seq
            .min(from_seq.saturating_add(max_chunks as u64));
        let mark = usize::try_from(from_seq / MARK_EVERY).unwrap_or(usize::MAX);
        let Some(&(position, mut offset)) = self.marks.get(mark).filter(|_| from_seq < end) else {
            return Ok(Vec::new());
        };
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(position))?;
        let mut reader = BufReader::new(file);
        let mut chunks = Vec::new();
        let mut header = [0; HEADER];
        for seq in from_seq / MARK_EVERY * MARK_EVERY..end {
            reader.read_exact(&mut header)?;
            let (stored_seq, n) = parse_header(&header);
            if stored_seq != seq {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: chunk {seq} is stored as {stored_seq}", path.display()),
                ));
            }
            if seq < from_seq {
                reader.seek_relative(i64::from(n))?;
            } else {
                let mut data = vec![0; n as usize];
                reader.read_exact(&mut data)?;
                chunks.push(StoredChunk { seq, offset, data });
            }
            offset += u64::from(n);
        }
        Ok(chunks)
    }
}

fn parse_header(header: &[u8; HEADER]) -> (u64, u32) {
    let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3] = *header;
    (
        u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        u32::from_le_bytes([n0, n1, n2, n3]),
    )
}

/// A build's log file name: the id with every byte but letters, digits, `-` and `_`
/// percent-escaped (ids are `project:uuid`), shortened with a hash of the id when too long for a
/// file name.
fn file_name(build_id: &str) -> String {
    let mut name = String::with_capacity(build_id.len() + 8);
    for b in build_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(char::from(b));
        } else {
            let _ = write!(name, "%{b:02X}");
        }
    }
    if name.len() > 200 {
        name.truncate(160);
        name.push('~');
        for b in &Sha256::digest(build_id.as_bytes())[..8] {
            let _ = write!(name, "{b:02x}");
        }
    }
    name.push_str(".log");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_escape_and_stay_short() {
        assert_eq!(file_name("web:1b2c-3d"), "web%3A1b2c-3d.log");
        assert_eq!(file_name("../x"), "%2E%2E%2Fx.log");
        let long = format!("{}:{}", "p".repeat(255), "u".repeat(36));
        let name = file_name(&long);
        assert_eq!(name.len(), 160 + 1 + 16 + 4);
        assert_ne!(
            name,
            file_name(&format!("{}:{}", "p".repeat(255), "v".repeat(36)))
        );
    }
}
