//! YAML text to a small tree of positioned nodes, built from `yaml-rust2`'s marked events.
//!
//! We build our own tree instead of using `yaml_rust2::Yaml` because validation needs the
//! position of every node and key, the source text of plain scalars (`0.20` must not become
//! `0.2`), and duplicate-key detection, none of which the stock loader keeps. Anchors, aliases
//! and merge keys (`<<: *a`) are resolved here, so the checker only ever sees plain data.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::model::Span;

/// Alias expansion copies nodes; this caps the total so a "billion laughs" file fails fast
/// instead of eating the worker's memory. Real buildspecs have a few hundred nodes.
const MAX_NODES: usize = 100_000;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Span,
    pub kind: Kind,
    /// Number of nodes in this subtree, for the alias-expansion budget.
    weight: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `plain` is false for quoted and block scalars, which are never null.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in source order, merge keys already expanded, keys unique.
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Span,
    pub value: Node,
}

impl Node {
    fn new(pos: Span, kind: Kind) -> Node {
        let weight = 1 + match &kind {
            Kind::Scalar { .. } => 0,
            Kind::Seq(items) => items.iter().map(|n| n.weight).sum(),
            Kind::Map(entries) => entries.iter().map(|e| e.value.weight + 1).sum(),
        };
        Node { pos, kind, weight }
    }

