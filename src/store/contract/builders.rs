//! Records the contract tests (and the sled store's own tests) build: fixed times,
//! accounts, webhooks, rows and sync commits. Times are fixed so that TTLs, due
//! reads and orders never depend on the clock or on how fast a test runs.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use crate::domain::{AccessToken, Account, AccountId, ProviderKind, SyncOutcome, Transaction};
use crate::store::{
    ApplyMode, IncomingWebhook, IngestOutcome, Store, SyncCommit, TransactionQuery,
};

/// The dedup TTL the tests ingest with.
pub(crate) const TTL: Duration = Duration::from_secs(15 * 60);

/// The tests' fixed "now".
pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
}

/// `n` minutes.
pub(crate) fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

/// `n` milliseconds (the due index's resolution).
pub(crate) fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

/// A linked Plaid account created at `t0()`, token `access-sandbox-secret`.
pub(crate) fn account(item_id: &str, owner_id: &str, aliases: &[&str]) -> Account {
    Account::new_linked(
        ProviderKind::Plaid,
        item_id.into(),
        AccessToken::new("access-sandbox-secret"),
        owner_id.into(),
        aliases.iter().map(|a| a.to_string()).collect(),
        t0(),
    )
}

/// A webhook for `item_id` whose dedup key is made of `dedup` and the item id.
pub(crate) fn webhook(item_id: &str, dedup: u32, at: DateTime<Utc>) -> IncomingWebhook {
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

/// A transaction row dated `date` (`YYYY-MM-DD`).
pub(crate) fn row(id: &str, date: &str) -> Transaction {
    Transaction {
        id: id.into(),
        date: NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap(),
        body: serde_json::json!({ "transaction_id": id, "date": date }),
    }
}

/// A committed sync that started at `t0()` and finished a minute later.
pub(crate) fn sync(
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

/// Every visible row of an account as (id, date), in list order, read as one page.
pub(crate) fn all_rows(store: &dyn Store, id: &AccountId) -> Vec<(String, NaiveDate)> {
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

/// The sequence number of an accepted ingest; panics on anything else.
pub(crate) fn seq_of(outcome: IngestOutcome) -> u64 {
    match outcome {
        IngestOutcome::Accepted { seq, .. } => seq,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

/// The sequence numbers of an account's pending inbox entries.
pub(crate) fn pending_seqs(store: &dyn Store, id: &AccountId) -> Vec<u64> {
    store
        .pending_inbox(id)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}
