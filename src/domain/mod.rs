//! Domain types shared by every layer: account identity, linked-account records,
//! transactions and inbox entries. They carry no storage or transport detail, so the
//! store, the providers and the HTTP layer can all speak them without leaking their own
//! types into each other.
//!
//! - this module: accounts, their marks, transactions, inbox entries;
//! - [`incidents`]: incidents and the events that announce them;
//! - [`outbox`]: messages waiting to leave acctor;
//! - [`operations`]: operations that finish later (account openings) and their state
//!   machine;
//! - [`flags`]: runtime flags per market and segment, with their change history.

use std::fmt;

pub mod flags;
pub mod incidents;
pub mod operations;
pub mod outbox;
pub mod stripe;
pub mod stripe_push;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// The canonical identity of a linked account. Every alias, provider item id and owner
/// id resolves to exactly one of these, so every path reads and writes the same records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub String);

impl AccountId {
    /// A fresh random id (`acc_` followed by 32 hex digits).
    pub fn generate() -> Self {
        AccountId(format!("acc_{}", uuid::Uuid::new_v4().simple()))
    }

    /// Whether `s` has the shape of a canonical id (as opposed to an alias).
    pub fn looks_canonical(s: &str) -> bool {
        s.len() == 36 && s.starts_with("acc_") && s[4..].bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which provider holds an account's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Plaid (or the built-in Plaid-compatible sandbox bank).
    Plaid,
    /// Stripe (or the built-in Stripe-compatible sandbox).
    Stripe,
}

impl ProviderKind {
    /// The lowercase name used in URLs, config and store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Plaid => "plaid",
            ProviderKind::Stripe => "stripe",
        }
    }

    /// Parses the lowercase name; `None` for providers acctor does not know.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "plaid" => Some(ProviderKind::Plaid),
            "stripe" => Some(ProviderKind::Stripe),
            _ => None,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider access token. It must be stored to call the provider, but it never
/// appears in logs, `Debug` output or API responses: `Debug`/`Display` print a mask.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccessToken(String);

impl AccessToken {
    /// Wraps a raw token.
    pub fn new(raw: impl Into<String>) -> Self {
        AccessToken(raw.into())
    }

    /// The raw token, for the one place that sends it to the provider.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

/// Whether an account is linked or has been unlinked (its data kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// Linked: webhooks are routed to it and it syncs.
    Linked,
    /// Unlinked with its data kept; no syncs, webhooks for it are rejected as unknown.
    Unlinked,
}

/// How the last sync of an account ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum SyncOutcome {
    /// Committed: counts of rows applied.
    Committed {
        /// Rows added.
        added: u64,
        /// Rows modified.
        modified: u64,
        /// Rows removed.
        removed: u64,
        /// Pages fetched, including restarted loops.
        pages: u64,
        /// Whether the cursor was rejected and rebuilt through the fallback path.
        fallback: bool,
        /// The provider's request id of the last page fetched (for support tickets).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Failed: nothing committed.
    Failed {
        /// Provider error code or a short internal code.
        code: String,
        /// Human-readable message (no secrets).
        message: String,
        /// The provider's request id, when there was one.
        request_id: Option<String>,
    },
}

