//! HTTP: one router per resource, merged here. Handlers only translate HTTP to
//! [`crate::service`] calls and back; the rules live in the services.
//!
//! - [`webhooks`]: `POST /webhooks/{provider}` — the ingest use-case over HTTP.
//! - [`accounts`]: `/v1/accounts…` — link, read, unlink, transactions, sync status.
//! - [`health`]: `/healthz`, `/readyz`.
//! - [`incidents`]: `/v1/incidents…` — incidents, filtered, newest first.
//! - [`operations`]: `/v1/operations…` — account openings.
//! - [`bank`]: `POST /webhooks/bank`, and the sandbox's simulated bank status.
//! - [`flags`]: `/v1/flags…` — runtime flags per market and segment, and their history.
//! - [`debug`]: `/debug/actors…`, `/debug/overview` — actor introspection.
//! - [`metrics`]: `/metrics` — Prometheus exposition.
//! - [`dashboard`]: `/dashboard` — the operator page (static, embedded).
//! - [`openapi`]: `/openapi.json`, generated from the handlers' own annotations.
//! - [`auth`]: the admin bearer token every non-public route needs.
//! - [`extract`], [`params`], [`paging`]: what callers send (query, body, path, page
//!   tokens), read under one rule: anything undocumented or out of bounds is a `400`
//!   naming the parameter, in acctor's words.
//!
//! Every route is added through a [`utoipa_axum::router::OpenApiRouter`] with
//! `routes!(handler)`, so one registration both routes a request and documents the
//! operation; a test walks the router axum actually built ([`routes::list`]) and fails
//! on any route missing from `/openapi.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::MatchedPath;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Router};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa_axum::router::OpenApiRouter;

use crate::config::Settings;
use crate::service::ingest::Ingest;
use crate::service::Context;

pub mod accounts;
pub mod auth;
pub mod bank;
pub mod dashboard;
pub mod debug;
pub mod error;
pub mod extract;
pub mod flags;
pub mod health;
pub mod incidents;
pub mod link;
pub mod metrics;
pub mod openapi;
pub mod operations;
pub mod paging;
pub mod params;
pub mod routes;
pub mod stripe;
pub mod stripe_catalog;
pub mod stripe_push;
pub mod webhooks;

pub use error::ApiError;
pub use extract::{ApiJson, ApiPath, ApiQuery, NoQuery};

/// What every handler can reach: the use-cases' context, and what only HTTP needs.
#[derive(Clone)]
pub struct AppState {
    /// The services' dependencies (store, actors, providers, settings).
    pub ctx: Context,
    /// Set when shutdown begins: webhooks are refused with 503 from then on.
    pub shutting_down: Arc<AtomicBool>,
    /// The background actors `/readyz` checks.
    pub readiness: Arc<health::Readiness>,
}

impl AppState {
    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The webhook ingest use-case over this state (a handful of `Arc` clones).
    pub fn ingest(&self) -> Ingest {
        Ingest::new(self.ctx.clone(), self.shutting_down.clone())
    }
}

/// Every route with its documentation: add new resources here, as `OpenApiRouter`s
/// built with `routes!(…)` (a plain axum route merged in would be served but missing
/// from `/openapi.json`, and the route-walking test would fail).
pub fn api(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(webhooks::router(settings))
        .merge(accounts::router(settings))
        .merge(health::router())
        .merge(incidents::router())
        .merge(operations::router(settings))
        .merge(stripe::router(settings))
        .merge(stripe_catalog::router())
        .merge(stripe_push::router())
        .merge(flags::router(settings))
        .merge(debug::router())
        .merge(metrics::router())
        .merge(dashboard::router())
        .merge(openapi::router())
}

/// The whole HTTP surface: [`api`]'s routes, JSON 404/405 answers, `/openapi.json`'s
/// document, and the admin token check around all of it (public paths are listed in
/// [`auth::is_public`]).
pub fn router(state: AppState) -> Router {
    let (routes, mut spec) = api(&state.ctx.settings).split_for_parts();
    // Every operation is in now, so links can name their targets; a unit test keeps
    // the list of links that found no source empty.
    openapi::add_response_headers(&mut spec);
    openapi::restrict_markets(&mut spec, &state.ctx.settings.operations.markets);
    for link in openapi::add_links(&mut spec) {
        tracing::error!(from = link.from, status = link.status, name = %link.name, "openapi link has no source operation");
    }
    let admin = Arc::new(auth::AdminAuth::from_settings(&state.ctx.settings));
    routes
        // Per route (so the matched template is known): one span per request, named by
        // template, never by raw path (paths carry aliases such as emails); handlers that
        // resolve an account record `account_id` on it. Headers are never recorded.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // A 5xx is acctor's own answer (a 503 while draining, a store failure
                // it logged where it happened): not an error of the HTTP layer.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(Arc::new(spec)))
        .layer(axum::middleware::from_fn_with_state(
            admin,
            auth::require_admin,
        ))
        .with_state(state)
}

fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str());
    tracing::info_span!(
        "http_request",
        method = %request.method(),
        route,
        account_id = tracing::field::Empty,
    )
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
