//! How a blob is stored: a header, then the zstd-compressed content cut into frames of at most
//! [`FRAME`] bytes, each sealed with AES-256-GCM when a key is configured.
//!
//! ```text
//! "KLB" 0x01 | flags (bit 0: encrypted) | nonce prefix (8 bytes, when encrypted)
//! frames: length (u32 BE; the top bit marks the last frame) | payload
//! ```
//!
//! An encrypted frame's nonce is the object's random prefix followed by the frame's number, and its
//! associated data is that number and the last-frame bit, so frames cannot be reordered, dropped
//! or cut off without the decoder noticing. The blob's digest is the SHA-256 of its content before
//! any of this, checked again on every read.

use std::fmt;
use std::io::{self, Read, Write};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

const MAGIC: &[u8; 4] = b"KLB\x01";
const ENCRYPTED: u8 = 1;
const LAST: u32 = 1 << 31;
/// Plaintext bytes per frame.
pub const FRAME: usize = 1 << 20;
const TAG: usize = 16;

/// A 256-bit key for encryption at rest. Never printed.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

impl EncryptionKey {
    /// From 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<EncryptionKey, String> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "the encryption key must be 64 hexadecimal digits (32 bytes; e.g. `openssl rand -hex 32`)"
                    .to_string(),
            );
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| "the encryption key is not hexadecimal".to_string())?;
        }
        Ok(EncryptionKey(key))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }
}

