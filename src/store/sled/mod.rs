//! The sled implementation of [`Store`](super::Store): typed trees, versioned records and the
//! multi-tree transactions that keep the store's invariants.
//!
//! sled 0.34.7 shapes several choices here:
//! - `flush` holds sled's process-wide lock shared for the whole of its I/O, and
//!   transactions take it exclusively: so webhook ingest, the hot path, uses plain
//!   operations in a crash-safe order instead of a transaction (see `ingest`), and
//!   callers run large transactions (sync commits) on blocking threads;
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

mod group_commit;
mod incidents;
mod keys;

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

use super::{AccountStore, DueIndex, Durability, InboxStore, IncidentStore, OutboxStore, RowStore};
use super::{
    ApplyMode, IncomingWebhook, IngestOutcome, LinkReceipt, PollEntry, Resolved, RetryRecord,
    StoreError, SyncCommit, TransactionPage, TransactionQuery,
};
use crate::domain::{
    AccessToken, Account, AccountId, InboxEntry, LinkStatus, NeedsReauth, PendingDeadline,
    ProviderKind, Quarantine, SyncGaveUp, SyncOutcome, Transaction,
};
use crate::incidents::{AlertRecord, Incident, IncidentKind, IncidentQuery, OpenIncident};
use group_commit::{FlushFn, GroupCommit};
use incidents::IncidentTrees;
use keys::{
    ACCOUNTS, CLAIMS, DEDUP, INBOX, INCIDENTS, INCIDENT_OPEN, LOOKUP, OUTBOX, OUTBOX_DUE, POLL,
    POLL_BACKFILLED, POLL_INDEX, RETRIES, RETRY_INDEX, TRANSACTIONS, TXN_INDEX, UNROUTED,
};

/// Where and how to open the sled store.
#[derive(Clone, Debug)]
pub struct SledStoreConfig {
    /// Directory holding sled's files; created if missing.
    pub data_dir: PathBuf,
    /// sled page cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// Under load, how long the group commit waits for more writers before a flush
    /// round (zero: never). Fewer, larger rounds bound throughput on slow-fsync disks.
    pub group_commit_window: std::time::Duration,
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

/// A dedup key's record: a repeat is a duplicate until `expires_at`, but only while the
/// entry it repeats (`seq`) is still pending. Plaid sends byte-identical bodies for
/// distinct `SYNC_UPDATES_AVAILABLE` events, so a repeat of an event whose sync already
/// committed may announce new data and must not be dropped: it is appended anew.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DedupRecord {
    expires_at: DateTime<Utc>,
    #[serde(default)]
    seq: Option<u64>,
}

