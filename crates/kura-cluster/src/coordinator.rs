//! The coordinator's side: Ballista's scheduler inside the coordinator's enclave, serving only
//! mutual TLS with certificates of the coordinator's authority, and the [`Compute`] that sends a
//! query's counted aggregations there.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::serde::{BallistaCodec, BallistaLogicalExtensionCodec};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures_util::TryStreamExt;
use kura_engine::datafusion::error::{DataFusionError, Result};
use kura_engine::datafusion::execution::context::{SessionConfig, SessionContext};
use kura_engine::datafusion::physical_plan::ExecutionPlan;
use kura_engine::{Compute, RecordBatch};

use crate::codec::{Codec, OpenStore, wrap_scans};
use crate::tls::{Authority, Membership, TlsError};

/// The scheduler and the authority of one coordinator start.
pub struct Coordinator {
    authority: Authority,
    membership: Membership,
    addr: SocketAddr,
    codec: Arc<Codec>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Coordinator {
    /// Starts the scheduler on `listen` (mutual TLS only) with a fresh authority.
    pub async fn start(listen: SocketAddr, open: OpenStore) -> anyhow::Result<Self> {
        let authority = Authority::new()?;
        let membership = authority.member("coordinator")?;
        let codec = Arc::new(Codec::new(open));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let config = SchedulerConfig::default()
            .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
            .with_hostname(addr.ip().to_string())
            .with_port(addr.port())
            .with_use_tls(true)
            .with_override_create_grpc_client_endpoint(membership.endpoint_override());
        let config = Arc::new(SchedulerConfig {
            override_physical_codec: Some(codec.clone()),
            ..config
        });
        let session_config = session_config(&membership, &codec);
        let producer = Arc::new(move || session_config.clone());
        let cluster = BallistaCluster::new_memory(
            addr.to_string(),
            Arc::new(ballista_core::utils::default_session_builder),
            producer,
        );
        let mut server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new(
            addr.to_string(),
            cluster,
            BallistaCodec::new(
                Arc::new(BallistaLogicalExtensionCodec::default()),
                codec.clone(),
            ),
            config,
            ballista_scheduler::metrics::default_metrics_collector()?,
        );
        server.init().await?;
        let grpc = SchedulerGrpcServer::new(server)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let router = tonic::transport::Server::builder()
            .tls_config(membership.server())?
            .add_service(grpc);
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::error!("the cluster's scheduler stopped: {e}");
            }
        });
        Ok(Self {
            authority,
            membership,
            addr,
            codec,
            task,
        })
    }

    /// Where executors reach the scheduler.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The authority's certificate (PEM).
    pub fn authority(&self) -> &str {
        self.authority.pem()
    }

    /// Certifies the TLS key of an executor whose evidence the caller verified.
    pub fn admit(&self, tls_key_pem: &str, executor: &str) -> Result<String, TlsError> {
        self.authority.certify(tls_key_pem, executor)
    }
}

/// The session settings of the coordinator as Ballista's client: TLS to every executor.
fn session_config(membership: &Membership, codec: &Arc<Codec>) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_use_tls(true)
        .with_ballista_override_create_grpc_client_endpoint(membership.endpoint_override())
        .with_ballista_physical_extension_codec(codec.clone())
        .with_information_schema(false)
}

#[async_trait::async_trait]
impl Compute for Coordinator {
    async fn collect(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: &SessionContext,
    ) -> Result<Vec<RecordBatch>> {
        let state = ctx.state();
        let scans = state
            .config()
            .get_extension::<kura_engine::stored::Scans>()
            .unwrap_or_default();
        let plan = wrap_scans(plan, &scans)?;
        let mut config = session_config(&self.membership, &self.codec);
        config.options_mut().execution.target_partitions =
            state.config().options().execution.target_partitions;
        let stream = ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
            format!("https://{}", self.addr),
            &config.ballista_config(),
            plan,
            self.codec.as_ref(),
            uuid(),
            config,
        )
        .await
        .map_err(reported)?;
        stream.try_collect().await.map_err(reported)
    }
}

/// A fresh session id for one job (random, so that no job shares an executor's session state
/// with another).
fn uuid() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the system's random source");
    hex::encode(bytes)
}

/// A cluster's error in kura's fixed vocabulary. It arrives as text (from the scheduler or an
/// executor), which may quote values of the data; the text is looked at here, never passed on.
fn reported(e: DataFusionError) -> DataFusionError {
    use kura_engine::EngineError;
    let text = e.to_string().to_ascii_lowercase();
    let reduced = if ["parquet", "object store", "object_store", "decrypt"]
        .iter()
        .any(|w| text.contains(w))
    {
        EngineError::Runtime(kura_engine::error::STORED_FILE_FAILED)
    } else if text.contains("resources exhausted") {
        EngineError::Runtime("the query needed more memory than an executor allows")
    } else if ["executor", "no alive", "connect", "transport", "lost"]
        .iter()
        .any(|w| text.contains(w))
    {
        EngineError::Runtime("the cluster could not finish the query (an executor was lost)")
    } else {
        kura_engine::error::runtime(e)
    };
    DataFusionError::External(Box::new(reduced))
}
