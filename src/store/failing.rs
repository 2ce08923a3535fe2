//! A [`Store`] decorator whose writes can be switched to fail (compiled for tests only):
//! a store that cannot write is a condition a test cannot provoke in sled itself, so
//! the tests wrap the real store in this and flip the switches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::{
    AccountStore, CreateOutcome, DueEntry, DueIndex, DueKind, Durability, FlagStore, InboxStore,
    IncidentStore, IncomingOperationEvent, IncomingWebhook, IngestOutcome, LinkReceipt,
    ObjectCommit, ObjectPage, ObjectReceipt, ObjectStore, OperationCommit, OperationIngest,
    OperationReceipt, OperationStore, OutboxMessage, OutboxStore, PollEntry, PushStore, Resolved,
    RetryRecord, RowStore, Store, StoreError, SyncCommit, TransactionPage, TransactionQuery,
};
use crate::domain::flags::{Flag, FlagChange, FlagKey};
use crate::domain::incidents::{
    Incident, IncidentKind, IncidentQuery, IncidentSubject, OpenIncident,
};
use crate::domain::operations::{
    Operation, OperationEvent, OperationId, OperationQuery, OperationState,
};
use crate::domain::stripe::{ObjectQuery, ObjectType, Stamp, StoredObject, StripeState};
use crate::domain::stripe_push::{AuditPage, NewPush, Push, PushBacklog, PushQuery, Resolution};
use crate::domain::{
    AccessToken, Account, AccountId, InboxEntry, NeedsReauth, PendingDeadline, Quarantine,
    SyncGaveUp, SyncOutcome, Transaction,
};

/// Delegates to `inner`; `fail_writes` makes every write answer `Io`, `fail_flush`
/// makes `durable()` fail (the write landed in memory but never reaches the disk).
pub(crate) struct FailingStore {
    inner: Arc<dyn Store>,
    /// Writes fail with `StoreError::Io`.
    pub(crate) fail_writes: AtomicBool,
    /// `durable()` fails with `StoreError::Io`.
    pub(crate) fail_flush: AtomicBool,
}

impl FailingStore {
    /// A decorator over `inner` with both switches off.
    pub(crate) fn new(inner: Arc<dyn Store>) -> Arc<FailingStore> {
        Arc::new(FailingStore {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_flush: AtomicBool::new(false),
        })
    }

    fn write(&self) -> Result<(), StoreError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Io("injected: no space left on device".into()));
        }
        Ok(())
    }
}

impl AccountStore for FailingStore {
    fn link_account(&self, account: &Account) -> Result<LinkReceipt, StoreError> {
        self.write()?;
        self.inner.link_account(account)
    }
    fn get_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        self.inner.get_account(id)
    }
    fn resolve(&self, key: &str) -> Result<Resolved, StoreError> {
        self.inner.resolve(key)
    }
    fn list_accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        self.inner.list_accounts(after, limit)
    }
    fn unlink_account(&self, id: &AccountId, purge: bool) -> Result<Option<Account>, StoreError> {
        self.write()?;
        self.inner.unlink_account(id, purge)
    }
    fn record_sync_started(&self, id: &AccountId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.write()?;
        self.inner.record_sync_started(id, at)
    }
    fn record_sync_failed(
        &self,
        id: &AccountId,
        outcome: SyncOutcome,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.record_sync_failed(id, outcome, at)
    }
    fn set_quarantine(
        &self,
        id: &AccountId,
        quarantine: Option<Quarantine>,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.set_quarantine(id, quarantine)
    }
    fn count_accounts(&self) -> Result<u64, StoreError> {
        self.inner.count_accounts()
    }
    fn set_sync_gave_up(
        &self,
        id: &AccountId,
        gave_up: Option<SyncGaveUp>,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.set_sync_gave_up(id, gave_up)
    }
    fn set_needs_reauth(
        &self,
        id: &AccountId,
        needs_reauth: Option<NeedsReauth>,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.set_needs_reauth(id, needs_reauth)
    }
    fn update_login_state(
        &self,
        id: &AccountId,
        change: &dyn Fn(&mut Account) -> bool,
    ) -> Result<Account, StoreError> {
        self.write()?;
        self.inner.update_login_state(id, change)
    }
    fn set_pending_deadline(
        &self,
        id: &AccountId,
        deadline: Option<PendingDeadline>,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.set_pending_deadline(id, deadline)
    }
    fn relink_account(&self, id: &AccountId, token: &AccessToken) -> Result<Account, StoreError> {
        self.write()?;
        self.inner.relink_account(id, token)
    }
}

