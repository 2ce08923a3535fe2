//! The webhook inbox: dedup within the TTL (and its expiry), repeats of events a sync
//! has read or consumed, what a commit consumes, and events racing a link.

use std::sync::Arc;

use super::{
    account, contract_tests, minutes, pending_seqs, seq_of, sync, t0, webhook, Fixture, TTL,
};
use crate::store::{ApplyMode, IngestOutcome};

contract_tests! {
    duplicate_within_ttl_is_rejected_and_accepted_after_expiry,
    purge_expired_dedup_deletes_only_expired_records,
    events_racing_a_link_all_end_up_in_its_inbox,
    a_repeat_of_an_event_a_running_sync_has_read_is_appended_again,
    a_repeat_of_an_already_consumed_event_is_appended_again,
    claiming_returns_what_is_pending_and_keeps_it_pending,
    consumed_inbox_entries_leave_with_the_commit,
}

fn duplicate_within_ttl_is_rejected_and_accepted_after_expiry(f: &mut Fixture) {
    let store = f.store();
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
    // Nothing is left to purge, however late.
    assert_eq!(
        store.purge_expired_dedup(t0() + minutes(10_000)).unwrap(),
        0
    );
    assert_eq!(store.inbox_depth().unwrap(), 3);
}

fn purge_expired_dedup_deletes_only_expired_records(f: &mut Fixture) {
    let store = f.store();
    // Not linked: dedup works the same for kept events.
    seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    seq_of(
        store
            .ingest(webhook("item-1", 2, t0() + minutes(10)), TTL)
            .unwrap(),
    );
    assert_eq!(store.purge_expired_dedup(t0() + minutes(5)).unwrap(), 0);
    assert_eq!(store.purge_expired_dedup(t0() + minutes(16)).unwrap(), 1);
    // The unexpired one still deduplicates; purging never touches the inbox.
    assert_eq!(
        store
            .ingest(webhook("item-1", 2, t0() + minutes(16)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { account_id: None }
    );
    assert_eq!(store.inbox_depth().unwrap(), 2);
    assert_eq!(store.purge_expired_dedup(t0() + minutes(26)).unwrap(), 1);
    assert_eq!(store.purge_expired_dedup(t0() + minutes(26)).unwrap(), 0);
}

fn events_racing_a_link_all_end_up_in_its_inbox(f: &mut Fixture) {
    // Ingest resolves the item without a transaction on some backends; whichever side
    // loses the race (the link's adoption or the ingest's re-check) the entry must
    // land in the inbox, never stay stranded among the kept ones.
    const ROUNDS: u64 = 20;
    for round in 0..ROUNDS {
        let store = f.store();
        let item = format!("item-race-{round}");
        let acc = account(&item, "owner-race", &[]);
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let store = Arc::clone(store);
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
        assert_eq!(
            pending_seqs(store.as_ref(), &acc.id),
            accepted,
            "round {round}: every accepted event is in the inbox"
        );
        assert_eq!(
            store.inbox_depth().unwrap(),
            200 * (round + 1),
            "round {round}: nothing stranded"
        );
    }
    // Counted again from what is stored: no event is both in an inbox and kept.
    f.durable();
    f.reopen();
    assert_eq!(f.store().inbox_depth().unwrap(), 200 * ROUNDS);
}

fn a_repeat_of_an_event_a_running_sync_has_read_is_appended_again(f: &mut Fixture) {
    let store = f.store();
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
    assert_eq!(pending_seqs(store.as_ref(), &acc.id), [second]);
    assert!(matches!(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(2)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
}

fn a_repeat_of_an_already_consumed_event_is_appended_again(f: &mut Fixture) {
    let store = f.store();
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
    assert_eq!(pending_seqs(store.as_ref(), &acc.id), [second]);
    // And its own repeat is a duplicate again while it is pending.
    assert!(matches!(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(3)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
}

fn claiming_returns_what_is_pending_and_keeps_it_pending(f: &mut Fixture) {
    let store = f.store();
    let acc = account("item-1", "owner-1", &[]);
    let other = account("item-2", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store.link_account(&other).unwrap();
    let s1 = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    let s2 = seq_of(store.ingest(webhook("item-1", 2, t0()), TTL).unwrap());
    let o1 = seq_of(store.ingest(webhook("item-2", 1, t0()), TTL).unwrap());
    let claimed = store.claim_pending_inbox(&acc.id).unwrap();
    let pending = store.pending_inbox(&acc.id).unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [s1, s2],
        "by seq, that account's only"
    );
    assert_eq!(claimed, pending, "the same entries, still pending");
    assert_eq!(store.inbox_depth().unwrap(), 3);
    // Only the claimed account's repeats are new events; the other's still dedup.
    seq_of(
        store
            .ingest(webhook("item-1", 2, t0() + minutes(1)), TTL)
            .unwrap(),
    );
    assert!(matches!(
        store
            .ingest(webhook("item-2", 1, t0() + minutes(1)), TTL)
            .unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    assert_eq!(pending_seqs(store.as_ref(), &other.id), [o1]);
    // Claiming nothing is fine.
    let idle = account("item-3", "owner-1", &[]);
    store.link_account(&idle).unwrap();
    assert!(store.claim_pending_inbox(&idle.id).unwrap().is_empty());
}

fn consumed_inbox_entries_leave_with_the_commit(f: &mut Fixture) {
    let store = f.store();
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
    // Kept events belong to no account yet.
    assert_eq!(
        store.accounts_with_pending_inbox().unwrap(),
        std::slice::from_ref(&acc.id)
    );

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
    assert_eq!(pending_seqs(store.as_ref(), &acc.id), [s3]);
    assert_eq!(store.inbox_depth().unwrap(), 2);
    assert_eq!(
        store.accounts_with_pending_inbox().unwrap(),
        vec![acc.id.clone()]
    );
    store
        .commit_sync(sync(&acc.id, ApplyMode::Delta, vec![], &[], vec![s3], "d"))
        .unwrap();
    assert!(store.accounts_with_pending_inbox().unwrap().is_empty());
    assert_eq!(store.inbox_depth().unwrap(), 1);
}
