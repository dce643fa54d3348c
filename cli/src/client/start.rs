//! `kiln start [DIR]`: uploads a checkout (or names a git repository), starts a build on the
//! server, and prints its id; with `--follow`, prints its log and ends with its outcome.
//!
//! Without `--project` the build carries an inline project named after DIR (or the repository),
//! by the rule `kiln run` uses; with `--project` it runs a project stored with `kiln project apply`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use kiln_proto::v1::start_build_request::{ProjectRef, Source};
use kiln_proto::v1::upload_source_request::Part;
use kiln_proto::v1::{
    Build, EnvironmentVariable, GitSource, HasBlobsRequest, Project, ProjectSource,
    StartBuildRequest, UploadBegin, UploadSourceRequest, WatchBuildRequest,
};
use kiln_worker::docker::ComputeType;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::builds::{fetch, outcome_line};
use super::connect::{Server, ServerArgs};
use super::json::build_json;
use super::logs::print_log;
use super::Failure;
use crate::args::{parse_duration, parse_variable};
use crate::run::{project_from_dir, valid_project};

/// The largest `data` message of an upload.
const UPLOAD_CHUNK: usize = 1 << 20;

/// CodeBuild's longest build timeout, in minutes.
const MAX_TIMEOUT_MINUTES: u64 = 2160;

