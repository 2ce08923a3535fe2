//! Storage: the traits every other layer talks to and the two implementations behind
//! them, [`SledStore`] (embedded, the default) and [`PgStore`] (PostgreSQL, tables users
//! can query). Nothing outside this module touches sled or SQL; `contract/` holds the
//! tests both implementations pass.
//!
//! The invariants live here:
//! - a webhook is appended to its account's inbox (or kept for an item not linked yet)
//!   and is on disk before `durable()` resolves; a repeat of a still-pending event is a
//!   duplicate; a crash can at worst make a retry append the event once more (an extra,
//!   idempotent sync), never lose it;
//! - a sync's rows, its new cursor and the inbox entries it consumed are written in one
//!   transaction, so a crash keeps all of them or none (then the sync replays); a first
//!   sync's rows may be staged beforehand, invisible until that commit;
//! - linking writes the record, every lookup key, and adopts the webhooks that arrived
//!   for the item before it was linked, in one transaction.
//! - every linked account has one entry in the polling index, written by the same
//!   transaction as the link, commit or unlink that changes it, so the polling fallback
//!   reads only what is due;
//! - an outbox message is enqueued in the transaction of the change it announces (today:
//!   an incident opened or resolved enqueues its alert), so it exists exactly when its
//!   change does;
//! - retries, polls and the outbox share one due-time index ([`DueIndex`], keyed by
//!   ([`DueKind`], time, subject), read one kind at a time): every write that changes
//!   an entry does so in the transaction of the change that calls for it;
//! - an operation is created (record, request-id key, due entries, its customer's
//!   in-progress entry, per-state count) in one transaction that also decides, race-free,
//!   whether the customer already has one open; each later step is one version-checked
//!   transaction that writes the record, moves its due entries, consumes its inbox
//!   events and adopts those kept for its newly known tracking id, so a bank status
//!   acknowledged is either pending or applied, never lost;
//! - a Stripe object write passes the out-of-order guard inside its commit, which also
//!   writes its audit entry, the sync state and the push queue changes it decides; a
//!   queued change is numbered and written with its audit entry in one transaction
//!   (`stripe.rs`).
//!
//! The traits are grouped by record family ([`AccountStore`], [`InboxStore`],
//! [`RowStore`], [`DueIndex`], [`IncidentStore`], [`OutboxStore`], [`FlagStore`],
//! [`OperationStore`], [`ObjectStore`], [`PushStore`],
//! [`Durability`]);
//! [`Store`] is all of them. Async code holds the [`AsyncStore`] facade, which runs
//! store work on the blocking pool, never on a runtime thread.
//!
//! These docs are the contract: the suite in `contract/` (tests only) runs every
//! behaviour promised here against each backend; a backend's own tests keep only what
//! is about its internals (trees, files, migrations).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::domain::flags::{Flag, FlagChange, FlagKey};
use crate::domain::incidents::{
    Incident, IncidentKind, IncidentQuery, IncidentSubject, OpenIncident,
};
use crate::domain::operations::{
    Operation, OperationEvent, OperationId, OperationQuery, OperationState, ReportedStatus,
    StatusSource,
};
use crate::domain::{
    AccessToken, Account, AccountId, InboxEntry, NeedsReauth, PendingDeadline, ProviderKind,
    Quarantine, SyncGaveUp, SyncOutcome, Transaction,
};

#[cfg(test)]
mod contract;
mod due;
mod facade;
#[cfg(test)]
pub(crate) mod failing;
mod postgres;
mod sled;
mod stripe;

pub use crate::domain::outbox::{Destination, JsonBody, OutboxMessage};
pub use due::{DueEntry, DueKind, PollEntry, RetryRecord};
pub use facade::AsyncStore;
pub use postgres::{PgStore, PgStoreConfig};
#[cfg(test)]
pub(crate) use sled::test_support::{open_raw, when_released};
pub use sled::{wait_until_released, SledStore, SledStoreConfig};
pub(crate) use stripe::queue_refusal;
pub use stripe::{ObjectCommit, ObjectPage, ObjectReceipt, ObjectStore, PushStore, SyncFinish};

