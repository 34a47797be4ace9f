//! Rebuilding state from the log when the service starts again.

use kura_contract::Contract;
use kura_ledger::{Event, LogEntry};

use super::State;
use crate::ServiceError;

/// Rebuilds what must survive a restart from the log: which datasets were deleted (they stay
/// deleted) and how many runs there were. Returns the datasets the previous instance held,
/// which are lost now. Refuses a log that belongs to another contract.
pub(super) fn recover(
    contract: &Contract,
    entries: &[LogEntry],
    state: &mut State,
) -> Result<Vec<String>, ServiceError> {
    let mut held = std::collections::BTreeSet::new();
    let bodies = entries
        .iter()
        .map(LogEntry::parse_body)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServiceError::Start(format!("stored log: {e}")))?;
    state.budget = kura_ledger::budget_spent(contract, bodies.iter().map(|b| &b.event));
    for body in &bodies {
        match &body.event {
            Event::EnclaveStarted { contract_id, .. } if contract_id != contract.id().as_str() => {
                return Err(ServiceError::Start(format!(
                    "the state directory holds the log of another contract ({contract_id}); use a new directory per contract"
                )));
            }
            Event::Upload { dataset, .. } => {
                held.insert(dataset.clone());
            }
            Event::Deletion { dataset, reason } => {
                held.remove(dataset);
                state.deleted.insert(dataset.clone(), reason.clone());
            }
            Event::Run { .. } => state.runs += 1,
            _ => {}
        }
    }
    Ok(held.into_iter().collect())
}
