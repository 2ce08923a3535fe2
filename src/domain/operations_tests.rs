use chrono::TimeZone;

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0)
        .single()
        .expect("valid time")
}

fn opening(path: OpeningPath) -> Operation {
    Operation::new(
        OpeningDetails {
            customer_id: "cus_1".into(),
            market: "NL".into(),
            segment: Segment::Company,
            legal_name: "Ada BV".into(),
            email: None,
            registration_number: None,
        },
        path,
        t0(),
        chrono::Duration::hours(12),
    )
}

fn report(status: BankStatus) -> ReportedStatus {
    ReportedStatus {
        status,
        iban: (status == BankStatus::Completed).then(|| "NL91ABNA0417164300".to_string()),
        bic: (status == BankStatus::Completed).then(|| "ABNANL2A".to_string()),
        reason: (status == BankStatus::Rejected).then(|| "kyc".to_string()),
    }
}

#[test]
fn ids_sort_by_creation_time_and_have_a_checkable_shape() {
    let early = OperationId::generate(t0());
    let late = OperationId::generate(t0() + chrono::Duration::milliseconds(1));
    assert!(early < late);
    assert!(OperationId::looks_canonical(early.as_str()), "{early}");
    assert!(!OperationId::looks_canonical("op_short"));
}

#[test]
fn a_new_anchor_is_in_progress_without_iban_and_due_at_once() {
    let op = opening(OpeningPath::Async);
    assert_eq!(op.state, OperationState::InProgress);
    assert_eq!((op.iban.as_deref(), op.bic.as_deref()), (None, None));
    assert_ne!(op.request_id, op.card.step_id);
    assert_eq!(op.wake_at(), Some(t0()));
    assert_eq!(op.deadline_at(), Some(t0() + chrono::Duration::hours(12)));
    assert_eq!(op.failed_at(), None);
}

#[test]
fn completed_stores_iban_and_makes_the_card_step_due() {
    let mut op = opening(OpeningPath::Async);
    op.tracking_id = Some("trk_1".into());
    op.next_poll_at = Some(t0() + chrono::Duration::minutes(30));
    let at = t0() + chrono::Duration::minutes(5);
    assert_eq!(
        op.apply_status(&report(BankStatus::Completed), StatusSource::Webhook, at),
        Applied::Changed
    );
    assert_eq!(op.iban.as_deref(), Some("NL91ABNA0417164300"));
    assert_eq!(op.card.state, StepState::Pending);
    assert_eq!(
        op.state,
        OperationState::InProgress,
        "the card step is still to run"
    );
    assert_eq!(
        op.wake_at(),
        Some(at),
        "the step is due now, the poll is gone"
    );
    assert_eq!(op.deadline_at(), None, "the bank decided: no escalation");
}

#[test]
fn terminal_and_decided_operations_ignore_every_later_status() {
    let mut op = opening(OpeningPath::Async);
    op.apply_status(&report(BankStatus::Completed), StatusSource::Webhook, t0());
    let before = (op.state, op.bank_status, op.iban.clone());
    for status in BankStatus::ALL {
        let applied = op.apply_status(&report(status), StatusSource::Poll, t0());
        assert!(
            matches!(applied, Applied::Ignored(_)),
            "{status}: {applied:?}"
        );
    }
    assert_eq!(before, (op.state, op.bank_status, op.iban.clone()));

    let mut rejected = opening(OpeningPath::Async);
    rejected.apply_status(&report(BankStatus::Rejected), StatusSource::Webhook, t0());
    assert_eq!(rejected.state, OperationState::Rejected);
    assert_eq!(rejected.reject_reason.as_deref(), Some("kyc"));
    let applied = rejected.apply_status(&report(BankStatus::Completed), StatusSource::Poll, t0());
    assert!(matches!(applied, Applied::Ignored(_)));
    assert_eq!(rejected.state, OperationState::Rejected);
    assert_eq!(rejected.iban, None);
    assert_eq!(rejected.wake_at(), None);
}

#[test]
fn an_older_status_after_a_newer_one_is_ignored_and_recorded() {
    let mut op = opening(OpeningPath::Async);
    op.apply_status(&report(BankStatus::InProgress), StatusSource::Webhook, t0());
    let applied = op.apply_status(&report(BankStatus::Initiated), StatusSource::Webhook, t0());
    assert!(matches!(applied, Applied::Ignored(_)), "{applied:?}");
    assert_eq!(op.bank_status, Some(BankStatus::InProgress));
    let last = op.history.last().expect("recorded");
    assert!(last.note.starts_with("ignored"), "{last:?}");
    assert_eq!(last.status, Some(BankStatus::Initiated));
}

#[test]
fn a_cancelled_operation_has_no_timers() {
    let mut op = opening(OpeningPath::Async);
    op.tracking_id = Some("trk".into());
    op.next_poll_at = Some(t0());
    op.transition(
        OperationState::Cancelled,
        t0(),
        StatusSource::Ops,
        None,
        "cancelled",
    );
    assert_eq!(
        (op.wake_at(), op.deadline_at(), op.failed_at()),
        (None, None, None)
    );
    assert_eq!(op.finished_at, Some(t0()));
}
