//! Diagnostics: what parsing and validation report about a buildspec, each pointing at a file,
//! a 1-based line and column, and the dotted path of the offending node.
//!
//! The `Display` form is the one users see on the CLI and in the `YAML_FILE_ERROR` phase context:
//! `buildspec.yml:12:7: phases.biuld: unknown phase, did you mean "build"?`.

use std::fmt;

use serde::Serialize;

/// Whether a diagnostic stops the build (`Error`) or is only reported (`Warning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a buildspec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Dotted path of the node, e.g. `phases.build.commands[2]`; empty for file-level problems.
    pub path: String,
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A non-empty list of diagnostics, sorted by position; the error type of parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The candidate closest to `word` (case-insensitively), if it is close enough to be a likely typo.
///
/// "Close enough" scales with the word length so that short keys do not suggest unrelated
/// ones (`key` is not a typo of `env`), while `biuld` -> `build` and `ABROT` -> `ABORT` are.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (osa_distance(&word, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 2 && d * 3 <= word.chars().count().max(c.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions, which are the
/// most common typing mistake (`biuld`).
fn osa_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    // Full matrix: keys are short, and the transposition rule needs two rows back.
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(severity: Severity, path: &str) -> Diagnostic {
        Diagnostic {
            file: "buildspec.yml".into(),
            line: 12,
            col: 7,
            path: path.into(),
            message: "unknown phase, did you mean \"build\"?".into(),
            severity,
        }
    }

    #[test]
    fn display_error_with_path() {
        assert_eq!(
            diag(Severity::Error, "phases.biuld").to_string(),
            "buildspec.yml:12:7: phases.biuld: unknown phase, did you mean \"build\"?"
        );
    }

    #[test]
    fn display_warning_and_empty_path() {
        assert_eq!(
            diag(Severity::Warning, "").to_string(),
            "buildspec.yml:12:7: warning: unknown phase, did you mean \"build\"?"
        );
        let all = Diagnostics(vec![
            diag(Severity::Error, "a"),
            diag(Severity::Warning, "b"),
        ]);
        assert_eq!(all.to_string().lines().count(), 2);
    }

    #[test]
    fn distance_and_suggestions() {
        assert_eq!(osa_distance("biuld", "build"), 1);
        assert_eq!(osa_distance("", "abc"), 3);
        assert_eq!(osa_distance("kitten", "sitting"), 3);
        assert_eq!(did_you_mean("biuld", &["install", "build"]), Some("build"));
        assert_eq!(did_you_mean("ABROT", &["ABORT", "CONTINUE"]), Some("ABORT"));
        assert_eq!(did_you_mean("Phases", &["phases"]), Some("phases"));
        assert_eq!(did_you_mean("key", &["env"]), None);
        assert_eq!(did_you_mean("zzzzzz", &["phases"]), None);
    }
}
