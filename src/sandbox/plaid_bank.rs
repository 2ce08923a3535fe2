//! The bank's state: items, their transactions and the change log that
//! `/transactions/sync` pages through. Each item's fault switches (`switches`) and
//! traffic counters (`stats`) live in their own files.
//!
//! Each item keeps its current transactions indexed by id and by date, and an
//! append-only log of transaction ids in the order they changed. A transaction record
//! remembers where in the log it was created and last changed, so a sync page is a
//! slice of the log that emits each touched transaction once, in its current state,
//! without copying the item. Removed transactions stay as tombstones so a later page can
//! still report their removal.
//!
//! Every item has its own `std::sync::Mutex`; critical sections are short and never
//! span an `.await` (webhooks are sent after the lock is released).
//!
//! Every change an item's snapshot would show bumps that item's revision (under its
//! lock), and every change to the bank-wide fields bumps the bank's, so the persister
//! (`persist`) rewrites only what changed since its last save.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::NaiveDate;
use rand::seq::index::sample;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::cursor::{CursorCodec, SyncCursor};
use super::faults::{self, RandomFaults, RandomFaultsUpdate};
use super::generate::{self, AccountKind, GeneratedAccounts};
use super::persist::{BankHeader, ItemSnapshot, RngState, TxnSnapshot, FORMAT_VERSION};
pub use super::stats::ItemStatsSnapshot;
pub(crate) use super::stats::{InFlightSync, ItemStats};
pub use super::switches::Faults;
pub(crate) use super::switches::FaultsUpdate;
use crate::providers::plaid::wire::{PlaidAccount, PlaidTransaction, RemovedTransaction};

/// Locks a mutex, recovering from poisoning: every critical section here leaves the
/// state consistent before anything that could panic, and a sandbox that stops answering
/// after one bad request would hide the bug it should expose.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// A link waiting for its public token to be exchanged.
#[derive(Clone, Debug)]
pub(crate) struct PendingLink {
    /// Institution chosen at creation.
    pub institution_id: String,
    /// Webhook URL chosen at creation.
    pub webhook: Option<String>,
}

/// All items of one sandbox.
pub(crate) struct Bank {
    seed: u64,
    today: NaiveDate,
    /// The raw key behind `codec`, kept for the snapshot.
    cursor_key: [u8; 32],
    codec: CursorCodec,
    /// Bumped by every change to the bank-wide fields a snapshot holds.
    revision: AtomicU64,
    next_number: AtomicU64,
    items: RwLock<HashMap<String, Arc<Item>>>,
    tokens: RwLock<HashMap<String, Arc<Item>>>,
    public_tokens: Mutex<HashMap<String, PendingLink>>,
    default_webhook: RwLock<Option<String>>,
    /// Choices that belong to no item (public tokens, the demo's item pick).
    shared_rng: Mutex<ChaCha8Rng>,
    /// Random faults of every item that does not override them (not persisted).
    global_faults: RwLock<RandomFaults>,
}

impl Bank {
    /// An empty bank whose generated data is dated relative to `today`.
    pub fn new(seed: u64, today: NaiveDate, cursor_key: [u8; 32]) -> Self {
        Bank {
            seed,
            today,
            cursor_key,
            codec: CursorCodec::new(cursor_key),
            revision: AtomicU64::new(0),
            next_number: AtomicU64::new(1),
            items: RwLock::new(HashMap::new()),
            tokens: RwLock::new(HashMap::new()),
            public_tokens: Mutex::new(HashMap::new()),
            default_webhook: RwLock::new(None),
            shared_rng: Mutex::new(generate::item_rng(seed, 0)),
            global_faults: RwLock::new(RandomFaults::default()),
        }
    }

