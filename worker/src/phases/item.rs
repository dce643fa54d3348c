//! Running one command item in the container: the exec, its output, and the end of the item
//! (the wrapper's report, or the process ending without one); plus the read-only evaluations in
//! the build's environment (artifact names, exported variables).

use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::SelectAll;
use futures_util::{FutureExt, Stream, StreamExt};
use kiln_buildspec::Version;
use tokio::time::Instant;

use super::Build;
use crate::docker::{EngineError, ExecChunk, ExecOutput, ExecSpec, ROOT};
use crate::record::NameValue;
use crate::shell::{Carry, ItemOutput, ItemRun, StateOp};

impl Build {
    /// Runs one command item; returns its exit status. Output goes to the log.
    pub(super) async fn run_item(
        &mut self,
        text: &str,
        user: Option<&str>,
    ) -> Result<i64, EngineError> {
        self.log.agent(&format!("Running command {text}"));
        let carry = match self.job.buildspec.version {
            Version::V02 => Carry::State,
            Version::V01 => Carry::Fresh,
        };
        self.exec_item(text, user, carry, None).await
    }

    /// Execs the wrapper for `text` (see `shell`). With `capture`, output is collected there
    /// instead of logged. Returns the exit status.
    async fn exec_item(
        &mut self,
        text: &str,
        user: Option<&str>,
        carry: Carry,
        capture: Option<&mut Vec<u8>>,
    ) -> Result<i64, EngineError> {
        let op = match carry {
            Carry::State => std::mem::replace(&mut self.state_op, StateOp::None),
            Carry::Fresh | Carry::ReadOnly => StateOp::None,
        };
        let user = user.filter(|u| *u != ROOT && *u != "root");
        let run = ItemRun {
            item: text,
            succeeding: self.succeeding,
            carry,
            op,
            user,
            marker: &self.marker,
        };
        let shell = self
            .job
            .buildspec
            .env
            .shell
            .unwrap_or(kiln_buildspec::Shell::Sh)
            .program();
        let spec = ExecSpec {
            cmd: run.command(shell),
            working_dir: "/".to_string(),
            user: user.unwrap_or(ROOT).to_string(),
        };
        let (exec_id, output) = self.engine.exec(&self.resources.container, spec).await?;
        // Background jobs of earlier items are read while this one runs.
        let mut background = std::mem::take(&mut self.background);
        let read = self
            .read_item(&exec_id, output, &mut background, capture)
            .await;
        self.background = background;
        let (reported, still_open) = read?;
        if let Some(output) = still_open {
            // Still open: background processes of this item hold it. Their output goes on.
            self.background.push(lines_of(output));
        }
        // Docker's word on the status wins: a user's EXIT trap may have changed it after the
        // wrapper reported; the wrapper's stands while that trap still runs.
        let finished = self.engine.exec_finished(&exec_id).await?;
        Ok(finished.or(reported).unwrap_or(-1))
    }

