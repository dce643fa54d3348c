//! The build log: command output and the agent's own lines, masked, in order, handed to a sink.
//!
//! Lines Kiln writes itself follow CodeBuild's agent format (`[Container] 2024/01/31 12:00:00.123456
//! Running command make`), so log parsers written for CodeBuild keep working.

use kiln_buildspec::routing::PhaseType;

use crate::mask::Masker;
use crate::record::Timestamp;

/// Where a build's log goes (a terminal, a file, later the coordinator).
pub trait LogSink: Send + Sync {
    /// A phase begins; sinks may print a header.
    fn phase(&mut self, phase: PhaseType);
    /// Log bytes, already masked.
    fn write(&mut self, bytes: &[u8]);
}

/// How much of a phase's output the RETRY regex sees.
const RETRY_TAIL: usize = 4096;

/// The masked log of one build.
pub struct BuildLog {
    masker: Masker,
    /// Masks background jobs' lines, apart from the running command's output.
    background_masker: Masker,
    sink: Box<dyn LogSink>,
    scratch: Vec<u8>,
    phase_tail: Vec<u8>,
    /// Whether the last byte handed to the sink ended a line.
    at_line_start: bool,
}

impl BuildLog {
    pub fn new(masker: Masker, sink: Box<dyn LogSink>) -> BuildLog {
        BuildLog {
            background_masker: masker.clone(),
            masker,
            sink,
            scratch: Vec::new(),
            phase_tail: Vec::new(),
            at_line_start: true,
        }
    }

    /// Replaces the masker once secrets are known (DOWNLOAD_SOURCE).
    pub fn set_masker(&mut self, masker: Masker) {
        self.end_output();
        self.background_masker = masker.clone();
        self.masker = masker;
    }

    /// Masks text Kiln reports elsewhere (phase contexts, errors).
    pub fn mask(&self, text: &str) -> String {
        self.masker.mask_str(text)
    }

    /// Starts a phase: flushes, resets the retry tail, tells the sink.
    pub fn phase(&mut self, phase: PhaseType) {
        self.end_output();
        self.phase_tail.clear();
        self.sink.phase(phase);
    }

    /// Command output as it arrives.
    pub fn output(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        self.masker.push(chunk, &mut self.scratch);
        self.emit();
    }

    /// One whole line from a background job of an earlier command.
    pub fn background_line(&mut self, line: &[u8]) {
        let mut masked = Vec::new();
        self.background_masker.push(line, &mut masked);
        self.background_masker.flush(&mut masked);
        self.send(&masked);
    }

    /// The end of one command's output: nothing held back any more.
    pub fn end_output(&mut self) {
        self.masker.flush(&mut self.scratch);
        self.emit();
    }

    /// One agent line, `[Container] <time> <text>`.
    pub fn agent(&mut self, text: &str) {
        self.end_output();
        // Output that did not end its last line must not run into the agent's line.
        let start = if self.at_line_start { "" } else { "\n" };
        let line = format!(
            "{start}[Container] {} {text}\n",
            Timestamp::now().log_format()
        );
        self.masker.push(line.as_bytes(), &mut self.scratch);
        self.masker.flush(&mut self.scratch);
        self.emit();
    }

    /// The last 4 KiB of the current phase's (masked) log.
    pub fn phase_tail(&self) -> String {
        let start = self.phase_tail.len().saturating_sub(RETRY_TAIL);
        String::from_utf8_lossy(&self.phase_tail[start..]).into_owned()
    }

    /// Hands masked bytes to the sink, noting whether they ended a line.
    fn send(&mut self, bytes: &[u8]) {
        self.sink.write(bytes);
        self.at_line_start = bytes.ends_with(b"\n");
    }

    fn emit(&mut self) {
        if self.scratch.is_empty() {
            return;
        }
        let scratch = std::mem::take(&mut self.scratch);
        self.send(&scratch);
        self.scratch = scratch;
        self.phase_tail.extend_from_slice(&self.scratch);
        if self.phase_tail.len() > 2 * RETRY_TAIL {
            let cut = self.phase_tail.len() - RETRY_TAIL;
            self.phase_tail.drain(..cut);
        }
        self.scratch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl LogSink for Capture {
        fn phase(&mut self, phase: PhaseType) {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(format!("<{}>", phase.as_str()).as_bytes());
            }
        }
        fn write(&mut self, bytes: &[u8]) {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(bytes);
            }
        }
    }

    #[test]
    fn agent_lines_and_output_are_masked_in_order() {
        let cap = Capture::default();
        let mut log = BuildLog::new(
            Masker::new(["s3cret"]).expect("masker"),
            Box::new(cap.clone()),
        );
        log.phase(PhaseType::Build);
        log.agent("Running command echo s3cret");
        log.output(b"s3c");
        log.output(b"ret\n");
        log.end_output();
        let text = String::from_utf8(cap.0.lock().expect("lock").clone()).expect("utf8");
        assert!(text.starts_with("<BUILD>[Container] "), "{text}");
        assert!(text.contains("Running command echo ***\n***\n"), "{text}");
        assert!(!text.contains("s3cret"));
        assert!(log.phase_tail().ends_with("***\n"));
    }

    #[test]
    fn agent_lines_start_on_their_own_line() {
        let cap = Capture::default();
        let mut log = BuildLog::new(Masker::none(), Box::new(cap.clone()));
        log.output(b"no newline");
        log.agent("next");
        log.output(b"done\n");
        log.agent("last");
        let text = String::from_utf8(cap.0.lock().expect("lock").clone()).expect("utf8");
        assert!(text.starts_with("no newline\n[Container] "), "{text}");
        assert!(text.contains("done\n[Container] "), "{text}");
    }

    #[test]
    fn phase_tail_keeps_the_last_bytes() {
        let mut log = BuildLog::new(Masker::none(), Box::new(Capture::default()));
        log.output(&vec![b'a'; 10_000]);
        log.output(b"END");
        let tail = log.phase_tail();
        assert!(tail.ends_with("END") && tail.len() == RETRY_TAIL);
        log.phase(PhaseType::PostBuild);
        assert!(log.phase_tail().is_empty());
    }
}
