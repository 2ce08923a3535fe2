//! What Stripe's object types are like, as far as the sandbox imitates them: id
//! prefixes, the names of the events each change causes, how each type can be deleted
//! (really, by cancelling, or not at all), and the shallow merge an update is, with the
//! `previous_attributes` it reports.
//!
//! Event names are Stripe's: a type has no `*.updated` event where Stripe has none (a
//! payment intent's changes are named after the status it reaches), and a status
//! change that Stripe announces with its own event (`invoice.paid`, `payout.paid`,
//! `charge.refunded`, `charge.dispute.closed`) is named so.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use crate::domain::stripe::ObjectType;

/// Characters of generated ids, in ASCII order, so that fixed-width base-62 numbers sort
/// like the numbers.
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Width of an id's sequence part: 62^8 ids before it overflows.
const SEQ_CHARS: usize = 8;
/// Random characters after the sequence part (Stripe's ids have 14 to 24 characters
/// after the prefix).
const RANDOM_CHARS: usize = 6;

/// Makes ids: `{prefix}_{sequence}{random}`. The sequence makes later ids sort after
/// earlier ones (Stripe lists same-second objects newest first, by id); the random
/// part keeps them from looking like counters.
#[derive(Debug)]
pub(super) struct IdMaker {
    seq: u64,
    rng: ChaCha8Rng,
}

impl IdMaker {
    /// Ids drawn from `rng`.
    pub fn new(rng: ChaCha8Rng) -> IdMaker {
        IdMaker { seq: 0, rng }
    }

    /// A fresh id with `prefix`.
    pub fn next(&mut self, prefix: &str) -> String {
        self.seq += 1;
        let mut id = String::with_capacity(prefix.len() + 1 + SEQ_CHARS + RANDOM_CHARS);
        id.push_str(prefix);
        id.push('_');
        let mut digits = [b'0'; SEQ_CHARS];
        let mut n = self.seq;
        for digit in digits.iter_mut().rev() {
            *digit = BASE62[(n % 62) as usize];
            n /= 62;
        }
        id.extend(digits.iter().map(|&b| char::from(b)));
        id.push_str(&self.random(RANDOM_CHARS));
        id
    }

    /// `n` random base-62 characters (secrets, key suffixes).
    pub fn random(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(BASE62[self.rng.gen_range(0..BASE62.len())]))
            .collect()
    }
}

/// The id prefix of a type's objects.
pub(super) fn prefix(object_type: ObjectType) -> &'static str {
    match object_type {
        ObjectType::Products => "prod",
        ObjectType::Prices => "price",
        ObjectType::Customers => "cus",
        ObjectType::Subscriptions => "sub",
        ObjectType::Invoices => "in",
        ObjectType::PaymentIntents => "pi",
        ObjectType::Charges => "ch",
        ObjectType::Refunds => "re",
        ObjectType::Disputes => "dp",
        ObjectType::Payouts => "po",
    }
}

/// The position of a type in [`ObjectType::ALL`], to index per-type arrays.
pub(super) fn index(object_type: ObjectType) -> usize {
    ObjectType::ALL
        .iter()
        .position(|t| *t == object_type)
        // Every variant is in ALL (its definition lists them all).
        .unwrap_or(0)
}

/// The start of a type's event names (`customer.subscription`, `charge.dispute`).
fn event_prefix(object_type: ObjectType) -> &'static str {
    match object_type {
        ObjectType::Subscriptions => "customer.subscription",
        ObjectType::Disputes => "charge.dispute",
        other => other.object_name(),
    }
}

fn status(object: &Map<String, Value>) -> Option<&str> {
    object.get("status").and_then(Value::as_str)
}

