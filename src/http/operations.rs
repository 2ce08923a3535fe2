//! `/v1/operations…`: account openings over HTTP — create (202, or 409 with the
//! customer's opening in progress), read with the full transition history, list with
//! filters, and the ops commands (cancel, retry). The bank's own routes (its webhooks,
//! the sandbox's simulated ones) are in [`super::bank`]. Rules live in
//! [`crate::service::operations`].

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{FromJson, JsonFields};
use super::paging::{self, AfterOperation, PageToken};
use super::params;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, NoQuery};
use crate::config::Settings;
use crate::domain::operations::{
    BankStatus, OpeningPath, Operation, OperationQuery, OperationState, Segment, Transition,
};
use crate::service::operations::{self as ops, CreateOpening, Created};
use crate::sync::bank::OpsCommand;

/// The largest page.
const MAX_PAGE: usize = 1000;
/// The page size when `limit` is absent.
const DEFAULT_PAGE: usize = 100;
/// Longest accepted text field.
const MAX_TEXT: usize = 200;

/// The operation routes (the sandbox route only when enabled).
pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(retry));
    if settings.sandbox.simulate_bank_webhooks {
        router = router.merge(super::bank::simulation_router());
    }
    router
        .layer(DefaultBodyLimit::max(settings.server.api_body_limit_bytes))
        .merge(super::bank::webhook_router(settings))
}

fn customer_schema() -> utoipa::openapi::Object {
    params::text_schema("The customer's id in the caller's system", MAX_TEXT)
}

fn legal_name_schema() -> utoipa::openapi::Object {
    params::text_schema("The account holder's legal name", MAX_TEXT)
}

fn email_schema() -> utoipa::openapi::Object {
    params::email_schema("Contact email (must contain @)", MAX_TEXT)
}

fn registration_schema() -> utoipa::openapi::Object {
    params::text_schema("Chamber of commerce (or equivalent) number", MAX_TEXT)
}

fn market_schema() -> utoipa::openapi::Object {
    params::market_schema("ISO 3166-1 alpha-2 market, one of `operations.markets`")
}

fn segment_schema() -> utoipa::openapi::Object {
    params::enum_schema(&["company", "freelancer"], "Who the account is for")
}

fn state_names() -> Vec<&'static str> {
    OperationState::ALL.iter().map(|s| s.as_str()).collect()
}

fn state_schema() -> utoipa::openapi::Object {
    params::enum_schema(&state_names(), "Only operations in this state.")
}

fn limit_schema() -> utoipa::openapi::Object {
    params::limit_schema(DEFAULT_PAGE, MAX_PAGE)
}

/// The create's headers (documentation only: read from the request's headers).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CreateHeaders {
    /// 1 to 255 visible ASCII characters. A create repeated with the same key returns the
    /// operation the first one made (with `Idempotent-Replayed: true`), whatever its
    /// state now; the same key with another body is 409 `idempotency_key_reused`.
    #[param(rename = "Idempotency-Key", schema_with = idempotency_key_schema)]
    pub idempotency_key: Option<String>,
}

fn idempotency_key_schema() -> utoipa::openapi::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(Some("^[!-~]+$"))
        .description(Some("1 to 255 visible ASCII characters"))
        .build()
}

/// `POST /v1/operations/account-openings` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The customer.
    #[schema(schema_with = customer_schema)]
    pub customer_id: String,
    /// The market.
    #[schema(schema_with = market_schema)]
    pub market: String,
    /// `company` or `freelancer`.
    #[schema(schema_with = segment_schema)]
    pub segment: String,
    /// Legal name.
    #[schema(schema_with = legal_name_schema)]
    pub legal_name: String,
    /// Contact email.
    #[schema(schema_with = email_schema, nullable = false)]
    pub email: Option<String>,
    /// Registration number.
    #[schema(schema_with = registration_schema, nullable = false)]
    pub registration_number: Option<String>,
    /// Create even if the customer already has an opening in progress (default false).
    #[serde(default)]
    pub force: bool,
}

impl FromJson for CreateRequest {
    const FIELDS: &'static [&'static str] = &[
        "customer_id",
        "market",
        "segment",
        "legal_name",
        "email",
        "registration_number",
        "force",
    ];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        Ok(CreateRequest {
            customer_id: fields.string("customer_id")?,
            market: fields.string("market")?,
            segment: fields.string("segment")?,
            legal_name: fields.string("legal_name")?,
            email: fields.opt_string("email")?,
            registration_number: fields.opt_string("registration_number")?,
            force: fields.opt_bool("force", false)?,
        })
    }
}

