//! What the sled account records leave in their trees: a purge leaves no row, index
//! entry or claim behind, older stores get retired keys at open, unreadable bytes are
//! `Corrupt`. The trait behaviour is in the contract suite (`store::contract::accounts`).

use tempfile::TempDir;

use super::super::keys::{self, ACCOUNTS};
use super::super::test_support::open_raw;
use super::super::test_support::*;
use crate::store::{AccountStore, ApplyMode, InboxStore, Resolved, RowStore, StoreError};

#[tokio::test]
async fn a_purge_leaves_no_row_index_entry_or_claim_behind() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &["alias-1"]);
    store.link_account(&acc).unwrap();
    seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![row("t1", "2024-01-01"), row("t2", "2024-01-02")],
            &[],
            vec![],
            "c1",
        ))
        .unwrap();
    store.claim_pending_inbox(&acc.id).unwrap();
    assert_eq!(raw_count(&store.transactions, &acc.id), 2);
    assert_eq!(raw_count(&store.claims, &acc.id), 1);
    store.unlink_account(&acc.id, false).unwrap();
    assert_eq!(raw_count(&store.transactions, &acc.id), 2, "kept");
    store.unlink_account(&acc.id, true).unwrap();
    for (name, tree) in [
        ("transactions", &store.transactions),
        ("txn_index", &store.txn_index),
        ("inbox", &store.inbox),
        ("claims", &store.claims),
    ] {
        assert_eq!(raw_count(tree, &acc.id), 0, "{name}");
    }
    // No live or retired key is left: only the marker of the retired-keys migration.
    let left: Vec<_> = store.lookup.iter().keys().map(|k| k.unwrap()).collect();
    assert_eq!(left, [keys::RETIRED_MIGRATED]);
}

#[tokio::test]
async fn unlinked_accounts_of_an_older_store_get_their_keys_at_open() {
    let dir = TempDir::new().unwrap();
    let acc = account("item-old", "owner-old", &["old-alias"]);
    {
        let store = open(&dir);
        store.link_account(&acc).unwrap();
        store.unlink_account(&acc.id, false).unwrap();
        store.shutdown().await.unwrap();
    }
    // As an older version left it: unlinked, no retired keys, no marker.
    {
        let db = open_raw(&dir.path().join("data"));
        let lookup = db.open_tree(keys::LOOKUP).unwrap();
        let mut removed = 0;
        for key in lookup.iter().keys() {
            let key = key.unwrap();
            if key.first() == Some(&b'r') || key.as_ref() == keys::RETIRED_MIGRATED {
                lookup.remove(key).unwrap();
                removed += 1;
            }
        }
        db.flush().unwrap();
        assert_eq!(removed, 4, "three retired keys and the marker");
    }
    let store = open(&dir);
    for key in ["item-old", "owner-old", "old-alias"] {
        assert_eq!(
            store.resolve(key).unwrap(),
            Resolved::Found(acc.id.clone()),
            "{key}"
        );
    }
}

#[tokio::test]
async fn unreadable_records_are_reported_as_corrupt() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store
        .accounts
        .insert(keys::account_key(&acc.id), &[42u8, 1, 2][..])
        .unwrap();
    assert!(matches!(
        store.get_account(&acc.id),
        Err(StoreError::Corrupt { tree: ACCOUNTS, .. })
    ));
    assert!(matches!(
        store.commit_sync(sync(&acc.id, ApplyMode::Delta, vec![], &[], vec![], "c")),
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn debug_output_does_not_leak_the_access_token() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let stored = store.get_account(&acc.id).unwrap().unwrap();
    assert!(!format!("{stored:?} {store:?}").contains("access-sandbox-secret"));
}
