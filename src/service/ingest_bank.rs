//! The bank's status webhooks, through the same contract as every other webhook:
//! verified (HMAC-SHA256 over timestamp and body, against the current and the previous
//! secret, within a timestamp tolerance), deduplicated by (request id, status) for
//! `operations.dedup_ttl`, written to the operation's inbox (or kept for a tracking id
//! no operation has yet), the operation's actor nudged, made durable, then
//! acknowledged. A simulated webhook (`simulated: true` inside the signed body, from
//! `POST /v1/sandbox/account-openings/{id}/status`) takes this same path and is only
//! recorded with another source.

use std::sync::atomic::Ordering;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::{Ingest, IngestError, Outcome};
use crate::domain::operations::{ReportedStatus, StatusSource};
use crate::store::{IncomingOperationEvent, OperationIngest};

impl Ingest {
    /// Verifies, deduplicates and persists one bank status webhook, nudges its
    /// operation, and returns what happened once it is on disk.
    pub async fn receive_bank(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Outcome, IngestError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(IngestError::ShuttingDown);
        }
        let now = self.ctx.clock.now();
        let webhook = self
            .ctx
            .bank_verifier
            .verify(headers, body, now)
            .inspect_err(|error| {
                tracing::warn!(provider = "bank", %error, "webhook rejected");
            })?;
        let event = IncomingOperationEvent {
            dedup_key: status_dedup_key(&webhook.request_id, webhook.status.as_str()),
            event_id: webhook.event_id,
            tracking_id: webhook.tracking_id,
            request_id: webhook.request_id,
            report: ReportedStatus {
                status: webhook.status,
                iban: webhook.iban,
                bic: webhook.bic,
                reason: webhook.reason,
            },
            source: if webhook.simulated {
                StatusSource::Sandbox
            } else {
                StatusSource::Webhook
            },
            received_at: now,
        };
        let ttl = self.ctx.settings.operations.dedup_ttl;
        let outcome = self
            .ctx
            .store
            .run(move |store| store.ingest_operation_event(&event, ttl))
            .await?;
        let operation = match &outcome {
            OperationIngest::Accepted { operation_id, .. }
            | OperationIngest::Duplicate { operation_id } => operation_id.clone(),
        };
        // Nudged before the durability wait, as for every webhook: a caller that hangs
        // up meanwhile cannot strand the event (it is in the inbox and the actor knows).
        if let Some(id) = &operation {
            if let Err(error) = self.ctx.operations.drive(id) {
                tracing::warn!(operation_id = %id, %error, "could not nudge operation actor");
            }
        }
        self.ctx.store.durable().await?;
        Ok(match outcome {
            OperationIngest::Accepted { seq, operation_id } => Outcome::Accepted {
                seq,
                routed: operation_id.is_some(),
            },
            OperationIngest::Duplicate { operation_id } => Outcome::Duplicate {
                routed: operation_id.is_some(),
            },
        })
    }
}

/// The dedup key of a bank status: (request id, status), so a burst of one delivery is
/// absorbed while the next status of the same request is a new event.
pub fn status_dedup_key(request_id: &str, status: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"bank-status\0");
    hasher.update(request_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(status.as_bytes());
    hasher.finalize().into()
}
