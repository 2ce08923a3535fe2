//! The sweeper: the periodic safety net that re-drives work no live timer or message
//! is sure to carry. Failed syncs leave retry records in the store; an account actor's
//! own timer usually runs them, but a restart or a passivation forgets timers, so on
//! every tick the sweeper reads the due part of the retry index (never all accounts)
//! and asks each account's actor to sync. It also re-drives accounts whose pending
//! inbox entries are older than `sweeper.stale_inbox_after`: acknowledged webhooks
//! whose sync never committed.
//!
//! It never syncs by itself: every request goes through the registry to the account's
//! actor, whose mailbox keeps syncs of one account serialized.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::account::SyncReason;
use super::registry::{Registry, RegistryError};
use crate::config::SweeperSettings;
use crate::domain::AccountId;
use crate::store::StoreError;

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
    /// Retry records dropped because their account is gone or unlinked.
    pub retries_dropped: u64,
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
    /// Passes that failed on a store error.
    pub failed_passes: u64,
}

/// The sweeper actor (read-only configuration).
pub struct SweeperActor {
    registry: Arc<Registry>,
    settings: SweeperSettings,
}

impl SweeperActor {
    /// A sweeper driving `registry`'s actors.
    pub fn new(registry: Arc<Registry>, settings: SweeperSettings) -> Self {
        SweeperActor { registry, settings }
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
                let registry = self.registry.clone();
                let settings = self.settings.clone();
                state.running = Some(tokio::spawn(async move {
                    let result = tokio::task::spawn_blocking(move || {
                        sweep(&registry, &settings, scan_stale)
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
                        if report != PassReport::default() {
                            tracing::debug!(
                                retries = report.retries_redriven,
                                stale = report.stale_redriven,
                                dropped = report.retries_dropped,
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

/// One pass, on a blocking thread (store reads and activations can wait on sled).
pub fn sweep(
    registry: &Registry,
    settings: &SweeperSettings,
    scan_stale: bool,
) -> Result<PassReport, StoreError> {
    let store = registry.store();
    let mut report = PassReport::default();
    for record in store.due_retries(Utc::now(), settings.batch)? {
        match nudge(registry, &record.account_id, SyncReason::Retry) {
            Nudge::Sent => report.retries_redriven += 1,
            Nudge::Gone => {
                // Nothing will ever sync it again: the record would come back every tick.
                store.clear_retry(&record.account_id)?;
                report.retries_dropped += 1;
            }
            Nudge::Refused => {}
        }
    }
    if scan_stale {
        let older_than = Utc::now()
            - chrono::Duration::from_std(settings.stale_inbox_after)
                .unwrap_or(chrono::Duration::zero());
        for id in store.accounts_with_pending_inbox()? {
            let oldest = store.pending_inbox(&id)?.first().map(|e| e.received_at);
            if oldest.is_none_or(|at| at > older_than) {
                continue;
            }
            // An account marked failed keeps its inbox until an operator resumes it.
            if store.get_account(&id)?.is_none_or(|a| a.failed.is_some()) {
                continue;
            }
            if nudge(registry, &id, SyncReason::Activation) == Nudge::Sent {
                report.stale_redriven += 1;
            }
        }
    }
    Ok(report)
}

#[derive(Debug, PartialEq, Eq)]
enum Nudge {
    Sent,
    /// Unlinked or deleted.
    Gone,
    /// Quarantined, shutting down or failing to activate: try again next pass.
    Refused,
}

fn nudge(registry: &Registry, id: &AccountId, reason: SyncReason) -> Nudge {
    match registry.request_sync(id, reason) {
        Ok(()) => Nudge::Sent,
        Err(RegistryError::NotLinked(_)) => Nudge::Gone,
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
    use crate::actors::sync::SyncParams;
    use crate::actors::test_support::EmptyProvider;
    use crate::config::Settings;
    use crate::domain::{AccessToken, Account, LinkStatus, ProviderKind};
    use crate::providers::DynProvider;
    use crate::store::{RetryRecord, SledStore, SledStoreConfig, Store};

    /// A linked account that already synced once, so activating it does not sync.
    fn synced_account(n: u32) -> Account {
        Account {
            id: AccountId::generate(),
            provider: ProviderKind::Plaid,
            item_id: format!("item-{n}"),
            access_token: AccessToken::new("token"),
            owner_id: format!("owner-{n}"),
            aliases: vec![],
            status: LinkStatus::Linked,
            created_at: Utc::now(),
            cursor: Some("cursor-1".to_string()),
            cursor_updated_at: Some(Utc::now()),
            last_sync_started_at: None,
            last_sync_finished_at: None,
            last_sync_outcome: None,
            sync_count: 1,
            quarantine: None,
            failed: None,
            needs_reauth: None,
            pending_deadline: None,
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
        let mut providers: HashMap<ProviderKind, DynProvider> = HashMap::new();
        providers.insert(ProviderKind::Plaid, provider.clone());
        let registry = Registry::new(
            store.clone(),
            providers,
            Settings::defaults().actors,
            SyncParams::default(),
        );
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
        let (sweeper, _) = Actor::spawn(None, SweeperActor::new(registry.clone(), settings), ())
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
}