impl InboxStore for FailingStore {
    fn ingest(
        &self,
        webhook: IncomingWebhook,
        dedup_ttl: Duration,
    ) -> Result<IngestOutcome, StoreError> {
        self.write()?;
        self.inner.ingest(webhook, dedup_ttl)
    }
    fn pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        self.inner.pending_inbox(id)
    }
    fn claim_pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        self.write()?;
        self.inner.claim_pending_inbox(id)
    }
    fn accounts_with_pending_inbox(&self) -> Result<Vec<AccountId>, StoreError> {
        self.inner.accounts_with_pending_inbox()
    }
    fn inbox_depth(&self) -> Result<u64, StoreError> {
        self.inner.inbox_depth()
    }
    fn purge_expired_dedup(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write()?;
        self.inner.purge_expired_dedup(now)
    }
}

impl RowStore for FailingStore {
    fn commit_sync(&self, commit: SyncCommit) -> Result<(), StoreError> {
        self.write()?;
        self.inner.commit_sync(commit)
    }
    fn stage_rows(
        &self,
        id: &AccountId,
        upserts: Vec<Transaction>,
        removals: Vec<String>,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner.stage_rows(id, upserts, removals)
    }
    fn clear_rows(&self, id: &AccountId) -> Result<(), StoreError> {
        self.write()?;
        self.inner.clear_rows(id)
    }
    fn list_transactions(
        &self,
        id: &AccountId,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, StoreError> {
        self.inner.list_transactions(id, query)
    }
    fn count_transactions(&self, id: &AccountId) -> Result<u64, StoreError> {
        self.inner.count_transactions(id)
    }
}

impl DueIndex for FailingStore {
    fn schedule_due(&self, entry: &DueEntry) -> Result<(), StoreError> {
        self.write()?;
        self.inner.schedule_due(entry)
    }
    fn due_entries(
        &self,
        until: DateTime<Utc>,
        kind: DueKind,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.inner.due_entries(until, kind, limit)
    }
    fn reschedule_due(
        &self,
        current: &DueEntry,
        next: Option<&DueEntry>,
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.reschedule_due(current, next)
    }
    fn remove_due(&self, kind: DueKind, subject: &str) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.remove_due(kind, subject)
    }
    fn due_entry_of(&self, kind: DueKind, subject: &str) -> Result<Option<DueEntry>, StoreError> {
        self.inner.due_entry_of(kind, subject)
    }
    fn next_due(&self, kind: DueKind) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_due(kind)
    }
    fn record_retry(&self, record: &RetryRecord) -> Result<(), StoreError> {
        self.write()?;
        self.inner.record_retry(record)
    }
    fn clear_retry(&self, id: &AccountId) -> Result<(), StoreError> {
        self.write()?;
        self.inner.clear_retry(id)
    }
    fn reschedule_retry(
        &self,
        current: &RetryRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.reschedule_retry(current, due_at)
    }
    fn due_retries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RetryRecord>, StoreError> {
        self.inner.due_retries(now, limit)
    }
    fn retry_of(&self, id: &AccountId) -> Result<Option<RetryRecord>, StoreError> {
        self.inner.retry_of(id)
    }
    fn due_polls(
        &self,
        anchored_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PollEntry>, StoreError> {
        self.inner.due_polls(anchored_by, limit)
    }
    fn defer_poll(&self, entry: &PollEntry, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.write()?;
        self.inner.defer_poll(entry, at)
    }
    fn clear_poll(&self, entry: &PollEntry) -> Result<(), StoreError> {
        self.write()?;
        self.inner.clear_poll(entry)
    }
}

impl IncidentStore for FailingStore {
    fn open_incident(&self, open: &OpenIncident) -> Result<Incident, StoreError> {
        self.write()?;
        self.inner.open_incident(open)
    }
    fn resolve_incident(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError> {
        self.write()?;
        self.inner.resolve_incident(subject, kind, at, notify)
    }
    fn open_incident_of(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError> {
        self.inner.open_incident_of(subject, kind)
    }
    fn get_incident(&self, incident_id: u64) -> Result<Option<Incident>, StoreError> {
        self.inner.get_incident(incident_id)
    }
    fn list_incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        self.inner.list_incidents(query)
    }
}

impl OutboxStore for FailingStore {
    fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        self.inner.pending_outbox(limit)
    }
    fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        self.inner.due_outbox(now, limit)
    }
    fn next_outbox_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.next_outbox_due()
    }
    fn update_outbox(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        self.write()?;
        self.inner.update_outbox(message)
    }
    fn remove_outbox(&self, message_id: u64) -> Result<(), StoreError> {
        self.write()?;
        self.inner.remove_outbox(message_id)
    }
}

