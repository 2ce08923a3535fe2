//! The sled polling index's own concerns: no reverse mapping left behind, the backfill
//! of stores written before it existed, and the repair of entries planted without
//! one. Its trait behaviour is in the contract suite (`store::contract::polls`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tempfile::TempDir;

use super::super::keys;
use super::super::test_support::{ms, t0};
use super::super::{SledStore, SledStoreConfig};
use crate::domain::{AccessToken, Account, AccountId, LinkStatus, ProviderKind, SyncOutcome};
use crate::store::{
    AccountStore, ApplyMode, DueIndex, DueKind, Durability, PollEntry, RowStore, SyncCommit,
};

/// Opens (or reopens, once the previous handle let go of sled's lock) the store.
fn open(dir: &TempDir) -> Arc<SledStore> {
    crate::store::when_released(&dir.path().join("data"), || {
        SledStore::open(SledStoreConfig {
            data_dir: dir.path().join("data"),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: Duration::ZERO,
        })
    })
}

fn account(item_id: &str, created_at: DateTime<Utc>) -> Account {
    Account::new_linked(
        ProviderKind::Plaid,
        item_id.into(),
        AccessToken::new("token"),
        format!("owner-{item_id}"),
        vec![],
        created_at,
    )
}

fn commit_at(id: &AccountId, finished_at: DateTime<Utc>) -> SyncCommit {
    SyncCommit {
        account_id: id.clone(),
        mode: ApplyMode::Delta,
        upserts: vec![],
        removals: vec![],
        cursor: "c".into(),
        consumed: vec![],
        outcome: SyncOutcome::Committed {
            added: 0,
            modified: 0,
            removed: 0,
            pages: 1,
            fallback: false,
            request_id: None,
        },
        started_at: finished_at,
        finished_at,
    }
}

/// (entries, reverse mappings) of the polling kind, as stored.
fn raw_poll_entries(store: &SledStore) -> (usize, usize) {
    let count = |tree: &sled::Tree| tree.scan_prefix([DueKind::Poll.tag()]).count();
    (count(&store.due), count(&store.due_subjects))
}

fn due(store: &SledStore, by: DateTime<Utc>) -> Vec<(AccountId, DateTime<Utc>)> {
    store
        .due_polls(by, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.account_id, e.anchor))
        .collect()
}

#[tokio::test]
async fn unlinking_and_clearing_leave_no_entry_and_no_reverse_mapping() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let a = account("item-a", t0());
    let b = account("item-b", t0() + ms(10));
    store.link_account(&a).unwrap();
    store.link_account(&b).unwrap();
    store.commit_sync(commit_at(&a.id, t0() + ms(500))).unwrap();
    assert_eq!(raw_poll_entries(&store), (2, 2), "moved, not added");
    store.unlink_account(&a.id, false).unwrap();
    store.unlink_account(&b.id, true).unwrap();
    assert_eq!(
        raw_poll_entries(&store),
        (0, 0),
        "no entry and no reverse mapping is left"
    );
    let mut again = store.get_account(&a.id).unwrap().unwrap();
    again.status = LinkStatus::Linked;
    store.link_account(&again).unwrap();
    assert_eq!(raw_poll_entries(&store), (1, 1));
    store
        .clear_poll(&PollEntry {
            account_id: a.id.clone(),
            anchor: t0() + ms(500),
        })
        .unwrap();
    assert_eq!(raw_poll_entries(&store), (0, 0));
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_store_from_before_the_polling_index_is_backfilled_once_at_open() {
    let dir = TempDir::new().unwrap();
    let linked = account("item-linked", t0());
    let synced = account("item-synced", t0());
    let unlinked = account("item-unlinked", t0());
    {
        let store = open(&dir);
        for a in [&linked, &synced, &unlinked] {
            store.link_account(a).unwrap();
        }
        store
            .commit_sync(commit_at(&synced.id, t0() + ms(5)))
            .unwrap();
        store.unlink_account(&unlinked.id, false).unwrap();
        // What an older version left: no polling entries at all, no marker.
        for tree in [&store.due, &store.due_subjects] {
            for key in tree.scan_prefix([DueKind::Poll.tag()]).keys() {
                tree.remove(key.unwrap()).unwrap();
            }
        }
        store.due_subjects.remove(keys::DUE_MIGRATED).unwrap();
        // ... and a half-written entry from a backfill interrupted by a crash (in the
        // polling index of that version).
        store
            .files
            .db
            .open_tree(keys::legacy::POLL_INDEX)
            .unwrap()
            .insert(keys::account_key(&linked.id), b"gone".as_slice())
            .unwrap();
        store.durable().await.unwrap();
        store.shutdown().await.unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        due(&store, t0() + ms(10)),
        [(linked.id.clone(), t0()), (synced.id.clone(), t0() + ms(5))]
    );
    assert!(store.due_subjects.contains_key(keys::DUE_MIGRATED).unwrap());
    assert!(!store
        .files
        .db
        .tree_names()
        .contains(&keys::legacy::POLL_INDEX.as_bytes().into()));
    // Once marked, a later open does not scan again (an entry cleared now stays so).
    store
        .clear_poll(&PollEntry {
            account_id: linked.id.clone(),
            anchor: t0(),
        })
        .unwrap();
    store.durable().await.unwrap();
    store.shutdown().await.unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(
        due(&store, t0() + ms(10)),
        [(synced.id.clone(), t0() + ms(5))]
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn acting_on_a_stale_entry_repairs_the_index() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let a = account("item-a", t0());
    store.link_account(&a).unwrap();
    store.commit_sync(commit_at(&a.id, t0() + ms(50))).unwrap();
    // An orphan older than the real entry: due before it, and nothing points at it.
    store.plant_stale_poll_entry(&a.id, t0());
    let orphan = store.due_polls(t0(), 10).unwrap();
    assert_eq!(orphan.len(), 1);
    store.defer_poll(&orphan[0], t0() + ms(50)).unwrap();
    assert_eq!(
        due(&store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(50))]
    );

    // An orphan of an account the index lost entirely: deferring re-indexes it.
    store
        .clear_poll(&PollEntry {
            account_id: a.id.clone(),
            anchor: t0() + ms(50),
        })
        .unwrap();
    store.plant_stale_poll_entry(&a.id, t0());
    let orphan = store.due_polls(t0(), 10).unwrap();
    store.defer_poll(&orphan[0], t0() + ms(80)).unwrap();
    assert_eq!(
        due(&store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(80))]
    );

    // An orphan of a gone account: clearing removes it and leaves the real entry be.
    let ghost = AccountId::generate();
    store.plant_stale_poll_entry(&ghost, t0());
    let stale = store.due_polls(t0(), 10).unwrap();
    assert_eq!(stale[0].account_id, ghost);
    store.clear_poll(&stale[0]).unwrap();
    assert_eq!(
        due(&store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(80))]
    );
    store.shutdown().await.unwrap();
}
