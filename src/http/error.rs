//! The one HTTP error type. Every failure leaves as a status and a JSON body
//! `{"error": {"code": "...", "message": "..."}}`; internal details are logged, never
//! sent. What callers send is read by [`super::extract`], whose refusals are these too,
//! so no caller mistake ever gets a plain-text or empty answer, or a deserializer's
//! words.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actors::RegistryError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// The code of a missing or wrong admin token (webhook signature failures have their
/// own code, `invalid_signature`, and no bearer challenge).
const UNAUTHORIZED_CODE: &str = "unauthorized";

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, snake_case.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Seconds the caller should wait before retrying (503/429).
    pub retry_after: Option<u64>,
}

/// The JSON body of every error answer; the type is what `/openapi.json` documents, and
/// [`ApiError`] serializes through it, so the two cannot disagree.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, snake_case (e.g. `not_found`, `unauthorized`).
    #[schema(example = "not_found")]
    pub code: String,
    /// Human-readable explanation.
    #[schema(example = "no account for \"ada@example.com\"")]
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 with a Retry-After.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 401 for the admin API: a missing or wrong bearer token. The answer carries
    /// `WWW-Authenticate: Bearer` (RFC 6750) so clients know which scheme to use.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED_CODE, message)
    }

    /// 500; the detail is logged, the caller sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.code == UNAUTHORIZED_CODE {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"acctor\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { key, account_id } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{key} is already linked to account {account_id}"),
            ),
            StoreError::AccountNotFound(id) => {
                ApiError::not_found(format!("account {id} not found"))
            }
            StoreError::Closed => ApiError::unavailable("shutting_down", "the store is closed", 5),
            StoreError::Io(_) => {
                tracing::error!(error = %error, "store write failed");
                ApiError::unavailable("store_unavailable", "the store cannot write right now", 5)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::NotLinked(id) => {
                ApiError::not_found(format!("account {id} is not linked"))
            }
            RegistryError::Store(e) => e.into(),
            RegistryError::ShuttingDown => {
                ApiError::unavailable("shutting_down", "the server is shutting down", 5)
            }
            RegistryError::Timeout(id, after) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "actor_timeout",
                format!("account {id} did not answer within {after:?}"),
            ),
            RegistryError::Quarantined(id) => ApiError::new(
                StatusCode::CONFLICT,
                "quarantined",
                format!("account {id} is quarantined; POST /v1/accounts/{id}/resume lifts it"),
            ),
            RegistryError::RestartPending(id) => {
                ApiError::unavailable("restarting", format!("account {id} is being restarted"), 1)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Invalid { code, message } => ApiError::bad_request(code, message),
            ServiceError::NotFound(message) => ApiError::not_found(message),
            ServiceError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            ServiceError::Store(e) => e.into(),
            ServiceError::Registry(e) => e.into(),
            ServiceError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, "payload_too_large", "body: too large");
        }
        ApiError::bad_request("invalid_body", "body: could not be read")
    }
}
