//! Stripe objects: the out-of-order guard holds inside the commit (older writes and
//! repeats skipped, ties decided by the write's rule, a later write in one commit checked
//! against an earlier one), deletions leave tombstones that listing and counting skip
//! and that an older event cannot undo; the state, the consumed inbox and the end of a
//! sync commit with the objects; listing pages by id; a purge takes everything; and it
//! all survives a reopen.

use serde_json::json;

use super::{account, contract_tests, t0, webhook, Fixture};
use crate::domain::stripe::{
    ObjectQuery, ObjectType, ObjectWrite, OnTie, Stamp, StripeState, TypeBackfill,
};
use crate::domain::stripe_push::AuditNote;
use crate::domain::{AccountId, SyncOutcome};
use crate::store::{IngestOutcome, ObjectCommit, ObjectReceipt, Store, SyncFinish};

contract_tests! {
    the_guard_skips_older_writes_and_repeats_and_lets_ties_follow_their_rule,
    deletions_leave_tombstones_that_older_events_cannot_undo,
    a_commit_writes_state_consumes_inbox_and_ends_the_sync_together,
    listing_pages_live_objects_by_id_per_type,
    a_commit_for_a_missing_account_writes_nothing,
    objects_survive_reopen_and_go_with_a_purge,
}

fn linked(store: &dyn Store, item: &str) -> AccountId {
    let account = account(item, "owner", &[]);
    store.link_account(&account).expect("link");
    account.id
}

fn write(id: &str, name: &str, stamp: Stamp, on_tie: OnTie) -> ObjectWrite {
    ObjectWrite {
        object_type: ObjectType::Products,
        id: id.into(),
        body: Some(json!({"id": id, "object": "product", "name": name})),
        stamp,
        on_tie,
        note: AuditNote::inbound("product.updated", "test"),
    }
}

fn commit(id: &AccountId, writes: Vec<ObjectWrite>) -> ObjectCommit {
    ObjectCommit {
        account_id: id.clone(),
        writes,
        state: StripeState::default(),
        consumed: Vec::new(),
        finish: None,
        pushes: Vec::new(),
        audit: Vec::new(),
    }
}

fn name_of(store: &dyn Store, id: &AccountId, object: &str) -> Option<String> {
    store
        .get_object(id, ObjectType::Products, object)
        .expect("get")
        .and_then(|o| o.body)
        .and_then(|b| b["name"].as_str().map(str::to_owned))
}

fn the_guard_skips_older_writes_and_repeats_and_lets_ties_follow_their_rule(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-guard");
    let receipt = store
        .commit_objects(&commit(
            &id,
            vec![write(
                "prod_1",
                "v100",
                Stamp::event("evt_a", 100),
                OnTie::Skip,
            )],
        ))
        .expect("first");
    assert_eq!(
        receipt,
        ObjectReceipt {
            applied: 1,
            skipped: 0
        }
    );

    // Older: skipped. The same event again: skipped. Newer: applied.
    let receipt = store
        .commit_objects(&commit(
            &id,
            vec![
                write("prod_1", "v99", Stamp::event("evt_old", 99), OnTie::Apply),
                write(
                    "prod_1",
                    "v100-again",
                    Stamp::event("evt_a", 100),
                    OnTie::Apply,
                ),
            ],
        ))
        .expect("stale");
    assert_eq!(
        receipt,
        ObjectReceipt {
            applied: 0,
            skipped: 2
        }
    );
    assert_eq!(
        name_of(store.as_ref(), &id, "prod_1").as_deref(),
        Some("v100")
    );

    // A tie: skipped under Skip, applied under Apply.
    store
        .commit_objects(&commit(
            &id,
            vec![write(
                "prod_1",
                "tie-skip",
                Stamp::event("evt_b", 100),
                OnTie::Skip,
            )],
        ))
        .expect("tie skip");
    assert_eq!(
        name_of(store.as_ref(), &id, "prod_1").as_deref(),
        Some("v100")
    );
    store
        .commit_objects(&commit(
            &id,
            vec![write(
                "prod_1",
                "refetched",
                Stamp {
                    at: 100,
                    event_id: None,
                },
                OnTie::Apply,
            )],
        ))
        .expect("tie apply");
    assert_eq!(
        name_of(store.as_ref(), &id, "prod_1").as_deref(),
        Some("refetched")
    );

    // Within one commit, a later write is checked against the earlier one.
    let receipt = store
        .commit_objects(&commit(
            &id,
            vec![
                write("prod_1", "v200", Stamp::event("evt_c", 200), OnTie::Skip),
                write("prod_1", "v150", Stamp::event("evt_d", 150), OnTie::Skip),
            ],
        ))
        .expect("in-commit order");
    assert_eq!(
        receipt,
        ObjectReceipt {
            applied: 1,
            skipped: 1
        }
    );
    let stored = store
        .get_object(&id, ObjectType::Products, "prod_1")
        .expect("get")
        .expect("stored");
    assert_eq!(stored.stamp, Stamp::event("evt_c", 200));
    assert_eq!(stored.version, 3, "three writes applied so far");
    assert_eq!(
        store
            .object_stamps(
                &id,
                &[
                    (ObjectType::Products, "prod_1".into()),
                    (ObjectType::Products, "prod_none".into()),
                    (ObjectType::Prices, "prod_1".into())
                ]
            )
            .expect("stamps"),
        vec![Some(Stamp::event("evt_c", 200)), None, None],
        "stamps come back in the order asked, by type and id"
    );
}

