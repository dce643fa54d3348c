//! `kiln logs ID [-f]`: a build's log, whole or followed live; also used by `kiln start --follow`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use kiln_proto::v1::StreamLogsRequest;

use super::connect::{retryable, Server, ServerArgs};
use super::Failure;

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The build's id (`<project>:<uuid>`)
    id: String,
    /// Keep printing new output until the build ends
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn logs(args: LogsArgs) -> Result<ExitCode, Failure> {
    let server = args.server.connect().await?;
    print_log(&server, &args.id, args.follow, &mut std::io::stdout()).await?;
    Ok(ExitCode::SUCCESS)
}

/// How often a followed log is picked up again after the connection dropped, and the pause
/// before each try.
const RECONNECTS: u32 = 5;
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// Writes a build's log to `out` from its start; with `follow`, until the build ends. A follow
/// that loses the server (a coordinator restart, a dropped connection) resumes after the last
/// chunk it printed: chunks are numbered, so nothing is printed twice or skipped. A reader that
/// went away (`kiln logs | head`) ends the log quietly.
pub async fn print_log(
    server: &Server,
    id: &str,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let mut next_seq = 0u64;
    let mut reconnects = 0;
    loop {
        let before = next_seq;
        match copy_chunks(server, id, follow, &mut next_seq, out).await {
            Ok(Copied::All | Copied::ReaderGone) => return Ok(()),
            Ok(Copied::WriteFailed(e)) => {
                return Err(Failure::failed(format!("cannot write the log: {e}")))
            }
            Err(status) if follow && retryable(&status) && reconnects < RECONNECTS => {
                // Progress since the last drop earns a fresh set of tries.
                reconnects = if next_seq > before { 1 } else { reconnects + 1 };
                tracing::info!(build_id = id, next_seq, error = %status, "log stream dropped, resuming");
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            Err(status) => return Err(server.refused(status)),
        }
    }
}

enum Copied {
    All,
    ReaderGone,
    WriteFailed(std::io::Error),
}

async fn copy_chunks(
    server: &Server,
    id: &str,
    follow: bool,
    next_seq: &mut u64,
    out: &mut dyn Write,
) -> Result<Copied, tonic::Status> {
    let request = StreamLogsRequest {
        id: id.to_string(),
        from_seq: *next_seq,
        follow,
    };
    let mut stream = server.client().stream_logs(request).await?.into_inner();
    while let Some(chunk) = stream.message().await? {
        if chunk.seq < *next_seq {
            continue;
        }
        *next_seq = chunk.seq + 1;
        if let Err(e) = out.write_all(&chunk.data).and_then(|()| out.flush()) {
            return Ok(match e.kind() {
                std::io::ErrorKind::BrokenPipe => Copied::ReaderGone,
                _ => Copied::WriteFailed(e),
            });
        }
    }
    Ok(Copied::All)
}
