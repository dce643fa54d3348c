//! The buildspec as Kiln understands it after parsing and validation.
//! Every type here is plain data; positions live in `Span`s so later checks can point at the source.

use serde::Serialize;

/// A 1-based line and column in the buildspec source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Span {
    pub line: usize,
    pub col: usize,
}

/// Buildspec `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Version {
    /// `0.1`: every command runs in a fresh shell in `CODEBUILD_SRC_DIR`.
    V01,
    /// `0.2`: working directory and variables carry over between commands and phases.
    V02,
}

/// `env.shell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shell {
    Sh,
    Bash,
}

impl Shell {
    /// The program that runs each command item.
    pub fn program(self) -> &'static str {
        match self {
            Shell::Sh => "/bin/sh",
            Shell::Bash => "bash",
        }
    }
}

/// The four command phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum CommandPhase {
    Install,
    PreBuild,
    Build,
    PostBuild,
}

impl CommandPhase {
    pub const ALL: [CommandPhase; 4] = [
        CommandPhase::Install,
        CommandPhase::PreBuild,
        CommandPhase::Build,
        CommandPhase::PostBuild,
    ];

    /// The key used in the buildspec (`pre_build`).
    pub fn key(self) -> &'static str {
        match self {
            CommandPhase::Install => "install",
            CommandPhase::PreBuild => "pre_build",
            CommandPhase::Build => "build",
            CommandPhase::PostBuild => "post_build",
        }
    }
}

/// `on-failure` of a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum OnFailure {
    Abort,
    Continue,
    /// Re-run the phase up to `count` more times while its failure message matches `pattern`
    /// (`None` means `.*`). The pattern has been checked to compile with the `regex` crate.
    Retry {
        count: u32,
        pattern: Option<String>,
    },
}

/// One command phase.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Phase {
    pub run_as: Option<String>,
    pub on_failure: Option<OnFailure>,
    /// `runtime-versions` (install only), in source order.
    pub runtime_versions: Vec<(String, String)>,
    pub commands: Vec<Command>,
    pub finally: Vec<Command>,
}

/// One item of `commands` or `finally`: a whole script, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Command {
    /// The item's text exactly as written (numbers and booleans keep their source text).
    pub text: String,
    pub span: Span,
}

/// `env`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Env {
    pub shell: Option<Shell>,
    /// `variables` (or 0.1 `environment_variables` / `plaintext`), in source order.
    pub variables: Vec<(String, String)>,
    /// `parameter-store`: variable name to parameter name.
    pub parameter_store: Vec<(String, String)>,
    /// `secrets-manager`: variable name to `secret-id:json-key:version-stage:version-id`.
    pub secrets_manager: Vec<(String, String)>,
    pub exported_variables: Vec<String>,
    pub git_credential_helper: bool,
}

/// An artifact definition (primary or secondary).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Artifacts {
    pub files: Vec<String>,
    pub name: Option<String>,
    pub discard_paths: bool,
    pub base_directory: Option<String>,
    pub exclude_paths: Vec<String>,
    pub enable_symlinks: bool,
    pub s3_prefix: Option<String>,
    /// `secondary-artifacts`, identifier to definition, in source order.
    pub secondary: Vec<(String, Artifacts)>,
}

/// `cache.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CacheAction {
    Restore,
    Save,
}

/// `cache`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Cache {
    pub paths: Vec<String>,
    pub key: Option<String>,
    pub fallback_keys: Vec<String>,
    /// `None`: both restore and save.
    pub action: Option<CacheAction>,
}

/// One report group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Report {
    pub files: Vec<String>,
    pub base_directory: Option<String>,
    pub discard_paths: bool,
    /// Upper-cased file format (`JUNITXML`, ...), if given.
    pub file_format: Option<String>,
}

/// `batch`: validated but not run yet; kept as its kind and identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// `build-list`, `build-matrix`, `build-graph` or `build-fanout`.
    pub kind: String,
    pub fast_fail: bool,
    /// Identifiers of list or graph entries.
    pub identifiers: Vec<String>,
}

/// `proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Proxy {
    pub upload_artifacts: bool,
    pub logs: bool,
}

/// A parsed, validated buildspec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Buildspec {
    pub version: Version,
    pub run_as: Option<String>,
    pub env: Env,
    pub proxy: Option<Proxy>,
    pub batch: Option<Batch>,
    /// The phases present, in run order.
    pub phases: Vec<(CommandPhase, Phase)>,
    pub reports: Vec<(String, Report)>,
    pub artifacts: Option<Artifacts>,
    pub cache: Option<Cache>,
}

impl Buildspec {
    /// The phase definition, if the buildspec has that phase.
    pub fn phase(&self, which: CommandPhase) -> Option<&Phase> {
        self.phases
            .iter()
            .find(|(p, _)| *p == which)
            .map(|(_, p)| p)
    }
}