fn nonce(prefix: &[u8; 8], counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(prefix);
    n[8..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn aad(counter: u32, last: bool) -> [u8; 5] {
    let mut a = [0u8; 5];
    a[..4].copy_from_slice(&counter.to_be_bytes());
    a[4] = u8::from(last);
    a
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Cuts what is written into frames and hands each to `out`.
struct FrameSink<W: Write> {
    out: W,
    buf: Vec<u8>,
    seal: Option<(Aes256Gcm, [u8; 8])>,
    counter: u32,
}

impl<W: Write> FrameSink<W> {
    /// Writes the header to `out`; what is written next is framed (and sealed with `key`).
    fn start(mut out: W, key: Option<&EncryptionKey>) -> io::Result<FrameSink<W>> {
        out.write_all(MAGIC)?;
        let seal = match key {
            Some(key) => {
                let prefix: [u8; 8] = rand::random();
                out.write_all(&[ENCRYPTED])?;
                out.write_all(&prefix)?;
                Some((key.cipher(), prefix))
            }
            None => {
                out.write_all(&[0])?;
                None
            }
        };
        Ok(FrameSink {
            out,
            buf: Vec::with_capacity(FRAME),
            seal,
            counter: 0,
        })
    }

    /// Writes the last frame (what is held); returns `out`.
    fn end(mut self) -> io::Result<W> {
        let held = std::mem::take(&mut self.buf);
        self.emit(&held, true)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes `plain` as the next frame, sealed when there is a key.
    fn emit(&mut self, plain: &[u8], last: bool) -> io::Result<()> {
        let sealed;
        let payload = match &self.seal {
            Some((cipher, prefix)) => {
                let n = nonce(prefix, self.counter);
                let a = aad(self.counter, last);
                sealed = cipher
                    .encrypt(
                        Nonce::from_slice(&n),
                        Payload {
                            msg: plain,
                            aad: &a,
                        },
                    )
                    .map_err(|_| io::Error::other("encryption failed"))?;
                &sealed
            }
            None => plain,
        };
        let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
        let marked = if last { len | LAST } else { len };
        self.out.write_all(&marked.to_be_bytes())?;
        self.out.write_all(payload)?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("blob too large"))?;
        Ok(())
    }
}

impl<W: Write> Write for FrameSink<W> {
    /// Whole frames of `data` go out as they are; the rest is held until a frame is full.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.is_empty() && data.len() >= FRAME {
            self.emit(&data[..FRAME], false)?;
            return Ok(FRAME);
        }
        let room = FRAME - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FRAME {
            let full = std::mem::take(&mut self.buf);
            self.emit(&full, false)?;
            self.buf = full;
            self.buf.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Encodes `content` into `out` (see the module docs), compressed as it is read on every core (as
/// `zstd -T0`); returns `out`.
pub fn encode<R: Read, W: Write>(
    mut content: R,
    out: W,
    key: Option<&EncryptionKey>,
    level: i32,
) -> io::Result<W> {
    let mut zstd = zstd::stream::write::Encoder::new(FrameSink::start(out, key)?, level)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    zstd.multithread(u32::try_from(workers).unwrap_or(1))?;
    io::copy(&mut content, &mut zstd)?;
    zstd.finish()?.end()
}

/// [`encode`] of content held in memory (a cache segment, several of which are encoded at once):
/// compressed in one call on this thread, with no copy of the content and no worker threads, then
/// framed straight into a buffer of the blob's size.
pub fn encode_slice(
    content: &[u8],
    key: Option<&EncryptionKey>,
    level: i32,
) -> io::Result<Vec<u8>> {
    let compressed = zstd::bulk::compress(content, level)?;
    let frames = compressed.len() / FRAME + 1;
    let size = MAGIC.len() + 1 + 8 + compressed.len() + frames * (4 + TAG);
    let mut sink = FrameSink::start(Vec::with_capacity(size), key)?;
    sink.write_all(&compressed)?;
    sink.end()
}

/// Reads frames back, checking each seal and that the last one came.
struct FrameSource<R: Read> {
    input: R,
    open: Option<(Aes256Gcm, [u8; 8])>,
    counter: u32,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> FrameSource<R> {
    fn next_frame(&mut self) -> io::Result<()> {
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => invalid("the blob is cut short"),
                _ => e,
            })?;
        let marked = u32::from_be_bytes(len);
        let last = marked & LAST != 0;
        let len = (marked & !LAST) as usize;
        let limit = FRAME + TAG + FRAME / 64 + 1024;
        if len > limit {
            return Err(invalid("the blob has a frame larger than any Kiln writes"));
        }
        let mut payload = vec![0u8; len];
        self.input
            .read_exact(&mut payload)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => invalid("the blob is cut short"),
                _ => e,
            })?;
        self.plain = match &self.open {
            Some((cipher, prefix)) => {
                let n = nonce(prefix, self.counter);
                let a = aad(self.counter, last);
                cipher
                    .decrypt(
                        Nonce::from_slice(&n),
                        Payload {
                            msg: &payload,
                            aad: &a,
                        },
                    )
                    .map_err(|_| {
                        invalid("the blob does not decrypt: a wrong key, or it was tampered with")
                    })?
            }
            None => payload,
        };
        self.pos = 0;
        self.counter = self.counter.wrapping_add(1);
        if last {
            self.done = true;
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(invalid("the blob has data after its last frame"));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for FrameSource<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_frame()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A reader of the content of an encoded blob (see [`encode`]).
pub fn decode<'a, R: Read + 'a>(
    mut input: R,
    key: Option<&EncryptionKey>,
) -> io::Result<Box<dyn Read + 'a>> {
    let mut header = [0u8; 5];
    input
        .read_exact(&mut header)
        .map_err(|_| invalid("not a Kiln blob: too short for its header"))?;
    if &header[..4] != MAGIC {
        return Err(invalid("not a Kiln blob: wrong header"));
    }
    let open =
        match (header[4] & ENCRYPTED != 0, key) {
            (true, Some(key)) => {
                let mut prefix = [0u8; 8];
                input
                    .read_exact(&mut prefix)
                    .map_err(|_| invalid("the blob is cut short"))?;
                Some((key.cipher(), prefix))
            }
            (true, None) => return Err(invalid(
                "the blob is encrypted and no encryption key is configured: set the store's key",
            )),
            (false, _) => None,
        };
    let frames = FrameSource {
        input,
        open,
        counter: 0,
        plain: Vec::new(),
        pos: 0,
        done: false,
    };
    Ok(Box::new(zstd::stream::read::Decoder::new(frames)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> EncryptionKey {
        EncryptionKey([byte; 32])
    }

    /// The content decoded from what each encoder made of it.
    fn roundtrip(content: &[u8], k: Option<&EncryptionKey>) -> [Vec<u8>; 2] {
        let streamed = encode(content, Vec::new(), k, 3).expect("encode");
        let whole = encode_slice(content, k, 3).expect("encode_slice");
        [streamed, whole].map(|encoded| {
            let mut out = Vec::new();
            decode(&encoded[..], k)
                .expect("header")
                .read_to_end(&mut out)
                .expect("decode");
            out
        })
    }

    fn content(n: usize) -> Vec<u8> {
        // Compressible but not trivially: several frames after compression.
        (0..n)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn content_comes_back_with_and_without_a_key() {
        for n in [0, 1, FRAME - 1, FRAME, 3 * FRAME + 17] {
            let c = content(n);
            for decoded in roundtrip(&c, None) {
                assert_eq!(decoded, c, "{n} bytes");
            }
            for decoded in roundtrip(&c, Some(&key(7))) {
                assert_eq!(decoded, c, "{n} bytes encrypted");
            }
        }
    }

    #[test]
    fn tampering_truncation_and_wrong_keys_are_refused() {
        let c: Vec<u8> = (0..3 * FRAME).map(|_| rand::random()).collect();
        let k = key(1);
        let encoded = encode(&c[..], Vec::new(), Some(&k), 1).expect("encode");
        let read = |bytes: &[u8], k: Option<&EncryptionKey>| -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            decode(bytes, k)?.read_to_end(&mut out)?;
            Ok(out)
        };
        let mut flipped = encoded.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        let e = read(&flipped, Some(&k)).expect_err("tampered");
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        let e = read(&encoded[..encoded.len() - 100], Some(&k)).expect_err("cut");
        assert!(
            e.to_string().contains("cut short") || e.to_string().contains("decrypt"),
            "{e}"
        );
        let e = read(&encoded, Some(&key(2))).expect_err("wrong key");
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        let e = read(&encoded, None).expect_err("no key");
        assert!(e.to_string().contains("no encryption key"), "{e}");
        let e = read(b"garbage!", None).expect_err("not a blob");
        assert!(e.to_string().contains("not a Kiln blob"), "{e}");
    }

    #[test]
    fn keys_parse_from_hex_and_never_print() {
        let k = EncryptionKey::from_hex(&"ab".repeat(32)).expect("key");
        assert_eq!(format!("{k:?}"), "EncryptionKey(<redacted>)");
        assert!(EncryptionKey::from_hex("abc").is_err());
        assert!(EncryptionKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
