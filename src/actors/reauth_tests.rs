//! Races between the needs-reauth check and what lands while it runs (a relink, a
//! resume, a quarantine write), on a real sled store in a temp dir. Each test sets up
//! the interleaving the race produces explicitly, so it is deterministic.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::actors::account::SyncReason;
use crate::actors::context::ActorContext;
use crate::actors::incidents::{ensure_mark_incidents, resolve_incidents};
use crate::actors::registry::{Registry, RegistryError};
use crate::actors::resume::{relinked, resume};
use crate::actors::supervisor::write_quarantine;
use crate::config::Settings;
use crate::domain::incidents::IncidentSubject;
use crate::domain::{ProviderKind, Quarantine, SyncGaveUp};
use crate::providers::test_support::{
    cursor_rejected, delta, hooks, test_action, window, EmptyProvider, FnProvider, EXPIRATION_CODE,
    LOGIN_REQUIRED,
};
use crate::providers::{DynCursorSource, ProviderError};
use crate::store::{IncomingWebhook, IngestOutcome, SledStore, SledStoreConfig, Store};
use crate::sync::plaid::SyncParams;

pub(super) struct Harness {
    pub(super) ctx: Arc<ActorContext>,
    pub(super) registry: Arc<Registry>,
    pub(super) store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

pub(super) fn harness_with(provider: DynCursorSource) -> Harness {
    harness_with_settings(provider, Settings::defaults().actors)
}

fn harness_with_settings(
    provider: DynCursorSource,
    settings: crate::config::ActorSettings,
) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = SledStore::open(SledStoreConfig {
        data_dir: dir.path().to_path_buf(),
        cache_capacity_bytes: 8 * 1024 * 1024,
        group_commit_window: Duration::ZERO,
    })
    .expect("store opens");
    let mut providers: HashMap<ProviderKind, DynCursorSource> = HashMap::new();
    providers.insert(ProviderKind::Plaid, provider);
    let ctx = ActorContext::new(
        store.clone(),
        providers,
        settings,
        SyncParams::default(),
        crate::clock::system(),
    );
    let registry = Registry::new(ctx.clone());
    Harness {
        ctx,
        registry,
        store,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(Arc::new(EmptyProvider::default()))
}

impl Harness {
    /// Links an account (no actor is started).
    pub(super) fn link(&self, item: &str) -> AccountId {
        let id = AccountId::generate();
        self.store
            .link_account(&Account {
                id: id.clone(),
                ..Account::new_linked(
                    ProviderKind::Plaid,
                    item.to_string(),
                    AccessToken::new("token-1"),
                    format!("owner-{item}"),
                    vec![],
                    Utc::now(),
                )
            })
            .expect("link");
        id
    }

    /// Puts a webhook in the item's inbox, as the webhook route does; its seq.
    pub(super) fn ingest(&self, item: &str, kind: &str, body: serde_json::Value) -> u64 {
        let mut dedup_key = [0u8; 32];
        dedup_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let outcome = self
            .store
            .ingest(
                IncomingWebhook {
                    provider: ProviderKind::Plaid,
                    item_id: item.to_string(),
                    kind: kind.to_string(),
                    dedup_key,
                    body,
                    received_at: Utc::now(),
                },
                Duration::from_secs(60),
            )
            .expect("ingest");
        match outcome {
            IngestOutcome::Accepted { seq, .. } => seq,
            other => panic!("not appended: {other:?}"),
        }
    }

    pub(super) fn account(&self, id: &AccountId) -> Account {
        self.store.get_account(id).expect("read").expect("exists")
    }

    pub(super) fn open(&self, id: &AccountId, kind: IncidentKind) -> bool {
        self.store
            .open_incident_of(&IncidentSubject::Account(id.clone()), kind)
            .expect("read")
            .is_some()
    }

