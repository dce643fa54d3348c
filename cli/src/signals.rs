//! Ctrl-C and SIGTERM taken together: how the long-running commands are told to stop.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    /// Registers for both at once (from then on they no longer end the process by themselves);
    /// `None` when they cannot be registered.
    pub fn register() -> Option<StopSignals> {
        let (Ok(int), Ok(term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return None;
        };
        Some(StopSignals { int, term })
    }

    /// The next Ctrl-C or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! { _ = self.int.recv() => {}, _ = self.term.recv() => {} }
    }
}
