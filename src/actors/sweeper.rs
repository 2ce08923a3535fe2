//! The sweeper: the periodic safety net that re-drives work no live timer or message
//! is sure to carry. Failed syncs leave retry records in the store; an account actor's
//! own timer usually runs them, but a restart or a passivation forgets timers, so on
//! every tick the sweeper reads the due part of the retry index (never all accounts)
//! and asks each account's actor to sync. A due record it cannot act on leaves the due
//! part of the index (dropped when its account is quarantined, put off by one tick when
//! the actor could not be reached), or the same earliest records would come back first
//! on every pass and, once `batch` of them piled up, no other retry would ever be
//! re-driven. It also re-drives accounts whose pending
//! inbox entries are older than `sweeper.stale_inbox_after`: acknowledged webhooks
//! whose sync never committed.
//!
//! The polling fallback is the net under lost webhooks: a linked account with no
//! successful sync for `sweeper.poll_interval` is asked to sync with
//! [`SyncReason::Poll`]. The store keeps a polling index ordered by anchor time (last
//! successful sync, link, or last poll request), moved in the same transaction as the
//! commit, link or unlink that changes it, so a pass reads only the due part: its cost
//! is O(due), never O(accounts). The index is a hint and the account record the truth:
//! every due entry is checked against its record before anything is sent, and an entry
//! found stale (account gone or unlinked, or a successful sync newer than the entry) is
//! repaired instead of acted on. A polled or parked account's anchor moves to now, so
//! it is looked at again one interval later, not on every tick, and parked accounts
//! cannot crowd the batch.
//!
//! Operations (account openings) use the same index through three kinds: the due part
//! of [`DueKind::OperationWake`] (a create or a card step to retry, a status poll) and
//! of [`DueKind::OperationDeadline`] (overdue: escalate) is read every pass and each
//! operation's actor is asked to run a step, which moves or removes its entries in the
//! step's own commit; operations with stale inbox events are re-driven like accounts.
//! [`DueKind::OperationFailed`] is the index of operations waiting for ops; nothing
//! re-drives them until ops do.
//!
//! It never syncs by itself: every request goes through the registry to the account's
//! (or operation's) actor, whose mailbox keeps the work of one thing serialized.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::account::SyncReason;
use super::context::ActorContext;
use super::operation::OperationRegistry;
use super::registry::{Registry, RegistryError};
use crate::clock::SharedClock;
use crate::config::SweeperSettings;
use crate::domain::{AccountId, LinkStatus};
use crate::store::{DueKind, StoreError};

/// Messages of the sweeper.
pub enum SweeperMessage {
    /// Time for a pass (internal, from its interval timer).
    Tick,
    /// A pass finished on its blocking thread (internal).
    PassDone(Result<PassReport, StoreError>),
    /// Describe yourself.
    Status(RpcReplyPort<SweeperSnapshot>),
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// Due retry records whose account was asked to sync.
    pub retries_redriven: u64,
    /// Accounts with stale pending inbox entries asked to sync.
    pub stale_redriven: u64,
    /// Retry records dropped because their account is gone, unlinked or quarantined.
    pub retries_dropped: u64,
    /// Due retry records put off by one tick: their actor could not be reached.
    pub retries_deferred: u64,
    /// Accounts asked to poll (no successful sync for the polling interval).
    pub polls_requested: u64,
    /// Due polls put off by one interval: the account is parked or a retry owns it.
    pub polls_deferred: u64,
    /// Stale polling entries repaired (account gone or unlinked, or synced since).
    pub polls_repaired: u64,
    /// Operations asked to run a step (a timer due, overdue, or stale events).
    pub operations_driven: u64,
}

/// The sweeper's observable state.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SweeperSnapshot {
    /// Passes completed.
    pub passes: u64,
    /// Retry re-drives since start.
    pub retries_redriven: u64,
    /// Stale-inbox re-drives since start.
    pub stale_redriven: u64,
    /// Retry records dropped since start.
    pub retries_dropped: u64,
    /// Retry records put off by one tick since start.
    pub retries_deferred: u64,
    /// Polling syncs requested since start.
    pub polls_requested: u64,
    /// Due polls put off since start (parked account or pending retry).
    pub polls_deferred: u64,
    /// Stale polling entries repaired since start.
    pub polls_repaired: u64,
    /// Operation steps requested since start.
    pub operations_driven: u64,
    /// Passes that failed on a store error.
    pub failed_passes: u64,
}