    /// Parks the account as a login-required webhook does, through the check.
    async fn park_by_webhook(&self, id: &AccountId, item: &str) {
        self.ingest(item, hooks::LOGIN_REQUIRED, serde_json::json!({}));
        let account = self.account(id);
        let entries = self.store.pending_inbox(id).expect("inbox");
        let decided = check(&self.ctx, &account, &entries).await.expect("check");
        assert_eq!(decided, Check::Parked { newly_parked: true });
    }
}

/// B1: a check of a parked account that read the record before a relink must not
/// write its stale copy back over the relink (which already resolved the incident).
#[tokio::test]
async fn a_relink_during_a_parked_check_is_not_lost() {
    let h = harness();
    let id = h.link("item-b1");
    h.park_by_webhook(&id, "item-b1").await;
    assert!(h.open(&id, IncidentKind::NeedsReauth));

    // The check's sync task reads the account and claims a newer webhook...
    h.ingest("item-b1", hooks::SYNC, serde_json::json!({}));
    let read_before_relink = h.account(&id);
    let entries = h.store.claim_pending_inbox(&id).expect("claim");
    // ...then the user relinks, as `POST /v1/accounts` does (its `actors::resume::relinked`
    // resolves the incident; its actor nudge is left out: no actor runs here)...
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    resolve_incidents(&h.ctx, &id, &[IncidentKind::NeedsReauth]).expect("resolve");
    // ...and the check goes on with what it read.
    let decided = check(&h.ctx, &read_before_relink, &entries)
        .await
        .expect("check");

    let account = h.account(&id);
    assert_eq!(decided, Check::Proceed, "the relink unparks it");
    assert!(account.needs_reauth.is_none(), "{:?}", account.needs_reauth);
    assert_eq!(account.access_token, AccessToken::new("token-2"));
    assert!(!h.open(&id, IncidentKind::NeedsReauth));
}

/// After a relink unparked it, the old login-required webhook still waits in the
/// inbox until a sync commits. If that sync fails (a 500, say), the retry's check sees
/// the same entry again: it must not park the account a second time.
#[tokio::test]
async fn an_old_login_error_does_not_park_again_after_a_relink_unparked() {
    let h = harness();
    let id = h.link("item-repark");
    h.park_by_webhook(&id, "item-repark").await;
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    // (`actors::resume::relinked` would also wake an actor; none runs here, the test plays
    // its sync task's checks itself.)
    resolve_incidents(&h.ctx, &id, &[IncidentKind::NeedsReauth]).expect("resolve");
    // The relink's sync: the check unparks...
    let entries = h.store.claim_pending_inbox(&id).expect("claim");
    let decided = check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("check");
    assert_eq!(decided, Check::Proceed);
    // ...then the provider fails, nothing commits, and the retry checks the same
    // (still pending) entries once more.
    let entries = h.store.claim_pending_inbox(&id).expect("claim again");
    assert!(
        entries.iter().any(|e| e.kind == hooks::LOGIN_REQUIRED),
        "the old error is still pending"
    );
    let decided = check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("retry's check");
    assert_eq!(decided, Check::Proceed, "not parked again by the old error");
    assert!(h.account(&id).needs_reauth.is_none());
    assert!(!h.open(&id, IncidentKind::NeedsReauth));

    // A login error that arrives after the relink still parks it.
    h.ingest("item-repark", hooks::LOGIN_REQUIRED, serde_json::json!({}));
    let entries = h.store.claim_pending_inbox(&id).expect("claim new");
    let decided = check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("check new");
    assert_eq!(decided, Check::Parked { newly_parked: true });
}

/// A deadline webhook still pending at relink time (its sync has not committed) was
/// lifted by the relink: the relink's sync must not record it, nor reopen its warning.
/// One announced after the relink still does.
#[tokio::test]
async fn a_deadline_announced_before_a_relink_does_not_reopen_its_warning() {
    let h = harness();
    let id = h.link("item-deadline");
    h.ingest(
        "item-deadline",
        hooks::DISCONNECT,
        serde_json::json!({ "reason": "TOKEN_EXPIRATION" }),
    );
    let entries = h.store.claim_pending_inbox(&id).expect("claim");
    let decided = check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("check");
    assert_eq!(decided, Check::Proceed, "a warning, not a park");
    assert!(h.account(&id).pending_deadline.is_some());
    assert!(h.open(&id, IncidentKind::PendingDisconnect));

    // The user goes through update mode before any sync committed the entry.
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    relinked(&h.ctx, &h.registry, &id).expect("relinked");
    assert!(!h.open(&id, IncidentKind::PendingDisconnect));

    // The relink's sync checks the same, still pending, entry.
    let entries = h.store.claim_pending_inbox(&id).expect("claim again");
    assert!(entries.iter().any(|e| e.kind == hooks::DISCONNECT));
    check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("relink's check");
    assert!(
        h.account(&id).pending_deadline.is_none(),
        "lifted by the relink"
    );
    assert!(
        !h.open(&id, IncidentKind::PendingDisconnect),
        "the warning stays resolved"
    );

    // A deadline announced after the relink is a new warning.
    h.ingest(
        "item-deadline",
        hooks::EXPIRATION,
        serde_json::json!({ "deadline": "2030-01-01T00:00:00Z" }),
    );
    let entries = h.store.claim_pending_inbox(&id).expect("claim new");
    check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("check new");
    assert_eq!(
        h.account(&id).pending_deadline.map(|d| d.code),
        Some(EXPIRATION_CODE.to_string())
    );
    assert!(h.open(&id, IncidentKind::PendingExpiration));
}

/// B1, the other order: a relink that lands after the still-parked check wrote keeps
/// its flag, and the check only ever raises `after_seq`.
#[tokio::test]
async fn a_parked_check_only_raises_after_seq_and_keeps_a_relink() {
    let h = harness();
    let id = h.link("item-b1b");
    h.park_by_webhook(&id, "item-b1b").await;
    let parked_at = h.account(&id).needs_reauth.expect("parked").after_seq;
    let newer = h.ingest("item-b1b", hooks::SYNC, serde_json::json!({}));
    let entries = h.store.claim_pending_inbox(&id).expect("claim");
    let decided = check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("check");
    assert_eq!(
        decided,
        Check::Parked {
            newly_parked: false
        }
    );
    let mark = h.account(&id).needs_reauth.expect("still parked");
    assert!(mark.after_seq == newer && newer > parked_at, "{mark:?}");
    assert!(!mark.relinked);

    // A stale read with a lower position never lowers it.
    let mut stale = h.account(&id);
    if let Some(mark) = stale.needs_reauth.as_mut() {
        mark.after_seq = parked_at;
    }
    let old_entries: Vec<_> = entries
        .iter()
        .filter(|e| e.seq <= parked_at)
        .cloned()
        .collect();
    check(&h.ctx, &stale, &old_entries).await.expect("check");
    assert_eq!(
        h.account(&id).needs_reauth.expect("parked").after_seq,
        newer
    );
}

/// B1 for the provider path: a login-required error answered to a sync that used the
/// token a relink has since replaced parks nothing.
#[tokio::test]
async fn a_login_error_for_a_replaced_token_does_not_park() {
    let h = harness();
    let id = h.link("item-b1c");
    let error = SyncError::Provider(ProviderError::Api {
        status: 400,
        error_type: "LOGIN_ERROR".into(),
        code: LOGIN_REQUIRED.into(),
        message: "login".into(),
        request_id: Some("req-x".into()),
        class: ErrorClass::LoginRequired,
    });
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    let parked = park_after_error(&h.ctx, &id, &error, 0, &AccessToken::new("token-1"))
        .await
        .expect("park");
    assert!(!parked);
    assert!(h.account(&id).needs_reauth.is_none());
    assert!(!h.open(&id, IncidentKind::NeedsReauth));
    // With the current token it parks.
    let parked = park_after_error(&h.ctx, &id, &error, 0, &AccessToken::new("token-2"))
        .await
        .expect("park");
    assert!(parked);
    assert!(h.account(&id).needs_reauth.is_some());
    assert!(h.open(&id, IncidentKind::NeedsReauth));
}

/// B2: relinking an account marked failed clears the mark in the store (so a later
/// activation syncs it) and resolves its sync_failed incident.
#[tokio::test]
async fn a_relink_clears_the_failed_mark_in_the_store() {
    let h = harness();
    let id = h.link("item-b2");
    h.store
        .set_sync_gave_up(
            &id,
            Some(SyncGaveUp {
                reason: "INTERNAL_SERVER_ERROR: boom".into(),
                attempts: 5,
                since: Utc::now(),
                cause: crate::domain::GaveUpCause::AttemptsExhausted,
            }),
        )
        .expect("give up");
    open_incident(&h.ctx, &id, IncidentKind::SyncFailed, serde_json::json!({})).expect("incident");
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    assert!(h.account(&id).failed.is_none());
    relinked(&h.ctx, &h.registry, &id).expect("relinked");
    assert!(!h.open(&id, IncidentKind::SyncFailed));
}

/// B5: a login repair on an account that is not parked lifts an announced deadline
/// and its warning incident.
#[tokio::test]
async fn login_repaired_clears_a_deadline_when_not_parked() {
    let h = harness();
    let id = h.link("item-b5");
    h.ingest(
        "item-b5",
        hooks::EXPIRATION,
        serde_json::json!({ "deadline": "2030-01-01T00:00:00Z" }),
    );
    let entries = h.store.claim_pending_inbox(&id).expect("claim");
    let decided = check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("check");
    assert_eq!(decided, Check::Proceed);
    let deadline = h.account(&id).pending_deadline.expect("deadline recorded");
    assert_eq!(deadline.code, EXPIRATION_CODE);
    assert!(h.open(&id, IncidentKind::PendingExpiration));

    h.ingest("item-b5", hooks::LOGIN_REPAIRED, serde_json::json!({}));
    let entries = h.store.claim_pending_inbox(&id).expect("claim");
    let decided = check(&h.ctx, &h.account(&id), &entries)
        .await
        .expect("check");
    assert_eq!(decided, Check::Proceed);
    assert!(h.account(&id).pending_deadline.is_none());
    assert!(!h.open(&id, IncidentKind::PendingExpiration));
}

/// B7: a resume that lifts the in-memory quarantine before the supervisor's store
/// write lands makes that write a no-op; a write that landed first is cleared by it.
#[tokio::test]
async fn a_resume_racing_the_quarantine_write_wins() {
    let h = harness();
    let id = h.link("item-b7");
    let quarantine = || Quarantine {
        reason: "panic".into(),
        failures: 3,
        since: Utc::now(),
    };
    // The supervisor marked it in memory; the resume comes before the write task.
    h.registry
        .with_restart_record(&id, |r| r.quarantined = true);
    resume(&h.ctx, &h.registry, &id).expect("resume");
    let wrote = write_quarantine(&h.ctx, &h.registry, &id, quarantine()).expect("write");
    assert!(!wrote);
    assert!(h.account(&id).quarantine.is_none());
    assert!(!h.open(&id, IncidentKind::Quarantined));

    // The write first, then the resume: lifted too.
    h.registry
        .with_restart_record(&id, |r| r.quarantined = true);
    assert!(write_quarantine(&h.ctx, &h.registry, &id, quarantine()).expect("write"));
    assert!(h.account(&id).quarantine.is_some());
    resume(&h.ctx, &h.registry, &id).expect("resume");
    assert!(h.account(&id).quarantine.is_none());
    assert!(!h.open(&id, IncidentKind::Quarantined));
}

/// A provider whose every `/transactions/sync` call reports the token it got, then
/// waits for the test to release it; the first call can be made to answer
/// login required.
struct GatedProvider {
    calls: tokio::sync::mpsc::UnboundedSender<String>,
    release: tokio::sync::Semaphore,
    /// Answers for the next calls, in order; an empty page once they are used up.
    scripted: std::sync::Mutex<std::collections::VecDeque<ProviderError>>,
}

#[async_trait::async_trait]
impl crate::providers::Provider for GatedProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Plaid
    }

    async fn verify_webhook(
        &self,
        _headers: &http::HeaderMap,
        _body: &[u8],
    ) -> Result<crate::providers::VerifiedWebhook, crate::providers::WebhookError> {
        unreachable!("no webhooks in these tests")
    }

    fn action_of(&self, kind: &str, body: &serde_json::Value) -> crate::providers::WebhookAction {
        test_action(kind, body)
    }
}