    /// A bank restored from a snapshot: `header` as saved (with the cursor key to use
    /// from now on) and the items read back.
    pub fn restore(header: BankHeader, today: NaiveDate, items: Vec<Item>) -> Result<Self, String> {
        let seed = header.seed;
        let shared_rng = header.shared_rng.restore()?;
        let bank = Bank::new(header.seed, today, header.cursor_key);
        *lock(&bank.shared_rng) = shared_rng;
        *write(&bank.default_webhook) = header.default_webhook;
        // Numbers seed the generated ids: never reuse one, even if the header was
        // written before the newest item's file.
        let next = items
            .iter()
            .map(|item| item.number + 1)
            .fold(header.next_number.max(1), u64::max);
        bank.next_number.store(next, Ordering::Relaxed);
        {
            let mut by_id = write(&bank.items);
            let mut by_token = write(&bank.tokens);
            for item in items {
                *lock(&item.fault_rng) = faults::fault_rng(seed, item.number);
                let item = Arc::new(item);
                if by_id.insert(item.item_id.clone(), item.clone()).is_some() {
                    return Err(format!("item {} appears twice", item.item_id));
                }
                if by_token
                    .insert(item.access_token.clone(), item.clone())
                    .is_some()
                {
                    return Err(format!(
                        "access token of item {} is not unique",
                        item.item_id
                    ));
                }
            }
        }
        Ok(bank)
    }

    /// The bank-wide revision: changes whenever [`Bank::header`] would.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    fn touch(&self) {
        self.revision.fetch_add(1, Ordering::SeqCst);
    }

    /// The bank-wide fields a snapshot holds.
    pub fn header(&self) -> BankHeader {
        BankHeader {
            seed: self.seed,
            next_number: self.next_number.load(Ordering::Relaxed),
            shared_rng: RngState::capture(&lock(&self.shared_rng)),
            default_webhook: read(&self.default_webhook).clone(),
            cursor_key: self.cursor_key,
        }
    }

    /// Every item, in creation order.
    pub fn all_items(&self) -> Vec<Arc<Item>> {
        let mut items: Vec<Arc<Item>> = read(&self.items).values().cloned().collect();
        items.sort_by_key(|item| item.number);
        items
    }

    /// The date generated data is relative to.
    pub fn today(&self) -> NaiveDate {
        self.today
    }

    /// The cursor codec of this bank.
    pub fn codec(&self) -> &CursorCodec {
        &self.codec
    }

    /// Creates an item with `history` generated transactions.
    pub fn create_item(
        &self,
        history: u32,
        webhook: Option<String>,
        institution_id: &str,
    ) -> Arc<Item> {
        let number = self.next_number.fetch_add(1, Ordering::Relaxed);
        let item = Arc::new(Item::generate(
            self.seed,
            number,
            self.today,
            history,
            webhook,
            institution_id,
        ));
        write(&self.tokens).insert(item.access_token.clone(), item.clone());
        write(&self.items).insert(item.item_id.clone(), item.clone());
        self.touch();
        item
    }

    /// The item with this id.
    pub fn item(&self, item_id: &str) -> Option<Arc<Item>> {
        read(&self.items).get(item_id).cloned()
    }

    /// The item this access token opens.
    pub fn item_by_token(&self, token: &str) -> Option<Arc<Item>> {
        read(&self.tokens).get(token).cloned()
    }

    /// A random item among `among` (item ids; unknown ones are skipped), deterministic
    /// for a seed and a creation order.
    pub fn random_item(&self, among: &[String]) -> Option<Arc<Item>> {
        let mut items: Vec<Arc<Item>> = {
            let items = read(&self.items);
            among
                .iter()
                .filter_map(|id| items.get(id).cloned())
                .collect()
        };
        if items.is_empty() {
            return None;
        }
        items.sort_by_key(|item| item.number);
        let index = lock(&self.shared_rng).gen_range(0..items.len());
        self.touch();
        Some(items.swap_remove(index))
    }

    /// Sets the webhook URL of items created without one.
    pub fn set_default_webhook(&self, url: Option<String>) {
        *write(&self.default_webhook) = url;
        self.touch();
    }

    /// Where webhooks for `item` go: its own URL, else the default.
    pub fn webhook_url_for(&self, item: &Item) -> Option<String> {
        item.webhook()
            .or_else(|| read(&self.default_webhook).clone())
    }

    /// Registers a public token for a later exchange.
    pub fn create_public_token(&self, link: PendingLink) -> String {
        let token = generate::public_token(&mut *lock(&self.shared_rng));
        self.touch();
        lock(&self.public_tokens).insert(token.clone(), link);
        token
    }

    /// The global random faults.
    pub fn global_faults(&self) -> RandomFaults {
        read(&self.global_faults).clone()
    }

    /// Applies a validated partial update to the global random faults.
    pub fn update_global_faults(&self, update: RandomFaultsUpdate) -> RandomFaults {
        let mut global = write(&self.global_faults);
        global.apply(update);
        global.clone()
    }

    /// The random faults `item` gets: its own settings over the global ones.
    pub fn effective_faults(&self, item: &Item) -> RandomFaults {
        let own = lock(&item.state).faults.random.clone();
        own.over(&read(&self.global_faults))
    }

    /// Consumes a public token (single use, like Plaid's).
    pub fn take_public_token(&self, token: &str) -> Option<PendingLink> {
        lock(&self.public_tokens).remove(token)
    }
}

