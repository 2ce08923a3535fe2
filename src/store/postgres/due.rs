//! The due-time index on PostgreSQL: the `due` table, one row per (kind, subject),
//! read through its (kind, due_at, subject) index, so a kind's due part is one range
//! read. Writers that change an entry as part of a larger change (a link, a sync
//! commit, an incident that enqueues an alert) call the helpers here inside their own
//! transaction; the trait methods are the standalone writes.
//!
//! Times are kept to the millisecond, as on sled, so an entry read back compares equal
//! to what a caller later hands to [`DueIndex::reschedule_due`]. The primary key makes
//! stale entries (which sled's two trees can be left with) impossible here.

use chrono::{DateTime, Utc};

use super::{db_error, to_millis, transaction, PgStore, Tx, TxResult};
use crate::domain::AccountId;
use crate::store::{DueEntry, DueIndex, DueKind, PollEntry, RetryRecord, StoreError};

/// The `kind` column's value.
pub(super) fn kind_text(kind: DueKind) -> &'static str {
    match kind {
        DueKind::Retry => "retry",
        DueKind::Poll => "poll",
        DueKind::Outbox => "outbox",
        DueKind::OperationWake => "operation_wake",
        DueKind::OperationDeadline => "operation_deadline",
        DueKind::OperationFailed => "operation_failed",
    }
}

/// Writes the subject's entry of `kind`, replacing the one it had.
pub(super) async fn put_entry(
    tx: &mut Tx,
    kind: DueKind,
    subject: &str,
    due_at: DateTime<Utc>,
    payload: &[u8],
) -> TxResult<()> {
    sqlx::query(
        "INSERT INTO due (kind, subject, due_at, payload) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kind, subject) DO UPDATE SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload",
    )
    .bind(kind_text(kind))
    .bind(subject)
    .bind(to_millis(due_at))
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes the subject's entry of `kind`; whether there was one.
pub(super) async fn remove_subject(tx: &mut Tx, kind: DueKind, subject: &str) -> TxResult<bool> {
    let removed = sqlx::query("DELETE FROM due WHERE kind = $1 AND subject = $2")
        .bind(kind_text(kind))
        .bind(subject)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(removed > 0)
}

/// Removes the account's retry record.
pub(super) async fn remove_retry(tx: &mut Tx, id: &AccountId) -> TxResult<()> {
    remove_subject(tx, DueKind::Retry, id.as_str()).await?;
    Ok(())
}

/// Places the account's polling entry at `anchor`.
pub(super) async fn put_poll(tx: &mut Tx, id: &AccountId, anchor: DateTime<Utc>) -> TxResult<()> {
    put_entry(tx, DueKind::Poll, id.as_str(), anchor, &[]).await
}

/// The subject's entry of `kind` (time and payload), its row locked.
async fn entry_for_update(
    tx: &mut Tx,
    kind: DueKind,
    subject: &str,
) -> TxResult<Option<(DateTime<Utc>, Vec<u8>)>> {
    Ok(sqlx::query_as(
        "SELECT due_at, payload FROM due WHERE kind = $1 AND subject = $2 FOR UPDATE",
    )
    .bind(kind_text(kind))
    .bind(subject)
    .fetch_optional(&mut **tx)
    .await?)
}

fn encode_retry(record: &RetryRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record)
        .map_err(|e| super::corrupt("due", format!("cannot encode retry: {e}")))
}

fn decode_retry(payload: &[u8]) -> Result<RetryRecord, StoreError> {
    serde_json::from_slice(payload)
        .map_err(|e| super::corrupt("due", format!("bad retry record: {e}")))
}

impl PgStore {
    /// Up to `limit` rows of `kind` due at or before `until`, earliest first.
    async fn due_rows(
        &self,
        kind: DueKind,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>, Vec<u8>)>, StoreError> {
        sqlx::query_as(
            "SELECT subject, due_at, payload FROM due WHERE kind = $1 AND due_at <= $2 \
             ORDER BY due_at, subject LIMIT $3",
        )
        .bind(kind_text(kind))
        .bind(to_millis(until))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)
    }

    async fn entry(
        &self,
        kind: DueKind,
        subject: &str,
    ) -> Result<Option<(DateTime<Utc>, Vec<u8>)>, StoreError> {
        sqlx::query_as("SELECT due_at, payload FROM due WHERE kind = $1 AND subject = $2")
            .bind(kind_text(kind))
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
    }

    /// Replaces the subject's (`kind`) entry with `next` (`None`: removes it), only
    /// while it is still (`due_at`, `payload`); whether it was.
    fn compare_and_set(
        &self,
        kind: DueKind,
        subject: &str,
        current: (DateTime<Utc>, &[u8]),
        next: Option<(DateTime<Utc>, &[u8])>,
    ) -> Result<bool, StoreError> {
        let current_at = to_millis(current.0);
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let still_current = entry_for_update(tx, kind, subject)
                        .await?
                        .is_some_and(|(at, payload)| at == current_at && payload == current.1);
                    if !still_current {
                        return Ok(false);
                    }
                    match next {
                        Some((at, payload)) => put_entry(tx, kind, subject, at, payload).await?,
                        None => {
                            remove_subject(tx, kind, subject).await?;
                        }
                    }
                    Ok(true)
                }
                .await
            })
        })
    }
}