#[async_trait::async_trait]
impl crate::providers::CursorSource for GatedProvider {
    async fn sync_page(
        &self,
        token: &AccessToken,
        _cursor: Option<&str>,
        _count: u32,
    ) -> Result<crate::providers::DeltaPage, ProviderError> {
        let _ = self.calls.send(token.expose().to_string());
        self.release.acquire().await.expect("open").forget();
        if let Some(error) = self.scripted.lock().expect("script").pop_front() {
            return Err(error);
        }
        Ok(crate::providers::DeltaPage {
            added: vec![],
            modified: vec![],
            removed: vec![],
            next_cursor: "cursor".into(),
            has_more: false,
            request_id: "req".into(),
        })
    }

    async fn window_page(
        &self,
        _token: &AccessToken,
        _start: chrono::NaiveDate,
        _end: chrono::NaiveDate,
        _offset: u64,
        _count: u32,
    ) -> Result<crate::providers::WindowPage, ProviderError> {
        unreachable!("no reconcile in these tests")
    }
}

fn gated(
    login_error_first: bool,
) -> (
    Harness,
    Arc<GatedProvider>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let errors = if login_error_first {
        vec![ProviderError::Api {
            status: 400,
            error_type: "LOGIN_ERROR".into(),
            code: LOGIN_REQUIRED.into(),
            message: "login required".into(),
            request_id: Some("req-login".into()),
            class: ErrorClass::LoginRequired,
        }]
    } else {
        vec![]
    };
    let (provider, received) = scripted(0, errors);
    (harness_with(provider.clone()), provider, received)
}