/// A linked account as stored. `access_token` is the only secret in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    /// Canonical id.
    pub id: AccountId,
    /// Provider holding the data.
    pub provider: ProviderKind,
    /// The provider's id of the linked object (a Plaid `item_id`).
    pub item_id: String,
    /// The provider's access token.
    pub access_token: AccessToken,
    /// The id of the user owning the account in the caller's system.
    pub owner_id: String,
    /// Extra lookup keys (e.g. an email) that resolve to this account.
    pub aliases: Vec<String>,
    /// Linked or unlinked.
    pub status: LinkStatus,
    /// When it was linked.
    pub created_at: DateTime<Utc>,
    /// The provider cursor after the last committed sync (`None`: never synced).
    pub cursor: Option<String>,
    /// When the cursor was last advanced.
    pub cursor_updated_at: Option<DateTime<Utc>>,
    /// When the last sync started.
    pub last_sync_started_at: Option<DateTime<Utc>>,
    /// When the last sync ended (committed or failed).
    pub last_sync_finished_at: Option<DateTime<Utc>>,
    /// How the last sync ended.
    pub last_sync_outcome: Option<SyncOutcome>,
    /// Committed syncs so far.
    pub sync_count: u64,
    /// Set when the supervisor gave up restarting the account's actor: webhooks are
    /// still ingested but do not activate it until an operator resumes it. Absent in
    /// records written before quarantine existed, hence the default.
    #[serde(default)]
    pub quarantine: Option<Quarantine>,
    /// Set when syncs kept failing past `actors.max_sync_attempts`: no more retries
    /// until an operator resumes it. Absent in older records, hence the default.
    #[serde(default)]
    pub failed: Option<SyncGaveUp>,
    /// Set when the provider said the user must log in again (ITEM_LOGIN_REQUIRED):
    /// the account is parked, no syncs, no retries, no polling, until a LOGIN_REPAIRED
    /// webhook or a relink. Absent in older records, hence the default.
    #[serde(default)]
    pub needs_reauth: Option<NeedsReauth>,
    /// Set when the provider announced that access ends at a deadline
    /// (PENDING_EXPIRATION / PENDING_DISCONNECT); cleared by LOGIN_REPAIRED or a relink.
    #[serde(default)]
    pub pending_deadline: Option<PendingDeadline>,
    /// Inbox entries up to this seq have had their login signals acted on (an unpark by
    /// LOGIN_REPAIRED or a relink): while they wait in the inbox for a sync to commit,
    /// a later check must not act on them again (an old ITEM_LOGIN_REQUIRED would park
    /// the account once more).
    #[serde(default)]
    pub login_seen_through: Option<u64>,
    /// A Stripe account's settings (its types, tie rule, Connect); `None` for other
    /// providers. Its credentials are the access token (see `stripe::StripeCredentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<stripe::StripeLink>,
}

impl Account {
    /// A newly linked account with a fresh id: never synced, nothing parked. The one
    /// place that knows every field's starting value.
    pub fn new_linked(
        provider: ProviderKind,
        item_id: String,
        access_token: AccessToken,
        owner_id: String,
        aliases: Vec<String>,
        created_at: DateTime<Utc>,
    ) -> Account {
        Account {
            id: AccountId::generate(),
            provider,
            item_id,
            access_token,
            owner_id,
            aliases,
            status: LinkStatus::Linked,
            created_at,
            cursor: None,
            cursor_updated_at: None,
            last_sync_started_at: None,
            last_sync_finished_at: None,
            last_sync_outcome: None,
            sync_count: 0,
            quarantine: None,
            failed: None,
            needs_reauth: None,
            pending_deadline: None,
            login_seen_through: None,
            stripe: None,
        }
    }

    /// Whether the account waits for a human (quarantined, given up on, or waiting for
    /// the user to log in again): nothing should sync or poll it until that is lifted.
    pub fn is_parked(&self) -> bool {
        self.quarantine.is_some() || self.failed.is_some() || self.needs_reauth.is_some()
    }

    /// Relinks the account to `token` (the user went through the provider's update
    /// flow): the deadlines the provider announced and the `failed` mark are lifted (a
    /// new token deserves new attempts), and a needs-reauth mark is flagged `relinked`.
    /// `inbox_seen` is the newest pending inbox entry: what the inbox holds predates the
    /// new token, so its login errors must not park the account again
    /// (`NeedsReauth::after_seq`), nor its deadlines reopen their warnings
    /// (`login_seen_through`).
    pub fn relink(&mut self, token: &AccessToken, inbox_seen: Option<u64>) {
        self.access_token = token.clone();
        self.needs_reauth = self.needs_reauth.take().map(|parked| NeedsReauth {
            after_seq: parked.after_seq.max(inbox_seen.unwrap_or(0)),
            relinked: true,
            ..parked
        });
        if inbox_seen.is_some() {
            self.login_seen_through = self.login_seen_through.max(inbox_seen);
        }
        self.pending_deadline = None;
        self.failed = None;
    }

    /// Takes the login state (needs-reauth, pending deadline, login events seen, the
    /// failed mark) from `edited`, and nothing else: what
    /// `AccountStore::update_login_state` lets its caller change.
    pub fn take_login_state(&mut self, edited: Account) {
        self.needs_reauth = edited.needs_reauth;
        self.pending_deadline = edited.pending_deadline;
        self.login_seen_through = edited.login_seen_through;
        self.failed = edited.failed;
    }
}

