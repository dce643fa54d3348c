//! How one command item runs in the build container, and how its state carries to the next.
//!
//! Like CodeBuild (which keeps the state in `/codebuild/output/tmp/env.sh`), the state lives in the
//! container, in [`STATE_DIR`]: `initial` holds the build's starting variables (written by Kiln in
//! DOWNLOAD_SOURCE), `env` the variables and working directory after the last item. Each item is
//! one `docker exec` of the configured shell running [`wrapper`], which:
//!
//! 1. keeps the exec's stderr as fd 8, Kiln's private channel, and sends the item's stderr to
//!    stdout (so the log keeps the order the build wrote it in);
//! 2. on a RETRY, snapshots or restores the state file;
//! 3. loads the state: the first item (and every 0.1 item) sources `initial` on top of the image's
//!    environment; later items unset every variable, then source `env`, so unsets carry over too;
//! 4. `eval`s the item with no positional parameters;
//! 5. afterwards (or on `exit` in the item) writes every shell variable, exported or not (and
//!    which were exported), and the working directory to `env`, then prints `<marker> <exit
//!    status>` on fd 8. Before it does, it switches bash to POSIX mode and drops functions named
//!    like the builtins it uses, so an item's own `printf()` or `read()` cannot corrupt the state.
//!
//! The item's stdout and stderr redirections, `set -x` and background jobs do not reach the state,
//! and values of any size carry over (they never pass through an exec's environment). The runner
//! also watches the exec itself, so an item that never lets the wrapper finish (it replaces the
//! EXIT trap and exits, or `exec`s another program) still ends when its process does, with Docker's
//! exit status; its variables are then not saved. Arrays, functions, aliases, `set` options,
//! traps, umask and ulimits do not carry over, as in CodeBuild.

use std::sync::LazyLock;

use kiln_buildspec::names::{is_shell_managed, is_shell_name, BASH_MANAGED, SHELL_MANAGED};

/// Where the carried state lives in the container (world-writable, so `run-as` users can save it).
pub const STATE_DIR: &str = "/codebuild/output/tmp/kiln";

/// `$0` of every item, as in CodeBuild's logs.
pub const SCRIPT_NAME: &str = "/codebuild/output/tmp/script.sh";

/// The script run for every item. Positional parameters, in order: the item, the value of
/// `CODEBUILD_BUILD_SUCCEEDING`, what to load (`initial` or `state`), whether to save (`save` or
/// `nosave`), the state operation (`none`, `snapshot`, `restore`), the run-as user (empty for root),
/// the end marker and the state directory.
pub fn wrapper() -> &'static str {
    &WRAPPER
}

static WRAPPER: LazyLock<String> = LazyLock::new(|| {
    WRAPPER_TEMPLATE
        .replace("@SHELL_MANAGED@", &SHELL_MANAGED.join("|"))
        .replace("@BASH_MANAGED@", &BASH_MANAGED.join("|"))
});

const WRAPPER_TEMPLATE: &str = r#"__kiln_item=$1 __kiln_succeeding=$2 __kiln_load=$3 __kiln_save=$4 __kiln_op=$5 __kiln_user=$6 __kiln_mark=$7 __kiln_dir=$8
shift 8
exec 8>&2 2>&1
__kiln_skip() {
  case $1 in
    *[!A-Za-z0-9_]*|__kiln_*|@SHELL_MANAGED@) return 0 ;;
  esac
  case ${BASH_VERSION-} in
    ?*) case $1 in @BASH_MANAGED@) return 0 ;; esac ;;
  esac
  return 1
}
__kiln_quote() {
  case $1 in
    *\'*) ;;
    *) printf "'%s'" "$1"; return ;;
  esac
  # One pass over the value: split at each ' and join the pieces with '\''. Field splitting
  # drops a final empty piece, so a trailing ' is added back at the end.
  IFS=\'
  set -f
  __kiln_first=1
  printf "'"
  for __kiln_p in $1; do
    if [ -n "$__kiln_first" ]; then __kiln_first=; else printf '%s' "'\\''"; fi
    printf '%s' "$__kiln_p"
  done
  case $1 in *\') printf '%s' "'\\''" ;; esac
  printf "'"
}
# State files are world-writable: items of different run-as users replace each other's.
umask 000
case $__kiln_op in
  snapshot)
    if [ -f "$__kiln_dir/env" ]; then command -p cp "$__kiln_dir/env" "$__kiln_dir/env.snapshot"
    else command -p rm -f "$__kiln_dir/env.snapshot"; fi ;;
  restore)
    if [ -f "$__kiln_dir/env.snapshot" ]; then command -p cp "$__kiln_dir/env.snapshot" "$__kiln_dir/env"
    else command -p rm -f "$__kiln_dir/env"; fi ;;
