//! Ingest, dedup, adoption races and what a commit consumes.

use std::sync::Arc;

use tempfile::TempDir;

use super::super::test_support::*;
use crate::store::{AccountStore, ApplyMode, InboxStore, IngestOutcome, RowStore};

#[tokio::test]
async fn duplicate_within_ttl_is_rejected_and_accepted_after_expiry() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();

    seq_of(store.ingest(webhook("item-1", 7, t0()), TTL).unwrap());
    let again = store
        .ingest(webhook("item-1", 7, t0() + minutes(14)), TTL)
        .unwrap();
    assert_eq!(
        again,
        IngestOutcome::Duplicate {
            account_id: Some(acc.id.clone())
        }
    );
    assert_eq!(
        store.pending_inbox(&acc.id).unwrap().len(),
        1,
        "a duplicate writes nothing"
    );
    assert_eq!(store.inbox_depth().unwrap(), 1);

    // Expired (15 min TTL): accepted again, and the dedup record is refreshed.
    seq_of(
        store
            .ingest(webhook("item-1", 7, t0() + minutes(16)), TTL)
            .unwrap(),
    );
    assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 2);
    assert!(matches!(
        store
            .ingest(webhook("item-1", 7, t0() + minutes(20)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { .. }
    ));

    // Another key expires at t0+15; the refreshed one at t0+31.
    seq_of(store.ingest(webhook("item-1", 8, t0()), TTL).unwrap());
    assert_eq!(store.purge_expired_dedup(t0() + minutes(20)).unwrap(), 1);
    assert_eq!(store.purge_expired_dedup(t0() + minutes(31)).unwrap(), 1);
    assert_eq!(store.dedup.len(), 0);
    assert_eq!(store.inbox_depth().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_racing_a_link_all_end_up_in_its_inbox() {
    // Ingest resolves the item without a transaction; whichever side loses the race
    // (the link's adoption passes or the ingest's re-check) the entry must land in
    // the inbox, never stay stranded among the unrouted ones.
    for round in 0..20 {
        let dir = TempDir::new().unwrap();
        let store = open(&dir);
        let item = format!("item-race-{round}");
        let acc = account(&item, "owner-race", &[]);
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let store = Arc::clone(&store);
                let item = item.clone();
                std::thread::spawn(move || {
                    (0..50u32)
                        .map(|n| {
                            seq_of(
                                store
                                    .ingest(webhook(&item, w * 1000 + n, t0()), TTL)
                                    .unwrap(),
                            )
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        store.link_account(&acc).unwrap();
        let mut accepted: Vec<u64> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        accepted.sort_unstable();
        let pending: Vec<u64> = store
            .pending_inbox(&acc.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            pending, accepted,
            "round {round}: every accepted event is in the inbox"
        );
        assert_eq!(store.unrouted.len(), 0, "round {round}: nothing stranded");
        assert_eq!(store.inbox_depth().unwrap(), 200);
    }
}

#[tokio::test]
async fn a_repeat_of_an_event_a_running_sync_has_read_is_appended_again() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let first = seq_of(store.ingest(webhook("item-1", 5, t0()), TTL).unwrap());
    let claimed: Vec<u64> = store
        .claim_pending_inbox(&acc.id)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(claimed, [first]);
    // The sync that read `first` may fetch data older than this repeat: keep it.
    let second = seq_of(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(1)), TTL)
            .unwrap(),
    );
    assert!(second > first);
    // The sync commits what it read; the repeat stays for the next sync, unclaimed,
    // so its own repeat is a duplicate again.
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![],
            &[],
            vec![first],
            "c1",
        ))
        .unwrap();
    let pending: Vec<u64> = store
        .pending_inbox(&acc.id)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(pending, [second]);
    assert!(matches!(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(2)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    assert_eq!(store.claims.len(), 0, "claims leave with their entries");
}

#[tokio::test]
async fn a_repeat_of_an_already_consumed_event_is_appended_again() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let first = seq_of(store.ingest(webhook("item-1", 5, t0()), TTL).unwrap());
    // While the first is pending, the same body is a duplicate.
    assert!(matches!(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(1)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![],
            &[],
            vec![first],
            "c1",
        ))
        .unwrap();
    // Same bytes after the sync committed: Plaid's next SYNC_UPDATES_AVAILABLE looks
    // exactly like this, so it must lead to another sync, not be dropped.
    let second = seq_of(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(2)), TTL)
            .unwrap(),
    );
    assert!(second > first);
    let pending: Vec<u64> = store
        .pending_inbox(&acc.id)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(pending, [second]);
    // And its own repeat is a duplicate again while it is pending.
    assert!(matches!(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(3)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
}

#[tokio::test]
async fn consumed_inbox_entries_leave_with_the_commit() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let s1 = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    let s2 = seq_of(store.ingest(webhook("item-1", 2, t0()), TTL).unwrap());
    let s3 = seq_of(store.ingest(webhook("item-1", 3, t0()), TTL).unwrap());
    seq_of(
        store
            .ingest(webhook("item-unlinked", 4, t0()), TTL)
            .unwrap(),
    );
    assert_eq!(store.inbox_depth().unwrap(), 4);

    // s3 arrived after the sync started: it stays. A bogus seq is ignored.
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![],
            &[],
            vec![s1, s2, 999_999_999],
            "c",
        ))
        .unwrap();
    let pending: Vec<_> = store
        .pending_inbox(&acc.id)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(pending, [s3]);
    assert_eq!(store.inbox_depth().unwrap(), 2);
    assert_eq!(
        store.accounts_with_pending_inbox().unwrap(),
        vec![acc.id.clone()]
    );
    store
        .commit_sync(sync(&acc.id, ApplyMode::Delta, vec![], &[], vec![s3], "d"))
        .unwrap();
    assert!(store.accounts_with_pending_inbox().unwrap().is_empty());
}