fn deletions_leave_tombstones_that_older_events_cannot_undo(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-tomb");
    store
        .commit_objects(&commit(
            &id,
            vec![
                write("prod_a", "a", Stamp::event("evt_1", 100), OnTie::Skip),
                write("prod_b", "b", Stamp::event("evt_2", 100), OnTie::Skip),
            ],
        ))
        .expect("create");
    let delete = ObjectWrite {
        body: None,
        ..write("prod_a", "", Stamp::event("evt_3", 110), OnTie::Skip)
    };
    store
        .commit_objects(&commit(&id, vec![delete]))
        .expect("delete");
    let tombstone = store
        .get_object(&id, ObjectType::Products, "prod_a")
        .expect("get")
        .expect("kept");
    assert!(tombstone.is_deleted());
    assert_eq!(
        store
            .count_objects(&id, ObjectType::Products)
            .expect("count"),
        1
    );
    let page = store
        .list_objects(&ObjectQuery {
            account_id: id.clone(),
            object_type: ObjectType::Products,
            after: None,
            limit: 10,
        })
        .expect("list");
    assert_eq!(
        page.objects
            .iter()
            .map(|o| o.id.as_str())
            .collect::<Vec<_>>(),
        vec!["prod_b"]
    );

    // A late update from before the deletion does not bring it back.
    let receipt = store
        .commit_objects(&commit(
            &id,
            vec![write(
                "prod_a",
                "zombie",
                Stamp::event("evt_0", 105),
                OnTie::Apply,
            )],
        ))
        .expect("late");
    assert_eq!(receipt.skipped, 1);
    assert!(store
        .get_object(&id, ObjectType::Products, "prod_a")
        .expect("get")
        .expect("kept")
        .is_deleted());
}

fn a_commit_writes_state_consumes_inbox_and_ends_the_sync_together(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-state");
    let IngestOutcome::Accepted { seq, .. } = store
        .ingest(
            webhook("item-state", 1, t0()),
            std::time::Duration::from_secs(900),
        )
        .expect("ingest")
    else {
        panic!("expected a new entry");
    };
    assert_eq!(store.stripe_state(&id).expect("state"), None);
    let mut state = StripeState::default();
    state
        .backfill
        .insert(ObjectType::Products, TypeBackfill::new(1_000));
    state.events_checked_through = Some(990);
    let finish = SyncFinish {
        cursor: "evt_9".into(),
        outcome: SyncOutcome::Committed {
            added: 1,
            modified: 0,
            removed: 0,
            pages: 1,
            fallback: false,
            request_id: None,
        },
        started_at: t0(),
        finished_at: t0() + chrono::Duration::seconds(2),
    };
    store
        .commit_objects(&ObjectCommit {
            account_id: id.clone(),
            writes: vec![write("prod_1", "a", Stamp::fetched(t0()), OnTie::Skip)],
            state: state.clone(),
            consumed: vec![seq],
            finish: Some(finish),
            pushes: Vec::new(),
            audit: Vec::new(),
        })
        .expect("commit");
    assert_eq!(store.stripe_state(&id).expect("state"), Some(state));
    assert!(store.pending_inbox(&id).expect("inbox").is_empty());
    let account = store.get_account(&id).expect("get").expect("account");
    assert_eq!(account.cursor.as_deref(), Some("evt_9"));
    assert_eq!(account.sync_count, 1);
    assert_eq!(
        account.last_sync_finished_at,
        Some(t0() + chrono::Duration::seconds(2))
    );
}