/// An operation as the API shows it: the stored record, history included.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationView {
    /// Canonical id (`op_…`).
    pub id: String,
    /// Always `account_opening`.
    #[schema(example = "account_opening")]
    pub kind: String,
    /// `in_progress`, `completed`, `rejected`, `cancelled`, `step_failed` or `failed`.
    #[schema(value_type = String, example = "in_progress")]
    pub state: OperationState,
    /// The customer.
    pub customer_id: String,
    /// The market.
    pub market: String,
    /// The segment.
    #[schema(value_type = String, example = "company")]
    pub segment: Segment,
    /// The legal name.
    pub legal_name: String,
    /// `async` or `legacy`, from the market's flag at creation.
    #[schema(value_type = String, example = "async")]
    pub path: OpeningPath,
    /// The create call's idempotency key.
    pub request_id: String,
    /// The bank's tracking id, once it answered.
    pub tracking_id: Option<String>,
    /// The last bank status that moved it.
    #[schema(value_type = Option<String>, example = "IN_PROGRESS")]
    pub bank_status: Option<BankStatus>,
    /// The opened account's IBAN (empty until completed).
    pub iban: Option<String>,
    /// The opened account's BIC.
    pub bic: Option<String>,
    /// Why the bank rejected it.
    pub reject_reason: Option<String>,
    /// The next step (virtual card): its pre-generated id, state, attempts, card.
    #[schema(value_type = Object)]
    pub next_step: serde_json::Value,
    /// Status polls made.
    pub polls: u32,
    /// When the next poll is due.
    pub next_poll_at: Option<DateTime<Utc>>,
    /// When it escalates without a bank decision.
    pub escalate_at: DateTime<Utc>,
    /// When it escalated.
    pub escalated_at: Option<DateTime<Utc>>,
    /// The last failed call.
    pub last_error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Ended (or failed).
    pub finished_at: Option<DateTime<Utc>>,
    /// Every transition, oldest first: `{at, source, status?, state, note}`; `source` is
    /// `webhook`, `poll`, `sandbox`, `sync_api`, `create`, `acctor` or `ops`.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<Transition>,
    /// Record version.
    pub version: u64,
}

impl From<Operation> for OperationView {
    fn from(op: Operation) -> Self {
        OperationView {
            id: op.id.to_string(),
            kind: "account_opening".to_string(),
            state: op.state,
            customer_id: op.details.customer_id,
            market: op.details.market,
            segment: op.details.segment,
            legal_name: op.details.legal_name,
            path: op.path,
            request_id: op.request_id,
            tracking_id: op.tracking_id,
            bank_status: op.bank_status,
            iban: op.iban,
            bic: op.bic,
            reject_reason: op.reject_reason,
            next_step: serde_json::json!({
                "kind": "virtual_card",
                "step_id": op.card.step_id,
                "state": op.card.state,
                "attempts": op.card.attempts,
                "retry_at": op.card.retry_at,
                "last_error": op.card.last_error,
                "card_id": op.card.card_id,
                "last4": op.card.last4,
            }),
            polls: op.polls,
            next_poll_at: op.next_poll_at,
            escalate_at: op.escalate_at,
            escalated_at: op.escalated_at,
            last_error: op.last_error,
            created_at: op.created_at,
            updated_at: op.updated_at,
            finished_at: op.finished_at,
            history: op.history,
            version: op.version,
        }
    }
}

/// The 409 answer: the error and the opening it is about (the customer's opening in
/// progress, or the one the idempotency key was used for).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExistingOpening {
    /// `{code: "opening_in_progress", message}`.
    #[schema(value_type = Object)]
    pub error: serde_json::Value,
    /// The opening in progress.
    pub operation: OperationView,
}

