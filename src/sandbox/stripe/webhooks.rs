//! Webhook delivery, as Stripe does it: each event is POSTed as JSON to its account's
//! endpoint (a Connect account's to its platform's), signed with `Stripe-Signature`
//! (`providers::stripe::sign`, a fresh sandbox timestamp per attempt, one `v1` per
//! endpoint secret), and a failed attempt (no answer or a non-2xx) is retried after a
//! short doubling backoff, up to the account's `webhook_attempts`.
//!
//! Deliveries wait in one queue served by a few workers, so many events never open many
//! connections at once and arrive in no guaranteed order, as at Stripe. Faults were
//! drawn when the event was recorded (see `state`): a dropped event is never queued, a
//! duplicated one is queued twice, a held one waits in its account until
//! [`StripeSandbox::flush_webhooks`]. Here act the delay (waited by the worker before
//! sending) and the shuffle (a worker takes a random one of the next few deliveries
//! instead of the oldest).
//!
//! [`StripeSandbox::deliveries_idle`] is how tests wait: a counter of deliveries queued
//! or in flight, watched until it reaches zero, never a sleep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use super::{Shared, StripeSandbox};
use crate::providers::stripe::{sign, SIGNATURE_HEADER};

/// Workers delivering at once.
const WORKERS: usize = 4;
/// How many of the next queued deliveries a shuffling worker picks from.
const SHUFFLE_WINDOW: usize = 8;
/// Wait before the first retry of a delivery; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The shuffle's rng stream (apart from the accounts' streams).
const SHUFFLE_STREAM: u64 = 2;

/// One event to send to one endpoint (a duplicated event is two deliveries).
#[derive(Clone, Debug)]
pub(super) struct Delivery {
    /// The account the event is about (its counters count the delivery).
    pub account: String,
    /// `evt_…`, for the logs.
    pub event_id: String,
    /// The endpoint.
    pub url: String,
    /// The endpoint's secrets: one `v1` each.
    pub secrets: Vec<String>,
    /// The event's JSON, shared by a duplicate's copies.
    pub body: Arc<str>,
    /// Tries, the first included.
    pub attempts: u32,
    /// Waited before sending.
    pub delay_ms: u64,
    /// Whether a worker may take it out of order.
    pub shuffle: bool,
}

/// The queue, its workers' wake-up, and the idle counter.
pub(super) struct Deliveries {
    queue: Mutex<(VecDeque<Delivery>, ChaCha8Rng)>,
    wake: Arc<Notify>,
    /// Deliveries queued or in flight (held ones excluded).
    pending: watch::Sender<usize>,
    workers_started: AtomicBool,
    http: reqwest::Client,
}

