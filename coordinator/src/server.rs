//! Serving: one listener carries BuildService (client tokens), WorkerService (join token), gRPC
//! health checking and server reflection (both open, so probes and `grpcurl` work without a
//! token), with message size limits on every service. The dispatcher and sweeper run beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1::build_service_server::BuildServiceServer;
use kiln_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::auth::TokenCheck;
use crate::blobs::Blobs;
use crate::config::CoordinatorConfig;
use crate::core::Core;
use crate::scheduler::{dispatcher, sweeper};
use crate::service::build::BuildApi;
use crate::service::worker::WorkerApi;
use crate::store::{AnyStore, StateStore};

/// A coordinator bound to its address, ready to serve.
pub struct Coordinator {
    listener: TcpListener,
    core: Arc<Core<AnyStore>>,
}

impl Coordinator {
    /// Opens the state store and the blob store and binds the listener.
    pub async fn bind(config: CoordinatorConfig) -> anyhow::Result<Coordinator> {
        let store = AnyStore::open(&config.state, &config.redis_prefix)
            .await
            .map_err(|e| {
                // The store's error stays in the chain: callers can tell a store that is in use.
                anyhow::Error::new(e).context(format!("opening the state store {}", config.state))
            })?;
        let blobs = Blobs::open(&config.data_dir, &config.store_config()?)
            .map_err(|e| {
                anyhow::anyhow!(
                    "opening the blob store (data directory {}): {e:#}",
                    config.data_dir.display()
                )
            })?
            .with_plain_artifacts(config.store.presigned_artifacts);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
        Ok(Coordinator {
            listener,
            core: Core::new(store, blobs, config),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, stop: CancellationToken) -> anyhow::Result<()> {
        serve(self.core, self.listener, stop).await
    }
}

async fn serve<S: StateStore>(
    core: Arc<Core<S>>,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let config = core.config.clone();
    let clients = TokenCheck::new(&config.client_tokens, "client");
    let workers = TokenCheck::new(config.join_token.as_slice(), "worker join");
    let limit = config.max_message_bytes;
    let build = BuildServiceServer::new(BuildApi { core: core.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let build = InterceptedService::new(build, move |r| clients.check(r));
    let worker = WorkerServiceServer::new(WorkerApi { core: core.clone() })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let worker = InterceptedService::new(worker, move |r| workers.check(r));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<BuildServiceServer<BuildApi<S>>>()
        .await;
    health
        .set_serving::<WorkerServiceServer<WorkerApi<S>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kiln_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tokio::spawn(dispatcher(core.clone(), stop.clone()));
    tokio::spawn(sweeper(core.clone(), stop.clone()));
    tokio::spawn(crate::retention::run(core.clone(), stop.clone()));
    tracing::info!(addr = %listener.local_addr()?, "coordinator listening");
    // Small request/response messages must not wait for Nagle's algorithm (40 ms stalls).
    // Keepalives find half-open connections (a worker that vanished without closing).
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(build)
        .add_service(worker)
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await?;
    Ok(())
}
