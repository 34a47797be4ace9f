//! Attestation evidence: what the enclave presents, how a client verifies it, and how the
//! result is appraised against a contract's `[enclave]` policy.
//!
//! One [`Verifier`] per platform returns typed [`Claims`]; [`appraise`] then checks the claims
//! against the contract (platform listed, measurement accepted, debug refused unless allowed)
//! and [`check_binding`] checks that the report data binds the contract id and the enclave's
//! public keys. Real hardware platforms plug in behind the same trait; the simulated platform
//! is always compiled so that everything can be tested without a TEE, and it protects nothing.
//!
//! This crate never touches the engine or the network.

#[cfg(any(feature = "sev-snp", feature = "nitro"))]
mod cache;
#[cfg(any(feature = "tdx", feature = "sgx"))]
pub mod dcap;
mod error;
pub mod fetch;
#[cfg(feature = "nitro")]
pub mod nitro;
#[cfg(feature = "sev-snp")]
pub mod sev_snp;
pub mod simulated;

use std::collections::BTreeMap;

use kura_contract::{ContractId, EnclavePolicy, Platform};
use kura_crypto::PublicIdentity;
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use error::AttestationError;

/// Evidence as it travels: the platform and its native encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub platform: Platform,
    #[serde(with = "kura_crypto::b64::serde_bytes")]
    pub data: Vec<u8>,
    /// Certificates the platform hands out with the evidence (SEV-SNP: VCEK or VLEK, ASK, ARK,
    /// DER). Untrusted: verified against the pinned roots like any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "b64_list")]
    pub certs: Vec<Vec<u8>>,
    /// Intel DCAP collateral for a TDX or SGX quote (dcap-qvl JSON), when the enclave's
    /// operator serves it. Untrusted like the certificates: Intel's root signs it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "kura_crypto::b64::serde_opt_bytes"
    )]
    pub collateral: Option<Vec<u8>>,
}

impl Evidence {
    /// Evidence that carries no certificates (they come from elsewhere, or are not needed).
    pub fn new(platform: Platform, data: Vec<u8>) -> Self {
        Self {
            platform,
            data,
            certs: vec![],
            collateral: None,
        }
    }

    /// Verifies this evidence with the certificates it carries, now: the claims it makes, no
    /// policy applied.
    pub fn claims(&self) -> Result<Claims, AttestationError> {
        self.claims_at(None)
    }

    /// Like [`Evidence::claims`], with certificates and collateral valid at `at` (now when
    /// absent): evidence recorded in a log is judged at the time it was recorded.
    pub fn claims_at(&self, at: Option<time::OffsetDateTime>) -> Result<Claims, AttestationError> {
        let options = VerifyOptions {
            at,
            certs: self.certs.clone(),
            ..Default::default()
        };
        verifier_for(self.platform, &options)?.verify(self)
    }
}

mod b64_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(kura_crypto::b64::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| kura_crypto::b64::decode(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// What verified evidence says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claims {
    pub platform: Platform,
    /// SEV-SNP measurement, TDX MRTD, SGX MRENCLAVE, Nitro PCR0, or the simulated measurement.
    #[serde(with = "hex_bytes")]
    pub measurement: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
    pub debug: bool,
    /// Security version numbers the hardware vouches for (for SEV-SNP: bootloader, tee, snp,
    /// microcode, and fmc on Turin), certified by the signing key.
    pub svns: Svns,
    /// Further measurement registers by name, hex (TDX: rtmr0-3, mrconfigid; SGX: mrsigner;
    /// Nitro: pcr1, pcr2, pcr8), and SEV-SNP's `vmpl` (decimal).
    pub registers: BTreeMap<String, String>,
    /// The TCB status Intel's collateral gives the platform (DCAP only), e.g. `UpToDate`.
    pub tcb_status: Option<String>,
    /// Security advisories that apply to the platform's TCB level (DCAP only).
    pub advisories: Vec<String>,
    /// Who signed the evidence, in words (e.g. the chip's VCEK, or the simulated key).
    pub signer: String,
}

/// Named security version numbers.
pub type Svns = BTreeMap<String, u64>;

/// What a verifier needs besides the evidence.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The time at which certificates and collateral must be valid; now when absent.
    pub at: Option<time::OffsetDateTime>,
    /// Certificates (DER, or PEM with any number of blocks): for SEV-SNP the VCEK or VLEK and
    /// optionally the ASK/ASVK (and ARK, which must be AMD's).
    pub certs: Vec<Vec<u8>>,
    /// Intel DCAP collateral, in the JSON layout of the dcap-qvl crate.
    pub collateral: Option<Vec<u8>>,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
}

/// Verifies one platform's evidence offline.
pub trait Verifier: Send + Sync {
    fn platform(&self) -> Platform;
    /// Checks signatures and structure; returns the claims. Does not apply any policy.
    fn verify(&self, evidence: &Evidence) -> Result<Claims, AttestationError>;
}

