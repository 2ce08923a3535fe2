//! The sled implementation of [`Store`]: typed trees, versioned records and the
//! multi-tree transactions that keep the store's invariants.
//!
//! sled 0.34.7 shapes several choices here:
//! - its multi-tree transactions take one process-wide lock and may re-run their
//!   closure, so closures only move prepared bytes (values are encoded beforehand where
//!   possible) and have no side effects; counters are updated after the commit from the
//!   closure's return value;
//! - a transaction closure must never call a non-transactional sled method: those take
//!   the same global lock for reading and would deadlock (`Db::generate_id` included,
//!   hence `TransactionalTree::generate_id`);
//! - transactional trees cannot range-scan, so scans happen before the transaction and
//!   what they found is re-checked (or swept again) around it;
//! - durability is ours: sled's own periodic flusher is off and [`GroupCommit`] flushes
//!   and fsyncs from one task.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::{IVec, Tree};

use super::group_commit::{FlushFn, GroupCommit};
use super::keys::{self, ACCOUNTS, DEDUP, INBOX, LOOKUP, TRANSACTIONS, TXN_INDEX, UNROUTED};
use super::{
    ApplyMode, IncomingWebhook, IngestOutcome, LinkReceipt, Resolved, Store, StoreError,
    SyncCommit, TransactionPage, TransactionQuery,
};
use crate::domain::{
    Account, AccountId, InboxEntry, LinkStatus, ProviderKind, SyncOutcome, Transaction,
};

/// Where and how to open the sled store.
#[derive(Clone, Debug)]
pub struct SledStoreConfig {
    /// Directory holding sled's files; created if missing.
    pub data_dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
}

/// A webhook kept for an item that is not linked yet, adopted into an inbox on link.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct UnroutedEvent {
    seq: u64,
    provider: ProviderKind,
    item_id: String,
    kind: String,
    received_at: DateTime<Utc>,
    body: serde_json::Value,
}

/// A dedup key's record: duplicates are rejected until `expires_at`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DedupRecord {
    expires_at: DateTime<Utc>,
}

/// The sled database plus open handles on the files the group commit fsyncs.
struct DbFiles {
    db: sled::Db,
    db_file: File,
    dir: File,
    blobs_dir: PathBuf,
}

impl DbFiles {
    /// sled's `flush` ends in `sync_file_range`, which does not persist metadata or
    /// survive every crash; follow it with real fsyncs of the log, any blob files and
    /// the directories that list them.
    fn flush_and_sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        self.db_file.sync_all().map_err(io)?;
        match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry.map_err(io)?.path();
                    match File::open(&path) {
                        Ok(f) => f.sync_all().map_err(io)?,
                        // sled garbage-collects blobs concurrently; a gone blob needs no sync.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io(e)),
                    }
                }
                File::open(&self.blobs_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        self.dir.sync_all().map_err(io)
    }
}

/// The sled-backed [`Store`]. Open with [`SledStore::open`]; stop with
/// [`SledStore::shutdown`], after which writes answer [`StoreError::Closed`].
pub struct SledStore {
    /// Owns the database; the flusher holds only a weak reference so dropping the
    /// store closes sled. Never read otherwise.
    _files: Arc<DbFiles>,
    data_dir: PathBuf,
    accounts: Tree,
    lookup: Tree,
    transactions: Tree,
    txn_index: Tree,
    inbox: Tree,
    unrouted: Tree,
    dedup: Tree,
    /// Pending entries in `inbox` + `unrouted`, kept in memory so reading it is O(1).
    inbox_depth: AtomicU64,
    /// `true` once closed. Writers hold a read guard for the whole write, so `shutdown`
    /// (which takes the write guard) knows no write can land after its final flush.
    closed: RwLock<bool>,
    group: GroupCommit,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("data_dir", &self.data_dir)
            .field("inbox_depth", &self.inbox_depth.load(Ordering::Relaxed))
            .field("flush_count", &self.group.rounds())
            .finish_non_exhaustive()
    }
}

