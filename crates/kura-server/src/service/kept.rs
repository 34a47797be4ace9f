//! Sealed results kept for their receivers, across restarts.
//!
//! A result is sealed to its receiver's key before it is kept, so the state directory (the
//! host's disk) may hold it: `results/<run id>.json`, written whole and synced before the run
//! answers. At start, a kept result is taken back only if the verified log records its release
//! at the index it names, for the same run, receiver and ciphertext; anything else the host put
//! there is ignored. A result sealed by an earlier start is served with that start's record, so
//! that its receiver can check the signature of a key that no longer runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use kura_crypto::Sealed;
use kura_ledger::{Event, LogEntry};
use serde::{Deserialize, Serialize};

/// A result sealed to one receiver, as kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Kept {
    pub(super) run_id: String,
    pub(super) analysis: String,
    pub(super) receiver: String,
    pub(super) sealed: Sealed,
    /// Index of the log entry that records its release.
    pub(super) release: u64,
    /// The key (text) of the enclave start that signed and sealed it.
    pub(super) signer: String,
}

const DIR: &str = "results";

/// Writes one run's results under `state`, replacing nothing else.
pub(super) fn save(state: &Path, run_id: &str, kept: &[Kept]) -> std::io::Result<()> {
    let dir = state.join(DIR);
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    tmp.write_all(&serde_json::to_vec(kept).map_err(std::io::Error::other)?)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(format!("{run_id}.json")))
        .map_err(|e| e.error)?;
    Ok(())
}

/// The kept results under `state` whose release `entries` (a verified log) record, by run.
pub(super) fn load(state: &Path, entries: &[LogEntry]) -> BTreeMap<String, Vec<Kept>> {
    let mut runs = BTreeMap::new();
    let Ok(files) = std::fs::read_dir(state.join(DIR)) else {
        return runs;
    };
    for file in files.flatten() {
        let path = file.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(kept) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Kept>>(&b).ok())
        else {
            tracing::warn!(file = %path.display(), "a kept result file does not parse; ignored");
            continue;
        };
        let (recorded, other): (Vec<Kept>, Vec<Kept>) =
            kept.into_iter().partition(|k| released(k, entries));
        if !other.is_empty() {
            tracing::warn!(
                file = %path.display(),
                results = other.len(),
                "kept results whose release the log does not record; ignored"
            );
        }
        for k in recorded {
            runs.entry(k.run_id.clone())
                .or_insert_with(Vec::new)
                .push(k);
        }
    }
    runs
}

/// Whether the log records `k`'s release where `k` says, made by the start `k` names.
fn released(k: &Kept, entries: &[LogEntry]) -> bool {
    let Some(body) = usize::try_from(k.release)
        .ok()
        .and_then(|i| entries.get(i))
        .and_then(|e| e.parse_body().ok())
    else {
        return false;
    };
    let sha = hex::encode(kura_crypto::sha256(&k.sealed.ct));
    matches!(&body.event, Event::Release { run_id, receiver, result_sha256 }
        if run_id == &k.run_id && receiver == &k.receiver && result_sha256 == &sha)
        && start_of(entries, k.release).as_deref() == Some(k.signer.as_str())
}

/// The key (text) of the last enclave start before entry `index`.
pub(super) fn start_of(entries: &[LogEntry], index: u64) -> Option<String> {
    entries[..usize::try_from(index).ok()?.min(entries.len())]
        .iter()
        .rev()
        .find_map(|e| match e.parse_body().ok()?.event {
            Event::EnclaveStarted { enclave_key, .. } => Some(enclave_key),
            _ => None,
        })
}

/// The index of the start whose key is `signer`.
pub(super) fn start_index(entries: &[LogEntry], signer: &str) -> Option<u64> {
    entries
        .iter()
        .position(|e| {
            matches!(e.parse_body().map(|b| b.event),
            Ok(Event::EnclaveStarted { enclave_key, .. }) if enclave_key == signer)
        })
        .map(|i| i as u64)
}