esac
if [ "$__kiln_load" = state ] && [ -f "$__kiln_dir/env" ]; then
  __kiln_vars=$(set)
  while IFS= read -r __kiln_l; do
    case $__kiln_l in [A-Za-z_]*=*) ;; *) continue ;; esac
    __kiln_skip "${__kiln_l%%=*}" || unset "${__kiln_l%%=*}" 2>/dev/null
  done <<__KILN_EOF
$__kiln_vars
__KILN_EOF
  . "$__kiln_dir/env"
else
  . "$__kiln_dir/initial"
fi
umask 022
CODEBUILD_BUILD_SUCCEEDING=$__kiln_succeeding
export CODEBUILD_BUILD_SUCCEEDING
__kiln_root_home= __kiln_user_home=
if [ -n "$__kiln_user" ] && [ "$HOME" = /root ]; then
  __kiln_root_home=$HOME
  eval "HOME=~$__kiln_user"
  case $HOME in "~"*) HOME=$__kiln_root_home ;; esac
  __kiln_user_home=$HOME
fi
# Entering the carried directory must not change the carried OLDPWD.
__kiln_oldpwd_set=${OLDPWD+1} __kiln_oldpwd=${OLDPWD-}
if ! cd "${__kiln_cwd:-$CODEBUILD_SRC_DIR}" 2>/dev/null; then
  printf 'kiln: cannot enter the working directory %s (it is gone or not accessible); running in %s\n' "$__kiln_cwd" "$CODEBUILD_SRC_DIR" >&8
  cd "$CODEBUILD_SRC_DIR" || cd /
fi
if [ -n "$__kiln_oldpwd_set" ]; then OLDPWD=$__kiln_oldpwd; else unset OLDPWD; fi
__kiln_dump() {
  # Written in place by the shell alone: an external program would fail to start when an
  # exported value is larger than the kernel allows in an environment.
  umask 000
  __kiln_exported=' '
  __kiln_vars=$(export -p)
  while IFS= read -r __kiln_l; do
    case $__kiln_l in
      'export '*) __kiln_l=${__kiln_l#export } ;;
      'declare -'*) __kiln_l=${__kiln_l#declare -* } ;;
      *) continue ;;
    esac
    __kiln_exported="$__kiln_exported${__kiln_l%%=*} "
  done <<__KILN_EOF
$__kiln_vars
__KILN_EOF
  # A run-as user's own home is not carried into root's later items.
  if [ -n "$__kiln_root_home" ] && [ "$HOME" = "$__kiln_user_home" ]; then HOME=$__kiln_root_home; fi
  # __kiln_quote changes IFS: keep the item's own.
  __kiln_ifs_set=${IFS+1} __kiln_ifs=${IFS-}
  __kiln_vars=$(set)
  {
    printf '__kiln_cwd='; __kiln_quote "$PWD"; printf '\n'
    while IFS= read -r __kiln_l; do
      case $__kiln_l in [A-Za-z_]*=*) ;; *) continue ;; esac
      __kiln_n=${__kiln_l%%=*}
      __kiln_skip "$__kiln_n" && continue
      # bash prints arrays as NAME=(...); arrays do not carry over.
      case ${__kiln_l#"$__kiln_n="} in \(*) continue ;; esac
      if [ "$__kiln_n" = IFS ]; then
        [ -n "$__kiln_ifs_set" ] || continue
        __kiln_v=$__kiln_ifs
      else
        eval "[ -n \"\${$__kiln_n+set}\" ]" || continue
        eval "__kiln_v=\${$__kiln_n}"
      fi
      printf '%s=' "$__kiln_n"; __kiln_quote "$__kiln_v"; printf '\n'
      case $__kiln_exported in *" $__kiln_n "*) printf 'export %s\n' "$__kiln_n" ;; esac
    done <<__KILN_EOF
