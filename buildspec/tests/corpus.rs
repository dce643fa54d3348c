//! Corpus test: every buildspec under `tests/fixtures/valid/` parses without error (and with
//! exactly the warnings in its optional `.warnings` sidecar), and every one under
//! `tests/fixtures/invalid/` fails with exactly the first diagnostic in its `.expected` sidecar
//! (`line:col: path: message`, without the file name).

use std::fs;
use std::path::{Path, PathBuf};

use kiln_buildspec::{parse_file, Diagnostic};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A diagnostic as written in sidecars: without the `file:` prefix.
fn short(path: &Path, d: &Diagnostic) -> String {
    let full = d.to_string();
    let prefix = format!("{}:", path.display());
    full.strip_prefix(&prefix).unwrap_or(&full).to_string()
}

fn sidecar(path: &Path, ext: &str) -> Option<Vec<String>> {
    let mut name = path.as_os_str().to_owned();
    name.push(ext);
    let text = fs::read_to_string(PathBuf::from(name)).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn valid_corpus_parses() {
    let files = fixtures("valid");
    assert!(files.len() >= 12, "only {} valid fixtures", files.len());
    let mut failures = Vec::new();
    for path in &files {
        match parse_file(path) {
            Ok(parsed) => {
                let got: Vec<String> = parsed.warnings.iter().map(|w| short(path, w)).collect();
                let want = sidecar(path, ".warnings").unwrap_or_default();
                if got != want {
                    failures.push(format!(
                        "{}: warnings {got:?}, expected {want:?}",
                        path.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected errors:\n{e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_corpus_reports_expected_first_error() {
    let files = fixtures("invalid");
    assert!(files.len() >= 8, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let want = sidecar(path, ".expected")
            .and_then(|lines| lines.into_iter().next())
            .unwrap_or_else(|| panic!("{} has no .expected sidecar", path.display()));
        match parse_file(path) {
            Ok(_) => failures.push(format!("{}: parsed, expected {want}", path.display())),
            Err(e) => {
                let got = e.0.first().map(|d| short(path, d)).unwrap_or_default();
                if got != want {
                    failures.push(format!(
                        "{}:\n  got      {got}\n  expected {want}",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