    /// YAML 1.1/1.2 core-schema null: an empty plain scalar, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The text of a non-null scalar.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// How the node reads in a "found ..." message.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "nothing (null)",
            Kind::Scalar { .. } => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A problem found while building the tree (duplicate key, bad merge, ...).
#[derive(Debug, Clone)]
pub(crate) struct TreeError {
    pub pos: Span,
    pub path: String,
    pub message: String,
}

/// The result of loading: the one non-empty document (if any) and the non-fatal errors.
pub(crate) struct Loaded {
    pub root: Option<Node>,
    pub errors: Vec<TreeError>,
}

/// Parses `text`. `Err` is a fatal error (YAML syntax, recursive alias, size limit) that leaves
/// no usable tree.
pub(crate) fn load(text: &str) -> Result<Loaded, TreeError> {
    let events = collect_events(text)?;
    let mut b = Builder::default();
    for (event, mark) in events {
        b.event(event, span(mark))?;
    }
    Ok(Loaded {
        root: b.root,
        errors: b.errors,
    })
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn span(mark: Marker) -> Span {
    // yaml-rust2 lines are 1-based but columns are 0-based.
    Span {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

fn fatal(pos: Span, message: String) -> TreeError {
    TreeError {
        pos,
        path: String::new(),
        message,
    }
}

/// Runs the event parser to the end. The parser is driven inside `catch_unwind` because it has
/// internal `unwrap`s/asserts, and a hostile buildspec must never take a worker down.
fn collect_events(text: &str) -> Result<Vec<(Event, Marker)>, TreeError> {
    let run = || {
        let mut parser = Parser::new_from_str(text);
        let mut events = Vec::new();
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => return Ok(events),
                Ok(ev) => events.push(ev),
                Err(e) => return Err(e),
            }
        }
    };
    match std::panic::catch_unwind(run) {
        Ok(Ok(events)) => Ok(events),
        Ok(Err(e)) => {
            // The classic buildspec mistake: an unquoted command such as `awk -F: '...'`.
            let hint = if e.info().starts_with("mapping values are not allowed") {
                " (quote strings and commands that contain \": \")"
            } else {
                ""
            };
            Err(fatal(
                span(*e.marker()),
                format!("invalid YAML: {}{hint}", e.info()),
            ))
        }
        Err(_) => Err(fatal(
            Span { line: 1, col: 1 },
            "invalid YAML: the YAML parser could not read this file".to_string(),
        )),
    }
}

enum Frame {
    Seq {
        pos: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Span,
        anchor: usize,
        /// Raw pairs: keys may still be non-scalars or `<<`, checked at `MappingEnd`.
        pairs: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    /// Position of the current document's start, for the "second document" error.
    doc_start: Span,
    root: Option<Node>,
    errors: Vec<TreeError>,
}

impl Builder {
    fn event(&mut self, event: Event, pos: Span) -> Result<(), TreeError> {
        // Every node costs one; an alias costs its whole copied subtree.
        let cost = match &event {
            Event::Scalar(..) | Event::SequenceEnd | Event::MappingEnd => 1,
            Event::Alias(id) => self.anchors.get(id).map_or(0, |n| n.weight),
            _ => 0,
        };
        self.nodes += cost;
        if self.nodes > MAX_NODES {
            return Err(fatal(
                pos,
                format!(
                    "buildspec too large: more than {MAX_NODES} YAML nodes after expanding aliases"
                ),
            ));
        }
        match event {
            Event::DocumentStart => {
                self.doc_start = pos;
                self.anchors.clear();
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                self.complete(Node::new(pos, Kind::Scalar { text, plain }), anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                pos,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                pos,
                anchor,
                pairs: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() {
                    self.complete(Node::new(pos, Kind::Seq(items)), anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos, anchor, pairs, ..
                }) = self.stack.pop()
                {
                    let node = self.finish_map(pos, pairs);
                    self.complete(node, anchor);
                }
            }
            Event::Alias(id) => {
                // Anchors are registered when their node completes, so an alias to a node that
                // is still open (`a: &x [*x]`) is missing here.
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(fatal(pos, "invalid YAML: recursive alias".to_string()));
                };
                self.complete(node, 0);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Dotted path of the node currently being built, from the open frames.
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Frame::Map { key: Some(k), .. } => {
                    if let Some(text) = k.scalar() {
                        path = join(&path, text);
                    }
                }
                Frame::Map { key: None, .. } => {}
            }
        }
        path
    }

    /// Attaches a finished node to its parent (or makes it the document root).
    fn complete(&mut self, mut node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { pairs, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    // An omitted value (`key:`) is reported by the parser at the *next* token,
                    // which may be lines away; the key is where the user looks.
                    if matches!(&node.kind, Kind::Scalar { text, plain: true } if text.is_empty()) {
                        node.pos = k.pos;
                    }
                    pairs.push((k, node));
                }
            },
            None => self.document_root(node),
        }
    }

    fn document_root(&mut self, node: Node) {
        // An empty document (`---` at the end, or a comment-only file) is a null scalar.
        if node.is_null() {
            return;
        }
        if self.root.is_some() {
            self.errors.push(TreeError {
                pos: self.doc_start,
                path: String::new(),
                message: "a buildspec is a single YAML document; found a second non-empty one"
                    .to_string(),
            });
        } else {
            self.root = Some(node);
        }
    }

    /// Turns raw pairs into unique entries: rejects non-scalar and duplicate keys and expands
    /// merge keys, where explicit keys win over merged ones and earlier merge sources over later
    /// ones (YAML merge-key semantics).
    fn finish_map(&mut self, start: Span, pairs: Vec<(Node, Node)>) -> Node {
        let path = self.path();
        // Block mappings report their start after the first key; the first key is clearer.
        let pos = match pairs.first() {
            Some((k, _)) if (k.pos.line, k.pos.col) < (start.line, start.col) => k.pos,
            _ => start,
        };
        let explicit: HashSet<String> = pairs
            .iter()
            .filter(|(k, _)| !is_merge_key(k))
            .filter_map(|(k, _)| k.scalar().map(str::to_string))
            .collect();
        let mut seen: HashMap<String, Span> = HashMap::new();
        let mut entries = Vec::new();
        for (k, value) in pairs {
            if is_merge_key(&k) {
                for source in self.merge_sources(&path, value) {
                    for e in source {
                        if !explicit.contains(&e.key) && !seen.contains_key(&e.key) {
                            seen.insert(e.key.clone(), e.key_pos);
                            entries.push(e);
                        }
                    }
                }
                continue;
            }
            let key = match &k.kind {
                Kind::Scalar { text, .. } => text.clone(),
                _ => {
                    self.errors.push(TreeError {
                        pos: k.pos,
                        path: path.clone(),
                        message: format!("mapping keys must be strings, found {}", k.describe()),
                    });
                    continue;
                }
            };
            if let Some(first) = seen.get(&key) {
                self.errors.push(TreeError {
                    pos: k.pos,
                    path: join(&path, &key),
                    message: format!(
                        "duplicate key (first defined at {}:{})",
                        first.line, first.col
                    ),
                });
                continue;
            }
            seen.insert(key.clone(), k.pos);
            entries.push(Entry {
                key,
                key_pos: k.pos,
                value,
            });
        }
        Node::new(pos, Kind::Map(entries))
    }

    /// The mappings a `<<` value stands for: one mapping or a list of mappings.
    fn merge_sources(&mut self, path: &str, value: Node) -> Vec<Vec<Entry>> {
        let pos = value.pos;
        let sources = match value.kind {
            Kind::Map(entries) => return vec![entries],
            Kind::Seq(items) => items
                .into_iter()
                .map(|n| match n.kind {
                    Kind::Map(entries) => Some(entries),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>(),
            Kind::Scalar { .. } => None,
        };
        sources.unwrap_or_else(|| {
            self.errors.push(TreeError {
                pos,
                path: join(path, "<<"),
                message:
                    "merge key `<<` needs an alias to a mapping (`<<: *name`) or a list of them"
                        .to_string(),
            });
            Vec::new()
        })
    }
}

fn is_merge_key(k: &Node) -> bool {
    matches!(&k.kind, Kind::Scalar { text, plain: true } if text == "<<")
}
