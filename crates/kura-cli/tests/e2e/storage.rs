//! Datasets at rest: a restart loses nothing and needs no new upload, only each provider's key
//! release; a deleted dataset's keys are never released and its files are gone; batches append;
//! a provider's own S3-compatible bucket works like the service's store; and no store holds a
//! readable value.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kura_ledger::Event;

use super::common::*;

/// What every planted identifier starts with: long enough that ciphertext never holds it by
/// chance.
const PLANTED: &str = "planted-person-";

/// The e2e data again (40 "high", 25 "mid", 3 "low"), with identifiers that a scan of the store
/// would find if any file held them in the clear.
fn plant(dir: &Path) {
    let mut ehr = String::from("patient_id,age_band,diabetes\n");
    let mut act = String::from("patient_id,steps_band\n");
    for (band, n, start) in [("high", 40, 0), ("mid", 25, 100), ("low", 3, 200)] {
        for i in start..start + n {
            let age = if i % 2 == 0 { "young" } else { "old" };
            writeln!(ehr, "{PLANTED}{i:04},{age},{}", i % 4 == 0).unwrap();
            writeln!(act, "{PLANTED}{i:04},{band}").unwrap();
        }
    }
    std::fs::write(dir.join("ehr.csv"), ehr).unwrap();
    std::fs::write(dir.join("activity.csv"), act).unwrap();
}

/// The stored Parquet files under `dir`.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

/// Fails if any file under `dir` holds `needle`.
fn assert_nowhere(dir: &Path, needle: &str) {
    for path in files(dir) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} holds {needle:?}",
            path.display()
        );
    }
}

/// The e2e contract with nothing deleted after runs.
pub(crate) fn never_deleted(contract: String) -> String {
    contract.replace("delete_after = \"run\"", "delete_after = \"never\"")
}

/// The two-party room with nothing deleted after runs, on planted data.
async fn kept_room() -> Room {
    let room = room_custom(
        &["hospital-a", "fitness-b"],
        false,
        "[\"hospital-a\"]",
        never_deleted,
    )
    .await;
    plant(&room.dir);
    room
}