impl DueIndex for PgStore {
    fn schedule_due(&self, entry: &DueEntry) -> Result<(), StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                put_entry(tx, entry.kind, &entry.subject, entry.due_at, &entry.payload).await
            })
        })
    }

    fn due_entries(
        &self,
        until: DateTime<Utc>,
        kind: DueKind,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let rows = self.block_on(self.due_rows(kind, until, limit))?;
        Ok(rows
            .into_iter()
            .map(|(subject, due_at, payload)| DueEntry {
                kind,
                subject,
                due_at,
                payload,
            })
            .collect())
    }

    fn reschedule_due(
        &self,
        current: &DueEntry,
        next: Option<&DueEntry>,
    ) -> Result<bool, StoreError> {
        current.check_rescheduled_as(next)?;
        self.compare_and_set(
            current.kind,
            &current.subject,
            (current.due_at, &current.payload),
            next.map(|next| (next.due_at, next.payload.as_slice())),
        )
    }

    fn remove_due(&self, kind: DueKind, subject: &str) -> Result<bool, StoreError> {
        self.write(async { transaction!(self, |tx| remove_subject(tx, kind, subject).await) })
    }

    fn due_entry_of(&self, kind: DueKind, subject: &str) -> Result<Option<DueEntry>, StoreError> {
        let entry = self.block_on(self.entry(kind, subject))?;
        Ok(entry.map(|(due_at, payload)| DueEntry {
            kind,
            subject: subject.to_owned(),
            due_at,
            payload,
        }))
    }

    fn next_due(&self, kind: DueKind) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.block_on(async {
            sqlx::query_scalar("SELECT min(due_at) FROM due WHERE kind = $1")
                .bind(kind_text(kind))
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)
        })
    }

    fn record_retry(&self, record: &RetryRecord) -> Result<(), StoreError> {
        let payload = encode_retry(record)?;
        let subject = record.account_id.as_str();
        self.write(async {
            transaction!(self, |tx| {
                put_entry(tx, DueKind::Retry, subject, record.due_at, &payload).await
            })
        })
    }

    fn clear_retry(&self, id: &AccountId) -> Result<(), StoreError> {
        self.write(async { transaction!(self, |tx| remove_retry(tx, id).await) })
    }

    fn reschedule_retry(
        &self,
        current: &RetryRecord,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let moved = due_at
            .map(|due_at| {
                encode_retry(&RetryRecord {
                    due_at,
                    ..current.clone()
                })
                .map(|payload| (due_at, payload))
            })
            .transpose()?;
        let payload = encode_retry(current)?;
        // Byte for byte: a record replaced by a sync, even at the same time, wins.
        self.compare_and_set(
            DueKind::Retry,
            current.account_id.as_str(),
            (current.due_at, &payload),
            moved
                .as_ref()
                .map(|(at, payload)| (*at, payload.as_slice())),
        )
    }

    fn due_retries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RetryRecord>, StoreError> {
        let rows = self.block_on(self.due_rows(DueKind::Retry, now, limit))?;
        rows.iter()
            .map(|(_, _, payload)| decode_retry(payload))
            .collect()
    }

    fn retry_of(&self, id: &AccountId) -> Result<Option<RetryRecord>, StoreError> {
        let entry = self.block_on(self.entry(DueKind::Retry, id.as_str()))?;
        entry.map(|(_, payload)| decode_retry(&payload)).transpose()
    }

    fn due_polls(
        &self,
        anchored_by: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PollEntry>, StoreError> {
        let rows = self.block_on(self.due_rows(DueKind::Poll, anchored_by, limit))?;
        Ok(rows
            .into_iter()
            .map(|(subject, anchor, _)| PollEntry {
                account_id: AccountId(subject),
                anchor,
            })
            .collect())
    }

    fn defer_poll(&self, entry: &PollEntry, at: DateTime<Utc>) -> Result<(), StoreError> {
        let subject = entry.account_id.as_str();
        let at = to_millis(at);
        self.write(async {
            transaction!(self, |tx| {
                async {
                    match entry_for_update(tx, DueKind::Poll, subject).await? {
                        // Forward only: a commit that landed meanwhile may have moved it
                        // later.
                        Some((current, _)) if current >= at => Ok(()),
                        _ => put_entry(tx, DueKind::Poll, subject, at, &[]).await,
                    }
                }
                .await
            })
        })
    }

    fn clear_poll(&self, entry: &PollEntry) -> Result<(), StoreError> {
        let subject = entry.account_id.as_str();
        let anchor = to_millis(entry.anchor);
        self.write(async {
            sqlx::query("DELETE FROM due WHERE kind = 'poll' AND subject = $1 AND due_at = $2")
                .bind(subject)
                .bind(anchor)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }
}
