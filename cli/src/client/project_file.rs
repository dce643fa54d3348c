//! Project files for `kiln project apply -f FILE`: YAML (or JSON) and TOML, with the fields of
//! the `Project` message under CodeBuild's camelCase names (snake_case accepted too). Both formats
//! go through one serde struct with `deny_unknown_fields`; YAML is first turned into a JSON value,
//! as yaml-rust2 has no serde support. `kiln project get --json` prints the same shape.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_proto::v1::{
    EnvironmentVariable, HostMount, Project, ProjectArtifacts, ProjectCache, ProjectEnvironment,
    ProjectSource, VpcAttachment,
};
use kiln_worker::docker::ComputeType;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::run::valid_project;

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectFile {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc: Vec<VpcFile>,
    #[serde(default, alias = "timeout_in_minutes", skip_serializing_if = "is_zero")]
    pub timeout_in_minutes: u32,
    #[serde(
        default,
        alias = "queued_timeout_in_minutes",
        skip_serializing_if = "is_zero"
    )]
    pub queued_timeout_in_minutes: u32,
    #[serde(
        default,
        alias = "concurrent_build_limit",
        skip_serializing_if = "is_zero"
    )]
    pub concurrent_build_limit: u32,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub buildspec: String,
    /// GIT: clone only this many commits (0: all).
    #[serde(
        default,
        rename = "gitCloneDepth",
        alias = "git_clone_depth",
        skip_serializing_if = "is_zero"
    )]
    pub git_clone_depth: u32,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentFile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(
        default,
        alias = "compute_type",
        skip_serializing_if = "String::is_empty"
    )]
    pub compute_type: String,
    #[serde(
        default,
        alias = "environment_variables",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub environment_variables: Vec<VariableFile>,
    #[serde(
        default,
        alias = "worker_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub worker_labels: BTreeMap<String, String>,
    /// Sandbox exceptions: each also needs the worker config to allow the project.
    #[serde(
        default,
        alias = "privileged_mode",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub privileged_mode: bool,
    #[serde(
        default,
        alias = "docker_socket",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub docker_socket: bool,
    #[serde(
        default,
        alias = "host_network",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub host_network: bool,
    #[serde(default, alias = "host_paths", skip_serializing_if = "Vec::is_empty")]
    pub host_paths: Vec<HostPathFile>,
}

/// `environment.hostPaths[]`: a worker directory mounted into the build container.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathFile {
    #[serde(alias = "host_path")]
    pub host_path: String,
    #[serde(alias = "container_path")]
    pub container_path: String,
    #[serde(
        default,
        alias = "read_only",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub read_only: bool,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableFile {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsFile {
    pub packaging: String,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcFile {
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Reads a project file: `.yaml`, `.yml` or `.json` as YAML, `.toml` as TOML.
pub fn load(path: &Path) -> Result<Project, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let file = match extension.as_deref() {
        Some("yaml" | "yml" | "json") => from_yaml(&text),
        Some("toml") => toml::from_str(&text).map_err(|e| e.to_string()),
        _ => Err("unknown file type: name a .yaml, .yml, .json or .toml file".to_string()),
    };
    file.and_then(ProjectFile::into_project)
        .map_err(|e| format!("{}: {}", path.display(), e.trim_end()))
}

fn from_yaml(text: &str) -> Result<ProjectFile, String> {
    let mut documents = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    if documents.len() != 1 {
        return Err(format!(
            "expected one YAML document, found {}",
            documents.len()
        ));
    }
    let value = yaml_to_json(documents.remove(0))?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// A YAML value as JSON. Keys given without a value (`description:`) are left out, so they
/// take their defaults.
fn yaml_to_json(yaml: Yaml) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{text:?} is not a number"))?,
        Yaml::String(s) => Value::String(s),
        Yaml::Array(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let key = match key {
                    Yaml::String(key) => key,
                    other => return Err(format!("keys must be text, found {other:?}")),
                };
                match yaml_to_json(value)? {
                    Value::Null => {}
                    value => {
                        object.insert(key, value);
                    }
                }
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err("YAML anchors and aliases are not supported in project files".to_string())
        }
    })
}

