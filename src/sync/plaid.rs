//! One sync of one account against its provider, per Plaid's `/transactions/sync`
//! contract: page from the stored cursor until `has_more` is false, restart the whole
//! loop from its first cursor when the provider reports a mutation during pagination,
//! and commit rows, cursor and consumed inbox entries in one store transaction only at
//! the end — so a failure at any point commits nothing and the next sync starts over.
//!
//! When the provider rejects the stored cursor, the reconcile path rebuilds one: it
//! first pages a fresh loop from the beginning to obtain a new cursor C, then lists the
//! whole date window with `/transactions/get` and replaces the local set with the rows
//! of C refreshed from that listing (rows created after C are left to the follow-up: see
//! [`reconciled_rows`]). Every change after C is replayed by the next sync from C
//! (upserts and removals are idempotent), so both paths converge on the provider's
//! state. The caller runs that follow-up sync at once.
//!
//! This runs in a task spawned by the account actor, never inside its `handle`: the
//! mailbox keeps answering status queries while pages are fetched.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{Duration as ChronoDuration, Utc};

use super::{SyncError, SyncProgress, SyncReport};
use crate::clock::Clock;
use crate::domain::{Account, SyncOutcome, Transaction};
use crate::providers::{CursorSource, ErrorClass, ProviderError};
use crate::store::{ApplyMode, Store, StoreError, SyncCommit};

/// Commits off the async workers: a large commit holds sled's process-wide transaction
/// lock for a long time, and a blocked worker would stall every request it serves.
async fn commit(store: &Arc<dyn Store>, sync: SyncCommit) -> Result<(), SyncError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.commit_sync(sync))
        .await
        .map_err(|e| SyncError::Store(StoreError::Io(format!("commit task failed: {e}"))))??;
    Ok(())
}

/// Tunables of a sync.
#[derive(Clone, Debug)]
pub struct SyncParams {
    /// `/transactions/sync` page size.
    pub page_size: u32,
    /// `/transactions/get` page size on the reconcile path.
    pub window_page_size: u32,
    /// How far back the reconcile window reaches (Plaid keeps up to 24 months).
    pub window_days: i64,
    /// How many times one sync restarts its loop on mutation-during-pagination before
    /// giving up (the next sync tries again).
    pub max_loop_restarts: u32,
    /// How many times a page call that failed transiently (5xx, transport) is tried
    /// again in place, keeping the pages already fetched, before the sync fails.
    pub page_retries: u32,
    /// The wait before the first such retry; the n-th waits n times this.
    pub page_retry_delay: std::time::Duration,
}

impl Default for SyncParams {
    fn default() -> Self {
        SyncParams {
            page_size: 500,
            window_page_size: 500,
            window_days: 731,
            max_loop_restarts: 8,
            // Off unless configured: the actor tests script one answer per call.
            page_retries: 0,
            page_retry_delay: std::time::Duration::from_millis(100),
        }
    }
}

/// One `/transactions/sync` page. A transient failure (a 5xx, a request that did not
/// complete) is retried in place up to `params.page_retries` times: the page's cursor is
/// still valid, so the pages already fetched are kept instead of failing the whole sync
/// and fetching them all again. Against a flaky provider that is the difference between
/// converging and not: with a 30% failure rate a sync of 8 pages all succeeding at the
/// first try happens 6% of the time, and 80% of the time with two retries per page.
/// Everything else (rate limits, login, a rejected cursor, mutation during pagination)
/// goes to the caller at once, which has its own handling for each.
async fn fetch_page(
    provider: &dyn CursorSource,
    account: &Account,
    cursor: Option<&str>,
    params: &SyncParams,
) -> Result<crate::providers::DeltaPage, ProviderError> {
    let mut retries = 0u32;
    loop {
        match provider
            .sync_page(&account.access_token, cursor, params.page_size)
            .await
        {
            Err(error)
                if error.class() == ErrorClass::Transient && retries < params.page_retries =>
            {
                retries += 1;
                tracing::debug!(
                    account_id = %account.id,
                    code = %error.code(),
                    retries,
                    "transient provider error, retrying the page"
                );
                tokio::time::sleep(params.page_retry_delay.saturating_mul(retries)).await;
            }
            answer => return answer,
        }
    }
}

