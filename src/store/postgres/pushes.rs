//! The push queue and the audit trail on PostgreSQL (`stripe_pushes`, `stripe_audit`;
//! see the migration `20261204000005_stripe_pushes.sql`). Queueing locks the account's
//! row, so one account's changes are numbered one at a time and a change queued behind
//! an open one of the same object always sees it.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{corrupt, db_error, transaction, PgStore, Tx, TxError, TxResult};
use crate::domain::stripe::ObjectType;
use crate::domain::stripe_push::{
    AuditEntry, AuditNote, AuditPage, Direction, NewPush, Push, PushBacklog, PushQuery, PushStatus,
    QueueRefusal, Resolution,
};
use crate::domain::AccountId;
use crate::store::{queue_refusal as refusal_error, PushStore, StoreError};

const TABLE: &str = "stripe_pushes";

fn push_of(record: Value) -> Result<Push, StoreError> {
    serde_json::from_value(record).map_err(|e| corrupt(TABLE, format!("bad change: {e}")))
}

fn record_of(push: &Push) -> Result<Value, StoreError> {
    serde_json::to_value(push).map_err(|e| corrupt(TABLE, format!("cannot encode change: {e}")))
}

/// Writes a change (insert or overwrite).
pub(super) async fn put_push(tx: &mut Tx, push: &Push) -> TxResult<()> {
    let record = record_of(push)?;
    sqlx::query(
        "INSERT INTO stripe_pushes (account_id, seq, object_type, object_id, action, status, \
             created_at, record, client_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (account_id, seq) DO UPDATE SET object_id = EXCLUDED.object_id, \
             status = EXCLUDED.status, record = EXCLUDED.record",
    )
    .bind(push.account_id.as_str())
    .bind(i64::try_from(push.seq).unwrap_or(i64::MAX))
    .bind(push.object_type.as_str())
    .bind(push.object_id.as_deref())
    .bind(push.action.as_str())
    .bind(push.status.as_str())
    .bind(push.created_at)
    .bind(record)
    .bind(push.client_key.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes a commit's changes that are still pending in the store (see `ObjectCommit`).
pub(super) async fn put_decided(tx: &mut Tx, pushes: &[Push]) -> TxResult<()> {
    for push in pushes {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM stripe_pushes WHERE account_id = $1 AND seq = $2 FOR UPDATE",
        )
        .bind(push.account_id.as_str())
        .bind(i64::try_from(push.seq).unwrap_or(i64::MAX))
        .fetch_optional(&mut **tx)
        .await?;
        if status.as_deref() == Some(PushStatus::Pending.as_str()) {
            put_push(tx, push).await?;
        }
    }
    Ok(())
}

/// One row of `stripe_audit`, before it is numbered.
pub(super) struct AuditRow<'a> {
    pub(super) object_type: ObjectType,
    pub(super) object_id: &'a str,
    pub(super) note: &'a AuditNote,
    pub(super) version: Option<u64>,
}

/// Appends audit entries, dated `at`, in order.
pub(super) async fn insert_audit(
    tx: &mut Tx,
    account: &AccountId,
    at: DateTime<Utc>,
    rows: &[AuditRow<'_>],
) -> TxResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = rows.iter().map(|r| r.object_type.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.object_id).collect();
    let directions: Vec<&str> = rows.iter().map(|r| r.note.direction.as_str()).collect();
    let whats: Vec<&str> = rows.iter().map(|r| r.note.what.as_str()).collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.note.source.as_str()).collect();
    let pushes: Vec<Option<i64>> = rows
        .iter()
        .map(|r| r.note.push.and_then(|p| i64::try_from(p).ok()))
        .collect();
    let versions: Vec<Option<i64>> = rows
        .iter()
        .map(|r| r.version.and_then(|v| i64::try_from(v).ok()))
        .collect();
    sqlx::query(
        "INSERT INTO stripe_audit (account_id, at, object_type, object_id, direction, what, \
             source, push_seq, version) \
         SELECT $1, $2, r.t, r.i, r.d, r.w, r.s, r.p, r.v FROM UNNEST($3::text[], \
             $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[]) \
             WITH ORDINALITY AS r(t, i, d, w, s, p, v, n) \
         ORDER BY r.n",
    )
    .bind(account.as_str())
    .bind(at)
    .bind(&types)
    .bind(&ids)
    .bind(&directions)
    .bind(&whats)
    .bind(&sources)
    .bind(&pushes)
    .bind(&versions)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl PgStore {
    async fn pushes_where(&self, id: &AccountId, open_only: bool) -> Result<Vec<Push>, StoreError> {
        let records: Vec<Value> = sqlx::query_scalar(
            "SELECT record FROM stripe_pushes WHERE account_id = $1 \
               AND (NOT $2 OR status IN ('pending', 'conflict', 'failed')) ORDER BY seq",
        )
        .bind(id.as_str())
        .bind(open_only)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        records.into_iter().map(push_of).collect()
    }
}

