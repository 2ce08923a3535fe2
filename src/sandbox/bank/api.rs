//! The bank's API (see `providers::bank` for the wire format): authentication, the
//! idempotency key, the injected faults that act before anything else, and the shape
//! of answers and errors. Handlers only translate; the books are in `state`.
//!
//! Bodies are parsed by hand (not with axum's `Json`) so that a malformed body gets the
//! bank's own error object. Request bodies deny unknown fields, as Stripe does: a
//! client sending a field the bank does not know has a bug worth a 400.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracing::debug;

use super::state::{take_one, BankError, Created};
use super::BankSandbox;
use crate::providers::bank::errors::REQUEST_ID_HEADER;
use crate::providers::bank::wire::{codes, CardBody, ErrorEnvelope, ErrorObject, OpeningRequest};
use crate::providers::bank::IDEMPOTENCY_HEADER;

/// Longest idempotency key accepted (Stripe's limit).
const MAX_KEY_CHARS: usize = 255;
/// How long a legacy call waits for a decision before answering 504, as the bank's
/// gateway would: a market that never decides must not hold connections forever.
const LEGACY_HOLD: Duration = Duration::from_secs(60);

/// The bank's API routes.
pub(super) fn routes() -> Router<BankSandbox> {
    Router::new()
        .route("/v2/account-openings", post(open_async))
        .route("/v2/account-openings/{tracking_id}", get(opening_status))
        .route("/v1/accounts", post(open_legacy))
        .route("/v1/cards", post(issue_card))
}

/// An error answer: the bank's error object with its status (and, for a 429, the
/// `Retry-After`). Handlers return it with `?`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub(super) struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    retry_after_secs: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorObject {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// An error answer with `status`, `code` and `message`.
pub(super) fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code: code.to_owned(),
        message: message.into(),
        retry_after_secs: None,
    }
}

fn answer(status: StatusCode, body: impl Serialize) -> Response {
    (status, Json(body)).into_response()
}

/// Unknown paths, in the bank's error shape.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    refuse(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!("no route {}", uri.path()),
    )
}

/// Gives every answer an `x-request-id`.
pub(super) async fn add_request_id(
    State(bank): State<BankSandbox>,
    mut response: Response,
) -> Response {
    if let Ok(value) = HeaderValue::from_str(&bank.next_request_id()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

pub(super) fn bank_error(err: BankError) -> ApiError {
    let message = err.to_string();
    match err {
        BankError::KeyReused(_) => refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::IDEMPOTENCY_KEY_REUSED,
            message,
        ),
        BankError::NotFound(_) => refuse(StatusCode::NOT_FOUND, codes::NOT_FOUND, message),
        BankError::AlreadyFinal { .. } => refuse(StatusCode::CONFLICT, "already_final", message),
        BankError::UnknownAccount { .. } => {
            refuse(StatusCode::UNPROCESSABLE_ENTITY, "unknown_account", message)
        }
        BankError::Invalid(_) => refuse(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, message),
    }
}

/// The checks every call passes first: the API key, then the rate-limit fault.
fn admit(bank: &BankSandbox, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            codes::MISSING_API_KEY,
            "send the API key as Authorization: Bearer <key>",
        ));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(key.as_bytes().ct_eq(bank.shared.api_key.as_bytes())) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            codes::INVALID_API_KEY,
            "the API key is not valid",
        ));
    }
    let mut state = bank.lock();
    if take_one(&mut state.faults.rate_limit_next) {
        state.stats.injected_rate_limits += 1;
        let mut refusal = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            codes::RATE_LIMITED,
            "too many requests",
        );
        refusal.retry_after_secs = Some(state.faults.rate_limit_retry_after_secs);
        return Err(refusal);
    }
    Ok(())
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if key.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            codes::MISSING_IDEMPOTENCY_KEY,
            "this call needs an Idempotency-Key header",
        ));
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            format!("Idempotency-Key must be at most {MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(key.to_owned())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            codes::INVALID_REQUEST,
            e.to_string(),
        )
    })
}

fn parse_opening(body: &[u8]) -> Result<OpeningRequest, ApiError> {
    let request: OpeningRequest = parse(body)?;
    for (name, value) in [
        ("customer_id", &request.customer_id),
        ("market", &request.market),
        ("segment", &request.segment),
        ("legal_name", &request.legal_name),
    ] {
        if value.trim().is_empty() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                format!("{name} must not be empty"),
            ));
        }
    }
    Ok(request)
}