/// The sweeper actor (read-only configuration).
pub struct SweeperActor {
    ctx: Arc<ActorContext>,
    registry: Arc<Registry>,
    settings: SweeperSettings,
    clock: SharedClock,
    operations: Option<Arc<OperationRegistry>>,
}

impl SweeperActor {
    /// Also drives the operations of `operations` from their due entries.
    pub fn with_operations(mut self, operations: Arc<OperationRegistry>) -> Self {
        self.operations = Some(operations);
        self
    }

    /// A sweeper reading the store from `ctx` and driving `registry`'s actors, on the
    /// wall clock.
    pub fn new(ctx: Arc<ActorContext>, registry: Arc<Registry>, settings: SweeperSettings) -> Self {
        Self::with_clock(ctx, registry, settings, crate::clock::system())
    }

    /// A sweeper reading the time from `clock` (tests: paused tokio time).
    pub fn with_clock(
        ctx: Arc<ActorContext>,
        registry: Arc<Registry>,
        settings: SweeperSettings,
        clock: SharedClock,
    ) -> Self {
        SweeperActor {
            ctx,
            registry,
            settings,
            clock,
            operations: None,
        }
    }
}

/// The sweeper's state.
pub struct SweeperState {
    snapshot: SweeperSnapshot,
    /// A pass runs on a blocking thread; ticks during it are skipped, never stacked.
    running: Option<JoinHandle<()>>,
    last_stale_scan: Option<Instant>,
    timer: Option<JoinHandle<()>>,
}

impl Drop for SweeperState {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Actor for SweeperActor {
    type Msg = SweeperMessage;
    type State = SweeperState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let timer = myself.send_interval(self.settings.tick, || SweeperMessage::Tick);
        Ok(SweeperState {
            snapshot: SweeperSnapshot::default(),
            running: None,
            last_stale_scan: None,
            timer: Some(timer),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SweeperMessage::Tick => {
                if state.running.is_some() {
                    return Ok(());
                }
                // The stale-inbox scan reads every pending entry's account: run it at
                // most twice per `stale_inbox_after`, not on every tick.
                let scan_every = (self.settings.stale_inbox_after / 2).max(self.settings.tick);
                let scan_stale = state
                    .last_stale_scan
                    .is_none_or(|at| at.elapsed() >= scan_every);
                if scan_stale {
                    state.last_stale_scan = Some(Instant::now());
                }
                let ctx = self.ctx.clone();
                let registry = self.registry.clone();
                let settings = self.settings.clone();
                let now = self.clock.now();
                let operations = self.operations.clone();
                state.running = Some(tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || {
                        let mut report = sweep(&ctx, &registry, &settings, now, scan_stale)?;
                        if let Some(operations) = &operations {
                            report.operations_driven =
                                operation_pass(&ctx, operations, &settings, now, scan_stale)?;
                        }
                        Ok(report)
                    })
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Io(format!("sweep task failed: {e}"))));
                    let _ = myself.send_message(SweeperMessage::PassDone(result));
                }));
            }
            SweeperMessage::PassDone(result) => {
                state.running = None;
                state.snapshot.passes += 1;
                match result {
                    Ok(report) => {
                        state.snapshot.retries_redriven += report.retries_redriven;
                        state.snapshot.stale_redriven += report.stale_redriven;
                        state.snapshot.retries_dropped += report.retries_dropped;
                        state.snapshot.retries_deferred += report.retries_deferred;
                        state.snapshot.polls_requested += report.polls_requested;
                        state.snapshot.polls_deferred += report.polls_deferred;
                        state.snapshot.polls_repaired += report.polls_repaired;
                        state.snapshot.operations_driven += report.operations_driven;
                        if report != PassReport::default() {
                            tracing::debug!(
                                retries = report.retries_redriven,
                                stale = report.stale_redriven,
                                dropped = report.retries_dropped,
                                deferred = report.retries_deferred,
                                polls = report.polls_requested,
                                polls_deferred = report.polls_deferred,
                                polls_repaired = report.polls_repaired,
                                operations = report.operations_driven,
                                "sweeper re-drove work"
                            );
                        }
                    }
                    Err(error) => {
                        state.snapshot.failed_passes += 1;
                        tracing::warn!(%error, "sweeper pass failed");
                    }
                }
            }
            SweeperMessage::Status(reply) => {
                let _ = reply.send(state.snapshot);
            }
        }
        Ok(())
    }
}

