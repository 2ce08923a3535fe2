//! The sled implementation of [`Store`](super::Store): typed trees, versioned records and the
//! multi-tree transactions that keep the store's invariants.
//!
//! This file owns [`SledStore`] itself: opening (and migrating) the trees, the write
//! gate, shutdown and durability. Each record family implements its trait in its own
//! file: `accounts.rs`, `inbox.rs`, `rows.rs`, `due.rs`, `incidents.rs`, `outbox.rs`,
//! `flags.rs`, `operations.rs`;
//! `keys.rs` is the byte layout, `migrate.rs` the upgrade of older data dirs at open, and
//! `group_commit.rs` the one flusher.
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

mod accounts;
mod due;
mod flags;
mod group_commit;
mod inbox;
mod incidents;
mod keys;
mod migrate;
mod objects;
mod operations;
mod outbox;
mod pushes;
mod rows;
mod sealed;
#[cfg(test)]
pub(crate) mod test_support;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use chrono::Utc;
use futures::future::BoxFuture;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::{IVec, Tree};

use super::Durability;
use super::{DueKind, StoreError};
use crate::domain::{Account, AccountId};
use due::TxDue;
use group_commit::{FlushFn, GroupCommit};
use incidents::IncidentTrees;
use keys::{
    ACCOUNTS, CLAIMS, DEDUP, DUE, DUE_SUBJECTS, FLAGS, FLAG_CHANGES, FLAG_HISTORY, INBOX,
    INCIDENTS, INCIDENT_OPEN, LOOKUP, OUTBOX, TRANSACTIONS, TXN_INDEX, UNROUTED,
};
use migrate::DueTrees;
use sealed::{Sealer, SECRETS};

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
    /// The due index: (kind, time, subject) of every retry, polling entry and
    /// undelivered outbox message, with its payload (see `due.rs`).
    due: Tree,
    /// (kind, subject) to the time of its entry in `due`.
    due_subjects: Tree,
    /// Incidents by id.
    incidents: Tree,
    /// (subject, kind) of open incidents to their id.
    incident_open: Tree,
    /// Runtime flags by path (see `flags.rs`).
    flags: Tree,
    /// Each flag's changes by (path, inverted seq): newest first per flag.
    flag_history: Tree,
    /// Every flag change by inverted seq: newest first overall.
    flag_changes: Tree,
    /// Undelivered outbox messages of every destination ([`crate::store::OutboxMessage`]).
    outbox: Tree,
    /// Which keys the sealed secrets may need (see `sealed.rs`).
    secrets: Tree,
    /// The operation family's trees (see `operations.rs`).
    operations: operations::OperationTrees,
    /// The Stripe object family's trees (see `objects.rs`).
    objects: objects::ObjectTrees,
    /// Seals the secret fields of records on the way in, opens them on the way out.
    sealer: Sealer,
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

