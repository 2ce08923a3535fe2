//! Retry records and the polling index: the sparse due-time indexes the sweeper reads
//! instead of every account.

use chrono::{DateTime, Utc};
use sled::transaction::{Transactional, TransactionalTree};
use sled::Tree;

use super::keys::{self, ACCOUNTS, POLL, POLL_BACKFILLED, RETRIES};
use super::{from_tx, io, SledStore, TxResult};
use crate::domain::{Account, AccountId, LinkStatus};
use crate::store::{DueIndex, PollEntry, RetryRecord, StoreError};

/// Where an account's entry in the polling index sits: its last successful sync, or
/// its creation when it never synced.
pub(super) fn poll_anchor(account: &Account) -> DateTime<Utc> {
    account.cursor_updated_at.unwrap_or(account.created_at)
}

/// Points `id_key`'s polling entry at `new_key`, or removes it (`None`). The reverse
/// index says where the old entry is, so the move never scans.
pub(super) fn move_poll_entry(
    poll: &TransactionalTree,
    poll_index: &TransactionalTree,
    id_key: &[u8],
    new_key: Option<&[u8]>,
) -> TxResult<()> {
    let old = match new_key {
        Some(new_key) => poll_index.insert(id_key, new_key)?,
        None => poll_index.remove(id_key)?,
    };
    if let Some(old) = old {
        poll.remove(old)?;
    }
    if let Some(new_key) = new_key {
        poll.insert(new_key, id_key)?;
    }
    Ok(())
}

impl DueIndex for SledStore {
    fn record_retry(&self, record: &RetryRecord) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let index_key = keys::account_key(&record.account_id);
        let retry_key = keys::retry_key(record.due_at.timestamp_millis(), &record.account_id);
        let value = keys::encode(RETRIES, record)?;
        (&self.retries, &self.retry_index)
            .transaction(|(retries, retry_index)| {
                if let Some(old) = retry_index.insert(index_key.as_slice(), retry_key.as_slice())? {
                    retries.remove(old)?;
                }
                retries.insert(retry_key.as_slice(), value.as_slice())?;
                Ok(())
            })
            .map_err(from_tx)
    }

    fn clear_retry(&self, id: &AccountId) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let index_key = keys::account_key(id);
        (&self.retries, &self.retry_index)
            .transaction(|(retries, retry_index)| {
                if let Some(old) = retry_index.remove(index_key.as_slice())? {
                    retries.remove(old)?;
                }
                Ok(())
            })
            .map_err(from_tx)
    }

    fn reschedule_retry(
        &self,
        current: &RetryRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let _gate = self.write_gate()?;
        let index_key = keys::account_key(&current.account_id);
        let current_key = keys::retry_key(current.due_at.timestamp_millis(), &current.account_id);
        let current_value = keys::encode(RETRIES, current)?;
        let moved = match due_at {
            Some(due_at) => {
                let record = RetryRecord {
                    due_at,
                    ..current.clone()
                };
                let key = keys::retry_key(due_at.timestamp_millis(), &record.account_id);
                Some((key, keys::encode(RETRIES, &record)?))
            }
            None => None,
        };
        (&self.retries, &self.retry_index)
            .transaction(|(retries, retry_index)| {
                let still_current = retry_index.get(index_key.as_slice())?.as_deref()
                    == Some(current_key.as_slice())
                    && retries.get(current_key.as_slice())?.as_deref()
                        == Some(current_value.as_slice());
                if !still_current {
                    return Ok(false);
                }
                retries.remove(current_key.as_slice())?;
                match &moved {
                    Some((key, value)) => {
                        retry_index.insert(index_key.as_slice(), key.as_slice())?;
                        retries.insert(key.as_slice(), value.as_slice())?;
                    }
                    None => {
                        retry_index.remove(index_key.as_slice())?;
                    }
                }
                Ok(true)
            })
            .map_err(from_tx)
    }

    fn due_retries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RetryRecord>, StoreError> {
        // Every key due at `now` sorts before the first key of the next millisecond.
        let end = keys::retry_key(
            now.timestamp_millis().saturating_add(1),
            &AccountId(String::new()),
        );
        self.retries
            .range(..end)
            .values()
            .take(limit)
            .map(|bytes| keys::decode(RETRIES, &bytes.map_err(io)?))
            .collect()
    }

    fn retry_of(&self, id: &AccountId) -> Result<Option<RetryRecord>, StoreError> {
        let Some(retry_key) = self.retry_index.get(keys::account_key(id)).map_err(io)? else {
            return Ok(None);
        };
        match self.retries.get(retry_key).map_err(io)? {
            Some(bytes) => Ok(Some(keys::decode(RETRIES, &bytes)?)),
            None => Ok(None),
        }
    }

    fn due_polls(
        &self,
        anchored_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PollEntry>, StoreError> {
        // Every key anchored at `anchored_by` sorts before the next millisecond's first.
        let end = keys::poll_key(
            anchored_by.timestamp_millis().saturating_add(1),
            &AccountId(String::new()),
        );
        let mut due = Vec::new();
        for item in self.poll.range(..end).take(limit) {
            let (key, value) = item.map_err(io)?;
            let corrupt = |detail: &str| StoreError::Corrupt {
                tree: POLL,
                detail: detail.to_string(),
            };
            let millis = keys::poll_key_millis(&key).ok_or_else(|| corrupt("short key"))?;
            let id = std::str::from_utf8(&value).map_err(|_| corrupt("id is not UTF-8"))?;
            let anchor = DateTime::<Utc>::from_timestamp_millis(millis)
                .ok_or_else(|| corrupt("anchor out of range"))?;
            due.push(PollEntry {
                account_id: AccountId(id.to_string()),
                anchor,
            });
        }
        Ok(due)
    }

    fn defer_poll(&self, entry: &PollEntry, at: DateTime<Utc>) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let id_key = keys::account_key(&entry.account_id);
        let entry_key = keys::poll_key(entry.anchor.timestamp_millis(), &entry.account_id);
        let new_key = keys::poll_key(at.timestamp_millis(), &entry.account_id);
        (&self.poll, &self.poll_index)
            .transaction(|(poll, poll_index)| {
                let current = poll_index.get(&id_key)?;
                if current.as_deref() != Some(entry_key.as_slice()) {
                    // Stale: nothing points at it.
                    poll.remove(entry_key.as_slice())?;
                }
                match current {
                    // Same id suffix, so byte order is anchor order. Forward only: a
                    // commit that landed meanwhile may have moved it later already.
                    Some(current) if current.as_ref() >= new_key.as_slice() => Ok(()),
                    _ => move_poll_entry(poll, poll_index, &id_key, Some(&new_key)),
                }
            })
            .map_err(from_tx)
    }

    fn clear_poll(&self, entry: &PollEntry) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let id_key = keys::account_key(&entry.account_id);
        let entry_key = keys::poll_key(entry.anchor.timestamp_millis(), &entry.account_id);
        (&self.poll, &self.poll_index)
            .transaction(|(poll, poll_index)| {
                poll.remove(entry_key.as_slice())?;
                if poll_index.get(&id_key)?.as_deref() == Some(entry_key.as_slice()) {
                    poll_index.remove(id_key.as_slice())?;
                }
                Ok(())
            })
            .map_err(from_tx)
    }
}