$__kiln_vars
__KILN_EOF
  } >| "$__kiln_dir/env"
}
__kiln_saved=
__kiln_done() {
  { __kiln_rc=$?; POSIXLY_CORRECT=1; set +x; } 2>/dev/null
  # Called inside { } 2>/dev/null so that a `set -x` item does not trace the call: stderr back.
  exec 2>&1
  set +eu
  unset -f printf read command umask test cd eval set exit export unset trap 2>/dev/null
  case ${BASH_VERSION-} in
    ?*) unset -f '['; trap - DEBUG RETURN ERR; set +o functrace +o errtrace ;;
  esac
  if [ -z "$__kiln_saved" ]; then
    __kiln_saved=1
    [ "$__kiln_save" = save ] && __kiln_dump
    printf '%s %s\n' "$__kiln_mark" "$__kiln_rc" >&8
  fi
  exit "$__kiln_rc"
}
trap '{ __kiln_done; } 2>/dev/null' EXIT
eval "$__kiln_item"
{ __kiln_done; } 2>/dev/null
"#;

/// What an item loads and saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// 0.2: load the carried state (or `initial` before the first save) and save it afterwards.
    State,
    /// 0.1: start from `initial`, save nothing.
    Fresh,
    /// Evaluate something in the current state without changing it (artifact names, exports).
    ReadOnly,
}

/// A RETRY's operation on the state, done before loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOp {
    None,
    /// Remember the state as the phase starts.
    Snapshot,
    /// Go back to the state remembered when the phase started.
    Restore,
}

/// One item run: everything the wrapper needs besides the item text.
#[derive(Debug, Clone)]
pub struct ItemRun<'a> {
    pub item: &'a str,
    pub succeeding: bool,
    pub carry: Carry,
    pub op: StateOp,
    /// The run-as user, `None` for root.
    pub user: Option<&'a str>,
    pub marker: &'a str,
}

