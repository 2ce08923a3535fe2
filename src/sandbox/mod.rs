//! The built-in simulated providers: a Plaid-compatible bank that the demo, the
//! integration tests and the benchmarks run against, (under `/bank`, see `bank`) the
//! account-opening bank acctor opens accounts and issues cards at, and (under `/stripe`,
//! see `stripe`) a Stripe-compatible API whose accounts acctor mirrors.
//!
//! It speaks Plaid's real wire format (the types in `providers::plaid::wire`), so the
//! same client code talks to Plaid by changing the base URL, and it signs webhooks the
//! way Plaid does, so acctor's verifier is exercised for real. On top of Plaid's API it
//! has an `/admin` API to create and mutate items, inject faults (data moving under a
//! pagination loop, rejected cursors, duplicate webhooks, latency, login errors, and
//! seeded random errors, timeouts and webhook drops, duplicates and reordering, per item
//! or globally, see `faults`; a random login error is sticky, as at Plaid, until
//! `LOGIN_REPAIRED`) and read counters that prove how acctor behaved (for example that it never ran two syncs
//! for one item at once).
//!
//! Layout: [`plaid_bank`] holds the state and change logs, `faults` the random fault settings
//! and draws, `cursor` the opaque sync cursors,
//! `generate` the deterministic data, `webhooks` signing and delivery, `plaid_api` and
//! `admin` the HTTP surfaces. Everything lives in memory; the sandbox is the outside
//! world, not part of acctor's durable state. Given a data directory, `persist` also
//! keeps that state on disk (saved every second while it changes and at shutdown), so
//! a standalone sandbox can restart under a running acctor without invalidating its
//! cursors or its webhook key. The account-opening bank (`bank`) and Stripe (`stripe`)
//! are modules of their own and are never persisted.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

mod admin;
mod bank;
mod cursor;
mod faults;
mod generate;
mod persist;
mod plaid_api;
mod plaid_bank;
mod stats;
mod stripe;
mod switches;
mod webhooks;

#[cfg(test)]
pub(crate) use bank::test_support as bank_test_support;
#[cfg(test)]
mod persist_tests;
#[cfg(test)]
mod tests;

pub use bank::{
    BankError, BankFaults, BankFaultsUpdate, BankSandbox, BankSandboxConfig, BankStats,
    ForcedOutcome, InvalidSetting, MarketSettings, MarketUpdate, OpeningSnapshot, Outcome,
    Transition, DEFAULT_API_KEY as DEFAULT_BANK_API_KEY,
    DEFAULT_WEBHOOK_SECRET as DEFAULT_BANK_WEBHOOK_SECRET, MARKET_REJECT_REASON,
};
pub use faults::{Endpoint, ErrorKind, RandomFaults, Reorder};
pub use persist::SandboxError;
pub use plaid_bank::{Faults, ItemStatsSnapshot};
pub use stripe::{
    SandboxAccount, StripeFaults, StripeFaultsUpdate, StripeSandbox, StripeSandboxConfig,
    StripeStats,
};
pub use webhooks::VERIFICATION_HEADER;

use crate::providers::plaid::wire::PlaidTransaction;
use persist::Persister;
use plaid_bank::{Bank, Item};
use webhooks::{WebhookSender, WebhookSigner};

/// The institution items are linked at when none is named.
pub const DEFAULT_INSTITUTION: &str = "ins_109508";
/// Generated history of items linked through the public-token flow.
pub const DEFAULT_HISTORY: u32 = 100;
/// How often a persistent sandbox saves what changed.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How to build a sandbox.
#[derive(Clone)]
pub struct SandboxConfig {
    /// The `client_id` requests must carry.
    pub client_id: String,
    /// The `secret` requests must carry (never printed).
    pub secret: String,
    /// Where webhooks go for items created without their own URL.
    pub default_webhook_url: Option<String>,
    /// Seed of the generated data (a stored sandbox keeps the seed it was created with).
    pub seed: u64,
    /// Where the sandbox keeps its state across restarts; `None`: in memory only.
    pub data_dir: Option<PathBuf>,
    /// The account-opening bank (kept in memory only, whatever `data_dir` says).
    pub bank: BankSandboxConfig,
}

impl fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("client_id", &self.client_id)
            .field("secret", &"***")
            .field("default_webhook_url", &self.default_webhook_url)
            .field("seed", &self.seed)
            .field("data_dir", &self.data_dir)
            .field("bank", &self.bank)
            .finish()
    }
}

/// An item created directly (without the public-token flow).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CreatedItem {
    /// Plaid `item_id`.
    pub item_id: String,
    /// Its access token.
    pub access_token: String,
}

