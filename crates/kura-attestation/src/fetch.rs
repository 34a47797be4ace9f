//! What evidence does not carry, from the vendors' services, through an on-disk cache.
//!
//! An SEV-SNP report needs its chip's VCEK (AMD's Key Distribution Service serves it by chip id
//! and reported TCB); a TDX or SGX quote needs Intel's collateral (TCB info, QE identity and
//! CRLs from the Provisioning Certification Service, for the platform's FMSPC). Neither is
//! secret and neither is trusted: everything fetched is verified against the pinned roots like
//! evidence that came with the report, so a wrong or stale answer can only cause a refusal.
//!
//! A [`CertStore`] looks in its cache directory first. Offline (the default) it never touches
//! the network, and says precisely what is missing. Online it fetches what the cache lacks
//! through an [`Http`] transport supplied by the caller, so that this crate itself stays free of
//! network code; VCEKs are cached for good (they are fixed by chip and TCB), DCAP collateral is
//! refetched after a day (Intel reissues it; offline, the cached copy is used at any age and the
//! verifier reports if it has expired).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kura_contract::Platform;

use crate::{AttestationError, Evidence};

/// AMD's Key Distribution Service.
pub const AMD_KDS: &str = "https://kdsintf.amd.com";
/// Intel's Provisioning Certification Service (API v4).
pub const INTEL_PCS: &str = "https://api.trustedservices.intel.com";
/// Where Intel publishes the CRL of its SGX root CA.
pub const INTEL_ROOT_CRL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";

/// How long fetched DCAP collateral is reused before asking Intel again.
pub const COLLATERAL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// An HTTP answer, as much of it as the fetchers need.
#[derive(Clone, Debug, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// A GET over the network; implemented by the client with its HTTP stack.
pub trait Http: Sync {
    fn get(&self, url: &str) -> impl Future<Output = Result<HttpResponse, String>> + Send;
}

/// The transport of an offline store: it is never called.
#[derive(Clone, Copy, Debug)]
pub struct Offline;

impl Http for Offline {
    async fn get(&self, url: &str) -> Result<HttpResponse, String> {
        Err(format!("offline: not fetching {url}"))
    }
}

/// The services asked (overridable for a PCCS, a KDS proxy, or tests).
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub kds: String,
    pub pcs: String,
    pub intel_root_crl: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            kds: AMD_KDS.into(),
            pcs: INTEL_PCS.into(),
            intel_root_crl: INTEL_ROOT_CRL.into(),
        }
    }
}

/// Certificates and collateral on disk, and optionally from the network.
#[derive(Debug)]
pub struct CertStore<H = Offline> {
    dir: PathBuf,
    http: Option<H>,
    endpoints: Endpoints,
}

impl CertStore<Offline> {
    /// Looks only in `dir`; never touches the network.
    pub fn offline(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            http: None,
            endpoints: Endpoints::default(),
        }
    }
}

