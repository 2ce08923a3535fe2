//! Supervisor tests on paused tokio time: a real sled store in a temp dir, real account
//! actors, and a provider that answers at once, so the only time that passes is the
//! supervisor's backoff.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::actors::account::SyncReason;
use crate::config::Settings;
use crate::domain::{AccessToken, Account, ProviderKind};
use crate::providers::test_support::EmptyProvider;
use crate::providers::DynCursorSource;
use crate::store::{IncomingWebhook, SledStore, SledStoreConfig, Store};
use crate::sync::plaid::SyncParams;
use chrono::Utc;

struct Harness {
    ctx: Arc<ActorContext>,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

const INITIAL: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_millis(250);

fn actor_settings(max_restarts: u32) -> ActorSettings {
    let mut settings = Settings::defaults().actors;
    settings.restart_backoff_initial = INITIAL;
    settings.restart_backoff_max = CAP;
    settings.max_restarts = max_restarts;
    settings.restart_window = Duration::from_secs(60);
    settings
}

async fn harness(max_restarts: u32) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = SledStore::open(SledStoreConfig {
        data_dir: dir.path().to_path_buf(),
        cache_capacity_bytes: 8 * 1024 * 1024,
        group_commit_window: Duration::ZERO,
    })
    .expect("store opens");
    let mut providers: HashMap<ProviderKind, DynCursorSource> = HashMap::new();
    providers.insert(ProviderKind::Plaid, Arc::new(EmptyProvider::default()));
    let ctx = ActorContext::new(
        store.clone(),
        providers,
        actor_settings(max_restarts),
        SyncParams::default(),
        crate::clock::system(),
    );
    let registry = Registry::new(ctx.clone());
    let (supervisor, _) = Actor::spawn(None, Supervisor::new(ctx.clone(), registry.clone()), ())
        .await
        .expect("supervisor spawns");
    registry.set_supervisor(supervisor.get_cell());
    Harness {
        ctx,
        registry,
        store,
        _dir: dir,
    }
}

impl Harness {
    /// Links an account and waits for its initial sync.
    async fn linked(&self, item: &str) -> AccountId {
        let id = AccountId::generate();
        self.store
            .link_account(&Account {
                id: id.clone(),
                ..Account::new_linked(
                    ProviderKind::Plaid,
                    item.to_string(),
                    AccessToken::new("token"),
                    format!("owner-{item}"),
                    vec![],
                    Utc::now(),
                )
            })
            .expect("link");
        self.registry.activate(&id).expect("activate");
        self.wait_for("initial sync", || self.sync_count(&id) == 1)
            .await;
        id
    }

    fn sync_count(&self, id: &AccountId) -> u64 {
        self.store
            .get_account(id)
            .expect("read")
            .map_or(0, |a| a.sync_count)
    }

    fn pending(&self, id: &AccountId) -> usize {
        self.store.pending_inbox(id).expect("inbox").len()
    }

    /// Puts a webhook in the account's inbox, as the webhook route does.
    fn ingest(&self, item: &str) {
        let mut dedup_key = [0u8; 32];
        dedup_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        self.store
            .ingest(
                IncomingWebhook {
                    provider: ProviderKind::Plaid,
                    item_id: item.to_string(),
                    kind: crate::providers::test_support::hooks::SYNC.to_string(),
                    dedup_key,
                    body: serde_json::json!({ "item_id": item }),
                    received_at: Utc::now(),
                },
                Duration::from_secs(60),
            )
            .expect("ingest");
    }

    fn restarts(&self, id: &AccountId) -> u64 {
        self.registry.restart_status(id).map_or(0, |s| s.restarts)
    }