pub(super) fn io(e: impl fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn from_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => io(e),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Lifts a store result into a transaction closure: errors abort the transaction.
pub(super) fn tx<T>(result: Result<T, StoreError>) -> TxResult<T> {
    result.map_err(ConflictableTransactionError::Abort)
}

/// The account record at `key` inside a transaction; `AccountNotFound` aborts it.
fn read_account(
    sealer: &Sealer,
    accounts: &TransactionalTree,
    key: &[u8],
    id: &AccountId,
) -> TxResult<Account> {
    let Some(bytes) = accounts.get(key)? else {
        return Err(ConflictableTransactionError::Abort(
            StoreError::AccountNotFound(id.clone()),
        ));
    };
    tx(sealer.decode(ACCOUNTS, key, &bytes))
}

fn saturating_sub(counter: &AtomicU64, n: u64) {
    if n > 0 {
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

impl SledStore {
    /// Opens (or creates) the store with the data dir's own key,
    /// `<data_dir>/secrets.key`, generated if missing: for tests, benchmarks and the
    /// embedded demo. A key beside the data is no protection at rest, so a production
    /// start passes its configured keys to [`SledStore::open_with_keyring`].
    pub fn open(config: SledStoreConfig) -> Result<Arc<SledStore>, StoreError> {
        let (keyring, _) = crate::secrets::key_file::load_or_generate(&config.data_dir)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Self::open_with_keyring(config, keyring)
    }

    /// Opens (or creates) the store in `config.data_dir` and starts its flusher task;
    /// secrets are sealed with `keyring`'s current key. Refuses a keyring that lacks a
    /// key the stored secrets may be sealed with (`StoreError::Secret`), and seals the
    /// plain secrets of a data dir written by an older version.
    /// Must be called inside a tokio runtime; outside one it returns `StoreError::Io`.
    pub fn open_with_keyring(
        config: SledStoreConfig,
        keyring: crate::secrets::Keyring,
    ) -> Result<Arc<SledStore>, StoreError> {
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
        let due = tree(DUE)?;
        let due_subjects = tree(DUE_SUBJECTS)?;
        let due_trees = DueTrees {
            entries: &due,
            subjects: &due_subjects,
        };
        let sealer = Sealer::new(keyring);
        migrate::migrate_legacy_indexes(&db, &accounts, &due_trees, &sealer)?;
        migrate::retire_unlinked_keys(&accounts, &lookup, &sealer)?;
        let incidents = tree(INCIDENTS)?;
        let incident_open = tree(INCIDENT_OPEN)?;
        let flags = tree(FLAGS)?;
        let flag_history = tree(FLAG_HISTORY)?;
        let flag_changes = tree(FLAG_CHANGES)?;
        let outbox = tree(OUTBOX)?;
        outbox::rebuild_outbox_due(&outbox, &due_trees)?;
        let secrets = tree(SECRETS)?;
        let operations = operations::OperationTrees::open(&db)?;
        let objects = objects::ObjectTrees::open(&db)?;
        sealed::prepare(&db, &secrets, &sealed_trees(&accounts), &sealer)?;

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
            due,
            due_subjects,
            incidents,
            incident_open,
            flags,
            flag_history,
            flag_changes,
            outbox,
            secrets,
            operations,
            objects,
            sealer,
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
        let was_open = {
            let mut closed = self.closed.write().unwrap_or_else(|p| p.into_inner());
            !std::mem::replace(&mut *closed, true)
        };
        let result = self.group.stop().await;
        if was_open {
            tracing::info!(data_dir = %self.data_dir.display(), ok = result.is_ok(), "store closed");
        }
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
                let mut account = read_account(&self.sealer, accounts, &key, id)?;
                change(&mut account);
                accounts.insert(key.as_slice(), tx(self.encode_account(&account))?)?;
                Ok(())
            })
            .map_err(from_tx)
    }

    /// Read-modify-write of one account record that also deletes its retry entry, in
    /// the same transaction (a parked or given-up account is not retried).
    fn update_account_clearing_retry(
        &self,
        id: &AccountId,
        change: impl Fn(&mut Account),
    ) -> Result<(), StoreError> {
        let _gate = self.write_gate()?;
        let key = keys::account_key(id);
        (&self.accounts, &self.due, &self.due_subjects)
            .transaction(|(accounts, entries, subjects)| {
                let mut account = read_account(&self.sealer, accounts, &key, id)?;
                change(&mut account);
                accounts.insert(key.as_slice(), tx(self.encode_account(&account))?)?;
                TxDue { entries, subjects }.remove(DueKind::Retry, id.as_str())?;
                Ok(())
            })
            .map_err(from_tx)
    }

    /// An account record's bytes, its access token sealed.
    fn encode_account(&self, account: &Account) -> Result<Vec<u8>, StoreError> {
        self.sealer
            .encode(ACCOUNTS, &keys::account_key(&account.id), account)
    }

    /// An account record from its bytes at `key`, its access token opened.
    fn decode_account(&self, key: &[u8], bytes: &[u8]) -> Result<Account, StoreError> {
        self.sealer.decode(ACCOUNTS, key, bytes)
    }

    /// Re-seals every stored secret that is not sealed with the current key (the
    /// `acctor rotate-key` command; idempotent) and makes that durable; returns how many
    /// values it re-sealed. Afterwards the store needs only the current key.
    pub fn rotate_secrets(&self) -> Result<u64, StoreError> {
        let _gate = self.write_gate()?;
        let resealed = sealed::rotate(
            &self.secrets,
            &sealed_trees(&self.accounts),
            &self.sealer,
            || self.files.flush_and_sync(),
        )?;
        tracing::info!(
            resealed,
            key_id = self.sealer.current_key_id(),
            "secrets re-sealed with the current key"
        );
        Ok(resealed)
    }

    fn incident_trees(&self) -> IncidentTrees<'_> {
        IncidentTrees {
            incidents: &self.incidents,
            open: &self.incident_open,
            outbox: &self.outbox,
            due: &self.due,
            due_subjects: &self.due_subjects,
        }
    }
}

/// Every tree named in [`sealed::SEALED_FIELDS`], with its name (a test checks they agree).
fn sealed_trees(accounts: &Tree) -> [(&'static str, &Tree); 1] {
    [(ACCOUNTS, accounts)]
}

/// Waits, at most `within`, until no handle holds the sled database in `data_dir` (its
/// directory lock is free); returns whether it became free. A dropped store lets go of
/// the lock only when sled's last background write for it ends, a moment after the
/// drop: a caller that reopens the directory in the same process (an in-process
/// restart) waits here instead of failing on the lock. Blocking: run it on a blocking
/// thread.
pub fn wait_until_released(data_dir: &Path, within: std::time::Duration) -> bool {
    use fs2::FileExt as _;
    let deadline = std::time::Instant::now() + within;
    loop {
        // sled locks the `db` file inside its directory (an flock, which conflicts
        // with any other open of the file, in this process too).
        let free = match std::fs::File::open(data_dir.join("db")) {
            Ok(file) => {
                let free = file.try_lock_exclusive().is_ok();
                if free {
                    let _ = fs2::FileExt::unlock(&file);
                }
                free
            }
            // No database file: nothing can hold it.
            Err(_) => true,
        };
        if free {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Without a shutdown, still let the flusher exit instead of waiting forever.
        self.group.request_stop();
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

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
