//! The Stripe sandbox's controls under `/stripe/admin`, for manual use and the demo:
//! thin wrappers over [`StripeSandbox`]'s methods (tests in-process call those). Bodies
//! are JSON and deny unknown fields (400); an unknown account is a 404.
//!
//! - `POST /admin/accounts` `{platform?}` → the new account (id, key, secret).
//! - `PUT /admin/accounts/{id}/webhook_url` `{url: string | null}`.
//! - `PUT /admin/accounts/{id}/webhook_secrets` `{secrets: [..]}`.
//! - `POST /admin/accounts/{id}/generate` `{type, count}` → `{ids: n}`.
//! - `POST /admin/accounts/{id}/mutate` `{changes}` → `{changed: n}`.
//! - `PUT /admin/accounts/{id}/faults` (see [`super::StripeFaultsUpdate`]) → the
//!   faults; `GET` the same.
//! - `GET /admin/accounts/{id}/stats` → [`super::StripeStats`].
//! - `PUT /admin/accounts/{id}/webhooks/hold` `{hold}`; `POST
//!   /admin/accounts/{id}/webhooks/flush` `{shuffle?}` → `{delivered: n}`.
//! - `PUT /admin/accounts/{id}/same_second` `{on}`.
//! - `POST /admin/clock/advance` `{seconds}` → `{now}`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::errors::ApiError;
use super::settings::StripeFaultsUpdate;
use super::StripeSandbox;
use crate::domain::stripe::ObjectType;

/// Most objects one generate call makes.
const MAX_GENERATE: usize = 1_000_000;
/// Most changes one mutate call makes.
const MAX_MUTATE: usize = 100_000;

/// The admin routes.
pub(super) fn routes() -> Router<StripeSandbox> {
    Router::new()
        .route("/admin/accounts", post(create_account))
        .route("/admin/accounts/{id}/webhook_url", put(set_webhook_url))
        .route(
            "/admin/accounts/{id}/webhook_secrets",
            put(set_webhook_secrets),
        )
        .route("/admin/accounts/{id}/generate", post(generate))
        .route("/admin/accounts/{id}/mutate", post(mutate))
        .route("/admin/accounts/{id}/faults", put(set_faults).get(faults))
        .route("/admin/accounts/{id}/stats", get(stats))
        .route("/admin/accounts/{id}/webhooks/hold", put(hold))
        .route("/admin/accounts/{id}/webhooks/flush", post(flush))
        .route("/admin/accounts/{id}/same_second", put(same_second))
        .route("/admin/clock/advance", post(advance_clock))
}

/// Parses a JSON body; an empty body means `{}`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(e.to_string()).code("invalid_body"))
}

fn known(sandbox: &StripeSandbox, account: &str) -> Result<(), ApiError> {
    if sandbox.lock().account(account).is_some() {
        Ok(())
    } else {
        Err(ApiError::unknown_account(account))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    #[serde(default)]
    platform: Option<String>,
}

async fn create_account(
    State(sandbox): State<StripeSandbox>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let NewAccount { platform } = parse(&body)?;
    if let Some(platform) = &platform {
        known(&sandbox, platform)?;
    }
    let account = sandbox.create_account(platform.as_deref());
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookUrl {
    url: Option<String>,
}

async fn set_webhook_url(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let WebhookUrl { url } = parse(&body)?;
    known(&sandbox, &account)?;
    if let Some(url) = &url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(
                ApiError::invalid("webhook URLs must start with http:// or https://").param("url"),
            );
        }
    }
    sandbox.set_webhook_url(&account, url.clone());
    Ok(Json(json!({ "url": url })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Secrets {
    secrets: Vec<String>,
}

async fn set_webhook_secrets(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Secrets { secrets } = parse(&body)?;
    known(&sandbox, &account)?;
    let count = secrets.len();
    sandbox.set_webhook_secrets(&account, secrets);
    Ok(Json(json!({ "secrets": count })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Generate {
    #[serde(rename = "type")]
    object_type: ObjectType,
    count: usize,
}

async fn generate(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Generate { object_type, count } = parse(&body)?;
    known(&sandbox, &account)?;
    if count > MAX_GENERATE {
        return Err(
            ApiError::invalid(format!("count must be at most {MAX_GENERATE}")).param("count"),
        );
    }
    let made = sandbox.generate(&account, object_type, count).len();
    Ok(Json(json!({ "generated": made })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mutate {
    changes: usize,
}

async fn mutate(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Mutate { changes } = parse(&body)?;
    known(&sandbox, &account)?;
    if changes > MAX_MUTATE {
        return Err(
            ApiError::invalid(format!("changes must be at most {MAX_MUTATE}")).param("changes"),
        );
    }
    let changed = sandbox.mutate(&account, changes);
    Ok(Json(json!({ "changed": changed })).into_response())
}

async fn set_faults(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let update: StripeFaultsUpdate = parse(&body)?;
    known(&sandbox, &account)?;
    update
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()).code("invalid_setting"))?;
    sandbox.set_faults(&account, update);
    faults(State(sandbox), Path(account)).await
}

async fn faults(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
) -> Result<Response, ApiError> {
    let faults = sandbox
        .faults(&account)
        .ok_or_else(|| ApiError::unknown_account(&account))?;
    Ok(Json(faults).into_response())
}

async fn stats(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
) -> Result<Response, ApiError> {
    known(&sandbox, &account)?;
    Ok(Json(sandbox.stats(&account)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    hold: bool,
}

async fn hold(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Hold { hold } = parse(&body)?;
    known(&sandbox, &account)?;
    sandbox.hold_webhooks(&account, hold);
    Ok(Json(json!({ "hold": hold })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flush {
    #[serde(default)]
    shuffle: bool,
}

async fn flush(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Flush { shuffle } = parse(&body)?;
    known(&sandbox, &account)?;
    let delivered = sandbox.flush_webhooks(&account, shuffle).await;
    Ok(Json(json!({ "delivered": delivered })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SameSecond {
    on: bool,
}

async fn same_second(
    State(sandbox): State<StripeSandbox>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let SameSecond { on } = parse(&body)?;
    known(&sandbox, &account)?;
    sandbox.set_same_second(&account, on);
    Ok(Json(json!({ "on": on })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: u64,
}

async fn advance_clock(
    State(sandbox): State<StripeSandbox>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Advance { seconds } = parse(&body)?;
    sandbox.advance_clock(Duration::from_secs(seconds));
    Ok(Json(json!({ "now": sandbox.now() })).into_response())
}
