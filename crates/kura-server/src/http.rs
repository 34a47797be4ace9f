//! HTTP routes. Parsing and status mapping only; the rules live in [`crate::Service`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kura_api::{
    Answer, EvidenceQuery, MAX_REQUEST, ResultsResponse, SignedRequest, SignedResponse,
    UploadTicket, evidence_request, request_hash, routes,
};

use crate::{Service, ServiceError};

pub(crate) fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(routes::EVIDENCE, get(evidence))
        .route(routes::HEALTH, get(health))
        .route(routes::UPLOAD, post(upload))
        .route(routes::UPLOAD_STREAM, post(upload_stream))
        .route(routes::RUN, post(run))
        .route(routes::RESULTS, post(results))
        .route(routes::AUDIT, post(audit))
        .route(routes::CONSISTENCY, post(consistency))
        // Uploads stream; their size is limited by the service itself.
        .layer(DefaultBodyLimit::disable())
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
        .with_state(service)
}

/// One span per request, with its method and route; one line when it ends, with the status and
/// duration. Only these: the route is the template (`/v1/upload/{ticket}`, never the ticket),
/// and neither headers nor bodies (which carry a party's signed request) are logged.
fn request_span(request: &axum::http::Request<Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("(no route)", |m| m.as_str());
    tracing::info_span!("request", method = %request.method(), route)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /v1/evidence?nonce=HEX`: the evidence, keys and current head, signed as the answer to
/// the client's nonce, so that an old answer cannot be replayed as fresh.
async fn evidence(
    State(s): State<Arc<Service>>,
    Query(q): Query<EvidenceQuery>,
) -> Result<Response, ServiceError> {
    if q.nonce.len() != 32 || !q.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ServiceError::BadRequest(
            "the evidence request needs a fresh nonce of 16 bytes, hex (?nonce=...)".into(),
        ));
    }
    let request = request_hash(&evidence_request(&q.nonce));
    Ok(signed(&s, &request, Ok(s.info().await)))
}

/// `result` signed by the enclave as the answer to the request whose hash is `request`; a
/// refusal keeps its status.
fn signed<T: serde::Serialize>(
    s: &Service,
    request: &str,
    result: Result<T, ServiceError>,
) -> Response {
    let (status, answer) = match result {
        Ok(value) => (StatusCode::OK, Answer::Ok(value)),
        Err(e) => {
            let (status, body) = e.answer();
            (status, Answer::Refused(body))
        }
    };
    (
        status,
        Json(SignedResponse::sign(s.identity(), request, answer)),
    )
        .into_response()
}

/// A [`SignedRequest`] body (at most [`MAX_REQUEST`] bytes); its signature is checked by the
/// service, which knows the parties.
struct Signed(SignedRequest);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Signed {
    type Rejection = ServiceError;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, ServiceError> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_REQUEST)
            .await
            .map_err(|e| ServiceError::BadRequest(format!("cannot read request: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(Signed)
            .map_err(|e| ServiceError::BadRequest(format!("malformed request: {e}")))
    }
}

async fn upload(State(s): State<Arc<Service>>, Signed(req): Signed) -> Response {
    let request = request_hash(&req.body);
    let ticket = s.begin_upload(req, &request).await;
    signed(&s, &request, ticket.map(|ticket| UploadTicket { ticket }))
}

/// The body is the encrypted stream, read as it arrives; the answer is to the upload's signed
/// header.
async fn upload_stream(
    State(s): State<Arc<Service>>,
    Path(ticket): Path<String>,
    body: Body,
) -> Result<Response, ServiceError> {
    let (request, result) = s.upload_stream(&ticket, body.into_data_stream()).await?;
    Ok(signed(&s, &request, result))
}

async fn run(State(s): State<Arc<Service>>, Signed(req): Signed) -> Response {
    let request = request_hash(&req.body);
    let result = s.run(req, &request).await;
    signed(&s, &request, result)
}

async fn results(State(s): State<Arc<Service>>, Signed(req): Signed) -> Response {
    let request = request_hash(&req.body);
    let result = s.results(req).await;
    signed(
        &s,
        &request,
        result.map(|results| ResultsResponse { results }),
    )
}

async fn audit(State(s): State<Arc<Service>>, Signed(req): Signed) -> Response {
    let request = request_hash(&req.body);
    let result = s.audit(req).await;
    signed(&s, &request, result)
}

async fn consistency(State(s): State<Arc<Service>>, Signed(req): Signed) -> Response {
    let request = request_hash(&req.body);
    let result = s.consistency(req).await;
    signed(&s, &request, result)
}
