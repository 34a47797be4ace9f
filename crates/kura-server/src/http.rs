//! HTTP routes. Parsing and status mapping only; the rules live in [`crate::Service`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kura_api::{
    Action, Answer, EvidenceQuery, RequestBody, ResultsResponse, SignedResponse, UploadTicket,
    evidence_request, request_hash, routes,
};
use kura_crypto::channel::AnswerKey;

use crate::{Service, ServiceError};

pub(crate) fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(routes::EVIDENCE, get(evidence))
        .route(routes::HEALTH, get(health))
        .route(routes::CALL, post(call))
        .route(routes::UPLOAD_STREAM, post(upload_stream))
        .route(kura_cluster::join::JOIN, post(join))
        .route(kura_cluster::join::CHALLENGE, post(challenge))
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
    Ok(signed(
        kura_api::RESPONSE_DOMAIN,
        &s,
        &request,
        Ok(s.info().await),
    ))
}

/// `POST /v1/cluster/join`: an executor's evidence and TLS key; answered, signed for this
/// request, with its certificate or the reason it was refused.
async fn join(State(s): State<Arc<Service>>, body: Body) -> Response {
    // Evidence with its certificates and collateral fits in far less.
    const MAX_JOIN: usize = 1 << 20;
    let body = match axum::body::to_bytes(body, MAX_JOIN).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => {
            return ServiceError::BadRequest("a join request over 1 MiB".into()).into_response();
        }
    };
    let request = request_hash(&body);
    let result = s.join(&body).await;
    signed(kura_api::JOIN_DOMAIN, &s, &request, result)
}

/// `POST /v1/cluster/challenge`: a challenge for one join, signed for this request.
async fn challenge(State(s): State<Arc<Service>>, body: Body) -> Response {
    const MAX_CHALLENGE: usize = 1 << 10;
    let body = match axum::body::to_bytes(body, MAX_CHALLENGE).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => {
            return ServiceError::BadRequest("a challenge request over 1 KiB".into())
                .into_response();
        }
    };
    let request = request_hash(&body);
    let result = s.challenge(&body);
    signed(kura_api::JOIN_DOMAIN, &s, &request, result)
}

/// `result` signed by the enclave in signature domain `domain` as the answer to the request
/// whose hash is `request`; a refusal keeps its status. Only for the unsealed requests: the
/// evidence request ([`kura_api::RESPONSE_DOMAIN`]) and a cluster join's
/// ([`kura_api::JOIN_DOMAIN`]).
fn signed<T: serde::Serialize>(
    domain: &str,
    s: &Service,
    request: &str,
    result: Result<T, ServiceError>,
) -> Response {
    let (status, answer) = verdict(result);
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        Json(SignedResponse::sign_in(
            domain,
            s.identity(),
            request,
            answer,
        )),
    )
        .into_response()
}

fn verdict<T>(result: Result<T, ServiceError>) -> (u16, Answer<T>) {
    match result {
        Ok(value) => (200, Answer::Ok(value)),
        Err(e) => {
            let body = e.answer();
            (body.status, Answer::Refused(body))
        }
    }
}

/// `result` signed as the answer to `request` and sealed as answer number `seq` under `key`.
/// Always status 200: whether it is a refusal is inside, for the party alone.
fn sealed<T: serde::Serialize>(
    s: &Service,
    key: &AnswerKey,
    seq: u64,
    request: &str,
    result: Result<T, ServiceError>,
) -> Response {
    let (_, answer) = verdict(result);
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        kura_api::seal_answer(s.identity(), key, seq, request, answer),
    )
        .into_response()
}

/// `POST /v1/call`: a [`kura_api::SignedRequest`] sealed to this instance's key. A call that does not
/// open answers unsealed and unsigned (there is no one to seal to): the client treats that as
/// the host's word. Every other answer is sealed, whatever the action.
async fn call(State(s): State<Arc<Service>>, body: Body) -> Response {
    let message = match axum::body::to_bytes(body, kura_api::max_sealed_call()).await {
        Ok(m) => m,
        Err(e) => {
            return ServiceError::BadRequest(format!("cannot read the call: {e}")).into_response();
        }
    };
    let contract = s.contract();
    let (req, key) = match kura_api::open_call(
        s.identity(),
        contract.crypto.kem,
        contract.id().as_str(),
        &message,
    ) {
        Ok(opened) => opened,
        Err(e) => return ServiceError::BadRequest(e.to_string()).into_response(),
    };
    let request = request_hash(&req.body);
    // The action decides which rules apply; each of them authenticates the request first.
    let action = serde_json::from_str::<RequestBody>(&req.body).map(|b| b.action);
    match action {
        Ok(Action::Upload(_)) => {
            let key = Arc::new(key);
            let ticket = s.begin_upload(req, &request, key.clone()).await;
            sealed(
                &s,
                &key,
                0,
                &request,
                ticket.map(|ticket| UploadTicket { ticket }),
            )
        }
        Ok(Action::Run { .. } | Action::Query { .. }) => {
            let result = s.run(req, &request).await;
            sealed(&s, &key, 0, &request, result)
        }
        Ok(Action::Results { .. }) => {
            let result = s.results(req).await;
            let result = result.map(|results| ResultsResponse { results });
            sealed(&s, &key, 0, &request, result)
        }
        Ok(Action::Audit) => sealed(&s, &key, 0, &request, s.audit(req).await),
        Ok(Action::Consistency { .. }) => sealed(&s, &key, 0, &request, s.consistency(req).await),
        Ok(Action::Release(_)) => sealed(&s, &key, 0, &request, s.release(req).await),
        Err(e) => sealed::<()>(
            &s,
            &key,
            0,
            &request,
            Err(ServiceError::BadRequest(format!("malformed request: {e}"))),
        ),
    }
}

/// The body is the encrypted stream, read as it arrives; the answer is to the upload's sealed
/// header, as its answer number 1.
async fn upload_stream(
    State(s): State<Arc<Service>>,
    Path(ticket): Path<String>,
    body: Body,
) -> Result<Response, ServiceError> {
    let (request, key, result) = s.upload_stream(&ticket, body.into_data_stream()).await?;
    Ok(sealed(&s, &key, 1, &request, result))
}
