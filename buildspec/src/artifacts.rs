//! Artifact selection (semantics §5) as a pure function over a listing of the source tree.
//!
//! The worker lists `CODEBUILD_SRC_DIR` without following symlinks and hands the listing to
//! [`select`], which decides which regular files go into the artifact and under which names. The
//! worker then copies exactly the [`SelectedFile::source`] paths (never following links itself)
//! and writes [`SelectedFile::symlink`] entries as links. Keeping the decision free of I/O means
//! every escape route (`..`, absolute paths, links out of the tree, link loops) is tested here
//! without a filesystem.
//!
//! Decisions beyond the spec's text, each for a reason:
//! - A glob that matches a directory does not pull in the directory's files (otherwise `dir/*`
//!   would be recursive); only a pattern naming a directory exactly (no wildcard) does. The same
//!   rule applies to `exclude-paths`: an exclude naming a directory exactly removes all of it.
//! - Symlinks are resolved like the kernel does (component by component, `..` after a followed
//!   link goes to the parent of the link's target), so what is read is what `cat` would read.
//! - Links that cannot be followed are reported in [`Selection::skipped`] only when a pattern
//!   would have selected them (or something below them), so unrelated broken links elsewhere in
//!   the tree do not flood the build log.
//! - With `enable-symlinks`, a kept link must also stay inside the artifact itself (its target,
//!   resolved from its destination path, may not climb above the artifact root): otherwise the
//!   artifact would carry a link pointing outside wherever it is extracted.
//! - Two different sources for one destination path, or a destination that is both a file and a
//!   directory, are a [`SelectError::NameCollision`], with or without `discard-paths`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::glob::{GlobError, Pattern};
use crate::model::Artifacts;

/// The most links followed while resolving one path (Linux allows 40 as well).
const MAX_SYMLINK_HOPS: usize = 40;
/// The most entries visited below followed directory links in one selection: links between
/// sibling directories can make the logical tree exponentially larger than the real one.
const MAX_LINKED_ENTRIES: usize = 1_000_000;
/// The mode reported for a kept symlink: the permission bits every Linux symlink has.
pub const SYMLINK_MODE: u32 = 0o777;

/// What a listing entry is (symlinks are listed, not followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { size: u64, mode: u32 },
    Dir,
    Symlink { target: String },
}

/// One entry of the source tree listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to `CODEBUILD_SRC_DIR`, '/'-separated, no leading `./`, no trailing `/`.
    pub path: String,
    pub kind: EntryKind,
}

/// One file (or kept link) of the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedFile {
    /// The listing path of the regular file whose bytes to copy, after resolving in-tree
    /// symlinks. For a kept link (`symlink` is `Some`), the listing path of the link itself.
    pub source: String,
    /// The relative path in the artifact.
    pub dest: String,
    /// `Some(target)` when `enable-symlinks` keeps a link: write a link, read nothing.
    pub symlink: Option<String>,
    /// The file's size; 0 for a kept link.
    pub size: u64,
    /// The file's mode as listed; [`SYMLINK_MODE`] (0o777) for a kept link.
    pub mode: u32,
}

/// A path that was not taken, with the reason to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// The outcome of [`select`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// Sorted by `dest`, each `dest` once.
    pub files: Vec<SelectedFile>,
    /// In the order they were met, each once.
    pub skipped: Vec<Skipped>,
}

/// Why no artifact can be built from the selection.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectError {
    /// Nothing matched; `skipped` says what was refused on the way (escaping paths, links out),
    /// which is often why.
    #[error("no matching artifact paths found")]
    NoMatch { skipped: Vec<Skipped> },
    #[error("artifact path '{dest}' would come from both '{first}' and '{second}'")]
    NameCollision {
        dest: String,
        first: String,
        second: String,
    },
    #[error(transparent)]
    Pattern(#[from] GlobError),
}

/// Lexically normalizes a relative '/'-separated path: drops empty and `.` components and
/// resolves `..` against the preceding component. `None` when the path is absolute or a `..`
/// climbs above the start. `""` and `"."` give `""` (the directory itself).
pub fn normalize(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            name => out.push(name),
        }
    }
    Some(out.join("/"))
}

/// Selects the files of one artifact definition from a listing of the source tree.
///
/// `spec.secondary` is ignored: the caller selects each secondary artifact with its own
/// definition. `name` and `s3_prefix` do not influence the selection either.
pub fn select(entries: &[Entry], spec: &Artifacts) -> Result<Selection, SelectError> {
    select_with_budget(entries, spec, MAX_LINKED_ENTRIES)
}

fn select_with_budget(
    entries: &[Entry],
    spec: &Artifacts,
    linked_budget: usize,
) -> Result<Selection, SelectError> {
    // Compile everything first so a bad pattern is reported even when another one escapes.
    let files = spec
        .files
        .iter()
        .map(|f| Pattern::new(f))
        .collect::<Result<Vec<_>, _>>()?;
    let excludes = spec
        .exclude_paths
        .iter()
        .map(|f| Pattern::new(f))
        .collect::<Result<Vec<_>, _>>()?;
    let base = spec
        .base_directory
        .as_deref()
        .map(Pattern::new)
        .transpose()?;

    let (tree, listing_skipped) = Tree::build(entries);
    let mut sel = Selector {
        tree: &tree,
        enable_symlinks: spec.enable_symlinks,
        discard_paths: spec.discard_paths,
        patterns: Vec::new(),
        excludes: Vec::new(),
        skipped: SkipLog::default(),
        linked_budget,
    };
    for s in listing_skipped {
        sel.skipped.push(s.path, s.reason);
    }
    for p in files {
        if p.escapes() {
            sel.skipped.push(
                p.as_str().to_string(),
                "artifact pattern escapes the source directory (absolute or '..'); never matched"
                    .to_string(),
            );
        } else {
            sel.patterns.push(Matcher::new(p));
        }
    }
    for p in excludes {
        if p.escapes() {
            sel.skipped.push(
                p.as_str().to_string(),
                "exclude-paths pattern escapes the source directory (absolute or '..'); ignored"
                    .to_string(),
            );
        } else {
            sel.excludes.push(Matcher::new(p));
        }
    }

    let bases = sel.bases(base.as_ref());
    let mut candidates = Vec::new();
    if !sel.patterns.is_empty() {
        for (real, logical) in bases {
            let mut stack = vec![real.clone()];
            sel.walk(&real, "", &logical, &mut stack, false, &mut candidates);
        }
    }
    let files = assemble(candidates)?;
    if files.is_empty() {
        return Err(SelectError::NoMatch {
            skipped: sel.skipped.list,
        });
    }
    Ok(Selection {
        files,
        skipped: sel.skipped.list,
    })
}

