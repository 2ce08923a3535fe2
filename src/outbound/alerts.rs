//! Alerts: every incident opened or resolved, as the message the sender POSTs to
//! `alerts.url`. The outbox row is written in the same store transaction as the
//! incident change (see `Store::open_incident`), so an alert exists exactly when its
//! change does; its body is [`crate::incidents::IncidentEvent`].

use crate::store::OutboxMessage;

/// The `webhook-id` of a message: stable across its retries.
pub fn message_id(message: &OutboxMessage) -> String {
    format!("msg_acctor_{}", message.id)
}
