//! How far a download got, kept so that a stopped one resumes without the bytes before: the
//! tar's offset at the end of the last entry extracted and how many entries it held, and the
//! running sha256 at an offset at or before it (the sum is taken as the bytes arrive, ahead of
//! the extraction; a resumed download asks for the tar from there and skips what was extracted).
//! Saved in `DIR/.kiln-artifacts-<digest>.resume` as one line of text, written aside and renamed
//! into place, so it is whole or absent.
//!
//! What it vouches for is in the staging directory beside it, as written, on this boot: a
//! checkpoint from before a restart of the machine is not taken up (the files it counts may not
//! have reached the disk), nor is one that does not parse.

use std::cell::Cell;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::digest::generic_array::GenericArray;

/// How many bytes of the tar pass between two checkpoints while a download runs (a stopped
/// download also saves one at the end of the last entry it extracted).
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// SHA-256 whose running state can be written down and taken up again (sha2's own hasher keeps
/// its state private): sha2's block function, with the buffering and the padding done here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningSha256 {
    state: [u32; 8],
    /// The bytes after the last whole 64-byte block (fewer than 64).
    tail: Vec<u8>,
    len: u64,
}

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

type Block = GenericArray<u8, sha2::digest::consts::U64>;

impl RunningSha256 {
    pub fn new() -> Self {
        Self {
            state: INITIAL,
            tail: Vec::with_capacity(64),
            len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.tail.is_empty() {
            let take = (64 - self.tail.len()).min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < 64 {
                return;
            }
            sha2::compress256(&mut self.state, &[Block::clone_from_slice(&self.tail)]);
            self.tail.clear();
        }
        let mut blocks = data.chunks_exact(64);
        for block in blocks.by_ref() {
            sha2::compress256(
                &mut self.state,
                std::slice::from_ref(Block::from_slice(block)),
            );
        }
        self.tail.extend_from_slice(blocks.remainder());
    }

    /// The digest, in lowercase hex.
    pub fn finish_hex(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut last = std::mem::take(&mut self.tail);
        last.push(0x80);
        while last.len() % 64 != 56 {
            last.push(0);
        }
        last.extend_from_slice(&bits.to_be_bytes());
        let blocks: Vec<Block> = last.chunks_exact(64).map(Block::clone_from_slice).collect();
        sha2::compress256(&mut self.state, &blocks);
        self.state_hex()
    }

    /// The running state's eight words, in hex (after the padding, the digest).
    fn state_hex(&self) -> String {
        self.state.iter().map(|w| format!("{w:08x}")).collect()
    }
}

/// A download's position: the first `summed` bytes of the tar were summed into `sum`, and the
/// first `extracted` bytes (at least as many: the sum runs ahead of the extraction) held the
/// `entries` entries extracted so far, the last of them ending there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub summed: u64,
    pub sum: RunningSha256,
    pub extracted: u64,
    pub entries: usize,
}

const VERSION: &str = "kiln-artifacts-resume-2";

impl Progress {
    pub fn start() -> Self {
        Self {
            summed: 0,
            sum: RunningSha256::new(),
            extracted: 0,
            entries: 0,
        }
    }