pub(crate) async fn by_activity(c: &mut kura_client::Client) -> Vec<Vec<serde_json::Value>> {
    let run = c.run("by_activity").await.unwrap();
    let mut tables = c.results(Some(&run.run_id)).await.unwrap();
    tables.remove(0).rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_restart_loses_no_dataset_and_its_providers_release_the_keys() {
    let room = kept_room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let before = by_activity(&mut room.client("hospital-a").await).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let room = room.stop().await;
    let store = room.state().join("store");
    assert_eq!(parquet_files(&store).len(), 2);

    let again = start(&room.contract, &room.state()).await;
    let mut h = room.client(&again.url(), "hospital-a");
    h.attest().await.unwrap();
    // Nothing runs until the keys are back, and nothing needs uploading again.
    let (status, reason) = refused(h.run("by_activity").await);
    assert_eq!(status, 409, "{reason}");
    assert!(
        reason.contains("await their provider's key release"),
        "{reason}"
    );
    let (_, reason) = refused(h.upload("ehr", &room.dir.join("ehr.csv"), |_| {}).await);
    assert!(reason.contains("already uploaded"), "{reason}");

    let released = h.release(&[]).await.unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(
        (released[0].dataset.as_str(), released[0].rows),
        ("ehr", 68)
    );
    // Released once per instance: a second call has nothing to do.
    assert!(h.release(&[]).await.unwrap().is_empty());
    // One provider alone is not enough.
    let (_, reason) = refused(h.run("by_activity").await);
    assert!(reason.contains("[\"activity\"]"), "{reason}");
    let mut f = room.client(&again.url(), "fitness-b");
    f.attest().await.unwrap();
    assert_eq!(f.release(&[]).await.unwrap()[0].dataset, "activity");
    assert_eq!(by_activity(&mut h).await, before);

    // The log records both releases, names the batches, and verifies with its events allowed.
    let events = events_of(&mut h).await;
    let released: Vec<(&str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            Event::KeysReleased {
                dataset,
                party,
                batches,
            } if batches.len() == 1 => Some((dataset.as_str(), party.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(released, [("ehr", "hospital-a"), ("activity", "fitness-b")]);
    assert!(!events.iter().any(|e| matches!(e, Event::Deletion { .. })));
    again.shutdown().await.unwrap();

    // The store and the log hold no identifier and no value: only ciphertext.
    assert_nowhere(&room.state(), PLANTED);
    assert_nowhere(&room.state(), "young");
}

/// An ordinary, unencrypted Parquet file of `dataset`'s columns holding `csv`'s rows, padded
/// (in its footer's key-value metadata) to exactly `size` bytes: what a host that knows the
/// contract can put where a stored batch was.
fn plaintext_parquet(dataset: &kura_contract::Dataset, csv: &str, size: u64) -> Vec<u8> {
    use kura_engine::datafusion::parquet::arrow::ArrowWriter;
    use kura_engine::datafusion::parquet::arrow::arrow_writer::ArrowWriterOptions;
    use kura_engine::datafusion::parquet::file::metadata::KeyValue;
    let batches =
        kura_engine::load::load(dataset, kura_engine::UploadFormat::Csv, csv.as_bytes()).unwrap();
    let mut pad = 0u64;
    for _ in 0..20 {
        let mut out = Vec::new();
        let options = ArrowWriterOptions::new().with_skip_arrow_metadata(true);
        let mut w =
            ArrowWriter::try_new_with_options(&mut out, batches[0].schema(), options).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.append_key_value_metadata(KeyValue::new("pad".into(), "x".repeat(pad as usize)));
        w.close().unwrap();
        let len = out.len() as u64;
        if len == size {
            return out;
        }
        pad = (pad + size).saturating_sub(len);
    }
    panic!("no plaintext file of {size} bytes");
}

/// The host's attack on the stored batch of `ehr` under `state`: a plaintext Parquet file of
/// twenty patients of its choosing (young, diabetic) put in its place, of the same size.
/// Returns the file's path and its original bytes, to put back.
pub(crate) fn forge_ehr(state: &Path, contract: &kura_contract::Contract) -> (PathBuf, Vec<u8>) {
    let ehr = parquet_files(state)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("/ehr/"))
        .unwrap();
    let original = std::fs::read(&ehr).unwrap();
    let mut csv = String::from("patient_id,age_band,diabetes\n");
    for i in 0..20 {
        writeln!(csv, "{PLANTED}{i:04},young,true").unwrap();
    }
    let dataset = contract.dataset("ehr").unwrap();
    std::fs::write(
        &ehr,
        plaintext_parquet(dataset, &csv, original.len() as u64),
    )
    .unwrap();
    (ehr, original)
}

/// The attack of a host that puts its own plaintext rows where a stored batch was, padded to
/// the recorded size: the next run fails in the fixed words instead of answering from them,
/// and is logged; after a restart the provider's key release refuses the batch and logs it, so
/// nothing of the dataset opens; the log verifies and shows both. With the file put back, the
/// release and the answer are as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_hosts_plaintext_file_in_place_of_a_batch_is_never_read() {
    let room = kept_room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let mut h = room.client("hospital-a").await;
    let before = by_activity(&mut h).await;
    let (ehr, original) = forge_ehr(&room.dir.join("state"), room.contract.contract());

    let (status, reason) = refused(h.run("by_activity").await);
    assert_eq!(status, 409, "{reason}");
    assert!(
        reason.contains(kura_engine::error::STORED_FILE_FAILED),
        "{reason}"
    );
    let refused_runs = events_of(&mut h)
        .await
        .iter()
        .filter(|e| matches!(e, Event::RunRefused { .. }))
        .count();
    assert_eq!(refused_runs, 1);

    let room = room.stop().await;
    let again = start(&room.contract, &room.state()).await;
    let mut h = room.client(&again.url(), "hospital-a");
    h.attest().await.unwrap();
    let (_, reason) = refused(h.release(&[]).await);
    assert!(
        reason.contains("is not the file the enclave wrote"),
        "{reason}"
    );
    let events = events_of(&mut h).await;
    assert!(
        events.iter().any(|e| matches!(e,
            Event::BatchRefused { dataset, party, reason, .. }
                if dataset == "ehr" && party == "hospital-a"
                    && reason == "the stored file is not the file the enclave wrote")),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::KeysReleased { dataset, .. } if dataset == "ehr"))
    );

    // The enclave's own file back: released and answered as before.
    std::fs::write(&ehr, &original).unwrap();
    assert_eq!(h.release(&[]).await.unwrap().len(), 1);
    let mut f = room.client(&again.url(), "fitness-b");
    f.attest().await.unwrap();
    f.release(&[]).await.unwrap();
    assert_eq!(by_activity(&mut h).await, before);
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_deleted_dataset_is_gone_from_the_store_and_its_keys_are_never_released() {
    let room = room().await;
    plant(&room.dir);
    room.upload("hospital-a", "ehr").await.unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let store = room.dir.join("state").join("store");
    assert_eq!(parquet_files(&store).len(), 2);
    // delete_after = "run": both datasets go with the run, and so do their files.
    let run = room
        .client("hospital-a")
        .await
        .run("by_activity")
        .await
        .unwrap();
    assert_eq!(run.deleted.len(), 2);
    assert!(parquet_files(&store).is_empty(), "{:?}", files(&store));
    let room = room.stop().await;

    let again = start(&room.contract, &room.state()).await;
    let mut h = room.client(&again.url(), "hospital-a");
    h.attest().await.unwrap();
    let err = h
        .release(&["ehr".to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("was deleted") && err.contains("never released"),
        "{err}"
    );
    assert!(h.release(&[]).await.unwrap().is_empty());
    let (_, reason) = refused(h.upload("ehr", &room.dir.join("ehr.csv"), |_| {}).await);
    assert!(reason.contains("was deleted"), "{reason}");
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn batches_append_and_are_read_together() {
    let room = kept_room().await;
    // The ehr file in two halves.
    let text = std::fs::read_to_string(room.dir.join("ehr.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = lines[1..].split_at(30);
    for (name, part) in [("ehr-1.csv", first), ("ehr-2.csv", second)] {
        std::fs::write(
            room.dir.join(name),
            format!("{}\n{}\n", lines[0], part.join("\n")),
        )
        .unwrap();
    }
    let mut h = room.client("hospital-a").await;
    h.upload("ehr", &room.dir.join("ehr-1.csv"), |_| {})
        .await
        .unwrap();
    let (_, reason) = refused(h.upload("ehr", &room.dir.join("ehr-2.csv"), |_| {}).await);
    assert!(reason.contains("--append"), "{reason}");
    h.set_append(true);
    let second = h
        .upload("ehr", &room.dir.join("ehr-2.csv"), |_| {})
        .await
        .unwrap();
    assert_eq!(second.rows, 38);
    room.upload("fitness-b", "activity").await.unwrap();
    // The same answer as from one file.
    let rows = by_activity(&mut h).await;
    let people: Vec<_> = rows.iter().map(|r| r[1].clone()).collect();
    assert_eq!(people, [serde_json::json!(40), serde_json::json!(25)]);
    assert_eq!(
        parquet_files(&room.dir.join("state").join("store")).len(),
        3
    );
}

/// A dataset that declares one row per person (the default) is held to it at upload: a file
/// that repeats a person is refused, and so is an appended batch that brings back a person
/// already held, and neither leaves a file in the store or an identifier in the log; a batch of
/// new people is appended as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_dataset_of_one_row_per_person_never_holds_a_person_twice() {
    let room = kept_room().await;
    let text = std::fs::read_to_string(room.dir.join("ehr.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let write = |name: &str, rows: &[&str]| {
        let path = room.dir.join(name);
        std::fs::write(&path, format!("{}\n{}\n", lines[0], rows.join("\n"))).unwrap();
        path
    };
    let store = room.dir.join("state").join("store");
    let mut h = room.client("hospital-a").await;
    let people = &lines[1..];

    // One person twice in one file (far apart, in different parsed batches or the same).
    let mut twice = people.to_vec();
    twice.push(people[3]);
    let (status, reason) = refused(h.upload("ehr", &write("twice.csv", &twice), |_| {}).await);
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("one-row-per-person"), "{reason}");
    assert!(!reason.contains(PLANTED), "{reason}");
    assert!(parquet_files(&store).is_empty());

    // The first 30 people, then a batch that repeats five of them beside new ones.
    h.upload("ehr", &write("first.csv", &people[..30]), |_| {})
        .await
        .unwrap();
    h.set_append(true);
    let overlapping = write("overlapping.csv", &people[25..]);
    let (status, reason) = refused(h.upload("ehr", &overlapping, |_| {}).await);
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("one-row-per-person"), "{reason}");
    assert!(!reason.contains(PLANTED), "{reason}");
    assert_eq!(parquet_files(&store).len(), 1);

    // The rest of the people are new: appended, and the answer is the one of one file.
    h.upload("ehr", &write("rest.csv", &people[30..]), |_| {})
        .await
        .unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let rows = by_activity(&mut h).await;
    let counts: Vec<_> = rows.iter().map(|r| r[1].clone()).collect();
    assert_eq!(counts, [serde_json::json!(40), serde_json::json!(25)]);
    let events = room.events().await;
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == "upload_refused")
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(
        refusals.iter().all(|r| !r.contains(PLANTED)),
        "{refusals:?}"
    );
    assert_eq!(parquet_files(&store).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_deadline_that_passes_while_the_service_is_down_deletes_at_restart() {
    let deadline = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let room = super::audit::deadline_room(deadline).await;
    plant(&room.dir);
    room.upload("hospital-a", "ehr").await.unwrap();
    let room = room.stop().await;
    let store = room.state().join("store");
    assert_eq!(parquet_files(&store).len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    // The restarted service deletes at once, before any key comes back.
    let again = start(&room.contract, &room.state()).await;
    let mut h = room.client(&again.url(), "hospital-a");
    h.attest().await.unwrap();
    let mut deleted = Vec::new();
    for _ in 0..50 {
        deleted = events_of(&mut h)
            .await
            .into_iter()
            .filter_map(|e| match e {
                Event::Deletion { dataset, reason } if reason == "retention deadline reached" => {
                    Some(dataset)
                }
                _ => None,
            })
            .collect();
        if deleted.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(deleted, ["ehr", "activity"]);
    assert!(parquet_files(&store).is_empty(), "{:?}", files(&store));
    let err = h
        .release(&["ehr".to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("was deleted"), "{err}");
    again.shutdown().await.unwrap();
}

/// A real S3-compatible server (s3s-fs over a directory) on a loopback port chosen now, for as
/// long as the test's runtime lives, with one access key.
async fn s3_server(root: &Path, bucket: &str) -> String {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    std::fs::create_dir_all(root.join(bucket)).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
    ));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(conn);
        }
    });
    format!("http://{addr}")
}

const S3_ACCESS_KEY: &str = "kura-test-access";
const S3_SECRET_KEY: &str = "kura-test-secret-4f1c9e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_providers_own_bucket_holds_its_dataset_and_never_its_credentials() {
    let room = kept_room().await;
    let s3_root = room.dir.join("s3");
    let endpoint = s3_server(&s3_root, "hospital-bucket").await;
    let storage = kura_api::Storage {
        url: "s3://hospital-bucket/clean-room".into(),
        endpoint: Some(endpoint),
        region: None,
        access_key_id: S3_ACCESS_KEY.into(),
        secret_access_key: S3_SECRET_KEY.into(),
        session_token: None,
        allow_http: true,
    };
    // A location carrying a credential is refused before it could reach the log.
    let mut careless = storage.clone();
    careless.url = format!("s3://{S3_ACCESS_KEY}:{S3_SECRET_KEY}@hospital-bucket");
    let mut h = room.client("hospital-a").await.with_storage(Some(careless));
    let (_, reason) = refused(h.upload("ehr", &room.dir.join("ehr.csv"), |_| {}).await);
    assert!(reason.contains("without credentials"), "{reason}");
    // Wrong credentials: the bucket refuses, and so does the upload, in words that name no key.
    let mut wrong = storage.clone();
    wrong.secret_access_key = "not-the-secret".into();
    let mut h = h.with_storage(Some(wrong.clone()));
    let (_, reason) = refused(h.upload("ehr", &room.dir.join("ehr.csv"), |_| {}).await);
    assert!(reason.contains("could not be written"), "{reason}");
    let mut h = h.with_storage(Some(storage.clone()));
    h.upload("ehr", &room.dir.join("ehr.csv"), |_| {})
        .await
        .unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let before = by_activity(&mut h).await;
    // The hospital's file is in its bucket, under the prefix; the service's store has only
    // the fitness company's.
    let in_bucket = parquet_files(&s3_root.join("hospital-bucket"));
    assert_eq!(in_bucket.len(), 1, "{:?}", files(&s3_root));
    assert!(in_bucket[0].to_string_lossy().contains("clean-room"));
    assert_eq!(
        parquet_files(&room.dir.join("state").join("store")).len(),
        1
    );
    let room = room.stop().await;

    let again = start(&room.contract, &room.state()).await;
    let mut h = room.client(&again.url(), "hospital-a");
    h.attest().await.unwrap();
    // Without the bucket's credentials there is nothing the enclave could read it with.
    let err = h.release(&[]).await.unwrap_err().to_string();
    assert!(err.contains("give that bucket's credentials"), "{err}");
    // With wrong ones, the store refuses and nothing is released.
    let mut h = h.with_storage(Some(wrong));
    let (_, reason) = refused(h.release(&[]).await);
    assert!(reason.contains("could not be read"), "{reason}");
    let mut h = h.with_storage(Some(storage));
    assert_eq!(h.release(&[]).await.unwrap()[0].dataset, "ehr");
    let mut f = room.client(&again.url(), "fitness-b");
    f.attest().await.unwrap();
    f.release(&[]).await.unwrap();
    assert_eq!(by_activity(&mut h).await, before);
    again.shutdown().await.unwrap();

    // Neither the bucket nor the service's state holds a value; the state never held the
    // credentials (they travel sealed, and are never logged).
    assert_nowhere(&s3_root, PLANTED);
    assert_nowhere(&room.state(), PLANTED);
    assert_nowhere(&room.state(), S3_SECRET_KEY);
    assert_nowhere(&room.state(), S3_ACCESS_KEY);
}

/// The real service process, killed with SIGKILL in the middle of an upload (an appended batch
/// large enough to be mid-stream), at a random point of a run, and at a random point of a key
/// release. Each time it restarts: the providers release again, the answer is the one before,
/// the log verifies, and the store holds exactly the batches the log records.
#[test]
pub(crate) fn a_service_killed_during_an_upload_a_run_or_a_release_loses_nothing() {
    use super::cli::{cli_setup_with, key_at, serve};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = cli_setup_with(d, "", never_deleted);
    plant(d);
    let mut big = String::from("patient_id,steps_band\n");
    for i in 0..600_000 {
        writeln!(big, "{PLANTED}x{i:07},high").unwrap();
    }
    std::fs::write(d.join("big.csv"), big).unwrap();
    let contract = kura_contract::files::read_signed(&path).unwrap();
    let store = d.join("state").join("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = |url: &str, party: &str| {
        kura_client::Client::new(url, contract.clone(), key_at(d, party)).unwrap()
    };
    // Both providers release what this instance lacks, then the hospital runs the analysis.
    let release_and_run = |url: &str| {
        rt.block_on(async {
            for party in ["hospital-a", "fitness-b"] {
                let mut c = client(url, party);
                c.attest().await.unwrap();
                c.release(&[]).await.unwrap();
            }
            let mut h = client(url, "hospital-a");
            h.attest().await.unwrap();
            h.audit().await.unwrap();
            by_activity(&mut h).await
        })
    };

    let (mut served, url) = serve(d, &path);
    let before = rt.block_on(async {
        for (party, dataset) in [("hospital-a", "ehr"), ("fitness-b", "activity")] {
            let mut c = client(&url, party);
            c.attest().await.unwrap();
            c.upload(dataset, &d.join(format!("{dataset}.csv")), |_| {})
                .await
                .unwrap();
        }
        let mut h = client(&url, "hospital-a");
        h.attest().await.unwrap();
        by_activity(&mut h).await
    });

    // During an upload: the appended batch never reaches the log, nor the store.
    let upload = rt.block_on(async {
        let mut f = client(&url, "fitness-b");
        f.attest().await.unwrap();
        f.set_append(true);
        let big = d.join("big.csv");
        let sending = tokio::spawn(async move { f.upload("activity", &big, |_| {}).await });
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        served.0.kill().unwrap();
        sending.await.unwrap()
    });
    assert!(upload.is_err(), "the upload finished before the kill");
    drop(served);
    let (mut served, mut url) = serve(d, &path);
    assert_eq!(release_and_run(&url), before);
    assert_eq!(files(&store).len(), 2, "{:?}", files(&store));

    // During a run, then during a release, at a point that differs each round.
    for round in 0..3u64 {
        rt.block_on(async {
            let mut h = client(&url, "hospital-a");
            h.attest().await.unwrap();
            let running = tokio::spawn(async move { h.run("by_activity").await });
            tokio::time::sleep(std::time::Duration::from_millis(5 + 20 * round)).await;
            served.0.kill().unwrap();
            let _ = running.await.unwrap();
        });
        drop(served);
        let (mut releasing_to, release_url) = serve(d, &path);
        rt.block_on(async {
            let mut h = client(&release_url, "hospital-a");
            h.attest().await.unwrap();
            let releasing = tokio::spawn(async move { h.release(&[]).await });
            tokio::time::sleep(std::time::Duration::from_millis(3 + 10 * round)).await;
            releasing_to.0.kill().unwrap();
            let _ = releasing.await.unwrap();
        });
        drop(releasing_to);
        (served, url) = serve(d, &path);
        assert_eq!(release_and_run(&url), before, "round {round}");
        assert_eq!(files(&store).len(), 2, "{:?}", files(&store));
    }
    drop(served);
    assert_nowhere(&d.join("state"), PLANTED);
}

/// The command line: `kura upload --append`, a restart, `kura release` (text and JSON), and the
/// same answer as before.
#[test]
pub(crate) fn cli_releases_keys_to_a_restarted_enclave() {
    use super::cli::{as_party, cli_setup_with, serve, upload_both};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup_with(d, "", never_deleted);
    let c = contract.to_str().unwrap();
    // The hospital receives the analysis: `kura run --json` prints its result.
    let run = |url: &str| {
        let (code, out, err) = as_party(
            d,
            url,
            c,
            "hospital-a",
            &["run", "--analysis", "by_activity", "--json"],
        );
        assert_eq!(code, Some(0), "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["rows"].clone()
    };

    let (served, url) = serve(d, &contract);
    upload_both(&|name, args| as_party(d, &url, c, name, args), d);
    let before = run(&url);
    // Another batch of a dataset needs --append.
    let act = d.join("activity.csv");
    let again = [
        "upload",
        "--dataset",
        "activity",
        "--file",
        act.to_str().unwrap(),
    ];
    let (code, _, err) = as_party(d, &url, c, "fitness-b", &again);
    assert_eq!(code, Some(1));
    assert!(err.contains("--append"), "{err}");
    drop(served);

    let (served, url) = serve(d, &contract);
    let (code, out, _) = as_party(
        d,
        &url,
        c,
        "hospital-a",
        &["run", "--analysis", "by_activity", "--json"],
    );
    assert_eq!(code, Some(1));
    assert!(out.contains("kura release"), "{out}");
    let (code, out, err) = as_party(d, &url, c, "hospital-a", &["release"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("released ehr: 1 batch(es), 68 rows"), "{out}");
    let (code, out, err) = as_party(d, &url, c, "fitness-b", &["release", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["released"][0]["dataset"], "activity");
    assert_eq!(v["released"][0]["rows"], 68);
    let (code, out, _) = as_party(d, &url, c, "fitness-b", &["release"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("nothing to release"), "{out}");
    assert_eq!(run(&url), before);
    // The transparency report says where each dataset rests and who released its keys when.
    let (code, out, err) = as_party(d, &url, c, "fitness-b", &["audit", "report", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let activity = &report["datasets"][1];
    assert_eq!(activity["name"], "activity");
    assert_eq!(activity["stored_at"], "local");
    assert_eq!(activity["key_releases"][0]["value"], "fitness-b");
    assert_eq!(activity["key_releases"].as_array().unwrap().len(), 1);
    let (code, md, _) = as_party(d, &url, c, "hospital-a", &["audit", "report"]);
    assert_eq!(code, Some(0));
    assert!(
        md.contains("| ehr | hospital-a |") && md.contains("| 68 | local | 1 |"),
        "{md}"
    );
    drop(served);
}