/// A transaction and where it sits in the change log.
struct TxnRecord {
    txn: PlaidTransaction,
    /// Log position of its creation.
    created_at: u64,
    /// Log position of its latest change (creation, modification or removal).
    last_change: u64,
    removed: bool,
}

/// Why a sync or listing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SyncError {
    /// The item needs its user to log in again.
    #[error("item login required")]
    LoginRequired,
    /// The cursor is refused; the message names the cursor.
    #[error("{0}")]
    CursorRejected(String),
    /// The log grew since the loop started (or the fault says so).
    #[error("mutation during pagination")]
    MutationDuringPagination,
}

/// One `/transactions/sync` page, ready for the wire.
pub(crate) struct SyncPage {
    pub added: Vec<PlaidTransaction>,
    pub modified: Vec<PlaidTransaction>,
    pub removed: Vec<RemovedTransaction>,
    pub next_cursor: String,
    pub has_more: bool,
    pub accounts: Vec<PlaidAccount>,
}

/// One `/transactions/get` page.
pub(crate) struct WindowPage {
    pub transactions: Vec<PlaidTransaction>,
    pub total: u64,
    pub accounts: Vec<PlaidAccount>,
}

/// What a mutation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct MutationReport {
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

/// Why a mutation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MutateError {
    /// More modifications and removals than current transactions.
    #[error("asked to modify {modify} and remove {remove} transactions but the item has {have}")]
    NotEnough {
        modify: usize,
        remove: usize,
        have: usize,
    },
}

/// One linked login: accounts, transactions, change log, faults and counters.
pub(crate) struct Item {
    /// Creation order within the bank (drives the item's seed).
    pub number: u64,
    /// Plaid `item_id`.
    pub item_id: String,
    /// The one access token of this item.
    pub access_token: String,
    /// Institution id.
    pub institution_id: String,
    state: Mutex<ItemState>,
    /// Traffic counters.
    pub stats: ItemStats,
    /// Draws of the random faults (a stream apart from the data's).
    pub fault_rng: Mutex<ChaCha8Rng>,
    /// Webhook deliveries held back by the reorder fault: (url, body).
    pub held_webhooks: Mutex<Vec<(String, Vec<u8>)>>,
    /// The `sync_limit` window: when it started and the calls counted in it.
    limit_window: Mutex<Option<(std::time::Instant, u32)>>,
}

struct ItemState {
    accounts: GeneratedAccounts,
    txns: HashMap<String, TxnRecord>,
    /// Current (not removed) transactions by (date, id): `/transactions/get` windows
    /// and seeded picks iterate it in a stable order.
    by_date: BTreeSet<(String, String)>,
    /// Transaction ids in the order they changed.
    log: Vec<String>,
    rng: ChaCha8Rng,
    webhook: Option<String>,
    faults: Faults,
    /// Bumped by every change a snapshot of the item would show.
    revision: u64,
}

impl Item {
    fn generate(
        seed: u64,
        number: u64,
        today: NaiveDate,
        history: u32,
        webhook: Option<String>,
        institution_id: &str,
    ) -> Item {
        let mut rng = generate::item_rng(seed, number);
        let item_id = generate::plaid_id(&mut rng);
        let access_token = generate::access_token(&mut rng);
        let accounts = generate::accounts(&mut rng);
        let mut history_txns: Vec<PlaidTransaction> = (0..history)
            .map(|_| {
                let age = generate::history_age(&mut rng);
                generate::transaction(&mut rng, &accounts, today, age)
            })
            .collect();
        // The history enters the log oldest first, as a bank would have recorded it.
        history_txns
            .sort_by(|a, b| (&a.date, &a.transaction_id).cmp(&(&b.date, &b.transaction_id)));
        let mut state = ItemState {
            accounts,
            txns: HashMap::with_capacity(history as usize),
            by_date: BTreeSet::new(),
            log: Vec::with_capacity(history as usize),
            rng,
            webhook,
            faults: Faults::default(),
            revision: 0,
        };
        for txn in history_txns {
            state.insert_new(txn);
        }
        Item {
            number,
            item_id,
            access_token,
            institution_id: institution_id.to_string(),
            state: Mutex::new(state),
            stats: ItemStats::default(),
            fault_rng: Mutex::new(faults::fault_rng(seed, number)),
            held_webhooks: Mutex::new(Vec::new()),
            limit_window: Mutex::new(None),
        }
    }

