//! Stripe's events, through the same contract as every other webhook. What differs is
//! where the secret comes from: each linked Stripe account brings its own endpoint
//! secrets, so the event is first routed (its `account` for a Connect account's event,
//! else the account the endpoint URL names), then verified with that account's secrets,
//! deduplicated by event id, written to the account's inbox, the actor nudged, made
//! durable, and acknowledged. An event for an account that is not linked is refused
//! (404): nothing could verify it, Stripe retries it, and a later link's backfill covers
//! what it said.

use std::sync::atomic::Ordering;

use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::{Ack, Ingest, IngestError};
use crate::domain::stripe::StripeCredentials;
use crate::domain::{Account, LinkStatus, ProviderKind};
use crate::providers::stripe::verify::{routing, verify_event};
use crate::providers::WebhookError;
use crate::store::{IncomingWebhook, Resolved, StoreError};

/// The dedup key of a Stripe event: Stripe redelivers an event with the same id.
pub fn event_dedup_key(account: &str, event_id: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"stripe\0");
    hasher.update(account.as_bytes());
    hasher.update([0u8]);
    hasher.update(event_id.as_bytes());
    hasher.finalize().into()
}

impl Ingest {
    /// Routes, verifies, deduplicates and persists one Stripe event posted to the
    /// endpoint of `endpoint_account` (`None`: the shared endpoint, for Connect events).
    pub async fn receive_stripe(
        &self,
        endpoint_account: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Ack, IngestError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(IngestError::ShuttingDown);
        }
        if self.ctx.actors.stripe().is_none() {
            return Err(IngestError::NotConfigured(ProviderKind::Stripe));
        }
        let routed = routing(body)?;
        // Without an account there is no secret to check the signature with: as
        // unverifiable as a wrong signature.
        let Some(key) = routed.account.or(endpoint_account.map(str::to_owned)) else {
            return Err(IngestError::Rejected(WebhookError::Unauthorized(
                "the event names no Connect account, so no secret can verify it: post an \
                 account's own events to /webhooks/stripe/{account id}"
                    .into(),
            )));
        };
        let account = self
            .linked_stripe_account(&key)
            .await?
            .ok_or_else(|| IngestError::UnknownAccount(key.clone()))?;
        let credentials =
            StripeCredentials::from_token(&account.access_token).ok_or_else(|| {
                IngestError::Store(StoreError::Corrupt {
                    tree: "accounts",
                    detail: format!("account {} has unreadable Stripe credentials", account.id),
                })
            })?;
        let now = self.ctx.clock.now();
        let event = verify_event(
            headers,
            body,
            &credentials.webhook_secrets,
            self.ctx.settings.stripe.webhook_tolerance,
            now,
        )
        .inspect_err(|error| {
            tracing::warn!(provider = "stripe", account = %key, %error, "webhook rejected");
        })?;
        let body = serde_json::to_value(&event).map_err(|e| {
            IngestError::Rejected(WebhookError::Malformed(format!("not a Stripe event: {e}")))
        })?;
        let incoming = IncomingWebhook {
            provider: ProviderKind::Stripe,
            dedup_key: event_dedup_key(&account.item_id, &event.id),
            item_id: account.item_id,
            kind: event.kind,
            body,
            received_at: now,
        };
        let outcome = self.persist(incoming).await?;
        Ok(Ack {
            status: StatusCode::OK,
            outcome,
        })
    }

    /// The linked Stripe account with id `key`, if any.
    async fn linked_stripe_account(&self, key: &str) -> Result<Option<Account>, IngestError> {
        let lookup = key.to_owned();
        let found = self
            .ctx
            .store
            .run(move |store| match store.resolve(&lookup)? {
                Resolved::Found(id) => store.get_account(&id),
                _ => Ok(None),
            })
            .await?;
        Ok(found.filter(|account| {
            account.provider == ProviderKind::Stripe
                && account.status == LinkStatus::Linked
                && account.item_id == key
        }))
    }
}