/// A provider answering its calls with `errors` in order, then with empty pages; its
/// first `permits` calls go at once, the later ones wait for `release`.
fn scripted(
    permits: usize,
    errors: Vec<ProviderError>,
) -> (
    Arc<GatedProvider>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (calls, received) = tokio::sync::mpsc::unbounded_channel();
    let provider = Arc::new(GatedProvider {
        calls,
        release: tokio::sync::Semaphore::new(permits),
        scripted: std::sync::Mutex::new(errors.into()),
    });
    (provider, received)
}

async fn next_call(received: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .ok()
        .flatten()
}

/// B3: a relink's `Resume` that reaches the actor while a sync runs is not dropped:
/// one more sync follows, with the new token.
#[tokio::test]
async fn a_resume_during_a_sync_runs_one_more_sync() {
    let (h, provider, mut received) = gated(false);
    let id = h.link("item-b3");
    h.registry.activate(&id).expect("activate");
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-1"));
    // The initial sync is in the provider call; the user relinks meanwhile.
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    relinked(&h.ctx, &h.registry, &id).expect("relinked");
    provider.release.add_permits(1);
    assert_eq!(
        next_call(&mut received).await.as_deref(),
        Some("token-2"),
        "the resume queued a sync behind the running one"
    );
    provider.release.add_permits(1);
}

