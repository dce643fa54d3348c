//! A real S3-compatible server for tests and benchmarks: `s3s-fs` (installed by
//! `deploy/test-deps.sh`) serving a temporary directory on a loopback port, with one bucket.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "kiln";
pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "kiln-test";
pub const SECRET_KEY: &str = "kiln-test-secret";

/// A running `s3s-fs` holding the bucket [`BUCKET`]; killed when dropped.
pub struct S3Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `s3s-fs` binary: `KILN_S3S_FS`, else on PATH or in `~/.cargo/bin`; a clear panic when
/// missing (tests that need it never skip).
fn s3s_fs() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_S3S_FS") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("s3s-fs (the S3-compatible test server) is missing: run deploy/test-deps.sh, or set KILN_S3S_FS")
    })
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { child, port, root }
    }

    /// The directory it serves: bucket [`BUCKET`] is a directory in it, each object a file.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The blob store backend for this server's bucket.
    pub fn backend(&self) -> kiln_cache::Backend {
        kiln_cache::Backend::S3(kiln_cache::S3Config {
            endpoint: self.endpoint(),
            region: REGION.into(),
            bucket: BUCKET.into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            path_style: true,
        })
    }
}
