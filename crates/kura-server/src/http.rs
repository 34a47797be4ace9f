//! HTTP routes. Parsing and status mapping only; the rules live in [`crate::Service`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use kura_api::{
    AuditResponse, ConsistencyResponse, EnclaveInfo, MAX_REQUEST, ResultsResponse, RunResponse,
    SignedRequest, UploadResponse, UploadTicket, routes,
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

async fn evidence(State(s): State<Arc<Service>>) -> Json<EnclaveInfo> {
    Json(s.info().await)
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

async fn upload(
    State(s): State<Arc<Service>>,
    Signed(req): Signed,
) -> Result<Json<UploadTicket>, ServiceError> {
    Ok(Json(UploadTicket {
        ticket: s.begin_upload(req).await?,
    }))
}

/// The body is the encrypted stream, read as it arrives.
async fn upload_stream(
    State(s): State<Arc<Service>>,
    Path(ticket): Path<String>,
    body: Body,
) -> Result<Json<UploadResponse>, ServiceError> {
    Ok(Json(
        s.upload_stream(&ticket, body.into_data_stream()).await?,
    ))
}

async fn run(
    State(s): State<Arc<Service>>,
    Signed(req): Signed,
) -> Result<Json<RunResponse>, ServiceError> {
    Ok(Json(s.run(req).await?))
}

async fn results(
    State(s): State<Arc<Service>>,
    Signed(req): Signed,
) -> Result<Json<ResultsResponse>, ServiceError> {
    Ok(Json(ResultsResponse {
        results: s.results(req).await?,
    }))
}

async fn audit(
    State(s): State<Arc<Service>>,
    Signed(req): Signed,
) -> Result<Json<AuditResponse>, ServiceError> {
    Ok(Json(s.audit(req).await?))
}

async fn consistency(
    State(s): State<Arc<Service>>,
    Signed(req): Signed,
) -> Result<Json<ConsistencyResponse>, ServiceError> {
    Ok(Json(s.consistency(req).await?))
}