/// The event announcing a new object.
pub(super) fn created_event(object_type: ObjectType, object: &Map<String, Value>) -> String {
    let name = match (object_type, status(object)) {
        // Stripe has no `charge.created`: a charge is announced by its outcome.
        (ObjectType::Charges, Some("failed")) => "failed",
        (ObjectType::Charges, Some("pending")) => "pending",
        (ObjectType::Charges, _) => "succeeded",
        _ => "created",
    };
    format!("{}.{name}", event_prefix(object_type))
}

/// The event announcing a change from `before` to `after`.
pub(super) fn updated_event(
    object_type: ObjectType,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> String {
    let reached = status(after).filter(|s| status(before) != Some(*s));
    let name = match (object_type, reached) {
        (ObjectType::Subscriptions, Some("canceled")) => "deleted",
        (ObjectType::Invoices, Some("open")) => "finalized",
        (ObjectType::Invoices, Some("paid")) => "paid",
        (ObjectType::Invoices, Some("void")) => "voided",
        (ObjectType::Invoices, Some("uncollectible")) => "marked_uncollectible",
        (ObjectType::PaymentIntents, Some("succeeded")) => "succeeded",
        (ObjectType::PaymentIntents, Some("canceled")) => "canceled",
        (ObjectType::PaymentIntents, Some("processing")) => "processing",
        (ObjectType::PaymentIntents, Some("requires_action")) => "requires_action",
        (ObjectType::PaymentIntents, Some("requires_payment_method")) => "payment_failed",
        // No `payment_intent.updated` exists; the other changes Stripe announces are
        // about the capturable amount.
        (ObjectType::PaymentIntents, _) => "amount_capturable_updated",
        (ObjectType::Charges, _)
            if after.get("amount_refunded") != before.get("amount_refunded")
                || after.get("refunded") != before.get("refunded") =>
        {
            "refunded"
        }
        (ObjectType::Disputes, Some("won" | "lost")) => "closed",
        (ObjectType::Payouts, Some("paid")) => "paid",
        (ObjectType::Payouts, Some("failed")) => "failed",
        (ObjectType::Payouts, Some("canceled")) => "canceled",
        _ => "updated",
    };
    format!("{}.{name}", event_prefix(object_type))
}

/// How an object of a type goes away.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Deletion {
    /// Gone for good: `*.deleted`, then 404.
    Remove,
    /// Ends but stays retrievable: this patch is applied as an update (its event is the
    /// status's, e.g. `customer.subscription.deleted`).
    Cancel(Map<String, Value>),
    /// Stripe offers no way to delete or cancel it in its current state.
    Refuse,
}

/// How `object` (of `object_type`) would be deleted at `now`.
pub(super) fn deletion(object_type: ObjectType, object: &Map<String, Value>, now: i64) -> Deletion {
    let mut patch = Map::new();
    match (object_type, status(object)) {
        (ObjectType::Products | ObjectType::Prices | ObjectType::Customers, _) => Deletion::Remove,
        (ObjectType::Invoices, Some("draft")) => Deletion::Remove,
        (ObjectType::Subscriptions, Some(s)) if s != "canceled" => {
            patch.insert("status".into(), "canceled".into());
            patch.insert("canceled_at".into(), now.into());
            patch.insert("ended_at".into(), now.into());
            Deletion::Cancel(patch)
        }
        (ObjectType::PaymentIntents, Some(s)) if !matches!(s, "succeeded" | "canceled") => {
            patch.insert("status".into(), "canceled".into());
            patch.insert("canceled_at".into(), now.into());
            patch.insert("cancellation_reason".into(), "requested_by_customer".into());
            Deletion::Cancel(patch)
        }
        (ObjectType::Payouts, Some("pending")) => {
            patch.insert("status".into(), "canceled".into());
            Deletion::Cancel(patch)
        }
        _ => Deletion::Refuse,
    }
}

/// The answer to a DELETE, and the object of a `*.deleted` event when an account sends
/// that shape (`StripeFaults::deleted_events_full_object` off).
pub(super) fn deleted_stub(object_type: ObjectType, id: &str) -> Value {
    serde_json::json!({"id": id, "object": object_type.object_name(), "deleted": true})
}

