//! AWS Nitro Enclaves: attestation documents from the Nitro Security Module, a COSE_Sign1
//! (ES384) over a CBOR map, signed by a short-lived leaf certificate whose chain (`cabundle`)
//! must end at the AWS Nitro root pinned here.
//!
//! The leaf lives about three hours, so verification happens at [`VerifyOptions::at`] (now
//! when absent); old documents must be checked with a pinned time.
//! Claims: PCR0 as the measurement, PCR1/2/8 as registers, `user_data` as report data, and
//! debug when PCR0 is all zeros (the NSM zeroes PCRs of enclaves started in debug mode).

use std::collections::BTreeMap;

use ciborium::Value;
use coset::{CborSerializable, CoseSign1, TaggedCborSerializable};
use kura_contract::Platform;
use ring::signature::{ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use x509_cert::Certificate;
use x509_cert::der::{Decode, DecodePem, Encode};

use crate::{AttestationError, Claims, Evidence, Svns, Verifier, VerifyOptions};

/// The AWS Nitro Enclaves root (CN=aws.nitro-enclaves), as published by AWS.
pub const AWS_NITRO_ROOT_PEM: &[u8] = include_bytes!("nitro/aws_nitro_root.pem");

fn malformed(what: impl Into<String>) -> AttestationError {
    AttestationError::Malformed(what.into())
}

/// Verifies Nitro attestation documents.
#[derive(Debug)]
pub struct NitroVerifier {
    pub(crate) options: VerifyOptions,
}

/// The document as raw COSE bytes, or base64 text of them.
fn decode_document(data: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    match std::str::from_utf8(&text)
        .ok()
        .map(kura_crypto::b64::decode)
    {
        Some(Ok(raw)) if !raw.is_empty() => raw,
        _ => data.to_vec(),
    }
}

fn field<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

fn bytes_field(map: &[(Value, Value)], name: &str) -> Result<Option<Vec<u8>>, AttestationError> {
    match field(map, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b.clone())),
        Some(_) => Err(malformed(format!(
            "Nitro document field {name} is not bytes"
        ))),
    }
}

/// The certificate's public key (SEC1 point); ring checks that it is a valid P-384 point.
fn key_of(cert: &Certificate) -> &[u8] {
    cert.tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
}

/// Checks that `issuer` signed `cert` (ecdsa-with-SHA384) and that `cert` is valid at `at`.
fn check_link(issuer: &Certificate, cert: &Certificate, at: i64) -> Result<(), AttestationError> {
    let der = |c: &Certificate| {
        c.to_der()
            .map_err(|e| AttestationError::Certificate(e.to_string()))
    };
    let key = crate::cache::key("x509-link", &[&der(issuer)?, &der(cert)?]);
    crate::cache::verified(key, || {
        let tbs = cert
            .tbs_certificate
            .to_der()
            .map_err(|e| AttestationError::Certificate(e.to_string()))?;
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, key_of(issuer))
            .verify(&tbs, cert.signature.raw_bytes())
            .map_err(|_| {
                AttestationError::Certificate(format!(
                    "{} is not signed by {} with ECDSA P-384",
                    cert.tbs_certificate.subject, issuer.tbs_certificate.subject
                ))
            })
    })?;
    let v = &cert.tbs_certificate.validity;
    let (from, until) = (
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    );
    if at < from || at > until {
        return Err(AttestationError::Expired(format!(
            "{} is valid from {} to {} (unix seconds), not at {at}: pin the verification time with --at",
            cert.tbs_certificate.subject, from, until
        )));
    }
    Ok(())
}

/// Checks what each certificate of `path` (the pinned root first, the signing leaf last) may do:
/// every issuer is a CA (basicConstraints CA, with room under its path length for the CAs below
/// it) that may sign certificates (keyUsage keyCertSign); the leaf is no CA and may sign
/// (digitalSignature). A leaf's key must not pass for a CA's, nor a CA's for the document's.
fn check_roles(path: &[Certificate]) -> Result<(), AttestationError> {
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
    let refuse = |cert: &Certificate, why: &str| {
        AttestationError::Certificate(format!("{} {why}", cert.tbs_certificate.subject))
    };
    let extension = |cert: &Certificate| -> Result<_, AttestationError> {
        let bc = cert
            .tbs_certificate
            .get::<BasicConstraints>()
            .map_err(|_| refuse(cert, "has a malformed basicConstraints"))?
            .map(|(_, bc)| bc);
        let ku = cert
            .tbs_certificate
            .get::<KeyUsage>()
            .map_err(|_| refuse(cert, "has a malformed keyUsage"))?
            .map(|(_, ku)| ku);
        Ok((bc, ku))
    };
    let Some((leaf, issuers)) = path.split_last() else {
        return Err(malformed("an empty certificate path"));
    };
    for (i, cert) in issuers.iter().enumerate() {
        let (bc, ku) = extension(cert)?;
        let Some(bc) = bc.filter(|bc| bc.ca) else {
            return Err(refuse(
                cert,
                "is not a CA (basicConstraints), yet issues a certificate",
            ));
        };
        // CAs below this one in the path, the leaf not counted.
        let below = issuers.len() - i - 1;
        if bc
            .path_len_constraint
            .is_some_and(|n| below > usize::from(n))
        {
            return Err(refuse(cert, "allows fewer CAs below it than the path has"));
        }
        if !ku.is_some_and(|ku| ku.key_cert_sign()) {
            return Err(refuse(cert, "may not sign certificates (keyUsage)"));
        }
    }
    let (bc, ku) = extension(leaf)?;
    if bc.is_some_and(|bc| bc.ca) {
        return Err(refuse(leaf, "is a CA, yet signs the document"));
    }
    if ku.is_some_and(|ku| !ku.digital_signature()) {
        return Err(refuse(leaf, "may not sign (keyUsage)"));
    }
    Ok(())
}