/// One pass at time `now`, on a blocking thread (store reads and activations can wait
/// on sled): due retries, due polls, then, when `scan_stale`, stale inbox entries.
pub fn sweep(
    ctx: &ActorContext,
    registry: &Registry,
    settings: &SweeperSettings,
    now: DateTime<Utc>,
    scan_stale: bool,
) -> Result<PassReport, StoreError> {
    let store = &ctx.store;
    let mut report = PassReport::default();
    let one_tick = chrono::Duration::from_std(settings.tick).unwrap_or(chrono::Duration::MAX);
    for record in store.due_retries(now, settings.batch)? {
        match nudge(registry, &record.account_id, SyncReason::Retry) {
            Nudge::Sent => report.retries_redriven += 1,
            Nudge::Gone => {
                // Nothing will ever sync it again: the record would come back every tick.
                store.clear_retry(&record.account_id)?;
                report.retries_dropped += 1;
            }
            // Nothing retries a quarantined account until an operator resumes it, and
            // its record would stay first in line. A resume re-syncs what is pending in
            // the inbox, and the polling fallback covers the rest. Only this very
            // record goes: one a sync wrote meanwhile stays.
            Nudge::Quarantined => {
                if store.reschedule_retry(&record, None)? {
                    report.retries_dropped += 1;
                }
            }
            // Its state is about to be written for the last time: leave it as it is.
            Nudge::ShuttingDown => break,
            // Could not activate it now: due again next tick, behind every record that is
            // already due, so a few that keep failing never fill the batch.
            Nudge::Refused => {
                let later = now.checked_add_signed(one_tick).unwrap_or(now);
                if store.reschedule_retry(&record, Some(later))? {
                    report.retries_deferred += 1;
                }
            }
        }
    }
    poll_pass(ctx, registry, settings, now, &mut report)?;
    if scan_stale {
        let older_than = now
            - chrono::Duration::from_std(settings.stale_inbox_after)
                .unwrap_or(chrono::Duration::zero());
        for id in store.accounts_with_pending_inbox()? {
            let oldest = store.pending_inbox(&id)?.first().map(|e| e.received_at);
            if oldest.is_none_or(|at| at > older_than) {
                continue;
            }
            // A failed or quarantined account keeps its inbox until an operator resumes
            // it. One waiting for a re-login is still nudged: its actor only reads the
            // store (no provider call) and unparks on a login repair whose own nudge
            // was lost.
            if store
                .get_account(&id)?
                .is_none_or(|a| a.failed.is_some() || a.quarantine.is_some())
            {
                continue;
            }
            if nudge(registry, &id, SyncReason::Activation) == Nudge::Sent {
                report.stale_redriven += 1;
            }
        }
    }
    Ok(report)
}

/// The polling fallback: asks every account whose polling anchor is older than the
/// interval to sync, at most `settings.batch` per pass, oldest first.
fn poll_pass(
    ctx: &ActorContext,
    registry: &Registry,
    settings: &SweeperSettings,
    now: DateTime<Utc>,
    report: &mut PassReport,
) -> Result<(), StoreError> {
    let store = &ctx.store;
    let interval =
        chrono::Duration::from_std(settings.poll_interval).unwrap_or(chrono::Duration::MAX);
    let Some(anchored_by) = now.checked_sub_signed(interval) else {
        return Ok(());
    };
    for entry in store.due_polls(anchored_by, settings.batch)? {
        let id = &entry.account_id;
        let Some(account) = store
            .get_account(id)?
            .filter(|a| a.status == LinkStatus::Linked)
        else {
            store.clear_poll(&entry)?;
            report.polls_repaired += 1;
            continue;
        };
        // The record is the truth: a successful sync newer than the entry means the
        // entry missed a move. Put it where it belongs; it is due again only if that
        // sync is itself older than the interval (then the next pass polls it).
        // (The index keeps milliseconds; the record, nanoseconds.)
        if let Some(synced_at) = account.cursor_updated_at {
            if synced_at.timestamp_millis() > entry.anchor.timestamp_millis() {
                store.defer_poll(&entry, synced_at)?;
                report.polls_repaired += 1;
                continue;
            }
        }
        // Parked accounts wait for an operator; a pending retry already owns the next
        // sync. Both are looked at again one interval from now.
        // Parked: it waits for an operator or for its user to log in again.
        if account.is_parked() || store.retry_of(id)?.is_some() {
            store.defer_poll(&entry, now)?;
            report.polls_deferred += 1;
            continue;
        }
        match nudge(registry, id, SyncReason::Poll) {
            Nudge::Sent => {
                // If the poll fails, its retry record takes over; if it succeeds, the
                // commit moves the anchor itself. Either way: not again next tick.
                store.defer_poll(&entry, now)?;
                report.polls_requested += 1;
            }
            Nudge::Gone => {
                store.clear_poll(&entry)?;
                report.polls_repaired += 1;
            }
            // Quarantined before its record said so: parked, like above.
            Nudge::Quarantined => {
                store.defer_poll(&entry, now)?;
                report.polls_deferred += 1;
            }
            // Shutting down or failing to activate: stays due for the next pass.
            Nudge::Refused | Nudge::ShuttingDown => {}
        }
    }
    Ok(())
}

