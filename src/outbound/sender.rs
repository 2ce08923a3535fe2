//! The one sender: delivers every message of the outbox to its destination's endpoint,
//! whoever enqueued it (alerts today; subscriber webhooks and notifications next).
//!
//! Messages are written to the store's outbox in the same transaction as the change
//! they announce, so a message exists exactly when its change does, and survives
//! restarts. One sender task delivers them: it makes the outbox durable first (never
//! announce a change a crash could still undo), then POSTs the due messages, earliest
//! due first, read through the outbox's due-time index (so messages waiting out a
//! backoff never crowd out due ones), each signed with its endpoint's key
//! ([`super::signing`]) over the exact bytes stored with it. A 2xx removes it; anything
//! else reschedules it with exponential backoff and full jitter from its endpoint's
//! retry policy, until the endpoint's max age (then it is dropped and logged). Time
//! comes from the injected clock. The sender never runs on a sync's path: the actors
//! only write the outbox and wake it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng as _};
use secrecy::ExposeSecret;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::endpoint::{Endpoint, Endpoints, OutboundError};
use super::signing::sign;
use crate::backoff::backoff_delay;
use crate::clock::SharedClock;
use crate::store::{OutboxMessage, Store, StoreError};

/// Most messages read from the outbox per pass.
const BATCH: usize = 100;
/// Longest the sender sleeps when nothing is scheduled (a wake-up comes sooner); also
/// how long a message whose destination has no endpoint waits before it is looked at
/// again.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// The `webhook-id` of a message: stable across its retries.
pub fn message_id(message: &OutboxMessage) -> String {
    format!("msg_acctor_{}", message.id)
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Messages delivered (2xx).
    pub delivered: u64,
    /// Attempts that failed and were rescheduled.
    pub failed: u64,
    /// Messages dropped past their endpoint's max age.
    pub dropped: u64,
    /// When the earliest remaining message is due (at or before the pass's `now` when
    /// more were due than one pass takes).
    pub next_due: Option<DateTime<Utc>>,
}

/// Counters of the sender (for metrics).
#[derive(Debug, Default)]
pub struct SenderCounters {
    /// Messages delivered since start.
    pub delivered: AtomicU64,
    /// Failed attempts since start.
    pub failed_attempts: AtomicU64,
    /// Messages dropped past their max age since start.
    pub dropped: AtomicU64,
}

