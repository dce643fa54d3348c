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
/// The mode reported for a kept symlink (the permission bits of every Linux symlink).
const SYMLINK_MODE: u32 = 0o777;

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
    #[error("no matching artifact paths found")]
    NoMatch,
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
        return Err(SelectError::NoMatch);
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
