//! Interoperability: a Python grpcio client (`tests/python/kiln_client.py`, stubs generated from
//! `proto/` at run time) drives a real single-node `kiln server` with client and join tokens:
//! uploads a checkout, starts a build with an inline project, follows its log and reads its status.
//!
//! Python 3 and the packages in `tests/python/requirements.txt` are required: without them the
//! test fails with the command that installs them, never skips.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_tests::{checkout, require_docker, Proc};

const CLIENT_TOKEN: &str = "py-client-s3cret";
const JOIN_TOKEN: &str = "py-join-s3cret";
const FIX: &str = "pip install -r tests/python/requirements.txt (with the python3 on PATH: \
                   python3 -m pip install -r tests/python/requirements.txt)";

/// The marker is computed by the build's shell, so only the command's output (never the
/// `Running command ...` line that echoes the command) holds it.
const MARKER: &str = "kiln-python-interop-42";
const ECHOES_MARKER: &str = r#"version: 0.2
phases:
  build:
    commands:
      - echo "kiln-python-interop-$((6 * 7))"
"#;
const FAILS: &str = r#"version: 0.2
phases:
  build:
    commands:
      - echo "about to fail"
      - exit 3
"#;

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kiln_client.py")
}

/// `python3 tests/python/kiln_client.py ARGS...`; the generated stubs (and any bytecode) go to
/// `scratch`, never into the repository.
fn python(scratch: &Path, args: &[&str]) -> Output {
    Command::new("python3")
        .arg(client_script())
        .args(args)
        .env("TMPDIR", scratch)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("KILN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is required for the interoperability test ({e}); install Python 3, then {FIX}")
        })
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails loudly unless python3 can import grpc and generate and load the kiln.v1 stubs.
fn require_python(scratch: &Path) {
    let out = python(scratch, &["--check"]);
    assert!(
        out.status.success(),
        "the Python gRPC client cannot run (python3 or its grpc modules are missing?): {FIX}\n{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stubs OK"),
        "kiln_client.py --check did not report its stubs:\n{}",
        describe(&out)
    );
}

/// Builds `dir` through the Python client with the given token.
fn build(scratch: &Path, addr: SocketAddr, token: &str, project: &str, dir: &Path) -> Output {
    let server = addr.to_string();
    let dir = dir.to_str().expect("utf-8 path");
    python(
        scratch,
        &[
            "--server",
            &server,
            "--token",
            token,
            "--project",
            project,
            "--deadline",
            "300",
            dir,
        ],
    )
}

#[test]
fn a_python_grpc_client_builds_on_a_single_node_server() {
    let scratch = tempfile::tempdir().expect("tempdir");
    require_python(scratch.path());
    require_docker();

    let data = tempfile::tempdir().expect("tempdir");
    let (server, addr) = Proc::kiln(
        "server",
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().expect("utf-8 path"),
            "--token",
            CLIENT_TOKEN,
            "--join-token",
            JOIN_TOKEN,
        ],
        &[],
        true,
    );
    let addr = addr.expect("address");

    // A wrong client token: the first call (UploadSource) is refused, no build starts.
    let src = checkout(&[("buildspec.yml", ECHOES_MARKER)]);
    let out = build(scratch.path(), addr, "guess", "python-ok", src.path());
    assert!(
        !out.status.success(),
        "a wrong token was accepted:\n{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"),
        "{}",
        describe(&out)
    );

    // A build that succeeds: its log (streamed) holds the marker line, its status is SUCCEEDED.
    let out = build(scratch.path(), addr, CLIENT_TOKEN, "python-ok", src.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the build did not succeed:\n{}",
        describe(&out)
    );
    assert!(
        stdout.lines().any(|l| l.trim_end() == MARKER),
        "the log has no line {MARKER:?}:\n{}",
        describe(&out)
    );
    assert!(
        stdout.lines().any(|l| l == "STATUS SUCCEEDED"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.contains("uploaded ") && stderr.contains(" as sha256:"),
        "{}",
        describe(&out)
    );
    assert!(stderr.contains("build python-ok:"), "{}", describe(&out));

    // A build whose command exits 3: the client exits non-zero and reports FAILED.
    let failing = checkout(&[("buildspec.yml", FAILS)]);
    let out = build(
        scratch.path(),
        addr,
        CLIENT_TOKEN,
        "python-fail",
        failing.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a failing build exited 0:\n{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout.lines().any(|l| l.trim_end() == "about to fail"),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.lines().any(|l| l == "STATUS FAILED"),
        "{}",
        describe(&out)
    );

    drop(server);
    // Nothing was generated into the repository (the stubs are the `kiln` package).
    let python_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    for stray in ["kiln", "__pycache__"] {
        let path = python_dir.join(stray);
        assert!(!path.exists(), "the client left {} behind", path.display());
    }
}
