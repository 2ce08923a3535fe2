//! Incidents: conditions that need a human (or at least a human's attention), kept in
//! the store so they survive restarts and can be listed, filtered and alerted on.
//!
//! An incident belongs to one account and has a kind; there is at most one open
//! incident per (account, kind), so opening the same condition again updates it (its
//! details and occurrence count) instead of piling up duplicates. When the condition is
//! lifted (a successful sync, a resume, LOGIN_REPAIRED, a relink) its incident is
//! resolved. Every open and resolve can enqueue an outbound alert in the same store
//! transaction (see [`crate::outbound::alerts`]), so an alert exists exactly when its
//! change does; [`IncidentEvent`] is that alert's body.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::AccountId;

/// What kind of condition an incident describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Syncs failed `actors.max_sync_attempts` times in a row, or the provider
    /// rejected the request itself (a permanent error); the account is marked failed
    /// until resumed.
    SyncFailed,
    /// The provider needs the user to log in again (ITEM_LOGIN_REQUIRED).
    NeedsReauth,
    /// The supervisor gave up restarting the account's actor.
    Quarantined,
    /// The provider announced that consent expires at a deadline.
    PendingExpiration,
    /// The provider announced that the item will be disconnected.
    PendingDisconnect,
    /// The provider no longer accepts the account's access token (invalid, revoked,
    /// item gone); the account is marked `access_revoked` until relinked.
    AccessRevoked,
}

impl IncidentKind {
    /// Every kind, for parsing and documentation.
    pub const ALL: [IncidentKind; 6] = [
        IncidentKind::SyncFailed,
        IncidentKind::NeedsReauth,
        IncidentKind::Quarantined,
        IncidentKind::PendingExpiration,
        IncidentKind::PendingDisconnect,
        IncidentKind::AccessRevoked,
    ];

    /// The snake_case name used in the API and in store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::SyncFailed => "sync_failed",
            IncidentKind::NeedsReauth => "needs_reauth",
            IncidentKind::Quarantined => "quarantined",
            IncidentKind::PendingExpiration => "pending_expiration",
            IncidentKind::PendingDisconnect => "pending_disconnect",
            IncidentKind::AccessRevoked => "access_revoked",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<IncidentKind> {
        IncidentKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How bad it is: a deadline still ahead is a warning, everything else stops syncs.
    pub fn severity(self) -> Severity {
        match self {
            IncidentKind::PendingExpiration | IncidentKind::PendingDisconnect => Severity::Warning,
            _ => Severity::Critical,
        }
    }
}

impl fmt::Display for IncidentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an incident is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something will break unless someone acts (a deadline ahead).
    Warning,
    /// Syncing has stopped for the account.
    Critical,
}

/// An incident as stored and served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    /// Store-assigned, increasing with opening order (newest has the largest id).
    pub id: u64,
    /// What happened: `sync_failed`, `needs_reauth`, `quarantined`,
    /// `pending_expiration` or `pending_disconnect`.
    #[schema(value_type = String, example = "needs_reauth")]
    pub kind: IncidentKind,
    /// How urgent: `warning` or `critical`.
    #[schema(value_type = String, example = "critical")]
    pub severity: Severity,
    /// The account it is about.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// When it was first opened.
    pub opened_at: DateTime<Utc>,
    /// When it was last opened again (details refreshed).
    pub updated_at: DateTime<Utc>,
    /// When it was resolved; `None` while open.
    pub resolved_at: Option<DateTime<Utc>>,
    /// How many times the condition was reported while this incident was open.
    pub occurrences: u32,
    /// Kind-specific facts: error code, request id, attempts, deadline, reason.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl Incident {
    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }
}

/// A request to open (or refresh) the incident of one (account, kind).
#[derive(Clone, Debug)]
pub struct OpenIncident {
    /// The account.
    pub account_id: AccountId,
    /// The kind.
    pub kind: IncidentKind,
    /// Facts to record (replace the previous details of a refreshed incident).
    pub details: serde_json::Value,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Enqueue an outbound alert in the same transaction (only when a new incident
    /// is opened; a refresh is not news).
    pub notify: bool,
}

impl Incident {
    /// A new open incident, `id` drawn by the store, for `open`.
    pub fn opened(id: u64, open: &OpenIncident) -> Incident {
        Incident {
            id,
            kind: open.kind,
            severity: open.kind.severity(),
            account_id: open.account_id.clone(),
            opened_at: open.at,
            updated_at: open.at,
            resolved_at: None,
            occurrences: 1,
            details: open.details.clone(),
        }
    }

    /// The open incident reported again: its details and time refreshed, one more
    /// occurrence.
    pub fn refresh(&mut self, open: &OpenIncident) {
        self.details = open.details.clone();
        self.updated_at = open.at;
        self.occurrences = self.occurrences.saturating_add(1);
    }
}

/// Which incidents to list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Only open ones.
    Open,
    /// Only resolved ones.
    Resolved,
    /// Both (the default).
    #[default]
    All,
}

/// A page request over incidents, newest first.
#[derive(Clone, Debug, Default)]
pub struct IncidentQuery {
    /// Open, resolved or all.
    pub state: IncidentState,
    /// Only this kind.
    pub kind: Option<IncidentKind>,
    /// Only this account.
    pub account_id: Option<AccountId>,
    /// Only incidents opened at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Continue after (older than) this incident id.
    pub after: Option<u64>,
    /// Most incidents returned.
    pub limit: usize,
}

impl IncidentQuery {
    /// Whether `incident` passes the filters (paging aside).
    pub fn matches(&self, incident: &Incident) -> bool {
        let state_ok = match self.state {
            IncidentState::Open => incident.is_open(),
            IncidentState::Resolved => !incident.is_open(),
            IncidentState::All => true,
        };
        state_ok
            && self.kind.is_none_or(|k| k == incident.kind)
            && self
                .account_id
                .as_ref()
                .is_none_or(|a| a == &incident.account_id)
            && self.since.is_none_or(|s| incident.opened_at >= s)
    }
}

/// What an alert announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertEventType {
    /// A new incident was opened.
    #[serde(rename = "incident.opened")]
    Opened,
    /// An incident was resolved.
    #[serde(rename = "incident.resolved")]
    Resolved,
}

impl AlertEventType {
    /// The event's `type` as sent: `incident.opened` or `incident.resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEventType::Opened => "incident.opened",
            AlertEventType::Resolved => "incident.resolved",
        }
    }
}

/// The body of an alert, as POSTed to `alerts.url`: `{"type", "timestamp", "data":
/// incident}`, in that field order. It is here, below the store, because the store
/// builds it inside the transaction that changes the incident (the incident's id only
/// exists there), and keeps the serialized bytes in the outbox so every attempt sends
/// the same ones.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct IncidentEvent<'a> {
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: AlertEventType,
    /// When it happened (the incident change's time, also the message's `created_at`).
    pub timestamp: DateTime<Utc>,
    /// The incident as it was at that moment.
    pub data: &'a Incident,
}
