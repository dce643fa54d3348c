//! `kiln get`, `kiln list` and `kiln stop`: builds as a person reads them (or as JSON), and the
//! closing line `kiln start --follow` prints.

use std::fmt::Write as _;
use std::process::ExitCode;

use kiln_proto::v1::{Build, GetBuildRequest, ListBuildsRequest, StopBuildRequest};

use super::connect::{Server, ServerArgs};
use super::json::{build_json, rfc3339};
use super::Failure;

/// Build statuses, as `--status` takes them.
const STATUSES: [&str; 8] = [
    "SUBMITTED",
    "QUEUED",
    "IN_PROGRESS",
    "SUCCEEDED",
    "FAILED",
    "FAULT",
    "TIMED_OUT",
    "STOPPED",
];

/// The server's largest page.
const MAX_PAGE: u32 = 1000;

#[derive(clap::Args)]
pub struct GetArgs {
    /// The build's id (`<project>:<uuid>`)
    id: String,
    /// Print the build as JSON, with CodeBuild's field names
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// Only this project's builds
    #[arg(long)]
    project: Option<String>,
    /// Only builds with this status (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, ...)
    #[arg(long, value_parser = parse_status)]
    status: Option<String>,
    /// At most this many builds, newest first
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// The build's id (`<project>:<uuid>`)
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn get(args: GetArgs) -> Result<ExitCode, Failure> {
    let server = args.server.connect().await?;
    let build = fetch(&server, &args.id).await?;
    match args.json {
        true => out!("{:#}", build_json(&build)),
        false => out!("{}", describe(&build).trim_end()),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(args: ListArgs) -> Result<ExitCode, Failure> {
    let server = args.server.connect().await?;
    let mut request = ListBuildsRequest {
        project_name: args.project.unwrap_or_default(),
        status: args.status.unwrap_or_default(),
        ..Default::default()
    };
    let mut left = args.limit;
    while left > 0 {
        request.page_size = left.min(MAX_PAGE);
        let page = server
            .client()
            .list_builds(request.clone())
            .await
            .map_err(|s| server.refused(s))?
            .into_inner();
        for build in page.builds.iter().take(left as usize) {
            out!("{}", list_line(build));
        }
        left = left.saturating_sub(page.builds.len() as u32);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stop(args: StopArgs) -> Result<ExitCode, Failure> {
    let server = args.server.connect().await?;
    let build = server
        .client()
        .stop_build(StopBuildRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(|s| server.refused(s))?
        .into_inner();
    match build.build_complete {
        true => out!("build {} {}", build.id, build.build_status),
        false => out!(
            "build {}: stop requested; it ends STOPPED once its worker has stopped it",
            build.id
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// One build by id.
pub async fn fetch(server: &Server, id: &str) -> Result<Build, Failure> {
    server
        .client()
        .get_build(GetBuildRequest { id: id.to_string() })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| server.refused(s))
}

/// `build <id> FAILED (BUILD: make: exit status 2)`: the outcome, and the phases that failed.
pub fn outcome_line(build: &Build) -> String {
    let failures: Vec<String> = build
        .phases
        .iter()
        .filter(|p| build.build_status != "SUCCEEDED" && is_failure(&p.phase_status))
        .map(|p| {
            let message = p.contexts.first().map_or("", |c| c.message.as_str());
            format!("{}: {message}", p.phase_type)
        })
        .collect();
    let mut line = format!("build {} {}", build.id, build.build_status);
    if !failures.is_empty() {
        let _ = write!(line, " ({})", failures.join("; "));
    }
    line
}

fn is_failure(phase_status: &str) -> bool {
    !matches!(phase_status, "" | "SUCCEEDED")
}

/// `--status`: one of [`STATUSES`], in any case.
fn parse_status(text: &str) -> Result<String, String> {
    let upper = text.trim().to_ascii_uppercase();
    match STATUSES.contains(&upper.as_str()) {
        true => Ok(upper),
        false => Err(format!(
            "unknown build status {text:?}: use one of {}",
            STATUSES.join(", ")
        )),
    }
}

fn list_line(build: &Build) -> String {
    let started = rfc3339(build.start_time_ms).unwrap_or_else(|| "-".to_string());
    format!(
        "{:<11}  {:>5}  {started:<24}  {}",
        build.build_status,
        format!("#{}", build.build_number),
        build.id
    )
}

/// The human summary of `kiln get`.
fn describe(build: &Build) -> String {
    let mut text = String::new();
    let mut row = |key: &str, value: &str| {
        if !value.is_empty() {
            let _ = writeln!(text, "{key:<12}{value}");
        }
    };
    row("build", &format!("{} (#{})", build.id, build.build_number));
    let status = match (build.build_complete, build.current_phase.as_str()) {
        (false, phase) if !phase.is_empty() => format!("{} in {phase}", build.build_status),
        _ => build.build_status.clone(),
    };
    row("status", &status);
    if build.stop_requested && !build.build_complete {
        row("", "stop requested");
    }
    row("queued", &build.queued_reason);
    row("project", &build.project_name);
    row("initiator", &build.initiator);
    let source = match &build.git {
        Some(git) if !git.revision.is_empty() => format!("{} at {}", git.url, git.revision),
        Some(git) => git.url.clone(),
        None => build.source_digest.clone(),
    };
    row("source", &source);
    row("revision", &build.resolved_source_version);
    row("image", &build.image);
    row("compute", &build.compute_type);
    for (key, ms) in [
        ("queued at", build.queued_time_ms),
        ("started", build.start_time_ms),
        ("ended", build.end_time_ms),
    ] {
        row(key, &rfc3339(ms).unwrap_or_default());
    }
    if build.start_time_ms > 0 && build.end_time_ms >= build.start_time_ms {
        let seconds = (build.end_time_ms - build.start_time_ms) / 1000;
        row("duration", &format!("{seconds}s"));
    }
    if !build.worker_id.is_empty() {
        row(
            "worker",
            &format!("{} (attempt {})", build.worker_id, build.attempt),
        );
    }
    row("retry of", &build.retry_of);
    for i in &build.network_interfaces {
        let name = match i.network.as_str() {
            "" => "own",
            n => n,
        };
        let aliases = match i.aliases.is_empty() {
            true => String::new(),
            false => format!(" as {}", i.aliases.join(", ")),
        };
        row(
            "network",
            &format!("{name} ({}) {}{aliases}", i.docker_network, i.ip_address),
        );
    }
    if !build.artifacts_digest.is_empty() {
        row(
            "artifacts",
            &format!(
                "{} ({} bytes)",
                build.artifacts_digest, build.artifacts_size
            ),
        );
    }
    if !build.phases.is_empty() {
        let _ = writeln!(text, "phases");
    }
    for phase in &build.phases {
        let status = match phase.phase_status.as_str() {
            "" => "running",
            s => s,
        };
        let duration = match phase.end_time_ms {
            0 => String::new(),
            _ => format!("{}s", phase.duration_in_seconds),
        };
        let _ = writeln!(text, "  {:<17} {status:<11} {duration}", phase.phase_type);
        for context in &phase.contexts {
            let _ = writeln!(text, "      {}: {}", context.status_code, context.message);
        }
    }
    if !build.exported_environment_variables.is_empty() {
        let _ = writeln!(text, "exported");
    }
    for variable in &build.exported_environment_variables {
        let _ = writeln!(text, "  {}={}", variable.name, variable.value);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::v1::{BuildPhase, PhaseContext};

    #[test]
    fn statuses_are_checked_in_any_case() {
        assert_eq!(parse_status("in_progress"), Ok("IN_PROGRESS".to_string()));
        let e = parse_status("done").expect_err("unknown");
        assert!(e.contains("SUCCEEDED"), "{e}");
    }

    fn failed_build() -> Build {
        Build {
            id: "app:1".into(),
            build_number: 3,
            build_status: "FAILED".into(),
            current_phase: "COMPLETED".into(),
            build_complete: true,
            worker_id: "w1".into(),
            attempt: 1,
            phases: vec![
                BuildPhase {
                    phase_type: "INSTALL".into(),
                    phase_status: "SUCCEEDED".into(),
                    end_time_ms: 2,
                    duration_in_seconds: 1,
                    ..Default::default()
                },
                BuildPhase {
                    phase_type: "BUILD".into(),
                    phase_status: "FAILED".into(),
                    end_time_ms: 3,
                    duration_in_seconds: 4,
                    contexts: vec![PhaseContext {
                        status_code: "COMMAND_EXECUTION_ERROR".into(),
                        message: "exit status 2".into(),
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_outcome_names_failed_phases_only() {
        let mut build = failed_build();
        assert_eq!(
            outcome_line(&build),
            "build app:1 FAILED (BUILD: exit status 2)"
        );
        build.build_status = "SUCCEEDED".into();
        assert_eq!(outcome_line(&build), "build app:1 SUCCEEDED");
    }

    #[test]
    fn the_summary_shows_phases_contexts_and_worker() {
        let text = describe(&failed_build());
        assert!(text.contains("status      FAILED\n"), "{text}");
        assert!(text.contains("worker      w1 (attempt 1)"), "{text}");
        assert!(
            text.contains("  BUILD             FAILED      4s\n"),
            "{text}"
        );
        assert!(
            text.contains("      COMMAND_EXECUTION_ERROR: exit status 2"),
            "{text}"
        );
    }
}
