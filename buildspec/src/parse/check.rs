//! Validation of the node tree against the buildspec rules (semantics §1), producing the model.
//!
//! The checker never stops at the first problem: every error and warning is collected so a user
//! fixes a buildspec in one round trip. Each section is checked on its own; a broken section
//! yields a default value so the others can still be checked.

mod sections;

use super::tree::{join, Entry, Kind, Node};
use crate::diagnostic::{did_you_mean, Diagnostic, Severity};
use crate::model::{Buildspec, Command, CommandPhase, Env, OnFailure, Phase, Shell, Span, Version};

const TOP_KEYS: &[&str] = &[
    "version",
    "run-as",
    "env",
    "proxy",
    "batch",
    "phases",
    "reports",
    "artifacts",
    "cache",
];
const ENV_KEYS: &[&str] = &[
    "shell",
    "variables",
    "parameter-store",
    "secrets-manager",
    "exported-variables",
    "git-credential-helper",
];
const PHASE_KEYS: &[&str] = &[
    "run-as",
    "on-failure",
    "runtime-versions",
    "commands",
    "finally",
];
const MAX_RETRIES: u32 = 100;
const DEFAULT_RETRIES: u32 = 3;

pub(crate) struct Checker<'f> {
    file: &'f str,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'f> Checker<'f> {
    pub fn new(file: &'f str) -> Self {
        Checker {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Span, path: &str, message: impl Into<String>) {
        let d = self.diagnostic(pos, path, message.into(), Severity::Error);
        self.errors.push(d);
    }

    fn warn(&mut self, pos: Span, path: &str, message: impl Into<String>) {
        let d = self.diagnostic(pos, path, message.into(), Severity::Warning);
        self.warnings.push(d);
    }

    fn diagnostic(&self, pos: Span, path: &str, message: String, severity: Severity) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
            path: path.to_string(),
            message,
            severity,
        }
    }

    // ---- typed accessors: each reports a type error and returns a neutral value ----

    /// Entries of a mapping; a null section counts as empty.
    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Entry]> {
        match &node.kind {
            Kind::Map(entries) => Some(entries),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!("must be a mapping, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// A scalar's text (numbers and booleans as written); `None` when null or not a scalar.
    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
            Kind::Scalar { .. } => None,
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!("must be a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// A user for `run-as`: a user name or uid (optionally `:group`), as Docker takes it.
    fn run_as(&mut self, node: &Node, path: &str) -> Option<String> {
        let user_part = |p: &str| {
            !p.is_empty()
                && !p.starts_with('-')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        match self.string(node, path) {
            Some(s) if s.split(':').count() <= 2 && s.split(':').all(user_part) => Some(s),
            Some(s) if s.trim().is_empty() => {
                self.error(node.pos, path, "must be a non-empty user name");
                None
            }
            Some(s) => {
                self.error(
                    node.pos,
                    path,
                    format!("{s:?} is not a user name or uid (letters, digits, _ - and ., optionally :group)"),
                );
                None
            }
            None if node.is_null() => {
                self.error(node.pos, path, "must be a non-empty user name");
                None
            }
            None => None,
        }
    }

    /// `yes`/`no`/`true`/`false` in any case, quoted or not; null means "not set".
    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        let text = self.string(node, path)?;
        match text.to_ascii_lowercase().as_str() {
            "yes" | "true" => Some(true),
            "no" | "false" => Some(false),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!("must be yes, no, true or false, found \"{text}\""),
                );
                None
            }
        }
    }

    /// A list of strings; with `scalar_ok`, a single string is taken as a one-item list.
    fn strings(&mut self, node: &Node, path: &str, scalar_ok: bool) -> Vec<String> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let item_path = format!("{path}[{i}]");
                    let s = self.string(item, &item_path);
                    if s.is_none() && item.is_null() {
                        self.error(item.pos, &item_path, "empty list item");
                    }
                    s
                })
                .collect(),
            _ if node.is_null() => Vec::new(),
            Kind::Scalar { text, .. } if scalar_ok => vec![text.clone()],
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!("must be a list, found {}", node.describe()),
                );
                Vec::new()
            }
        }
    }

    /// Warns about a key CodeBuild ignores, hinting at the likely intended one.
    fn unknown_key(&mut self, e: &Entry, path: &str, known: &[&str]) {
        let message = match did_you_mean(&e.key, known) {
            Some(k) => format!("unknown key, ignored (did you mean \"{k}\"?)"),
            None => "unknown key, ignored".to_string(),
        };
        self.warn(e.key_pos, &join(path, &e.key), message);
    }

    fn missing(&mut self, pos: Span, path: &str) {
        self.error(pos, path, "required key is missing");
    }

    // ---- top level ----

    pub fn buildspec(&mut self, root: &Node) -> Option<Buildspec> {
        let Kind::Map(entries) = &root.kind else {
            self.error(
                root.pos,
                "",
                format!(
                    "a buildspec must be a mapping with `version` and `phases`, found {}",
                    root.describe()
                ),
            );
            return None;
        };
        let version = match entries.iter().find(|e| e.key == "version") {
            Some(e) => self.version(&e.value),
            None => {
                self.error(root.pos, "version", "required key is missing (use 0.2)");
                Version::V02
            }
        };
        let mut bs = Buildspec {
            version,
            run_as: None,
            env: Env::default(),
            proxy: None,
            batch: None,
            phases: Vec::new(),
            reports: Vec::new(),
            artifacts: None,
            cache: None,
        };
        let mut has_phases = false;
        for e in entries {
            let (v, path) = (&e.value, e.key.as_str());
            match path {
                "version" => {}
                "run-as" => bs.run_as = self.run_as(v, path),
                "env" => self.env(v, path, &mut bs.env),
                "environment_variables" if version == Version::V01 => {
                    self.env_v01(v, path, &mut bs.env)
                }
                "proxy" => bs.proxy = self.proxy(v, path),
                "batch" => bs.batch = self.batch(v, path, e.key_pos),
                "phases" => {
                    has_phases = true;
                    bs.phases = self.phases(v, path);
                }
                "reports" => bs.reports = self.reports(v, path),
                "artifacts" if !v.is_null() => {
                    bs.artifacts = self.artifacts(v, path, e.key_pos, true)
                }
                "artifacts" => {}
                "cache" if !v.is_null() => bs.cache = self.cache(v, path, e.key_pos),
                "cache" => {}
                "environment_variables" => self.error(
                    e.key_pos,
                    path,
                    "unknown key, did you mean \"env\"? (`environment_variables` is the version 0.1 spelling)",
                ),
                _ => {
                    let hint = did_you_mean(path, TOP_KEYS);
                    // `phase:` already says what is wrong; "phases is missing" would be noise.
                    has_phases |= hint == Some("phases");
                    let message = match hint {
                        Some(k) => format!("unknown key, did you mean \"{k}\"?"),
                        None => format!("unknown key (expected one of: {})", TOP_KEYS.join(", ")),
                    };
                    self.error(e.key_pos, path, message);
                }
            }
        }
        if !has_phases && !entries.iter().any(|e| e.key == "batch") {
            self.error(
                root.pos,
                "phases",
                "required key is missing (only a batch buildspec may omit it)",
            );
        }
        self.errors.is_empty().then_some(bs)
    }

    fn version(&mut self, node: &Node) -> Version {
        // Compared as source text on purpose: `0.20` is a valid YAML float equal to 0.2, but it
        // is not a version CodeBuild accepts.
        match node.scalar() {
            Some("0.2") => Version::V02,
            Some("0.1") => Version::V01,
            other => {
                let found =
                    other.map_or_else(|| node.describe().to_string(), |s| format!("\"{s}\""));
                self.error(
                    node.pos,
                    "version",
                    format!("unsupported version {found}, expected 0.2 or 0.1"),
                );
                Version::V02
            }
        }
    }

    // ---- env ----

    fn env(&mut self, node: &Node, path: &str, env: &mut Env) {
        let Some(entries) = self.map(node, path) else {
            return;
        };
        for e in entries {
            let p = join(path, &e.key);
            match e.key.as_str() {
                "shell" => env.shell = self.shell(&e.value, &p),
                "variables" => env.variables.extend(self.var_map(&e.value, &p, false)),
                "parameter-store" => env.parameter_store.extend(self.var_map(&e.value, &p, true)),
                "secrets-manager" => env.secrets_manager.extend(self.var_map(&e.value, &p, true)),
                "exported-variables" => {
                    if let Kind::Seq(items) = &e.value.kind {
                        for (i, item) in items.iter().enumerate() {
                            let ip = format!("{p}[{i}]");
                            if let Some(name) = self.string(item, &ip) {
                                if self.var_name(&name, item.pos, &ip, false) {
                                    env.exported_variables.push(name);
                                }
                            } else if item.is_null() {
                                self.error(item.pos, &ip, "empty list item");
                            }
                        }
                    } else {
                        self.strings(&e.value, &p, false);
                    }
                }
                "git-credential-helper" => {
                    env.git_credential_helper = self.boolean(&e.value, &p).unwrap_or(false)
                }
                _ => self.unknown_key(e, path, ENV_KEYS),
            }
        }
    }

    /// Version 0.1 `environment_variables`, whose `plaintext` became `variables` in 0.2.
    fn env_v01(&mut self, node: &Node, path: &str, env: &mut Env) {
        let Some(entries) = self.map(node, path) else {
            return;
        };
        for e in entries {
            let p = join(path, &e.key);
            match e.key.as_str() {
                "plaintext" => env.variables.extend(self.var_map(&e.value, &p, false)),
                "parameter-store" => env.parameter_store.extend(self.var_map(&e.value, &p, true)),
                _ => self.unknown_key(e, path, &["plaintext", "parameter-store"]),
            }
        }
    }

    fn shell(&mut self, node: &Node, path: &str) -> Option<Shell> {
        match self.string(node, path)?.as_str() {
            "bash" => Some(Shell::Bash),
            "sh" | "/bin/sh" => Some(Shell::Sh),
            other => {
                self.error(
                    node.pos,
                    path,
                    format!("unsupported shell \"{other}\", expected one of: bash, /bin/sh, sh"),
                );
                None
            }
        }
    }

    /// A map of variable name to scalar value. Values keep their source text (`PORT: 8080`).
    /// `required_value`: parameter and secret references cannot be empty.
    fn var_map(&mut self, node: &Node, path: &str, required_value: bool) -> Vec<(String, String)> {
        let Some(entries) = self.map(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries {
            let p = join(path, &e.key);
            let valid = self.var_name(&e.key, e.key_pos, &p, true);
            let value = match (self.string(&e.value, &p), e.value.is_null()) {
                (Some(v), _) => v,
                (None, true) if !required_value => String::new(),
                (None, true) => {
                    self.error(e.value.pos, &p, "needs a value (the name to look up)");
                    continue;
                }
                (None, false) => continue,
            };
            if valid {
                out.push((e.key.clone(), value));
            }
        }
        out
    }

    /// Checks a variable name. `setting`: the buildspec assigns it, so the reserved
    /// `CODEBUILD_` prefix is refused; exporting one (reading it) is fine.
    fn var_name(&mut self, name: &str, pos: Span, path: &str, setting: bool) -> bool {
        if !crate::names::is_shell_name(name) {
            self.error(
                pos,
                path,
                format!("\"{name}\" is not a valid variable name (letters, digits and _, not starting with a digit)"),
            );
            false
        } else if let Some(prefix) = crate::names::reserved_prefix(name).filter(|_| setting) {
            self.error(
                pos,
                path,
                format!("variable names starting with {prefix} are reserved"),
            );
            false
        } else {
            true
        }
    }

    // ---- phases ----

    fn phases(&mut self, node: &Node, path: &str) -> Vec<(CommandPhase, Phase)> {
        let Some(entries) = self.map(node, path) else {
            return Vec::new();
        };
        let names: Vec<&str> = CommandPhase::ALL.iter().map(|p| p.key()).collect();
        let mut out = Vec::new();
        for e in entries {
            let p = join(path, &e.key);
            match CommandPhase::ALL.into_iter().find(|ph| ph.key() == e.key) {
                Some(which) => out.push((which, self.phase(which, &e.value, &p))),
                None => {
                    let message = match did_you_mean(&e.key, &names) {
                        Some(k) => format!("unknown phase, did you mean \"{k}\"?"),
                        None => "unknown phase (expected install, pre_build, build or post_build)"
                            .to_string(),
                    };
                    self.error(e.key_pos, &p, message);
                }
            }
        }
        out.sort_by_key(|(which, _)| *which);
        out
    }

    fn phase(&mut self, which: CommandPhase, node: &Node, path: &str) -> Phase {
        let mut phase = Phase::default();
        let Some(entries) = self.map(node, path) else {
            return phase;
        };
        for e in entries {
            let p = join(path, &e.key);
            let v = &e.value;
            match e.key.as_str() {
                "run-as" => phase.run_as = self.run_as(v, &p),
                "on-failure" => {
                    phase.on_failure = match self.string(v, &p) {
                        Some(text) => self.on_failure(&text, v.pos, &p),
                        None => None,
                    }
                }
                "commands" => phase.commands = self.commands(v, &p),
                "finally" => phase.finally = self.commands(v, &p),
                "runtime-versions" if which == CommandPhase::Install => {
                    phase.runtime_versions = self.runtime_versions(v, &p)
                }
                "runtime-versions" => self.error(
                    e.key_pos,
                    &p,
                    "runtime-versions is only allowed in the install phase",
                ),
                _ => self.unknown_key(e, path, PHASE_KEYS),
            }
        }
        phase
    }

    fn runtime_versions(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
        let Some(entries) = self.map(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries {
            let p = join(path, &e.key);
            match self.string(&e.value, &p) {
                Some(v) => out.push((e.key.clone(), v)),
                None if e.value.is_null() => self.error(e.value.pos, &p, "needs a version"),
                None => {}
            }
        }
        out
    }

    fn commands(&mut self, node: &Node, path: &str) -> Vec<Command> {
        let items = match &node.kind {
            Kind::Seq(items) => items,
            _ if node.is_null() => return Vec::new(),
            _ => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "must be a list of commands (one \"- \" item per command), found {}",
                        node.describe()
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match &item.kind {
                _ if item.is_null() => self.error(item.pos, &p, "empty command"),
                Kind::Scalar { text, .. } => out.push(Command {
                    text: text.clone(),
                    span: item.pos,
                }),
                Kind::Map(entries) => {
                    // `- echo a: b` is a mapping in YAML. Show the quoted form when we can
                    // rebuild it from a one-entry mapping.
                    let hint = match entries.as_slice() {
                        [e] => match e.value.scalar() {
                            Some(v) => {
                                format!(
                                    ": write it as - {}",
                                    yaml_quote(&format!("{}: {v}", e.key))
                                )
                            }
                            None => String::new(),
                        },
                        _ => String::new(),
                    };
                    self.error(
                        item.pos,
                        &p,
                        format!("command was read as a YAML mapping; quote commands that contain \": \"{hint}"),
                    );
                }
                Kind::Seq(_) => {
                    self.error(item.pos, &p, "a command must be a string, found a list")
                }
            }
        }
        out
    }

    /// `ABORT | CONTINUE | RETRY | RETRY-<count> | RETRY-<regex> | RETRY-<count>-<regex>`.
    fn on_failure(&mut self, text: &str, pos: Span, path: &str) -> Option<OnFailure> {
        let word = text.trim();
        let upper = word.to_ascii_uppercase();
        match upper.as_str() {
            "ABORT" => return Some(OnFailure::Abort),
            "CONTINUE" => return Some(OnFailure::Continue),
            "RETRY" => {
                return Some(OnFailure::Retry {
                    count: DEFAULT_RETRIES,
                    pattern: None,
                })
            }
            _ => {}
        }
        // `RETRY-` is ASCII, so byte 6 is a char boundary whenever the prefix matched.
        let Some(rest) = upper.starts_with("RETRY-").then(|| word.get(6..)).flatten() else {
            let hint = match did_you_mean(word, &["ABORT", "CONTINUE", "RETRY"]) {
                Some(k) => format!(", did you mean \"{k}\"?"),
                None => String::new(),
            };
            self.error(
                pos,
                path,
                format!("invalid value \"{word}\"{hint} (expected ABORT, CONTINUE, RETRY, RETRY-<count>, RETRY-<regex> or RETRY-<count>-<regex>)"),
            );
            return None;
        };
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (count, pattern) = match (digits_end, rest.as_bytes().get(digits_end)) {
            (0, _) => (None, Some(rest)),
            (_, None) => (Some(&rest[..digits_end]), None),
            (_, Some(b'-')) => (Some(&rest[..digits_end]), Some(&rest[digits_end + 1..])),
            // `RETRY-5x` is a regex that happens to start with a digit.
            (_, Some(_)) => (None, Some(rest)),
        };
        let count = match count {
            None => DEFAULT_RETRIES,
            Some(digits) => match digits.parse::<u32>() {
                Ok(n) if n <= MAX_RETRIES => n,
                _ => {
                    self.error(
                        pos,
                        path,
                        format!("retry count {digits} is out of range (0 to {MAX_RETRIES})"),
                    );
                    return None;
                }
            },
        };
        if let Some(p) = pattern {
            if p.is_empty() {
                self.error(pos, path, "empty retry regex after \"-\"");
                return None;
            }
            if let Err(e) = regex::Regex::new(p) {
                self.error(
                    pos,
                    path,
                    format!("invalid retry regex \"{p}\": {}", regex_error(&e)),
                );
                return None;
            }
        }
        Some(OnFailure::Retry {
            count,
            pattern: pattern.map(str::to_string),
        })
    }
}

/// The `regex` crate's syntax errors are multi-line drawings; a diagnostic is one line, so keep
/// the `error: ...` line.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_string,
        )
}

/// `text` as a YAML flow scalar: double-quoted when nothing in it needs escaping there,
/// single-quoted (with `'` doubled) otherwise.
fn yaml_quote(text: &str) -> String {
    if text.contains(['"', '\\']) {
        format!("'{}'", text.replace('\'', "''"))
    } else {
        format!("\"{text}\"")
    }
}
