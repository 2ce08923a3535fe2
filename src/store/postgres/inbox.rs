//! The webhook inbox on PostgreSQL: deduplicated ingest that shares commits, the
//! entries kept for items not linked yet (rows without an account), claims of a running
//! sync, and the dedup records' expiry.
//!
//! Ingest is the hot path, and one commit (one WAL flush) per webhook would cap it at
//! the disk's fsync rate. So webhooks go to an [`IngestQueue`]: a few batcher tasks
//! each take every webhook waiting at the time and write them in one transaction
//! through the `ingest_webhooks` SQL function (one round trip for the whole batch).
//! While one batch commits the next one fills up, so under load batches grow and the
//! commit rate stays low; an idle webhook goes alone, at once. A webhook's caller gets
//! its outcome only after its batch committed, which is what the 2xx promises.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{db_error, transaction, PgStore, TxError};
use crate::domain::{AccountId, InboxEntry, ProviderKind};
use crate::store::{InboxStore, IncomingWebhook, IngestOutcome, StoreError};

/// Batcher tasks: batches commit concurrently (the items' advisory locks order the
/// ones that touch the same item), so one batch's commit wait does not hold the rest.
pub(super) const BATCHERS: usize = 4;

/// Most webhooks in one batch.
const MAX_BATCH: usize = 512;

/// One webhook waiting for its batch.
struct Request {
    webhook: IncomingWebhook,
    expires_at: DateTime<Utc>,
    reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// Hands webhooks to the batchers.
pub(super) struct IngestQueue {
    sender: std::sync::Mutex<Option<mpsc::UnboundedSender<Request>>>,
    /// Webhooks handed to the batchers so far.
    submitted: AtomicU64,
    /// Batch transactions committed so far (webhooks per commit = submitted / this).
    batches: Arc<AtomicU64>,
}

impl IngestQueue {
    /// Starts the batchers on `handle`.
    pub(super) fn start(
        handle: &tokio::runtime::Handle,
        pool: PgPool,
        conflicts: Arc<AtomicU64>,
    ) -> IngestQueue {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let batches = Arc::new(AtomicU64::new(0));
        for _ in 0..BATCHERS {
            handle.spawn(run_batcher(
                pool.clone(),
                receiver.clone(),
                batches.clone(),
                conflicts.clone(),
            ));
        }
        IngestQueue {
            sender: std::sync::Mutex::new(Some(sender)),
            submitted: AtomicU64::new(0),
            batches,
        }
    }

    /// Webhooks handed to the batchers so far.
    pub(super) fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Batches committed so far.
    pub(super) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Takes no more webhooks; the batchers finish what they hold, then end.
    pub(super) fn stop(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn submit(&self, request: Request) -> Result<(), StoreError> {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            Some(sender) => {
                sender.send(request).map_err(|_| StoreError::Closed)?;
                self.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            None => Err(StoreError::Closed),
        }
    }
}

async fn run_batcher(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    batches: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            batch
        };
        let webhooks: Vec<(&IncomingWebhook, DateTime<Utc>)> =
            batch.iter().map(|r| (&r.webhook, r.expires_at)).collect();
        match ingest_batch(&pool, &conflicts, &webhooks).await {
            Ok(outcomes) => {
                batches.fetch_add(1, Ordering::Relaxed);
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = request.reply.send(Ok(outcome));
                }
            }
            // One webhook the database refuses (text it cannot hold, say) must not fail
            // the others that shared its batch: they go again, one by one.
            Err(StoreError::Io(_)) if batch.len() > 1 && connection_ok(&pool).await => {
                for request in batch {
                    let single = [(&request.webhook, request.expires_at)];
                    let outcome = ingest_batch(&pool, &conflicts, &single)
                        .await
                        .and_then(|mut outcomes| outcomes.pop().ok_or_else(missing_outcome));
                    let _ = request.reply.send(outcome);
                }
            }
            Err(error) => {
                for request in batch {
                    let _ = request.reply.send(Err(copy_error(&error)));
                }
            }
        }
    }
}