fn io(e: impl fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn from_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => io(e),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Lifts a store result into a transaction closure: errors abort the transaction.
fn tx<T>(result: Result<T, StoreError>) -> TxResult<T> {
    result.map_err(ConflictableTransactionError::Abort)
}

fn saturating_sub(counter: &AtomicU64, n: u64) {
    if n > 0 {
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

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

/// A transaction row prepared outside the transaction so the closure only moves bytes.
struct PreparedUpsert<'a> {
    id: &'a str,
    date: String,
    key: IVec,
    value: IVec,
    index_key: IVec,
    index_value: IVec,
}

impl SledStore {
    /// Opens (or creates) the store in `config.data_dir` and starts its flusher task.
    /// Must be called inside a tokio runtime; outside one it returns `StoreError::Io`.
    pub fn open(config: SledStoreConfig) -> Result<Arc<SledStore>, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Io("the sled store must be opened inside a tokio runtime".into()))?;
        std::fs::create_dir_all(&config.data_dir).map_err(io)?;
        let db = sled::Config::new()
            .path(&config.data_dir)
            .cache_capacity(config.cache_capacity_bytes)
            // Our group commit is the only flusher (sled's would race it).
            .flush_every_ms(None)
            .open()
            .map_err(io)?;
        let tree = |name: &str| db.open_tree(name).map_err(io);
        let accounts = tree(ACCOUNTS)?;
        let lookup = tree(LOOKUP)?;
        let transactions = tree(TRANSACTIONS)?;
        let txn_index = tree(TXN_INDEX)?;
        let inbox = tree(INBOX)?;
        let unrouted = tree(UNROUTED)?;
        let dedup = tree(DEDUP)?;

        let depth = (inbox.len() + unrouted.len()) as u64;
        let files = Arc::new(DbFiles {
            db_file: File::open(config.data_dir.join("db")).map_err(io)?,
            dir: File::open(&config.data_dir).map_err(io)?,
            blobs_dir: config.data_dir.join("blobs"),
            db,
        });
        // The flusher must not keep the database open after the store is dropped (a
        // reopen of the same directory would fail on sled's file lock).
        let weak = Arc::downgrade(&files);
        let flush: FlushFn = Arc::new(move || match weak.upgrade() {
            Some(files) => files.flush_and_sync(),
            None => Err(StoreError::Closed),
        });
        let group = GroupCommit::start(&runtime, flush);
        tracing::info!(data_dir = %config.data_dir.display(), inbox_depth = depth, "store opened");

        Ok(Arc::new(SledStore {
            _files: files,
            data_dir: config.data_dir,
            accounts,
            lookup,
            transactions,
            txn_index,
            inbox,
            unrouted,
            dedup,
            inbox_depth: AtomicU64::new(depth),
            closed: RwLock::new(false),
            group,
        }))
    }

    /// Physical flush rounds done so far (each one flush + fsync, shared by every
    /// `durable()` caller waiting at the time).
    pub fn flush_count(&self) -> u64 {
        self.group.rounds()
    }

    /// The directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops taking writes, waits for in-flight ones, makes everything durable and stops
    /// the flusher. Afterwards writes answer `Closed` and `durable()` answers with the
    /// final flush's result. Idempotent.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        {
            let mut closed = self.closed.write().unwrap_or_else(|p| p.into_inner());
            *closed = true;
        }
        let result = self.group.stop().await;
        tracing::info!(data_dir = %self.data_dir.display(), ok = result.is_ok(), "store closed");
        result
    }

    /// Admits one write, or `Closed`. Hold the guard until the write is done.
    fn write_gate(&self) -> Result<RwLockReadGuard<'_, bool>, StoreError> {
        let guard = self.closed.read().unwrap_or_else(|p| p.into_inner());
        if *guard {
            return Err(StoreError::Closed);
        }
        Ok(guard)
    }

    fn scan_keys(tree: &Tree, prefix: &[u8]) -> Result<Vec<IVec>, StoreError> {
        tree.scan_prefix(prefix)
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)
    }

    /// Read-modify-write of one account record.
    fn update_account(
        &self,
        id: &AccountId,
        change: impl Fn(&mut Account),
    ) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::account_key(id);
        self.accounts
            .transaction(|accounts| {
                let Some(bytes) = accounts.get(&key)? else {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::AccountNotFound(id.clone()),
                    ));
                };
                let mut account: Account = tx(keys::decode(ACCOUNTS, &bytes))?;
                change(&mut account);
                accounts.insert(key.as_slice(), tx(keys::encode(ACCOUNTS, &account))?)?;
                Ok(())
            })
            .map_err(from_tx)
    }

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

impl Drop for SledStore {
    fn drop(&mut self) {
        // Without a shutdown, still let the flusher exit instead of waiting forever.
        self.group.request_stop();
    }
}