/// The rows of one complete pagination loop, folded in provider order.
struct LoopResult {
    upserts: Vec<Transaction>,
    removals: Vec<String>,
    added: u64,
    modified: u64,
    cursor: String,
    /// The provider's request id of the last page.
    request_id: String,
}

/// What one sync works with: the account's cursor source, the store, the strategy's
/// tunables, the progress it reports as it goes, and the clock its commit is stamped
/// with.
#[derive(Clone, Copy)]
pub struct SyncEnv<'a> {
    /// Where the pages come from.
    pub provider: &'a dyn CursorSource,
    /// Where the sync is committed.
    pub store: &'a Arc<dyn Store>,
    /// Page sizes, retries, the reconcile window.
    pub params: &'a SyncParams,
    /// Live progress, read by the status API.
    pub progress: &'a SyncProgress,
    /// Where "now" comes from.
    pub clock: &'a dyn Clock,
}

/// Runs one sync of `account` and commits it, consuming the inbox entries `consumed`.
pub async fn run_sync(
    env: &SyncEnv<'_>,
    account: &Account,
    consumed: Vec<u64>,
) -> Result<SyncReport, SyncError> {
    let SyncEnv {
        provider,
        store,
        params,
        progress,
        ..
    } = *env;
    let started_at = env.clock.now();
    if account.cursor.is_none() {
        return initial_sync(env, account, consumed, started_at).await;
    }
    let loop_started = std::time::Instant::now();
    match pagination_loop(
        provider,
        account,
        account.cursor.as_deref(),
        params,
        progress,
    )
    .await
    {
        Ok(result) => {
            let fetched = std::time::Instant::now();
            let outcome = SyncOutcome::Committed {
                added: result.added,
                modified: result.modified,
                removed: result.removals.len() as u64,
                pages: progress.snapshot().pages,
                fallback: false,
                request_id: Some(result.request_id.clone()),
            };
            commit(
                store,
                SyncCommit {
                    account_id: account.id.clone(),
                    mode: ApplyMode::Delta,
                    upserts: result.upserts,
                    removals: result.removals,
                    cursor: result.cursor,
                    consumed,
                    outcome: outcome.clone(),
                    started_at,
                    finished_at: env.clock.now(),
                },
            )
            .await?;
            let committed = std::time::Instant::now();
            store.durable().await?;
            tracing::debug!(
                account_id = %account.id,
                fetch_ms = (fetched - loop_started).as_millis() as u64,
                commit_ms = (committed - fetched).as_millis() as u64,
                flush_ms = committed.elapsed().as_millis() as u64,
                "sync timings"
            );
            Ok(SyncReport {
                outcome,
                follow_up: false,
            })
        }
        Err(SyncError::Provider(e))
            if e.class() == ErrorClass::CursorRejected && account.cursor.is_some() =>
        {
            tracing::warn!(
                account_id = %account.id,
                request_id = e.request_id().unwrap_or(""),
                "provider rejected the stored cursor, reconciling"
            );
            reconcile(env, account, consumed, started_at).await
        }
        Err(e) => Err(e),
    }
}

