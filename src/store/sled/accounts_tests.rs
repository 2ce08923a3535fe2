//! Linking, resolving, unlinking and the per-account marks.

use tempfile::TempDir;

use super::super::keys::{self, ACCOUNTS};
use super::super::test_support::open_raw;
use super::super::test_support::*;
use crate::domain::{AccountId, LinkStatus, SyncOutcome};
use crate::store::{
    AccountStore, ApplyMode, InboxStore, IngestOutcome, LinkReceipt, Resolved, RowStore, StoreError,
};

#[tokio::test]
async fn events_for_an_unlinked_item_are_adopted_on_link() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let first = store.ingest(webhook("item-early", 1, t0()), TTL).unwrap();
    let IngestOutcome::Accepted {
        seq,
        account_id: None,
    } = first
    else {
        panic!("expected an unrouted accept, got {first:?}");
    };
    seq_of(store.ingest(webhook("item-other", 2, t0()), TTL).unwrap());
    assert_eq!(store.inbox_depth().unwrap(), 2);

    let acc = account("item-early", "owner-1", &[]);
    assert_eq!(
        store.link_account(&acc).unwrap(),
        LinkReceipt { adopted_events: 1 }
    );
    let pending = store.pending_inbox(&acc.id).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].seq, seq);
    assert_eq!(pending[0].account_id, acc.id);
    assert_eq!(pending[0].body["item_id"], "item-early");
    assert_eq!(
        store.inbox_depth().unwrap(),
        2,
        "adoption moves, it does not add"
    );
    assert_eq!(store.unrouted.len(), 1, "other items' events stay kept");

    // Once linked, events route straight to the account.
    let next = store.ingest(webhook("item-early", 3, t0()), TTL).unwrap();
    assert!(
        matches!(next, IngestOutcome::Accepted { account_id: Some(ref id), seq: s } if *id == acc.id && s > seq)
    );
    assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 2);
}

#[tokio::test]
async fn taken_alias_or_item_id_is_a_conflict_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let a = account("item-a", "owner-1", &["alice@example.com"]);
    store.link_account(&a).unwrap();

    let b = account("item-b", "owner-2", &["bob", "alice@example.com"]);
    match store.link_account(&b) {
        Err(StoreError::Conflict { key, account_id }) => {
            assert_eq!(key, "alice@example.com");
            assert_eq!(account_id, a.id);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(store.get_account(&b.id).unwrap().is_none());
    assert_eq!(
        store.resolve("bob").unwrap(),
        Resolved::NotFound,
        "no partial keys"
    );
    assert_eq!(store.resolve("item-b").unwrap(), Resolved::NotFound);

    let c = account("item-a", "owner-3", &[]);
    assert!(
        matches!(store.link_account(&c), Err(StoreError::Conflict { ref key, .. }) if key == "item-a")
    );
    assert_eq!(store.count_accounts().unwrap(), 1);
}

#[tokio::test]
async fn resolve_covers_canonical_alias_item_and_owner_ids() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let a = account("item-a", "owner-shared", &["a@example.com"]);
    let b = account("item-b", "owner-shared", &[]);
    let c = account("item-c", "owner-solo", &[]);
    for acc in [&a, &b, &c] {
        store.link_account(acc).unwrap();
    }
    assert_eq!(
        store.resolve(a.id.as_str()).unwrap(),
        Resolved::Found(a.id.clone())
    );
    assert_eq!(
        store.resolve("a@example.com").unwrap(),
        Resolved::Found(a.id.clone())
    );
    assert_eq!(
        store.resolve("item-b").unwrap(),
        Resolved::Found(b.id.clone())
    );
    assert_eq!(
        store.resolve("owner-solo").unwrap(),
        Resolved::Found(c.id.clone())
    );
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    assert_eq!(
        store.resolve("owner-shared").unwrap(),
        Resolved::Ambiguous(both)
    );
    assert_eq!(store.resolve("nobody").unwrap(), Resolved::NotFound);
    // Canonical-looking but unknown ids fall through to the other lookups.
    assert_eq!(
        store.resolve(AccountId::generate().as_str()).unwrap(),
        Resolved::NotFound
    );

    let listed = store.list_accounts(None, 10).unwrap();
    let ids: Vec<_> = listed.iter().map(|x| x.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 3);
    let rest = store.list_accounts(Some(&ids[0]), 10).unwrap();
    assert_eq!(
        rest.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        ids[1..]
    );
}