// No `Debug`: `-e` values may be secret.
#[derive(clap::Args)]
pub struct StartArgs {
    /// The checkout to upload as the build's source (not read with --git)
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// A project stored on the server (default: an inline project named after DIR)
    #[arg(long)]
    project: Option<String>,
    /// A buildspec file (relative to DIR) whose text replaces the project's buildspec
    #[arg(short = 'b', long = "buildspec")]
    buildspec: Option<PathBuf>,
    /// Environment variable override, NAME=VALUE
    #[arg(short = 'e', long = "env", value_parser = parse_variable)]
    env: Vec<(String, String)>,
    /// Build image override
    #[arg(short = 'i', long)]
    image: Option<String>,
    /// Compute type override: SMALL, MEDIUM or LARGE
    #[arg(long)]
    compute: Option<ComputeType>,
    /// Build timeout override, like 90s, 20m or 2h (rounded up to minutes)
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Higher runs first, 0 to 100
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=100))]
    priority: i32,
    /// Makes retries safe: a second start with the same token returns the first build
    #[arg(long)]
    idempotency_token: Option<String>,
    /// Build this git repository (a URL the workers can clone) instead of uploading DIR
    #[arg(long, value_name = "URL")]
    git: Option<String>,
    /// The branch, tag or commit of --git (default: the default branch)
    #[arg(long, requires = "git")]
    revision: Option<String>,
    /// Clone only this many commits of --git's history (default: the project's, else all)
    #[arg(long, requires = "git")]
    depth: Option<u32>,
    /// Print the log until the build ends; exit 0 only when it succeeded
    #[arg(short, long)]
    follow: bool,
    /// Print the build as JSON on stdout (the log goes to stderr)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn start(args: StartArgs) -> Result<ExitCode, Failure> {
    let request = start_request(&args, initiator())?;
    let server = args.server.connect().await?;
    let build = submit(&server, request, &args.dir).await?;
    if !args.follow {
        match args.json {
            true => out!("{:#}", build_json(&build)),
            false => out!("{}", build.id),
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("build {} {}", build.id, build.build_status);
    let mut log: Box<dyn Write> = match args.json {
        true => Box::new(io::stderr()),
        false => Box::new(io::stdout()),
    };
    let build = follow(&server, &build.id, &mut log).await?;
    Ok(finish(&build, args.json))
}

/// Starts the build `request` describes, uploading `dir` as its source when it names none.
pub async fn submit(
    server: &Server,
    mut request: StartBuildRequest,
    dir: &Path,
) -> Result<Build, Failure> {
    if request.source.is_none() {
        let digest = upload(server, dir).await?;
        request.source = Some(Source::SourceDigest(digest));
    }
    server
        .client()
        .start_build(request)
        .await
        .map_err(|s| server.refused(s))?
        .into_inner()
        .build
        .ok_or_else(|| Failure::failed("the server answered StartBuild without a build"))
}

/// Writes a build's log to `log` as it comes, until the build ends; returns the completed build.
pub async fn follow(server: &Server, id: &str, log: &mut dyn Write) -> Result<Build, Failure> {
    print_log(server, id, true, log).await?;
    until_complete(server, fetch(server, id).await?).await
}

/// The end of a followed build: the build as JSON on stdout, or its outcome line on stderr; exit
/// 0 only when it succeeded.
pub fn finish(build: &Build, json: bool) -> ExitCode {
    match json {
        true => out!("{:#}", build_json(build)),
        false => eprintln!("{}", outcome_line(build)),
    }
    match build.build_status.as_str() {
        "SUCCEEDED" => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// Everything that can be checked before talking to the server; an error here exits 2. The
/// source is left empty when DIR is to be uploaded.
fn start_request(args: &StartArgs, initiator: String) -> Result<StartBuildRequest, Failure> {
    let (source, inline_source, default_name) = match &args.git {
        Some(url) => {
            let git = GitSource {
                url: url.clone(),
                revision: args.revision.clone().unwrap_or_default(),
                clone_depth: args.depth.unwrap_or(0),
            };
            let repository = url.trim_end_matches('/').trim_end_matches(".git");
            let project_source = ProjectSource {
                r#type: "GIT".to_string(),
                location: url.clone(),
                ..ProjectSource::default()
            };
            let name = project_from_dir(Path::new(repository));
            (Some(Source::Git(git)), project_source, name)
        }
        None => {
            let dir = std::fs::canonicalize(&args.dir)
                .ok()
                .filter(|d| d.is_dir())
                .ok_or_else(|| {
                    Failure::invalid(format!(
                        "source directory {}: not found or not a directory; name the checkout \
                         to build (default: the current directory)",
                        args.dir.display()
                    ))
                })?;
            let project_source = ProjectSource {
                r#type: "NO_SOURCE".to_string(),
                ..Default::default()
            };
            (None, project_source, project_from_dir(&dir))
        }
    };
    let project_ref = match &args.project {
        Some(name) => ProjectRef::ProjectName(
            valid_project(name).map_err(|e| Failure::invalid(e.to_string()))?,
        ),
        None => ProjectRef::InlineProject(Project {
            name: default_name,
            source: Some(inline_source),
            ..Default::default()
        }),
    };
    let buildspec_override = match &args.buildspec {
        Some(file) => {
            let path = args.dir.join(file);
            std::fs::read_to_string(&path).map_err(|e| {
                Failure::invalid(format!(
                    "buildspec {}: {e}; -b names a file relative to DIR",
                    path.display()
                ))
            })?
        }
        None => String::new(),
    };
    let timeout_in_minutes_override = match args.timeout {
        Some(timeout) => {
            let minutes = timeout.as_secs().div_ceil(60);
            if minutes > MAX_TIMEOUT_MINUTES {
                return Err(Failure::invalid(format!(
                    "--timeout: at most {MAX_TIMEOUT_MINUTES} minutes (36h)"
                )));
            }
            // At most 2160, so it fits.
            minutes as u32
        }
        None => 0,
    };
    Ok(StartBuildRequest {
        project_ref: Some(project_ref),
        source,
        buildspec_override,
        buildspec_path: relative_buildspec(args.buildspec.as_deref()),
        environment_variables_override: plaintext(&args.env),
        image_override: args.image.clone().unwrap_or_default(),
        compute_type_override: args
            .compute
            .map(|c| c.codebuild_name().to_string())
            .unwrap_or_default(),
        timeout_in_minutes_override,
        queued_timeout_in_minutes_override: 0,
        priority: args.priority,
        idempotency_token: args.idempotency_token.clone().unwrap_or_default(),
        initiator,
        ..Default::default()
    })
}

/// `-e NAME=VALUE` overrides as the request carries them.
pub fn plaintext(variables: &[(String, String)]) -> Vec<EnvironmentVariable> {
    variables
        .iter()
        .map(|(name, value)| EnvironmentVariable {
            name: name.clone(),
            value: value.clone(),
            r#type: "PLAINTEXT".to_string(),
        })
        .collect()
}

/// Who starts a build: the user's login name.
pub fn initiator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "kiln".to_string())
}

/// Archives `dir` into a temporary file (UploadSource wants the size first), then streams it
/// in chunks of at most 1 MiB; returns the digest the server named.
async fn upload(server: &Server, dir: &Path) -> Result<String, Failure> {
    let archiving = |e: io::Error| {
        Failure::invalid(format!(
            "cannot archive {}: {e}; make the files readable or leave them out of the checkout",
            dir.display()
        ))
    };
    let spool = tempfile::tempfile().map_err(archiving)?;
    let mut file = tokio::fs::File::from_std(spool);
    let (stream, archiver) = kiln_worker::source::archive_checkout(dir)
        .map_err(|e| Failure::invalid(format!("{}: {e}", dir.display())))?;
    let mut stream = Box::pin(stream);
    let mut written = Ok(());
    while let Some(bytes) = stream.next().await {
        written = file.write_all(&bytes).await;
        if written.is_err() {
            break;
        }
    }
    // The archiver stops (broken pipe) when nobody reads any more.
    drop(stream);
    match archiver.await {
        Ok(result) => result.and(written).map_err(archiving)?,
        Err(e) => return Err(Failure::failed(format!("the archiver failed: {e}"))),
    }
    file.flush().await.map_err(archiving)?;
    let size = file.metadata().await.map_err(archiving)?.len();
    file.rewind().await.map_err(archiving)?;
    // Unchanged files archive to the same bytes: a source the server has is not sent again.
    let digest = format!("sha256:{}", sha256_hex(&mut file).await.map_err(archiving)?);
    file.rewind().await.map_err(archiving)?;
    let known = server
        .client()
        .has_blobs(HasBlobsRequest {
            digests: vec![digest.clone()],
        })
        .await
        .map_err(|s| server.refused(s))?
        .into_inner()
        .present;
    if known.first().copied().unwrap_or(false) {
        eprintln!("kiln start: the server has this source already ({digest}): not uploaded again");
        return Ok(digest);
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<UploadSourceRequest>(4);
    let reader = tokio::spawn(async move {
        let begin = Part::Begin(UploadBegin { size });
        if tx
            .send(UploadSourceRequest { part: Some(begin) })
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        loop {
            let n = file.read(&mut buf).await?;
            let data = Part::Data(buf[..n].to_vec());
            if n == 0
                || tx
                    .send(UploadSourceRequest { part: Some(data) })
                    .await
                    .is_err()
            {
                return Ok::<(), io::Error>(());
            }
        }
    });
    let requests = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|request| (request, rx))
    });
    let answer = server.client().upload_source(requests).await;
    // A local read error explains a refused upload better than the server can.
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Failure::failed(format!("cannot read the archive: {e}"))),
        Err(e) => return Err(Failure::failed(format!("the upload task failed: {e}"))),
    }
    Ok(answer.map_err(|s| server.refused(s))?.into_inner().digest)
}

