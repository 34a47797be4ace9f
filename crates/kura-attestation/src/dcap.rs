//! Intel TDX and SGX: DCAP quotes, verified offline against Intel's collateral (TCB info, QE
//! identity, CRLs) with the `dcap-qvl` crate, which pins Intel's SGX root CA.
//!
//! The collateral is given in dcap-qvl's JSON layout; its validity window is about a month,
//! so verification happens at [`VerifyOptions::at`] (tests pin it). The TCB status that Intel's
//! collateral assigns to the platform is returned in the claims, and appraised by the contract
//! (`tcb_statuses`, default `UpToDate` only).

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Report;
use kura_contract::Platform;

use crate::{AttestationError, Claims, Evidence, Svns, Verifier, VerifyOptions};

/// Verifies TDX (`platform = Tdx`) or SGX (`platform = Sgx`) quotes.
#[derive(Debug)]
pub struct DcapVerifier {
    pub(crate) platform: Platform,
    pub(crate) options: VerifyOptions,
}

/// A quote as raw bytes, or as hex text (optionally `0x`-prefixed).
pub(crate) fn decode_quote(data: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let hex_text = text.strip_prefix(b"0x").unwrap_or(&text);
    if !hex_text.is_empty()
        && hex_text.iter().all(u8::is_ascii_hexdigit)
        && let Ok(raw) = hex::decode(hex_text)
    {
        return raw;
    }
    data.to_vec()
}

impl Verifier for DcapVerifier {
    fn platform(&self) -> Platform {
        self.platform
    }

    fn verify(&self, evidence: &Evidence) -> Result<Claims, AttestationError> {
        let quote = decode_quote(&evidence.data);
        // Collateral given by the verifier's caller wins over collateral that came with the
        // evidence; either way it is verified against Intel's pinned root.
        let collateral = self
            .options
            .collateral
            .as_ref()
            .or(evidence.collateral.as_ref())
            .ok_or_else(|| {
                AttestationError::Unavailable(
                    "DCAP quotes need Intel's collateral: pass it with --collateral (dcap-qvl \
                     JSON), or allow fetching it from Intel's PCS with --fetch"
                        .into(),
                )
            })?;
        let collateral: QuoteCollateralV3 = serde_json::from_slice(collateral)
            .map_err(|e| AttestationError::Malformed(format!("collateral: {e}")))?;
        let at = self
            .options
            .at
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        let now = u64::try_from(at.unix_timestamp()).unwrap_or(0);
        let verified = dcap_qvl::verify::verify(&quote, &collateral, now).map_err(|e| {
            let text = format!("{e:#}");
            if text.contains("expired")
                || text.contains("not yet valid")
                || text.contains("Expired")
            {
                AttestationError::Expired(format!("{text} (pin the verification time with --at)"))
            } else {
                AttestationError::Signature(text)
            }
        })?;
        let mut svns = Svns::new();
        let mut registers = std::collections::BTreeMap::new();
        let (platform, measurement, report_data, debug) = match &verified.report {
            Report::SgxEnclave(e) => {
                svns.insert("isv_prod_id".into(), u64::from(e.isv_prod_id));
                svns.insert("isv_svn".into(), u64::from(e.isv_svn));
                registers.insert("mrsigner".to_string(), hex::encode(e.mr_signer));
                // SGX ATTRIBUTES.DEBUG is bit 1 of the first byte.
                (
                    Platform::Sgx,
                    e.mr_enclave.to_vec(),
                    e.report_data.to_vec(),
                    e.attributes[0] & 0x02 != 0,
                )
            }
            other => {
                let td = other
                    .as_td10()
                    .expect("every non-SGX report is a TD report");
                for (name, value) in [
                    ("rtmr0", td.rt_mr0),
                    ("rtmr1", td.rt_mr1),
                    ("rtmr2", td.rt_mr2),
                    ("rtmr3", td.rt_mr3),
                ] {
                    registers.insert(name.to_string(), hex::encode(value));
                }
                registers.insert("mrconfigid".to_string(), hex::encode(td.mr_config_id));
                // TDX TD_ATTRIBUTES.DEBUG is bit 0.
                (
                    Platform::Tdx,
                    td.mr_td.to_vec(),
                    td.report_data.to_vec(),
                    td.td_attributes[0] & 0x01 != 0,
                )
            }
        };
        if platform != self.platform {
            return Err(AttestationError::Malformed(format!(
                "this is a {platform} quote, not {}",
                self.platform
            )));
        }
        Ok(Claims {
            platform,
            measurement,
            report_data,
            debug,
            svns,
            registers,
            tcb_status: Some(verified.status.clone()),
            advisories: verified.advisory_ids.clone(),
            signer: format!(
                "Intel {} quoting enclave, PCK chain to the pinned Intel SGX Root CA; TCB {}",
                if platform == Platform::Tdx {
                    "TDX"
                } else {
                    "SGX"
                },
                verified.status
            ),
        })
    }
}

#[cfg(test)]
mod tests;
