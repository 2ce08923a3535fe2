//! Account records and their lookup keys on PostgreSQL: linking (with the adoption of
//! webhooks kept for the item), resolving, listing, unlinking, and the per-account
//! marks. Every read-modify-write locks the account's row (`FOR UPDATE`), which is also
//! what keeps a first sync's staging, its clearing and a purge in order.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{db_error, transaction, PgStore, Tx, TxError, TxResult};
use crate::domain::{
    AccessToken, Account, AccountId, LinkStatus, NeedsReauth, PendingDeadline, Quarantine,
    SyncGaveUp, SyncOutcome,
};
use crate::store::{AccountStore, LinkReceipt, Resolved, StoreError};

/// Partitions accounts hash to (the unit a node will lease in multi-node mode).
const PARTITIONS: u32 = 256;

/// The account's partition: FNV-1a of its id, stable across versions and processes.
pub(super) fn partition_of(id: &AccountId) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in id.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    // Below 256: always fits.
    i32::try_from(hash % PARTITIONS).unwrap_or(0)
}

/// The advisory lock of a provider item, taken by linking and by ingest (see the
/// `ingest_webhooks` function in the migrations, which computes the same key).
pub(super) async fn lock_item(tx: &mut Tx, provider: &str, item_id: &str) -> TxResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))")
        .bind(provider)
        .bind(item_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn status_text(status: LinkStatus) -> &'static str {
    match status {
        LinkStatus::Linked => "linked",
        LinkStatus::Unlinked => "unlinked",
    }
}

/// Where a poll's anchor sits for an account: its last successful sync, else its link.
pub(super) fn poll_anchor(account: &Account) -> DateTime<Utc> {
    account.cursor_updated_at.unwrap_or(account.created_at)
}

impl PgStore {
    /// The account's record, its row locked until the transaction ends.
    pub(super) async fn account_for_update(
        &self,
        tx: &mut Tx,
        id: &AccountId,
    ) -> TxResult<Option<Account>> {
        let record: Option<Value> =
            sqlx::query_scalar("SELECT record FROM accounts WHERE id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut **tx)
                .await?;
        Ok(record.map(|json| self.sealer.open(json)).transpose()?)
    }

    /// Writes the account's row (insert or overwrite): its record, token sealed, and
    /// the typed columns read from it.
    pub(super) async fn put_account(&self, tx: &mut Tx, account: &Account) -> TxResult<()> {
        let record = self.sealer.seal(account)?;
        sqlx::query(
            "INSERT INTO accounts (id, partition, provider, item_id, owner_id, status, created_at, \
                 cursor_updated_at, last_sync_finished_at, sync_count, secret_key_id, record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO UPDATE SET provider = EXCLUDED.provider, \
                 item_id = EXCLUDED.item_id, owner_id = EXCLUDED.owner_id, \
                 status = EXCLUDED.status, created_at = EXCLUDED.created_at, \
                 cursor_updated_at = EXCLUDED.cursor_updated_at, \
                 last_sync_finished_at = EXCLUDED.last_sync_finished_at, \
                 sync_count = EXCLUDED.sync_count, secret_key_id = EXCLUDED.secret_key_id, \
                 record = EXCLUDED.record",
        )
        .bind(account.id.as_str())
        .bind(partition_of(&account.id))
        .bind(account.provider.as_str())
        .bind(&account.item_id)
        .bind(&account.owner_id)
        .bind(status_text(account.status))
        .bind(account.created_at)
        .bind(account.cursor_updated_at)
        .bind(account.last_sync_finished_at)
        .bind(i64::try_from(account.sync_count).unwrap_or(i64::MAX))
        .bind(self.sealer.current_key_id())
        .bind(record)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Read-modify-write of one account record; with `clear_retry`, its retry entry
    /// goes in the same transaction (a parked or given-up account is not retried).
    fn update_account(
        &self,
        id: &AccountId,
        clear_retry: bool,
        change: impl Fn(&mut Account),
    ) -> Result<(), StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let Some(mut account) = self.account_for_update(tx, id).await? else {
                        return Err(TxError::Fail(StoreError::AccountNotFound(id.clone())));
                    };
                    change(&mut account);
                    self.put_account(tx, &account).await?;
                    if clear_retry {
                        super::due::remove_retry(tx, id).await?;
                    }
                    Ok(())
                }
                .await
            })
        })
    }

    /// Ids in C order from a query taking one text parameter.
    async fn ids_where(&self, sql: &str, key: &str) -> Result<Vec<AccountId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(sql)
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(ids.into_iter().map(AccountId).collect())
    }
}

