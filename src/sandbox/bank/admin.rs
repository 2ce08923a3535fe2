//! The bank's controls under `/bank/admin`: market outcomes, faults, forced outcomes,
//! webhook URL and flushing, and the counters. Thin wrappers over [`BankSandbox`]'s
//! methods (tests in-process call those directly). Answers use the house error shape
//! `{"error": {"code", "message"}}`; bodies deny unknown fields (400).
//!
//! - `PUT /admin/markets/{market}` `{outcome?, reject_rate?, delay_ms?, legacy_delay_ms?, silent?}`
//!   → the market's settings; `GET` the same; `GET /admin/markets` every set market.
//! - `PUT /admin/faults` (see [`super::BankFaultsUpdate`]) → the faults; `GET` the same.
//! - `POST /admin/openings/{id}/complete` `{}` and `/reject` `{reason?}` → the opening;
//!   404 unknown, 409 already decided.
//! - `GET /admin/openings/{id}`, `GET /admin/openings` (oldest first).
//! - `GET /admin/stats` → [`super::BankStats`].
//! - `POST /admin/webhooks/flush` → `{"delivered": n}` (held webhooks, shuffled).
//! - `PUT /admin/webhook_url` `{url: string | null}` → `{url}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::api::{bank_error, refuse, ApiError};
use super::settings::{BankFaultsUpdate, InvalidSetting, MarketUpdate};
use super::state::ForcedOutcome;
use super::BankSandbox;

/// The admin routes.
pub(super) fn routes() -> Router<BankSandbox> {
    Router::new()
        .route("/admin/markets", get(markets))
        .route("/admin/markets/{market}", put(set_market).get(market))
        .route("/admin/faults", put(set_faults).get(faults))
        .route("/admin/openings", get(openings))
        .route("/admin/openings/{tracking_id}", get(opening))
        .route("/admin/openings/{tracking_id}/complete", post(complete))
        .route("/admin/openings/{tracking_id}/reject", post(reject))
        .route("/admin/stats", get(stats))
        .route("/admin/webhooks/flush", post(flush))
        .route("/admin/webhook_url", put(set_webhook_url))
}

/// Parses a JSON body; an empty body means `{}`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))
}

fn invalid(err: InvalidSetting) -> ApiError {
    refuse(StatusCode::BAD_REQUEST, "invalid_setting", err.to_string())
}

async fn markets(State(bank): State<BankSandbox>) -> Response {
    Json(bank.markets()).into_response()
}

async fn market(State(bank): State<BankSandbox>, Path(market): Path<String>) -> Response {
    Json(bank.market(&market)).into_response()
}

async fn set_market(
    State(bank): State<BankSandbox>,
    Path(market): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let update: MarketUpdate = parse(&body)?;
    let settings = bank.set_market(&market, update).map_err(invalid)?;
    Ok(Json(settings).into_response())
}

async fn faults(State(bank): State<BankSandbox>) -> Response {
    Json(bank.faults()).into_response()
}

async fn set_faults(State(bank): State<BankSandbox>, body: Bytes) -> Result<Response, ApiError> {
    let update: BankFaultsUpdate = parse(&body)?;
    let faults = bank.set_faults(update).map_err(invalid)?;
    Ok(Json(faults).into_response())
}

async fn openings(State(bank): State<BankSandbox>) -> Response {
    Json(bank.openings()).into_response()
}

async fn opening(
    State(bank): State<BankSandbox>,
    Path(tracking_id): Path<String>,
) -> Result<Response, ApiError> {
    let opening = bank.opening(&tracking_id).ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no account opening {tracking_id}"),
        )
    })?;
    Ok(Json(opening).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Complete {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reject {
    #[serde(default)]
    reason: Option<String>,
}

fn forced(
    bank: &BankSandbox,
    tracking_id: &str,
    outcome: ForcedOutcome,
) -> Result<Response, ApiError> {
    let opening = bank
        .force_outcome(tracking_id, outcome)
        .map_err(bank_error)?;
    Ok(Json(opening).into_response())
}

async fn complete(
    State(bank): State<BankSandbox>,
    Path(tracking_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Complete {} = parse(&body)?;
    forced(&bank, &tracking_id, ForcedOutcome::Complete)
}

async fn reject(
    State(bank): State<BankSandbox>,
    Path(tracking_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Reject { reason } = parse(&body)?;
    forced(&bank, &tracking_id, ForcedOutcome::Reject { reason })
}

async fn stats(State(bank): State<BankSandbox>) -> Response {
    Json(bank.stats()).into_response()
}

async fn flush(State(bank): State<BankSandbox>) -> Response {
    let delivered = bank.flush_webhooks().await;
    Json(json!({ "delivered": delivered })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookUrl {
    url: Option<String>,
}

async fn set_webhook_url(
    State(bank): State<BankSandbox>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let WebhookUrl { url } = parse(&body)?;
    if let Some(url) = &url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_url",
                "webhook URLs must start with http:// or https://",
            ));
        }
    }
    bank.set_webhook_url(url.clone());
    Ok(Json(json!({ "url": url })).into_response())
}
