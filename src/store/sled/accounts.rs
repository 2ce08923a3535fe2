//! Account records and their lookup keys: linking (with the adoption of webhooks that
//! arrived for the item first), resolving, listing, unlinking, and the per-account marks.
//! Linking and unlinking also place and remove the account's polling entry in the same
//! transaction, so the polling fallback never misses a linked account.

use std::ops::Bound;

use chrono::{DateTime, Utc};
use sled::transaction::{ConflictableTransactionError, Transactional, TransactionalTree};
use sled::IVec;

use super::due::{poll_anchor, TxDue};
use super::inbox::UnroutedEvent;
use super::keys::{self, INBOX, LOOKUP, UNROUTED};
use super::{from_tx, io, saturating_sub, tx, SledStore, TxResult};
use crate::domain::{
    AccessToken, Account, AccountId, InboxEntry, LinkStatus, NeedsReauth, PendingDeadline,
    Quarantine, SyncGaveUp, SyncOutcome,
};
use crate::store::{AccountStore, DueKind, InboxStore, LinkReceipt, Resolved, StoreError};

/// Removes `key` from the lookup tree if it still points at `id` (after an unlink and
/// relink, the same item id belongs to another account and must stay).
fn remove_if_points_to(lookup: &TransactionalTree, key: &[u8], id: &AccountId) -> TxResult<()> {
    if let Some(value) = lookup.get(key)? {
        let holder: AccountId = tx(keys::decode(LOOKUP, &value))?;
        if &holder == id {
            lookup.remove(key)?;
        }
    }
    Ok(())
}

fn remove_lookup_keys(lookup: &TransactionalTree, account: &Account) -> TxResult<()> {
    remove_if_points_to(
        lookup,
        &keys::item_key(account.provider, &account.item_id),
        &account.id,
    )?;
    for alias in &account.aliases {
        remove_if_points_to(lookup, &keys::alias_key(alias), &account.id)?;
    }
    lookup.remove(keys::owner_key(&account.owner_id, &account.id))?;
    Ok(())
}

/// The retired lookup keys of an unlinked account: one per distinct key it is listed
/// with (item id, aliases, owner id).
pub(super) fn retired_keys(account: &Account) -> Vec<Vec<u8>> {
    let mut names: Vec<&str> = vec![&account.item_id, &account.owner_id];
    names.extend(account.aliases.iter().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| keys::retired_key(name, &account.id))
        .collect()
}

/// Moves the given unrouted events into `account`'s inbox; returns how many moved
/// (keys already gone, e.g. adopted by an earlier pass, are skipped).
fn adopt(
    unrouted: &TransactionalTree,
    inbox: &TransactionalTree,
    found: &[IVec],
    account: &AccountId,
) -> TxResult<u64> {
    let mut moved = 0;
    for key in found {
        let Some(value) = unrouted.remove(key)? else {
            continue;
        };
        let event: UnroutedEvent = tx(keys::decode(UNROUTED, &value))?;
        let entry = InboxEntry {
            seq: event.seq,
            account_id: account.clone(),
            provider: event.provider,
            kind: event.kind,
            received_at: event.received_at,
            body: event.body,
        };
        inbox.insert(
            keys::inbox_key(account, event.seq),
            tx(keys::encode(INBOX, &entry))?,
        )?;
        moved += 1;
    }
    Ok(moved)
}

