//! The executor's side: a Ballista executor that polls the coordinator's scheduler, serves its
//! shuffle output over Flight, and speaks nothing but mutual TLS with the cluster's authority.
//! Its operators get a bounded memory pool and no disk manager, so nothing spills.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::error::BallistaError;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use kura_engine::datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use kura_engine::datafusion::execution::runtime_env::RuntimeEnvBuilder;

use crate::codec::{Codec, OpenStore, Stores};
use crate::join::Admission;
use crate::shuffle::{Engine, Keys, Service};
use crate::tls::{Membership, NodeKey};

/// How to run an admitted executor.
#[derive(Debug)]
pub struct Options {
    /// Where its Flight service (shuffle output) listens.
    pub listen: SocketAddr,
    /// The host other nodes reach it at (default: `listen`'s address). It is always named to
    /// the scheduler, which cannot find it from the connection behind TLS.
    pub advertise: Option<String>,
    /// Its working directory for shuffle files.
    pub work_dir: std::path::PathBuf,
    /// Tasks it runs at once.
    pub slots: usize,
    /// Most memory its tasks' operators may hold, in bytes.
    pub memory_bytes: u64,
}

/// Runs the executor until it is stopped (SIGTERM, ctrl-c); `ready` is called once the
/// scheduler has heard from it.
pub async fn run(
    admission: Admission,
    key: &NodeKey,
    options: Options,
    open: OpenStore,
    ready: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let health = ballista_executor::health::ExecutorHealth::new();
    let polled = health.clone();
    tokio::spawn(async move {
        while !polled.is_ready() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        ready();
    });
    let membership = Membership::new(admission.authority, admission.certificate, key);
    let (host, port) = admission
        .scheduler
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("the coordinator named no scheduler address"))?;
    let codec = Arc::new(Codec::new(open));
    let config_codec = codec.clone();
    let config_membership = membership.clone();
    let flight_tls = membership.server();
    // The keys of the sealed shuffle files: shared by the engine that writes them and the
    // Flight service that reads them, and by nothing else.
    let keys = Arc::new(Keys::default());
    let flight_keys = keys.clone();
    let config = ExecutorProcessConfig {
        executor_id: admission.executor.clone(),
        bind_host: options.listen.ip().to_string(),
        external_host: Some(
            options
                .advertise
                .clone()
                .unwrap_or_else(|| options.listen.ip().to_string()),
        ),
        port: options.listen.port(),
        scheduler_host: host.to_string(),
        scheduler_port: port.parse()?,
        scheduler_connect_timeout_seconds: 20,
        vcores: options.slots.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(options.work_dir.display().to_string()),
        print_thread_info: false,
        memory_pool_size: Some(options.memory_bytes),
        override_physical_codec: Some(codec),
        override_execution_engine: Some(Arc::new(Engine::new(keys, admission.executor.clone()))),
        // A job's files are removed once they are older than any job may run, and every
        // file when the executor stops; its keys go with them (`Keys::forget_gone`).
        job_data_clean_up_interval_seconds: 60,
        job_data_ttl_seconds: crate::coordinator::JOB_LIMIT.as_secs(),
        override_create_grpc_client_endpoint: Some(membership.endpoint_override()),
        override_config_producer: Some(Arc::new(move || {
            crate::coordinator::session_config(&config_membership, &config_codec)
        })),
        override_runtime_producer: Some(Arc::new(|_| {
            RuntimeEnvBuilder::new()
                .with_object_store_registry(Arc::new(Stores::default()))
                .with_disk_manager_builder(
                    DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
                )
                .build_arc()
        })),
        override_arrow_flight_service: Some(Arc::new(
            move |work_dir: String,
                  addr,
                  mut shutdown: ballista_executor::shutdown::Shutdown,
                  _| {
                let tls = flight_tls.clone();
                let keys = flight_keys.clone();
                tokio::spawn(async move {
                    let flight = FlightServiceServer::new(Service::new(work_dir, keys))
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20);
                    tonic::transport::Server::builder()
                        .tls_config(tls)
                        .map_err(BallistaError::TonicError)?
                        .add_service(flight)
                        .serve_with_shutdown(addr, async move { shutdown.recv().await })
                        .await
                        .map_err(BallistaError::TonicError)
                })
            },
        )),
        health,
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}
