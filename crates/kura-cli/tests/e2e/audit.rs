//! The audit log: forks, rollbacks, restarts and deadlines.

use kura_client::ClientError;
use kura_ledger::Event;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn forks_and_rollbacks_of_the_log_are_caught_by_a_client_that_saw_it() {
    let room = room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    let room = room.stop().await;
    let (state, contract) = (room.state(), &room.contract);
    let copy = |name: &str| {
        let to = room.dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(state.join("log.redb"), to.join("log.redb")).unwrap();
        to
    };
    // The host keeps an old copy of the state, and later a second copy to fork from.
    let old = copy("state-old");
    let a = start(contract, &state).await;
    let mut client = room.client(&a.url(), "fitness-b");
    client.audit().await.unwrap();
    let seen = client.known_head().unwrap().clone();
    a.shutdown().await.unwrap();
    let fork = copy("state-fork");

    // The honest continuation extends what the client saw.
    let honest = start(contract, &state).await;
    let mut c = room
        .client(&honest.url(), "fitness-b")
        .with_known_head(Some(seen));
    c.attest().await.unwrap();
    c.audit().await.unwrap();
    let later = c.known_head().unwrap().clone();
    honest.shutdown().await.unwrap();

    // A fork made from the same prefix does not extend the later head.
    let forked = start(contract, &fork).await;
    let mut c = room
        .client(&forked.url(), "fitness-b")
        .with_known_head(Some(later.clone()));
    let err = c.attest().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Log(r) if r.contains("rewritten or forked")),
        "{err}"
    );
    forked.shutdown().await.unwrap();

    // The old copy is shorter than what the client saw: a rollback.
    let rolled_back = start(contract, &old).await;
    let mut c = room
        .client(&rolled_back.url(), "fitness-b")
        .with_known_head(Some(later));
    let err = c.attest().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Log(r) if r.contains("rolled back or forked")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_restart_keeps_datasets_at_rest_and_refuses_another_contracts_state() {
    let room = room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    let room = room.stop().await;
    let state = room.state();
    let again = start(&room.contract, &state).await;
    let mut h = room.client(&again.url(), "hospital-a");
    let events = events_of(&mut h).await;
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    // The dataset rests in the store: nothing is lost, it awaits its key release.
    assert_eq!(kinds, ["enclave_started", "upload", "enclave_started"]);
    let (status, reason) = refused(h.upload("ehr", &room.dir.join("ehr.csv"), |_| {}).await);
    assert_eq!(status, 409, "{reason}");
    assert!(reason.contains("already uploaded"), "{reason}");
    // A state directory of another contract is refused.
    again.shutdown().await.unwrap();
    let other = room_with(&["hospital-a", "fitness-b"], false, "[\"hospital-a\"]").await;
    let err = kura_server::start(config(&other.contract, &state))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds the log of another contract"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn sealed_results_not_yet_fetched_survive_a_restart_and_edits_are_ignored() {
    const BY_BAND: &str = "SELECT a.steps_band, COUNT(*) AS people FROM ehr e JOIN activity a \
                           ON e.patient_id = a.patient_id GROUP BY a.steps_band";
    let room = adhoc_room("").await;
    room.upload("hospital-a", "ehr").await.unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let mut h = room.client("hospital-a").await;
    let (kept, edited) = (
        h.query(BY_BAND, None).await.unwrap(),
        h.query(BY_BAND, None).await.unwrap(),
    );
    let before = h.results(Some(&kept.run_id)).await.unwrap();
    let room = room.stop().await;
    let state = room.state();

    // The state directory holds them sealed: no value, no name of a column.
    let dir = state.join("results");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 2);
    for f in &files {
        let bytes = std::fs::read(f.path()).unwrap();
        for needle in ["steps_band", "people", "\"high\"", "\"mid\""] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in clear in {}",
                f.path().display()
            );
        }
    }
    // The host edits one of them (another ciphertext of the same length).
    let path = dir.join(format!("{}.json", edited.run_id));
    let mut text: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ct = text[0]["sealed"]["ct"].as_str().unwrap().to_string();
    let swapped = if ct.starts_with('A') { "B" } else { "A" };
    text[0]["sealed"]["ct"] = format!("{swapped}{}", &ct[1..]).into();
    std::fs::write(&path, serde_json::to_vec(&text).unwrap()).unwrap();

    let again = start(&room.contract, &state).await;
    let mut h = room.client(&again.url(), "hospital-a");
    // Sealed and signed by the earlier start, verified through its record in this log.
    let after = h.results(Some(&kept.run_id)).await.unwrap();
    assert_eq!(after[0].rows, before[0].rows);
    assert_eq!(after[0].sql.as_deref(), Some(BY_BAND));
    // The edited one is not served at all.
    let (status, reason) = refused(h.results(Some(&edited.run_id)).await);
    assert_eq!(status, 404, "{reason}");
    again.shutdown().await.unwrap();
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The two-party room whose data is deleted at `deadline`.
pub(crate) async fn deadline_room(deadline: time::OffsetDateTime) -> Room {
    let deadline = rfc3339(deadline);
    room_custom(
        &["hospital-a", "fitness-b"],
        false,
        "[\"hospital-a\"]",
        |t| {
            t.replace(
                "delete_after = \"run\"",
                &format!("delete_after = \"{deadline}\""),
            )
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn data_is_deleted_at_the_deadline_without_anyone_asking() {
    let room = deadline_room(time::OffsetDateTime::now_utc() + time::Duration::seconds(3)).await;
    room.upload("hospital-a", "ehr").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let events = room.events().await;
    let deleted: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Deletion { dataset, reason } if reason == "retention deadline reached" => {
                Some(dataset.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(deleted, ["ehr", "activity"]);
    let (status, reason) = refused(room.upload("fitness-b", "activity").await);
    assert_eq!(status, 409);
    assert!(
        reason.contains("was deleted (retention deadline reached)"),
        "{reason}"
    );
    let (_, reason) = refused(room.client("hospital-a").await.run("by_activity").await);
    assert!(
        reason.contains("were deleted (retention deadline reached"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_restart_refuses_a_stored_log_the_host_added_to() {
    let room = room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    let room = room.stop().await;
    // The host appends an entry of its own to the stored log, signed by a key it made: the
    // chain links, but no attested start vouches for the key.
    let log = room.state().join("log.redb");
    let forged_size = {
        let mut l = kura_ledger::Ledger::open(
            &log,
            std::sync::Arc::new(kura_crypto::SecretIdentity::generate()),
        )
        .unwrap();
        l.append(Event::Deletion {
            dataset: "activity".into(),
            reason: "forged".into(),
        })
        .unwrap();
        l.entries().len()
    };
    let err = kura_server::start(config(&room.contract, &room.state()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the stored log does not verify"),
        "{err}"
    );
    // Nothing was rebuilt from it, and nothing appended to it.
    let l = kura_ledger::Ledger::open(
        &log,
        std::sync::Arc::new(kura_crypto::SecretIdentity::generate()),
    )
    .unwrap();
    assert_eq!(l.entries().len(), forged_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_partys_signed_time_keeps_the_enclaves_clock_from_lagging_behind() {
    // A deadline two minutes away on the guest clock.
    let now = time::OffsetDateTime::now_utc();
    let room = deadline_room(now + time::Duration::minutes(2)).await;
    let url = room.server.url();
    let enclave = kura_crypto::PublicIdentity::parse(&raw_info(&url).await.enclave_key)
        .unwrap()
        .fingerprint();
    let audit_at = |t: time::OffsetDateTime| {
        let body = kura_api::RequestBody {
            contract_id: room.contract.id().to_string(),
            enclave: enclave.clone(),
            nonce: kura_api::nonce(),
            time: Some(rfc3339(t)),
            action: kura_api::Action::Audit,
        };
        let req = kura_api::SignedRequest::new("fitness-b", &room.key("fitness-b"), &body);
        let url = url.clone();
        let contract = room.contract.contract().clone();
        async move { raw_call(&url, &contract, &req).await }
    };
    // A time an hour ahead is beyond the contract's tolerance (300 s): refused, and ignored.
    let (status, reason) = audit_at(now + time::Duration::hours(1)).await;
    assert_eq!(status, 401, "{reason}");
    assert!(reason.contains("ahead of the enclave's clock"), "{reason}");
    room.upload("hospital-a", "ehr").await.unwrap();
    // A party signs a time three minutes ahead (its clock is right, the guest's is held back):
    // from then on the enclave's clock is past the deadline, and the data goes.
    assert_eq!(audit_at(now + time::Duration::minutes(3)).await.0, 200);
    let (status, reason) = refused(room.upload("fitness-b", "activity").await);
    assert_eq!(status, 409);
    assert!(
        reason.contains("deadline") || reason.contains("was deleted"),
        "{reason}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let events = room.events().await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Deletion { dataset, reason } if dataset == "ehr" && reason == "retention deadline reached")),
        "{events:?}"
    );
}