/// The first sync of an account, which can be the whole history (50,000 rows and
/// more). Each page is staged in the store while the next one is fetched, so writing
/// overlaps the network; staged rows stay invisible until the final commit sets the
/// first cursor. A restarted loop (mutation during pagination) or a crash throws the
/// staged rows away and starts over, so nothing partial is ever visible.
async fn initial_sync(
    env: &SyncEnv<'_>,
    account: &Account,
    consumed: Vec<u64>,
    started_at: chrono::DateTime<Utc>,
) -> Result<SyncReport, SyncError> {
    let SyncEnv {
        store, progress, ..
    } = *env;
    let loop_started = std::time::Instant::now();
    let staged = stage_all_pages(env, account).await?;
    let fetched = std::time::Instant::now();
    let outcome = SyncOutcome::Committed {
        added: staged.added,
        modified: staged.modified,
        removed: staged.removed,
        pages: progress.snapshot().pages,
        fallback: false,
        request_id: Some(staged.request_id),
    };
    commit(
        store,
        SyncCommit {
            account_id: account.id.clone(),
            mode: ApplyMode::Staged,
            upserts: Vec::new(),
            removals: Vec::new(),
            cursor: staged.cursor,
            consumed,
            outcome: outcome.clone(),
            started_at,
            finished_at: env.clock.now(),
        },
    )
    .await?;
    store.durable().await?;
    tracing::debug!(
        account_id = %account.id,
        fetch_and_stage_ms = (fetched - loop_started).as_millis() as u64,
        commit_ms = fetched.elapsed().as_millis() as u64,
        "initial sync timings"
    );
    Ok(SyncReport {
        outcome,
        follow_up: false,
    })
}

/// What a complete staged loop of the first sync fetched.
struct Staged {
    cursor: String,
    request_id: String,
    added: u64,
    modified: u64,
    removed: u64,
}

/// Stages every page of the first sync, starting the loop over (staged rows cleared)
/// on mutation during pagination, up to `params.max_loop_restarts` times.
async fn stage_all_pages(env: &SyncEnv<'_>, account: &Account) -> Result<Staged, SyncError> {
    let SyncEnv {
        params, progress, ..
    } = *env;
    let mut restarts = 0u32;
    loop {
        if let Some(staged) = stage_one_loop(env, account).await? {
            return Ok(staged);
        }
        restarts += 1;
        progress.restarts.fetch_add(1, Ordering::Relaxed);
        if restarts > params.max_loop_restarts {
            return Err(SyncError::TooManyRestarts(restarts));
        }
    }
}

/// One loop of the first sync from no cursor: clears what an earlier loop staged, then
/// stages each page while the next is fetched. `None`: the provider reported a mutation
/// during pagination and the loop must start over.
async fn stage_one_loop(env: &SyncEnv<'_>, account: &Account) -> Result<Option<Staged>, SyncError> {
    let SyncEnv {
        provider,
        store,
        params,
        progress,
        ..
    } = *env;
    blocking(store, {
        let id = account.id.clone();
        move |s| s.clear_rows(&id)
    })
    .await?;
    let mut cursor: Option<String> = None;
    let (mut added, mut modified, mut removed) = (0u64, 0u64, 0u64);
    let mut staging: Option<tokio::task::JoinHandle<Result<(), StoreError>>> = None;
    loop {
        let fetched = fetch_page(provider, account, cursor.as_deref(), params).await;
        // The previous page must be fully staged before this one: a row added on
        // one page may be modified or removed on a later one.
        if let Some(previous) = staging.take() {
            join_staging(previous).await?;
        }
        let page = match fetched {
            Ok(page) => page,
            Err(e) if e.class() == ErrorClass::RestartPagination => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        progress.page(page.added.len() + page.modified.len() + page.removed.len());
        added += page.added.len() as u64;
        modified += page.modified.len() as u64;
        removed += page.removed.len() as u64;
        let mut rows = page.added;
        rows.extend(page.modified);
        let store = store.clone();
        let id = account.id.clone();
        let removals = page.removed;
        staging = Some(tokio::task::spawn_blocking(move || {
            store.stage_rows(&id, rows, removals)
        }));
        if !page.has_more {
            if let Some(last) = staging.take() {
                join_staging(last).await?;
            }
            return Ok(Some(Staged {
                cursor: page.next_cursor,
                request_id: page.request_id,
                added,
                modified,
                removed,
            }));
        }
        cursor = Some(page.next_cursor);
    }
}

/// Runs a store call on a blocking thread.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, SyncError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| SyncError::Store(StoreError::Io(format!("store task failed: {e}"))))?
        .map_err(SyncError::Store)
}

