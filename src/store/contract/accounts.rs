//! Account records and their lookup keys: linking (conflicts, adoption of early
//! webhooks), resolving, listing, unlinking (retired keys, purge), relinking and the
//! per-account marks.

use super::{account, contract_tests, minutes, row, seq_of, sync, t0, webhook, Fixture, TTL};
use crate::domain::{
    AccessToken, Account, AccountId, GaveUpCause, LinkStatus, NeedsReauth, PendingDeadline,
    Quarantine, SyncGaveUp, SyncOutcome,
};
use crate::store::{ApplyMode, IngestOutcome, LinkReceipt, Resolved, RetryRecord, StoreError};

contract_tests! {
    events_for_an_unlinked_item_are_adopted_on_link,
    taken_alias_or_item_id_is_a_conflict_and_writes_nothing,
    resolve_covers_canonical_alias_item_and_owner_ids,
    list_and_count_cover_linked_and_unlinked_accounts,
    failed_and_started_syncs_touch_only_their_fields,
    marks_touch_only_their_fields_and_a_parking_mark_drops_the_retry,
    unknown_accounts_are_not_found,
    unlink_keeps_data_and_retires_keys_and_purge_deletes_it,
    live_keys_win_over_retired_ones,
    a_key_shared_by_two_unlinked_accounts_is_ambiguous,
    relink_replaces_the_token_and_lifts_deadline_and_failed_marks,
    relinking_an_unlinked_or_unknown_account_is_not_found,
    update_login_state_keeps_only_the_login_fields,
    update_login_state_that_parks_drops_the_retry_record,
}

/// The whole record as JSON (`Account` has no `PartialEq`; its token is included).
fn record(account: &Account) -> serde_json::Value {
    serde_json::to_value(account).unwrap()
}

fn retry_for(id: &AccountId) -> RetryRecord {
    RetryRecord {
        account_id: id.clone(),
        attempt: 1,
        due_at: t0(),
        code: "INTERNAL_SERVER_ERROR".into(),
        request_id: None,
    }
}

fn parked(after_seq: u64) -> NeedsReauth {
    NeedsReauth {
        code: "ITEM_LOGIN_REQUIRED".into(),
        request_id: Some("req-1".into()),
        since: t0(),
        after_seq,
        relinked: false,
    }
}

fn gave_up() -> SyncGaveUp {
    SyncGaveUp {
        reason: "INVALID_ACCESS_TOKEN".into(),
        attempts: 1,
        since: t0(),
        cause: GaveUpCause::AccessRevoked,
    }
}

fn deadline() -> PendingDeadline {
    PendingDeadline {
        code: "PENDING_EXPIRATION".into(),
        deadline: Some(t0() + minutes(60 * 24 * 7)),
        reason: None,
        since: t0(),
    }
}

fn events_for_an_unlinked_item_are_adopted_on_link(f: &mut Fixture) {
    let store = f.store();
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
    // A repeat of a kept event is a duplicate too, about no account yet.
    assert_eq!(
        store.ingest(webhook("item-early", 1, t0()), TTL).unwrap(),
        IngestOutcome::Duplicate { account_id: None }
    );

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
    assert_eq!(
        store.accounts_with_pending_inbox().unwrap(),
        std::slice::from_ref(&acc.id)
    );

    // Once linked, events route straight to the account.
    let next = store.ingest(webhook("item-early", 3, t0()), TTL).unwrap();
    assert!(
        matches!(next, IngestOutcome::Accepted { account_id: Some(ref id), seq: s } if *id == acc.id && s > seq)
    );
    assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 2);

    // Counted again from what is stored (sled recounts its depth at open): the moved
    // event is in one place only.
    f.durable();
    f.reopen();
    let store = f.store();
    assert_eq!(store.inbox_depth().unwrap(), 3);
    // Other items' events stayed kept: exactly one for the next account of item-other.
    let other = account("item-other", "owner-2", &[]);
    assert_eq!(store.link_account(&other).unwrap().adopted_events, 1);
    assert_eq!(store.inbox_depth().unwrap(), 3);
}

fn taken_alias_or_item_id_is_a_conflict_and_writes_nothing(f: &mut Fixture) {
    let store = f.store();
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
    assert_eq!(store.resolve("owner-2").unwrap(), Resolved::NotFound);

    let c = account("item-a", "owner-3", &[]);
    assert!(
        matches!(store.link_account(&c), Err(StoreError::Conflict { ref key, .. }) if key == "item-a")
    );
    assert_eq!(store.count_accounts().unwrap(), 1);
    assert_eq!(
        store.resolve("alice@example.com").unwrap(),
        Resolved::Found(a.id.clone()),
        "the holder keeps its key"
    );
}

