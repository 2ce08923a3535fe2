//! Stripe objects as acctor keeps them: which object types a linked Stripe account
//! mirrors, each stored object with the stamp of what wrote it (the out-of-order guard),
//! and the account's sync state (backfill progress per type, the catch-up watermark).
//!
//! The stamp is the whole out-of-order story. Stripe does not deliver events in order,
//! and its `created` times have one-second resolution, so every write carries the time
//! of what it knows: an event's `created`, or the second a listing or retrieve was
//! answered. A write older than the stored stamp is stale and skipped; a newer one
//! applies; a tie in the same second is decided by the caller (re-fetch for the types
//! where order matters), never guessed by the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AccessToken, AccountId};

/// The object types acctor mirrors. The name is Stripe's list endpoint
/// (`/v1/{name}`), which is also how the API and the store name them.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ObjectType {
    /// `product`
    Products,
    /// `price`
    Prices,
    /// `customer`
    Customers,
    /// `subscription`
    Subscriptions,
    /// `invoice`
    Invoices,
    /// `payment_intent`
    PaymentIntents,
    /// `charge`
    Charges,
    /// `refund`
    Refunds,
    /// `dispute`
    Disputes,
    /// `payout`
    Payouts,
}

impl ObjectType {
    /// Every type, in the order backfills run (catalogue first, then money).
    pub const ALL: [ObjectType; 10] = [
        ObjectType::Products,
        ObjectType::Prices,
        ObjectType::Customers,
        ObjectType::Subscriptions,
        ObjectType::Invoices,
        ObjectType::PaymentIntents,
        ObjectType::Charges,
        ObjectType::Refunds,
        ObjectType::Disputes,
        ObjectType::Payouts,
    ];

    /// Types whose same-second events are re-fetched rather than guessed, by default:
    /// all of them. Stripe's event ids carry no order, so two events of one object in
    /// one second cannot be ordered from what they say, and that happens to every type
    /// (a customer `created` then `updated` at signup, a product and its first edit),
    /// not only to the ones whose lifecycle runs in bursts (a subscription's `created`
    /// → `updated`, an invoice's `finalized` → `paid`). A type left out of an account's
    /// `refetch_on_tie` saves that retrieve and takes the last event delivered in the
    /// second: a guess, which the next drift check corrects if it was wrong.
    pub const REFETCH_ON_TIE: [ObjectType; 10] = ObjectType::ALL;

    /// The list endpoint's name (`payment_intents`).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Products => "products",
            ObjectType::Prices => "prices",
            ObjectType::Customers => "customers",
            ObjectType::Subscriptions => "subscriptions",
            ObjectType::Invoices => "invoices",
            ObjectType::PaymentIntents => "payment_intents",
            ObjectType::Charges => "charges",
            ObjectType::Refunds => "refunds",
            ObjectType::Disputes => "disputes",
            ObjectType::Payouts => "payouts",
        }
    }

    /// The `object` field of an object of this type (`payment_intent`).
    pub fn object_name(self) -> &'static str {
        match self {
            ObjectType::Products => "product",
            ObjectType::Prices => "price",
            ObjectType::Customers => "customer",
            ObjectType::Subscriptions => "subscription",
            ObjectType::Invoices => "invoice",
            ObjectType::PaymentIntents => "payment_intent",
            ObjectType::Charges => "charge",
            ObjectType::Refunds => "refund",
            ObjectType::Disputes => "dispute",
            ObjectType::Payouts => "payout",
        }
    }

    /// Parses a list endpoint's name.
    pub fn parse(name: &str) -> Option<ObjectType> {
        ObjectType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The type of an object from its `object` field.
    pub fn of_object(object_name: &str) -> Option<ObjectType> {
        ObjectType::ALL
            .into_iter()
            .find(|t| t.object_name() == object_name)
    }

    /// The names of every type, comma-separated (for error messages).
    pub fn names() -> String {
        ObjectType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What wrote a stored object: the time it describes, and the event it came from
/// (`None`: a listing or retrieve answered at that second).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Unix seconds: the event's `created`, or when Stripe answered the fetch.
    pub at: i64,
    /// The event's id, when an event wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Stamp {
    /// A stamp for an object fetched at `at`.
    pub fn fetched(at: DateTime<Utc>) -> Stamp {
        Stamp {
            at: at.timestamp(),
            event_id: None,
        }
    }

    /// A stamp for an object carried by event `id`, created at `created`.
    pub fn event(id: impl Into<String>, created: i64) -> Stamp {
        Stamp {
            at: created,
            event_id: Some(id.into()),
        }
    }
}

/// How a write whose stamp is in the same second as the stored one is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTie {
    /// Apply it: the caller knows it is at least as new (a re-fetch done because of the
    /// tie, or an event of a type where order within a second does not matter).
    Apply,
    /// Skip it: it may be older (a backfill page answered in the same second as an
    /// event already applied).
    Skip,
}

