//! `POST /webhooks/{provider}`: the one path by which providers tell us data changed.
//!
//! Order matters and is the whole contract: size limit (413) → signature verification
//! (401) → parse (400) → back-pressure (429) → dedup + append to the inbox, resolving the
//! item to its account → nudge the account's actor → wait for group commit to make it
//! durable → 200. A 2xx is only ever sent for an event that is on disk; an event for an
//! item not linked yet is kept and adopted when the item is linked.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiError, ApiPath, AppState};
use crate::actors::SyncReason;
use crate::config::Settings;
use crate::domain::ProviderKind;
use crate::providers::WebhookError;
use crate::store::{IncomingWebhook, IngestOutcome};

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

/// Receives a provider webhook: verified by the provider's signature (not the admin
/// token), deduplicated, written durably, then acknowledged. Plaid gets exactly 200.
/// Every answer is counted in `acctor_webhooks_total`.
#[utoipa::path(
    post,
    path = "/webhooks/{provider}",
    tag = "webhooks",
    security(()),
    params(
        ("provider" = String, Path, description = "The provider: `plaid`"),
        ("Plaid-Verification" = Option<String>, Header, description = "Plaid's ES256 JWT over the body (required for `plaid`)"),
    ),
    request_body(content = Object, description = "The provider's webhook body, verbatim", content_type = "application/json"),
    responses(
        (status = 200, description = "On disk (accepted or duplicate)", body = WebhookAck),
        (status = 400, description = "Malformed webhook", body = ErrorBody),
        (status = 401, description = "Bad or missing provider signature", body = ErrorBody),
        (status = 404, description = "Unknown or unconfigured provider", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Inbox full; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Shutting down, verification key or store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn receive(
    State(state): State<AppState>,
    ApiPath(provider): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAck>), ApiError> {
    let metrics = state.registry.metrics().clone();
    let label = ProviderKind::parse(&provider).map_or("unknown", ProviderKind::as_str);
    let answer = receive_inner(state, provider.clone(), headers, body).await;
    match &answer {
        Ok((_, Json(ack))) => metrics.webhook(label, ack.status, ""),
        Err(error) => metrics.webhook(label, "rejected", rejection_reason(error)),
    }
    answer
}

/// The metrics label of a refused webhook, from the status it got.
fn rejection_reason(error: &ApiError) -> &'static str {
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
    let kind = ProviderKind::parse(&provider)
        .ok_or_else(|| ApiError::not_found(format!("unknown provider {provider:?}")))?;
    if state.is_shutting_down() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the server is shutting down; retry later",
            5,
        ));
    }
    let body = body?;
    let provider_client = state
        .providers
        .get(&kind)
        .ok_or_else(|| ApiError::not_found(format!("provider {kind} is not configured")))?;
    let verified = provider_client
        .verify_webhook(&headers, &body)
        .await
        .map_err(|error| {
            tracing::warn!(provider = %kind, error = %error, "webhook rejected");
            match error {
                WebhookError::Unauthorized(message) => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
                }
                WebhookError::Malformed(message) => {
                    ApiError::bad_request("malformed_webhook", message)
                }
                WebhookError::KeyUnavailable(message) => {
                    ApiError::unavailable("verification_key_unavailable", message, 5)
                }
            }
        })?;

    // Back-pressure once the caller is known to be the provider (a bad signature is
    // still a 401): it retries a 429 later, so nothing is lost, and a stalled sync path
    // cannot grow the inbox without bound.
    let depth = state.store.inbox_depth()?;
    if depth >= state.settings.server.max_inbox_depth {
        tracing::warn!(provider = %kind, depth, "inbox full, refusing webhook");
        return Err(ApiError {
            retry_after: Some(30),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "inbox_full",
                format!("{depth} events are waiting to be processed; retry later"),
            )
        });
    }

    let incoming = IncomingWebhook {
        provider: kind,
        item_id: verified.effect.external_id.clone(),
        kind: verified.kind.clone(),
        dedup_key: verified.effect.dedup_key,
        body: verified.body,
        received_at: Utc::now(),
    };
    // Off the async workers: sled calls can wait on sled's process-wide lock (held by
    // flush rounds and sync commits), and a blocked worker stalls every request on it.
    // The actor is nudged in the same step, before the durability wait, so a client that
    // disconnects while we wait cannot strand the event: it is in the inbox and its
    // actor knows. A duplicate nudges too: its original may be consumed by a sync that
    // started before the data it announces, and `again` then covers it.
    let store = state.store.clone();
    let registry = state.registry.clone();
    let ttl = state.settings.store.dedup_ttl;
    let item_id = verified.effect.external_id.clone();
    let event_kind = verified.kind.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let outcome = store.ingest(incoming, ttl)?;
        let account = match &outcome {
            IngestOutcome::Accepted { account_id, .. }
            | IngestOutcome::Duplicate { account_id } => account_id.clone(),
        };
        if let Some(id) = account {
            // The event is on its way to disk; a failed nudge only delays it until
            // the next activation or restart recovery.
            if let Err(error) = registry.request_sync(&id, SyncReason::Webhook) {
                tracing::warn!(account_id = %id, %error, "could not nudge account actor");
            }
        }
        Ok::<_, crate::store::StoreError>(outcome)
    })
    .await
    .map_err(ApiError::internal)??;
    // A duplicate's original may still be waiting for its flush: acknowledging the
    // duplicate before that would acknowledge an event that is not on disk yet.
    state.store.durable().await?;

    let ack = match outcome {
        IngestOutcome::Accepted { seq, account_id } => WebhookAck {
            status: "accepted",
            seq: Some(seq),
            routed: account_id.is_some(),
        },
        IngestOutcome::Duplicate { account_id } => WebhookAck {
            status: "duplicate",
            seq: None,
            routed: account_id.is_some(),
        },
    };
    tracing::debug!(provider = %kind, item_id = %item_id, kind = %event_kind, status = ack.status, "webhook acknowledged");
    // Plaid counts anything but exactly 200 as a failed delivery.
    let status = match kind {
        ProviderKind::Plaid => StatusCode::OK,
    };
    Ok((status, Json(ack)))
}
