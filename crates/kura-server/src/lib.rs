//! The enclave service (`kura serve`): holds the decrypted data, runs the analyses, seals the
//! results, and keeps the log.
//!
//! It starts only on a contract signed by every party; creates fresh keys at every start;
//! obtains evidence binding those keys to the contract; accepts uploads only from each
//! dataset's provider; and lets nothing out but rule-checked results sealed to their
//! receivers. All I/O of the service lives here (HTTP in [`http`], the state directory in
//! [`Service`]); the crates below it do none.

mod error;
mod evidence;
mod http;
mod service;
pub mod tsm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kura_contract::{Platform, SignedContract};

pub use error::ServiceError;
pub use service::Service;

/// How to start the service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Only a contract signed by every party can be served.
    pub contract: SignedContract,
    pub platform: Platform,
    pub listen: SocketAddr,
    /// Holds the audit log. Created if absent.
    pub state_dir: PathBuf,
    /// Largest accepted upload (ciphertext bytes).
    pub max_upload_bytes: u64,
    /// Most memory one query's operators may hold; a query that needs more is refused (nothing
    /// spills to the host's disk), and the service and its data stay.
    pub query_memory_bytes: u64,
    /// Certificates handed out with the evidence, besides those the hardware gives (untrusted;
    /// clients verify them against the pinned roots).
    pub evidence_certs: Vec<Vec<u8>>,
    /// DCAP collateral handed out with TDX or SGX evidence (untrusted; Intel signs it).
    pub evidence_collateral: Option<Vec<u8>>,
    /// The service's own store of datasets at rest (encrypted files only); default
    /// `state_dir/store`. A provider can name its own bucket instead.
    pub store_dir: Option<PathBuf>,
    /// Where the cluster's scheduler listens for attested executors (mutual TLS), if this
    /// service coordinates a cluster.
    pub cluster: Option<SocketAddr>,
}

impl Config {
    pub const DEFAULT_MAX_UPLOAD: u64 = 16 << 30;
    pub const DEFAULT_QUERY_MEMORY: u64 = kura_engine::DEFAULT_QUERY_MEMORY as u64;
}

/// A running service; dropping it (or calling [`Running::shutdown`]) stops it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Creates the service (keys, evidence, log) and starts serving HTTP on `config.listen`.
/// Refuses a contract whose analyses do not check against its schemas, before anything listens
/// or is written.
pub async fn start(config: Config) -> Result<Running, ServiceError> {
    kura_engine::check_analyses(&config.contract)
        .await
        .map_err(|e| ServiceError::Start(format!("the contract's analyses are invalid: {e}")))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServiceError::Start(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServiceError::Start(e.to_string()))?;
    let service = Arc::new(Service::create(&config).await?);
    service.spawn_retention_timer();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = http::router(service.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    Ok(Running {
        addr,
        service,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// How to start a cluster executor (`kura-enclave --join URL`).
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The contract the coordinator serves; the executor verifies the coordinator against it.
    pub contract: SignedContract,
    pub platform: Platform,
    /// The coordinator's service URL (its kura API, where it attests and admits executors).
    pub coordinator: String,
    /// Where this executor's Flight service listens (a free port when the port is 0).
    pub listen: SocketAddr,
    /// Its working directory for shuffle files (default: a fresh directory in /dev/shm, a
    /// tmpfs, when there is one).
    pub work_dir: Option<PathBuf>,
    /// Tasks it runs at once (default: its cores).
    pub slots: Option<usize>,
    /// Most memory its tasks' operators may hold, in bytes.
    pub memory_bytes: u64,
    /// Certificates to send with its evidence (as for the service).
    pub evidence_certs: Vec<Vec<u8>>,
}

/// Runs a cluster executor until it is stopped: attests to the coordinator and verifies it
/// (each against the contract), then runs Ballista's executor over mutual TLS. Fails, having
/// received nothing, if either side's evidence does not verify.
pub async fn run_executor(config: ExecutorConfig) -> Result<(), ServiceError> {
    let contract = config.contract.contract().clone();
    let key =
        kura_cluster::tls::NodeKey::generate().map_err(|e| ServiceError::Start(e.to_string()))?;
    let public = key.public_pem();
    let (coordinator, admission) =
        kura_cluster::join::join(&config.coordinator, &contract, &public, |report_data| {
            let mut evidence =
                evidence::collect(config.platform, report_data).map_err(|e| e.to_string())?;
            evidence.certs.extend(config.evidence_certs.iter().cloned());
            Ok(evidence)
        })
        .await
        .map_err(|e| ServiceError::Start(e.to_string()))?;
    tracing::info!(
        executor = %admission.executor,
        coordinator = %coordinator.key.fingerprint(),
        scheduler = %admission.scheduler,
        "admitted to the cluster after mutual attestation"
    );
    let listen = if config.listen.port() == 0 {
        // Ballista announces the port it is given: pick a free one now.
        let probe = std::net::TcpListener::bind(config.listen)
            .map_err(|e| ServiceError::Start(format!("cannot listen on {}: {e}", config.listen)))?;
        probe
            .local_addr()
            .map_err(|e| ServiceError::Start(e.to_string()))?
    } else {
        config.listen
    };
    let temporary;
    let work_dir = match config.work_dir {
        Some(dir) => dir,
        // Shuffle files are plaintext Arrow IPC (until kura encrypts them): by default they go
        // to a tmpfs, which in a confidential VM is the enclave's encrypted memory.
        None => {
            let shm = std::path::Path::new("/dev/shm");
            temporary = if shm.is_dir() {
                tempfile::tempdir_in(shm)
            } else {
                tempfile::tempdir()
            }
            .map_err(|e| ServiceError::Start(format!("no working directory: {e}")))?;
            temporary.path().to_path_buf()
        }
    };
    let announce = format!("kura executor {} serving on {listen}", admission.executor);
    kura_cluster::executor::run(
        admission,
        &key,
        kura_cluster::executor::Options {
            listen,
            advertise: None,
            work_dir,
            slots: config
                .slots
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            memory_bytes: config.memory_bytes,
        },
        service::open_store(),
        move || {
            // On stdout, flushed: scripts and tests wait for it.
            println!("{announce}");
            std::io::Write::flush(&mut std::io::stdout()).ok();
        },
    )
    .await
    .map_err(|e| ServiceError::Start(format!("the executor stopped: {e}")))
}