/// The listing, indexed for lookups by path and by directory.
struct Tree {
    kinds: HashMap<String, EntryKind>,
    /// Directory path to its children's names, sorted so walks are deterministic.
    children: HashMap<String, Vec<String>>,
}

impl Tree {
    /// Indexes `entries`. Directories implied by deeper paths are added even when not listed; a
    /// path listed twice keeps its first kind. Paths that are absolute or climb out are
    /// reported and ignored (a sane lister never produces them).
    fn build(entries: &[Entry]) -> (Tree, Vec<Skipped>) {
        let mut kinds: HashMap<String, EntryKind> = HashMap::new();
        let mut skipped = Vec::new();
        for e in entries {
            match normalize(&e.path) {
                Some(p) if p.is_empty() => {} // the root itself
                Some(p) => {
                    kinds.entry(p).or_insert_with(|| e.kind.clone());
                }
                None => skipped.push(Skipped {
                    path: e.path.clone(),
                    reason: "listing path is absolute or escapes the source directory; ignored"
                        .to_string(),
                }),
            }
        }
        let listed: Vec<String> = kinds.keys().cloned().collect();
        for path in listed {
            let mut cur = path.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                kinds.entry(parent.to_string()).or_insert(EntryKind::Dir);
                cur = parent;
            }
        }
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for path in kinds.keys() {
            let (parent, name) = split_parent(path);
            children
                .entry(parent.to_string())
                .or_default()
                .push(name.to_string());
        }
        for names in children.values_mut() {
            names.sort();
        }
        (Tree { kinds, children }, skipped)
    }

    fn children(&self, dir: &str) -> &[String] {
        self.children.get(dir).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Resolves `path` (relative to the root) like the kernel would, following every symlink on
    /// the way, to a regular file or a directory of the tree.
    fn resolve(&self, path: &str) -> Result<Resolved, LinkError> {
        let mut hops = 0usize;
        let mut cur: Vec<String> = Vec::new();
        let mut queue: VecDeque<String> = path_components(path).collect();
        while let Some(comp) = queue.pop_front() {
            if comp == ".." {
                if cur.pop().is_none() {
                    return Err(LinkError::Outside);
                }
                continue;
            }
            cur.push(comp);
            let here = cur.join("/");
            match self.kinds.get(&here) {
                None => return Err(LinkError::Dangling),
                Some(EntryKind::Dir) => {}
                Some(EntryKind::File { size, mode }) => {
                    if !queue.is_empty() {
                        return Err(LinkError::NotADirectory);
                    }
                    return Ok(Resolved::File {
                        path: here,
                        size: *size,
                        mode: *mode,
                    });
                }
                Some(EntryKind::Symlink { target }) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(LinkError::Loop);
                    }
                    if target.starts_with('/') {
                        return Err(LinkError::Absolute);
                    }
                    if target.is_empty() {
                        return Err(LinkError::Dangling);
                    }
                    // The target replaces the link: it is resolved from the link's directory,
                    // then the rest of the path continues from wherever it leads.
                    cur.pop();
                    for c in path_components(target).rev() {
                        queue.push_front(c);
                    }
                }
            }
        }
        Ok(Resolved::Dir(cur.join("/")))
    }
}

/// Where a followed path ends up.
#[derive(Debug, PartialEq)]
enum Resolved {
    File { path: String, size: u64, mode: u32 },
    Dir(String),
}

/// Why a path with symlinks on it cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LinkError {
    Absolute,
    Outside,
    Dangling,
    NotADirectory,
    Loop,
}

impl LinkError {
    fn reason(self, target: &str) -> String {
        match self {
            LinkError::Absolute => format!(
                "symlink to '{target}': an absolute target escapes the source directory; not followed"
            ),
            LinkError::Outside => format!(
                "symlink to '{target}' escapes the source directory; not followed"
            ),
            LinkError::Dangling | LinkError::NotADirectory => {
                format!("symlink to '{target}' is dangling (its target does not exist)")
            }
            LinkError::Loop => format!(
                "symlink to '{target}' is part of a symlink loop (more than {MAX_SYMLINK_HOPS} links)"
            ),
        }
    }
}

/// A compiled pattern with the "names a directory exactly" rule attached.
struct Matcher {
    pattern: Pattern,
    literal: Option<String>,
}

impl Matcher {
    fn new(pattern: Pattern) -> Matcher {
        let literal = pattern.literal_path().map(str::to_string);
        Matcher { pattern, literal }
    }

    /// Whether the file (or link) at `rel` is matched: by the glob, or by lying below the
    /// directory a literal pattern names.
    fn selects_file(&self, rel: &str) -> bool {
        self.pattern.matches(rel) || self.literal.as_deref().is_some_and(|l| is_below(l, rel))
    }

    /// Whether something below the directory `rel` could be matched.
    fn reaches_below(&self, rel: &str) -> bool {
        self.pattern.may_match_below(rel)
            || self
                .literal
                .as_deref()
                .is_some_and(|l| l == rel || is_below(l, rel))
    }

    /// Whether the whole directory `rel` is covered (only literal patterns cover directories).
    fn covers_dir(&self, rel: &str) -> bool {
        self.literal
            .as_deref()
            .is_some_and(|l| l == rel || is_below(l, rel))
    }
}

/// `rel` lies strictly below the directory `dir` (`""` is the root).
fn is_below(dir: &str, rel: &str) -> bool {
    (dir.is_empty() && !rel.is_empty())
        || rel.len() > dir.len() && rel.starts_with(dir) && rel.as_bytes()[dir.len()] == b'/'
}

/// A file or link chosen by the walk, before destination names are checked.
struct Candidate {
    /// Path from the tree root through any followed links, for messages.
    logical: String,
    source: String,
    symlink: Option<String>,
    size: u64,
    mode: u32,
    /// The path in the artifact (flattened when discard-paths is on).
    dest: String,
}

/// Skipped entries, deduplicated (a link can be met from several bases).
#[derive(Default)]
struct SkipLog {
    list: Vec<Skipped>,
    seen: HashSet<(String, String)>,
}

impl SkipLog {
    fn push(&mut self, path: String, reason: String) {
        if self.seen.insert((path.clone(), reason.clone())) {
            self.list.push(Skipped { path, reason });
        }
    }
}

struct Selector<'t> {
    tree: &'t Tree,
    enable_symlinks: bool,
    discard_paths: bool,
    patterns: Vec<Matcher>,
    excludes: Vec<Matcher>,
    skipped: SkipLog,
    linked_budget: usize,
}

