//! Stripe objects: the sled side of the local copy of linked Stripe accounts.
//!
//! Two trees: `stripe_objects` (each object, tombstones included, by (account, type,
//! id): one type of one account is one prefix scan, in id order) and `stripe_state`
//! (each account's sync state). A commit is one multi-tree transaction over them, the
//! account record, the inbox and the due index, and it applies the out-of-order guard
//! inside the transaction: each write is compared with the stamp stored at that moment
//! (or with an earlier write of the same commit), so the guard holds whoever else
//! writes. Values are encoded before the transaction where they can be; what depends on
//! the stored stamp is decided inside it.

use sled::transaction::Transactional;
use sled::Tree;

use super::due::TxDue;
use super::keys::{self};
use super::rows::settle_due;
use super::{from_tx, io, saturating_sub, tx, SledStore};
use crate::domain::stripe::{Guard, ObjectQuery, ObjectType, Stamp, StoredObject, StripeState};
use crate::domain::stripe_push::{AuditEntry, AuditNote, Push, PushStatus};
use crate::domain::AccountId;
use crate::store::{ObjectCommit, ObjectPage, ObjectReceipt, ObjectStore, StoreError};

/// Tree of objects by (account, type, id).
pub(super) const STRIPE_OBJECTS: &str = "stripe_objects";
/// Tree of sync states by account.
pub(super) const STRIPE_STATE: &str = "stripe_state";
/// Tree of push queue changes by (account, number).
pub(super) const STRIPE_PUSHES: &str = "stripe_pushes";
/// Tree of each account's last change number.
pub(super) const STRIPE_PUSH_SEQ: &str = "stripe_push_seq";
/// Tree of audit entries by (account, type, id, 0xFF, number).
pub(super) const STRIPE_AUDIT: &str = "stripe_audit";
/// Tree of the callers' idempotency keys by (account, key): the change each queued.
pub(super) const STRIPE_PUSH_KEYS: &str = "stripe_push_keys";

/// The trees of the object family, opened with the store.
pub(super) struct ObjectTrees {
    objects: Tree,
    state: Tree,
    pub(super) pushes: Tree,
    pub(super) push_seq: Tree,
    pub(super) audit: Tree,
    pub(super) push_keys: Tree,
    /// Queueing reads the account's open changes before its transaction (to queue a
    /// change behind an open one of the same object): one queueing at a time.
    pub(super) enqueue: std::sync::Mutex<()>,
}

impl ObjectTrees {
    /// Opens (or creates) the family's trees in `db`.
    pub(super) fn open(db: &sled::Db) -> Result<ObjectTrees, StoreError> {
        Ok(ObjectTrees {
            objects: db.open_tree(STRIPE_OBJECTS).map_err(io)?,
            state: db.open_tree(STRIPE_STATE).map_err(io)?,
            pushes: db.open_tree(STRIPE_PUSHES).map_err(io)?,
            push_seq: db.open_tree(STRIPE_PUSH_SEQ).map_err(io)?,
            audit: db.open_tree(STRIPE_AUDIT).map_err(io)?,
            push_keys: db.open_tree(STRIPE_PUSH_KEYS).map_err(io)?,
            enqueue: std::sync::Mutex::new(()),
        })
    }
}

/// The prefix of one type of one account: the account's length-prefixed id, then the
/// type's position in [`ObjectType::ALL`].
fn type_prefix(account: &AccountId, object_type: ObjectType) -> Vec<u8> {
    let mut key = keys::account_prefix(account);
    let position = ObjectType::ALL
        .iter()
        .position(|t| *t == object_type)
        .unwrap_or(0);
    key.push(position as u8);
    key
}

