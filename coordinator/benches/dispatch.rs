//! `cargo bench -p kiln-coordinator --bench dispatch`: how fast the coordinator moves builds.
//!
//! A real coordinator (in this process, on a loopback port) with the embedded store and with a
//! real `redis-server`; load-generating workers that speak the real worker protocol over gRPC and
//! complete every assignment at once (they live here, in the benchmark, not in the product).
//! Reported:
//! - builds/s from StartBuild to the completion report, with 1, 10 and 100 connected workers;
//! - p50/p99 StartBuild-to-assignment latency at a steady 100 builds/s;
//! - coordinator memory per queued build with 100,000 builds queued (embedded store; RSS growth
//!   of this process, which holds the coordinator).
//!
//! Targets on a 2-core machine: ≥ 2,000 builds/s embedded, ≥ 1,000 builds/s on Redis, p99
//! dispatch latency < 20 ms at 100 builds/s, < 2 KiB per queued build. `KILN_BENCH_QUICK=1`
//! shrinks the runs (for a smoke test).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_coordinator::{Coordinator, CoordinatorConfig};
use kiln_proto::v1::build_service_client::BuildServiceClient;
use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use kiln_proto::v1::{
    coordinator_message, start_build_request, worker_message, Completed, GitSource, Hello, Project,
    StartBuildRequest, WorkerMessage,
};
use kiln_tests::RedisServer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const BUILDSPEC: &str = "version: 0.2\nphases:\n  build:\n    commands:\n      - echo hello\n";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let quick = std::env::var_os("KILN_BENCH_QUICK").is_some();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let redis = RedisServer::start_throwaway();
        let n = if quick { 500 } else { 10_000 };
        println!("dispatch throughput: {n} builds from StartBuild to completion report");
        for workers in [1, 10, 100] {
            for backend in [Backend::Embedded, Backend::Redis(redis.url())] {
                let server = Server::start(&backend).await?;
                let rate = throughput(&server, workers, n).await?;
                println!(
                    "  {:<8} {:>3} workers: {:>7.0} builds/s (target >= {})",
                    backend.name(),
                    workers,
                    rate,
                    backend.target()
                );
                server.stop();
            }
        }
        let samples = if quick { 200 } else { 2_000 };
        println!("dispatch latency at 100 builds/s ({samples} builds, 10 workers):");
        for backend in [Backend::Embedded, Backend::Redis(redis.url())] {
            let server = Server::start(&backend).await?;
            let (p50, p99) = latency(&server, samples).await?;
            println!(
                "  {:<8} p50 {:.2} ms, p99 {:.2} ms (target p99 < 20 ms)",
                backend.name(),
                p50,
                p99
            );
            server.stop();
        }
        let queued = if quick { 10_000 } else { 100_000 };
        let server = Server::start(&Backend::Embedded).await?;
        let per_build = memory_per_queued(&server, queued).await?;
        println!(
            "memory per queued build, embedded, {queued} queued: {per_build:.0} bytes (target < 2048)"
        );
        server.stop();
        Ok(())
    })
}

enum Backend {
    Embedded,
    Redis(String),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Redis(_) => "redis",
        }
    }
    fn target(&self) -> u32 {
        match self {
            Backend::Embedded => 2000,
            Backend::Redis(_) => 1000,
        }
    }
}

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(backend: &Backend) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut config = CoordinatorConfig {
            listen: "127.0.0.1:0".parse()?,
            ..CoordinatorConfig::default()
        };
        if let Backend::Redis(url) = backend {
            config.state = url.clone();
            config.redis_prefix = format!("bench{}:", uuid::Uuid::new_v4().simple());
        }
        let config = config.finish(dir.path())?;
        let coordinator = Coordinator::bind(config).await?;
        let addr = coordinator.local_addr()?;
        let stop = CancellationToken::new();
        let serving = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = coordinator.serve(serving).await {
                eprintln!("coordinator: {e}");
            }
        });
        Ok(Server {
            addr,
            stop,
            _dir: dir,
        })
    }

    fn stop(self) {
        self.stop.cancel();
    }

    async fn channel(&self) -> Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }
}