/// Errors a store operation can end in.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A lookup key (alias, item id) already resolves to another linked account.
    #[error("{key} already belongs to account {account_id}")]
    Conflict {
        /// The key that is taken.
        key: String,
        /// The account holding it.
        account_id: AccountId,
    },
    /// The account does not exist.
    #[error("account {0} not found")]
    AccountNotFound(AccountId),
    /// A stored value could not be decoded (unknown version or corrupt bytes).
    #[error("corrupt record in {tree}: {detail}")]
    Corrupt {
        /// The tree holding it.
        tree: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The underlying storage failed (I/O, disk full, ...).
    #[error("storage failure: {0}")]
    Io(String),
    /// The store is shutting down and takes no more writes.
    #[error("store is closed")]
    Closed,
    /// A secret in the store cannot be sealed or opened: its key is not configured, or
    /// the sealed value was tampered with.
    #[error("secrets at rest: {0}")]
    Secret(crate::secrets::SecretsError),
    /// The operation does not fit the account's state (e.g. staging rows for an account
    /// that has already committed a sync).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The operation does not exist.
    #[error("operation {0} not found")]
    OperationNotFound(OperationId),
    /// A commit was built from an older read of the record than the stored one
    /// (optimistic locking): nothing was written; read again and redo the decision.
    #[error("{record} {id} changed since it was read (read version {read}, stored {stored})")]
    VersionConflict {
        /// Which kind of record.
        record: &'static str,
        /// Its id.
        id: String,
        /// The version the commit was built from.
        read: u64,
        /// The version stored now.
        stored: u64,
    },
}

// By hand rather than `#[from]`, which would also make it the error's source and print
// the message twice in an error chain.
impl From<crate::secrets::SecretsError> for StoreError {
    fn from(error: crate::secrets::SecretsError) -> Self {
        StoreError::Secret(error)
    }
}

/// What resolving a lookup key found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Exactly one account.
    Found(AccountId),
    /// No account has this key.
    NotFound,
    /// The key is an owner id shared by several accounts, or a retired key several
    /// unlinked accounts were listed with.
    Ambiguous(Vec<AccountId>),
}

impl Resolved {
    /// What a lookup that found `ids` (sorted, distinct) means; `None` when it found
    /// nothing, so the next kind of key is tried.
    pub(crate) fn of(mut ids: Vec<AccountId>) -> Option<Resolved> {
        match ids.len() {
            0 => None,
            1 => Some(Resolved::Found(ids.remove(0))),
            _ => Some(Resolved::Ambiguous(ids)),
        }
    }
}

/// The result of linking an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkReceipt {
    /// Webhooks that arrived for the item before it was linked, now in its inbox.
    pub adopted_events: u64,
}

/// A verified webhook to be ingested.
#[derive(Clone, Debug)]
pub struct IncomingWebhook {
    /// Provider that sent it.
    pub provider: ProviderKind,
    /// The provider's id of the linked object the event is about (Plaid `item_id`).
    pub item_id: String,
    /// Event kind, e.g. `TRANSACTIONS/SYNC_UPDATES_AVAILABLE`.
    pub kind: String,
    /// Deduplication key: the same key within the TTL is a duplicate.
    pub dedup_key: [u8; 32],
    /// The verified body.
    pub body: serde_json::Value,
    /// When it was received.
    pub received_at: DateTime<Utc>,
}

/// What ingesting a webhook did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Appended with this sequence number. `account_id` is `None` when the item is not
    /// linked yet: the event is kept and adopted by the account when it is linked.
    Accepted {
        /// Sequence number of the entry.
        seq: u64,
        /// The account it was routed to, if linked.
        account_id: Option<AccountId>,
    },
    /// Seen within the dedup TTL: nothing written.
    Duplicate {
        /// The account it is about, if linked (the caller may still nudge its actor).
        account_id: Option<AccountId>,
    },
}

/// How a sync's rows apply to the local copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    /// Upserts and removals on top of the existing rows (the cursor path).
    Delta,
    /// The upserts are the complete set: every other local row of the account goes
    /// (the reconcile path after a rejected cursor).
    Replace,
    /// The rows were already written with [`RowStore::stage_rows`] (the initial sync of an
    /// account that has never committed one); the commit makes them visible by setting
    /// the first cursor. `upserts` and `removals` must be empty.
    Staged,
}