    /// The checkpoint at `path`, when there is one to take up: written on this boot, readable,
    /// and within a tar of `size` bytes. Why one is not taken up is said as `Err`.
    pub fn load(path: &Path, size: u64) -> Result<Option<Self>, String> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("it cannot be read ({e})")),
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [version, boot, summed, extracted, entries, state, tail] = fields[..] else {
            return Err("it does not parse".into());
        };
        if version != VERSION {
            return Err("it does not parse".into());
        }
        if boot != boot_field() {
            return Err("it was saved before the machine restarted".into());
        }
        let parsed = (|| {
            let summed: u64 = summed.parse().ok()?;
            let extracted: u64 = extracted.parse().ok()?;
            let entries: usize = entries.parse().ok()?;
            let state = unhex(state)?;
            let tail = unhex(tail.strip_prefix('-')?)?;
            let words: Vec<u32> = state
                .chunks_exact(4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            let state: [u32; 8] = words.try_into().ok()?;
            let fits = tail.len() as u64 == summed % 64 && summed <= extracted && extracted <= size;
            fits.then_some(Self {
                summed,
                sum: RunningSha256 {
                    state,
                    tail,
                    len: summed,
                },
                extracted,
                entries,
            })
        })();
        parsed.map(Some).ok_or_else(|| "it does not parse".into())
    }

    /// Removes the checkpoint at `path`, and one left half-written beside it.
    pub fn remove(path: &Path) -> io::Result<()> {
        for file in [path.to_path_buf(), aside(path)] {
            match fs::remove_file(file) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the checkpoint to `path` (aside first, then renamed over it).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let state = self.sum.state_hex();
        let tail: String = self.sum.tail.iter().map(|b| format!("{b:02x}")).collect();
        let line = format!(
            "{VERSION} {} {} {} {} {state} -{tail}\n",
            boot_field(),
            self.summed,
            self.extracted,
            self.entries
        );
        let aside = aside(path);
        fs::write(&aside, line)?;
        fs::rename(&aside, path)
    }
}

/// Where a checkpoint for `path` is written before it is renamed into place.
fn aside(path: &Path) -> PathBuf {
    path.with_extension("resume-new")
}

/// This boot of the machine, by Linux's boot id (elsewhere none, and a restart goes unnoticed).
fn boot_field() -> String {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("boot:{}", id.trim())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A reader that counts what passes through it into `offset`, shared with whoever marks where
/// entries end.
pub struct Counted<'a, R> {
    pub inner: R,
    pub offset: &'a Cell<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset.set(self.offset.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_running_sum_matches_sha2_however_the_bytes_are_cut() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 16_447, 100_000] {
            let expected = format!("{:x}", sha2::Sha256::digest(&data[..len]));
            for piece in [1, 3, 64, 100, 16_384, 100_000] {
                let mut sum = RunningSha256::new();
                for part in data[..len].chunks(piece) {
                    sum.update(part);
                }
                assert_eq!(
                    sum.finish_hex(),
                    expected,
                    "{len} bytes in pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn a_checkpoint_is_taken_up_as_saved_and_refused_when_it_does_not_fit() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.resume");
        assert_eq!(Progress::load(&path, 100), Ok(None), "none saved");
        let mut progress = Progress::start();
        progress.sum.update(&[7u8; 1000]);
        progress.summed = 1000;
        progress.extracted = 1536;
        progress.entries = 3;
        progress.save(&path).expect("save");
        assert_eq!(Progress::load(&path, 5000), Ok(Some(progress.clone())));
        // Summing on from the saved state gives the whole tar's sum.
        let mut resumed = Progress::load(&path, 5000)
            .expect("load")
            .expect("some")
            .sum;
        resumed.update(&[9u8; 24]);
        let mut whole = vec![7u8; 1000];
        whole.extend([9u8; 24]);
        assert_eq!(
            resumed.finish_hex(),
            format!("{:x}", sha2::Sha256::digest(&whole))
        );
        // Past the end of the tar, from another boot, or damaged: not taken up.
        assert!(Progress::load(&path, 1535).is_err());
        let text = fs::read_to_string(&path).expect("read");
        fs::write(&path, text.replace(&boot_field(), "boot:another")).expect("write");
        assert_eq!(
            Progress::load(&path, 5000),
            Err("it was saved before the machine restarted".into())
        );
        fs::write(&path, &text[..text.len() / 2]).expect("write");
        assert_eq!(Progress::load(&path, 5000), Err("it does not parse".into()));
        // Removed with a half-written one beside it; removing nothing is fine.
        fs::write(aside(&path), "half").expect("aside");
        Progress::remove(&path).expect("remove");
        assert!(!path.exists() && !aside(&path).exists());
        Progress::remove(&path).expect("nothing to remove");
    }
}