pub(super) fn object_key(account: &AccountId, object_type: ObjectType, id: &str) -> Vec<u8> {
    let mut key = type_prefix(account, object_type);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The key of change `seq` of `account`.
pub(super) fn push_key(account: &AccountId, seq: u64) -> Vec<u8> {
    let mut key = keys::account_prefix(account);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The prefix of one object's audit trail: its object key, then 0xFF (never in an id).
pub(super) fn audit_prefix(account: &AccountId, object_type: ObjectType, id: &str) -> Vec<u8> {
    let mut key = object_key(account, object_type, id);
    key.push(0xFF);
    key
}

/// Numbers and writes an audit entry of `object_type`/`object_id` inside a transaction.
pub(super) fn audit_insert(
    audit: &sled::transaction::TransactionalTree,
    account: &AccountId,
    (object_type, object_id): (ObjectType, &str),
    at: chrono::DateTime<chrono::Utc>,
    version: Option<u64>,
    note: &AuditNote,
) -> Result<(), sled::transaction::ConflictableTransactionError<StoreError>> {
    let entry = AuditEntry {
        seq: audit.generate_id()?,
        object_type,
        object_id: object_id.to_owned(),
        at,
        version,
        note: note.clone(),
    };
    let mut key = audit_prefix(account, object_type, object_id);
    key.extend_from_slice(&entry.seq.to_be_bytes());
    audit.insert(key, tx(keys::encode(STRIPE_AUDIT, &entry))?)?;
    Ok(())
}

impl SledStore {
    pub(super) fn read_object(&self, key: &[u8]) -> Result<Option<StoredObject>, StoreError> {
        match self.objects.objects.get(key).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(STRIPE_OBJECTS, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes every object and the sync state of a purged account.
    pub(super) fn purge_objects(&self, id: &AccountId) -> Result<(), StoreError> {
        let prefix = keys::account_prefix(id);
        for key in Self::scan_keys(&self.objects.objects, &prefix)? {
            self.objects.objects.remove(key).map_err(io)?;
        }
        self.objects
            .state
            .remove(keys::account_key(id))
            .map_err(io)?;
        for tree in [
            &self.objects.pushes,
            &self.objects.audit,
            &self.objects.push_keys,
        ] {
            for key in Self::scan_keys(tree, &prefix)? {
                tree.remove(key).map_err(io)?;
            }
        }
        self.objects
            .push_seq
            .remove(keys::account_key(id))
            .map_err(io)?;
        Ok(())
    }
}

impl ObjectStore for SledStore {
    fn stripe_state(&self, id: &AccountId) -> Result<Option<StripeState>, StoreError> {
        match self.objects.state.get(keys::account_key(id)).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(STRIPE_STATE, &bytes)?)),
            None => Ok(None),
        }
    }

    fn object_stamps(
        &self,
        id: &AccountId,
        objects: &[(ObjectType, String)],
    ) -> Result<Vec<Option<Stamp>>, StoreError> {
        objects
            .iter()
            .map(|(object_type, object_id)| {
                Ok(self
                    .read_object(&object_key(id, *object_type, object_id))?
                    .map(|o| o.stamp))
            })
            .collect()
    }

    fn get_object(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        self.read_object(&object_key(id, object_type, object_id))
    }

    fn list_objects(&self, query: &ObjectQuery) -> Result<ObjectPage, StoreError> {
        let prefix = type_prefix(&query.account_id, query.object_type);
        let limit = query.limit.max(1);
        let start = match &query.after {
            Some(after) => {
                let mut key = prefix.clone();
                key.extend_from_slice(after.as_bytes());
                // Just past `after`: the smallest key greater than it.
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut objects = Vec::with_capacity(limit.min(1000));
        let mut more = false;
        for item in self.objects.objects.range(start..) {
            let (key, bytes) = item.map_err(io)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let object: StoredObject = keys::decode(STRIPE_OBJECTS, &bytes)?;
            if object.is_deleted() {
                continue;
            }
            if objects.len() == limit {
                more = true;
                break;
            }
            objects.push(object);
        }
        let next = more
            .then(|| objects.last().map(|o: &StoredObject| o.id.clone()))
            .flatten();
        Ok(ObjectPage { objects, next })
    }

    fn count_objects(&self, id: &AccountId, object_type: ObjectType) -> Result<u64, StoreError> {
        let mut count = 0u64;
        for item in self
            .objects
            .objects
            .scan_prefix(type_prefix(id, object_type))
            .values()
        {
            let object: StoredObject = keys::decode(STRIPE_OBJECTS, &item.map_err(io)?)?;
            if !object.is_deleted() {
                count += 1;
            }
        }
        Ok(count)
    }

    fn commit_objects(&self, commit: &ObjectCommit) -> Result<ObjectReceipt, StoreError> {
        let _gate = self.write_gate()?;
        let account_id = &commit.account_id;
        let account_key = keys::account_key(account_id);
        let state_bytes = keys::encode(STRIPE_STATE, &commit.state)?;
        let write_keys: Vec<Vec<u8>> = commit
            .writes
            .iter()
            .map(|w| object_key(account_id, w.object_type, &w.id))
            .collect();
        let consumed: Vec<Vec<u8>> = commit
            .consumed
            .iter()
            .map(|seq| keys::inbox_key(account_id, *seq))
            .collect();
        let now = chrono::Utc::now();
        let push_keys: Vec<Vec<u8>> = commit
            .pushes
            .iter()
            .map(|p| push_key(account_id, p.seq))
            .collect();

        let (receipt, inbox_removed) = (
            &self.accounts,
            &self.objects.objects,
            &self.objects.state,
            &self.inbox,
            &self.due,
            &self.due_subjects,
            &self.objects.pushes,
            &self.objects.audit,
        )
            .transaction(
                |(accounts, objects, state, inbox, entries, subjects, pushes, audit)| {
                    let Some(bytes) = accounts.get(&account_key)? else {
                        return Err(sled::transaction::ConflictableTransactionError::Abort(
                            StoreError::AccountNotFound(account_id.clone()),
                        ));
                    };
                    let mut receipt = ObjectReceipt::default();
                    for (write, key) in commit.writes.iter().zip(&write_keys) {
                        let stored: Option<StoredObject> = match objects.get(key)? {
                            Some(bytes) => Some(tx(keys::decode(STRIPE_OBJECTS, &bytes))?),
                            None => None,
                        };
                        let verdict = Guard::check(&write.stamp, stored.as_ref().map(|o| &o.stamp));
                        if !verdict.applies(write.on_tie) {
                            receipt.skipped += 1;
                            continue;
                        }
                        let object = StoredObject {
                            object_type: write.object_type,
                            id: write.id.clone(),
                            body: write.body.clone(),
                            stamp: write.stamp.clone(),
                            updated_at: now,
                            version: stored.map_or(0, |o| o.version) + 1,
                        };
                        objects.insert(
                            key.as_slice(),
                            tx(keys::encode_compressed(STRIPE_OBJECTS, &object))?,
                        )?;
                        receipt.applied += 1;
                        audit_insert(
                            audit,
                            account_id,
                            (write.object_type, &write.id),
                            now,
                            Some(object.version),
                            &write.note,
                        )?;
                    }
                    for (object_type, object_id, note) in &commit.audit {
                        audit_insert(
                            audit,
                            account_id,
                            (*object_type, object_id),
                            now,
                            None,
                            note,
                        )?;
                    }
                    for (push, key) in commit.pushes.iter().zip(&push_keys) {
                        let pending = match pushes.get(key)? {
                            Some(bytes) => {
                                tx(keys::decode::<Push>(STRIPE_PUSHES, &bytes))?.status
                                    == PushStatus::Pending
                            }
                            None => false,
                        };
                        if pending {
                            pushes
                                .insert(key.as_slice(), tx(keys::encode(STRIPE_PUSHES, push))?)?;
                        }
                    }
                    state.insert(account_key.as_slice(), state_bytes.as_slice())?;
                    let mut removed = 0u64;
                    for key in &consumed {
                        if inbox.remove(key.as_slice())?.is_some() {
                            removed += 1;
                        }
                    }
                    if let Some(finish) = &commit.finish {
                        let mut account = tx(self.decode_account(&account_key, &bytes))?;
                        finish.record_on(&mut account);
                        accounts
                            .insert(account_key.as_slice(), tx(self.encode_account(&account))?)?;
                        let poll_millis = keys::due_millis(finish.finished_at);
                        settle_due(&TxDue { entries, subjects }, &account, poll_millis)?;
                    }
                    Ok((receipt, removed))
                },
            )
            .map_err(from_tx)?;
        saturating_sub(&self.inbox_depth, inbox_removed);
        for key in &consumed {
            self.claims.remove(key.as_slice()).map_err(io)?;
        }
        Ok(receipt)
    }
}
