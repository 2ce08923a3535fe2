//! The simulated Stripe: the outside world acctor mirrors Stripe accounts from (objects
//! by list backfill, webhook events and `/v1/events` catch-up) and pushes product and
//! price changes to. It speaks Stripe's wire format (`providers::stripe::wire`), signs
//! its webhooks with `providers::stripe::sign`, and answers like Stripe's API closely
//! enough that the official `stripe` Python library takes its answers (see
//! `scripts/stripe_official_client_check.py`). acctor's core never imports it; only
//! the app (demo) and tests do.
//!
//! It exists to make the hard cases of mirroring Stripe reproducible on demand: large
//! histories paged through with cursors, objects changing and disappearing under a
//! backfill, events in the same second, webhooks dropped, duplicated, delayed, held and
//! released out of order, a rate limit that really counts, random 429s and 500s,
//! endpoint secrets rotated, Connect accounts reached through a platform's key, and
//! retried writes with one idempotency key. Its counters ([`StripeStats`]) prove how
//! acctor behaved (never over the rate limit, never two creates for one key).
//!
//! Accounts are independent: each has its own key and endpoint (a Connect account uses
//! its platform's), objects, events, faults ([`StripeFaults`]), counters and seeded
//! random streams, so a run replays under the same seed and call order. The sandbox's
//! clock is the wall clock plus an offset tests can advance (it dates new objects and
//! events and bounds the 30 days `/v1/events` keeps). Everything lives in memory.
//!
//! A `*.deleted` event carries the whole object as it was before the deletion, as
//! Stripe's do (Stripe staff say so in stripe/stripe-dotnet#1870): only the event's type
//! says it is a deletion. [`StripeFaults::deleted_events_full_object`] off sends the
//! DELETE answer's shape (`{id, object, deleted: true}`) instead, so acctor is tested
//! against both readings.
//!
//! Layout: `state` the books (one mutex, no awaits), `store` the ordered collections,
//! `objects` and `generate` what the object types are like, `api` the reads and the
//! admission every call passes, `list` the list parameters, `writes` the product and
//! price writes (`catalog` their parameters), `form` Stripe's parameter encoding,
//! `errors` its error answers, `webhooks` delivery, `settings` the faults, `stats` the
//! counters, `admin` the controls.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{debug, warn};

mod admin;
mod api;
mod catalog;
mod errors;
mod form;
mod generate;
mod list;
mod objects;
mod settings;
mod state;
mod stats;
mod store;
mod webhooks;
mod writes;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod webhook_tests;
#[cfg(test)]
mod write_tests;

pub use settings::{StripeFaults, StripeFaultsUpdate};
pub use stats::StripeStats;

use crate::domain::stripe::ObjectType;
use state::{Refusal, RequestInfo, State};
use webhooks::Deliveries;

/// How to build the simulated Stripe.
#[derive(Clone, Debug, Default)]
pub struct StripeSandboxConfig {
    /// Seed of ids, keys, generated data and fault draws.
    pub seed: u64,
}

/// An account as tests and the demo need it: what acctor is linked with.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct SandboxAccount {
    /// `acct_…`
    pub id: String,
    /// The key that reaches it: its own, or for a Connect account its platform's (sent
    /// with `Stripe-Account: {id}`).
    pub api_key: String,
    /// The secret its events are signed with: its own endpoint's, or for a Connect
    /// account its platform's.
    pub webhook_secret: String,
}

impl fmt::Debug for SandboxAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxAccount")
            .field("id", &self.id)
            .field("api_key", &"***")
            .field("webhook_secret", &"***")
            .finish()
    }
}

/// The simulated Stripe, and the handle tests control it with. Cheap to clone: all
/// clones share one sandbox. Methods naming an account that does not exist do nothing
/// (and say so in the log), returning nothing, `None`, `false` or `0`.
#[derive(Clone)]
pub struct StripeSandbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Added to the wall clock to make the sandbox's now.
    clock_offset_secs: AtomicI64,
    deliveries: Deliveries,
}

impl fmt::Debug for StripeSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeSandbox").finish_non_exhaustive()
    }
}

fn object_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            warn!(value = %other, "stripe sandbox fields must be a json object, ignored");
            Map::new()
        }
    }
}