/// The verifier for `platform`, if this build supports it.
pub fn verifier_for(
    platform: Platform,
    options: &VerifyOptions,
) -> Result<Box<dyn Verifier>, AttestationError> {
    match platform {
        Platform::Simulated => Ok(Box::new(simulated::SimulatedVerifier)),
        #[cfg(feature = "sev-snp")]
        Platform::SevSnp => Ok(Box::new(sev_snp::SevSnpVerifier {
            options: options.clone(),
        })),
        #[cfg(feature = "tdx")]
        Platform::Tdx => Ok(Box::new(dcap::DcapVerifier {
            platform: Platform::Tdx,
            options: options.clone(),
        })),
        #[cfg(feature = "sgx")]
        Platform::Sgx => Ok(Box::new(dcap::DcapVerifier {
            platform: Platform::Sgx,
            options: options.clone(),
        })),
        #[cfg(feature = "nitro")]
        Platform::Nitro => Ok(Box::new(nitro::NitroVerifier {
            options: options.clone(),
        })),
        #[allow(unreachable_patterns)]
        other => {
            let _ = options;
            Err(AttestationError::Unsupported(other))
        }
    }
}

/// SHA-512 over a domain label, the contract id and a key: 64 bytes of report data.
fn report_data(label: &[u8], contract: &ContractId, key: &[u8]) -> [u8; 64] {
    let mut h = sha2::Sha512::new();
    h.update(label);
    h.update(contract.as_str().as_bytes());
    h.update([0]);
    h.update(key);
    h.finalize().into()
}

/// The 64 bytes of report data an enclave of `contract` with keys `enclave` must present:
/// SHA-512 over a domain label, the contract id and the enclave's public identity.
pub fn report_data_for(contract: &ContractId, enclave: &PublicIdentity) -> [u8; 64] {
    report_data(b"kura-report-data-v1\0", contract, &enclave.to_bytes())
}

/// The report data a cluster executor of `contract` must present: SHA-512 over its own domain
/// label (so that an executor's evidence never passes for a coordinator's), the contract id,
/// the executor's TLS public key (PEM), which the coordinator's authority then certifies, and
/// the coordinator's `challenge` for this join, which it accepts once: evidence captured from
/// one join cannot be admitted again.
pub fn executor_report_data(contract: &ContractId, tls_key_pem: &str, challenge: &str) -> [u8; 64] {
    let mut bound = tls_key_pem.as_bytes().to_vec();
    bound.push(0);
    bound.extend_from_slice(challenge.as_bytes());
    report_data(b"kura-executor-report-data-v2\0", contract, &bound)
}

/// The report data of an executor admitted before joins carried a challenge (v1), for
/// auditing logs of that time only: a coordinator never admits it.
fn executor_report_data_v1(contract: &ContractId, tls_key_pem: &str) -> [u8; 64] {
    report_data(
        b"kura-executor-report-data-v1\0",
        contract,
        tls_key_pem.as_bytes(),
    )
}

/// What identifies an executor's TLS key (PEM): SHA-256 (hex) of the DER of its one `PUBLIC
/// KEY` block, whatever the text around it or its line breaks; `None` if there is no such block.
/// Two texts of one key compare equal.
pub fn tls_key_id(pem: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let (_, rest) = pem.split_once(BEGIN)?;
    let (body, after) = rest.split_once(END)?;
    if after.contains(BEGIN) {
        return None;
    }
    let body: String = body.split_whitespace().collect();
    let der = kura_crypto::b64::decode(&body).ok()?;
    Some(hex::encode(kura_crypto::sha256(&der)))
}

/// Verifies a cluster executor's `evidence` and appraises it against the contract's
/// `[enclave]` policy (the same policy as the coordinator's), and checks that it binds this
/// contract, `tls_key_pem` and `challenge`, as of `at` (now when absent). An audit of a log
/// written before joins carried challenges passes `None`.
pub fn verify_executor(
    evidence: &Evidence,
    policy: &EnclavePolicy,
    contract: &ContractId,
    tls_key_pem: &str,
    challenge: Option<&str>,
    at: Option<time::OffsetDateTime>,
) -> Result<Claims, AttestationError> {
    let claims = appraised(evidence, policy, at)?;
    let bound = match challenge {
        Some(challenge) => executor_report_data(contract, tls_key_pem, challenge),
        None => executor_report_data_v1(contract, tls_key_pem),
    };
    if claims.report_data != bound {
        return Err(AttestationError::Binding);
    }
    Ok(claims)
}

/// `evidence` verified as of `at` and appraised against `policy`; its binding is the caller's
/// to check.
fn appraised(
    evidence: &Evidence,
    policy: &EnclavePolicy,
    at: Option<time::OffsetDateTime>,
) -> Result<Claims, AttestationError> {
    if !policy.allows(evidence.platform) {
        return Err(AttestationError::PlatformNotAccepted(evidence.platform));
    }
    let claims = evidence.claims_at(at)?;
    appraise(policy, &claims)?;
    Ok(claims)
}