async fn join_staging(
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
) -> Result<(), SyncError> {
    task.await
        .map_err(|e| SyncError::Store(StoreError::Io(format!("staging task failed: {e}"))))?
        .map_err(SyncError::Store)
}

/// Pages from `start_cursor` until `has_more` is false, restarting from `start_cursor`
/// on mutation during pagination. Nothing is written.
async fn pagination_loop(
    provider: &dyn CursorSource,
    account: &Account,
    start_cursor: Option<&str>,
    params: &SyncParams,
    progress: &SyncProgress,
) -> Result<LoopResult, SyncError> {
    let mut restarts = 0u32;
    'restart: loop {
        let mut folded = Fold::default();
        let mut cursor: Option<String> = start_cursor.map(str::to_string);
        loop {
            let page = match fetch_page(provider, account, cursor.as_deref(), params).await {
                Ok(page) => page,
                Err(e) if e.class() == ErrorClass::RestartPagination => {
                    restarts += 1;
                    progress.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        account_id = %account.id,
                        restarts,
                        "data changed during pagination, restarting the loop"
                    );
                    if restarts > params.max_loop_restarts {
                        return Err(SyncError::TooManyRestarts(restarts));
                    }
                    continue 'restart;
                }
                Err(e) => return Err(e.into()),
            };
            progress.page(page.added.len() + page.modified.len() + page.removed.len());
            folded.added += page.added.len() as u64;
            folded.modified += page.modified.len() as u64;
            for row in page.added.into_iter().chain(page.modified) {
                folded.upsert(row);
            }
            for id in page.removed {
                folded.remove(id);
            }
            if !page.has_more {
                return Ok(folded.finish(page.next_cursor, page.request_id));
            }
            cursor = Some(page.next_cursor);
        }
    }
}

/// The reconcile path after a rejected cursor: a fresh cursor first, then the full
/// window as the complete set, then an immediate follow-up sync from the new cursor.
async fn reconcile(
    env: &SyncEnv<'_>,
    account: &Account,
    consumed: Vec<u64>,
    started_at: chrono::DateTime<Utc>,
) -> Result<SyncReport, SyncError> {
    let SyncEnv {
        provider,
        store,
        params,
        progress,
        ..
    } = *env;
    let fresh = pagination_loop(provider, account, None, params, progress).await?;
    let window = list_window(env, account).await?;
    let rows = reconciled_rows(fresh.upserts, window);
    let outcome = SyncOutcome::Committed {
        added: rows.len() as u64,
        modified: 0,
        removed: 0,
        pages: progress.snapshot().pages,
        fallback: true,
        request_id: Some(fresh.request_id.clone()),
    };
    commit(
        store,
        SyncCommit {
            account_id: account.id.clone(),
            mode: ApplyMode::Replace,
            upserts: rows,
            removals: Vec::new(),
            cursor: fresh.cursor,
            consumed,
            outcome: outcome.clone(),
            started_at,
            finished_at: env.clock.now(),
        },
    )
    .await?;
    store.durable().await?;
    Ok(SyncReport {
        outcome,
        follow_up: true,
    })
}

/// The complete set at the fresh cursor C, refreshed with the window listing.
///
/// The listing runs after C was issued, so it can hold rows created after C. Such a row
/// must not be kept: if it is removed later, the follow-up sync from C never reports the
/// removal (a delta does not mention rows that appeared and vanished after its cursor),
/// and the local copy would keep a row the provider no longer has. Every row that still
/// exists after C is delivered by that follow-up sync anyway. So the result is exactly
/// the rows of the fresh loop, each in its listed version where the listing has it.
/// A row the listing lacks keeps its fresh version: if it was removed after C, the
/// follow-up reports the removal; if the offset-paged listing merely skipped it (a row
/// removed before the offset and another added after it between two pages leave the
/// total unchanged), dropping it would lose a row no delta will ever mention again.
fn reconciled_rows(fresh: Vec<Transaction>, window: Vec<Transaction>) -> Vec<Transaction> {
    let mut listed: HashMap<String, Transaction> = window
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    let mut rows: Vec<Transaction> = fresh
        .into_iter()
        .map(|row| listed.remove(&row.id).unwrap_or(row))
        .collect();
    rows.sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
    rows
}

