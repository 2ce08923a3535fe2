//! The step logic against a scripted bank and a real (sled) store in a temp dir: what
//! each call's answer does to the operation, with the clock under the test's control.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::TimeZone;

use super::*;
use crate::clock::ManualClock;
use crate::domain::operations::{OpeningDetails, Segment};
use crate::providers::bank::{IssuedCard, OpeningAccepted, StatusReport};
use crate::store::{CreateOutcome, DueKind, SledStore, SledStoreConfig};

/// A bank whose answers the test scripts, recording every call with its key.
#[derive(Default)]
struct ScriptedBank {
    creates: Mutex<VecDeque<Result<OpeningAccepted, ProviderError>>>,
    polls: Mutex<VecDeque<Result<StatusReport, ProviderError>>>,
    cards: Mutex<VecDeque<Result<IssuedCard, ProviderError>>>,
    calls: Mutex<Vec<(String, String)>>,
}

impl ScriptedBank {
    fn calls_of(&self, what: &str) -> Vec<String> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .filter(|(w, _)| w == what)
            .map(|(_, key)| key.clone())
            .collect()
    }

    fn record(&self, what: &str, key: &str) {
        self.calls
            .lock()
            .expect("lock")
            .push((what.to_string(), key.to_string()));
    }
}

fn unscripted(what: &str) -> ProviderError {
    ProviderError::Transport(format!("no scripted answer for {what}"))
}

#[async_trait]
impl BankApi for ScriptedBank {
    async fn open_account(
        &self,
        request_id: &str,
        _request: &OpeningRequest,
    ) -> Result<OpeningAccepted, ProviderError> {
        self.record("create", request_id);
        let next = self.creates.lock().expect("lock").pop_front();
        next.unwrap_or_else(|| Err(unscripted("create")))
    }

    async fn opening_status(&self, tracking_id: &str) -> Result<StatusReport, ProviderError> {
        self.record("poll", tracking_id);
        let next = self.polls.lock().expect("lock").pop_front();
        next.unwrap_or_else(|| Err(unscripted("poll")))
    }

    async fn open_account_sync(
        &self,
        request_id: &str,
        _request: &OpeningRequest,
    ) -> Result<StatusReport, ProviderError> {
        self.record("legacy", request_id);
        Err(unscripted("legacy"))
    }

    async fn issue_virtual_card(
        &self,
        step_id: &str,
        _request: &CardRequest,
    ) -> Result<IssuedCard, ProviderError> {
        self.record("card", step_id);
        let next = self.cards.lock().expect("lock").pop_front();
        next.unwrap_or_else(|| Err(unscripted("card")))
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0)
        .single()
        .expect("valid")
}

fn params() -> OpeningParams {
    OpeningParams {
        poll_interval: Duration::from_secs(1800),
        slow_poll_interval: Duration::from_secs(7200),
        max_step_attempts: 3,
        retry_initial: Duration::from_secs(30),
        retry_max: Duration::from_secs(600),
        public_url: "http://acctor.test".to_string(),
        alerts_on: false,
    }
}

fn server_error() -> ProviderError {
    ProviderError::Api {
        status: 500,
        error_type: "api_error".into(),
        code: "internal".into(),
        message: "boom".into(),
        request_id: None,
        class: ErrorClass::Transient,
    }
}

fn accepted() -> OpeningAccepted {
    OpeningAccepted {
        tracking_id: "trk_1".into(),
        status: BankStatus::Initiated,
    }
}

fn report(status: BankStatus) -> StatusReport {
    StatusReport {
        tracking_id: "trk_1".into(),
        status,
        iban: (status == BankStatus::Completed).then(|| "NL91ABNA0417164300".into()),
        bic: (status == BankStatus::Completed).then(|| "ABNANL2A".into()),
        reason: None,
    }
}

