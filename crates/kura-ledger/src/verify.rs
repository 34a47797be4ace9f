//! Offline verification of a whole log.

use kura_attestation::Evidence;
use kura_crypto::{PublicIdentity, b64};
use serde::Serialize;

use crate::{ENTRY_DOMAIN, Event, GENESIS, LedgerError, LogEntry};

/// What a verified log contains.
#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    pub entries: u64,
    pub enclave_starts: u64,
    /// SHA-256 of the last entry's body (the end of the hash chain).
    pub head: String,
    /// Merkle tree hash (hex) of all entries: must equal the root of a signed tree head.
    pub root: String,
}

/// An `enclave_started` entry, for the caller to verify.
#[derive(Debug)]
pub struct Start<'a> {
    pub contract_id: &'a str,
    pub key: &'a PublicIdentity,
    pub evidence: &'a Evidence,
    /// When the entry was appended (RFC 3339): the time to verify the evidence at.
    pub time: &'a str,
}

impl Start<'_> {
    /// [`Start::time`] parsed; `None` if it is not RFC 3339 (then verify as of now).
    pub fn at(&self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::parse(self.time, &time::format_description::well_known::Rfc3339).ok()
    }

    /// Checks this start against `contract`: for its contract, and with `evidence` (this
    /// start's, perhaps completed with certificates it lacked) verifying against the
    /// contract's `[enclave]` policy and binding the key, as of the time it was recorded.
    pub fn verify(
        &self,
        contract: &kura_contract::Contract,
        evidence: &Evidence,
    ) -> Result<(), String> {
        if self.contract_id != contract.id().as_str() {
            return Err(format!(
                "enclave started for another contract {}",
                self.contract_id
            ));
        }
        kura_attestation::verify_enclave_at(
            evidence,
            &contract.enclave,
            contract.id(),
            self.key,
            self.at(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

/// Verifies chain links, sequence numbers, and every signature. `check_start` is called for
/// each `enclave_started` event; it must verify the evidence (platform, measurement, binding)
/// of the key that signs from then on.
pub fn verify_chain(
    entries: &[LogEntry],
    mut check_start: impl FnMut(Start<'_>) -> Result<(), String>,
) -> Result<ChainReport, LedgerError> {
    let mut prev = GENESIS.to_string();
    let mut key: Option<PublicIdentity> = None;
    let mut starts = 0;
    for (i, entry) in entries.iter().enumerate() {
        let seq = i as u64;
        let broken = |reason: String| LedgerError::Broken { seq, reason };
        let body = entry.parse_body().map_err(|e| broken(e.to_string()))?;
        if body.seq != seq {
            return Err(broken(format!("sequence number {} out of place", body.seq)));
        }
        if body.prev != prev {
            return Err(broken(
                "does not chain to the previous entry (edited, removed or reordered)".into(),
            ));
        }
        if let Event::EnclaveStarted {
            contract_id,
            enclave_key,
            evidence,
        } = &body.event
        {
            let k = PublicIdentity::parse(enclave_key).map_err(|e| broken(e.to_string()))?;
            check_start(Start {
                contract_id,
                key: &k,
                evidence,
                time: &body.time,
            })
            .map_err(|e| broken(format!("enclave evidence refused: {e}")))?;
            key = Some(k);
            starts += 1;
        }
        let k = key
            .as_ref()
            .ok_or_else(|| broken("entry precedes any attested enclave start".into()))?;
        let sig = b64::decode(&entry.signature).map_err(|e| broken(e.to_string()))?;
        k.verify(ENTRY_DOMAIN, entry.body.as_bytes(), &sig)
            .map_err(|_| broken("signature by the attested enclave key does not verify".into()))?;
        prev = entry.hash();
    }
    Ok(ChainReport {
        entries: entries.len() as u64,
        enclave_starts: starts,
        head: prev,
        root: crate::root_of(entries),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kura_attestation::Evidence;
    use kura_contract::Platform;
    use kura_crypto::SecretIdentity;

    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::{Ledger, verify_consistency};

    fn start(key: &SecretIdentity) -> Event {
        Event::EnclaveStarted {
            contract_id: "c".into(),
            enclave_key: key.public().to_text(),
            evidence: Evidence::new(Platform::Simulated, b"evidence".to_vec()),
        }
    }

    fn deletion(n: u32) -> Event {
        Event::Deletion {
            dataset: format!("d{n}"),
            reason: "test".into(),
        }
    }

    fn accept(_: Start<'_>) -> Result<(), String> {
        Ok(())
    }

    fn sample() -> (tempfile::TempDir, Vec<LogEntry>) {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretIdentity::generate());
        let mut l = Ledger::open(&dir.path().join("log"), key.clone()).unwrap();
        l.append(start(&key)).unwrap();
        for n in 0..4 {
            l.append(deletion(n)).unwrap();
        }
        let entries = l.entries().to_vec();
        (dir, entries)
    }

    #[test]
    fn a_clean_log_verifies_and_survives_reopening() {
        let (dir, entries) = sample();
        let report = verify_chain(&entries, accept).unwrap();
        assert_eq!(report.entries, 5);
        // A restarted service with a new key continues the same chain.
        let key2 = Arc::new(SecretIdentity::generate());
        let mut l = Ledger::open(&dir.path().join("log"), key2.clone()).unwrap();
        assert_eq!(l.entries().len(), 5);
        l.append(start(&key2)).unwrap();
        l.append(deletion(9)).unwrap();
        let report = verify_chain(l.entries(), accept).unwrap();
        assert_eq!((report.entries, report.enclave_starts), (7, 2));
    }

    #[test]
    fn the_clock_never_goes_behind_what_the_log_recorded_or_was_shown() {
        let (dir, _) = sample();
        let key = Arc::new(SecretIdentity::generate());
        let path = dir.path().join("log");
        let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let mut l = Ledger::open(&path, key.clone()).unwrap();
        // A party's signed time an hour ahead of the guest clock (within what the service
        // accepts is the service's business): the log's clock moves up to it.
        l.observe(later);
        assert!(l.now() >= later);
        l.append(deletion(9)).unwrap();
        let time = |e: &LogEntry| {
            time::OffsetDateTime::parse(&e.parse_body().unwrap().time, &Rfc3339).unwrap()
        };
        assert!(time(l.entries().last().unwrap()) >= later);
        let head: crate::TreeHead = l.tree_head().unverified().unwrap();
        assert!(time::OffsetDateTime::parse(&head.time, &Rfc3339).unwrap() >= later);
        // Reopened (a restart), the clock starts from the last recorded time.
        drop(l);
        let l = Ledger::open(&path, key).unwrap();
        assert!(l.now() >= later);
        // An earlier time shown later moves nothing back.
        let mut l = l;
        l.observe(time::OffsetDateTime::UNIX_EPOCH);
        assert!(l.now() >= later);
    }

    #[test]
    fn edits_removals_reorders_and_forged_signatures_are_detected() {
        let (_dir, entries) = sample();
        let edited = {
            let mut e = entries.clone();
            e[2].body = e[2].body.replace("d1", "dX");
            e
        };
        let removed: Vec<_> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, e)| e.clone())
            .collect();
        let reordered = {
            let mut e = entries.clone();
            e.swap(2, 3);
            e
        };
        let forged = {
            let mut e = entries.clone();
            let mallory = SecretIdentity::generate();
            e[4].signature = b64::encode(mallory.sign(ENTRY_DOMAIN, e[4].body.as_bytes()));
            e
        };
        for (name, log) in [
            ("edited", edited),
            ("removed", removed),
            ("reordered", reordered),
            ("forged", forged),
        ] {
            let err = verify_chain(&log, accept).unwrap_err();
            assert!(matches!(err, LedgerError::Broken { .. }), "{name}: {err}");
        }
        // A refused evidence check fails the whole log.
        assert!(verify_chain(&entries, |_| Err("bad".into())).is_err());
        // Entries before any enclave start have no key to check them.
        assert!(verify_chain(&entries[1..], accept).is_err());
    }

    /// Under an enclave key that signs with ML-DSA-65 (as every start's does), so each head
    /// carries a hybrid signature.
    #[test]
    fn receipts_verify_for_every_entry_and_fail_when_altered() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretIdentity::generate_post_quantum());
        let mut l = Ledger::open(&dir.path().join("log"), key.clone()).unwrap();
        l.append(start(&key)).unwrap();
        for n in 0..20 {
            let r = l.append(deletion(n)).unwrap();
            r.verify(key.public()).unwrap();
        }
        for seq in 0..21 {
            let r = l.receipt(seq).unwrap();
            let head = r.verify(key.public()).unwrap();
            assert_eq!(
                (head.size, head.root.as_str()),
                (21, crate::root_of(l.entries()).as_str())
            );
        }
        let good = l.receipt(7).unwrap();
        let mut edited = good.clone();
        edited.entry.body = edited.entry.body.replace("d6", "dX");
        let mut moved = good.clone();
        moved.index = 8;
        let mut other_proof = good.clone();
        other_proof.inclusion = l.receipt(8).unwrap().inclusion;
        let mut forged_head = good.clone();
        forged_head.tree_head.body = forged_head
            .tree_head
            .body
            .replace("\"size\":21", "\"size\":22");
        // A head without its post-quantum half, or with another key's.
        let mut classic_only = good.clone();
        assert!(classic_only.tree_head.pq_signature.take().is_some());
        let mut other_pq = good.clone();
        other_pq.tree_head.pq_signature = SecretIdentity::generate_post_quantum()
            .sign_post_quantum(crate::merkle::HEAD_DOMAIN, good.tree_head.body.as_bytes())
            .map(b64::encode);
        for (name, r) in [
            ("edited", edited),
            ("moved", moved),
            ("other proof", other_proof),
            ("forged head", forged_head),
            ("no post-quantum half", classic_only),
            ("another post-quantum half", other_pq),
        ] {
            assert!(r.verify(key.public()).is_err(), "{name}");
        }
        // A head signed by another key is refused.
        assert!(good.verify(SecretIdentity::generate().public()).is_err());
    }

    /// A head is signed once for a burst of requests, and afresh once the log grows or its
    /// clock's floor moves.
    #[test]
    fn a_head_is_signed_again_only_when_the_log_or_its_clock_moved() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretIdentity::generate_post_quantum());
        let mut l = Ledger::open(&dir.path().join("log"), key.clone()).unwrap();
        l.append(start(&key)).unwrap();
        let first = l.tree_head();
        assert_eq!(l.tree_head(), first);
        l.append(deletion(1)).unwrap();
        let grown = l.tree_head();
        assert_ne!(grown, first);
        assert_eq!(grown.verify(key.public()).unwrap().size, 2);
        l.observe(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
        assert_ne!(l.tree_head(), grown);
    }

    #[test]
    fn consistency_holds_between_every_pair_of_heads_and_forks_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretIdentity::generate());
        let path = dir.path().join("log");
        let mut heads = vec![];
        {
            let mut l = Ledger::open(&path, key.clone()).unwrap();
            l.append(start(&key)).unwrap();
            heads.push(l.tree_head().verify(key.public()).unwrap());
            for n in 0..12 {
                l.append(deletion(n)).unwrap();
                heads.push(l.tree_head().verify(key.public()).unwrap());
            }
            for old in &heads {
                let proof = l.consistency(old.size).unwrap();
                verify_consistency(old, heads.last().unwrap(), &proof).unwrap();
            }
            assert!(l.consistency(100).is_err());
        }
        // Fork: copy the stored log after 13 entries, let both copies grow differently.
        let fork_path = dir.path().join("fork");
        std::fs::copy(&path, &fork_path).unwrap();
        let mut a = Ledger::open(&path, key.clone()).unwrap();
        let mut b = Ledger::open(&fork_path, key.clone()).unwrap();
        a.append(deletion(100)).unwrap();
        b.append(deletion(200)).unwrap();
        b.append(deletion(201)).unwrap();
        let seen = a.tree_head().verify(key.public()).unwrap();
        let b_head = b.tree_head().verify(key.public()).unwrap();
        let err =
            verify_consistency(&seen, &b_head, &b.consistency(seen.size).unwrap()).unwrap_err();
        assert!(err.to_string().contains("rewritten or forked"), "{err}");
        // Both still extend the common prefix.
        verify_consistency(&heads[12], &b_head, &b.consistency(13).unwrap()).unwrap();
        // Rolling back (a shorter log than seen) is caught too.
        let earlier = Ledger::open(&dir.path().join("empty"), key.clone()).unwrap();
        assert!(earlier.consistency(seen.size).is_err());
    }

    #[test]
    fn the_chain_root_equals_the_signed_root() {
        let (dir, entries) = sample();
        let l = Ledger::open(
            &dir.path().join("log"),
            Arc::new(SecretIdentity::generate()),
        )
        .unwrap();
        let report = verify_chain(&entries, accept).unwrap();
        assert_eq!(report.root, l.tree_head().unverified().unwrap().root);
    }
}