fn resolve_covers_canonical_alias_item_and_owner_ids(f: &mut Fixture) {
    let store = f.store();
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

fn list_and_count_cover_linked_and_unlinked_accounts(f: &mut Fixture) {
    let store = f.store();
    let accounts = [
        account("item-a", "owner-1", &[]),
        account("item-b", "owner-1", &[]),
        account("item-c", "owner-2", &[]),
    ];
    for acc in &accounts {
        store.link_account(acc).unwrap();
    }
    store.unlink_account(&accounts[1].id, false).unwrap();
    assert_eq!(store.count_accounts().unwrap(), 3, "linked and unlinked");
    let mut expected: Vec<_> = accounts.iter().map(|a| a.id.clone()).collect();
    expected.sort();
    // Paged two at a time, in id order, the unlinked one included.
    let first = store.list_accounts(None, 2).unwrap();
    let second = store.list_accounts(Some(&first[1].id), 2).unwrap();
    let ids: Vec<_> = first.iter().chain(&second).map(|a| a.id.clone()).collect();
    assert_eq!(ids, expected);
    let unlinked = first
        .iter()
        .chain(&second)
        .find(|a| a.id == accounts[1].id)
        .unwrap();
    assert_eq!(unlinked.status, LinkStatus::Unlinked);
    assert!(store
        .list_accounts(Some(&expected[2]), 2)
        .unwrap()
        .is_empty());
    assert!(store.list_accounts(None, 0).unwrap().is_empty());
    store.unlink_account(&accounts[1].id, true).unwrap();
    assert_eq!(
        store.count_accounts().unwrap(),
        2,
        "a purge deletes the record"
    );
}

fn failed_and_started_syncs_touch_only_their_fields(f: &mut Fixture) {
    let store = f.store();
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

fn marks_touch_only_their_fields_and_a_parking_mark_drops_the_retry(f: &mut Fixture) {
    let store = f.store();
    let acc = account("item-1", "owner-1", &["alias-1"]);
    store.link_account(&acc).unwrap();
    let baseline = store.get_account(&acc.id).unwrap().unwrap();

    let quarantine = Quarantine {
        reason: "panicked".into(),
        failures: 3,
        since: t0(),
    };
    store
        .set_quarantine(&acc.id, Some(quarantine.clone()))
        .unwrap();
    store
        .set_pending_deadline(&acc.id, Some(deadline()))
        .unwrap();
    let stored = store.get_account(&acc.id).unwrap().unwrap();
    let mut expected = baseline.clone();
    expected.quarantine = Some(quarantine);
    expected.pending_deadline = Some(deadline());
    assert_eq!(record(&stored), record(&expected), "nothing else changed");

    // Neither of those touches the retry record; a needs-reauth or gave-up mark does.
    store.record_retry(&retry_for(&acc.id)).unwrap();
    store.set_quarantine(&acc.id, None).unwrap();
    store.set_pending_deadline(&acc.id, None).unwrap();
    assert!(store.retry_of(&acc.id).unwrap().is_some());
    assert_eq!(
        record(&store.get_account(&acc.id).unwrap().unwrap()),
        record(&baseline)
    );

    store.set_needs_reauth(&acc.id, Some(parked(4))).unwrap();
    assert_eq!(store.retry_of(&acc.id).unwrap(), None);
    assert_eq!(
        store.get_account(&acc.id).unwrap().unwrap().needs_reauth,
        Some(parked(4))
    );
    // Clearing a mark leaves a retry written since alone.
    store.record_retry(&retry_for(&acc.id)).unwrap();
    store.set_needs_reauth(&acc.id, None).unwrap();
    assert!(store.retry_of(&acc.id).unwrap().is_some());

    store.set_sync_gave_up(&acc.id, Some(gave_up())).unwrap();
    assert_eq!(store.retry_of(&acc.id).unwrap(), None);
    assert!(store
        .due_retries(t0() + minutes(60), 10)
        .unwrap()
        .is_empty());
    store.record_retry(&retry_for(&acc.id)).unwrap();
    store.set_sync_gave_up(&acc.id, None).unwrap();
    assert!(store.retry_of(&acc.id).unwrap().is_some());
    assert_eq!(
        record(&store.get_account(&acc.id).unwrap().unwrap()),
        record(&baseline)
    );
}

fn unknown_accounts_are_not_found(f: &mut Fixture) {
    let store = f.store();
    let unknown = AccountId::generate();
    assert!(store.get_account(&unknown).unwrap().is_none());
    assert!(store.unlink_account(&unknown, false).unwrap().is_none());
    assert!(store.unlink_account(&unknown, true).unwrap().is_none());
    let not_found = |result: Result<(), StoreError>| {
        assert!(
            matches!(result, Err(StoreError::AccountNotFound(ref id)) if *id == unknown),
            "{result:?}"
        );
    };
    not_found(store.set_quarantine(&unknown, None));
    not_found(store.set_sync_gave_up(&unknown, None));
    not_found(store.set_needs_reauth(&unknown, None));
    not_found(store.set_pending_deadline(&unknown, None));
    not_found(store.record_sync_failed(
        &unknown,
        SyncOutcome::Failed {
            code: "X".into(),
            message: "x".into(),
            request_id: None,
        },
        t0(),
    ));
    assert!(matches!(
        store.update_login_state(&unknown, &|_| true),
        Err(StoreError::AccountNotFound(_))
    ));
    assert_eq!(store.count_accounts().unwrap(), 0, "nothing was created");
}

fn unlink_keeps_data_and_retires_keys_and_purge_deletes_it(f: &mut Fixture) {
    let store = f.store();
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
    assert_eq!(store.resolve(old.id.as_str()).unwrap(), Resolved::NotFound);
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
    assert_eq!(store.inbox_depth().unwrap(), 0);
    assert!(store.accounts_with_pending_inbox().unwrap().is_empty());
}

fn live_keys_win_over_retired_ones(f: &mut Fixture) {
    let store = f.store();
    let old = account("item-1", "owner-1", &["alias-1"]);
    store.link_account(&old).unwrap();
    store.unlink_account(&old.id, false).unwrap();
    // The successor shares every key: item, owner and alias.
    let new = account("item-1", "owner-1", &["alias-1"]);
    assert_eq!(store.link_account(&new).unwrap().adopted_events, 0);
    for key in ["item-1", "owner-1", "alias-1"] {
        assert_eq!(
            store.resolve(key).unwrap(),
            Resolved::Found(new.id.clone()),
            "{key}: the linked account, not the unlinked one"
        );
    }
    // The unlinked one is still found by its own id.
    assert_eq!(
        store.resolve(old.id.as_str()).unwrap(),
        Resolved::Found(old.id.clone())
    );
    // A successor sharing only the owner: its other keys are the old account's still.
    let owner_only = account("item-2", "owner-9", &[]);
    store.link_account(&owner_only).unwrap();
    store.unlink_account(&owner_only.id, false).unwrap();
    let sibling = account("item-3", "owner-9", &[]);
    store.link_account(&sibling).unwrap();
    assert_eq!(
        store.resolve("owner-9").unwrap(),
        Resolved::Found(sibling.id.clone())
    );
    assert_eq!(
        store.resolve("item-2").unwrap(),
        Resolved::Found(owner_only.id.clone())
    );
}

fn a_key_shared_by_two_unlinked_accounts_is_ambiguous(f: &mut Fixture) {
    let store = f.store();
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

fn relink_replaces_the_token_and_lifts_deadline_and_failed_marks(f: &mut Fixture) {
    let store = f.store();
    let acc = account("item-1", "owner-1", &["alias-1"]);
    store.link_account(&acc).unwrap();
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![row("t1", "2024-01-01")],
            &[],
            vec![],
            "c1",
        ))
        .unwrap();
    store.set_needs_reauth(&acc.id, Some(parked(0))).unwrap();
    store
        .set_pending_deadline(&acc.id, Some(deadline()))
        .unwrap();
    store.set_sync_gave_up(&acc.id, Some(gave_up())).unwrap();
    let before = store.get_account(&acc.id).unwrap().unwrap();

    let relinked = store
        .relink_account(&acc.id, &AccessToken::new("access-sandbox-new"))
        .unwrap();
    assert_eq!(relinked.access_token.expose(), "access-sandbox-new");
    assert_eq!(relinked.pending_deadline, None);
    assert_eq!(relinked.failed, None);
    let mark = relinked.needs_reauth.clone().expect("still parked");
    assert!(mark.relinked, "its next sync lifts it");
    assert_eq!(
        (mark.code.as_str(), mark.since),
        ("ITEM_LOGIN_REQUIRED", t0())
    );
    // Cursor, rows, keys and status stay.
    assert_eq!(relinked.cursor.as_deref(), Some("c1"));
    assert_eq!(relinked.sync_count, before.sync_count);
    assert_eq!(relinked.status, LinkStatus::Linked);
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 1);
    assert_eq!(
        store.resolve("alias-1").unwrap(),
        Resolved::Found(acc.id.clone())
    );
    // What it returns is what is stored.
    assert_eq!(
        record(&store.get_account(&acc.id).unwrap().unwrap()),
        record(&relinked)
    );

    // Not parked: a relink does not park it.
    let other = account("item-2", "owner-1", &[]);
    store.link_account(&other).unwrap();
    let relinked = store
        .relink_account(&other.id, &AccessToken::new("access-sandbox-2"))
        .unwrap();
    assert_eq!(relinked.needs_reauth, None);
    assert_eq!(relinked.access_token.expose(), "access-sandbox-2");
}

