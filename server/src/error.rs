//! The one API error type: every failure becomes an HTTP status with a JSON body
//! `{"error": "<code>", "detail": "<sentence>"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use sync_core::protocol::server::PlanError;

use sync_core::protocol::server::EngineError;
use sync_core::DeviceId;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the configured limit (413).
    #[error("body larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Well-formed but names something unknown (422), e.g. a village outside the working area.
    #[error("{0}")]
    Unprocessable(String),
    /// The change was refused by the rules (422).
    #[error("{0}")]
    Refused(String),
    /// No valid token (401). The detail says which kind of failure, never the token.
    #[error("authentication required: {0}")]
    Unauthorized(AuthFailure),
    /// Authenticated, but the caller's role or villages do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such resource (404).
    #[error("{0}")]
    NotFound(String),
    /// Too many requests (429); `Retry-After` says when to try again.
    #[error("{}", .detail.clone().unwrap_or_else(|| format!("too many requests: try again in {} s", .retry_after.seconds())))]
    RateLimited {
        /// When the caller may try again.
        retry_after: RetryAfter,
        /// What is limited, when it is not the request rate.
        detail: Option<String>,
    },
    /// Something failed on the server (500); nothing was acknowledged.
    #[error("{0}")]
    Internal(String),
    /// The store failed (500); nothing was acknowledged. The store's error is the source.
    #[error(transparent)]
    Store(#[from] sync_core::store::StoreError),
    /// An answer could not be encoded (500).
    #[error("encoding the answer: {0}")]
    Encoding(#[from] serde_json::Error),
    /// The server cannot take writes now (503); nothing was acknowledged. Try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// Characters of an error's detail at most.
pub const MAX_DETAIL: usize = 300;

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Refused(_) => "refused",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) | ApiError::Store(_) | ApiError::Encoding(_) => "internal",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) | ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) | ApiError::Store(_) | ApiError::Encoding(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(_)
            | ApiError::Unavailable(_)
            | ApiError::Store(_)
            | ApiError::Encoding(_) => {
                tracing::error!(error = %self, source = ?std::error::Error::source(self), "request failed");
            }
            _ => {}
        }
        let mut answer = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            answer.insert_header((
                actix_web::http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"desa-sync\"",
            ));
        }
        if let ApiError::RateLimited { retry_after, .. } = self {
            answer.insert_header((
                actix_web::http::header::RETRY_AFTER,
                retry_after.seconds().to_string(),
            ));
        }
        // An error never echoes more than a few hundred characters of what it refused (a 100 KB
        // id, a 5,000-character value): enough to see what is wrong.
        answer.json(serde_json::json!({
            "error": self.code(),
            "detail": sync_core::rules::clip(self.to_string(), MAX_DETAIL),
        }))
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Wire(w) => ApiError::BadRequest(format!("malformed sync body: {w}")),
            EngineError::Plan(p @ PlanError::UnknownVillage(_)) => {
                ApiError::Unprocessable(p.to_string())
            }
            EngineError::Plan(p) => ApiError::BadRequest(p.to_string()),
            EngineError::NotFound(id) => ApiError::NotFound(format!("no report {id}")),
            EngineError::Forbidden(why) => ApiError::Forbidden(why),
            EngineError::Refused(r) => ApiError::Refused(r.to_string()),
            EngineError::BadEdit(e) => ApiError::BadRequest(e),
            EngineError::Store(e) => ApiError::Store(e),
            e @ (EngineError::Corrupt(..) | EngineError::Poisoned) => {
                ApiError::Internal(e.to_string())
            }
            EngineError::Unavailable(why) => ApiError::Unavailable(why),
        }
    }
}

impl From<RetryAfter> for ApiError {
    fn from(retry_after: RetryAfter) -> Self {
        ApiError::RateLimited {
            retry_after,
            detail: None,
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(format!("worker pool: {e}"))
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No token at all.
    #[error("missing token")]
    Missing,
    /// Something that is not a desa token.
    #[error("malformed token")]
    Malformed,
    /// A token naming a device the server does not know.
    #[error("unknown device")]
    UnknownDevice(DeviceId),
    /// A known device, but the secret does not match.
    #[error("wrong secret")]
    WrongSecret(DeviceId),
    /// A revoked device.
    #[error("revoked device")]
    Revoked(DeviceId),
}

impl AuthFailure {
    /// The device the token named, if it parsed.
    pub fn device(&self) -> Option<DeviceId> {
        match self {
            AuthFailure::Missing | AuthFailure::Malformed => None,
            AuthFailure::UnknownDevice(d)
            | AuthFailure::WrongSecret(d)
            | AuthFailure::Revoked(d) => Some(*d),
        }
    }
}

/// Refused: the key is over its rate. Try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub std::time::Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header: rounded up, at least 1.
    pub fn seconds(&self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn rate_limited_is_a_429_with_retry_after_and_the_json_shape() {
        let err = ApiError::from(RetryAfter(std::time::Duration::from_millis(1200)));
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap(),
            "2"
        );
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "rate_limited");
        assert_eq!(json["detail"], "too many requests: try again in 2 s");
    }
}