impl ItemRun<'_> {
    /// The exec's command line: `SHELL -c WRAPPER script.sh ARGS...`.
    pub fn command(&self, shell: &str) -> Vec<String> {
        let load = match self.carry {
            Carry::Fresh => "initial",
            Carry::State | Carry::ReadOnly => "state",
        };
        let save = match self.carry {
            Carry::State => "save",
            Carry::Fresh | Carry::ReadOnly => "nosave",
        };
        let op = match self.op {
            StateOp::None => "none",
            StateOp::Snapshot => "snapshot",
            StateOp::Restore => "restore",
        };
        [
            shell,
            "-c",
            wrapper(),
            SCRIPT_NAME,
            self.item,
            if self.succeeding { "1" } else { "0" },
            load,
            save,
            op,
            self.user.unwrap_or(""),
            self.marker,
            STATE_DIR,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// Single-quotes a value for a POSIX shell.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The `initial` state file: every variable exported, in order (later ones win). Names a shell
/// cannot or will not set (`UID` under bash, say) are left out.
pub fn initial_file<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    vars.into_iter()
        .filter(|(name, _)| is_shell_name(name) && !is_shell_managed(name))
        .map(|(name, value)| format!("export {name}={}\n", quote(value)))
        .collect()
}

/// Splits an item's output: stdout is the build's; stderr carries the end marker line (and, before
/// the wrapper takes over, the shell's own errors, which belong in the log).
#[derive(Debug)]
pub struct ItemOutput {
    marker: Vec<u8>,
    stderr_line: Vec<u8>,
    exit_code: Option<i64>,
}

impl ItemOutput {
    pub fn new(marker: &str) -> ItemOutput {
        ItemOutput {
            marker: format!("{marker} ").into_bytes(),
            stderr_line: Vec::new(),
            exit_code: None,
        }
    }

    /// Feeds stdout bytes; appends them to `out`, less the marker line should an item have
    /// pointed fd 8 at stdout (`exec 8>&1`). A marker split across two chunks is not caught.
    pub fn push_stdout(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(at) = memchr::memmem::find(chunk, &self.marker) else {
            out.extend_from_slice(chunk);
            return;
        };
        let line_end = chunk[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(chunk.len(), |i| at + i + 1);
        match self.marker_code(&chunk[at..line_end]) {
            Some(code) if self.exit_code.is_none() => {
                self.exit_code = Some(code);
                out.extend_from_slice(&chunk[..at]);
                out.extend_from_slice(&chunk[line_end..]);
            }
            _ => out.extend_from_slice(chunk),
        }
    }

    /// Feeds stderr bytes; appends anything that is not the marker to `out`.
    pub fn push_stderr(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            self.stderr_line.push(b);
            if b == b'\n' {
                self.take_line(out);
            }
        }
    }

    fn take_line(&mut self, out: &mut Vec<u8>) {
        let line = std::mem::take(&mut self.stderr_line);
        match self.marker_code(&line) {
            Some(code) if self.exit_code.is_none() => self.exit_code = Some(code),
            _ => out.extend_from_slice(&line),
        }
    }

    /// The exit status in a `<marker> <status>` line.
    fn marker_code(&self, line: &[u8]) -> Option<i64> {
        let rest = line.strip_prefix(self.marker.as_slice())?;
        std::str::from_utf8(rest).ok()?.trim().parse().ok()
    }

    /// The item's exit status, once the wrapper reported it.
    pub fn exit_code(&self) -> Option<i64> {
        self.exit_code
    }

    /// The end of the stream: any unterminated stderr line goes to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.stderr_line.is_empty() {
            self.take_line(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_marker_on_stderr_at_any_split() {
        let stream = b"sh: oops\nKILN-abc 3\n";
        for split in 0..stream.len() {
            let mut p = ItemOutput::new("KILN-abc");
            let mut out = Vec::new();
            p.push_stderr(&stream[..split], &mut out);
            p.push_stderr(&stream[split..], &mut out);
            p.finish(&mut out);
            assert_eq!(out, b"sh: oops\n", "split {split}");
            assert_eq!(p.exit_code(), Some(3));
        }
    }

    #[test]
    fn a_marker_sent_to_stdout_is_taken_out() {
        let mut p = ItemOutput::new("KILN-x");
        let mut out = Vec::new();
        p.push_stdout(b"before\nKILN-x 4\nafter\n", &mut out);
        assert_eq!(out, b"before\nafter\n");
        assert_eq!(p.exit_code(), Some(4));
        p.push_stdout(b"KILN-x 5\n", &mut out);
        assert_eq!(out, b"before\nafter\nKILN-x 5\n", "only one end per item");
    }

    #[test]
    fn other_stderr_is_output() {
        let mut p = ItemOutput::new("KILN-x");
        let mut out = Vec::new();
        p.push_stderr(b"OCI runtime exec failed", &mut out);
        p.finish(&mut out);
        assert_eq!(out, b"OCI runtime exec failed");
        assert_eq!(p.exit_code(), None);
        let mut q = ItemOutput::new("KILN-x");
        q.push_stderr(b"KILN-x notanumber\n", &mut out);
        assert_eq!(q.exit_code(), None);
    }

    #[test]
    fn quoting_round_trips_through_a_shell() {
        let value = "it's a \"test\" $HOME `x` \\ \n new line";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{}printf %s \"$V\"", initial_file([("V", value)])))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    }

    /// Runs items through the wrapper in a local shell with a scratch state directory.
    struct LocalShell {
        shell: &'static str,
        dir: tempfile::TempDir,
    }

    impl LocalShell {
        fn new(shell: &'static str) -> LocalShell {
            let dir = tempfile::tempdir().expect("tmp");
            let initial = initial_file([
                ("CODEBUILD_SRC_DIR", "/"),
                ("GIVEN", "given value"),
                ("HOME", "/root"),
            ]);
            std::fs::write(dir.path().join("initial"), initial).expect("initial");
            LocalShell { shell, dir }
        }

        /// Runs `item`; returns (output, exit code reported on fd 3).
        fn run(&self, item: &str, carry: Carry, op: StateOp) -> (String, Option<i64>) {
            let run = ItemRun {
                item,
                succeeding: true,
                carry,
                op,
                user: None,
                marker: "KILN-T",
            };
            let mut cmd = run.command(self.shell);
            let last = cmd.len() - 1;
            cmd[last] = self.dir.path().display().to_string();
            let out = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("shell runs");
            let mut parser = ItemOutput::new("KILN-T");
            let mut shown = out.stdout.clone();
            parser.push_stderr(&out.stderr, &mut shown);
            parser.finish(&mut shown);
            (
                String::from_utf8_lossy(&shown).into_owned(),
                parser.exit_code(),
            )
        }

        fn item(&self, item: &str) -> (String, Option<i64>) {
            self.run(item, Carry::State, StateOp::None)
        }
    }

    const SHELLS: [&str; 2] = ["/bin/sh", "bash"];

    #[test]
    fn variables_and_directory_carry_over() {
        for shell in SHELLS {
            let sh = LocalShell::new(shell);
            assert_eq!(
                sh.item("cd /tmp; PLAIN='a b'; export EXP=\"x'y\"").1,
                Some(0)
            );
            let (out, code) = sh
                .item("echo \"$(pwd)|$PLAIN|$EXP|$GIVEN\"; sh -c 'echo child:${PLAIN:-none}:$EXP'");
            assert_eq!(code, Some(0));
            assert_eq!(out, "/tmp|a b|x'y|given value\nchild:none:x'y\n", "{shell}");
        }
    }

    #[test]
    fn unset_exit_and_user_traps_carry_over() {
        for shell in SHELLS {
            let sh = LocalShell::new(shell);
            sh.item("unset GIVEN; A=1");
            assert_eq!(sh.item("B=2; exit 3; B=4").1, Some(3));
            let (out, _) = sh.item("trap 'echo trapped' EXIT; C=3");
            assert_eq!(out, "trapped\n", "{shell}");
            let (out, _) = sh.item("echo \"${GIVEN-unset} $A $B $C\"");
            assert_eq!(out, "unset 1 2 3\n", "{shell}");
        }
    }

    #[test]
    fn redirections_and_xtrace_do_not_touch_the_state() {
        for shell in SHELLS {
            let sh = LocalShell::new(shell);
            let file = sh.dir.path().join("out.log");
            let (_, code) = sh.item(&format!(
                "exec > {} 2>&1; echo to-file; R=1",
                file.display()
            ));
            assert_eq!(code, Some(0));
            assert_eq!(std::fs::read_to_string(&file).expect("file"), "to-file\n");
            let (out, code) = sh.item("set -x; X=1");
            assert_eq!(code, Some(0));
            assert!(
                !out.contains("__kiln_dump") && !out.contains("__kiln_quote"),
                "{shell}: {out}"
            );
            let (out, _) = sh.item("echo \"$R $X\"; case $- in *x*) echo traced;; esac");
            assert_eq!(out, "1 1\n", "{shell}");
        }
    }

    #[test]
    fn big_and_strange_values_carry_over() {
        for shell in SHELLS {
            let sh = LocalShell::new(shell);
            sh.item("BIG=$(head -c 200000 /dev/zero | tr '\\0' a); W=\"a'b\\\"c\\\\d $(printf 'x\\ny')\"");
            let (out, _) = sh.item("printf '%s|%s|%s' \"${#BIG}\" \"$W\" \"$GIVEN\"");
            assert_eq!(out, "200000|a'b\"c\\d x\ny|given value", "{shell}");
        }
    }

    #[test]
    fn functions_named_like_builtins_and_fd_3_do_not_break_saving() {
        for shell in SHELLS {
            let sh = LocalShell::new(shell);
            let (out, code) = sh.item(
                "read() { :; }; printf() { :; }; command() { :; }; umask() { :; }; exec 3>&1; echo to-three >&3; X=1",
            );
            assert_eq!(code, Some(0), "{shell}: {out}");
            assert_eq!(out, "to-three\n", "{shell}");
            let (out, _) = sh.item("echo \"$X $GIVEN\"; command -v sh >/dev/null && echo path-ok");
            assert_eq!(out, "1 given value\npath-ok\n", "{shell}");
        }
    }

    #[test]
    fn bash_exports_with_attributes_carry_and_arrays_do_not() {
        let sh = LocalShell::new("bash");
        sh.item("declare -rx R=1; export F=2; readonly F; ARR=(a b); declare -A MAP=([k]=v)");
        let (out, code) = sh.item("sh -c 'echo $R $F'; echo \"${ARR-unset} ${MAP-unset}\"");
        assert_eq!(code, Some(0));
        assert_eq!(out, "1 2\nunset unset\n");
    }

    #[test]
    fn values_full_of_quotes_and_huge_exports_carry_over() {
        for shell in SHELLS {
            let sh = LocalShell::new(shell);
            // 100,000 pieces: a quadratic save would take minutes here.
            let (_, code) = sh.item(
                "V=\"$(head -c 100000 /dev/zero | tr '\\0' \"'\")x'\"; export BIG=$(head -c 140000 /dev/zero | tr '\\0' b); A=kept",
            );
            assert_eq!(code, Some(0), "{shell}");
            let (out, _) = sh.item("echo \"${#V} ${#BIG} $A\"");
            assert_eq!(out, "100002 140000 kept\n", "{shell}");
        }
    }

    #[test]
    fn debug_and_return_traps_do_not_reach_the_state() {
        let sh = LocalShell::new("bash");
        sh.item("set -T -E; trap 'echo DBG' DEBUG; trap 'echo RET' RETURN; trap 'echo ERR' ERR; D=1; cd /tmp");
        let (out, code) = sh.item("echo \"D=$D $(pwd)\"");
        assert_eq!(code, Some(0));
        assert_eq!(out, "D=1 /tmp\n");
    }

    #[test]
    fn ordinary_shell_variables_carry_over() {
        for shell in SHELLS {
            let sh = LocalShell::new(shell);
            sh.item("cd /tmp && cd /; export PS4='T> '; IFS=:");
            let (out, _) = sh.item("echo \"$OLDPWD [$PS4] [$IFS]\"");
            assert_eq!(out, "/tmp [T> ] [:]\n", "{shell}");
        }
    }

    #[test]
    fn missing_directory_falls_back_to_the_source_dir() {
        let sh = LocalShell::new("/bin/sh");
        let gone = sh.dir.path().join("gone");
        sh.item(&format!("mkdir {0} && cd {0} && rmdir {0}", gone.display()));
        let (out, code) = sh.item("pwd");
        assert_eq!(code, Some(0));
        // The notice travels on the private channel, the output on stdout.
        assert!(out.starts_with("/\n"), "{out}");
        assert!(out.contains("cannot enter the working directory"), "{out}");
    }

    #[test]
    fn fresh_and_read_only_runs_leave_the_state_alone() {
        let sh = LocalShell::new("/bin/sh");
        sh.item("A=1");
        sh.run("A=2", Carry::ReadOnly, StateOp::None);
        let (out, _) = sh.run("echo ${A-unset}", Carry::Fresh, StateOp::None);
        assert_eq!(out, "unset\n");
        assert_eq!(sh.item("echo $A").0, "1\n");
    }

    #[test]
    fn snapshot_and_restore() {
        let sh = LocalShell::new("/bin/sh");
        sh.item("A=before");
        sh.run("A=during", Carry::State, StateOp::Snapshot);
        assert_eq!(sh.item("echo $A").0, "during\n");
        assert_eq!(
            sh.run("echo $A", Carry::State, StateOp::Restore).0,
            "before\n"
        );
    }

    #[test]
    fn initial_file_skips_names_a_shell_cannot_set() {
        let file = initial_file([
            ("A_1", "x"),
            ("1A", "y"),
            ("a.b", "z"),
            ("", "e"),
            ("UID", "1000"),
        ]);
        assert_eq!(file, "export A_1='x'\n");
    }

    #[test]
    fn command_line_carries_the_run() {
        let run = ItemRun {
            item: "echo hi",
            succeeding: false,
            carry: Carry::Fresh,
            op: StateOp::Snapshot,
            user: Some("codebuild-user"),
            marker: "M",
        };
        let cmd = run.command("bash");
        assert_eq!(&cmd[..2], ["bash", "-c"]);
        assert_eq!(
            &cmd[3..],
            [
                SCRIPT_NAME,
                "echo hi",
                "0",
                "initial",
                "nosave",
                "snapshot",
                "codebuild-user",
                "M",
                STATE_DIR
            ]
        );
    }
}
