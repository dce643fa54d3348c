//! Validation of the optional output sections: `artifacts`, `cache`, `reports`, `proxy` and
//! `batch`. A child of `check` so it shares the checker's private helpers.

use std::collections::{HashMap, HashSet};

use super::Checker;
use crate::diagnostic::did_you_mean;
use crate::model::{Artifacts, Batch, Cache, CacheAction, Proxy, Report, Span};
use crate::parse::tree::{join, Kind, Node};

const ARTIFACT_KEYS: &[&str] = &[
    "files",
    "name",
    "discard-paths",
    "base-directory",
    "exclude-paths",
    "enable-symlinks",
    "s3-prefix",
    "secondary-artifacts",
];
const CACHE_KEYS: &[&str] = &["paths", "key", "fallback-keys", "action"];
const REPORT_KEYS: &[&str] = &["files", "base-directory", "discard-paths", "file-format"];
const REPORT_FORMATS: &[&str] = &[
    "JUNITXML",
    "CUCUMBERJSON",
    "NUNITXML",
    "NUNIT3XML",
    "TESTNGXML",
    "VISUALSTUDIOTRX",
    "CLOVERXML",
    "COBERTURAXML",
    "JACOCOXML",
    "SIMPLECOV",
];
const BATCH_KINDS: &[&str] = &["build-list", "build-matrix", "build-graph", "build-fanout"];
const BATCH_TASK_KEYS: &[&str] = &[
    "identifier",
    "buildspec",
    "debug-session",
    "env",
    "ignore-failure",
    "depend-on",
];
const MAX_FALLBACK_KEYS: usize = 5;

