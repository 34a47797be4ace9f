//! End to end: the real service on loopback, driven through the client SDK and, for attacks the
//! SDK would never produce, through raw HTTP. One test binary for everything that links
//! DataFusion, to keep build time down.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kura_api::{Action, RequestBody, SignedRequest, UploadHeader, routes};
use kura_client::{Client, ClientError};
use kura_contract::{Contract, Platform, SignedContract};
use kura_crypto::{DataKey, SecretIdentity, StreamEncoder};
use kura_ledger::Event;

struct Party {
    name: &'static str,
    key: SecretIdentity,
}

struct Room {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    contract: SignedContract,
    parties: Vec<Party>,
    server: kura_server::Running,
}

fn contract_text(parties: &[Party], three: bool, receivers: &str) -> String {
    let mut t = String::from("version = 1\nname = \"e2e\"\npurpose = \"tests\"\n");
    for p in parties {
        let roles = match p.name {
            "insurer-c" if !three => "[\"receiver\"]",
            "auditor-d" => "[\"auditor\"]",
            _ => "[\"provider\", \"receiver\"]",
        };
        write!(
            t,
            "\n[[parties]]\nname = \"{}\"\npublic_key = \"{}\"\nroles = {roles}\n",
            p.name,
            p.key.public().to_text()
        )
        .unwrap();
    }
    t += r#"
[[datasets]]
name = "ehr"
provider = "hospital-a"
privacy_unit = "patient_id"
columns = [
  { name = "patient_id", type = "utf8", role = "identifier" },
  { name = "age_band", type = "utf8", role = "dimension" },
  { name = "diabetes", type = "boolean", role = "measure" },
]

[[datasets]]
name = "activity"
provider = "fitness-b"
privacy_unit = "patient_id"
columns = [
  { name = "patient_id", type = "utf8", role = "identifier" },
  { name = "steps_band", type = "utf8", role = "dimension" },
]
"#;
    let sql = if three {
        t += r#"
[[datasets]]
name = "claims"
provider = "insurer-c"
privacy_unit = "member_id"
columns = [
  { name = "member_id", type = "utf8", role = "identifier" },
  { name = "cost", type = "float64", role = "measure" },
]
"#;
        "SELECT a.steps_band, COUNT(*) AS people, SUM(c.cost) AS cost FROM ehr e JOIN activity a ON e.patient_id = a.patient_id JOIN claims c ON c.member_id = e.patient_id GROUP BY a.steps_band ORDER BY a.steps_band"
    } else {
        "SELECT a.steps_band, COUNT(*) AS people, AVG(CAST(e.diabetes AS DOUBLE)) AS rate FROM ehr e JOIN activity a ON e.patient_id = a.patient_id GROUP BY a.steps_band ORDER BY a.steps_band"
    };
    write!(
        t,
        "\n[[analyses]]\nname = \"by_activity\"\nsql = \"{sql}\"\nreceivers = {receivers}\n\n[output]\nmin_group_size = 10\n\n[retention]\ndelete_after = \"run\"\n\n[enclave]\nplatforms = [\"simulated\"]\n"
    )
    .unwrap();
    t
}

