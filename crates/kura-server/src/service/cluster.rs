//! The coordinator's cluster: executors join after mutual attestation ([`kura_cluster::join`]),
//! and runs send their counted aggregations to them ([`Service::engine`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_cluster::join::{Admission, Challenge, ChallengeRequest, JoinRequest};
use kura_ledger::Event;
use sha2::{Digest, Sha256};

use super::{Service, store};
use crate::ServiceError;

/// The cluster of one coordinator start.
pub(crate) struct Cluster {
    pub(crate) coordinator: Arc<kura_cluster::Coordinator>,
    /// Executors admitted so far, in order.
    pub(crate) admitted: tokio::sync::Mutex<Admitted>,
    /// Challenges handed out and not yet used, oldest first.
    challenges: std::sync::Mutex<std::collections::VecDeque<(String, Instant)>>,
    /// How many refusals may still be logged now.
    refusals: std::sync::Mutex<Refusals>,
}

/// The executors of this start: their names in order, and their TLS keys.
#[derive(Default)]
pub(crate) struct Admitted {
    pub(crate) names: Vec<String>,
    keys: std::collections::HashSet<String>,
}

/// Most challenges outstanding at once: a new one beyond it retires the oldest, so that
/// asking for challenges costs the coordinator a bounded amount of memory.
const CHALLENGES: usize = 16;

/// Refusals logged at once, and how often one more may be: whoever can reach the join route
/// can make refusals at will, and must not grow the signed log at will.
const REFUSAL_BURST: u32 = 5;
const REFUSAL_EVERY: Duration = Duration::from_secs(60);

/// A bucket of refusals that may be logged, refilled at one per [`REFUSAL_EVERY`].
struct Refusals {
    tokens: u32,
    since: Instant,
    /// Refusals not logged since the last one that was.
    unlogged: u64,
}

impl Refusals {
    fn new() -> Self {
        Self {
            tokens: REFUSAL_BURST,
            since: Instant::now(),
            unlogged: 0,
        }
    }

    /// Whether a refusal may be logged now: `Some(refusals not logged before it)`.
    fn take(&mut self) -> Option<u64> {
        let now = Instant::now();
        let earned = now.duration_since(self.since).as_secs() / REFUSAL_EVERY.as_secs();
        if earned > 0 {
            self.tokens = (self.tokens as u64 + earned).min(REFUSAL_BURST as u64) as u32;
            self.since += REFUSAL_EVERY * earned as u32;
        }
        if self.tokens == 0 {
            self.unlogged += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// A TLS key (PEM) as compared: the hash of its DER ([`kura_attestation::tls_key_id`]), or the
/// text itself when it has none (the authority refuses to certify it then).
fn key_of(pem: &str) -> String {
    kura_attestation::tls_key_id(pem).unwrap_or_else(|| pem.to_string())
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
            admitted: tokio::sync::Mutex::default(),
            challenges: std::sync::Mutex::default(),
            refusals: std::sync::Mutex::new(Refusals::new()),
        })
    }
}

impl Service {
    fn cluster(&self) -> Result<&Cluster, ServiceError> {
        self.cluster.as_ref().ok_or_else(|| {
            ServiceError::NotFound("this service runs no cluster (kura serve --cluster)".into())
        })
    }

    /// A challenge for one join (`body` is the executor's [`ChallengeRequest`]): accepted once,
    /// within [`kura_cluster::join::CHALLENGE_LIFETIME`].
    pub(crate) fn challenge(&self, body: &str) -> Result<Challenge, ServiceError> {
        let cluster = self.cluster()?;
        let _: ChallengeRequest = serde_json::from_str(body)
            .map_err(|e| ServiceError::BadRequest(format!("a malformed challenge request: {e}")))?;
        let challenge = format!("{}{}", kura_api::nonce(), kura_api::nonce());
        let mut outstanding = cluster.challenges.lock().unwrap_or_else(|e| e.into_inner());
        if outstanding.len() >= CHALLENGES {
            outstanding.pop_front();
        }
        outstanding.push_back((challenge.clone(), Instant::now()));
        Ok(Challenge { challenge })
    }

    /// Takes `challenge` back if this start handed it out, it is unused and not expired.
    fn spend(cluster: &Cluster, challenge: &str) -> bool {
        let mut outstanding = cluster.challenges.lock().unwrap_or_else(|e| e.into_inner());
        let lifetime = kura_cluster::join::CHALLENGE_LIFETIME;
        outstanding.retain(|(_, at)| at.elapsed() < lifetime);
        match outstanding.iter().position(|(c, _)| c == challenge) {
            Some(i) => outstanding.remove(i).is_some(),
            None => false,
        }
    }

    /// Admits an executor that answers a challenge of this start with evidence that verifies
    /// against the contract's `[enclave]` policy and binds the contract, its TLS key (not one
    /// admitted before in this start) and the challenge: logs it, and certifies the key.
    /// Anything else is refused and logged (at a bounded rate), and the executor gets nothing.
    pub(crate) async fn join(&self, body: &str) -> Result<Admission, ServiceError> {
        let cluster = self.cluster()?;
        let request: JoinRequest = serde_json::from_str(body)
            .map_err(|e| ServiceError::BadRequest(format!("a malformed join request: {e}")))?;
        let digest = hex::encode(Sha256::digest(
            serde_json::to_vec(&request.evidence).expect("evidence serialises"),
        ));
        let mut admitted = cluster.admitted.lock().await;
        let verified = if request.contract_id != self.contract.id().as_str() {
            Err("the executor is for another contract".to_string())
        } else if !Self::spend(cluster, &request.challenge) {
            Err(
                "its challenge was not handed out by this start, was used already, or has \
                 expired: ask for a new one"
                    .to_string(),
            )
        } else if admitted.keys.contains(&key_of(&request.tls_key)) {
            Err("its TLS key was already admitted in this start".to_string())
        } else {
            kura_attestation::verify_executor(
                &request.evidence,
                &self.contract.enclave,
                self.contract.id(),
                &request.tls_key,
                Some(&request.challenge),
                None,
            )
            .map(|_| ())
            .map_err(|e| format!("its evidence does not verify against the contract: {e}"))
        };
        if let Err(reason) = verified {
            drop(admitted);
            tracing::warn!(%reason, "an executor was refused");
            let logged = cluster
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(unlogged_before) = logged {
                self.log(Event::ExecutorRefused {
                    reason: reason.clone(),
                    evidence_sha256: digest,
                    unlogged_before,
                })
                .await?;
            }
            return Err(ServiceError::Refused(reason));
        }
        let executor = format!("executor-{}-{}", admitted.names.len() + 1, &digest[..12]);
        let certificate = cluster
            .coordinator
            .admit(&request.tls_key, &executor)
            .map_err(|e| ServiceError::BadRequest(format!("the executor's TLS key: {e}")))?;
        self.log(Event::ExecutorJoined {
            executor: executor.clone(),
            tls_key: request.tls_key.clone(),
            evidence: request.evidence,
            challenge: Some(request.challenge),
        })
        .await?;
        admitted.names.push(executor.clone());
        admitted.keys.insert(key_of(&request.tls_key));
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
        let admitted = cluster.admitted.lock().await.names.clone();
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