fn card() -> IssuedCard {
    IssuedCard {
        card_id: "card_1".into(),
        last4: "4242".into(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: AsyncStore,
    bank: Arc<ScriptedBank>,
    dyn_bank: Arc<dyn BankApi>,
    clock: Arc<ManualClock>,
    shared: SharedClock,
    id: OperationId,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("dir");
        let sled = SledStore::open(SledStoreConfig {
            data_dir: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
        .expect("store");
        let store = AsyncStore::new(sled);
        let op = Operation::new(
            OpeningDetails {
                customer_id: "cus_1".into(),
                market: "NL".into(),
                segment: Segment::Company,
                legal_name: "Ada BV".into(),
                email: None,
                registration_number: None,
            },
            OpeningPath::Async,
            t0(),
            chrono::Duration::hours(12),
        );
        let id = op.id.clone();
        let created = store
            .run(move |s| s.create_operation(&op, false))
            .await
            .expect("create");
        assert!(matches!(created, CreateOutcome::Created(_)));
        let bank = Arc::new(ScriptedBank::default());
        let clock = ManualClock::new(t0());
        Fixture {
            _dir: dir,
            store,
            dyn_bank: bank.clone(),
            bank,
            shared: clock.clone(),
            clock,
            id,
        }
    }

    async fn step(&self) -> StepReport {
        run_step(
            &self.store,
            &self.dyn_bank,
            &params(),
            &self.shared,
            &self.id,
        )
        .await
        .expect("step")
    }

    async fn stored(&self) -> Operation {
        let id = self.id.clone();
        self.store
            .run(move |s| s.get_operation(&id))
            .await
            .expect("read")
            .expect("exists")
    }

    async fn due(&self, kind: DueKind) -> Option<DateTime<Utc>> {
        let subject = self.id.to_string();
        self.store
            .run(move |s| s.due_entry_of(kind, &subject))
            .await
            .expect("read")
            .map(|e| e.due_at)
    }
}

#[tokio::test]
async fn the_create_call_carries_the_request_id_and_schedules_the_first_poll() {
    let f = Fixture::new().await;
    f.bank
        .creates
        .lock()
        .expect("lock")
        .push_back(Ok(accepted()));
    let report = f.step().await;
    assert!(report.committed);
    let op = f.stored().await;
    assert_eq!(f.bank.calls_of("create"), vec![op.request_id.clone()]);
    assert_eq!(op.tracking_id.as_deref(), Some("trk_1"));
    assert_eq!(op.bank_status, Some(BankStatus::Initiated));
    let poll_at = t0() + chrono::Duration::minutes(30);
    assert_eq!(op.next_poll_at, Some(poll_at));
    assert_eq!(f.due(DueKind::OperationWake).await, Some(poll_at));
    assert_eq!(
        f.due(DueKind::OperationDeadline).await,
        Some(t0() + chrono::Duration::hours(12))
    );
    // Nothing is due before the poll: a step does nothing and writes nothing.
    let idle = f.step().await;
    assert!(!idle.committed);
    assert!(f.bank.calls_of("poll").is_empty());
}

#[tokio::test]
async fn a_failed_create_is_retried_with_backoff_and_the_same_key() {
    let f = Fixture::new().await;
    f.bank
        .creates
        .lock()
        .expect("lock")
        .extend([Err(server_error()), Ok(accepted())]);
    f.step().await;
    let op = f.stored().await;
    assert_eq!(op.create_attempts, 1);
    let retry_at = t0() + chrono::Duration::seconds(30);
    assert_eq!(op.create_retry_at, Some(retry_at));
    assert_eq!(f.due(DueKind::OperationWake).await, Some(retry_at));
    // Not yet due: no call.
    f.step().await;
    assert_eq!(f.bank.calls_of("create").len(), 1);
    f.clock.set(retry_at);
    f.step().await;
    let calls = f.bank.calls_of("create");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0], calls[1],
        "a retry repeats the same idempotency key"
    );
    assert_eq!(f.stored().await.tracking_id.as_deref(), Some("trk_1"));
}

#[tokio::test]
async fn a_completed_poll_stores_the_iban_and_runs_the_card_step_once() {
    let f = Fixture::new().await;
    f.bank
        .creates
        .lock()
        .expect("lock")
        .push_back(Ok(accepted()));
    f.step().await;
    f.bank
        .polls
        .lock()
        .expect("lock")
        .push_back(Ok(report(BankStatus::Completed)));
    f.bank.cards.lock().expect("lock").push_back(Ok(card()));
    f.clock.set(t0() + chrono::Duration::minutes(31));
    f.step().await;
    let op = f.stored().await;
    assert_eq!(op.state, OperationState::Completed);
    assert_eq!(op.iban.as_deref(), Some("NL91ABNA0417164300"));
    assert_eq!(op.card.card_id.as_deref(), Some("card_1"));
    assert_eq!(f.bank.calls_of("card"), vec![op.card.step_id.clone()]);
    for kind in [
        DueKind::OperationWake,
        DueKind::OperationDeadline,
        DueKind::OperationFailed,
    ] {
        assert_eq!(f.due(kind).await, None, "{kind:?}");
    }
    // Terminal: more steps call nothing.
    f.clock.set(t0() + chrono::Duration::hours(20));
    f.step().await;
    assert_eq!(f.bank.calls_of("card").len(), 1);
    assert_eq!(f.bank.calls_of("poll").len(), 1);
}

#[tokio::test]
async fn the_card_step_backs_off_then_fails_into_step_failed() {
    let f = Fixture::new().await;
    f.bank
        .creates
        .lock()
        .expect("lock")
        .push_back(Ok(accepted()));
    f.step().await;
    f.bank
        .polls
        .lock()
        .expect("lock")
        .push_back(Ok(report(BankStatus::Completed)));
    f.bank.cards.lock().expect("lock").extend([
        Err(server_error()),
        Err(server_error()),
        Err(server_error()),
    ]);
    let mut now = t0() + chrono::Duration::minutes(31);
    f.clock.set(now);
    f.step().await;
    let op = f.stored().await;
    assert_eq!(
        (op.card.attempts, op.state),
        (1, OperationState::InProgress)
    );
    assert_eq!(op.card.retry_at, Some(now + chrono::Duration::seconds(30)));
    now += chrono::Duration::seconds(30);
    f.clock.set(now);
    f.step().await;
    let op = f.stored().await;
    assert_eq!(op.card.retry_at, Some(now + chrono::Duration::seconds(60)));
    now += chrono::Duration::seconds(60);
    f.clock.set(now);
    f.step().await;
    let op = f.stored().await;
    assert_eq!(op.state, OperationState::StepFailed);
    assert_eq!(op.card.attempts, 3);
    assert_eq!(f.due(DueKind::OperationWake).await, None);
    assert_eq!(f.due(DueKind::OperationFailed).await, Some(now));
    let steps = f.bank.calls_of("card");
    assert_eq!(steps.len(), 3);
    assert!(steps.iter().all(|s| *s == op.card.step_id));
}

#[tokio::test]
async fn a_silent_bank_escalates_once_and_polls_slower_after() {
    let f = Fixture::new().await;
    f.bank
        .creates
        .lock()
        .expect("lock")
        .push_back(Ok(accepted()));
    f.step().await;
    let twelve = t0() + chrono::Duration::hours(12);
    f.bank
        .polls
        .lock()
        .expect("lock")
        .extend((0..4).map(|_| Ok(report(BankStatus::InProgress))));
    f.clock.set(twelve);
    let report = f.step().await;
    assert!(report.escalated);
    let op = f.stored().await;
    assert_eq!(op.escalated_at, Some(twelve));
    assert_eq!(op.next_poll_at, Some(twelve + chrono::Duration::hours(2)));
    assert_eq!(f.due(DueKind::OperationDeadline).await, None);
    let later = twelve + chrono::Duration::hours(2);
    f.clock.set(later);
    let report = f.step().await;
    assert!(!report.escalated, "escalation happens once");
    assert_eq!(f.bank.calls_of("poll").len(), 2);
    let op = f.stored().await;
    assert_eq!(op.next_poll_at, Some(later + chrono::Duration::hours(2)));
    // A poll repeating the known status is not history.
    let repeats = op
        .history
        .iter()
        .filter(|t| t.source == StatusSource::Poll)
        .count();
    assert_eq!(repeats, 1, "{:#?}", op.history);
}

#[tokio::test]
async fn ops_commands_refuse_terminal_operations_and_re_drive_failed_steps() {
    let f = Fixture::new().await;
    let cancelled = run_command(
        &f.store,
        &params(),
        &f.shared,
        &f.id,
        OpsCommand::Cancel {
            by: "ops".into(),
            reason: Some("test".into()),
        },
    )
    .await
    .expect("cancel");
    assert_eq!(cancelled.state, OperationState::Cancelled);
    let again = run_command(
        &f.store,
        &params(),
        &f.shared,
        &f.id,
        OpsCommand::Retry { by: "ops".into() },
    )
    .await;
    assert!(
        matches!(again, Err(OpsCommandError::Conflict(_))),
        "{again:?}"
    );
    // A cancelled anchor never calls the bank.
    f.step().await;
    assert!(f.bank.calls_of("create").is_empty());
}

#[tokio::test]
async fn a_status_that_beat_the_create_commit_records_its_tracking_id_and_skips_the_create() {
    let f = Fixture::new().await;
    let request_id = f.stored().await.request_id;
    // The bank answered the create, acctor died before committing it, and the bank's
    // webhook found the operation by its request id.
    let event = crate::store::IncomingOperationEvent {
        event_id: "evt_1".into(),
        tracking_id: "trk_1".into(),
        request_id: request_id.clone(),
        report: crate::domain::operations::ReportedStatus {
            status: BankStatus::InProgress,
            iban: None,
            bic: None,
            reason: None,
        },
        source: StatusSource::Webhook,
        dedup_key: [7; 32],
        received_at: t0(),
    };
    f.store
        .run(move |s| s.ingest_operation_event(&event, Duration::from_secs(900)))
        .await
        .expect("ingest");
    f.step().await;
    let op = f.stored().await;
    assert_eq!(op.tracking_id.as_deref(), Some("trk_1"));
    assert_eq!(op.bank_status, Some(BankStatus::InProgress));
    assert!(
        f.bank.calls_of("create").is_empty(),
        "the bank already has it"
    );
    let poll_at = t0() + chrono::Duration::minutes(30);
    assert_eq!(op.next_poll_at, Some(poll_at));
    assert_eq!(f.due(DueKind::OperationWake).await, Some(poll_at));
    let found = f
        .store
        .run(|s| s.find_operation("trk_1"))
        .await
        .expect("find");
    assert_eq!(
        found,
        Some(f.id.clone()),
        "the tracking id finds it from now on"
    );
}