/// Asks every operation with a due wake-up or deadline (and, when `scan_stale`, with
/// inbox events older than `stale_inbox_after`) to run a step. Returns how many.
fn operation_pass(
    ctx: &ActorContext,
    operations: &OperationRegistry,
    settings: &SweeperSettings,
    now: DateTime<Utc>,
    scan_stale: bool,
) -> Result<u64, StoreError> {
    let store = &ctx.store;
    let mut ids = Vec::new();
    for kind in [DueKind::OperationWake, DueKind::OperationDeadline] {
        ids.extend(
            store
                .due_entries(now, kind, settings.batch)?
                .into_iter()
                .map(|e| crate::domain::operations::OperationId(e.subject)),
        );
    }
    if scan_stale {
        let older_than = now
            - chrono::Duration::from_std(settings.stale_inbox_after)
                .unwrap_or(chrono::Duration::zero());
        for id in store.operations_with_pending_events()? {
            let oldest = store
                .pending_operation_events(&id)?
                .first()
                .map(|e| e.received_at);
            if oldest.is_some_and(|at| at <= older_than) {
                ids.push(id);
            }
        }
    }
    ids.sort();
    ids.dedup();
    let mut driven = 0;
    for id in ids {
        match operations.drive(&id) {
            Ok(()) => driven += 1,
            Err(super::operation::registry::OperationRegistryError::ShuttingDown) => break,
            Err(error) => {
                tracing::debug!(operation_id = %id, %error, "sweeper could not drive operation")
            }
        }
    }
    Ok(driven)
}

#[derive(Debug, PartialEq, Eq)]
enum Nudge {
    Sent,
    /// Unlinked or deleted.
    Gone,
    /// The supervisor gave up on it: nothing syncs it until a resume.
    Quarantined,
    /// The registry is shutting down.
    ShuttingDown,
    /// Failing to activate or to answer: try again later.
    Refused,
}

fn nudge(registry: &Registry, id: &AccountId, reason: SyncReason) -> Nudge {
    match registry.request_sync(id, reason) {
        Ok(()) => Nudge::Sent,
        Err(RegistryError::NotLinked(_)) => Nudge::Gone,
        Err(RegistryError::Quarantined(_)) => Nudge::Quarantined,
        Err(RegistryError::ShuttingDown) => Nudge::ShuttingDown,
        Err(error) => {
            tracing::debug!(account_id = %id, %error, "sweeper could not re-drive account");
            Nudge::Refused
        }
    }
}

