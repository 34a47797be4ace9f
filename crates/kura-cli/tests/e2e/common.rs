//! What every end-to-end test starts from: parties with keys, a signed contract, the service
//! on loopback, and the data files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kura_client::{Client, ClientError};
use kura_contract::{Contract, Platform, SignedContract};
use kura_crypto::SecretIdentity;
use kura_ledger::Event;

pub(crate) struct Party {
    pub(crate) name: &'static str,
    pub(crate) key: SecretIdentity,
}

pub(crate) struct Room {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) dir: PathBuf,
    pub(crate) contract: SignedContract,
    pub(crate) parties: Vec<Party>,
    pub(crate) server: kura_server::Running,
}

/// The e2e contract (`testdata/contracts/e2e-{two,three}-parties.toml`) with `parties`' keys
/// and the analysis's `receivers` (a TOML list).
pub(crate) fn contract_text(parties: &[Party], three: bool, receivers: &str) -> String {
    let template = if three {
        include_str!("../../../../testdata/contracts/e2e-three-parties.toml")
    } else {
        include_str!("../../../../testdata/contracts/e2e-two-parties.toml")
    };
    kura_contract::example::fill(template, |name| match name {
        "receivers" => receivers.to_string(),
        key => key_of(parties, key.strip_prefix("key:").expect("@key:NAME@"))
            .public()
            .to_text(),
    })
}

pub(crate) async fn room_with(names: &[&'static str], three: bool, receivers: &str) -> Room {
    room_custom(names, three, receivers, |t| t).await
}

/// The configuration of a simulated service on loopback, for `contract` with `state`.
pub(crate) fn config(contract: &SignedContract, state: &Path) -> kura_server::Config {
    kura_server::Config {
        contract: contract.clone(),
        platform: Platform::Simulated,
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state.to_path_buf(),
        max_upload_bytes: 1 << 30,
        query_memory_bytes: kura_server::Config::DEFAULT_QUERY_MEMORY,
        evidence_certs: vec![],
        evidence_collateral: None,
        store_dir: None,
        cluster: None,
    }
}

pub(crate) async fn start(contract: &SignedContract, state: &Path) -> kura_server::Running {
    kura_server::start(config(contract, state)).await.unwrap()
}

pub(crate) async fn room_custom(
    names: &[&'static str],
    three: bool,
    receivers: &str,
    edit: impl Fn(String) -> String,
) -> Room {
    let dir = tempfile::tempdir().unwrap();
    let parties = fresh_parties(names);
    let text = edit(contract_text(&parties, three, receivers));
    let contract = signed_by(Contract::parse(text.as_bytes()).unwrap(), &parties);
    let path = dir.path().to_path_buf();
    write_data(&path);
    let server = start(&contract, &path.join("state")).await;
    Room {
        dir: path,
        _dir: dir,
        contract,
        parties,
        server,
    }
}

/// The two-party room where hospital-a may ask ad-hoc queries (and receives them), nothing is
/// deleted after runs, and `extra` TOML is appended.
pub(crate) async fn adhoc_room(extra: &str) -> Room {
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
                + "\n[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n"
                + extra
        },
    )
    .await
}

pub(crate) async fn room() -> Room {
    room_with(
        &["hospital-a", "fitness-b"],
        false,
        "[\"hospital-a\", \"fitness-b\"]",
    )
    .await
}

