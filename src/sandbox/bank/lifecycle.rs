//! The timers that move openings along. Each new opening gets one task: it queues the
//! `INITIATED` webhook, waits the market's step delay, moves the opening to
//! `IN_PROGRESS`, waits again and has the market decide. A forced outcome meanwhile
//! makes the next step a no-op and ends the task. A legacy opening's task only waits the
//! market's legacy delay and decides; its callers wait on the opening's decision, not on
//! the task, so a caller that gives up and retries with the same key gets the same
//! decision.
//!
//! The task is spawned, not run by the create call's handler, so the opening goes on
//! when the caller disconnects, as it would at a real bank.

use std::time::Duration;

use tokio::sync::oneshot;

use super::state::WebhookEvent;
use super::BankSandbox;

impl BankSandbox {
    /// Starts an asynchronous opening's steps. With `delivered`, it fires once the
    /// webhooks sent without waiting (the `INITIATED` one, and every one when the delay
    /// is 0) are done with, for the `webhook_before_response` fault.
    pub(super) fn start_opening(
        &self,
        tracking_id: String,
        initiated: WebhookEvent,
        delay: Duration,
        delivered: Option<oneshot::Sender<()>>,
    ) {
        let bank = self.clone();
        tokio::spawn(async move {
            bank.run_opening(tracking_id, initiated, delay, delivered)
                .await;
        });
    }

    async fn run_opening(
        self,
        tracking_id: String,
        initiated: WebhookEvent,
        delay: Duration,
        mut delivered: Option<oneshot::Sender<()>>,
    ) {
        let mut last = self.emit(initiated);
        for decide in [false, true] {
            if !delay.is_zero() {
                if let Some(delivered) = delivered.take() {
                    // Webhooks of one opening go out in order: the last one done means
                    // every earlier one is.
                    let _ = (&mut last).await;
                    let _ = delivered.send(());
                }
                tokio::time::sleep(delay).await;
            }
            let now = chrono::Utc::now();
            let event = if decide {
                self.lock().decide(&tracking_id, now)
            } else {
                self.lock().advance(&tracking_id, now)
            };
            match event {
                Some(event) => last = self.emit(event),
                // Forced meanwhile, or a market that never decides.
                None => break,
            }
        }
        if let Some(delivered) = delivered {
            let _ = last.await;
            let _ = delivered.send(());
        }
    }

    /// Starts a legacy opening's decision timer.
    pub(super) fn start_legacy(&self, tracking_id: String, delay: Duration) {
        let bank = self.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Legacy openings send no webhook: the decision is the call's answer.
            let _ = bank.lock().decide(&tracking_id, chrono::Utc::now());
        });
    }
}