/// Asks the sweeper for its snapshot.
pub async fn snapshot(
    sweeper: &ActorRef<SweeperMessage>,
    timeout: Duration,
) -> Option<SweeperSnapshot> {
    match sweeper.call(SweeperMessage::Status, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(snapshot)) => Some(snapshot),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::config::Settings;
    use crate::domain::{AccessToken, Account, ProviderKind, Quarantine, SyncGaveUp};
    use crate::providers::test_support::EmptyProvider;
    use crate::providers::DynCursorSource;
    use crate::store::{AccountStore, DueIndex};
    use crate::store::{RetryRecord, SledStore, SledStoreConfig, Store};
    use crate::sync::plaid::SyncParams;

    /// A linked account that already synced once, so activating it does not sync.
    fn synced_account(n: u32) -> Account {
        Account {
            cursor: Some("cursor-1".to_string()),
            cursor_updated_at: Some(Utc::now()),
            sync_count: 1,
            ..Account::new_linked(
                ProviderKind::Plaid,
                format!("item-{n}"),
                AccessToken::new("token"),
                format!("owner-{n}"),
                vec![],
                Utc::now(),
            )
        }
    }

    #[tokio::test(start_paused = true)]
    async fn due_retries_are_redriven_through_the_actor_and_future_ones_wait() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = SledStore::open(SledStoreConfig {
            data_dir: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
        .expect("store opens");
        let provider = Arc::new(EmptyProvider::default());
        let mut providers: HashMap<ProviderKind, DynCursorSource> = HashMap::new();
        providers.insert(ProviderKind::Plaid, provider.clone());
        let ctx = ActorContext::new(
            store.clone(),
            providers,
            Settings::defaults().actors,
            SyncParams::default(),
            crate::clock::system(),
        );
        let registry = Registry::new(ctx.clone());
        let due = synced_account(1);
        let later = synced_account(2);
        for (account, due_at) in [
            (&due, Utc::now() - chrono::Duration::seconds(1)),
            (&later, Utc::now() + chrono::Duration::hours(1)),
        ] {
            store.link_account(account).expect("link");
            store
                .record_retry(&RetryRecord {
                    account_id: account.id.clone(),
                    attempt: 2,
                    due_at,
                    code: "INTERNAL_SERVER_ERROR".to_string(),
                    request_id: None,
                })
                .expect("retry recorded");
        }
        let mut settings = Settings::defaults().sweeper;
        settings.tick = Duration::from_secs(1);
        let (sweeper, _) = Actor::spawn(
            None,
            SweeperActor::new(ctx.clone(), registry.clone(), settings),
            (),
        )
        .await
        .expect("sweeper spawns");

        // The due record's sync commits and clears it; nothing else is touched.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while store.retry_of(&due.id).expect("read").is_some() {
            assert!(tokio::time::Instant::now() < deadline, "never re-driven");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(provider.syncs.load(Ordering::SeqCst), 1);
        assert_eq!(store.get_account(&due.id).unwrap().unwrap().sync_count, 2);
        assert!(
            !registry.is_active(&later.id),
            "a future retry is not re-driven"
        );
        assert!(store.retry_of(&later.id).expect("read").is_some());
        let snapshot = snapshot(&sweeper, Duration::from_secs(5))
            .await
            .expect("sweeper answers");
        assert!(snapshot.retries_redriven >= 1, "{snapshot:?}");
        sweeper.stop(None);
        registry.shutdown().await;
    }

    /// Store, provider double, actor context and registry over a fresh temp dir.
    fn setup(
        dir: &tempfile::TempDir,
    ) -> (
        Arc<SledStore>,
        Arc<EmptyProvider>,
        Arc<ActorContext>,
        Arc<Registry>,
    ) {
        let sled = SledStore::open(SledStoreConfig {
            data_dir: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
        .expect("store opens");
        let store: Arc<dyn Store> = sled.clone();
        let provider = Arc::new(EmptyProvider::default());
        let mut providers: HashMap<ProviderKind, DynCursorSource> = HashMap::new();
        providers.insert(ProviderKind::Plaid, provider.clone());
        let ctx = ActorContext::new(
            store,
            providers,
            Settings::defaults().actors,
            SyncParams::default(),
            crate::clock::system(),
        );
        let registry = Registry::new(ctx.clone());
        (sled, provider, ctx, registry)
    }

    /// A linked account whose last successful sync was at `synced_at`.
    fn synced_at(n: u32, synced_at: DateTime<Utc>) -> Account {
        let mut account = synced_account(n);
        account.created_at = synced_at;
        account.cursor_updated_at = Some(synced_at);
        account
    }

    fn poll_settings(interval: Duration) -> SweeperSettings {
        let mut settings = Settings::defaults().sweeper;
        settings.tick = Duration::from_secs(60);
        settings.poll_interval = interval;
        settings
    }

    /// Waits (on paused time: instantly) until `done` holds.
    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_is_due_exactly_when_the_interval_has_passed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, provider, ctx, registry) = setup(&dir);
        let interval = Duration::from_secs(3600);
        let settings = poll_settings(interval);
        let synced = Utc::now() - chrono::Duration::days(10);
        let account = synced_at(1, synced);
        store.link_account(&account).expect("link");
        let due_at = synced + chrono::Duration::from_std(interval).expect("interval");

        let early = sweep(
            &ctx,
            &registry,
            &settings,
            due_at - chrono::Duration::milliseconds(1),
            false,
        )
        .expect("pass");
        assert_eq!(early, PassReport::default(), "1 ms early: nothing to do");
        assert!(!registry.is_active(&account.id));

        let on_time = sweep(&ctx, &registry, &settings, due_at, false).expect("pass");
        assert_eq!(on_time.polls_requested, 1, "{on_time:?}");
        wait_for("the polling sync", || {
            provider.syncs.load(Ordering::SeqCst) == 1
                && store.get_account(&account.id).unwrap().unwrap().sync_count == 2
        })
        .await;
        // Its commit moved the anchor: the same instant finds nothing due any more.
        let after = sweep(&ctx, &registry, &settings, due_at, false).expect("pass");
        assert_eq!(after, PassReport::default());
        registry.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_polls_a_silent_account_once_the_interval_passes_not_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, provider, ctx, registry) = setup(&dir);
        let interval = Duration::from_secs(30 * 60);
        // The clock runs on tokio's paused time and starts one interval in the past, so
        // the account's anchor (the clock's start) is due when the interval has elapsed
        // on paused time, and the sync it triggers commits at about the clock's time.
        let start_utc = Utc::now() - chrono::Duration::from_std(interval).expect("interval");
        let start = tokio::time::Instant::now();
        let clock = crate::clock::TokioClock::starting_at(start_utc);
        let account = synced_at(1, start_utc);
        store.link_account(&account).expect("link");
        let (sweeper, _) = Actor::spawn(
            None,
            SweeperActor::with_clock(
                ctx.clone(),
                registry.clone(),
                poll_settings(interval),
                clock,
            ),
            (),
        )
        .await
        .expect("sweeper spawns");

        tokio::time::sleep(interval - Duration::from_secs(90)).await;
        let before = snapshot(&sweeper, Duration::from_secs(5))
            .await
            .expect("answers");
        assert!(before.passes >= 20, "the sweeper ticked: {before:?}");
        assert_eq!(before.polls_requested, 0, "{before:?}");
        assert_eq!(provider.syncs.load(Ordering::SeqCst), 0);
        assert!(!registry.is_active(&account.id));

        wait_for("the polling sync", || {
            provider.syncs.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(
            start.elapsed() >= interval,
            "polled early: {:?}",
            start.elapsed()
        );
        assert!(start.elapsed() <= interval + Duration::from_secs(61));
        // Two more intervals of ticks: one poll per interval at most, never one per tick.
        tokio::time::sleep(interval * 2).await;
        let later = snapshot(&sweeper, Duration::from_secs(5))
            .await
            .expect("answers");
        assert!(later.polls_requested <= 3, "{later:?}");
        assert_eq!(later.failed_passes, 0);
        sweeper.stop(None);
        registry.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn parked_accounts_are_not_polled_and_do_not_crowd_the_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, provider, ctx, registry) = setup(&dir);
        let old = Utc::now() - chrono::Duration::days(10);
        let mut failed = synced_at(1, old);
        failed.failed = Some(SyncGaveUp {
            reason: "boom".into(),
            attempts: 10,
            since: old,
            cause: crate::domain::GaveUpCause::AttemptsExhausted,
        });
        let mut quarantined = synced_at(2, old + chrono::Duration::seconds(1));
        quarantined.quarantine = Some(Quarantine {
            reason: "panic".into(),
            failures: 6,
            since: old,
        });
        let healthy = synced_at(3, old + chrono::Duration::seconds(2));
        for account in [&failed, &quarantined, &healthy] {
            store.link_account(account).expect("link");
        }
        let mut settings = poll_settings(Duration::from_secs(3600));
        settings.batch = 2;
        let now = Utc::now();

        let first = sweep(&ctx, &registry, &settings, now, false).expect("pass");
        assert_eq!(
            (first.polls_deferred, first.polls_requested),
            (2, 0),
            "{first:?}"
        );
        let second = sweep(&ctx, &registry, &settings, now, false).expect("pass");
        assert_eq!(
            (second.polls_deferred, second.polls_requested),
            (0, 1),
            "{second:?}"
        );
        wait_for("the healthy account's poll", || {
            provider.syncs.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(!registry.is_active(&failed.id));
        assert!(!registry.is_active(&quarantined.id));
        // Deferred by one interval: looked at again only then.
        let almost = now + chrono::Duration::minutes(59);
        let quiet = sweep(&ctx, &registry, &settings, almost, false).expect("pass");
        assert_eq!(quiet, PassReport::default());
        let hour_later = now + chrono::Duration::minutes(60);
        let again = sweep(&ctx, &registry, &settings, hour_later, false).expect("pass");
        assert_eq!(
            (again.polls_deferred, again.polls_requested),
            (2, 0),
            "{again:?}"
        );
        registry.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn quarantined_accounts_retry_records_do_not_starve_other_due_retries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, provider, ctx, registry) = setup(&dir);
        let old = Utc::now() - chrono::Duration::days(1);
        let quarantine = Quarantine {
            reason: "panic".into(),
            failures: 6,
            since: old,
        };
        let mut first = synced_at(1, old);
        first.quarantine = Some(quarantine.clone());
        let mut second = synced_at(2, old);
        second.quarantine = Some(quarantine);
        let healthy = synced_at(3, old);
        // The quarantined accounts' records are due first, and fill the batch of 2.
        for (n, account) in [&first, &second, &healthy].into_iter().enumerate() {
            store.link_account(account).expect("link");
            store
                .record_retry(&RetryRecord {
                    account_id: account.id.clone(),
                    attempt: 1,
                    due_at: old + chrono::Duration::seconds(n as i64),
                    code: "INTERNAL_SERVER_ERROR".to_string(),
                    request_id: None,
                })
                .expect("retry recorded");
        }
        let mut settings = poll_settings(Duration::from_secs(3600));
        settings.batch = 2;
        let now = Utc::now();

        let mut total = PassReport::default();
        for _ in 0..3 {
            let report = sweep(&ctx, &registry, &settings, now, false).expect("pass");
            total.retries_redriven += report.retries_redriven;
            total.retries_dropped += report.retries_dropped;
        }
        assert_eq!(total.retries_dropped, 2, "{total:?}");
        assert!(
            total.retries_redriven >= 1,
            "the healthy retry starved: {total:?}"
        );
        wait_for("the healthy account's retry to commit", || {
            provider.syncs.load(Ordering::SeqCst) == 1
                && store.retry_of(&healthy.id).expect("read").is_none()
        })
        .await;
        for parked in [&first, &second] {
            assert!(store.retry_of(&parked.id).expect("read").is_none());
            assert!(!registry.is_active(&parked.id));
        }
        assert!(store.due_retries(now, 10).expect("read").is_empty());
        registry.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_during_shutdown_leaves_retry_records_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _provider, ctx, registry) = setup(&dir);
        let account = synced_account(1);
        store.link_account(&account).expect("link");
        let record = RetryRecord {
            account_id: account.id.clone(),
            attempt: 3,
            due_at: Utc::now() - chrono::Duration::seconds(1),
            code: "INTERNAL_SERVER_ERROR".to_string(),
            request_id: None,
        };
        store.record_retry(&record).expect("retry recorded");
        registry.shutdown().await;
        let report = sweep(
            &ctx,
            &registry,
            &poll_settings(Duration::from_secs(3600)),
            Utc::now(),
            false,
        )
        .expect("pass");
        assert_eq!(report, PassReport::default());
        assert_eq!(store.retry_of(&account.id).expect("read"), Some(record));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_polling_entries_are_repaired_not_acted_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, provider, ctx, registry) = setup(&dir);
        let now = Utc::now();
        let recent = synced_at(1, now - chrono::Duration::minutes(1));
        store.link_account(&recent).expect("link");
        // Left behind by a bug or an older version: an entry claiming the account last
        // synced long ago, and one for an account that does not exist.
        store.plant_stale_poll_entry(&recent.id, now - chrono::Duration::days(3));
        store.plant_stale_poll_entry(&AccountId::generate(), now - chrono::Duration::days(2));
        let settings = poll_settings(Duration::from_secs(3600));

        let report = sweep(&ctx, &registry, &settings, now, false).expect("pass");
        assert_eq!(report.polls_repaired, 2, "{report:?}");
        assert_eq!(report.polls_requested, 0, "{report:?}");
        let anchored_by = now - chrono::Duration::minutes(60);
        assert!(store.due_polls(anchored_by, 10).expect("read").is_empty());
        assert_eq!(provider.syncs.load(Ordering::SeqCst), 0);
        assert!(!registry.is_active(&recent.id));
        registry.shutdown().await;
    }
}
