//! Party signatures over a contract's exact bytes, kept in `FILE.<party>.sig` files.
//!
//! Format (one line): `kura-sig-v1:<party>:<base64 Ed25519 signature>`. The signed message is
//! the contract's bytes under the domain [`SIGNATURE_DOMAIN`].

use std::collections::BTreeMap;

use kura_crypto::{SecretIdentity, b64};
use serde::Serialize;

use crate::{Contract, ContractError};

pub const SIGNATURE_DOMAIN: &str = "contract-v1";
const PREFIX: &str = "kura-sig-v1:";

/// Signs `contract` with `key`; returns the signing party's name and the signature file text.
pub fn sign(contract: &Contract, key: &SecretIdentity) -> Result<(String, String), ContractError> {
    let party = contract
        .party_by_key(key.public())
        .ok_or(ContractError::NotAParty)?;
    let sig = key.sign(SIGNATURE_DOMAIN, contract.bytes());
    Ok((
        party.name.clone(),
        format!("{PREFIX}{}:{}\n", party.name, b64::encode(sig)),
    ))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureStatus {
    Valid,
    Missing,
    Invalid,
}

#[derive(Clone, Debug, Serialize)]
pub struct SignatureCheck {
    pub party: String,
    pub status: SignatureStatus,
    pub reason: Option<String>,
}

/// Checks one signature file's text per party (`None` when the file is absent).
/// Returns one entry per party, in contract order.
pub fn verify_all(
    contract: &Contract,
    mut signature_text: impl FnMut(&str) -> Option<String>,
) -> Vec<SignatureCheck> {
    contract
        .parties
        .iter()
        .map(|p| {
            let (status, reason) = match signature_text(&p.name) {
                None => (
                    SignatureStatus::Missing,
                    Some(format!("party {:?} has not signed", p.name)),
                ),
                Some(text) => match check_one(contract, &p.name, &text) {
                    Ok(()) => (SignatureStatus::Valid, None),
                    Err(reason) => (SignatureStatus::Invalid, Some(reason)),
                },
            };
            SignatureCheck {
                party: p.name.clone(),
                status,
                reason,
            }
        })
        .collect()
}

fn check_one(contract: &Contract, party: &str, text: &str) -> Result<(), String> {
    let body = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or("signature file does not start with kura-sig-v1:")?;
    let (named, sig) = body
        .split_once(':')
        .ok_or("signature file has no party name")?;
    if named != party {
        return Err(format!(
            "signature file names party {named:?}, expected {party:?}"
        ));
    }
    let sig = b64::decode(sig).map_err(|e| e.to_string())?;
    let key = &contract
        .party(party)
        .expect("party from contract")
        .public_key;
    key.verify(SIGNATURE_DOMAIN, contract.bytes(), &sig)
        .map_err(|_| {
            format!("signature of party {party:?} does not match these exact contract bytes")
        })
}

/// A contract that every party has signed. The only way to make one is
/// [`SignedContract::verify`], so code that takes it cannot run on an unsigned contract.
#[derive(Clone, Debug)]
pub struct SignedContract {
    contract: Contract,
    signatures: BTreeMap<String, String>,
}

impl SignedContract {
    /// Checks every party's signature (`signature_text(party)` returns the text of its
    /// signature file, or `None`); refuses with every problem named.
    pub fn verify(
        contract: Contract,
        mut signature_text: impl FnMut(&str) -> Option<String>,
    ) -> Result<Self, ContractError> {
        let mut texts = BTreeMap::new();
        let checks = verify_all(&contract, |party| {
            let text = signature_text(party);
            if let Some(t) = &text {
                texts.insert(party.to_string(), t.clone());
            }
            text
        });
        let problems: Vec<String> = checks
            .into_iter()
            .filter(|c| c.status != SignatureStatus::Valid)
            .filter_map(|c| c.reason)
            .collect();
        if !problems.is_empty() {
            return Err(ContractError::Unsigned(problems.join("; ")));
        }
        Ok(Self {
            contract,
            signatures: texts,
        })
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// Signature file texts by party.
    pub fn signatures(&self) -> &BTreeMap<String, String> {
        &self.signatures
    }
}

impl std::ops::Deref for SignedContract {
    type Target = Contract;

    fn deref(&self) -> &Contract {
        &self.contract
    }
}
