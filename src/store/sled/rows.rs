//! An account's transaction rows: the one-transaction sync commit (rows, cursor, outcome,
//! consumed inbox entries, the retry and polling entries it settles), the staging of a
//! first sync's rows outside any transaction, and paged reads in (date, id) order.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, Transactional};
use sled::IVec;

use super::due::TxDue;
use super::keys::{self, TRANSACTIONS, TXN_INDEX};
use super::{from_tx, io, saturating_sub, tx, SledStore};
use crate::domain::{AccountId, LinkStatus, Transaction};
use crate::store::{
    AccountStore, ApplyMode, DueKind, RowStore, StoreError, SyncCommit, TransactionPage,
    TransactionQuery,
};

/// A transaction row prepared outside the transaction so the closure only moves bytes.
struct PreparedUpsert<'a> {
    id: &'a str,
    date: String,
    key: IVec,
    value: IVec,
    index_key: IVec,
    index_value: IVec,
}

/// What a committed sync settles in the due index, inside its transaction: any pending
/// retry of it is moot, and the next poll is a full interval away (`poll_millis`, the
/// sync's end). Forward only: the sweeper may have anchored it at its poll request,
/// later than this sync's end. An unlinked account has no entry and gets none back.
pub(super) fn settle_due(
    due: &TxDue<'_>,
    account: &crate::domain::Account,
    poll_millis: u64,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let id = account.id.as_str();
    due.remove(DueKind::Retry, id)?;
    let anchored = due.millis_of(DueKind::Poll, id)?;
    if account.status == LinkStatus::Linked && anchored.is_none_or(|current| current < poll_millis)
    {
        due.put(DueKind::Poll, id, poll_millis, &[])?;
    }
    Ok(())
}

impl SledStore {
    /// Whether the account's rows are visible: only once a sync has committed (staged
    /// rows of a first sync stay hidden until then).
    fn rows_visible(&self, id: &AccountId) -> Result<bool, StoreError> {
        Ok(self
            .get_account(id)?
            .is_some_and(|account| account.cursor.is_some()))
    }

    pub(super) fn staging_lock(&self, id: &AccountId) -> Arc<std::sync::Mutex<()>> {
        self.staging.entry(id.clone()).or_default().clone()
    }

