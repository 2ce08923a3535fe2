//! The sandbox's own controls under `/admin`: create and mutate items, inject faults,
//! fire webhooks and read the counters tests use to prove how acctor behaved. Not part
//! of Plaid's API, so it uses acctor's house error shape
//! (`{"error": {"code", "message"}}`) instead of Plaid's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::RandomFaultsUpdate;
use super::plaid_bank::{FaultsUpdate, Item, MutateError};
use super::{plaid_api, Sandbox};

/// Largest history or batch the admin API creates in one call.
const MAX_BATCH: u32 = 1_000_000;

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdminError {
    /// The request is malformed or asks for something impossible: 400.
    #[error("{code}: {message}")]
    BadRequest {
        /// Short machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such item or route: 404.
    #[error("not found: {0}")]
    NotFound(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            AdminError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message),
            AdminError::NotFound(message) => (StatusCode::NOT_FOUND, "not_found", message),
        };
        (
            status,
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::BadRequest {
        code,
        message: message.into(),
    }
}

/// The admin routes.
pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route("/admin/items", post(create_item))
        .route("/admin/items/{item_id}/transactions", get(transactions))
        .route("/admin/items/{item_id}/mutate", post(mutate))
        .route(
            "/admin/items/{item_id}/faults",
            post(set_faults).get(get_faults),
        )
        .route("/admin/items/{item_id}/stats", get(stats))
        .route("/admin/items/{item_id}/webhook", post(fire_webhook))
        .route("/admin/webhook_url", post(set_webhook_url))
        .route(
            "/admin/faults",
            post(set_global_faults).get(get_global_faults),
        )
}

/// Parses a JSON body; an empty body means `{}` so every field takes its default.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| bad_request("invalid_body", e.to_string()))
}

fn item(sandbox: &Sandbox, item_id: &str) -> Result<Arc<Item>, AdminError> {
    sandbox
        .bank()
        .item(item_id)
        .ok_or_else(|| AdminError::NotFound(format!("no item {item_id}")))
}

fn check_url(url: &str) -> Result<(), AdminError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(bad_request(
            "invalid_url",
            "webhook URLs must start with http:// or https://",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateItem {
    #[serde(default = "default_history")]
    history: u32,
    #[serde(default)]
    webhook: Option<String>,
}

fn default_history() -> u32 {
    super::DEFAULT_HISTORY
}

async fn create_item(
    State(sandbox): State<Sandbox>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let request: CreateItem = parse(&body)?;
    if request.history > MAX_BATCH {
        return Err(bad_request(
            "too_large",
            format!("history must be at most {MAX_BATCH}"),
        ));
    }
    if let Some(url) = &request.webhook {
        check_url(url)?;
    }
    // Generating a large history takes a while: keep it off the async workers.
    let created =
        tokio::task::spawn_blocking(move || sandbox.create_item(request.history, request.webhook))
            .await
            .map_err(|e| bad_request("internal", format!("item generation failed: {e}")))?;
    Ok(Json(json!(created)))
}

async fn transactions(
    State(sandbox): State<Sandbox>,
    Path(item_id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let item = item(&sandbox, &item_id)?;
    // As the Plaid API serves them, so tests can compare a synced replica with this.
    let mut transactions = item.current_transactions();
    transactions.iter_mut().for_each(super::generate::enrich);
    Ok(Json(json!({ "transactions": transactions })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mutate {
    #[serde(default)]
    add: u32,
    #[serde(default)]
    modify: u32,
    #[serde(default)]
    remove: u32,
    #[serde(default = "yes")]
    fire_webhook: bool,
}

fn yes() -> bool {
    true
}

async fn mutate(
    State(sandbox): State<Sandbox>,
    Path(item_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let item = item(&sandbox, &item_id)?;
    let request: Mutate = parse(&body)?;
    if request.add > MAX_BATCH {
        return Err(bad_request(
            "too_large",
            format!("add must be at most {MAX_BATCH}"),
        ));
    }
    let report = item
        .mutate(
            request.add as usize,
            request.modify as usize,
            request.remove as usize,
            sandbox.bank().today(),
        )
        .map_err(|e| match e {
            MutateError::NotEnough { .. } => bad_request("not_enough_transactions", e.to_string()),
        })?;
    let webhook_status = if request.fire_webhook {
        sandbox.fire_sync_updates(&item).await
    } else {
        None
    };
    Ok(Json(json!({
        "added": report.added,
        "modified": report.modified,
        "removed": report.removed,
        "webhook_status": webhook_status,
    })))
}

async fn set_faults(
    State(sandbox): State<Sandbox>,
    Path(item_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let item = item(&sandbox, &item_id)?;
    let update: FaultsUpdate = parse(&body)?;
    update
        .random()
        .validate()
        .map_err(|message| bad_request("invalid_fault", message))?;
    Ok(Json(json!(item.update_faults(update))))
}

/// Sets the random faults every item gets unless it overrides them (see `faults`).
async fn set_global_faults(
    State(sandbox): State<Sandbox>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let update: RandomFaultsUpdate = parse(&body)?;
    update
        .validate()
        .map_err(|message| bad_request("invalid_fault", message))?;
    Ok(Json(json!(sandbox.bank().update_global_faults(update))))
}

async fn get_global_faults(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!(sandbox.bank().global_faults()))
}

async fn get_faults(
    State(sandbox): State<Sandbox>,
    Path(item_id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let item = item(&sandbox, &item_id)?;
    Ok(Json(json!(item.faults())))
}

async fn stats(
    State(sandbox): State<Sandbox>,
    Path(item_id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let item = item(&sandbox, &item_id)?;
    Ok(Json(json!(item.stats.snapshot())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FireWebhook {
    #[serde(default = "sync_updates")]
    webhook_code: String,
}

fn sync_updates() -> String {
    "SYNC_UPDATES_AVAILABLE".to_string()
}

async fn fire_webhook(
    State(sandbox): State<Sandbox>,
    Path(item_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let item = item(&sandbox, &item_id)?;
    let request: FireWebhook = parse(&body)?;
    let Some(status) = plaid_api::fire_code(&sandbox, &item, &request.webhook_code).await else {
        return Err(bad_request(
            "unknown_webhook_code",
            format!("webhook_code {} is not supported", request.webhook_code),
        ));
    };
    Ok(Json(json!({"webhook_status": status})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookUrl {
    url: String,
}

async fn set_webhook_url(
    State(sandbox): State<Sandbox>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let request: WebhookUrl = parse(&body)?;
    check_url(&request.url)?;
    sandbox.set_default_webhook_url(request.url.clone());
    Ok(Json(json!({"url": request.url})))
}
