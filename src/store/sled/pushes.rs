//! The push queue and the audit trail on sled: trees `stripe_pushes` (each change by
//! (account, number)), `stripe_push_seq` (each account's last number) and
//! `stripe_audit` (entries by (account, type, object id, 0xFF, number)). A change is
//! queued in one transaction with its number and its "queued" audit entry; the
//! actor's decisions are written by `commit_objects` (see `objects.rs`).

use sled::transaction::{ConflictableTransactionError, Transactional};

use super::keys;
use super::objects::{
    audit_insert, audit_prefix, object_key, push_key, STRIPE_AUDIT, STRIPE_PUSHES,
    STRIPE_PUSH_KEYS, STRIPE_PUSH_SEQ,
};
use super::{from_tx, io, tx, SledStore};
use crate::domain::stripe::ObjectType;
use crate::domain::stripe_push::{
    AuditEntry, AuditPage, NewPush, Push, PushBacklog, PushQuery, QueueRefusal, Resolution,
};
use crate::domain::AccountId;
use crate::store::{queue_refusal as refusal_error, PushStore, StoreError};

impl SledStore {
    fn account_pushes(&self, id: &AccountId) -> Result<Vec<Push>, StoreError> {
        self.objects
            .pushes
            .scan_prefix(keys::account_prefix(id))
            .values()
            .map(|bytes| keys::decode(STRIPE_PUSHES, &bytes.map_err(io)?))
            .collect()
    }
}

