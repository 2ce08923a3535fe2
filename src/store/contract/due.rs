//! The due index: its generic operations (order, due reads, per-kind reads,
//! compare-and-set rescheduling, removal, next due, reopen) and the retry records kept
//! in it (indexed by due time, rescheduled only while current).

use chrono::{DateTime, Utc};

use super::{account, contract_tests, minutes, ms, sync, t0, Fixture};
use crate::domain::{Account, SyncGaveUp};
use crate::store::{ApplyMode, DueEntry, DueKind, RetryRecord, StoreError};

contract_tests! {
    retry_records_index_by_due_time_and_leave_with_a_commit,
    rescheduling_a_retry_moves_or_drops_it_only_while_it_is_current,
    due_entries_of_a_kind_come_earliest_first_with_ties_by_subject,
    due_reads_of_a_kind_stop_at_their_time_and_at_limit,
    scheduling_replaces_the_subjects_entry_and_removing_takes_it_out,
    rescheduling_is_a_compare_and_set_on_the_current_entry,
    next_due_is_the_earliest_entry_of_the_kind,
    due_entries_survive_reopen,
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

fn retry_records_index_by_due_time_and_leave_with_a_commit(f: &mut Fixture) {
    let store = f.store();
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
        cause: crate::domain::GaveUpCause::AttemptsExhausted,
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

fn rescheduling_a_retry_moves_or_drops_it_only_while_it_is_current(f: &mut Fixture) {
    let store = f.store();
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

fn entry(kind: DueKind, subject: &str, due_at: DateTime<Utc>, payload: &str) -> DueEntry {
    DueEntry {
        kind,
        subject: subject.to_string(),
        due_at,
        payload: payload.as_bytes().to_vec(),
    }
}

/// (kind, subject, due_at) of each entry, to compare orders at a glance.
fn summary(entries: &[DueEntry]) -> Vec<(DueKind, &str, DateTime<Utc>)> {
    entries
        .iter()
        .map(|e| (e.kind, e.subject.as_str(), e.due_at))
        .collect()
}

fn due_entries_of_a_kind_come_earliest_first_with_ties_by_subject(f: &mut Fixture) {
    let store = f.store();
    // Scheduled out of order, several at the same millisecond.
    for e in [
        entry(DueKind::Outbox, "a", t0() + minutes(2), ""),
        entry(DueKind::Poll, "z", t0() + minutes(1), ""),
        entry(DueKind::Retry, "b", t0() + minutes(1), "rb"),
        entry(DueKind::Outbox, "b", t0() + minutes(1), ""),
        entry(DueKind::Retry, "a", t0() + minutes(1), "ra"),
        entry(DueKind::Poll, "c", t0(), ""),
    ] {
        store.schedule_due(&e).unwrap();
    }
    let read = |kind| store.due_entries(t0() + minutes(10), kind, 10).unwrap();
    let retries = read(DueKind::Retry);
    assert_eq!(
        summary(&retries),
        [
            (DueKind::Retry, "a", t0() + minutes(1)),
            (DueKind::Retry, "b", t0() + minutes(1)),
        ]
    );
    assert_eq!(
        summary(&read(DueKind::Poll)),
        [
            (DueKind::Poll, "c", t0()),
            (DueKind::Poll, "z", t0() + minutes(1)),
        ]
    );
    assert_eq!(
        summary(&read(DueKind::Outbox)),
        [
            (DueKind::Outbox, "b", t0() + minutes(1)),
            (DueKind::Outbox, "a", t0() + minutes(2)),
        ]
    );
    // Payloads come back with their entries.
    assert_eq!(retries[0].payload, b"ra");
    assert_eq!(retries[1].payload, b"rb");
    // The same read again gives the same order (nothing depends on write order).
    assert_eq!(read(DueKind::Retry), retries);
}

fn due_reads_of_a_kind_stop_at_their_time_and_at_limit(f: &mut Fixture) {
    let store = f.store();
    for e in [
        entry(DueKind::Retry, "r1", t0(), ""),
        entry(DueKind::Outbox, "o1", t0(), ""),
        entry(DueKind::Retry, "r2", t0() + ms(1), ""),
        entry(DueKind::Poll, "p1", t0() + ms(1), ""),
        entry(DueKind::Retry, "r3", t0() + minutes(5), ""),
    ] {
        store.schedule_due(&e).unwrap();
    }
    let subjects = |now, kind, limit| -> Vec<String> {
        store
            .due_entries(now, kind, limit)
            .unwrap()
            .into_iter()
            .map(|e| e.subject)
            .collect()
    };
    // Nothing is due before the first entry; `until` itself is included, to the ms.
    assert!(subjects(t0() - ms(1), DueKind::Retry, 10).is_empty());
    assert_eq!(subjects(t0() + ms(1), DueKind::Retry, 10), ["r1", "r2"]);
    // The limit keeps the earliest.
    assert!(subjects(t0() + minutes(5), DueKind::Retry, 0).is_empty());
    // Only that kind, with the same cut-offs.
    assert_eq!(
        subjects(t0() + minutes(5), DueKind::Retry, 10),
        ["r1", "r2", "r3"]
    );
    assert_eq!(subjects(t0(), DueKind::Retry, 10), ["r1"]);
    assert_eq!(subjects(t0() + minutes(5), DueKind::Retry, 2), ["r1", "r2"]);
    assert_eq!(subjects(t0() + minutes(5), DueKind::Poll, 10), ["p1"]);
    assert_eq!(subjects(t0(), DueKind::Poll, 10), Vec::<String>::new());
    assert_eq!(subjects(t0() + minutes(5), DueKind::Outbox, 10), ["o1"]);
}

fn scheduling_replaces_the_subjects_entry_and_removing_takes_it_out(f: &mut Fixture) {
    let store = f.store();
    store
        .schedule_due(&entry(DueKind::Retry, "acc", t0() + minutes(5), "first"))
        .unwrap();
    let second = entry(DueKind::Retry, "acc", t0() + minutes(1), "second");
    store.schedule_due(&second).unwrap();
    // The same subject under another kind is another entry.
    let poll = entry(DueKind::Poll, "acc", t0(), "");
    store.schedule_due(&poll).unwrap();

    // One entry per (kind, subject): the first one does not linger at its old time.
    assert_eq!(
        store
            .due_entries(t0() + minutes(10), DueKind::Retry, 10)
            .unwrap(),
        std::slice::from_ref(&second)
    );
    assert_eq!(
        store
            .due_entries(t0() + minutes(10), DueKind::Poll, 10)
            .unwrap(),
        std::slice::from_ref(&poll)
    );
    assert_eq!(
        store.due_entry_of(DueKind::Retry, "acc").unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.due_entry_of(DueKind::Outbox, "acc").unwrap(), None);

    assert!(store.remove_due(DueKind::Retry, "acc").unwrap());
    assert!(
        !store.remove_due(DueKind::Retry, "acc").unwrap(),
        "already gone"
    );
    assert_eq!(store.due_entry_of(DueKind::Retry, "acc").unwrap(), None);
    assert_eq!(
        store
            .due_entries(t0() + minutes(10), DueKind::Retry, 10)
            .unwrap(),
        []
    );
    assert_eq!(
        store
            .due_entries(t0() + minutes(10), DueKind::Poll, 10)
            .unwrap(),
        [poll]
    );
    assert_eq!(store.next_due(DueKind::Retry).unwrap(), None);
}

fn rescheduling_is_a_compare_and_set_on_the_current_entry(f: &mut Fixture) {
    let store = f.store();
    let first = entry(DueKind::Retry, "acc", t0(), "v1");
    store.schedule_due(&first).unwrap();

    // Current: moved (out of the due part, payload replaced too).
    let moved = entry(DueKind::Retry, "acc", t0() + minutes(10), "v1-moved");
    assert!(store.reschedule_due(&first, Some(&moved)).unwrap());
    assert_eq!(
        store.due_entry_of(DueKind::Retry, "acc").unwrap(),
        Some(moved.clone())
    );
    assert!(store
        .due_entries(t0() + minutes(9), DueKind::Retry, 10)
        .unwrap()
        .is_empty());

    // A stale copy (its time changed since it was read) changes nothing.
    assert!(!store.reschedule_due(&first, None).unwrap());
    assert_eq!(
        store.due_entry_of(DueKind::Retry, "acc").unwrap(),
        Some(moved.clone())
    );

    // Same time, new payload (a newer write): the old copy no longer matches either.
    let newer = entry(DueKind::Retry, "acc", t0() + minutes(10), "v2");
    store.schedule_due(&newer).unwrap();
    assert!(!store.reschedule_due(&moved, None).unwrap());
    assert_eq!(
        store.due_entry_of(DueKind::Retry, "acc").unwrap(),
        Some(newer.clone())
    );

    // `next` must be about the same kind and subject.
    let other = entry(DueKind::Retry, "other", t0(), "v2");
    assert!(matches!(
        store.reschedule_due(&newer, Some(&other)),
        Err(StoreError::InvalidState(_))
    ));
    let as_poll = entry(DueKind::Poll, "acc", t0(), "v2");
    assert!(matches!(
        store.reschedule_due(&newer, Some(&as_poll)),
        Err(StoreError::InvalidState(_))
    ));
    assert_eq!(store.due_entry_of(DueKind::Retry, "other").unwrap(), None);

    // Current and `None`: removed, and only once.
    assert!(store.reschedule_due(&newer, None).unwrap());
    assert_eq!(store.due_entry_of(DueKind::Retry, "acc").unwrap(), None);
    assert!(store
        .due_entries(t0() + minutes(60), DueKind::Retry, 10)
        .unwrap()
        .is_empty());
    assert!(!store.reschedule_due(&newer, None).unwrap());
}

fn next_due_is_the_earliest_entry_of_the_kind(f: &mut Fixture) {
    let store = f.store();
    assert_eq!(store.next_due(DueKind::Retry).unwrap(), None);
    store
        .schedule_due(&entry(DueKind::Outbox, "o", t0() + minutes(2), ""))
        .unwrap();
    store
        .schedule_due(&entry(DueKind::Retry, "r", t0() + minutes(1), ""))
        .unwrap();
    store
        .schedule_due(&entry(DueKind::Poll, "p", t0() + minutes(3), ""))
        .unwrap();
    assert_eq!(
        store.next_due(DueKind::Retry).unwrap(),
        Some(t0() + minutes(1))
    );
    assert_eq!(
        store.next_due(DueKind::Outbox).unwrap(),
        Some(t0() + minutes(2))
    );
    assert_eq!(
        store.next_due(DueKind::Poll).unwrap(),
        Some(t0() + minutes(3))
    );
    // Moving the earliest later changes the answer.
    store
        .schedule_due(&entry(DueKind::Retry, "r", t0() + minutes(4), ""))
        .unwrap();
    assert_eq!(
        store.next_due(DueKind::Retry).unwrap(),
        Some(t0() + minutes(4))
    );
    store.remove_due(DueKind::Outbox, "o").unwrap();
    assert_eq!(store.next_due(DueKind::Outbox).unwrap(), None);
    // A poll's time is its anchor: reading it is the caller's business (`now - interval`).
    assert_eq!(
        store.next_due(DueKind::Poll).unwrap(),
        Some(t0() + minutes(3))
    );
}

fn due_entries_survive_reopen(f: &mut Fixture) {
    let entries = [
        entry(DueKind::Poll, "acc_a", t0(), ""),
        entry(DueKind::Retry, "acc_a", t0() + ms(1), "payload"),
    ];
    let store = f.store();
    for e in &entries {
        store.schedule_due(e).unwrap();
    }
    // Written and then removed: must not come back either.
    store
        .schedule_due(&entry(DueKind::Retry, "gone", t0(), ""))
        .unwrap();
    store.remove_due(DueKind::Retry, "gone").unwrap();
    f.durable();
    f.reopen();
    let store = f.store();
    let read = |kind| store.due_entries(t0() + minutes(10), kind, 10).unwrap();
    assert_eq!(read(DueKind::Poll), entries[..1]);
    assert_eq!(read(DueKind::Retry), entries[1..2]);
    assert_eq!(
        store.due_entry_of(DueKind::Retry, "acc_a").unwrap(),
        Some(entries[1].clone())
    );
    assert_eq!(store.due_entry_of(DueKind::Retry, "gone").unwrap(), None);
    assert_eq!(store.next_due(DueKind::Poll).unwrap(), Some(t0()));
    assert_eq!(store.next_due(DueKind::Retry).unwrap(), Some(t0() + ms(1)));
}