fn relinking_an_unlinked_or_unknown_account_is_not_found(f: &mut Fixture) {
    let store = f.store();
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store.unlink_account(&acc.id, false).unwrap();
    let token = AccessToken::new("access-sandbox-new");
    assert!(matches!(
        store.relink_account(&acc.id, &token),
        Err(StoreError::AccountNotFound(ref id)) if *id == acc.id
    ));
    assert_eq!(
        store
            .get_account(&acc.id)
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "access-sandbox-secret",
        "the unlinked record is untouched"
    );
    let unknown = AccountId::generate();
    assert!(matches!(
        store.relink_account(&unknown, &token),
        Err(StoreError::AccountNotFound(_))
    ));
}

fn update_login_state_keeps_only_the_login_fields(f: &mut Fixture) {
    let store = f.store();
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let baseline = store.get_account(&acc.id).unwrap().unwrap();

    // `false`: nothing written, the stored record returned.
    let untouched = store
        .update_login_state(&acc.id, &|account| {
            account.pending_deadline = Some(deadline());
            false
        })
        .unwrap();
    assert_eq!(record(&untouched), record(&baseline));
    assert_eq!(
        record(&store.get_account(&acc.id).unwrap().unwrap()),
        record(&baseline)
    );

    // `true`: the four login fields are kept, every other edit is dropped.
    let updated = store
        .update_login_state(&acc.id, &|account| {
            account.pending_deadline = Some(deadline());
            account.login_seen_through = Some(7);
            account.cursor = Some("forged".into());
            account.owner_id = "someone-else".into();
            account.access_token = AccessToken::new("forged-token");
            account.status = LinkStatus::Unlinked;
            account.sync_count = 99;
            true
        })
        .unwrap();
    let mut expected = baseline.clone();
    expected.pending_deadline = Some(deadline());
    expected.login_seen_through = Some(7);
    assert_eq!(record(&updated), record(&expected));
    assert_eq!(
        record(&store.get_account(&acc.id).unwrap().unwrap()),
        record(&expected)
    );
    assert_eq!(updated.access_token.expose(), "access-sandbox-secret");

    // It edits the record as stored now, not a copy read earlier.
    store
        .set_quarantine(
            &acc.id,
            Some(Quarantine {
                reason: "x".into(),
                failures: 1,
                since: t0(),
            }),
        )
        .unwrap();
    let seen = std::sync::Mutex::new(None);
    store
        .update_login_state(&acc.id, &|account| {
            *seen.lock().unwrap() = Some(account.quarantine.is_some());
            account.pending_deadline = None;
            true
        })
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(true));
    let stored = store.get_account(&acc.id).unwrap().unwrap();
    assert!(
        stored.quarantine.is_some(),
        "the quarantine set since stays"
    );
    assert_eq!(stored.pending_deadline, None);
    assert_eq!(stored.login_seen_through, Some(7));
}