impl Verifier for NitroVerifier {
    fn platform(&self) -> Platform {
        Platform::Nitro
    }

    fn verify(&self, evidence: &Evidence) -> Result<Claims, AttestationError> {
        let raw = decode_document(&evidence.data);
        let sign1 = CoseSign1::from_tagged_slice(&raw)
            .or_else(|_| CoseSign1::from_slice(&raw))
            .map_err(|e| malformed(format!("not a COSE_Sign1 document: {e}")))?;
        if sign1.protected.header.alg
            != Some(coset::RegisteredLabelWithPrivate::Assigned(
                coset::iana::Algorithm::ES384,
            ))
        {
            return Err(malformed("the document is not signed with ES384"));
        }
        let payload = sign1
            .payload
            .as_deref()
            .ok_or_else(|| malformed("the document has no payload"))?;
        let doc: Value =
            ciborium::from_reader(payload).map_err(|e| malformed(format!("payload: {e}")))?;
        let map = doc
            .as_map()
            .ok_or_else(|| malformed("the payload is not a CBOR map"))?;

        let leaf_der =
            bytes_field(map, "certificate")?.ok_or_else(|| malformed("no certificate"))?;
        let leaf =
            Certificate::from_der(&leaf_der).map_err(|e| malformed(format!("certificate: {e}")))?;
        let bundle: Vec<Certificate> = match field(map, "cabundle") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_bytes()
                        .ok_or_else(|| malformed("cabundle entry is not bytes"))
                        .and_then(|b| {
                            Certificate::from_der(b)
                                .map_err(|e| malformed(format!("cabundle: {e}")))
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(malformed("no cabundle")),
        };
        // Required by the NSM format; the verification time comes from the caller (--at).
        if !matches!(field(map, "timestamp"), Some(Value::Integer(_))) {
            return Err(malformed("no timestamp"));
        }
        let at = self
            .options
            .at
            .map(|t| t.unix_timestamp())
            .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());

        // cabundle = [root, intermediates...]; the root must be AWS's.
        let root = Certificate::from_pem(AWS_NITRO_ROOT_PEM).expect("pinned root parses");
        let first = bundle.first().ok_or_else(|| malformed("empty cabundle"))?;
        if first.to_der().ok() != root.to_der().ok() {
            return Err(AttestationError::Certificate(
                "the chain does not start at the pinned AWS Nitro root".into(),
            ));
        }
        let mut issuer = &root;
        for cert in bundle.iter().skip(1).chain(std::iter::once(&leaf)) {
            check_link(issuer, cert, at)?;
            issuer = cert;
        }
        let path: Vec<Certificate> = std::iter::once(root.clone())
            .chain(bundle.iter().skip(1).cloned())
            .chain(std::iter::once(leaf.clone()))
            .collect();
        check_roles(&path)?;
        let leaf_key = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key_of(&leaf));
        sign1
            .verify_signature(b"", |sig, data| leaf_key.verify(data, sig))
            .map_err(|_| {
                AttestationError::Signature("the document is not signed by its certificate".into())
            })?;

        let pcrs: BTreeMap<u64, Vec<u8>> = match field(map, "pcrs") {
            Some(Value::Map(entries)) => entries
                .iter()
                .filter_map(|(k, v)| {
                    Some((u64::try_from(k.as_integer()?).ok()?, v.as_bytes()?.clone()))
                })
                .collect(),
            _ => return Err(malformed("no pcrs")),
        };
        let pcr0 = pcrs.get(&0).cloned().ok_or_else(|| malformed("no PCR0"))?;
        let mut registers = BTreeMap::new();
        for i in [1u64, 2, 8] {
            if let Some(v) = pcrs.get(&i) {
                registers.insert(format!("pcr{i}"), hex::encode(v));
            }
        }
        Ok(Claims {
            platform: Platform::Nitro,
            debug: pcr0.iter().all(|b| *b == 0),
            measurement: pcr0,
            report_data: bytes_field(map, "user_data")?.unwrap_or_default(),
            svns: Svns::new(),
            registers,
            tcb_status: None,
            advisories: vec![],
            signer: format!(
                "AWS Nitro Secure Module, chain of {} to the pinned AWS Nitro root",
                bundle.len()
            ),
        })
    }
}

#[cfg(test)]
mod tests;
