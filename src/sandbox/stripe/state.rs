//! The books of every simulated Stripe account: keys, webhook endpoints, objects per
//! type, events, faults, counters, idempotency keys and the seeded random streams.
//! Everything here is synchronous and runs under the sandbox's one mutex, which is what
//! makes an idempotency key exact (the check for an earlier use and the record of a new
//! one are one critical section) and a snapshot of the counters consistent.
//!
//! Nothing here awaits or sends: a change returns the webhook deliveries it causes and
//! the caller queues them once the lock is released.

use std::collections::HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::generate::{self, Draw, Flavor, Refs};
use super::objects::{self, index, Deletion, IdMaker};
use super::settings::StripeFaults;
use super::stats::{SecondMeter, StripeStats};
use super::store::Collection;
use super::webhooks::Delivery;
use crate::domain::stripe::ObjectType;

/// The API version events are rendered in.
pub(super) const API_VERSION: &str = "2024-06-20";
/// How long `/v1/events` lists an event (Stripe keeps 30 days).
pub(super) const EVENT_RETENTION_SECS: i64 = 30 * 86_400;

/// ChaCha streams: ids, then two per account (data, faults), so that injecting faults
/// never changes the data a seed produces, and one account's calls never shift
/// another's draws.
const IDS_STREAM: u64 = 1;
const FIRST_ACCOUNT_STREAM: u64 = 16;

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Whether a draw at `rate` hits; a rate of 0 draws nothing, so turning a fault off
/// does not shift later draws.
pub(super) fn draw(rate: f64, rng: &mut ChaCha8Rng) -> bool {
    rate > 0.0 && rng.gen::<f64>() < rate
}

/// The API request behind a change: its id and idempotency key (both absent for the
/// changes the sandbox makes itself, as for Stripe's automatic events).
#[derive(Clone, Debug, Default)]
pub(super) struct RequestInfo {
    /// `req_…`
    pub id: Option<String>,
    /// The request's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
}

/// A stored answer to a write made with an `Idempotency-Key`.
#[derive(Clone, Debug)]
pub(super) struct SavedAnswer {
    /// `POST /v1/products`, …: a key reused on another endpoint is refused.
    pub endpoint: String,
    /// The request's parameters, canonically ordered.
    pub fingerprint: String,
    /// The answer's status.
    pub status: u16,
    /// The answer's body.
    pub body: String,
}

/// Why a change did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No such account.
    UnknownAccount,
    /// No such object.
    NotFound,
    /// Stripe offers no deletion of the object in its state.
    NotDeletable,
}

/// A change made: the object as it is now (or the DELETE answer), and the deliveries
/// of its event.
#[derive(Debug)]
pub(super) struct Changed {
    /// The object after the change (a DELETE's answer for a removal).
    pub object: Value,
    /// Its event's deliveries, to queue once the lock is released.
    pub deliveries: Vec<Delivery>,
}

/// One simulated Stripe account.
pub(super) struct Account {
    /// `acct_…`
    pub id: String,
    /// Its own key; a Connect account has none (its platform's key reaches it).
    pub api_key: Option<String>,
    /// Its endpoint's secrets (a Connect account's events use its platform's).
    pub webhook_secrets: Vec<String>,
    /// Its endpoint (a Connect account's events go to its platform's).
    pub webhook_url: Option<String>,
    /// The platform, for a Connect account.
    pub platform: Option<String>,
    /// Its objects, per type (indexed by `objects::index`).
    objects: [Collection; 10],
    /// Its events, the last 30 days of the sandbox's clock.
    pub events: Collection,
    pub faults: StripeFaults,
    pub stats: StripeStats,
    /// The calls of the current wall-clock second.
    pub meter: SecondMeter,
    /// Generated data and `mutate`'s choices.
    data_rng: ChaCha8Rng,
    /// Fault draws and shuffled flushes.
    pub fault_rng: ChaCha8Rng,
    /// Whether deliveries wait in `held`.
    pub hold: bool,
    pub held: Vec<Delivery>,
    /// The `created` of every new event while same-second ties are on.
    same_second: Option<i64>,
    /// Stored answers by idempotency key.
    pub idempotency: HashMap<String, SavedAnswer>,
    /// Numbers `mutate`'s edits so each writes a new value.
    rev: u64,
}

impl Account {
    /// The account's objects of `object_type`.
    pub fn objects(&self, object_type: ObjectType) -> &Collection {
        &self.objects[index(object_type)]
    }
}

