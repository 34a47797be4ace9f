//! The console's JSON API: one route per thing the page shows or does, each the same call the
//! command line makes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kura_api::ResultTable;
use kura_attestation::AttestationError;
use kura_client::{Client, ClientError};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use super::Console;
use crate::{describe, export, files, render};

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/session", get(session))
        .route("/api/contract", get(contract))
        .route("/api/attestation", get(attestation))
        .route(
            "/api/upload",
            // The file streams to disk: no limit beyond the enclave's own.
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/upload/progress", get(progress))
        .route("/api/run", post(run))
        .route("/api/check", post(rules))
        .route("/api/query", post(query))
        .route("/api/results", get(results))
        .route("/api/results/{run}/{format}", get(download))
        .route("/api/budget", get(budget))
        .route("/api/audit", get(audit))
        .route("/api/report", get(report))
}

/// A refusal or failure, as `{"error": {"reason", and "rule" or "check" when one applies}}`.
pub(super) struct Failure {
    status: StatusCode,
    error: Value,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error }))).into_response()
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: json!({ "reason": format!("{e:#}") }),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        anyhow::Error::new(e)
            .context("the console's scratch file")
            .into()
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let reason = e.to_string();
        let (status, error) = match &e {
            ClientError::Refused { code, rule, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "reason": reason, "code": code, "rule": rule }),
            ),
            ClientError::Local(_) | ClientError::Input { .. } | ClientError::NotAParty => {
                (StatusCode::BAD_REQUEST, json!({ "reason": reason }))
            }
            _ => match failed_check(&e) {
                Some(check) => (
                    StatusCode::BAD_GATEWAY,
                    json!({ "reason": reason, "check": check }),
                ),
                None => (StatusCode::BAD_GATEWAY, json!({ "reason": reason })),
            },
        };
        Self { status, error }
    }
}

fn bad_request(reason: impl Into<String>) -> Failure {
    Failure {
        status: StatusCode::BAD_REQUEST,
        error: json!({ "reason": reason.into() }),
    }
}

/// The checks a client makes of the enclave before using it, in the order it makes them (the
/// page marks those before a failed one passed, those after it not reached).
const CHECKS: [&str; 10] = [
    "reachable",
    "serves this contract",
    "platform accepted by the contract",
    "evidence signature and certificates",
    "measurement pinned by the contract",
    "debug mode",
    "platform security version (TCB)",
    "evidence binds this contract and the enclave's key",
    "answer signed for this request",
    "log extends the one you saw, clock agrees",
];

/// Which of [`CHECKS`] an error is the failure of.
fn failed_check(e: &ClientError) -> Option<&'static str> {
    Some(match e {
        ClientError::Unreachable { .. } => CHECKS[0],
        ClientError::WrongContract { .. } => CHECKS[1],
        ClientError::Attestation(a) => match a {
            AttestationError::PlatformNotAccepted(_) | AttestationError::Unsupported(_) => {
                CHECKS[2]
            }
            AttestationError::NoMeasurementPinned(_)
            | AttestationError::MeasurementNotAccepted(_) => CHECKS[4],
            AttestationError::Debug => CHECKS[5],
            AttestationError::TcbTooLow(_) => CHECKS[6],
            AttestationError::Binding => CHECKS[7],
            _ => CHECKS[3],
        },
        ClientError::Unauthenticated { .. }
        | ClientError::NotMine(_)
        | ClientError::Protocol(_) => CHECKS[8],
        ClientError::Log(_) | ClientError::Clock(_) | ClientError::Audit(_) => CHECKS[9],
        _ => return None,
    })
}

impl Console {
    fn client(&self) -> Result<&tokio::sync::Mutex<Client>, Failure> {
        self.client.as_ref().map_err(|reason| Failure {
            status: StatusCode::CONFLICT,
            error: json!({ "reason": format!("the console acts only on a contract every party signed: {reason}") }),
        })
    }

    /// The client, after it attested the enclave afresh (as every CLI command does).
    async fn attested(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, Failure> {
        let mut client = self.client()?.lock().await;
        // Said once on the console's terminal; the page shows it on every page.
        if client.attest().await?.is_simulated() && !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("WARNING: {}", kura_attestation::simulated::WARNING);
        }
        self.keep_head(&client)?;
        Ok(client)
    }

    /// Saves the log head this party has now seen, where the CLI keeps it too.
    fn keep_head(&self, client: &Client) -> Result<(), Failure> {
        match self.persist_heads {
            true => super::super::save_head(client).map_err(Failure::from),
            false => Ok(()),
        }
    }
}

async fn session(State(c): State<Arc<Console>>) -> Json<Value> {
    let roles = c
        .contract
        .parties
        .iter()
        .find(|p| p.name == c.party)
        .map(|p| p.roles.clone())
        .unwrap_or_default();
    Json(json!({
        "party": c.party,
        "roles": roles,
        "contract": { "name": c.contract.name, "id": c.contract.id() },
        "enclave": c.enclave,
        "signed": c.client.is_ok(),
        "unsigned_reason": c.client.as_ref().err(),
    }))
}

