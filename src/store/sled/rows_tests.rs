//! Sync commits (delta, replace, staged) and paged reads of the rows.

use chrono::NaiveDate;
use tempfile::TempDir;

use super::super::test_support::*;
use crate::domain::SyncOutcome;
use crate::store::{
    AccountStore, ApplyMode, Durability, InboxStore, RowStore, StoreError, TransactionQuery,
};

#[tokio::test]
async fn delta_commit_applies_upserts_in_order_then_removals() {
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

    // t1 modified twice (date moves, the later row wins), t2 added-then-removed in
    // the same page, t3 removed, an unknown removal is a no-op.
    let mut modified = row("t1", "2024-01-07");
    modified.body["amount"] = serde_json::json!(42);
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![
                row("t1", "2024-01-05"),
                row("t2", "2024-01-09"),
                modified.clone(),
            ],
            &["t2", "t3", "never-seen"],
            vec![],
            "c2",
        ))
        .unwrap();

    let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    assert_eq!(
        all_rows(&store, &acc.id),
        vec![("t1".to_string(), d("2024-01-07"))]
    );
    let page = store
        .list_transactions(
            &acc.id,
            &TransactionQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page.transactions[0], modified);
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 1);
    assert_eq!(
        raw_count(&store.transactions, &acc.id),
        1,
        "the old-date rows are gone"
    );
    assert_eq!(raw_count(&store.txn_index, &acc.id), 1);

    let stored = store.get_account(&acc.id).unwrap().unwrap();
    assert_eq!(stored.cursor.as_deref(), Some("c2"));
    assert_eq!(stored.sync_count, 2);
    assert_eq!(stored.cursor_updated_at, Some(t0() + minutes(1)));
    assert!(matches!(
        stored.last_sync_outcome,
        Some(SyncOutcome::Committed { .. })
    ));
}

#[tokio::test]
async fn replace_commit_keeps_only_the_upserted_rows() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    let other = account("item-2", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store.link_account(&other).unwrap();
    for id in [&acc.id, &other.id] {
        store
            .commit_sync(sync(
                id,
                ApplyMode::Delta,
                vec![
                    row("a", "2024-01-01"),
                    row("b", "2024-01-02"),
                    row("c", "2024-01-03"),
                ],
                &[],
                vec![],
                "c1",
            ))
            .unwrap();
    }
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
    let ids: Vec<_> = all_rows(&store, &acc.id)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["d", "b"]);
    assert_eq!(raw_count(&store.txn_index, &acc.id), 2);
    assert_eq!(
        store.count_transactions(&other.id).unwrap(),
        3,
        "other accounts untouched"
    );
}

#[tokio::test]
async fn staged_first_sync_rows_are_invisible_until_committed() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    let e1 = seq_of(store.ingest(webhook("item-1", 1, t0()), TTL).unwrap());
    // A leftover of an interrupted attempt, cleared by the next one.
    store
        .stage_rows(&acc.id, vec![row("gone", "2024-01-09")], vec![])
        .unwrap();
    assert_eq!(
        store.count_transactions(&acc.id).unwrap(),
        0,
        "staged rows are hidden"
    );
    store.clear_rows(&acc.id).unwrap();
    // Pages: a row added, then moved to another date and another removed later on.
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
    let page = store
        .list_transactions(
            &acc.id,
            &TransactionQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(
        page.transactions.is_empty(),
        "nothing visible before the commit"
    );
    let mut commit = sync(&acc.id, ApplyMode::Staged, vec![], &[], vec![e1], "c1");
    store.commit_sync(commit.clone()).unwrap();
    let page = store
        .list_transactions(
            &acc.id,
            &TransactionQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page.transactions, vec![row("a", "2024-02-01")]);
    assert_eq!(store.txn_index.len(), 1);
    assert_eq!(store.transactions.len(), 1);
    assert!(store.pending_inbox(&acc.id).unwrap().is_empty());
    // Once committed, rows change only by commit.
    assert!(matches!(
        store.stage_rows(&acc.id, vec![row("x", "2024-01-01")], vec![]),
        Err(StoreError::InvalidState(_))
    ));
    assert!(matches!(
        store.clear_rows(&acc.id),
        Err(StoreError::InvalidState(_))
    ));
    assert!(matches!(
        store.commit_sync(commit.clone()),
        Err(StoreError::InvalidState(_))
    ));
    commit.upserts = vec![row("y", "2024-01-01")];
    assert!(matches!(
        store.commit_sync(commit),
        Err(StoreError::InvalidState(_))
    ));
}

#[tokio::test]
async fn list_transactions_pages_filters_and_tolerates_any_token() {
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

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_transactions(
                &acc.id,
                &TransactionQuery {
                    after: after.clone(),
                    limit: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        seen.extend(page.transactions.iter().map(|t| t.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b1", "b2", "c", "e"]);

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
        ranged(d("2024-01-02"), d("2024-01-03"), None, 10),
        ["b1", "b2", "c"]
    );
    assert_eq!(
        ranged(d("2024-01-02"), d("2024-01-03"), Some("2024-01-02|b1"), 10),
        ["b2", "c"]
    );
    assert_eq!(
        ranged(d("2024-01-04"), d("2024-01-02"), None, 10),
        Vec::<String>::new()
    );
    assert_eq!(ranged(None, None, Some("zzz"), 10), Vec::<String>::new());
    assert_eq!(ranged(None, None, Some(""), 10).len(), 5);
    assert_eq!(
        ranged(None, None, Some("2024-01-02"), 10),
        ["b1", "b2", "c", "e"]
    );
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
