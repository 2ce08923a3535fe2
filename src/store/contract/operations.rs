//! Operations: creating an anchor (and refusing a second open one per customer, even
//! under a race), finding and listing, per-state counts, the inbox of bank statuses
//! (dedup, routing by request id and tracking id, statuses kept for unknown tracking ids
//! and adopted later), version-checked commits that move the due entries, and what a
//! restart finds.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{contract_tests, minutes, t0, Fixture, TTL};
use crate::domain::incidents::{IncidentKind, IncidentQuery, IncidentState};
use crate::domain::operations::{
    BankStatus, OpeningDetails, OpeningPath, Operation, OperationId, OperationQuery,
    OperationState, ReportedStatus, Segment, StatusSource, StepState,
};
use crate::store::{
    CreateOutcome, DueKind, IncomingOperationEvent, OperationCommit, OperationIncident,
    OperationIngest, OperationReceipt, Store, StoreError,
};

contract_tests! {
    create_writes_the_anchor_its_keys_and_its_due_entries,
    a_customer_with_an_open_operation_gets_it_back_unless_forced,
    the_same_anchor_created_twice_is_written_once,
    concurrent_creates_for_one_customer_create_exactly_one,
    operations_are_found_by_id_request_id_and_tracking_id,
    operations_list_newest_first_with_filters_and_paging,
    counts_follow_creates_and_commits,
    statuses_route_by_request_id_then_by_tracking_id,
    statuses_are_deduplicated_within_the_ttl_only,
    statuses_for_unknown_ids_are_kept_until_a_commit_adopts_them,
    a_commit_consumes_events_bumps_the_version_and_moves_due_entries,
    a_commit_from_a_stale_read_conflicts_and_writes_nothing,
    a_commit_of_an_unknown_operation_is_not_found,
    a_terminal_commit_frees_the_customer_for_a_new_opening,
    operations_survive_a_reopen,
    a_commit_opens_and_resolves_the_operations_incidents_with_alerts,
}

/// An async opening for `customer` in `market`, created at `at`, escalating 12 h later.
fn opening(customer: &str, market: &str, at: DateTime<Utc>) -> Operation {
    Operation::new(
        OpeningDetails {
            customer_id: customer.into(),
            market: market.into(),
            segment: Segment::Company,
            legal_name: "Acme BV".into(),
            email: None,
            registration_number: None,
        },
        OpeningPath::Async,
        at,
        chrono::Duration::hours(12),
    )
}

/// A bank status for (`tracking_id`, `request_id`), deduplicated by (request id,
/// status) as the ingest path does.
fn status(
    tracking_id: &str,
    request_id: &str,
    status: BankStatus,
    at: DateTime<Utc>,
) -> IncomingOperationEvent {
    let dedup_key: [u8; 32] =
        Sha256::digest(format!("{request_id}\u{1f}{}", status.as_str())).into();
    IncomingOperationEvent {
        event_id: format!("evt-{request_id}-{}-{}", status.as_str(), at.timestamp()),
        tracking_id: tracking_id.into(),
        request_id: request_id.into(),
        report: ReportedStatus {
            status,
            iban: None,
            bic: None,
            reason: None,
        },
        source: StatusSource::Webhook,
        dedup_key,
        received_at: at,
    }
}

