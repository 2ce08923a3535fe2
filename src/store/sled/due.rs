//! The due-time index: one pair of trees that every timed thing of the store goes
//! through (retries, polls, the alert outbox), instead of one hand-made sparse index
//! per feature.
//!
//! `due` holds the entries by (kind, time, subject) with their payload, so a kind's due
//! part is one range read and a reader never walks what is not due (polls, anchored in
//! the past, would otherwise flood a read of retries). `due_subjects` maps (kind,
//! subject) to the entry's time, so replacing or removing a subject's entry never
//! scans. Writers that change an entry as part of a larger change (a link, a sync
//! commit, an incident that enqueues an alert) take both trees into their own
//! transaction through [`TxDue`]; the trait methods here are the standalone writes.
//!
//! An entry in `due` that `due_subjects` does not point at is stale (an older version
//! or a torn write may have left one): readers still return it, so whoever acts on it
//! repairs it (see `defer_poll` and `clear_poll`).

use chrono::{DateTime, Utc};
use sled::transaction::{Transactional, TransactionalTree};
use sled::IVec;

use super::keys::{self, DUE, DUE_SUBJECTS};
use super::{from_tx, io, tx, SledStore, TxResult};
use crate::domain::{Account, AccountId};
use crate::store::{DueEntry, DueIndex, DueKind, PollEntry, RetryRecord, StoreError};

/// Where an account's entry in the polling index sits: its last successful sync, or
/// its creation when it never synced.
pub(super) fn poll_anchor(account: &Account) -> DateTime<Utc> {
    account.cursor_updated_at.unwrap_or(account.created_at)
}

/// The exclusive end (millis) of a read of everything at or before `at`: every key of
/// that millisecond sorts before the first key of the next one.
fn end_after(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis().saturating_add(1)).unwrap_or(0)
}

/// Decodes a `due_subjects` value (the entry's big-endian millis).
fn stored_millis(bytes: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            tree: DUE_SUBJECTS,
            detail: format!("entry time of {} bytes", bytes.len()),
        })
}

fn corrupt_key() -> StoreError {
    StoreError::Corrupt {
        tree: DUE,
        detail: "unreadable due-index key".to_string(),
    }
}

/// The due index's two trees inside a caller's transaction: whoever changes an entry
/// as part of a larger write puts `&self.due, &self.due_subjects` in its transaction
/// and goes through this, so the entry changes with the rest or not at all.
#[derive(Clone, Copy)]
pub(super) struct TxDue<'a> {
    /// `due`: (kind, time, subject) to payload.
    pub(super) entries: &'a TransactionalTree,
    /// `due_subjects`: (kind, subject) to the entry's time.
    pub(super) subjects: &'a TransactionalTree,
}

impl TxDue<'_> {
    /// The time (millis) of the subject's entry of `kind`, if it has one.
    pub(super) fn millis_of(&self, kind: DueKind, subject: &str) -> TxResult<Option<u64>> {
        match self.subjects.get(keys::due_subject_key(kind, subject))? {
            Some(bytes) => Ok(Some(tx(stored_millis(&bytes))?)),
            None => Ok(None),
        }
    }

    /// The subject's entry of `kind` as (millis, payload).
    pub(super) fn get(&self, kind: DueKind, subject: &str) -> TxResult<Option<(u64, IVec)>> {
        let Some(millis) = self.millis_of(kind, subject)? else {
            return Ok(None);
        };
        let payload = self.entries.get(keys::due_key(kind, millis, subject))?;
        Ok(payload.map(|payload| (millis, payload)))
    }

    /// Schedules the subject's entry of `kind` at `millis`, replacing its previous one.
    pub(super) fn put(
        &self,
        kind: DueKind,
        subject: &str,
        millis: u64,
        payload: &[u8],
    ) -> TxResult<()> {
        let subject_key = keys::due_subject_key(kind, subject);
        if let Some(old) = self.subjects.insert(subject_key, &millis.to_be_bytes())? {
            let old = tx(stored_millis(&old))?;
            self.entries.remove(keys::due_key(kind, old, subject))?;
        }
        self.entries
            .insert(keys::due_key(kind, millis, subject), payload)?;
        Ok(())
    }

    /// Removes the subject's entry of `kind`; whether it had one.
    pub(super) fn remove(&self, kind: DueKind, subject: &str) -> TxResult<bool> {
        let Some(old) = self.subjects.remove(keys::due_subject_key(kind, subject))? else {
            return Ok(false);
        };
        let old = tx(stored_millis(&old))?;
        self.entries.remove(keys::due_key(kind, old, subject))?;
        Ok(true)
    }
}