impl Checker<'_> {
    // ---- artifacts, cache, reports, proxy ----

    pub(super) fn artifacts(
        &mut self,
        node: &Node,
        path: &str,
        key_pos: Span,
        primary: bool,
    ) -> Option<Artifacts> {
        let entries = self.map(node, path)?;
        let mut a = Artifacts::default();
        let mut has_files = false;
        for e in entries {
            let p = join(path, &e.key);
            let v = &e.value;
            match e.key.as_str() {
                "files" if !v.is_null() => {
                    has_files = true;
                    a.files = self.strings(v, &p, true);
                }
                "files" => {}
                "name" => a.name = self.string(v, &p),
                "discard-paths" => a.discard_paths = self.boolean(v, &p).unwrap_or(false),
                "base-directory" => a.base_directory = self.string(v, &p),
                "exclude-paths" => a.exclude_paths = self.strings(v, &p, true),
                "enable-symlinks" => a.enable_symlinks = self.boolean(v, &p).unwrap_or(false),
                "s3-prefix" => a.s3_prefix = self.string(v, &p),
                "secondary-artifacts" if primary => a.secondary = self.secondary(v, &p),
                _ => self.unknown_key(e, path, ARTIFACT_KEYS),
            }
        }
        if !has_files {
            self.missing(key_pos, &join(path, "files"));
        }
        Some(a)
    }

    fn secondary(&mut self, node: &Node, path: &str) -> Vec<(String, Artifacts)> {
        let Some(entries) = self.map(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries {
            let p = join(path, &e.key);
            if !is_identifier(&e.key) {
                self.error(
                    e.key_pos,
                    &p,
                    "artifact identifiers may only contain letters, digits and _",
                );
            }
            let def = if e.value.is_null() {
                self.missing(e.key_pos, &join(&p, "files"));
                None
            } else {
                self.artifacts(&e.value, &p, e.key_pos, false)
            };
            if let Some(def) = def {
                out.push((e.key.clone(), def));
            }
        }
        out
    }

    pub(super) fn cache(&mut self, node: &Node, path: &str, key_pos: Span) -> Option<Cache> {
        let entries = self.map(node, path)?;
        let mut c = Cache::default();
        let mut has_paths = false;
        let mut fallback_pos = None;
        for e in entries {
            let p = join(path, &e.key);
            let v = &e.value;
            match e.key.as_str() {
                "paths" if !v.is_null() => {
                    has_paths = true;
                    c.paths = self.strings(v, &p, true);
                }
                "paths" => {}
                "key" => c.key = self.string(v, &p),
                "fallback-keys" => {
                    fallback_pos = Some(e.key_pos);
                    c.fallback_keys = self.strings(v, &p, true);
                    if let Kind::Seq(items) = &v.kind {
                        if let Some(extra) = items.get(MAX_FALLBACK_KEYS) {
                            self.error(
                                extra.pos,
                                &format!("{p}[{MAX_FALLBACK_KEYS}]"),
                                format!("at most {MAX_FALLBACK_KEYS} fallback keys are allowed"),
                            );
                        }
                    }
                }
                "action" => {
                    c.action = match self.string(v, &p).map(|s| s.to_ascii_lowercase()) {
                        Some(s) if s == "restore" => Some(CacheAction::Restore),
                        Some(s) if s == "save" => Some(CacheAction::Save),
                        Some(s) => {
                            self.error(
                                v.pos,
                                &p,
                                format!("unsupported action \"{s}\", expected restore or save"),
                            );
                            None
                        }
                        None => None,
                    }
                }
                _ => self.unknown_key(e, path, CACHE_KEYS),
            }
        }
        if !has_paths {
            self.missing(key_pos, &join(path, "paths"));
        }
        if let (Some(pos), None) = (fallback_pos, &c.key) {
            self.warn(pos, &join(path, "fallback-keys"), "ignored without `key`");
        }
        Some(c)
    }

    pub(super) fn reports(&mut self, node: &Node, path: &str) -> Vec<(String, Report)> {
        let Some(entries) = self.map(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for group in entries {
            let gp = join(path, &group.key);
            let Some(fields) = self.map(&group.value, &gp) else {
                continue;
            };
            let mut r = Report::default();
            let mut has_files = false;
            for e in fields {
                let p = join(&gp, &e.key);
                let v = &e.value;
                match e.key.as_str() {
                    "files" if !v.is_null() => {
                        has_files = true;
                        r.files = self.strings(v, &p, true);
                    }
                    "files" => {}
                    "base-directory" => r.base_directory = self.string(v, &p),
                    "discard-paths" => r.discard_paths = self.boolean(v, &p).unwrap_or(false),
                    "file-format" => r.file_format = self.file_format(v, &p),
                    _ => self.unknown_key(e, &gp, REPORT_KEYS),
                }
            }
            if !has_files {
                self.missing(group.key_pos, &join(&gp, "files"));
            }
            out.push((group.key.clone(), r));
        }
        out
    }

    fn file_format(&mut self, node: &Node, path: &str) -> Option<String> {
        let upper = self.string(node, path)?.to_ascii_uppercase();
        if REPORT_FORMATS.contains(&upper.as_str()) {
            return Some(upper);
        }
        let message = match did_you_mean(&upper, REPORT_FORMATS) {
            Some(k) => format!("unknown report file format \"{upper}\", did you mean \"{k}\"?"),
            None => format!(
                "unknown report file format \"{upper}\" (expected one of: {})",
                REPORT_FORMATS.join(", ")
            ),
        };
        self.error(node.pos, path, message);
        None
    }

    pub(super) fn proxy(&mut self, node: &Node, path: &str) -> Option<Proxy> {
        let entries = self.map(node, path)?;
        let mut proxy = Proxy::default();
        for e in entries {
            let p = join(path, &e.key);
            match e.key.as_str() {
                "upload-artifacts" => {
                    proxy.upload_artifacts = self.boolean(&e.value, &p).unwrap_or(false)
                }
                "logs" => proxy.logs = self.boolean(&e.value, &p).unwrap_or(false),
                _ => self.unknown_key(e, path, &["upload-artifacts", "logs"]),
            }
        }
        Some(proxy)
    }

    // ---- batch ----

    pub(super) fn batch(&mut self, node: &Node, path: &str, key_pos: Span) -> Option<Batch> {
        let entries = self.map(node, path)?;
        let mut fast_fail = false;
        let mut kind: Option<&str> = None;
        let mut identifiers = Vec::new();
        // depend-on references, checked once every identifier is known.
        let mut deps: Vec<(String, Span, String)> = Vec::new();
        for e in entries {
            let p = join(path, &e.key);
            match e.key.as_str() {
                "fast-fail" => fast_fail = self.boolean(&e.value, &p).unwrap_or(false),
                k @ ("build-list" | "build-matrix" | "build-graph" | "build-fanout") => {
                    if let Some(first) = kind {
                        self.error(
                            e.key_pos,
                            &p,
                            format!("only one batch type is allowed, found both {first} and {k}"),
                        );
                        continue;
                    }
                    kind = Some(k);
                    match k {
                        "build-list" | "build-graph" => self.batch_tasks(
                            &e.value,
                            &p,
                            k == "build-graph",
                            &mut identifiers,
                            &mut deps,
                        ),
                        "build-matrix" => self.batch_sections(&e.value, &p, &["static", "dynamic"]),
                        _ => self.build_fanout(&e.value, &p),
                    }
                }
                _ => {
                    let mut known = vec!["fast-fail"];
                    known.extend_from_slice(BATCH_KINDS);
                    self.unknown_key(e, path, &known);
                }
            }
        }
        let ids: Vec<&str> = identifiers.iter().map(String::as_str).collect();
        for (dep, pos, p) in &deps {
            if !ids.contains(&dep.as_str()) {
                let message = match did_you_mean(dep, &ids) {
                    Some(k) => format!("no build with identifier \"{dep}\", did you mean \"{k}\"?"),
                    None => format!("no build with identifier \"{dep}\""),
                };
                self.error(*pos, p, message);
            }
        }
        let Some(kind) = kind else {
            self.error(
                key_pos,
                path,
                "needs exactly one of build-list, build-matrix, build-graph or build-fanout",
            );
            return None;
        };
        Some(Batch {
            kind: kind.to_string(),
            fast_fail,
            identifiers,
        })
    }

    /// `build-list` / `build-graph` entries.
    fn batch_tasks(
        &mut self,
        node: &Node,
        path: &str,
        graph: bool,
        identifiers: &mut Vec<String>,
        deps: &mut Vec<(String, Span, String)>,
    ) {
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                format!("must be a list of builds, found {}", node.describe()),
            );
            return;
        };
        let mut first_seen: HashMap<String, Span> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(fields) = self.map(item, &ip) else {
                continue;
            };
            let mut has_id = false;
            for e in fields {
                let p = join(&ip, &e.key);
                let v = &e.value;
                match e.key.as_str() {
                    "identifier" => {
                        has_id = true;
                        let Some(id) = self.string(v, &p) else {
                            self.missing(e.key_pos, &p);
                            continue;
                        };
                        if !is_identifier(&id) {
                            self.error(
                                v.pos,
                                &p,
                                "identifiers may only contain letters, digits and _",
                            );
                        } else if let Some(first) = first_seen.get(&id) {
                            self.error(
                                v.pos,
                                &p,
                                format!(
                                    "duplicate identifier \"{id}\" (first at {}:{})",
                                    first.line, first.col
                                ),
                            );
                        } else {
                            first_seen.insert(id.clone(), v.pos);
                            identifiers.push(id);
                        }
                    }
                    "buildspec" => {
                        self.string(v, &p);
                    }
                    "debug-session" | "ignore-failure" => {
                        self.boolean(v, &p);
                    }
                    "env" => {
                        self.map(v, &p);
                    }
                    "depend-on" if graph => {
                        let names = self.strings(v, &p, false);
                        if let Kind::Seq(dep_items) = &v.kind {
                            let positions = dep_items
                                .iter()
                                .enumerate()
                                .filter(|(_, n)| n.scalar().is_some());
                            for ((j, n), name) in positions.zip(names) {
                                deps.push((name, n.pos, format!("{p}[{j}]")));
                            }
                        }
                    }
                    _ => {
                        let known = if graph {
                            BATCH_TASK_KEYS
                        } else {
                            &BATCH_TASK_KEYS[..BATCH_TASK_KEYS.len() - 1]
                        };
                        self.unknown_key(e, &ip, known);
                    }
                }
            }
            if !has_id {
                self.missing(item.pos, &join(&ip, "identifier"));
            }
        }
    }

    /// A mapping whose listed keys must themselves be mappings (`build-matrix`).
    fn batch_sections(&mut self, node: &Node, path: &str, known: &[&str]) {
        let Some(entries) = self.map(node, path) else {
            return;
        };
        let mut seen = HashSet::new();
        for e in entries {
            let p = join(path, &e.key);
            if known.contains(&e.key.as_str()) {
                seen.insert(e.key.as_str());
                self.map(&e.value, &p);
            } else {
                self.unknown_key(e, path, known);
            }
        }
        if seen.is_empty() {
            self.error(node.pos, path, "needs `static` or `dynamic`");
        }
    }

    fn build_fanout(&mut self, node: &Node, path: &str) {
        let Some(entries) = self.map(node, path) else {
            return;
        };
        for e in entries {
            let p = join(path, &e.key);
            match e.key.as_str() {
                "parallelism" => {
                    let n = self.string(&e.value, &p);
                    if !matches!(n.and_then(|s| s.parse::<u32>().ok()), Some(1..)) {
                        self.error(e.value.pos, &p, "must be a positive whole number");
                    }
                }
                "ignore-failure" => {
                    self.boolean(&e.value, &p);
                }
                _ => self.unknown_key(e, path, &["parallelism", "ignore-failure"]),
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