/// The record a create wrote; panics on `Existing`.
fn created(outcome: CreateOutcome) -> Operation {
    match outcome {
        CreateOutcome::Created(operation) => operation,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// Creates `operation` (not forced) and returns it as stored.
fn create(store: &dyn Store, operation: &Operation) -> Operation {
    created(store.create_operation(operation, false).unwrap())
}

/// Commits `operation` (as edited from a read) consuming `consumed`, no incidents.
fn commit(store: &dyn Store, operation: &Operation, consumed: Vec<u64>) -> OperationReceipt {
    store
        .commit_operation(&OperationCommit {
            operation: operation.clone(),
            consumed,
            incidents: Vec::new(),
        })
        .unwrap()
}

/// The sequence number of an accepted status, and where it went.
fn accepted(outcome: OperationIngest) -> (u64, Option<OperationId>) {
    match outcome {
        OperationIngest::Accepted { seq, operation_id } => (seq, operation_id),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

/// The operation's pending events' sequence numbers.
fn pending(store: &dyn Store, id: &OperationId) -> Vec<u64> {
    store
        .pending_operation_events(id)
        .unwrap()
        .iter()
        .map(|event| event.seq)
        .collect()
}

/// When the operation's entry of `kind` is due, if it has one.
fn due_of(store: &dyn Store, kind: DueKind, id: &OperationId) -> Option<DateTime<Utc>> {
    store
        .due_entry_of(kind, id.as_str())
        .unwrap()
        .map(|entry| entry.due_at)
}

/// An operation's (wake, deadline, failed) due times.
type Timers = (
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// The operation's (wake, deadline, failed) due times.
fn timers(store: &dyn Store, id: &OperationId) -> Timers {
    (
        due_of(store, DueKind::OperationWake, id),
        due_of(store, DueKind::OperationDeadline, id),
        due_of(store, DueKind::OperationFailed, id),
    )
}

/// The ids a list query returns, in order.
fn listed(store: &dyn Store, query: OperationQuery) -> Vec<OperationId> {
    store
        .list_operations(&query)
        .unwrap()
        .into_iter()
        .map(|operation| operation.id)
        .collect()
}

/// The operation moved to a terminal `completed`: account opened, card issued.
fn completed(mut operation: Operation, at: DateTime<Utc>) -> Operation {
    operation.card.state = StepState::Done;
    operation.transition(
        OperationState::Completed,
        at,
        StatusSource::Acctor,
        None,
        "card issued",
    );
    operation
}

fn create_writes_the_anchor_its_keys_and_its_due_entries(f: &mut Fixture) {
    let store = f.store().as_ref();
    let op = opening("cust-1", "NL", t0());
    let stored = create(store, &op);
    assert_eq!(stored.version, 1, "stored as given, version 1");
    assert_eq!(
        stored,
        Operation {
            version: 1,
            ..op.clone()
        }
    );
    assert_eq!(store.get_operation(&op.id).unwrap(), Some(stored));
    assert_eq!(
        store.find_operation(&op.request_id).unwrap(),
        Some(op.id.clone())
    );
    // Due at once (the create call is to be made), overdue at its escalation time.
    assert_eq!(
        timers(store, &op.id),
        (Some(t0()), Some(t0() + chrono::Duration::hours(12)), None)
    );
    let wake = store.due_entries(t0(), DueKind::OperationWake, 10).unwrap();
    assert_eq!(wake.len(), 1);
    assert_eq!(wake[0].subject, op.id.as_str());
    assert!(store
        .due_entries(t0(), DueKind::OperationDeadline, 10)
        .unwrap()
        .is_empty());
}

fn a_customer_with_an_open_operation_gets_it_back_unless_forced(f: &mut Fixture) {
    let store = f.store().as_ref();
    let first = create(store, &opening("cust-1", "NL", t0()));

    let second = opening("cust-1", "NL", t0() + minutes(1));
    assert_eq!(
        store.create_operation(&second, false).unwrap(),
        CreateOutcome::Existing(first.clone())
    );
    assert_eq!(
        store.get_operation(&second.id).unwrap(),
        None,
        "nothing written"
    );
    assert_eq!(store.find_operation(&second.request_id).unwrap(), None);
    assert_eq!(timers(store, &second.id), (None, None, None));
    assert_eq!(
        store.count_operations().unwrap(),
        [(OperationState::InProgress, 1)]
    );

    // Forced: a second opening in progress for the same customer.
    let second = created(store.create_operation(&second, true).unwrap());
    assert_eq!(
        store.count_operations().unwrap(),
        [(OperationState::InProgress, 2)]
    );
    // Another customer is not affected.
    create(store, &opening("cust-2", "NL", t0() + minutes(2)));
    // With several open, the newest comes back.
    let third = opening("cust-1", "NL", t0() + minutes(3));
    assert_eq!(
        store.create_operation(&third, false).unwrap(),
        CreateOutcome::Existing(second)
    );
}

// Not spelled out by the trait: a create retried with the same record (its first
// answer lost) finds it, forced or not, and writes nothing more.
fn the_same_anchor_created_twice_is_written_once(f: &mut Fixture) {
    let store = f.store().as_ref();
    let op = opening("cust-1", "NL", t0());
    let stored = created(store.create_operation(&op, true).unwrap());
    for force in [false, true] {
        assert_eq!(
            store.create_operation(&op, force).unwrap(),
            CreateOutcome::Existing(stored.clone())
        );
    }
    assert_eq!(
        store.count_operations().unwrap(),
        [(OperationState::InProgress, 1)]
    );
}

fn concurrent_creates_for_one_customer_create_exactly_one(f: &mut Fixture) {
    let store = f.store();
    let threads: Vec<_> = (0..6)
        .map(|n| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                let op = opening("cust-race", "NL", t0() + minutes(n));
                store.create_operation(&op, false).unwrap()
            })
        })
        .collect();
    let outcomes: Vec<CreateOutcome> = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    let winners: Vec<&Operation> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            CreateOutcome::Created(op) => Some(op),
            CreateOutcome::Existing(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if let CreateOutcome::Existing(existing) = outcome {
            assert_eq!(existing.id, winners[0].id);
        }
    }
    let store = store.as_ref();
    assert_eq!(
        store.count_operations().unwrap(),
        [(OperationState::InProgress, 1)]
    );
    assert_eq!(
        listed(
            store,
            OperationQuery {
                customer_id: Some("cust-race".into()),
                limit: 10,
                ..Default::default()
            }
        ),
        [winners[0].id.clone()]
    );
}

fn operations_are_found_by_id_request_id_and_tracking_id(f: &mut Fixture) {
    let store = f.store().as_ref();
    let mut op = create(store, &opening("cust-1", "NL", t0()));
    assert_eq!(
        store.find_operation(op.id.as_str()).unwrap(),
        Some(op.id.clone())
    );
    assert_eq!(
        store.find_operation(&op.request_id).unwrap(),
        Some(op.id.clone())
    );
    assert_eq!(store.find_operation("trk-1").unwrap(), None);

    op.tracking_id = Some("trk-1".into());
    op.record(
        t0() + minutes(1),
        StatusSource::Create,
        None,
        "create answered",
    );
    commit(store, &op, Vec::new());
    assert_eq!(store.find_operation("trk-1").unwrap(), Some(op.id.clone()));
    assert_eq!(
        store.find_operation(&op.request_id).unwrap(),
        Some(op.id.clone())
    );
    assert_eq!(store.find_operation("nothing-by-this-name").unwrap(), None);
    let unknown = OperationId::generate(t0());
    assert_eq!(store.find_operation(unknown.as_str()).unwrap(), None);
    assert_eq!(store.get_operation(&unknown).unwrap(), None);
}

fn operations_list_newest_first_with_filters_and_paging(f: &mut Fixture) {
    let store = f.store().as_ref();
    // Five operations a minute apart: customers c0..c4, NL except the odd ones (BE).
    let ops: Vec<Operation> = (0..5)
        .map(|n| {
            let market = if n % 2 == 0 { "NL" } else { "BE" };
            create(store, &opening(&format!("c{n}"), market, t0() + minutes(n)))
        })
        .collect();
    let ids = |indexes: &[usize]| -> Vec<OperationId> {
        indexes.iter().map(|&i| ops[i].id.clone()).collect()
    };
    commit(
        store,
        &completed(ops[1].clone(), t0() + minutes(10)),
        Vec::new(),
    );
    commit(
        store,
        &completed(ops[3].clone(), t0() + minutes(10)),
        Vec::new(),
    );

    let all = OperationQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(listed(store, all.clone()), ids(&[4, 3, 2, 1, 0]));
    assert_eq!(
        listed(
            store,
            OperationQuery {
                state: Some(OperationState::Completed),
                ..all.clone()
            }
        ),
        ids(&[3, 1])
    );
    assert_eq!(
        listed(
            store,
            OperationQuery {
                state: Some(OperationState::InProgress),
                ..all.clone()
            }
        ),
        ids(&[4, 2, 0])
    );
    assert_eq!(
        listed(
            store,
            OperationQuery {
                market: Some("BE".into()),
                ..all.clone()
            }
        ),
        ids(&[3, 1])
    );
    assert_eq!(
        listed(
            store,
            OperationQuery {
                customer_id: Some("c2".into()),
                ..all.clone()
            }
        ),
        ids(&[2])
    );
    // Age filters are inclusive.
    assert_eq!(
        listed(
            store,
            OperationQuery {
                created_before: Some(t0() + minutes(2)),
                ..all.clone()
            }
        ),
        ids(&[2, 1, 0])
    );
    assert_eq!(
        listed(
            store,
            OperationQuery {
                created_after: Some(t0() + minutes(2)),
                ..all.clone()
            }
        ),
        ids(&[4, 3, 2])
    );
    assert_eq!(
        listed(
            store,
            OperationQuery {
                created_after: Some(t0() + minutes(1)),
                created_before: Some(t0() + minutes(3)),
                market: Some("NL".into()),
                ..all.clone()
            }
        ),
        ids(&[2])
    );
    // Pages of two, each continuing after the last one's id.
    let page = |after: Option<OperationId>| {
        listed(
            store,
            OperationQuery {
                after,
                limit: 2,
                ..Default::default()
            },
        )
    };
    assert_eq!(page(None), ids(&[4, 3]));
    assert_eq!(page(Some(ops[3].id.clone())), ids(&[2, 1]));
    assert_eq!(page(Some(ops[1].id.clone())), ids(&[0]));
    assert_eq!(page(Some(ops[0].id.clone())), ids(&[]));
    // Paging combines with filters.
    assert_eq!(
        listed(
            store,
            OperationQuery {
                market: Some("NL".into()),
                after: Some(ops[4].id.clone()),
                limit: 1,
                ..Default::default()
            }
        ),
        ids(&[2])
    );
    // Whole records come back.
    assert_eq!(
        store
            .list_operations(&OperationQuery {
                customer_id: Some("c0".into()),
                limit: 1,
                ..Default::default()
            })
            .unwrap(),
        [ops[0].clone()]
    );
}

fn counts_follow_creates_and_commits(f: &mut Fixture) {
    let store = f.store().as_ref();
    assert_eq!(store.count_operations().unwrap(), []);
    let a = create(store, &opening("c-a", "NL", t0()));
    let b = create(store, &opening("c-b", "NL", t0() + minutes(1)));
    create(store, &opening("c-c", "NL", t0() + minutes(2)));
    assert_eq!(
        store.count_operations().unwrap(),
        [(OperationState::InProgress, 3)]
    );

    commit(store, &completed(a, t0() + minutes(5)), Vec::new());
    let mut b = b;
    b.transition(
        OperationState::Failed,
        t0() + minutes(5),
        StatusSource::Create,
        None,
        "bank refused the request",
    );
    let b = commit(store, &b, Vec::new()).operation;
    assert_eq!(
        store.count_operations().unwrap(),
        [
            (OperationState::InProgress, 1),
            (OperationState::Completed, 1),
            (OperationState::Failed, 1),
        ]
    );
    // A commit that keeps the state changes no count; a re-drive moves it back.
    let mut b = commit(store, &b, Vec::new()).operation;
    b.state = OperationState::InProgress;
    b.finished_at = None;
    commit(store, &b, Vec::new());
    assert_eq!(
        store.count_operations().unwrap(),
        [
            (OperationState::InProgress, 2),
            (OperationState::Completed, 1),
        ]
    );
}

fn statuses_route_by_request_id_then_by_tracking_id(f: &mut Fixture) {
    let store = f.store().as_ref();
    let mut op = create(store, &opening("cust-1", "NL", t0()));
    let other = create(store, &opening("cust-2", "NL", t0() + minutes(1)));

    // Before the create call answered: only the request id is known.
    let (first, to) = accepted(
        store
            .ingest_operation_event(
                &status("trk-1", &op.request_id, BankStatus::Initiated, t0()),
                TTL,
            )
            .unwrap(),
    );
    assert_eq!(to, Some(op.id.clone()));
    assert_eq!(pending(store, &op.id), [first]);
    let events = store.pending_operation_events(&op.id).unwrap();
    assert_eq!(events[0].tracking_id, "trk-1");
    assert_eq!(events[0].request_id, op.request_id);
    assert_eq!(events[0].report.status, BankStatus::Initiated);
    assert_eq!(events[0].source, StatusSource::Webhook);
    assert_eq!(events[0].received_at, t0());

    op.tracking_id = Some("trk-1".into());
    let op = commit(store, &op, vec![first]).operation;
    assert_eq!(pending(store, &op.id), Vec::<u64>::new());

    // The tracking id wins over the request id (which here names another operation).
    let (second, to) = accepted(
        store
            .ingest_operation_event(
                &status(
                    "trk-1",
                    &other.request_id,
                    BankStatus::InProgress,
                    t0() + minutes(2),
                ),
                TTL,
            )
            .unwrap(),
    );
    assert_eq!(to, Some(op.id.clone()));
    assert!(second > first, "sequence numbers grow");
    assert_eq!(pending(store, &op.id), [second]);
    assert_eq!(pending(store, &other.id), Vec::<u64>::new());
    assert_eq!(
        store.operations_with_pending_events().unwrap(),
        std::slice::from_ref(&op.id)
    );
}

fn statuses_are_deduplicated_within_the_ttl_only(f: &mut Fixture) {
    let store = f.store().as_ref();
    let op = create(store, &opening("cust-1", "NL", t0()));
    let initiated = |at| status("trk-1", &op.request_id, BankStatus::Initiated, at);

    let (first, _) = accepted(store.ingest_operation_event(&initiated(t0()), TTL).unwrap());
    assert_eq!(
        store
            .ingest_operation_event(&initiated(t0() + minutes(14)), TTL)
            .unwrap(),
        OperationIngest::Duplicate {
            operation_id: Some(op.id.clone())
        }
    );
    // A new status for the same request is not a duplicate.
    let (second, _) = accepted(
        store
            .ingest_operation_event(
                &status("trk-1", &op.request_id, BankStatus::InProgress, t0()),
                TTL,
            )
            .unwrap(),
    );
    assert_eq!(pending(store, &op.id), [first, second]);

    // Past the TTL, with or without a purge in between, the same status is new again.
    let (third, _) = accepted(
        store
            .ingest_operation_event(&initiated(t0() + minutes(16)), TTL)
            .unwrap(),
    );
    assert!(matches!(
        store
            .ingest_operation_event(&initiated(t0() + minutes(20)), TTL)
            .unwrap(),
        OperationIngest::Duplicate { .. }
    ));
    // The refreshed key lives until t0+31; the other one expired at t0+15.
    assert_eq!(store.purge_expired_dedup(t0() + minutes(20)).unwrap(), 1);
    assert!(matches!(
        store
            .ingest_operation_event(&initiated(t0() + minutes(21)), TTL)
            .unwrap(),
        OperationIngest::Duplicate { .. }
    ));
    assert_eq!(store.purge_expired_dedup(t0() + minutes(31)).unwrap(), 1);
    let (fourth, _) = accepted(
        store
            .ingest_operation_event(&initiated(t0() + minutes(25)), TTL)
            .unwrap(),
    );
    assert_eq!(pending(store, &op.id), [first, second, third, fourth]);
    // Operation statuses do not count in the webhook inbox.
    assert_eq!(store.inbox_depth().unwrap(), 0);
}

fn statuses_for_unknown_ids_are_kept_until_a_commit_adopts_them(f: &mut Fixture) {
    let store = f.store().as_ref();
    let (a, to) = accepted(
        store
            .ingest_operation_event(
                &status("trk-9", "req-elsewhere", BankStatus::Initiated, t0()),
                TTL,
            )
            .unwrap(),
    );
    assert_eq!(to, None);
    let (b, _) = accepted(
        store
            .ingest_operation_event(
                &status("trk-9", "req-elsewhere", BankStatus::InProgress, t0()),
                TTL,
            )
            .unwrap(),
    );
    let (c, _) = accepted(
        store
            .ingest_operation_event(
                &status("trk-other", "req-other", BankStatus::Initiated, t0()),
                TTL,
            )
            .unwrap(),
    );
    let unrouted = store.unrouted_operation_events(10).unwrap();
    assert_eq!(
        unrouted.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [a, b, c],
        "oldest first"
    );
    assert_eq!(
        store
            .unrouted_operation_events(2)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [a, b]
    );
    assert_eq!(unrouted[0].tracking_id, "trk-9");
    assert_eq!(store.operations_with_pending_events().unwrap(), []);

    // The commit that records the tracking id adopts what was kept for it.
    let mut op = create(store, &opening("cust-1", "NL", t0()));
    op.tracking_id = Some("trk-9".into());
    let receipt = commit(store, &op, Vec::new());
    assert_eq!(receipt.adopted, 2);
    assert_eq!(receipt.operation.version, 2);
    assert_eq!(pending(store, &op.id), [a, b]);
    assert_eq!(
        store
            .unrouted_operation_events(10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [c]
    );
    assert_eq!(
        store.operations_with_pending_events().unwrap(),
        std::slice::from_ref(&op.id)
    );
    // A later commit keeping the tracking id adopts nothing more.
    assert_eq!(commit(store, &receipt.operation, vec![a]).adopted, 0);
    assert_eq!(pending(store, &op.id), [b]);
}

fn a_commit_consumes_events_bumps_the_version_and_moves_due_entries(f: &mut Fixture) {
    let store = f.store().as_ref();
    let op = create(store, &opening("cust-1", "NL", t0()));
    let ingest = |status_: BankStatus| {
        accepted(
            store
                .ingest_operation_event(&status("trk-1", &op.request_id, status_, t0()), TTL)
                .unwrap(),
        )
        .0
    };
    let first = ingest(BankStatus::Initiated);
    let second = ingest(BankStatus::InProgress);

    // The create answered: the next wake-up is the first poll.
    let mut next = op.clone();
    next.tracking_id = Some("trk-1".into());
    next.next_poll_at = Some(t0() + minutes(30));
    next.apply_status(
        &ReportedStatus {
            status: BankStatus::Initiated,
            iban: None,
            bic: None,
            reason: None,
        },
        StatusSource::Webhook,
        t0() + minutes(1),
    );
    let receipt = commit(store, &next, vec![first]);
    assert_eq!(receipt.operation.version, 2);
    assert_eq!(receipt.operation, Operation { version: 2, ..next });
    assert_eq!(
        store.get_operation(&op.id).unwrap(),
        Some(receipt.operation.clone())
    );
    assert_eq!(pending(store, &op.id), [second]);
    assert_eq!(
        timers(store, &op.id),
        (
            Some(t0() + minutes(30)),
            Some(t0() + chrono::Duration::hours(12)),
            None
        )
    );

    // The card step failed for good: waiting for ops, nothing else scheduled.
    let mut failed = receipt.operation;
    failed.card.state = StepState::Failed;
    failed.bank_status = Some(BankStatus::Completed);
    failed.transition(
        OperationState::StepFailed,
        t0() + minutes(40),
        StatusSource::Acctor,
        None,
        "card step failed",
    );
    let failed = commit(store, &failed, vec![second]).operation;
    assert_eq!(failed.version, 3);
    assert_eq!(pending(store, &op.id), Vec::<u64>::new());
    assert_eq!(store.operations_with_pending_events().unwrap(), []);
    assert_eq!(
        timers(store, &op.id),
        (None, None, Some(t0() + minutes(40)))
    );
    assert_eq!(
        store
            .due_entries(t0() + minutes(40), DueKind::OperationFailed, 10)
            .unwrap()
            .len(),
        1
    );

    // Completed: no entries at all.
    let done = commit(store, &completed(failed, t0() + minutes(50)), Vec::new()).operation;
    assert_eq!(done.version, 4);
    assert_eq!(timers(store, &op.id), (None, None, None));
}

fn a_commit_from_a_stale_read_conflicts_and_writes_nothing(f: &mut Fixture) {
    let store = f.store().as_ref();
    let op = create(store, &opening("cust-1", "NL", t0()));
    let (seq, _) = accepted(
        store
            .ingest_operation_event(
                &status("trk-1", &op.request_id, BankStatus::Initiated, t0()),
                TTL,
            )
            .unwrap(),
    );
    let mut first = op.clone();
    first.next_poll_at = Some(t0() + minutes(30));
    first.tracking_id = Some("trk-1".into());
    let stored = commit(store, &first, Vec::new()).operation;

    // Built from the version-1 read: refused, whatever it carries.
    let mut stale = completed(op.clone(), t0() + minutes(5));
    stale.tracking_id = Some("trk-2".into());
    let error = store
        .commit_operation(&OperationCommit {
            operation: stale,
            consumed: vec![seq],
            incidents: Vec::new(),
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::VersionConflict {
                read: 1,
                stored: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(store.get_operation(&op.id).unwrap(), Some(stored));
    assert_eq!(pending(store, &op.id), [seq]);
    assert_eq!(store.find_operation("trk-2").unwrap(), None);
    assert_eq!(
        timers(store, &op.id),
        (
            Some(t0() + minutes(30)),
            Some(t0() + chrono::Duration::hours(12)),
            None
        )
    );
    assert_eq!(
        store.count_operations().unwrap(),
        [(OperationState::InProgress, 1)]
    );
    // The customer still has its opening in progress.
    assert!(matches!(
        store
            .create_operation(&opening("cust-1", "NL", t0() + minutes(6)), false)
            .unwrap(),
        CreateOutcome::Existing(_)
    ));
}

fn a_commit_of_an_unknown_operation_is_not_found(f: &mut Fixture) {
    let store = f.store().as_ref();
    let ghost = opening("cust-1", "NL", t0());
    let error = store
        .commit_operation(&OperationCommit {
            operation: ghost.clone(),
            consumed: Vec::new(),
            incidents: Vec::new(),
        })
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::OperationNotFound(id) if *id == ghost.id),
        "{error:?}"
    );
    assert_eq!(store.get_operation(&ghost.id).unwrap(), None);
    assert_eq!(timers(store, &ghost.id), (None, None, None));
}

fn a_terminal_commit_frees_the_customer_for_a_new_opening(f: &mut Fixture) {
    let store = f.store().as_ref();
    let first = create(store, &opening("cust-1", "NL", t0()));

    // step_failed is not terminal: ops may re-drive it, so it still counts as open.
    let mut failed = first.clone();
    failed.transition(
        OperationState::StepFailed,
        t0() + minutes(1),
        StatusSource::Acctor,
        None,
        "card step failed",
    );
    let failed = commit(store, &failed, Vec::new()).operation;
    assert_eq!(
        store
            .create_operation(&opening("cust-1", "NL", t0() + minutes(2)), false)
            .unwrap(),
        CreateOutcome::Existing(failed.clone())
    );

    let mut cancelled = failed;
    cancelled.transition(
        OperationState::Cancelled,
        t0() + minutes(3),
        StatusSource::Ops,
        None,
        "cancelled by ops",
    );
    commit(store, &cancelled, Vec::new());
    let second = opening("cust-1", "NL", t0() + minutes(4));
    assert_eq!(create(store, &second).id, second.id);
}

fn operations_survive_a_reopen(f: &mut Fixture) {
    let (op, kept, routed) = {
        let store = f.store().as_ref();
        let op = create(store, &opening("cust-1", "NL", t0()));
        let (routed, _) = accepted(
            store
                .ingest_operation_event(
                    &status("trk-1", &op.request_id, BankStatus::Initiated, t0()),
                    TTL,
                )
                .unwrap(),
        );
        let (kept, _) = accepted(
            store
                .ingest_operation_event(
                    &status("trk-other", "req-other", BankStatus::Initiated, t0()),
                    TTL,
                )
                .unwrap(),
        );
        let mut next = op;
        next.tracking_id = Some("trk-1".into());
        next.next_poll_at = Some(t0() + minutes(30));
        let op = commit(store, &next, Vec::new()).operation;
        (op, kept, routed)
    };
    f.durable();
    f.reopen();
    let store = f.store().as_ref();
    assert_eq!(store.get_operation(&op.id).unwrap(), Some(op.clone()));
    assert_eq!(store.find_operation("trk-1").unwrap(), Some(op.id.clone()));
    assert_eq!(
        store.find_operation(&op.request_id).unwrap(),
        Some(op.id.clone())
    );
    assert_eq!(pending(store, &op.id), [routed]);
    assert_eq!(
        store
            .unrouted_operation_events(10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        [kept]
    );
    assert_eq!(
        store.count_operations().unwrap(),
        [(OperationState::InProgress, 1)]
    );
    assert_eq!(
        timers(store, &op.id),
        (
            Some(t0() + minutes(30)),
            Some(t0() + chrono::Duration::hours(12)),
            None
        )
    );
    // The dedup record and the in-progress entry came back too.
    assert!(matches!(
        store
            .ingest_operation_event(
                &status(
                    "trk-1",
                    &op.request_id,
                    BankStatus::Initiated,
                    t0() + minutes(1)
                ),
                TTL,
            )
            .unwrap(),
        OperationIngest::Duplicate { .. }
    ));
    assert!(matches!(
        store
            .create_operation(&opening("cust-1", "NL", t0() + minutes(2)), false)
            .unwrap(),
        CreateOutcome::Existing(_)
    ));
    // Sequence numbers keep growing after a restart.
    let (later, _) = accepted(
        store
            .ingest_operation_event(
                &status("trk-1", &op.request_id, BankStatus::InProgress, t0()),
                TTL,
            )
            .unwrap(),
    );
    assert!(later > kept && later > routed);
}

// Written against today's incident API; the merge with the incident-subject refactor
// switches the kind to an operation kind (`OperationStepFailed`) and the query to the
// operation's subject, then drops the `#[ignore]`.
fn a_commit_opens_and_resolves_the_operations_incidents_with_alerts(f: &mut Fixture) {
    let store = f.store().as_ref();
    let op = create(store, &opening("cust-1", "NL", t0()));
    let mut failed = op.clone();
    failed.transition(
        OperationState::StepFailed,
        t0() + minutes(1),
        StatusSource::Acctor,
        None,
        "card step failed",
    );
    let failed = store
        .commit_operation(&OperationCommit {
            operation: failed,
            consumed: Vec::new(),
            incidents: vec![OperationIncident::Open {
                kind: IncidentKind::OperationStepFailed,
                details: serde_json::json!({ "operation_id": op.id.as_str() }),
                notify: true,
            }],
        })
        .unwrap()
        .operation;
    let open = store
        .list_incidents(&IncidentQuery {
            state: IncidentState::Open,
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].operation_id.as_ref(), Some(&op.id));
    assert_eq!(open[0].account_id, None);
    assert_eq!(open[0].kind, IncidentKind::OperationStepFailed);
    assert_eq!(open[0].opened_at, t0() + minutes(1));
    // A failed commit writes no incident either: the stale version is refused whole.
    let stale = store.commit_operation(&OperationCommit {
        operation: op.clone(),
        consumed: Vec::new(),
        incidents: vec![OperationIncident::Open {
            kind: IncidentKind::OperationFailed,
            details: serde_json::json!({}),
            notify: true,
        }],
    });
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { .. })),
        "{stale:?}"
    );
    assert_eq!(open[0].details["operation_id"], op.id.as_str());
    assert_eq!(store.pending_outbox(10).unwrap().len(), 1);

    let mut retried = failed;
    retried.state = OperationState::InProgress;
    retried.finished_at = None;
    retried.record(t0() + minutes(2), StatusSource::Ops, None, "retry");
    store
        .commit_operation(&OperationCommit {
            operation: retried,
            consumed: Vec::new(),
            incidents: vec![OperationIncident::Resolve {
                kind: IncidentKind::OperationStepFailed,
                notify: true,
            }],
        })
        .unwrap();
    let resolved = store
        .list_incidents(&IncidentQuery {
            state: IncidentState::Resolved,
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].resolved_at, Some(t0() + minutes(2)));
    assert_eq!(store.pending_outbox(10).unwrap().len(), 2);
}
