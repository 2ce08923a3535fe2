//! The sled due index at open. Its trait behaviour is in the contract suite
//! (`store::contract::due`); what is sled's own is that the outbox's part of the index
//! is rebuilt from the outbox tree at open.

use chrono::{DateTime, Utc};
use tempfile::TempDir;

use super::super::test_support::*;
use crate::store::{DueEntry, DueIndex, DueKind, Durability};

fn entry(kind: DueKind, subject: &str, due_at: DateTime<Utc>) -> DueEntry {
    DueEntry {
        kind,
        subject: subject.to_string(),
        due_at,
        payload: Vec::new(),
    }
}

#[tokio::test]
async fn an_outbox_entry_without_its_message_does_not_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let kept = entry(DueKind::Retry, "acc_a", t0());
    {
        let store = open(&dir);
        store.schedule_due(&kept).unwrap();
        store
            .schedule_due(&entry(
                DueKind::Outbox,
                &DueKind::outbox_subject(3),
                t0() + minutes(1),
            ))
            .unwrap();
        store.durable().await.unwrap();
        store.shutdown().await.unwrap();
    }
    let store = open(&dir);
    // Outbox entries are rebuilt from the outbox at open: this one has no message.
    assert_eq!(
        store
            .due_entries(t0() + minutes(10), DueKind::Outbox, 10)
            .unwrap(),
        []
    );
    assert_eq!(store.next_due(DueKind::Outbox).unwrap(), None);
    assert_eq!(
        store
            .due_entries(t0() + minutes(10), DueKind::Retry, 10)
            .unwrap(),
        [kept]
    );
    store.shutdown().await.unwrap();
}