/// Delivers the outbox. Build with [`Sender::new`], run with [`Sender::spawn`] (or drive
/// [`Sender::pass`] with an injected clock in tests).
pub struct Sender {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    endpoints: Arc<dyn Endpoints>,
    error_wait: Duration,
    counters: SenderCounters,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// `std` to `chrono`, saturating (a duration too long for chrono is "forever").
fn chrono_of(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

impl Sender {
    /// A sender of `store`'s outbox to `endpoints`; after a pass that failed (the store
    /// could not be read or written) it waits `error_wait` before the next.
    pub fn new(
        store: Arc<dyn Store>,
        endpoints: Arc<dyn Endpoints>,
        error_wait: Duration,
    ) -> Result<Sender, OutboundError> {
        // Timeouts are per endpoint, set on each request.
        let client = reqwest::Client::builder()
            .user_agent(concat!("acctor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OutboundError::Client(e.to_string()))?;
        Ok(Sender {
            store,
            client,
            endpoints,
            error_wait,
            counters: SenderCounters::default(),
        })
    }

    /// The sender's counters.
    pub fn counters(&self) -> &SenderCounters {
        &self.counters
    }

    /// Runs store work on the blocking pool: a store call may wait on I/O (and the
    /// PostgreSQL store blocks on its own runtime), never on this runtime's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store.as_ref()))
            .await
            .map_err(|e| StoreError::Io(format!("outbox store task failed: {e}")))?
    }

    /// Delivers up to one batch of the messages due at `now`, earliest due first (one
    /// attempt each), and reschedules failures.
    pub async fn pass(
        &self,
        now: DateTime<Utc>,
        rng: &mut (impl Rng + Send),
    ) -> Result<Pass, StoreError> {
        // Only due messages, earliest due first: during a receiver outage the oldest
        // wait out their backoff, and must not use up the batch of those behind.
        let due = self.blocking(move |s| s.due_outbox(now, BATCH)).await?;
        // Read first, then made durable: everything announced below is on disk (a
        // change written just before the read is covered by this flush too).
        self.store.durable().await?;
        let started = std::time::Instant::now();
        let mut pass = Pass::default();
        for message in due {
            let Some(endpoint) = self.endpoints.endpoint(&message.destination) else {
                self.keep_for_later(message, now).await?;
                continue;
            };
            if now - message.created_at > chrono_of(endpoint.max_age) {
                self.drop_expired(&endpoint, &message).await?;
                pass.dropped += 1;
                continue;
            }
            // Each attempt is stamped with its own time: a slow receiver ahead in the
            // batch must not make later messages look stale to the receiver's tolerance.
            let attempted_at =
                now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
            match self.deliver(&endpoint, &message, attempted_at).await {
                Ok(()) => {
                    let id = message.id;
                    self.blocking(move |s| s.remove_outbox(id)).await?;
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    pass.delivered += 1;
                }
                Err(error) => {
                    self.reschedule(&endpoint, message, error, now, rng).await?;
                    pass.failed += 1;
                }
            }
        }
        // Read after the pass: rescheduled failures, messages not yet due, and due ones
        // beyond this batch (then it is `now` or earlier and the next pass runs at once).
        pass.next_due = self.blocking(|s| s.next_outbox_due()).await?;
        Ok(pass)
    }

    /// Gives up on a message past its endpoint's max age.
    async fn drop_expired(
        &self,
        endpoint: &Endpoint,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        tracing::error!(
            destination = message.destination.name(),
            message_id = message.id,
            event_type = %message.event_type,
            attempts = message.attempts,
            "{} dropped undelivered past its max age",
            endpoint.noun
        );
        let id = message.id;
        self.blocking(move |s| s.remove_outbox(id)).await?;
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Records a failed attempt and schedules the next by the endpoint's backoff.
    async fn reschedule(
        &self,
        endpoint: &Endpoint,
        mut message: OutboxMessage,
        error: String,
        now: DateTime<Utc>,
        rng: &mut (impl Rng + Send),
    ) -> Result<(), StoreError> {
        message.attempts = message.attempts.saturating_add(1);
        let delay = backoff_delay(
            endpoint.retry_initial,
            endpoint.retry_max,
            message.attempts,
            rng,
        );
        message.next_attempt_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        tracing::warn!(
            destination = message.destination.name(),
            message_id = message.id,
            attempt = message.attempts,
            %error,
            retry_in_ms = delay.as_millis() as u64,
            "{} delivery failed",
            endpoint.noun
        );
        message.last_error = Some(error);
        self.blocking(move |s| s.update_outbox(&message)).await?;
        self.counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A message whose destination has no endpoint (turned off since it was enqueued):
    /// not an attempt, not dropped (its max age is the endpoint's); looked at again
    /// after [`IDLE_WAIT`], so it neither spins the sender nor fills its batches.
    async fn keep_for_later(
        &self,
        mut message: OutboxMessage,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        tracing::warn!(
            destination = message.destination.name(),
            message_id = message.id,
            "no endpoint for the message's destination: kept for later"
        );
        message.next_attempt_at = now + chrono_of(IDLE_WAIT);
        self.blocking(move |s| s.update_outbox(&message)).await
    }

    /// One signed POST; `Err` carries a short reason (no secrets).
    async fn deliver(
        &self,
        endpoint: &Endpoint,
        message: &OutboxMessage,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let body = message.payload.as_bytes().to_vec();
        let id = message_id(message);
        let timestamp = now.timestamp();
        let signature = sign(endpoint.key.expose_secret(), &id, timestamp, &body);
        let response = self
            .client
            .post(&endpoint.url)
            .timeout(endpoint.request_timeout)
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
    /// scheduled message is due, by `clock`.
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
                        tracing::warn!(%error, "outbound pass failed");
                        self.error_wait
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