/// The first of `names` a live key of another linked account holds, with that account.
async fn conflict(tx: &mut Tx, account: &Account) -> TxResult<Option<(String, AccountId)>> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT id FROM accounts WHERE provider = $1 AND item_id = $2 AND status = 'linked' AND id <> $3",
    )
    .bind(account.provider.as_str())
    .bind(&account.item_id)
    .bind(account.id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(holder) = holder {
        return Ok(Some((account.item_id.clone(), AccountId(holder))));
    }
    for alias in &account.aliases {
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT account_id FROM aliases WHERE alias = $1 AND live AND account_id <> $2",
        )
        .bind(alias)
        .bind(account.id.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(holder) = holder {
            return Ok(Some((alias.clone(), AccountId(holder))));
        }
    }
    Ok(None)
}

impl AccountStore for PgStore {
    fn link_account(&self, account: &Account) -> Result<LinkReceipt, StoreError> {
        let mut record = account.clone();
        record.status = LinkStatus::Linked;
        let record = &record;
        let id = &record.id;
        let adopted = self.write(async {
            transaction!(self, |tx| {
                async {
                    lock_item(tx, record.provider.as_str(), &record.item_id).await?;
                    // Relinking the same id replaces its keys rather than adding to them.
                    sqlx::query("DELETE FROM aliases WHERE account_id = $1")
                        .bind(id.as_str())
                        .execute(&mut **tx)
                        .await?;
                    if let Some((key, account_id)) = conflict(tx, record).await? {
                        return Err(TxError::Fail(StoreError::Conflict { key, account_id }));
                    }
                    self.put_account(tx, record).await?;
                    for alias in &record.aliases {
                        sqlx::query(
                            "INSERT INTO aliases (account_id, alias, live) VALUES ($1, $2, true) \
                             ON CONFLICT (account_id, alias) DO UPDATE SET live = true",
                        )
                        .bind(id.as_str())
                        .bind(alias)
                        .execute(&mut **tx)
                        .await
                        // Another link took the alias since the check: run again, and the
                        // check reports it.
                        .map_err(|e| match unique_violation(&e) {
                            true => TxError::Retry(e),
                            false => TxError::from(e),
                        })?;
                    }
                    super::due::put_poll(tx, id, poll_anchor(record)).await?;
                    let adopted = sqlx::query(
                        "UPDATE inbox SET account_id = $1 \
                         WHERE account_id IS NULL AND provider = $2 AND item_id = $3",
                    )
                    .bind(id.as_str())
                    .bind(record.provider.as_str())
                    .bind(&record.item_id)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    Ok(adopted)
                }
                .await
            })
        })?;
        tracing::debug!(account_id = %id, adopted_events = adopted, "account record linked");
        Ok(LinkReceipt {
            adopted_events: adopted,
        })
    }

    fn get_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        self.block_on(async {
            let record: Option<Value> =
                sqlx::query_scalar("SELECT record FROM accounts WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error)?;
            record.map(|json| self.sealer.open(json)).transpose()
        })
    }

