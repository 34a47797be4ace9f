//! AMD SEV-SNP: attestation reports signed by a VCEK (unique to a chip and its firmware
//! versions) or a VLEK (loaded by a cloud provider), certified by an ASK (or ASVK) that AMD's
//! root key (ARK) signs. The ARKs of Milan, Genoa and Turin are pinned (as shipped by the `sev`
//! crate); nothing else is trusted.
//!
//! Signature checks come from `sev` (RSA-PSS chain, ECDSA P-384 report signature). On top of
//! them this module checks what `sev` leaves to its callers: certificate validity at the
//! verification time, that the VCEK belongs to the chip that signed (hwID = CHIP_ID; 8 bytes on
//! Turin), that the certificate's TCB equals the REPORTED_TCB, that the signing-key field of
//! the report names the kind of key given, and that the report is signed at all.

use kura_contract::Platform;
use sev::certs::snp::{Certificate as SevCertificate, Chain, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::Certificate;
use x509_cert::der::{Decode, DecodePem, Encode};

use crate::{AttestationError, Claims, Evidence, Svns, Verifier, VerifyOptions};

/// Size of an SNP attestation report (versions 2 to 5).
pub const REPORT_LEN: usize = 1184;

const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";
const OID_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";

/// AMD product lines whose roots are pinned: name, ARK, ASK (PEM).
const PRODUCTS: [(&str, &[u8], &[u8]); 3] = [
    ("Milan", builtin::milan::ARK, builtin::milan::ASK),
    ("Genoa", builtin::genoa::ARK, builtin::genoa::ASK),
    ("Turin", builtin::turin::ARK, builtin::turin::ASK),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Vcek,
    Vlek,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyKind::Vcek => "VCEK",
            KeyKind::Vlek => "VLEK",
        })
    }
}

/// A VCEK or VLEK whose chain verified up to a pinned ARK.
#[derive(Debug)]
pub struct VerifiedChain {
    pub product: &'static str,
    pub kind: KeyKind,
    pub vek: Certificate,
    /// The ASK or ASVK that signed the VEK (given, or the pinned ASK).
    pub ask: Certificate,
}

fn chain_err(reason: impl Into<String>) -> AttestationError {
    AttestationError::Certificate(reason.into())
}

fn mismatch(reason: impl Into<String>) -> AttestationError {
    AttestationError::Mismatch(reason.into())
}

/// Every certificate in the given files, PEM (any number of blocks) or DER.
pub fn parse_certs(files: &[Vec<u8>]) -> Result<Vec<Certificate>, AttestationError> {
    let mut out = Vec::new();
    for bytes in files {
        let text = std::str::from_utf8(bytes)
            .ok()
            .filter(|t| t.contains("-----BEGIN CERTIFICATE-----"));
        match text {
            Some(text) => {
                for block in text.split_inclusive("-----END CERTIFICATE-----") {
                    let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
                        continue;
                    };
                    let cert = Certificate::from_pem(&block.as_bytes()[start..])
                        .map_err(|e| chain_err(format!("unreadable PEM certificate: {e}")))?;
                    out.push(cert);
                }
            }
            None => out.push(
                Certificate::from_der(bytes)
                    .map_err(|e| chain_err(format!("unreadable DER certificate: {e}")))?,
            ),
        }
    }
    Ok(out)
}

fn common_name(cert: &Certificate) -> String {
    cert.tbs_certificate
        .subject
        .to_string()
        .split(',')
        .find_map(|part| part.trim().strip_prefix("CN=").map(str::to_string))
        .unwrap_or_default()
}

fn to_sev(cert: &Certificate) -> Result<SevCertificate, AttestationError> {
    let der = cert.to_der().map_err(|e| chain_err(e.to_string()))?;
    SevCertificate::from_der(&der).map_err(|e| chain_err(e.to_string()))
}