async fn contract(State(c): State<Arc<Console>>) -> Json<Value> {
    let mut out = describe::json(&c.contract);
    out["me"] = json!(c.party);
    out["signatures"] = json!(files::check_signatures(&c.contract, &c.contract_path));
    Json(out)
}

/// A fresh attestation, with its verdict: what was verified, or which check failed and why.
async fn attestation(State(c): State<Arc<Console>>) -> Result<Json<Value>, Failure> {
    let mut client = c.client()?.lock().await;
    let verified = client.attest().await.cloned();
    Ok(Json(match verified {
        Ok(enclave) => {
            c.keep_head(&client)?;
            let claims = &enclave.claims;
            json!({
                "verdict": "accepted",
                "checks": CHECKS,
                "platform": claims.platform,
                "simulated": enclave.is_simulated(),
                "warning": enclave.is_simulated().then_some(kura_attestation::simulated::WARNING),
                "measurement": hex::encode(&claims.measurement),
                "debug": claims.debug,
                "signer": claims.signer,
                "svns": claims.svns,
                "registers": claims.registers,
                "tcb_status": claims.tcb_status,
                "advisories": claims.advisories,
                "enclave_key": enclave.key.fingerprint(),
                "kura_version": enclave.info.kura_version,
                "contract_id": enclave.info.contract_id,
            })
        }
        Err(e) => json!({
            "verdict": "refused",
            "checks": CHECKS,
            "check": failed_check(&e),
            "reason": e.to_string(),
        }),
    }))
}

#[derive(Deserialize)]
struct UploadQuery {
    dataset: String,
    /// The file's name on the party's machine: its extension says its format.
    name: String,
    #[serde(default)]
    append: bool,
}

/// Takes a file from the page, then encrypts it here and streams it to the enclave, as
/// `kura upload` does. The plaintext waits in the console's private scratch directory and is
/// removed when the upload ends, whether it succeeded or not.
async fn upload(
    State(c): State<Arc<Console>>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Json<Value>, Failure> {
    let ext = std::path::Path::new(&q.name)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .filter(|e| matches!(e.as_str(), "csv" | "parquet" | "pq" | "onnx"))
        .ok_or_else(|| {
            bad_request("the file must be CSV (.csv), Parquet (.parquet) or a model (.onnx)")
        })?;
    // Refused before a byte is taken: the file would only wait for the client to refuse it.
    match c.contract.provider_of(&q.dataset) {
        None => {
            return Err(bad_request(format!(
                "{:?} is neither a dataset nor a model of the contract",
                q.dataset
            )));
        }
        Some(provider) if provider != c.party => {
            return Err(bad_request(format!(
                "party {:?} is not the provider of {:?} (its provider is {provider:?})",
                c.party, q.dataset
            )));
        }
        Some(_) => {}
    }
    let path = c
        .scratch
        .path()
        .join(format!("{}.{ext}", kura_api::nonce()));
    let _remove = Remove(path.clone());
    // The plaintext in flight is its owner's alone from the first byte (0600, in a 0700
    // directory), and never a file that was there before.
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&path).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad_request(format!("the page's upload broke off: {e}")))?;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    let size = file.metadata().await?.len();
    drop(file);

    let mut client = c.attested().await?;
    let progress = &c.progress;
    progress.done.store(0, Ordering::Relaxed);
    progress.total.store(size, Ordering::Relaxed);
    progress.active.store(true, Ordering::Relaxed);
    let done = progress.done.clone();
    client.set_append(q.append);
    let resp = client
        .upload(&q.dataset, &path, move |n| done.store(n, Ordering::Relaxed))
        .await;
    client.set_append(false);
    progress.active.store(false, Ordering::Relaxed);
    let resp = resp?;
    // The log now holds this upload: a later view without it is a rollback.
    c.keep_head(&client)?;
    Ok(Json(json!({
        "dataset": resp.dataset,
        "model": client.contract().model(&q.dataset).is_some(),
        "rows": resp.rows,
        "plaintext_bytes": size,
        "ciphertext_bytes": resp.ciphertext_bytes,
        "receipt": resp.receipt.entry.hash(),
    })))
}

/// Removes a scratch file when dropped.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn progress(State(c): State<Arc<Console>>) -> Json<Value> {
    let p = &c.progress;
    Json(json!({
        "active": p.active.load(Ordering::Relaxed),
        "done": p.done.load(Ordering::Relaxed),
        "total": p.total.load(Ordering::Relaxed),
    }))
}

#[derive(Deserialize)]
struct RunBody {
    analysis: String,
}

async fn run(
    State(c): State<Arc<Console>>,
    Json(b): Json<RunBody>,
) -> Result<Json<Value>, Failure> {
    let mut client = c.attested().await?;
    let resp = client.run(&b.analysis).await?;
    c.keep_head(&client)?;
    finished(&mut client, resp).await
}

