//! `kiln run`'s view of a build log: the log as it arrives, with a `==> PHASE` header before each
//! phase (coloured when the output is a terminal and `NO_COLOR` is unset).
//!
//! The headers come from the log itself: the worker opens every phase with the agent line
//! `[Container] <time> Entering phase <PHASE>`, which always starts a line. So a line that starts
//! like an agent line is held back until it is whole (log chunks may cut it anywhere) and gets its
//! header when it enters a phase; every other line passes through at once, partial or not.

use std::io::{self, Write};

const AGENT_LINE: &[u8] = b"[Container] ";
const ENTERING: &str = " Entering phase ";

/// Writes a build log to stdout, or to stderr when stdout carries JSON.
pub struct PhaseHeaders {
    out: Box<dyn Write + Send>,
    colour: bool,
    /// The start of a line that may be an agent line.
    held: Vec<u8>,
    /// The current line is known not to be an agent line.
    plain: bool,
}

impl PhaseHeaders {
    pub fn new(to_stderr: bool) -> PhaseHeaders {
        use std::io::IsTerminal;
        let (out, colour): (Box<dyn Write + Send>, bool) = if to_stderr {
            (Box::new(io::stderr()), io::stderr().is_terminal())
        } else {
            (Box::new(io::stdout()), io::stdout().is_terminal())
        };
        let colour = colour && std::env::var_os("NO_COLOR").is_none();
        PhaseHeaders::with(out, colour)
    }

    fn with(out: Box<dyn Write + Send>, colour: bool) -> PhaseHeaders {
        PhaseHeaders {
            out,
            colour,
            held: Vec::new(),
            plain: false,
        }
    }

    /// Writes what is held back (a log that ended without a newline).
    pub fn finish(&mut self) -> io::Result<()> {
        let held = std::mem::take(&mut self.held);
        self.out.write_all(&held)?;
        self.out.flush()
    }

    /// A whole held line: its header when it enters a phase, then the line.
    fn release_line(&mut self, text: &mut Vec<u8>) {
        if let Some(phase) = entered_phase(&self.held) {
            let header = match self.colour {
                true => format!("\x1b[1;36m==> {phase}\x1b[0m\n"),
                false => format!("==> {phase}\n"),
            };
            text.extend_from_slice(header.as_bytes());
        }
        text.append(&mut self.held);
    }
}

impl Write for PhaseHeaders {
    /// What can be written goes out in one write: a terminal's stdout writes each line it is
    /// handed at once, and a log can have millions of lines.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut text = Vec::with_capacity(buf.len());
        let mut rest = buf;
        while !rest.is_empty() {
            let line_end = rest.iter().position(|b| *b == b'\n').map(|i| i + 1);
            let (part, tail) = rest.split_at(line_end.unwrap_or(rest.len()));
            rest = tail;
            if self.plain {
                text.extend_from_slice(part);
            } else {
                self.held.extend_from_slice(part);
                let n = self.held.len().min(AGENT_LINE.len());
                if self.held[..n] != AGENT_LINE[..n] {
                    text.append(&mut self.held);
                    self.plain = true;
                } else if line_end.is_some() {
                    self.release_line(&mut text);
                }
            }
            if line_end.is_some() {
                self.plain = false;
            }
        }
        self.out.write_all(&text)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `BUILD` for `[Container] 2024/01/31 12:00:00.123456 Entering phase BUILD\n`.
fn entered_phase(line: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(line.strip_prefix(AGENT_LINE)?).ok()?;
    let (_, phase) = text.trim_end().split_once(ENTERING)?;
    let name = !phase.is_empty() && phase.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    name.then_some(phase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(capture: &Capture) -> String {
        String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf8")
    }

    const LOG: &str = "[Container] 2024/01/31 12:00:00.000001 Entering phase INSTALL\n\
                       [Container] 2024/01/31 12:00:00.000002 Running command echo hi\n\
                       hi\n\
                       partial [Container] Entering phase NOT\n\
                       [Container] 2024/01/31 12:00:01.000003 Entering phase BUILD\n\
                       no newline at the end";

    #[test]
    fn headers_precede_the_phase_lines_wherever_the_chunks_are_cut() {
        let expected = format!(
            "==> INSTALL\n{}==> BUILD\n{}",
            &LOG[..LOG.find("[Container] 2024/01/31 12:00:01").expect("line")],
            &LOG[LOG.find("[Container] 2024/01/31 12:00:01").expect("line")..]
        );
        for size in [1, 3, 7, 13, 64, LOG.len()] {
            let capture = Capture::default();
            let mut log = PhaseHeaders::with(Box::new(capture.clone()), false);
            for chunk in LOG.as_bytes().chunks(size) {
                log.write_all(chunk).expect("write");
            }
            log.finish().expect("finish");
            assert_eq!(text(&capture), expected, "chunks of {size}");
        }
    }

    #[test]
    fn other_lines_are_not_held_back() {
        let capture = Capture::default();
        let mut log = PhaseHeaders::with(Box::new(capture.clone()), true);
        log.write_all(b"progress 10%").expect("write");
        assert_eq!(text(&capture), "progress 10%");
        log.write_all(b"\n[Contain").expect("write");
        assert_eq!(text(&capture), "progress 10%\n", "maybe an agent line");
        log.write_all(b"er] 2024/01/31 12:00:00.000001 Entering phase BUILD\n")
            .expect("write");
        assert!(text(&capture).ends_with("\x1b[1;36m==> BUILD\x1b[0m\n[Container] 2024/01/31 12:00:00.000001 Entering phase BUILD\n"));
    }
}
