use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kura_api::ErrorBody;

/// Everything the service can answer with other than success. Mapped to HTTP once, here.
/// Reasons are for the caller; internal details (paths, I/O errors) are logged, not returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("cannot start: {0}")]
    Start(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the contract's rules or the current state refuse it.
    #[error("{0}")]
    Refused(String),
    /// An output rule refused the query; `rule` is its stable id.
    #[error("refused by rule {rule}: {reason}")]
    Rule { rule: &'static str, reason: String },
    #[error("internal error")]
    Internal(String),
}

impl ServiceError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ServiceError::Start(_) | ServiceError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            ServiceError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServiceError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::Refused(_) | ServiceError::Rule { .. } => {
                (StatusCode::CONFLICT, "refused")
            }
        }
    }
}

/// An engine refusal keeps its rule id; any other engine error is a refusal in its own words
/// (which quote no data: see `kura_engine::error`).
impl From<kura_engine::EngineError> for ServiceError {
    fn from(e: kura_engine::EngineError) -> Self {
        match e {
            kura_engine::EngineError::Refused { rule, reason } => {
                ServiceError::Rule { rule, reason }
            }
            other => ServiceError::Refused(other.to_string()),
        }
    }
}

impl From<kura_ledger::LedgerError> for ServiceError {
    fn from(e: kura_ledger::LedgerError) -> Self {
        ServiceError::Internal(format!("log: {e}"))
    }
}

impl ServiceError {
    /// The status and the body that tell the caller; internal details are logged here instead.
    pub(crate) fn answer(&self) -> ErrorBody {
        let (status, code) = self.parts();
        if let ServiceError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        ErrorBody {
            code: code.to_string(),
            reason: self.to_string(),
            rule: match self {
                ServiceError::Rule { rule, .. } => Some((*rule).to_string()),
                _ => None,
            },
            status: status.as_u16(),
        }
    }
}

/// An error about a request that could not be read, so it answers nothing signed: the client
/// treats it like any word from the host.
impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let body = self.answer();
        let status = StatusCode::from_u16(body.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(body)).into_response()
    }
}
