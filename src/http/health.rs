//! Liveness and readiness.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// `/healthz` and `/readyz`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to take webhooks: not shutting down and the store answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down",
            5,
        ));
    }
    let depth = state.store.inbox_depth()?;
    let stats = state.registry.stats();
    Ok(Json(json!({
        "status": "ready",
        "inbox_depth": depth,
        "active_actors": stats.active,
    })))
}
