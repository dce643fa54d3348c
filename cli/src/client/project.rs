//! `kiln project apply|get|list`: projects stored on the server.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use kiln_proto::v1::{GetProjectRequest, ListProjectsRequest, Project};
use tonic::Code;

use super::connect::ServerArgs;
use super::json::rfc3339;
use super::project_file::{self, ProjectFile};
use super::Failure;

#[derive(clap::Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCommand,
}

#[derive(clap::Subcommand)]
enum ProjectCommand {
    /// Create a project from a file, or replace the settings of the one with its name
    Apply {
        /// The project file: .yaml, .yml, .json or .toml (see deploy/project.example.yaml)
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show a project
    Get {
        name: String,
        /// Print the project as JSON, in the shape `apply` reads
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the projects
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn project(args: ProjectArgs) -> Result<ExitCode, Failure> {
    match args.command {
        ProjectCommand::Apply { file, server } => {
            let project = project_file::load(&file).map_err(Failure::invalid)?;
            let server = server.connect().await?;
            let name = project.name.clone();
            let verb = match server.client().create_project(project.clone()).await {
                Ok(_) => "created",
                Err(status) if status.code() == Code::AlreadyExists => {
                    server
                        .client()
                        .update_project(project)
                        .await
                        .map_err(|s| server.refused(s))?;
                    "updated"
                }
                Err(status) => return Err(server.refused(status)),
            };
            out!("{verb} project {name}");
        }
        ProjectCommand::Get { name, json, server } => {
            let server = server.connect().await?;
            let project = server
                .client()
                .get_project(GetProjectRequest { name })
                .await
                .map_err(|s| server.refused(s))?
                .into_inner();
            match json {
                true => {
                    let value = serde_json::to_value(ProjectFile::from(&project))
                        .map_err(|e| Failure::failed(e.to_string()))?;
                    out!("{value:#}");
                }
                false => out!("{}", describe(&project).trim_end()),
            }
        }
        ProjectCommand::List { server } => {
            let server = server.connect().await?;
            let projects = server
                .client()
                .list_projects(ListProjectsRequest {})
                .await
                .map_err(|s| server.refused(s))?
                .into_inner()
                .projects;
            for p in projects {
                match p.description.is_empty() {
                    true => out!("{}", p.name),
                    false => out!("{:<32} {}", p.name, p.description),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of `kiln project get`.
fn describe(p: &Project) -> String {
    let mut text = String::new();
    let mut row = |key: &str, value: &str| {
        if !value.is_empty() {
            let _ = writeln!(text, "{key:<14}{value}");
        }
    };
    row("project", &p.name);
    row("description", &p.description);
    if let Some(source) = &p.source {
        row(
            "source",
            format!("{} {}", source.r#type, source.location).trim(),
        );
        if !source.buildspec.is_empty() {
            row("buildspec", "inline (kiln project get --json shows it)");
        }
    }
    if let Some(env) = &p.environment {
        row("image", &env.image);
        row("compute", &env.compute_type);
        for v in &env.environment_variables {
            let value = match v.r#type.as_str() {
                "" | "PLAINTEXT" => format!("{}={}", v.name, v.value),
                kind => format!("{} from {kind} {}", v.name, v.value),
            };
            row("variable", &value);
        }
        let mut labels: Vec<String> = env
            .worker_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        row("worker labels", &labels.join(", "));
        let mut sandbox: Vec<String> = [
            (env.privileged_mode, "privileged mode"),
            (env.docker_socket, "Docker socket"),
            (env.host_network, "host network"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, what)| what.to_string())
        .collect();
        sandbox.extend(env.host_paths.iter().map(|h| {
            let mode = if h.read_only { " (read-only)" } else { "" };
            format!("{} at {}{mode}", h.host_path, h.container_path)
        }));
        row("sandbox", &sandbox.join(", "));
    }
    if let Some(artifacts) = &p.artifacts {
        row("artifacts", &artifacts.packaging);
    }
    if let Some(cache) = &p.cache {
        row(
            "cache",
            format!("{} {}", cache.r#type, cache.location).trim(),
        );
    }
    for vpc in &p.vpc {
        row(
            "network",
            format!("{} {}", vpc.network, vpc.aliases.join(", ")).trim(),
        );
    }
    let minutes = |m: u32| match m {
        0 => String::new(),
        m => format!("{m} min"),
    };
    row("timeout", &minutes(p.timeout_in_minutes));
    row("queued timeout", &minutes(p.queued_timeout_in_minutes));
    if p.concurrent_build_limit > 0 {
        row("at once", &p.concurrent_build_limit.to_string());
    }
    row("created", &rfc3339(p.created_ms).unwrap_or_default());
    row("modified", &rfc3339(p.modified_ms).unwrap_or_default());
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        project: ProjectArgs,
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::try_parse_from([
            "p", "apply", "-f", "p.yaml", "--server", "h:1", "--token", "t",
        ])
        .expect("apply");
        assert!(
            matches!(cli.project.command, ProjectCommand::Apply { file, .. } if file == Path::new("p.yaml"))
        );
        assert!(
            Cli::try_parse_from(["p", "apply"]).is_err(),
            "-f is required"
        );
        let cli = Cli::try_parse_from(["p", "get", "web", "--json"]).expect("get");
        assert!(matches!(
            cli.project.command,
            ProjectCommand::Get { json: true, .. }
        ));
    }

    #[test]
    fn the_summary_hides_nothing_that_was_set() {
        let project = project_file::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/project.example.yaml"),
        )
        .expect("example");
        let text = describe(&project);
        assert!(
            text.contains("variable      NODE_ENV=production\n"),
            "{text}"
        );
        assert!(
            text.contains("NPM_TOKEN from PARAMETER_STORE /ci/npm-token"),
            "{text}"
        );
        assert!(text.contains("worker labels arch=amd64"), "{text}");
        assert!(
            text.contains("network       services web-app-build"),
            "{text}"
        );
    }
}
