//! `/v1/incidents`: what needed (or needs) a human, newest first, with filters. The
//! incidents themselves are opened and resolved by the actors and the store; this only
//! reads them.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::paging::{self, AfterIncident, PageToken};
use super::params;
use super::{ApiError, ApiPath, ApiQuery, AppState, NoQuery};
use crate::domain::incidents::{Incident, IncidentKind, IncidentQuery, IncidentState};
use crate::service;

/// The largest page.
const MAX_PAGE: usize = 1000;
/// The page size when `limit` is absent.
const DEFAULT_PAGE: usize = 100;
/// What the `state` filter takes.
const STATES: [&str; 3] = ["open", "resolved", "all"];

/// The incident routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
}

fn state_schema() -> utoipa::openapi::Object {
    params::enum_schema(&STATES, "Open, resolved or all (default) incidents.")
}

fn kind_names() -> Vec<&'static str> {
    IncidentKind::ALL.iter().map(|k| k.as_str()).collect()
}

fn kind_schema() -> utoipa::openapi::Object {
    params::enum_schema(&kind_names(), "Only incidents of this kind.")
}

fn limit_schema() -> utoipa::openapi::Object {
    params::limit_schema(DEFAULT_PAGE, MAX_PAGE)
}

fn account_schema() -> utoipa::openapi::Object {
    params::key_schema_described(
        "Only this account's incidents: an account id, alias, item id or owner id",
    )
}

fn operation_schema() -> utoipa::openapi::Object {
    params::operation_id_schema_described("Only this operation's incidents: its operation id")
}

/// `GET /v1/incidents` query. Every field is text parsed by [`params`], so a bad value
/// gets a 400 naming it.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IncidentsParams {
    /// `open`, `resolved` or `all` (default).
    #[param(schema_with = state_schema)]
    pub state: Option<String>,
    /// One kind.
    #[param(schema_with = kind_schema)]
    pub kind: Option<String>,
    /// An account id, alias, item id or owner id.
    #[param(schema_with = account_schema)]
    pub account: Option<String>,
    /// An operation id.
    #[param(schema_with = operation_schema)]
    pub operation_id: Option<String>,
    /// RFC 3339 time: only incidents opened at or after it.
    #[param(schema_with = params::time_schema)]
    pub since: Option<String>,
    /// Continue after this incident id (the previous page's `next`).
    #[param(schema_with = paging::after_incident_schema)]
    pub after: Option<String>,
    /// Page size.
    #[param(schema_with = limit_schema)]
    pub limit: Option<String>,
}

/// A page of incidents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IncidentPage {
    /// Newest first.
    pub incidents: Vec<Incident>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// Turns the raw parameters into a store query (without the account, resolved apart).
pub fn parse_params(params: &IncidentsParams) -> Result<IncidentQuery, ApiError> {
    let state = match params::one_of("state", params.state.as_deref(), &STATES)? {
        None | Some("all") => IncidentState::All,
        Some("open") => IncidentState::Open,
        Some(_) => IncidentState::Resolved,
    };
    let kind = params::one_of("kind", params.kind.as_deref(), &kind_names())?
        .and_then(IncidentKind::parse);
    Ok(IncidentQuery {
        state,
        kind,
        account_id: None,
        operation_id: params::operation_id("operation_id", params.operation_id.as_deref())?,
        since: params::time("since", params.since.as_deref())?,
        after: paging::read_after::<AfterIncident>(params.after.as_deref())?.map(|a| a.0),
        limit: params::limit(params.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?,
    })
}

/// Incidents, newest first, filtered by state, kind, account, operation and opening time.
#[utoipa::path(
    get,
    path = "/v1/incidents",
    tag = "incidents",
    operation_id = "list_incidents",
    params(IncidentsParams),
    responses(
        (status = 200, description = "A page of incidents", body = IncidentPage),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
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
    let next = next.map(|id| AfterIncident(id).encode());
    Ok(Json(IncidentPage { incidents, next }))
}

/// The `{id}` of an incident.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IncidentPath {
    /// Incident id.
    #[param(value_type = u64)]
    pub id: String,
}

/// One incident.
#[utoipa::path(
    get,
    path = "/v1/incidents/{id}",
    tag = "incidents",
    operation_id = "get_incident",
    params(IncidentPath, NoQuery),
    responses(
        (status = 200, description = "The incident", body = Incident),
        (status = 400, description = "Not an incident id, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such incident", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    ApiPath(IncidentPath { id }): ApiPath<IncidentPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<Incident>, ApiError> {
    let id: u64 = id
        .parse()
        .ok()
        .filter(|_| id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_path",
                "id: must be an incident id (a non-negative integer)",
            )
        })?;
    Ok(Json(service::incidents::get(&state.ctx, id).await?))
}