/// The `create_fail_next` fault: whether this create answers 500.
fn create_fails(bank: &BankSandbox) -> bool {
    let mut state = bank.lock();
    let fails = take_one(&mut state.faults.create_fail_next);
    if fails {
        state.stats.injected_create_failures += 1;
    }
    fails
}

fn injected_failure() -> ApiError {
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        codes::INTERNAL_ERROR,
        "injected failure",
    )
}

/// `POST /v2/account-openings`.
async fn open_async(
    State(bank): State<BankSandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&bank, &headers)?;
    if create_fails(&bank) {
        return Err(injected_failure());
    }
    let key = idempotency_key(&headers)?;
    let request = parse_opening(&body)?;
    let (created, before_response) = {
        let mut state = bank.lock();
        let created = state.create_async(&key, request, chrono::Utc::now());
        (created, state.faults.webhook_before_response)
    };
    let (accepted, initiated, delay_ms) = match created.map_err(bank_error)? {
        Created::Replay(accepted) => return Ok(answer(StatusCode::OK, accepted)),
        Created::New {
            accepted,
            initiated,
            delay_ms,
        } => (accepted, initiated, delay_ms),
    };
    debug!(tracking_id = %accepted.tracking_id, request_id = %key, "bank opening created");
    let (delivered, delivered_rx) = if before_response {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    bank.start_opening(
        accepted.tracking_id.clone(),
        initiated,
        Duration::from_millis(delay_ms),
        delivered,
    );
    if let Some(rx) = delivered_rx {
        // Closed only if the opening's task died; answer regardless.
        let _ = rx.await;
    }
    Ok(answer(StatusCode::ACCEPTED, accepted))
}

/// `GET /v2/account-openings/{tracking_id}`.
async fn opening_status(
    State(bank): State<BankSandbox>,
    Path(tracking_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&bank, &headers)?;
    let (latency, fails) = {
        let mut state = bank.lock();
        state.stats.status_calls += 1;
        let fails = state.draw_status_error();
        if fails {
            state.stats.injected_status_errors += 1;
        }
        (state.faults.status_latency_ms, fails)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if fails {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::SERVICE_UNAVAILABLE,
            "injected status error",
        ));
    }
    let status = bank.lock().status(&tracking_id).map_err(bank_error)?;
    Ok(answer(StatusCode::OK, status))
}

/// `POST /v1/accounts`: blocks until the opening is decided.
async fn open_legacy(
    State(bank): State<BankSandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&bank, &headers)?;
    if create_fails(&bank) {
        return Err(injected_failure());
    }
    let key = idempotency_key(&headers)?;
    let request = parse_opening(&body)?;
    let mut created = bank
        .lock()
        .create_legacy(&key, request, chrono::Utc::now())
        .map_err(bank_error)?;
    if created.fresh {
        bank.start_legacy(
            created.tracking_id.clone(),
            Duration::from_millis(created.legacy_delay_ms),
        );
    }
    let waited = tokio::time::timeout(
        LEGACY_HOLD,
        created.decided.wait_for(|status| status.is_terminal()),
    )
    .await;
    match waited {
        Ok(Ok(_)) => {}
        // The opening's sender lives as long as the bank: only a bank being torn down
        // gets here.
        Ok(Err(_)) => {
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL_ERROR,
                "the bank is shutting down",
            ))
        }
        Err(_) => {
            return Err(refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "decision_pending",
                "the bank has not decided yet; retry with the same Idempotency-Key",
            ))
        }
    }
    let decision = bank
        .lock()
        .legacy_answer(&created.tracking_id)
        .ok_or_else(|| bank_error(BankError::NotFound(created.tracking_id.clone())))?;
    Ok(answer(StatusCode::OK, decision))
}

/// `POST /v1/cards`.
async fn issue_card(
    State(bank): State<BankSandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    admit(&bank, &headers)?;
    let fails = {
        let mut state = bank.lock();
        state.stats.card_calls += 1;
        let fails = take_one(&mut state.faults.card_fail_next);
        if fails {
            state.stats.injected_card_failures += 1;
        }
        fails
    };
    if fails {
        return Err(injected_failure());
    }
    let key = idempotency_key(&headers)?;
    let request: CardBody = parse(&body)?;
    let issued = bank.lock().issue_card(&key, request).map_err(bank_error)?;
    let status = if issued.fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(answer(status, issued.card))
}