/// B1/B3 on the provider path: login required for the token a relink replaced
/// while the sync ran does not park the account; the new token is tried at once.
#[tokio::test]
async fn a_login_error_for_the_old_token_after_a_relink_syncs_with_the_new_one() {
    let (h, provider, mut received) = gated(true);
    let id = h.link("item-b3b");
    h.registry.activate(&id).expect("activate");
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-1"));
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    relinked(&h.ctx, &h.registry, &id).expect("relinked");
    provider.release.add_permits(1);
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-2"));
    assert!(h.account(&id).needs_reauth.is_none(), "not parked");
    assert!(!h.open(&id, IncidentKind::NeedsReauth));
    provider.release.add_permits(8);
}

/// A provider whose first call answers that the access token is revoked; its first
/// `permits` calls go at once.
fn revoked_once(
    permits: usize,
) -> (
    Arc<GatedProvider>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    scripted(
        permits,
        vec![api_error(
            400,
            "INVALID_ACCESS_TOKEN",
            ErrorClass::AccessRevoked,
        )],
    )
}

/// The same on the final path: an access revoked for the token a relink replaced while
/// the sync ran does not mark the account; the new token is tried at once.
#[tokio::test]
async fn a_revoked_access_for_the_old_token_after_a_relink_syncs_with_the_new_one() {
    let (provider, mut received) = revoked_once(0);
    let h = harness_with(provider.clone());
    let id = h.link("item-revoked");
    h.registry.activate(&id).expect("activate");
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-1"));
    h.store
        .relink_account(&id, &AccessToken::new("token-2"))
        .expect("relink");
    relinked(&h.ctx, &h.registry, &id).expect("relinked");
    provider.release.add_permits(1);
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-2"));
    assert!(h.account(&id).failed.is_none(), "not marked");
    // Never marked, so no incident was opened (and resolved by the resume) either: an
    // alert about the old token would be a false alarm.
    let ever = h
        .store
        .list_incidents(&crate::domain::incidents::IncidentQuery {
            state: crate::domain::incidents::IncidentState::All,
            kind: Some(IncidentKind::AccessRevoked),
            account_id: Some(id.clone()),
            operation_id: None,
            since: None,
            after: None,
            limit: 10,
        })
        .expect("incidents");
    assert!(ever.is_empty(), "{ever:?}");
    provider.release.add_permits(8);
}