    /// Reads an item's output until the item is over. Returns the status the wrapper reported
    /// (or Docker, when the wrapper could not), and the stream when it is still open.
    async fn read_item(
        &mut self,
        exec_id: &str,
        mut output: ExecOutput,
        background: &mut SelectAll<BackgroundLines>,
        mut capture: Option<&mut Vec<u8>>,
    ) -> Result<(Option<i64>, Option<ExecOutput>), EngineError> {
        let mut parser = ItemOutput::new(&self.marker);
        let mut shown = Vec::new();
        let mut notices = Vec::new();
        let mut docker_exit = None;
        // Set once the item is over (the wrapper reported, or Docker says the process ended):
        // background processes may hold the stream open, so only output that follows closely
        // (a user's EXIT trap, the last of a burst) still belongs to the item.
        let mut drain: Option<Drain> = None;
        let mut poll = tokio::time::interval(EXEC_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let open = loop {
            let drain_deadline = drain.as_ref().map(Drain::deadline);
            tokio::select! {
                next = output.next() => {
                    match next.transpose()? {
                        None => break false,
                        Some(ExecChunk::Stdout(bytes)) => parser.push_stdout(&bytes, &mut shown),
                        Some(ExecChunk::Stderr(bytes)) => parser.push_stderr(&bytes, &mut notices),
                    }
                    if let Some(d) = &mut drain {
                        d.touch();
                    }
                }
                Some(line) = background.next(), if !background.is_empty() => {
                    self.log.background_line(&line);
                }
                _ = poll.tick(), if drain.is_none() => {
                    docker_exit = self.engine.exec_finished(exec_id).await?;
                }
                _ = sleep_until_or_never(drain_deadline) => break true,
            }
            self.show(&mut shown, capture.as_deref_mut());
            self.log.output(&notices);
            notices.clear();
            if drain.is_none() && (parser.exit_code().is_some() || docker_exit.is_some()) {
                drain = Some(Drain::new());
            }
        };
        parser.finish(&mut notices);
        self.show(&mut shown, capture);
        self.log.output(&notices);
        self.log.end_output();
        Ok((parser.exit_code().or(docker_exit), open.then_some(output)))
    }

    /// Logs what background jobs have written so far, without waiting for more.
    pub(super) fn log_background_output(&mut self) {
        while let Some(Some(line)) = self.background.next().now_or_never() {
            self.log.background_line(&line);
        }
    }

    fn show(&mut self, bytes: &mut Vec<u8>, capture: Option<&mut Vec<u8>>) {
        match capture {
            Some(buf) => buf.append(bytes),
            None => {
                self.log.output(bytes);
                bytes.clear();
            }
        }
    }

    /// Evaluates `text` as a double-quoted shell word in the build's current environment (the
    /// artifact `name`).
    pub(super) async fn shell_evaluate(&mut self, text: &str) -> Result<String, EngineError> {
        let mut out = Vec::new();
        let command = format!("printf '%s' \"{text}\"");
        let code = self
            .exec_item(&command, None, Carry::ReadOnly, Some(&mut out))
            .await?;
        if code != 0 {
            self.log
                .agent(&format!("Could not evaluate {text:?}; using it as written"));
            return Ok(text.to_string());
        }
        Ok(self.log.mask(&String::from_utf8_lossy(&out)))
    }

    /// Records the `exported-variables` as they are now. Secrets and `AWS_` names are never
    /// exported.
    pub(super) async fn capture_exported_variables(&mut self) {
        let names: Vec<String> = self
            .job
            .buildspec
            .env
            .exported_variables
            .iter()
            .filter(|name| !self.secret_vars.contains(*name) && !name.starts_with("AWS_"))
            .cloned()
            .collect();
        if names.is_empty() {
            return;
        }
        let words: Vec<String> = names.iter().map(|n| format!("\"${{{n}-}}\"")).collect();
        let command = format!("printf '%s\\0' {}", words.join(" "));
        let mut out = Vec::new();
        let read = match self.job.buildspec.version {
            Version::V02 => Carry::ReadOnly,
            Version::V01 => Carry::Fresh,
        };
        match self.exec_item(&command, None, read, Some(&mut out)).await {
            Ok(0) => {
                let values = out.split(|b| *b == 0).map(String::from_utf8_lossy);
                self.record.exported_environment_variables = names
                    .iter()
                    .zip(values)
                    .map(|(name, value)| NameValue {
                        name: name.clone(),
                        // A copy of a secret is still a secret.
                        value: self.log.mask(&value),
                    })
                    .collect();
            }
            Ok(code) => self.log.agent(&format!(
                "Could not read the exported variables (exit status {code})"
            )),
            Err(e) => self
                .log
                .agent(&format!("Could not read the exported variables: {e}")),
        }
    }
}

/// How often a running item's process is checked (for items whose wrapper never reports).
const EXEC_POLL: Duration = Duration::from_millis(500);

/// Reading what follows the end of an item: until the stream is quiet for a moment, at most a
/// little longer.
struct Drain {
    quiet_until: Instant,
    stop_at: Instant,
}

impl Drain {
    const QUIET: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    fn new() -> Drain {
        let now = Instant::now();
        Drain {
            quiet_until: now + Self::QUIET,
            stop_at: now + Self::MAX,
        }
    }

    fn touch(&mut self) {
        self.quiet_until = Instant::now() + Self::QUIET;
    }

    fn deadline(&self) -> Instant {
        self.quiet_until.min(self.stop_at)
    }
}

async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What background processes of finished items print, a line at a time (so that each line is
/// masked whole, whatever else is being logged meanwhile). Docker closes an exec's streams about
/// 2 s after its main process exits, so this covers a job's output for that long.
pub(super) type BackgroundLines = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

fn lines_of(output: ExecOutput) -> BackgroundLines {
    let state = (output, Vec::new(), false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut output, mut buf, mut ended)| async move {
            loop {
                if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    return Some((line, (output, buf, ended)));
                }
                if ended {
                    if buf.is_empty() {
                        return None;
                    }
                    buf.push(b'\n');
                    let line = std::mem::take(&mut buf);
                    return Some((line, (output, buf, ended)));
                }
                match output.next().await {
                    Some(Ok(ExecChunk::Stdout(bytes) | ExecChunk::Stderr(bytes))) => {
                        buf.extend_from_slice(&bytes)
                    }
                    Some(Err(_)) | None => ended = true,
                }
            }
        },
    ))
}
