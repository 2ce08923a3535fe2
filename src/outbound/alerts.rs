//! Alerts, the first user of the outbox: every incident opened or resolved, POSTed to
//! `alerts.url` so an on-call tool hears about accounts that stopped syncing without
//! polling `GET /v1/incidents`.
//!
//! How an incident change becomes a message: the incident store enqueues it in the
//! same transaction as the change (`IncidentStore::open_incident` and
//! `resolve_incident` with `notify`), as an [`OutboxMessage`] to
//! [`Destination::Alerts`] whose body is [`crate::domain::incidents::IncidentEvent`] (`{"type":
//! "incident.opened" | "incident.resolved", "timestamp", "data": incident}`), so an
//! alert exists exactly when its change does. The body's shape lives beside the
//! incident rather than here because the store builds it, and the store sits below
//! `outbound/`. What is here is the destination's side: how `alerts.*` becomes the
//! endpoint the sender delivers alerts to.
//!
//! [`OutboxMessage`]: crate::store::OutboxMessage
//! [`Destination::Alerts`]: crate::store::Destination::Alerts

use super::endpoint::{Endpoint, OutboundError};
use super::signing::decode_secret;
use crate::config::AlertSettings;

/// The alerts' endpoint from `alerts.*`; `None` when alerts are off (no URL).
pub fn endpoint(settings: &AlertSettings) -> Result<Option<Endpoint>, OutboundError> {
    if settings.url.is_empty() {
        return Ok(None);
    }
    let key = decode_secret(&settings.secret).ok_or(OutboundError::BadSecret("alerts.secret"))?;
    Ok(Some(Endpoint {
        url: settings.url.clone(),
        key,
        request_timeout: settings.request_timeout,
        retry_initial: settings.retry_initial,
        retry_max: settings.retry_max,
        max_age: settings.max_age,
        noun: "alert",
    }))
}
