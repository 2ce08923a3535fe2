//! The Stripe families of the storage contract: the local copy of linked Stripe
//! accounts' objects with each account's sync state ([`ObjectStore`]), and the push
//! queue of local changes to their catalogue with every object's audit trail
//! ([`PushStore`]).

use chrono::{DateTime, Utc};

use super::{record_sync_end, StoreError};
use crate::domain::stripe::{
    ObjectQuery, ObjectType, ObjectWrite, Stamp, StoredObject, StripeState,
};
use crate::domain::stripe_push::{
    AuditNote, AuditPage, NewPush, Push, PushBacklog, PushQuery, QueueRefusal, Resolution,
};
use crate::domain::{Account, AccountId, SyncOutcome};

/// How a Stripe sync's commit ends the sync, when it does (a backfill page or a
/// catch-up page commits along the way without ending it).
#[derive(Clone, Debug)]
pub struct SyncFinish {
    /// Where the account stands, shown as its cursor (the last event applied).
    pub cursor: String,
    /// The outcome recorded on the account.
    pub outcome: SyncOutcome,
    /// When the sync started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

impl SyncFinish {
    /// What the commit that ends a Stripe sync records on the account.
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

/// Everything one step of a Stripe sync writes, in one transaction: the object writes
/// (each checked by the out-of-order guard against the stored stamp), the account's
/// sync state, the inbox entries whose events were applied and, at the end of a sync,
/// its outcome with the retry and poll entries it settles (as [`RowStore::commit_sync`]).
#[derive(Clone, Debug)]
pub struct ObjectCommit {
    /// The account.
    pub account_id: AccountId,
    /// The writes, in order: a later write to the same object is checked against the
    /// earlier one.
    pub writes: Vec<ObjectWrite>,
    /// The account's sync state after this step (replaces the stored one).
    pub state: StripeState,
    /// Inbox entries consumed.
    pub consumed: Vec<u64>,
    /// Set on the commit that ends a sync.
    pub finish: Option<SyncFinish>,
    /// Changes of the account's push queue whose fate this step decided, stored as
    /// given; each must still be `pending` in the store (a human resolves only held
    /// changes, so nothing else changes a pending one), else it is left as it is.
    pub pushes: Vec<Push>,
    /// Audit entries that are not object writes (a change queued, held, refused), by
    /// object.
    pub audit: Vec<(ObjectType, String, AuditNote)>,
}

/// What a commit applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectReceipt {
    /// Writes applied.
    pub applied: u64,
    /// Writes the guard skipped (older, a repeat, or a tie the write did not win).
    pub skipped: u64,
}

/// A page of stored objects.
#[derive(Clone, Debug)]
pub struct ObjectPage {
    /// The objects, by id.
    pub objects: Vec<StoredObject>,
    /// Continue after this id, `None` on the last page.
    pub next: Option<String>,
}

/// The local copy of Stripe accounts' objects and each account's sync state.
pub trait ObjectStore {
    /// The account's sync state (`None`: never synced).
    fn stripe_state(&self, id: &AccountId) -> Result<Option<StripeState>, StoreError>;

    /// The stored stamp of each object (tombstones included), in the order asked.
    fn object_stamps(
        &self,
        id: &AccountId,
        objects: &[(ObjectType, String)],
    ) -> Result<Vec<Option<Stamp>>, StoreError>;

    /// One object (a tombstone included).
    fn get_object(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
    ) -> Result<Option<StoredObject>, StoreError>;

    /// A page of an account's live objects of one type, by id.
    fn list_objects(&self, query: &ObjectQuery) -> Result<ObjectPage, StoreError>;

    /// How many live objects of a type an account has.
    fn count_objects(&self, id: &AccountId, object_type: ObjectType) -> Result<u64, StoreError>;

    /// Applies one step in one transaction. Fails with `AccountNotFound` when the
    /// account is gone, writing nothing.
    fn commit_objects(&self, commit: &ObjectCommit) -> Result<ObjectReceipt, StoreError>;
}

/// The push queue of Stripe accounts (local changes to their catalogue) and the audit
/// trail of their objects. The actor decides a pending change's fate in
/// [`ObjectStore::commit_objects`], with the object write it makes; the use-cases
/// queue changes and resolve the held ones here.
pub trait PushStore {
    /// Queues a change as the account's next (checking, when the change says which
    /// version it expects, that the mirror is still at it: `StaleBase` otherwise), with
    /// the object's "queued" audit entry. Its base is the mirror's current object, or
    /// the change before it when an earlier change of the same object is still open.
    /// A change with a caller's key that already queued the same change answers with
    /// that change, queueing nothing; one that queued another change is `Conflict`.
    fn enqueue_push(&self, push: &NewPush) -> Result<Push, StoreError>;

    /// One change.
    fn get_push(&self, id: &AccountId, seq: u64) -> Result<Option<Push>, StoreError>;

    /// A page of the account's changes, by number.
    fn list_pushes(&self, query: &PushQuery) -> Result<(Vec<Push>, Option<u64>), StoreError>;

    /// The account's open changes (pending or held), by number: the actor's queue.
    fn open_pushes(&self, id: &AccountId) -> Result<Vec<Push>, StoreError>;

    /// The account's queue at a glance.
    fn push_backlog(&self, id: &AccountId) -> Result<PushBacklog, StoreError>;

    /// A human's answer to a held change (`conflict` or `failed`; `NotHeld` otherwise):
    /// a retry makes it pending again, based on Stripe's version for a conflict, with
    /// a new generation (so a new idempotency key); a discard drops it. Recorded in the
    /// object's audit trail.
    fn resolve_push(
        &self,
        id: &AccountId,
        seq: u64,
        resolution: Resolution,
        at: DateTime<Utc>,
    ) -> Result<Push, StoreError>;

    /// A page of one object's audit trail, oldest first.
    fn audit_trail(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AuditPage, StoreError>;
}

/// The store's error for a change the queue refuses.
pub(crate) fn queue_refusal(new: &NewPush, refusal: QueueRefusal) -> StoreError {
    let object = format!(
        "{} {}",
        new.object_type,
        new.object_id.as_deref().unwrap_or("")
    );
    match refusal {
        QueueRefusal::UnknownObject => {
            StoreError::InvalidState(format!("{object} is not in the local copy"))
        }
        QueueRefusal::KeyReused { seq } => StoreError::Conflict {
            key: format!(
                "Idempotency-Key {:?} (push_{seq}, another change)",
                new.client_key.as_deref().unwrap_or("")
            ),
            account_id: new.account_id.clone(),
        },
        QueueRefusal::StaleBase { expected, current } => StoreError::VersionConflict {
            record: "stripe object",
            id: object,
            read: expected,
            stored: current,
        },
    }
}
