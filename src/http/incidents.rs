//! `/v1/incidents`: what needed (or needs) a human, newest first, with filters. The
//! incidents themselves are opened and resolved by the actors and the store; this only
//! reads them.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::domain::incidents::{Incident, IncidentKind, IncidentQuery, IncidentState};
use crate::service;

const MAX_PAGE: usize = 1000;

/// The incident routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
}

/// `GET /v1/incidents` query. Every field is parsed by hand so a bad value gets a 400
/// naming it.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IncidentsParams {
    /// `open`, `resolved` or `all` (default).
    pub state: Option<String>,
    /// One kind: `sync_failed`, `needs_reauth`, `quarantined`, `pending_expiration`,
    /// `pending_disconnect`.
    pub kind: Option<String>,
    /// An account id, alias, item id or owner id.
    pub account: Option<String>,
    /// RFC 3339 time: only incidents opened at or after it.
    pub since: Option<String>,
    /// Continue after this incident id (the previous page's `next`).
    pub after: Option<String>,
    /// Page size (1..=1000, default 100).
    pub limit: Option<String>,
}

/// A page of incidents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IncidentPage {
    /// Newest first.
    pub incidents: Vec<Incident>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<u64>,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_query", format!("{field}: {message}"))
}

/// Turns the raw parameters into a store query (without the account, resolved apart).
pub fn parse_params(params: &IncidentsParams) -> Result<IncidentQuery, ApiError> {
    let state = match params.state.as_deref() {
        None | Some("all") => IncidentState::All,
        Some("open") => IncidentState::Open,
        Some("resolved") => IncidentState::Resolved,
        Some(other) => {
            return Err(invalid(
                "state",
                format!("{other:?} is not one of open, resolved, all"),
            ))
        }
    };
    let kind = match params.kind.as_deref() {
        None => None,
        Some(name) => Some(IncidentKind::parse(name).ok_or_else(|| {
            let known: Vec<&str> = IncidentKind::ALL.iter().map(|k| k.as_str()).collect();
            invalid(
                "kind",
                format!("{name:?} is not one of {}", known.join(", ")),
            )
        })?),
    };
    let since = match params.since.as_deref() {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|e| invalid("since", format!("{text:?} is not an RFC 3339 time ({e})")))?
                .with_timezone(&Utc),
        ),
    };
    let after = match params.after.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| invalid("after", format!("{text:?} is not an incident id")))?,
        ),
    };
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| invalid("limit", format!("must be between 1 and {MAX_PAGE}")))?,
    };
    Ok(IncidentQuery {
        state,
        kind,
        account_id: None,
        since,
        after,
        limit,
    })
}

/// Incidents, newest first, filtered by state, kind, account and opening time.
#[utoipa::path(
    get,
    path = "/v1/incidents",
    tag = "incidents",
    params(IncidentsParams),
    responses(
        (status = 200, description = "A page of incidents", body = IncidentPage),
        (status = 400, description = "Invalid filter (the message names the field)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "The `account` filter names no account", body = ErrorBody),
        (status = 409, description = "The `account` filter is ambiguous", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<IncidentsParams>,
) -> Result<Json<IncidentPage>, ApiError> {
    let query = parse_params(&params)?;
    let (incidents, next) =
        service::incidents::list(&state.ctx, query, params.account.as_deref()).await?;
    Ok(Json(IncidentPage { incidents, next }))
}

/// One incident.
#[utoipa::path(
    get,
    path = "/v1/incidents/{id}",
    tag = "incidents",
    params(("id" = u64, Path, description = "Incident id")),
    responses(
        (status = 200, description = "The incident", body = Incident),
        (status = 400, description = "Not an incident id", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such incident", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Incident>, ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request("invalid_path", format!("{id:?} is not an incident id"))
    })?;
    Ok(Json(service::incidents::get(&state.ctx, id).await?))
}