/// Why and since when an account waits for its user to log in again at the provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsReauth {
    /// The provider's error code (`ITEM_LOGIN_REQUIRED`).
    pub code: String,
    /// The provider's request id, when the error came from a call.
    pub request_id: Option<String>,
    /// When it was parked.
    pub since: DateTime<Utc>,
    /// Inbox entries up to this sequence number were read when it parked: only a
    /// LOGIN_REPAIRED webhook after it unparks the account (an older one is stale).
    pub after_seq: u64,
    /// The account was relinked with a new token: its next sync unparks it, and only
    /// login errors newer than `after_seq` (the inbox at relink time) park it again.
    #[serde(default)]
    pub relinked: bool,
}

/// A provider-announced end of access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDeadline {
    /// `PENDING_EXPIRATION` or `PENDING_DISCONNECT`.
    pub code: String,
    /// When access ends (Plaid's `consent_expiration_time`), when the provider said.
    pub deadline: Option<DateTime<Utc>>,
    /// The provider's reason (PENDING_DISCONNECT carries one).
    pub reason: Option<String>,
    /// When it was announced.
    pub since: DateTime<Utc>,
}

/// Why and when acctor stopped retrying an account's failing syncs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncGaveUp {
    /// The last failure's code and message (no secrets).
    pub reason: String,
    /// Consecutive failed attempts when it gave up.
    pub attempts: u32,
    /// When it gave up.
    pub since: DateTime<Utc>,
    /// Why it gave up. Absent in records written before causes existed (they were all
    /// attempt limits), hence the default.
    #[serde(default)]
    pub cause: GaveUpCause,
}

/// Why acctor stopped retrying an account, and so what a human must do about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GaveUpCause {
    /// Syncs failed `actors.max_sync_attempts` times in a row: find out why, then
    /// resume.
    #[default]
    AttemptsExhausted,
    /// The provider rejected the request itself (bad API keys, a bad field, an answer
    /// acctor cannot read): retrying cannot help until the cause is fixed, then resume.
    Permanent,
    /// The provider no longer accepts the account's access token (invalid, revoked, the
    /// item is gone): relink it with a new access token, or unlink it.
    AccessRevoked,
}

impl SyncGaveUp {
    /// The kind of incident this mark keeps open.
    pub fn incident_kind(&self) -> crate::domain::incidents::IncidentKind {
        match self.cause {
            GaveUpCause::AccessRevoked => crate::domain::incidents::IncidentKind::AccessRevoked,
            _ => crate::domain::incidents::IncidentKind::SyncFailed,
        }
    }
}

impl GaveUpCause {
    /// What a human must do to get the account syncing again, for incidents and the
    /// status API.
    pub fn action(self) -> &'static str {
        match self {
            GaveUpCause::AttemptsExhausted => {
                "find out why syncs keep failing (the error and request id say), then resume \
                 the account: POST /v1/accounts/{id}/resume"
            }
            GaveUpCause::Permanent => {
                "the provider rejects acctor's request itself, so retrying cannot help: fix \
                 the cause (acctor's provider configuration, or the account at the provider), \
                 then resume the account: POST /v1/accounts/{id}/resume"
            }
            GaveUpCause::AccessRevoked => {
                "the provider no longer accepts this account's access token: have the user \
                 link it again and relink it with the new access token (POST /v1/accounts \
                 with the same provider, item_id and owner_id), or unlink it: \
                 DELETE /v1/accounts/{id}"
            }
        }
    }
}

/// Why and when an account was quarantined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// What the last failure said (a panic message or handler error; no secrets).
    pub reason: String,
    /// Failures counted within the restart window when it was quarantined.
    pub failures: u32,
    /// When it was quarantined.
    pub since: DateTime<Utc>,
}

/// A transaction as kept locally: the provider's id and date (for ordering and date
/// filters) and the provider's full object, so the local copy equals the provider's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// The provider's transaction id.
    pub id: String,
    /// The transaction's date (Plaid `date`).
    pub date: NaiveDate,
    /// The provider's object, verbatim.
    pub body: serde_json::Value,
}

/// A durable, acknowledged webhook waiting to be consumed by a committed sync.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Monotonic sequence number assigned by the store (global across accounts).
    pub seq: u64,
    /// The account it was routed to.
    pub account_id: AccountId,
    /// Provider that sent it.
    pub provider: ProviderKind,
    /// Provider event kind, e.g. `TRANSACTIONS/SYNC_UPDATES_AVAILABLE`.
    pub kind: String,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The verified webhook body.
    pub body: serde_json::Value,
}
