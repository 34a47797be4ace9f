//! The coordinator's cluster: executors join after mutual attestation ([`kura_cluster::join`]),
//! and runs send their counted aggregations to them ([`Service::engine`]).

use std::sync::Arc;

use kura_cluster::join::{Admission, JoinRequest};
use kura_ledger::Event;
use sha2::{Digest, Sha256};

use super::{Service, store};
use crate::ServiceError;

/// The cluster of one coordinator start.
pub(crate) struct Cluster {
    pub(crate) coordinator: Arc<kura_cluster::Coordinator>,
    /// Executors admitted so far, in order.
    pub(crate) admitted: tokio::sync::Mutex<Vec<String>>,
}

/// Opens a dataset's store from its origin, for the cluster's codec.
pub(crate) fn open_store() -> kura_cluster::codec::OpenStore {
    Arc::new(|origin: &str| {
        store::open_origin(origin)
            .map_err(|e| kura_engine::datafusion::error::DataFusionError::External(Box::new(e)))
    })
}

impl Cluster {
    pub(crate) async fn start(listen: std::net::SocketAddr) -> Result<Self, ServiceError> {
        // Executors are told this address: it must be one they can reach.
        if listen.ip().is_unspecified() {
            return Err(ServiceError::Start(format!(
                "--cluster {listen}: give the address executors reach the scheduler at, not \
                 an unspecified one"
            )));
        }
        let coordinator = kura_cluster::Coordinator::start(listen, open_store())
            .await
            .map_err(|e| ServiceError::Start(format!("the cluster's scheduler: {e}")))?;
        tracing::info!(scheduler = %coordinator.addr(), "the cluster's scheduler listens (mutual TLS, attested executors only)");
        Ok(Self {
            coordinator: Arc::new(coordinator),
            admitted: tokio::sync::Mutex::new(Vec::new()),
        })
    }
}

impl Service {
    /// Admits an executor whose evidence verifies against the contract's `[enclave]` policy and
    /// binds its TLS key: logs it, and certifies the key. Anything else is refused and logged,
    /// and the executor gets nothing.
    pub(crate) async fn join(&self, body: &str) -> Result<Admission, ServiceError> {
        let cluster = self.cluster.as_ref().ok_or_else(|| {
            ServiceError::NotFound("this service runs no cluster (kura serve --cluster)".into())
        })?;
        let request: JoinRequest = serde_json::from_str(body)
            .map_err(|e| ServiceError::BadRequest(format!("a malformed join request: {e}")))?;
        let digest = hex::encode(Sha256::digest(
            serde_json::to_vec(&request.evidence).expect("evidence serialises"),
        ));
        let verified = if request.contract_id != self.contract.id().as_str() {
            Err("the executor is for another contract".to_string())
        } else {
            kura_attestation::verify_executor(
                &request.evidence,
                &self.contract.enclave,
                self.contract.id(),
                &request.tls_key,
                None,
            )
            .map_err(|e| format!("its evidence does not verify against the contract: {e}"))
        };
        if let Err(reason) = verified {
            tracing::warn!(%reason, "an executor was refused");
            self.log(Event::ExecutorRefused {
                reason: reason.clone(),
                evidence_sha256: digest,
            })
            .await?;
            return Err(ServiceError::Refused(reason));
        }
        let mut admitted = cluster.admitted.lock().await;
        let executor = format!("executor-{}-{}", admitted.len() + 1, &digest[..12]);
        let certificate = cluster
            .coordinator
            .admit(&request.tls_key, &executor)
            .map_err(|e| ServiceError::BadRequest(format!("the executor's TLS key: {e}")))?;
        self.log(Event::ExecutorJoined {
            executor: executor.clone(),
            tls_key: request.tls_key,
            evidence: request.evidence,
        })
        .await?;
        admitted.push(executor.clone());
        tracing::info!(%executor, "an executor joined the cluster");
        Ok(Admission {
            executor,
            scheduler: cluster.coordinator.addr().to_string(),
            authority: cluster.coordinator.authority().to_string(),
            certificate,
        })
    }

    /// The executors a run may use now: the live ones this start admitted (none without a
    /// cluster, or before the first joins, or after the last is lost).
    pub(crate) async fn executors(&self) -> Vec<String> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let admitted = cluster.admitted.lock().await.clone();
        cluster
            .coordinator
            .alive()
            .await
            .into_iter()
            .filter(|e| admitted.contains(e))
            .collect()
    }

    /// [`Service::engine`] on the executors alive now; also returns which they were, for the
    /// run's entry.
    pub(crate) async fn on_cluster<F: std::future::Future>(
        &self,
        f: F,
    ) -> Result<(F::Output, Vec<String>), ServiceError> {
        let on = self.executors().await;
        let output = self.engine(&on, f).await?;
        Ok((output, on))
    }

    /// Runs `f` (an engine call) with this service's memory limit, its counted aggregations on
    /// the cluster when `executors` (from [`Service::executors`]) names any, else on the
    /// coordinator alone. A run on the cluster is followed by the executors' deletion of what
    /// it left on them, logged (`shuffle_deleted`) before the run's own entry.
    pub(crate) async fn engine<F: std::future::Future>(
        &self,
        executors: &[String],
        f: F,
    ) -> Result<F::Output, ServiceError> {
        let limited = kura_engine::with_memory_limit(self.query_memory, f);
        let Some(cluster) = self.cluster.as_ref().filter(|_| !executors.is_empty()) else {
            return Ok(limited.await);
        };
        let compute: Arc<dyn kura_engine::Compute> = cluster.coordinator.clone();
        let output = kura_engine::with_compute(compute, limited).await;
        let deletions = cluster.coordinator.take_deletions();
        if !deletions.is_empty() {
            let (mut deleted, mut unreachable) = (Vec::new(), Vec::new());
            for (executor, outcome) in deletions {
                match outcome {
                    kura_cluster::coordinator::Deletion::Deleted(_) => deleted.push(executor),
                    kura_cluster::coordinator::Deletion::Unreachable => unreachable.push(executor),
                }
            }
            self.log(Event::ShuffleDeleted {
                executors: deleted,
                unreachable,
            })
            .await?;
        }
        Ok(output)
    }
}