impl Deliveries {
    /// An empty queue; the shuffle follows `seed`.
    pub fn new(seed: u64) -> Deliveries {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            // Only a TLS backend that fails to initialise gets here; the default client
            // then reports the same failure on each delivery, which the stats show.
            .unwrap_or_default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(SHUFFLE_STREAM);
        Deliveries {
            queue: Mutex::new((VecDeque::new(), rng)),
            wake: Arc::new(Notify::new()),
            pending: watch::Sender::new(0),
            workers_started: AtomicBool::new(false),
            http,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, (VecDeque<Delivery>, ChaCha8Rng)> {
        // A panic while it was held leaves a valid queue (pushes and pops only).
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next delivery: the oldest, or with the shuffle fault a random one of the
    /// next few.
    fn next(&self) -> Option<Delivery> {
        let mut guard = self.queue();
        let (queue, rng) = &mut *guard;
        let shuffle = queue.front()?.shuffle;
        let at = if shuffle {
            rng.gen_range(0..queue.len().min(SHUFFLE_WINDOW))
        } else {
            0
        };
        queue.remove(at)
    }

    fn add_pending(&self, n: usize) {
        self.pending.send_modify(|pending| *pending += n);
    }

    fn done(&self) {
        self.pending
            .send_modify(|pending| *pending = pending.saturating_sub(1));
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the idle workers notice the sandbox is gone and end.
        self.deliveries.wake.notify_waiters();
    }
}

impl StripeSandbox {
    /// Queues `deliveries` for the workers (starting them on first use).
    pub(super) fn enqueue(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let queued = &self.shared.deliveries;
        queued.add_pending(deliveries.len());
        let count = deliveries.len();
        queued.queue().0.extend(deliveries);
        self.start_workers();
        for _ in 0..count {
            queued.wake.notify_one();
        }
    }

    fn start_workers(&self) {
        let deliveries = &self.shared.deliveries;
        if deliveries.workers_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Called outside a runtime: the next enqueue (or wait) inside one starts
            // them; the queue keeps everything meanwhile.
            deliveries.workers_started.store(false, Ordering::Release);
            return;
        };
        for worker in 0..WORKERS {
            let shared = Arc::downgrade(&self.shared);
            let wake = deliveries.wake.clone();
            runtime.spawn(work(worker, shared, wake));
        }
    }

    /// Resolves once no delivery is queued or in flight (held ones do not count).
    pub async fn deliveries_idle(&self) {
        self.start_workers();
        let mut pending = self.shared.deliveries.pending.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Sends everything held for `account` (see [`StripeSandbox::hold_webhooks`]), one
    /// after the other, in the order the events happened or `shuffle`d by the account's
    /// fault stream; returns how many were sent.
    pub async fn flush_webhooks(&self, account: &str, shuffle: bool) -> usize {
        let held = {
            let mut state = self.lock();
            let Some(acct) = state.account_mut(account) else {
                return 0;
            };
            let mut held = std::mem::take(&mut acct.held);
            if shuffle {
                held.shuffle(&mut acct.fault_rng);
            }
            held
        };
        let count = held.len();
        self.shared.deliveries.add_pending(count);
        for delivery in held {
            self.deliver(&delivery).await;
            self.shared.deliveries.done();
        }
        count
    }

    /// POSTs one delivery, retrying failures; whether the endpoint took it.
    async fn deliver(&self, delivery: &Delivery) -> bool {
        let secrets: Vec<&[u8]> = delivery.secrets.iter().map(|s| s.as_bytes()).collect();
        let mut backoff = FIRST_BACKOFF;
        let attempts = delivery.attempts.max(1);
        for attempt in 1..=attempts {
            let signature = sign(&secrets, self.now(), delivery.body.as_bytes());
            let sent = self
                .shared
                .deliveries
                .http
                .post(&delivery.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature)
                .body(delivery.body.as_bytes().to_vec())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    if let Some(acct) = self.lock().account_mut(&delivery.account) {
                        acct.stats.webhooks_delivered += 1;
                    }
                    return true;
                }
                Ok(response) => debug!(
                    event_id = %delivery.event_id,
                    attempt,
                    status = response.status().as_u16(),
                    "stripe webhook refused"
                ),
                Err(e) => debug!(
                    event_id = %delivery.event_id,
                    attempt,
                    error = %e,
                    "stripe webhook delivery failed"
                ),
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        if let Some(acct) = self.lock().account_mut(&delivery.account) {
            acct.stats.webhooks_failed += 1;
        }
        warn!(event_id = %delivery.event_id, attempts, "stripe webhook delivery gave up");
        false
    }
}

/// One delivery worker: takes deliveries until the queue is empty, then waits to be
/// woken. Holds the sandbox only while delivering, so a dropped sandbox ends it.
async fn work(worker: usize, shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        // Registered before looking at the queue, so a wake-up between the look and the
        // wait is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let Some(shared) = shared.upgrade() else {
                debug!(worker, "stripe delivery worker stopped");
                return;
            };
            let sandbox = StripeSandbox { shared };
            let next = sandbox.shared.deliveries.next();
            next.map(|delivery| (sandbox, delivery))
        };
        match next {
            Some((sandbox, delivery)) => {
                if delivery.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delivery.delay_ms)).await;
                }
                sandbox.deliver(&delivery).await;
                sandbox.shared.deliveries.done();
            }
            None => notified.await,
        }
    }
}
