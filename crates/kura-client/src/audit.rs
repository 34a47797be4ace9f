//! Checks that every event in a verified log was allowed by the contract.
//!
//! The enclave enforces the contract when it acts; this check lets any party confirm, offline,
//! that what the log records is what the contract permits: no run of an analysis it does not
//! contain or by a party it does not allow, no release to a non-receiver, no upload by a
//! non-provider, no use or re-upload of a deleted dataset, no run that should have been
//! differentially private and was not, and no privacy budget overspent.

use std::collections::{BTreeMap, BTreeSet};

use kura_contract::dp::Budget;
use kura_contract::{ADHOC_ANALYSIS, Contract};
use kura_ledger::{EntryBody, Event};

/// The privacy budget as the log records it spent (`None` without `[privacy.dp]`).
pub fn budget(contract: &Contract, bodies: &[EntryBody]) -> Option<Budget> {
    kura_ledger::budget_spent(contract, bodies.iter().map(|b| &b.event))
}

/// Returns the first disallowed event, described.
pub fn check_events(contract: &Contract, bodies: &[EntryBody]) -> Result<(), String> {
    let mut budget = Budget::of(contract);
    let mut deleted: BTreeSet<&str> = BTreeSet::new();
    let mut runs: BTreeMap<&str, &str> = BTreeMap::new();
    // The stored batches of each dataset, by id.
    let mut batches: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // The executors admitted since the latest start (a restart makes a new authority, so every
    // executor must join again).
    let mut executors: BTreeSet<&str> = BTreeSet::new();
    let mut keys: BTreeSet<String> = BTreeSet::new();
    let mut challenges: BTreeSet<&String> = BTreeSet::new();
    let mut challenged = false;
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
                executors.clear();
                keys.clear();
            }
            Event::ExecutorJoined {
                executor,
                tls_key,
                evidence,
                challenge,
            } => {
                let key = kura_attestation::tls_key_id(tls_key).unwrap_or_else(|| tls_key.clone());
                if !keys.insert(key) {
                    return bad(format!(
                        "executor {executor:?} admitted with a TLS key already admitted since \
                         the last start"
                    ));
                }
                match challenge {
                    Some(challenge) => {
                        challenged = true;
                        if !challenges.insert(challenge) {
                            return bad(format!(
                                "executor {executor:?} admitted on a challenge already used"
                            ));
                        }
                    }
                    // A log admits executors without a challenge only before its first
                    // admission with one (logs older than challenges).
                    None if challenged => {
                        return bad(format!(
                            "executor {executor:?} admitted without a challenge after admissions \
                             with one"
                        ));
                    }
                    None => {}
                }
                let at = time::OffsetDateTime::parse(
                    &b.time,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok();
                if let Err(e) = kura_attestation::verify_executor(
                    evidence,
                    &contract.enclave,
                    contract.id(),
                    tls_key,
                    challenge.as_deref(),
                    at,
                ) {
                    return bad(format!(
                        "executor {executor:?} admitted on evidence that does not verify: {e}"
                    ));
                }
                if !executors.insert(executor) {
                    return bad(format!("executor {executor:?} admitted twice"));
                }
            }
            Event::ExecutorRefused { .. } => {}
            Event::ShuffleDeleted {
                executors: deleted_on,
                unreachable,
            } => {
                if let Some(stranger) = deleted_on
                    .iter()
                    .chain(unreachable)
                    .find(|e| !executors.contains(e.as_str()))
                {
                    return bad(format!(
                        "shuffle deletion on executor {stranger:?}, which was not admitted since \
                         the last start"
                    ));
                }
            }
            Event::Upload {
                dataset,
                provider,
                stored,
                ..
            } => {
                let Some(owner) = contract.provider_of(dataset) else {
                    return bad(format!(
                        "upload of {dataset:?}, which is not in the contract"
                    ));
                };
                if owner != provider {
                    return bad(format!(
                        "upload of {dataset:?} by {provider:?}, who is not its provider"
                    ));
                }
                if deleted.contains(dataset.as_str()) {
                    return bad(format!("upload of {dataset:?} after its deletion"));
                }
                if stored.is_some() && contract.model(dataset).is_some() {
                    return bad(format!(
                        "model {dataset:?} recorded at rest: models are held in memory only"
                    ));
                }
                if let Some(s) = stored
                    && !batches.entry(dataset).or_default().insert(&s.batch)
                {
                    return bad(format!("batch {:?} of {dataset:?} recorded twice", s.batch));
                }
            }
            Event::KeysReleased {
                dataset,
                party,
                batches: released,
            } => {
                if contract
                    .dataset(dataset)
                    .is_none_or(|d| &d.provider != party)
                {
                    return bad(format!(
                        "keys of {dataset:?} released by {party:?}, who is not its provider"
                    ));
                }
                if deleted.contains(dataset.as_str()) {
                    return bad(format!("keys of {dataset:?} released after its deletion"));
                }
                let known = batches.get(dataset.as_str());
                let released: BTreeSet<&str> = released.iter().map(String::as_str).collect();
                if known != Some(&released) {
                    return bad(format!(
                        "keys released for other batches of {dataset:?} than the log records"
                    ));
                }
            }
            Event::Run {
                run_id,
                analysis,
                by,
                datasets,
                dp,
                executors: ran_on,
                ..
            } => {
                if let Some(stranger) = ran_on.iter().find(|e| !executors.contains(e.as_str())) {
                    return bad(format!(
                        "run on executor {stranger:?}, which was not admitted since the last start"
                    ));
                }
                let Some(receivers) = contract.receivers_of(analysis) else {
                    return bad(format!("run of {analysis:?}, which is not in the contract"));
                };
                let must_be_dp = contract.privacy.dp.is_some()
                    && (analysis == ADHOC_ANALYSIS
                        || contract.analysis(analysis).is_some_and(|a| a.dp));
                match (dp, &mut budget) {
                    (None, _) if must_be_dp => {
                        return bad(format!(
                            "run of {analysis:?} without differential privacy, which the contract requires"
                        ));
                    }
                    (Some(_), None) => {
                        return bad("a DP spend, but the contract has no [privacy.dp]".into());
                    }
                    (Some(spend), Some(budget)) => {
                        if let Err(why) = budget.charge(receivers, *spend) {
                            return bad(why);
                        }
                    }
                    (None, _) => {}
                }
                if !contract.may_start(by, analysis) {
                    return bad(format!(
                        "run of {analysis:?} by {by:?}, who may not start it"
                    ));
                }
                if let Some(d) = datasets.iter().find(|d| deleted.contains(d.as_str())) {
                    return bad(format!("run read {d:?} after its deletion"));
                }
                if let Some(d) = datasets.iter().find(|d| contract.provider_of(d).is_none()) {
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
                let receivers = contract.receivers_of(analysis).expect("checked at the run");
                if !receivers.contains(receiver) {
                    return bad(format!(
                        "release to {receiver:?}, who is not a receiver of {analysis:?}"
                    ));
                }
            }
            Event::Deletion { dataset, .. } => {
                if contract.provider_of(dataset).is_none() {
                    return bad(format!(
                        "deletion of {dataset:?}, which is not in the contract"
                    ));
                }
                deleted.insert(dataset);
            }
            Event::RunRefused {
                party,
                analysis,
                dp: Some(spend),
                ..
            } => {
                if !is_party(party) {
                    return bad(format!("{party:?} is not a party"));
                }
                let Some(receivers) = contract.receivers_of(analysis) else {
                    return bad(format!(
                        "a charge for {analysis:?}, which is not in the contract"
                    ));
                };
                let Some(budget) = &mut budget else {
                    return bad("a DP spend, but the contract has no [privacy.dp]".into());
                };
                if let Err(why) = budget.charge(receivers, *spend) {
                    return bad(why);
                }
            }
            Event::UploadRefused { party, .. } | Event::RunRefused { party, .. } => {
                if !is_party(party) {
                    return bad(format!("{party:?} is not a party"));
                }
            }
            Event::BatchRefused {
                dataset,
                party,
                batch,
                ..
            } => {
                if contract
                    .dataset(dataset)
                    .is_none_or(|d| &d.provider != party)
                {
                    return bad(format!(
                        "batch of {dataset:?} refused at a release by {party:?}, who is not its \
                         provider"
                    ));
                }
                if !batches
                    .get(dataset.as_str())
                    .is_some_and(|b| b.contains(batch.as_str()))
                {
                    return bad(format!(
                        "batch {batch:?} of {dataset:?} refused, never uploaded"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kura_crypto::SecretIdentity;

    use super::*;

    fn contract() -> Contract {
        let text = kura_contract::example::fill(
            include_str!("../../../testdata/contracts/audit-minimal.toml"),
            |_| SecretIdentity::generate().public().to_text(),
        );
        Contract::parse(text.as_bytes()).unwrap()
    }

    fn bodies(events: Vec<Event>) -> Vec<EntryBody> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| EntryBody {
                seq: i as u64,
                prev: String::new(),
                time: String::new(),
                event,
            })
            .collect()
    }

    fn upload(provider: &str) -> Event {
        Event::Upload {
            dataset: "ehr".into(),
            provider: provider.into(),
            rows: 1,
            ciphertext_bytes: 1,
            ciphertext_sha256: String::new(),
            request: None,
            stored: None,
        }
    }

    fn stored_upload(batch: &str) -> Event {
        let mut e = upload("hospital-a");
        if let Event::Upload { stored, .. } = &mut e {
            *stored = Some(kura_ledger::StoredBatch {
                batch: batch.into(),
                location: "local".into(),
                object: format!("kura/c/ehr/{batch}.parquet"),
                bytes: 1,
                footer_sha256: String::new(),
                key: kura_crypto::Sealed {
                    enc: vec![],
                    ct: vec![],
                },
            });
        }
        e
    }

    fn keys_released(party: &str, batches: &[&str]) -> Event {
        Event::KeysReleased {
            dataset: "ehr".into(),
            party: party.into(),
            batches: batches.iter().map(|b| b.to_string()).collect(),
        }
    }

    /// An executor is admitted on evidence that binds its key and its join's challenge; a log
    /// that admits one key twice in a start, or one challenge twice, is refused. After a
    /// restart (a new authority) the same key may join again, on a new challenge.
    #[test]
    fn an_executor_key_or_challenge_is_admitted_once() {
        use kura_attestation::simulated::SimulatedHardware;
        let c = contract();
        let hardware = SimulatedHardware::new();
        let started = || Event::EnclaveStarted {
            contract_id: c.id().to_string(),
            enclave_key: String::new(),
            evidence: hardware.issue(&[1; 48], &[0; 64], false),
        };
        let joined = |name: &str, key: &str, challenge: &str| Event::ExecutorJoined {
            executor: name.into(),
            tls_key: key.into(),
            evidence: hardware.issue(
                &[1; 48],
                &kura_attestation::executor_report_data(c.id(), key, challenge),
                false,
            ),
            challenge: Some(challenge.into()),
        };
        let pem =
            |body: &str| format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n");
        let (one, two) = (pem("AAEC"), pem("AwQF"));
        // The same key in other words: text before its block, other line breaks.
        let one_again = "key:\n-----BEGIN PUBLIC KEY-----\r\nAA\nEC\r\n-----END PUBLIC KEY-----";
        let ok = [
            started(),
            joined("e1", &one, "c1"),
            joined("e2", &two, "c2"),
            started(),
            joined("e1", &one, "c3"),
        ];
        check_events(&c, &bodies(ok.to_vec())).unwrap();
        let twice_key = [
            started(),
            joined("e1", &one, "c1"),
            joined("e2", one_again, "c2"),
        ];
        let e = check_events(&c, &bodies(twice_key.to_vec())).unwrap_err();
        assert!(e.contains("TLS key already admitted"), "{e}");
        let twice_challenge = [
            started(),
            joined("e1", &one, "c1"),
            joined("e2", &two, "c1"),
        ];
        let e = check_events(&c, &bodies(twice_challenge.to_vec())).unwrap_err();
        assert!(e.contains("challenge already used"), "{e}");
        // No challenge after admissions with one (the binding without is for older logs).
        let mut unchallenged = joined("e2", &two, "c2");
        if let Event::ExecutorJoined { challenge, .. } = &mut unchallenged {
            *challenge = None;
        }
        let log = [started(), joined("e1", &one, "c1"), unchallenged];
        let e = check_events(&c, &bodies(log.to_vec())).unwrap_err();
        assert!(e.contains("without a challenge"), "{e}");
        // Evidence that binds another challenge than the one recorded.
        let mut swapped = joined("e1", &one, "c1");
        if let Event::ExecutorJoined { challenge, .. } = &mut swapped {
            *challenge = Some("c9".into());
        }
        let e = check_events(&c, &bodies(vec![started(), swapped])).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
    }

    /// A release names every batch the log records for the dataset, comes from its provider,
    /// and never follows the dataset's deletion.
    #[test]
    fn key_releases_must_match_the_recorded_batches() {
        let c = contract();
        let ok = vec![
            stored_upload("b1"),
            stored_upload("b2"),
            keys_released("hospital-a", &["b2", "b1"]),
        ];
        check_events(&c, &bodies(ok)).unwrap();
        let cases = [
            (
                vec![stored_upload("b1"), keys_released("fitness-b", &["b1"])],
                "not its provider",
            ),
            (
                vec![
                    stored_upload("b1"),
                    keys_released("hospital-a", &["b1", "b2"]),
                ],
                "other batches",
            ),
            (
                vec![
                    stored_upload("b1"),
                    stored_upload("b2"),
                    keys_released("hospital-a", &["b1"]),
                ],
                "other batches",
            ),
            (
                vec![
                    stored_upload("b1"),
                    deletion(),
                    keys_released("hospital-a", &["b1"]),
                ],
                "after its deletion",
            ),
            (
                vec![stored_upload("b1"), stored_upload("b1")],
                "recorded twice",
            ),
        ];
        for (events, expected) in cases {
            let err = check_events(&c, &bodies(events)).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    fn run(analysis: &str, by: &str) -> Event {
        Event::Run {
            run_id: "r1".into(),
            analysis: analysis.into(),
            by: by.into(),
            datasets: vec!["ehr".into()],
            rows: None,
            suppressed_groups: None,
            sql: None,
            dp: None,
            request: None,
            executors: Vec::new(),
        }
    }

    fn dp_run(analysis: &str, epsilon: f64) -> Event {
        let mut e = run(analysis, "hospital-a");
        if let Event::Run { dp, .. } = &mut e {
            *dp = Some(kura_contract::dp::Spend {
                epsilon,
                delta: 0.0,
            });
        }
        e
    }

    #[test]
    fn overspent_or_missing_privacy_budgets_are_named() {
        let text = String::from_utf8(contract().bytes().to_vec())
            .unwrap()
            .replace(
                "receivers = [\"hospital-a\"]",
                "receivers = [\"hospital-a\"]\ndp = true",
            )
            + "[privacy.dp]\nepsilon = 1.0\nquery_epsilon = 0.5\n";
        let c = Contract::parse(text.as_bytes()).unwrap();
        let spends = vec![
            upload("hospital-a"),
            dp_run("count", 0.5),
            dp_run("count", 0.5),
        ];
        check_events(&c, &bodies(spends.clone())).unwrap();
        let b = budget(&c, &bodies(spends)).unwrap().accounts_report();
        assert_eq!((b[0].spent_epsilon, b[0].remaining_epsilon), (1.0, 0.0));
        let cases = [
            (
                vec![
                    dp_run("count", 0.5),
                    dp_run("count", 0.5),
                    dp_run("count", 0.5),
                ],
                "would be exceeded",
            ),
            (
                vec![run("count", "hospital-a")],
                "without differential privacy",
            ),
            // A failed run charged after it read data counts like a release.
            (
                vec![
                    dp_run("count", 0.5),
                    charged_failure("count", 0.5),
                    dp_run("count", 0.5),
                ],
                "would be exceeded",
            ),
            (
                vec![charged_failure("no-such-analysis", 0.1)],
                "not in the contract",
            ),
        ];
        for (events, expected) in cases {
            let err = check_events(&c, &bodies(events)).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        // A spend where the contract has no [privacy.dp].
        for spend in [dp_run("count", 0.1), charged_failure("count", 0.1)] {
            let err = check_events(&contract(), &bodies(vec![spend])).unwrap_err();
            assert!(err.contains("no [privacy.dp]"), "{err}");
        }
        // The replay counts the charged failure too.
        let log = bodies(vec![dp_run("count", 0.25), charged_failure("count", 0.5)]);
        let b = budget(&c, &log).unwrap().accounts_report();
        assert_eq!(b[0].spent_epsilon, 0.75);
    }

    fn charged_failure(analysis: &str, epsilon: f64) -> Event {
        Event::RunRefused {
            analysis: analysis.into(),
            party: "hospital-a".into(),
            reason: "the query failed while running: a division by zero".into(),
            sql: None,
            dp: Some(kura_contract::dp::Spend {
                epsilon,
                delta: 0.0,
            }),
        }
    }

    fn release(receiver: &str) -> Event {
        Event::Release {
            run_id: "r1".into(),
            receiver: receiver.into(),
            result_sha256: String::new(),
        }
    }

    fn deletion() -> Event {
        Event::Deletion {
            dataset: "ehr".into(),
            reason: "run".into(),
        }
    }

    #[test]
    fn an_honest_history_passes() {
        let c = contract();
        let log = bodies(vec![
            upload("hospital-a"),
            run("count", "hospital-a"),
            release("hospital-a"),
            deletion(),
        ]);
        check_events(&c, &log).unwrap();
    }

    #[test]
    fn disallowed_events_are_named() {
        let c = contract();
        let cases = [
            (vec![upload("fitness-b")], "who is not its provider"),
            (
                vec![upload("hospital-a"), run("everything", "hospital-a")],
                "not in the contract",
            ),
            (
                vec![upload("hospital-a"), run("count", "fitness-b")],
                "who may not start it",
            ),
            (
                vec![
                    upload("hospital-a"),
                    run("count", "hospital-a"),
                    release("fitness-b"),
                ],
                "not a receiver",
            ),
            (vec![release("hospital-a")], "which did not run"),
            (
                vec![upload("hospital-a"), deletion(), run("count", "hospital-a")],
                "after its deletion",
            ),
            (
                vec![upload("hospital-a"), deletion(), upload("hospital-a")],
                "after its deletion",
            ),
        ];
        for (events, expected) in cases {
            let err = check_events(&c, &bodies(events)).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
