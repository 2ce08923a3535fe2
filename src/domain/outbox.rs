//! The outbox's record: one [`OutboxMessage`] per thing acctor still has to send to
//! someone, whatever its kind. The store keeps, schedules and removes messages without
//! knowing what they say; where a message goes is its [`Destination`], and what it
//! says is its [`JsonBody`], fixed when it is enqueued.
//!
//! The body is kept as the exact JSON bytes to send (not a `serde_json::Value`, whose
//! maps re-sort their keys): every attempt, and every version of acctor that reads the
//! message back, sends the same bytes, which is what a receiver verifying signatures
//! and deduplicating by `webhook-id` expects. Alerts are the first kind of message;
//! subscriber webhooks and customer notifications are more [`Destination`]s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Who a message is for. The sender resolves it to an endpoint (URL, signing key,
/// timeout, retry policy); a new user of the outbox is a new variant here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// The on-call alert webhook (`alerts.*` settings): incidents opened and resolved.
    Alerts,
    /// A destination that exists only in tests, to prove the sender routes by
    /// destination without adding a production one.
    #[cfg(test)]
    Test(String),
}

impl Destination {
    /// A short name for logs and metrics labels.
    pub fn name(&self) -> &str {
        match self {
            Destination::Alerts => "alerts",
            #[cfg(test)]
            Destination::Test(name) => name,
        }
    }
}

/// A message's JSON body, kept as the exact bytes that are sent. Stored inline in the
/// message's record as JSON (readable with any JSON tool), compared by its text.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonBody(Box<RawValue>);

impl JsonBody {
    /// The body of `value` serialized as JSON, in its `Serialize` field order.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<JsonBody, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(JsonBody)
    }

    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.get().as_bytes()
    }

    /// The body as JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for JsonBody {
    fn eq(&self, other: &JsonBody) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One undelivered message of the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Store-assigned, increasing with enqueue order; also the stable `webhook-id` of
    /// every delivery attempt.
    pub id: u64,
    /// Who it is for.
    pub destination: Destination,
    /// What it announces (`incident.opened`...), for logs; the body says it too.
    pub event_type: String,
    /// The body sent on every attempt, byte for byte.
    pub payload: JsonBody,
    /// When it was enqueued (deliveries stop after the destination's max age).
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// What the last failed attempt said.
    pub last_error: Option<String>,
}

impl OutboxMessage {
    /// The alert announcing `event_type` of `incident` at `at`, with id `id`, due at
    /// once. Every store builds alerts here, so their bodies are the same bytes
    /// whichever store enqueued them.
    pub fn alert(
        id: u64,
        event_type: crate::domain::incidents::AlertEventType,
        incident: &crate::domain::incidents::Incident,
        at: DateTime<Utc>,
    ) -> Result<OutboxMessage, serde_json::Error> {
        let event = crate::domain::incidents::IncidentEvent {
            event_type,
            timestamp: at,
            data: incident,
        };
        Ok(OutboxMessage {
            id,
            destination: Destination::Alerts,
            event_type: event_type.as_str().to_string(),
            payload: JsonBody::of(&event)?,
            created_at: at,
            next_attempt_at: at,
            attempts: 0,
            last_error: None,
        })
    }
}