#[derive(Deserialize)]
struct QueryBody {
    sql: String,
    epsilon: Option<f64>,
}

/// The rules' verdict on a query, from the contract on this machine: nothing is sent.
async fn rules(State(c): State<Arc<Console>>, Json(b): Json<QueryBody>) -> Json<Value> {
    Json(super::super::query::verdict(&c.contract, &b.sql, b.epsilon).await)
}

async fn query(
    State(c): State<Arc<Console>>,
    Json(b): Json<QueryBody>,
) -> Result<Json<Value>, Failure> {
    let mut client = c.attested().await?;
    let resp = client.query(&b.sql, b.epsilon).await?;
    c.keep_head(&client)?;
    finished(&mut client, resp).await
}

/// A run's outcome: its result when this party receives it, otherwise where it went.
async fn finished(
    client: &mut Client,
    resp: kura_api::RunResponse,
) -> Result<Json<Value>, Failure> {
    let mut out = json!({
        "run_id": resp.run_id,
        "receivers": resp.receivers,
        "deleted": resp.deleted,
    });
    if resp.receivers.iter().any(|r| r == client.party()) {
        let table = client
            .results(Some(&resp.run_id))
            .await?
            .pop()
            .ok_or_else(|| bad_request("the enclave returned no result for this run"))?;
        out["result"] = table_json(&table);
    }
    Ok(Json(out))
}

/// A result as the page shows it: the stable JSON, and the question it answers.
fn table_json(t: &ResultTable) -> Value {
    let mut v = render::result_json(t);
    v["sql"] = json!(t.sql);
    v
}

async fn results(State(c): State<Arc<Console>>) -> Result<Json<Value>, Failure> {
    let mut client = c.attested().await?;
    let tables = client.results(None).await?;
    Ok(Json(json!(
        tables.iter().map(table_json).collect::<Vec<_>>()
    )))
}

/// One result as a file: CSV, Parquet (typed), JSON, or a model's ONNX file.
async fn download(
    State(c): State<Arc<Console>>,
    Path((run, format)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let mut client = c.attested().await?;
    let table = client
        .results(Some(&run))
        .await?
        .pop()
        .ok_or_else(|| bad_request(format!("there is no result of run {run} for you")))?;
    let (bytes, kind) = match format.as_str() {
        "csv" => (render::csv(&table)?.into_bytes(), "text/csv"),
        "parquet" => (export::parquet(&table)?, "application/vnd.apache.parquet"),
        "json" => (
            render::result_json(&table).to_string().into_bytes(),
            "application/json",
        ),
        "onnx" => {
            let model = table
                .onnx
                .as_deref()
                .ok_or_else(|| bad_request("this result has no model file"))?;
            (
                kura_crypto::b64::decode(model)
                    .map_err(|e| Failure::from(anyhow::anyhow!("the result's model file: {e}")))?,
                "application/octet-stream",
            )
        }
        _ => return Err(bad_request("formats: csv, parquet, json, onnx")),
    };
    // Names come from the contract and the enclave: keep only what a file name can hold.
    let safe = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(64)
            .collect()
    };
    let name = format!(
        "{}-{}.{format}",
        safe(&table.analysis),
        safe(&run).chars().take(12).collect::<String>()
    );
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn budget(State(c): State<Arc<Console>>) -> Result<Json<Value>, Failure> {
    let mut client = c.attested().await?;
    let report = client.audit().await?;
    c.keep_head(&client)?;
    Ok(Json(
        match super::super::budget::accounts(client.contract(), &report)? {
            Some((dp, accounts)) => super::super::budget::json(&dp, &accounts),
            None => json!({ "dp": false }),
        },
    ))
}

/// The verified log as a timeline, or why it does not verify.
async fn audit(State(c): State<Arc<Console>>) -> Result<Json<Value>, Failure> {
    let mut client = c.attested().await?;
    let report = match client.audit().await {
        Ok(report) => report,
        Err(e) => return Ok(Json(json!({ "valid": false, "reason": e.to_string() }))),
    };
    c.keep_head(&client)?;
    let events: Vec<Value> = report
        .entries
        .iter()
        .filter_map(|e| e.parse_body().ok())
        .map(|b| {
            json!({
                "seq": b.seq,
                "time": b.time,
                "text": render::describe(&b.event),
                "deletion": matches!(b.event, kura_ledger::Event::Deletion { .. }),
                "event": b.event,
            })
        })
        .collect();
    Ok(Json(json!({
        "valid": true,
        "entries": report.chain.entries,
        "enclave_starts": report.chain.enclave_starts,
        "head": report.chain.head,
        "root": report.chain.root,
        "events": events,
    })))
}

async fn report(State(c): State<Arc<Console>>) -> Result<Json<Value>, Failure> {
    let mut client = c.attested().await?;
    let audit = client.audit().await?;
    c.keep_head(&client)?;
    let transparency = crate::report::build(client.contract(), &audit)?;
    Ok(Json(json!({
        "markdown": crate::report::markdown(&transparency),
        "report": transparency,
    })))
}
