//! Alerts: every incident opened or resolved, as the message the sender POSTs to
//! `alerts.url`. The outbox row is written in the same store transaction as the
//! incident change (see `Store::open_incident`), so an alert exists exactly when its
//! change does.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::incidents::{AlertEventType, AlertRecord, Incident};

/// The `webhook-id` of an alert: stable across its retries.
pub fn message_id(record: &AlertRecord) -> String {
    format!("msg_acctor_{}", record.id)
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    event_type: AlertEventType,
    timestamp: DateTime<Utc>,
    data: &'a Incident,
}

/// The JSON body of an alert (the same bytes on every attempt).
pub fn event_body(record: &AlertRecord) -> Vec<u8> {
    let event = Event {
        event_type: record.event_type,
        timestamp: record.created_at,
        data: &record.incident,
    };
    // Serializing plain data with string keys cannot fail.
    serde_json::to_vec(&event).unwrap_or_default()
}
