//! Rebuilding state from the log when the service starts again.

use kura_contract::Contract;
use kura_ledger::{Event, LogEntry};

use super::{Batch, State, StoredDataset};
use crate::ServiceError;

/// Rebuilds what must survive a restart from the log: which datasets were deleted (they stay
/// deleted), the batches of the datasets at rest (whose keys their providers must release to
/// this instance), the privacy budget spent and how many runs there were. Returns the datasets
/// an older version held in memory only, which are lost now. Refuses a log that belongs to another contract,
/// and one whose entries are not each signed by an enclave whose start the log records with
/// evidence that verifies against the contract (as of the time it was recorded): the host
/// keeps the state directory and could otherwise add entries, or edit them, to restore a spent
/// budget or a deleted dataset.
pub(super) fn recover(
    contract: &Contract,
    entries: &[LogEntry],
    certs: &[Vec<u8>],
    state: &mut State,
) -> Result<Vec<String>, ServiceError> {
    let mut lost = std::collections::BTreeSet::new();
    let bodies = entries
        .iter()
        .map(LogEntry::parse_body)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServiceError::Start(format!("stored log: {e}")))?;
    if let Some(other) = bodies.iter().find_map(|b| match &b.event {
        Event::EnclaveStarted { contract_id, .. } if contract_id != contract.id().as_str() => {
            Some(contract_id)
        }
        _ => None,
    }) {
        return Err(ServiceError::Start(format!(
            "the state directory holds the log of another contract ({other}); use a new directory per contract"
        )));
    }
    kura_ledger::verify_chain(entries, |start| {
        let mut evidence = start.evidence.clone();
        evidence.certs.extend(certs.iter().cloned());
        start.verify(contract, &evidence)
    })
    .map_err(|e| {
        ServiceError::Start(format!(
            "the stored log does not verify, so nothing is rebuilt from it: {e}"
        ))
    })?;
    state.budget = kura_ledger::budget_spent(contract, bodies.iter().map(|b| &b.event));
    for body in &bodies {
        match &body.event {
            Event::Upload {
                dataset,
                stored: Some(stored),
                ..
            } => {
                let d = state
                    .datasets
                    .entry(dataset.clone())
                    .or_insert_with(|| StoredDataset {
                        location: stored.location.clone(),
                        store: None,
                        origin: None,
                        batches: Vec::new(),
                        open: Vec::new(),
                    });
                d.batches.push(Batch {
                    id: stored.batch.clone(),
                    object: stored.object.clone(),
                    bytes: stored.bytes,
                    footer_sha256: stored.footer_sha256.clone(),
                });
            }
            Event::Upload { dataset, .. } => {
                lost.insert(dataset.clone());
            }
            Event::Deletion { dataset, reason } => {
                lost.remove(dataset);
                state.datasets.remove(dataset);
                state.deleted.insert(dataset.clone(), reason.clone());
            }
            Event::Run { .. } => state.runs += 1,
            _ => {}
        }
    }
    Ok(lost.into_iter().collect())
}
