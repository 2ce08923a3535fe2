//! Webhook ingest: the one path by which providers tell us data changed.
//!
//! Order matters and is the whole contract: the provider plugin named by the route
//! ([`Ingest::admit`]), then (the HTTP layer enforcing the size limit in between)
//! [`Ingest::receive`]: signature verification → parse into a
//! [`WebhookEffect`](crate::providers::WebhookEffect) → back-pressure → dedup + append
//! to the inbox, resolving the external id to its account → nudge the account's actor
//! → wait for group commit to make it durable → acknowledge with the status the plugin
//! chose. An acknowledgement is only ever given for an event that is on disk; an event
//! for an item not linked yet is kept and adopted when the item is linked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use super::Context;
use crate::actors::SyncReason;
use crate::domain::ProviderKind;
use crate::providers::WebhookError;
use crate::store::{IncomingWebhook, IngestOutcome, StoreError};

#[path = "ingest_bank.rs"]
mod bank;
#[path = "ingest_stripe.rs"]
mod stripe;

pub use bank::status_dedup_key;

/// Why a webhook was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The route names no provider acctor knows.
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    /// Shutdown has begun: nothing new is accepted (the provider retries later).
    #[error("the server is shutting down; retry later")]
    ShuttingDown,
    /// A provider acctor knows, but not configured in this process.
    #[error("provider {0} is not configured")]
    NotConfigured(ProviderKind),
    /// The plugin refused the webhook (signature, body, verification key).
    #[error(transparent)]
    Rejected(#[from] WebhookError),
    /// Too many events wait to be processed (the provider retries later).
    #[error("{depth} events are waiting to be processed; retry later")]
    InboxFull {
        /// Events waiting in the inbox.
        depth: u64,
    },
    /// A Stripe event for an account that is not linked (it cannot be verified either:
    /// the secrets come with the link). Stripe retries it; once the account is linked,
    /// its backfill covers what the event said.
    #[error("no linked Stripe account {0}")]
    UnknownAccount(String),
    /// The store could not take or persist the event.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What happened to an acknowledged event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Appended to the inbox.
    Accepted {
        /// Its inbox sequence number.
        seq: u64,
        /// Whether it was routed to a linked account (false: kept until linking).
        routed: bool,
    },
    /// Seen within the dedup TTL: already on disk.
    Duplicate {
        /// Whether the original was routed to a linked account.
        routed: bool,
    },
}

impl Outcome {
    /// `accepted` or `duplicate`, as logs and metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Duplicate { .. } => "duplicate",
        }
    }
}

/// An acknowledged webhook: on disk, its account nudged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The status the provider's plugin acknowledges with.
    pub status: StatusCode,
    /// What happened to the event.
    pub outcome: Outcome,
}

/// The ingest use-case over the store, the actors and the provider plugins.
#[derive(Clone)]
pub struct Ingest {
    ctx: Context,
    shutting_down: Arc<AtomicBool>,
}

impl Ingest {
    /// Ingest into the context's store, nudging its actors, with its provider plugins;
    /// refuses everything once `shutting_down` is set, and new events while
    /// `server.max_inbox_depth` events wait; a repeat within `store.dedup_ttl` is a
    /// duplicate.
    pub fn new(ctx: Context, shutting_down: Arc<AtomicBool>) -> Ingest {
        Ingest { ctx, shutting_down }
    }

