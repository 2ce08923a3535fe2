//! The push queue and the audit trail: changes are numbered per account and based on
//! the mirror (or queued behind an open change of the same object); a stale base or a
//! missing object is refused; a commit decides a pending change with its object write
//! and audit entries, and never overwrites a change a human already resolved; held
//! changes are retried (against Stripe's version, with a new generation) or
//! discarded; the backlog counts; listing and the audit trail page in order; all of it
//! survives a reopen and goes with a purge.

use chrono::Duration;
use serde_json::{json, Map};

use super::{account, contract_tests, t0, Fixture};
use crate::domain::stripe::{ObjectType, ObjectWrite, OnTie, Stamp, StripeState};
use crate::domain::stripe_push::{
    AuditNote, Direction, NewPush, PushAction, PushQuery, PushStatus, Resolution,
};
use crate::domain::AccountId;
use crate::store::{ObjectCommit, Store, StoreError};

contract_tests! {
    changes_are_numbered_and_based_on_the_mirror_or_the_change_before,
    a_stale_base_or_a_missing_object_is_refused,
    a_commit_decides_a_pending_change_but_never_a_resolved_one,
    held_changes_are_retried_against_theirs_or_discarded,
    the_backlog_listing_and_audit_trail_page_in_order,
    pushes_survive_reopen_and_go_with_a_purge,
    a_callers_key_answers_with_its_change_and_refuses_another,
}