impl Selector<'_> {
    fn selects_file(&self, rel: &str) -> bool {
        self.patterns.iter().any(|m| m.selects_file(rel))
    }

    fn reaches_below(&self, rel: &str) -> bool {
        self.patterns.iter().any(|m| m.reaches_below(rel))
    }

    fn excludes_file(&self, rel: &str) -> bool {
        self.excludes.iter().any(|m| m.selects_file(rel))
    }

    fn excludes_dir(&self, rel: &str) -> bool {
        self.excludes.iter().any(|m| m.covers_dir(rel))
    }

    fn dest_of(&self, rel: &str) -> String {
        if self.discard_paths {
            split_parent(rel).1.to_string()
        } else {
            rel.to_string()
        }
    }

    /// The base directories as (real path, logical path) pairs.
    fn bases(&mut self, base: Option<&Pattern>) -> Vec<(String, String)> {
        let Some(base) = base else {
            return vec![(String::new(), String::new())];
        };
        if base.escapes() {
            self.skipped.push(
                base.as_str().to_string(),
                "base-directory escapes the source directory (absolute or '..'); nothing is \
                 selected from it"
                    .to_string(),
            );
            return Vec::new();
        }
        if let Some(literal) = base.literal_path() {
            // A plain directory name is simply resolved (following links, as `cd` would).
            return match self.tree.resolve(literal) {
                Ok(Resolved::Dir(real)) => vec![(real, literal.to_string())],
                Ok(Resolved::File { .. }) | Err(LinkError::Dangling | LinkError::NotADirectory) => {
                    Vec::new()
                }
                Err(e) => {
                    let target = self.link_target_on(literal);
                    self.skipped.push(literal.to_string(), e.reason(&target));
                    Vec::new()
                }
            };
        }
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        self.collect_bases(base, "", "", &mut stack, &mut out);
        out
    }

    /// Finds the directories matching a base-directory glob, following in-tree links.
    fn collect_bases(
        &mut self,
        base: &Pattern,
        real_dir: &str,
        logical_dir: &str,
        stack: &mut Vec<String>,
        out: &mut Vec<(String, String)>,
    ) {
        if base.matches(logical_dir) {
            out.push((real_dir.to_string(), logical_dir.to_string()));
        }
        if !base.may_match_below(logical_dir) {
            return;
        }
        let tree = self.tree;
        for name in tree.children(real_dir) {
            let real = join(real_dir, name);
            let logical = join(logical_dir, name);
            let target_dir = match tree.kinds.get(&real) {
                Some(EntryKind::Dir) => real,
                Some(EntryKind::Symlink { target }) => {
                    if !base.matches(&logical) && !base.may_match_below(&logical) {
                        continue;
                    }
                    match tree.resolve(&real) {
                        Ok(Resolved::Dir(d)) => {
                            if stack.iter().any(|s| d == *s || is_below(&d, s)) {
                                self.skipped.push(logical, cycle_reason(target));
                                continue;
                            }
                            d
                        }
                        Ok(Resolved::File { .. }) => continue,
                        Err(e) => {
                            self.skipped.push(logical, e.reason(target));
                            continue;
                        }
                    }
                }
                _ => continue,
            };
            stack.push(target_dir.clone());
            self.collect_bases(base, &target_dir, &logical, stack, out);
            stack.pop();
        }
    }

    /// The target of the first symlink met on `path`, for messages about base directories.
    fn link_target_on(&self, path: &str) -> String {
        let mut cur = String::new();
        for comp in path_components(path) {
            cur = join(&cur, &comp);
            if let Some(EntryKind::Symlink { target }) = self.tree.kinds.get(&cur) {
                return target.clone();
            }
        }
        path.to_string()
    }

    /// Walks the real directory `real_dir`, which appears at `rel_dir` below the base (and at
    /// `logical_dir` below the root). `stack` holds the real directories being walked, from the
    /// base down, to stop directory-link cycles; `linked` tells whether a directory link was
    /// followed on the way here.
    fn walk(
        &mut self,
        real_dir: &str,
        rel_dir: &str,
        logical_dir: &str,
        stack: &mut Vec<String>,
        linked: bool,
        out: &mut Vec<Candidate>,
    ) {
        let tree = self.tree;
        for name in tree.children(real_dir) {
            // Entries seen through a followed directory link cost budget: the real tree is
            // finite, but links to sibling directories can multiply it exponentially.
            if linked {
                if self.linked_budget == 0 {
                    self.skipped.push(
                        logical_dir.to_string(),
                        "too many entries below symlinked directories; the rest of this \
                         directory is not selected"
                            .to_string(),
                    );
                    return;
                }
                self.linked_budget -= 1;
            }
            let real = join(real_dir, name);
            let rel = join(rel_dir, name);
            let logical = join(logical_dir, name);
            let Some(kind) = tree.kinds.get(&real) else {
                continue;
            };
            match kind {
                EntryKind::File { size, mode } => {
                    if self.selects_file(&rel) && !self.excludes_file(&rel) {
                        out.push(Candidate {
                            dest: self.dest_of(&rel),
                            logical,
                            source: real,
                            symlink: None,
                            size: *size,
                            mode: *mode,
                        });
                    }
                }
                EntryKind::Dir => {
                    if self.reaches_below(&rel) && !self.excludes_dir(&rel) {
                        stack.push(real.clone());
                        self.walk(&real, &rel, &logical, stack, linked, out);
                        stack.pop();
                    }
                }
                EntryKind::Symlink { target } => {
                    if self.excludes_file(&rel) || self.excludes_dir(&rel) {
                        continue;
                    }
                    if self.enable_symlinks {
                        self.keep_link(real, rel, logical, target, out);
                    } else {
                        self.follow_link(real, rel, logical, target, stack, out);
                    }
                }
            }
        }
    }

    /// `enable-symlinks: yes`: a matched link becomes a link in the artifact if it stays inside
    /// both the source tree and the artifact; it is a leaf (a link to a directory is not
    /// descended into, its target's files are not copied).
    fn keep_link(
        &mut self,
        real: String,
        rel: String,
        logical: String,
        target: &str,
        out: &mut Vec<Candidate>,
    ) {
        if !self.selects_file(&rel) {
            return;
        }
        if target.starts_with('/') {
            self.skipped
                .push(logical, LinkError::Absolute.reason(target));
            return;
        }
        let link_dir = split_parent(&real).0;
        // Lexically inside the tree, and not leaving it when resolved through other links.
        // A dangling or looping link that stays inside is kept: writing it reads nothing.
        let inside = normalize(&join(link_dir, target)).is_some()
            && !matches!(
                self.tree.resolve(&real),
                Err(LinkError::Outside | LinkError::Absolute)
            );
        if !inside {
            self.skipped
                .push(logical, LinkError::Outside.reason(target));
            return;
        }
        let dest = self.dest_of(&rel);
        if normalize(&join(split_parent(&dest).0, target)).is_none() {
            self.skipped.push(
                logical,
                format!(
                    "symlink to '{target}' would point above the artifact root from '{dest}'; not kept"
                ),
            );
            return;
        }
        out.push(Candidate {
            dest,
            logical,
            source: real,
            symlink: Some(target.to_string()),
            size: 0,
            mode: SYMLINK_MODE,
        });
    }

    /// `enable-symlinks: no`: a link is replaced by what it points to when that is inside the
    /// tree; anything else is reported (if a pattern wanted it) and never read.
    fn follow_link(
        &mut self,
        real: String,
        rel: String,
        logical: String,
        target: &str,
        stack: &mut Vec<String>,
        out: &mut Vec<Candidate>,
    ) {
        let wants_file = self.selects_file(&rel);
        let wants_below = self.reaches_below(&rel);
        if !wants_file && !wants_below {
            return;
        }
        match self.tree.resolve(&real) {
            Ok(Resolved::File { path, size, mode }) => {
                if wants_file {
                    out.push(Candidate {
                        dest: self.dest_of(&rel),
                        logical,
                        source: path,
                        symlink: None,
                        size,
                        mode,
                    });
                }
            }
            Ok(Resolved::Dir(dir)) => {
                if !wants_below {
                    return;
                }
                // Walking a directory that contains one on the current walk path would reach
                // this link again, forever.
                if stack.iter().any(|s| dir == *s || is_below(&dir, s)) {
                    self.skipped.push(logical, cycle_reason(target));
                    return;
                }
                stack.push(dir.clone());
                self.walk(&dir, &rel, &logical, stack, true, out);
                stack.pop();
            }
            Err(e) => self.skipped.push(logical, e.reason(target)),
        }
    }
}