/// What the guard decides for a write stamped `new` over a stored `old`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Newer (or nothing stored): apply.
    Newer,
    /// Older: skip.
    Older,
    /// The same event again: skip.
    Same,
    /// Same second, another writer: the caller's [`OnTie`] decides.
    Tie,
}

impl Guard {
    /// Compares a write's stamp with the stored one.
    pub fn check(new: &Stamp, old: Option<&Stamp>) -> Guard {
        let Some(old) = old else {
            return Guard::Newer;
        };
        if new.event_id.is_some() && new.event_id == old.event_id {
            return Guard::Same;
        }
        match new.at.cmp(&old.at) {
            std::cmp::Ordering::Greater => Guard::Newer,
            std::cmp::Ordering::Less => Guard::Older,
            std::cmp::Ordering::Equal => Guard::Tie,
        }
    }

    /// Whether a write with this verdict and tie rule is applied.
    pub fn applies(self, on_tie: OnTie) -> bool {
        match self {
            Guard::Newer => true,
            Guard::Older | Guard::Same => false,
            Guard::Tie => on_tie == OnTie::Apply,
        }
    }
}

/// A Stripe object as stored: Stripe's JSON verbatim, or a tombstone once deleted (kept
/// so that a late, older event cannot bring it back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    /// The object's type.
    pub object_type: ObjectType,
    /// Stripe's id (`prod_…`).
    pub id: String,
    /// Stripe's object; `None` once deleted.
    pub body: Option<serde_json::Value>,
    /// What wrote this state.
    pub stamp: Stamp,
    /// When acctor wrote it.
    pub updated_at: DateTime<Utc>,
    /// Writes applied to this object so far (1 for the first).
    pub version: u64,
}

impl StoredObject {
    /// Whether this is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.body.is_none()
    }
}

/// One write to an object, checked by the guard inside the commit.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectWrite {
    /// The type.
    pub object_type: ObjectType,
    /// Stripe's id.
    pub id: String,
    /// The new state; `None` deletes (leaves a tombstone).
    pub body: Option<serde_json::Value>,
    /// What it knows as of when.
    pub stamp: Stamp,
    /// What to do in the same second as the stored stamp.
    pub on_tie: OnTie,
    /// What the object's audit trail says about it, if it applies.
    pub note: super::stripe_push::AuditNote,
}

/// A time window of `created` values, `[gte, lt)` in unix seconds, and where its
/// listing stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Inclusive lower bound.
    pub gte: i64,
    /// Exclusive upper bound.
    pub lt: i64,
    /// The last object listed in it (Stripe's `starting_after`), once its listing began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl Window {
    /// A window not listed yet.
    pub fn new(gte: i64, lt: i64) -> Window {
        Window {
            gte,
            lt,
            after: None,
        }
    }
}

/// Where one type's backfill stands. Saved after every round of pages: a restart or a
/// rate limit resumes each window after its last listed object, never from the
/// beginning. A dense window is split as it is listed, and several windows are listed
/// at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeBackfill {
    /// Whether every window has been listed (the type's objects are visible).
    pub done: bool,
    /// When this backfill started: its pages are stamped no older than this, and
    /// objects created after it arrive by event.
    pub started_at: i64,
    /// The windows still to list.
    pub windows: Vec<Window>,
    /// How states written before windows carried their own cursor said where the first
    /// window stood; [`TypeBackfill::normalize`] moves it into that window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_after: Option<String>,
    /// Pages listed so far.
    pub pages: u64,
    /// Objects listed so far.
    pub objects: u64,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

impl TypeBackfill {
    /// Moves a cursor stored the old way (`starting_after`, for the first window) into
    /// its window.
    pub fn normalize(&mut self) {
        if let Some(after) = self.starting_after.take() {
            if let Some(first) = self.windows.first_mut() {
                first.after.get_or_insert(after);
            }
        }
    }

    /// A backfill of everything created before `started_at`.
    pub fn new(started_at: i64) -> TypeBackfill {
        TypeBackfill {
            done: false,
            started_at,
            // Stripe launched in 2011; nothing at it is older.
            windows: vec![Window::new(1_293_840_000, started_at.saturating_add(1))],
            starting_after: None,
            pages: 0,
            objects: 0,
            completed_at: None,
        }
    }
}

