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
use kura_engine::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use kura_engine::datafusion::execution::session_state::SessionStateBuilder;
use kura_engine::datafusion::physical_plan::ExecutionPlan;
use kura_engine::{Compute, RecordBatch};

use crate::codec::{Codec, OpenStore, Stores, wrap_scans};
use crate::tls::{Authority, Membership, TlsError};

/// The scheduler and the authority of one coordinator start.
pub struct Coordinator {
    authority: Authority,
    membership: Membership,
    addr: SocketAddr,
    codec: Arc<Codec>,
    scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    task: tokio::task::JoinHandle<()>,
    /// How long one job may take before its run is refused.
    job_limit: std::time::Duration,
    /// What executors deleted after the jobs since [`Coordinator::take_deletions`].
    deletions: std::sync::Mutex<std::collections::BTreeMap<String, Deletion>>,
}

/// What one executor did when asked to delete what jobs left on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// It forgot the keys of its sealed files and removed them.
    Deleted(crate::shuffle::Deleted),
    /// It could not be asked (lost: its keys went with its memory).
    Unreachable,
}

impl Deletion {
    /// What an executor did over several jobs: the sum of its deletions, or unreachable if it
    /// was unreachable once.
    fn merge(noted: Option<Self>, outcome: Self) -> Self {
        match (noted, outcome) {
            (None, outcome) => outcome,
            (Some(Self::Deleted(a)), Self::Deleted(b)) => Self::Deleted(crate::shuffle::Deleted {
                files: a.files + b.files,
            }),
            _ => Self::Unreachable,
        }
    }
}

/// How long one job may take by default.
pub const JOB_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long an executor may go without polling before the scheduler gives it up.
pub const EXECUTOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
        let membership = authority.coordinator()?;
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
            // An executor that stops polling (killed, cut off) is given up after a few seconds,
            // and its tasks run again on the others.
            executor_timeout_seconds: EXECUTOR_TIMEOUT.as_secs(),
            expire_dead_executor_interval_seconds: 1,
            no_executors_grace_period_seconds: EXECUTOR_TIMEOUT.as_secs(),
            ..config
        });
        let session_config = session_config(&membership, &codec);
        let producer = Arc::new(move || session_config.clone());
        let cluster = BallistaCluster::new_memory(
            addr.to_string(),
            Arc::new(|config| {
                let state = ballista_core::utils::default_session_builder(config)?;
                let runtime = RuntimeEnvBuilder::new()
                    .with_object_store_registry(Arc::new(Stores::default()))
                    .build_arc()?;
                Ok(SessionStateBuilder::new_from_existing(state)
                    .with_runtime_env(runtime)
                    .build())
            }),
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
        let scheduler = server.clone();
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
            scheduler,
            task,
            job_limit: JOB_LIMIT,
            deletions: Default::default(),
        })
    }

    /// What executors deleted after the jobs since the last call, by executor (an executor
    /// unreachable once counts as unreachable).
    pub fn take_deletions(&self) -> std::collections::BTreeMap<String, Deletion> {
        std::mem::take(
            &mut *self
                .deletions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The executors the scheduler knows, each with when it last heard from it.
    async fn executors(
        &self,
    ) -> Vec<(
        ballista_core::serde::scheduler::ExecutorMetadata,
        Option<std::time::Duration>,
    )> {
        let state = self
            .scheduler
            .state
            .executor_manager
            .get_executors_state()
            .await;
        state
            .map(|all| all.into_iter().map(|(m, seen, _)| (m, seen)).collect())
            .unwrap_or_default()
    }

    /// Has every executor the scheduler knows delete what `session`'s jobs left on it (all at
    /// once: a lost one costs its connection timeout once, not once per executor before it),
    /// and notes what each did.
    async fn delete(&self, session: &str) {
        let asked = self.executors().await.into_iter().map(|(metadata, _)| async move {
            let outcome = match crate::shuffle::ask_delete(
                &self.membership,
                &metadata.id,
                &metadata.host,
                metadata.port,
                session,
            )
            .await
            {
                Ok(deleted) => Deletion::Deleted(deleted),
                Err(e) => {
                    tracing::warn!(executor = %metadata.id, error = %e, "an executor could not be asked to delete a job's files");
                    Deletion::Unreachable
                }
            };
            (metadata.id, outcome)
        });
        let answers = futures_util::future::join_all(asked).await;
        let mut deletions = self
            .deletions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (executor, outcome) in answers {
            let noted = deletions.remove(&executor);
            deletions.insert(executor, Deletion::merge(noted, outcome));
        }
    }

    /// With another limit on how long one job may take.
    pub fn with_job_limit(mut self, limit: std::time::Duration) -> Self {
        self.job_limit = limit;
        self
    }

    /// The executors that polled the scheduler within the last [`EXECUTOR_TIMEOUT`].
    pub async fn alive(&self) -> Vec<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut alive: Vec<String> = self
            .executors()
            .await
            .into_iter()
            .filter(|(_, seen)| seen.is_some_and(|t| now.saturating_sub(t) < EXECUTOR_TIMEOUT))
            .map(|(metadata, _)| metadata.id)
            .collect();
        alive.sort();
        alive
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

/// The session settings of a node as Ballista's client: TLS with `membership` to every node,
/// and kura's codec.
pub(crate) fn session_config(membership: &Membership, codec: &Arc<Codec>) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_use_tls(true)
        .with_ballista_override_create_grpc_client_endpoint(membership.endpoint_override())
        .with_ballista_physical_extension_codec(codec.clone())
        // Ballista's reader never opens a shuffle file by its path: it fetches other executors'
        // files through their Flight service, and an executor's own are opened by kura
        // ([`crate::shuffle`]).
        .with_ballista_shuffle_reader_force_remote_read(true)
        .with_ballista_shuffle_reader_remote_prefer_flight(true)
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
        // The job's name is how executors know which query their files belong to.
        let session = uuid();
        let config = config.with_ballista_job_name(&session);
        let job = async {
            let stream = ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
                format!("https://{}", self.addr),
                &config.ballista_config(),
                plan,
                self.codec.as_ref(),
                session.clone(),
                config.clone(),
            )
            .await
            .map_err(reported)?;
            stream.try_collect().await.map_err(reported)
        };
        // A run holds the service's state while it runs: a job the cluster never finishes must
        // not hold it for ever.
        let output = tokio::time::timeout(self.job_limit, job)
            .await
            .unwrap_or_else(|_| {
                Err(DataFusionError::External(Box::new(
                    kura_engine::EngineError::Runtime(
                        "the cluster did not finish the query within its time limit",
                    ),
                )))
            });
        // Whatever the outcome, the output has been read or never will be: nothing the job
        // left on the executors is needed any more.
        self.delete(&session).await;
        output
    }

    fn configure(&self, config: SessionConfig) -> SessionConfig {
        without_dynamic_filters(config)
    }
}