/// Starts an account opening: writes the operation's anchor durably, then its actor
/// calls the bank (asynchronous or legacy path, per the market's flag). 202 with the
/// operation in `in_progress`.
#[utoipa::path(
    post,
    path = "/v1/operations/account-openings",
    tag = "operations",
    operation_id = "create_account_opening",
    params(NoQuery, CreateHeaders),
    request_body(content = CreateRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Created; the bank call runs in the operation's actor", body = OperationView),
        (status = 400, description = "A missing or invalid field, an unknown market or segment (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "The customer already has an opening in progress (send `force: true` to create another), or the Idempotency-Key was used for another opening", body = ExistingOpening),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Idempotency-Key: must be visible ASCII",
                    )
                })?
                .to_string(),
        ),
    };
    let segment = Segment::parse(&request.segment).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            format!(
                "segment: {:?} is unknown; segments: company, freelancer",
                request.segment
            ),
        )
    })?;
    let created = ops::create(
        &state.ctx,
        CreateOpening {
            customer_id: request.customer_id,
            market: request.market,
            segment,
            legal_name: request.legal_name,
            email: request.email,
            registration_number: request.registration_number,
            force: request.force,
            idempotency_key,
        },
    )
    .await?;
    Ok(match created {
        Created::New(op) => (StatusCode::ACCEPTED, Json(OperationView::from(op))).into_response(),
        Created::Replayed(op) => (
            StatusCode::ACCEPTED,
            [("idempotent-replayed", "true")],
            Json(OperationView::from(op)),
        )
            .into_response(),
        Created::KeyReused(op) => {
            let message = format!(
                "this Idempotency-Key was used for another opening ({}); use a new key for a new request",
                op.id
            );
            (
                StatusCode::CONFLICT,
                Json(ExistingOpening {
                    error: serde_json::json!({"code": "idempotency_key_reused", "message": message}),
                    operation: OperationView::from(op),
                }),
            )
                .into_response()
        }
        Created::Existing(op) => {
            let message = format!(
                "customer {} already has an opening in progress ({}); send force: true to create another",
                op.details.customer_id, op.id
            );
            (
                StatusCode::CONFLICT,
                Json(ExistingOpening {
                    error: serde_json::json!({"code": "opening_in_progress", "message": message}),
                    operation: OperationView::from(op),
                }),
            )
                .into_response()
        }
    })
}

/// `GET /v1/operations` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OperationsParams {
    /// Only this state.
    #[param(schema_with = state_schema)]
    pub state: Option<String>,
    /// Only this market.
    #[param(schema_with = market_schema)]
    pub market: Option<String>,
    /// Only this customer.
    #[param(schema_with = customer_schema)]
    pub customer_id: Option<String>,
    /// RFC 3339 time: only operations created at or before it (older than).
    #[param(schema_with = params::time_schema)]
    pub created_before: Option<String>,
    /// RFC 3339 time: only operations created at or after it.
    #[param(schema_with = params::time_schema)]
    pub created_after: Option<String>,
    /// Continue after this operation (the previous page's `next`).
    #[param(schema_with = paging::after_operation_schema)]
    pub after: Option<String>,
    /// Page size.
    #[param(schema_with = limit_schema)]
    pub limit: Option<String>,
}

/// A page of operations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OperationPage {
    /// Newest first.
    pub operations: Vec<OperationView>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// Operations, newest first, filtered by state, market, customer and age.