impl ObjectStore for FailingStore {
    fn stripe_state(&self, id: &AccountId) -> Result<Option<StripeState>, StoreError> {
        self.inner.stripe_state(id)
    }
    fn object_stamps(
        &self,
        id: &AccountId,
        objects: &[(ObjectType, String)],
    ) -> Result<Vec<Option<Stamp>>, StoreError> {
        self.inner.object_stamps(id, objects)
    }
    fn get_object(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        self.inner.get_object(id, object_type, object_id)
    }
    fn list_objects(&self, query: &ObjectQuery) -> Result<ObjectPage, StoreError> {
        self.inner.list_objects(query)
    }
    fn count_objects(&self, id: &AccountId, object_type: ObjectType) -> Result<u64, StoreError> {
        self.inner.count_objects(id, object_type)
    }
    fn commit_objects(&self, commit: &ObjectCommit) -> Result<ObjectReceipt, StoreError> {
        self.write()?;
        self.inner.commit_objects(commit)
    }
}

impl PushStore for FailingStore {
    fn enqueue_push(&self, push: &NewPush) -> Result<Push, StoreError> {
        self.write()?;
        self.inner.enqueue_push(push)
    }
    fn get_push(&self, id: &AccountId, seq: u64) -> Result<Option<Push>, StoreError> {
        self.inner.get_push(id, seq)
    }
    fn list_pushes(&self, query: &PushQuery) -> Result<(Vec<Push>, Option<u64>), StoreError> {
        self.inner.list_pushes(query)
    }
    fn open_pushes(&self, id: &AccountId) -> Result<Vec<Push>, StoreError> {
        self.inner.open_pushes(id)
    }
    fn push_backlog(&self, id: &AccountId) -> Result<PushBacklog, StoreError> {
        self.inner.push_backlog(id)
    }
    fn resolve_push(
        &self,
        id: &AccountId,
        seq: u64,
        resolution: Resolution,
        at: DateTime<Utc>,
    ) -> Result<Push, StoreError> {
        self.write()?;
        self.inner.resolve_push(id, seq, resolution, at)
    }
    fn audit_trail(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        self.inner
            .audit_trail(id, object_type, object_id, after, limit)
    }
}

impl FlagStore for FailingStore {
    fn get_flag(&self, key: &FlagKey) -> Result<Option<Flag>, StoreError> {
        self.inner.get_flag(key)
    }
    fn list_flags(&self) -> Result<Vec<Flag>, StoreError> {
        self.inner.list_flags()
    }
    fn set_flag(&self, change: &FlagChange) -> Result<(Flag, FlagChange), StoreError> {
        self.write()?;
        self.inner.set_flag(change)
    }
    fn flag_history(
        &self,
        key: Option<&FlagKey>,
        limit: usize,
    ) -> Result<Vec<FlagChange>, StoreError> {
        self.inner.flag_history(key, limit)
    }
}

impl OperationStore for FailingStore {
    fn create_operation(
        &self,
        operation: &Operation,
        force: bool,
    ) -> Result<CreateOutcome, StoreError> {
        self.write()?;
        self.inner.create_operation(operation, force)
    }
    fn get_operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.inner.get_operation(id)
    }
    fn find_operation(&self, key: &str) -> Result<Option<OperationId>, StoreError> {
        self.inner.find_operation(key)
    }
    fn list_operations(&self, query: &OperationQuery) -> Result<Vec<Operation>, StoreError> {
        self.inner.list_operations(query)
    }
    fn count_operations(&self) -> Result<Vec<(OperationState, u64)>, StoreError> {
        self.inner.count_operations()
    }
    fn ingest_operation_event(
        &self,
        event: &IncomingOperationEvent,
        dedup_ttl: Duration,
    ) -> Result<OperationIngest, StoreError> {
        self.write()?;
        self.inner.ingest_operation_event(event, dedup_ttl)
    }
    fn pending_operation_events(
        &self,
        id: &OperationId,
    ) -> Result<Vec<OperationEvent>, StoreError> {
        self.inner.pending_operation_events(id)
    }
    fn operations_with_pending_events(&self) -> Result<Vec<OperationId>, StoreError> {
        self.inner.operations_with_pending_events()
    }
    fn unrouted_operation_events(&self, limit: usize) -> Result<Vec<OperationEvent>, StoreError> {
        self.inner.unrouted_operation_events(limit)
    }
    fn commit_operation(&self, commit: &OperationCommit) -> Result<OperationReceipt, StoreError> {
        self.write()?;
        self.inner.commit_operation(commit)
    }
}

impl Durability for FailingStore {
    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        if self.fail_flush.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Io("injected: fsync failed".into())) });
        }
        self.inner.durable()
    }
    fn write_probe(&self) -> Result<(), StoreError> {
        self.write()?;
        self.inner.write_probe()
    }
}