/// Checks that the claims' report data binds this contract and these enclave keys.
pub fn check_binding(
    claims: &Claims,
    contract: &ContractId,
    enclave: &PublicIdentity,
) -> Result<(), AttestationError> {
    if claims.report_data != report_data_for(contract, enclave) {
        return Err(AttestationError::Binding);
    }
    Ok(())
}

/// Applies the contract's `[enclave]` policy to verified claims.
pub fn appraise(policy: &EnclavePolicy, claims: &Claims) -> Result<(), AttestationError> {
    if !policy.allows(claims.platform) {
        return Err(AttestationError::PlatformNotAccepted(claims.platform));
    }
    let entries: Vec<_> = policy.accept_entries(claims.platform).collect();
    if entries.is_empty() {
        // A real platform without pinned measurements would accept any code: refuse.
        if claims.platform != Platform::Simulated {
            return Err(AttestationError::NoMeasurementPinned(claims.platform));
        }
        if claims.debug {
            return Err(AttestationError::Debug);
        }
        return Ok(());
    }
    let measurement = hex::encode(&claims.measurement);
    let mut reason = AttestationError::MeasurementNotAccepted(measurement.clone());
    for entry in entries {
        let measured_ok = entry.measurements.is_empty() && claims.platform == Platform::Simulated
            || entry
                .measurements
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&measurement));
        if !measured_ok {
            continue;
        }
        if claims.debug && !entry.allow_debug {
            reason = AttestationError::Debug;
            continue;
        }
        if claims.platform == Platform::SevSnp {
            let have = claims.registers.get("vmpl");
            if have.and_then(|v| v.parse::<u32>().ok()) != Some(entry.snp_vmpl()) {
                reason = AttestationError::MeasurementNotAccepted(format!(
                    "the report comes from VMPL {}, the contract accepts VMPL {} (set vmpl in \
                     the accept entry to accept another level)",
                    have.map_or("(none)", String::as_str),
                    entry.snp_vmpl()
                ));
                continue;
            }
        }
        if claims.platform == Platform::Tdx
            && let Some(gap) = entry.tdx_workload_gap()
        {
            reason = AttestationError::MeasurementNotAccepted(gap);
            continue;
        }
        if let Some((name, _)) = entry.registers.iter().find(|(name, want)| {
            claims
                .registers
                .get(*name)
                .is_none_or(|have| !have.eq_ignore_ascii_case(want))
        }) {
            reason = AttestationError::MeasurementNotAccepted(format!(
                "register {name} = {} (the contract requires another value)",
                claims.registers.get(name).map_or("absent", String::as_str)
            ));
            continue;
        }
        if let Err(low) = check_min_tcb(&entry.min_tcb, &claims.svns) {
            reason = low;
            continue;
        }
        if let Some(status) = &claims.tcb_status {
            let accepted = if entry.tcb_statuses.is_empty() {
                status == "UpToDate"
            } else {
                entry.tcb_statuses.iter().any(|s| s == status)
            };
            if !accepted {
                reason = AttestationError::TcbTooLow(format!(
                    "TCB status {status} (advisories: {}) is not among the contract's accepted statuses",
                    if claims.advisories.is_empty() {
                        "none".to_string()
                    } else {
                        claims.advisories.join(", ")
                    }
                ));
                continue;
            }
        }
        return Ok(());
    }
    Err(reason)
}

fn check_min_tcb(
    min: &std::collections::BTreeMap<String, u64>,
    svns: &Svns,
) -> Result<(), AttestationError> {
    for (name, least) in min {
        match svns.get(name) {
            Some(have) if have >= least => {}
            Some(have) => {
                return Err(AttestationError::TcbTooLow(format!(
                    "{name} is {have}, the contract requires at least {least}"
                )));
            }
            None => {
                return Err(AttestationError::TcbTooLow(format!(
                    "the evidence reports no {name}, which the contract sets a minimum for"
                )));
            }
        }
    }
    Ok(())
}

/// Verifies `evidence`, appraises it against `policy` and checks its binding: everything a
/// client must do before it trusts `enclave` with data.
pub fn verify_enclave(
    evidence: &Evidence,
    policy: &EnclavePolicy,
    contract: &ContractId,
    enclave: &PublicIdentity,
) -> Result<Claims, AttestationError> {
    verify_enclave_at(evidence, policy, contract, enclave, None)
}

/// [`verify_enclave`] at time `at` (now when absent): the start of an enclave recorded in a log
/// is verified as of the time it was recorded, so that old logs stay verifiable after their
/// certificates or collateral expire.
pub fn verify_enclave_at(
    evidence: &Evidence,
    policy: &EnclavePolicy,
    contract: &ContractId,
    enclave: &PublicIdentity,
    at: Option<time::OffsetDateTime>,
) -> Result<Claims, AttestationError> {
    let claims = appraised(evidence, policy, at)?;
    check_binding(&claims, contract, enclave)?;
    Ok(claims)
}

#[cfg(test)]
mod tests;
