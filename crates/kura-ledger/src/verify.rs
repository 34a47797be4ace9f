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
    pub head: String,
}

/// Verifies chain links, sequence numbers, and every signature. `check_start` is called for
/// each `enclave_started` event with its contract id, key and evidence; it must verify the
/// evidence (platform, measurement, binding) and return the key that signs from then on.
pub fn verify_chain(
    entries: &[LogEntry],
    mut check_start: impl FnMut(&str, &PublicIdentity, &Evidence) -> Result<(), String>,
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
            check_start(contract_id, &k, evidence)
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
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kura_attestation::Evidence;
    use kura_contract::Platform;
    use kura_crypto::SecretIdentity;

    use super::*;
    use crate::Ledger;

    fn start(key: &SecretIdentity) -> Event {
        Event::EnclaveStarted {
            contract_id: "c".into(),
            enclave_key: key.public().to_text(),
            evidence: Evidence {
                platform: Platform::Simulated,
                data: b"evidence".to_vec(),
            },
        }
    }

    fn deletion(n: u32) -> Event {
        Event::Deletion {
            dataset: format!("d{n}"),
            reason: "test".into(),
        }
    }

    fn accept(_: &str, _: &PublicIdentity, _: &Evidence) -> Result<(), String> {
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
        assert!(verify_chain(&entries, |_, _, _| Err("bad".into())).is_err());
        // Entries before any enclave start have no key to check them.
        assert!(verify_chain(&entries[1..], accept).is_err());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_on_open() {
        let (dir, _) = sample();
        let path = dir.path().join("log");
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        bytes.extend_from_slice(b"{\"body\":\"{\\\"seq\\\":5,");
        std::fs::write(&path, &bytes).unwrap();
        let l = Ledger::open(&path, Arc::new(SecretIdentity::generate())).unwrap();
        assert_eq!(l.entries().len(), 5);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, full);
    }
}