/// Writes a polling entry without its reverse mapping: the state a bug or a torn
/// write of an older version could leave, for the sweeper's repair tests.
#[cfg(test)]
impl SledStore {
    pub(crate) fn plant_stale_poll_entry(&self, id: &AccountId, anchor: DateTime<Utc>) {
        let key = keys::poll_key(anchor.timestamp_millis(), id);
        self.poll
            .insert(key, keys::account_key(id))
            .expect("plant entry");
    }
}

/// Gives every linked account of a store written before the polling index existed its
/// entry, once. Idempotent and restartable: an account whose entry is complete is
/// skipped, a half-written one is rewritten, and the marker goes in last, so a crash
/// midway redoes the rest at the next open. A new store gets the marker at once.
pub(super) fn backfill_poll_index(
    accounts: &Tree,
    poll: &Tree,
    poll_index: &Tree,
) -> Result<(), StoreError> {
    if poll_index.contains_key(POLL_BACKFILLED).map_err(io)? {
        return Ok(());
    }
    let mut added = 0u64;
    for item in accounts.iter() {
        let (id_key, bytes) = item.map_err(io)?;
        let account: Account = keys::decode(ACCOUNTS, &bytes)?;
        if account.status != LinkStatus::Linked {
            continue;
        }
        if let Some(key) = poll_index.get(&id_key).map_err(io)? {
            if poll.contains_key(&key).map_err(io)? {
                continue;
            }
        }
        let key = keys::poll_key(poll_anchor(&account).timestamp_millis(), &account.id);
        (poll, poll_index)
            .transaction(|(poll, poll_index)| {
                move_poll_entry(poll, poll_index, &id_key, Some(&key))
            })
            .map_err(from_tx)?;
        added += 1;
    }
    poll_index.insert(POLL_BACKFILLED, &[]).map_err(io)?;
    if added > 0 {
        tracing::info!(accounts = added, "polling index backfilled");
    }
    Ok(())
}

#[cfg(test)]
#[path = "due_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "poll_tests.rs"]
mod poll_tests;