#[tokio::test]
async fn failed_and_started_syncs_touch_only_their_fields() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store.record_sync_started(&acc.id, t0()).unwrap();
    let failed = SyncOutcome::Failed {
        code: "ITEM_LOGIN_REQUIRED".into(),
        message: "login required".into(),
        request_id: Some("req-1".into()),
    };
    store
        .record_sync_failed(&acc.id, failed.clone(), t0() + minutes(2))
        .unwrap();
    let stored = store.get_account(&acc.id).unwrap().unwrap();
    assert_eq!(stored.last_sync_started_at, Some(t0()));
    assert_eq!(stored.last_sync_finished_at, Some(t0() + minutes(2)));
    assert_eq!(stored.last_sync_outcome, Some(failed));
    assert_eq!((stored.cursor, stored.sync_count), (None, 0));

    let unknown = AccountId::generate();
    assert!(matches!(
        store.record_sync_started(&unknown, t0()),
        Err(StoreError::AccountNotFound(ref id)) if *id == unknown
    ));
    assert!(matches!(
        store.commit_sync(sync(
            &unknown,
            ApplyMode::Delta,
            vec![row("x", "2024-01-01")],
            &[],
            vec![],
            "c"
        )),
        Err(StoreError::AccountNotFound(_))
    ));
    assert_eq!(
        store.count_transactions(&unknown).unwrap(),
        0,
        "aborted commit wrote nothing"
    );
}

#[tokio::test]
async fn unlink_keeps_data_and_retires_keys_and_purge_deletes_it() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let old = account("item-1", "owner-1", &["alias-1"]);
    store.link_account(&old).unwrap();
    let s = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    store
        .commit_sync(sync(
            &old.id,
            ApplyMode::Delta,
            vec![row("t1", "2024-01-01")],
            &[],
            vec![],
            "c1",
        ))
        .unwrap();

    let before = store.unlink_account(&old.id, false).unwrap().unwrap();
    assert_eq!(before.status, LinkStatus::Linked);
    let kept = store.get_account(&old.id).unwrap().unwrap();
    assert_eq!(kept.status, LinkStatus::Unlinked);
    assert_eq!(kept.cursor.as_deref(), Some("c1"));
    assert_eq!(store.count_transactions(&old.id).unwrap(), 1);
    assert_eq!(store.pending_inbox(&old.id).unwrap()[0].seq, s);
    // Every key it is listed with still finds it (to show or purge it)...
    for key in ["item-1", "alias-1", "owner-1", old.id.as_str()] {
        assert_eq!(
            store.resolve(key).unwrap(),
            Resolved::Found(old.id.clone()),
            "{key} still finds the unlinked account"
        );
    }
    // ...but webhooks for its item no longer reach it.
    let unrouted = store.ingest(webhook("item-1", 9, t0()), TTL).unwrap();
    assert!(
        matches!(
            unrouted,
            IngestOutcome::Accepted {
                account_id: None,
                ..
            }
        ),
        "{unrouted:?}"
    );

    // The same item and alias can be linked again as a new account.
    let new = account("item-1", "owner-1", &["alias-1"]);
    store.link_account(&new).unwrap();
    assert_eq!(
        store.resolve("alias-1").unwrap(),
        Resolved::Found(new.id.clone())
    );
    let routed = store.ingest(webhook("item-1", 2, t0()), TTL).unwrap();
    assert!(
        matches!(routed, IngestOutcome::Accepted { account_id: Some(ref id), .. } if *id == new.id)
    );
    // Its item's events kept meanwhile were adopted by the new account.
    assert_eq!(store.inbox_depth().unwrap(), 3);
    assert_eq!(store.pending_inbox(&new.id).unwrap().len(), 2);

    // Purging the old account deletes its data but not the new account's keys.
    assert!(store.unlink_account(&old.id, true).unwrap().is_some());
    assert!(store.get_account(&old.id).unwrap().is_none());
    assert_eq!(store.count_transactions(&old.id).unwrap(), 0);
    assert_eq!(raw_count(&store.transactions, &old.id), 0);
    assert!(store.pending_inbox(&old.id).unwrap().is_empty());
    assert_eq!(store.inbox_depth().unwrap(), 2);
    assert_eq!(
        store.resolve("item-1").unwrap(),
        Resolved::Found(new.id.clone())
    );
    assert_eq!(
        store.resolve("alias-1").unwrap(),
        Resolved::Found(new.id.clone())
    );
    assert!(store.unlink_account(&old.id, true).unwrap().is_none());

    // Unlinked and purged with no successor: its keys find nothing any more.
    store.unlink_account(&new.id, false).unwrap();
    assert_eq!(
        store.resolve("alias-1").unwrap(),
        Resolved::Found(new.id.clone())
    );
    store.unlink_account(&new.id, true).unwrap();
    for key in ["item-1", "alias-1", "owner-1"] {
        assert_eq!(store.resolve(key).unwrap(), Resolved::NotFound, "{key}");
    }
}

#[tokio::test]
async fn a_key_shared_by_two_unlinked_accounts_is_ambiguous() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let first = account("item-1", "owner-1", &["ada"]);
    store.link_account(&first).unwrap();
    store.unlink_account(&first.id, false).unwrap();
    let second = account("item-1", "owner-1", &["ada"]);
    store.link_account(&second).unwrap();
    store.unlink_account(&second.id, false).unwrap();
    let Resolved::Ambiguous(ids) = store.resolve("ada").unwrap() else {
        panic!("expected ambiguous");
    };
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
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
