//! What the sled rows leave in their trees (no stale row or index key after a moved
//! date, a replace or a staged first sync) and sled's page tokens (`date|id`, any
//! string tolerated). The trait behaviour is in the contract suite
//! (`store::contract::rows`).

use chrono::NaiveDate;
use tempfile::TempDir;

use super::super::test_support::*;
use crate::store::{AccountStore, ApplyMode, Durability, RowStore, TransactionQuery};

#[tokio::test]
async fn moved_and_replaced_rows_leave_no_stale_keys() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![
                row("t1", "2024-01-01"),
                row("t2", "2024-01-02"),
                row("t3", "2024-01-03"),
            ],
            &[],
            vec![],
            "c1",
        ))
        .unwrap();
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![
                row("t1", "2024-01-05"),
                row("t2", "2024-01-09"),
                row("t1", "2024-01-07"),
            ],
            &["t2", "t3"],
            vec![],
            "c2",
        ))
        .unwrap();
    assert_eq!(
        raw_count(&store.transactions, &acc.id),
        1,
        "the old-date rows are gone"
    );
    assert_eq!(raw_count(&store.txn_index, &acc.id), 1);
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Replace,
            vec![row("b", "2024-02-02"), row("d", "2024-01-04")],
            &[],
            vec![],
            "fresh",
        ))
        .unwrap();
    assert_eq!(raw_count(&store.transactions, &acc.id), 2);
    assert_eq!(raw_count(&store.txn_index, &acc.id), 2);
}

#[tokio::test]
async fn a_staged_first_sync_leaves_no_stale_keys() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store
        .stage_rows(&acc.id, vec![row("gone", "2024-01-09")], vec![])
        .unwrap();
    store.clear_rows(&acc.id).unwrap();
    store
        .stage_rows(
            &acc.id,
            vec![row("a", "2024-01-01"), row("b", "2024-01-02")],
            vec![],
        )
        .unwrap();
    store
        .stage_rows(&acc.id, vec![row("a", "2024-02-01")], vec!["b".to_string()])
        .unwrap();
    store
        .commit_sync(sync(&acc.id, ApplyMode::Staged, vec![], &[], vec![], "c1"))
        .unwrap();
    assert_eq!(store.txn_index.len(), 1);
    assert_eq!(store.transactions.len(), 1);
}

#[tokio::test]
async fn page_tokens_are_date_and_id_and_any_string_is_tolerated() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let rows = vec![
        row("e", "2024-01-05"),
        row("a", "2024-01-01"),
        row("c", "2024-01-03"),
        row("b2", "2024-01-02"),
        row("b1", "2024-01-02"),
    ];
    store
        .commit_sync(sync(&acc.id, ApplyMode::Delta, rows, &[], vec![], "c"))
        .unwrap();
    let d = |s| Some(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap());
    let ranged = |start, end, after: Option<&str>, limit| {
        store
            .list_transactions(
                &acc.id,
                &TransactionQuery {
                    start_date: start,
                    end_date: end,
                    after: after.map(str::to_owned),
                    limit,
                },
            )
            .unwrap()
            .transactions
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ranged(d("2024-01-02"), d("2024-01-03"), Some("2024-01-02|b1"), 10),
        ["b2", "c"]
    );
    assert_eq!(ranged(None, None, Some("zzz"), 10), Vec::<String>::new());
    assert_eq!(ranged(None, None, Some(""), 10).len(), 5);
    assert_eq!(
        ranged(None, None, Some("2024-01-02"), 10),
        ["b1", "b2", "c", "e"]
    );
    // Not what the trait's "maximum rows" says: sled reads a limit of 0 as 1.
    assert_eq!(
        ranged(None, None, None, 0),
        ["a"],
        "limit 0 is treated as 1"
    );
    assert_eq!(ranged(None, None, Some("\u{0}\u{ffff}|x"), 10).len(), 5);
}

/// One sync of 50,000 rows in a single transaction.
/// `cargo test --lib store::sled::rows::tests::commit_of_50k_upserts -- --ignored --nocapture`
#[tokio::test]
#[ignore = "measurement: prints how long a 50k-row commit takes"]
async fn commit_of_50k_upserts() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let rows: Vec<_> = (0..50_000)
        .map(|i| {
            row(
                &format!("txn_{i:06}"),
                &format!("2024-{:02}-{:02}", i % 12 + 1, i % 28 + 1),
            )
        })
        .collect();
    let started = std::time::Instant::now();
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Replace,
            rows.clone(),
            &[],
            vec![],
            "c1",
        ))
        .unwrap();
    let first = started.elapsed();
    let started = std::time::Instant::now();
    store
        .commit_sync(sync(&acc.id, ApplyMode::Replace, rows, &[], vec![], "c2"))
        .unwrap();
    let second = started.elapsed();
    let started = std::time::Instant::now();
    store.durable().await.unwrap();
    let flush = started.elapsed();
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 50_000);
    println!("50k upserts: insert {first:?}, replace-in-place {second:?}, durable {flush:?}");
    store.shutdown().await.unwrap();
}