/// Without a relink the same error marks the account at the first failure, with its
/// incident and no retry record.
#[tokio::test]
async fn a_revoked_access_marks_the_account_at_once() {
    let (provider, mut received) = revoked_once(1);
    let h = harness_with(provider.clone());
    let id = h.link("item-revoked-once");
    h.registry.activate(&id).expect("activate");
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.open(&id, IncidentKind::AccessRevoked) {
        assert!(tokio::time::Instant::now() < deadline, "never marked");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let failed = h.account(&id).failed.expect("marked failed");
    assert_eq!(failed.cause, crate::domain::GaveUpCause::AccessRevoked);
    assert_eq!(failed.attempts, 1);
    assert!(h.store.retry_of(&id).expect("retry").is_none());
}

/// An operator's resume does not wait out a backoff: the sync runs at once, although
/// the rate-limit backoff of the failed attempt is an hour long.
#[tokio::test]
async fn a_resume_during_a_backoff_syncs_at_once() {
    let (provider, mut received) = scripted(16, vec![api_error(429, "SYNC_LIMIT", RATE_LIMITED)]);
    let mut settings = Settings::defaults().actors;
    settings.rate_limit_backoff = Duration::from_secs(3600);
    let h = harness_with_settings(provider.clone(), settings);
    let id = h.link("item-backoff");
    h.registry.activate(&id).expect("activate");
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-1"));
    // The 429 put the account in an hour-long backoff, recorded in the store.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = h.registry.snapshot(&id).await.expect("status");
        if snapshot.is_some_and(|s| s.state == "backoff") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never in backoff");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(h.store.retry_of(&id).expect("retry").is_some());
    resume(&h.ctx, &h.registry, &id).expect("resume");
    assert_eq!(
        next_call(&mut received).await.as_deref(),
        Some("token-1"),
        "the resume synced without waiting for the backoff"
    );
}

/// An operator's resume that arrives while an attempt runs wins even if that attempt
/// then reaches the attempt limit: the account is not left marked failed.
#[tokio::test]
async fn a_resume_during_the_last_attempt_is_not_undone_by_giving_up() {
    let (provider, mut received) = scripted(0, vec![api_error(429, "SYNC_LIMIT", RATE_LIMITED)]);
    let mut settings = Settings::defaults().actors;
    settings.max_sync_attempts = 1;
    let h = harness_with_settings(provider.clone(), settings);
    let id = h.link("item-last-attempt");
    h.registry.activate(&id).expect("activate");
    assert_eq!(next_call(&mut received).await.as_deref(), Some("token-1"));
    // The only attempt allowed is in the provider call; the operator resumes now.
    resume(&h.ctx, &h.registry, &id).expect("resume");
    // Let the (already queued) resume reach the actor before the attempt ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.registry.mailbox_depth(&id).unwrap_or(0) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resume never handled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    provider.release.add_permits(1);
    assert_eq!(
        next_call(&mut received).await.as_deref(),
        Some("token-1"),
        "the resume's sync runs although the attempt gave up"
    );
    provider.release.add_permits(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.account(&id).cursor.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(h.account(&id).failed.is_none(), "not left failed");
    assert!(!h.open(&id, IncidentKind::SyncFailed));
}

fn api_error(status: u16, code: &str, class: ErrorClass) -> ProviderError {
    ProviderError::Api {
        status,
        error_type: "API_ERROR".into(),
        code: code.into(),
        message: "scripted".into(),
        request_id: Some("req-scripted".into()),
        class,
    }
}

/// A rate limit without a provider-given wait.
const RATE_LIMITED: ErrorClass = ErrorClass::RateLimited { retry_after: None };

/// The attempt and end of the account's backoff, once its actor is in one.
async fn backoff_of(h: &Harness, id: &AccountId) -> (u32, DateTime<Utc>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = h.registry.snapshot(id).await.expect("status");
        if let Some((attempt, Some(until))) = snapshot
            .filter(|s| s.state == "backoff")
            .map(|s| (s.attempt, s.next_retry_at))
        {
            return (attempt, until);
        }
        assert!(tokio::time::Instant::now() < deadline, "never in backoff");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Timers are not cancelled: the `Due` of a backoff a resume cut short must not end a
/// later backoff early — here the hour-long wait after a rate limit.
#[tokio::test]
async fn a_stale_backoff_timer_does_not_end_a_later_rate_limit_wait() {
    // The 500's backoff is drawn with full jitter, so it can be as short as 10 ms. The
    // test needs to resume while it is still pending; when its timer wins instead (a
    // stall longer than the draw: attempt 2 then runs on its own), the round proves
    // nothing and is played again on a fresh store.
    let mut round = 0;
    let (h, id, mut received, first_until) = loop {
        round += 1;
        assert!(round <= 5, "the first backoff's timer won every round");
        let (provider, mut received) = scripted(
            100,
            vec![
                api_error(500, "SERVER_ERROR", ErrorClass::Transient),
                api_error(429, "SYNC_LIMIT", RATE_LIMITED),
            ],
        );
        let mut settings = Settings::defaults().actors;
        settings.sync_retry_initial = Duration::from_millis(400);
        settings.sync_retry_max = Duration::from_millis(400);
        settings.rate_limit_backoff = Duration::from_secs(3600);
        let h = harness_with_settings(provider.clone(), settings);
        let id = h.link("item-stale-timer");
        h.registry.activate(&id).expect("activate");
        assert!(next_call(&mut received).await.is_some(), "first attempt");
        // The 500's short backoff, seen while its timer is still set.
        match backoff_of(&h, &id).await {
            (1, until) => break (h, id, received, until),
            _ => continue,
        }
    };
    // A resume cuts the wait short.
    resume(&h.ctx, &h.registry, &id).expect("resume");
    assert!(
        next_call(&mut received).await.is_some(),
        "the resume's sync"
    );
    // That sync is rate limited: an hour's wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, until) = backoff_of(&h, &id).await;
        if until > first_until + chrono::Duration::minutes(30) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no rate-limit wait");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Let the first backoff's timer fire (it was due at `first_until`, at most 400 ms
    // after the first failure), plus a margin; it must change nothing.
    while Utc::now() < first_until + chrono::Duration::milliseconds(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = h
        .registry
        .snapshot(&id)
        .await
        .expect("status")
        .expect("live");
    assert_eq!(
        snapshot.state, "backoff",
        "still waiting out the rate limit"
    );
    assert!(
        received.try_recv().is_err(),
        "no provider call inside the rate-limit window"
    );
}

/// A resume during an attempt gives the account its whole attempt budget back, not
/// just the one attempt the failure plan of the running attempt left.
#[tokio::test]
async fn a_resume_during_an_attempt_restores_the_whole_attempt_budget() {
    let (provider, mut received) = scripted(
        0,
        vec![api_error(500, "SERVER_ERROR", ErrorClass::Transient); 3],
    );
    let mut settings = Settings::defaults().actors;
    settings.sync_retry_initial = Duration::from_millis(20);
    settings.sync_retry_max = Duration::from_millis(20);
    settings.max_sync_attempts = 3;
    let h = harness_with_settings(provider.clone(), settings);
    let id = h.link("item-budget");
    h.registry.activate(&id).expect("activate");
    // Attempt 1 fails; attempt 2 is in the provider call when the operator resumes.
    assert!(next_call(&mut received).await.is_some());
    provider.release.add_permits(1);
    assert!(next_call(&mut received).await.is_some(), "attempt 2");
    resume(&h.ctx, &h.registry, &id).expect("resume");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.registry.mailbox_depth(&id).unwrap_or(0) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resume never handled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Attempt 2 fails; the resume's sync runs at once and fails too: that is the
    // first failure since the resume, far from the limit of 3.
    provider.release.add_permits(1);
    assert!(
        next_call(&mut received).await.is_some(),
        "the resume's sync"
    );
    provider.release.add_permits(1);
    assert!(
        next_call(&mut received).await.is_some(),
        "retried after its backoff, not given up"
    );
    assert!(h.account(&id).failed.is_none(), "not marked failed");
    provider.release.add_permits(8);
}

/// A provider that rejects every fresh cursor does not make the actor reconcile in a
/// loop: after a few rounds in a row, the next one waits a backoff.
#[tokio::test]
async fn reconciles_in_a_row_back_off_instead_of_looping() {
    // A provider that accepts no cursor at all: every delta from a cursor is refused,
    // a fresh loop always works, and the window is empty.
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = refused.clone();
    let provider = Arc::new(FnProvider::new(
        move |cursor| match cursor {
            Some(_) => {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(cursor_rejected())
            }
            None => Ok(delta(vec![], "fresh")),
        },
        || Ok(window(vec![])),
    ));
    let mut settings = Settings::defaults().actors;
    settings.sync_retry_initial = Duration::from_secs(3600);
    settings.sync_retry_max = Duration::from_secs(3600);
    let h = harness_with_settings(provider.clone(), settings);
    let id = h.link("item-cursor-loop");
    h.registry.activate(&id).expect("activate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.account(&id).cursor.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first sync never committed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    h.registry
        .request_sync(&id, crate::actors::SyncReason::Manual)
        .expect("sync requested");
    let snapshot = loop {
        let snapshot = h.registry.snapshot(&id).await.expect("status");
        if let Some(s) = snapshot.filter(|s| s.state == "backoff") {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still reconciling after {} refused cursors",
            refused.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let refused = refused.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        refused, 4,
        "four reconciles at once, then the next follow-up waits"
    );
    assert!(snapshot.next_retry_at.is_some_and(|at| at > Utc::now()));
}

/// The incident of a mark whose write was interrupted (a crash between the mark and
/// its incident, played here by writing only the mark) is opened when the account is
/// next looked at: on activation for needs-reauth and failed, on a refused activation
/// for a quarantine. A mark that has its incident does not get a second occurrence.
#[tokio::test]
async fn a_mark_left_without_its_incident_gets_it_when_the_account_is_next_looked_at() {
    let h = harness();
    let parked = h.link("item-lost-park");
    let (mark, _) = parked_mark(
        LOGIN_REQUIRED,
        Some("req-9".into()),
        "provider",
        0,
        Utc::now(),
    );
    h.store
        .update_login_state(&parked, &|account| {
            account.needs_reauth = Some(mark.clone());
            true
        })
        .expect("mark");
    let failed = h.link("item-lost-failed");
    h.store
        .set_sync_gave_up(
            &failed,
            Some(SyncGaveUp {
                reason: "INTERNAL_SERVER_ERROR: boom".into(),
                attempts: 5,
                since: Utc::now(),
                cause: crate::domain::GaveUpCause::AttemptsExhausted,
            }),
        )
        .expect("mark");
    let quarantined = h.link("item-lost-quarantine");
    h.store
        .set_quarantine(
            &quarantined,
            Some(Quarantine {
                reason: "panicked".into(),
                failures: 4,
                since: Utc::now(),
            }),
        )
        .expect("mark");
    assert!(!h.open(&parked, IncidentKind::NeedsReauth));
    assert!(!h.open(&failed, IncidentKind::SyncFailed));
    assert!(!h.open(&quarantined, IncidentKind::Quarantined));

    // Refused, but not silently.
    assert!(matches!(
        h.registry.request_sync(&quarantined, SyncReason::Webhook),
        Err(RegistryError::Quarantined(_))
    ));
    let incident = h
        .store
        .open_incident_of(
            &IncidentSubject::Account(quarantined.clone()),
            IncidentKind::Quarantined,
        )
        .expect("read")
        .expect("opened");
    assert_eq!(incident.details["failures"], 4);
    assert_eq!(incident.details["source"], "recovered");

    h.registry.activate(&parked).expect("activate");
    h.registry.activate(&failed).expect("activate");
    // Activation runs `pre_start` on the actor: wait for what it writes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(h.open(&parked, IncidentKind::NeedsReauth) && h.open(&failed, IncidentKind::SyncFailed))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "incidents never opened"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let incident = h
        .store
        .open_incident_of(
            &IncidentSubject::Account(parked.clone()),
            IncidentKind::NeedsReauth,
        )
        .expect("read")
        .expect("open");
    assert_eq!(incident.details["code"], LOGIN_REQUIRED);
    assert_eq!(incident.details["request_id"], "req-9");
    let incident = h
        .store
        .open_incident_of(
            &IncidentSubject::Account(failed.clone()),
            IncidentKind::SyncFailed,
        )
        .expect("read")
        .expect("open");
    assert_eq!(incident.details["attempts"], 5);

    // Looked at again: the incidents are there, nothing is opened twice.
    assert!(h
        .registry
        .request_sync(&quarantined, SyncReason::Webhook)
        .is_err());
    let account = h.account(&parked);
    ensure_mark_incidents(&h.ctx, &account).expect("ensure again");
    for (id, kind) in [
        (&parked, IncidentKind::NeedsReauth),
        (&quarantined, IncidentKind::Quarantined),
    ] {
        let incident = h
            .store
            .open_incident_of(&IncidentSubject::Account(id.clone()), kind)
            .expect("read")
            .expect("open");
        assert_eq!(incident.occurrences, 1, "{kind}");
    }

    // A relink resolves the parked account's incident; until the next check lifts the
    // relinked mark, looking at the account must not reopen it.
    h.store
        .relink_account(&parked, &AccessToken::new("token-2"))
        .expect("relink");
    resolve_incidents(&h.ctx, &parked, &[IncidentKind::NeedsReauth]).expect("resolve");
    assert!(h.account(&parked).needs_reauth.is_some_and(|m| m.relinked));
    ensure_mark_incidents(&h.ctx, &h.account(&parked)).expect("ensure after relink");
    assert!(!h.open(&parked, IncidentKind::NeedsReauth));
}