/// A linked Stripe account's sync state, committed with the objects it describes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeState {
    /// Backfill progress per mirrored type.
    pub backfill: BTreeMap<ObjectType, TypeBackfill>,
    /// The types whose first backfill has completed: their objects are visible (and
    /// stay visible while a later backfill refreshes them).
    #[serde(default)]
    pub visible: BTreeSet<ObjectType>,
    /// Every event created before this (unix seconds) has been applied: the catch-up
    /// from `/v1/events` starts here. `None` until the first backfill has started.
    pub events_checked_through: Option<i64>,
    /// The newest event applied.
    pub last_event: Option<EventMark>,
    /// Events applied so far.
    pub events_applied: u64,
    /// Events skipped as older than the stored state, or repeats.
    pub events_stale: u64,
    /// Objects re-fetched because of a same-second tie or a doubt.
    pub refetches: u64,
    /// Catch-ups from `/v1/events` run so far.
    pub catch_ups: u64,
    /// Events recognised as the echo of one of acctor's own pushes, whose object the
    /// push's answer had already stored (so they changed nothing and cost no re-fetch).
    #[serde(default)]
    pub echoes: u64,
    /// When the next drift check is due (set once every type is visible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_drift_check: Option<DateTime<Utc>>,
    /// What the last drift check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftReport>,
}

/// What one drift check found: objects whose local copy differed from Stripe's listing
/// (changed or created behind acctor's back: no event said so) and were repaired, and
/// local objects Stripe no longer has, removed once a retrieve confirmed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReport {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Objects compared.
    pub checked: u64,
    /// Objects repaired, by type.
    pub repaired: BTreeMap<ObjectType, u64>,
    /// Objects removed, by type.
    pub removed: BTreeMap<ObjectType, u64>,
    /// The first [`DriftReport::MAX_IDS`] objects repaired or removed, as `type/id`.
    pub ids: Vec<String>,
}

impl DriftReport {
    /// Ids kept in a report.
    pub const MAX_IDS: usize = 100;

    /// Records a repaired (or removed) object.
    pub fn record(&mut self, object_type: ObjectType, id: &str, removed: bool) {
        let counts = if removed {
            &mut self.removed
        } else {
            &mut self.repaired
        };
        *counts.entry(object_type).or_default() += 1;
        if self.ids.len() < Self::MAX_IDS {
            self.ids.push(format!("{object_type}/{id}"));
        }
    }

    /// Objects repaired or removed, all types.
    pub fn total(&self) -> u64 {
        self.repaired.values().sum::<u64>() + self.removed.values().sum::<u64>()
    }
}

impl StripeState {
    /// Whether `object_type`'s backfill has completed (its objects are visible).
    pub fn is_visible(&self, object_type: ObjectType) -> bool {
        self.visible.contains(&object_type)
    }
}

/// An event applied: its id and `created`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMark {
    /// `evt_…`
    pub id: String,
    /// Unix seconds.
    pub created: i64,
}

/// The settings of a linked Stripe account that are not secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeLink {
    /// The types mirrored.
    pub types: Vec<ObjectType>,
    /// The types whose same-second events are re-fetched.
    pub refetch_on_tie: Vec<ObjectType>,
    /// Whether the account is a Connect account reached through the platform's key
    /// (requests carry `Stripe-Account`).
    pub connect: bool,
    /// Whether the key is a live-mode key (its rate budget is live mode's).
    pub livemode: bool,
}

/// What acctor needs to talk to a Stripe account and check its webhooks: both secret,
/// so they are kept sealed together as the account's access token (see
/// [`StripeCredentials::to_token`]) and never returned or logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeCredentials {
    /// The API key (a restricted key with read access to the mirrored types, and write
    /// access to products and prices for pushes, is enough).
    pub api_key: String,
    /// The webhook endpoint secrets (`whsec_…`); two while one is being rotated.
    pub webhook_secrets: Vec<String>,
}

impl fmt::Debug for StripeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeCredentials")
            .field("api_key", &"***")
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish()
    }
}

impl StripeCredentials {
    /// The credentials as the account's (sealed) access token.
    pub fn to_token(&self) -> AccessToken {
        // Provably infallible: two strings and a list of strings always serialize.
        AccessToken::new(serde_json::to_string(self).unwrap_or_default())
    }

    /// The credentials kept in a Stripe account's access token.
    pub fn from_token(token: &AccessToken) -> Option<StripeCredentials> {
        serde_json::from_str(token.expose()).ok()
    }
}

/// A page request over an account's stored objects of one type, by id.
#[derive(Clone, Debug)]
pub struct ObjectQuery {
    /// The account.
    pub account_id: AccountId,
    /// The type.
    pub object_type: ObjectType,
    /// Continue after this id.
    pub after: Option<String>,
    /// At most this many (0 counts as 1).
    pub limit: usize,
}
