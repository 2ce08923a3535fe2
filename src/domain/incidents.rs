//! Incidents: conditions that need a human (or at least a human's attention), kept in
//! the store so they survive restarts and can be listed, filtered and alerted on.
//!
//! An incident is about one subject, an account or an operation ([`IncidentSubject`]),
//! and has a kind; there is at most one open incident per (subject, kind), so opening
//! the same condition again updates it (its details and occurrence count) instead of
//! piling up duplicates. When the condition is lifted (a successful sync, a resume,
//! LOGIN_REPAIRED, a relink, an operation moving on) its incident is resolved. Every open and resolve can enqueue an outbound alert in the same store
//! transaction (see [`crate::outbound::alerts`]), so an alert exists exactly when its
//! change does; [`IncidentEvent`] is that alert's body.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::operations::OperationId;
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
    /// An account opening's outcome did not arrive (neither by webhook nor by polling)
    /// by its deadline: a customer is waiting. About an operation.
    AccountOpeningWebhookNotReceived,
    /// A step of an operation (e.g. the virtual card after an opening) failed and
    /// needs a human. About an operation.
    OperationStepFailed,
    /// An operation ended failed. About an operation.
    OperationFailed,
}

impl IncidentKind {
    /// Every kind, for parsing and documentation.
    pub const ALL: [IncidentKind; 9] = [
        IncidentKind::SyncFailed,
        IncidentKind::NeedsReauth,
        IncidentKind::Quarantined,
        IncidentKind::PendingExpiration,
        IncidentKind::PendingDisconnect,
        IncidentKind::AccessRevoked,
        IncidentKind::AccountOpeningWebhookNotReceived,
        IncidentKind::OperationStepFailed,
        IncidentKind::OperationFailed,
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
            IncidentKind::AccountOpeningWebhookNotReceived => {
                "account_opening_webhook_not_received"
            }
            IncidentKind::OperationStepFailed => "operation_step_failed",
            IncidentKind::OperationFailed => "operation_failed",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<IncidentKind> {
        IncidentKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How bad it is: a deadline still ahead is a warning; everything else stops an
    /// account's syncs or keeps a customer waiting on an operation.
    pub fn severity(self) -> Severity {
        match self {
            IncidentKind::PendingExpiration | IncidentKind::PendingDisconnect => Severity::Warning,
            IncidentKind::SyncFailed
            | IncidentKind::NeedsReauth
            | IncidentKind::Quarantined
            | IncidentKind::AccessRevoked
            | IncidentKind::AccountOpeningWebhookNotReceived
            | IncidentKind::OperationStepFailed
            | IncidentKind::OperationFailed => Severity::Critical,
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
    /// Syncing has stopped for the account, or a customer waits on an operation that
    /// is stuck or failed.
    Critical,
}

/// What an incident is about: an account or an operation. Ids of the two never collide
/// (account ids start `acc_`, operation ids `op_`), so [`IncidentSubject::key`] alone
/// names the subject in store keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IncidentSubject {
    /// A linked (or unlinked) account.
    Account(AccountId),
    /// An operation (an account opening).
    Operation(OperationId),
}

impl IncidentSubject {
    /// The subject's id as a string: its key in the stores' open-incident indexes.
    pub fn key(&self) -> &str {
        match self {
            IncidentSubject::Account(id) => id.as_str(),
            IncidentSubject::Operation(id) => id.as_str(),
        }
    }

    /// The account, when it is one.
    pub fn account_id(&self) -> Option<&AccountId> {
        match self {
            IncidentSubject::Account(id) => Some(id),
            IncidentSubject::Operation(_) => None,
        }
    }

    /// The operation, when it is one.
    pub fn operation_id(&self) -> Option<&OperationId> {
        match self {
            IncidentSubject::Account(_) => None,
            IncidentSubject::Operation(id) => Some(id),
        }
    }
}

impl fmt::Display for IncidentSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl From<AccountId> for IncidentSubject {
    fn from(id: AccountId) -> Self {
        IncidentSubject::Account(id)
    }
}

impl From<OperationId> for IncidentSubject {
    fn from(id: OperationId) -> Self {
        IncidentSubject::Operation(id)
    }
}

/// An incident as stored and served. Exactly one of `account_id` and `operation_id` is
/// set (see [`Incident::subject`]); the absent one is left out of the JSON, so an
/// account's incident reads (and is sent in alerts) as it did before operations
/// existed, and records written then (`account_id` always present) still decode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    /// Store-assigned, increasing with opening order (newest has the largest id).
    pub id: u64,
    /// What happened: `sync_failed`, `needs_reauth`, `quarantined`,
    /// `pending_expiration`, `pending_disconnect`, `access_revoked` (about an account);
    /// `account_opening_webhook_not_received`, `operation_step_failed`,
    /// `operation_failed` (about an operation).
    #[schema(value_type = String, example = "needs_reauth")]
    pub kind: IncidentKind,
    /// How urgent: `warning` or `critical`.
    #[schema(value_type = String, example = "critical")]
    pub severity: Severity,
    /// The account it is about; absent when it is about an operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub account_id: Option<AccountId>,
    /// The operation it is about; absent when it is about an account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub operation_id: Option<OperationId>,
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

    /// What it is about. `None` only for a record that breaks the one-subject rule
    /// (both ids set, or neither), which no store writes and the stores refuse to read.
    pub fn subject(&self) -> Option<IncidentSubject> {
        match (&self.account_id, &self.operation_id) {
            (Some(account), None) => Some(IncidentSubject::Account(account.clone())),
            (None, Some(operation)) => Some(IncidentSubject::Operation(operation.clone())),
            _ => None,
        }
    }
}

/// A request to open (or refresh) the incident of one (subject, kind).
#[derive(Clone, Debug)]
pub struct OpenIncident {
    /// The account or operation it is about.
    pub subject: IncidentSubject,
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
            account_id: open.subject.account_id().cloned(),
            operation_id: open.subject.operation_id().cloned(),
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
    /// Only this operation.
    pub operation_id: Option<OperationId>,
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
                .is_none_or(|a| incident.account_id.as_ref() == Some(a))
            && self
                .operation_id
                .as_ref()
                .is_none_or(|o| incident.operation_id.as_ref() == Some(o))
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn incident(subject: IncidentSubject) -> Incident {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("valid time");
        Incident::opened(
            7,
            &OpenIncident {
                subject,
                kind: IncidentKind::OperationFailed,
                details: json!({}),
                at,
                notify: false,
            },
        )
    }

    #[test]
    fn a_subject_is_its_id_and_sets_exactly_one_field() {
        let account = IncidentSubject::Account(AccountId("acc_1".into()));
        let operation = IncidentSubject::Operation(OperationId("op_1".into()));
        assert_eq!(
            (account.key(), account.to_string()),
            ("acc_1", "acc_1".into())
        );
        assert_eq!(
            (operation.key(), operation.to_string()),
            ("op_1", "op_1".into())
        );
        let about_account = incident(account.clone());
        assert_eq!(
            (
                about_account.account_id.as_ref(),
                about_account.operation_id.as_ref()
            ),
            (account.account_id(), None)
        );
        assert_eq!(about_account.subject(), Some(account));
        let about_operation = incident(operation.clone());
        assert_eq!(about_operation.account_id, None);
        assert_eq!(about_operation.subject(), Some(operation));
        let mut both = about_operation.clone();
        both.account_id = Some(AccountId("acc_1".into()));
        assert_eq!(both.subject(), None);
        both.account_id = None;
        both.operation_id = None;
        assert_eq!(both.subject(), None);
    }

    #[test]
    fn json_leaves_out_the_absent_id_and_reads_records_from_before_operations() {
        let about_account = incident(IncidentSubject::Account(AccountId("acc_1".into())));
        let value = serde_json::to_value(&about_account).expect("json");
        assert_eq!(value["account_id"], "acc_1");
        assert!(value.get("operation_id").is_none(), "{value}");
        let about_operation = incident(IncidentSubject::Operation(OperationId("op_1".into())));
        let value = serde_json::to_value(&about_operation).expect("json");
        assert_eq!(value["operation_id"], "op_1");
        assert!(value.get("account_id").is_none(), "{value}");
        // As every version before operations wrote it.
        let old = json!({
            "id": 3, "kind": "needs_reauth", "severity": "critical", "account_id": "acc_old",
            "opened_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "resolved_at": null, "occurrences": 2, "details": {"code": "X"},
        });
        let read: Incident = serde_json::from_value(old).expect("an old record");
        assert_eq!(
            read.subject(),
            Some(IncidentSubject::Account(AccountId("acc_old".into())))
        );
    }

    #[test]
    fn every_kind_has_one_name_and_operations_kinds_are_critical() {
        for kind in IncidentKind::ALL {
            assert_eq!(IncidentKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                json!(kind.as_str())
            );
        }
        for kind in [
            IncidentKind::AccountOpeningWebhookNotReceived,
            IncidentKind::OperationStepFailed,
            IncidentKind::OperationFailed,
        ] {
            assert_eq!(kind.severity(), Severity::Critical, "{kind}");
        }
    }

    #[test]
    fn a_query_filters_by_account_and_by_operation() {
        let about_account = incident(IncidentSubject::Account(AccountId("acc_1".into())));
        let about_operation = incident(IncidentSubject::Operation(OperationId("op_1".into())));
        let by_operation = IncidentQuery {
            operation_id: Some(OperationId("op_1".into())),
            ..Default::default()
        };
        assert!(by_operation.matches(&about_operation));
        assert!(!by_operation.matches(&about_account));
        let by_account = IncidentQuery {
            account_id: Some(AccountId("acc_1".into())),
            ..Default::default()
        };
        assert!(by_account.matches(&about_account));
        assert!(!by_account.matches(&about_operation));
    }
}