/// Finds the VCEK/VLEK among `certs` and verifies its chain to a pinned ARK. An ARK among the
/// given certificates must be one of the pinned ones; an ASK may come from the given
/// certificates or, for a VCEK, from the pinned set.
pub fn verify_chain(certs: &[Certificate]) -> Result<VerifiedChain, AttestationError> {
    let mut vek = None;
    let mut intermediates = Vec::new();
    for cert in certs {
        let cn = common_name(cert);
        match cn.as_str() {
            "SEV-VCEK" => vek = Some((KeyKind::Vcek, cert)),
            "SEV-VLEK" => vek = Some((KeyKind::Vlek, cert)),
            n if n.starts_with("ARK-") => {
                let der = cert.to_der().map_err(|e| chain_err(e.to_string()))?;
                let pinned = PRODUCTS.iter().any(|(_, ark, _)| {
                    Certificate::from_pem(*ark)
                        .ok()
                        .and_then(|a| a.to_der().ok())
                        .as_deref()
                        == Some(der.as_slice())
                });
                if !pinned {
                    return Err(chain_err(format!(
                        "the root {n:?} given is not one of AMD's pinned ARKs"
                    )));
                }
            }
            _ => intermediates.push(cert),
        }
    }
    let (kind, vek) = vek.ok_or_else(|| {
        chain_err("no VCEK or VLEK among the certificates: pass it with --certs (DER or PEM)")
    })?;
    let vek_sev = to_sev(vek)?;
    for (product, ark_pem, ask_pem) in PRODUCTS {
        let ark = SevCertificate::from_pem(ark_pem).map_err(|e| chain_err(e.to_string()))?;
        let mut asks: Vec<Certificate> = intermediates.iter().map(|c| (*c).clone()).collect();
        if kind == KeyKind::Vcek {
            asks.push(Certificate::from_pem(ask_pem).map_err(|e| chain_err(e.to_string()))?);
        }
        for ask_cert in asks {
            let ask = to_sev(&ask_cert)?;
            let chain = Chain {
                ca: ca::Chain {
                    ark: ark.clone(),
                    ask,
                },
                vek: vek_sev.clone(),
            };
            let key = crate::cache::key(
                "snp-chain",
                &[
                    &chain
                        .ca
                        .ark
                        .to_der()
                        .map_err(|e| chain_err(e.to_string()))?,
                    &chain
                        .ca
                        .ask
                        .to_der()
                        .map_err(|e| chain_err(e.to_string()))?,
                    &chain.vek.to_der().map_err(|e| chain_err(e.to_string()))?,
                ],
            );
            if crate::cache::verified(key, || (&chain).verify().map(|_| ())).is_ok() {
                return Ok(VerifiedChain {
                    product,
                    kind,
                    vek: vek.clone(),
                    ask: ask_cert,
                });
            }
        }
    }
    Err(chain_err(format!(
        "the {} does not chain to AMD's root: no ASK/ASVK signed by a pinned ARK (Milan, Genoa, Turin) signs it",
        if kind == KeyKind::Vcek {
            "VCEK"
        } else {
            "VLEK"
        }
    )))
}

fn check_validity(
    cert: &Certificate,
    what: &str,
    at: time::OffsetDateTime,
) -> Result<(), AttestationError> {
    let v = &cert.tbs_certificate.validity;
    let secs = |t: x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    let now = at.unix_timestamp();
    let fmt = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(s)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    let (from, until) = (secs(v.not_before), secs(v.not_after));
    if now < from || now > until {
        return Err(AttestationError::Expired(format!(
            "the {what} is valid from {} to {}, not at {} (pin the verification time with --at)",
            fmt(from),
            fmt(until),
            fmt(now)
        )));
    }
    Ok(())
}

fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a [u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// The value of a DER INTEGER extension (the SPL extensions).
fn integer(bytes: &[u8]) -> Option<u64> {
    match bytes {
        [0x02, len, rest @ ..] if *len as usize == rest.len() && rest.len() <= 9 => {
            Some(rest.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        _ => None,
    }
}

/// The hwID extension: a DER OCTET STRING, or (older certificates) the raw bytes.
fn hwid(bytes: &[u8]) -> &[u8] {
    match bytes {
        [0x04, len, rest @ ..] if *len as usize == rest.len() => rest,
        _ => bytes,
    }
}

pub(crate) fn decode_report(data: &[u8]) -> Result<Vec<u8>, AttestationError> {
    let text: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text.len() == 2 * REPORT_LEN && text.iter().all(u8::is_ascii_hexdigit) {
        return hex::decode(&text).map_err(|e| AttestationError::Malformed(e.to_string()));
    }
    if data.len() < REPORT_LEN {
        return Err(AttestationError::Malformed(format!(
            "an SNP report has {REPORT_LEN} bytes; this evidence has {}",
            data.len()
        )));
    }
    Ok(data[..REPORT_LEN].to_vec())
}

/// Whether `certs` hold a VCEK or VLEK (the rest of a chain can come from the pinned set).
pub(crate) fn has_signing_key(certs: &[Vec<u8>]) -> bool {
    parse_certs(certs).is_ok_and(|certs| {
        certs
            .iter()
            .any(|c| matches!(common_name(c).as_str(), "SEV-VCEK" | "SEV-VLEK"))
    })
}

/// The product lines a report may come from, most likely first: from the CPUID family and
/// model that reports of version 3 and later carry, otherwise every pinned product.
pub(crate) fn products_of(report: &AttestationReport) -> Vec<&'static str> {
    let product = match (report.cpuid_fam_id, report.cpuid_mod_id) {
        (Some(0x19), Some(0x00..=0x0f)) => Some("Milan"),
        (Some(0x19), Some(0x10..=0x1f | 0xa0..=0xaf)) => Some("Genoa"),
        (Some(0x1a), Some(0x00..=0x1f)) => Some("Turin"),
        _ => None,
    };
    match product {
        Some(p) => vec![p],
        None => PRODUCTS.iter().map(|(name, _, _)| *name).collect(),
    }
}

/// Verifies SNP reports with the certificates of [`VerifyOptions::certs`].
#[derive(Debug)]
pub struct SevSnpVerifier {
    pub(crate) options: VerifyOptions,
}

impl Verifier for SevSnpVerifier {
    fn platform(&self) -> Platform {
        Platform::SevSnp
    }

    fn verify(&self, evidence: &Evidence) -> Result<Claims, AttestationError> {
        let raw = decode_report(&evidence.data)?;
        let report = AttestationReport::from_bytes(&raw)
            .map_err(|e| AttestationError::Malformed(format!("SNP report: {e}")))?;
        // `sev` checks the signature over its own re-encoding of the parsed report, which drops
        // reserved bits. Insist that the bytes received are exactly that encoding, so that what
        // is accepted is what was signed.
        let canonical = report
            .to_bytes()
            .map_err(|e| AttestationError::Malformed(format!("SNP report: {e}")))?;
        if canonical.as_ref() != raw.as_slice() {
            return Err(AttestationError::Malformed(
                "the SNP report has bits set in reserved fields: these bytes are not what the chip signed".into(),
            ));
        }
        if report.key_info.mask_chip_key() {
            return Err(AttestationError::Signature(
                "the report is unsigned (MASK_CHIP_KEY is set)".into(),
            ));
        }
        let kind = match report.key_info.signing_key() {
            0 => KeyKind::Vcek,
            1 => KeyKind::Vlek,
            other => {
                return Err(AttestationError::Malformed(format!(
                    "the report names signing key {other}, not a VCEK or VLEK"
                )));
            }
        };
        let certs = parse_certs(&self.options.certs)?;
        let chain = verify_chain(&certs)?;
        if chain.kind != kind {
            return Err(mismatch(format!(
                "the report says it is signed by a {}, but the certificate given is a {}",
                kind, chain.kind
            )));
        }
        // The chain verified (or was verified before): only the report signature remains. It is
        // checked with ring over the received bytes (equal to the canonical encoding, above):
        // R and S are 72-byte little-endian fields at 0x2A0 and 0x2E8 holding 48-byte scalars.
        let be = |at: usize| raw[at..at + 48].iter().rev().copied().collect::<Vec<u8>>();
        let signature = [be(0x2a0), be(0x2e8)].concat();
        let vek_key = chain
            .vek
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, vek_key)
            .verify(&raw[..0x2a0], &signature)
            .map_err(|_| {
                AttestationError::Signature(format!(
                    "the report is not signed by this {}",
                    chain.kind
                ))
            })?;

        let at = self
            .options
            .at
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        check_validity(&chain.vek, &format!("{} certificate", chain.kind), at)?;
        check_validity(
            &chain.ask,
            &format!("{} certificate", common_name(&chain.ask)),
            at,
        )?;

        if chain.kind == KeyKind::Vcek {
            let id = extension(&chain.vek, OID_HWID)
                .map(hwid)
                .ok_or_else(|| mismatch("the VCEK has no hwID"))?;
            if id.is_empty() || report.chip_id.get(..id.len()) != Some(id) {
                return Err(mismatch(
                    "the VCEK belongs to another chip (hwID differs from the report's CHIP_ID)",
                ));
            }
        }
        let tcb = report.reported_tcb;
        let mut svns = Svns::new();
        for (name, oid, reported) in [
            ("bootloader", OID_BL, Some(tcb.bootloader)),
            ("tee", OID_TEE, Some(tcb.tee)),
            ("snp", OID_SNP, Some(tcb.snp)),
            ("microcode", OID_UCODE, Some(tcb.microcode)),
            ("fmc", OID_FMC, tcb.fmc),
        ] {
            let certified = extension(&chain.vek, oid).and_then(integer);
            match (certified, reported) {
                (Some(c), Some(r)) if c == u64::from(r) => {
                    svns.insert(name.to_string(), c);
                }
                (None, None) => {}
                (None, Some(_)) if name == "fmc" => {}
                (c, r) => {
                    return Err(mismatch(format!(
                        "the certificate's {name} TCB ({c:?}) is not the report's REPORTED_TCB ({r:?})"
                    )));
                }
            }
        }
        Ok(Claims {
            platform: Platform::SevSnp,
            measurement: report.measurement.to_vec(),
            report_data: report.report_data.to_vec(),
            debug: report.policy.debug_allowed(),
            svns,
            // The privilege level the report was requested from (0 is the most privileged).
            registers: [("vmpl".to_string(), report.vmpl.to_string())].into(),
            tcb_status: None,
            advisories: vec![],
            signer: format!(
                "AMD SEV-SNP {} ({}), chain to the pinned ARK-{}",
                chain.kind, chain.product, chain.product
            ),
        })
    }
}

#[cfg(test)]
mod tests;