#[utoipa::path(
    get,
    path = "/v1/operations",
    tag = "operations",
    operation_id = "list_operations",
    params(OperationsParams),
    responses(
        (status = 200, description = "A page of operations", body = OperationPage),
        (status = 400, description = "An unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<OperationsParams>,
) -> Result<Json<OperationPage>, ApiError> {
    let names = state_names();
    let query = OperationQuery {
        state: params::one_of("state", params.state.as_deref(), &names)?
            .and_then(OperationState::parse),
        market: params.market.clone(),
        customer_id: params.customer_id.clone(),
        created_before: params::time("created_before", params.created_before.as_deref())?,
        created_after: params::time("created_after", params.created_after.as_deref())?,
        after: paging::read_after::<AfterOperation>(params.after.as_deref())?.map(|a| a.0),
        limit: params::limit(params.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?,
    };
    if let Some(customer) = &query.customer_id {
        if customer.trim().is_empty()
            || customer.chars().count() > MAX_TEXT
            || customer.chars().any(char::is_control)
        {
            return Err(params::invalid(
                "customer_id",
                format!("must be 1 to {MAX_TEXT} characters without control characters"),
            ));
        }
    }
    let limit = query.limit;
    let operations = ops::list(&state.ctx, query).await.map_err(|e| match e {
        crate::service::ServiceError::Invalid { message, .. } => {
            ApiError::bad_request("invalid_query", message)
        }
        other => other.into(),
    })?;
    let next = (operations.len() == limit)
        .then(|| {
            operations
                .last()
                .map(|op| AfterOperation(op.id.clone()).encode())
        })
        .flatten();
    Ok(Json(OperationPage {
        operations: operations.into_iter().map(OperationView::from).collect(),
        next,
    }))
}

/// The `{id}` of an operation route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OperationPath {
    /// Operation id, its request id or the bank's tracking id.
    #[param(schema_with = key_schema)]
    pub id: String,
}

fn key_schema() -> utoipa::openapi::Object {
    params::text_schema(
        "Operation id (op_…), its request id or the bank's tracking id",
        MAX_TEXT,
    )
}

/// One operation with its full transition history.
#[utoipa::path(
    get,
    path = "/v1/operations/{id}",
    tag = "operations",
    operation_id = "get_operation",
    params(OperationPath, NoQuery),
    responses(
        (status = 200, description = "The operation", body = OperationView),
        (status = 400, description = "An unknown query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such operation", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    ApiPath(OperationPath { id }): ApiPath<OperationPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<OperationView>, ApiError> {
    Ok(Json(ops::get(&state.ctx, &id).await?.into()))
}

/// `POST /v1/operations/{id}/cancel` and `/retry` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsRequest {
    /// Who asks (recorded in the history).
    #[schema(schema_with = by_schema)]
    pub by: String,
    /// Why (cancel only; recorded).
    #[schema(schema_with = reason_schema, nullable = false)]
    pub reason: Option<String>,
}

fn by_schema() -> utoipa::openapi::Object {
    params::text_schema("Who asks (recorded in the history)", MAX_TEXT)
}

fn reason_schema() -> utoipa::openapi::Object {
    params::text_schema("Why (recorded in the history)", MAX_TEXT)
}

impl FromJson for OpsRequest {
    const FIELDS: &'static [&'static str] = &["by", "reason"];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        let request = OpsRequest {
            by: fields.string("by")?,
            reason: fields.opt_string("reason")?,
        };
        for (name, value) in [
            ("by", Some(&request.by)),
            ("reason", request.reason.as_ref()),
        ] {
            if let Some(value) = value {
                if value.trim().is_empty()
                    || value.chars().count() > MAX_TEXT
                    || value.chars().any(char::is_control)
                {
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        format!(
                            "{name}: must be 1 to {MAX_TEXT} characters without control characters"
                        ),
                    ));
                }
            }
        }
        Ok(request)
    }
}

/// Cancels an operation that is not terminal: nothing reported later changes it.
#[utoipa::path(
    post,
    path = "/v1/operations/{id}/cancel",
    tag = "operations",
    operation_id = "cancel_operation",
    params(OperationPath, NoQuery),
    request_body(content = OpsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Cancelled", body = OperationView),
        (status = 400, description = "A missing or invalid field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such operation", body = ErrorBody),
        (status = 409, description = "Already terminal (completed, rejected or cancelled)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    ApiPath(OperationPath { id }): ApiPath<OperationPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    ApiJson(request): ApiJson<OpsRequest>,
) -> Result<Json<OperationView>, ApiError> {
    let command = OpsCommand::Cancel {
        by: request.by,
        reason: request.reason,
    };
    Ok(Json(ops::command(&state.ctx, &id, command).await?.into()))
}

/// Re-drives an operation: a `step_failed` one runs its step again from attempt one, a
/// `failed` one repeats its create call (same idempotency key), a waiting one polls now.
#[utoipa::path(
    post,
    path = "/v1/operations/{id}/retry",
    tag = "operations",
    operation_id = "retry_operation",
    params(OperationPath, NoQuery),
    request_body(content = OpsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Re-driven (the step runs in the operation's actor)", body = OperationView),
        (status = 400, description = "A missing or invalid field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such operation", body = ErrorBody),
        (status = 409, description = "Already terminal (completed, rejected or cancelled)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn retry(
    State(state): State<AppState>,
    ApiPath(OperationPath { id }): ApiPath<OperationPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    ApiJson(request): ApiJson<OpsRequest>,
) -> Result<Json<OperationView>, ApiError> {
    let command = OpsCommand::Retry { by: request.by };
    Ok(Json(ops::command(&state.ctx, &id, command).await?.into()))
}
