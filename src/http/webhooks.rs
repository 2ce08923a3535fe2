//! `POST /webhooks/{provider}`: HTTP in front of the ingest use-case
//! ([`crate::service::ingest`]), which holds every rule. This module only translates:
//! the route names the provider (404 unknown, 503 shutting down), the body limit is
//! HTTP's (413), then the use-case's refusals become statuses (401 signature, 400
//! malformed, 503 verification key or store, 429 inbox full, with `Retry-After`) and
//! its acknowledgement the plugin's status with a [`WebhookAck`] body. Every answer is
//! counted in `acctor_webhooks_total`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiError, ApiPath, ApiQuery, AppState, NoQuery};
use crate::config::Settings;
use crate::domain::ProviderKind;
use crate::providers::WebhookError;
use crate::service::ingest::{IngestError, Outcome};

/// The webhook routes, with their own body limit.
pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive))
        .layer(DefaultBodyLimit::max(
            settings.server.webhook_body_limit_bytes,
        ))
}

/// The acknowledgement body.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    /// `accepted` or `duplicate`.
    #[schema(value_type = String, example = "accepted")]
    pub status: &'static str,
    /// Inbox sequence number of an accepted event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Whether the event was routed to a linked account (false: kept until linking).
    pub routed: bool,
}

/// The `{provider}` of the webhook route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProviderPath {
    /// The provider (an unknown or unconfigured one is 404). Stripe's events and the
    /// bank's have routes of their own.
    #[param(schema_with = plaid_only)]
    pub provider: String,
}

fn plaid_only() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["plaid"]))
        .description(Some("A provider whose webhooks come through this route"))
        .build()
}

/// Receives a provider webhook: verified by the provider's signature (not the admin
/// token), deduplicated, written durably, then acknowledged. Plaid gets exactly 200.
/// Every answer is counted in `acctor_webhooks_total`.
#[utoipa::path(
    post,
    path = "/webhooks/{provider}",
    tag = "webhooks",
    operation_id = "receive_webhook",
    security(()),
    params(
        ProviderPath,
        NoQuery,
        ("Plaid-Verification" = Option<String>, Header, description = "Plaid's ES256 JWT over the body (required for `plaid`)"),
    ),
    request_body(content = Object, description = "The provider's webhook body, verbatim", content_type = "application/json"),
    responses(
        (status = 200, description = "On disk (accepted or duplicate)", body = WebhookAck),
        (status = 400, description = "Malformed webhook, or an unknown query parameter (this endpoint takes none)", body = ErrorBody),
        (status = 401, description = "Bad or missing provider signature", body = ErrorBody),
        (status = 404, description = "Unknown or unconfigured provider", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Inbox full; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Shutting down, verification key or store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn receive(
    State(state): State<AppState>,
    ApiPath(ProviderPath { provider }): ApiPath<ProviderPath>,
    query: Result<ApiQuery<NoQuery>, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAck>), ApiError> {
    let metrics = state.ctx.metrics.clone();
    let label = ProviderKind::parse(&provider).map_or("unknown", ProviderKind::as_str);
    // Refusals are counted like every other answer, so the query is checked in here.
    let answer = match query {
        Ok(_) => receive_inner(state, provider.clone(), headers, body).await,
        Err(error) => Err(error),
    };
    match &answer {
        Ok((_, Json(ack))) => metrics.webhook(label, ack.status, ""),
        Err(error) => metrics.webhook(label, "rejected", rejection_reason(error)),
    }
    answer
}

/// The metrics label of a refused webhook, from the status it got.
pub(super) fn rejection_reason(error: &ApiError) -> &'static str {
    match error.status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::BAD_REQUEST => "malformed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::TOO_MANY_REQUESTS => "backpressure",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::NOT_FOUND => "unknown_provider",
        _ => "error",
    }
}

async fn receive_inner(
    state: AppState,
    provider: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAck>), ApiError> {
    let ingest = state.ingest();
    let kind = ingest.admit(&provider).map_err(api_error)?;
    let body = body?;
    let ack = ingest
        .receive(kind, &headers, &body)
        .await
        .map_err(api_error)?;
    let body = match ack.outcome {
        Outcome::Accepted { seq, routed } => WebhookAck {
            status: ack.outcome.name(),
            seq: Some(seq),
            routed,
        },
        Outcome::Duplicate { routed } => WebhookAck {
            status: ack.outcome.name(),
            seq: None,
            routed,
        },
    };
    Ok((ack.status, Json(body)))
}

/// The answer to a webhook the use-case refused.
pub(super) fn api_error(error: IngestError) -> ApiError {
    match error {
        IngestError::UnknownProvider(_) | IngestError::NotConfigured(_) => {
            ApiError::not_found(error.to_string())
        }
        IngestError::UnknownAccount(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_account", error.to_string())
        }
        IngestError::ShuttingDown => ApiError::unavailable("shutting_down", error.to_string(), 5),
        IngestError::Rejected(WebhookError::Unauthorized(message)) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
        }
        IngestError::Rejected(WebhookError::Malformed(message)) => {
            ApiError::bad_request("malformed_webhook", message)
        }
        IngestError::Rejected(WebhookError::KeyUnavailable(message)) => {
            ApiError::unavailable("verification_key_unavailable", message, 5)
        }
        IngestError::InboxFull { .. } => ApiError {
            retry_after: Some(30),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "inbox_full",
                error.to_string(),
            )
        },
        IngestError::Store(error) => error.into(),
    }
}
