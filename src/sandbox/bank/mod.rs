//! The simulated account-opening bank: the outside world acctor opens accounts and
//! issues virtual cards at (issue 10). It speaks the wire format documented in
//! `providers::bank` and signs its webhooks with `providers::bank::sign`, so acctor's
//! client and verifier are exercised for real; acctor's core never imports it.
//!
//! It exists to make the hard cases of an asynchronous provider reproducible on demand:
//! a decision that takes time or never comes, webhooks dropped, duplicated, delayed,
//! reordered or racing the create call's answer, a flaky status endpoint, failures
//! before a card is issued, and retried calls with one idempotency key. Its counters
//! prove what acctor did (never two openings or cards for one key, never two cards for
//! one customer).
//!
//! An opening moves `INITIATED` → `IN_PROGRESS` → `COMPLETED` / `REJECTED`, one step
//! per market `delay_ms` (tokio timers; 0: at once), each step sending a signed webhook.
//! How a market decides is set per market ([`MarketSettings`]); faults bank-wide
//! ([`BankFaults`]). Ids, IBANs, outcome draws and fault draws come from rngs seeded by
//! [`BankSandboxConfig::seed`], so a run replays under the same seed and call order.
//! Everything lives in memory: unlike the Plaid bank, nothing is persisted.
//!
//! Layout: `state` the books and every transition (one mutex, no awaits), `settings`
//! the controls, `lifecycle` the timers that move openings along, `webhooks` signing
//! and delivery, `api` the bank's HTTP API, `admin` its controls under `/admin`, `iban`
//! the account numbers, `stats` the counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

mod admin;
mod api;
mod iban;
mod lifecycle;
mod settings;
mod state;
mod stats;
mod webhooks;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

pub use settings::{
    BankFaults, BankFaultsUpdate, InvalidSetting, MarketSettings, MarketUpdate, Outcome,
};
pub use state::{BankError, ForcedOutcome, OpeningSnapshot, Transition, MARKET_REJECT_REASON};
pub use stats::BankStats;

use state::BankState;

/// The API key the bank accepts unless configured otherwise.
pub const DEFAULT_API_KEY: &str = "sandbox-bank-key";
/// The secret the bank signs webhooks with unless configured otherwise.
pub const DEFAULT_WEBHOOK_SECRET: &str = "sandbox-bank-webhook-secret";

/// How to build the simulated bank.
#[derive(Clone)]
pub struct BankSandboxConfig {
    /// The API key calls must carry as `Authorization: Bearer`.
    pub api_key: String,
    /// Where status webhooks go; `None`: nowhere until
    /// [`BankSandbox::set_webhook_url`] sets it.
    pub webhook_url: Option<String>,
    /// The secrets webhooks are signed with: one `v1` each (two during a rotation).
    pub webhook_secrets: Vec<String>,
    /// Seed of ids, IBANs and random outcomes and faults.
    pub seed: u64,
}

impl Default for BankSandboxConfig {
    /// The embedded defaults: [`DEFAULT_API_KEY`], [`DEFAULT_WEBHOOK_SECRET`], no URL,
    /// seed 0.
    fn default() -> Self {
        BankSandboxConfig {
            api_key: DEFAULT_API_KEY.to_owned(),
            webhook_url: None,
            webhook_secrets: vec![DEFAULT_WEBHOOK_SECRET.to_owned()],
            seed: 0,
        }
    }
}

impl fmt::Debug for BankSandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankSandboxConfig")
            .field("api_key", &"***")
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("seed", &self.seed)
            .finish()
    }
}

/// The simulated bank, and the handle tests control it with. Cheap to clone: all
/// clones share one bank.
#[derive(Clone)]
pub struct BankSandbox {
    shared: Arc<Shared>,
}

struct Shared {
    api_key: String,
    secrets: Vec<Vec<u8>>,
    state: Mutex<BankState>,
    http: reqwest::Client,
    /// Numbers the `x-request-id` of every answer.
    request_seq: AtomicU64,
    /// Deliveries in flight at once, as a bank's pool of webhook workers limits them
    /// (10,000 openings deciding together must not open 20,000 connections).
    deliveries: tokio::sync::Semaphore,
}

