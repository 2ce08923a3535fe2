//! Retry records: indexed by due time, rescheduled only while current.

use chrono::{DateTime, Utc};
use tempfile::TempDir;

use super::super::test_support::*;
use crate::domain::{Account, SyncGaveUp};
use crate::store::{AccountStore, ApplyMode, DueIndex, RetryRecord, RowStore};

fn retry(acc: &Account, attempt: u32, due_at: DateTime<Utc>) -> RetryRecord {
    RetryRecord {
        account_id: acc.id.clone(),
        attempt,
        due_at,
        code: "INTERNAL_SERVER_ERROR".to_string(),
        request_id: Some(format!("req-{attempt}")),
    }
}

#[tokio::test]
async fn retry_records_index_by_due_time_and_leave_with_a_commit() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
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

#[tokio::test]
async fn rescheduling_a_retry_moves_or_drops_it_only_while_it_is_current() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
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
