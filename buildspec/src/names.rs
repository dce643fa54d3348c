//! Variable names: what a POSIX shell accepts, and which names Kiln or the shells reserve.

/// Names Kiln sets itself; a buildspec, project or client may not set them.
pub const RESERVED_PREFIX: &str = "CODEBUILD_";

/// Variables the shells (dash, bash) manage themselves, as `case` patterns: a build never sets
/// them (bash refuses to assign several of them) and they never carry from one command to the next.
pub const SHELL_MANAGED: &[&str] = &[
    "_",
    "IFS",
    "PS1",
    "PS2",
    "PS4",
    "PPID",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "OPTIND",
    "OPTARG",
    "OPTERR",
    "LINENO",
    "SHELLOPTS",
    "BASHOPTS",
    "BASH",
    "BASH_*",
    "BASHPID",
    "EUID",
    "UID",
    "GROUPS",
    "HOSTTYPE",
    "MACHTYPE",
    "OSTYPE",
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "EPOCHREALTIME",
    "EPOCHSECONDS",
    "COLUMNS",
    "LINES",
    "DIRSTACK",
    "PIPESTATUS",
    "FUNCNAME",
    "HISTCMD",
    "HISTFILE",
    "HISTFILESIZE",
    "HISTSIZE",
    "COMP_WORDBREAKS",
    "POSIXLY_CORRECT",
];

/// A name a POSIX shell can assign: letters, digits and `_`, not starting with a digit.
pub fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether the shell manages `name` itself (see [`SHELL_MANAGED`]).
pub fn is_shell_managed(name: &str) -> bool {
    SHELL_MANAGED
        .iter()
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
        assert!(
            !is_shell_managed("PATH") && !is_shell_managed("HOME") && !is_shell_managed("BASHFUL")
        );
    }
}
