//! Streaming secret masking: every resolved secret value is replaced by `***` in the log, also when
//! a value arrives split across output chunks.
//!
//! The masker holds back at most `longest secret - 1` bytes: any match that starts before that tail
//! is already complete in the buffer, so leftmost-longest matching decides it correctly.

use aho_corasick::{AhoCorasick, MatchKind};

/// Replacement text for a secret value.
pub const MASK: &[u8] = b"***";

/// Masks a byte stream. Feed chunks with [`Masker::push`], then [`Masker::flush`] at a boundary
/// where no secret can continue (the end of a command's output). Its `Debug` shows no secret.
#[derive(Clone)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    longest: usize,
    pending: Vec<u8>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field(
                "secrets",
                &self.matcher.as_ref().map_or(0, |m| m.patterns_len()),
            )
            .field("pending_bytes", &self.pending.len())
            .finish()
    }
}

/// The secrets could not be turned into a matcher (far too many or too large); the build must
/// not go on unmasked.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare secret masking: {0}")]
pub struct MaskError(#[from] aho_corasick::BuildError);

impl Masker {
    /// A masker that masks nothing (before any secret is known).
    pub fn none() -> Masker {
        Masker {
            matcher: None,
            longest: 0,
            pending: Vec::new(),
        }
    }

    /// A masker for these secret values. Empty values are ignored (they would mask everything).
    pub fn new<I, S>(secrets: I) -> Result<Masker, MaskError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let values: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        let longest = values.iter().map(Vec::len).max().unwrap_or(0);
        let matcher = if values.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&values)?,
            )
        };
        Ok(Masker {
            matcher,
            longest,
            pending: Vec::new(),
        })
    }

    /// Adds a chunk; appends to `out` every byte that is now safe to show.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.matcher.is_none() {
            out.extend_from_slice(chunk);
            return;
        }
        self.pending.extend_from_slice(chunk);
        let limit = self
            .pending
            .len()
            .saturating_sub(self.longest.saturating_sub(1));
        self.drain(limit, out);
    }

    /// Emits everything held back (masked): call where no secret can continue.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let len = self.pending.len();
        self.drain(len, out);
    }

    /// Masks and emits `pending[..limit]`, plus the whole of any match that starts before `limit`.
    fn drain(&mut self, limit: usize, out: &mut Vec<u8>) {
        let Some(matcher) = &self.matcher else {
            out.append(&mut self.pending);
            return;
        };
        let mut emitted = 0;
        for m in matcher.find_iter(&self.pending) {
            if m.start() >= limit {
                break;
            }
            out.extend_from_slice(&self.pending[emitted..m.start()]);
            out.extend_from_slice(MASK);
            emitted = m.end();
        }
        let upto = limit.max(emitted);
        if upto > emitted {
            out.extend_from_slice(&self.pending[emitted..upto]);
        }
        self.pending.drain(..upto);
    }

    /// Masks a whole text at once (for one-off strings such as error messages).
    pub fn mask_str(&self, text: &str) -> String {
        match &self.matcher {
            Some(m) => m.replace_all(text, &vec!["***"; m.patterns_len()]),
            None => text.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], chunks: &[&str]) -> String {
        let mut m = Masker::new(secrets).expect("masker");
        let mut out = Vec::new();
        for c in chunks {
            m.push(c.as_bytes(), &mut out);
        }
        m.flush(&mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn masks_whole_values() {
        assert_eq!(run(&["hunter2"], &["pw=hunter2 ok\n"]), "pw=*** ok\n");
    }

    #[test]
    fn masks_values_split_across_chunks() {
        assert_eq!(
            run(&["hunter2"], &["pw=hun", "t", "er2 and hunter", "2\n"]),
            "pw=*** and ***\n"
        );
    }

    #[test]
    fn every_split_point_is_masked() {
        let text = "a-s3cr3t-value-b s3cr3t-value";
        for i in 0..text.len() {
            for j in i..text.len() {
                let got = run(&["s3cr3t-value"], &[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(got, "a-***-b ***", "split at {i},{j}");
            }
        }
    }

    #[test]
    fn prefers_the_longest_overlapping_secret() {
        assert_eq!(run(&["abc", "abcdef"], &["xabcdefx abcx"]), "x***x ***x");
    }

    #[test]
    fn holds_back_only_a_short_tail() {
        let mut m = Masker::new(["secret"]).expect("masker");
        let mut out = Vec::new();
        m.push(b"hello world", &mut out);
        assert_eq!(out, b"hello ");
        m.flush(&mut out);
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn no_secrets_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), "ab");
        assert_eq!(run(&[""], &["a", "b"]), "ab");
    }

    #[test]
    fn mask_str_masks() {
        let m = Masker::new(["tok"]).expect("masker");
        assert_eq!(m.mask_str("a tok b"), "a *** b");
        assert!(!format!("{m:?}").contains("tok"));
    }
}
