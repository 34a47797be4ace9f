//! HTTP routes. Parsing and status mapping only; the rules live in [`crate::Service`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use kura_api::{
    AuditResponse, EnclaveInfo, MAX_UPLOAD_HEADER, ResultsResponse, RunResponse, SignedRequest,
    UploadResponse, routes,
};

use crate::{Service, ServiceError};

pub(crate) fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(routes::EVIDENCE, get(evidence))
        .route(routes::UPLOAD, post(upload))
        .route(routes::RUN, post(run))
        .route(routes::RESULTS, post(results))
        .route(routes::AUDIT, post(audit))
        // Uploads stream; their size is limited by the service itself.
        .layer(DefaultBodyLimit::disable())
        .with_state(service)
}

async fn evidence(State(s): State<Arc<Service>>) -> Json<EnclaveInfo> {
    Json(s.info().clone())
}

fn parse_request(bytes: &[u8]) -> Result<SignedRequest, ServiceError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::BadRequest(format!("malformed request: {e}")))
}

async fn small_body(body: Body) -> Result<axum::body::Bytes, ServiceError> {
    axum::body::to_bytes(body, MAX_UPLOAD_HEADER)
        .await
        .map_err(|e| ServiceError::BadRequest(format!("cannot read request: {e}")))
}

/// Body: `u32 BE header length || SignedRequest JSON || encrypted stream frames`.
async fn upload(
    State(s): State<Arc<Service>>,
    body: Body,
) -> Result<Json<UploadResponse>, ServiceError> {
    let mut stream = body.into_data_stream();
    let mut head = Vec::new();
    let mut need: Option<usize> = None;
    // Read until the signed header is complete; the rest of the piece starts the stream.
    let rest = loop {
        let Some(piece) = stream.next().await else {
            return Err(ServiceError::BadRequest(
                "upload ended before its header".into(),
            ));
        };
        let piece =
            piece.map_err(|e| ServiceError::BadRequest(format!("upload interrupted: {e}")))?;
        head.extend_from_slice(&piece);
        if need.is_none() && head.len() >= 4 {
            let n = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
            if n > MAX_UPLOAD_HEADER {
                return Err(ServiceError::BadRequest("upload header too large".into()));
            }
            need = Some(4 + n);
        }
        if let Some(n) = need
            && head.len() >= n
        {
            break head.split_off(n);
        }
    };
    let req = parse_request(&head[4..])?;
    let first = futures_util::stream::iter([Ok::<_, axum::Error>(axum::body::Bytes::from(rest))]);
    let frames = first.chain(stream);
    Ok(Json(s.upload(req, Box::pin(frames)).await?))
}

async fn run(State(s): State<Arc<Service>>, body: Body) -> Result<Json<RunResponse>, ServiceError> {
    let req = parse_request(&small_body(body).await?)?;
    Ok(Json(s.run(req).await?))
}

async fn results(
    State(s): State<Arc<Service>>,
    body: Body,
) -> Result<Json<ResultsResponse>, ServiceError> {
    let req = parse_request(&small_body(body).await?)?;
    Ok(Json(ResultsResponse {
        results: s.results(req).await?,
    }))
}

async fn audit(
    State(s): State<Arc<Service>>,
    body: Body,
) -> Result<Json<AuditResponse>, ServiceError> {
    let req = parse_request(&small_body(body).await?)?;
    Ok(Json(AuditResponse {
        entries: s.audit(req).await?,
    }))
}