impl Store for SledStore {
    fn link_account(&self, account: &Account) -> Result<LinkReceipt, StoreError> {
        let _gate = self.write_gate()?;
        let mut record = account.clone();
        record.status = LinkStatus::Linked;
        let id = &record.id;
        let account_key = keys::account_key(id);
        let record_bytes = keys::encode(ACCOUNTS, &record)?;
        let id_value = keys::encode(LOOKUP, id)?;
        let mut claimed = vec![(
            record.item_id.clone(),
            keys::item_key(record.provider, &record.item_id),
        )];
        claimed.extend(record.aliases.iter().map(|a| (a.clone(), keys::alias_key(a))));
        let owner_key = keys::owner_key(&record.owner_id, id);
        let unrouted_prefix = keys::unrouted_prefix(record.provider, &record.item_id);
        let kept = Self::scan_keys(&self.unrouted, &unrouted_prefix)?;

        let adopted = (&self.accounts, &self.lookup, &self.inbox, &self.unrouted)
            .transaction(|(accounts, lookup, inbox, unrouted)| {
                // Relinking the same id replaces its keys rather than adding to them.
                if let Some(previous) = accounts.get(&account_key)? {
                    let previous: Account = tx(keys::decode(ACCOUNTS, &previous))?;
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
                    let holder_linked = match accounts.get(keys::account_key(&holder))? {
                        Some(bytes) => {
                            tx(keys::decode::<Account>(ACCOUNTS, &bytes))?.status
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
        tracing::info!(account_id = %id, adopted = adopted + late, "account linked");
        Ok(LinkReceipt {
            adopted_events: adopted + late,
        })
    }

    fn get_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        self.accounts
            .get(keys::account_key(id))
            .map_err(io)?
            .map(|bytes| keys::decode(ACCOUNTS, &bytes))
            .transpose()
    }

    fn resolve(&self, key: &str) -> Result<Resolved, StoreError> {
        if AccountId::looks_canonical(key)
            && self
                .accounts
                .contains_key(key.as_bytes())
                .map_err(io)?
        {
            return Ok(Resolved::Found(AccountId(key.to_owned())));
        }
        if let Some(bytes) = self.lookup.get(keys::alias_key(key)).map_err(io)? {
            return Ok(Resolved::Found(keys::decode(LOOKUP, &bytes)?));
        }
        for prefix in [keys::item_prefix(key), keys::owner_prefix(key)] {
            let mut ids = self.ids_under(&prefix)?;
            match ids.len() {
                0 => continue,
                1 => return Ok(Resolved::Found(ids.remove(0))),
                _ => return Ok(Resolved::Ambiguous(ids)),
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
        iter.values()
            .take(limit)
            .map(|bytes| keys::decode(ACCOUNTS, &bytes.map_err(io)?))
            .collect()
    }

    fn unlink_account(&self, id: &AccountId, purge: bool) -> Result<Option<Account>, StoreError> {
        let _gate = self.write_gate()?;
        let account_key = keys::account_key(id);
        let prefix = keys::account_prefix(id);
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
        )
            .transaction(|(accounts, lookup, transactions, txn_index, inbox)| {
                let Some(bytes) = accounts.get(&account_key)? else {
                    return Ok(None);
                };
                let previous: Account = tx(keys::decode(ACCOUNTS, &bytes))?;
                remove_lookup_keys(lookup, &previous)?;
                let mut inbox_removed = 0u64;
                if purge {
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
                    accounts.insert(account_key.as_slice(), tx(keys::encode(ACCOUNTS, &record))?)?;
                }
                Ok(Some((previous, inbox_removed)))
            })
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
        tracing::info!(account_id = %id, purge, "account unlinked");
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

    fn ingest(
        &self,
        webhook: IncomingWebhook,
        dedup_ttl: Duration,
    ) -> Result<IngestOutcome, StoreError> {
        let _gate = self.write_gate()?;
        let item_key = keys::item_key(webhook.provider, &webhook.item_id);
        let ttl = chrono::Duration::from_std(dedup_ttl).unwrap_or(chrono::Duration::MAX);
        let expires_at = webhook
            .received_at
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let dedup_value = keys::encode(DEDUP, &DedupRecord { expires_at })?;
        let dedup_key = webhook.dedup_key;

        let outcome = (&self.lookup, &self.inbox, &self.unrouted, &self.dedup)
            .transaction(|(lookup, inbox, unrouted, dedup)| {
                let account_id: Option<AccountId> = match lookup.get(&item_key)? {
                    Some(bytes) => Some(tx(keys::decode(LOOKUP, &bytes))?),
                    None => None,
                };
                if let Some(bytes) = dedup.get(dedup_key)? {
                    let seen: DedupRecord = tx(keys::decode(DEDUP, &bytes))?;
                    if seen.expires_at > webhook.received_at {
                        return Ok(IngestOutcome::Duplicate { account_id });
                    }
                }
                let seq = inbox.generate_id()?;
                match &account_id {
                    Some(account) => {
                        let entry = InboxEntry {
                            seq,
                            account_id: account.clone(),
                            provider: webhook.provider,
                            kind: webhook.kind.clone(),
                            received_at: webhook.received_at,
                            body: webhook.body.clone(),
                        };
                        inbox.insert(
                            keys::inbox_key(account, seq),
                            tx(keys::encode(INBOX, &entry))?,
                        )?;
                    }
                    None => {
                        let event = UnroutedEvent {
                            seq,
                            provider: webhook.provider,
                            item_id: webhook.item_id.clone(),
                            kind: webhook.kind.clone(),
                            received_at: webhook.received_at,
                            body: webhook.body.clone(),
                        };
                        unrouted.insert(
                            keys::unrouted_key(webhook.provider, &webhook.item_id, seq),
                            tx(keys::encode(UNROUTED, &event))?,
                        )?;
                    }
                }
                dedup.insert(&dedup_key[..], dedup_value.as_slice())?;
                Ok(IngestOutcome::Accepted { seq, account_id })
            })
            .map_err(from_tx)?;
        if matches!(outcome, IngestOutcome::Accepted { .. }) {
            self.inbox_depth.fetch_add(1, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.group.wait()
    }

    fn pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        self.inbox
            .scan_prefix(keys::account_prefix(id))
            .values()
            .map(|bytes| keys::decode(INBOX, &bytes.map_err(io)?))
            .collect()
    }

    fn inbox_depth(&self) -> Result<u64, StoreError> {
        Ok(self.inbox_depth.load(Ordering::Relaxed))
    }

    fn purge_expired_dedup(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let _gate = self.write_gate()?;
        let mut purged = 0;
        for item in self.dedup.iter() {
            let (key, value) = item.map_err(io)?;
            let expired = match keys::decode::<DedupRecord>(DEDUP, &value) {
                Ok(record) => record.expires_at <= now,
                // A dedup record only saves a redundant sync (effects are idempotent), so
                // an unreadable one is dropped rather than blocking the sweep forever.
                Err(e) => {
                    tracing::warn!(error = %e, "dropping unreadable dedup record");
                    true
                }
            };
            // Compare-and-swap: an ingest may have refreshed the key since the scan.
            if expired
                && self
                    .dedup
                    .compare_and_swap(&key, Some(&value), None as Option<&[u8]>)
                    .map_err(io)?
                    .is_ok()
            {
                purged += 1;
            }
        }
        Ok(purged)
    }

    fn commit_sync(&self, commit: SyncCommit) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
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
                    value: keys::encode(TRANSACTIONS, row)?.into(),
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

        let inbox_removed = (&self.accounts, &self.transactions, &self.txn_index, &self.inbox)
            .transaction(|(accounts, transactions, txn_index, inbox)| {
                let Some(bytes) = accounts.get(&account_key)? else {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::AccountNotFound(account_id.clone()),
                    ));
                };
                let mut account: Account = tx(keys::decode(ACCOUNTS, &bytes))?;

                for row in &upserts {
                    if let Some(old) = txn_index.get(&row.index_key)? {
                        let old_date: String = tx(keys::decode(TXN_INDEX, &old))?;
                        if old_date != row.date {
                            transactions.remove(keys::txn_key(account_id, &old_date, row.id))?;
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

                account.cursor = Some(commit.cursor.clone());
                account.cursor_updated_at = Some(commit.finished_at);
                account.last_sync_started_at = Some(commit.started_at);
                account.last_sync_finished_at = Some(commit.finished_at);
                account.last_sync_outcome = Some(commit.outcome.clone());
                account.sync_count += 1;
                accounts.insert(account_key.as_slice(), tx(keys::encode(ACCOUNTS, &account))?)?;

                let mut removed = 0u64;
                for key in &consumed {
                    if inbox.remove(key.as_slice())?.is_some() {
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .map_err(from_tx)?;
        saturating_sub(&self.inbox_depth, inbox_removed);
        Ok(())
    }

    fn list_transactions(
        &self,
        id: &AccountId,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, StoreError> {
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
            Some(end) => Some(with_prefix(format!("{}}}", keys::date_component(end)).as_bytes())),
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
            (true, Some(key)) => Some(keys::txn_token(prefix.len(), &key).ok_or_else(|| {
                StoreError::Corrupt {
                    tree: TRANSACTIONS,
                    detail: "transaction key is not UTF-8".into(),
                }
            })?),
            _ => None,
        };
        Ok(TransactionPage {
            transactions: rows,
            next,
        })
    }

    fn count_transactions(&self, id: &AccountId) -> Result<u64, StoreError> {
        let mut n = 0;
        for key in self.txn_index.scan_prefix(keys::account_prefix(id)).keys() {
            key.map_err(io)?;
            n += 1;
        }
        Ok(n)
    }

    fn count_accounts(&self) -> Result<u64, StoreError> {
        Ok(self.accounts.len() as u64)
    }
}
