//! `GET /metrics`: this instance's Prometheus metrics (see [`crate::metrics`]), and the
//! scrape-time levels it shares with the introspection overview.
//!
//! Levels come from where they are already counted: the store's inbox-depth counter,
//! the registry's atomics, and the retry index (sparse: only failing accounts have a
//! record, so counting it stays cheap; it is capped at [`RETRY_COUNT_CAP`]).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiError, ApiQuery, AppState, NoQuery};
use crate::domain::incidents::{IncidentKind, IncidentQuery, IncidentState};
use crate::metrics::{ScrapeValues, CONTENT_TYPE};
use crate::store::StoreError;

/// The most retry records one scrape counts (the gauge saturates there).
pub const RETRY_COUNT_CAP: usize = 100_000;

/// The metrics route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Reads the scrape-time levels. Blocking (store reads): call from a blocking thread.
pub fn scrape_values(state: &AppState) -> Result<ScrapeValues, StoreError> {
    let stats = state.ctx.registry.stats();
    let store = state.ctx.store.blocking();
    let retry_backlog = store.due_retries(DateTime::<Utc>::MAX_UTC, RETRY_COUNT_CAP)?;
    let now = state.ctx.clock.now();
    let retries_due = retry_backlog.iter().filter(|r| r.due_at <= now).count();
    let open = store.list_incidents(&IncidentQuery {
        state: IncidentState::Open,
        kind: None,
        account_id: None,
        operation_id: None,
        since: None,
        after: None,
        limit: usize::MAX,
    })?;
    let incidents_open = IncidentKind::ALL
        .iter()
        .map(|kind| {
            let count = open.iter().filter(|i| i.kind == *kind).count() as u64;
            (kind.as_str(), count)
        })
        .collect();
    let by_state = store.count_operations()?;
    let operations = crate::domain::operations::OperationState::ALL
        .iter()
        .map(|state| {
            let count = by_state
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            (state.as_str(), count)
        })
        .collect();
    Ok(ScrapeValues {
        incidents_open,
        operations,
        operation_actors_active: state.ctx.operations.stats().active as u64,
        inbox_depth: store.inbox_depth()?,
        retry_backlog: retry_backlog.len() as u64,
        retries_due: retries_due as u64,
        actors_active: stats.active as u64,
        activations: stats.activations,
        passivations: stats.passivations,
    })
}

/// This instance's metrics in the OpenMetrics text format (Prometheus scrapes it).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    security(()),
    params(NoQuery),
    responses(
        (status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody),
        (status = 200, description = "OpenMetrics text exposition", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn metrics(
    State(state): State<AppState>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let metrics = state.ctx.metrics.clone();
    let text = tokio::task::spawn_blocking(move || {
        let values = scrape_values(&state)?;
        metrics
            .render(values)
            .map_err(|e| StoreError::Io(format!("encoding metrics: {e}")))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}