fn listing_pages_live_objects_by_id_per_type(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-list");
    let other = linked(store.as_ref(), "item-other");
    let mut writes: Vec<ObjectWrite> = (0..25)
        .map(|n| {
            write(
                &format!("prod_{n:02}"),
                "p",
                Stamp::event(format!("evt_{n}"), 100),
                OnTie::Skip,
            )
        })
        .collect();
    writes.push(ObjectWrite {
        object_type: ObjectType::Prices,
        ..write("price_1", "x", Stamp::event("evt_p", 100), OnTie::Skip)
    });
    store.commit_objects(&commit(&id, writes)).expect("commit");
    store
        .commit_objects(&commit(
            &other,
            vec![write("prod_zz", "o", Stamp::event("evt_o", 1), OnTie::Skip)],
        ))
        .expect("other");
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_objects(&ObjectQuery {
                account_id: id.clone(),
                object_type: ObjectType::Products,
                after: after.clone(),
                limit: 10,
            })
            .expect("page");
        assert!(page.objects.len() <= 10);
        seen.extend(page.objects.iter().map(|o| o.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|n| format!("prod_{n:02}")).collect();
    assert_eq!(
        seen, expected,
        "every product once, in id order, nothing of the other type or account"
    );
    assert_eq!(
        store.count_objects(&id, ObjectType::Prices).expect("count"),
        1
    );
    assert_eq!(
        store
            .count_objects(&other, ObjectType::Products)
            .expect("count"),
        1
    );
}

fn a_commit_for_a_missing_account_writes_nothing(f: &mut Fixture) {
    let store = f.store().clone();
    let ghost = AccountId::generate();
    let error = store
        .commit_objects(&commit(
            &ghost,
            vec![write("prod_1", "a", Stamp::event("evt", 1), OnTie::Skip)],
        ))
        .expect_err("no account");
    assert!(
        matches!(error, crate::store::StoreError::AccountNotFound(_)),
        "{error:?}"
    );
    assert_eq!(
        store
            .get_object(&ghost, ObjectType::Products, "prod_1")
            .expect("get"),
        None
    );
    assert_eq!(store.stripe_state(&ghost).expect("state"), None);
}

fn objects_survive_reopen_and_go_with_a_purge(f: &mut Fixture) {
    let id = linked(f.store().as_ref(), "item-reopen");
    let state = StripeState {
        events_applied: 7,
        ..StripeState::default()
    };
    f.store()
        .commit_objects(&ObjectCommit {
            state: state.clone(),
            ..commit(
                &id,
                vec![write("prod_1", "kept", Stamp::event("evt", 5), OnTie::Skip)],
            )
        })
        .expect("commit");
    f.durable();
    f.reopen();
    let store = f.store().clone();
    assert_eq!(
        name_of(store.as_ref(), &id, "prod_1").as_deref(),
        Some("kept")
    );
    assert_eq!(store.stripe_state(&id).expect("state"), Some(state));
    store.unlink_account(&id, true).expect("purge");
    assert_eq!(
        store
            .get_object(&id, ObjectType::Products, "prod_1")
            .expect("get"),
        None
    );
    assert_eq!(store.stripe_state(&id).expect("state"), None);
}