/// The name of a `*.deleted` event.
pub(super) fn deleted_event(object_type: ObjectType) -> String {
    format!("{}.deleted", event_prefix(object_type))
}

/// Sets every field of `patch` on `object` (a shallow merge: a nested object is
/// replaced whole); returns the previous values of the fields that changed (`null` for
/// a field that was absent). `id` and `object` never change.
pub(super) fn merge(
    object: &mut Map<String, Value>,
    patch: Map<String, Value>,
) -> Map<String, Value> {
    let mut previous = Map::new();
    for (field, value) in patch {
        if field == "id" || field == "object" || object.get(&field) == Some(&value) {
            continue;
        }
        let old = object.insert(field.clone(), value).unwrap_or(Value::Null);
        previous.insert(field, old);
    }
    previous
}

/// The `created` of an object (0 when it has none, which only a hand-made object can
/// lack).
pub(super) fn created_of(object: &Map<String, Value>) -> i64 {
    object.get("created").and_then(Value::as_i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let mut ids = IdMaker::new(ChaCha8Rng::seed_from_u64(3));
        let made: Vec<String> = (0..200).map(|_| ids.next("prod")).collect();
        let mut sorted = made.clone();
        sorted.sort();
        assert_eq!(made, sorted);
        assert!(made[0].starts_with("prod_0000000") && made[0].len() == 5 + 14);
    }

    #[test]
    fn events_are_named_as_at_stripe() {
        let draft = map(json!({"status": "draft"}));
        let open = map(json!({"status": "open"}));
        assert_eq!(
            updated_event(ObjectType::Invoices, &draft, &open),
            "invoice.finalized"
        );
        assert_eq!(
            updated_event(ObjectType::Invoices, &open, &open),
            "invoice.updated"
        );
        let active = map(json!({"status": "active"}));
        let canceled = map(json!({"status": "canceled"}));
        assert_eq!(
            updated_event(ObjectType::Subscriptions, &active, &canceled),
            "customer.subscription.deleted"
        );
        let charge = map(json!({"status": "succeeded", "refunded": false}));
        let refunded = map(json!({"status": "succeeded", "refunded": true}));
        assert_eq!(
            updated_event(ObjectType::Charges, &charge, &refunded),
            "charge.refunded"
        );
        assert_eq!(
            created_event(ObjectType::Charges, &charge),
            "charge.succeeded"
        );
        assert_eq!(
            created_event(ObjectType::Disputes, &charge),
            "charge.dispute.created"
        );
        assert_eq!(deleted_event(ObjectType::Products), "product.deleted");
    }

    #[test]
    fn deletion_follows_what_stripe_allows() {
        let now = 1_700_000_000;
        assert_eq!(
            deletion(ObjectType::Products, &Map::new(), now),
            Deletion::Remove
        );
        assert_eq!(
            deletion(ObjectType::Invoices, &map(json!({"status": "paid"})), now),
            Deletion::Refuse
        );
        let Deletion::Cancel(patch) = deletion(
            ObjectType::Subscriptions,
            &map(json!({"status": "active"})),
            now,
        ) else {
            panic!("a subscription is cancelled")
        };
        assert_eq!(patch["status"], "canceled");
        assert_eq!(
            deletion(ObjectType::Charges, &Map::new(), now),
            Deletion::Refuse
        );
    }

    #[test]
    fn merge_reports_what_changed() {
        let mut object = map(json!({"id": "prod_1", "name": "A", "active": true}));
        let previous = merge(
            &mut object,
            map(json!({"id": "x", "name": "B", "active": true, "url": "u"})),
        );
        assert_eq!(Value::Object(previous), json!({"name": "A", "url": null}));
        assert_eq!(object["id"], "prod_1");
        assert_eq!(object["name"], "B");
    }
}