/// 40 people in "high", 25 in "mid", 3 in "low" (suppressed at 10); insurer covers all.
pub(crate) fn write_data(dir: &Path) {
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

/// Fresh keys for `names`, and `template` (from `testdata/contracts/`, with `@key:NAME@`
/// placeholders) filled with them, checked and signed by every party.
pub(crate) async fn signed_fixture(
    template: &str,
    names: &[&'static str],
) -> (Vec<Party>, SignedContract) {
    signed_fixture_with(template, names, |name| panic!("no placeholder @{name}@")).await
}

/// [`signed_fixture`], with the placeholders other than keys filled by `other`.
pub(crate) async fn signed_fixture_with(
    template: &str,
    names: &[&'static str],
    other: impl Fn(&str) -> String,
) -> (Vec<Party>, SignedContract) {
    let parties = fresh_parties(names);
    let text = kura_contract::example::fill(template, |name| match name.strip_prefix("key:") {
        Some(party) => key_of(&parties, party).public().to_text(),
        None => other(name),
    });
    let contract = Contract::parse(text.as_bytes()).unwrap();
    kura_engine::check_analyses(&contract).await.unwrap();
    let contract = signed_by(contract, &parties);
    (parties, contract)
}

/// `names` with a fresh key each.
fn fresh_parties(names: &[&'static str]) -> Vec<Party> {
    names
        .iter()
        .map(|n| Party {
            name: n,
            key: SecretIdentity::generate(),
        })
        .collect()
}

/// `contract` signed by every one of `parties`.
pub(crate) fn signed_by(contract: Contract, parties: &[Party]) -> SignedContract {
    let signatures: Vec<(String, String)> = parties
        .iter()
        .map(|p| kura_contract::sign(&contract, &p.key).unwrap())
        .collect();
    SignedContract::verify(contract, |party| {
        signatures
            .iter()
            .find(|(p, _)| p == party)
            .map(|(_, s)| s.clone())
    })
    .unwrap()
}

pub(crate) fn key_of(parties: &[Party], name: &str) -> SecretIdentity {
    let p = parties.iter().find(|p| p.name == name).unwrap();
    SecretIdentity::parse(&p.key.to_text()).unwrap()
}

/// A room whose service was shut down; its state directory stays.
pub(crate) struct Stopped {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) dir: PathBuf,
    pub(crate) contract: SignedContract,
    pub(crate) parties: Vec<Party>,
}

impl Stopped {
    pub(crate) fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub(crate) fn client(&self, url: &str, name: &str) -> Client {
        Client::new(url, self.contract.clone(), key_of(&self.parties, name)).unwrap()
    }
}

impl Room {
    pub(crate) fn key(&self, name: &str) -> SecretIdentity {
        key_of(&self.parties, name)
    }

    pub(crate) async fn stop(self) -> Stopped {
        self.server.shutdown().await.unwrap();
        Stopped {
            _dir: self._dir,
            dir: self.dir,
            contract: self.contract,
            parties: self.parties,
        }
    }

    pub(crate) async fn client(&self, name: &str) -> Client {
        let mut c = Client::new(&self.server.url(), self.contract.clone(), self.key(name)).unwrap();
        c.attest().await.unwrap();
        c
    }

    pub(crate) async fn upload(
        &self,
        name: &str,
        dataset: &str,
    ) -> Result<kura_api::UploadResponse, ClientError> {
        self.client(name)
            .await
            .upload(dataset, &self.dir.join(format!("{dataset}.csv")), |_| {})
            .await
    }

    pub(crate) async fn events(&self) -> Vec<Event> {
        events_of(&mut self.client(self.parties[0].name).await).await
    }
}

/// The events of the log, after `client` verified it.
pub(crate) async fn events_of(client: &mut Client) -> Vec<Event> {
    let report = client.audit().await.unwrap();
    report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap().event)
        .collect()
}

pub(crate) fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, reason, .. }) => (status, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The enclave's evidence fetched by hand, for attacks the SDK would never make (its signature
/// is not checked here).
pub(crate) async fn raw_info(url: &str) -> kura_api::EnclaveInfo {
    kura_client::install_crypto_provider();
    let url = format!(
        "{url}{}?nonce={}",
        kura_api::routes::EVIDENCE,
        kura_api::nonce()
    );
    raw_ok(&reqwest::get(url).await.unwrap().text().await.unwrap())
}

/// A request signed by hand, for requests the SDK never makes, sealed and sent as the SDK sends
/// it; returns the call, the HTTP status and the body.
pub(crate) async fn raw_send(
    url: &str,
    contract: &kura_contract::Contract,
    enclave: &kura_crypto::PublicIdentity,
    req: &kura_api::SignedRequest,
) -> (kura_api::OutgoingCall, u16, Vec<u8>) {
    let call =
        kura_api::seal_call(enclave, contract.crypto.kem, contract.id().as_str(), req).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{url}{}", kura_api::routes::CALL))
        .body(call.message.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (call, status, resp.bytes().await.unwrap().to_vec())
}

/// Answer number `seq` to `call`, opened by hand: a refusal's status (the sealed one's own, or
/// an unsealed body's HTTP status) and reason, or 200 and the value's JSON.
pub(crate) fn raw_open(
    call: &kura_api::OutgoingCall,
    seq: u64,
    enclave: &kura_crypto::PublicIdentity,
    status: u16,
    body: &[u8],
) -> (u16, String) {
    if status != 200 {
        return (status, raw_reason(&String::from_utf8_lossy(body)));
    }
    match kura_api::open_answer::<serde_json::Value>(call, seq, enclave, body).unwrap() {
        kura_api::Answer::Ok(v) => (200, v.to_string()),
        kura_api::Answer::Refused(e) => (e.status, e.reason),
    }
}

/// [`raw_send`] to the enclave at `url`, opened with [`raw_open`].
pub(crate) async fn raw_call(
    url: &str,
    contract: &kura_contract::Contract,
    req: &kura_api::SignedRequest,
) -> (u16, String) {
    let enclave = kura_crypto::PublicIdentity::parse(&raw_info(url).await.enclave_key).unwrap();
    let (call, status, body) = raw_send(url, contract, &enclave, req).await;
    raw_open(&call, 0, &enclave, status, &body)
}

/// The value of a raw signed answer that must be a success.
pub(crate) fn raw_ok<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let signed: kura_api::SignedResponse = serde_json::from_str(text).unwrap();
    match signed.parse::<T>().unwrap().answer {
        kura_api::Answer::Ok(v) => v,
        kura_api::Answer::Refused(e) => panic!("refused: {}", e.reason),
    }
}

/// The reason of a raw answer: a signed answer's, or an unsigned error body's, or the text.
pub(crate) fn raw_reason(text: &str) -> String {
    if let Ok(signed) = serde_json::from_str::<kura_api::SignedResponse>(text)
        && let Ok(body) = signed.parse::<serde_json::Value>()
    {
        return match body.answer {
            kura_api::Answer::Refused(e) => e.reason,
            kura_api::Answer::Ok(v) => v.to_string(),
        };
    }
    serde_json::from_str::<kura_api::ErrorBody>(text).map_or(text.to_string(), |e| e.reason)
}

/// Every file and folder under `dir` (none if it is missing).
pub(crate) fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push(path.clone());
            out.extend(entries(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every file under `dir` (none if it is missing).
pub(crate) fn files(dir: &Path) -> Vec<PathBuf> {
    entries(dir).into_iter().filter(|p| !p.is_dir()).collect()
}
