//! Checks that every event in a verified log was allowed by the contract.
//!
//! The enclave enforces the contract when it acts; this check lets any party confirm, offline,
//! that what the log records is what the contract permits: no run of an analysis it does not
//! contain or by a party it does not allow, no release to a non-receiver, no upload by a
//! non-provider, no use or re-upload of a deleted dataset.

use std::collections::{BTreeMap, BTreeSet};

use kura_contract::Contract;
use kura_ledger::{EntryBody, Event};

/// Returns the first disallowed event, described.
pub fn check_events(contract: &Contract, bodies: &[EntryBody]) -> Result<(), String> {
    let mut deleted: BTreeSet<&str> = BTreeSet::new();
    let mut runs: BTreeMap<&str, &str> = BTreeMap::new();
    for b in bodies {
        let bad = |why: String| Err(format!("entry {} ({}): {why}", b.seq, b.event.kind()));
        let is_party = |p: &str| contract.party(p).is_some();
        match &b.event {
            Event::EnclaveStarted { contract_id, .. } => {
                if contract_id != contract.id().as_str() {
                    return bad(format!(
                        "enclave started for another contract {contract_id}"
                    ));
                }
            }
            Event::Upload {
                dataset, provider, ..
            } => {
                let Some(d) = contract.dataset(dataset) else {
                    return bad(format!(
                        "upload of {dataset:?}, which is not in the contract"
                    ));
                };
                if &d.provider != provider {
                    return bad(format!(
                        "upload of {dataset:?} by {provider:?}, who is not its provider"
                    ));
                }
                if deleted.contains(dataset.as_str()) {
                    return bad(format!("upload of {dataset:?} after its deletion"));
                }
            }
            Event::Run {
                run_id,
                analysis,
                by,
                datasets,
                ..
            } => {
                let Some(a) = contract.analysis(analysis) else {
                    return bad(format!("run of {analysis:?}, which is not in the contract"));
                };
                if !contract.may_run(by, a) {
                    return bad(format!(
                        "run of {analysis:?} by {by:?}, who may not start it"
                    ));
                }
                if let Some(d) = datasets.iter().find(|d| deleted.contains(d.as_str())) {
                    return bad(format!("run read {d:?} after its deletion"));
                }
                if let Some(d) = datasets.iter().find(|d| contract.dataset(d).is_none()) {
                    return bad(format!("run read {d:?}, which is not in the contract"));
                }
                runs.insert(run_id, analysis);
            }
            Event::Release {
                run_id, receiver, ..
            } => {
                let Some(analysis) = runs.get(run_id.as_str()) else {
                    return bad(format!("release of {run_id:?}, which did not run"));
                };
                let a = contract.analysis(analysis).expect("checked at the run");
                if !a.receivers.contains(receiver) {
                    return bad(format!(
                        "release to {receiver:?}, who is not a receiver of {analysis:?}"
                    ));
                }
            }
            Event::Deletion { dataset, .. } => {
                if contract.dataset(dataset).is_none() {
                    return bad(format!(
                        "deletion of {dataset:?}, which is not in the contract"
                    ));
                }
                deleted.insert(dataset);
            }
            Event::UploadRefused { party, .. } | Event::RunRefused { party, .. } => {
                if !is_party(party) {
                    return bad(format!("{party:?} is not a party"));
                }
            }
        }
    }
    Ok(())
}