/// The SHA-256 of the rest of `file`, in hex.
async fn sha256_hex(file: &mut tokio::fs::File) -> io::Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(format!("{:x}", hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// The build once it is complete: a log stream can end before the final status is recorded.
async fn until_complete(server: &Server, build: Build) -> Result<Build, Failure> {
    if build.build_complete {
        return Ok(build);
    }
    let request = WatchBuildRequest {
        id: build.id.clone(),
    };
    let mut updates = server
        .client()
        .watch_build(request)
        .await
        .map_err(|s| server.refused(s))?
        .into_inner();
    let mut latest = build;
    while let Some(update) = updates.message().await.map_err(|s| server.refused(s))? {
        latest = update;
        if latest.build_complete {
            break;
        }
    }
    Ok(latest)
}

/// A `-b` file's path in the source (relative paths only), for the build's diagnostics.
pub fn relative_buildspec(file: Option<&std::path::Path>) -> String {
    match file {
        Some(f) if f.is_relative() => f.to_string_lossy().into_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        start: StartArgs,
    }

    fn parse(args: &[&str]) -> Result<StartArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("kiln-start").chain(args.iter().copied()))
            .map(|cli| cli.start)
    }

    fn request(args: &[&str]) -> StartBuildRequest {
        let args = parse(args).expect("valid arguments");
        start_request(&args, "ana".to_string()).expect("valid request")
    }

    #[test]
    fn options_become_overrides() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("other.yml"), "version: 0.2\n").expect("write");
        let d = dir.path().to_str().expect("utf-8");
        let r = request(&[
            d,
            "-b",
            "other.yml",
            "-e",
            "A=1",
            "--image",
            "img:1",
            "--compute",
            "medium",
            "--timeout",
            "90s",
            "--priority",
            "7",
            "--idempotency-token",
            "t1",
        ]);
        assert_eq!(r.buildspec_override, "version: 0.2\n");
        assert_eq!(r.environment_variables_override[0].name, "A");
        assert_eq!(r.environment_variables_override[0].r#type, "PLAINTEXT");
        assert_eq!(r.image_override, "img:1");
        assert_eq!(r.compute_type_override, "BUILD_GENERAL1_MEDIUM");
        assert_eq!(r.timeout_in_minutes_override, 2);
        assert_eq!((r.priority, r.idempotency_token.as_str()), (7, "t1"));
        assert_eq!(r.initiator, "ana");
        assert!(r.source.is_none(), "DIR is uploaded");
        let Some(ProjectRef::InlineProject(project)) = r.project_ref else {
            panic!("an inline project")
        };
        assert_eq!(
            project.name,
            project_from_dir(&dir.path().canonicalize().expect("dir"))
        );
    }

    #[test]
    fn a_stored_project_or_a_git_source() {
        let r = request(&[
            "--project",
            "web",
            "--git",
            "https://h/org/app.git",
            "--revision",
            "v1",
            "--depth",
            "1",
        ]);
        assert_eq!(r.project_ref, Some(ProjectRef::ProjectName("web".into())));
        assert_eq!(
            r.source,
            Some(Source::Git(GitSource {
                url: "https://h/org/app.git".into(),
                revision: "v1".into(),
                clone_depth: 1,
            }))
        );
        let r = request(&["--git", "https://h/org/app.git"]);
        let Some(ProjectRef::InlineProject(project)) = r.project_ref else {
            panic!("an inline project")
        };
        assert_eq!(project.name, "app");
        assert_eq!(project.source.map(|s| s.r#type), Some("GIT".to_string()));
    }

    #[test]
    fn invalid_input_is_refused_before_any_call() {
        assert!(
            parse(&["--revision", "v1"]).is_err(),
            "--revision needs --git"
        );
        assert!(parse(&["--priority", "101"]).is_err());
        assert!(parse(&["--compute", "huge"]).is_err());
        assert!(parse(&["-e", "NOEQUALS"]).is_err());
        assert!(parse(&["--timeout", "soon"]).is_err());
        let invalid = |args: &[&str]| {
            let args = parse(args).expect("parses");
            start_request(&args, String::new())
                .expect_err("refused")
                .code
        };
        assert_eq!(invalid(&["/no/such/dir"]), 2);
        assert_eq!(invalid(&["--project=-bad"]), 2);
        assert_eq!(invalid(&["--timeout", "37h"]), 2);
        assert_eq!(invalid(&["-b", "missing.yml"]), 2);
        let defaults = parse(&[]).expect("defaults");
        assert_eq!(defaults.dir, PathBuf::from("."));
        assert!(!defaults.follow && !defaults.json);
    }
}
