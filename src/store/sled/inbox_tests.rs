//! What the sled inbox leaves in its trees: a claim leaves with the entry it marks,
//! adopted events leave the unrouted tree. The trait behaviour is in the contract
//! suite (`store::contract::inbox`).

use tempfile::TempDir;

use super::super::test_support::*;
use crate::store::{AccountStore, ApplyMode, InboxStore, RowStore};

#[tokio::test]
async fn claims_leave_with_their_entries() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let first = seq_of(store.ingest(webhook("item-1", 5, t0()), TTL).unwrap());
    store.claim_pending_inbox(&acc.id).unwrap();
    assert_eq!(store.claims.len(), 1);
    seq_of(
        store
            .ingest(webhook("item-1", 5, t0() + minutes(1)), TTL)
            .unwrap(),
    );
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
    assert_eq!(store.claims.len(), 0, "claims leave with their entries");
}

#[tokio::test]
async fn adoption_moves_events_out_of_the_unrouted_tree() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    seq_of(store.ingest(webhook("item-early", 1, t0()), TTL).unwrap());
    seq_of(store.ingest(webhook("item-other", 2, t0()), TTL).unwrap());
    assert_eq!(store.unrouted.len(), 2);
    store
        .link_account(&account("item-early", "owner-1", &[]))
        .unwrap();
    assert_eq!(store.unrouted.len(), 1, "other items' events stay kept");
    assert_eq!(store.inbox.len(), 1);
}

#[tokio::test]
async fn expired_dedup_records_are_deleted() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    seq_of(store.ingest(webhook("item-1", 2, t0()), TTL).unwrap());
    assert_eq!(store.dedup.len(), 2);
    assert_eq!(store.purge_expired_dedup(t0() + minutes(16)).unwrap(), 2);
    assert_eq!(store.dedup.len(), 0);
}
