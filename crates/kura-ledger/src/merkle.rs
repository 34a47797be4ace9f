//! The Merkle tree over log entries (RFC 9162 / RFC 6962 hashing, from `ct-merkle`), signed tree
//! heads, receipts (inclusion proofs) and consistency proofs.
//!
//! Leaves are the exact body texts of the entries. A tree head is signed by the enclave key of
//! the instance that produced it; a verifier checks that key against attestation before it
//! trusts the head.

use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use kura_crypto::{PublicIdentity, b64};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{LedgerError, LogEntry};

/// Signature domain of tree heads.
pub const HEAD_DOMAIN: &str = "tree-head-v1";

/// What a tree head says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    pub size: u64,
    /// Hex Merkle tree hash of the first `size` entries.
    pub root: String,
    pub time: String,
    /// The enclave key (text form) that signed this head.
    pub enclave_key: String,
}

/// A tree head with the enclave's signature over its exact JSON text: Ed25519, and ML-DSA-65
/// beside it when the enclave key signs with one (a hybrid signature: both must verify).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    pub body: String,
    pub signature: String,
    /// The ML-DSA-65 half (base64), from an enclave key that has one (`kura-pub-v3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pq_signature: Option<String>,
}

fn broken(reason: impl Into<String>) -> LedgerError {
    LedgerError::Proof(reason.into())
}

impl SignedTreeHead {
    /// Checks the signature, and that it was made by `key`.
    pub fn verify(&self, key: &PublicIdentity) -> Result<TreeHead, LedgerError> {
        let head: TreeHead =
            serde_json::from_str(&self.body).map_err(|e| broken(format!("tree head: {e}")))?;
        if PublicIdentity::parse(&head.enclave_key).ok().as_ref() != Some(key) {
            return Err(broken("tree head is signed by another enclave key"));
        }
        let sig = b64::decode(&self.signature).map_err(|e| broken(e.to_string()))?;
        let pq = match &self.pq_signature {
            Some(pq) => Some(b64::decode(pq).map_err(|e| broken(e.to_string()))?),
            None => None,
        };
        key.verify_hybrid(HEAD_DOMAIN, self.body.as_bytes(), &sig, pq.as_deref())
            .map_err(|_| broken("tree head signature does not verify"))?;
        Ok(head)
    }

    /// The head's content without checking the signature (for heads verified earlier).
    pub fn unverified(&self) -> Result<TreeHead, LedgerError> {
        serde_json::from_str(&self.body).map_err(|e| broken(format!("tree head: {e}")))
    }
}

impl TreeHead {
    fn root_hash(&self) -> Result<RootHash<Sha256>, LedgerError> {
        let bytes = hex::decode(&self.root).map_err(|_| broken("tree head root is not hex"))?;
        let digest = ct_merkle::digest::Output::<Sha256>::try_from(bytes.as_slice())
            .map_err(|_| broken("tree head root has the wrong length"))?;
        Ok(RootHash::new(digest, self.size))
    }
}

/// Proof that one entry is in the log: the entry, its index, a signed head, the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub entry: LogEntry,
    pub index: u64,
    pub tree_head: SignedTreeHead,
    /// Concatenated sibling hashes, base64.
    pub inclusion: String,
}

impl Receipt {
    /// Verifies the head's signature by `key` and the entry's inclusion under it.
    pub fn verify(&self, key: &PublicIdentity) -> Result<TreeHead, LedgerError> {
        let head = self.tree_head.verify(key)?;
        let body = self.entry.parse_body()?;
        if body.seq != self.index {
            return Err(broken(
                "receipt index does not match the entry's sequence number",
            ));
        }
        let proof = b64::decode(&self.inclusion)
            .ok()
            .and_then(|b| InclusionProof::<Sha256>::try_from_bytes(b).ok())
            .ok_or_else(|| broken("malformed inclusion proof"))?;
        head.root_hash()?
            .verify_inclusion(&self.entry.body.as_bytes(), self.index, &proof)
            .map_err(|_| broken("the entry is not in the tree the head signs"))?;
        Ok(head)
    }
}

/// Checks that `new` extends `old` (same first `old.size` entries).
pub fn verify_consistency(old: &TreeHead, new: &TreeHead, proof: &str) -> Result<(), LedgerError> {
    let forked = || {
        broken(
            "the log is not an extension of the one seen before: its history was rewritten or forked",
        )
    };
    if old.size > new.size {
        return Err(forked());
    }
    if old.size == 0 {
        return Ok(());
    }
    if old.size == new.size {
        return if old.root == new.root {
            Ok(())
        } else {
            Err(forked())
        };
    }
    let proof = b64::decode(proof)
        .ok()
        .and_then(|b| ConsistencyProof::<Sha256>::try_from_bytes(b).ok())
        .ok_or_else(|| broken("malformed consistency proof"))?;
    new.root_hash()?
        .verify_consistency(&old.root_hash()?, &proof)
        .map_err(|_| forked())
}

/// The Merkle tree hash (hex) of these entries.
pub fn root_of(entries: &[LogEntry]) -> String {
    let mut tree = ct_merkle::mem_backed_tree::MemoryBackedTree::<Sha256, Vec<u8>>::new();
    for e in entries {
        tree.push(e.body.as_bytes().to_vec());
    }
    hex::encode(tree.root().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(parts: &[&[u8]]) -> [u8; 32] {
        kura_crypto::sha256(&parts.concat())
    }

    fn entry(body: &str) -> LogEntry {
        LogEntry {
            body: body.into(),
            signature: String::new(),
        }
    }

    /// RFC 9162 §2.1.1: MTH({}) = SHA-256(), leaves hashed with prefix 0x00, nodes with 0x01,
    /// split at the largest power of two smaller than n.
    #[test]
    fn roots_follow_rfc9162() {
        assert_eq!(root_of(&[]), hex::encode(h(&[])));
        let (a, b, c) = (h(&[&[0], b"a"]), h(&[&[0], b"b"]), h(&[&[0], b"c"]));
        assert_eq!(root_of(&[entry("a")]), hex::encode(a));
        let ab = h(&[&[1], &a, &b]);
        assert_eq!(root_of(&[entry("a"), entry("b")]), hex::encode(ab));
        assert_eq!(
            root_of(&[entry("a"), entry("b"), entry("c")]),
            hex::encode(h(&[&[1], &ab, &c]))
        );
    }
}
