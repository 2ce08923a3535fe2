//! HTTP: one router per resource, merged here. Handlers only translate HTTP to domain
//! calls and back; the work happens in the store and the actors.
//!
//! - [`webhooks`]: `POST /webhooks/{provider}` — verify, dedup, persist, acknowledge.
//! - [`accounts`]: `/v1/accounts…` — link, read, unlink, transactions, sync status.
//! - [`health`]: `/healthz`, `/readyz`.
//! - [`incidents`]: `/v1/incidents…` — incidents, filtered, newest first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::http::{StatusCode, Uri};
use axum::Router;

use crate::actors::Registry;
use crate::config::Settings;
use crate::domain::ProviderKind;
use crate::providers::DynProvider;
use crate::store::Store;

pub mod accounts;
pub mod error;
pub mod health;
pub mod incidents;
pub mod webhooks;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Account actors.
    pub registry: Arc<Registry>,
    /// Provider clients by kind.
    pub providers: Arc<HashMap<ProviderKind, DynProvider>>,
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Set when shutdown begins: webhooks are refused with 503 from then on.
    pub shutting_down: Arc<AtomicBool>,
}

impl AppState {
    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(webhooks::router(&state.settings))
        .merge(accounts::router(&state.settings))
        .merge(health::router())
        .merge(incidents::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// `Json` whose rejections are JSON [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections are JSON [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections are JSON [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