fn a_callers_key_answers_with_its_change_and_refuses_another(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-a");
    let other = linked(store.as_ref(), "item-b");
    let keyed = |account: &AccountId, name: &str| NewPush {
        client_key: Some("req-1".into()),
        ..change(account, None, PushAction::Create, name)
    };
    let first = store.enqueue_push(&keyed(&id, "one")).expect("first");
    assert_eq!(first.client_key.as_deref(), Some("req-1"));
    // The same change with the same key: the same change, nothing queued.
    let again = store.enqueue_push(&keyed(&id, "one")).expect("again");
    assert_eq!(again, first);
    assert_eq!(store.open_pushes(&id).expect("open").len(), 1);
    // Another change with the key: refused, nothing queued.
    assert!(matches!(
        store.enqueue_push(&keyed(&id, "two")),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.open_pushes(&id).expect("open").len(), 1);
    // Keys are per account.
    let elsewhere = store.enqueue_push(&keyed(&other, "two")).expect("other");
    assert_eq!(elsewhere.seq, 1);
    // Still answered once the change is decided.
    let mut pushed = first.clone();
    pushed.status = PushStatus::Pushed;
    decide(store.as_ref(), &id, pushed.clone());
    assert_eq!(
        store.enqueue_push(&keyed(&id, "one")).expect("replay"),
        pushed
    );
}

fn linked(store: &dyn Store, item: &str) -> AccountId {
    let account = account(item, "owner", &[]);
    store.link_account(&account).expect("link");
    account.id
}

/// Mirrors product `id` named `name` (one more version).
fn mirror(store: &dyn Store, account: &AccountId, id: &str, name: &str, at: i64) {
    store
        .commit_objects(&ObjectCommit {
            account_id: account.clone(),
            writes: vec![ObjectWrite {
                object_type: ObjectType::Products,
                id: id.into(),
                body: Some(json!({"id": id, "object": "product", "name": name})),
                stamp: Stamp::event(format!("evt_{at}"), at),
                on_tie: OnTie::Skip,
                note: AuditNote::inbound("product.updated", format!("event evt_{at}")),
            }],
            state: StripeState::default(),
            consumed: Vec::new(),
            finish: None,
            pushes: Vec::new(),
            audit: Vec::new(),
        })
        .expect("mirror");
}

fn change(account: &AccountId, object_id: Option<&str>, action: PushAction, name: &str) -> NewPush {
    let mut params = Map::new();
    params.insert("name".into(), name.into());
    NewPush {
        account_id: account.clone(),
        object_type: ObjectType::Products,
        object_id: object_id.map(str::to_owned),
        action,
        params,
        expected_version: None,
        at: t0(),
        client_key: None,
    }
}

fn decide(store: &dyn Store, account: &AccountId, push: crate::domain::stripe_push::Push) {
    store
        .commit_objects(&ObjectCommit {
            account_id: account.clone(),
            writes: Vec::new(),
            state: StripeState::default(),
            consumed: Vec::new(),
            finish: None,
            pushes: vec![push],
            audit: Vec::new(),
        })
        .expect("decide");
}

fn changes_are_numbered_and_based_on_the_mirror_or_the_change_before(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-a");
    let other = linked(store.as_ref(), "item-b");
    mirror(store.as_ref(), &id, "prod_1", "one", 100);

    let create = store
        .enqueue_push(&change(&id, None, PushAction::Create, "new"))
        .expect("create");
    assert_eq!((create.seq, create.status), (1, PushStatus::Pending));
    assert_eq!(
        (create.base, create.base_version, create.after),
        (None, None, None)
    );

    let first = store
        .enqueue_push(&change(&id, Some("prod_1"), PushAction::Update, "two"))
        .expect("update");
    assert_eq!(first.seq, 2);
    assert_eq!(first.base_version, Some(1));
    assert_eq!(
        first.base.as_ref().map(|b| b["name"].clone()),
        Some(json!("one"))
    );
    assert_eq!(first.after, None);

    // A second change of the same object, while the first is open, waits behind it.
    let second = store
        .enqueue_push(&change(&id, Some("prod_1"), PushAction::Archive, "three"))
        .expect("archive");
    assert_eq!((second.seq, second.after, second.base), (3, Some(2), None));

    // Numbers are per account.
    let elsewhere = store
        .enqueue_push(&change(&other, None, PushAction::Create, "x"))
        .expect("other account");
    assert_eq!(elsewhere.seq, 1);
    assert_eq!(store.get_push(&id, 2).expect("get"), Some(first));
    assert_eq!(store.get_push(&id, 9).expect("get"), None);
    let open: Vec<u64> = store
        .open_pushes(&id)
        .expect("open")
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(open, vec![1, 2, 3]);
}

fn a_stale_base_or_a_missing_object_is_refused(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-a");
    mirror(store.as_ref(), &id, "prod_1", "one", 100);
    mirror(store.as_ref(), &id, "prod_1", "two", 200);
    let mut stale = change(&id, Some("prod_1"), PushAction::Update, "x");
    stale.expected_version = Some(1);
    match store.enqueue_push(&stale) {
        Err(StoreError::VersionConflict { read, stored, .. }) => assert_eq!((read, stored), (1, 2)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    stale.expected_version = Some(2);
    store.enqueue_push(&stale).expect("current base");
    let missing = change(&id, Some("prod_nope"), PushAction::Update, "x");
    assert!(matches!(
        store.enqueue_push(&missing),
        Err(StoreError::InvalidState(_))
    ));
    let ghost = AccountId("acc_00000000000000000000000000000000".into());
    assert!(matches!(
        store.enqueue_push(&change(&ghost, None, PushAction::Create, "x")),
        Err(StoreError::AccountNotFound(_))
    ));
    // Refusals numbered nothing.
    let next = store
        .enqueue_push(&change(&id, None, PushAction::Create, "y"))
        .expect("create");
    assert_eq!(next.seq, 2);
}

fn a_commit_decides_a_pending_change_but_never_a_resolved_one(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-a");
    mirror(store.as_ref(), &id, "prod_1", "one", 100);
    let mut pushed = store
        .enqueue_push(&change(&id, Some("prod_1"), PushAction::Update, "two"))
        .expect("update");
    pushed.status = PushStatus::Pushed;
    pushed.result = Some(json!({"id": "prod_1", "object": "product", "name": "two"}));
    store
        .commit_objects(&ObjectCommit {
            account_id: id.clone(),
            writes: vec![ObjectWrite {
                object_type: ObjectType::Products,
                id: "prod_1".into(),
                body: pushed.result.clone(),
                stamp: Stamp {
                    at: 150,
                    event_id: None,
                },
                on_tie: OnTie::Apply,
                note: AuditNote::outbound("update pushed", &pushed),
            }],
            state: StripeState::default(),
            consumed: Vec::new(),
            finish: None,
            pushes: vec![pushed.clone()],
            audit: Vec::new(),
        })
        .expect("decide");
    assert_eq!(store.get_push(&id, 1).expect("get"), Some(pushed.clone()));
    let object = store
        .get_object(&id, ObjectType::Products, "prod_1")
        .expect("get")
        .expect("object");
    assert_eq!(
        (object.version, object.body.expect("body")["name"].clone()),
        (2, json!("two"))
    );

    // A change already decided (here: pushed) is not overwritten by a later commit.
    let mut late = pushed.clone();
    late.status = PushStatus::Failed;
    decide(store.as_ref(), &id, late);
    assert_eq!(
        store.get_push(&id, 1).expect("get").map(|p| p.status),
        Some(PushStatus::Pushed)
    );
    assert!(store.open_pushes(&id).expect("open").is_empty());
}

fn held_changes_are_retried_against_theirs_or_discarded(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-a");
    mirror(store.as_ref(), &id, "prod_1", "one", 100);
    let mut held = store
        .enqueue_push(&change(&id, Some("prod_1"), PushAction::Update, "mine"))
        .expect("update");
    let later = t0() + Duration::seconds(5);
    // Only a held change can be resolved.
    assert!(matches!(
        store.resolve_push(&id, 1, Resolution::Retry, later),
        Err(StoreError::InvalidState(_))
    ));
    assert!(matches!(
        store.resolve_push(&id, 7, Resolution::Discard, later),
        Err(StoreError::InvalidState(_))
    ));
    let theirs = json!({"id": "prod_1", "object": "product", "name": "theirs"});
    held.status = PushStatus::Conflict;
    held.theirs = Some(theirs.clone());
    held.sent_at = None;
    decide(store.as_ref(), &id, held);
    let retried = store
        .resolve_push(&id, 1, Resolution::Retry, later)
        .expect("retry");
    assert_eq!(retried.status, PushStatus::Pending);
    assert_eq!(retried.base, Some(theirs));
    assert_eq!(retried.theirs, None);
    assert_eq!(retried.generation, 1);
    assert_ne!(
        retried.idempotency_key(),
        store
            .enqueue_push(&change(&id, None, PushAction::Create, "x"))
            .expect("create")
            .idempotency_key()
    );
    assert_eq!(store.get_push(&id, 1).expect("get"), Some(retried.clone()));

    let mut failed = retried;
    failed.status = PushStatus::Failed;
    failed.last_error = Some("refused".into());
    decide(store.as_ref(), &id, failed);
    let discarded = store
        .resolve_push(&id, 1, Resolution::Discard, later)
        .expect("discard");
    assert_eq!(discarded.status, PushStatus::Discarded);
    assert!(matches!(
        store.resolve_push(&id, 1, Resolution::Retry, later),
        Err(StoreError::InvalidState(_))
    ));
    let whats: Vec<String> = store
        .audit_trail(&id, ObjectType::Products, "prod_1", None, 100)
        .expect("audit")
        .entries
        .into_iter()
        .map(|e| e.note.what)
        .collect();
    assert_eq!(
        whats,
        vec![
            "product.updated",
            "update queued (name)",
            "retried after conflict",
            "discarded (failed)"
        ]
    );
}

fn the_backlog_listing_and_audit_trail_page_in_order(f: &mut Fixture) {
    let store = f.store().clone();
    let id = linked(store.as_ref(), "item-a");
    for n in 0..5 {
        mirror(store.as_ref(), &id, "prod_1", &format!("v{n}"), 100 + n);
    }
    for n in 0..4 {
        store
            .enqueue_push(&NewPush {
                at: t0() + Duration::seconds(n),
                ..change(&id, None, PushAction::Create, &format!("p{n}"))
            })
            .expect("create");
    }
    let mut second = store.get_push(&id, 2).expect("get").expect("push");
    second.status = PushStatus::Pushed;
    decide(store.as_ref(), &id, second);
    let mut third = store.get_push(&id, 3).expect("get").expect("push");
    third.attempts = 2;
    third.last_error = Some("stripe unreachable".into());
    decide(store.as_ref(), &id, third);
    let mut fourth = store.get_push(&id, 4).expect("get").expect("push");
    fourth.status = PushStatus::Conflict;
    decide(store.as_ref(), &id, fourth);

    let backlog = store.push_backlog(&id).expect("backlog");
    assert_eq!(
        (
            backlog.pending,
            backlog.retrying,
            backlog.conflicts,
            backlog.pushed
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(backlog.oldest_pending_at, Some(t0()));
    assert_eq!(backlog.last_error.as_deref(), Some("stripe unreachable"));

    let query = |statuses: Vec<PushStatus>, after, limit| PushQuery {
        account_id: id.clone(),
        statuses,
        after,
        limit,
    };
    let (page, next) = store
        .list_pushes(&query(Vec::new(), None, 3))
        .expect("list");
    assert_eq!(
        page.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(next, Some(3));
    let (page, next) = store
        .list_pushes(&query(Vec::new(), next, 3))
        .expect("list");
    assert_eq!(
        (page.iter().map(|p| p.seq).collect::<Vec<_>>(), next),
        (vec![4], None)
    );
    let (pending, _) = store
        .list_pushes(&query(vec![PushStatus::Pending], None, 10))
        .expect("pending");
    assert_eq!(
        pending.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![1, 3]
    );

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .audit_trail(&id, ObjectType::Products, "prod_1", after, 2)
            .expect("audit");
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.iter().map(|e| (e.version, e.note.direction)));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let versions: Vec<Option<u64>> = seen.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=5).map(Some).collect::<Vec<_>>());
    assert!(seen.iter().all(|(_, d)| *d == Direction::Inbound));
    assert!(store
        .audit_trail(&id, ObjectType::Products, "prod_2", None, 10)
        .expect("audit")
        .entries
        .is_empty());
}

fn pushes_survive_reopen_and_go_with_a_purge(f: &mut Fixture) {
    let id = linked(f.store().as_ref(), "item-reopen");
    mirror(f.store().as_ref(), &id, "prod_1", "one", 100);
    let queued = f
        .store()
        .enqueue_push(&change(&id, Some("prod_1"), PushAction::Update, "two"))
        .expect("update");
    f.durable();
    f.reopen();
    let store = f.store().clone();
    assert_eq!(store.get_push(&id, 1).expect("get"), Some(queued));
    assert_eq!(
        store
            .audit_trail(&id, ObjectType::Products, "prod_1", None, 10)
            .expect("audit")
            .entries
            .len(),
        2
    );
    // The numbering goes on after a reopen.
    let next = store
        .enqueue_push(&change(&id, None, PushAction::Create, "x"))
        .expect("create");
    assert_eq!(next.seq, 2);
    store.unlink_account(&id, true).expect("purge");
    assert_eq!(store.get_push(&id, 1).expect("get"), None);
    assert!(store
        .audit_trail(&id, ObjectType::Products, "prod_1", None, 10)
        .expect("audit")
        .entries
        .is_empty());
    assert_eq!(store.push_backlog(&id).expect("backlog").pending, 0);
}