/// The sled database plus open handles on the files the group commit fsyncs.
struct DbFiles {
    db: sled::Db,
    db_file: File,
    dir: File,
    blobs_dir: PathBuf,
    /// Blob files already made durable. sled writes a blob once and never changes it,
    /// so each needs one fsync (plus one of the directory listing it), not one per round.
    synced_blobs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl DbFiles {
    /// sled's `flush` ends in `sync_file_range`, which does not persist metadata or
    /// survive every crash; follow it with real fsyncs of the log, any blob files and
    /// the directories that list them.
    fn flush_and_sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        self.db_file.sync_all().map_err(io)?;
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first_time = synced.is_empty();
        let mut new_blobs = false;
        for entry in entries {
            let path = entry.map_err(io)?.path();
            if synced.contains(&path) {
                continue;
            }
            match File::open(&path) {
                Ok(f) => f.sync_all().map_err(io)?,
                // sled garbage-collects blobs concurrently; a gone blob needs no sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            }
            synced.insert(path);
            new_blobs = true;
        }
        if new_blobs || first_time {
            File::open(&self.blobs_dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            // The blobs directory itself is an entry of the data directory.
            self.dir.sync_all().map_err(io)?;
        }
        // Forget blobs sled has deleted, so the set stays as small as the directory.
        if new_blobs {
            synced.retain(|path| path.exists());
        }
        Ok(())
    }
}

/// The sled-backed [`Store`]. Open with [`SledStore::open`]; stop with
/// [`SledStore::shutdown`], after which writes answer [`StoreError::Closed`].
pub struct SledStore {
    /// Owns the database; the flusher holds only a weak reference so dropping the
    /// store closes sled. Read only to draw sequence numbers.
    files: Arc<DbFiles>,
    data_dir: PathBuf,
    accounts: Tree,
    lookup: Tree,
    transactions: Tree,
    txn_index: Tree,
    inbox: Tree,
    unrouted: Tree,
    dedup: Tree,
    /// Inbox entries already read by a running sync: a repeat of one of them is no
    /// longer covered by a sync still to come, so it is appended, not dropped.
    claims: Tree,
    /// Retry records by (due time, account): what the sweeper re-drives.
    retries: Tree,
    /// Account id to its key in `retries`.
    retry_index: Tree,
    /// The polling index: (anchor, account) for every linked account.
    poll: Tree,
    /// Account id to its key in `poll`.
    poll_index: Tree,
    /// Incidents by id.
    incidents: Tree,
    /// (account, kind) of open incidents to their id.
    incident_open: Tree,
    /// Undelivered outbound alerts.
    outbox: Tree,
    /// The outbox's due-time index: (next attempt, id) of every undelivered alert.
    outbox_due: Tree,
    /// Pending entries in `inbox` + `unrouted`, kept in memory so reading it is O(1).
    inbox_depth: AtomicU64,
    /// `true` once closed. Writers hold a read guard for the whole write, so `shutdown`
    /// (which takes the write guard) knows no write can land after its final flush.
    closed: RwLock<bool>,
    group: GroupCommit,
    /// Per-account locks around staging and clearing a first sync's rows. A staging
    /// call cannot be cancelled once on its blocking thread: if its sync was aborted and
    /// the account's next activation clears the rows, the clear must come after it.
    staging: dashmap::DashMap<AccountId, Arc<std::sync::Mutex<()>>>,
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

/// The key the readiness probe overwrites, in sled's default tree.
const PROBE_KEY: &[u8] = b"readiness-probe";

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

/// Where an account's entry in the polling index sits: its last successful sync, or
/// its creation when it never synced.
fn poll_anchor(account: &Account) -> DateTime<Utc> {
    account.cursor_updated_at.unwrap_or(account.created_at)
}

/// Points `id_key`'s polling entry at `new_key`, or removes it (`None`). The reverse
/// index says where the old entry is, so the move never scans.
fn move_poll_entry(
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
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Io("the sled store must be opened inside a tokio runtime".into())
        })?;
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
        let claims = tree(CLAIMS)?;
        let retries = tree(RETRIES)?;
        let retry_index = tree(RETRY_INDEX)?;
        let poll = tree(POLL)?;
        let poll_index = tree(POLL_INDEX)?;
        backfill_poll_index(&accounts, &poll, &poll_index)?;
        let incidents = tree(INCIDENTS)?;
        let incident_open = tree(INCIDENT_OPEN)?;
        let outbox = tree(OUTBOX)?;
        let outbox_due = tree(OUTBOX_DUE)?;
        incidents::rebuild_outbox_due(&outbox, &outbox_due)?;

        let depth = (inbox.len() + unrouted.len()) as u64;
        let files = Arc::new(DbFiles {
            db_file: File::open(config.data_dir.join("db")).map_err(io)?,
            dir: File::open(&config.data_dir).map_err(io)?,
            blobs_dir: config.data_dir.join("blobs"),
            synced_blobs: std::sync::Mutex::new(std::collections::HashSet::new()),
            db,
        });
        // The files sled just created must be listed durably before any round relies
        // on them; later rounds only fsync the directories when blobs appear.
        files.dir.sync_all().map_err(io)?;
        // The flusher must not keep the database open after the store is dropped (a
        // reopen of the same directory would fail on sled's file lock).
        let weak = Arc::downgrade(&files);
        let flush: FlushFn = Arc::new(move || match weak.upgrade() {
            Some(files) => files.flush_and_sync(),
            None => Err(StoreError::Closed),
        });
        let group = GroupCommit::start(&runtime, flush, config.group_commit_window);
        tracing::info!(data_dir = %config.data_dir.display(), inbox_depth = depth, "store opened");

        Ok(Arc::new(SledStore {
            files,
            data_dir: config.data_dir,
            accounts,
            lookup,
            transactions,
            txn_index,
            inbox,
            unrouted,
            dedup,
            claims,
            retries,
            retry_index,
            poll,
            poll_index,
            incidents,
            incident_open,
            outbox,
            outbox_due,
            inbox_depth: AtomicU64::new(depth),
            closed: RwLock::new(false),
            group,
            staging: dashmap::DashMap::new(),
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

    /// Whether the account's rows are visible: only once a sync has committed (staged
    /// rows of a first sync stay hidden until then).
    fn rows_visible(&self, id: &AccountId) -> Result<bool, StoreError> {
        match self.accounts.get(keys::account_key(id)).map_err(io)? {
            Some(bytes) => Ok(keys::decode::<Account>(ACCOUNTS, &bytes)?.cursor.is_some()),
            None => Ok(false),
        }
    }

    fn staging_lock(&self, id: &AccountId) -> Arc<std::sync::Mutex<()>> {
        self.staging.entry(id.clone()).or_default().clone()
    }

    /// Fails unless the account exists and has never committed a sync.
    fn ensure_never_synced(&self, id: &AccountId) -> Result<(), StoreError> {
        match self.accounts.get(keys::account_key(id)).map_err(io)? {
            None => Err(StoreError::AccountNotFound(id.clone())),
            Some(bytes) => {
                let account: Account = keys::decode(ACCOUNTS, &bytes)?;
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

    /// A fresh, monotonic sequence number. Outside transactions only (inside one, sled's
    /// global lock would deadlock: use `TransactionalTree::generate_id` there).
    fn db_generate_id(&self) -> Result<u64, StoreError> {
        self.files.db.generate_id().map_err(io)
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

    fn incident_trees(&self) -> IncidentTrees<'_> {
        IncidentTrees {
            incidents: &self.incidents,
            open: &self.incident_open,
            outbox: &self.outbox,
            outbox_due: &self.outbox_due,
        }
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

impl AccountStore for SledStore {
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
        claimed.extend(
            record
                .aliases
                .iter()
                .map(|a| (a.clone(), keys::alias_key(a))),
        );
        let owner_key = keys::owner_key(&record.owner_id, id);
        let unrouted_prefix = keys::unrouted_prefix(record.provider, &record.item_id);
        let kept = Self::scan_keys(&self.unrouted, &unrouted_prefix)?;
        let poll_key = keys::poll_key(poll_anchor(&record).timestamp_millis(), id);

        let adopted = (
            &self.accounts,
            &self.lookup,
            &self.inbox,
            &self.unrouted,
            &self.poll,
            &self.poll_index,
        )
            .transaction(|(accounts, lookup, inbox, unrouted, poll, poll_index)| {
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
                move_poll_entry(poll, poll_index, &account_key, Some(&poll_key))?;
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
            && self.accounts.contains_key(key.as_bytes()).map_err(io)?
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
        // A first sync's staging call may still be running on a blocking thread after
        // its actor was stopped; the purge must come after it, or its rows outlive it.
        // (Lock order everywhere: the write gate, then the staging lock.)
        let staging_lock = self.staging_lock(id);
        let _staging = staging_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
            &self.poll,
            &self.poll_index,
        )
            .transaction(
                |(accounts, lookup, transactions, txn_index, inbox, poll, poll_index)| {
                    let Some(bytes) = accounts.get(&account_key)? else {
                        return Ok(None);
                    };
                    let previous: Account = tx(keys::decode(ACCOUNTS, &bytes))?;
                    remove_lookup_keys(lookup, &previous)?;
                    move_poll_entry(poll, poll_index, &account_key, None)?;
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
                        accounts
                            .insert(account_key.as_slice(), tx(keys::encode(ACCOUNTS, &record))?)?;
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
        tracing::info!(account_id = %id, purge, "account unlinked");
        if purge {
            for key in Self::scan_keys(&self.claims, &prefix)? {
                self.claims.remove(key).map_err(io)?;
            }
        }
        if purge {
            // Nothing can stage for a purged account (it no longer exists).
            self.staging.remove(id);
            self.clear_retry(id)?;
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
        if gave_up.is_some() {
            self.clear_retry(id)?;
        }
        self.update_account(id, |account| account.failed = gave_up.clone())
    }

    fn set_needs_reauth(
        &self,
        id: &AccountId,
        needs_reauth: Option<NeedsReauth>,
    ) -> Result<(), StoreError> {
        if needs_reauth.is_some() {
            self.clear_retry(id)?;
        }
        self.update_account(id, |account| account.needs_reauth = needs_reauth.clone())
    }

    fn update_login_state(
        &self,
        id: &AccountId,
        change: &dyn Fn(&mut Account) -> bool,
    ) -> Result<Account, StoreError> {
        let (account, wrote) = {
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
                    // The caller sees the whole record but owns only the login state.
                    let mut edited = account.clone();
                    if !change(&mut edited) {
                        return Ok((account, false));
                    }
                    account.needs_reauth = edited.needs_reauth;
                    account.pending_deadline = edited.pending_deadline;
                    account.login_seen_through = edited.login_seen_through;
                    accounts.insert(key.as_slice(), tx(keys::encode(ACCOUNTS, &account))?)?;
                    Ok((account, true))
                })
                .map_err(from_tx)?
        };
        if wrote && account.needs_reauth.is_some() {
            // A parked account is not retried (as with `set_needs_reauth`).
            self.clear_retry(id)?;
        }
        Ok(account)
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
        self.update_account(id, |account| {
            account.access_token = token.clone();
            account.needs_reauth = account.needs_reauth.clone().map(|parked| NeedsReauth {
                after_seq: parked.after_seq.max(seen.unwrap_or(0)),
                relinked: true,
                ..parked
            });
            if seen.is_some() {
                account.login_seen_through = account.login_seen_through.max(seen);
            }
            account.pending_deadline = None;
            account.failed = None;
        })?;
        self.get_account(id)?
            .ok_or_else(|| StoreError::AccountNotFound(id.clone()))
    }
}

impl InboxStore for SledStore {
    fn ingest(
        &self,
        webhook: IncomingWebhook,
        dedup_ttl: Duration,
    ) -> Result<IngestOutcome, StoreError> {
        // No multi-tree transaction here, on purpose: sled transactions take a
        // process-wide write lock that `flush` holds shared for the whole of its I/O, so
        // every ingest would stall behind every group-commit round. Plain operations in
        // a careful order keep the invariants instead:
        // - the entry is written before its dedup record, so a crash between the two
        //   only lets a retry append the event again (one harmless extra sync);
        // - nothing is acknowledged before `durable()` covers all of these writes;
        // - two racing copies of one body may both be appended: same harmless outcome.
        let _gate = self.write_gate()?;
        let item_key = keys::item_key(webhook.provider, &webhook.item_id);
        let resolve = || -> Result<Option<AccountId>, StoreError> {
            match self.lookup.get(&item_key).map_err(io)? {
                Some(bytes) => Ok(Some(keys::decode(LOOKUP, &bytes)?)),
                None => Ok(None),
            }
        };
        let mut account_id = resolve()?;
        let dedup_key = webhook.dedup_key;
        if let Some(bytes) = self.dedup.get(dedup_key).map_err(io)? {
            let seen: DedupRecord = keys::decode(DEDUP, &bytes)?;
            if seen.expires_at > webhook.received_at {
                let still_pending = match seen.seq {
                    // Records written before seqs were kept: trust the TTL.
                    None => true,
                    Some(seq) => {
                        // Pending and not yet read by a running sync: the next sync
                        // starts fetching after this repeat arrived, so it covers it.
                        // Once a sync has read the original, that sync's data may be
                        // older than this repeat: then it is a new event.
                        let in_inbox = match &account_id {
                            Some(account) => {
                                let key = keys::inbox_key(account, seq);
                                self.inbox.contains_key(&key).map_err(io)?
                                    && !self.claims.contains_key(&key).map_err(io)?
                            }
                            None => false,
                        };
                        in_inbox
                            || self
                                .unrouted
                                .contains_key(keys::unrouted_key(
                                    webhook.provider,
                                    &webhook.item_id,
                                    seq,
                                ))
                                .map_err(io)?
                    }
                };
                if still_pending {
                    return Ok(IngestOutcome::Duplicate { account_id });
                }
            }
        }

        let seq = self.db_generate_id()?;
        let inbox_entry = |account: &AccountId| InboxEntry {
            seq,
            account_id: account.clone(),
            provider: webhook.provider,
            kind: webhook.kind.clone(),
            received_at: webhook.received_at,
            body: webhook.body.clone(),
        };
        match &account_id {
            Some(account) => {
                self.inbox
                    .insert(
                        keys::inbox_key(account, seq),
                        keys::encode(INBOX, &inbox_entry(account))?,
                    )
                    .map_err(io)?;
            }
            None => {
                let key = keys::unrouted_key(webhook.provider, &webhook.item_id, seq);
                let event = UnroutedEvent {
                    seq,
                    provider: webhook.provider,
                    item_id: webhook.item_id.clone(),
                    kind: webhook.kind.clone(),
                    received_at: webhook.received_at,
                    body: webhook.body.clone(),
                };
                self.unrouted
                    .insert(key.as_slice(), keys::encode(UNROUTED, &event)?)
                    .map_err(io)?;
                // A link that committed after the lookup above may have finished its
                // adoption passes before this insert: adopt the entry here then. The
                // link's pass and this one race on `remove`; exactly one moves it.
                if let Some(account) = resolve()? {
                    if self.unrouted.remove(key.as_slice()).map_err(io)?.is_some() {
                        self.inbox
                            .insert(
                                keys::inbox_key(&account, seq),
                                keys::encode(INBOX, &inbox_entry(&account))?,
                            )
                            .map_err(io)?;
                    }
                    account_id = Some(account);
                }
            }
        }
        let expires_at = webhook
            .received_at
            .checked_add_signed(
                chrono::Duration::from_std(dedup_ttl).unwrap_or(chrono::Duration::MAX),
            )
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.dedup
            .insert(
                &dedup_key[..],
                keys::encode(
                    DEDUP,
                    &DedupRecord {
                        expires_at,
                        seq: Some(seq),
                    },
                )?,
            )
            .map_err(io)?;
        self.inbox_depth.fetch_add(1, Ordering::Relaxed);
        Ok(IngestOutcome::Accepted { seq, account_id })
    }

    fn pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        self.inbox
            .scan_prefix(keys::account_prefix(id))
            .values()
            .map(|bytes| keys::decode(INBOX, &bytes.map_err(io)?))
            .collect()
    }

    fn claim_pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        let _gate = self.write_gate()?;
        let entries = self.pending_inbox(id)?;
        for entry in &entries {
            self.claims
                .insert(keys::inbox_key(id, entry.seq), &[] as &[u8])
                .map_err(io)?;
        }
        Ok(entries)
    }

    fn accounts_with_pending_inbox(&self) -> Result<Vec<AccountId>, StoreError> {
        // One key per account: after each hit, jump past that account's prefix.
        let mut accounts = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(entry) = self.inbox.range(from.clone()..).next() else {
                return Ok(accounts);
            };
            let (key, _) = entry.map_err(io)?;
            let account = keys::inbox_key_account(&key).ok_or_else(|| StoreError::Corrupt {
                tree: INBOX,
                detail: "inbox key without an account prefix".to_string(),
            })?;
            match keys::prefix_end(&keys::account_prefix(&account)) {
                Some(end) => from = end,
                None => {
                    accounts.push(account);
                    return Ok(accounts);
                }
            }
            accounts.push(account);
        }
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
        let poll_key = keys::poll_key(commit.finished_at.timestamp_millis(), account_id);

        let inbox_removed = (
            &self.accounts,
            &self.transactions,
            &self.txn_index,
            &self.inbox,
            &self.retries,
            &self.retry_index,
            &self.poll,
            &self.poll_index,
        )
            .transaction(
                |(
                    accounts,
                    transactions,
                    txn_index,
                    inbox,
                    retries,
                    retry_index,
                    poll,
                    poll_index,
                )| {
                    let Some(bytes) = accounts.get(&account_key)? else {
                        return Err(ConflictableTransactionError::Abort(
                            StoreError::AccountNotFound(account_id.clone()),
                        ));
                    };
                    let mut account: Account = tx(keys::decode(ACCOUNTS, &bytes))?;
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

                    account.cursor = Some(commit.cursor.clone());
                    account.cursor_updated_at = Some(commit.finished_at);
                    account.last_sync_started_at = Some(commit.started_at);
                    account.last_sync_finished_at = Some(commit.finished_at);
                    account.last_sync_outcome = Some(commit.outcome.clone());
                    account.sync_count += 1;
                    accounts.insert(
                        account_key.as_slice(),
                        tx(keys::encode(ACCOUNTS, &account))?,
                    )?;

                    let mut removed = 0u64;
                    for key in &consumed {
                        if inbox.remove(key.as_slice())?.is_some() {
                            removed += 1;
                        }
                    }
                    // The sync succeeded: any pending retry of it is moot.
                    if let Some(retry_key) = retry_index.remove(account_key.as_slice())? {
                        retries.remove(retry_key)?;
                    }
                    // ... and the next poll is a full interval away. Forward only (the
                    // sweeper may have anchored it at its poll request, later than this
                    // sync's end). An unlinked account has no entry and gets none back.
                    let anchored = poll_index.get(&account_key)?;
                    if account.status == LinkStatus::Linked
                        && anchored.is_none_or(|current| current.as_ref() < poll_key.as_slice())
                    {
                        move_poll_entry(poll, poll_index, &account_key, Some(&poll_key))?;
                    }
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

impl IncidentStore for SledStore {
    fn open_incident(&self, open: &OpenIncident) -> Result<Incident, StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().open_incident(open)
    }

    fn resolve_incident(
        &self,
        id: &AccountId,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().resolve_incident(id, kind, at, notify)
    }

    fn open_incident_of(
        &self,
        id: &AccountId,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError> {
        self.incident_trees().open_incident_of(id, kind)
    }

    fn get_incident(&self, incident_id: u64) -> Result<Option<Incident>, StoreError> {
        self.incident_trees().get_incident(incident_id)
    }

    fn list_incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        self.incident_trees().list_incidents(query)
    }
}

impl OutboxStore for SledStore {
    fn pending_alerts(&self, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        self.incident_trees().pending_alerts(limit)
    }

    fn due_alerts(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<AlertRecord>, StoreError> {
        self.incident_trees().due_alerts(now, limit)
    }

    fn next_alert_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.incident_trees().next_alert_due()
    }

    fn update_alert(&self, record: &AlertRecord) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().update_alert(record)
    }

    fn remove_alert(&self, alert_id: u64) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        self.incident_trees().remove_alert(alert_id)
    }
}

impl Durability for SledStore {
    fn durable(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.group.wait()
    }

    fn write_probe(&self) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        // sled's default tree holds nothing else; one fixed key, so probes never grow it.
        let now = Utc::now().timestamp_millis().to_be_bytes();
        self.files
            .db
            .insert(PROBE_KEY, &now)
            .map(|_| ())
            .map_err(io)
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
fn backfill_poll_index(accounts: &Tree, poll: &Tree, poll_index: &Tree) -> Result<(), StoreError> {
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
mod tests {
    use super::*;
    use crate::domain::AccessToken;
    use chrono::{NaiveDate, TimeZone};
    use tempfile::TempDir;

    const TTL: Duration = Duration::from_secs(15 * 60);

    fn open(dir: &TempDir) -> Arc<SledStore> {
        SledStore::open(SledStoreConfig {
            data_dir: dir.path().join("data"),
            cache_capacity_bytes: 64 * 1024 * 1024,
            group_commit_window: std::time::Duration::ZERO,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn write_probe_is_durable_until_shutdown_then_closed() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        store.write_probe().unwrap();
        store.durable().await.unwrap();
        let written = store
            .files
            .db
            .get(PROBE_KEY)
            .unwrap()
            .expect("probe record");
        assert_eq!(written.len(), 8);
        store.shutdown().await.unwrap();
        assert!(matches!(store.write_probe(), Err(StoreError::Closed)));
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
    }

    fn minutes(n: i64) -> chrono::Duration {
        chrono::Duration::minutes(n)
    }

    fn account(item_id: &str, owner_id: &str, aliases: &[&str]) -> Account {
        Account::new_linked(
            ProviderKind::Plaid,
            item_id.into(),
            AccessToken::new("access-sandbox-secret"),
            owner_id.into(),
            aliases.iter().map(|a| a.to_string()).collect(),
            t0(),
        )
    }

    fn webhook(item_id: &str, dedup: u32, at: DateTime<Utc>) -> IncomingWebhook {
        let mut dedup_key = [0u8; 32];
        dedup_key[..4].copy_from_slice(&dedup.to_be_bytes());
        dedup_key[4..4 + item_id.len().min(28)]
            .copy_from_slice(&item_id.as_bytes()[..item_id.len().min(28)]);
        IncomingWebhook {
            provider: ProviderKind::Plaid,
            item_id: item_id.into(),
            kind: "TRANSACTIONS/SYNC_UPDATES_AVAILABLE".into(),
            dedup_key,
            body: serde_json::json!({ "item_id": item_id, "n": dedup }),
            received_at: at,
        }
    }

    fn row(id: &str, date: &str) -> Transaction {
        Transaction {
            id: id.into(),
            date: NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap(),
            body: serde_json::json!({ "transaction_id": id, "date": date }),
        }
    }

    fn sync(
        account_id: &AccountId,
        mode: ApplyMode,
        upserts: Vec<Transaction>,
        removals: &[&str],
        consumed: Vec<u64>,
        cursor: &str,
    ) -> SyncCommit {
        SyncCommit {
            account_id: account_id.clone(),
            mode,
            upserts,
            removals: removals.iter().map(|r| r.to_string()).collect(),
            cursor: cursor.into(),
            consumed,
            outcome: SyncOutcome::Committed {
                added: 0,
                modified: 0,
                removed: 0,
                pages: 1,
                fallback: false,
                request_id: None,
            },
            started_at: t0(),
            finished_at: t0() + minutes(1),
        }
    }

    fn all_rows(store: &SledStore, id: &AccountId) -> Vec<(String, NaiveDate)> {
        let page = store
            .list_transactions(
                id,
                &TransactionQuery {
                    limit: 1_000_000,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(page.next.is_none());
        page.transactions
            .into_iter()
            .map(|t| (t.id, t.date))
            .collect()
    }

    fn raw_count(tree: &Tree, id: &AccountId) -> usize {
        tree.scan_prefix(keys::account_prefix(id)).count()
    }

    fn seq_of(outcome: IngestOutcome) -> u64 {
        match outcome {
            IngestOutcome::Accepted { seq, .. } => seq,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn duplicate_within_ttl_is_rejected_and_accepted_after_expiry() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();

        seq_of(store.ingest(webhook("item-1", 7, t0()), TTL).unwrap());
        let again = store
            .ingest(webhook("item-1", 7, t0() + minutes(14)), TTL)
            .unwrap();
        assert_eq!(
            again,
            IngestOutcome::Duplicate {
                account_id: Some(acc.id.clone())
            }
        );
        assert_eq!(
            store.pending_inbox(&acc.id).unwrap().len(),
            1,
            "a duplicate writes nothing"
        );
        assert_eq!(store.inbox_depth().unwrap(), 1);

        // Expired (15 min TTL): accepted again, and the dedup record is refreshed.
        seq_of(
            store
                .ingest(webhook("item-1", 7, t0() + minutes(16)), TTL)
                .unwrap(),
        );
        assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 2);
        assert!(matches!(
            store
                .ingest(webhook("item-1", 7, t0() + minutes(20)), TTL)
                .unwrap(),
            IngestOutcome::Duplicate { .. }
        ));

        // Another key expires at t0+15; the refreshed one at t0+31.
        seq_of(store.ingest(webhook("item-1", 8, t0()), TTL).unwrap());
        assert_eq!(store.purge_expired_dedup(t0() + minutes(20)).unwrap(), 1);
        assert_eq!(store.purge_expired_dedup(t0() + minutes(31)).unwrap(), 1);
        assert_eq!(store.dedup.len(), 0);
        assert_eq!(store.inbox_depth().unwrap(), 3);
    }

    #[tokio::test]
    async fn events_for_an_unlinked_item_are_adopted_on_link() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let first = store.ingest(webhook("item-early", 1, t0()), TTL).unwrap();
        let IngestOutcome::Accepted {
            seq,
            account_id: None,
        } = first
        else {
            panic!("expected an unrouted accept, got {first:?}");
        };
        seq_of(store.ingest(webhook("item-other", 2, t0()), TTL).unwrap());
        assert_eq!(store.inbox_depth().unwrap(), 2);

        let acc = account("item-early", "owner-1", &[]);
        assert_eq!(
            store.link_account(&acc).unwrap(),
            LinkReceipt { adopted_events: 1 }
        );
        let pending = store.pending_inbox(&acc.id).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, seq);
        assert_eq!(pending[0].account_id, acc.id);
        assert_eq!(pending[0].body["item_id"], "item-early");
        assert_eq!(
            store.inbox_depth().unwrap(),
            2,
            "adoption moves, it does not add"
        );
        assert_eq!(store.unrouted.len(), 1, "other items' events stay kept");

        // Once linked, events route straight to the account.
        let next = store.ingest(webhook("item-early", 3, t0()), TTL).unwrap();
        assert!(
            matches!(next, IngestOutcome::Accepted { account_id: Some(ref id), seq: s } if *id == acc.id && s > seq)
        );
        assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn taken_alias_or_item_id_is_a_conflict_and_writes_nothing() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let a = account("item-a", "owner-1", &["alice@example.com"]);
        store.link_account(&a).unwrap();

        let b = account("item-b", "owner-2", &["bob", "alice@example.com"]);
        match store.link_account(&b) {
            Err(StoreError::Conflict { key, account_id }) => {
                assert_eq!(key, "alice@example.com");
                assert_eq!(account_id, a.id);
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert!(store.get_account(&b.id).unwrap().is_none());
        assert_eq!(
            store.resolve("bob").unwrap(),
            Resolved::NotFound,
            "no partial keys"
        );
        assert_eq!(store.resolve("item-b").unwrap(), Resolved::NotFound);

        let c = account("item-a", "owner-3", &[]);
        assert!(
            matches!(store.link_account(&c), Err(StoreError::Conflict { ref key, .. }) if key == "item-a")
        );
        assert_eq!(store.count_accounts().unwrap(), 1);
    }

    #[tokio::test]
    async fn resolve_covers_canonical_alias_item_and_owner_ids() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let a = account("item-a", "owner-shared", &["a@example.com"]);
        let b = account("item-b", "owner-shared", &[]);
        let c = account("item-c", "owner-solo", &[]);
        for acc in [&a, &b, &c] {
            store.link_account(acc).unwrap();
        }
        assert_eq!(
            store.resolve(a.id.as_str()).unwrap(),
            Resolved::Found(a.id.clone())
        );
        assert_eq!(
            store.resolve("a@example.com").unwrap(),
            Resolved::Found(a.id.clone())
        );
        assert_eq!(
            store.resolve("item-b").unwrap(),
            Resolved::Found(b.id.clone())
        );
        assert_eq!(
            store.resolve("owner-solo").unwrap(),
            Resolved::Found(c.id.clone())
        );
        let mut both = vec![a.id.clone(), b.id.clone()];
        both.sort();
        assert_eq!(
            store.resolve("owner-shared").unwrap(),
            Resolved::Ambiguous(both)
        );
        assert_eq!(store.resolve("nobody").unwrap(), Resolved::NotFound);
        // Canonical-looking but unknown ids fall through to the other lookups.
        assert_eq!(
            store.resolve(AccountId::generate().as_str()).unwrap(),
            Resolved::NotFound
        );

        let listed = store.list_accounts(None, 10).unwrap();
        let ids: Vec<_> = listed.iter().map(|x| x.id.clone()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(ids.len(), 3);
        let rest = store.list_accounts(Some(&ids[0]), 10).unwrap();
        assert_eq!(
            rest.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
            ids[1..]
        );
    }

    #[tokio::test]
    async fn delta_commit_applies_upserts_in_order_then_removals() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        store
            .commit_sync(sync(
                &acc.id,
                ApplyMode::Delta,
                vec![
                    row("t1", "2024-01-01"),
                    row("t2", "2024-01-02"),
                    row("t3", "2024-01-03"),
                ],
                &[],
                vec![],
                "c1",
            ))
            .unwrap();

        // t1 modified twice (date moves, the later row wins), t2 added-then-removed in
        // the same page, t3 removed, an unknown removal is a no-op.
        let mut modified = row("t1", "2024-01-07");
        modified.body["amount"] = serde_json::json!(42);
        store
            .commit_sync(sync(
                &acc.id,
                ApplyMode::Delta,
                vec![
                    row("t1", "2024-01-05"),
                    row("t2", "2024-01-09"),
                    modified.clone(),
                ],
                &["t2", "t3", "never-seen"],
                vec![],
                "c2",
            ))
            .unwrap();

        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            all_rows(&store, &acc.id),
            vec![("t1".to_string(), d("2024-01-07"))]
        );
        let page = store
            .list_transactions(
                &acc.id,
                &TransactionQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(page.transactions[0], modified);
        assert_eq!(store.count_transactions(&acc.id).unwrap(), 1);
        assert_eq!(
            raw_count(&store.transactions, &acc.id),
            1,
            "the old-date rows are gone"
        );
        assert_eq!(raw_count(&store.txn_index, &acc.id), 1);

        let stored = store.get_account(&acc.id).unwrap().unwrap();
        assert_eq!(stored.cursor.as_deref(), Some("c2"));
        assert_eq!(stored.sync_count, 2);
        assert_eq!(stored.cursor_updated_at, Some(t0() + minutes(1)));
        assert!(matches!(
            stored.last_sync_outcome,
            Some(SyncOutcome::Committed { .. })
        ));
    }

    #[tokio::test]
    async fn replace_commit_keeps_only_the_upserted_rows() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        let other = account("item-2", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        store.link_account(&other).unwrap();
        for id in [&acc.id, &other.id] {
            store
                .commit_sync(sync(
                    id,
                    ApplyMode::Delta,
                    vec![
                        row("a", "2024-01-01"),
                        row("b", "2024-01-02"),
                        row("c", "2024-01-03"),
                    ],
                    &[],
                    vec![],
                    "c1",
                ))
                .unwrap();
        }
        store
            .commit_sync(sync(
                &acc.id,
                ApplyMode::Replace,
                vec![row("b", "2024-02-02"), row("d", "2024-01-04")],
                &[],
                vec![],
                "fresh",
            ))
            .unwrap();
        let ids: Vec<_> = all_rows(&store, &acc.id)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, ["d", "b"]);
        assert_eq!(raw_count(&store.txn_index, &acc.id), 2);
        assert_eq!(
            store.count_transactions(&other.id).unwrap(),
            3,
            "other accounts untouched"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_racing_a_link_all_end_up_in_its_inbox() {
        // Ingest resolves the item without a transaction; whichever side loses the race
        // (the link's adoption passes or the ingest's re-check) the entry must land in
        // the inbox, never stay stranded among the unrouted ones.
        for round in 0..20 {
            let dir = TempDir::new().unwrap();
            let store = open(&dir);
            let item = format!("item-race-{round}");
            let acc = account(&item, "owner-race", &[]);
            let writers: Vec<_> = (0..4u32)
                .map(|w| {
                    let store = Arc::clone(&store);
                    let item = item.clone();
                    std::thread::spawn(move || {
                        (0..50u32)
                            .map(|n| {
                                seq_of(
                                    store
                                        .ingest(webhook(&item, w * 1000 + n, t0()), TTL)
                                        .unwrap(),
                                )
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            store.link_account(&acc).unwrap();
            let mut accepted: Vec<u64> = writers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect();
            accepted.sort_unstable();
            let pending: Vec<u64> = store
                .pending_inbox(&acc.id)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(
                pending, accepted,
                "round {round}: every accepted event is in the inbox"
            );
            assert_eq!(store.unrouted.len(), 0, "round {round}: nothing stranded");
            assert_eq!(store.inbox_depth().unwrap(), 200);
        }
    }

    #[tokio::test]
    async fn staged_first_sync_rows_are_invisible_until_committed() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        let e1 = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
        // A leftover of an interrupted attempt, cleared by the next one.
        store
            .stage_rows(&acc.id, vec![row("gone", "2024-01-09")], vec![])
            .unwrap();
        assert_eq!(
            store.count_transactions(&acc.id).unwrap(),
            0,
            "staged rows are hidden"
        );
        store.clear_rows(&acc.id).unwrap();
        // Pages: a row added, then moved to another date and another removed later on.
        store
            .stage_rows(
                &acc.id,
                vec![row("a", "2024-01-01"), row("b", "2024-01-02")],
                vec![],
            )
            .unwrap();
        store
            .stage_rows(&acc.id, vec![row("a", "2024-02-01")], vec!["b".to_string()])
            .unwrap();
        let page = store
            .list_transactions(
                &acc.id,
                &TransactionQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(
            page.transactions.is_empty(),
            "nothing visible before the commit"
        );
        let mut commit = sync(&acc.id, ApplyMode::Staged, vec![], &[], vec![e1], "c1");
        store.commit_sync(commit.clone()).unwrap();
        let page = store
            .list_transactions(
                &acc.id,
                &TransactionQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(page.transactions, vec![row("a", "2024-02-01")]);
        assert_eq!(store.txn_index.len(), 1);
        assert_eq!(store.transactions.len(), 1);
        assert!(store.pending_inbox(&acc.id).unwrap().is_empty());
        // Once committed, rows change only by commit.
        assert!(matches!(
            store.stage_rows(&acc.id, vec![row("x", "2024-01-01")], vec![]),
            Err(StoreError::InvalidState(_))
        ));
        assert!(matches!(
            store.clear_rows(&acc.id),
            Err(StoreError::InvalidState(_))
        ));
        assert!(matches!(
            store.commit_sync(commit.clone()),
            Err(StoreError::InvalidState(_))
        ));
        commit.upserts = vec![row("y", "2024-01-01")];
        assert!(matches!(
            store.commit_sync(commit),
            Err(StoreError::InvalidState(_))
        ));
    }

    #[tokio::test]
    async fn a_repeat_of_an_event_a_running_sync_has_read_is_appended_again() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        let first = seq_of(store.ingest(webhook("item-1", 5, t0()), TTL).unwrap());
        let claimed: Vec<u64> = store
            .claim_pending_inbox(&acc.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(claimed, [first]);
        // The sync that read `first` may fetch data older than this repeat: keep it.
        let second = seq_of(
            store
                .ingest(webhook("item-1", 5, t0() + minutes(1)), TTL)
                .unwrap(),
        );
        assert!(second > first);
        // The sync commits what it read; the repeat stays for the next sync, unclaimed,
        // so its own repeat is a duplicate again.
        store
            .commit_sync(sync(
                &acc.id,
                ApplyMode::Delta,
                vec![],
                &[],
                vec![first],
                "c1",
            ))
            .unwrap();
        let pending: Vec<u64> = store
            .pending_inbox(&acc.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(pending, [second]);
        assert!(matches!(
            store
                .ingest(webhook("item-1", 5, t0() + minutes(2)), TTL)
                .unwrap(),
            IngestOutcome::Duplicate { .. }
        ));
        assert_eq!(store.claims.len(), 0, "claims leave with their entries");
    }

    #[tokio::test]
    async fn a_repeat_of_an_already_consumed_event_is_appended_again() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        let first = seq_of(store.ingest(webhook("item-1", 5, t0()), TTL).unwrap());
        // While the first is pending, the same body is a duplicate.
        assert!(matches!(
            store
                .ingest(webhook("item-1", 5, t0() + minutes(1)), TTL)
                .unwrap(),
            IngestOutcome::Duplicate { .. }
        ));
        store
            .commit_sync(sync(
                &acc.id,
                ApplyMode::Delta,
                vec![],
                &[],
                vec![first],
                "c1",
            ))
            .unwrap();
        // Same bytes after the sync committed: Plaid's next SYNC_UPDATES_AVAILABLE looks
        // exactly like this, so it must lead to another sync, not be dropped.
        let second = seq_of(
            store
                .ingest(webhook("item-1", 5, t0() + minutes(2)), TTL)
                .unwrap(),
        );
        assert!(second > first);
        let pending: Vec<u64> = store
            .pending_inbox(&acc.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(pending, [second]);
        // And its own repeat is a duplicate again while it is pending.
        assert!(matches!(
            store
                .ingest(webhook("item-1", 5, t0() + minutes(3)), TTL)
                .unwrap(),
            IngestOutcome::Duplicate { .. }
        ));
    }

    fn retry(acc: &Account, attempt: u32, due_at: DateTime<Utc>) -> RetryRecord {
        RetryRecord {
            account_id: acc.id.clone(),
            attempt,
            due_at,
            code: "INTERNAL_SERVER_ERROR".to_string(),
            request_id: Some(format!("req-{attempt}")),
        }
    }

    #[tokio::test]
    async fn retry_records_index_by_due_time_and_leave_with_a_commit() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let a = account("item-a", "owner-1", &[]);
        let b = account("item-b", "owner-1", &[]);
        store.link_account(&a).unwrap();
        store.link_account(&b).unwrap();
        store
            .record_retry(&retry(&a, 1, t0() + minutes(5)))
            .unwrap();
        store
            .record_retry(&retry(&b, 1, t0() + minutes(1)))
            .unwrap();
        // Re-recording replaces: the old due time must not linger in the index.
        store
            .record_retry(&retry(&a, 2, t0() + minutes(3)))
            .unwrap();

        assert!(store.due_retries(t0(), 10).unwrap().is_empty());
        let due: Vec<_> = store
            .due_retries(t0() + minutes(3), 10)
            .unwrap()
            .into_iter()
            .map(|r| (r.account_id, r.attempt))
            .collect();
        assert_eq!(due, [(b.id.clone(), 1), (a.id.clone(), 2)]);
        assert_eq!(store.due_retries(t0() + minutes(60), 1).unwrap().len(), 1);
        assert_eq!(store.due_retries(t0() + minutes(60), 10).unwrap().len(), 2);
        assert_eq!(store.retry_of(&a.id).unwrap().unwrap().attempt, 2);

        store
            .commit_sync(sync(&a.id, ApplyMode::Delta, vec![], &[], vec![], "c1"))
            .unwrap();
        assert_eq!(store.retry_of(&a.id).unwrap(), None);
        let due = store.due_retries(t0() + minutes(60), 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].account_id, b.id);

        let gave_up = SyncGaveUp {
            reason: "INTERNAL_SERVER_ERROR".to_string(),
            attempts: 5,
            since: t0(),
        };
        store
            .set_sync_gave_up(&b.id, Some(gave_up.clone()))
            .unwrap();
        assert!(store
            .due_retries(t0() + minutes(60), 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            store.get_account(&b.id).unwrap().unwrap().failed,
            Some(gave_up)
        );
        store.set_sync_gave_up(&b.id, None).unwrap();
        assert_eq!(store.get_account(&b.id).unwrap().unwrap().failed, None);

        store.record_retry(&retry(&b, 1, t0())).unwrap();
        store.clear_retry(&b.id).unwrap();
        assert_eq!(store.retry_of(&b.id).unwrap(), None);
        assert!(store
            .due_retries(t0() + minutes(60), 10)
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn rescheduling_a_retry_moves_or_drops_it_only_while_it_is_current() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let a = account("item-a", "owner-1", &[]);
        store.link_account(&a).unwrap();
        let first = retry(&a, 1, t0());
        store.record_retry(&first).unwrap();

        // Moved: out of the due part of the index, same attempt and code.
        assert!(store
            .reschedule_retry(&first, Some(t0() + minutes(10)))
            .unwrap());
        assert!(store.due_retries(t0() + minutes(9), 10).unwrap().is_empty());
        let moved = store.retry_of(&a.id).unwrap().unwrap();
        assert_eq!(
            moved,
            RetryRecord {
                due_at: t0() + minutes(10),
                ..first.clone()
            }
        );
        assert_eq!(
            store.due_retries(t0() + minutes(10), 10).unwrap(),
            std::slice::from_ref(&moved)
        );

        // A stale copy (the record moved since it was read) changes nothing.
        assert!(!store.reschedule_retry(&first, None).unwrap());
        assert_eq!(store.retry_of(&a.id).unwrap(), Some(moved.clone()));

        // A sync wrote a newer record meanwhile: it wins over the sweeper's copy.
        let newer = retry(&a, 2, t0() + minutes(10));
        store.record_retry(&newer).unwrap();
        assert!(!store
            .reschedule_retry(&moved, Some(t0() + minutes(20)))
            .unwrap());
        assert_eq!(store.retry_of(&a.id).unwrap(), Some(newer.clone()));

        // Dropped: gone from both the record and the index.
        assert!(store.reschedule_retry(&newer, None).unwrap());
        assert_eq!(store.retry_of(&a.id).unwrap(), None);
        assert!(store
            .due_retries(t0() + minutes(60), 10)
            .unwrap()
            .is_empty());
        assert!(!store.reschedule_retry(&newer, None).unwrap());
    }

    #[tokio::test]
    async fn consumed_inbox_entries_leave_with_the_commit() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        let s1 = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
        let s2 = seq_of(store.ingest(webhook("item-1", 2, t0()), TTL).unwrap());
        let s3 = seq_of(store.ingest(webhook("item-1", 3, t0()), TTL).unwrap());
        seq_of(
            store
                .ingest(webhook("item-unlinked", 4, t0()), TTL)
                .unwrap(),
        );
        assert_eq!(store.inbox_depth().unwrap(), 4);

        // s3 arrived after the sync started: it stays. A bogus seq is ignored.
        store
            .commit_sync(sync(
                &acc.id,
                ApplyMode::Delta,
                vec![],
                &[],
                vec![s1, s2, 999_999_999],
                "c",
            ))
            .unwrap();
        let pending: Vec<_> = store
            .pending_inbox(&acc.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(pending, [s3]);
        assert_eq!(store.inbox_depth().unwrap(), 2);
        assert_eq!(
            store.accounts_with_pending_inbox().unwrap(),
            vec![acc.id.clone()]
        );
        store
            .commit_sync(sync(&acc.id, ApplyMode::Delta, vec![], &[], vec![s3], "d"))
            .unwrap();
        assert!(store.accounts_with_pending_inbox().unwrap().is_empty());
    }

    #[tokio::test]
    async fn failed_and_started_syncs_touch_only_their_fields() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        store.record_sync_started(&acc.id, t0()).unwrap();
        let failed = SyncOutcome::Failed {
            code: "ITEM_LOGIN_REQUIRED".into(),
            message: "login required".into(),
            request_id: Some("req-1".into()),
        };
        store
            .record_sync_failed(&acc.id, failed.clone(), t0() + minutes(2))
            .unwrap();
        let stored = store.get_account(&acc.id).unwrap().unwrap();
        assert_eq!(stored.last_sync_started_at, Some(t0()));
        assert_eq!(stored.last_sync_finished_at, Some(t0() + minutes(2)));
        assert_eq!(stored.last_sync_outcome, Some(failed));
        assert_eq!((stored.cursor, stored.sync_count), (None, 0));

        let unknown = AccountId::generate();
        assert!(matches!(
            store.record_sync_started(&unknown, t0()),
            Err(StoreError::AccountNotFound(ref id)) if *id == unknown
        ));
        assert!(matches!(
            store.commit_sync(sync(
                &unknown,
                ApplyMode::Delta,
                vec![row("x", "2024-01-01")],
                &[],
                vec![],
                "c"
            )),
            Err(StoreError::AccountNotFound(_))
        ));
        assert_eq!(
            store.count_transactions(&unknown).unwrap(),
            0,
            "aborted commit wrote nothing"
        );
    }

    #[tokio::test]
    async fn unlink_keeps_data_and_frees_keys_and_purge_deletes_it() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let old = account("item-1", "owner-1", &["alias-1"]);
        store.link_account(&old).unwrap();
        let s = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
        store
            .commit_sync(sync(
                &old.id,
                ApplyMode::Delta,
                vec![row("t1", "2024-01-01")],
                &[],
                vec![],
                "c1",
            ))
            .unwrap();

        let before = store.unlink_account(&old.id, false).unwrap().unwrap();
        assert_eq!(before.status, LinkStatus::Linked);
        let kept = store.get_account(&old.id).unwrap().unwrap();
        assert_eq!(kept.status, LinkStatus::Unlinked);
        assert_eq!(kept.cursor.as_deref(), Some("c1"));
        assert_eq!(store.count_transactions(&old.id).unwrap(), 1);
        assert_eq!(store.pending_inbox(&old.id).unwrap()[0].seq, s);
        for key in ["item-1", "alias-1", "owner-1"] {
            assert_eq!(
                store.resolve(key).unwrap(),
                Resolved::NotFound,
                "{key} freed"
            );
        }
        assert_eq!(
            store.resolve(old.id.as_str()).unwrap(),
            Resolved::Found(old.id.clone())
        );

        // The same item and alias can be linked again as a new account.
        let new = account("item-1", "owner-1", &["alias-1"]);
        store.link_account(&new).unwrap();
        assert_eq!(
            store.resolve("alias-1").unwrap(),
            Resolved::Found(new.id.clone())
        );
        let routed = store.ingest(webhook("item-1", 2, t0()), TTL).unwrap();
        assert!(
            matches!(routed, IngestOutcome::Accepted { account_id: Some(ref id), .. } if *id == new.id)
        );
        assert_eq!(store.inbox_depth().unwrap(), 2);

        // Purging the old account deletes its data but not the new account's keys.
        assert!(store.unlink_account(&old.id, true).unwrap().is_some());
        assert!(store.get_account(&old.id).unwrap().is_none());
        assert_eq!(store.count_transactions(&old.id).unwrap(), 0);
        assert_eq!(raw_count(&store.transactions, &old.id), 0);
        assert!(store.pending_inbox(&old.id).unwrap().is_empty());
        assert_eq!(store.inbox_depth().unwrap(), 1);
        assert_eq!(
            store.resolve("item-1").unwrap(),
            Resolved::Found(new.id.clone())
        );
        assert_eq!(
            store.resolve("alias-1").unwrap(),
            Resolved::Found(new.id.clone())
        );
        assert!(store.unlink_account(&old.id, true).unwrap().is_none());
    }

    #[tokio::test]
    async fn everything_survives_shutdown_and_reopen() {
        let dir = TempDir::new().unwrap();
        let acc = account("item-1", "owner-1", &["alias-1"]);
        let (s_pending, s_unrouted) = {
            let store = open(&dir);
            store.link_account(&acc).unwrap();
            let s1 = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
            let s2 = seq_of(store.ingest(webhook("item-1", 2, t0()), TTL).unwrap());
            let s3 = seq_of(store.ingest(webhook("item-later", 3, t0()), TTL).unwrap());
            store
                .commit_sync(sync(
                    &acc.id,
                    ApplyMode::Delta,
                    vec![row("t1", "2024-01-01")],
                    &[],
                    vec![s1],
                    "c1",
                ))
                .unwrap();
            store.durable().await.unwrap();
            store.shutdown().await.unwrap();
            assert!(matches!(
                store.ingest(webhook("item-1", 9, t0()), TTL),
                Err(StoreError::Closed)
            ));
            store.durable().await.unwrap();
            (s2, s3)
        };

        let store = open(&dir);
        let stored = store.get_account(&acc.id).unwrap().unwrap();
        assert_eq!(stored.cursor.as_deref(), Some("c1"));
        assert_eq!(stored.access_token.expose(), "access-sandbox-secret");
        assert_eq!(all_rows(&store, &acc.id).len(), 1);
        assert_eq!(
            store.resolve("alias-1").unwrap(),
            Resolved::Found(acc.id.clone())
        );
        let pending: Vec<_> = store
            .pending_inbox(&acc.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(pending, [s_pending]);
        assert_eq!(store.inbox_depth().unwrap(), 2, "depth recounted at open");
        assert!(matches!(
            store.ingest(webhook("item-1", 2, t0()), TTL).unwrap(),
            IngestOutcome::Duplicate { .. }
        ));
        // Sequence numbers stay monotonic across restarts.
        assert!(seq_of(store.ingest(webhook("item-1", 4, t0()), TTL).unwrap()) > s_unrouted);
        let later = account("item-later", "owner-1", &[]);
        assert_eq!(store.link_account(&later).unwrap().adopted_events, 1);
        store.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_durable_ingests_share_flush_rounds() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        // Everyone ingests, then all ask for durability together, as a burst of webhook
        // requests does: the rounds must be shared.
        let barrier = Arc::new(tokio::sync::Barrier::new(200));
        let tasks: Vec<_> = (0..200u32)
            .map(|n| {
                let store = Arc::clone(&store);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    seq_of(store.ingest(webhook("item-1", n, t0()), TTL).unwrap());
                    barrier.wait().await;
                    store.durable().await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let rounds = store.flush_count();
        assert!(rounds > 0 && rounds < 200, "flush rounds = {rounds}");
        assert!(
            rounds <= 20,
            "200 waiters should need a handful of rounds, took {rounds}"
        );
        assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 200);
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn list_transactions_pages_filters_and_tolerates_any_token() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        let rows = vec![
            row("e", "2024-01-05"),
            row("a", "2024-01-01"),
            row("c", "2024-01-03"),
            row("b2", "2024-01-02"),
            row("b1", "2024-01-02"),
        ];
        store
            .commit_sync(sync(&acc.id, ApplyMode::Delta, rows, &[], vec![], "c"))
            .unwrap();

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_transactions(
                    &acc.id,
                    &TransactionQuery {
                        after: after.clone(),
                        limit: 2,
                        ..Default::default()
                    },
                )
                .unwrap();
            seen.extend(page.transactions.iter().map(|t| t.id.clone()));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b1", "b2", "c", "e"]);

        let d = |s| Some(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap());
        let ranged = |start, end, after: Option<&str>, limit| {
            store
                .list_transactions(
                    &acc.id,
                    &TransactionQuery {
                        start_date: start,
                        end_date: end,
                        after: after.map(str::to_owned),
                        limit,
                    },
                )
                .unwrap()
                .transactions
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ranged(d("2024-01-02"), d("2024-01-03"), None, 10),
            ["b1", "b2", "c"]
        );
        assert_eq!(
            ranged(d("2024-01-02"), d("2024-01-03"), Some("2024-01-02|b1"), 10),
            ["b2", "c"]
        );
        assert_eq!(
            ranged(d("2024-01-04"), d("2024-01-02"), None, 10),
            Vec::<String>::new()
        );
        assert_eq!(ranged(None, None, Some("zzz"), 10), Vec::<String>::new());
        assert_eq!(ranged(None, None, Some(""), 10).len(), 5);
        assert_eq!(
            ranged(None, None, Some("2024-01-02"), 10),
            ["b1", "b2", "c", "e"]
        );
        assert_eq!(
            ranged(None, None, None, 0),
            ["a"],
            "limit 0 is treated as 1"
        );
        assert_eq!(ranged(None, None, Some("\u{0}\u{ffff}|x"), 10).len(), 5);
    }

    #[tokio::test]
    async fn unreadable_records_are_reported_as_corrupt() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        store
            .accounts
            .insert(keys::account_key(&acc.id), &[42u8, 1, 2][..])
            .unwrap();
        assert!(matches!(
            store.get_account(&acc.id),
            Err(StoreError::Corrupt { tree: ACCOUNTS, .. })
        ));
        assert!(matches!(
            store.commit_sync(sync(&acc.id, ApplyMode::Delta, vec![], &[], vec![], "c")),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn debug_output_does_not_leak_the_access_token() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        let stored = store.get_account(&acc.id).unwrap().unwrap();
        assert!(!format!("{stored:?} {store:?}").contains("access-sandbox-secret"));
    }

    /// One sync of 50,000 rows in a single transaction.
    /// `cargo test --lib store::sled::tests::commit_of_50k_upserts -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "measurement: prints how long a 50k-row commit takes"]
    async fn commit_of_50k_upserts() {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let acc = account("item-1", "owner-1", &[]);
        store.link_account(&acc).unwrap();
        let rows: Vec<_> = (0..50_000)
            .map(|i| {
                row(
                    &format!("txn_{i:06}"),
                    &format!("2024-{:02}-{:02}", i % 12 + 1, i % 28 + 1),
                )
            })
            .collect();
        let started = std::time::Instant::now();
        store
            .commit_sync(sync(
                &acc.id,
                ApplyMode::Replace,
                rows.clone(),
                &[],
                vec![],
                "c1",
            ))
            .unwrap();
        let first = started.elapsed();
        let started = std::time::Instant::now();
        store
            .commit_sync(sync(&acc.id, ApplyMode::Replace, rows, &[], vec![], "c2"))
            .unwrap();
        let second = started.elapsed();
        let started = std::time::Instant::now();
        store.durable().await.unwrap();
        let flush = started.elapsed();
        assert_eq!(store.count_transactions(&acc.id).unwrap(), 50_000);
        println!("50k upserts: insert {first:?}, replace-in-place {second:?}, durable {flush:?}");
        store.shutdown().await.unwrap();
    }

    /// Durable ingest ceiling: N tasks each looping ingest + durable().
    /// `cargo test --lib store::sled::tests::durable_ingest_ceiling -- --ignored --nocapture`
    /// (set ACCTOR_BENCH_DIR to measure on a real disk instead of the temp dir).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement: prints durable ingests per second"]
    async fn durable_ingest_ceiling() {
        let dir = match std::env::var_os("ACCTOR_BENCH_DIR") {
            Some(base) => TempDir::new_in(base).unwrap(),
            None => TempDir::new().unwrap(),
        };
        let store = open(&dir);
        store
            .link_account(&account("item-1", "owner-1", &[]))
            .unwrap();
        for concurrency in [1u32, 8, 64, 256] {
            let per_task = 4000 / concurrency.min(64) + 10;
            let rounds_before = store.flush_count();
            let started = std::time::Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|task| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        for i in 0..per_task {
                            let n = concurrency * 1_000_000 + task * 10_000 + i;
                            store.ingest(webhook("item-1", n, t0()), TTL).unwrap();
                            store.durable().await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let elapsed = started.elapsed();
            let ops = f64::from(concurrency * per_task);
            println!(
                "concurrency {concurrency}: {:.0} durable ingests/s, {} flush rounds for {ops} ops",
                ops / elapsed.as_secs_f64(),
                store.flush_count() - rounds_before
            );
        }
        store.shutdown().await.unwrap();
    }
}

#[cfg(test)]
#[path = "poll_tests.rs"]
mod poll_tests;
