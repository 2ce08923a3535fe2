//! The polling index (the due index's `Poll` entries): kept in step with link, commit
//! and unlink, read by anchor time, moved forward only, and repaired by acting on
//! what it returned.

use chrono::{DateTime, Utc};

use super::{account, contract_tests, ms, t0, Fixture};
use crate::domain::{Account, AccountId, LinkStatus, SyncOutcome};
use crate::store::{ApplyMode, DueKind, PollEntry, Store, SyncCommit};

contract_tests! {
    the_polling_index_follows_link_commit_and_unlink,
    deferring_a_poll_only_moves_it_forward,
    acting_on_an_entry_of_an_account_without_one_reindexes_it,
    clearing_an_entry_of_a_gone_account_leaves_others_be,
}

/// A linked account created at `created_at` (its first polling anchor).
fn account_at(item_id: &str, created_at: DateTime<Utc>) -> Account {
    let mut account = account(item_id, &format!("owner-{item_id}"), &[]);
    account.created_at = created_at;
    account
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

fn due(store: &dyn Store, by: DateTime<Utc>) -> Vec<(AccountId, DateTime<Utc>)> {
    store
        .due_polls(by, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.account_id, e.anchor))
        .collect()
}

fn entry(id: &AccountId, anchor: DateTime<Utc>) -> PollEntry {
    PollEntry {
        account_id: id.clone(),
        anchor,
    }
}

fn the_polling_index_follows_link_commit_and_unlink(f: &mut Fixture) {
    let store = f.store().as_ref();
    let a = account_at("item-a", t0());
    let b = account_at("item-b", t0() + ms(10));
    store.link_account(&a).unwrap();
    store.link_account(&b).unwrap();

    // Anchored at creation until a sync commits; due means "anchored at or before".
    assert!(due(store, t0() - ms(1)).is_empty());
    assert_eq!(due(store, t0()), [(a.id.clone(), t0())]);
    assert_eq!(
        due(store, t0() + ms(10)),
        [(a.id.clone(), t0()), (b.id.clone(), t0() + ms(10))]
    );
    assert_eq!(store.due_polls(t0() + ms(10), 1).unwrap().len(), 1, "limit");
    // The same entries, seen through the generic index.
    assert_eq!(store.next_due(DueKind::Poll).unwrap(), Some(t0()));
    assert_eq!(
        store
            .due_entry_of(DueKind::Poll, a.id.as_str())
            .unwrap()
            .map(|e| e.due_at),
        Some(t0())
    );

    // A commit moves the anchor to its finish time, in the same transaction.
    store.commit_sync(commit_at(&a.id, t0() + ms(500))).unwrap();
    assert_eq!(due(store, t0() + ms(499)), [(b.id.clone(), t0() + ms(10))]);
    assert_eq!(due(store, t0() + ms(500)).len(), 2);

    // Deferring moves forward only.
    store
        .defer_poll(&entry(&b.id, t0() + ms(10)), t0() + ms(700))
        .unwrap();
    store
        .defer_poll(&entry(&b.id, t0() + ms(700)), t0() + ms(600))
        .unwrap();
    assert_eq!(due(store, t0() + ms(699)), [(a.id.clone(), t0() + ms(500))]);
    assert_eq!(
        due(store, t0() + ms(700))[1],
        (b.id.clone(), t0() + ms(700))
    );

    // Unlinked accounts leave the index and a commit (of a sync that was running at the
    // unlink) does not bring them back.
    store.unlink_account(&a.id, false).unwrap();
    store.commit_sync(commit_at(&a.id, t0() + ms(900))).unwrap();
    assert_eq!(
        due(store, t0() + ms(10_000)),
        [(b.id.clone(), t0() + ms(700))]
    );
    store.unlink_account(&b.id, true).unwrap();
    assert!(due(store, t0() + ms(10_000)).is_empty());
    assert_eq!(store.next_due(DueKind::Poll).unwrap(), None);
    assert_eq!(
        store.due_entry_of(DueKind::Poll, b.id.as_str()).unwrap(),
        None
    );

    // Relinking puts it back, anchored at its last successful sync.
    let mut again = store.get_account(&a.id).unwrap().unwrap();
    again.status = LinkStatus::Linked;
    store.link_account(&again).unwrap();
    assert_eq!(
        due(store, t0() + ms(10_000)),
        [(a.id.clone(), t0() + ms(900))]
    );

    // A clear (what the sweeper does with an entry whose account is gone) removes it.
    store.clear_poll(&entry(&a.id, t0() + ms(900))).unwrap();
    assert!(due(store, t0() + ms(10_000)).is_empty());
    assert_eq!(
        store.due_entry_of(DueKind::Poll, a.id.as_str()).unwrap(),
        None
    );
}

fn deferring_a_poll_only_moves_it_forward(f: &mut Fixture) {
    let store = f.store().as_ref();
    let a = account_at("item-a", t0());
    store.link_account(&a).unwrap();
    store
        .defer_poll(&entry(&a.id, t0()), t0() + ms(100))
        .unwrap();
    assert_eq!(
        due(store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(100))]
    );
    // Earlier than where it is: stays (one entry, not two).
    store
        .defer_poll(&entry(&a.id, t0() + ms(100)), t0() + ms(50))
        .unwrap();
    assert_eq!(
        due(store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(100))]
    );
    // The same time: stays.
    store
        .defer_poll(&entry(&a.id, t0() + ms(100)), t0() + ms(100))
        .unwrap();
    assert_eq!(
        due(store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(100))]
    );
    // An entry read before a commit moved the anchor: the later anchor wins.
    store.commit_sync(commit_at(&a.id, t0() + ms(300))).unwrap();
    store
        .defer_poll(&entry(&a.id, t0() + ms(100)), t0() + ms(200))
        .unwrap();
    assert_eq!(
        due(store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(300))]
    );
    store
        .defer_poll(&entry(&a.id, t0() + ms(300)), t0() + ms(400))
        .unwrap();
    assert_eq!(
        due(store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(400))]
    );
    assert!(due(store, t0() + ms(399)).is_empty());
}

fn acting_on_an_entry_of_an_account_without_one_reindexes_it(f: &mut Fixture) {
    let store = f.store().as_ref();
    let a = account_at("item-a", t0());
    store.link_account(&a).unwrap();
    store.commit_sync(commit_at(&a.id, t0() + ms(50))).unwrap();
    // The index lost the account's entry; acting on an old copy re-indexes it.
    store.clear_poll(&entry(&a.id, t0() + ms(50))).unwrap();
    assert!(due(store, t0() + ms(1_000)).is_empty());
    store
        .defer_poll(&entry(&a.id, t0()), t0() + ms(80))
        .unwrap();
    assert_eq!(
        due(store, t0() + ms(1_000)),
        [(a.id.clone(), t0() + ms(80))]
    );
    assert_eq!(
        store
            .due_entry_of(DueKind::Poll, a.id.as_str())
            .unwrap()
            .map(|e| e.due_at),
        Some(t0() + ms(80))
    );
}

fn clearing_an_entry_of_a_gone_account_leaves_others_be(f: &mut Fixture) {
    let store = f.store().as_ref();
    let a = account_at("item-a", t0() + ms(5));
    store.link_account(&a).unwrap();
    let ghost = AccountId::generate();
    store.clear_poll(&entry(&ghost, t0())).unwrap();
    // A stale copy of a real entry (another anchor) leaves the real one be.
    store.clear_poll(&entry(&a.id, t0())).unwrap();
    assert_eq!(due(store, t0() + ms(1_000)), [(a.id.clone(), t0() + ms(5))]);
}
