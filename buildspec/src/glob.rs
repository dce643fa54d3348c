//! Glob patterns for artifact `files`, `base-directory`, `exclude-paths`, report files and cache
//! `paths` (semantics §5).
//!
//! Syntax, over '/'-separated paths:
//! - `*` matches any run of characters within one path component (never '/'); `?` matches one
//!   character that is not '/';
//! - `[abc]`, `[a-z]`, `[!a]` (also `[^a]`) are character classes; a `]` right after the opening
//!   `[` (or `[!`) is a member; a class may not contain '/';
//! - `{a,b}` is alternation; it is expanded first, like bash brace expansion, so alternatives may
//!   contain '/' and nest (`{src,lib/{x,y}}/*.rs`); `{a}` is an alternation of one and an empty
//!   alternative is allowed (`file{,.bak}`); an unmatched `}` is an ordinary character;
//! - `**` as a whole component matches zero or more components (`a/**/b` matches `a/b`); inside
//!   a component (`a**b`) it is an ordinary `*`, as in bash;
//! - `\x` matches `x` literally.
//!
//! Dotfiles: `*`, `?` and `**` match names starting with `.` (bash `globstar` plus `dotglob`).
//! CodeBuild's own documentation excludes dot-folders with `exclude-paths: "**/.*/**/*"`, which
//! only makes sense if `**/*` would otherwise include them, so `**/*` really means every file.
//!
//! Normalization: empty components and `.` components are dropped, so a leading `./` (and a
//! trailing `/`) is ignored. `..` components are kept as literal names: they never match a
//! listing path, and [`Pattern::escapes`] lets callers refuse such patterns with a message. A
//! leading `/` makes the pattern absolute; an absolute pattern only matches absolute paths (cache
//! paths may be absolute) and a relative one only relative paths.
//!
//! Matching is component-wise: each component is matched with the classic one-star backtracking
//! wildcard matcher, and the component sequence is run as a small NFA over `**`, which keeps the
//! worst case polynomial where naive recursive backtracking is exponential (`**/**/**/x`).

use std::fmt;

/// Brace expansion is bounded so a hostile buildspec cannot make one pattern cost gigabytes.
const MAX_ALTERNATIVES: usize = 1024;
/// Brace nesting is bounded so parsing cannot exhaust the stack.
const MAX_BRACE_DEPTH: usize = 32;

/// Why a glob pattern does not compile. Offsets are 1-based character positions in the pattern.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GlobError {
    #[error("glob pattern is empty")]
    Empty,
    #[error("glob pattern '{pattern}': character class '[' at position {position} is not closed")]
    UnclosedClass { pattern: String, position: usize },
    #[error(
        "glob pattern '{pattern}': character class '[' at position {position} contains '/', \
         which path components never contain"
    )]
    SlashInClass { pattern: String, position: usize },
    #[error("glob pattern '{pattern}': character class range '{start}-{end}' is reversed")]
    InvalidRange {
        pattern: String,
        start: char,
        end: char,
    },
    #[error("glob pattern '{pattern}': '{{' at position {position} is not closed by '}}'")]
    UnclosedBrace { pattern: String, position: usize },
    #[error("glob pattern '{pattern}': braces nest deeper than {limit} levels")]
    NestingTooDeep { pattern: String, limit: usize },
    #[error("glob pattern '{pattern}': ends with a lone '\\' (escape of nothing)")]
    TrailingEscape { pattern: String },
    #[error("glob pattern '{pattern}': braces expand to more than {limit} alternatives")]
    TooManyAlternatives { pattern: String, limit: usize },
}

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    absolute: bool,
    /// One component list per brace alternative (deduplicated); matching any of them matches.
    alternatives: Vec<Vec<Component>>,
    /// The path the pattern names when it has no wildcard at all.
    literal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    /// `**`: zero or more whole components.
    GlobStar,
    /// A component without wildcards, compared as a string.
    Literal(String),
    /// A component with wildcards.
    Wild(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    Any,
    /// `*` (consecutive stars are merged).
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    /// Whether this single-character token accepts `c` (`Star` is handled by the matcher).
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::Any => true,
            Token::Star => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
        }
    }
}