/// Lists every row dated within the window (`window_days` back from today, through
/// tomorrow: a provider's "today" may be ahead of ours). Offset paging is only
/// consistent while the set does not change, so the listing is retried when the total
/// moved or ids repeat.
async fn list_window(env: &SyncEnv<'_>, account: &Account) -> Result<Vec<Transaction>, SyncError> {
    let SyncEnv {
        provider,
        params,
        progress,
        ..
    } = *env;
    const ATTEMPTS: u32 = 5;
    let today = env.clock.now().date_naive();
    let start = today - ChronoDuration::days(params.window_days);
    let end = today + ChronoDuration::days(1);
    'attempt: for _ in 0..ATTEMPTS {
        let mut rows: HashMap<String, Transaction> = HashMap::new();
        let mut offset = 0u64;
        let mut expected_total: Option<u64> = None;
        loop {
            let page = provider
                .window_page(
                    &account.access_token,
                    start,
                    end,
                    offset,
                    params.window_page_size,
                )
                .await?;
            progress.page(page.transactions.len());
            if *expected_total.get_or_insert(page.total) != page.total {
                continue 'attempt;
            }
            let received = page.transactions.len() as u64;
            for row in page.transactions {
                if rows.insert(row.id.clone(), row).is_some() {
                    continue 'attempt;
                }
            }
            offset += received;
            if received == 0 || offset >= page.total {
                break;
            }
        }
        if rows.len() as u64 != expected_total.unwrap_or(0) {
            continue 'attempt;
        }
        let mut rows: Vec<Transaction> = rows.into_values().collect();
        rows.sort_by(|a, b| (a.date, &a.id).cmp(&(b.date, &b.id)));
        return Ok(rows);
    }
    Err(SyncError::UnstableWindow(ATTEMPTS))
}

/// Folds pages into one ordered set of upserts and removals: a later row for the same
/// id replaces an earlier one, a removal cancels an earlier upsert.
#[derive(Default)]
struct Fold {
    order: Vec<String>,
    rows: HashMap<String, Option<Transaction>>,
    added: u64,
    modified: u64,
}

impl Fold {
    fn upsert(&mut self, row: Transaction) {
        if !self.rows.contains_key(&row.id) {
            self.order.push(row.id.clone());
        }
        self.rows.insert(row.id.clone(), Some(row));
    }

    fn remove(&mut self, id: String) {
        if !self.rows.contains_key(&id) {
            self.order.push(id.clone());
        }
        self.rows.insert(id, None);
    }

    fn finish(mut self, cursor: String, request_id: String) -> LoopResult {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for id in self.order {
            match self.rows.remove(&id).flatten() {
                Some(row) => upserts.push(row),
                None => removals.push(id),
            }
        }
        LoopResult {
            upserts,
            removals,
            added: self.added,
            modified: self.modified,
            cursor,
            request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    /// The environment of a test sync, on the system clock.
    fn env<'a>(
        provider: &'a dyn CursorSource,
        store: &'a Arc<dyn Store>,
        params: &'a SyncParams,
        progress: &'a SyncProgress,
    ) -> SyncEnv<'a> {
        SyncEnv {
            provider,
            store,
            params,
            progress,
            clock: &crate::clock::SystemClock,
        }
    }

    use super::*;
    use crate::providers::test_support::{cursor_rejected, delta, window, FnProvider};
    use chrono::NaiveDate;

