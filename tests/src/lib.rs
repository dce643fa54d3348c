//! The end-to-end harness: starts real `kiln` processes (coordinators, workers), a real
//! `redis-server`, a real S3-compatible server (`s3`), and talks to them with real gRPC clients and the real `kiln` CLI.
//!
//! Everything a test needs must be there: a missing Docker daemon, build image, `redis-server`,
//! `s3s-fs` or `kiln` binary fails the test with a message saying how to get it, never skips it.

pub mod bench;
mod redis;
pub mod s3;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_proto::v1::build_service_client::BuildServiceClient;
use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use kiln_proto::v1::{
    worker_message, Build, CoordinatorMessage, GetBuildRequest, Hello, WorkerMessage,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use redis::RedisServer;

/// The build image every test build uses (made by `deploy/build-image.sh`).
pub const IMAGE: &str = "kiln/build-image:bookworm";

/// The `kiln` binary `cargo test --workspace` built next to this test.
pub fn kiln_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("kiln");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it) or `cargo build -p kiln` first",
        bin.display()
    );
    bin
}

/// Fails loudly unless Docker runs and has the build image.
pub fn require_docker() {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .expect("the docker CLI must be installed for the end-to-end tests");
    assert!(
        out.status.success(),
        "Docker or the image {IMAGE} is missing ({}): start Docker and run deploy/build-image.sh",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A child process killed when dropped; its stderr is kept in a file for failure messages.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `kiln ARGS...`; waits for a `listening on ADDR` line when `listens`.
    pub fn kiln(
        name: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        listens: bool,
    ) -> (Proc, Option<SocketAddr>) {
        let log = std::env::temp_dir().join(format!(
            "kiln-test-{}-{name}-{}.log",
            std::process::id(),
            unique()
        ));
        let mut child = Command::new(kiln_bin())
            .args(args)
            .envs(envs.iter().copied())
            .env("KILN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting kiln {args:?}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(addr) = line.split("listening on ").nth(1) {
                    if let Ok(addr) = addr.trim().parse::<SocketAddr>() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let proc = Proc {
            name: name.to_string(),
            child,
            log,
        };
        if !listens {
            return (proc, None);
        }
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => (proc, Some(addr)),
            Err(_) => panic!("{name} did not start listening:\n{}", proc.log_text()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits up to `timeout` for the exit and returns whether it exited.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "--- log of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `kiln coordinator` with the embedded store in `data`, on a loopback port, with `extra` flags.
pub fn start_coordinator(data: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let d = data.to_str().expect("utf-8");
    let mut args = vec!["coordinator", "--listen", "127.0.0.1:0", "--data-dir", d];
    args.extend_from_slice(extra);
    let (proc, addr) = Proc::kiln("coordinator", &args, &[], true);
    (proc, addr.expect("address"))
}

/// `kiln worker` with this id for the coordinator at `addr`, with `extra` flags.
pub fn start_worker(id: &str, addr: SocketAddr, extra: &[&str]) -> Proc {
    let url = format!("http://{addr}");
    let mut args = vec!["worker", "--coordinator", &url, "--id", id];
    args.extend_from_slice(extra);
    Proc::kiln(id, &args, &[], false).0
}

/// `kiln project apply` of a project file with this text (written to `file`).
pub fn apply_project(server: &str, file: &Path, text: &str) {
    std::fs::write(file, text).expect("write");
    let file = file.to_str().expect("utf-8");
    let out = kiln(&["project", "apply", "-f", file, "--server", server], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the docker CLI; its trimmed stdout, or a panic naming the command and its stderr.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Perl program (the build image has Perl, not netcat) that listens on `port` and answers every
/// connection with `greeting` and a newline, after printing `listening`; it gives up after ten
/// minutes. Double quotes only, so a shell can take it in single quotes.
pub fn listener_script(port: u16, greeting: &str) -> String {
    format!(
        "$|=1; alarm 600; my $s = IO::Socket::INET->new(LocalAddr => \"0.0.0.0\", LocalPort => {port}, Listen => 16, ReuseAddr => 1) or die \"cannot listen $!\"; print \"listening\\n\"; while (my $c = $s->accept) {{ print $c \"{greeting}\\n\"; close $c }}"
    )
}

/// Starts a container of the build image running [`listener_script`] on Docker network `network`,
/// known there as `alias`; returns its name once it listens.
pub fn start_listener(network: &str, alias: &str, port: u16, greeting: &str) -> String {
    let script = listener_script(port, greeting);
    let name = run_container(
        "listener",
        &["--network", network, "--network-alias", alias],
        &["perl", "-MIO::Socket::INET", "-e", &script],
    );
    for _ in 0..100 {
        if docker(&["logs", &name]).contains("listening") {
            return name;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the listener container {name} on {network} did not start");
}

/// A benchmark's numeric setting from the environment (`KILN_BENCH_MB`), else `default`.
pub fn bench_setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A benchmark's scratch directory: a new one under `KILN_BENCH_DIR` (default: the current
/// directory), removed when dropped.
pub fn bench_work_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var_os("KILN_BENCH_DIR").unwrap_or_else(|| ".".into()))
        .expect("the benchmark's work directory")
}

/// A shell script that fills `dir` with benchmark data of `mb` MiB: `dir/tree`, a
/// `node_modules`-like tree of 20 KiB files, when `tree`, else the single file `dir/big`; half
/// random bytes, half log-like text (so compression has something to do).
pub fn bench_data_script(dir: &str, mb: u64, tree: bool) -> String {
    let half = (mb << 20) / 2;
    let text = "yes 'line 1234: compiling module_977 ok, 0 warnings, cache hit ratio 0.93'";
    match tree {
        true => format!(
            "mkdir -p {dir}/tree/random {dir}/tree/text && cd {dir}/tree/random && head -c {half} /dev/urandom | split -b 20480 -a 5 - f && cd ../text && {text} | head -c {half} | split -b 20480 -a 5 - f"
        ),
        false => format!(
            "mkdir -p {dir} && (head -c {half} /dev/urandom; {text} | head -c {half}) > {dir}/big"
        ),
    }
}

/// Starts a labelled container of the build image (`docker run -d` with `options`) running
/// `cmd`; returns its name.
pub fn run_container(what: &str, options: &[&str], cmd: &[&str]) -> String {
    let name = unique_name(what);
    let mut args = vec!["run", "-d", "--name", &name, "--label", "kiln-test=1"];
    args.extend_from_slice(options);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    docker(&args);
    name
}

/// A container removed when dropped (a benchmark's, up for the whole run).
pub struct Container(pub String);

impl Container {
    /// A container of the build image that sleeps until it is removed.
    pub fn sleeping(what: &str) -> Container {
        Container(run_container(what, &[], &["sleep", "infinity"]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// A name no other test or run uses, for the Docker objects a test creates.
pub fn unique_name(what: &str) -> String {
    format!(
        "kiln-test-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Runs the `kiln` CLI to completion.
pub fn kiln(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(kiln_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running kiln")
}

/// A checkout with a buildspec (and whatever other files).
pub fn checkout(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }
    dir
}

/// Adds the bearer token to each request.
pub type Auth =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

pub type Client = BuildServiceClient<InterceptedService<Channel, Auth>>;

/// A gRPC channel to a coordinator.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// A worker speaking the protocol by hand (no token): sends `hello`, returns the sender for
/// further messages and the coordinator's stream.
pub async fn raw_worker(
    addr: SocketAddr,
    hello: Hello,
) -> (
    tokio::sync::mpsc::Sender<WorkerMessage>,
    tonic::Streaming<CoordinatorMessage>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(WorkerMessage {
        kind: Some(worker_message::Kind::Hello(hello)),
    })
    .await
    .expect("send Hello");
    let inbound = WorkerServiceClient::new(channel(addr).await)
        .connect_worker(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("connect_worker")
        .into_inner();
    (tx, inbound)
}

/// A gRPC client of BuildService, with a bearer token when given.
pub async fn client(addr: SocketAddr, token: Option<&str>) -> Client {
    let channel = channel(addr).await;
    let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        token.map(|t| format!("Bearer {t}").parse().expect("ascii token"));
    let intercept: Auth = Box::new(move |mut r: tonic::Request<()>| {
        if let Some(h) = &header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    });
    BuildServiceClient::with_interceptor(channel, intercept)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Polls until the build is complete.
pub async fn wait_complete(client: &mut Client, id: &str, timeout: Duration) -> Build {
    let deadline = Instant::now() + timeout;
    loop {
        let build = client
            .get_build(GetBuildRequest { id: id.to_string() })
            .await
            .unwrap_or_else(|e| panic!("GetBuild {id}: {e}"))
            .into_inner();
        if build.build_complete {
            return build;
        }
        assert!(
            Instant::now() < deadline,
            "build {id} not complete after {timeout:?}: {} {} ({})",
            build.build_status,
            build.current_phase,
            build.queued_reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kiln start DIR --json [ARGS]` against a server; returns the build id.
pub fn start(addr: SocketAddr, dir: &Path, extra: &[&str]) -> String {
    let server = format!("http://{addr}");
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["start", dir, "--json", "--server", &server];
    args.extend_from_slice(extra);
    let out = kiln(&args, &[]);
    assert!(
        out.status.success(),
        "kiln start failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kiln start --json");
    json["id"].as_str().expect("an id").to_string()
}

/// GetBuild through a fresh client.
pub async fn get(addr: SocketAddr, id: &str) -> Build {
    client(addr, None)
        .await
        .get_build(GetBuildRequest { id: id.to_string() })
        .await
        .unwrap_or_else(|e| panic!("GetBuild {id}: {e}"))
        .into_inner()
}