/// Everything one committed sync writes, in one transaction.
#[derive(Clone, Debug)]
pub struct SyncCommit {
    /// The account synced.
    pub account_id: AccountId,
    /// Delta or full replace.
    pub mode: ApplyMode,
    /// Rows to insert or overwrite (added and modified), in provider order: a later
    /// row with the same id wins.
    pub upserts: Vec<Transaction>,
    /// Ids of rows to delete. Applied after the upserts.
    pub removals: Vec<String>,
    /// The cursor to continue from next time.
    pub cursor: String,
    /// Inbox sequence numbers this sync consumed (those pending when it started).
    pub consumed: Vec<u64>,
    /// The outcome recorded on the account.
    pub outcome: SyncOutcome,
    /// When the sync started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

impl SyncCommit {
    /// What the commit records on the account itself: its cursor, the sync's times and
    /// outcome, one more sync.
    pub(crate) fn record_on(&self, account: &mut Account) {
        record_sync_end(
            account,
            &self.cursor,
            &self.outcome,
            self.started_at,
            self.finished_at,
        );
    }
}

/// What the end of a committed sync records on its account: the cursor, the sync's
/// times and outcome, one more sync.
pub(crate) fn record_sync_end(
    account: &mut Account,
    cursor: &str,
    outcome: &SyncOutcome,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
) {
    account.cursor = Some(cursor.to_owned());
    account.cursor_updated_at = Some(finished_at);
    account.last_sync_started_at = Some(started_at);
    account.last_sync_finished_at = Some(finished_at);
    account.last_sync_outcome = Some(outcome.clone());
    account.sync_count += 1;
}

/// A page request over an account's transactions, ordered by (date, id).
#[derive(Clone, Debug, Default)]
pub struct TransactionQuery {
    /// Inclusive lower date bound.
    pub start_date: Option<NaiveDate>,
    /// Inclusive upper date bound.
    pub end_date: Option<NaiveDate>,
    /// Continue after this page token (from a previous page's `next`).
    pub after: Option<String>,
    /// Maximum rows (at least one is returned when there is one: 0 counts as 1).
    pub limit: usize,
}

/// A page of transactions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransactionPage {
    /// The rows.
    pub transactions: Vec<Transaction>,
    /// Token for the next page, `None` on the last.
    pub next: Option<String>,
}

/// Account records and their lookup keys: linking, resolving, listing, unlinking and the
/// per-account marks (sync started/failed, quarantine, gave-up, login state).
pub trait AccountStore {
    /// Links an account: record, lookup keys (`item_id`, `owner_id`, aliases) and the
    /// adoption of events kept for its item, in one transaction.
    /// `Conflict` when its item id or an alias already belongs to a linked account.
    fn link_account(&self, account: &Account) -> Result<LinkReceipt, StoreError>;

    /// The stored account record.
    fn get_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError>;

    /// Resolves a canonical id, an alias, a provider item id or an owner id. Live keys
    /// (those of linked accounts) win; then the retired keys of unlinked accounts (the
    /// item id, owner id and aliases they were listed with) still find them.
    fn resolve(&self, key: &str) -> Result<Resolved, StoreError>;

    /// Accounts in id order, starting after `after`.
    fn list_accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError>;

    /// Unlinks: the account's lookup keys stop being live (another account may take
    /// them) and become retired keys that still resolve to it, and its record is marked
    /// unlinked with its data kept; or, with `purge`, the record, its keys, transactions,
    /// inbox entries and retry record are deleted and no key finds it.
    /// Returns the account as it was, `None` if it did not exist.
    fn unlink_account(&self, id: &AccountId, purge: bool) -> Result<Option<Account>, StoreError>;

