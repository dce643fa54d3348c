//! `kiln network list`: for operators, the networks each connected worker offers builds (its
//! config's `[[networks]]`) and the running builds attached to them.

use std::process::ExitCode;

use kiln_proto::v1::{ListNetworksRequest, ListNetworksResponse};

use super::connect::ServerArgs;
use super::Failure;

#[derive(clap::Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(clap::Subcommand)]
enum NetworkCommand {
    /// The networks workers offer, who may use them, and the builds attached now
    List {
        /// Print the answer as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub async fn network(args: NetworkArgs) -> Result<ExitCode, Failure> {
    let NetworkCommand::List { json, server } = args.command;
    let server = server.connect().await?;
    let answer = server
        .client()
        .list_networks(ListNetworksRequest {})
        .await
        .map_err(|s| server.refused(s))?
        .into_inner();
    match json {
        true => out!("{:#}", to_json(&answer)),
        false => out!("{}", table(&answer).trim_end()),
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per (worker, network), then one per attached build.
fn table(answer: &ListNetworksResponse) -> String {
    if answer.workers.is_empty() {
        return "no workers are connected".to_string();
    }
    let mut text = format!(
        "{:<20} {:<16} {:<24} {:<9} {:<18} PROJECTS\n",
        "WORKER", "NETWORK", "DOCKER NETWORK", "EGRESS", "SUBNET"
    );
    for w in &answer.workers {
        if w.networks.is_empty() {
            text.push_str(&format!("{:<20} (none)\n", w.worker_id));
        }
        for n in &w.networks {
            let egress = if n.internal { "none" } else { "allowed" };
            let subnet = if n.subnet.is_empty() { "-" } else { &n.subnet };
            text.push_str(&format!(
                "{:<20} {:<16} {:<24} {:<9} {:<18} {}\n",
                w.worker_id,
                n.name,
                n.docker_network,
                egress,
                subnet,
                n.projects.join(",")
            ));
        }
    }
    let attached: Vec<_> = answer
        .workers
        .iter()
        .flat_map(|w| w.attached.iter().map(move |a| (&w.worker_id, a)))
        .collect();
    if !attached.is_empty() {
        text.push_str(&format!(
            "\n{:<20} {:<16} {:<48} ALIASES\n",
            "WORKER", "NETWORK", "BUILD"
        ));
        for (worker, a) in attached {
            text.push_str(&format!(
                "{:<20} {:<16} {:<48} {}\n",
                worker,
                a.network,
                a.build_id,
                a.aliases.join(",")
            ));
        }
    }
    text
}

fn to_json(answer: &ListNetworksResponse) -> serde_json::Value {
    let workers: Vec<serde_json::Value> = answer
        .workers
        .iter()
        .map(|w| {
            let networks: Vec<serde_json::Value> = w
                .networks
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "name": n.name,
                        "dockerNetwork": n.docker_network,
                        "internal": n.internal,
                        "subnet": n.subnet,
                        "projects": n.projects,
                    })
                })
                .collect();
            let attached: Vec<serde_json::Value> = w
                .attached
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "buildId": a.build_id,
                        "network": a.network,
                        "aliases": a.aliases,
                    })
                })
                .collect();
            serde_json::json!({
                "workerId": w.worker_id,
                "networks": networks,
                "attached": attached,
            })
        })
        .collect();
    serde_json::json!({ "workers": workers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::v1::{AttachedBuild, OfferedNetwork, WorkerNetworks};

    #[test]
    fn the_table_names_networks_and_attached_builds() {
        let answer = ListNetworksResponse {
            workers: vec![WorkerNetworks {
                worker_id: "w1".into(),
                networks: vec![OfferedNetwork {
                    name: "db".into(),
                    docker_network: "kiln-db".into(),
                    internal: true,
                    subnet: String::new(),
                    projects: vec!["app".into(), "api".into()],
                }],
                attached: vec![AttachedBuild {
                    build_id: "app:1".into(),
                    network: "db".into(),
                    aliases: vec!["app-build".into()],
                }],
            }],
        };
        let text = table(&answer);
        assert!(text.contains("w1"), "{text}");
        let line = text.lines().nth(1).expect("a network line");
        assert!(line.contains("kiln-db") && line.contains("none") && line.ends_with("app,api"));
        assert!(
            text.contains("app:1") && text.contains("app-build"),
            "{text}"
        );
        let json = to_json(&answer);
        assert_eq!(json["workers"][0]["networks"][0]["internal"], true);
        assert_eq!(json["workers"][0]["attached"][0]["buildId"], "app:1");
        assert_eq!(
            table(&ListNetworksResponse::default()),
            "no workers are connected"
        );
    }
}
