//! Where the client finds what enclave evidence does not carry (a VCEK, DCAP collateral):
//! the on-disk cache, and, when the user allows it, AMD's and Intel's services over HTTPS.
//! See [`kura_attestation::fetch`] for what is fetched and why nothing fetched is trusted.

use std::path::PathBuf;
use std::time::Duration;

use kura_attestation::fetch::{CertStore, Endpoints, Http, HttpResponse, Offline};
use kura_attestation::{AttestationError, Evidence};

/// The network transport for the fetchers: reqwest over rustls (ring), the system's roots.
#[derive(Clone, Debug)]
pub struct ReqwestHttp(reqwest::Client);

impl ReqwestHttp {
    pub fn new() -> Result<Self, String> {
        crate::install_crypto_provider();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map(Self)
            .map_err(|e| format!("cannot set up HTTPS: {e}"))
    }
}

impl Http for ReqwestHttp {
    async fn get(&self, url: &str) -> Result<HttpResponse, String> {
        let resp = self.0.get(url).send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect();
        let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// The cache alone, or the cache backed by the vendors' services.
#[derive(Debug)]
pub enum Certs {
    Offline(CertStore<Offline>),
    Online(CertStore<ReqwestHttp>),
}

impl Certs {
    /// Never touches the network.
    pub fn offline(dir: impl Into<PathBuf>) -> Self {
        Certs::Offline(CertStore::offline(dir))
    }

    /// Fetches what the cache lacks from `endpoints` (AMD KDS, Intel PCS by default).
    pub fn online(dir: impl Into<PathBuf>, endpoints: Endpoints) -> Result<Self, String> {
        Ok(Certs::Online(CertStore::online(
            dir,
            ReqwestHttp::new()?,
            endpoints,
        )))
    }

    pub async fn complete(&self, evidence: &mut Evidence) -> Result<(), AttestationError> {
        match self {
            Certs::Offline(store) => store.complete(evidence).await,
            Certs::Online(store) => store.complete(evidence).await,
        }
    }
}