    fn resolve(&self, key: &str) -> Result<Resolved, StoreError> {
        self.block_on(async {
            if AccountId::looks_canonical(key) {
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM accounts WHERE id = $1")
                        .bind(key)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db_error)?;
                if exists.is_some() {
                    return Ok(Resolved::Found(AccountId(key.to_owned())));
                }
            }
            // Live keys first: a key an unlinked account shared with a linked one (linked
            // again under a new id, say) means the linked one.
            for sql in [
                "SELECT account_id FROM aliases WHERE alias = $1 AND live",
                "SELECT id FROM accounts WHERE item_id = $1 AND status = 'linked' ORDER BY id COLLATE \"C\"",
                "SELECT id FROM accounts WHERE owner_id = $1 AND status = 'linked' ORDER BY id COLLATE \"C\"",
                "SELECT id FROM accounts WHERE status = 'unlinked' AND (item_id = $1 OR owner_id = $1 \
                     OR id IN (SELECT account_id FROM aliases WHERE alias = $1 AND NOT live)) \
                 ORDER BY id COLLATE \"C\"",
            ] {
                if let Some(resolved) = Resolved::of(self.ids_where(sql, key).await?) {
                    return Ok(resolved);
                }
            }
            Ok(Resolved::NotFound)
        })
    }

    fn list_accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<Account>, StoreError> {
        self.block_on(async {
            let records: Vec<Value> = sqlx::query_scalar(
                "SELECT record FROM accounts WHERE $1::text IS NULL OR id > $1 COLLATE \"C\" \
                 ORDER BY id COLLATE \"C\" LIMIT $2",
            )
            .bind(after.map(AccountId::as_str))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            records
                .into_iter()
                .map(|json| self.sealer.open(json))
                .collect()
        })
    }

    fn unlink_account(&self, id: &AccountId, purge: bool) -> Result<Option<Account>, StoreError> {
        let previous = self.write(async {
            transaction!(self, |tx| {
                async {
                    let Some(previous) = self.account_for_update(tx, id).await? else {
                        return Ok(None);
                    };
                    super::due::remove_subject(tx, crate::store::DueKind::Poll, id.as_str())
                        .await?;
                    if purge {
                        // A purged account has nothing left to retry either; its rows,
                        // inbox entries and aliases go with it (ON DELETE CASCADE).
                        super::due::remove_retry(tx, id).await?;
                        sqlx::query("DELETE FROM accounts WHERE id = $1")
                            .bind(id.as_str())
                            .execute(&mut **tx)
                            .await?;
                    } else {
                        let mut record = previous.clone();
                        record.status = LinkStatus::Unlinked;
                        self.put_account(tx, &record).await?;
                        // Its aliases become retired keys: they still find it, and no
                        // longer keep another account from taking them.
                        sqlx::query("UPDATE aliases SET live = false WHERE account_id = $1")
                            .bind(id.as_str())
                            .execute(&mut **tx)
                            .await?;
                    }
                    Ok(Some(previous))
                }
                .await
            })
        })?;
        if previous.is_some() {
            if purge {
                // Its inbox entries went with it.
                self.depth.invalidate();
            }
            tracing::debug!(account_id = %id, purged = purge, "account record unlinked");
        }
        Ok(previous)
    }

    fn record_sync_started(&self, id: &AccountId, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.update_account(id, false, |account| account.last_sync_started_at = Some(at))
    }

    fn record_sync_failed(
        &self,
        id: &AccountId,
        outcome: SyncOutcome,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.update_account(id, false, |account| {
            account.last_sync_finished_at = Some(at);
            account.last_sync_outcome = Some(outcome.clone());
        })
    }

    fn set_quarantine(
        &self,
        id: &AccountId,
        quarantine: Option<Quarantine>,
    ) -> Result<(), StoreError> {
        self.update_account(id, false, |account| account.quarantine = quarantine.clone())
    }

    fn count_accounts(&self) -> Result<u64, StoreError> {
        self.block_on(async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn set_sync_gave_up(
        &self,
        id: &AccountId,
        gave_up: Option<SyncGaveUp>,
    ) -> Result<(), StoreError> {
        let clear_retry = gave_up.is_some();
        self.update_account(id, clear_retry, |account| account.failed = gave_up.clone())
    }

    fn set_needs_reauth(
        &self,
        id: &AccountId,
        needs_reauth: Option<NeedsReauth>,
    ) -> Result<(), StoreError> {
        let clear_retry = needs_reauth.is_some();
        self.update_account(id, clear_retry, |account| {
            account.needs_reauth = needs_reauth.clone()
        })
    }

    fn update_login_state(
        &self,
        id: &AccountId,
        change: &dyn Fn(&mut Account) -> bool,
    ) -> Result<Account, StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let Some(mut account) = self.account_for_update(tx, id).await? else {
                        return Err(TxError::Fail(StoreError::AccountNotFound(id.clone())));
                    };
                    // The caller sees the whole record but owns only the login state.
                    let mut edited = account.clone();
                    if !change(&mut edited) {
                        return Ok(account);
                    }
                    account.take_login_state(edited);
                    self.put_account(tx, &account).await?;
                    if account.needs_reauth.is_some() || account.failed.is_some() {
                        super::due::remove_retry(tx, id).await?;
                    }
                    Ok(account)
                }
                .await
            })
        })
    }

    fn set_pending_deadline(
        &self,
        id: &AccountId,
        deadline: Option<PendingDeadline>,
    ) -> Result<(), StoreError> {
        self.update_account(id, false, |account| {
            account.pending_deadline = deadline.clone()
        })
    }

    fn relink_account(&self, id: &AccountId, token: &AccessToken) -> Result<Account, StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                async {
                    // Unlinked accounts are linked anew, not relinked (their keys are gone).
                    let Some(mut account) = self
                        .account_for_update(tx, id)
                        .await?
                        .filter(|account| account.status == LinkStatus::Linked)
                    else {
                        return Err(TxError::Fail(StoreError::AccountNotFound(id.clone())));
                    };
                    // What the inbox holds predates the new token: its login errors must
                    // not park the account again, nor its deadlines reopen their warnings.
                    let seen: Option<i64> =
                        sqlx::query_scalar("SELECT max(seq) FROM inbox WHERE account_id = $1")
                            .bind(id.as_str())
                            .fetch_one(&mut **tx)
                            .await?;
                    let seen = seen.and_then(|seq| u64::try_from(seq).ok());
                    account.relink(token, seen);
                    self.put_account(tx, &account).await?;
                    Ok(account)
                }
                .await
            })
        })
    }
}

/// A unique index refused the write.
pub(super) fn unique_violation(error: &sqlx::Error) -> bool {
    error.as_database_error().and_then(|e| e.code()).as_deref() == Some("23505")
}