/// The planner's settings for a plan a cluster runs. Dynamic filters link operators inside one
/// process (a join's build side feeds its probe side's scan); Ballista cuts plans into stages
/// on other machines and may swap a join's sides, which a plan with them cannot survive.
pub fn without_dynamic_filters(mut config: SessionConfig) -> SessionConfig {
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.enable_dynamic_filter_pushdown = false;
    optimizer.enable_join_dynamic_filter_pushdown = false;
    optimizer.enable_topk_dynamic_filter_pushdown = false;
    optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    config
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

#[cfg(test)]
mod tests {
    use ballista_core::serde::protobuf::GetJobStatusParams;
    use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
    use tonic::transport::Endpoint;

    use super::*;
    use crate::tls::NodeKey;

    /// A coordinator on a loopback port whose stores cannot be opened.
    async fn storeless() -> Coordinator {
        let open: OpenStore =
            Arc::new(|_| Err(DataFusionError::Execution("no store in this test".into())));
        Coordinator::start("127.0.0.1:0".parse().unwrap(), open)
            .await
            .unwrap()
    }

    /// An executor's deletions add up over jobs, and one unreachable answer marks it for good.
    #[test]
    fn deletions_over_several_jobs_add_up() {
        use crate::shuffle::Deleted;
        let d = |files| Deletion::Deleted(Deleted { files });
        let once = Deletion::merge(None, d(2));
        assert_eq!(once, d(2));
        assert_eq!(Deletion::merge(Some(once), d(3)), d(5));
        let lost = Deletion::merge(Some(once), Deletion::Unreachable);
        assert_eq!(lost, Deletion::Unreachable);
        assert_eq!(Deletion::merge(Some(lost), d(1)), Deletion::Unreachable);
    }

    /// Whether a client with `tls` (or none) gets an answer from the scheduler at all.
    async fn answered(addr: SocketAddr, tls: Option<tonic::transport::ClientTlsConfig>) -> bool {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap();
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let Ok(channel) = endpoint.connect().await else {
            return false;
        };
        let status = SchedulerGrpcClient::new(channel)
            .get_job_status(GetJobStatusParams {
                job_id: "none".into(),
            })
            .await;
        // The scheduler answers a question about an unknown job without an error.
        status.is_ok()
    }

    /// A job the cluster does not finish in time (here: no executor ever joins) is refused in
    /// kura's words, not waited on for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_over_its_time_limit_is_refused() {
        let coordinator = storeless()
            .await
            .with_job_limit(std::time::Duration::from_millis(500));
        let ctx = SessionContext::new();
        let plan = ctx
            .sql("SELECT 1")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let err = coordinator.collect(plan, &ctx).await.unwrap_err();
        assert!(
            matches!(
                kura_engine::error::runtime(err),
                kura_engine::EngineError::Runtime(r) if r.contains("time limit")
            ),
            "refused for another reason"
        );
    }

    /// The scheduler answers only clients with a certificate of this start's authority: not one
    /// in the clear, not one without a certificate, not one certified by another authority.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scheduler_answers_only_members_of_its_authority() {
        let coordinator = storeless().await;
        let addr = coordinator.addr();
        let key = NodeKey::generate().unwrap();
        let member = Membership::new(
            coordinator.authority().to_string(),
            coordinator.admit(&key.public_pem(), "executor-1").unwrap(),
            &key,
        );
        assert!(answered(addr, Some(member.client())).await);

        assert!(!answered(addr, None).await, "in the clear");
        let anonymous = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                coordinator.authority(),
            ))
            .domain_name(crate::tls::SERVER_NAME);
        assert!(
            !answered(addr, Some(anonymous)).await,
            "without a certificate"
        );
        let stranger = Authority::new().unwrap();
        let foreign = Membership::new(
            coordinator.authority().to_string(),
            stranger.certify(&key.public_pem(), "executor-1").unwrap(),
            &key,
        );
        assert!(
            !answered(addr, Some(foreign.client())).await,
            "another authority"
        );
    }
}