async fn room_with(names: &[&'static str], three: bool, receivers: &str) -> Room {
    room_custom(names, three, receivers, |t| t).await
}

async fn start(contract: &SignedContract, state: &Path) -> kura_server::Running {
    kura_server::start(kura_server::Config {
        contract: contract.clone(),
        platform: Platform::Simulated,
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.to_path_buf(),
        max_upload_bytes: 1 << 30,
        evidence_certs: vec![],
        evidence_collateral: None,
    })
    .await
    .unwrap()
}

async fn room_custom(
    names: &[&'static str],
    three: bool,
    receivers: &str,
    edit: impl Fn(String) -> String,
) -> Room {
    let dir = tempfile::tempdir().unwrap();
    let parties: Vec<Party> = names
        .iter()
        .map(|n| Party {
            name: n,
            key: SecretIdentity::generate(),
        })
        .collect();
    let text = edit(contract_text(&parties, three, receivers));
    let contract = Contract::parse(text.as_bytes()).unwrap();
    let signatures: Vec<(String, String)> = parties
        .iter()
        .map(|p| kura_contract::sign(&contract, &p.key).unwrap())
        .collect();
    let contract = SignedContract::verify(contract, |party| {
        signatures
            .iter()
            .find(|(p, _)| p == party)
            .map(|(_, s)| s.clone())
    })
    .unwrap();
    let path = dir.path().to_path_buf();
    write_data(&path);
    let server = kura_server::start(kura_server::Config {
        contract: contract.clone(),
        platform: Platform::Simulated,
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: path.join("state"),
        max_upload_bytes: 1 << 30,
        evidence_certs: vec![],
        evidence_collateral: None,
    })
    .await
    .unwrap();
    Room {
        dir: path,
        _dir: dir,
        contract,
        parties,
        server,
    }
}

async fn room() -> Room {
    room_with(
        &["hospital-a", "fitness-b"],
        false,
        "[\"hospital-a\", \"fitness-b\"]",
    )
    .await
}

/// 40 people in "high", 25 in "mid", 3 in "low" (suppressed at 10); insurer covers all.
fn write_data(dir: &Path) {
    let mut ehr = String::from("patient_id,age_band,diabetes\n");
    let mut act = String::from("patient_id,steps_band\n");
    let mut claims = String::from("member_id,cost\n");
    for (band, n, start) in [("high", 40, 0), ("mid", 25, 100), ("low", 3, 200)] {
        for i in start..start + n {
            writeln!(
                ehr,
                "p{i},{},{}",
                if i % 2 == 0 { "young" } else { "old" },
                i % 4 == 0
            )
            .unwrap();
            writeln!(act, "p{i},{band}").unwrap();
            writeln!(claims, "p{i},{}.5", i % 7).unwrap();
        }
    }
    std::fs::write(dir.join("ehr.csv"), ehr).unwrap();
    std::fs::write(dir.join("activity.csv"), act).unwrap();
    std::fs::write(dir.join("claims.csv"), claims).unwrap();
}

fn key_of(parties: &[Party], name: &str) -> SecretIdentity {
    let p = parties.iter().find(|p| p.name == name).unwrap();
    SecretIdentity::parse(&p.key.to_text()).unwrap()
}

/// A room whose service was shut down; its state directory stays.
struct Stopped {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    contract: SignedContract,
    parties: Vec<Party>,
}

impl Stopped {
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn client(&self, url: &str, name: &str) -> Client {
        Client::new(url, self.contract.clone(), key_of(&self.parties, name)).unwrap()
    }
}

impl Room {
    fn key(&self, name: &str) -> SecretIdentity {
        key_of(&self.parties, name)
    }

    async fn stop(self) -> Stopped {
        self.server.shutdown().await.unwrap();
        Stopped {
            _dir: self._dir,
            dir: self.dir,
            contract: self.contract,
            parties: self.parties,
        }
    }

    async fn client(&self, name: &str) -> Client {
        let mut c = Client::new(&self.server.url(), self.contract.clone(), self.key(name)).unwrap();
        c.attest().await.unwrap();
        c
    }

    async fn upload(
        &self,
        name: &str,
        dataset: &str,
    ) -> Result<kura_api::UploadResponse, ClientError> {
        self.client(name)
            .await
            .upload(dataset, &self.dir.join(format!("{dataset}.csv")), |_| {})
            .await
    }

    async fn events(&self) -> Vec<Event> {
        let report = self
            .client(self.parties[0].name)
            .await
            .audit()
            .await
            .unwrap();
        report
            .entries
            .iter()
            .map(|e| e.parse_body().unwrap().event)
            .collect()
    }
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, reason, .. }) => (status, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parties_end_to_end() {
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
        reason.contains("deleted under the contract's retention rule"),
        "{reason}"
    );
    let (_, reason) = refused(room.upload("hospital-a", "ehr").await);
    assert!(reason.contains("was deleted"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_parties_end_to_end() {
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
async fn refusals_of_the_contract_rules() {
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
async fn parquet_uploads_and_large_refused_uploads_get_a_reason() {
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
fn write_activity_parquet(out: &Path, csv: &Path) {
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
async fn raw_upload(
    room: &Room,
    party: &str,
    dataset: &str,
    csv: &[u8],
    attack: impl FnOnce(&mut Vec<Vec<u8>>),
) -> (u16, String) {
    let info: kura_api::EnclaveInfo =
        reqwest::get(format!("{}{}", room.server.url(), routes::EVIDENCE))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let enclave = kura_crypto::PublicIdentity::parse(&info.enclave_key).unwrap();
    let me = room.key(party);
    let mut body = RequestBody {
        contract_id: room.contract.id().to_string(),
        enclave: enclave.fingerprint(),
        nonce: kura_api::nonce(),
        action: Action::Audit,
    };
    let context = kura_api::upload_context(&body.contract_id, dataset, &body.enclave, &body.nonce);
    let key = DataKey::generate();
    body.action = Action::Upload(UploadHeader {
        dataset: dataset.into(),
        format: "csv".into(),
        wrapped_key: kura_crypto::seal(&enclave, &context, b"", key.as_bytes()).unwrap(),
    });
    let http = reqwest::Client::new();
    let url = room.server.url();
    let answer = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let reason = serde_json::from_str::<kura_api::ErrorBody>(&text).map_or(text, |e| e.reason);
        (status, reason)
    };
    let begin = http
        .post(format!("{url}{}", routes::UPLOAD))
        .json(&SignedRequest::new(party, &me, &body))
        .send()
        .await
        .unwrap();
    if !begin.status().is_success() {
        return answer(begin).await;
    }
    let ticket: kura_api::UploadTicket = begin.json().await.unwrap();
    let mut enc = StreamEncoder::new(&key, &context);
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
    let result = answer(resp).await;
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
async fn tampered_truncated_and_reordered_streams_store_nothing() {
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
async fn forged_replayed_and_misdirected_requests_are_refused() {
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
    let info: kura_api::EnclaveInfo = reqwest::get(format!("{url}{}", routes::EVIDENCE))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let enclave = kura_crypto::PublicIdentity::parse(&info.enclave_key)
        .unwrap()
        .fingerprint();
    let body = |enclave: &str| RequestBody {
        contract_id: room.contract.id().to_string(),
        enclave: enclave.to_string(),
        nonce: kura_api::nonce(),
        action: Action::Audit,
    };
    let post = |req: SignedRequest| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}{}", routes::AUDIT))
                .json(&req)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
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
async fn sealed_results_open_only_for_their_receiver() {
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

// ---- the command line ------------------------------------------------------------------------

/// A private KURA_HOME for this test process, so tests never touch the user's ~/.kura.
fn kura_home() -> &'static Path {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn kura(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_keys_contract_sign_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = d.to_str().unwrap();
    for name in ["hospital-a", "fitness-b"] {
        let out = kura(&["keys", "new", "--name", name, "--out", ds]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("hospital-a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second `keys new` never overwrites a key.
    assert_eq!(
        kura(&["keys", "new", "--name", "hospital-a", "--out", ds])
            .status
            .code(),
        Some(1)
    );

    let public = |n: &str| {
        std::fs::read_to_string(d.join(format!("{n}.pub")))
            .unwrap()
            .trim()
            .to_string()
    };
    let hospital =
        SecretIdentity::parse(&std::fs::read_to_string(d.join("hospital-a.key")).unwrap()).unwrap();
    assert_eq!(hospital.public().to_text(), public("hospital-a"));
    let text = contract_text(
        &[
            Party {
                name: "hospital-a",
                key: hospital,
            },
            Party {
                name: "fitness-b",
                key: SecretIdentity::parse(
                    &std::fs::read_to_string(d.join("fitness-b.key")).unwrap(),
                )
                .unwrap(),
            },
        ],
        false,
        "[\"hospital-a\"]",
    );
    let contract = d.join("contract.toml");
    std::fs::write(&contract, &text).unwrap();
    let c = contract.to_str().unwrap();

    let out = kura(&["contract", "verify", "--contract", c, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["reason"].as_str().unwrap().contains("has not signed"));

    // Serving an unsigned contract is refused.
    let state = d.join("state");
    let out = kura(&[
        "serve",
        "--contract",
        c,
        "--platform",
        "simulated",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not signed by all parties"));
    assert!(
        !state.exists(),
        "nothing may be created for an unsigned contract"
    );

    for name in ["hospital-a", "fitness-b"] {
        let key = d.join(format!("{name}.key"));
        let out = kura(&[
            "contract",
            "sign",
            "--contract",
            c,
            "--key",
            key.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = kura(&["contract", "verify", "--contract", c, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["valid"],
        true
    );

    // Change one byte: every signature is void.
    std::fs::write(
        &contract,
        text.replace("min_group_size = 10", "min_group_size = 2"),
    )
    .unwrap();
    let out = kura(&["contract", "verify", "--contract", c]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("INVALID SIGNATURE"));

    // Usage errors exit with 2.
    assert_eq!(kura(&["contract", "verify"]).status.code(), Some(2));
}

#[test]
fn cli_prints_completions_and_a_manual_page() {
    let out = kura(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("_kura()") && script.contains("--sql-file"),
        "{script}"
    );
    let out = kura(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH kura 1"), "{page}");
}

#[test]
fn cli_demo_json() {
    let out = kura(&["demo", "--rows", "3000", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIMULATED PLATFORM"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["result"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    // The planted relationship shows: diabetes falls as activity rises.
    let rates: Vec<f64> = rows.iter().map(|r| r[2].as_f64().unwrap()).collect();
    assert!(rates.windows(2).all(|w| w[0] > w[1]), "{rates:?}");
    assert_eq!(v["result"]["suppressed_groups"], 1);
    assert_eq!(v["deleted"], serde_json::json!(["activity", "ehr"]));
    assert_eq!(v["audit"]["valid"], true);
}

#[test]
fn cli_attest_verify_simulated_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let hw = kura_attestation::simulated::SimulatedHardware::new();
    // Writes evidence to a file and runs `kura attest verify --json` on it.
    let verify = |name: &str, data: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        let out = kura(&[
            "attest",
            "verify",
            "--platform",
            "simulated",
            "--evidence",
            path.to_str().unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let good = hw.issue(&[1; 48], &[2; 64], false).data;
    let (code, v) = verify("good.json", &good);
    assert_eq!(code, Some(0));
    assert_eq!(v["verdict"], "valid");
    assert_eq!(v["measurement"], "01".repeat(48));
    assert_eq!(v["report_data"], "02".repeat(64));
    assert_eq!(v["debug"], false);
    assert!(v["reason"].is_null());

    let (code, v) = verify("debug.json", &hw.issue(&[1; 48], &[2; 64], true).data);
    assert_eq!((code, v["verdict"].as_str()), (Some(1), Some("invalid")));

    // Real hardware evidence, from kura-attestation's testdata: an SGX quote whose TCB needs configuration and
    // software hardening is valid as evidence; the status and advisories are reported.
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kura-attestation/testdata/sgx/dcap-qvl");
    let out = kura(&[
        "attest",
        "verify",
        "--platform",
        "sgx",
        "--evidence",
        vectors.join("sgx_quote").to_str().unwrap(),
        "--collateral",
        vectors.join("sgx_quote_collateral.json").to_str().unwrap(),
        "--at",
        "2025-06-19T11:56:00Z",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (out.status.code(), v["verdict"].as_str()),
        (Some(0), Some("valid")),
        "{v}"
    );
    assert_eq!(
        v["measurement"],
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(v["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        v["advisories"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    // Without a pinned time the collateral has expired.
    let out = kura(&[
        "attest",
        "verify",
        "--platform",
        "sgx",
        "--evidence",
        vectors.join("sgx_quote").to_str().unwrap(),
        "--collateral",
        vectors.join("sgx_quote_collateral.json").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));

    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 1;
    let (code, v) = verify("flipped.json", &flipped);
    assert_eq!((code, v["verdict"].as_str()), (Some(1), Some("invalid")));
}

/// A stand-in for AMD's KDS on loopback: answers every GET under `/vcek/v1/Milan/` with the
/// vector's VCEK, counts requests, and stops when dropped.
struct FakeKds {
    url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeKds {
    fn start(vcek: Vec<u8>) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                h.fetch_add(1, Ordering::Relaxed);
                let (status, body) = if request.starts_with("GET /vcek/v1/Milan/") {
                    ("200 OK", vcek.as_slice())
                } else {
                    ("404 Not Found", &[][..])
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body);
            }
        });
        Self { url, hits, stop }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FakeKds {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn cli_attest_fetches_a_missing_vcek_once_and_then_verifies_offline() {
    let home = tempfile::tempdir().unwrap();
    let snp = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kura-attestation/testdata/sev-snp/virtee-sev");
    let report = snp.join("report_milan.hex");
    let kds = FakeKds::start(std::fs::read(snp.join("vcek_milan.der")).unwrap());
    let attest = |fetch: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kura"));
        cmd.env("KURA_HOME", home.path())
            .env("KURA_KDS_URL", &kds.url)
            .args(["attest", "verify", "--platform", "sev-snp", "--evidence"])
            .arg(&report)
            .args(["--at", "2025-01-01T00:00:00Z", "--json"]);
        if fetch {
            cmd.arg("--fetch");
        }
        let out = cmd.output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    // Offline by default: the VCEK is not in the cache, and the network is not touched.
    let (code, v) = attest(false);
    assert_eq!((code, v["verdict"].as_str()), (Some(1), Some("invalid")));
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("Milan VCEK") && reason.contains("--fetch"),
        "{reason}"
    );
    assert_eq!(kds.hits(), 0);
    // With --fetch: asked once, verified, cached.
    let (code, v) = attest(true);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(0), Some("valid")),
        "{v}"
    );
    assert_eq!(kds.hits(), 1);
    assert!(v["signer"].as_str().unwrap().contains("VCEK"));
    // From then on the cache serves, online or not.
    assert_eq!(attest(false).0, Some(0));
    assert_eq!(attest(true).0, Some(0));
    assert_eq!(kds.hits(), 1);
}

/// A `kura serve` child process, killed when dropped.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Keys and a contract signed through the command line, and the data files, in `d`.
/// Keys for two parties, a contract both signed (with `extra` appended), and the data files.
fn cli_setup(d: &Path, extra: &str) -> PathBuf {
    let ds = d.to_str().unwrap();
    for name in ["hospital-a", "fitness-b"] {
        assert!(
            kura(&["keys", "new", "--name", name, "--out", ds])
                .status
                .success()
        );
    }
    let key = |n: &str| {
        SecretIdentity::parse(&std::fs::read_to_string(d.join(format!("{n}.key"))).unwrap())
            .unwrap()
    };
    let parties = [
        Party {
            name: "hospital-a",
            key: key("hospital-a"),
        },
        Party {
            name: "fitness-b",
            key: key("fitness-b"),
        },
    ];
    let contract = d.join("contract.toml");
    std::fs::write(
        &contract,
        // hospital-a (the first party) is also the analyst when `extra` opens ad-hoc queries.
        contract_text(&parties, false, "[\"hospital-a\"]").replacen(
            "[\"provider\", \"receiver\"]",
            "[\"provider\", \"receiver\", \"analyst\"]",
            usize::from(!extra.is_empty()),
        ) + extra,
    )
    .unwrap();
    for name in ["hospital-a", "fitness-b"] {
        let k = d.join(format!("{name}.key"));
        let out = kura(&[
            "contract",
            "sign",
            "--contract",
            contract.to_str().unwrap(),
            "--key",
            k.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    write_data(d);
    contract
}

/// Starts `kura serve` on a port chosen at run time; returns the child and its URL.
fn serve(d: &Path, contract: &Path) -> (Served, String) {
    use std::io::BufRead;

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .args([
            "serve",
            "--platform",
            "simulated",
            "--listen",
            "127.0.0.1:0",
            "--contract",
        ])
        .arg(contract)
        .arg("--state")
        .arg(d.join("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(d.join("serve.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let served = Served(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "{line:?}: {}",
        std::fs::read_to_string(d.join("serve.log")).unwrap_or_default()
    );
    (served, url)
}

/// Runs `kura <args>` as party `name` (key `d/<name>.key`) against the enclave at `url`:
/// exit code, stdout, stderr.
fn as_party(d: &Path, url: &str, contract: &str, name: &str, args: &[&str]) -> Printed {
    let k = d.join(format!("{name}.key"));
    let words = args.iter().take_while(|a| !a.starts_with("--")).count();
    let mut all = args[..words].to_vec();
    all.extend_from_slice(&[
        "--enclave",
        url,
        "--contract",
        contract,
        "--key",
        k.to_str().unwrap(),
    ]);
    all.extend_from_slice(&args[words..]);
    let out = kura(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn cli_drives_a_served_enclave() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup(d, "");
    let c = contract.to_str().unwrap();
    let (served, url) = serve(d, &contract);

    let as_party = |name: &str, args: &[&str]| as_party(d, &url, c, name, args);

    let ehr = d.join("ehr.csv");
    let (code, out, err) = as_party(
        "hospital-a",
        &[
            "upload",
            "--dataset",
            "ehr",
            "--file",
            ehr.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("uploaded ehr: 68 rows"), "{out}");
    assert!(err.contains("SIMULATED PLATFORM"), "{err}");

    // Before all data is present: refused, with the reason in JSON.
    let (code, out, _) = as_party(
        "hospital-a",
        &["run", "--analysis", "by_activity", "--json"],
    );
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["refused"], true);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("waiting for dataset(s) activity"),
        "{v}"
    );

    let act = d.join("activity.csv");
    assert_eq!(
        as_party(
            "fitness-b",
            &[
                "upload",
                "--dataset",
                "activity",
                "--file",
                act.to_str().unwrap()
            ]
        )
        .0,
        Some(0)
    );

    // Ad-hoc queries are refused: this contract has no [adhoc] section.
    let (code, out, _) = as_party(
        "hospital-a",
        &["query", "--sql", "SELECT COUNT(*) FROM ehr", "--json"],
    );
    assert_eq!(code, Some(1));
    let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(v["refused"], true);
    assert!(
        v["reason"].as_str().unwrap().contains("[adhoc]"),
        "the reason names the missing section: {v}"
    );

    // The receiver runs and gets the result in the stable JSON shape.
    let (code, out, err) = as_party(
        "hospital-a",
        &["run", "--analysis", "by_activity", "--json"],
    );
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["columns"],
        serde_json::json!(["steps_band", "people", "rate"])
    );
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["suppressed_groups"], 1);
    let run_id = v["run_id"].as_str().unwrap().to_string();

    let csv = d.join("out.csv");
    let (code, _, err) = as_party(
        "hospital-a",
        &[
            "results",
            "--run",
            &run_id,
            "--format",
            "csv",
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("steps_band,people,rate\nhigh,40,0.25\nmid,25,"),
        "{text}"
    );

    // fitness-b is not a receiver of this analysis.
    let (code, _, err) = as_party("fitness-b", &["results", "--run", &run_id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a receiver of analysis"), "{err}");

    let (code, out, err) = as_party("fitness-b", &["audit", "verify", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "enclave_started",
            "upload",
            "run_refused",
            "upload",
            // the ad-hoc query refused for want of an [adhoc] section
            "run_refused",
            "run",
            "release",
            "deletion",
            "deletion"
        ]
    );

    // The transparency report, from the verified log.
    let (code, out, err) = as_party("fitness-b", &["audit", "report", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["contract"]["purpose"], "tests");
    assert_eq!(r["log"]["entries"], 9);
    let ehr = &r["datasets"][0];
    assert_eq!(
        (ehr["name"].as_str(), ehr["provider"].as_str()),
        (Some("ehr"), Some("hospital-a"))
    );
    assert_eq!(ehr["uploads"][0]["value"], 68);
    assert!(ehr["deleted"]["value"].as_str().unwrap().contains(&run_id));
    let run = &r["analyses"][0]["runs"][0];
    assert_eq!(run["run_id"], run_id.as_str());
    assert_eq!(run["by"], "hospital-a");
    assert_eq!(run["released_to"], serde_json::json!(["hospital-a"]));
    // fitness-b receives nothing from this run, so the log tells it nothing of the result.
    assert!(
        run.get("suppressed_groups").is_none() && run.get("rows").is_none(),
        "{run}"
    );
    assert_eq!(r["refused_runs"], 2);
    assert_eq!(r["enclave_starts"][0]["platform"], "simulated");
    let (code, md, _) = as_party("hospital-a", &["audit", "report"]);
    assert_eq!(code, Some(0));
    assert!(md.starts_with("# Transparency report: e2e"), "{md}");
    assert!(
        md.contains("The simulated platform offers no protection"),
        "{md}"
    );

    // The three flags every party command takes can come from the environment instead.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .env("KURA_ENCLAVE", &url)
        .env("KURA_CONTRACT", c)
        .env("KURA_KEY", d.join("fitness-b.key"))
        .args(["audit", "verify", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM stops the service as Ctrl-C does: an orderly exit, status 0.
    let mut served = served;
    // The shell's own `kill`: no package beyond a POSIX shell needed.
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", served.0.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = served.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        std::fs::read_to_string(d.join("serve.log"))
            .unwrap()
            .contains("shutting down")
    );
}

/// What `kura` printed: exit code, stdout, stderr.
type Printed = (Option<i32>, String, String);

/// Uploads `ehr` as hospital-a and `activity` as fitness-b through the command line.
fn upload_both(as_party: &dyn Fn(&str, &[&str]) -> Printed, d: &Path) {
    for (party, dataset) in [("hospital-a", "ehr"), ("fitness-b", "activity")] {
        let file = d.join(format!("{dataset}.csv"));
        let (code, _, err) = as_party(
            party,
            &[
                "upload",
                "--dataset",
                dataset,
                "--file",
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, Some(0), "{err}");
    }
}

#[test]
fn cli_ad_hoc_query_gives_statistics_in_json_and_the_report_shows_its_sql() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup(
        d,
        "\n[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n",
    );
    let c = contract.to_str().unwrap();
    // Valid, but its signatories are told what a threshold-only [adhoc] allows.
    let verified = kura(&["contract", "verify", "--contract", c, "--json"]);
    assert!(verified.status.success());
    let v: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("[adhoc] without [privacy.dp]"),
        "{v}"
    );
    // describe: who may do what, from the contract alone.
    let described = kura(&["contract", "describe", "--contract", c, "--json"]);
    assert!(described.status.success());
    let v: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(
        v["adhoc"]["analysts"],
        serde_json::json!(["hospital-a"]),
        "{v}"
    );
    assert_eq!(v["adhoc"]["differentially_private"], false);
    assert_eq!(v["min_group_size"], 10);
    assert_eq!(v["datasets"][0]["columns"][0]["role"], "identifier");
    let text = kura(&["contract", "describe", "--contract", c]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("measure: only inside aggregates"), "{text}");
    assert!(
        text.contains("warning: [adhoc] without [privacy.dp]"),
        "{text}"
    );
    let (served, url) = serve(d, &contract);
    let as_party = |name: &str, args: &[&str]| as_party(d, &url, c, name, args);
    upload_both(&as_party, d);

    // An ad-hoc query that would show identifiers: refused, with the rule, in JSON.
    let (code, out, _) = as_party(
        "hospital-a",
        &["query", "--sql", "SELECT patient_id FROM ehr", "--json"],
    );
    assert_eq!(code, Some(1));
    let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(v["refused"], true);
    assert!(
        v["reason"].as_str().unwrap().contains("identifier-use"),
        "the reason names the rule: {v}"
    );
    assert_eq!(v["rule"], "identifier-use", "and so does its own field");
    // A conditional aggregate, which would take one person's value from a large group.
    let conditional = "SELECT a.steps_band, SUM(CASE WHEN e.age_band = 'old' THEN 1 ELSE 0 \
                       END) FROM ehr e JOIN activity a ON e.patient_id = a.patient_id \
                       GROUP BY a.steps_band";
    // --explain gives the same verdict on this machine, with no enclave and no key.
    let explain = |sql: &str| {
        let out = kura(&[
            "query",
            "--explain",
            "--contract",
            c,
            "--sql",
            sql,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let (code, v) = explain(conditional);
    assert_eq!(code, Some(1));
    assert_eq!(
        (v["allowed"].as_bool(), v["rule"].as_str()),
        (Some(false), Some("aggregate-argument")),
        "{v}"
    );
    let (code, v) = explain(
        "SELECT a.steps_band, COUNT(*) FROM ehr e JOIN activity a \
         ON e.patient_id = a.patient_id GROUP BY a.steps_band",
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        (v["allowed"].as_bool(), v["min_group_size"].as_u64()),
        (Some(true), Some(10)),
        "{v}"
    );

    // Read from a file, as long queries are.
    let file = d.join("conditional.sql");
    std::fs::write(&file, conditional).unwrap();
    let (code, out, _) = as_party(
        "hospital-a",
        &["query", "--sql-file", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, Some(1));
    let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(v["rule"], "aggregate-argument", "{v}");
    // ... or from standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .env("KURA_ENCLAVE", &url)
        .env("KURA_CONTRACT", c)
        .env("KURA_KEY", d.join("hospital-a.key"))
        .args(["query", "--sql", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), conditional.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    assert_eq!(v["rule"], "aggregate-argument", "{v}");

    // A compliant one: statistics in the same JSON shape as `kura results`.
    let sql = "SELECT a.steps_band, COUNT(*) AS people FROM ehr e JOIN activity a \
               ON e.patient_id = a.patient_id GROUP BY a.steps_band ORDER BY a.steps_band";
    let (code, out, err) = as_party("hospital-a", &["query", "--sql", sql, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["columns"], serde_json::json!(["steps_band", "people"]));
    assert_eq!(
        v["rows"],
        serde_json::json!([["high", 40], ["mid", 25]]),
        "the 3-person group is suppressed"
    );
    assert_eq!(v["suppressed_groups"], 1);
    assert_eq!(v["analysis"], kura_contract::ADHOC_ANALYSIS);
    let query_run = v["run_id"].as_str().unwrap().to_string();

    // fitness-b is neither an analyst nor an ad-hoc receiver.
    let (code, _, err) = as_party("fitness-b", &["query", "--sql", sql]);
    assert_eq!(code, Some(1));
    assert!(err.contains("analyst"), "{err}");

    // The transparency report names the query and its receiver.
    let (code, out, err) = as_party("fitness-b", &["audit", "report", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The identifier query, the conditional one (twice) and fitness-b's attempt.
    assert_eq!(r["refused_runs"], 4);
    let adhoc = &r["analyses"][1];
    assert_eq!(adhoc["name"], kura_contract::ADHOC_ANALYSIS);
    assert_eq!(adhoc["runs"][0]["run_id"], query_run.as_str());
    assert_eq!(
        adhoc["runs"][0]["sql"], sql,
        "the report discloses the ad-hoc SQL"
    );
    assert_eq!(
        adhoc["runs"][0]["released_to"],
        serde_json::json!(["hospital-a"])
    );
    let (code, md, _) = as_party("hospital-a", &["audit", "report"]);
    assert_eq!(code, Some(0));
    assert!(md.contains(&format!("query: `{sql}`")), "{md}");
    drop(served);
}

#[test]
fn a_killed_service_restarts_with_a_log_that_verifies_and_loses_no_acknowledged_entry() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = cli_setup(d, "");
    let contract = SignedContract::verify(
        Contract::parse(&std::fs::read(&path).unwrap()).unwrap(),
        |p| std::fs::read_to_string(format!("{}.{p}.sig", path.display())).ok(),
    )
    .unwrap();
    let key = || {
        SecretIdentity::parse(&std::fs::read_to_string(d.join("hospital-a.key")).unwrap()).unwrap()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acknowledged = Arc::new(AtomicU64::new(0));
    for round in 0..4u64 {
        let (mut served, url) = serve(d, &path);
        rt.block_on(async {
            let mut hammers = vec![];
            for _ in 0..2 {
                let mut client = Client::new(&url, contract.clone(), key()).unwrap();
                client.attest().await.unwrap();
                let acked = acknowledged.clone();
                hammers.push(tokio::spawn(async move {
                    // Each refused run appends a `run_refused` entry before it is answered.
                    while let Err(ClientError::Refused { status: 404, .. }) =
                        client.run("no-such-analysis").await
                    {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(150 + 70 * round)).await;
            served.0.kill().unwrap(); // SIGKILL, in the middle of appends
            for h in hammers {
                h.await.unwrap();
            }
        });
        drop(served);
    }
    let acked = acknowledged.load(Ordering::SeqCst);
    assert!(
        acked > 20,
        "the service acknowledged only {acked} entries before being killed"
    );

    let (_served, url) = serve(d, &path);
    let report = rt.block_on(async {
        let mut client = Client::new(&url, contract.clone(), key()).unwrap();
        client.audit().await.unwrap()
    });
    let kinds: Vec<String> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap().event.kind().to_string())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "enclave_started").count(), 5);
    let refused = kinds.iter().filter(|k| *k == "run_refused").count() as u64;
    assert!(
        refused >= acked,
        "{acked} acknowledged, {refused} in the log"
    );
    eprintln!(
        "killed 4 times: {acked} acknowledged appends, {refused} in the restarted log, which verifies"
    );
}

// ---- the audit log ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_and_rollbacks_of_the_log_are_caught_by_a_client_that_saw_it() {
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
        matches!(&err, ClientError::Refused { reason, .. } if reason.contains("rolled back or forked")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_deletions_and_records_what_was_lost() {
    let room = room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    let room = room.stop().await;
    let state = room.state();
    let again = start(&room.contract, &state).await;
    let mut h = room.client(&again.url(), "hospital-a");
    let report = h.audit().await.unwrap();
    let events: Vec<Event> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap().event)
        .collect();
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        ["enclave_started", "upload", "enclave_started", "deletion"]
    );
    assert!(
        matches!(&events[3], Event::Deletion { dataset, reason } if dataset == "ehr" && reason.contains("restarted"))
    );
    let (status, reason) = refused(h.upload("ehr", &room.dir.join("ehr.csv"), |_| {}).await);
    assert_eq!(status, 409, "{reason}");
    assert!(reason.contains("was deleted"), "{reason}");
    // A state directory of another contract is refused.
    again.shutdown().await.unwrap();
    let other = room_with(&["hospital-a", "fitness-b"], false, "[\"hospital-a\"]").await;
    let err = kura_server::start(kura_server::Config {
        contract: other.contract.clone(),
        platform: Platform::Simulated,
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.clone(),
        max_upload_bytes: 1 << 20,
        evidence_certs: vec![],
        evidence_collateral: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("holds the log of another contract"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_deleted_at_the_deadline_without_anyone_asking() {
    let deadline = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let deadline = deadline
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let room = room_custom(
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
    .await;
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
        reason.contains("deleted under the contract's retention rule"),
        "{reason}"
    );
}

/// Three banks, each with its own transfers; chains planted across banks. The list analysis
/// names the accounts that receive from another bank and pass money on, and each bank gets only
/// its own accounts. Ad-hoc queries run under the rules, refusals name the rule and are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_banks_get_only_their_own_accounts_from_a_cross_bank_list() {
    let dir = tempfile::tempdir().unwrap();
    let banks = ["bank-a", "bank-b", "bank-c"];
    let parties: Vec<Party> = banks
        .iter()
        .map(|n| Party {
            name: n,
            key: SecretIdentity::generate(),
        })
        .collect();
    let mut text =
        String::from("version = 1\nname = \"aml\"\npurpose = \"cross-bank mule detection\"\n\n");
    for p in &parties {
        text += &format!(
            "[[parties]]\nname = \"{}\"\npublic_key = \"{}\"\nroles = [\"provider\", \"analyst\", \"receiver\"]\n\n",
            p.name,
            p.key.public().to_text()
        );
    }
    for b in ["a", "b", "c"] {
        text += &format!(
            "[[datasets]]\nname = \"transfers_{b}\"\nprovider = \"bank-{b}\"\nprivacy_unit = \"from_account\"\ncolumns = [\n  {{ name = \"from_account\", type = \"utf8\", role = \"identifier\" }},\n  {{ name = \"to_account\", type = \"utf8\", role = \"identifier\" }},\n  {{ name = \"amount\", type = \"float64\", role = \"measure\" }},\n]\n\n"
        );
    }
    text += r#"[[analyses]]
name = "mules"
kind = "list"
list_column = "account"
receivers = ["bank-a", "bank-b", "bank-c"]
sql = """
WITH t AS (
  SELECT from_account, to_account, 'a' AS bank FROM transfers_a
  UNION ALL SELECT from_account, to_account, 'b' FROM transfers_b
  UNION ALL SELECT from_account, to_account, 'c' FROM transfers_c)
SELECT DISTINCT x.to_account AS account
FROM t x JOIN t y ON x.to_account = y.from_account
WHERE x.bank <> y.bank
ORDER BY account
"""

[adhoc]
analysts = ["bank-a"]
receivers = ["bank-a"]

[output]
min_group_size = 3

[retention]
delete_after = "never"

[enclave]
platforms = ["simulated"]
"#;
    let contract = Contract::parse(text.as_bytes()).unwrap();
    kura_engine::check_analyses(&contract).await.unwrap();
    let sigs: Vec<_> = parties
        .iter()
        .map(|p| kura_contract::sign(&contract, &p.key).unwrap())
        .collect();
    let contract = SignedContract::verify(contract, |party| {
        sigs.iter()
            .find(|(p, _)| p == party)
            .map(|(_, s)| s.clone())
    })
    .unwrap();
    let server = start(&contract, &dir.path().join("state")).await;
    // Planted chains: a001 -> b001 -> c001 -> a002 -> a999 and c050 -> b050 -> b051;
    // noise inside each bank (a1xx -> a1xx) is not cross-bank and must not be listed.
    let data = [
        (
            "a",
            "a001,b001,9000\na002,a999,8800\na100,a101,50\na101,a102,40\na103,a104,10\n",
        ),
        (
            "b",
            "b001,c001,8900\nb050,b051,700\nb100,b101,30\nb101,b102,20\n",
        ),
        ("c", "c001,a002,8850\nc050,b050,720\nc100,c101,60\n"),
    ];
    let mut clients = vec![];
    for name in banks {
        let mut c = Client::new(&server.url(), contract.clone(), key_of(&parties, name)).unwrap();
        c.attest().await.unwrap();
        clients.push(c);
    }
    for ((b, rows), c) in data.into_iter().zip(&mut clients) {
        let path = dir.path().join(format!("transfers_{b}.csv"));
        std::fs::write(&path, format!("from_account,to_account,amount\n{rows}")).unwrap();
        c.upload(&format!("transfers_{b}"), &path, |_| {})
            .await
            .unwrap();
    }
    let run = clients[1].run("mules").await.unwrap();
    let expected = [vec!["a002"], vec!["b001", "b050"], vec!["c001"]];
    for (c, want) in clients.iter_mut().zip(expected) {
        let table = c.results(Some(&run.run_id)).await.unwrap().remove(0);
        let got: Vec<&str> = table.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(got, want, "{}", c.party());
    }

    // Ad-hoc: bank-a may ask for statistics; identifiers and other banks' rows never come out.
    let (a, rest) = clients.split_at_mut(1);
    let a = &mut a[0];
    let ok = a
        .query(
            "SELECT COUNT(*) AS n, SUM(amount) AS total FROM transfers_a",
            None,
        )
        .await
        .unwrap();
    let table = a.results(Some(&ok.run_id)).await.unwrap().remove(0);
    assert_eq!(
        table.rows,
        vec![vec![serde_json::json!(5), serde_json::json!(17900.0)]]
    );
    let (status, reason) = refused(
        a.query(
            "SELECT from_account, COUNT(*) FROM transfers_b GROUP BY from_account",
            None,
        )
        .await,
    );
    assert_eq!(status, 409, "{reason}");
    assert!(
        reason.contains("identifier-use") && reason.contains("transfers_b.from_account"),
        "{reason}"
    );
    let (_, reason) = refused(
        a.query("SELECT COUNT(*) FROM transfers_b WHERE amount > 8000", None)
            .await,
    );
    assert!(reason.contains("measure-use"), "{reason}");
    // bank-b is not an [adhoc] analyst.
    let (status, _) = refused(
        rest[0]
            .query("SELECT COUNT(*) FROM transfers_b", None)
            .await,
    );
    assert_eq!(status, 403);

    // The log shows the query and the refusals, and verifies against the contract.
    let report = a.audit().await.unwrap();
    let events: Vec<Event> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap().event)
        .collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Run { sql: Some(s), .. } if s.contains("SUM(amount)")))
    );
    // Refused queries are logged with their SQL, like answered ones.
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::RunRefused { analysis, sql: Some(_), .. } if analysis == kura_contract::ADHOC_ANALYSIS))
            .count(),
        3
    );
    // No entry tells anyone the size of a result: its receivers have it, sealed.
    assert!(events.iter().all(|e| !matches!(
        e,
        Event::Run { rows: Some(_), .. }
            | Event::Run {
                suppressed_groups: Some(_),
                ..
            }
    )));
}

/// The two-party room with ad-hoc queries under differential privacy: ε = 2 per receiver,
/// steps bands as the public domain, one row per person.
async fn dp_room() -> Room {
    room_custom(
        &["hospital-a", "fitness-b"],
        false,
        "[\"hospital-a\"]",
        |t| {
            t.replacen(
                "roles = [\"provider\", \"receiver\"]",
                "roles = [\"provider\", \"receiver\", \"analyst\"]",
                1,
            )
            .replace("delete_after = \"run\"", "delete_after = \"never\"")
                + "\n[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n\
                   \n[privacy.dp]\nepsilon = 2.0\nquery_epsilon = 0.5\n\
                   domains = { \"activity.steps_band\" = [\"high\", \"mid\", \"low\"] }\n"
        },
    )
    .await
}

const DP_SQL: &str = "SELECT a.steps_band, COUNT(*) AS people FROM ehr e JOIN activity a \
                      ON e.patient_id = a.patient_id GROUP BY a.steps_band ORDER BY a.steps_band";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_queries_spread_as_declared_and_cannot_overspend_the_budget() {
    let room = dp_room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let mut a = room.client("hospital-a").await;
    let truth = [("high", 40i64), ("low", 3), ("mid", 25)];

    // 90 queries at ε = 0.02: each count gets discrete Laplace noise of scale 1/0.02 = 50.
    let mut errors = Vec::new();
    for _ in 0..90 {
        let run = a.query(DP_SQL, Some(0.02)).await.unwrap();
        let table = a.results(Some(&run.run_id)).await.unwrap().remove(0);
        let dp = table.dp.as_ref().expect("a DP release says so");
        assert_eq!(dp["columns"]["people"]["scale"], 50.0);
        assert_eq!(table.suppressed_groups, 0);
        // All three public values, even the 3-person band, with noise instead of suppression.
        for (row, (band, n)) in table.rows.iter().zip(truth) {
            assert_eq!(row[0], band);
            errors.push((row[1].as_i64().unwrap() - n) as f64);
        }
    }
    let p = (-1.0f64 / 50.0).exp();
    let declared = 2.0 * p / (1.0 - p).powi(2);
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(
        (var / declared - 1.0).abs() < 0.45,
        "observed variance {var:.0}, declared {declared:.0}"
    );
    assert!(
        mean.abs() < 5.0 * (declared / n).sqrt(),
        "mean error {mean}"
    );

    // 0.2 of the budget is left: of 20 concurrent queries at 0.02, exactly 10 are answered.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(room.client("hospital-a").await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move { c.query(DP_SQL, Some(0.02)).await });
    }
    let answers = tasks.join_all().await;
    let ok = answers.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "{answers:?}");
    for r in answers.into_iter().filter(|r| r.is_err()) {
        let (status, reason) = refused(r);
        assert_eq!(status, 409);
        assert!(
            reason.contains("privacy budget of hospital-a would be exceeded"),
            "{reason}"
        );
    }

    // The log holds every spend; replaying it gives the whole budget spent and verifies.
    let report = a.audit().await.unwrap();
    let bodies: Vec<_> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap())
        .collect();
    let budget = kura_client::audit::budget(room.contract.contract(), &bodies).unwrap();
    let account = budget
        .accounts_report()
        .into_iter()
        .find(|x| x.name == "hospital-a")
        .unwrap();
    assert_eq!((account.spent_epsilon, account.releases), (2.0, 100));
    assert_eq!(account.remaining_epsilon, 0.0);

    // A restarted enclave rebuilds the spent budget from the log: still refused.
    let stopped = room.stop().await;
    let server = start(&stopped.contract, &stopped.state()).await;
    let mut c = stopped.client(&server.url(), "hospital-a");
    c.attest().await.unwrap();
    let (status, reason) = refused(c.query(DP_SQL, Some(0.01)).await);
    assert_eq!(status, 409);
    assert!(reason.contains("would be exceeded"), "{reason}");
    server.shutdown().await.unwrap();
}

#[test]
fn cli_budget_shows_what_dp_queries_spent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup(
        d,
        "\n[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n\
         \n[privacy.dp]\nepsilon = 1.0\nquery_epsilon = 0.25\nsplit = \"shared\"\n\
         domains = { \"activity.steps_band\" = [\"high\", \"mid\", \"low\"] }\n",
    );
    let c = contract.to_str().unwrap();
    let (served, url) = serve(d, &contract);
    let as_party = |name: &str, args: &[&str]| as_party(d, &url, c, name, args);
    // Before the data is there, a query is refused without reading anything: not charged
    // (the budget below counts only the two queries after the uploads).
    let (code, _, err) = as_party("hospital-a", &["query", "--sql", DP_SQL]);
    assert_eq!(code, Some(1));
    assert!(err.contains("waiting for dataset"), "{err}");
    upload_both(&as_party, d);

    // A DP query that fails after it read data is charged as if it had run, and its reason
    // quotes no value (the cast fails on an age band).
    let failing = "SELECT a.steps_band, COUNT(*) AS people FROM ehr e JOIN activity a \
                   ON e.patient_id = a.patient_id WHERE CAST(e.age_band AS INT) > 0 \
                   GROUP BY a.steps_band";
    let (code, out, err) = as_party("hospital-a", &["query", "--sql", failing, "--json"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("the query failed while running: a cast of a column value failed"),
        "{err}"
    );
    assert!(!err.contains("young") && !err.contains("old"), "{err}");

    // --explain prices the query without sending it: nothing is spent.
    let explained = kura(&[
        "query",
        "--explain",
        "--contract",
        c,
        "--sql",
        DP_SQL,
        "--json",
    ]);
    assert_eq!(explained.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&explained.stdout).unwrap();
    assert_eq!(v["dp"]["epsilon"], 0.25, "{v}");

    let (code, out, err) = as_party("hospital-a", &["query", "--sql", DP_SQL, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dp"]["epsilon"], 0.25);
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);

    let (code, out, err) = as_party("fitness-b", &["budget", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["split"], "shared");
    assert_eq!(v["accounts"][0]["name"], "(collaboration)");
    // The failed query and the answered one.
    assert_eq!(v["accounts"][0]["spent_epsilon"], 0.5);
    assert_eq!(v["accounts"][0]["remaining_epsilon"], 0.5);
    let (code, text, _) = as_party("hospital-a", &["budget"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("remaining ε = 0.5"), "{text}");
    let (code, _, err) = as_party("fitness-b", &["audit", "verify"]);
    assert_eq!(code, Some(0), "{err}");

    drop(served);
}
