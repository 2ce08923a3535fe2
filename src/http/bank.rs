//! The bank's routes: `POST /webhooks/bank`, its status webhooks, and, when
//! `sandbox.simulate_bank_webhooks` is on, `POST /v1/sandbox/account-openings/{id}/status`,
//! which publishes a simulated bank webhook through the same pipeline. The ingest rules
//! live in [`crate::service::ingest`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{FromJson, JsonFields};
use super::operations::OperationPath;
use super::params;
use super::webhooks::WebhookAck;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, NoQuery};
use crate::config::Settings;
use crate::domain::operations::BankStatus;
use crate::providers::WebhookError;
use crate::service::ingest::{IngestError, Outcome};
use crate::service::operations::{self as ops, SimulatedStatus};

/// Longest accepted text field.
const MAX_TEXT: usize = 200;

/// `POST /webhooks/bank`, with the webhook body limit.
pub fn webhook_router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(bank_webhook))
        .layer(DefaultBodyLimit::max(
            settings.server.webhook_body_limit_bytes,
        ))
}

/// The sandbox's simulated status route (served only when enabled).
pub fn simulation_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(simulate))
}

fn status_schema() -> utoipa::openapi::Object {
    params::enum_schema(
        &["INITIATED", "IN_PROGRESS", "COMPLETED", "REJECTED"],
        "The bank status to simulate",
    )
}

fn reason_schema() -> utoipa::openapi::Object {
    params::text_schema("Why (recorded in the history)", MAX_TEXT)
}

/// `POST /v1/sandbox/account-openings/{id}/status` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// The bank status.
    #[schema(schema_with = status_schema)]
    pub status: String,
    /// IBAN (required with `COMPLETED`).
    #[schema(schema_with = iban_schema, nullable = false)]
    pub iban: Option<String>,
    /// BIC (required with `COMPLETED`).
    #[schema(schema_with = bic_schema, nullable = false)]
    pub bic: Option<String>,
    /// Reason (with `REJECTED`).
    #[schema(schema_with = reason_schema, nullable = false)]
    pub reason: Option<String>,
}

fn iban_schema() -> utoipa::openapi::Object {
    params::text_schema("IBAN of the opened account", MAX_TEXT)
}

fn bic_schema() -> utoipa::openapi::Object {
    params::text_schema("BIC of the opened account", MAX_TEXT)
}

impl FromJson for SimulateRequest {
    const FIELDS: &'static [&'static str] = &["status", "iban", "bic", "reason"];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        Ok(SimulateRequest {
            status: fields.string("status")?,
            iban: fields.opt_string("iban")?,
            bic: fields.opt_string("bic")?,
            reason: fields.opt_string("reason")?,
        })
    }
}

/// What a simulated webhook did.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimulateAck {
    /// The operation (as it was before the status is applied by its actor).
    pub operation_id: String,
    /// `accepted` or `duplicate` (the same status within the dedup window).
    #[schema(example = "accepted")]
    pub status: &'static str,
}

/// Sandbox only (`sandbox.simulate_bank_webhooks`): publishes a simulated bank status
/// webhook for the operation, signed with the bank's secret, through the same
/// verification, dedup, state machine and next steps as a real one.
#[utoipa::path(
    post,
    path = "/v1/sandbox/account-openings/{id}/status",
    tag = "sandbox",
    operation_id = "simulate_bank_status",
    params(OperationPath, NoQuery),
    request_body(content = SimulateRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Published and acknowledged by the webhook pipeline", body = SimulateAck),
        (status = 400, description = "An unknown status, COMPLETED without iban and bic, or an invalid field", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such operation", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn simulate(
    State(state): State<AppState>,
    ApiPath(OperationPath { id }): ApiPath<OperationPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    ApiJson(request): ApiJson<SimulateRequest>,
) -> Result<(StatusCode, Json<SimulateAck>), ApiError> {
    let status = BankStatus::parse(&request.status).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_body",
            format!(
                "status: {:?} is not a bank status; statuses: INITIATED, IN_PROGRESS, COMPLETED, REJECTED",
                request.status
            ),
        )
    })?;
    let ingest = state.ingest();
    let (operation, outcome) = ops::simulate_status(
        &state.ctx,
        &ingest,
        &id,
        SimulatedStatus {
            status,
            iban: request.iban,
            bic: request.bic,
            reason: request.reason,
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SimulateAck {
            operation_id: operation.id.to_string(),
            status: outcome.name(),
        }),
    ))
}

/// Receives a bank status webhook (`bank-signature: t=<unix>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>">`, one `v1` per secret while the bank rotates): verified against
/// `bank.webhook_secrets` within `bank.webhook_tolerance`, deduplicated by (request id,
/// status), written durably to the operation's inbox (or kept for a tracking id not
/// known yet), then acknowledged. Counted in `acctor_webhooks_total{provider="bank"}`.
#[utoipa::path(
    post,
    path = "/webhooks/bank",
    tag = "webhooks",
    operation_id = "receive_bank_webhook",
    security(()),
    params(
        NoQuery,
        ("bank-signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">[,v1=…]"),
    ),
    request_body(content = Object, description = "The bank's status event: {event_id, tracking_id, request_id, status, iban?, bic?, reason?, occurred_at}", content_type = "application/json"),
    responses(
        (status = 200, description = "On disk (accepted or duplicate)", body = WebhookAck),
        (status = 400, description = "Signed, but not a status event acctor understands (an unknown status, COMPLETED without IBAN)", body = ErrorBody),
        (status = 401, description = "Missing or bad signature, or a timestamp outside the tolerance", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Shutting down or store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn bank_webhook(
    State(state): State<AppState>,
    query: Result<ApiQuery<NoQuery>, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAck>), ApiError> {
    let metrics = state.ctx.metrics.clone();
    let answer = async {
        query?;
        let body = body?;
        let outcome = state
            .ingest()
            .receive_bank(&headers, &body)
            .await
            .map_err(bank_error)?;
        let (seq, routed) = match outcome {
            Outcome::Accepted { seq, routed } => (Some(seq), routed),
            Outcome::Duplicate { routed } => (None, routed),
        };
        Ok::<_, ApiError>((
            StatusCode::OK,
            Json(WebhookAck {
                status: outcome.name(),
                seq,
                routed,
            }),
        ))
    }
    .await;
    match &answer {
        Ok((_, Json(ack))) => metrics.webhook("bank", ack.status, ""),
        Err(error) => metrics.webhook("bank", "rejected", super::webhooks::rejection_reason(error)),
    }
    answer
}

fn bank_error(error: IngestError) -> ApiError {
    match error {
        IngestError::Rejected(WebhookError::Unauthorized(message)) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
        }
        IngestError::Rejected(WebhookError::Malformed(message)) => {
            ApiError::bad_request("malformed_webhook", message)
        }
        other => super::webhooks::api_error(other),
    }
}
