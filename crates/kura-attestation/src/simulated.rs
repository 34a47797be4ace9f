//! The simulated platform: same code path as real hardware, protection none.
//!
//! Evidence is signed by a "simulated hardware" Ed25519 key that the service generates at
//! start. A verifier can only check that the evidence is self-consistent: anyone can make such
//! a key, so simulated evidence proves nothing about where the code runs. Clients accept it
//! only when the contract lists `simulated`, and every tool says so loudly.

use kura_crypto::{PublicIdentity, SecretIdentity, b64};
use serde::{Deserialize, Serialize};

use crate::{AttestationError, Claims, Evidence, Verifier};
use kura_contract::Platform;

/// Printed by every command that uses the simulated platform.
pub const WARNING: &str = "SIMULATED PLATFORM: no TEE is present. Data is NOT protected from the operator of this machine; use only for development and tests.";

const DOMAIN: &str = "simulated-evidence-v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    version: u32,
    measurement: String,
    report_data: String,
    debug: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedReport {
    /// The report as exact JSON text (what is signed).
    report: String,
    hardware_key: String,
    signature: String,
}

/// The simulated "hardware": a signing key held by the service.
#[derive(Debug)]
pub struct SimulatedHardware {
    key: SecretIdentity,
}

impl Default for SimulatedHardware {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedHardware {
    pub fn new() -> Self {
        Self {
            key: SecretIdentity::generate(),
        }
    }

    /// Issues evidence over a measurement and 64 bytes of report data.
    pub fn issue(&self, measurement: &[u8], report_data: &[u8; 64], debug: bool) -> Evidence {
        let report = serde_json::to_string(&Report {
            version: 1,
            measurement: hex::encode(measurement),
            report_data: hex::encode(report_data),
            debug,
        })
        .expect("report serialises");
        let signature = self.key.sign(DOMAIN, report.as_bytes());
        let signed = SignedReport {
            report,
            hardware_key: self.key.public().to_text(),
            signature: b64::encode(signature),
        };
        Evidence::new(
            Platform::Simulated,
            serde_json::to_vec(&signed).expect("evidence serialises"),
        )
    }
}

/// Verifies simulated evidence: structure and self-signature only.
#[derive(Debug)]
pub struct SimulatedVerifier;

impl Verifier for SimulatedVerifier {
    fn platform(&self) -> Platform {
        Platform::Simulated
    }

    fn verify(&self, evidence: &Evidence) -> Result<Claims, AttestationError> {
        if evidence.platform != Platform::Simulated {
            return Err(AttestationError::Malformed(format!(
                "{} evidence given to the simulated verifier",
                evidence.platform
            )));
        }
        let malformed = |what: &str| AttestationError::Malformed(what.to_string());
        let signed: SignedReport = serde_json::from_slice(&evidence.data)
            .map_err(|e| AttestationError::Malformed(e.to_string()))?;
        let key = PublicIdentity::parse(&signed.hardware_key)
            .map_err(|_| malformed("bad simulated hardware key"))?;
        let sig =
            b64::decode(&signed.signature).map_err(|_| malformed("bad signature encoding"))?;
        key.verify(DOMAIN, signed.report.as_bytes(), &sig)
            .map_err(|_| AttestationError::Signature("simulated report signature".into()))?;
        let report: Report = serde_json::from_str(&signed.report)
            .map_err(|e| AttestationError::Malformed(e.to_string()))?;
        if report.version != 1 {
            return Err(malformed("unsupported simulated report version"));
        }
        let measurement =
            hex::decode(&report.measurement).map_err(|_| malformed("measurement is not hex"))?;
        let report_data =
            hex::decode(&report.report_data).map_err(|_| malformed("report data is not hex"))?;
        if report_data.len() != 64 {
            return Err(malformed("report data must be 64 bytes"));
        }
        Ok(Claims {
            platform: Platform::Simulated,
            measurement,
            report_data,
            debug: report.debug,
            svns: Default::default(),
            registers: Default::default(),
            tcb_status: None,
            advisories: vec![],
            signer: format!(
                "simulated hardware key {} (self-signed, NOT a hardware root of trust)",
                key.fingerprint()
            ),
        })
    }
}