    /// The provider a webhook route names, if acctor knows it and still accepts
    /// webhooks. Checked before the body is read.
    pub fn admit(&self, provider: &str) -> Result<ProviderKind, IngestError> {
        let kind = ProviderKind::parse(provider)
            .ok_or_else(|| IngestError::UnknownProvider(provider.to_owned()))?;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(IngestError::ShuttingDown);
        }
        Ok(kind)
    }

    /// Verifies, parses, deduplicates and persists one webhook of `kind`, then
    /// acknowledges it with its plugin's status.
    pub async fn receive(
        &self,
        kind: ProviderKind,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Ack, IngestError> {
        let plugin = self
            .ctx
            .providers
            .get(&kind)
            .ok_or(IngestError::NotConfigured(kind))?;
        let verified = plugin
            .verify_webhook(headers, body)
            .await
            .inspect_err(|error| {
                tracing::warn!(provider = %kind, error = %error, "webhook rejected");
            })?;

        let effect = verified.effect;
        let incoming = IncomingWebhook {
            provider: kind,
            item_id: effect.external_id,
            kind: verified.kind,
            dedup_key: effect.dedup_key,
            body: verified.body,
            received_at: self.ctx.clock.now(),
        };
        let outcome = self.persist(incoming).await?;
        Ok(Ack {
            status: plugin.ack_status(),
            outcome,
        })
    }

    /// Appends a verified event to its account's inbox (or keeps it for an item not
    /// linked yet), nudges the account's actor and waits until the event is on disk.
    async fn persist(&self, incoming: IncomingWebhook) -> Result<Outcome, IngestError> {
        let kind = incoming.provider;
        let item_id = incoming.item_id.clone();
        let event_kind = incoming.kind.clone();
        // Off the async workers: sled calls can wait on sled's process-wide lock (held by
        // flush rounds and sync commits), and a blocked worker stalls every request on it.
        // The actor is nudged in the same step, before the durability wait, so a client
        // that disconnects while we wait cannot strand the event: it is in the inbox and
        // its actor knows. A duplicate nudges too: its original may be consumed by a sync
        // that started before the data it announces, and `again` then covers it. Every
        // event nudges, whatever its action: the account's sync reads them all (the
        // needs-reauth check among them).
        //
        // Back-pressure first, in the same step, once the caller is known to be the
        // provider (a bad signature is still refused as such): it retries later, so
        // nothing is lost, and a stalled sync path cannot grow the inbox without bound.
        let registry = self.ctx.registry.clone();
        let ttl = self.ctx.settings.store.dedup_ttl;
        let max_depth = self.ctx.settings.server.max_inbox_depth;
        let admitted = self
            .ctx
            .store
            .run(move |store| {
                let depth = store.inbox_depth()?;
                if depth >= max_depth {
                    return Ok(Err(depth));
                }
                let outcome = store.ingest(incoming, ttl)?;
                let account = match &outcome {
                    IngestOutcome::Accepted { account_id, .. }
                    | IngestOutcome::Duplicate { account_id } => account_id.clone(),
                };
                if let Some(id) = account {
                    // The event is on its way to disk; a failed nudge only delays it
                    // until the next activation or restart recovery.
                    if let Err(error) = registry.request_sync(&id, SyncReason::Webhook) {
                        tracing::warn!(account_id = %id, %error, "could not nudge account actor");
                    }
                }
                Ok(Ok(outcome))
            })
            .await?;
        let outcome = admitted.map_err(|depth| {
            tracing::warn!(provider = %kind, depth, "inbox full, refusing webhook");
            IngestError::InboxFull { depth }
        })?;
        // A duplicate's original may still be waiting for its flush: acknowledging the
        // duplicate before that would acknowledge an event that is not on disk yet.
        self.ctx.store.durable().await?;

        let outcome = match outcome {
            IngestOutcome::Accepted { seq, account_id } => Outcome::Accepted {
                seq,
                routed: account_id.is_some(),
            },
            IngestOutcome::Duplicate { account_id } => Outcome::Duplicate {
                routed: account_id.is_some(),
            },
        };
        tracing::debug!(provider = %kind, item_id = %item_id, kind = %event_kind, status = outcome.name(), "webhook acknowledged");
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::actors::{ActorContext, Registry};
    use crate::config::Settings;
    use crate::providers::test_support::{hooks, test_action, EmptyProvider};
    use crate::providers::{
        body_dedup_key, DynCursorSource, DynProvider, Provider, VerifiedWebhook, WebhookAction,
        WebhookEffect,
    };
    use crate::store::{SledStore, SledStoreConfig, Store};
    use crate::sync::plaid::SyncParams;

    /// A plugin that trusts a `x-test-signature: ok` header, reads the body's
    /// `object` as the routing key and acknowledges with 202.
    struct TestPlugin;

    #[async_trait::async_trait]
    impl Provider for TestPlugin {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Plaid
        }

        async fn verify_webhook(
            &self,
            headers: &HeaderMap,
            body: &[u8],
        ) -> Result<VerifiedWebhook, WebhookError> {
            if headers.get("x-test-signature").is_none_or(|v| v != "ok") {
                return Err(WebhookError::Unauthorized("unsigned".into()));
            }
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
            let object = value["object"].as_str().unwrap_or_default().to_owned();
            Ok(VerifiedWebhook {
                effect: WebhookEffect {
                    dedup_key: body_dedup_key(ProviderKind::Plaid, &object, body),
                    external_id: object,
                    action: WebhookAction::Sync,
                },
                kind: hooks::SYNC.to_owned(),
                body: value,
            })
        }

        fn action_of(&self, kind: &str, body: &serde_json::Value) -> WebhookAction {
            test_action(kind, body)
        }

        fn ack_status(&self) -> StatusCode {
            StatusCode::ACCEPTED
        }
    }

    fn ingest(max_inbox_depth: u64) -> (tempfile::TempDir, Ingest) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = SledStore::open(SledStoreConfig {
            data_dir: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
        .expect("store opens");
        let sources: HashMap<ProviderKind, DynCursorSource> =
            HashMap::from([(ProviderKind::Plaid, Arc::new(EmptyProvider::default()) as _)]);
        let actors = ActorContext::new(
            store.clone(),
            sources,
            Settings::defaults().actors,
            SyncParams::default(),
            crate::clock::system(),
        );
        let registry = Registry::new(actors.clone());
        let plugins: HashMap<ProviderKind, DynProvider> =
            HashMap::from([(ProviderKind::Plaid, Arc::new(TestPlugin) as _)]);
        let mut settings = Settings::defaults();
        settings.server.max_inbox_depth = max_inbox_depth;
        settings.store.dedup_ttl = Duration::from_secs(60);
        let operations = crate::actors::operation::OperationRegistry::new(Arc::new(
            crate::actors::operation::OperationDeps {
                store: crate::store::AsyncStore::new(store.clone()),
                // Never called: these tests ingest no bank status.
                bank: Arc::new(
                    crate::providers::bank::BankClient::new(
                        crate::providers::bank::BankClientConfig {
                            base_url: "http://127.0.0.1:9".to_string(),
                            api_key: "unused".to_string(),
                            timeout: Duration::from_secs(1),
                            legacy_timeout: Duration::from_secs(1),
                        },
                    )
                    .expect("client"),
                ),
                params: crate::sync::bank::OpeningParams {
                    poll_interval: Duration::from_secs(1800),
                    slow_poll_interval: Duration::from_secs(7200),
                    max_step_attempts: 3,
                    retry_initial: Duration::from_secs(1),
                    retry_max: Duration::from_secs(10),
                    public_url: "http://acctor.test".to_string(),
                    alerts_on: false,
                },
                clock: crate::clock::system(),
                metrics: actors.metrics.clone(),
                passivate_after: Duration::from_secs(1),
                call_timeout: Duration::from_secs(1),
                alerts: None,
            },
        ));
        let ctx = Context {
            clock: crate::clock::system(),
            store: crate::store::AsyncStore::new(store),
            metrics: actors.metrics.clone(),
            registry,
            actors,
            providers: Arc::new(plugins),
            settings: Arc::new(settings),
            operations,
            bank_verifier: Arc::new(crate::providers::bank::BankWebhookVerifier::new(
                vec!["test-secret-0123456789".to_string()],
                Duration::from_secs(300),
            )),
        };
        let ingest = Ingest::new(ctx, Arc::new(AtomicBool::new(false)));
        (dir, ingest)
    }

    fn signed() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-test-signature", http::HeaderValue::from_static("ok"));
        headers
    }

    #[tokio::test]
    async fn an_event_is_acknowledged_with_the_plugins_status_once_then_as_a_duplicate() {
        let (_dir, ingest) = ingest(10);
        let kind = ingest.admit("plaid").expect("known");
        let body = br#"{"object":"item-unlinked"}"#;
        let ack = ingest.receive(kind, &signed(), body).await.expect("acked");
        assert_eq!(ack.status, StatusCode::ACCEPTED);
        assert!(matches!(
            ack.outcome,
            Outcome::Accepted { routed: false, .. }
        ));
        let again = ingest.receive(kind, &signed(), body).await.expect("acked");
        assert_eq!(again.outcome, Outcome::Duplicate { routed: false });
        assert_eq!(again.outcome.name(), "duplicate");
    }

    #[tokio::test]
    async fn refusals_come_in_order_and_keep_nothing() {
        let (_dir, ingest) = ingest(1);
        assert!(matches!(
            ingest.admit("acme"),
            Err(IngestError::UnknownProvider(name)) if name == "acme"
        ));
        // Known, but its webhooks do not come through this route (yet).
        let stripe = ingest.admit("stripe").expect("known");
        assert!(matches!(
            ingest.receive(stripe, &HeaderMap::new(), b"{}").await,
            Err(IngestError::NotConfigured(ProviderKind::Stripe))
        ));
        let kind = ingest.admit("plaid").expect("known");
        // Not verified: refused before anything else, nothing appended.
        let unsigned = ingest
            .receive(kind, &HeaderMap::new(), br#"{"object":"a"}"#)
            .await;
        assert!(matches!(
            unsigned,
            Err(IngestError::Rejected(WebhookError::Unauthorized(_)))
        ));
        assert_eq!(ingest.ctx.store.blocking().inbox_depth().expect("depth"), 0);
        let malformed = ingest.receive(kind, &signed(), b"not json").await;
        assert!(matches!(
            malformed,
            Err(IngestError::Rejected(WebhookError::Malformed(_)))
        ));
        // One event fills an inbox of one: the next is refused.
        ingest
            .receive(kind, &signed(), br#"{"object":"a"}"#)
            .await
            .expect("acked");
        assert!(matches!(
            ingest.receive(kind, &signed(), br#"{"object":"b"}"#).await,
            Err(IngestError::InboxFull { depth: 1 })
        ));
        ingest.shutting_down.store(true, Ordering::SeqCst);
        assert!(matches!(
            ingest.admit("plaid"),
            Err(IngestError::ShuttingDown)
        ));
    }
}
