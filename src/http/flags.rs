//! `/v1/flags…`: runtime flags per market and segment — list (every served market and
//! segment, with where its value comes from), read one, set one (recorded with who and
//! why), and the change history. Rules live in [`crate::service::flags`].

use axum::extract::{DefaultBodyLimit, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{FromJson, JsonFields};
use super::params;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, NoQuery};
use crate::config::Settings;
use crate::domain::flags::{FlagChange, FlagName};
use crate::domain::operations::Segment;
use crate::service::flags::{self, FlagView, HistoryFilter};
use crate::service::operations::check_market;

/// The largest history page.
const MAX_HISTORY: usize = 1000;
/// The history page when `limit` is absent.
const DEFAULT_HISTORY: usize = 100;

/// The flag routes.
pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(history))
        .routes(routes!(show, set))
        .layer(DefaultBodyLimit::max(settings.server.api_body_limit_bytes))
}

fn name_schema() -> utoipa::openapi::Object {
    let names: Vec<&str> = FlagName::ALL.iter().map(|n| n.as_str()).collect();
    params::enum_schema(&names, "The flag")
}

fn market_schema() -> utoipa::openapi::Object {
    params::market_schema("ISO 3166-1 alpha-2 market, one of `operations.markets`")
}

fn segment_schema() -> utoipa::openapi::Object {
    params::enum_schema(&["company", "freelancer"], "The segment")
}

fn by_schema() -> utoipa::openapi::Object {
    params::text_schema("Who sets it (recorded)", 100)
}

fn reason_schema() -> utoipa::openapi::Object {
    params::text_schema("Why (recorded)", 500)
}

fn limit_schema() -> utoipa::openapi::Object {
    params::limit_schema(DEFAULT_HISTORY, MAX_HISTORY)
}

/// A flag's path: `/v1/flags/{name}/{market}/{segment}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FlagPath {
    /// The flag.
    #[param(schema_with = name_schema)]
    pub name: String,
    /// The market.
    #[param(schema_with = market_schema)]
    pub market: String,
    /// The segment.
    #[param(schema_with = segment_schema)]
    pub segment: String,
}

/// Every flag for every served market and segment.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagList {
    /// By flag, market, segment.
    pub flags: Vec<FlagView>,
}

/// Every flag's value for every served market and segment, and where it comes from
/// (`default`: never set, `operations.async_by_default` holds).
#[utoipa::path(
    get,
    path = "/v1/flags",
    tag = "flags",
    operation_id = "list_flags",
    params(NoQuery),
    responses(
        (status = 200, description = "The flags", body = FlagList),
        (status = 400, description = "An unknown query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<FlagList>, ApiError> {
    Ok(Json(FlagList {
        flags: flags::list(&state.ctx).await?,
    }))
}

/// One flag's value for a market and segment.
#[utoipa::path(
    get,
    path = "/v1/flags/{name}/{market}/{segment}",
    tag = "flags",
    operation_id = "get_flag",
    params(FlagPath, NoQuery),
    responses(
        (status = 200, description = "The flag", body = FlagView),
        (status = 400, description = "An unknown market or segment, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No flag of that name", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<FlagPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<FlagView>, ApiError> {
    let key = flags::key_of(&state.ctx, &path.name, &path.market, &path.segment)?;
    Ok(Json(flags::get(&state.ctx, key).await?))
}

/// `PUT /v1/flags/{name}/{market}/{segment}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetFlagRequest {
    /// The new value.
    pub enabled: bool,
    /// Who sets it.
    #[schema(schema_with = by_schema)]
    pub changed_by: String,
    /// Why.
    #[schema(schema_with = reason_schema, nullable = false)]
    pub reason: Option<String>,
}

impl FromJson for SetFlagRequest {
    const FIELDS: &'static [&'static str] = &["enabled", "changed_by", "reason"];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        Ok(SetFlagRequest {
            enabled: fields.bool("enabled")?,
            changed_by: fields.string("changed_by")?,
            reason: fields.opt_string("reason")?,
        })
    }
}

/// A flag as set, with the change recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagSet {
    /// The flag now.
    pub flag: FlagView,
    /// The recorded change: `{key, from, to, by, reason, at}`.
    #[schema(value_type = Object)]
    pub change: FlagChange,
}

/// Sets a flag for a market and segment. Only operations created afterwards see it;
/// the change is recorded with who, why and when.
#[utoipa::path(
    put,
    path = "/v1/flags/{name}/{market}/{segment}",
    tag = "flags",
    operation_id = "set_flag",
    params(FlagPath, NoQuery),
    request_body(content = SetFlagRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Set", body = FlagSet),
        (status = 400, description = "An unknown market or segment, or a missing or invalid field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No flag of that name", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn set(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<FlagPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    ApiJson(request): ApiJson<SetFlagRequest>,
) -> Result<Json<FlagSet>, ApiError> {
    let key = flags::key_of(&state.ctx, &path.name, &path.market, &path.segment)?;
    let (flag, change) = flags::set(
        &state.ctx,
        key,
        request.enabled,
        request.changed_by,
        request.reason,
    )
    .await?;
    Ok(Json(FlagSet { flag, change }))
}

/// `GET /v1/flags/history` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Only this flag.
    #[param(schema_with = name_schema)]
    pub name: Option<String>,
    /// Only this market.
    #[param(schema_with = market_schema)]
    pub market: Option<String>,
    /// Only this segment.
    #[param(schema_with = segment_schema)]
    pub segment: Option<String>,
    /// Page size.
    #[param(schema_with = limit_schema)]
    pub limit: Option<String>,
}

/// Recorded flag changes.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagHistory {
    /// Newest first: `{key, from, to, by, reason, at}`.
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<FlagChange>,
}

/// Every recorded flag change, newest first, optionally only of one flag name, market
/// and/or segment.
#[utoipa::path(
    get,
    path = "/v1/flags/history",
    tag = "flags",
    operation_id = "flag_history",
    params(HistoryParams),
    responses(
        (status = 200, description = "Changes, newest first", body = FlagHistory),
        (status = 400, description = "An unknown parameter, or an invalid value", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn history(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<FlagHistory>, ApiError> {
    let limit = params::limit(params.limit.as_deref(), DEFAULT_HISTORY, MAX_HISTORY)?;
    let bad = |e: crate::service::ServiceError| match e {
        crate::service::ServiceError::Invalid { message, .. } => {
            ApiError::bad_request("invalid_query", message)
        }
        other => other.into(),
    };
    let names: Vec<&str> = FlagName::ALL.iter().map(|n| n.as_str()).collect();
    let name = params::one_of("name", params.name.as_deref(), &names)?.and_then(FlagName::parse);
    let segment = params::one_of(
        "segment",
        params.segment.as_deref(),
        &["company", "freelancer"],
    )?
    .and_then(Segment::parse);
    if let Some(market) = &params.market {
        check_market(&state.ctx, market).map_err(bad)?;
    }
    let filter = HistoryFilter {
        name,
        market: params.market.clone(),
        segment,
    };
    Ok(Json(FlagHistory {
        changes: flags::history(&state.ctx, filter, limit).await?,
    }))
}
