//! Webhook delivery, as a real provider does it: each status change is POSTed to the
//! configured URL signed with every configured secret (`providers::bank::sign`, a fresh
//! timestamp per attempt), and a failed attempt (no answer or a non-2xx) is retried a
//! few times with a short doubling backoff.
//!
//! One opening's webhooks go out in the order its statuses changed: each delivery waits
//! for the previous one of its opening (the `delivery_tail` chain in `state`), so
//! without the reorder fault an `IN_PROGRESS` never overtakes its `INITIATED`. The faults
//! are drawn when the webhook is queued: dropped (never sent), duplicated (sent twice,
//! same event id), delayed (`webhook_delay_ms` before sending) or held for reordering
//! (delivered shuffled by a flush).

use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::state::{HeldWebhook, WebhookEvent};
use super::BankSandbox;
use crate::providers::bank::{sign, SIGNATURE_HEADER};

/// Attempts per delivery, the first included.
const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);

/// What to do with a queued webhook, decided under the lock.
enum Plan {
    /// Nothing to send (no URL, dropped, or held).
    Nothing,
    /// Send `copies` times to `url` after `delay`.
    Send {
        url: String,
        copies: u32,
        delay: Duration,
    },
}

impl BankSandbox {
    /// Queues `event` behind its opening's earlier webhooks. The receiver fires once it
    /// is done with: delivered or given up, or dropped or held by a fault.
    pub(super) fn emit(&self, event: WebhookEvent) -> oneshot::Receiver<()> {
        let (done, done_rx) = oneshot::channel();
        let (tail, tail_rx) = oneshot::channel::<()>();
        let (previous, plan) = {
            let mut state = self.lock();
            let previous = state.replace_tail(&event.tracking_id, tail_rx);
            let plan = match state.webhook_url.clone() {
                None => {
                    state.stats.webhooks_without_url += 1;
                    Plan::Nothing
                }
                Some(url) => {
                    let (dropped, duplicated) = state.draw_webhook_faults(&event.tracking_id);
                    let copies = 1 + u32::from(duplicated);
                    if dropped {
                        state.stats.webhooks_dropped += 1;
                        Plan::Nothing
                    } else {
                        if duplicated {
                            state.stats.webhooks_duplicated += 1;
                        }
                        if state.faults.webhook_reorder {
                            for _ in 0..copies {
                                state.hold(HeldWebhook {
                                    url: url.clone(),
                                    body: event.body.clone(),
                                });
                            }
                            Plan::Nothing
                        } else {
                            Plan::Send {
                                url,
                                copies,
                                delay: Duration::from_millis(state.faults.webhook_delay_ms),
                            }
                        }
                    }
                }
            };
            (previous, plan)
        };
        let bank = self.clone();
        tokio::spawn(async move {
            if let Some(previous) = previous {
                // An error only means the previous delivery's task ended without saying
                // so (a panic): it is over either way.
                let _ = previous.await;
            }
            if let Plan::Send { url, copies, delay } = plan {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                for _ in 0..copies {
                    bank.deliver(&url, &event.body).await;
                }
            }
            // Nobody may be waiting any more; that is fine.
            let _ = tail.send(());
            let _ = done.send(());
        });
        done_rx
    }

    /// Delivers every webhook held by the reorder fault, shuffled, one after the other;
    /// returns how many.
    pub async fn flush_webhooks(&self) -> usize {
        let held = self.lock().take_held();
        let count = held.len();
        for webhook in held {
            self.deliver(&webhook.url, &webhook.body).await;
        }
        count
    }

    /// POSTs `body` to `url`, signed, retrying failures; whether the receiver took it.
    async fn deliver(&self, url: &str, body: &[u8]) -> bool {
        // The semaphore is never closed, so acquiring only waits.
        let _worker = self.shared.deliveries.acquire().await.ok();
        self.lock().stats.webhooks_sent += 1;
        let secrets: Vec<&[u8]> = self.shared.secrets.iter().map(Vec::as_slice).collect();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            self.lock().stats.webhook_attempts += 1;
            let signature = sign(&secrets, chrono::Utc::now().timestamp(), body);
            let result = self
                .shared
                .http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(body.to_vec())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    self.lock().stats.webhooks_delivered += 1;
                    return true;
                }
                Ok(response) => {
                    debug!(
                        attempt,
                        status = response.status().as_u16(),
                        "bank webhook refused"
                    );
                }
                Err(e) => debug!(attempt, error = %e, "bank webhook delivery failed"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        self.lock().stats.webhooks_failed += 1;
        warn!(attempts = ATTEMPTS, "bank webhook delivery gave up");
        false
    }
}
