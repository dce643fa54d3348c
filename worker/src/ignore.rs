//! `.kilnignore`: what `kiln start` and `kiln run` leave out of the source they upload.
//!
//! One pattern per line at the checkout's root; blank lines and lines starting with `#` are
//! skipped. Patterns use the buildspec's glob syntax (`*`, `?`, `**`, `[a-z]`, `{a,b}`), as
//! `.gitignore` does:
//! - a pattern without a `/` (a trailing one aside) matches a name at any depth (`*.log`,
//!   `node_modules/`); one with a `/` is anchored at the root (`docs/private`, `/build`);
//! - a trailing `/` matches directories only; an excluded directory is left out whole;
//! - `!pattern` takes back an earlier exclusion (the last matching line wins), except inside a
//!   directory that is left out whole.

use std::path::Path;

use kiln_buildspec::glob::Pattern;

/// The file's name at the checkout's root.
pub const FILE: &str = ".kilnignore";

struct Rule {
    pattern: Pattern,
    negated: bool,
    dirs_only: bool,
}

/// The rules of one `.kilnignore` (none when the file is absent).
#[derive(Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    /// Reads `dir/.kilnignore`; an invalid pattern is an error naming its line.
    pub fn load(dir: &Path) -> std::io::Result<IgnoreRules> {
        match std::fs::read_to_string(dir.join(FILE)) {
            Ok(text) => IgnoreRules::parse(&text).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IgnoreRules::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Result<IgnoreRules, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, line) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let dirs_only = line.ends_with('/');
            let body = line.trim_end_matches('/');
            let anchored = body.contains('/');
            let body = body.trim_start_matches('/');
            let text = match anchored {
                true => body.to_string(),
                false => format!("**/{body}"),
            };
            let pattern =
                Pattern::new(&text).map_err(|e| format!("{FILE}:{}: {line:?}: {e}", n + 1))?;
            if pattern.escapes() || body.is_empty() {
                return Err(format!(
                    "{FILE}:{}: {line:?} is not a path inside the checkout",
                    n + 1
                ));
            }
            rules.push(Rule {
                pattern,
                negated,
                dirs_only,
            });
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether `path` (relative to the checkout, `/`-separated) is left out.
    pub fn excluded(&self, path: &str, is_dir: bool) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|r| (is_dir || !r.dirs_only) && r.pattern.matches(path))
            .is_some_and(|r| !r.negated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_anchors_directories_and_negation() {
        let rules = IgnoreRules::parse(
            "# build output\ntarget/\n*.log\n!keep.log\n/docs/private\nnode_modules\n\n",
        )
        .expect("valid");
        assert!(rules.excluded("target", true));
        assert!(rules.excluded("sub/target", true));
        assert!(
            !rules.excluded("target", false),
            "target/ is for directories"
        );
        assert!(rules.excluded("a.log", false) && rules.excluded("x/y/b.log", false));
        assert!(!rules.excluded("keep.log", false) && !rules.excluded("x/keep.log", false));
        assert!(rules.excluded("docs/private", true));
        assert!(
            !rules.excluded("other/docs/private", true),
            "anchored at the root"
        );
        assert!(rules.excluded("web/node_modules", true));
        assert!(!rules.excluded("src/main.rs", false));
        assert!(IgnoreRules::default().rules.is_empty());
    }

    #[test]
    fn bad_lines_are_named() {
        let e = IgnoreRules::parse("ok\n../outside\n")
            .err()
            .expect("refused");
        assert!(e.starts_with(".kilnignore:2:"), "{e}");
    }
}