fn missing_outcome() -> StoreError {
    StoreError::Io("ingest_webhooks returned fewer rows than webhooks".into())
}

/// Whether the database answers (a batch failed for one of its webhooks, not for all).
async fn connection_ok(pool: &PgPool) -> bool {
    tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await
    .is_ok_and(|result| result.is_ok())
}

/// The same error for every webhook of a failed batch.
fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Io(other.to_string()),
    }
}

/// Ingests `webhooks` in one transaction; their outcomes in order.
async fn ingest_batch(
    pool: &PgPool,
    conflicts: &AtomicU64,
    webhooks: &[(&IncomingWebhook, DateTime<Utc>)],
) -> Result<Vec<IngestOutcome>, StoreError> {
    let providers: Vec<&str> = webhooks.iter().map(|(w, _)| w.provider.as_str()).collect();
    let items: Vec<&str> = webhooks.iter().map(|(w, _)| w.item_id.as_str()).collect();
    let kinds: Vec<&str> = webhooks.iter().map(|(w, _)| w.kind.as_str()).collect();
    let keys: Vec<&[u8]> = webhooks.iter().map(|(w, _)| &w.dedup_key[..]).collect();
    let bodies: Vec<String> = webhooks.iter().map(|(w, _)| w.body.to_string()).collect();
    let received: Vec<DateTime<Utc>> = webhooks.iter().map(|(w, _)| w.received_at).collect();
    let expires: Vec<DateTime<Utc>> = webhooks.iter().map(|(_, at)| *at).collect();
    let store = BatchPool { pool, conflicts };
    let rows: Vec<(Option<i64>, Option<String>, bool)> = transaction!(store, |tx| {
        sqlx::query_as(
            "SELECT out_seq, out_account, out_duplicate \
             FROM ingest_webhooks($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&providers)
        .bind(&items)
        .bind(&kinds)
        .bind(&keys)
        .bind(&bodies)
        .bind(&received)
        .bind(&expires)
        .fetch_all(&mut **tx)
        .await
        .map_err(TxError::from)
    })?;
    if rows.len() != webhooks.len() {
        return Err(missing_outcome());
    }
    rows.into_iter()
        .map(|(seq, account, duplicate)| {
            let account_id = account.map(AccountId);
            Ok(if duplicate {
                IngestOutcome::Duplicate { account_id }
            } else {
                let seq = seq
                    .and_then(|s| u64::try_from(s).ok())
                    .ok_or_else(missing_outcome)?;
                IngestOutcome::Accepted { seq, account_id }
            })
        })
        .collect()
}

/// What the `transaction!` macro needs of a store: its pool.
struct BatchPool<'a> {
    pool: &'a PgPool,
    /// The store's count of transactions run again.
    conflicts: &'a AtomicU64,
}

/// How long a depth counted from the table is trusted (this process's own writes keep
/// it current meanwhile; the recount picks up what other processes did).
const DEPTH_RECOUNT: Duration = Duration::from_secs(5);