    /// Records that a sync started (for status and cursor-age reporting).
    fn record_sync_started(&self, id: &AccountId, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records a failed sync's outcome; nothing else changes.
    fn record_sync_failed(
        &self,
        id: &AccountId,
        outcome: SyncOutcome,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Sets (`Some`) or clears (`None`) the account's quarantine; nothing else changes.
    /// Not durable until a later `durable()` resolves.
    fn set_quarantine(
        &self,
        id: &AccountId,
        quarantine: Option<Quarantine>,
    ) -> Result<(), StoreError>;

    /// Number of account records (linked and unlinked).
    fn count_accounts(&self) -> Result<u64, StoreError>;

    /// Marks the account as given up on (`Some`: its retry record goes too) or clears
    /// that mark (`None`, on resume); nothing else changes.
    fn set_sync_gave_up(
        &self,
        id: &AccountId,
        gave_up: Option<SyncGaveUp>,
    ) -> Result<(), StoreError>;

    /// Sets (`Some`) or clears (`None`) the account's needs-reauth mark; a mark set also
    /// deletes its retry record (a parked account is not retried). Nothing else changes.
    fn set_needs_reauth(
        &self,
        id: &AccountId,
        needs_reauth: Option<NeedsReauth>,
    ) -> Result<(), StoreError>;

    /// Read-modify-write of the account's login state, for decisions that must not
    /// write back a copy read earlier (a relink landing meanwhile would be lost):
    /// `change` edits the record as stored now and returns whether to write; only its
    /// `needs_reauth`, `pending_deadline`, `login_seen_through` and `failed` (the mark
    /// of a revoked access or a permanent error, decided against the token the sync
    /// used) are kept, edits to other fields are dropped. `change` may run more than
    /// once (a retried transaction) and must have no other effect. A write that leaves
    /// a needs-reauth or failed mark also deletes the retry record.
    /// Returns the record as stored after the call; `AccountNotFound` if there is none.
    /// Not durable until a later `durable()` resolves.
    fn update_login_state(
        &self,
        id: &AccountId,
        change: &dyn Fn(&mut Account) -> bool,
    ) -> Result<Account, StoreError>;

    /// Sets or clears the provider-announced deadline of the account.
    fn set_pending_deadline(
        &self,
        id: &AccountId,
        deadline: Option<PendingDeadline>,
    ) -> Result<(), StoreError>;

    /// Relinks a linked account to a new access token (the user went through the
    /// provider's update flow): the token is replaced, the pending deadline and the
    /// `failed` mark cleared (a new token deserves new attempts), and
    /// a needs-reauth mark is flagged `relinked` (its next sync lifts it, ignoring the
    /// login errors already in the inbox); cursor and rows stay. `AccountNotFound` if it does
    /// not exist or is unlinked.
    fn relink_account(&self, id: &AccountId, token: &AccessToken) -> Result<Account, StoreError>;
}

/// The webhook inbox: deduplicated, durable-before-2xx ingest, and what syncs read of it.
pub trait InboxStore {
    /// Deduplicates and appends a webhook, resolving its item to an account (a link
    /// racing it cannot strand it: either side adopts the entry). Not durable until a
    /// later `durable()` resolves. Blocking: call from a blocking thread.
    fn ingest(
        &self,
        webhook: IncomingWebhook,
        dedup_ttl: Duration,
    ) -> Result<IngestOutcome, StoreError>;

    /// The inbox entries of an account not yet consumed by a committed sync, by seq.
    fn pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError>;

    /// The pending inbox entries of an account, marked as read by the sync that is
    /// starting: from now on a repeat of one of them is appended as a new event instead
    /// of being dropped as a duplicate, because this sync may fetch data older than it.
    fn claim_pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError>;

    /// Every account with at least one pending inbox entry (the restart recovery pass
    /// re-drives them). Proportional to the inbox, not to the number of accounts.
    fn accounts_with_pending_inbox(&self) -> Result<Vec<AccountId>, StoreError>;

    /// How many inbox entries are pending across all accounts (including those kept for
    /// items not linked yet).
    fn inbox_depth(&self) -> Result<u64, StoreError>;

    /// Deletes dedup records older than their TTL; returns how many went.
    fn purge_expired_dedup(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// An account's local rows (transactions) and the one-transaction sync commit that
/// changes them together with the cursor and the consumed inbox entries.
pub trait RowStore {
    /// Applies one sync atomically: rows, cursor, outcome, consumed inbox entries.
    fn commit_sync(&self, commit: SyncCommit) -> Result<(), StoreError>;

    /// Writes rows of an account that has never committed a sync, outside any
    /// transaction (cheap, and no process-wide lock held for a 50,000-row first sync).
    /// Rows of such an account are invisible to readers until the `Staged` commit sets
    /// its first cursor, so a crash or a restarted loop leaves nothing visible; the next
    /// attempt starts with [`RowStore::clear_rows`]. `InvalidState` once a sync committed.
    fn stage_rows(
        &self,
        id: &AccountId,
        upserts: Vec<Transaction>,
        removals: Vec<String>,
    ) -> Result<(), StoreError>;

    /// Deletes every row of an account that has never committed a sync (leftovers of an
    /// interrupted first sync). `InvalidState` once a sync committed.
    fn clear_rows(&self, id: &AccountId) -> Result<(), StoreError>;

    /// A page of an account's transactions ordered by (date, id). Empty until the
    /// account's first sync has committed.
    fn list_transactions(
        &self,
        id: &AccountId,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, StoreError>;

    /// How many transactions an account has locally.
    fn count_transactions(&self, id: &AccountId) -> Result<u64, StoreError>;
}

/// The due-time index: one durable timer keyed by ([`DueKind`], time, subject) that
/// serves retries, polls and the outbox; every read is of one kind (a poll's time is
/// its anchor, the others' their due time). The generic operations come first; the
/// retry and polling methods are views over [`DueKind::Retry`] and [`DueKind::Poll`]
/// entries (the outbox's live in [`OutboxStore`]). Readers read only the due part of
/// the index, never every account.
pub trait DueIndex {
    /// Schedules `entry`, replacing its subject's previous entry of the same kind (a
    /// subject has at most one per kind). Not durable until a later `durable()` resolves.
    fn schedule_due(&self, entry: &DueEntry) -> Result<(), StoreError>;

    /// Up to `limit` entries of `kind` whose time is at or before `until` (to the
    /// millisecond), earliest first, ties by subject. Reads only that part of the index.
    /// One kind at a time, because the kinds' times do not mean the same: for
    /// [`DueKind::Poll`] the time is an anchor, not a due time (the store does not know
    /// the polling interval), so a poll's "due" read passes `now - interval` (as
    /// [`DueIndex::due_polls`] callers do), and a read across kinds would take every
    /// poll for due.
    fn due_entries(
        &self,
        until: DateTime<Utc>,
        kind: DueKind,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError>;

    /// Replaces `current` with `next` (same kind and subject; `None` removes it), but
    /// only while `current` is still its subject's entry, time and payload: `false`
    /// (nothing written) when it changed or went meanwhile, so the newer write wins.
    /// `InvalidState` if `next` is about another kind or subject.
    fn reschedule_due(
        &self,
        current: &DueEntry,
        next: Option<&DueEntry>,
    ) -> Result<bool, StoreError>;

    /// Removes the subject's entry of `kind`; whether there was one.
    fn remove_due(&self, kind: DueKind, subject: &str) -> Result<bool, StoreError>;

    /// The subject's entry of `kind`, if it has one.
    fn due_entry_of(&self, kind: DueKind, subject: &str) -> Result<Option<DueEntry>, StoreError>;

    /// The earliest time among the entries of `kind` (for [`DueKind::Poll`], the oldest
    /// anchor, not a due time); `None` if it has none.
    fn next_due(&self, kind: DueKind) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Writes the account's retry record, replacing its previous one (an account has at
    /// most one). Not durable until a later `durable()` resolves.
    fn record_retry(&self, record: &RetryRecord) -> Result<(), StoreError>;

    /// Deletes the account's retry record, if any. A committed sync does this itself.
    fn clear_retry(&self, id: &AccountId) -> Result<(), StoreError>;

    /// Moves `current` to `due_at`, or deletes it (`None`), but only while it is still
    /// the account's retry record, byte for byte: `false` (nothing written) when a sync
    /// replaced or cleared it meanwhile, whose newer record must win. The sweeper uses
    /// it to take records it cannot act on out of the due part of the index.
    fn reschedule_retry(
        &self,
        current: &RetryRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` retry records due at or before `now`, earliest first. Reads only
    /// the due part of the due-time index, never every account.
    fn due_retries(&self, now: DateTime<Utc>, limit: usize)
        -> Result<Vec<RetryRecord>, StoreError>;

    /// The account's current retry record.
    fn retry_of(&self, id: &AccountId) -> Result<Option<RetryRecord>, StoreError>;

    /// Up to `limit` entries of the polling index anchored at or before `anchored_by`,
    /// oldest first. Reads only that part of the index, never every account. Linking
    /// adds an account's entry (anchored at its last successful sync or its creation),
    /// a committed sync moves it forward to the commit's `finished_at`, unlinking
    /// removes it, all in the same transaction as the change itself.
    fn due_polls(
        &self,
        anchored_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PollEntry>, StoreError>;

    /// Gives `entry`'s account (which the caller found linked) its polling entry at
    /// `at`, or leaves it where it is when that is later: anchors only move forward.
    /// `entry`, as read from [`DueIndex::due_polls`], is removed if it was stale (the
    /// account's entry is elsewhere, or the account had none), so whatever state the
    /// index is in, acting on what it returned repairs it. Not durable until a later
    /// `durable()` resolves; losing it in a crash only brings a poll forward.
    fn defer_poll(&self, entry: &PollEntry, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Removes `entry` from the polling index (its account is gone or unlinked), and
    /// the account's reverse mapping if it points at it.
    fn clear_poll(&self, entry: &PollEntry) -> Result<(), StoreError>;
}

/// Incidents: at most one open per (subject, kind), the subject an account or an
/// operation ([`IncidentSubject`]); opening and resolving may enqueue an alert (an
/// [`OutboxMessage`] to [`Destination::Alerts`]) in the same transaction.
pub trait IncidentStore {
    /// Opens the incident of (subject, kind), or refreshes the open one (details,
    /// `updated_at`, occurrences). With `notify`, a newly opened incident also enqueues
    /// an alert in the same transaction. Not durable until a later `durable()`.
    fn open_incident(&self, open: &OpenIncident) -> Result<Incident, StoreError>;

    /// Resolves the open incident of (subject, kind), if any, and returns it; with
    /// `notify` an alert is enqueued in the same transaction.
    fn resolve_incident(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError>;

    /// The open incident of (subject, kind), if any (one key lookup).
    fn open_incident_of(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError>;

    /// One incident by id.
    fn get_incident(&self, incident_id: u64) -> Result<Option<Incident>, StoreError>;

    /// Incidents matching `query`, newest first, at most `query.limit`.
    fn list_incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError>;
}

/// The outbox: undelivered [`OutboxMessage`]s of every destination, read by their next
/// attempt's due time. Messages are enqueued only inside the transaction of the change
/// they announce, by that change's own store method (e.g.
/// [`IncidentStore::open_incident`]), so there is no standalone enqueue here; what is
/// here is what the sender needs to deliver, retry and drop them.
pub trait OutboxStore {
    /// Up to `limit` undelivered messages, oldest first, due or not (for inspection;
    /// the sender reads [`OutboxStore::due_outbox`]).
    fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError>;

    /// Up to `limit` undelivered messages whose next attempt is due at or before `now`
    /// (to the millisecond), earliest due first. Reads only the due part of the
    /// outbox's due-time index, so messages waiting out a backoff never crowd out due
    /// ones.
    fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError>;

    /// When the earliest undelivered message is due; `None` when the outbox is empty.
    fn next_outbox_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Replaces an undelivered message's record (after a failed attempt: attempts, next
    /// attempt, last error), moving its due-index entry with it. Does nothing if the
    /// message is gone meanwhile (a concurrent removal wins).
    fn update_outbox(&self, message: &OutboxMessage) -> Result<(), StoreError>;

    /// Deletes a message (delivered, or given up on), with its due-index entry.
    fn remove_outbox(&self, message_id: u64) -> Result<(), StoreError>;
}

/// What creating an operation did.
#[derive(Clone, Debug, PartialEq)]
pub enum CreateOutcome {
    /// The anchor was written (as given, version 1).
    Created(Operation),
    /// The customer already has an opening in progress (not terminal) and `force` was
    /// not set: nothing was written; this is the existing one (the newest, if several).
    Existing(Operation),
}

/// A verified bank status to be ingested for an operation.
#[derive(Clone, Debug)]
pub struct IncomingOperationEvent {
    /// The bank's event id.
    pub event_id: String,
    /// The bank's tracking id: the routing key once the create call has answered.
    pub tracking_id: String,
    /// Our request id the bank echoed: the routing key before that (the anchor is
    /// written before the call, so it always finds an operation this acctor created).
    pub request_id: String,
    /// What was reported.
    pub report: ReportedStatus,
    /// Webhook or sandbox.
    pub source: StatusSource,
    /// Deduplication key (request id, status): the same key within the TTL is a
    /// duplicate; a new status for the same request is not.
    pub dedup_key: [u8; 32],
    /// When it was received.
    pub received_at: DateTime<Utc>,
}

/// What ingesting an operation event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationIngest {
    /// Appended with this sequence number, to the inbox of `operation_id`, or kept for
    /// its tracking id (`None`: no operation has that tracking id or request id yet;
    /// the operation adopts it when its tracking id is recorded).
    Accepted {
        /// Sequence number of the event.
        seq: u64,
        /// The operation it was routed to.
        operation_id: Option<OperationId>,
    },
    /// Seen within the dedup TTL: nothing written.
    Duplicate {
        /// The operation it is about, if known.
        operation_id: Option<OperationId>,
    },
}

/// An incident change written with an operation commit, about that operation.
#[derive(Clone, Debug)]
pub enum OperationIncident {
    /// Open (or refresh) the operation's incident of this kind.
    Open {
        /// The kind.
        kind: IncidentKind,
        /// Facts to record (a deep link to the operation, attempts, errors).
        details: serde_json::Value,
        /// Enqueue an alert in the same transaction when newly opened.
        notify: bool,
    },
    /// Resolve the operation's open incident of this kind, if any.
    Resolve {
        /// The kind.
        kind: IncidentKind,
        /// Enqueue an alert in the same transaction.
        notify: bool,
    },
}

/// Everything one step of an operation writes, in one transaction.
#[derive(Clone, Debug)]
pub struct OperationCommit {
    /// The operation as it is now; its `version` is the version it was read at (the
    /// store refuses the commit with `VersionConflict` if the stored one differs, and
    /// stores it with the version bumped).
    pub operation: Operation,
    /// Sequence numbers of the inbox events this step applied (consumed with it).
    pub consumed: Vec<u64>,
    /// Incidents opened or resolved with it (at the commit's `operation.updated_at`).
    pub incidents: Vec<OperationIncident>,
}

/// What a committed operation step left behind.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationReceipt {
    /// The operation as stored (version bumped).
    pub operation: Operation,
    /// Events kept for its tracking id before it had one, moved into its inbox by this
    /// commit (the commit that recorded the tracking id): the actor drives again.
    pub adopted: u64,
}

/// Operations (account openings): their records with history, their lookup keys
/// (request id, tracking id), their inbox of bank statuses, and the index of each
/// customer's opening in progress. Every write of a record also keeps its entries in
/// the due index in step with it, in the same transaction: [`DueKind::OperationWake`]
/// at [`Operation::wake_at`], [`DueKind::OperationDeadline`] at
/// [`Operation::deadline_at`], [`DueKind::OperationFailed`] at
/// [`Operation::failed_at`] (each removed when `None`), subject the operation id; so
/// the sweeper reads only what is due, never every operation.
pub trait OperationStore {
    /// Writes a new operation's anchor (record, request-id key, due entries and, while
    /// it is open, the customer's in-progress entry) in one transaction, unless the
    /// customer already has an open one and `force` is false: then `Existing`.
    fn create_operation(
        &self,
        operation: &Operation,
        force: bool,
    ) -> Result<CreateOutcome, StoreError>;

    /// The stored operation.
    fn get_operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError>;

    /// The operation a key names: its id, its request id or its tracking id.
    fn find_operation(&self, key: &str) -> Result<Option<OperationId>, StoreError>;

    /// Operations matching `query`, newest first (descending id), at most `limit`.
    fn list_operations(&self, query: &OperationQuery) -> Result<Vec<Operation>, StoreError>;

    /// How many operations are in each state (states with none are absent). Cheap: not
    /// a scan of every record.
    fn count_operations(&self) -> Result<Vec<(OperationState, u64)>, StoreError>;

    /// Deduplicates and appends a bank status to its operation's inbox, resolving the
    /// tracking id, then the request id; kept for the tracking id when neither is known.
    /// Not durable until a later `durable()` resolves.
    fn ingest_operation_event(
        &self,
        event: &IncomingOperationEvent,
        dedup_ttl: Duration,
    ) -> Result<OperationIngest, StoreError>;

    /// The operation's pending inbox events, by seq.
    fn pending_operation_events(&self, id: &OperationId)
        -> Result<Vec<OperationEvent>, StoreError>;

    /// Operations with at least one pending inbox event (restart recovery re-drives
    /// them). Proportional to the inbox.
    fn operations_with_pending_events(&self) -> Result<Vec<OperationId>, StoreError>;

    /// Events kept for tracking ids no operation has (yet), oldest first.
    fn unrouted_operation_events(&self, limit: usize) -> Result<Vec<OperationEvent>, StoreError>;

    /// Applies one step in one transaction: the record (version checked and bumped,
    /// `updated_at` as given), its due entries, the customer's in-progress entry
    /// (removed once terminal), the tracking-id key when it is newly set (adopting the
    /// events kept for it), the consumed inbox events, and the incidents (with their
    /// alerts). `OperationNotFound` if it does not exist.
    fn commit_operation(&self, commit: &OperationCommit) -> Result<OperationReceipt, StoreError>;
}

/// Runtime flags and their change history.
pub trait FlagStore {
    /// The flag's stored value; `None` if it was never set (the configured default
    /// holds).
    fn get_flag(&self, key: &FlagKey) -> Result<Option<Flag>, StoreError>;

    /// Every flag ever set, by key.
    fn list_flags(&self) -> Result<Vec<Flag>, StoreError>;

    /// Sets a flag and appends the change (with the value it had) to its history, in
    /// one transaction. `change.from` is ignored: the store fills it from the stored
    /// value. Returns the flag as stored and the change as recorded.
    fn set_flag(&self, change: &FlagChange) -> Result<(Flag, FlagChange), StoreError>;

    /// Recorded changes, newest first: of one flag, or of all (`None`).
    fn flag_history(
        &self,
        key: Option<&FlagKey>,
        limit: usize,
    ) -> Result<Vec<FlagChange>, StoreError>;
}

/// Making writes durable: the one wait of the store, shared by every writer through
/// group commit, and the readiness probe.
pub trait Durability {
    /// Resolves once everything written before the call is on disk (flushed and
    /// fsynced). Many concurrent callers share one flush.
    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Writes one small record that means nothing (the readiness probe: followed by
    /// [`Durability::durable`], it proves the store still accepts and persists writes).
    fn write_probe(&self) -> Result<(), StoreError>;
}

/// The storage contract: every record family's trait at once. Methods are synchronous
/// and short (sled works in memory and writes back in the background); `durable()` is
/// the one wait, and it is shared by every writer through group commit.
///
/// Callers hold an `Arc<dyn Store>` and call any family's methods on it without
/// importing the family traits (a trait object's supertrait methods are in scope); an
/// implementation implements each family and gets `Store` from the blanket impl.
pub trait Store:
    AccountStore
    + InboxStore
    + RowStore
    + DueIndex
    + IncidentStore
    + OutboxStore
    + FlagStore
    + OperationStore
    + ObjectStore
    + PushStore
    + Durability
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: AccountStore
        + InboxStore
        + RowStore
        + DueIndex
        + IncidentStore
        + OutboxStore
        + FlagStore
        + OperationStore
        + ObjectStore
        + PushStore
        + Durability
        + Send
        + Sync
        + 'static
        + ?Sized
{
}