    /// The item's snapshot and its revision, or `None` when its revision is still
    /// `saved`. The copy is taken under the item's lock (one pass over its records);
    /// serializing it happens after the lock is released.
    pub fn snapshot_if_changed(&self, saved: Option<u64>) -> Option<(u64, ItemSnapshot)> {
        let state = lock(&self.state);
        if saved == Some(state.revision) {
            return None;
        }
        let mut transactions: Vec<TxnSnapshot> = state
            .txns
            .values()
            .map(|r| TxnSnapshot {
                created_at: r.created_at,
                last_change: r.last_change,
                removed: r.removed,
                transaction: r.txn.clone(),
            })
            .collect();
        let snapshot = ItemSnapshot {
            version: FORMAT_VERSION,
            number: self.number,
            item_id: self.item_id.clone(),
            access_token: self.access_token.clone(),
            institution_id: self.institution_id.clone(),
            webhook: state.webhook.clone(),
            faults: state.faults.clone(),
            accounts: state.accounts.accounts.clone(),
            account_kinds: state
                .accounts
                .kinds
                .iter()
                .map(|k| kind_name(*k).to_string())
                .collect(),
            log: state.log.clone(),
            transactions: Vec::new(),
            rng: RngState::capture(&state.rng),
        };
        let revision = state.revision;
        drop(state);
        // A stable order makes snapshots of the same state byte-identical.
        transactions.sort_unstable_by_key(|t| t.created_at);
        Some((
            revision,
            ItemSnapshot {
                transactions,
                ..snapshot
            },
        ))
    }

