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