impl Pattern {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Pattern, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut parser = Parser {
            pattern,
            chars: pattern.chars().collect(),
            pos: 0,
        };
        let ast = parser.parse_seq(0)?;
        let expanded = expand(&ast, pattern)?;

        let mut alternatives: Vec<Vec<Component>> = Vec::new();
        for flat in expanded {
            let comps = components(flat);
            if !alternatives.contains(&comps) {
                alternatives.push(comps);
            }
        }
        let absolute = pattern.starts_with('/');
        let literal = match alternatives.as_slice() {
            [only] => only
                .iter()
                .map(|c| match c {
                    Component::Literal(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Option<Vec<&str>>>()
                .map(|names| join_path(absolute, &names)),
            _ => None,
        };
        Ok(Pattern {
            text: pattern.to_string(),
            absolute,
            alternatives,
            literal,
        })
    }

    /// The pattern as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern starts with '/'.
    pub fn is_absolute(&self) -> bool {
        self.absolute
    }

    /// Whether the pattern could reach outside the directory it is resolved from: it is
    /// absolute, or one of its alternatives has a `..` component.
    pub fn escapes(&self) -> bool {
        self.absolute
            || self.alternatives.iter().any(|alt| {
                alt.iter()
                    .any(|c| matches!(c, Component::Literal(s) if s == ".."))
            })
    }

    /// The normalized path this pattern names when it contains no wildcard and no alternation
    /// (`"./dist/"` gives `"dist"`, `"."` gives `""`, the root); `None` otherwise. Escaped
    /// metacharacters count as literal (`a\*b` names `a*b`).
    pub fn literal_path(&self) -> Option<&str> {
        self.literal.as_deref()
    }

    /// For each alternative, the path made of its leading literal components: the directory
    /// (or file) a walker must start from to find every match (`/root/.m2/**/*` gives
    /// `/root/.m2`; `**/*.jar` gives `""`). Deduplicated, in alternative order.
    pub fn literal_prefixes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for alt in &self.alternatives {
            let names: Vec<&str> = alt
                .iter()
                .map_while(|c| match c {
                    Component::Literal(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            let prefix = join_path(self.absolute, &names);
            if !out.contains(&prefix) {
                out.push(prefix);
            }
        }
        out
    }

    /// Whether `path` matches. Empty and `.` components of `path` are ignored, so `./a/b/` is
    /// `a/b`; an absolute pattern only matches an absolute path and vice versa.
    pub fn matches(&self, path: &str) -> bool {
        let Some(names) = self.path_names(path) else {
            return false;
        };
        self.alternatives
            .iter()
            .any(|alt| run_nfa(alt, &names).is_some_and(|states| states[alt.len()]))
    }

    /// Whether some path strictly below the directory `dir` could match (`dir` itself matching
    /// is not enough). Used to prune directory walks; it may answer `true` for a directory under
    /// which no real name would match (`[!\x00-\u{10FFFF}]`), never `false` wrongly.
    pub fn may_match_below(&self, dir: &str) -> bool {
        let Some(names) = self.path_names(dir) else {
            return false;
        };
        self.alternatives.iter().any(|alt| {
            // Some state short of the end means at least one more component can be consumed.
            run_nfa(alt, &names).is_some_and(|states| states[..alt.len()].iter().any(|s| *s))
        })
    }

    fn path_names<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        if path.starts_with('/') != self.absolute {
            return None;
        }
        Some(
            path.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect(),
        )
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `pattern` compiles and names one path without any wildcard (see
/// [`Pattern::literal_path`]). Artifact selection uses this for the rule that a pattern naming a
/// directory exactly includes that directory's files recursively.
pub fn is_literal(pattern: &str) -> bool {
    Pattern::new(pattern).is_ok_and(|p| p.literal_path().is_some())
}

fn join_path(absolute: bool, names: &[&str]) -> String {
    let joined = names.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Runs the component NFA of one alternative over `names`. State `i` means "the first `i`
/// pattern components have been matched"; the result has `len + 1` states. `None` when no state
/// is alive any more.
fn run_nfa(comps: &[Component], names: &[&str]) -> Option<Vec<bool>> {
    let n = comps.len();
    let mut cur = vec![false; n + 1];
    cur[0] = true;
    globstar_closure(comps, &mut cur);
    for name in names {
        let mut next = vec![false; n + 1];
        for (i, comp) in comps.iter().enumerate() {
            if !cur[i] {
                continue;
            }
            match comp {
                // `**` swallows this component and stays ready for more.
                Component::GlobStar => next[i] = true,
                Component::Literal(s) => {
                    if s == name {
                        next[i + 1] = true;
                    }
                }
                Component::Wild(tokens) => {
                    if match_component(tokens, name) {
                        next[i + 1] = true;
                    }
                }
            }
        }
        globstar_closure(comps, &mut next);
        if !next.iter().any(|s| *s) {
            return None;
        }
        cur = next;
    }
    Some(cur)
}

/// `**` may also match zero components: a live state before it makes the state after it live.
fn globstar_closure(comps: &[Component], states: &mut [bool]) {
    for (i, comp) in comps.iter().enumerate() {
        if states[i] && *comp == Component::GlobStar {
            states[i + 1] = true;
        }
    }
}

/// Matches one component with single-character tokens and `*`: greedy, backtracking only to the
/// last star seen, which is complete for this token set and linear-ish in practice.
fn match_component(tokens: &[Token], name: &str) -> bool {
    let chars: Vec<char> = name.chars().collect();
    let (mut t, mut c) = (0usize, 0usize);
    // (token index of the last star, character index it is currently extended to)
    let mut star: Option<(usize, usize)> = None;
    while c < chars.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, c));
                t += 1;
                continue;
            }
            Some(tok) if tok.accepts(chars[c]) => {
                t += 1;
                c += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((st, sc)) => {
                t = st + 1;
                c = sc + 1;
                star = Some((st, sc + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

/// The parse tree before brace expansion.
enum Node {
    Tok(Token),
    Sep,
    Alt(Vec<Vec<Node>>),
}

/// After brace expansion: a flat sequence of tokens and separators.
#[derive(Clone)]
enum Flat {
    Tok(Token),
    Sep,
}

struct Parser<'a> {
    pattern: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Parses until the end, or (inside braces, `depth > 0`) until an unconsumed `,` or `}`.
    fn parse_seq(&mut self, depth: usize) -> Result<Vec<Node>, GlobError> {
        let mut seq = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                ',' | '}' if depth > 0 => break,
                '\\' => {
                    self.pos += 1;
                    let escaped = self.bump().ok_or_else(|| GlobError::TrailingEscape {
                        pattern: self.pattern.to_string(),
                    })?;
                    seq.push(Node::Tok(Token::Char(escaped)));
                }
                '[' => seq.push(Node::Tok(self.parse_class()?)),
                '{' => seq.push(self.parse_braces(depth)?),
                '*' => {
                    self.pos += 1;
                    seq.push(Node::Tok(Token::Star));
                }
                '?' => {
                    self.pos += 1;
                    seq.push(Node::Tok(Token::Any));
                }
                '/' => {
                    self.pos += 1;
                    seq.push(Node::Sep);
                }
                other => {
                    self.pos += 1;
                    seq.push(Node::Tok(Token::Char(other)));
                }
            }
        }
        Ok(seq)
    }

    fn parse_braces(&mut self, depth: usize) -> Result<Node, GlobError> {
        let open = self.pos;
        self.pos += 1;
        if depth + 1 > MAX_BRACE_DEPTH {
            return Err(GlobError::NestingTooDeep {
                pattern: self.pattern.to_string(),
                limit: MAX_BRACE_DEPTH,
            });
        }
        let mut alts = Vec::new();
        loop {
            alts.push(self.parse_seq(depth + 1)?);
            match self.bump() {
                Some(',') => continue,
                Some('}') => return Ok(Node::Alt(alts)),
                // parse_seq only stops at ',', '}' or the end.
                _ => {
                    return Err(GlobError::UnclosedBrace {
                        pattern: self.pattern.to_string(),
                        position: open + 1,
                    })
                }
            }
        }
    }

    fn parse_class(&mut self) -> Result<Token, GlobError> {
        let open = self.pos;
        self.pos += 1;
        let unclosed = || GlobError::UnclosedClass {
            pattern: self.pattern.to_string(),
            position: open + 1,
        };
        let slash = || GlobError::SlashInClass {
            pattern: self.pattern.to_string(),
            position: open + 1,
        };
        let negated = matches!(self.peek(), Some('!' | '^'));
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let mut lo = self.bump().ok_or_else(unclosed)?;
            if lo == ']' && !first {
                break;
            }
            first = false;
            if lo == '/' {
                return Err(slash());
            }
            if lo == '\\' {
                lo = self.bump().ok_or_else(unclosed)?;
            }
            // `a-z` is a range unless the '-' is the last member (`[a-]`).
            let is_range =
                self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|c| *c != ']');
            if !is_range {
                ranges.push((lo, lo));
                continue;
            }
            self.pos += 1;
            let mut hi = self.bump().ok_or_else(unclosed)?;
            if hi == '/' {
                return Err(slash());
            }
            if hi == '\\' {
                hi = self.bump().ok_or_else(unclosed)?;
            }
            if lo > hi {
                return Err(GlobError::InvalidRange {
                    pattern: self.pattern.to_string(),
                    start: lo,
                    end: hi,
                });
            }
            ranges.push((lo, hi));
        }
        Ok(Token::Class { negated, ranges })
    }
}

/// Brace expansion: the cartesian product of all alternatives, bounded by `MAX_ALTERNATIVES`.
fn expand(seq: &[Node], pattern: &str) -> Result<Vec<Vec<Flat>>, GlobError> {
    let too_many = || GlobError::TooManyAlternatives {
        pattern: pattern.to_string(),
        limit: MAX_ALTERNATIVES,
    };
    let mut results: Vec<Vec<Flat>> = vec![Vec::new()];
    for node in seq {
        match node {
            Node::Tok(tok) => results
                .iter_mut()
                .for_each(|r| r.push(Flat::Tok(tok.clone()))),
            Node::Sep => results.iter_mut().for_each(|r| r.push(Flat::Sep)),
            Node::Alt(alts) => {
                let mut suffixes = Vec::new();
                for alt in alts {
                    suffixes.extend(expand(alt, pattern)?);
                    if suffixes.len() > MAX_ALTERNATIVES {
                        return Err(too_many());
                    }
                }
                if results.len().saturating_mul(suffixes.len()) > MAX_ALTERNATIVES {
                    return Err(too_many());
                }
                let mut next = Vec::with_capacity(results.len() * suffixes.len());
                for prefix in &results {
                    for suffix in &suffixes {
                        let mut joined = prefix.clone();
                        joined.extend(suffix.iter().cloned());
                        next.push(joined);
                    }
                }
                results = next;
            }
        }
    }
    Ok(results)
}

/// Splits one expanded alternative into components, dropping empty and `.` components,
/// recognising `**` and merging runs of `*`.
fn components(flat: Vec<Flat>) -> Vec<Component> {
    let mut out: Vec<Component> = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let finish = |tokens: Vec<Token>, out: &mut Vec<Component>| {
        if tokens.is_empty() || tokens == [Token::Char('.')] {
            return;
        }
        if tokens == [Token::Star, Token::Star] {
            // `**/**` is the same as `**`; keeping one keeps the NFA small.
            if out.last() != Some(&Component::GlobStar) {
                out.push(Component::GlobStar);
            }
            return;
        }
        let mut merged: Vec<Token> = Vec::with_capacity(tokens.len());
        for tok in tokens {
            if tok == Token::Star && merged.last() == Some(&Token::Star) {
                continue;
            }
            merged.push(tok);
        }
        let literal: Option<String> = merged
            .iter()
            .map(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect();
        out.push(match literal {
            Some(s) => Component::Literal(s),
            None => Component::Wild(merged),
        });
    };
    for f in flat {
        match f {
            Flat::Tok(t) => current.push(t),
            Flat::Sep => finish(std::mem::take(&mut current), &mut out),
        }
    }
    finish(current, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn m(pattern: &str, path: &str) -> bool {
        p(pattern).matches(path)
    }

    #[test]
    fn literal_paths() {
        assert!(m("a.txt", "a.txt"));
        assert!(m("dir/a.txt", "dir/a.txt"));
        assert!(!m("dir/a.txt", "a.txt"));
        assert!(!m("a.txt", "dir/a.txt"));
        assert!(!m("a.txt", "a.txt2"));
        assert!(!m("A.txt", "a.txt"), "case-sensitive");
    }

    #[test]
    fn star_stays_within_one_component() {
        assert!(m("*", "a"));
        assert!(m("*", "a.txt"));
        assert!(!m("*", "dir/a"));
        assert!(m("*.jar", "app.jar"));
        assert!(!m("*.jar", "lib/app.jar"));
        assert!(m("dir/*", "dir/a"));
        assert!(!m("dir/*", "dir/sub/a"));
        assert!(!m("dir/*", "dir"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("*a*", "banana"));
        assert!(m("a*", "a"), "star matches the empty string");
    }

    #[test]
    fn star_backtracks() {
        assert!(m("*ab", "aab"));
        assert!(m("*aab", "aaab"));
        assert!(m("a*a*a", "aaaaa"));
        assert!(!m("a*a*a", "aa"));
        assert!(m("*.tar.gz", "x.tar.tar.gz"));
    }

    #[test]
    fn question_mark() {
        assert!(m("?", "a"));
        assert!(!m("?", ""));
        assert!(!m("?", "ab"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"), "? never matches '/'");
        assert!(m("??", "é!"), "one character, not one byte");
    }

    #[test]
    fn classes() {
        assert!(m("[abc].txt", "b.txt"));
        assert!(!m("[abc].txt", "d.txt"));
        assert!(m("[a-z]1", "q1"));
        assert!(!m("[a-z]1", "Q1"));
        assert!(m("[!a]", "b"));
        assert!(!m("[!a]", "a"));
        assert!(m("[^a]", "b"));
        assert!(m("[]]", "]"));
        assert!(m("[!]]", "a"));
        assert!(!m("[!]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[a-]", "a"));
        assert!(m("[\\]]", "]"));
        assert!(m("v[0-9][0-9]", "v42"));
        assert!(m("[*]", "*"));
        assert!(!m("[*]", "a"), "metacharacters are literal inside a class");
        assert!(m("[{,}]", ","), "braces are literal inside a class");
    }

    #[test]
    fn braces() {
        assert!(m("{a,b}.txt", "a.txt"));
        assert!(m("{a,b}.txt", "b.txt"));
        assert!(!m("{a,b}.txt", "c.txt"));
        assert!(m("{src,lib/x}/*.rs", "lib/x/m.rs"));
        assert!(m("{src,lib/{x,y}}/*.rs", "lib/y/m.rs"));
        assert!(!m("{src,lib/{x,y}}/*.rs", "lib/z/m.rs"));
        assert!(m("file{,.bak}", "file"));
        assert!(m("file{,.bak}", "file.bak"));
        assert!(m("{a}", "a"), "an alternation of one");
        assert!(m("a}b", "a}b"), "an unmatched '}}' is literal");
        assert!(m("a,b", "a,b"), "a ',' outside braces is literal");
        assert!(m("*.{jar,war}", "x.war"));
        assert!(
            m("{**,x}/*.jar", "a/b/c.jar"),
            "expansion happens before ** is recognised"
        );
    }

    #[test]
    fn escapes() {
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("\\{a,b\\}", "{a,b}"));
        assert!(m("\\[x]", "[x]"));
        assert_eq!(p("a\\*b").literal_path(), Some("a*b"));
    }

    #[test]
    fn globstar() {
        assert!(m("**/*", "a"));
        assert!(m("**/*", "a/b/c"));
        assert!(m("dir/**/*", "dir/a"));
        assert!(m("dir/**/*", "dir/x/y/z"));
        assert!(!m("dir/**/*", "dir"));
        assert!(!m("dir/**/*", "other/a"));
        assert!(m("a/**/b", "a/b"));
        assert!(m("a/**/b", "a/x/b"));
        assert!(m("a/**/b", "a/x/y/b"));
        assert!(!m("a/**/b", "a/x/y/c"));
        assert!(m("**/b", "b"));
        assert!(m("**/b", "x/y/b"));
        assert!(m("**", "a/b"));
        assert!(m("dir/**", "dir"), "** matches zero components");
        assert!(m("dir/**", "dir/x/y"));
        assert!(m("**/node_modules/**/*", "a/node_modules/x/y.js"));
        assert!(m("**/**/x", "x"));
        assert!(m("a/**/**/b", "a/b"));
    }

    #[test]
    fn double_star_inside_a_component_is_a_plain_star() {
        assert!(m("a**b", "axxb"));
        assert!(!m("a**b", "ax/xb"));
        assert!(m("x/**.jar", "x/a.jar"));
        assert!(!m("x/**.jar", "x/y/a.jar"));
    }

    #[test]
    fn dotfiles_are_matched() {
        assert!(m("*", ".env"));
        assert!(m("**/*", ".git/config"));
        assert!(m("**/*", "a/.hidden/b"));
        assert!(m("?env", ".env"));
        assert!(m("**/.*", "a/.x"));
        assert!(m("**/.*/**/*", "a/.cache/f"));
        assert!(!m("**/.*/**/*", "a/cache/f"));
    }

    #[test]
    fn leading_dot_slash_and_trailing_slash_are_ignored() {
        assert!(m("./a.txt", "a.txt"));
        assert!(m("././dir/*", "dir/x"));
        assert!(m("dir/", "dir"));
        assert!(m("a//b", "a/b"));
        assert!(m("a/./b", "a/b"));
        assert!(m("a.txt", "./a.txt"), "paths are normalized the same way");
        assert_eq!(p("./dist/").literal_path(), Some("dist"));
        assert_eq!(p(".").literal_path(), Some(""));
        assert_eq!(p("./").literal_path(), Some(""));
    }

    #[test]
    fn as_str_keeps_the_original_text() {
        assert_eq!(p("./x/**/*").as_str(), "./x/**/*");
        assert_eq!(p("{a,b}").to_string(), "{a,b}");
    }

    #[test]
    fn absolute_patterns() {
        let abs = p("/root/.m2/**/*");
        assert!(abs.is_absolute());
        assert!(abs.escapes());
        assert!(abs.matches("/root/.m2/repository/x.jar"));
        assert!(!abs.matches("root/.m2/repository/x.jar"));
        assert!(!p("root/*").matches("/root/x"));
        assert_eq!(abs.literal_prefixes(), vec!["/root/.m2".to_string()]);
        assert_eq!(p("/etc/passwd").literal_path(), Some("/etc/passwd"));
    }

    #[test]
    fn parent_components_escape_and_never_match() {
        assert!(p("../x").escapes());
        assert!(p("a/../../x").escapes());
        assert!(p("{a,..}/x").escapes());
        assert!(!p("a/..b").escapes());
        assert!(!p("**/*").escapes());
        assert!(!p("../x").matches("x"));
        assert!(
            !p("a/../b").matches("b"),
            "no lexical resolution of '..' in patterns"
        );
    }

    #[test]
    fn literal_detection() {
        assert!(is_literal("dist"));
        assert!(is_literal("dist/app"));
        assert!(is_literal("./dist/"));
        assert!(!is_literal("dist/*"));
        assert!(!is_literal("d?st"));
        assert!(!is_literal("[d]ist"));
        assert!(!is_literal("{dist,out}"));
        assert!(!is_literal("**"));
        assert!(!is_literal("[unclosed"));
        assert_eq!(p("{dist}").literal_path(), Some("dist"));
        assert_eq!(p("{a,a}").literal_path(), Some("a"), "duplicates collapse");
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(p("**/*.jar").literal_prefixes(), vec![String::new()]);
        assert_eq!(p("a/b/*.jar").literal_prefixes(), vec!["a/b".to_string()]);
        assert_eq!(
            p("{x,y/z}/**/*").literal_prefixes(),
            vec!["x".to_string(), "y/z".to_string()]
        );
    }

    #[test]
    fn may_match_below() {
        assert!(p("**/*").may_match_below(""));
        assert!(p("**/*").may_match_below("a/b"));
        assert!(p("dir/*").may_match_below("dir"));
        assert!(!p("dir/*").may_match_below("dir/sub"));
        assert!(!p("dir/*").may_match_below("other"));
        assert!(p("dir/*").may_match_below(""));
        assert!(p("a/b/c").may_match_below("a"));
        assert!(!p("a/b/c").may_match_below("a/b/c"));
        assert!(p("dir/**").may_match_below("dir"));
        assert!(p("*/x").may_match_below("anything"));
        assert!(!p("*/x").may_match_below("a/b"));
        assert!(p("{a,b/c}/x").may_match_below("b/c"));
        assert!(!p("/abs/*").may_match_below("abs"));
        assert!(p("/abs/*").may_match_below("/abs"));
    }

    #[test]
    fn errors_name_pattern_and_problem() {
        assert_eq!(Pattern::new(""), Err(GlobError::Empty));
        let e = Pattern::new("a[bc").err();
        assert_eq!(
            e,
            Some(GlobError::UnclosedClass {
                pattern: "a[bc".into(),
                position: 2
            })
        );
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("'a[bc'") && msg.contains("not closed"),
            "{msg}"
        );

        assert!(matches!(
            Pattern::new("[]"),
            Err(GlobError::UnclosedClass { .. })
        ));
        assert!(matches!(
            Pattern::new("[!]"),
            Err(GlobError::UnclosedClass { .. })
        ));
        assert_eq!(
            Pattern::new("[a/b]"),
            Err(GlobError::SlashInClass {
                pattern: "[a/b]".into(),
                position: 1
            })
        );
        assert_eq!(
            Pattern::new("[z-a]"),
            Err(GlobError::InvalidRange {
                pattern: "[z-a]".into(),
                start: 'z',
                end: 'a'
            })
        );
        assert_eq!(
            Pattern::new("x/{a,b"),
            Err(GlobError::UnclosedBrace {
                pattern: "x/{a,b".into(),
                position: 3
            })
        );
        assert_eq!(
            Pattern::new("ab\\"),
            Err(GlobError::TrailingEscape {
                pattern: "ab\\".into()
            })
        );
        let msg = Pattern::new("{a")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            msg,
            "glob pattern '{a': '{' at position 1 is not closed by '}'"
        );
    }

    #[test]
    fn expansion_is_bounded() {
        let bomb = "{a,b,c,d}".repeat(6); // 4^6 = 4096 alternatives
        assert!(matches!(
            Pattern::new(&bomb),
            Err(GlobError::TooManyAlternatives { limit: 1024, .. })
        ));
        let ok = "{a,b,c,d}".repeat(5); // 1024
        assert!(Pattern::new(&ok).is_ok());
        let deep = format!("{}x{}", "{".repeat(40), "}".repeat(40));
        assert!(matches!(
            Pattern::new(&deep),
            Err(GlobError::NestingTooDeep { limit: 32, .. })
        ));
    }

    #[test]
    fn pathological_globstars_stay_fast() {
        let pat = p(&format!("{}x", "**/".repeat(30)));
        let long = vec!["a"; 200].join("/");
        assert!(!pat.matches(&long));
        assert!(pat.matches(&format!("{long}/x")));
        let stars = p(&format!("{}b", "*a".repeat(30)));
        assert!(!stars.matches(&"a".repeat(100)));
        let deep = p("**/a/**/a/**/a/**/a/**/b");
        assert!(!deep.matches(&vec!["a"; 300].join("/")));
        assert!(deep.matches(&format!("{}/b", vec!["a"; 300].join("/"))));
    }
}