/// `value` when it is one of `allowed` (in any case, returned upper-case), or empty.
fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<String, String> {
    let upper = value.trim().to_ascii_uppercase();
    match upper.is_empty() || allowed.contains(&upper.as_str()) {
        true => Ok(upper),
        false => Err(format!(
            "{key}: unknown value {value:?}; use one of {}",
            allowed.join(", ")
        )),
    }
}

impl ProjectFile {
    /// The `Project` message, with the names and enumerated values checked.
    pub fn into_project(self) -> Result<Project, String> {
        let name = valid_project(&self.name).map_err(|e| format!("name: {e}"))?;
        let source = self
            .source
            .map(|s| -> Result<_, String> {
                Ok(ProjectSource {
                    r#type: one_of("source.type", &s.kind, &["NO_SOURCE", "GIT"])?,
                    location: s.location,
                    buildspec: s.buildspec,
                    git_clone_depth: s.git_clone_depth,
                })
            })
            .transpose()?;
        let environment = self
            .environment
            .map(|e| -> Result<_, String> {
                let compute_type = match e.compute_type.trim() {
                    "" => String::new(),
                    text => text
                        .parse::<ComputeType>()
                        .map_err(|err| format!("environment.computeType: {err}"))?
                        .codebuild_name()
                        .to_string(),
                };
                let environment_variables = e
                    .environment_variables
                    .into_iter()
                    .map(|v| -> Result<_, String> {
                        let key = format!("environment.environmentVariables {}: type", v.name);
                        Ok(EnvironmentVariable {
                            r#type: one_of(
                                &key,
                                &v.kind,
                                &["PLAINTEXT", "PARAMETER_STORE", "SECRETS_MANAGER"],
                            )?,
                            name: v.name,
                            value: v.value,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(ProjectEnvironment {
                    image: e.image,
                    compute_type,
                    environment_variables,
                    worker_labels: e.worker_labels.into_iter().collect(),
                    privileged_mode: e.privileged_mode,
                    docker_socket: e.docker_socket,
                    host_network: e.host_network,
                    host_paths: e
                        .host_paths
                        .into_iter()
                        .map(|h| HostMount {
                            host_path: h.host_path,
                            container_path: h.container_path,
                            read_only: h.read_only,
                        })
                        .collect(),
                })
            })
            .transpose()?;
        let artifacts = self
            .artifacts
            .map(|a| -> Result<_, String> {
                Ok(ProjectArtifacts {
                    packaging: one_of("artifacts.packaging", &a.packaging, &["NONE", "ZIP"])?,
                })
            })
            .transpose()?;
        let cache = self
            .cache
            .map(|c| -> Result<_, String> {
                Ok(ProjectCache {
                    r#type: one_of("cache.type", &c.kind, &["NO_CACHE", "LOCAL", "S3"])?,
                    location: c.location,
                })
            })
            .transpose()?;
        Ok(Project {
            name,
            description: self.description,
            source,
            environment,
            artifacts,
            cache,
            vpc: self
                .vpc
                .into_iter()
                .map(|v| VpcAttachment {
                    network: v.network,
                    aliases: v.aliases,
                })
                .collect(),
            timeout_in_minutes: self.timeout_in_minutes,
            queued_timeout_in_minutes: self.queued_timeout_in_minutes,
            concurrent_build_limit: self.concurrent_build_limit,
            created_ms: 0,
            modified_ms: 0,
        })
    }
}

impl From<&Project> for ProjectFile {
    fn from(p: &Project) -> ProjectFile {
        ProjectFile {
            name: p.name.clone(),
            description: p.description.clone(),
            source: p.source.as_ref().map(|s| SourceFile {
                kind: s.r#type.clone(),
                location: s.location.clone(),
                buildspec: s.buildspec.clone(),
                git_clone_depth: s.git_clone_depth,
            }),
            environment: p.environment.as_ref().map(|e| EnvironmentFile {
                image: e.image.clone(),
                compute_type: e.compute_type.clone(),
                environment_variables: e
                    .environment_variables
                    .iter()
                    .map(|v| VariableFile {
                        name: v.name.clone(),
                        value: v.value.clone(),
                        kind: v.r#type.clone(),
                    })
                    .collect(),
                worker_labels: e
                    .worker_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                privileged_mode: e.privileged_mode,
                docker_socket: e.docker_socket,
                host_network: e.host_network,
                host_paths: e
                    .host_paths
                    .iter()
                    .map(|h| HostPathFile {
                        host_path: h.host_path.clone(),
                        container_path: h.container_path.clone(),
                        read_only: h.read_only,
                    })
                    .collect(),
            }),
            artifacts: p.artifacts.as_ref().map(|a| ArtifactsFile {
                packaging: a.packaging.clone(),
            }),
            cache: p.cache.as_ref().map(|c| CacheFile {
                kind: c.r#type.clone(),
                location: c.location.clone(),
            }),
            vpc: p
                .vpc
                .iter()
                .map(|v| VpcFile {
                    network: v.network.clone(),
                    aliases: v.aliases.clone(),
                })
                .collect(),
            timeout_in_minutes: p.timeout_in_minutes,
            queued_timeout_in_minutes: p.queued_timeout_in_minutes,
            concurrent_build_limit: p.concurrent_build_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/project.example.yaml")
    }

    #[test]
    fn the_example_project_file_parses() {
        let project = load(&example()).expect("the example is valid");
        assert_eq!(project.name, "web-app");
        let environment = project.environment.expect("environment");
        assert_eq!(environment.compute_type, "BUILD_GENERAL1_MEDIUM");
        assert_eq!(environment.environment_variables.len(), 2);
        assert_eq!(
            environment.worker_labels.get("arch").map(String::as_str),
            Some("amd64")
        );
        let mount = &environment.host_paths[0];
        assert_eq!(mount.host_path, "/var/cache/kiln-shared/npm");
        assert_eq!(mount.container_path, "/root/.npm");
        assert!(mount.read_only && !environment.privileged_mode);
        assert_eq!(project.vpc[0].network, "services");
        assert_eq!(project.timeout_in_minutes, 30);
        assert!(project
            .source
            .is_some_and(|s| s.buildspec.contains("npm test")));
    }

    #[test]
    fn toml_and_yaml_give_the_same_project() {
        let yaml = "name: app\nenvironment:\n  compute_type: small\n  environmentVariables:\n    - {name: A, value: '1'}\ncache: {type: local}\ntimeoutInMinutes: 5\n";
        let toml = "name = \"app\"\ntimeout_in_minutes = 5\n[environment]\ncomputeType = \"BUILD_GENERAL1_SMALL\"\nenvironmentVariables = [{ name = \"A\", value = \"1\" }]\n[cache]\ntype = \"LOCAL\"\n";
        let dir = tempfile::tempdir().expect("tmp");
        let (y, t) = (dir.path().join("p.yaml"), dir.path().join("p.toml"));
        std::fs::write(&y, yaml).expect("write");
        std::fs::write(&t, toml).expect("write");
        let from_yaml = load(&y).expect("yaml");
        assert_eq!(from_yaml, load(&t).expect("toml"));
        assert_eq!(from_yaml.cache.map(|c| c.r#type), Some("LOCAL".to_string()));
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        for (file, text, key) in [
            ("a.yaml", "name: app\nimage: x\n", "image"),
            ("b.yaml", "name: app\nenvironment:\n  imagee: x\n", "imagee"),
            (
                "c.toml",
                "name = \"app\"\n[cache]\ntype = \"S3\"\nbucket = \"b\"\n",
                "bucket",
            ),
        ] {
            let path = dir.path().join(file);
            std::fs::write(&path, text).expect("write");
            let e = load(&path).expect_err(file);
            assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
            assert!(e.starts_with(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let bad = |text: &str| {
            from_yaml(text)
                .and_then(ProjectFile::into_project)
                .expect_err(text)
        };
        assert!(bad("name: -x\n").starts_with("name:"));
        assert!(bad("name: app\nenvironment: {computeType: HUGE}\n")
            .contains("environment.computeType"));
        assert!(bad("name: app\nartifacts: {packaging: TAR}\n").contains("artifacts.packaging"));
        assert!(bad("name: app\n---\nname: b\n").contains("one YAML document"));
        assert!(load(Path::new("project.ini")).is_err());
    }

    #[test]
    fn a_stored_project_prints_as_a_file_that_applies_again() {
        let project = load(&example()).expect("example");
        let json = serde_json::to_value(ProjectFile::from(&project)).expect("json");
        let again: ProjectFile = serde_json::from_value(json).expect("parses back");
        assert_eq!(again.into_project().expect("valid"), project);
    }
}
