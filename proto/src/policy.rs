//! The sandbox policy check, one function for everyone who asks: the coordinator at StartBuild (is
//! there a worker that may run this build at all?) and when dispatching (only to workers that
//! admit the build), and the worker before it runs an assignment (its config may have changed).
//!
//! By default a build gets its own network and nothing else of the host. Each exception (an
//! operator network, privileged mode, the Docker socket, the host network, a host path) needs both
//! the project to ask for it and the worker's policy to allow that project.

use std::fmt;

use crate::v1::{Assignment, HostMount, SandboxPolicy};

/// Why a worker's policy does not admit a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The worker does not offer what the build asks for at all (no such network).
    Missing(String),
    /// The worker offers it, but not to this project.
    Denied(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing(m) | Refusal::Denied(m) => f.write_str(m),
        }
    }
}

/// Whether `projects` (a policy's list, `*` = all) names `project`.
pub fn allows(projects: &[String], project: &str) -> bool {
    projects.iter().any(|p| p == "*" || p == project)
}

/// Whether `policy` lets the build run, with every exception it asks for.
pub fn admit(policy: &SandboxPolicy, a: &Assignment) -> Result<(), Refusal> {
    let project = a.project_name.as_str();
    for attachment in &a.vpc {
        let name = &attachment.network;
        let Some(network) = policy.networks.iter().find(|n| &n.name == name) else {
            return Err(Refusal::Missing(format!(
                "network {name:?} is not defined on the worker: the operator adds a \
                 [[networks]] entry with name = {name:?} to the worker config, or the project \
                 leaves it out of `vpc`"
            )));
        };
        if !allows(&network.projects, project) {
            return Err(Refusal::Denied(format!(
                "project {project:?} may not use network {name:?}: the operator adds \
                 {project:?} to that network's `projects` in the worker config"
            )));
        }
    }
    let exceptions = [
        (
            a.privileged_mode,
            &policy.privileged,
            "privileged mode",
            "privileged",
        ),
        (
            a.docker_socket,
            &policy.docker_socket,
            "the Docker socket",
            "docker_socket",
        ),
        (
            a.host_network,
            &policy.host_network,
            "the host network",
            "host_network",
        ),
    ];
    for (asked, allowed, what, key) in exceptions {
        if asked && !allows(allowed, project) {
            return Err(Refusal::Denied(format!(
                "project {project:?} asks for {what}, which the worker does not allow it: the \
                 operator adds {project:?} to `{key}` under [sandbox] in the worker config, or \
                 the project stops asking"
            )));
        }
    }
    for mount in &a.host_paths {
        let granted = policy
            .host_paths
            .iter()
            .any(|g| allows(&g.projects, project) && is_within(&mount.host_path, &g.path));
        if !granted {
            return Err(Refusal::Denied(format!(
                "project {project:?} asks to mount host path {:?}, which the worker does not \
                 allow it: the operator adds a [[sandbox.host_paths]] entry for it (or a \
                 directory above it) naming {project:?}",
                mount.host_path
            )));
        }
    }
    Ok(())
}

/// An absolute path without `.` or `..` components (so prefix checks mean what they say).
pub fn is_clean_absolute(path: &str) -> bool {
    path.starts_with('/')
        && path
            .split('/')
            .skip(1)
            .all(|c| c != ".." && c != "." && (!c.is_empty() || path == "/"))
}

/// Whether `path` is `dir` or under it (both clean and absolute).
fn is_within(path: &str, dir: &str) -> bool {
    if !is_clean_absolute(path) || !is_clean_absolute(dir) {
        return false;
    }
    let dir = dir.trim_end_matches('/');
    path == dir || dir.is_empty() || path.starts_with(&format!("{dir}/"))
}

