//! The terminal log sink: the build log as it arrives, with a header per phase (coloured when the
//! output is a terminal).

use std::io::Write;

use kiln_buildspec::routing::PhaseType;
use kiln_worker::log::LogSink;

/// Writes the log to stdout, or to stderr when stdout carries JSON.
pub struct TerminalSink {
    out: Box<dyn Write + Send + Sync>,
    colour: bool,
}

impl TerminalSink {
    pub fn new(to_stderr: bool) -> TerminalSink {
        use std::io::IsTerminal;
        let (out, colour): (Box<dyn Write + Send + Sync>, bool) = if to_stderr {
            (Box::new(std::io::stderr()), std::io::stderr().is_terminal())
        } else {
            (Box::new(std::io::stdout()), std::io::stdout().is_terminal())
        };
        let colour = colour && std::env::var_os("NO_COLOR").is_none();
        TerminalSink { out, colour }
    }
}

impl LogSink for TerminalSink {
    fn phase(&mut self, phase: PhaseType) {
        let name = phase.as_str();
        let header = if self.colour {
            format!("\x1b[1;36m==> {name}\x1b[0m\n")
        } else {
            format!("==> {name}\n")
        };
        // A closed terminal must not stop the build; the record still tells the outcome.
        let _ = self.out.write_all(header.as_bytes());
    }

    fn write(&mut self, bytes: &[u8]) {
        let _ = self.out.write_all(bytes);
        let _ = self.out.flush();
    }
}
