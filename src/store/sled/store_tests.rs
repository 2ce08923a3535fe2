//! The sled store as a whole: the probe's record, shutdown, shared flush rounds. What
//! survives a reopen is in the contract suite (`store::contract::durability`).

use std::sync::Arc;

use tempfile::TempDir;

use super::test_support::*;
use super::PROBE_KEY;
use crate::store::{AccountStore, Durability, InboxStore, StoreError};

#[tokio::test]
async fn write_probe_is_durable_until_shutdown_then_closed() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store.write_probe().unwrap();
    store.durable().await.unwrap();
    let written = store
        .files
        .db
        .get(PROBE_KEY)
        .unwrap()
        .expect("probe record");
    assert_eq!(written.len(), 8);
    store.shutdown().await.unwrap();
    assert!(matches!(store.write_probe(), Err(StoreError::Closed)));
}

#[tokio::test]
async fn writes_after_shutdown_are_refused_and_durable_still_resolves() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store.durable().await.unwrap();
    store.shutdown().await.unwrap();
    assert!(matches!(
        store.ingest(webhook("item-1", 9, t0()), TTL),
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.link_account(&account("item-2", "owner-1", &[])),
        Err(StoreError::Closed)
    ));
    store.durable().await.unwrap();
    // Reads still work.
    assert!(store.get_account(&acc.id).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_ingests_share_flush_rounds() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    // Everyone ingests, then all ask for durability together, as a burst of webhook
    // requests does: the rounds must be shared.
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200u32)
        .map(|n| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                seq_of(store.ingest(webhook("item-1", n, t0()), TTL).unwrap());
                barrier.wait().await;
                store.durable().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let rounds = store.flush_count();
    assert!(rounds > 0 && rounds < 200, "flush rounds = {rounds}");
    assert!(
        rounds <= 20,
        "200 waiters should need a handful of rounds, took {rounds}"
    );
    assert_eq!(store.pending_inbox(&acc.id).unwrap().len(), 200);
    store.shutdown().await.unwrap();
}

/// Durable ingest ceiling: N tasks each looping ingest + durable().
/// `cargo test --lib store::sled::tests::durable_ingest_ceiling -- --ignored --nocapture`
/// (set ACCTOR_BENCH_DIR to measure on a real disk instead of the temp dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: prints durable ingests per second"]
async fn durable_ingest_ceiling() {
    let dir = match std::env::var_os("ACCTOR_BENCH_DIR") {
        Some(base) => TempDir::new_in(base).unwrap(),
        None => TempDir::new().unwrap(),
    };
    let store = open(&dir);
    store
        .link_account(&account("item-1", "owner-1", &[]))
        .unwrap();
    for concurrency in [1u32, 8, 64, 256] {
        let per_task = 4000 / concurrency.min(64) + 10;
        let rounds_before = store.flush_count();
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|task| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let n = concurrency * 1_000_000 + task * 10_000 + i;
                        store.ingest(webhook("item-1", n, t0()), TTL).unwrap();
                        store.durable().await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        let ops = f64::from(concurrency * per_task);
        println!(
            "concurrency {concurrency}: {:.0} durable ingests/s, {} flush rounds for {ops} ops",
            ops / elapsed.as_secs_f64(),
            store.flush_count() - rounds_before
        );
    }
    store.shutdown().await.unwrap();
}