fn update_login_state_that_parks_drops_the_retry_record(f: &mut Fixture) {
    let store = f.store();
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();

    // A write that leaves no mark keeps the retry record.
    store.record_retry(&retry_for(&acc.id)).unwrap();
    store
        .update_login_state(&acc.id, &|account| {
            account.login_seen_through = Some(1);
            true
        })
        .unwrap();
    assert!(store.retry_of(&acc.id).unwrap().is_some());
    // Neither does one that writes nothing, even with a mark in the edit.
    store
        .update_login_state(&acc.id, &|account| {
            account.needs_reauth = Some(parked(1));
            false
        })
        .unwrap();
    assert!(store.retry_of(&acc.id).unwrap().is_some());

    // Needs-reauth set: the retry record goes, from the index too.
    let parked_now = store
        .update_login_state(&acc.id, &|account| {
            account.needs_reauth = Some(parked(1));
            true
        })
        .unwrap();
    assert_eq!(parked_now.needs_reauth, Some(parked(1)));
    assert_eq!(store.retry_of(&acc.id).unwrap(), None);
    assert!(store
        .due_retries(t0() + minutes(60), 10)
        .unwrap()
        .is_empty());

    // Failed set (needs-reauth lifted in the same write): the retry record goes too.
    store.record_retry(&retry_for(&acc.id)).unwrap();
    let failed = store
        .update_login_state(&acc.id, &|account| {
            account.needs_reauth = None;
            account.failed = Some(gave_up());
            true
        })
        .unwrap();
    assert_eq!(
        (failed.needs_reauth, failed.failed),
        (None, Some(gave_up()))
    );
    assert_eq!(store.retry_of(&acc.id).unwrap(), None);

    // A write that leaves a mark set before it also drops a retry recorded since.
    store.record_retry(&retry_for(&acc.id)).unwrap();
    store
        .update_login_state(&acc.id, &|account| {
            account.login_seen_through = Some(2);
            true
        })
        .unwrap();
    assert_eq!(store.retry_of(&acc.id).unwrap(), None);
}