/// The inbox's depth without a `count(*)` per webhook: the back-pressure check reads it
/// on every ingest, and counting a deep inbox (a backlog for unlinked items, say) on
/// each would make the hot path slower the more it is needed.
#[derive(Default)]
pub(super) struct DepthCache {
    value: std::sync::atomic::AtomicI64,
    /// When the table was last counted; `None`: never, or invalidated.
    counted_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl DepthCache {
    /// Adds (or, negative, takes away) what a write of this process did.
    pub(super) fn add(&self, n: i64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The next read counts the table (after a write whose effect is not known).
    pub(super) fn invalidate(&self) {
        *self.counted_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The lock if it is free (poisoned counts as free: it guards a timestamp only).
fn try_lock<T>(mutex: &std::sync::Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// An inbox row as read back.
type InboxRow = (i64, String, String, String, DateTime<Utc>, String);

fn entry_of(row: InboxRow) -> Result<InboxEntry, StoreError> {
    let (seq, account_id, provider, kind, received_at, body) = row;
    Ok(InboxEntry {
        seq: u64::try_from(seq).map_err(|_| super::corrupt("inbox", "negative seq"))?,
        account_id: AccountId(account_id),
        provider: ProviderKind::parse(&provider)
            .ok_or_else(|| super::corrupt("inbox", format!("unknown provider {provider:?}")))?,
        kind,
        received_at,
        body: serde_json::from_str(&body)
            .map_err(|e| super::corrupt("inbox", format!("body is not JSON: {e}")))?,
    })
}

impl InboxStore for PgStore {
    fn ingest(
        &self,
        webhook: IncomingWebhook,
        dedup_ttl: Duration,
    ) -> Result<IngestOutcome, StoreError> {
        let _gate = self.write_gate()?;
        let expires_at = webhook
            .received_at
            .checked_add_signed(
                chrono::Duration::from_std(dedup_ttl).unwrap_or(chrono::Duration::MAX),
            )
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let (reply, outcome) = oneshot::channel();
        self.ingest.submit(Request {
            webhook,
            expires_at,
            reply,
        })?;
        let outcome = self.block_on(async { outcome.await.map_err(|_| StoreError::Closed)? })?;
        if matches!(outcome, IngestOutcome::Accepted { .. }) {
            self.depth.add(1);
        }
        Ok(outcome)
    }

    fn pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        let rows: Vec<InboxRow> = self.block_on(async {
            sqlx::query_as(
                "SELECT seq, account_id, provider, kind, received_at, body FROM inbox \
                 WHERE account_id = $1 ORDER BY seq",
            )
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        rows.into_iter().map(entry_of).collect()
    }

    fn claim_pending_inbox(&self, id: &AccountId) -> Result<Vec<InboxEntry>, StoreError> {
        let rows: Vec<InboxRow> = self.write(async {
            sqlx::query_as(
                "UPDATE inbox SET claimed = true WHERE account_id = $1 \
                 RETURNING seq, account_id, provider, kind, received_at, body",
            )
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        let mut entries = rows
            .into_iter()
            .map(entry_of)
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|entry| entry.seq);
        Ok(entries)
    }

    fn accounts_with_pending_inbox(&self) -> Result<Vec<AccountId>, StoreError> {
        let ids: Vec<String> = self.block_on(async {
            sqlx::query_scalar(
                "SELECT DISTINCT account_id FROM inbox WHERE account_id IS NOT NULL \
                 ORDER BY account_id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        Ok(ids.into_iter().map(AccountId).collect())
    }

    fn inbox_depth(&self) -> Result<u64, StoreError> {
        let cache = &self.depth;
        // One caller recounts; the others (the webhooks arriving meanwhile) read the
        // value as it stands instead of queueing behind the count.
        if let Some(mut counted_at) = try_lock(&cache.counted_at) {
            if counted_at.is_none_or(|at| at.elapsed() >= DEPTH_RECOUNT) {
                // A write committing while this counts may be counted and then added
                // again (writers add after their commit): the drift lasts until the
                // next recount, and a back-pressure threshold can live with it.
                let n: i64 = self.block_on(async {
                    sqlx::query_scalar("SELECT count(*) FROM inbox")
                        .fetch_one(&self.pool)
                        .await
                        .map_err(db_error)
                })?;
                cache.value.store(n, Ordering::Relaxed);
                *counted_at = Some(std::time::Instant::now());
            }
        }
        Ok(u64::try_from(cache.value.load(Ordering::Relaxed)).unwrap_or(0))
    }

    fn purge_expired_dedup(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(async {
            let purged = sqlx::query("DELETE FROM dedup WHERE expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db_error)?
                .rows_affected();
            Ok(purged)
        })
    }
}