/// Every account.
pub(super) struct State {
    accounts: HashMap<String, Account>,
    /// API key → account id.
    keys: HashMap<String, String>,
    ids: IdMaker,
    seed: u64,
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl State {
    /// No accounts; ids and data follow `seed`.
    pub fn new(seed: u64) -> State {
        State {
            accounts: HashMap::new(),
            keys: HashMap::new(),
            ids: IdMaker::new(rng(seed, IDS_STREAM)),
            seed,
        }
    }

    /// A fresh id with `prefix` (requests, events).
    pub fn new_id(&mut self, prefix: &str) -> String {
        self.ids.next(prefix)
    }

    /// Opens an account, a Connect account of `platform` when it names one.
    pub fn create_account(&mut self, platform: Option<&str>) -> &Account {
        let id = self.ids.next("acct");
        let ordinal = self.accounts.len() as u64;
        let (api_key, secrets) = if platform.is_some() {
            (None, Vec::new())
        } else {
            let key = format!("sk_test_{}", self.ids.random(24));
            self.keys.insert(key.clone(), id.clone());
            (Some(key), vec![format!("whsec_{}", self.ids.random(32))])
        };
        let account = Account {
            id: id.clone(),
            api_key,
            webhook_secrets: secrets,
            webhook_url: None,
            platform: platform.map(str::to_owned),
            objects: Default::default(),
            events: Collection::default(),
            faults: StripeFaults::default(),
            stats: StripeStats::default(),
            meter: SecondMeter::default(),
            data_rng: rng(self.seed, FIRST_ACCOUNT_STREAM + 2 * ordinal),
            fault_rng: rng(self.seed, FIRST_ACCOUNT_STREAM + 2 * ordinal + 1),
            hold: false,
            held: Vec::new(),
            same_second: None,
            idempotency: HashMap::new(),
            rev: 0,
        };
        self.accounts.entry(id).or_insert(account)
    }

    /// An account.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// An account, to change.
    pub fn account_mut(&mut self, id: &str) -> Option<&mut Account> {
        self.accounts.get_mut(id)
    }

    /// The account `key` belongs to.
    pub fn account_of_key(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Starts (with `Some(now)`) or ends giving every new event of the account the same
    /// `created`; whether the account exists.
    pub fn set_same_second(&mut self, account: &str, at: Option<i64>) -> bool {
        match self.accounts.get_mut(account) {
            Some(account) => {
                account.same_second = at;
                true
            }
            None => false,
        }
    }

    /// Makes `count` objects of history, without events; their ids.
    pub fn generate(
        &mut self,
        account: &str,
        object_type: ObjectType,
        count: usize,
        now: i64,
    ) -> Vec<String> {
        let Some(acct) = self.accounts.get_mut(account) else {
            return Vec::new();
        };
        let mut made = Vec::with_capacity(count);
        let mut previous = None;
        for _ in 0..count {
            let refs = refs(
                &acct.objects,
                object_type,
                &mut acct.data_rng,
                &mut self.ids,
            );
            let created = generate::created_in_past(&mut acct.data_rng, now, &mut previous);
            let id = self.ids.next(objects::prefix(object_type));
            let mut draw = Draw {
                ids: &mut self.ids,
                rng: &mut acct.data_rng,
                now,
                flavor: Flavor::History,
            };
            let text = generate::render(object_type, &id, created, &refs, &mut draw);
            acct.objects[index(object_type)].put(id.clone(), created, text);
            made.push(id);
        }
        made
    }

    /// Creates an object: the type's defaults for a new object, then `fields` over them
    /// (which may set `id` and `created`, for tests that need them).
    pub fn create(
        &mut self,
        account: &str,
        object_type: ObjectType,
        fields: Map<String, Value>,
        now: i64,
        request: Option<RequestInfo>,
    ) -> Result<Changed, Refusal> {
        let acct = self
            .accounts
            .get_mut(account)
            .ok_or(Refusal::UnknownAccount)?;
        let refs = refs(
            &acct.objects,
            object_type,
            &mut acct.data_rng,
            &mut self.ids,
        );
        let id = match fields.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => self.ids.next(objects::prefix(object_type)),
        };
        let mut draw = Draw {
            ids: &mut self.ids,
            rng: &mut acct.data_rng,
            now,
            flavor: Flavor::New,
        };
        let text = generate::render(object_type, &id, now, &refs, &mut draw);
        // The rendering is the sandbox's own JSON: it always parses.
        let mut object = as_map(serde_json::from_str(&text).unwrap_or(Value::Null));
        let mut fields = fields;
        fields.remove("id");
        objects::merge(&mut object, fields);
        let created = objects::created_of(&object);
        let object = Value::Object(object);
        acct.objects[index(object_type)].put(id, created, object.to_string());
        let kind = match &object {
            Value::Object(map) => objects::created_event(object_type, map),
            _ => String::new(),
        };
        let deliveries = match request {
            Some(request) => self.emit(account, &kind, object.clone(), None, request, now),
            None => Vec::new(),
        };
        Ok(Changed { object, deliveries })
    }

    /// Applies `patch` to an object (a shallow merge). A product's `updated` moves when
    /// anything changed. No event when nothing changed.
    pub fn update(
        &mut self,
        account: &str,
        object_type: ObjectType,
        id: &str,
        patch: Map<String, Value>,
        now: i64,
        request: Option<RequestInfo>,
    ) -> Result<Changed, Refusal> {
        let acct = self
            .accounts
            .get_mut(account)
            .ok_or(Refusal::UnknownAccount)?;
        let collection = &mut acct.objects[index(object_type)];
        let text = collection.get(id).ok_or(Refusal::NotFound)?;
        let before = as_map(serde_json::from_str(text).unwrap_or(Value::Null));
        let mut after = before.clone();
        let mut previous = objects::merge(&mut after, patch);
        if previous.is_empty() {
            return Ok(Changed {
                object: Value::Object(after),
                deliveries: Vec::new(),
            });
        }
        if object_type == ObjectType::Products && !previous.contains_key("updated") {
            let mut touched = Map::new();
            touched.insert("updated".into(), now.into());
            previous.extend(objects::merge(&mut after, touched));
        }
        let kind = objects::updated_event(object_type, &before, &after);
        let created = objects::created_of(&after);
        let object = Value::Object(after);
        collection.put(id.to_owned(), created, object.to_string());
        let deliveries = match request {
            Some(request) => self.emit(
                account,
                &kind,
                object.clone(),
                Some(Value::Object(previous)),
                request,
                now,
            ),
            None => Vec::new(),
        };
        Ok(Changed { object, deliveries })
    }

    /// Deletes an object as Stripe would: removed (answer `{id, object, deleted:
    /// true}`), cancelled (answer the cancelled object), or refused.
    pub fn delete(
        &mut self,
        account: &str,
        object_type: ObjectType,
        id: &str,
        now: i64,
        request: Option<RequestInfo>,
    ) -> Result<Changed, Refusal> {
        let acct = self
            .accounts
            .get_mut(account)
            .ok_or(Refusal::UnknownAccount)?;
        let full_object = acct.faults.deleted_events_full_object;
        let collection = &mut acct.objects[index(object_type)];
        let text = collection.get(id).ok_or(Refusal::NotFound)?;
        let object = as_map(serde_json::from_str(text).unwrap_or(Value::Null));
        match objects::deletion(object_type, &object, now) {
            Deletion::Refuse => Err(Refusal::NotDeletable),
            Deletion::Cancel(patch) => self.update(account, object_type, id, patch, now, request),
            Deletion::Remove => {
                collection.remove(id);
                let stub = objects::deleted_stub(object_type, id);
                let event_object = if full_object {
                    Value::Object(object)
                } else {
                    stub.clone()
                };
                let deliveries = match request {
                    Some(request) => self.emit(
                        account,
                        &objects::deleted_event(object_type),
                        event_object,
                        None,
                        request,
                        now,
                    ),
                    None => Vec::new(),
                };
                Ok(Changed {
                    object: stub,
                    deliveries,
                })
            }
        }
    }

    /// `changes` random creates, updates and deletes across the types, each with its
    /// event; how many were made, and the deliveries.
    pub fn mutate(&mut self, account: &str, changes: usize, now: i64) -> (usize, Vec<Delivery>) {
        let mut deliveries = Vec::new();
        let mut made = 0;
        for _ in 0..changes {
            let Some(acct) = self.accounts.get_mut(account) else {
                break;
            };
            let object_type = ObjectType::ALL[acct.data_rng.gen_range(0..ObjectType::ALL.len())];
            let roll: f64 = acct.data_rng.gen();
            acct.rev += 1;
            let rev = acct.rev;
            let existing = acct.objects[index(object_type)]
                .random_id(&mut acct.data_rng)
                .map(str::to_owned);
            let request = Some(RequestInfo::default());
            let changed = match existing {
                Some(id) if roll < 0.15 => {
                    match self.delete(account, object_type, &id, now, request.clone()) {
                        Err(Refusal::NotDeletable) => {
                            self.mutate_one(account, object_type, &id, now, rev)
                        }
                        other => other,
                    }
                }
                Some(id) if roll < 0.6 => self.mutate_one(account, object_type, &id, now, rev),
                _ => self.create(account, object_type, Map::new(), now, request),
            };
            if let Ok(changed) = changed {
                made += 1;
                deliveries.extend(changed.deliveries);
            }
        }
        (made, deliveries)
    }

    fn mutate_one(
        &mut self,
        account: &str,
        object_type: ObjectType,
        id: &str,
        now: i64,
        rev: u64,
    ) -> Result<Changed, Refusal> {
        let acct = self
            .accounts
            .get_mut(account)
            .ok_or(Refusal::UnknownAccount)?;
        let text = acct.objects[index(object_type)]
            .get(id)
            .ok_or(Refusal::NotFound)?;
        let object = as_map(serde_json::from_str(text).unwrap_or(Value::Null));
        let patch = generate::mutation(object_type, &object, now, &mut acct.data_rng, rev);
        self.update(
            account,
            object_type,
            id,
            patch,
            now,
            Some(RequestInfo::default()),
        )
    }

    /// Records an event of `account` and returns its deliveries (none when it has no
    /// endpoint, the drop fault hits, or deliveries are held).
    fn emit(
        &mut self,
        account: &str,
        kind: &str,
        object: Value,
        previous: Option<Value>,
        request: RequestInfo,
        now: i64,
    ) -> Vec<Delivery> {
        let id = self.ids.next("evt");
        // A Connect account's events go to its platform's endpoint, signed with its
        // secrets.
        let endpoint = self.accounts.get(account).and_then(|acct| {
            let owner = match &acct.platform {
                Some(platform) => self.accounts.get(platform)?,
                None => acct,
            };
            Some((owner.webhook_url.clone()?, owner.webhook_secrets.clone()))
        });
        let Some(acct) = self.accounts.get_mut(account) else {
            return Vec::new();
        };
        let created = acct.same_second.unwrap_or(now);
        let mut data = json!({ "object": object });
        if let Some(previous) = previous {
            data["previous_attributes"] = previous;
        }
        let mut event = json!({
            "id": id,
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": data,
            "livemode": false,
            "pending_webhooks": u8::from(endpoint.is_some()),
            "request": {"id": request.id, "idempotency_key": request.idempotency_key},
            "type": kind,
        });
        if acct.platform.is_some() {
            event["account"] = Value::from(acct.id.clone());
        }
        let body: Arc<str> = Arc::from(event.to_string());
        acct.events.put(id.clone(), created, body.to_string());
        acct.events.prune_before(now - EVENT_RETENTION_SECS);
        acct.stats.events += 1;
        let Some((url, secrets)) = endpoint else {
            return Vec::new();
        };
        if draw(acct.faults.webhook_drop_rate, &mut acct.fault_rng) {
            acct.stats.webhooks_dropped += 1;
            return Vec::new();
        }
        let copies = 1 + usize::from(draw(
            acct.faults.webhook_duplicate_rate,
            &mut acct.fault_rng,
        ));
        let delivery = Delivery {
            account: acct.id.clone(),
            event_id: id,
            url,
            secrets,
            body,
            attempts: acct.faults.webhook_attempts,
            delay_ms: acct.faults.webhook_delay_ms,
            shuffle: acct.faults.webhook_shuffle,
        };
        let deliveries = vec![delivery; copies];
        if acct.hold {
            acct.held.extend(deliveries);
            return Vec::new();
        }
        deliveries
    }
}

/// The ids a new `object_type` object points at: existing objects of the account when
/// it has some, else made-up ids (Stripe objects may point at objects acctor never saw).
fn refs(
    objects: &[Collection; 10],
    object_type: ObjectType,
    rng: &mut ChaCha8Rng,
    ids: &mut IdMaker,
) -> Refs {
    let mut refs = Refs::default();
    for needed in Refs::needed(object_type) {
        let id = match objects[index(*needed)].random_id(rng) {
            Some(id) => id.to_owned(),
            None => ids.next(objects::prefix(*needed)),
        };
        refs.set(*needed, id);
    }
    refs
}
