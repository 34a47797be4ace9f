//! The protocol through the client SDK, and attacks on it the SDK would never produce, through
//! raw HTTP.

use std::fmt::Write as _;
use std::path::Path;

use kura_api::{Action, RequestBody, SignedRequest, UploadHeader, routes};
use kura_client::{Client, ClientError};
use kura_crypto::{DataKey, SecretIdentity, StreamEncoder};
use kura_ledger::Event;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn two_parties_end_to_end() {
    let room = room().await;
    let up = room.upload("hospital-a", "ehr").await.unwrap();
    assert_eq!(up.rows, 68);
    room.upload("fitness-b", "activity").await.unwrap();

    let mut h = room.client("hospital-a").await;
    let run = h.run("by_activity").await.unwrap();
    assert_eq!(run.deleted, vec!["activity", "ehr"]);
    let mine = h.results(Some(&run.run_id)).await.unwrap();
    let theirs = room.client("fitness-b").await.results(None).await.unwrap();
    assert_eq!(mine, theirs);
    let t = &mine[0];
    assert_eq!(t.columns, vec!["steps_band", "people", "rate"]);
    assert_eq!(t.suppressed_groups, 1);
    assert_eq!(t.rows.len(), 2);
    assert_eq!(t.rows[0][0], "high");
    assert_eq!(t.rows[0][1], 40);
    assert_eq!(t.rows[0][2], 0.25);
    assert_eq!(t.rows[1][0], "mid");
    // No identifier value ever appears in the output.
    let identifier = |v: &serde_json::Value| {
        v.as_str()
            .is_some_and(|s| s.starts_with('p') && s[1..].parse::<u32>().is_ok())
    };
    assert!(!t.rows.iter().flatten().any(identifier), "{t:?}");

    // The log shows the whole story and verifies.
    let kinds: Vec<&str> = room.events().await.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        [
            "enclave_started",
            "upload",
            "upload",
            "run",
            "release",
            "release",
            "deletion",
            "deletion"
        ]
    );

    // Deleted data cannot be used or provided again.
    let (status, reason) = refused(h.run("by_activity").await);
    assert_eq!(status, 409);
    assert!(
        reason.contains("were deleted (delete_after = \"run\""),
        "{reason}"
    );
    let (_, reason) = refused(room.upload("hospital-a", "ehr").await);
    assert!(reason.contains("was deleted"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn three_parties_end_to_end() {
    let room = room_with(
        &["hospital-a", "fitness-b", "insurer-c"],
        true,
        "[\"insurer-c\"]",
    )
    .await;
    for (p, d) in [
        ("hospital-a", "ehr"),
        ("fitness-b", "activity"),
        ("insurer-c", "claims"),
    ] {
        room.upload(p, d).await.unwrap();
    }
    // The hospital may start the run only if it is an analyst or receiver: it is neither here.
    let (status, reason) = refused(room.client("hospital-a").await.run("by_activity").await);
    assert_eq!(status, 403);
    assert!(reason.contains("may not start analysis"), "{reason}");
    let mut insurer = room.client("insurer-c").await;
    let run = insurer.run("by_activity").await.unwrap();
    let t = insurer
        .results(Some(&run.run_id))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(t.rows.len(), 2);
    assert_eq!(t.suppressed_groups, 1);
    let expected_high: f64 = (0..40).map(|i| (i % 7) as f64 + 0.5).sum();
    assert_eq!(t.rows[0][2], expected_high);
    // A party that is not a receiver of the analysis gets nothing.
    let (status, reason) = refused(
        room.client("hospital-a")
            .await
            .results(Some(&run.run_id))
            .await,
    );
    assert_eq!(status, 403);
    assert!(reason.contains("is not a receiver of analysis"), "{reason}");
    assert!(
        room.client("fitness-b")
            .await
            .results(None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn refusals_of_the_contract_rules() {
    let room = room().await;
    // Wrong provider and unknown dataset: the client refuses before sending, and so does the
    // enclave when a request is made by hand.
    let local = room
        .client("fitness-b")
        .await
        .upload("ehr", &room.dir.join("ehr.csv"), |_| {})
        .await;
    assert!(
        matches!(&local, Err(ClientError::Local(r)) if r.contains("is not the provider of dataset \"ehr\"")),
        "{local:?}"
    );
    let local = room.upload("hospital-a", "claims").await;
    assert!(
        matches!(&local, Err(ClientError::Local(r)) if r.contains("not in the contract")),
        "{local:?}"
    );
    let csv = std::fs::read(room.dir.join("ehr.csv")).unwrap();
    let (status, reason) = raw_upload(&room, "fitness-b", "ehr", &csv, |_| {}).await;
    assert_eq!(status, 403);
    assert!(
        reason.contains("is not the provider of dataset \"ehr\""),
        "{reason}"
    );
    let (status, _) = raw_upload(&room, "hospital-a", "claims", &csv, |_| {}).await;
    assert_eq!(status, 404);
    // Schema mismatch: the activity file offered as ehr.
    let (status, reason) = refused(
        room.client("hospital-a")
            .await
            .upload("ehr", &room.dir.join("activity.csv"), |_| {})
            .await,
    );
    assert_eq!(status, 400);
    assert!(
        reason.contains("column 2 of the file is not declared"),
        "{reason}"
    );
    // Run before all data is present.
    room.upload("hospital-a", "ehr").await.unwrap();
    let (status, reason) = refused(room.client("hospital-a").await.run("by_activity").await);
    assert_eq!(status, 409);
    assert!(
        reason.contains("waiting for dataset(s) activity"),
        "{reason}"
    );
    // Analysis not in the contract.
    let (status, reason) = refused(room.client("hospital-a").await.run("everything").await);
    assert_eq!(status, 404);
    assert!(reason.contains("not in the contract"), "{reason}");
    // A key outside the contract cannot even build a client.
    assert!(matches!(
        Client::new(
            &room.server.url(),
            room.contract.clone(),
            SecretIdentity::generate()
        ),
        Err(ClientError::NotAParty)
    ));
    // Every refusal is in the log, and the log still verifies.
    let kinds: Vec<&str> = room.events().await.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        [
            "enclave_started",
            "upload_refused",
            "upload_refused",
            "upload_refused",
            "upload",
            "run_refused",
            "run_refused"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn parquet_uploads_and_large_refused_uploads_get_a_reason() {
    let room = room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    let path = room.dir.join("activity.parquet");
    write_activity_parquet(&path, &room.dir.join("activity.csv"));
    let shown = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = shown.clone();
    let up = room
        .client("fitness-b")
        .await
        .upload("activity", &path, move |n| {
            progress.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(up.rows, 68);
    // Progress counts the file's bytes, not the lengths that open the stream.
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(shown.load(std::sync::atomic::Ordering::Relaxed), size);
    // A file named .parquet that is not Parquet is refused on this machine, before anything
    // is sent.
    let fake = room.dir.join("fake.parquet");
    std::fs::copy(room.dir.join("activity.csv"), &fake).unwrap();
    match room
        .client("fitness-b")
        .await
        .upload("activity", &fake, |_| {})
        .await
    {
        Err(ClientError::Input { reason, .. }) => {
            assert!(reason.contains("not a Parquet file"), "{reason}")
        }
        other => panic!("expected a local refusal, got {other:?}"),
    }
    let run = room
        .client("hospital-a")
        .await
        .run("by_activity")
        .await
        .unwrap();
    let t = room
        .client("hospital-a")
        .await
        .results(Some(&run.run_id))
        .await
        .unwrap();
    assert_eq!(t[0].rows.len(), 2);

    // A 24 MiB upload of a deleted dataset: the enclave refuses right after the header, and the
    // client still gets the reason rather than a broken connection.
    let big = room.dir.join("big.csv");
    let mut text = String::from("patient_id,age_band,diabetes\n");
    while text.len() < 24 << 20 {
        text.push_str("p1234567,young,false\n");
    }
    std::fs::write(&big, text).unwrap();
    let (status, reason) = refused(
        room.client("hospital-a")
            .await
            .upload("ehr", &big, |_| {})
            .await,
    );
    assert_eq!(status, 409);
    assert!(reason.contains("was deleted"), "{reason}");
}

/// Writes the activity CSV as Parquet, columns in another order than the contract's.
pub(crate) fn write_activity_parquet(out: &Path, csv: &Path) {
    use kura_engine::datafusion::arrow::array::StringArray;
    use kura_engine::datafusion::arrow::datatypes::{DataType, Field, Schema};
    use kura_engine::datafusion::parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    let text = std::fs::read_to_string(csv).unwrap();
    let (mut ids, mut bands) = (vec![], vec![]);
    for line in text.lines().skip(1) {
        let (id, band) = line.split_once(',').unwrap();
        ids.push(id.to_string());
        bands.push(band.to_string());
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("steps_band", DataType::Utf8, false),
        Field::new("patient_id", DataType::Utf8, false),
    ]));
    let batch = kura_engine::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(bands)),
            Arc::new(StringArray::from(ids)),
        ],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(out).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Builds an upload body by hand so that the stream can be attacked.
pub(crate) async fn raw_upload(
    room: &Room,
    party: &str,
    dataset: &str,
    csv: &[u8],
    attack: impl FnOnce(&mut Vec<Vec<u8>>),
) -> (u16, String) {
    let info = raw_info(&room.server.url()).await;
    let enclave = kura_crypto::PublicIdentity::parse(&info.enclave_key).unwrap();
    let me = room.key(party);
    let mut body = RequestBody {
        contract_id: room.contract.id().to_string(),
        enclave: enclave.fingerprint(),
        nonce: kura_api::nonce(),
        time: None,
        action: Action::Audit,
    };
    let context = kura_api::upload_context(&body.contract_id, dataset, &body.enclave, &body.nonce);
    let key = DataKey::generate();
    body.action = Action::Upload(UploadHeader {
        dataset: dataset.into(),
        format: kura_api::UploadFormat::Csv,
        wrapped_key: kura_crypto::seal(
            &enclave,
            room.contract.contract().crypto.kem,
            &context,
            b"",
            key.as_bytes(),
        )
        .unwrap(),
        storage: None,
        append: false,
    });
    let http = reqwest::Client::new();
    let url = room.server.url();
    let req = SignedRequest::new(party, &me, &body);
    let contract = room.contract.contract();
    let (call, status, begin) = raw_send(&url, contract, &enclave, &req).await;
    let (status, text) = raw_open(&call, 0, &enclave, status, &begin);
    if status != 200 {
        return (status, text);
    }
    let ticket: kura_api::UploadTicket = serde_json::from_str(&text).unwrap();
    let mut enc = StreamEncoder::new(key, &context);
    let pieces: Vec<&[u8]> = csv.chunks((csv.len() / 64).max(16)).collect();
    let mut frames: Vec<Vec<u8>> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut f = vec![];
            enc.seal_chunk(p, i + 1 == pieces.len(), &mut f).unwrap();
            f
        })
        .collect();
    attack(&mut frames);
    let resp = http
        .post(format!("{url}{}", routes::upload_stream(&ticket.ticket)))
        .body(frames.concat())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let result = raw_open(&call, 1, &enclave, status, &resp.bytes().await.unwrap());
    // A ticket is single use.
    let again = http
        .post(format!("{url}{}", routes::upload_stream(&ticket.ticket)))
        .body(vec![])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 404);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn tampered_truncated_and_reordered_streams_store_nothing() {
    let room = room().await;
    let csv = std::fs::read(room.dir.join("ehr.csv")).unwrap();
    type Attack = Box<dyn FnOnce(&mut Vec<Vec<u8>>)>;
    let attacks: Vec<(&str, Attack, &str)> = vec![
        (
            "tampered",
            Box::new(|f: &mut Vec<Vec<u8>>| f[3][9] ^= 1),
            "decryption failed",
        ),
        (
            "truncated",
            Box::new(|f: &mut Vec<Vec<u8>>| {
                f.pop();
            }),
            "ended before its final chunk",
        ),
        (
            "reordered",
            Box::new(|f: &mut Vec<Vec<u8>>| f.swap(1, 2)),
            "decryption failed",
        ),
        (
            "dropped",
            Box::new(|f: &mut Vec<Vec<u8>>| {
                f.remove(4);
            }),
            "decryption failed",
        ),
    ];
    for (name, attack, expected) in attacks {
        let (status, text) = raw_upload(&room, "hospital-a", "ehr", &csv, attack).await;
        assert_eq!(status, 400, "{name}: {text}");
        assert!(text.contains(expected), "{name}: {text}");
    }
    // A large stream with an early bad chunk: the enclave reads to the end and gives the reason.
    let mut big = String::from("patient_id,age_band,diabetes\n");
    while big.len() < 24 << 20 {
        big.push_str("p1234567,young,false\n");
    }
    let (status, reason) = raw_upload(&room, "hospital-a", "ehr", big.as_bytes(), |f| {
        f[1][20] ^= 1
    })
    .await;
    assert_eq!(status, 400);
    assert!(reason.contains("decryption failed"), "{reason}");
    // Nothing was stored: the honest upload is still accepted as the first one.
    let (status, text) = raw_upload(&room, "hospital-a", "ehr", &csv, |_| {}).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw_upload(&room, "hospital-a", "ehr", &csv, |_| {}).await;
    assert_eq!(status, 409, "{text}");
    let events = room.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind() == "upload_refused")
            .count(),
        6
    );
    assert_eq!(events.iter().filter(|e| e.kind() == "upload").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn forged_replayed_and_misdirected_requests_are_refused() {
    let room = room().await;
    let url = room.server.url();
    // The health endpoint answers without a signature, and says nothing else.
    let health = reqwest::get(format!("{url}{}", routes::HEALTH))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({ "status": "ok" })
    );
    let info = raw_info(&url).await;
    let enclave = kura_crypto::PublicIdentity::parse(&info.enclave_key)
        .unwrap()
        .fingerprint();
    let body = |enclave: &str| RequestBody {
        contract_id: room.contract.id().to_string(),
        enclave: enclave.to_string(),
        nonce: kura_api::nonce(),
        time: None,
        action: Action::Audit,
    };
    let post = |req: SignedRequest| {
        let url = url.clone();
        let contract = room.contract.contract().clone();
        async move { raw_call(&url, &contract, &req).await }
    };
    let hospital = room.key("hospital-a");
    // A stranger claiming to be a party.
    let forged = SignedRequest::new("hospital-a", &SecretIdentity::generate(), &body(&enclave));
    let (status, text) = post(forged).await;
    assert_eq!(status, 401);
    assert!(text.contains("signature does not verify"), "{text}");
    // A name that is not a party.
    let (status, text) = post(SignedRequest::new("mallory", &hospital, &body(&enclave))).await;
    assert_eq!(status, 401);
    assert!(text.contains("not a party"), "{text}");
    // Meant for another enclave instance.
    let (status, text) = post(SignedRequest::new(
        "hospital-a",
        &hospital,
        &body("0011223344556677"),
    ))
    .await;
    assert_eq!(status, 401);
    assert!(text.contains("another enclave instance"), "{text}");
    // Replayed.
    let once = SignedRequest::new("hospital-a", &hospital, &body(&enclave));
    assert_eq!(post(once.clone()).await.0, 200);
    let (status, text) = post(once).await;
    assert_eq!(status, 401);
    assert!(text.contains("replayed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn sealed_results_open_only_for_their_receiver() {
    let room = room_with(&["hospital-a", "fitness-b"], false, "[\"hospital-a\"]").await;
    room.upload("hospital-a", "ehr").await.unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let run = room.client("fitness-b").await.run("by_activity").await;
    // fitness-b is neither analyst nor receiver of this analysis.
    assert_eq!(refused(run).0, 403);
    let run = room
        .client("hospital-a")
        .await
        .run("by_activity")
        .await
        .unwrap();
    assert_eq!(run.receivers, vec!["hospital-a"]);
    let (status, reason) = refused(
        room.client("fitness-b")
            .await
            .results(Some(&run.run_id))
            .await,
    );
    assert_eq!(status, 403, "{reason}");
    // Even with the ciphertext in hand, another party's key does not open it.
    let events = room.events().await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Release { receiver, .. } if receiver == "hospital-a"))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Release { receiver, .. } if receiver == "fitness-b"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_query_built_to_exhaust_memory_is_refused_and_the_service_and_its_data_stay() {
    let room = adhoc_room("").await.stop().await;
    // 200 000 people, each in an age band of their own: grouping by band needs one hash table
    // entry (and one set of contributors) per person.
    let (mut ehr, mut act) = (
        String::from("patient_id,age_band,diabetes\n"),
        String::from("patient_id,steps_band\n"),
    );
    for i in 0..200_000 {
        writeln!(ehr, "p{i},band-{i},{}", i % 3 == 0).unwrap();
        writeln!(act, "p{i},{}", if i % 2 == 0 { "high" } else { "low" }).unwrap();
    }
    std::fs::write(room.dir.join("ehr.csv"), ehr).unwrap();
    std::fs::write(room.dir.join("activity.csv"), act).unwrap();
    let mut config = config(&room.contract, &room.state());
    config.query_memory_bytes = 8 << 20;
    let server = kura_server::start(config).await.unwrap();
    let url = server.url();
    for (party, dataset) in [("hospital-a", "ehr"), ("fitness-b", "activity")] {
        let mut c = room.client(&url, party);
        c.upload(dataset, &room.dir.join(format!("{dataset}.csv")), |_| {})
            .await
            .unwrap();
    }
    let mut hospital = room.client(&url, "hospital-a");
    let (_, reason) = refused(
        hospital
            .query(
                "SELECT e.age_band, COUNT(*) AS n FROM ehr e GROUP BY e.age_band",
                None,
            )
            .await,
    );
    assert!(
        reason.contains("needed more memory than the enclave allows"),
        "{reason}"
    );
    // The service is up, the data is held, and a query within the limit answers.
    let run = hospital
        .query(
            "SELECT a.steps_band, COUNT(*) AS n FROM activity a GROUP BY a.steps_band",
            None,
        )
        .await
        .unwrap();
    let tables = hospital.results(Some(&run.run_id)).await.unwrap();
    assert_eq!(tables[0].rows.len(), 2);
    let events: Vec<Event> = hospital
        .audit()
        .await
        .unwrap()
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap().event)
        .collect();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Deletion { .. })),
        "{events:?}"
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::RunRefused { reason, .. } if reason.contains("more memory"))
        )
    );
    server.shutdown().await.unwrap();
}