/// One raw entry read from `due`.
pub(super) struct RawDue {
    /// Its time, in stored millis.
    pub(super) millis: u64,
    /// Its subject.
    pub(super) subject: String,
    /// Its payload.
    pub(super) payload: IVec,
}

impl RawDue {
    fn into_entry(self, kind: DueKind) -> Result<DueEntry, StoreError> {
        Ok(DueEntry {
            kind,
            due_at: keys::due_time(self.millis).ok_or_else(corrupt_key)?,
            subject: self.subject,
            payload: self.payload.to_vec(),
        })
    }
}

impl SledStore {
    /// Runs `write` in one transaction over the due index's trees.
    fn due_transaction<T>(
        &self,
        write: impl Fn(TxDue<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let _gate = self.write_gate()?;
        (&self.due, &self.due_subjects)
            .transaction(|(entries, subjects)| write(TxDue { entries, subjects }))
            .map_err(from_tx)
    }

    /// The entries of `kind` before `end` (exclusive millis; `None`: all), in (time,
    /// subject) order, lazily: one range read of the kind's part of `due`.
    pub(super) fn due_range(
        &self,
        kind: DueKind,
        end: Option<u64>,
    ) -> impl Iterator<Item = Result<RawDue, StoreError>> + '_ {
        let start = vec![kind.tag()];
        let end = match end {
            Some(millis) => keys::due_key(kind, millis, ""),
            None => vec![kind.tag().saturating_add(1)],
        };
        self.due.range(start..end).map(|item| {
            let (key, payload) = item.map_err(io)?;
            let (_, millis, subject) = keys::due_key_parts(&key).ok_or_else(corrupt_key)?;
            Ok(RawDue {
                millis,
                subject: subject.to_owned(),
                payload,
            })
        })
    }

    /// The subject's entry of `kind`, outside any transaction.
    fn raw_entry_of(&self, kind: DueKind, subject: &str) -> Result<Option<RawDue>, StoreError> {
        let subject_key = keys::due_subject_key(kind, subject);
        let Some(millis) = self.due_subjects.get(subject_key).map_err(io)? else {
            return Ok(None);
        };
        let millis = stored_millis(&millis)?;
        let payload = self
            .due
            .get(keys::due_key(kind, millis, subject))
            .map_err(io)?;
        Ok(payload.map(|payload| RawDue {
            millis,
            subject: subject.to_owned(),
            payload,
        }))
    }
}

impl DueIndex for SledStore {
    fn schedule_due(&self, entry: &DueEntry) -> Result<(), StoreError> {
        let millis = keys::due_millis(entry.due_at);
        self.due_transaction(|due| due.put(entry.kind, &entry.subject, millis, &entry.payload))
    }

    fn due_entries(
        &self,
        until: DateTime<Utc>,
        kind: DueKind,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.due_range(kind, Some(end_after(until)))
            .take(limit)
            .map(|raw| raw?.into_entry(kind))
            .collect()
    }

    fn reschedule_due(
        &self,
        current: &DueEntry,
        next: Option<&DueEntry>,
    ) -> Result<bool, StoreError> {
        current.check_rescheduled_as(next)?;
        let current_millis = keys::due_millis(current.due_at);
        self.due_transaction(|due| {
            let still_current =
                due.get(current.kind, &current.subject)?
                    .is_some_and(|(millis, payload)| {
                        millis == current_millis && payload.as_ref() == current.payload.as_slice()
                    });
            if !still_current {
                return Ok(false);
            }
            match next {
                Some(next) => due.put(
                    next.kind,
                    &next.subject,
                    keys::due_millis(next.due_at),
                    &next.payload,
                )?,
                None => {
                    due.remove(current.kind, &current.subject)?;
                }
            }
            Ok(true)
        })
    }

    fn remove_due(&self, kind: DueKind, subject: &str) -> Result<bool, StoreError> {
        self.due_transaction(|due| due.remove(kind, subject))
    }

    fn due_entry_of(&self, kind: DueKind, subject: &str) -> Result<Option<DueEntry>, StoreError> {
        self.raw_entry_of(kind, subject)?
            .map(|raw| raw.into_entry(kind))
            .transpose()
    }