    fn row(id: &str, amount: f64) -> Transaction {
        Transaction {
            id: id.to_string(),
            date: NaiveDate::from_ymd_opt(2026, 1, 2).expect("valid date"),
            body: serde_json::json!({ "transaction_id": id, "amount": amount }),
        }
    }

    /// A provider scripted for the reconcile race: the stored cursor `c0` is rejected;
    /// a fresh loop returns `a` at cursor `c1`; the window listing, which runs after
    /// `c1` was issued, also holds `x`, a row created after `c1` and removed again
    /// before the follow-up sync, so the delta from `c1` reports nothing about it.
    fn reconcile_race() -> FnProvider {
        FnProvider::new(
            |cursor| match cursor {
                None => Ok(delta(vec![row("a", 1.0)], "c1")),
                Some("c0") => Err(cursor_rejected()),
                Some(other) => Ok(delta(vec![], &format!("{other}+"))),
            },
            || Ok(window(vec![row("a", 2.0), row("x", 9.0)])),
        )
    }

    /// A store in a temp dir holding one linked account that never synced.
    fn linked_store() -> (tempfile::TempDir, Arc<dyn Store>, Account) {
        use crate::domain::{AccessToken, ProviderKind};
        use crate::store::{SledStore, SledStoreConfig};

        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = SledStore::open(SledStoreConfig {
            data_dir: dir.path().to_path_buf(),
            cache_capacity_bytes: 8 * 1024 * 1024,
            group_commit_window: std::time::Duration::ZERO,
        })
        .expect("store opens");
        let account = Account::new_linked(
            ProviderKind::Plaid,
            "item".to_string(),
            AccessToken::new("token"),
            "owner".to_string(),
            vec![],
            Utc::now(),
        );
        store.link_account(&account).expect("links");
        (dir, store, account)
    }

    /// A 5xx in the middle of a loop costs one call, not the pages already fetched:
    /// the page is retried in place (the first sync and a delta sync alike), and with
    /// no retries configured the same answer fails the sync.
    #[tokio::test]
    async fn a_transient_page_failure_is_retried_in_place() {
        use std::sync::atomic::AtomicU32;

        let server_error = || ProviderError::Api {
            status: 500,
            error_type: "API_ERROR".to_string(),
            code: "INTERNAL_SERVER_ERROR".to_string(),
            message: "scripted".to_string(),
            request_id: Some("req-500".to_string()),
            class: ErrorClass::Transient,
        };
        // Every cursor but the first fails once before it answers.
        let failed_once: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
        let calls = Arc::new(AtomicU32::new(0));
        let provider = {
            let failed_once = failed_once.clone();
            let calls = calls.clone();
            FnProvider::new(
                move |cursor| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    match cursor {
                        None => Ok(crate::providers::DeltaPage {
                            has_more: true,
                            ..delta(vec![row("a", 1.0)], "p1")
                        }),
                        Some(c) if failed_once.lock().unwrap().insert(c.to_string()) => {
                            Err(server_error())
                        }
                        Some("p1") => Ok(delta(vec![row("b", 2.0)], "c1")),
                        Some(_) => Ok(delta(vec![row("c", 3.0)], "c2")),
                    }
                },
                || Ok(window(vec![])),
            )
        };
        let (_dir, store, account) = linked_store();
        let progress = SyncProgress::default();

        // No retries: the 500 on the second page fails the first sync.
        let no_retries = SyncParams::default();
        let stored = store.get_account(&account.id).unwrap().expect("linked");
        let error = run_sync(
            &env(&provider, &store, &no_retries, &progress),
            &stored,
            vec![],
        )
        .await
        .expect_err("fails without retries");
        assert_eq!(error.code(), "INTERNAL_SERVER_ERROR");
        failed_once.lock().unwrap().clear();
        calls.store(0, Ordering::SeqCst);