fn cycle_reason(target: &str) -> String {
    format!(
        "symlink to directory '{target}' leads back to a directory containing it (a cycle); \
         not followed"
    )
}

/// Turns candidates into the sorted, unique file list, refusing ambiguous destinations.
fn assemble(candidates: Vec<Candidate>) -> Result<Vec<SelectedFile>, SelectError> {
    let mut by_dest: BTreeMap<String, Candidate> = BTreeMap::new();
    for c in candidates {
        match by_dest.get(&c.dest) {
            None => {
                by_dest.insert(c.dest.clone(), c);
            }
            // The same bytes (or the same link) reached twice: overlapping patterns or bases,
            // or a link flattened next to its target.
            Some(prev) if prev.source == c.source && prev.symlink == c.symlink => {}
            Some(prev) => {
                return Err(SelectError::NameCollision {
                    dest: c.dest.clone(),
                    first: prev.logical.clone(),
                    second: c.logical,
                })
            }
        }
    }
    // A destination that is a file cannot also be a directory of other destinations.
    for (dest, cand) in &by_dest {
        let mut cur = dest.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if let Some(prev) = by_dest.get(parent) {
                return Err(SelectError::NameCollision {
                    dest: parent.to_string(),
                    first: prev.logical.clone(),
                    second: cand.logical.clone(),
                });
            }
            cur = parent;
        }
    }
    Ok(by_dest
        .into_values()
        .map(|c| SelectedFile {
            source: c.source,
            dest: c.dest,
            symlink: c.symlink,
            size: c.size,
            mode: c.mode,
        })
        .collect())
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `("a/b", "c")` for `"a/b/c"`, `("", "c")` for `"c"`.
fn split_parent(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The non-empty, non-`.` components of a path.
fn path_components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                size: path.len() as u64,
                mode: 0o644,
            },
        }
    }

    fn d(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Dir,
        }
    }

    fn l(path: &str, target: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Symlink {
                target: target.to_string(),
            },
        }
    }

    fn spec(files: &[&str]) -> Artifacts {
        Artifacts {
            files: files.iter().map(|s| s.to_string()).collect(),
            ..Artifacts::default()
        }
    }

    fn ok(entries: &[Entry], spec: &Artifacts) -> Selection {
        match select(entries, spec) {
            Ok(s) => s,
            Err(e) => panic!("select failed: {e}"),
        }
    }

    fn dests(sel: &Selection) -> Vec<&str> {
        sel.files.iter().map(|f| f.dest.as_str()).collect()
    }

    fn file<'s>(sel: &'s Selection, dest: &str) -> &'s SelectedFile {
        match sel.files.iter().find(|f| f.dest == dest) {
            Some(f) => f,
            None => panic!("{dest} not selected: {:?}", dests(sel)),
        }
    }

    fn skipped_paths(sel: &Selection) -> Vec<&str> {
        sel.skipped.iter().map(|s| s.path.as_str()).collect()
    }

    /// A small project tree used by several tests.
    fn project() -> Vec<Entry> {
        vec![
            f("README.md"),
            f(".env"),
            d("src"),
            f("src/main.rs"),
            d("src/util"),
            f("src/util/mod.rs"),
            d("target"),
            d("target/release"),
            f("target/release/app"),
            f("target/release/.fingerprint"),
            d("target/release/deps"),
            f("target/release/deps/libx.rlib"),
            d("empty"),
            d("target/empty"),
        ]
    }

    // --- normalize ---

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize("a/b"), Some("a/b".into()));
        assert_eq!(normalize("./a//b/"), Some("a/b".into()));
        assert_eq!(normalize("a/./b/../c"), Some("a/c".into()));
        assert_eq!(normalize("a/.."), Some(String::new()));
        assert_eq!(normalize("."), Some(String::new()));
        assert_eq!(normalize(""), Some(String::new()));
        assert_eq!(normalize(".."), None);
        assert_eq!(normalize("a/../.."), None);
        assert_eq!(normalize("a/../../b"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("..a/b.."), Some("..a/b..".into()));
    }

    // --- pattern forms ---

    #[test]
    fn single_file() {
        let sel = ok(&project(), &spec(&["README.md"]));
        assert_eq!(dests(&sel), ["README.md"]);
        let readme = file(&sel, "README.md");
        assert_eq!(readme.source, "README.md");
        assert_eq!(readme.symlink, None);
        assert_eq!(readme.size, 9);
        assert_eq!(readme.mode, 0o644);
        assert!(sel.skipped.is_empty());
    }

    #[test]
    fn file_in_subdirectory_keeps_its_path() {
        let sel = ok(&project(), &spec(&["src/util/mod.rs"]));
        assert_eq!(dests(&sel), ["src/util/mod.rs"]);
    }

    #[test]
    fn dir_star_is_files_directly_in_dir() {
        let sel = ok(&project(), &spec(&["target/release/*"]));
        assert_eq!(
            dests(&sel),
            ["target/release/.fingerprint", "target/release/app"]
        );
    }

    #[test]
    fn globstar_is_every_file_recursively_including_dotfiles() {
        let sel = ok(&project(), &spec(&["**/*"]));
        assert_eq!(
            dests(&sel),
            [
                ".env",
                "README.md",
                "src/main.rs",
                "src/util/mod.rs",
                "target/release/.fingerprint",
                "target/release/app",
                "target/release/deps/libx.rlib"
            ]
        );
    }

    #[test]
    fn dir_globstar_is_every_file_under_dir() {
        let sel = ok(&project(), &spec(&["target/**/*"]));
        assert_eq!(
            dests(&sel),
            [
                "target/release/.fingerprint",
                "target/release/app",
                "target/release/deps/libx.rlib"
            ]
        );
    }

    #[test]
    fn pattern_naming_a_directory_includes_it_recursively() {
        for pattern in ["src", "src/", "./src"] {
            let sel = ok(&project(), &spec(&[pattern]));
            assert_eq!(dests(&sel), ["src/main.rs", "src/util/mod.rs"], "{pattern}");
        }
        let all = ok(&project(), &spec(&["."]));
        assert_eq!(all.files.len(), 7);
    }

    #[test]
    fn glob_matching_a_directory_does_not_recurse() {
        // `*` matches the directory `src`, but only a literal name pulls in a directory.
        let sel = ok(&project(), &spec(&["*"]));
        assert_eq!(dests(&sel), [".env", "README.md"]);
        assert!(matches!(
            select(&project(), &spec(&["s?c"])),
            Err(SelectError::NoMatch { .. })
        ));
    }

    #[test]
    fn brace_and_class_patterns() {
        let sel = ok(
            &project(),
            &spec(&["{README.md,src/*.rs}", "target/release/[a-z]*"]),
        );
        assert_eq!(
            dests(&sel),
            ["README.md", "src/main.rs", "target/release/app"]
        );
    }

    #[test]
    fn overlapping_patterns_give_each_file_once() {
        let sel = ok(
            &project(),
            &spec(&["src/**/*", "src", "**/*.rs", "src/main.rs"]),
        );
        assert_eq!(dests(&sel), ["src/main.rs", "src/util/mod.rs"]);
    }

    #[test]
    fn empty_directories_never_appear() {
        let sel = ok(&project(), &spec(&["**/*", "empty", "target/empty"]));
        assert!(!dests(&sel).iter().any(|d| d.contains("empty")));
        assert!(matches!(
            select(&project(), &spec(&["empty"])),
            Err(SelectError::NoMatch { .. })
        ));
        assert!(matches!(
            select(&project(), &spec(&["target/empty/**/*"])),
            Err(SelectError::NoMatch { .. })
        ));
    }

    // --- no match ---

    #[test]
    fn nothing_matching_is_no_match() {
        assert!(matches!(
            select(&project(), &spec(&["*.jar"])),
            Err(SelectError::NoMatch { .. })
        ));
        assert!(matches!(
            select(&project(), &spec(&[])),
            Err(SelectError::NoMatch { .. })
        ));
        assert!(matches!(
            select(&[], &spec(&["**/*"])),
            Err(SelectError::NoMatch { .. })
        ));
        assert_eq!(
            SelectError::NoMatch { skipped: vec![] }.to_string(),
            "no matching artifact paths found"
        );
    }

    #[test]
    fn everything_excluded_is_no_match() {
        let mut s = spec(&["src/*"]);
        s.exclude_paths = vec!["**/*.rs".into()];
        assert!(matches!(
            select(&project(), &s),
            Err(SelectError::NoMatch { .. })
        ));
    }

    #[test]
    fn only_skipped_entries_is_no_match() {
        let entries = vec![l("out.jar", "/tmp/out.jar")];
        assert!(matches!(
            select(&entries, &spec(&["out.jar"])),
            Err(SelectError::NoMatch { .. })
        ));
        assert!(matches!(
            select(&project(), &spec(&["../x"])),
            Err(SelectError::NoMatch { .. })
        ));
    }

    #[test]
    fn invalid_pattern_is_an_error() {
        assert!(matches!(
            select(&project(), &spec(&["src/[a"])),
            Err(SelectError::Pattern(GlobError::UnclosedClass { .. }))
        ));
        let mut s = spec(&["**/*"]);
        s.exclude_paths = vec!["{a".into()];
        assert!(matches!(
            select(&project(), &s),
            Err(SelectError::Pattern(GlobError::UnclosedBrace { .. }))
        ));
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("x\\".into());
        assert!(matches!(
            select(&project(), &s),
            Err(SelectError::Pattern(GlobError::TrailingEscape { .. }))
        ));
    }

    // --- escaping patterns ---

    #[test]
    fn parent_pattern_is_skipped_and_the_rest_continues() {
        let sel = ok(
            &project(),
            &spec(&["../secret", "README.md", "src/../.env"]),
        );
        assert_eq!(dests(&sel), ["README.md"]);
        assert_eq!(skipped_paths(&sel), ["../secret", "src/../.env"]);
        assert!(sel.skipped[0]
            .reason
            .contains("escapes the source directory"));
    }

    #[test]
    fn absolute_pattern_is_skipped() {
        let sel = ok(
            &project(),
            &spec(&["/etc/passwd", "/README.md", "README.md"]),
        );
        assert_eq!(dests(&sel), ["README.md"]);
        assert_eq!(skipped_paths(&sel), ["/etc/passwd", "/README.md"]);
        assert!(sel.skipped[1]
            .reason
            .contains("escapes the source directory"));
    }

    #[test]
    fn escaping_base_directory_is_skipped() {
        for base in ["..", "../other", "/codebuild/output", "a/../.."] {
            let mut s = spec(&["**/*"]);
            s.base_directory = Some(base.into());
            match select(&project(), &s) {
                Err(SelectError::NoMatch { skipped }) => {
                    assert_eq!(skipped.len(), 1, "{base}");
                    assert!(
                        skipped[0].reason.contains("escapes the source directory"),
                        "{base}: {}",
                        skipped[0].reason
                    );
                }
                other => panic!("{base}: {other:?}"),
            }
        }
    }

    #[test]
    fn escaping_exclude_is_skipped_and_ignored() {
        let mut s = spec(&["src/*"]);
        s.exclude_paths = vec!["../src/main.rs".into()];
        let sel = ok(&project(), &s);
        assert_eq!(dests(&sel), ["src/main.rs"]);
        assert_eq!(skipped_paths(&sel), ["../src/main.rs"]);
    }

    // --- base-directory ---

    fn builds() -> Vec<Entry> {
        vec![
            f("my-build-1/my-file-1.txt"),
            f("my-build-2/my-file-2.txt"),
            f("my-build-2/my-subdirectory/my-file-3.txt"),
            f("other/x.txt"),
        ]
    }

    #[test]
    fn base_directory_is_not_part_of_dest() {
        let mut s = spec(&["*/my-file-3.txt"]);
        s.base_directory = Some("my-build-2".into());
        let sel = ok(&builds(), &s);
        assert_eq!(dests(&sel), ["my-subdirectory/my-file-3.txt"]);
        assert_eq!(
            sel.files[0].source,
            "my-build-2/my-subdirectory/my-file-3.txt"
        );
    }

    #[test]
    fn base_directory_forms() {
        for base in ["my-build-2", "./my-build-2/", "my-build-2//"] {
            let mut s = spec(&["**/*"]);
            s.base_directory = Some(base.into());
            let sel = ok(&builds(), &s);
            assert_eq!(
                dests(&sel),
                ["my-file-2.txt", "my-subdirectory/my-file-3.txt"],
                "{base}"
            );
        }
        let mut s = spec(&["other/x.txt"]);
        s.base_directory = Some(".".into());
        assert_eq!(dests(&ok(&builds(), &s)), ["other/x.txt"]);
    }

    #[test]
    fn base_directory_glob_with_discard_paths() {
        // The worked example from the CodeBuild documentation.
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("my-build*".into());
        s.discard_paths = true;
        let sel = ok(&builds(), &s);
        assert_eq!(
            dests(&sel),
            ["my-file-1.txt", "my-file-2.txt", "my-file-3.txt"]
        );
        assert_eq!(
            file(&sel, "my-file-3.txt").source,
            "my-build-2/my-subdirectory/my-file-3.txt"
        );
    }

    #[test]
    fn base_directory_glob_merges_bases() {
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("my-build-[12]".into());
        let sel = ok(&builds(), &s);
        assert_eq!(
            dests(&sel),
            [
                "my-file-1.txt",
                "my-file-2.txt",
                "my-subdirectory/my-file-3.txt"
            ]
        );
    }

    #[test]
    fn base_directory_glob_can_match_nested_directories() {
        let entries = vec![f("a/out/1.txt"), f("b/out/2.txt"), f("b/in/3.txt")];
        let mut s = spec(&["*"]);
        s.base_directory = Some("*/out".into());
        assert_eq!(dests(&ok(&entries, &s)), ["1.txt", "2.txt"]);
    }

    #[test]
    fn base_directory_glob_matches_directories_only() {
        let entries = vec![f("build.txt"), f("build-dir/x")];
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("build*".into());
        assert_eq!(dests(&ok(&entries, &s)), ["x"]);
    }

    #[test]
    fn missing_or_file_base_directory_is_no_match() {
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("nope".into());
        assert!(matches!(
            select(&builds(), &s),
            Err(SelectError::NoMatch { .. })
        ));
        s.base_directory = Some("other/x.txt".into());
        assert!(matches!(
            select(&builds(), &s),
            Err(SelectError::NoMatch { .. })
        ));
        s.base_directory = Some("nope*".into());
        assert!(matches!(
            select(&builds(), &s),
            Err(SelectError::NoMatch { .. })
        ));
    }

    #[test]
    fn same_dest_from_two_bases_collides() {
        let entries = vec![f("b1/a.txt"), f("b2/a.txt")];
        let mut s = spec(&["*.txt"]);
        s.base_directory = Some("b*".into());
        assert_eq!(
            select(&entries, &s),
            Err(SelectError::NameCollision {
                dest: "a.txt".into(),
                first: "b1/a.txt".into(),
                second: "b2/a.txt".into()
            })
        );
    }

    #[test]
    fn file_and_directory_with_the_same_dest_collide() {
        let entries = vec![f("b1/x"), f("b2/x/y")];
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("b*".into());
        assert_eq!(
            select(&entries, &s),
            Err(SelectError::NameCollision {
                dest: "x".into(),
                first: "b1/x".into(),
                second: "b2/x/y".into()
            })
        );
    }

    // --- exclude-paths ---

    #[test]
    fn exclude_paths_remove_matches() {
        let mut s = spec(&["**/*"]);
        s.exclude_paths = vec!["**/.*".into(), "target/release/deps/**/*".into()];
        let sel = ok(&project(), &s);
        assert_eq!(
            dests(&sel),
            [
                "README.md",
                "src/main.rs",
                "src/util/mod.rs",
                "target/release/app"
            ]
        );
    }

    #[test]
    fn exclude_paths_are_relative_to_the_base_directory() {
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("target".into());
        s.exclude_paths = vec!["release/deps/*".into(), "target/release/app".into()];
        let sel = ok(&project(), &s);
        // `target/release/app` is not relative to the base, so it excludes nothing.
        assert_eq!(dests(&sel), ["release/.fingerprint", "release/app"]);
    }

    #[test]
    fn exclude_naming_a_directory_removes_all_of_it() {
        let mut s = spec(&["**/*"]);
        s.exclude_paths = vec!["target".into(), "src/util/".into()];
        let sel = ok(&project(), &s);
        assert_eq!(dests(&sel), [".env", "README.md", "src/main.rs"]);
    }

    #[test]
    fn exclude_glob_matching_a_directory_does_not_remove_its_files() {
        let mut s = spec(&["**/*"]);
        s.exclude_paths = vec!["*".into()];
        let sel = ok(&project(), &s);
        assert!(!dests(&sel).contains(&"README.md"));
        assert!(dests(&sel).contains(&"src/main.rs"));
    }

    #[test]
    fn dot_folders_excluded_like_the_docs_example() {
        let entries = vec![f("a.txt"), f(".git/config"), f("sub/.cache/x"), f("sub/y")];
        let mut s = spec(&["**/*"]);
        s.exclude_paths = vec!["**/.*/**/*".into()];
        assert_eq!(dests(&ok(&entries, &s)), ["a.txt", "sub/y"]);
    }

    // --- discard-paths ---

    #[test]
    fn discard_paths_flattens() {
        let mut s = spec(&["src/**/*", "target/release/app"]);
        s.discard_paths = true;
        let sel = ok(&project(), &s);
        assert_eq!(dests(&sel), ["app", "main.rs", "mod.rs"]);
        assert_eq!(file(&sel, "mod.rs").source, "src/util/mod.rs");
    }

    #[test]
    fn discard_paths_collision_is_an_error() {
        let entries = vec![f("a/x.txt"), f("b/x.txt"), f("c/y.txt")];
        let mut s = spec(&["**/*.txt"]);
        s.discard_paths = true;
        let err = select(&entries, &s);
        assert_eq!(
            err,
            Err(SelectError::NameCollision {
                dest: "x.txt".into(),
                first: "a/x.txt".into(),
                second: "b/x.txt".into()
            })
        );
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            msg,
            "artifact path 'x.txt' would come from both 'a/x.txt' and 'b/x.txt'"
        );
    }

    #[test]
    fn discard_paths_same_source_twice_is_not_a_collision() {
        // A link flattened next to its own target names the same bytes.
        let entries = vec![f("a/x.txt"), l("b/x.txt", "../a/x.txt")];
        let mut s = spec(&["**/*"]);
        s.discard_paths = true;
        let sel = ok(&entries, &s);
        assert_eq!(dests(&sel), ["x.txt"]);
        assert_eq!(sel.files[0].source, "a/x.txt");
    }

    // --- symlinks, followed (enable-symlinks: no) ---

    #[test]
    fn link_to_file_inside_is_followed() {
        let entries = vec![
            f("real/app.jar"),
            d("dist"),
            l("dist/app.jar", "../real/app.jar"),
        ];
        let sel = ok(&entries, &spec(&["dist/*"]));
        assert_eq!(dests(&sel), ["dist/app.jar"]);
        let app = &sel.files[0];
        assert_eq!(app.source, "real/app.jar");
        assert_eq!(app.symlink, None);
        assert_eq!(app.size, 12);
        assert_eq!(app.mode, 0o644);
    }

    #[test]
    fn link_chains_are_followed() {
        let entries = vec![f("z"), l("a", "b"), l("b", "./c"), l("c", "z")];
        let sel = ok(&entries, &spec(&["a"]));
        assert_eq!(sel.files[0].source, "z");
        assert_eq!(sel.files[0].dest, "a");
    }

    #[test]
    fn link_outside_the_tree_is_skipped() {
        let entries = vec![
            f("ok.txt"),
            l("up.txt", "../outside.txt"),
            l("sub/deep.txt", "../../../etc/passwd"),
            l("abs.txt", "/etc/passwd"),
        ];
        let sel = ok(&entries, &spec(&["**/*"]));
        assert_eq!(dests(&sel), ["ok.txt"]);
        assert_eq!(skipped_paths(&sel), ["abs.txt", "sub/deep.txt", "up.txt"]);
        for s in &sel.skipped {
            assert!(s.reason.contains("escapes the source directory"), "{s:?}");
        }
    }

    #[test]
    fn chain_through_an_absolute_link_is_skipped() {
        let entries = vec![f("ok"), l("a", "b"), l("b", "/etc/passwd")];
        let sel = ok(&entries, &spec(&["a", "ok"]));
        assert_eq!(dests(&sel), ["ok"]);
        assert_eq!(skipped_paths(&sel), ["a"]);
    }

    #[test]
    fn dangling_link_is_skipped() {
        let entries = vec![
            f("ok"),
            l("gone", "missing.txt"),
            f("file"),
            l("thru", "file/x"),
        ];
        let sel = ok(&entries, &spec(&["*"]));
        assert_eq!(dests(&sel), ["file", "ok"]);
        assert_eq!(skipped_paths(&sel), ["gone", "thru"]);
        assert!(sel.skipped[0].reason.contains("dangling"));
    }

    #[test]
    fn looping_links_are_skipped() {
        let entries = vec![f("ok"), l("a", "b"), l("b", "a"), l("self", "self")];
        let sel = ok(&entries, &spec(&["*"]));
        assert_eq!(dests(&sel), ["ok"]);
        assert_eq!(skipped_paths(&sel), ["a", "b", "self"]);
        assert!(sel.skipped.iter().all(|s| s.reason.contains("loop")));
    }

    #[test]
    fn link_to_directory_inside_shows_files_under_the_link() {
        let entries = vec![
            f("build/out/app"),
            f("build/out/lib/x.so"),
            l("dist", "build/out"),
        ];
        let sel = ok(&entries, &spec(&["dist/**/*"]));
        assert_eq!(dests(&sel), ["dist/app", "dist/lib/x.so"]);
        assert_eq!(file(&sel, "dist/lib/x.so").source, "build/out/lib/x.so");
        // Naming the link exactly includes its files too.
        let sel = ok(&entries, &spec(&["dist"]));
        assert_eq!(dests(&sel), ["dist/app", "dist/lib/x.so"]);
    }

    #[test]
    fn link_through_a_linked_directory_resolves_physically() {
        // `d/../x` after following `d` goes to the parent of d's target, as the kernel does.
        let entries = vec![
            f("deep/x"),
            f("x"),
            f("deep/inner/file"),
            l("d", "deep/inner"),
            l("via", "d/../x"),
            l("f2", "d/file"),
        ];
        let sel = ok(&entries, &spec(&["via", "f2"]));
        assert_eq!(file(&sel, "via").source, "deep/x");
        assert_eq!(file(&sel, "f2").source, "deep/inner/file");
    }

    #[test]
    fn directory_link_cycle_is_skipped() {
        let entries = vec![
            f("a/file"),
            l("a/up", ".."),
            l("a/me", "."),
            l("a/root", "../a"),
            l("loop", "loop2"),
            l("loop2", "loop"),
        ];
        let sel = ok(&entries, &spec(&["**/*"]));
        assert_eq!(dests(&sel), ["a/file"]);
        assert_eq!(
            skipped_paths(&sel),
            ["a/me", "a/root", "a/up", "loop", "loop2"]
        );
        assert!(sel.skipped[0].reason.contains("cycle"), "{:?}", sel.skipped);
    }

    #[test]
    fn link_into_the_base_parent_is_a_cycle() {
        let entries = vec![f("base/f"), l("base/all", "..")];
        let mut s = spec(&["**/*"]);
        s.base_directory = Some("base".into());
        let sel = ok(&entries, &s);
        assert_eq!(dests(&sel), ["f"]);
        assert_eq!(skipped_paths(&sel), ["base/all"]);
    }

    #[test]
    fn sibling_directory_link_is_not_a_cycle() {
        let entries = vec![f("a/b/x"), l("a/l", "b"), l("c", "a/b")];
        let sel = ok(&entries, &spec(&["**/*"]));
        assert_eq!(dests(&sel), ["a/b/x", "a/l/x", "c/x"]);
        assert!(sel.skipped.is_empty());
    }

    #[test]
    fn base_directory_through_a_link() {
        let entries = vec![f("build/out/app"), l("out", "build/out"), l("bad", "/tmp")];
        let mut s = spec(&["*"]);
        s.base_directory = Some("out".into());
        let sel = ok(&entries, &s);
        assert_eq!(dests(&sel), ["app"]);
        assert_eq!(sel.files[0].source, "build/out/app");

        s.base_directory = Some("o*".into());
        assert_eq!(dests(&ok(&entries, &s)), ["app"]);

        s.base_directory = Some("bad".into());
        match select(&entries, &s) {
            Err(SelectError::NoMatch { skipped }) => {
                assert_eq!(skipped[0].path, "bad");
                assert!(skipped[0].reason.contains("'/tmp'"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unrelated_broken_links_are_not_reported() {
        let entries = vec![
            f("dist/app.jar"),
            l("node_modules/.bin/x", "/usr/lib/x"),
            l("dist/excluded", "/etc"),
        ];
        let sel = ok(&entries, &spec(&["dist/app.jar"]));
        assert!(sel.skipped.is_empty(), "{:?}", sel.skipped);
        let mut s = spec(&["dist/*"]);
        s.exclude_paths = vec!["excluded".into()];
        s.files = vec!["dist/*".into()];
        let sel = ok(&entries, &s);
        assert_eq!(
            skipped_paths(&sel),
            ["dist/excluded"],
            "exclusion is relative to base"
        );
        s.exclude_paths = vec!["dist/excluded".into()];
        let sel = ok(&entries, &s);
        assert!(sel.skipped.is_empty());
    }

    #[test]
    fn excluded_paths_apply_to_link_names() {
        let entries = vec![f("real/a"), f("real/b"), l("link", "real")];
        let mut s = spec(&["link/*"]);
        s.exclude_paths = vec!["link/b".into()];
        assert_eq!(dests(&ok(&entries, &s)), ["link/a"]);
    }

    #[test]
    fn exponential_link_farm_is_bounded() {
        // Each level links twice to the next: 2^20 logical paths from a tiny tree.
        let mut entries = vec![f("d20/leaf")];
        for i in 0..20 {
            entries.push(l(&format!("d{i}/x"), &format!("../d{}", i + 1)));
            entries.push(l(&format!("d{i}/y"), &format!("../d{}", i + 1)));
        }
        let s = spec(&["d0/**/*"]);
        let sel = match select_with_budget(&entries, &s, 1000) {
            Ok(sel) => sel,
            Err(e) => panic!("{e}"),
        };
        assert!(sel.files.len() < 1000);
        assert!(sel
            .skipped
            .iter()
            .any(|s| s.reason.contains("too many entries")));
    }

    // --- symlinks kept (enable-symlinks: yes) ---

    fn keep(files: &[&str]) -> Artifacts {
        Artifacts {
            enable_symlinks: true,
            ..spec(files)
        }
    }

    #[test]
    fn enable_symlinks_keeps_inside_links() {
        let entries = vec![
            f("lib/libx.so.1"),
            l("lib/libx.so", "libx.so.1"),
            l("lib/dangling", "gone"),
        ];
        let sel = ok(&entries, &keep(&["lib/*"]));
        assert_eq!(
            dests(&sel),
            ["lib/dangling", "lib/libx.so", "lib/libx.so.1"]
        );
        let link = file(&sel, "lib/libx.so");
        assert_eq!(link.symlink.as_deref(), Some("libx.so.1"));
        assert_eq!(link.source, "lib/libx.so");
        assert_eq!(link.size, 0);
        assert_eq!(link.mode, 0o777);
        assert_eq!(file(&sel, "lib/libx.so.1").symlink, None);
        assert!(sel.skipped.is_empty());
    }

    #[test]
    fn enable_symlinks_skips_links_leaving_the_tree() {
        let entries = vec![
            f("ok"),
            l("abs", "/etc/passwd"),
            l("up", "../x"),
            l("sub/up2", "../../x"),
            l("hop", "abs"),
        ];
        let sel = ok(&entries, &keep(&["**/*"]));
        assert_eq!(dests(&sel), ["ok"]);
        assert_eq!(skipped_paths(&sel), ["abs", "hop", "sub/up2", "up"]);
        assert!(sel
            .skipped
            .iter()
            .all(|s| s.reason.contains("escapes the source directory")));
    }

    #[test]
    fn enable_symlinks_keeps_directory_links_as_leaves() {
        let entries = vec![f("build/out/app"), l("dist", "build/out")];
        let sel = ok(&entries, &keep(&["dist", "dist/**/*"]));
        assert_eq!(dests(&sel), ["dist"]);
        assert_eq!(sel.files[0].symlink.as_deref(), Some("build/out"));
    }

    #[test]
    fn enable_symlinks_refuses_links_above_the_artifact_root() {
        let entries = vec![f("shared/x"), f("base/y"), l("base/l", "../shared/x")];
        let mut s = keep(&["*"]);
        s.base_directory = Some("base".into());
        let sel = ok(&entries, &s);
        assert_eq!(dests(&sel), ["y"]);
        assert_eq!(skipped_paths(&sel), ["base/l"]);
        assert!(sel.skipped[0].reason.contains("above the artifact root"));
    }

    #[test]
    fn enable_symlinks_no_follows_instead() {
        let entries = vec![f("lib/libx.so.1"), l("lib/libx.so", "libx.so.1")];
        let sel = ok(&entries, &spec(&["lib/*"]));
        let link = file(&sel, "lib/libx.so");
        assert_eq!(link.symlink, None);
        assert_eq!(link.source, "lib/libx.so.1");
    }

    // --- listing robustness and misc ---

    #[test]
    fn implicit_directories_and_odd_listing_paths() {
        let entries = vec![
            f("./a/b/c.txt"),
            f("/abs"),
            f("../up"),
            d("."),
            f("a/b/c.txt"), // duplicate of the first
        ];
        let sel = ok(&entries, &spec(&["a"]));
        assert_eq!(dests(&sel), ["a/b/c.txt"]);
        assert_eq!(skipped_paths(&sel), ["/abs", "../up"]);
    }

    #[test]
    fn secondary_artifacts_are_ignored() {
        let mut s = spec(&["README.md"]);
        s.secondary = vec![("other".into(), spec(&["src/**/*"]))];
        s.name = Some("name".into());
        assert_eq!(dests(&ok(&project(), &s)), ["README.md"]);
        let other = &s.secondary[0].1;
        assert_eq!(
            dests(&ok(&project(), other)),
            ["src/main.rs", "src/util/mod.rs"]
        );
    }

    #[test]
    fn output_is_sorted_by_dest() {
        let entries = vec![f("b"), f("a-1"), f("a/z"), f("A")];
        let sel = ok(&entries, &spec(&["**/*"]));
        assert_eq!(dests(&sel), ["A", "a-1", "a/z", "b"]);
    }

    #[test]
    fn is_below_handles_prefix_names() {
        assert!(is_below("a", "a/b"));
        assert!(!is_below("a", "ab"));
        assert!(!is_below("a", "a"));
        assert!(is_below("", "a"));
        assert!(!is_below("", ""));
    }
}
