//! Stripe's JSON shapes, as far as acctor reads them: lists, events, error objects.
//! Objects themselves stay `serde_json::Value`: acctor mirrors them verbatim and reads
//! only `id`, `object`, `created` and `deleted`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A page of a list endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct List<T> {
    /// Always `"list"`.
    pub object: String,
    /// The page, newest first.
    pub data: Vec<T>,
    /// Whether another page follows (pass the last id as `starting_after`).
    pub has_more: bool,
    /// The endpoint's path.
    pub url: String,
}

/// An event, as delivered by webhook and listed by `/v1/events`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Event {
    /// `evt_…`
    pub id: String,
    /// Always `"event"`.
    pub object: String,
    /// The Connect account it is about (absent for the platform's own events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The API version its object is rendered in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// When it happened (unix seconds).
    pub created: i64,
    /// `product.updated`, `invoice.paid`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The object as of the event.
    pub data: EventData,
    /// Live or test mode.
    #[serde(default)]
    pub livemode: bool,
    /// Deliveries still pending.
    #[serde(default)]
    pub pending_webhooks: u64,
    /// The API request that caused it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<EventRequest>,
}

/// An event's object.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct EventData {
    /// The object as of the event (for a deletion, as it was just before).
    pub object: Value,
    /// The fields an `*.updated` changed, with their previous values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_attributes: Option<Value>,
}

/// The request behind an event.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct EventRequest {
    /// `req_…`, absent for events Stripe made itself.
    #[serde(default)]
    pub id: Option<String>,
    /// The request's `Idempotency-Key`: how acctor recognises its own pushes.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl Event {
    /// The object's id.
    pub fn object_id(&self) -> Option<&str> {
        self.data.object.get("id").and_then(Value::as_str)
    }

    /// The object's `object` field (`product`, `payment_intent`, …).
    pub fn object_name(&self) -> Option<&str> {
        self.data.object.get("object").and_then(Value::as_str)
    }

    /// Whether the event deleted its object. Stripe's `*.deleted` events carry the
    /// whole object as it was (only the type says it is gone); an object saying
    /// `deleted: true` (the DELETE answer's shape) is gone too.
    /// `customer.subscription.deleted` is the exception: a cancellation, after which the
    /// subscription still exists (retrievable, `status: canceled`), so it is an update.
    pub fn deletes(&self) -> bool {
        if self.data.object.get("deleted").and_then(Value::as_bool) == Some(true) {
            return true;
        }
        self.kind.ends_with(".deleted") && self.kind != "customer.subscription.deleted"
    }
}

/// Stripe's error envelope.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorObject,
}

/// Stripe's error object.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ErrorObject {
    /// `api_error`, `card_error`, `idempotency_error`, `invalid_request_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// A short code (`resource_missing`, `rate_limit`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The parameter at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}