    /// Polls `done` on paused time: each turn advances the clock by 1 ms only when
    /// nothing else can run, so elapsed time measures the backoff.
    async fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[test]
fn restart_delay_doubles_per_failure_then_caps() {
    let delays: Vec<Duration> = (1..=5).map(|n| restart_delay(INITIAL, CAP, n)).collect();
    assert_eq!(
        delays,
        [100, 200, 250, 250, 250]
            .map(Duration::from_millis)
            .to_vec()
    );
    // Huge counts saturate instead of overflowing.
    assert_eq!(restart_delay(INITIAL, CAP, u32::MAX), CAP);
}

#[test]
fn failures_age_out_of_the_window_and_too_many_within_it_quarantine() {
    let settings = actor_settings(2);
    let mut record = RestartRecord::default();
    let t0 = Instant::now();
    assert_eq!(
        record_failure(&mut record, t0, &settings),
        RestartDecision::Restart { delay: INITIAL }
    );
    assert_eq!(
        record_failure(&mut record, t0 + Duration::from_secs(1), &settings),
        RestartDecision::Restart { delay: INITIAL * 2 }
    );
    // The first two have left the 60 s window: back to one failure, initial delay.
    let later = t0 + Duration::from_secs(61) + Duration::from_secs(1);
    assert_eq!(
        record_failure(&mut record, later, &settings),
        RestartDecision::Restart { delay: INITIAL }
    );
    assert_eq!(
        record_failure(&mut record, later, &settings),
        RestartDecision::Restart { delay: INITIAL * 2 }
    );
    assert_eq!(
        record_failure(&mut record, later, &settings),
        RestartDecision::Quarantine { failures: 3 }
    );
}

#[tokio::test(start_paused = true)]
async fn failed_actor_restarts_after_the_backoff_and_processes_pending_work() {
    let h = harness(5).await;
    let id = h.linked("item-a").await;
    h.ingest("item-a");
    assert_eq!(h.pending(&id), 1);
    h.registry.inject_panic(&id, 1);
    let failed_at = Instant::now();
    h.registry
        .request_sync(&id, SyncReason::Manual)
        .expect("request");
    h.wait_for("the pending webhook to be consumed", || h.pending(&id) == 0)
        .await;
    let elapsed = failed_at.elapsed();
    assert!(
        elapsed >= INITIAL,
        "restarted before the backoff: {elapsed:?}"
    );
    assert!(elapsed < INITIAL + Duration::from_millis(50), "{elapsed:?}");
    assert_eq!(h.restarts(&id), 1);
    assert_eq!(h.sync_count(&id), 2, "the restarted actor synced once");
    assert!(
        h.registry.is_active(&id),
        "the restarted actor is registered"
    );
}

#[tokio::test(start_paused = true)]
async fn webhooks_during_the_backoff_wait_for_the_restart() {
    let h = harness(5).await;
    let id = h.linked("item-a").await;
    h.registry.inject_panic(&id, 1);
    let failed_at = Instant::now();
    h.registry
        .request_sync(&id, SyncReason::Manual)
        .expect("request");
    h.wait_for("the failure", || h.restarts(&id) == 1).await;
    // A webhook arriving now is kept and acknowledged, but does not wake it early.
    h.ingest("item-a");
    h.registry
        .request_sync(&id, SyncReason::Webhook)
        .expect("a scheduled restart accepts the nudge");
    assert!(!h.registry.is_active(&id));
    h.wait_for("the restart to consume it", || h.pending(&id) == 0)
        .await;
    assert!(failed_at.elapsed() >= INITIAL, "{:?}", failed_at.elapsed());
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_per_failure_and_caps() {
    let h = harness(5).await;
    let id = h.linked("item-a").await;
    h.ingest("item-a");
    // Three syncs panic in a row: each restart finds the webhook pending, syncs, fails.
    h.registry.inject_panic(&id, 3);
    let failed_at = Instant::now();
    h.registry
        .request_sync(&id, SyncReason::Manual)
        .expect("request");
    h.wait_for("the fourth attempt to succeed", || h.pending(&id) == 0)
        .await;
    let elapsed = failed_at.elapsed();
    // 100 + 200 + 250 (capped): without growth it would be 300, without a cap 700.
    let expected = Duration::from_millis(550);
    assert!(elapsed >= expected, "{elapsed:?}");
    assert!(
        elapsed < expected + Duration::from_millis(50),
        "{elapsed:?}"
    );
    assert_eq!(h.restarts(&id), 3);
}

#[tokio::test(start_paused = true)]
async fn too_many_failures_quarantine_without_touching_neighbours_and_resume_lifts_it() {
    let h = harness(2).await;
    let sick = h.linked("item-sick").await;
    let healthy = h.linked("item-healthy").await;
    h.ingest("item-sick");
    h.registry.inject_panic(&sick, 100);
    h.registry
        .request_sync(&sick, SyncReason::Manual)
        .expect("request");
    // Two restarts, then the third failure is one too many.
    h.wait_for("quarantine on the account record", || {
        h.store
            .get_account(&sick)
            .expect("read")
            .is_some_and(|a| a.quarantine.is_some())
    })
    .await;
    let quarantine = h
        .store
        .get_account(&sick)
        .expect("read")
        .and_then(|a| a.quarantine)
        .expect("quarantined");
    assert_eq!(quarantine.failures, 3);
    assert!(
        quarantine.reason.contains("injected panic"),
        "{quarantine:?}"
    );
    assert_eq!(h.restarts(&sick), 2);
    assert!(!h.registry.is_active(&sick));

    // Webhooks are still kept, but wake nothing.
    h.ingest("item-sick");
    assert!(matches!(
        h.registry.request_sync(&sick, SyncReason::Webhook),
        Err(RegistryError::Quarantined(_))
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!h.registry.is_active(&sick));
    assert_eq!(h.pending(&sick), 2, "kept, not consumed");

    // The neighbour syncs as usual meanwhile.
    h.ingest("item-healthy");
    h.registry
        .request_sync(&healthy, SyncReason::Webhook)
        .expect("neighbour");
    h.wait_for("the neighbour's sync", || h.pending(&healthy) == 0)
        .await;
    assert_eq!(h.sync_count(&healthy), 2);

    // Resume: quarantine lifted, count reset, the kept webhooks synced.
    h.registry.inject_panic(&sick, 0);
    let lifted = crate::actors::resume::resume(&h.ctx, &h.registry, &sick).expect("resume");
    assert_eq!(lifted, Some(quarantine));
    assert!(h.registry.restart_status(&sick).is_none(), "count reset");
    h.wait_for("the kept webhooks to sync", || h.pending(&sick) == 0)
        .await;
    let account = h.store.get_account(&sick).expect("read").expect("exists");
    assert!(account.quarantine.is_none());
    assert_eq!(account.sync_count, 2);
}
