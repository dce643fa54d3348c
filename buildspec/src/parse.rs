//! Buildspec parsing: YAML text to a validated [`Buildspec`], or every problem found, each with
//! its file, line, column and dotted path.
//!
//! Two stages: [`tree`] turns YAML into positioned nodes (anchors, aliases and merge keys
//! resolved, duplicate keys rejected); [`check`] validates them against the rules of
//! `buildspec-semantics.md` §1 and builds the model. Errors from both stages are reported
//! together, sorted by position.

mod check;
mod tree;

#[cfg(test)]
mod tests;

use std::path::Path;

use crate::diagnostic::{Diagnostic, Diagnostics, Severity};
use crate::model::{Buildspec, Span};

/// A valid buildspec and the warnings about parts CodeBuild ignores (unknown keys, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub buildspec: Buildspec,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates buildspec `text`; `file_name` is only used in diagnostics.
///
/// On failure every error found is returned (warnings are not), sorted by position. A YAML
/// syntax error stops parsing, so it is then the only error.
pub fn parse(file_name: &str, text: &str) -> Result<Parsed, Diagnostics> {
    let mut ck = check::Checker::new(file_name);
    // Editors on Windows like to prepend a byte order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let loaded = match tree::load(text) {
        Ok(loaded) => loaded,
        Err(e) => {
            ck.error(e.pos, &e.path, e.message);
            return Err(Diagnostics(ck.errors));
        }
    };
    for e in loaded.errors {
        ck.error(e.pos, &e.path, e.message);
    }
    let buildspec = match &loaded.root {
        Some(root) => ck.buildspec(root),
        None => {
            ck.error(
                Span { line: 1, col: 1 },
                "",
                "empty buildspec: expected a mapping with `version` and `phases`",
            );
            None
        }
    };
    let mut warnings = ck.warnings;
    sort(&mut warnings);
    match buildspec {
        Some(buildspec) if ck.errors.is_empty() => Ok(Parsed {
            buildspec,
            warnings,
        }),
        _ => {
            let mut errors = ck.errors;
            sort(&mut errors);
            Err(Diagnostics(errors))
        }
    }
}

/// Reads and parses a buildspec file. This is the crate's only I/O.
pub fn parse_file(path: &Path) -> Result<Parsed, Diagnostics> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&name, &text),
        Err(e) => Err(Diagnostics(vec![Diagnostic {
            file: name,
            line: 1,
            col: 1,
            path: String::new(),
            message: format!("cannot read buildspec: {e}"),
            severity: Severity::Error,
        }])),
    }
}

/// Orders by position (stable, so same-position messages keep discovery order) and drops
/// exact repeats.
fn sort(diags: &mut Vec<Diagnostic>) {
    diags.sort_by_key(|d| (d.line, d.col));
    diags.dedup();
}