impl SledStore {
    /// Ids found under a lookup prefix (item ids of any provider, owner ids), sorted
    /// and deduplicated.
    fn ids_under(&self, prefix: &[u8]) -> Result<Vec<AccountId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.lookup.scan_prefix(prefix).values() {
            ids.push(keys::decode::<AccountId>(LOOKUP, &item.map_err(io)?)?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

impl AccountStore for SledStore {
    fn link_account(&self, account: &Account) -> Result<LinkReceipt, StoreError> {
        let _gate = self.write_gate()?;
        let mut record = account.clone();
        record.status = LinkStatus::Linked;
        let id = &record.id;
        let account_key = keys::account_key(id);
        let record_bytes = self.encode_account(&record)?;
        let id_value = keys::encode(LOOKUP, id)?;
        let mut claimed = vec![(
            record.item_id.clone(),
            keys::item_key(record.provider, &record.item_id),
        )];
        claimed.extend(
            record
                .aliases
                .iter()
                .map(|a| (a.clone(), keys::alias_key(a))),
        );
        let owner_key = keys::owner_key(&record.owner_id, id);
        let unrouted_prefix = keys::unrouted_prefix(record.provider, &record.item_id);
        let kept = Self::scan_keys(&self.unrouted, &unrouted_prefix)?;
        let poll_millis = keys::due_millis(poll_anchor(&record));

        let adopted = (
            &self.accounts,
            &self.lookup,
            &self.inbox,
            &self.unrouted,
            &self.due,
            &self.due_subjects,
        )
            .transaction(|(accounts, lookup, inbox, unrouted, entries, subjects)| {
                // Relinking the same id replaces its keys rather than adding to them.
                if let Some(previous) = accounts.get(&account_key)? {
                    let previous = tx(self.decode_account(&account_key, &previous))?;
                    remove_lookup_keys(lookup, &previous)?;
                }
                for (name, key) in &claimed {
                    let Some(holder) = lookup.get(key)? else {
                        continue;
                    };
                    let holder: AccountId = tx(keys::decode(LOOKUP, &holder))?;
                    if &holder == id {
                        continue;
                    }
                    let holder_key = keys::account_key(&holder);
                    let holder_linked = match accounts.get(&holder_key)? {
                        Some(bytes) => {
                            tx(self.decode_account(&holder_key, &bytes))?.status
                                == LinkStatus::Linked
                        }
                        None => false,
                    };
                    if holder_linked {
                        return Err(ConflictableTransactionError::Abort(StoreError::Conflict {
                            key: name.clone(),
                            account_id: holder,
                        }));
                    }
                }
                accounts.insert(account_key.as_slice(), record_bytes.as_slice())?;
                for (_, key) in &claimed {
                    lookup.insert(key.as_slice(), id_value.as_slice())?;
                }
                lookup.insert(owner_key.as_slice(), id_value.as_slice())?;
                TxDue { entries, subjects }.put(DueKind::Poll, id.as_str(), poll_millis, &[])?;
                adopt(unrouted, inbox, &kept, id)
            })
            .map_err(from_tx)?;

        // An ingest that committed between the scan and the link left its event under
        // the prefix; none can arrive now that the item resolves inside ingest.
        let stragglers = Self::scan_keys(&self.unrouted, &unrouted_prefix)?;
        let late = if stragglers.is_empty() {
            0
        } else {
            (&self.inbox, &self.unrouted)
                .transaction(|(inbox, unrouted)| adopt(unrouted, inbox, &stragglers, id))
                .map_err(from_tx)?
        };
        tracing::debug!(account_id = %id, adopted_events = adopted + late, "account record linked");
        Ok(LinkReceipt {
            adopted_events: adopted + late,
        })
    }

    fn get_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        let key = keys::account_key(id);
        self.accounts
            .get(&key)
            .map_err(io)?
            .map(|bytes| self.decode_account(&key, &bytes))
            .transpose()
    }

    fn resolve(&self, key: &str) -> Result<Resolved, StoreError> {
        if AccountId::looks_canonical(key)
            && self.accounts.contains_key(key.as_bytes()).map_err(io)?
        {
            return Ok(Resolved::Found(AccountId(key.to_owned())));
        }
        if let Some(bytes) = self.lookup.get(keys::alias_key(key)).map_err(io)? {
            return Ok(Resolved::Found(keys::decode(LOOKUP, &bytes)?));
        }
        // Live keys first: a key an unlinked account shared with a linked one (linked
        // again under a new id, say) means the linked one.
        for prefix in [
            keys::item_prefix(key),
            keys::owner_prefix(key),
            keys::retired_prefix(key),
        ] {
            if let Some(resolved) = Resolved::of(self.ids_under(&prefix)?) {
                return Ok(resolved);
            }
        }
        Ok(Resolved::NotFound)
    }

    fn list_accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        let iter = match after {
            Some(after) => self
                .accounts
                .range::<Vec<u8>, _>((Bound::Excluded(keys::account_key(after)), Bound::Unbounded)),
            None => self.accounts.iter(),
        };
        iter.take(limit)
            .map(|item| {
                let (key, bytes) = item.map_err(io)?;
                self.decode_account(&key, &bytes)
            })
            .collect()
    }

    fn unlink_account(&self, id: &AccountId, purge: bool) -> Result<Option<Account>, StoreError> {
        let _gate = self.write_gate()?;
        // A first sync's staging call may still be running on a blocking thread after
        // its actor was stopped; the purge must come after it, or its rows outlive it.
        // (Lock order everywhere: the write gate, then the staging lock.)
        let staging_lock = self.staging_lock(id);
        let _staging = staging_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let account_key = keys::account_key(id);
        let prefix = keys::account_prefix(id);
        if purge {
            // Before the account goes: a crash in between leaves an account to purge
            // again, never objects nobody can reach.
            self.purge_objects(id)?;
        }
        let (rows, index, inbox_keys) = if purge {
            (
                Self::scan_keys(&self.transactions, &prefix)?,
                Self::scan_keys(&self.txn_index, &prefix)?,
                Self::scan_keys(&self.inbox, &prefix)?,
            )
        } else {
            Default::default()
        };

        let outcome = (
            &self.accounts,
            &self.lookup,
            &self.transactions,
            &self.txn_index,
            &self.inbox,
            &self.due,
            &self.due_subjects,
        )
            .transaction(
                |(accounts, lookup, transactions, txn_index, inbox, entries, subjects)| {
                    let Some(bytes) = accounts.get(&account_key)? else {
                        return Ok(None);
                    };
                    let previous = tx(self.decode_account(&account_key, &bytes))?;
                    remove_lookup_keys(lookup, &previous)?;
                    let retired = retired_keys(&previous);
                    let id_value = tx(keys::encode(LOOKUP, id))?;
                    for key in &retired {
                        if purge {
                            lookup.remove(key.as_slice())?;
                        } else {
                            lookup.insert(key.as_slice(), id_value.as_slice())?;
                        }
                    }
                    let due = TxDue { entries, subjects };
                    due.remove(DueKind::Poll, id.as_str())?;
                    let mut inbox_removed = 0u64;
                    if purge {
                        // A purged account has nothing left to retry either.
                        due.remove(DueKind::Retry, id.as_str())?;
                        accounts.remove(account_key.as_slice())?;
                        for key in &rows {
                            transactions.remove(key)?;
                        }
                        for key in &index {
                            txn_index.remove(key)?;
                        }
                        for key in &inbox_keys {
                            if inbox.remove(key)?.is_some() {
                                inbox_removed += 1;
                            }
                        }
                    } else {
                        let mut record = previous.clone();
                        record.status = LinkStatus::Unlinked;
                        accounts
                            .insert(account_key.as_slice(), tx(self.encode_account(&record))?)?;
                    }
                    Ok(Some((previous, inbox_removed)))
                },
            )
            .map_err(from_tx)?;
        let Some((previous, mut inbox_removed)) = outcome else {
            return Ok(None);
        };

        if purge {
            // Rows or entries written between the scans and the transaction. Nothing can
            // add more now: syncs need the record, ingest needs the lookup keys.
            for tree in [&self.transactions, &self.txn_index] {
                for key in Self::scan_keys(tree, &prefix)? {
                    tree.remove(key).map_err(io)?;
                }
            }
            for key in Self::scan_keys(&self.inbox, &prefix)? {
                if self.inbox.remove(key).map_err(io)?.is_some() {
                    inbox_removed += 1;
                }
            }
        }
        saturating_sub(&self.inbox_depth, inbox_removed);
        tracing::debug!(account_id = %id, purged = purge, "account record unlinked");
        if purge {
            for key in Self::scan_keys(&self.claims, &prefix)? {
                self.claims.remove(key).map_err(io)?;
            }
        }
        if purge {
            // Nothing can stage for a purged account (it no longer exists).
            self.staging.remove(id);
        }
        Ok(Some(previous))
    }

    fn record_sync_started(&self, id: &AccountId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.update_account(id, |account| account.last_sync_started_at = Some(at))
    }

    fn record_sync_failed(
        &self,
        id: &AccountId,
        outcome: SyncOutcome,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.update_account(id, |account| {
            account.last_sync_finished_at = Some(at);
            account.last_sync_outcome = Some(outcome.clone());
        })
    }

    fn set_quarantine(
        &self,
        id: &AccountId,
        quarantine: Option<Quarantine>,
    ) -> Result<(), StoreError> {
        self.update_account(id, |account| account.quarantine = quarantine.clone())
    }

    fn count_accounts(&self) -> Result<u64, StoreError> {
        Ok(self.accounts.len() as u64)
    }

    fn set_sync_gave_up(
        &self,
        id: &AccountId,
        gave_up: Option<SyncGaveUp>,
    ) -> Result<(), StoreError> {
        let change = |account: &mut Account| account.failed = gave_up.clone();
        match gave_up {
            Some(_) => self.update_account_clearing_retry(id, change),
            None => self.update_account(id, change),
        }
    }

    fn set_needs_reauth(
        &self,
        id: &AccountId,
        needs_reauth: Option<NeedsReauth>,
    ) -> Result<(), StoreError> {
        let change = |account: &mut Account| account.needs_reauth = needs_reauth.clone();
        match needs_reauth {
            Some(_) => self.update_account_clearing_retry(id, change),
            None => self.update_account(id, change),
        }
    }

    fn update_login_state(
        &self,
        id: &AccountId,
        change: &dyn Fn(&mut Account) -> bool,
    ) -> Result<Account, StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::account_key(id);
        (&self.accounts, &self.due, &self.due_subjects)
            .transaction(|(accounts, entries, subjects)| {
                let Some(bytes) = accounts.get(&key)? else {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::AccountNotFound(id.clone()),
                    ));
                };
                let mut account = tx(self.decode_account(&key, &bytes))?;
                // The caller sees the whole record but owns only the login state.
                let mut edited = account.clone();
                if !change(&mut edited) {
                    return Ok(account);
                }
                account.take_login_state(edited);
                accounts.insert(key.as_slice(), tx(self.encode_account(&account))?)?;
                if account.needs_reauth.is_some() || account.failed.is_some() {
                    // A parked account is not retried (as with `set_needs_reauth` and
                    // `set_sync_gave_up`).
                    TxDue { entries, subjects }.remove(DueKind::Retry, id.as_str())?;
                }
                Ok(account)
            })
            .map_err(from_tx)
    }

    fn set_pending_deadline(
        &self,
        id: &AccountId,
        deadline: Option<PendingDeadline>,
    ) -> Result<(), StoreError> {
        self.update_account(id, |account| account.pending_deadline = deadline.clone())
    }

    fn relink_account(&self, id: &AccountId, token: &AccessToken) -> Result<Account, StoreError> {
        // Unlinked accounts are linked anew, not relinked (their keys are gone).
        self.get_account(id)?
            .filter(|account| account.status == LinkStatus::Linked)
            .ok_or_else(|| StoreError::AccountNotFound(id.clone()))?;
        // What the inbox holds predates the new token: its login errors must not park
        // the account again (see `NeedsReauth::relinked`), and the deadlines it
        // announced were lifted by this relink (the user went through update mode), so
        // they must not reopen their warnings either.
        let seen = self.pending_inbox(id)?.iter().map(|entry| entry.seq).max();
        self.update_account(id, |account| account.relink(token, seen))?;
        self.get_account(id)?
            .ok_or_else(|| StoreError::AccountNotFound(id.clone()))
    }
}

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;
