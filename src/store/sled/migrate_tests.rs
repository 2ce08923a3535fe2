//! A data dir written in the layout of the previous version (separate retry, polling
//! and outbox due-time indexes, written here by hand) opens with everything due that
//! was due, moved into the one due index, and the old trees gone.

use chrono::{DateTime, Utc};
use serde_json::json;
use tempfile::TempDir;

use super::super::keys::{self, legacy, DUE_MIGRATED, OUTBOX};
use super::super::outbox::LegacyAlertRecord;
use super::super::test_support::*;
use super::super::SledStore;
use crate::domain::incidents::{AlertEventType, Incident, IncidentKind};
use crate::domain::AccountId;
use crate::store::{DueIndex, DueKind, Durability, OutboxStore, PollEntry, RetryRecord};

/// An old-layout index key: big-endian millis, then the account id.
fn old_key(at: DateTime<Utc>, account: &str) -> Vec<u8> {
    let mut key = keys::due_millis(at).to_be_bytes().to_vec();
    key.extend_from_slice(account.as_bytes());
    key
}

/// The old outbox due-index key: big-endian millis, then the big-endian alert id.
fn old_outbox_key(at: DateTime<Utc>, id: u64) -> Vec<u8> {
    let mut key = keys::due_millis(at).to_be_bytes().to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn alert(id: u64, due_at: DateTime<Utc>) -> LegacyAlertRecord {
    LegacyAlertRecord {
        id,
        event_type: AlertEventType::Opened,
        incident: Incident {
            id: 1,
            kind: IncidentKind::NeedsReauth,
            severity: IncidentKind::NeedsReauth.severity(),
            account_id: Some(AccountId("acc_alerted".into())),
            operation_id: None,
            opened_at: t0(),
            updated_at: t0(),
            resolved_at: None,
            occurrences: 1,
            details: json!({}),
        },
        created_at: t0(),
        next_attempt_at: due_at,
        attempts: 1,
        last_error: Some("503".into()),
    }
}

fn retry_record() -> RetryRecord {
    RetryRecord {
        account_id: AccountId("acc_retry".into()),
        attempt: 2,
        due_at: t0(),
        code: "INTERNAL_SERVER_ERROR".into(),
        request_id: Some("req-2".into()),
    }
}

/// Writes the previous version's trees straight into a fresh data dir.
fn write_old_layout(dir: &TempDir) {
    let db = open_raw(&dir.path().join("data"));
    let tree = |name: &str| db.open_tree(name).unwrap();

    let record = retry_record();
    let retry_key = old_key(record.due_at, "acc_retry");
    tree(legacy::RETRIES)
        .insert(&retry_key, keys::encode(legacy::RETRIES, &record).unwrap())
        .unwrap();
    tree(legacy::RETRY_INDEX)
        .insert("acc_retry", retry_key)
        .unwrap();

    let poll_key = old_key(t0() - minutes(60), "acc_poll");
    tree(legacy::POLL).insert(&poll_key, "acc_poll").unwrap();
    tree(legacy::POLL_INDEX)
        .insert("acc_poll", poll_key)
        .unwrap();
    // A stale entry (nothing points at it) for the sweeper to repair, as before.
    tree(legacy::POLL)
        .insert(old_key(t0() - minutes(120), "acc_stale"), "acc_stale")
        .unwrap();
    tree(legacy::POLL_INDEX)
        .insert(legacy::POLL_BACKFILLED, &[])
        .unwrap();

    let pending = alert(7, t0() + minutes(1));
    tree(OUTBOX)
        .insert(keys::id_key(7), keys::encode(OUTBOX, &pending).unwrap())
        .unwrap();
    tree(legacy::OUTBOX_DUE)
        .insert(old_outbox_key(pending.next_attempt_at, 7), &[])
        .unwrap();
    db.flush().unwrap();
}

fn assert_all_due(store: &SledStore) {
    assert_eq!(store.due_retries(t0() - minutes(1), 10).unwrap(), []);
    assert_eq!(store.due_retries(t0(), 10).unwrap(), [retry_record()]);
    assert_eq!(
        store.retry_of(&AccountId("acc_retry".into())).unwrap(),
        Some(retry_record())
    );

    assert_eq!(
        store.due_polls(t0(), 10).unwrap(),
        [
            PollEntry {
                account_id: AccountId("acc_stale".into()),
                anchor: t0() - minutes(120),
            },
            PollEntry {
                account_id: AccountId("acc_poll".into()),
                anchor: t0() - minutes(60),
            },
        ]
    );
    // The stale entry stayed stale; the indexed one kept its reverse mapping.
    assert!(store
        .due_entry_of(DueKind::Poll, "acc_stale")
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .due_entry_of(DueKind::Poll, "acc_poll")
            .unwrap()
            .map(|e| e.due_at),
        Some(t0() - minutes(60))
    );

    assert_eq!(store.due_outbox(t0(), 10).unwrap(), []);
    let due: Vec<u64> = store
        .due_outbox(t0() + minutes(1), 10)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(due, [7]);
    assert_eq!(store.next_outbox_due().unwrap(), Some(t0() + minutes(1)));

    // One entry each, nothing doubled.
    let entries: usize = DueKind::ALL
        .into_iter()
        .map(|kind| {
            store
                .due_entries(t0() + minutes(10), kind, 100)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(entries, 4);
    assert!(store.due_subjects.contains_key(DUE_MIGRATED).unwrap());
    let names = store.files.db.tree_names();
    for old in legacy::TREES {
        assert!(
            !names.iter().any(|n| n.as_ref() == old.as_bytes()),
            "{old} was dropped"
        );
    }
}

#[tokio::test]
async fn a_data_dir_in_the_old_layout_opens_with_its_retries_polls_and_alerts_due() {
    let dir = TempDir::new().unwrap();
    write_old_layout(&dir);
    {
        let store = open(&dir);
        assert_all_due(&store);
        store.durable().await.unwrap();
        store.shutdown().await.unwrap();
    }
    // A second open finds the marker and changes nothing.
    let store = open(&dir);
    assert_all_due(&store);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_migration_interrupted_before_its_marker_is_redone_without_doubles() {
    let dir = TempDir::new().unwrap();
    write_old_layout(&dir);
    {
        // What a crash right before the marker leaves: the new index half written
        // (here: the retry at another time), the old trees all still there.
        let db = open_raw(&dir.path().join("data"));
        let entries = db.open_tree(keys::DUE).unwrap();
        let subjects = db.open_tree(keys::DUE_SUBJECTS).unwrap();
        let half = super::DueTrees {
            entries: &entries,
            subjects: &subjects,
        };
        half.put(
            DueKind::Retry,
            "acc_retry",
            keys::due_millis(t0() + minutes(30)),
            b"old",
        )
        .unwrap();
        db.flush().unwrap();
    }
    let store = open(&dir);
    assert_all_due(&store);
    store.shutdown().await.unwrap();
}