impl PushStore for PgStore {
    fn enqueue_push(&self, new: &NewPush) -> Result<Push, StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let locked: Option<String> =
                        sqlx::query_scalar("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
                            .bind(new.account_id.as_str())
                            .fetch_optional(&mut **tx)
                            .await?;
                    if locked.is_none() {
                        return Err(TxError::Fail(StoreError::AccountNotFound(
                            new.account_id.clone(),
                        )));
                    }
                    if let Some(client_key) = &new.client_key {
                        let earlier: Option<Value> = sqlx::query_scalar(
                            "SELECT record FROM stripe_pushes \
                             WHERE account_id = $1 AND client_key = $2",
                        )
                        .bind(new.account_id.as_str())
                        .bind(client_key)
                        .fetch_optional(&mut **tx)
                        .await?;
                        if let Some(earlier) = earlier {
                            let earlier = push_of(earlier)?;
                            if new.is_repeat_of(&earlier) {
                                return Ok(earlier);
                            }
                            return Err(TxError::Fail(refusal_error(
                                new,
                                QueueRefusal::KeyReused { seq: earlier.seq },
                            )));
                        }
                    }
                    let last: Option<i64> = sqlx::query_scalar(
                        "SELECT max(seq) FROM stripe_pushes WHERE account_id = $1",
                    )
                    .bind(new.account_id.as_str())
                    .fetch_one(&mut **tx)
                    .await?;
                    let open: Vec<Value> = sqlx::query_scalar(
                        "SELECT record FROM stripe_pushes WHERE account_id = $1 \
                           AND status IN ('pending', 'conflict', 'failed')",
                    )
                    .bind(new.account_id.as_str())
                    .fetch_all(&mut **tx)
                    .await?;
                    let open = open
                        .into_iter()
                        .map(push_of)
                        .collect::<Result<Vec<_>, _>>()?;
                    let current = match &new.object_id {
                        Some(object_id) => {
                            self.object_in(tx, &new.account_id, new.object_type, object_id)
                                .await?
                        }
                        None => None,
                    };
                    let seq = u64::try_from(last.unwrap_or(0)).unwrap_or(0) + 1;
                    let push = Push::queued(new, seq, current.as_ref(), &open)
                        .map_err(|refusal| TxError::Fail(refusal_error(new, refusal)))?;
                    put_push(tx, &push).await?;
                    if let Some(object_id) = &push.object_id {
                        let note = push.queued_note();
                        let row = AuditRow {
                            object_type: push.object_type,
                            object_id,
                            note: &note,
                            version: None,
                        };
                        insert_audit(tx, &new.account_id, new.at, &[row]).await?;
                    }
                    Ok(push)
                }
                .await
            })
        })
    }

    fn get_push(&self, id: &AccountId, seq: u64) -> Result<Option<Push>, StoreError> {
        self.block_on(async {
            let record: Option<Value> = sqlx::query_scalar(
                "SELECT record FROM stripe_pushes WHERE account_id = $1 AND seq = $2",
            )
            .bind(id.as_str())
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
            record.map(push_of).transpose()
        })
    }

    fn list_pushes(&self, query: &PushQuery) -> Result<(Vec<Push>, Option<u64>), StoreError> {
        let limit = query.limit.max(1);
        let statuses: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
        self.block_on(async {
            let records: Vec<Value> = sqlx::query_scalar(
                "SELECT record FROM stripe_pushes WHERE account_id = $1 AND seq > $2 \
                   AND (cardinality($3::text[]) = 0 OR status = ANY($3::text[])) \
                 ORDER BY seq LIMIT $4",
            )
            .bind(query.account_id.as_str())
            .bind(
                query
                    .after
                    .map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX)),
            )
            .bind(&statuses)
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let more = records.len() > limit;
            let pushes = records
                .into_iter()
                .take(limit)
                .map(push_of)
                .collect::<Result<Vec<_>, _>>()?;
            let next = more.then(|| pushes.last().map(|p| p.seq)).flatten();
            Ok((pushes, next))
        })
    }

    fn open_pushes(&self, id: &AccountId) -> Result<Vec<Push>, StoreError> {
        self.block_on(self.pushes_where(id, true))
    }

    fn push_backlog(&self, id: &AccountId) -> Result<PushBacklog, StoreError> {
        self.block_on(async {
            let mut backlog = PushBacklog::default();
            for push in self.pushes_where(id, true).await? {
                backlog.add(&push);
            }
            let counts: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, count(*) FROM stripe_pushes WHERE account_id = $1 \
                   AND status IN ('pushed', 'discarded') GROUP BY status",
            )
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            for (status, count) in counts {
                let count = u64::try_from(count).unwrap_or(0);
                match PushStatus::parse(&status) {
                    Some(PushStatus::Pushed) => backlog.pushed = count,
                    Some(PushStatus::Discarded) => backlog.discarded = count,
                    _ => {}
                }
            }
            Ok(backlog)
        })
    }

    fn resolve_push(
        &self,
        id: &AccountId,
        seq: u64,
        resolution: Resolution,
        at: DateTime<Utc>,
    ) -> Result<Push, StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let record: Option<Value> = sqlx::query_scalar(
                        "SELECT record FROM stripe_pushes WHERE account_id = $1 AND seq = $2 \
                         FOR UPDATE",
                    )
                    .bind(id.as_str())
                    .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                    .fetch_optional(&mut **tx)
                    .await?;
                    let Some(record) = record else {
                        return Err(TxError::Fail(StoreError::InvalidState(format!(
                            "push_{seq} does not exist"
                        ))));
                    };
                    let mut push = push_of(record)?;
                    let note = push
                        .resolve(resolution, at)
                        .map_err(|e| TxError::Fail(StoreError::InvalidState(e)))?;
                    put_push(tx, &push).await?;
                    if let Some(object_id) = &push.object_id {
                        let row = AuditRow {
                            object_type: push.object_type,
                            object_id,
                            note: &note,
                            version: None,
                        };
                        insert_audit(tx, id, at, &[row]).await?;
                    }
                    Ok(push)
                }
                .await
            })
        })
    }

    fn audit_trail(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let limit = limit.max(1);
        self.block_on(async {
            type Row = (
                i64,
                DateTime<Utc>,
                String,
                String,
                String,
                Option<i64>,
                Option<i64>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, at, direction, what, source, push_seq, version FROM stripe_audit \
                 WHERE account_id = $1 AND object_type = $2 AND object_id = $3 AND id > $4 \
                 ORDER BY id LIMIT $5",
            )
            .bind(id.as_str())
            .bind(object_type.as_str())
            .bind(object_id)
            .bind(after.map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX)))
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let more = rows.len() > limit;
            let entries: Vec<AuditEntry> = rows
                .into_iter()
                .take(limit)
                .map(
                    |(seq, at, direction, what, source, push, version)| AuditEntry {
                        seq: u64::try_from(seq).unwrap_or(0),
                        object_type,
                        object_id: object_id.to_owned(),
                        at,
                        version: version.and_then(|v| u64::try_from(v).ok()),
                        note: AuditNote {
                            direction: if direction == Direction::Outbound.as_str() {
                                Direction::Outbound
                            } else {
                                Direction::Inbound
                            },
                            what,
                            source,
                            push: push.and_then(|p| u64::try_from(p).ok()),
                        },
                    },
                )
                .collect();
            let next = more.then(|| entries.last().map(|e| e.seq)).flatten();
            Ok(AuditPage { entries, next })
        })
    }
}