/// Assignment times, by build id, seen by the load workers.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// A load-generating worker: takes every assignment and completes it at once.
async fn load_worker(
    channel: Channel,
    name: String,
    seen: Seen,
    done: mpsc::UnboundedSender<()>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel(1024);
    tx.send(WorkerMessage {
        kind: Some(worker_message::Kind::Hello(Hello {
            worker_id: name,
            slots: 10_000,
            ..Hello::default()
        })),
    })
    .await?;
    let mut inbound = WorkerServiceClient::new(channel)
        .connect_worker(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(message) = inbound.next().await {
        match message?.kind {
            Some(coordinator_message::Kind::Assignment(a)) => {
                if let Ok(mut seen) = seen.lock() {
                    seen.insert(a.build_id.clone(), Instant::now());
                }
                let completed = Completed {
                    build_id: a.build_id,
                    epoch: a.epoch,
                    build_status: "SUCCEEDED".to_string(),
                    ..Completed::default()
                };
                tx.send(WorkerMessage {
                    kind: Some(worker_message::Kind::Completed(completed)),
                })
                .await?;
            }
            Some(coordinator_message::Kind::CompletedAck(_)) => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
    Ok(())
}

fn request() -> StartBuildRequest {
    StartBuildRequest {
        project_ref: Some(start_build_request::ProjectRef::InlineProject(Project {
            name: "bench".to_string(),
            ..Project::default()
        })),
        source: Some(start_build_request::Source::Git(GitSource {
            url: "file:///nonexistent".to_string(),
            ..GitSource::default()
        })),
        buildspec_override: BUILDSPEC.to_string(),
        ..StartBuildRequest::default()
    }
}

/// Starts `workers` load workers; returns the assignment log and the completion signal.
async fn workers(server: &Server, count: usize) -> Result<(Seen, mpsc::UnboundedReceiver<()>)> {
    let seen: Seen = Arc::default();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    for i in 0..count {
        let channel = server.channel().await?;
        let (seen, done) = (seen.clone(), done_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = load_worker(channel, format!("load-{i}"), seen, done).await {
                eprintln!("load worker {i}: {e}");
            }
        });
    }
    // Let every worker's Hello land before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((seen, done_rx))
}

async fn throughput(server: &Server, worker_count: usize, n: usize) -> Result<f64> {
    let (_seen, mut done) = workers(server, worker_count).await?;
    let start = Instant::now();
    submit(server, n).await?;
    for _ in 0..n {
        done.recv().await.ok_or("load workers stopped")?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// StartBuild `n` times from 32 concurrent clients.
async fn submit(server: &Server, n: usize) -> Result<()> {
    let clients = 32;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = BuildServiceClient::new(server.channel().await?);
        let share = n / clients + usize::from(c < n % clients);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                client.start_build(request()).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn latency(server: &Server, samples: usize) -> Result<(f64, f64)> {
    let (seen, mut done) = workers(server, 10).await?;
    let mut client = BuildServiceClient::new(server.channel().await?);
    let mut sent = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..samples {
        tick.tick().await;
        let at = Instant::now();
        let build = client.start_build(request()).await?.into_inner().build;
        sent.insert(build.map(|b| b.id).unwrap_or_default(), at);
    }
    for _ in 0..samples {
        done.recv().await.ok_or("load workers stopped")?;
    }
    let seen = seen.lock().map_err(|_| "poisoned")?;
    let mut millis: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| seen.get(id).map(|t| (*t - *at).as_secs_f64() * 1000.0))
        .collect();
    millis.sort_by(f64::total_cmp);
    let pick = |q: f64| millis[((millis.len() as f64 * q) as usize).min(millis.len() - 1)];
    Ok((pick(0.50), pick(0.99)))
}

async fn memory_per_queued(server: &Server, queued: usize) -> Result<f64> {
    let before = rss_bytes()?;
    submit(server, queued).await?;
    let after = rss_bytes()?;
    Ok(after.saturating_sub(before) as f64 / queued as f64)
}

/// Resident set size of this process.
fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("statm without rss")?
        .parse()?;
    Ok(pages * 4096)
}
