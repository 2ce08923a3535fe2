//! Sync commits (delta, replace, staged; what they write on the account) and paged
//! reads of an account's rows.

use chrono::NaiveDate;

use super::{
    account, all_rows, contract_tests, minutes, row, seq_of, sync, t0, webhook, Fixture, TTL,
};
use crate::domain::SyncOutcome;
use crate::store::{ApplyMode, StoreError, TransactionQuery};

contract_tests! {
    delta_commit_applies_upserts_in_order_then_removals,
    replace_commit_keeps_only_the_upserted_rows,
    staged_first_sync_rows_are_invisible_until_committed,
    staging_and_clearing_after_a_delta_commit_are_invalid,
    list_transactions_pages_with_tokens_and_date_bounds,
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn delta_commit_applies_upserts_in_order_then_removals(f: &mut Fixture) {
    let store = f.store();
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

    assert_eq!(
        all_rows(store.as_ref(), &acc.id),
        vec![("t1".to_string(), date("2024-01-07"))]
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
    // The old dates are gone from date-bounded reads too.
    let old_dates = store
        .list_transactions(
            &acc.id,
            &TransactionQuery {
                start_date: Some(date("2024-01-01")),
                end_date: Some(date("2024-01-06")),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(old_dates.transactions.is_empty());

    let stored = store.get_account(&acc.id).unwrap().unwrap();
    assert_eq!(stored.cursor.as_deref(), Some("c2"));
    assert_eq!(stored.sync_count, 2);
    assert_eq!(stored.cursor_updated_at, Some(t0() + minutes(1)));
    assert_eq!(stored.last_sync_finished_at, Some(t0() + minutes(1)));
    assert!(matches!(
        stored.last_sync_outcome,
        Some(SyncOutcome::Committed { .. })
    ));
}

fn replace_commit_keeps_only_the_upserted_rows(f: &mut Fixture) {
    let store = f.store();
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
    assert_eq!(
        all_rows(store.as_ref(), &acc.id),
        [
            ("d".to_string(), date("2024-01-04")),
            ("b".to_string(), date("2024-02-02"))
        ]
    );
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 2);
    let stored = store.get_account(&acc.id).unwrap().unwrap();
    assert_eq!(
        (stored.cursor.as_deref(), stored.sync_count),
        (Some("fresh"), 2)
    );
    assert_eq!(
        store.count_transactions(&other.id).unwrap(),
        3,
        "other accounts untouched"
    );

    // An empty replace empties the account.
    store
        .commit_sync(sync(&acc.id, ApplyMode::Replace, vec![], &[], vec![], "e"))
        .unwrap();
    assert!(all_rows(store.as_ref(), &acc.id).is_empty());
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 0);
    assert_eq!(store.count_transactions(&other.id).unwrap(), 3);
}

fn staged_first_sync_rows_are_invisible_until_committed(f: &mut Fixture) {
    let store = f.store();
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
    assert_eq!(store.count_transactions(&acc.id).unwrap(), 0);
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
    assert_eq!(
        store.count_transactions(&acc.id).unwrap(),
        1,
        "neither the cleared leftover nor the removed row counts"
    );
    assert!(store.pending_inbox(&acc.id).unwrap().is_empty());
    assert_eq!(
        store
            .get_account(&acc.id)
            .unwrap()
            .unwrap()
            .cursor
            .as_deref(),
        Some("c1")
    );
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
    assert_eq!(
        all_rows(store.as_ref(), &acc.id).len(),
        1,
        "nothing written"
    );
}

fn staging_and_clearing_after_a_delta_commit_are_invalid(f: &mut Fixture) {
    let store = f.store();
    let acc = account("item-1", "owner-1", &[]);
    store.link_account(&acc).unwrap();
    store
        .commit_sync(sync(
            &acc.id,
            ApplyMode::Delta,
            vec![row("a", "2024-01-01")],
            &[],
            vec![],
            "c1",
        ))
        .unwrap();
    assert!(matches!(
        store.stage_rows(&acc.id, vec![row("x", "2024-01-02")], vec!["a".into()]),
        Err(StoreError::InvalidState(_))
    ));
    assert!(matches!(
        store.clear_rows(&acc.id),
        Err(StoreError::InvalidState(_))
    ));
    assert_eq!(
        all_rows(store.as_ref(), &acc.id),
        [("a".to_string(), date("2024-01-01"))],
        "nothing staged, nothing cleared"
    );
}

fn list_transactions_pages_with_tokens_and_date_bounds(f: &mut Fixture) {
    let store = f.store();
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

    // Reads every page of `query`, following `next`; returns the ids page by page.
    let pages = |query: TransactionQuery| -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut query = query;
        loop {
            let page = store.list_transactions(&acc.id, &query).unwrap();
            pages.push(page.transactions.into_iter().map(|t| t.id).collect());
            match page.next {
                Some(next) => query.after = Some(next),
                None => return pages,
            }
        }
    };
    let ids = |pages: Vec<Vec<String>>| pages.concat();

    let by_two = pages(TransactionQuery {
        limit: 2,
        ..Default::default()
    });
    assert_eq!(
        ids(by_two.clone()),
        ["a", "b1", "b2", "c", "e"],
        "by (date, id)"
    );
    assert!(by_two.iter().all(|page| page.len() <= 2));
    assert_eq!(by_two[0], ["a", "b1"]);
    assert_eq!(
        ids(pages(TransactionQuery {
            limit: 10,
            ..Default::default()
        })),
        ["a", "b1", "b2", "c", "e"]
    );

    let bounded = |start: &str, end: &str, limit| TransactionQuery {
        start_date: Some(date(start)),
        end_date: Some(date(end)),
        limit,
        ..Default::default()
    };
    // Both bounds inclusive, paged within the bounds.
    assert_eq!(
        ids(pages(bounded("2024-01-02", "2024-01-03", 10))),
        ["b1", "b2", "c"]
    );
    assert_eq!(
        ids(pages(bounded("2024-01-02", "2024-01-03", 1))),
        ["b1", "b2", "c"]
    );
    // A token from a bounded page continues within the same bounds.
    let first = store
        .list_transactions(&acc.id, &bounded("2024-01-02", "2024-01-03", 1))
        .unwrap();
    let next = first.next.expect("more pages");
    let rest = store
        .list_transactions(
            &acc.id,
            &TransactionQuery {
                after: Some(next),
                ..bounded("2024-01-02", "2024-01-03", 10)
            },
        )
        .unwrap();
    assert_eq!(
        rest.transactions
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["b2", "c"]
    );
    assert!(rest.next.is_none());
    // One-sided bounds.
    assert_eq!(
        ids(pages(TransactionQuery {
            start_date: Some(date("2024-01-03")),
            limit: 10,
            ..Default::default()
        })),
        ["c", "e"]
    );
    assert_eq!(
        ids(pages(TransactionQuery {
            end_date: Some(date("2024-01-02")),
            limit: 10,
            ..Default::default()
        })),
        ["a", "b1", "b2"]
    );
    // An inverted or empty range is an empty last page.
    let inverted = store
        .list_transactions(&acc.id, &bounded("2024-01-04", "2024-01-02", 10))
        .unwrap();
    assert!(inverted.transactions.is_empty() && inverted.next.is_none());
    assert!(ids(pages(bounded("2024-02-01", "2024-02-28", 10))).is_empty());
    // Another account's rows are never listed.
    let other = account("item-2", "owner-1", &[]);
    store.link_account(&other).unwrap();
    let empty = store
        .list_transactions(
            &other.id,
            &TransactionQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(empty.transactions.is_empty() && empty.next.is_none());
}