    /// An item read back from its snapshot, after checking every invariant the
    /// sync and listing code relies on (a damaged file must fail here, not panic later).
    pub fn from_snapshot(snapshot: ItemSnapshot) -> Result<Item, String> {
        if snapshot.accounts.is_empty() {
            return Err("item has no accounts".to_string());
        }
        if snapshot.accounts.len() != snapshot.account_kinds.len() {
            return Err("accounts and account kinds differ in length".to_string());
        }
        let kinds = snapshot
            .account_kinds
            .iter()
            .map(|name| {
                kind_from_name(name).ok_or_else(|| format!("unknown account kind {name:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let log_len = snapshot.log.len() as u64;
        let mut txns = HashMap::with_capacity(snapshot.transactions.len());
        let mut by_date = BTreeSet::new();
        for t in snapshot.transactions {
            let id = t.transaction.transaction_id.clone();
            let in_log = |at: u64| at < log_len && snapshot.log[at as usize] == id;
            if !(t.created_at <= t.last_change && in_log(t.created_at) && in_log(t.last_change)) {
                return Err(format!("transaction {id} does not match the change log"));
            }
            if !t.removed {
                by_date.insert((t.transaction.date.clone(), id.clone()));
            }
            let record = TxnRecord {
                txn: t.transaction,
                created_at: t.created_at,
                last_change: t.last_change,
                removed: t.removed,
            };
            if txns.insert(id.clone(), record).is_some() {
                return Err(format!("transaction {id} appears twice"));
            }
        }
        if let Some(orphan) = snapshot.log.iter().find(|id| !txns.contains_key(*id)) {
            return Err(format!("change log names unknown transaction {orphan}"));
        }
        let state = ItemState {
            accounts: GeneratedAccounts {
                accounts: snapshot.accounts,
                kinds,
            },
            txns,
            by_date,
            log: snapshot.log,
            rng: snapshot.rng.restore()?,
            webhook: snapshot.webhook,
            faults: snapshot.faults,
            revision: 0,
        };
        Ok(Item {
            number: snapshot.number,
            item_id: snapshot.item_id,
            access_token: snapshot.access_token,
            institution_id: snapshot.institution_id,
            state: Mutex::new(state),
            stats: ItemStats::default(),
            // Reseeded from the sandbox seed by `Bank::restore`.
            fault_rng: Mutex::new(faults::fault_rng(0, snapshot.number)),
            held_webhooks: Mutex::new(Vec::new()),
            limit_window: Mutex::new(None),
        })
    }

    /// The item's own webhook URL.
    pub fn webhook(&self) -> Option<String> {
        lock(&self.state).webhook.clone()
    }

    /// The fault switches now.
    pub fn faults(&self) -> Faults {
        lock(&self.state).faults.clone()
    }

    /// Applies a partial fault update and returns the result.
    pub fn update_faults(&self, update: FaultsUpdate) -> Faults {
        let mut state = lock(&self.state);
        let faults = &mut state.faults;
        if let Some(n) = update.mutation_during_pagination {
            faults.mutation_during_pagination = n;
        }
        if let Some(n) = update.reject_cursor {
            faults.reject_cursor = n;
        }
        if let Some(n) = update.duplicate_webhooks {
            faults.duplicate_webhooks = n;
        }
        if let Some(ms) = update.sync_latency_ms {
            faults.sync_latency_ms = ms;
        }
        if let Some(ms) = update.sync_latency_after_ms {
            faults.sync_latency_after_ms = ms;
        }
        if let Some(required) = update.login_required {
            faults.login_required = required;
        }
        if let Some(limit) = update.sync_limit {
            faults.sync_limit = limit;
        }
        faults.random.apply(update.random());
        let faults = faults.clone();
        state.revision += 1;
        faults
    }

    /// Puts the item into (or out of) `ITEM_LOGIN_REQUIRED`.
    pub fn set_login_required(&self, required: bool) {
        let mut state = lock(&self.state);
        state.faults.login_required = required;
        state.revision += 1;
    }

    /// Puts the item into `ITEM_LOGIN_REQUIRED`; `true` if it was not in it already,
    /// in one step, so that two faulted calls racing each other announce it once.
    pub fn require_login(&self) -> bool {
        let mut state = lock(&self.state);
        if state.faults.login_required {
            return false;
        }
        state.faults.login_required = true;
        state.revision += 1;
        true
    }

    /// Whether the item is in `ITEM_LOGIN_REQUIRED`.
    pub fn login_required(&self) -> bool {
        lock(&self.state).faults.login_required
    }

    /// Counts a `/transactions/sync` call against the item's `sync_limit`; `false`
    /// (and counted as a rejection) when it is over the limit.
    pub fn admit_sync(&self) -> bool {
        let Some(limit) = lock(&self.state).faults.sync_limit else {
            return true;
        };
        let now = std::time::Instant::now();
        let window = Duration::from_millis(limit.window_ms.max(1));
        let mut current = lock(&self.limit_window);
        let (started, calls) = match *current {
            Some((started, calls)) if now.duration_since(started) < window => (started, calls),
            _ => (now, 0),
        };
        if calls >= limit.max_calls {
            *current = Some((started, calls));
            ItemStats::bump(&self.stats.sync_limit_rejections);
            return false;
        }
        *current = Some((started, calls + 1));
        true
    }

    /// The injected latency of a sync.
    pub fn sync_latency(&self) -> Duration {
        Duration::from_millis(lock(&self.state).faults.sync_latency_ms)
    }

    /// The injected latency of a sync after its page is computed.
    pub fn sync_latency_after(&self) -> Duration {
        Duration::from_millis(lock(&self.state).faults.sync_latency_after_ms)
    }

    /// Extra deliveries of every webhook.
    pub fn duplicate_webhooks(&self) -> u32 {
        lock(&self.state).faults.duplicate_webhooks
    }

    /// Counts a sync call and marks it in flight until the guard drops. A call that
    /// starts while another is in flight for this item's token is overlapping.
    pub fn enter_sync(&self) -> InFlightSync<'_> {
        ItemStats::bump(&self.stats.sync_calls);
        let before = self.stats.in_flight_syncs.fetch_add(1, Ordering::SeqCst);
        if before > 0 {
            ItemStats::bump(&self.stats.overlapping_syncs);
        }
        self.stats
            .max_concurrent_syncs
            .fetch_max(before + 1, Ordering::SeqCst);
        InFlightSync { stats: &self.stats }
    }

    /// Every current transaction, sorted by id.
    pub fn current_transactions(&self) -> Vec<PlaidTransaction> {
        let state = lock(&self.state);
        let mut txns: Vec<PlaidTransaction> = state
            .txns
            .values()
            .filter(|r| !r.removed)
            .map(|r| r.txn.clone())
            .collect();
        drop(state);
        txns.sort_by(|a, b| a.transaction_id.cmp(&b.transaction_id));
        txns
    }

    /// Number of current transactions.
    #[cfg(test)]
    pub fn transaction_count(&self) -> usize {
        lock(&self.state).by_date.len()
    }

    /// One `/transactions/sync` page after `cursor` (absent or empty: whole history).
    pub fn sync_page(
        &self,
        codec: &CursorCodec,
        cursor: Option<&str>,
        count: usize,
    ) -> Result<SyncPage, SyncError> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.faults.login_required {
            return Err(SyncError::LoginRequired);
        }
        let log_len = state.log.len() as u64;
        let cursor = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(text) => {
                if state.faults.reject_cursor > 0 {
                    state.faults.reject_cursor -= 1;
                    state.revision += 1;
                    ItemStats::bump(&self.stats.cursor_rejections_sent);
                    return Err(SyncError::CursorRejected(
                        "cursor is no longer valid; restart from an empty cursor".to_string(),
                    ));
                }
                match codec.decode(&self.item_id, text, log_len) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        ItemStats::bump(&self.stats.cursor_rejections_sent);
                        return Err(SyncError::CursorRejected(e.to_string()));
                    }
                }
            }
        };
        let (start, pos, high_water) = match cursor {
            None => (0, 0, log_len),
            // A settled cursor starts a new loop over whatever changed since.
            Some(c) if !c.is_mid_loop() => (c.high_water, c.high_water, log_len),
            Some(c) => {
                let injected = state.faults.mutation_during_pagination > 0;
                if injected {
                    state.faults.mutation_during_pagination -= 1;
                    state.revision += 1;
                }
                if injected || log_len > c.high_water {
                    ItemStats::bump(&self.stats.mutation_errors_sent);
                    return Err(SyncError::MutationDuringPagination);
                }
                (c.start, c.pos, c.high_water)
            }
        };
        let end = (pos + count as u64).min(high_water);
        let mut page = SyncPage {
            added: Vec::new(),
            modified: Vec::new(),
            removed: Vec::new(),
            next_cursor: String::new(),
            has_more: end < high_water,
            accounts: state.accounts.accounts.clone(),
        };
        for index in pos..end {
            let id = &state.log[index as usize];
            let Some(record) = state.txns.get(id) else {
                continue;
            };
            // Emit each transaction once per loop, at its latest change, in its current
            // state. Within a loop the log cannot have grown (that is an error above),
            // so "latest overall" is "latest in this loop".
            if record.last_change != index {
                continue;
            }
            let created_in_loop = record.created_at >= start;
            match (record.removed, created_in_loop) {
                // Created and removed within the loop: the client never saw it.
                (true, true) => {}
                (true, false) => page.removed.push(RemovedTransaction {
                    transaction_id: id.clone(),
                    account_id: Some(record.txn.account_id.clone()),
                }),
                (false, true) => page.added.push(record.txn.clone()),
                (false, false) => page.modified.push(record.txn.clone()),
            }
        }
        let next = if page.has_more {
            SyncCursor {
                start,
                pos: end,
                high_water,
            }
        } else {
            SyncCursor::settled(high_water)
        };
        page.next_cursor = codec.encode(&self.item_id, next);
        Ok(page)
    }

    /// Current transactions dated within `[start, end]`, newest first (ties by id,
    /// descending), skipping `offset`, at most `count`.
    pub fn window(
        &self,
        start: NaiveDate,
        end: NaiveDate,
        offset: u64,
        count: usize,
        account_ids: Option<&[String]>,
    ) -> Result<WindowPage, SyncError> {
        let state = lock(&self.state);
        if state.faults.login_required {
            return Err(SyncError::LoginRequired);
        }
        let lower = Bound::Included((generate::date_str(start), String::new()));
        let upper = match end.succ_opt() {
            Some(next) => Bound::Excluded((generate::date_str(next), String::new())),
            None => Bound::Unbounded,
        };
        let wanted = |id: &String| match account_ids {
            None => true,
            Some(ids) => state
                .txns
                .get(id)
                .is_some_and(|r| ids.contains(&r.txn.account_id)),
        };
        let in_window = || {
            state
                .by_date
                .range((lower.clone(), upper.clone()))
                .rev()
                .map(|(_, id)| id)
                .filter(|id| wanted(id))
        };
        let total = in_window().count() as u64;
        let transactions = in_window()
            .skip(offset.try_into().unwrap_or(usize::MAX))
            .take(count)
            .filter_map(|id| state.txns.get(id).map(|r| r.txn.clone()))
            .collect();
        Ok(WindowPage {
            transactions,
            total,
            accounts: state.accounts.accounts.clone(),
        })
    }

    /// Seeded random changes: `add` new recent transactions, `modify` and `remove`
    /// distinct transactions that existed before the call.
    pub fn mutate(
        &self,
        add: usize,
        modify: usize,
        remove: usize,
        today: NaiveDate,
    ) -> Result<MutationReport, MutateError> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let have = state.by_date.len();
        if modify + remove > have {
            return Err(MutateError::NotEnough {
                modify,
                remove,
                have,
            });
        }
        let picked: Vec<String> = {
            let current: Vec<&String> = state.by_date.iter().map(|(_, id)| id).collect();
            sample(&mut state.rng, have, modify + remove)
                .into_iter()
                .map(|i| current[i].clone())
                .collect()
        };
        let (to_modify, to_remove) = picked.split_at(modify);
        // Sampling advanced the item's rng even if nothing else changes.
        state.revision += 1;
        let mut report = MutationReport::default();
        for id in to_modify {
            state.modify(id, today);
            report.modified.push(id.clone());
        }
        for id in to_remove {
            state.remove(id);
            report.removed.push(id.clone());
        }
        for _ in 0..add {
            let age = generate::recent_age(&mut state.rng);
            let txn = generate::transaction(&mut state.rng, &state.accounts, today, age);
            report.added.push(state.insert_new(txn));
        }
        Ok(report)
    }

    /// Adds transactions built by `build` from the item's rng and first account
    /// (`/sandbox/transactions/create`). Returns their ids.
    pub fn add_with(
        &self,
        n: usize,
        mut build: impl FnMut(&mut ChaCha8Rng, &str, usize) -> PlaidTransaction,
    ) -> Vec<String> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let account_id = state.accounts.accounts[0].account_id.clone();
        state.revision += 1;
        (0..n)
            .map(|i| {
                let txn = build(&mut state.rng, &account_id, i);
                state.insert_new(txn)
            })
            .collect()
    }
}