    fn next_due(&self, kind: DueKind) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.due_range(kind, None)
            .next()
            .transpose()?
            .map(|raw| keys::due_time(raw.millis).ok_or_else(corrupt_key))
            .transpose()
    }

    fn record_retry(&self, record: &RetryRecord) -> Result<(), StoreError> {
        let subject = record.account_id.as_str();
        let millis = keys::due_millis(record.due_at);
        let payload = keys::encode(DUE, record)?;
        self.due_transaction(|due| due.put(DueKind::Retry, subject, millis, &payload))
    }

    fn clear_retry(&self, id: &AccountId) -> Result<(), StoreError> {
        self.due_transaction(|due| due.remove(DueKind::Retry, id.as_str()).map(|_| ()))
    }

    fn reschedule_retry(
        &self,
        current: &RetryRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let subject = current.account_id.as_str();
        let moved = match due_at {
            Some(due_at) => {
                let record = RetryRecord {
                    due_at,
                    ..current.clone()
                };
                Some((keys::due_millis(due_at), keys::encode(DUE, &record)?))
            }
            None => None,
        };
        let current = (
            keys::due_millis(current.due_at),
            keys::encode(DUE, current)?,
        );
        self.due_transaction(|due| {
            // Byte for byte: a record replaced by a sync, even at the same time, wins.
            let still_current =
                due.get(DueKind::Retry, subject)?
                    .is_some_and(|(millis, payload)| {
                        millis == current.0 && payload.as_ref() == current.1.as_slice()
                    });
            if !still_current {
                return Ok(false);
            }
            match &moved {
                Some((millis, payload)) => due.put(DueKind::Retry, subject, *millis, payload)?,
                None => {
                    due.remove(DueKind::Retry, subject)?;
                }
            }
            Ok(true)
        })
    }

    fn due_retries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RetryRecord>, StoreError> {
        self.due_range(DueKind::Retry, Some(end_after(now)))
            .take(limit)
            .map(|raw| keys::decode(DUE, &raw?.payload))
            .collect()
    }

    fn retry_of(&self, id: &AccountId) -> Result<Option<RetryRecord>, StoreError> {
        self.raw_entry_of(DueKind::Retry, id.as_str())?
            .map(|raw| keys::decode(DUE, &raw.payload))
            .transpose()
    }

    fn due_polls(
        &self,
        anchored_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PollEntry>, StoreError> {
        self.due_range(DueKind::Poll, Some(end_after(anchored_by)))
            .take(limit)
            .map(|raw| {
                let raw = raw?;
                Ok(PollEntry {
                    anchor: keys::due_time(raw.millis).ok_or_else(corrupt_key)?,
                    account_id: AccountId(raw.subject),
                })
            })
            .collect()
    }

    fn defer_poll(&self, entry: &PollEntry, at: DateTime<Utc>) -> Result<(), StoreError> {
        let subject = entry.account_id.as_str();
        let entry_millis = keys::due_millis(entry.anchor);
        let new_millis = keys::due_millis(at);
        self.due_transaction(|due| {
            let current = due.millis_of(DueKind::Poll, subject)?;
            if current != Some(entry_millis) {
                // Stale: nothing points at it.
                due.entries
                    .remove(keys::due_key(DueKind::Poll, entry_millis, subject))?;
            }
            match current {
                // Forward only: a commit that landed meanwhile may have moved it later.
                Some(current) if current >= new_millis => Ok(()),
                _ => due.put(DueKind::Poll, subject, new_millis, &[]),
            }
        })
    }

    fn clear_poll(&self, entry: &PollEntry) -> Result<(), StoreError> {
        let subject = entry.account_id.as_str();
        let entry_millis = keys::due_millis(entry.anchor);
        self.due_transaction(|due| {
            due.entries
                .remove(keys::due_key(DueKind::Poll, entry_millis, subject))?;
            if due.millis_of(DueKind::Poll, subject)? == Some(entry_millis) {
                due.subjects
                    .remove(keys::due_subject_key(DueKind::Poll, subject))?;
            }
            Ok(())
        })
    }
}

/// Writes a polling entry without its reverse mapping: the state a bug or a torn
/// write of an older version could leave, for the sweeper's repair tests.
#[cfg(test)]
impl SledStore {
    pub(crate) fn plant_stale_poll_entry(&self, id: &AccountId, anchor: DateTime<Utc>) {
        let key = keys::due_key(DueKind::Poll, keys::due_millis(anchor), id.as_str());
        self.due.insert(key, &[]).expect("plant entry");
    }
}

#[cfg(test)]
#[path = "poll_tests.rs"]
mod poll_tests;
#[cfg(test)]
#[path = "due_tests.rs"]
mod tests;
