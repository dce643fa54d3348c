//! Variable names: what a POSIX shell accepts, and which names Kiln or the shells reserve.

/// Names Kiln sets itself; a buildspec, project or client may not set them.
pub const RESERVED_PREFIX: &str = "CODEBUILD_";

/// Names of Kiln's own shell variables in the command wrapper; a build may not set them either.
pub const WRAPPER_PREFIX: &str = "__kiln";

/// The reserved prefix `name` starts with, if any.
pub fn reserved_prefix(name: &str) -> Option<&'static str> {
    [RESERVED_PREFIX, WRAPPER_PREFIX]
        .into_iter()
        .find(|prefix| name.starts_with(prefix))
}

/// Variables every shell keeps for itself, as `case` patterns: each new shell sets its own, so
/// they never carry from one command to the next.
pub const SHELL_MANAGED: &[&str] = &[
    "_",
    "PWD",
    "SHLVL",
    "OPTIND",
    "PPID",
    "LINENO",
    "POSIXLY_CORRECT",
];

/// Variables bash keeps for itself (several are read-only): they do not carry under bash, and the
/// build environment never sets them (an `initial` file assigning `UID` would stop bash).
pub const BASH_MANAGED: &[&str] = &[
    "BASH",
    "BASH_*",
    "BASHOPTS",
    "BASHPID",
    "SHELLOPTS",
    "EUID",
    "UID",
    "GROUPS",
    "FUNCNAME",
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "EPOCHREALTIME",
    "EPOCHSECONDS",
    "HISTCMD",
    "HISTFILE",
    "HISTFILESIZE",
    "HISTSIZE",
    "DIRSTACK",
    "PIPESTATUS",
    "COMP_WORDBREAKS",
    "OPTERR",
    "HOSTTYPE",
    "MACHTYPE",
    "OSTYPE",
    "COLUMNS",
    "LINES",
];

/// A name a POSIX shell can assign: letters, digits and `_`, not starting with a digit.
pub fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether a shell (any shell, or bash) manages `name` itself.
pub fn is_shell_managed(name: &str) -> bool {
    SHELL_MANAGED
        .iter()
        .chain(BASH_MANAGED)
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *pattern,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_names() {
        assert!(is_shell_name("A_1") && is_shell_name("_x"));
        assert!(!is_shell_name("") && !is_shell_name("1A") && !is_shell_name("a.b"));
        assert!(!is_shell_name("a-b"));
    }

    #[test]
    fn shell_managed_names() {
        assert!(is_shell_managed("UID") && is_shell_managed("BASH_VERSINFO"));
        assert!(is_shell_managed("PWD") && !is_shell_managed("OLDPWD") && !is_shell_managed("PS4"));
        assert_eq!(reserved_prefix("CODEBUILD_X"), Some("CODEBUILD_"));
        assert_eq!(reserved_prefix("__kiln_x"), Some("__kiln"));
        assert_eq!(reserved_prefix("KILN"), None);
        assert!(
            !is_shell_managed("PATH") && !is_shell_managed("HOME") && !is_shell_managed("BASHFUL")
        );
    }
}
