//! How one command item runs in the build container, and how its state is carried to the next.
//!
//! Each item is one `docker exec` of the configured shell running [`wrapper`]: the wrapper merges
//! stderr into stdout (so the log keeps the order the build wrote it in), `eval`s the item, and on
//! exit (also through `exit N` in the item) exports every shell variable and prints a block fenced by
//! a per-build random marker: the exit status, the working directory and the exported environment.
//! The runner keeps that state and hands it to the next item's exec as its environment and working
//! directory, which is CodeBuild 0.2's carry-over: working directory and every exportable variable,
//! but no arrays, functions, aliases, options, traps, umask or ulimits.

use std::collections::BTreeMap;

/// The shell state carried between items: working directory and environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShellState {
    pub cwd: String,
    pub env: BTreeMap<String, String>,
}

impl ShellState {
    /// The environment as `NAME=value` strings for the Docker exec API.
    pub fn env_list(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// The script that runs one item; the item text is passed as `$1` so it is never re-quoted.
pub fn wrapper(marker: &str) -> String {
    format!(
        r#"exec 2>&1
__kiln_done() {{
  __kiln_rc=$?
  trap - EXIT
  set +eu
  __kiln_vars=$(set)
  while IFS= read -r __kiln_l; do
    case $__kiln_l in
      [A-Za-z_]*=*)
        __kiln_n=${{__kiln_l%%=*}}
        case $__kiln_n in *[!A-Za-z0-9_]*) ;; *) export "$__kiln_n" 2>/dev/null ;; esac ;;
    esac
  done <<__KILN_EOF
$__kiln_vars
__KILN_EOF
  printf '\n%s\n%s\0%s\0' '{marker}' "$__kiln_rc" "$(pwd)"
  command -p cat /proc/self/environ
  printf '%s\n' '{marker}'
  exit "$__kiln_rc"
}}
trap __kiln_done EXIT
__kiln_cmd=$1
shift
eval "$__kiln_cmd"
"#
    )
}

/// Variables the shell manages itself, or that belong to the wrapper: never carried over.
fn is_shell_internal(name: &str) -> bool {
    const NAMES: &[&str] = &[
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
        "LINENO",
        "SHELLOPTS",
        "BASHOPTS",
        "EUID",
        "UID",
        "GROUPS",
        "HOSTTYPE",
        "MACHTYPE",
        "OSTYPE",
        "RANDOM",
        "SECONDS",
        "COLUMNS",
        "LINES",
        "DIRSTACK",
        "PIPESTATUS",
        "FUNCNAME",
        "HISTCMD",
        "HISTFILE",
        "HISTFILESIZE",
        "HISTSIZE",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "SRANDOM",
        "BASHPID",
        "BASH",
        "COMP_WORDBREAKS",
    ];
    NAMES.contains(&name) || name.starts_with("BASH_") || name.starts_with("__kiln")
}

/// What an item's output stream ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemEnd {
    pub exit_code: i64,
    pub state: ShellState,
}

/// Splits an item's output into the build's own output and the wrapper's closing state block.
///
/// Output is passed through as it arrives, except a short tail that could be the start of the
/// marker. Once the closing block is complete, [`ItemOutput::end`] returns it and the caller stops
/// reading (background processes may keep the stream open).
#[derive(Debug)]
pub struct ItemOutput {
    open: Vec<u8>,
    pending: Vec<u8>,
    block: Option<Vec<u8>>,
    close: Vec<u8>,
}

impl ItemOutput {
    pub fn new(marker: &str) -> ItemOutput {
        ItemOutput {
            open: format!("\n{marker}\n").into_bytes(),
            pending: Vec::new(),
            block: None,
            close: format!("{marker}\n").into_bytes(),
        }
    }

    /// Feeds a chunk; appends build output that is safe to show to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if let Some(block) = &mut self.block {
            block.extend_from_slice(chunk);
            return;
        }
        self.pending.extend_from_slice(chunk);
        if let Some(at) = find(&self.pending, &self.open) {
            out.extend_from_slice(&self.pending[..at]);
            self.block = Some(self.pending.split_off(at + self.open.len()));
            self.pending.clear();
            return;
        }
        let keep = self.open.len() - 1;
        let safe = self.pending.len().saturating_sub(keep);
        out.extend(self.pending.drain(..safe));
    }

    /// The closing state, once the whole block has arrived.
    pub fn end(&self) -> Option<ItemEnd> {
        let block = self.block.as_ref()?;
        if !block.ends_with(&self.close) {
            return None;
        }
        let body = &block[..block.len() - self.close.len()];
        let mut fields = body.split(|b| *b == 0);
        let exit_code = std::str::from_utf8(fields.next()?)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cwd = String::from_utf8_lossy(fields.next()?).into_owned();
        let env = fields
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (name, value) = entry.split_once('=')?;
                (!name.is_empty() && !is_shell_internal(name))
                    .then(|| (name.to_string(), value.to_string()))
            })
            .collect();
        Some(ItemEnd {
            exit_code,
            state: ShellState { cwd, env },
        })
    }

    /// Output held back when the stream ended without a closing block (the shell could not start).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.block.is_none() {
            out.append(&mut self.pending);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(marker: &str, rc: i64, cwd: &str, env: &[&str]) -> Vec<u8> {
        let mut b = format!("\n{marker}\n{rc}\0{cwd}\0").into_bytes();
        for e in env {
            b.extend_from_slice(e.as_bytes());
            b.push(0);
        }
        b.extend_from_slice(format!("{marker}\n").as_bytes());
        b
    }

    #[test]
    fn separates_output_from_state_at_any_split() {
        let marker = "KILN-abc";
        let mut stream = b"hello\nworld".to_vec();
        stream.extend(block(
            marker,
            3,
            "/src",
            &["A=1", "PWD=/src", "__kiln_rc=3", "B=x=y"],
        ));
        for split in 0..stream.len() {
            let mut p = ItemOutput::new(marker);
            let mut out = Vec::new();
            p.push(&stream[..split], &mut out);
            p.push(&stream[split..], &mut out);
            assert_eq!(out, b"hello\nworld", "split {split}");
            let end = p.end().expect("end");
            assert_eq!(end.exit_code, 3);
            assert_eq!(end.state.cwd, "/src");
            let env: Vec<_> = end.state.env_list();
            assert_eq!(env, vec!["A=1", "B=x=y"]);
        }
    }

    #[test]
    fn no_end_until_the_block_is_complete() {
        let marker = "KILN-x";
        let full = block(marker, 0, "/", &["A=1"]);
        let mut p = ItemOutput::new(marker);
        let mut out = Vec::new();
        p.push(&full[..full.len() - 2], &mut out);
        assert!(p.end().is_none());
        p.push(&full[full.len() - 2..], &mut out);
        assert!(p.end().is_some());
    }

    #[test]
    fn stream_without_block_returns_all_output() {
        let mut p = ItemOutput::new("KILN-x");
        let mut out = Vec::new();
        p.push(b"exec failed: no such file", &mut out);
        p.finish(&mut out);
        assert_eq!(out, b"exec failed: no such file");
        assert!(p.end().is_none());
    }

    #[test]
    fn filters_shell_internals() {
        assert!(is_shell_internal("BASH_VERSINFO"));
        assert!(is_shell_internal("SHLVL"));
        assert!(is_shell_internal("__kiln_n"));
        assert!(!is_shell_internal("PATH"));
        assert!(!is_shell_internal("HOME"));
    }
}