impl<H: Http> CertStore<H> {
    /// Looks in `dir`, and fetches what is missing (or stale) through `http`.
    pub fn online(dir: impl Into<PathBuf>, http: H, endpoints: Endpoints) -> Self {
        Self {
            dir: dir.into(),
            http: Some(http),
            endpoints,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_online(&self) -> bool {
        self.http.is_some()
    }

    /// Adds to `evidence` what its verification needs and it lacks: the VCEK of an SEV-SNP
    /// report, the collateral of a DCAP quote. Evidence that is already complete, and platforms
    /// that need nothing more, are left alone.
    pub async fn complete(&self, evidence: &mut Evidence) -> Result<(), AttestationError> {
        match evidence.platform {
            #[cfg(feature = "sev-snp")]
            Platform::SevSnp => self.complete_snp(evidence).await,
            #[cfg(any(feature = "tdx", feature = "sgx"))]
            Platform::Tdx | Platform::Sgx => self.complete_dcap(evidence).await,
            _ => Ok(()),
        }
    }

    #[cfg(feature = "sev-snp")]
    async fn complete_snp(&self, evidence: &mut Evidence) -> Result<(), AttestationError> {
        use sev::firmware::guest::AttestationReport;
        use sev::parser::ByteParser;

        if crate::sev_snp::has_signing_key(&evidence.certs) {
            return Ok(());
        }
        let raw = crate::sev_snp::decode_report(&evidence.data)?;
        let report = AttestationReport::from_bytes(&raw)
            .map_err(|e| AttestationError::Malformed(format!("SNP report: {e}")))?;
        if report.key_info.signing_key() == 1 {
            return Err(AttestationError::Unavailable(
                "the report is signed by a VLEK, which AMD serves only to cloud providers: \
                 pass the VLEK (and ASVK) with --certs"
                    .into(),
            ));
        }
        if report.chip_id.iter().all(|b| *b == 0) {
            return Err(AttestationError::Unavailable(
                "the report hides its chip id (MASK_CHIP_ID), so its VCEK cannot be looked up: \
                 pass it with --certs"
                    .into(),
            ));
        }
        let tcb = report.reported_tcb;
        let products = crate::sev_snp::products_of(&report);
        let mut first = None;
        for &product in &products {
            // Turin VCEKs are indexed by the first 8 bytes of the chip id, and carry the FMC SVN.
            let (hwid, query) = if product == "Turin" {
                (
                    &report.chip_id[..8],
                    format!(
                        "fmcSPL={}&blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                        tcb.fmc.unwrap_or(0),
                        tcb.bootloader,
                        tcb.tee,
                        tcb.snp,
                        tcb.microcode
                    ),
                )
            } else {
                (
                    &report.chip_id[..],
                    format!(
                        "blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
                    ),
                )
            };
            let hwid = hex::encode(hwid);
            let url = format!(
                "{}/vcek/v1/{product}/{hwid}?{query}",
                self.endpoints.kds.trim_end_matches('/')
            );
            let name = format!(
                "vcek-{product}-{hwid}-{}.der",
                query.replace(['&', '='], "-")
            );
            let what = format!("the {product} VCEK of chip {}…", &hwid[..16]);
            let fetch = || async { Ok(self.get_ok(&url).await?.body) };
            match self.cached_or_fetch(&name, &what, None, fetch).await {
                Ok(der) => {
                    evidence.certs.push(der);
                    return Ok(());
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        let first = first.expect("at least one product is tried");
        Err(match first {
            AttestationError::Unavailable(text) if products.len() > 1 => {
                AttestationError::Unavailable(format!(
                    "{text} (the report does not name its product; tried {})",
                    products.join(", ")
                ))
            }
            other => other,
        })
    }

    #[cfg(any(feature = "tdx", feature = "sgx"))]
    async fn complete_dcap(&self, evidence: &mut Evidence) -> Result<(), AttestationError> {
        if evidence.collateral.is_some() {
            return Ok(());
        }
        let quote = crate::dcap::decode_quote(&evidence.data);
        let parsed = dcap_qvl::quote::Quote::parse(&quote)
            .map_err(|e| AttestationError::Malformed(format!("DCAP quote: {e:#}")))?;
        let fmspc = dcap_qvl::intel::quote_fmspc(&parsed)
            .map_err(|e| AttestationError::Malformed(format!("PCK certificate: {e:#}")))?;
        let ca = dcap_qvl::intel::quote_ca(&parsed)
            .map_err(|e| AttestationError::Malformed(format!("PCK certificate: {e:#}")))?;
        let tee = if parsed.header.is_sgx() { "sgx" } else { "tdx" };
        let fmspc = hex::encode(fmspc);
        let name = format!("dcap-{tee}-{fmspc}-{}.json", ca.as_id_str());
        let what = format!("Intel's {tee} collateral for FMSPC {fmspc}");
        let collateral = self
            .cached_or_fetch(&name, &what, Some(COLLATERAL_MAX_AGE), || {
                self.fetch_collateral(tee, &fmspc, ca.as_id_str())
            })
            .await?;
        evidence.collateral = Some(collateral);
        Ok(())
    }

    /// The PCS answers, assembled into dcap-qvl's collateral layout.
    #[cfg(any(feature = "tdx", feature = "sgx"))]
    async fn fetch_collateral(
        &self,
        tee: &str,
        fmspc: &str,
        ca: &str,
    ) -> Result<Vec<u8>, AttestationError> {
        #[derive(serde::Deserialize)]
        struct Signed<'a> {
            #[serde(borrow, alias = "tcbInfo", alias = "enclaveIdentity")]
            body: &'a serde_json::value::RawValue,
            signature: String,
        }
        let base = self.endpoints.pcs.trim_end_matches('/');
        let malformed = |what: &str, e: &dyn std::fmt::Display| {
            AttestationError::Unavailable(format!("the PCS answer for {what} is unreadable: {e}"))
        };
        // The signature covers the exact bytes of the "tcbInfo" / "enclaveIdentity" member, so
        // it is taken verbatim, never re-serialised.
        let signed = |what: &str, body: &[u8]| -> Result<(String, Vec<u8>), AttestationError> {
            let s: Signed<'_> = serde_json::from_slice(body).map_err(|e| malformed(what, &e))?;
            let sig = hex::decode(&s.signature).map_err(|e| malformed(what, &e))?;
            Ok((s.body.get().to_string(), sig))
        };

        let pck_crl = self
            .get_ok(&format!(
                "{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"
            ))
            .await?;
        let tcb = self
            .get_ok(&format!(
                "{base}/{tee}/certification/v4/tcb?fmspc={fmspc}&update=standard"
            ))
            .await?;
        let qe = self
            .get_ok(&format!(
                "{base}/{tee}/certification/v4/qe/identity?update=standard"
            ))
            .await?;
        let root_crl = self.get_ok(&self.endpoints.intel_root_crl).await?;
        let (tcb_info, tcb_info_signature) = signed("TCB info", &tcb.body)?;
        let (qe_identity, qe_identity_signature) = signed("QE identity", &qe.body)?;
        let collateral = dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: issuer_chain(&pck_crl, &["sgx-pck-crl-issuer-chain"])?,
            root_ca_crl: root_crl.body,
            pck_crl: pck_crl.body,
            tcb_info_issuer_chain: issuer_chain(
                &tcb,
                &["tcb-info-issuer-chain", "sgx-tcb-info-issuer-chain"],
            )?,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain: issuer_chain(&qe, &["sgx-enclave-identity-issuer-chain"])?,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        };
        serde_json::to_vec(&collateral).map_err(|e| AttestationError::Unavailable(e.to_string()))
    }

    /// A successful GET, or the reason it failed.
    async fn get_ok(&self, url: &str) -> Result<HttpResponse, AttestationError> {
        let http = self
            .http
            .as_ref()
            .ok_or_else(|| AttestationError::Unavailable(format!("offline: not fetching {url}")))?;
        let resp = http
            .get(url)
            .await
            .map_err(|e| AttestationError::Unavailable(format!("fetching {url}: {e}")))?;
        if !(200..300).contains(&resp.status) {
            return Err(AttestationError::Unavailable(format!(
                "fetching {url}: HTTP {}",
                resp.status
            )));
        }
        Ok(resp)
    }

    /// The cached file `name`, if present (and, online, younger than `max_age`); otherwise the
    /// fetched bytes, written to the cache atomically. Offline, a miss names what is missing.
    async fn cached_or_fetch<F, Fut>(
        &self,
        name: &str,
        what: &str,
        max_age: Option<Duration>,
        fetch: F,
    ) -> Result<Vec<u8>, AttestationError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, AttestationError>>,
    {
        let path = self.dir.join(name);
        let fresh = |meta: &std::fs::Metadata| {
            !self.is_online()
                || max_age.is_none_or(|max| {
                    meta.modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age < max)
                })
        };
        if let Ok(meta) = std::fs::metadata(&path)
            && fresh(&meta)
        {
            return std::fs::read(&path).map_err(|e| {
                AttestationError::Unavailable(format!("reading {}: {e}", path.display()))
            });
        }
        if !self.is_online() {
            return Err(AttestationError::Unavailable(format!(
                "{what} is not in the cache ({}) and fetching is off: allow fetching (--fetch) \
                 or give it on the command line",
                self.dir.display()
            )));
        }
        let bytes = fetch().await?;
        write_atomically(&path, &bytes).map_err(|e| {
            AttestationError::Unavailable(format!("caching {}: {e}", path.display()))
        })?;
        Ok(bytes)
    }
}

/// A PEM issuer chain from a PCS header (URL-encoded there).
#[cfg(any(feature = "tdx", feature = "sgx"))]
fn issuer_chain(resp: &HttpResponse, names: &[&str]) -> Result<String, AttestationError> {
    let value = names
        .iter()
        .find_map(|n| resp.headers.get(*n))
        .ok_or_else(|| {
            AttestationError::Unavailable(format!("the PCS answer lacks the {} header", names[0]))
        })?;
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| {
            AttestationError::Unavailable(format!(
                "the {} header is not URL-encoded text",
                names[0]
            ))
        })
}

/// Writes `bytes` to `path` so that a reader sees the old file or the whole new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
