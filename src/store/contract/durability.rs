//! Durability: the readiness probe, and what a reopen finds after `durable()`.

use super::{
    account, all_rows, contract_tests, pending_seqs, row, seq_of, sync, t0, webhook, Fixture, TTL,
};
use crate::store::{ApplyMode, IngestOutcome, Resolved};

contract_tests! {
    write_probe_then_durable_succeeds_and_changes_nothing_visible,
    everything_durable_survives_reopen,
}

fn write_probe_then_durable_succeeds_and_changes_nothing_visible(f: &mut Fixture) {
    let store = f.store();
    store.write_probe().unwrap();
    f.durable();
    // Probes overwrite one another and touch no record family.
    for _ in 0..3 {
        f.store().write_probe().unwrap();
    }
    f.durable();
    let store = f.store();
    assert_eq!(store.count_accounts().unwrap(), 0);
    assert_eq!(store.inbox_depth().unwrap(), 0);
    assert!(store.pending_outbox(10).unwrap().is_empty());
    f.reopen();
    f.store().write_probe().unwrap();
    f.durable();
    // `durable()` with nothing written resolves too.
    f.durable();
}

fn everything_durable_survives_reopen(f: &mut Fixture) {
    let acc = account("item-1", "owner-1", &["alias-1"]);
    let store = f.store();
    store.link_account(&acc).unwrap();
    let s1 = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    let s2 = seq_of(store.ingest(webhook("item-1", 2, t0()), TTL).unwrap());
    let s3 = seq_of(store.ingest(webhook("item-later", 3, t0()), TTL).unwrap());
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![row("t1", "2024-01-01")],
            &[],
            vec![s1],
            "c1",
        ))
        .unwrap();
    f.durable();
    f.reopen();

    let store = f.store();
    let stored = store.get_account(&acc.id).unwrap().unwrap();
    assert_eq!(stored.cursor.as_deref(), Some("c1"));
    assert_eq!(stored.sync_count, 1);
    assert_eq!(stored.access_token.expose(), "access-sandbox-secret");
    assert_eq!(all_rows(store.as_ref(), &acc.id).len(), 1);
    assert_eq!(
        store.resolve("alias-1").unwrap(),
        Resolved::Found(acc.id.clone())
    );
    assert_eq!(pending_seqs(store.as_ref(), &acc.id), [s2]);
    assert_eq!(
        store.inbox_depth().unwrap(),
        2,
        "depth counted after reopen"
    );
    assert!(matches!(
        store.ingest(webhook("item-1", 2, t0()), TTL).unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    // Sequence numbers stay monotonic across restarts.
    assert!(seq_of(store.ingest(webhook("item-1", 4, t0()), TTL).unwrap()) > s3);
    // Events kept for an item not linked yet are still adopted.
    let later = account("item-later", "owner-1", &[]);
    assert_eq!(store.link_account(&later).unwrap().adopted_events, 1);
    assert_eq!(pending_seqs(store.as_ref(), &later.id), [s3]);
}
