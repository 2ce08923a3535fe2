//! Helpers shared by the sled store's test files: a fresh store in a temp dir, fixed
//! times, accounts, webhooks, rows and commits.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use tempfile::TempDir;

use super::keys::{self};
use super::{SledStore, SledStoreConfig};
use crate::domain::{AccessToken, Account, AccountId, ProviderKind, SyncOutcome, Transaction};
use crate::store::{
    ApplyMode, IncomingWebhook, IngestOutcome, RowStore, SyncCommit, TransactionQuery,
};
use sled::Tree;

pub(super) const TTL: Duration = Duration::from_secs(15 * 60);

pub(super) fn open(dir: &TempDir) -> Arc<SledStore> {
    when_released(&dir.path().join("data"), || {
        SledStore::open(SledStoreConfig {
            data_dir: dir.path().join("data"),
            cache_capacity_bytes: 64 * 1024 * 1024,
            group_commit_window: std::time::Duration::ZERO,
        })
    })
}

/// Opens the raw sled database at `path` (to write or damage what a test needs).
pub(crate) fn open_raw(path: &std::path::Path) -> sled::Db {
    when_released(path, || sled::open(path))
}

/// Opens what is in `data_dir` once sled's directory lock there is free: a database
/// dropped a moment ago lets go of it only when sled's last background write for it
/// ends, so a test that reopens the same directory waits for that (bounded, with the
/// same probe the app's release uses) instead of failing now and then on a busy machine.
pub(crate) fn when_released<T, E: std::fmt::Display>(
    data_dir: &std::path::Path,
    open: impl FnOnce() -> Result<T, E>,
) -> T {
    assert!(
        super::wait_until_released(data_dir, std::time::Duration::from_secs(10)),
        "{} still locked after 10 s",
        data_dir.display()
    );
    open().unwrap_or_else(|error| panic!("opening the store: {error}"))
}

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
}

pub(super) fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

pub(super) fn account(item_id: &str, owner_id: &str, aliases: &[&str]) -> Account {
    Account::new_linked(
        ProviderKind::Plaid,
        item_id.into(),
        AccessToken::new("access-sandbox-secret"),
        owner_id.into(),
        aliases.iter().map(|a| a.to_string()).collect(),
        t0(),
    )
}

pub(super) fn webhook(item_id: &str, dedup: u32, at: DateTime<Utc>) -> IncomingWebhook {
    let mut dedup_key = [0u8; 32];
    dedup_key[..4].copy_from_slice(&dedup.to_be_bytes());
    dedup_key[4..4 + item_id.len().min(28)]
        .copy_from_slice(&item_id.as_bytes()[..item_id.len().min(28)]);
    IncomingWebhook {
        provider: ProviderKind::Plaid,
        item_id: item_id.into(),
        kind: "TRANSACTIONS/SYNC_UPDATES_AVAILABLE".into(),
        dedup_key,
        body: serde_json::json!({ "item_id": item_id, "n": dedup }),
        received_at: at,
    }
}

pub(super) fn row(id: &str, date: &str) -> Transaction {
    Transaction {
        id: id.into(),
        date: NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap(),
        body: serde_json::json!({ "transaction_id": id, "date": date }),
    }
}

pub(super) fn sync(
    account_id: &AccountId,
    mode: ApplyMode,
    upserts: Vec<Transaction>,
    removals: &[&str],
    consumed: Vec<u64>,
    cursor: &str,
) -> SyncCommit {
    SyncCommit {
        account_id: account_id.clone(),
        mode,
        upserts,
        removals: removals.iter().map(|r| r.to_string()).collect(),
        cursor: cursor.into(),
        consumed,
        outcome: SyncOutcome::Committed {
            added: 0,
            modified: 0,
            removed: 0,
            pages: 1,
            fallback: false,
            request_id: None,
        },
        started_at: t0(),
        finished_at: t0() + minutes(1),
    }
}

pub(super) fn all_rows(store: &SledStore, id: &AccountId) -> Vec<(String, NaiveDate)> {
    let page = store
        .list_transactions(
            id,
            &TransactionQuery {
                limit: 1_000_000,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(page.next.is_none());
    page.transactions
        .into_iter()
        .map(|t| (t.id, t.date))
        .collect()
}

pub(super) fn raw_count(tree: &Tree, id: &AccountId) -> usize {
    tree.scan_prefix(keys::account_prefix(id)).count()
}

pub(super) fn seq_of(outcome: IngestOutcome) -> u64 {
    match outcome {
        IngestOutcome::Accepted { seq, .. } => seq,
        other => panic!("expected Accepted, got {other:?}"),
    }
}