/// A project's host mount, checked before it is stored: both paths absolute and clean.
pub fn check_mount(m: &HostMount) -> Result<(), String> {
    for (what, path) in [
        ("host_path", &m.host_path),
        ("container_path", &m.container_path),
    ] {
        if !is_clean_absolute(path) {
            return Err(format!(
                "host path mount {what} {path:?} must be an absolute path without `.`, `..` or \
                 empty components (e.g. /var/cache/shared)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{HostPathGrant, OfferedNetwork, VpcAttachment};

    fn policy() -> SandboxPolicy {
        SandboxPolicy {
            networks: vec![OfferedNetwork {
                name: "db".into(),
                docker_network: "kiln-db".into(),
                projects: vec!["app".into()],
                ..Default::default()
            }],
            privileged: vec!["dind".into()],
            docker_socket: vec![],
            host_network: vec!["*".into()],
            host_paths: vec![HostPathGrant {
                path: "/srv/cache".into(),
                projects: vec!["app".into()],
            }],
        }
    }

    fn build(project: &str) -> Assignment {
        Assignment {
            project_name: project.into(),
            ..Default::default()
        }
    }

    fn on(project: &str, network: &str) -> Assignment {
        Assignment {
            vpc: vec![VpcAttachment {
                network: network.into(),
                aliases: vec![],
            }],
            ..build(project)
        }
    }

    #[test]
    fn networks_need_a_definition_and_the_project_on_its_list() {
        let p = policy();
        assert_eq!(admit(&p, &on("app", "db")), Ok(()));
        let e = admit(&p, &on("web", "db")).expect_err("web is not on db's list");
        assert!(matches!(e, Refusal::Denied(_)), "{e}");
        assert!(
            e.to_string().contains("\"web\" may not use network \"db\""),
            "{e}"
        );
        let e = admit(&p, &on("app", "cache")).expect_err("no such network");
        assert!(matches!(e, Refusal::Missing(_)), "{e}");
        assert!(e.to_string().contains("[[networks]]"), "{e}");
    }

    #[test]
    fn exceptions_need_both_the_request_and_the_policy() {
        let p = policy();
        assert_eq!(admit(&p, &build("web")), Ok(()), "the default sandbox");
        let privileged = |project: &str| Assignment {
            privileged_mode: true,
            ..build(project)
        };
        assert_eq!(admit(&p, &privileged("dind")), Ok(()));
        let e = admit(&p, &privileged("web")).expect_err("web may not");
        assert!(
            e.to_string().contains("`privileged` under [sandbox]"),
            "{e}"
        );
        let socket = Assignment {
            docker_socket: true,
            ..build("dind")
        };
        assert!(admit(&p, &socket).is_err(), "nobody gets the socket");
        let host = Assignment {
            host_network: true,
            ..build("anyone")
        };
        assert_eq!(admit(&p, &host), Ok(()), "* allows every project");
        assert!(admit(&SandboxPolicy::default(), &host).is_err());
    }

    #[test]
    fn host_paths_must_be_granted_and_inside_the_grant() {
        let p = policy();
        let mount = |project: &str, path: &str| Assignment {
            host_paths: vec![HostMount {
                host_path: path.into(),
                container_path: "/cache".into(),
                read_only: false,
            }],
            ..build(project)
        };
        assert_eq!(admit(&p, &mount("app", "/srv/cache")), Ok(()));
        assert_eq!(admit(&p, &mount("app", "/srv/cache/npm")), Ok(()));
        assert!(admit(&p, &mount("web", "/srv/cache")).is_err());
        assert!(admit(&p, &mount("app", "/srv/cache-other")).is_err());
        assert!(admit(&p, &mount("app", "/srv/cache/../../etc")).is_err());
        assert!(admit(&p, &mount("app", "/etc")).is_err());
    }

    #[test]
    fn mounts_must_be_clean_absolute_paths() {
        let m = |host: &str, container: &str| HostMount {
            host_path: host.into(),
            container_path: container.into(),
            read_only: true,
        };
        assert!(check_mount(&m("/srv/x", "/x")).is_ok());
        assert!(check_mount(&m("srv/x", "/x")).is_err());
        assert!(check_mount(&m("/srv/../etc", "/x")).is_err());
        assert!(check_mount(&m("/srv//x", "/x")).is_err());
        let e = check_mount(&m("/srv/x", "x")).expect_err("relative");
        assert!(e.contains("container_path"), "{e}");
    }
}