impl PushStore for SledStore {
    fn enqueue_push(&self, new: &NewPush) -> Result<Push, StoreError> {
        let _gate = self.write_gate()?;
        let _one = self
            .objects
            .enqueue
            .lock()
            .map_err(|_| StoreError::Io("push queue lock poisoned".into()))?;
        let account_key = keys::account_key(&new.account_id);
        let open = self.open_pushes(&new.account_id)?;
        let current = match &new.object_id {
            Some(object_id) => {
                self.read_object(&object_key(&new.account_id, new.object_type, object_id))?
            }
            None => None,
        };
        let client_key = new.client_key.as_ref().map(|key| {
            let mut bytes = keys::account_prefix(&new.account_id);
            bytes.extend_from_slice(key.as_bytes());
            bytes
        });
        let push = (
            &self.accounts,
            &self.objects.pushes,
            &self.objects.push_seq,
            &self.objects.audit,
            &self.objects.push_keys,
        )
            .transaction(|(accounts, pushes, seqs, audit, push_keys)| {
                if accounts.get(&account_key)?.is_none() {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::AccountNotFound(new.account_id.clone()),
                    ));
                }
                if let Some(client_key) = &client_key {
                    if let Some(seq) = push_keys.get(client_key)? {
                        let seq = tx(keys::decode::<u64>(STRIPE_PUSH_KEYS, &seq))?;
                        let earlier = match pushes.get(push_key(&new.account_id, seq))? {
                            Some(bytes) => tx(keys::decode::<Push>(STRIPE_PUSHES, &bytes))?,
                            None => {
                                return Err(ConflictableTransactionError::Abort(
                                    StoreError::Corrupt {
                                        tree: STRIPE_PUSH_KEYS,
                                        detail: format!("key of missing push_{seq}"),
                                    },
                                ))
                            }
                        };
                        if new.is_repeat_of(&earlier) {
                            return Ok(earlier);
                        }
                        return tx(Err(refusal_error(new, QueueRefusal::KeyReused { seq })));
                    }
                }
                let last = match seqs.get(&account_key)? {
                    Some(bytes) => tx(keys::decode::<u64>(STRIPE_PUSH_SEQ, &bytes))?,
                    None => 0,
                };
                let push = tx(Push::queued(new, last + 1, current.as_ref(), &open)
                    .map_err(|refusal| refusal_error(new, refusal)))?;
                seqs.insert(
                    account_key.as_slice(),
                    tx(keys::encode(STRIPE_PUSH_SEQ, &push.seq))?,
                )?;
                pushes.insert(
                    push_key(&new.account_id, push.seq),
                    tx(keys::encode(STRIPE_PUSHES, &push))?,
                )?;
                if let Some(client_key) = &client_key {
                    push_keys.insert(
                        client_key.as_slice(),
                        tx(keys::encode(STRIPE_PUSH_KEYS, &push.seq))?,
                    )?;
                }
                if let Some(object_id) = &push.object_id {
                    audit_insert(
                        audit,
                        &new.account_id,
                        (push.object_type, object_id),
                        new.at,
                        None,
                        &push.queued_note(),
                    )?;
                }
                Ok(push)
            })
            .map_err(from_tx)?;
        Ok(push)
    }

    fn get_push(&self, id: &AccountId, seq: u64) -> Result<Option<Push>, StoreError> {
        match self.objects.pushes.get(push_key(id, seq)).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(STRIPE_PUSHES, &bytes)?)),
            None => Ok(None),
        }
    }

    fn list_pushes(&self, query: &PushQuery) -> Result<(Vec<Push>, Option<u64>), StoreError> {
        let limit = query.limit.max(1);
        let start = push_key(
            &query.account_id,
            query.after.map_or(0, |a| a.saturating_add(1)),
        );
        let prefix = keys::account_prefix(&query.account_id);
        let mut out = Vec::new();
        for item in self.objects.pushes.range(start..) {
            let (key, bytes) = item.map_err(io)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let push: Push = keys::decode(STRIPE_PUSHES, &bytes)?;
            if !query.statuses.is_empty() && !query.statuses.contains(&push.status) {
                continue;
            }
            if out.len() == limit {
                let next = out.last().map(|p: &Push| p.seq);
                return Ok((out, next));
            }
            out.push(push);
        }
        Ok((out, None))
    }

    fn open_pushes(&self, id: &AccountId) -> Result<Vec<Push>, StoreError> {
        Ok(self
            .account_pushes(id)?
            .into_iter()
            .filter(|p| p.status.is_open())
            .collect())
    }

    fn push_backlog(&self, id: &AccountId) -> Result<PushBacklog, StoreError> {
        let mut backlog = PushBacklog::default();
        for push in self.account_pushes(id)? {
            backlog.add(&push);
        }
        Ok(backlog)
    }

    fn resolve_push(
        &self,
        id: &AccountId,
        seq: u64,
        resolution: Resolution,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Push, StoreError> {
        let _gate = self.write_gate()?;
        let key = push_key(id, seq);
        (&self.objects.pushes, &self.objects.audit)
            .transaction(|(pushes, audit)| {
                let Some(bytes) = pushes.get(&key)? else {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::InvalidState(format!("push_{seq} does not exist")),
                    ));
                };
                let mut push: Push = tx(keys::decode(STRIPE_PUSHES, &bytes))?;
                let note = tx(push
                    .resolve(resolution, at)
                    .map_err(StoreError::InvalidState))?;
                pushes.insert(key.as_slice(), tx(keys::encode(STRIPE_PUSHES, &push))?)?;
                if let Some(object_id) = &push.object_id {
                    audit_insert(audit, id, (push.object_type, object_id), at, None, &note)?;
                }
                Ok(push)
            })
            .map_err(from_tx)
    }

    fn audit_trail(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let limit = limit.max(1);
        let prefix = audit_prefix(id, object_type, object_id);
        let mut start = prefix.clone();
        start.extend_from_slice(&after.map_or(0, |a| a.saturating_add(1)).to_be_bytes());
        let mut entries = Vec::new();
        for item in self.objects.audit.range(start..) {
            let (key, bytes) = item.map_err(io)?;
            if !key.starts_with(&prefix) {
                break;
            }
            if entries.len() == limit {
                let next = entries.last().map(|e: &AuditEntry| e.seq);
                return Ok(AuditPage { entries, next });
            }
            entries.push(keys::decode(STRIPE_AUDIT, &bytes)?);
        }
        Ok(AuditPage {
            entries,
            next: None,
        })
    }
}