        let params = SyncParams {
            page_retries: 2,
            page_retry_delay: std::time::Duration::from_millis(1),
            ..SyncParams::default()
        };
        run_sync(&env(&provider, &store, &params, &progress), &stored, vec![])
            .await
            .expect("first sync retries its second page");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "page 1, the 500, page 2");
        let stored = store.get_account(&account.id).unwrap().expect("linked");
        assert_eq!(stored.cursor.as_deref(), Some("c1"));
        run_sync(&env(&provider, &store, &params, &progress), &stored, vec![])
            .await
            .expect("delta sync retries its page");
        assert_eq!(calls.load(Ordering::SeqCst), 5, "then the 500 and the page");
        let stored = store.get_account(&account.id).unwrap().expect("linked");
        assert_eq!(stored.cursor.as_deref(), Some("c2"));
        assert_eq!(store.count_transactions(&account.id).expect("count"), 3);
    }

    #[tokio::test]
    async fn reconcile_drops_rows_created_after_the_fresh_cursor() {
        use crate::store::TransactionQuery;

        let (_dir, store, account) = linked_store();
        let provider = reconcile_race();
        let params = SyncParams::default();
        let progress = SyncProgress::default();
        // Give the account the stored cursor the provider will reject.
        store
            .commit_sync(SyncCommit {
                account_id: account.id.clone(),
                mode: ApplyMode::Replace,
                upserts: vec![row("a", 0.5), row("gone", 3.0)],
                removals: vec![],
                cursor: "c0".to_string(),
                consumed: vec![],
                outcome: SyncOutcome::Committed {
                    added: 2,
                    modified: 0,
                    removed: 0,
                    pages: 1,
                    fallback: false,
                    request_id: None,
                },
                started_at: Utc::now(),
                finished_at: Utc::now(),
            })
            .expect("seeds the cursor");

        let stored = store.get_account(&account.id).unwrap().expect("linked");
        let report = run_sync(&env(&provider, &store, &params, &progress), &stored, vec![])
            .await
            .expect("reconciles");
        assert!(report.follow_up, "the reconcile path asks for a follow-up");
        let stored = store.get_account(&account.id).unwrap().expect("linked");
        assert_eq!(stored.cursor.as_deref(), Some("c1"));
        run_sync(&env(&provider, &store, &params, &progress), &stored, vec![])
            .await
            .expect("follow-up syncs");

        let page = store
            .list_transactions(
                &account.id,
                &TransactionQuery {
                    start_date: None,
                    end_date: None,
                    after: None,
                    limit: 100,
                },
            )
            .expect("lists");
        assert_eq!(
            page.transactions,
            vec![row("a", 2.0)],
            "exactly the provider's rows: the listed version of a, no x, no stale row"
        );
    }

    #[test]
    fn reconciled_rows_are_the_fresh_rows_in_their_listed_versions() {
        let mut old = row("old", 1.0);
        old.date = NaiveDate::from_ymd_opt(2020, 5, 5).unwrap();
        let rows = reconciled_rows(
            vec![
                old.clone(),
                row("kept", 1.0),
                row("removed-after-c", 1.0),
                row("skipped-by-paging", 4.0),
            ],
            vec![row("kept", 2.0), row("created-after-c", 1.0)],
        );
        // Not in the listing: kept as fetched at C (a removal after C is reported by
        // the follow-up sync; a row the paging skipped must not be lost). Created after
        // C: left to the follow-up sync.
        assert_eq!(
            rows,
            vec![
                old,
                row("kept", 2.0),
                row("removed-after-c", 1.0),
                row("skipped-by-paging", 4.0),
            ]
        );
    }

    #[test]
    fn fold_keeps_latest_row_and_lets_removal_win() {
        let mut fold = Fold::default();
        fold.upsert(row("a", 1.0));
        fold.upsert(row("b", 2.0));
        fold.upsert(row("a", 3.0));
        fold.remove("b".to_string());
        fold.remove("c".to_string());
        let result = fold.finish("cur".to_string(), "req".to_string());
        assert_eq!(result.upserts, vec![row("a", 3.0)]);
        assert_eq!(result.removals, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(result.cursor, "cur");
    }
}