impl fmt::Debug for CreatedItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedItem")
            .field("item_id", &self.item_id)
            .field("access_token", &"***")
            .finish()
    }
}

/// The simulated Plaid bank. Cheap to clone: all clones share one bank.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    client_id: String,
    secret: String,
    plaid: Bank,
    /// The account-opening bank, served under `/bank`.
    bank: BankSandbox,
    /// The simulated Stripe, served under `/stripe`.
    stripe: StripeSandbox,
    webhooks: WebhookSender,
    persister: Option<Persister>,
}

impl Sandbox {
    /// A sandbox with no items and fresh keys, or, when `config.data_dir` holds a
    /// saved sandbox, that sandbox again (same items, keys and cursors). With a data
    /// dir the state is written there before this returns, so the keys are durable
    /// before anything is signed; this does blocking file I/O.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let now = chrono::Utc::now();
        let fresh = || -> Result<(WebhookSigner, [u8; 32]), SandboxError> {
            let mut os_rng = rand::rngs::OsRng;
            let kid = uuid::Builder::from_random_bytes(os_rng.gen())
                .into_uuid()
                .to_string();
            let signer = WebhookSigner::generate(kid, now.timestamp())
                .map_err(|e| SandboxError::SigningKey(e.to_string()))?;
            Ok((signer, os_rng.gen()))
        };
        let (bank, signer, persister) = match &config.data_dir {
            None => {
                let (signer, cursor_key) = fresh()?;
                (
                    Bank::new(config.seed, now.date_naive(), cursor_key),
                    signer,
                    None,
                )
            }
            Some(dir) => {
                let opened = persist::open(dir, config.seed, now.date_naive(), fresh)?;
                if opened.restored {
                    info!(dir = %dir.display(), "sandbox restored from its data dir");
                }
                (opened.bank, opened.signer, Some(opened.persister))
            }
        };
        // The configured URL wins; a stored sandbox started without one keeps its own.
        if config.default_webhook_url.is_some() {
            bank.set_default_webhook(config.default_webhook_url);
        }
        if let Some(persister) = &persister {
            persister.save(&bank, &signer, false)?;
        }
        Ok(Sandbox {
            inner: Arc::new(Inner {
                client_id: config.client_id,
                secret: config.secret,
                plaid: bank,
                bank: BankSandbox::new(config.bank),
                // In memory only, like the bank, whatever `data_dir` says.
                stripe: StripeSandbox::new(StripeSandboxConfig { seed: config.seed }),
                webhooks: WebhookSender::new(signer),
                persister,
            }),
        })
    }

    /// The data dir this sandbox is kept in, if any.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.persister.as_ref().map(|p| p.dir())
    }

    /// Writes what changed since the last save to the data dir, as the periodic save
    /// does (a no-op without a data dir). Blocking file I/O.
    pub fn checkpoint(&self) -> Result<(), SandboxError> {
        self.save(false)
    }

    fn save(&self, clean: bool) -> Result<(), SandboxError> {
        let Some(persister) = &self.inner.persister else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let report = persister.save(&self.inner.plaid, self.inner.webhooks.signer(), clean)?;
        if report.items > 0 || report.bank {
            debug!(
                items = report.items,
                header = report.bank,
                clean,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sandbox state saved"
            );
        }
        Ok(())
    }

    /// [`Sandbox::save`] on a blocking thread.
    async fn save_off_runtime(&self, clean: bool) -> Result<(), SandboxError> {
        let sandbox = self.clone();
        match tokio::task::spawn_blocking(move || sandbox.save(clean)).await {
            Ok(result) => result,
            // Only a panic inside `save` gets here; keep it visible as an error.
            Err(e) => Err(SandboxError::Io {
                path: self.data_dir().map(Path::to_path_buf).unwrap_or_default(),
                source: std::io::Error::other(format!("save task failed: {e}")),
            }),
        }
    }

    /// Saves every [`SAVE_INTERVAL`] until `stop` fires or is dropped.
    async fn save_periodically(self, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(SAVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and `new` has just saved.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.save_off_runtime(false).await {
                // Keep serving: the next tick retries, and shutdown reports a failure.
                error!(error = %e, "sandbox periodic save failed");
            }
        }
    }

    /// Every route: Plaid's endpoints at the root, the controls under `/admin`, the
    /// account-opening bank under `/bank` (its controls under `/bank/admin`), Stripe
    /// under `/stripe` (its controls under `/stripe/admin`).
    pub fn router(&self) -> axum::Router {
        plaid_api::routes()
            .merge(admin::routes())
            .nest("/bank", self.inner.bank.router())
            .nest("/stripe", self.inner.stripe.router())
            .fallback(plaid_api::not_found)
            .with_state(self.clone())
    }

    /// Serves [`Sandbox::router`] on `listener` in a spawned task.
    pub async fn serve(self, listener: TcpListener) -> SandboxHandle {
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(e) => {
                // A bound listener always has an address; keep serving regardless.
                warn!(error = %e, "sandbox listener has no local address");
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let saver = self.inner.persister.as_ref().map(|_| {
            let (stop_saving, saving_stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(self.clone().save_periodically(saving_stopped));
            (stop_saving, task)
        });
        let router = self.router();
        let task = tokio::spawn(async move {
            let shutdown = async {
                // Either an explicit shutdown or the handle being dropped.
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                warn!(error = %e, "sandbox server failed");
            }
        });
        info!(%addr, "sandbox bank listening");
        SandboxHandle {
            addr,
            stop: Some(stop),
            task,
            saver,
            sandbox: self,
        }
    }

    /// Sets where webhooks go for items without their own URL (embedded mode learns
    /// acctor's address only after binding).
    pub fn set_default_webhook_url(&self, url: String) {
        self.inner.plaid.set_default_webhook(Some(url));
    }

    /// Creates an item with `history` generated transactions.
    pub fn create_item(&self, history: u32, webhook: Option<String>) -> CreatedItem {
        let item = self
            .inner
            .plaid
            .create_item(history, webhook, DEFAULT_INSTITUTION);
        debug!(item_id = %item.item_id, history, "sandbox item created");
        CreatedItem {
            item_id: item.item_id.clone(),
            access_token: item.access_token.clone(),
        }
    }

    /// Adds one new transaction to a random item among `among` (the demo's items: never
    /// one a user created for themselves) and fires its `SYNC_UPDATES_AVAILABLE`
    /// webhook (awaited). Returns the item's id, `None` when none of them exists.
    pub async fn demo_tick(&self, among: &[String]) -> Option<String> {
        let item = self.inner.plaid.random_item(among)?;
        if let Err(e) = item.mutate(1, 0, 0, self.inner.plaid.today()) {
            // Adding never needs existing transactions; kept for completeness.
            warn!(item_id = %item.item_id, error = %e, "demo tick failed");
            return None;
        }
        self.fire_sync_updates(&item).await;
        Some(item.item_id.clone())
    }

    /// Signs `body` the way the sandbox signs its own webhooks (a `Plaid-Verification`
    /// JWT with the given `iat`): tests and benchmarks post webhooks of their own making.
    pub fn sign_webhook(&self, body: &[u8], iat: i64) -> String {
        match self.inner.webhooks.signer().sign(body, iat) {
            Ok(jwt) => jwt,
            // Signing with a key ring generated itself only fails when the OS has no
            // randomness; nothing in this process could work then.
            Err(e) => panic!("sandbox webhook signing failed: {e}"),
        }
    }

    /// The counters of an item.
    pub fn item_stats(&self, item_id: &str) -> Option<ItemStatsSnapshot> {
        self.inner.plaid.item(item_id).map(|i| i.stats.snapshot())
    }

    /// The current transactions of an item, sorted by id (what acctor's copy must
    /// equal).
    pub fn current_transactions(&self, item_id: &str) -> Option<Vec<PlaidTransaction>> {
        self.inner
            .plaid
            .item(item_id)
            .map(|i| i.current_transactions())
    }

    /// The account-opening bank: its controls, outcomes and counters.
    pub fn bank(&self) -> &BankSandbox {
        &self.inner.bank
    }

    /// The simulated Stripe: its accounts, controls and counters.
    pub fn stripe(&self) -> &StripeSandbox {
        &self.inner.stripe
    }

    fn plaid_bank(&self) -> &Bank {
        &self.inner.plaid
    }

    fn credentials_match(&self, client_id: &str, secret: &str) -> bool {
        use subtle::ConstantTimeEq;
        let id_ok = client_id.as_bytes().ct_eq(self.inner.client_id.as_bytes());
        let secret_ok = secret.as_bytes().ct_eq(self.inner.secret.as_bytes());
        (id_ok & secret_ok).into()
    }

    /// Fires `SYNC_UPDATES_AVAILABLE` for `item`; the status acctor answered.
    async fn fire_sync_updates(&self, item: &Item) -> Option<u16> {
        self.fire(item, "TRANSACTIONS", "SYNC_UPDATES_AVAILABLE", sync_flags())
            .await
    }

    /// Sends one webhook for `item` (plus the configured duplicates) and returns the
    /// status of the first delivery, `None` if there is no URL or no answer.
    async fn fire(
        &self,
        item: &Item,
        webhook_type: &str,
        webhook_code: &str,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Option<u16> {
        let Some(url) = self.plaid_bank().webhook_url_for(item) else {
            debug!(item_id = %item.item_id, webhook_code, "no webhook url, webhook not sent");
            return None;
        };
        let body = webhooks::body(webhook_type, webhook_code, &item.item_id, extra);
        let random = self.plaid_bank().effective_faults(item);
        let (dropped, duplicated) = {
            let mut rng = plaid_bank::lock(&item.fault_rng);
            let dropped = faults::draw(random.webhook_drop_rate, &mut rng);
            (
                dropped,
                !dropped && faults::draw(random.webhook_duplicate_rate, &mut rng),
            )
        };
        if dropped {
            item.stats.count_dropped();
            debug!(item_id = %item.item_id, webhook_code, "webhook dropped by fault");
            return None;
        }
        if duplicated {
            item.stats.count_duplicated();
        }
        let copies = 1 + item.duplicate_webhooks() + u32::from(duplicated);
        if let Some(reorder) = random.webhook_reorder {
            self.hold(item, reorder, &url, &body, copies).await;
            return None;
        }
        let mut first = None;
        for copy in 0..copies {
            let delivery = self.inner.webhooks.deliver(&url, &body).await;
            item.stats.count_webhook();
            debug!(
                item_id = %item.item_id,
                webhook_code,
                copy,
                status = %webhooks::status_text(delivery.status),
                attempts = delivery.attempts,
                "webhook delivered"
            );
            if copy == 0 {
                first = delivery.status;
            }
        }
        first
    }
}

impl Sandbox {
    /// Holds `copies` deliveries of `body` for the reorder fault. The call that fills a
    /// batch releases it (awaited, so the caller knows it landed); the first held
    /// delivery also starts a timer that releases whatever is held after `hold_ms`.
    async fn hold(
        &self,
        item: &Item,
        reorder: faults::Reorder,
        url: &str,
        body: &[u8],
        copies: u32,
    ) {
        let (first_held, full) = {
            let mut held = plaid_bank::lock(&item.held_webhooks);
            let first_held = held.is_empty();
            for _ in 0..copies {
                held.push((url.to_string(), body.to_vec()));
            }
            (first_held, held.len() >= reorder.batch as usize)
        };
        if full {
            self.release_held(item).await;
        } else if first_held {
            let sandbox = self.clone();
            let item_id = item.item_id.clone();
            let wait = Duration::from_millis(reorder.hold_ms);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(item) = sandbox.plaid_bank().item(&item_id) {
                    sandbox.release_held(&item).await;
                }
            });
        }
    }

    /// Delivers every held webhook of `item` in a seeded random order.
    async fn release_held(&self, item: &Item) {
        use rand::seq::SliceRandom;
        let mut batch = std::mem::take(&mut *plaid_bank::lock(&item.held_webhooks));
        if batch.is_empty() {
            return;
        }
        batch.shuffle(&mut *plaid_bank::lock(&item.fault_rng));
        item.stats.count_reordered(batch.len() as u64);
        debug!(item_id = %item.item_id, held = batch.len(), "releasing reordered webhooks");
        for (url, body) in batch {
            let delivery = self.inner.webhooks.deliver(&url, &body).await;
            item.stats.count_webhook();
            debug!(item_id = %item.item_id, status = %webhooks::status_text(delivery.status), "held webhook delivered");
        }
    }
}

/// The flags Plaid sends with `SYNC_UPDATES_AVAILABLE`.
fn sync_flags() -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    extra.insert("initial_update_complete".into(), true.into());
    extra.insert("historical_update_complete".into(), true.into());
    extra
}

/// A running sandbox server. Dropping it stops the server (and the periodic save)
/// without waiting and without a final save, like a crash.
pub struct SandboxHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    saver: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    sandbox: Sandbox,
}

impl SandboxHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, the base URL to give a Plaid client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, waits for requests in flight to finish and, with
    /// a data dir, writes the final snapshot (marked as a clean shutdown, so the next
    /// start keeps honouring cursors).
    pub async fn shutdown(mut self) -> Result<(), SandboxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            warn!(error = %e, "sandbox server task ended abnormally");
        }
        let Some((stop_saving, saving)) = self.saver.take() else {
            return Ok(());
        };
        let _ = stop_saving.send(());
        if let Err(e) = saving.await {
            warn!(error = %e, "sandbox save task ended abnormally");
        }
        self.sandbox.save_off_runtime(true).await?;
        info!("sandbox state saved for a clean restart");
        Ok(())
    }
}