/// Webhook deliveries the bank makes at once.
const DELIVERY_WORKERS: usize = 32;

impl fmt::Debug for BankSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankSandbox").finish_non_exhaustive()
    }
}

/// How long a webhook delivery attempt may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl BankSandbox {
    /// An empty bank.
    pub fn new(config: BankSandboxConfig) -> BankSandbox {
        let http = reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .build()
            // Only a TLS backend that fails to initialise gets here; the default client
            // then reports the same failure on each delivery, which the stats show.
            .unwrap_or_default();
        BankSandbox {
            shared: Arc::new(Shared {
                api_key: config.api_key,
                secrets: config
                    .webhook_secrets
                    .into_iter()
                    .map(String::into_bytes)
                    .collect(),
                state: Mutex::new(BankState::new(config.seed, config.webhook_url)),
                http,
                request_seq: AtomicU64::new(0),
                deliveries: tokio::sync::Semaphore::new(DELIVERY_WORKERS),
            }),
        }
    }

    /// The bank's routes (the API at the root, the controls under `/admin`), to nest
    /// under `/bank` in the sandbox.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        api::routes()
            .merge(admin::routes())
            .fallback(api::not_found)
            .layer(axum::middleware::map_response_with_state(
                self.clone(),
                api::add_request_id,
            ))
            .with_state(self.clone())
    }

    /// The bank's state, locked. A panic while it was held cannot leave it half-changed
    /// in a way later calls trip over (every change is a few field writes), so a
    /// poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, BankState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn next_request_id(&self) -> String {
        let n = self.shared.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("req_{n:012}")
    }

    /// Sets where webhooks go (`None`: nowhere).
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.lock().webhook_url = url;
    }

    /// Where webhooks go.
    pub fn webhook_url(&self) -> Option<String> {
        self.lock().webhook_url.clone()
    }

    /// Changes how `market`'s openings go; returns its settings after the change.
    pub fn set_market(
        &self,
        market: &str,
        update: MarketUpdate,
    ) -> Result<MarketSettings, InvalidSetting> {
        update.validate()?;
        let mut state = self.lock();
        let settings = state.market_mut(market);
        update.apply(settings);
        Ok(settings.clone())
    }

    /// How `market`'s openings go.
    pub fn market(&self, market: &str) -> MarketSettings {
        self.lock().market(market)
    }

    /// Every market set so far (the others have the defaults).
    pub fn markets(&self) -> std::collections::BTreeMap<String, MarketSettings> {
        self.lock().markets()
    }

    /// Changes the injected faults; returns them after the change.
    pub fn set_faults(&self, update: BankFaultsUpdate) -> Result<BankFaults, InvalidSetting> {
        update.validate()?;
        let mut state = self.lock();
        update.apply(&mut state.faults);
        Ok(state.faults.clone())
    }

    /// The injected faults.
    pub fn faults(&self) -> BankFaults {
        self.lock().faults.clone()
    }

    /// Decides an opening now (its webhook is sent, subject to the faults, and a legacy
    /// caller waiting for it gets the answer).
    pub fn force_outcome(
        &self,
        tracking_id: &str,
        outcome: ForcedOutcome,
    ) -> Result<OpeningSnapshot, BankError> {
        let (snapshot, event) = self
            .lock()
            .force(tracking_id, outcome, chrono::Utc::now())?;
        if let Some(event) = event {
            // Delivered in the background, after the opening's earlier webhooks.
            drop(self.emit(event));
        }
        Ok(snapshot)
    }

    /// One opening, asynchronous or legacy.
    pub fn opening(&self, tracking_id: &str) -> Option<OpeningSnapshot> {
        self.lock().opening(tracking_id)
    }

    /// Every opening, oldest first.
    pub fn openings(&self) -> Vec<OpeningSnapshot> {
        self.lock().openings()
    }

    /// The counters.
    pub fn stats(&self) -> BankStats {
        self.lock().stats.clone()
    }
}
