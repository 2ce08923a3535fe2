//! The explicit dependencies of the actors: everything an account actor, its sync task,
//! the supervisor, the sweeper and the needs-reauth check read but do not own. It is
//! built once by `app.rs` (or a test) and shared as `Arc<ActorContext>`; the
//! [`Registry`](super::registry::Registry) is built from it and hands it to every
//! actor it activates.
//!
//! It exists so that the registry can be what its name says (activation, passivation,
//! refs) instead of the place every dependency is fetched from: an actor reads the store
//! from here, asks the registry only for registry things (its slot, its mailbox counter,
//! whether shutdown began).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::config::ActorSettings;
use crate::domain::ProviderKind;
use crate::metrics::Metrics;
use crate::providers::stripe::DynStripeApi;
use crate::providers::DynCursorSource;
use crate::store::{Store, StoreError};
use crate::sync::plaid::SyncParams;
use crate::sync::stripe::StripeParams;

/// What the actors depend on. Read-only after start-up, except the alert wake-up,
/// which is set once (see [`ActorContext::set_alert_notifier`]).
pub struct ActorContext {
    /// The store, for code already on a blocking thread (sync tasks' store steps, the
    /// sweeper's pass, the incident helpers). Async code, actor handlers above all,
    /// goes through [`ActorContext::blocking`] instead.
    pub store: Arc<dyn Store>,
    /// Actor settings (timeouts, passivation, restart budget, sync retries).
    pub settings: ActorSettings,
    /// Tunables of the sync strategy.
    pub sync_params: SyncParams,
    /// This instance's metrics (one set per context, hence per app: no global state).
    pub metrics: Arc<Metrics>,
    /// Where the actors read the time.
    pub clock: SharedClock,
    /// The cursor source of each provider kind (its plugin, and what its syncs page
    /// through).
    cursor_sources: HashMap<ProviderKind, DynCursorSource>,
    /// Wakes the alert sender; set only when outbound alerts are configured, and then
    /// every incident change also enqueues an alert (see [`super::incidents`]).
    alerts: OnceLock<Arc<Notify>>,
    /// Stripe's API and the Stripe sync's tunables, set once at start-up.
    stripe: OnceLock<(DynStripeApi, StripeParams)>,
    /// Stripe accounts caught up from the Events API since this process started: the
    /// first sync of every other one catches up (acctor may have been down).
    stripe_caught_up: dashmap::DashSet<crate::domain::AccountId>,
}

impl ActorContext {
    /// A context over `store` with one cursor source per provider kind, reading the time
    /// from `clock`, with a fresh set of metrics and outbound alerts off.
    pub fn new(
        store: Arc<dyn Store>,
        cursor_sources: HashMap<ProviderKind, DynCursorSource>,
        settings: ActorSettings,
        sync_params: SyncParams,
        clock: SharedClock,
    ) -> Arc<ActorContext> {
        Arc::new(ActorContext {
            store,
            settings,
            sync_params,
            metrics: Arc::new(Metrics::new()),
            clock,
            cursor_sources,
            alerts: OnceLock::new(),
            stripe: OnceLock::new(),
            stripe_caught_up: dashmap::DashSet::new(),
        })
    }

    /// The client for `kind` (its plugin, and the cursor source its syncs page through).
    /// Every provider kind acctor knows is configured at start,
    /// so a missing one is a start-up bug.
    pub fn provider(&self, kind: ProviderKind) -> DynCursorSource {
        match self.cursor_sources.get(&kind) {
            Some(provider) => provider.clone(),
            None => unreachable!("provider {kind} is configured at start-up"),
        }
    }

    /// Runs `work` (store calls, incident helpers) on the blocking pool and waits for
    /// it: the actors' counterpart of [`AsyncStore::run`](crate::store::AsyncStore::run),
    /// with the whole context at hand. An actor handler awaiting it holds its own
    /// mailbox for a store call, never a runtime thread.
    pub async fn blocking<T, F>(self: &Arc<Self>, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ActorContext) -> Result<T, StoreError> + Send + 'static,
    {
        let ctx = self.clone();
        tokio::task::spawn_blocking(move || work(&ctx))
            .await
            .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
    }

    /// Sets Stripe's API (once, at start-up): Stripe accounts sync through it.
    pub fn set_stripe(&self, api: DynStripeApi, params: StripeParams) {
        let _ = self.stripe.set((api, params));
    }

    /// Stripe's API and the sync's tunables, when Stripe is configured.
    pub fn stripe(&self) -> Option<&(DynStripeApi, StripeParams)> {
        self.stripe.get()
    }

    /// Whether `id` has not caught up since this process started.
    pub(super) fn stripe_needs_catch_up(&self, id: &crate::domain::AccountId) -> bool {
        !self.stripe_caught_up.contains(id)
    }

    /// Records that `id` caught up since start.
    pub(super) fn stripe_caught_up(&self, id: &crate::domain::AccountId) {
        self.stripe_caught_up.insert(id.clone());
    }

    /// Turns on outbound alerts: from now on every incident opened or resolved by the
    /// actors enqueues an alert and wakes `sender` (set once, at start-up).
    pub fn set_alert_notifier(&self, sender: Arc<Notify>) {
        let _ = self.alerts.set(sender);
    }

    /// The alert sender's wake-up, when outbound alerts are on (the operation actors
    /// wake it too).
    pub fn alert_notifier(&self) -> Option<Arc<Notify>> {
        self.alerts.get().cloned()
    }

    /// Whether outbound alerts are on (incident changes then enqueue an alert).
    pub(super) fn alerts_on(&self) -> bool {
        self.alerts.get().is_some()
    }

    /// Wakes the alert sender, if alerts are on.
    pub(super) fn wake_alerts(&self) {
        if let Some(sender) = self.alerts.get() {
            sender.notify_one();
        }
    }
}
