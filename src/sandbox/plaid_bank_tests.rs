//! The bank's change log, pages, faults and counters.

use super::*;

fn bank() -> Bank {
    Bank::new(11, NaiveDate::from_ymd_opt(2024, 6, 1).unwrap(), [9; 32])
}

/// Pages a whole loop from `cursor`, returning the settled cursor and the rows.
fn drain(
    bank: &Bank,
    item: &Item,
    cursor: &str,
    count: usize,
) -> (
    String,
    Vec<PlaidTransaction>,
    Vec<PlaidTransaction>,
    Vec<String>,
) {
    let (mut added, mut modified, mut removed) = (vec![], vec![], vec![]);
    let mut cursor = cursor.to_string();
    loop {
        let page = item.sync_page(bank.codec(), Some(&cursor), count).unwrap();
        added.extend(page.added);
        modified.extend(page.modified);
        removed.extend(page.removed.into_iter().map(|r| r.transaction_id));
        cursor = page.next_cursor;
        if !page.has_more {
            return (cursor, added, modified, removed);
        }
    }
}

#[test]
fn paging_the_history_yields_each_current_transaction_once() {
    let bank = bank();
    let item = bank.create_item(1_234, None, "ins_1");
    let (_, added, modified, removed) = drain(&bank, &item, "", 100);
    assert!(modified.is_empty() && removed.is_empty());
    let mut ids: Vec<_> = added.iter().map(|t| t.transaction_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1_234);
    assert_eq!(added, {
        let mut current = item.current_transactions();
        current.sort_by(|a, b| (&a.date, &a.transaction_id).cmp(&(&b.date, &b.transaction_id)));
        current
    });
}

#[test]
fn a_loop_reports_net_changes_once_per_transaction() {
    let bank = bank();
    let item = bank.create_item(300, None, "ins_1");
    let (settled, ..) = drain(&bank, &item, "", 500);
    let first = item.mutate(5, 10, 7, bank.today()).unwrap();
    let second = item.mutate(0, 10, 0, bank.today()).unwrap();
    let (_, added, modified, removed) = drain(&bank, &item, &settled, 3);

    let current: HashMap<_, _> = item
        .current_transactions()
        .into_iter()
        .map(|t| (t.transaction_id.clone(), t))
        .collect();
    let mut expect_modified: Vec<_> = first
        .modified
        .iter()
        .chain(&second.modified)
        .filter(|id| !first.added.contains(id) && current.contains_key(*id))
        .cloned()
        .collect();
    expect_modified.sort();
    expect_modified.dedup();
    let mut got_modified: Vec<_> = modified.iter().map(|t| t.transaction_id.clone()).collect();
    got_modified.sort();
    assert_eq!(
        got_modified, expect_modified,
        "each modified txn reported once"
    );
    for t in added.iter().chain(&modified) {
        assert_eq!(&current[&t.transaction_id], t, "current state is emitted");
    }
    let mut got_added: Vec<_> = added.iter().map(|t| t.transaction_id.clone()).collect();
    got_added.sort();
    let mut expect_added = first.added.clone();
    expect_added.sort();
    assert_eq!(got_added, expect_added);
    let mut expect_removed = first.removed.clone();
    expect_removed.sort();
    let mut got_removed = removed;
    got_removed.sort();
    assert_eq!(got_removed, expect_removed);
}

#[test]
fn overlapping_sync_guards_are_counted_and_released() {
    let bank = bank();
    let item = bank.create_item(1, None, "ins_1");
    let a = item.enter_sync();
    let b = item.enter_sync();
    drop(a);
    let c = item.enter_sync();
    drop(b);
    drop(c);
    let _d = item.enter_sync();
    let stats = item.stats.snapshot();
    assert_eq!(stats.sync_calls, 4);
    assert_eq!(stats.overlapping_syncs, 2);
    assert_eq!(stats.max_concurrent_syncs, 2);
    assert_eq!(stats.in_flight_syncs, 1);
}

#[test]
fn mutate_refuses_more_changes_than_transactions() {
    let bank = bank();
    let item = bank.create_item(3, None, "ins_1");
    assert!(item.mutate(0, 2, 2, bank.today()).is_err());
    assert_eq!(item.transaction_count(), 3);
    let report = item.mutate(0, 1, 2, bank.today()).unwrap();
    assert_eq!(item.transaction_count(), 1);
    assert!(!report.removed.contains(&report.modified[0]));
}
