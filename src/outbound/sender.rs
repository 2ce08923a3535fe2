//! The outbound sender. Today it delivers alerts: every incident opened or resolved is
//! POSTed to `alerts.url`, signed with the Standard Webhooks scheme
//! ([`super::signing`]), so an on-call tool hears about accounts that stopped syncing
//! without polling `GET /v1/incidents`.
//!
//! Alerts are written to the store's outbox in the same transaction as the incident
//! change (see `Store::open_incident`), so an alert exists exactly when its change
//! does, and survives restarts. One sender task delivers them: it makes the outbox
//! durable first (never announce a change a crash could still undo), then POSTs the
//! due alerts, earliest due first, read through the outbox's due-time index (so alerts
//! waiting out a backoff never crowd out due ones); a 2xx removes it, anything else
//! reschedules it with exponential backoff and full jitter, until `alerts.max_age` (then it is dropped and logged). The sender
//! never runs on a sync's path: the actors only write the outbox and wake it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng as _};
use secrecy::{ExposeSecret, SecretBox};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::alerts::message_id;
use super::signing::{decode_secret, origin_of, sign};
use crate::backoff::backoff_delay;
use crate::clock::SharedClock;
use crate::config::AlertSettings;
use crate::store::OutboxMessage;
use crate::store::{Store, StoreError};

/// Most alerts read from the outbox per pass.
const BATCH: usize = 100;
/// Longest the sender sleeps when nothing is scheduled (a wake-up comes sooner).
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The secret is not `whsec_` + base64.
    #[error("alerts.secret must be whsec_ followed by a base64 key")]
    BadSecret,
    /// The HTTP client could not be built.
    #[error("alert client: {0}")]
    Client(String),
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlertPass {
    /// Alerts delivered (2xx).
    pub delivered: u64,
    /// Attempts that failed and were rescheduled.
    pub failed: u64,
    /// Alerts dropped past `alerts.max_age`.
    pub dropped: u64,
    /// When the earliest remaining alert is due (at or before the pass's `now` when
    /// more were due than one pass takes).
    pub next_due: Option<DateTime<Utc>>,
}

/// Counters of the sender (for metrics).
#[derive(Debug, Default)]
pub struct AlertCounters {
    /// Alerts delivered since start.
    pub delivered: AtomicU64,
    /// Failed attempts since start.
    pub failed_attempts: AtomicU64,
    /// Alerts dropped past their max age since start.
    pub dropped: AtomicU64,
}

/// Delivers the outbox. Build with [`AlertSender::new`], run with [`AlertSender::spawn`]
/// (or drive [`AlertSender::pass`] with an injected clock in tests).
pub struct AlertSender {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    url: String,
    key: SecretBox<Vec<u8>>,
    settings: AlertSettings,
    counters: AlertCounters,
}

impl std::fmt::Debug for AlertSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSender")
            .field("url", &origin_of(&self.url))
            .finish_non_exhaustive()
    }
}

impl AlertSender {
    /// A sender for `settings`, `None` when alerts are off (no URL).
    pub fn new(
        store: Arc<dyn Store>,
        settings: &AlertSettings,
    ) -> Result<Option<AlertSender>, AlertError> {
        if settings.url.is_empty() {
            return Ok(None);
        }
        let key = decode_secret(&settings.secret).ok_or(AlertError::BadSecret)?;
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .user_agent(concat!("acctor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AlertError::Client(e.to_string()))?;
        Ok(Some(AlertSender {
            store,
            client,
            url: settings.url.clone(),
            key,
            settings: settings.clone(),
            counters: AlertCounters::default(),
        }))
    }

    /// The sender's counters.
    pub fn counters(&self) -> &AlertCounters {
        &self.counters
    }

    /// Delivers up to one batch of the alerts due at `now`, earliest due first (one
    /// attempt each), and reschedules failures.
    pub async fn pass(
        &self,
        now: DateTime<Utc>,
        rng: &mut (impl Rng + Send),
    ) -> Result<AlertPass, StoreError> {
        // Only due alerts, earliest due first: during a receiver outage the oldest
        // alerts wait out their backoff, and must not use up the batch of those behind.
        let store = self.store.clone();
        let due = tokio::task::spawn_blocking(move || store.due_outbox(now, BATCH))
            .await
            .map_err(|e| StoreError::Io(format!("outbox read failed: {e}")))??;
        // Read first, then made durable: everything announced below is on disk (an
        // incident written just before the read is covered by this flush too).
        self.store.durable().await?;
        let started = std::time::Instant::now();
        let max_age =
            chrono::Duration::from_std(self.settings.max_age).unwrap_or(chrono::Duration::MAX);
        let mut pass = AlertPass::default();
        for mut record in due {
            if now - record.created_at > max_age {
                tracing::error!(
                    alert_id = record.id,
                    attempts = record.attempts,
                    "alert dropped undelivered past its max age"
                );
                self.store.remove_outbox(record.id)?;
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                pass.dropped += 1;
                continue;
            }
            // Each attempt is stamped with its own time: a slow receiver ahead in the
            // batch must not make later alerts look stale to the receiver's tolerance.
            let attempted_at = now
                + chrono::Duration::from_std(started.elapsed()).unwrap_or(chrono::Duration::zero());
            match self.deliver(&record, attempted_at).await {
                Ok(()) => {
                    self.store.remove_outbox(record.id)?;
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    pass.delivered += 1;
                }
                Err(error) => {
                    record.attempts = record.attempts.saturating_add(1);
                    let delay = backoff_delay(
                        self.settings.retry_initial,
                        self.settings.retry_max,
                        record.attempts,
                        rng,
                    );
                    record.next_attempt_at =
                        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
                    tracing::warn!(
                        alert_id = record.id,
                        attempt = record.attempts,
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "alert delivery failed"
                    );
                    record.last_error = Some(error);
                    self.store.update_outbox(&record)?;
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    pass.failed += 1;
                }
            }
        }
        // Read after the pass: rescheduled failures, alerts not yet due, and due ones
        // beyond this batch (then it is `now` or earlier and the next pass runs at once).
        pass.next_due = self.store.next_outbox_due()?;
        Ok(pass)
    }

    /// One signed POST; `Err` carries a short reason (no secrets).
    async fn deliver(&self, record: &OutboxMessage, now: DateTime<Utc>) -> Result<(), String> {
        let body = record.payload.as_bytes().to_vec();
        let id = message_id(record);
        let timestamp = now.timestamp();
        let signature = sign(self.key.expose_secret(), &id, timestamp, &body);
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("transport: {}", e.without_url()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {}", response.status()))
        }
    }

    /// Runs the sender until aborted: a pass whenever `wake` fires or the earliest
    /// scheduled retry is due.
    pub fn spawn(self: Arc<Self>, wake: Arc<Notify>, clock: SharedClock) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            loop {
                let wait = match self.pass(clock.now(), &mut rng).await {
                    Ok(pass) => pass
                        .next_due
                        .map(|due| (due - clock.now()).to_std().unwrap_or(Duration::ZERO))
                        .unwrap_or(IDLE_WAIT)
                        .min(IDLE_WAIT),
                    Err(error) => {
                        tracing::warn!(%error, "alert pass failed");
                        self.settings.retry_initial
                    }
                };
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "sender_tests.rs"]
mod tests;