/// The snapshot name of an account kind.
fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::Checking => "checking",
        AccountKind::Savings => "savings",
        AccountKind::Credit => "credit",
    }
}

fn kind_from_name(name: &str) -> Option<AccountKind> {
    match name {
        "checking" => Some(AccountKind::Checking),
        "savings" => Some(AccountKind::Savings),
        "credit" => Some(AccountKind::Credit),
        _ => None,
    }
}

impl ItemState {
    /// Appends a new transaction (re-rolling its id on the rare collision) and
    /// returns its id.
    fn insert_new(&mut self, mut txn: PlaidTransaction) -> String {
        while self.txns.contains_key(&txn.transaction_id) {
            txn.transaction_id = generate::plaid_id(&mut self.rng);
        }
        let index = self.log.len() as u64;
        let id = txn.transaction_id.clone();
        self.by_date.insert((txn.date.clone(), id.clone()));
        self.log.push(id.clone());
        self.txns.insert(
            id.clone(),
            TxnRecord {
                txn,
                created_at: index,
                last_change: index,
                removed: false,
            },
        );
        id
    }

    fn modify(&mut self, id: &str, today: NaiveDate) {
        let index = self.log.len() as u64;
        let Some(record) = self.txns.get_mut(id) else {
            return;
        };
        let old_date = record.txn.date.clone();
        generate::modify(&mut self.rng, &mut record.txn, today);
        record.last_change = index;
        if record.txn.date != old_date {
            self.by_date.remove(&(old_date, id.to_string()));
            self.by_date
                .insert((record.txn.date.clone(), id.to_string()));
        }
        self.log.push(id.to_string());
    }

    fn remove(&mut self, id: &str) {
        let index = self.log.len() as u64;
        let Some(record) = self.txns.get_mut(id) else {
            return;
        };
        record.removed = true;
        record.last_change = index;
        self.by_date
            .remove(&(record.txn.date.clone(), id.to_string()));
        self.log.push(id.to_string());
    }
}

#[cfg(test)]
#[path = "plaid_bank_tests.rs"]
mod tests;