impl StripeSandbox {
    /// A sandbox without accounts.
    pub fn new(config: StripeSandboxConfig) -> StripeSandbox {
        StripeSandbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(config.seed)),
                clock_offset_secs: AtomicI64::new(0),
                deliveries: Deliveries::new(config.seed),
            }),
        }
    }

    /// The sandbox's routes (the API under `/v1`, the controls under `/admin`), to nest
    /// under `/stripe`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        api::routes()
            .merge(admin::routes())
            .fallback(api::not_found)
            .method_not_allowed_fallback(api::not_found)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                api::request_id,
            ))
            .with_state(self.clone())
    }

    /// The books, locked. A panic while they were held cannot leave them half-changed
    /// in a way later calls trip over (each change is a few inserts), so a poisoned
    /// lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The sandbox's now (unix seconds): the wall clock plus every
    /// [`StripeSandbox::advance_clock`].
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.shared.clock_offset_secs.load(Ordering::Relaxed)
    }

    /// Moves the sandbox's clock forward (new objects and events are dated by it, and
    /// `/v1/events` lists the 30 days before it).
    pub fn advance_clock(&self, by: Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX / 2);
        self.shared
            .clock_offset_secs
            .fetch_add(secs, Ordering::Relaxed);
    }

    /// Opens an account with a fresh `acct_` id, key (`sk_test_…`) and endpoint secret
    /// (`whsec_…`). With `platform`, a Connect account of that platform: it has no key
    /// of its own (the platform's key with `Stripe-Account: {id}` reaches it), its
    /// events carry `"account": id` and go to the platform's endpoint, signed with the
    /// platform's secrets. An unknown platform opens a standalone account (logged).
    pub fn create_account(&self, platform: Option<&str>) -> SandboxAccount {
        let mut state = self.lock();
        let platform = platform.and_then(|p| {
            let credentials = state.account(p).and_then(|a| {
                Some((
                    a.api_key.clone()?,
                    a.webhook_secrets.first().cloned().unwrap_or_default(),
                ))
            });
            if credentials.is_none() {
                warn!(
                    platform = p,
                    "unknown stripe platform, opening a standalone account"
                );
            }
            credentials.map(|c| (p.to_owned(), c))
        });
        let account = state.create_account(platform.as_ref().map(|(p, _)| p.as_str()));
        let id = account.id.clone();
        let (api_key, webhook_secret) = match platform {
            Some((_, credentials)) => credentials,
            None => (
                account.api_key.clone().unwrap_or_default(),
                account.webhook_secrets.first().cloned().unwrap_or_default(),
            ),
        };
        debug!(account = %id, connect = account.platform.is_some(), "stripe sandbox account opened");
        SandboxAccount {
            id,
            api_key,
            webhook_secret,
        }
    }

    fn with_account<T>(
        &self,
        account: &str,
        f: impl FnOnce(&mut state::Account) -> T,
    ) -> Option<T> {
        let mut state = self.lock();
        match state.account_mut(account) {
            Some(acct) => Some(f(acct)),
            None => {
                warn!(account, "unknown stripe sandbox account");
                None
            }
        }
    }

    /// Where the account's events are POSTed (`None`: nowhere; they are still listed
    /// by `/v1/events`). A Connect account's events go to its platform's URL instead.
    pub fn set_webhook_url(&self, account: &str, url: Option<String>) {
        self.with_account(account, |acct| acct.webhook_url = url);
    }

    /// The endpoint secrets events are signed with, one `v1` each (two while one is
    /// rotated).
    pub fn set_webhook_secrets(&self, account: &str, secrets: Vec<String>) {
        self.with_account(account, |acct| acct.webhook_secrets = secrets);
    }

    /// Makes `count` objects of `object_type` with `created` spread over the last two
    /// years (some sharing a second) and realistic minimal fields, without events;
    /// their ids. Fast: 100,000 objects take a fraction of a second.
    pub fn generate(&self, account: &str, object_type: ObjectType, count: usize) -> Vec<String> {
        let now = self.now();
        let made = self.lock().generate(account, object_type, count, now);
        debug!(account, %object_type, count = made.len(), "stripe sandbox objects generated");
        made
    }

    /// Creates an object: a new object's defaults with `fields` merged over them (they
    /// may set `id` and `created`); with `emit_event`, its creation event
    /// (`product.created`, `customer.subscription.created`, `charge.succeeded`, …).
    /// `Value::Null` for an unknown account.
    pub fn create_object(
        &self,
        account: &str,
        object_type: ObjectType,
        fields: Value,
        emit_event: bool,
    ) -> Value {
        let now = self.now();
        let request = emit_event.then(RequestInfo::default);
        let created = self
            .lock()
            .create(account, object_type, object_map(fields), now, request);
        match created {
            Ok(changed) => {
                self.enqueue(changed.deliveries);
                changed.object
            }
            Err(refusal) => {
                warn!(account, %object_type, ?refusal, "stripe sandbox create refused");
                Value::Null
            }
        }
    }

    /// Merges `patch` into an object (shallow: a nested object is replaced whole); with
    /// `emit_event` and a real change, its update event with `previous_attributes`
    /// (`*.updated`, or the status's own event: `invoice.paid`, `payout.paid`, …). The
    /// object after the change; `None` when it does not exist.
    pub fn update_object(
        &self,
        account: &str,
        object_type: ObjectType,
        id: &str,
        patch: Value,
        emit_event: bool,
    ) -> Option<Value> {
        let now = self.now();
        let request = emit_event.then(RequestInfo::default);
        let updated = self
            .lock()
            .update(account, object_type, id, object_map(patch), now, request);
        let changed = updated.ok()?;
        self.enqueue(changed.deliveries);
        Some(changed.object)
    }

    /// Deletes an object the way Stripe ends one of its type: products, prices,
    /// customers and draft invoices are removed (`*.deleted` carrying `{id, object,
    /// deleted: true}`, then 404); subscriptions, payment intents and pending payouts
    /// are cancelled (they stay retrievable; `customer.subscription.deleted`,
    /// `payment_intent.canceled`, `payout.canceled` with the whole object). False when
    /// the object does not exist or Stripe cannot delete it (charges, refunds,
    /// disputes, finalized invoices).
    pub fn delete_object(
        &self,
        account: &str,
        object_type: ObjectType,
        id: &str,
        emit_event: bool,
    ) -> bool {
        let now = self.now();
        let request = emit_event.then(RequestInfo::default);
        let deleted = self.lock().delete(account, object_type, id, now, request);
        match deleted {
            Ok(changed) => {
                self.enqueue(changed.deliveries);
                true
            }
            Err(Refusal::NotDeletable) => {
                debug!(account, %object_type, id, "stripe sandbox object cannot be deleted");
                false
            }
            Err(_) => false,
        }
    }

    /// Makes `changes` random creates, updates (each a lifecycle step or a field edit)
    /// and deletes across the types, each with its event; how many were made.
    pub fn mutate(&self, account: &str, changes: usize) -> usize {
        let now = self.now();
        let (made, deliveries) = self.lock().mutate(account, changes, now);
        self.enqueue(deliveries);
        made
    }

    /// The account's existing objects of `object_type`, newest first (what acctor's
    /// copy must equal).
    pub fn objects(&self, account: &str, object_type: ObjectType) -> Vec<Value> {
        let state = self.lock();
        let Some(acct) = state.account(account) else {
            return Vec::new();
        };
        acct.objects(object_type)
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect()
    }

    /// One existing object.
    pub fn object(&self, account: &str, object_type: ObjectType, id: &str) -> Option<Value> {
        let state = self.lock();
        let text = state.account(account)?.objects(object_type).get(id)?;
        serde_json::from_str(text).ok()
    }

    /// Every event of the account still kept, newest first.
    pub fn events(&self, account: &str) -> Vec<Value> {
        let state = self.lock();
        let Some(acct) = state.account(account) else {
            return Vec::new();
        };
        acct.events
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect()
    }

    /// Changes the account's faults. Values [`StripeFaultsUpdate::validate`] refuses
    /// are brought into range.
    pub fn set_faults(&self, account: &str, update: StripeFaultsUpdate) {
        self.with_account(account, |acct| update.apply(&mut acct.faults));
    }

    /// The account's faults.
    pub fn faults(&self, account: &str) -> Option<StripeFaults> {
        self.lock().account(account).map(|acct| acct.faults.clone())
    }

    /// The account's counters (all zero for an unknown account).
    pub fn stats(&self, account: &str) -> StripeStats {
        self.lock()
            .account(account)
            .map(|acct| acct.stats.clone())
            .unwrap_or_default()
    }

    /// While `hold`, the account's deliveries wait in the account instead of being
    /// sent, until [`StripeSandbox::flush_webhooks`].
    pub fn hold_webhooks(&self, account: &str, hold: bool) {
        self.with_account(account, |acct| acct.hold = hold);
    }

    /// While `on`, every new event of the account gets the same `created` second (the
    /// one when it was turned on): same-second ties on demand.
    pub fn set_same_second(&self, account: &str, on: bool) {
        let at = on.then(|| self.now());
        if !self.lock().set_same_second(account, at) {
            warn!(account, "unknown stripe sandbox account");
        }
    }
}