    /// Fails unless the account exists and has never committed a sync.
    fn ensure_never_synced(&self, id: &AccountId) -> Result<(), StoreError> {
        match self.get_account(id)? {
            None => Err(StoreError::AccountNotFound(id.clone())),
            Some(account) => {
                if account.cursor.is_some() {
                    return Err(StoreError::InvalidState(format!(
                        "account {id} has committed a sync; its rows change only by commit"
                    )));
                }
                if account.status != LinkStatus::Linked {
                    return Err(StoreError::InvalidState(format!(
                        "account {id} is unlinked"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Inserts or moves one row with plain operations (the caller guarantees no other
    /// writer touches this account's rows, and that readers do not see them yet).
    fn upsert_plain(&self, account: &AccountId, row: &Transaction) -> Result<(), StoreError> {
        let date = keys::date_component(row.date);
        let index_key = keys::txn_index_key(account, &row.id);
        if let Some(old) = self.txn_index.get(&index_key).map_err(io)? {
            let old_date: String = keys::decode(TXN_INDEX, &old)?;
            if old_date != date {
                self.transactions
                    .remove(keys::txn_key(account, &old_date, &row.id))
                    .map_err(io)?;
            }
        }
        self.transactions
            .insert(
                keys::txn_key(account, &date, &row.id),
                keys::encode_compressed(TRANSACTIONS, row)?,
            )
            .map_err(io)?;
        self.txn_index
            .insert(index_key, keys::encode(TXN_INDEX, &date)?)
            .map_err(io)?;
        Ok(())
    }
}

impl RowStore for SledStore {
    fn commit_sync(&self, commit: SyncCommit) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        if commit.mode == ApplyMode::Staged
            && !(commit.upserts.is_empty() && commit.removals.is_empty())
        {
            return Err(StoreError::InvalidState(
                "a staged commit carries no rows: they were staged already".to_string(),
            ));
        }
        // Serialized with `clear_rows` of a later attempt: a commit that was already
        // running when its sync was aborted must not publish rows being cleared.
        let staging_lock =
            (commit.mode == ApplyMode::Staged).then(|| self.staging_lock(&commit.account_id));
        let _staging = staging_lock
            .as_ref()
            .map(|lock| lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let account_id = &commit.account_id;
        let account_key = keys::account_key(account_id);

        let upserts = commit
            .upserts
            .iter()
            .map(|row| {
                let date = keys::date_component(row.date);
                Ok(PreparedUpsert {
                    id: &row.id,
                    key: keys::txn_key(account_id, &date, &row.id).into(),
                    value: keys::encode_compressed(TRANSACTIONS, row)?.into(),
                    index_key: keys::txn_index_key(account_id, &row.id).into(),
                    index_value: keys::encode(TXN_INDEX, &date)?.into(),
                    date,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let removals: Vec<(IVec, &str)> = commit
            .removals
            .iter()
            .map(|id| (keys::txn_index_key(account_id, id).into(), id.as_str()))
            .collect();
        // Replace: every existing row whose id is not upserted goes. The account actor
        // serializes syncs, so nothing else writes these rows between scan and commit.
        let victims: Vec<(IVec, IVec)> = if commit.mode == ApplyMode::Replace {
            let keep: HashSet<&str> = upserts.iter().map(|u| u.id).collect();
            let prefix = keys::account_prefix(account_id);
            let mut victims = Vec::new();
            for key in Self::scan_keys(&self.transactions, &prefix)? {
                let id = keys::txn_id_from_key(prefix.len(), &key).ok_or_else(|| {
                    StoreError::Corrupt {
                        tree: TRANSACTIONS,
                        detail: "transaction key without a UTF-8 id".into(),
                    }
                })?;
                if !keep.contains(id.as_str()) {
                    victims.push((key, keys::txn_index_key(account_id, &id).into()));
                }
            }
            victims
        } else {
            Vec::new()
        };
        let consumed: Vec<Vec<u8>> = commit
            .consumed
            .iter()
            .map(|seq| keys::inbox_key(account_id, *seq))
            .collect();
        let poll_millis = keys::due_millis(commit.finished_at);

        let inbox_removed = (
            &self.accounts,
            &self.transactions,
            &self.txn_index,
            &self.inbox,
            &self.due,
            &self.due_subjects,
        )
            .transaction(
                |(accounts, transactions, txn_index, inbox, entries, subjects)| {
                    let Some(bytes) = accounts.get(&account_key)? else {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::AccountNotFound(account_id.clone()),
                        ));
                    };
                    let mut account = tx(self.decode_account(&account_key, &bytes))?;
                    if commit.mode == ApplyMode::Staged && account.cursor.is_some() {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::InvalidState(format!(
                                "account {account_id} already committed its first sync"
                            )),
                        ));
                    }

                    for row in &upserts {
                        if let Some(old) = txn_index.get(&row.index_key)? {
                            let old_date: String = tx(keys::decode(TXN_INDEX, &old))?;
                            if old_date != row.date {
                                transactions
                                    .remove(keys::txn_key(account_id, &old_date, row.id))?;
                            }
                        }
                        transactions.insert(row.key.clone(), row.value.clone())?;
                        txn_index.insert(row.index_key.clone(), row.index_value.clone())?;
                    }
                    for (index_key, id) in &removals {
                        if let Some(old) = txn_index.remove(index_key.clone())? {
                            let old_date: String = tx(keys::decode(TXN_INDEX, &old))?;
                            transactions.remove(keys::txn_key(account_id, &old_date, id))?;
                        }
                    }
                    for (key, index_key) in &victims {
                        transactions.remove(key.clone())?;
                        txn_index.remove(index_key.clone())?;
                    }

                    commit.record_on(&mut account);
                    accounts.insert(account_key.as_slice(), tx(self.encode_account(&account))?)?;

                    let mut removed = 0u64;
                    for key in &consumed {
                        if inbox.remove(key.as_slice())?.is_some() {
                            removed += 1;
                        }
                    }
                    settle_due(&TxDue { entries, subjects }, &account, poll_millis)?;
                    Ok(removed)
                },
            )
            .map_err(from_tx)?;
        saturating_sub(&self.inbox_depth, inbox_removed);
        // The consumed entries are gone, so their claims mean nothing any more (a stale
        // claim only ever turns a would-be duplicate into one more harmless sync).
        for key in &consumed {
            self.claims.remove(key.as_slice()).map_err(io)?;
        }
        if commit.mode == ApplyMode::Staged {
            self.staging.remove(account_id);
        }
        Ok(())
    }

    fn stage_rows(
        &self,
        id: &AccountId,
        upserts: Vec<Transaction>,
        removals: Vec<String>,
    ) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let lock = self.staging_lock(id);
        let _staging = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.ensure_never_synced(id)?;
        for row in &upserts {
            self.upsert_plain(id, row)?;
        }
        for txn_id in &removals {
            if let Some(old) = self
                .txn_index
                .remove(keys::txn_index_key(id, txn_id))
                .map_err(io)?
            {
                let old_date: String = keys::decode(TXN_INDEX, &old)?;
                self.transactions
                    .remove(keys::txn_key(id, &old_date, txn_id))
                    .map_err(io)?;
            }
        }
        Ok(())
    }

    fn clear_rows(&self, id: &AccountId) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let lock = self.staging_lock(id);
        let _staging = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.ensure_never_synced(id)?;
        let prefix = keys::account_prefix(id);
        for key in Self::scan_keys(&self.transactions, &prefix)? {
            self.transactions.remove(key).map_err(io)?;
        }
        for key in Self::scan_keys(&self.txn_index, &prefix)? {
            self.txn_index.remove(key).map_err(io)?;
        }
        Ok(())
    }

    fn list_transactions(
        &self,
        id: &AccountId,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, StoreError> {
        if !self.rows_visible(id)? {
            return Ok(TransactionPage {
                transactions: Vec::new(),
                next: None,
            });
        }
        let prefix = keys::account_prefix(id);
        let with_prefix = |tail: &[u8]| {
            let mut key = prefix.clone();
            key.extend_from_slice(tail);
            key
        };
        // Page tokens are `YYYY-MM-DD|id`, i.e. the key without its account prefix, so
        // any string is a valid exclusive lower bound: garbage cannot panic or error, it
        // just starts the page somewhere in (date, id) order.
        let mut lower = Bound::Included(match query.start_date {
            Some(start) => with_prefix(format!("{}|", keys::date_component(start)).as_bytes()),
            None => prefix.clone(),
        });
        if let Some(after) = &query.after {
            let after = with_prefix(after.as_bytes());
            if let Bound::Included(current) = &lower {
                if &after >= current {
                    lower = Bound::Excluded(after);
                }
            }
        }
        // '}' follows '|', so this bound is above every id on the end date.
        let upper = match query.end_date {
            Some(end) => Some(with_prefix(
                format!("{}}}", keys::date_component(end)).as_bytes(),
            )),
            None => keys::prefix_end(&prefix),
        };
        let empty = match (&lower, &upper) {
            (Bound::Included(lo) | Bound::Excluded(lo), Some(hi)) => lo >= hi,
            _ => false,
        };
        if empty {
            return Ok(TransactionPage {
                transactions: Vec::new(),
                next: None,
            });
        }
        let upper = upper.map_or(Bound::Unbounded, Bound::Excluded);

        let limit = query.limit.max(1);
        let mut rows = Vec::with_capacity(limit.min(1024));
        let mut last_key = None;
        let mut more = false;
        for item in self.transactions.range::<Vec<u8>, _>((lower, upper)) {
            let (key, value) = item.map_err(io)?;
            if rows.len() == limit {
                more = true;
                break;
            }
            rows.push(keys::decode::<Transaction>(TRANSACTIONS, &value)?);
            last_key = Some(key);
        }
        let next = match (more, last_key) {
            (true, Some(key)) => {
                Some(
                    keys::txn_token(prefix.len(), &key).ok_or_else(|| StoreError::Corrupt {
                        tree: TRANSACTIONS,
                        detail: "transaction key is not UTF-8".into(),
                    })?,
                )
            }
            _ => None,
        };
        Ok(TransactionPage {
            transactions: rows,
            next,
        })
    }

    fn count_transactions(&self, id: &AccountId) -> Result<u64, StoreError> {
        if !self.rows_visible(id)? {
            return Ok(0);
        }
        let mut n = 0;
        for key in self.txn_index.scan_prefix(keys::account_prefix(id)).keys() {
            key.map_err(io)?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
