//! Operations on PostgreSQL: the `operations` table (the record as JSON beside typed
//! columns users query), `operation_events` (the inbox of bank statuses; rows without
//! an operation are kept for their tracking id), `operation_counts` (per-state counts
//! kept by the writes, so counting reads no records) and the operation kinds of `due`.
//!
//! Concurrency, beside each commit's `FOR UPDATE` of the operation's row (the version
//! check):
//! - a create takes the advisory lock of its customer, so two creates for one customer
//!   see each other: without `force`, exactly one writes;
//! - an ingest and a commit that records a tracking id take the advisory lock of that
//!   tracking id, so an event kept for it is either visible to the commit's adoption or
//!   routed by the ingest to the operation. A commit takes it before the row lock, as
//!   an ingest does before its insert checks the row (the foreign key): one order.
//! - count rows are updated in state-name order, so two commits never wait on each
//!   other's counts in a cycle.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{db_error, transaction, PgStore, Tx, TxError, TxResult};
use crate::domain::incidents::{IncidentSubject, OpenIncident};
use crate::domain::operations::{
    OpeningPath, Operation, OperationEvent, OperationId, OperationQuery, OperationState,
    ReportedStatus, StatusSource,
};
use crate::store::{
    CreateOutcome, DueKind, IncomingOperationEvent, OperationCommit, OperationIncident,
    OperationIngest, OperationReceipt, OperationStore, StoreError,
};

/// An `operation_events` row as read.
type EventRow = (i64, String, String, String, String, Value, DateTime<Utc>);

/// The columns of [`EventRow`].
const EVENT_COLUMNS: &str = "seq, event_id, tracking_id, request_id, source, body, received_at";

fn corrupt(detail: impl std::fmt::Display) -> StoreError {
    super::corrupt("operations", detail)
}

fn path_text(path: OpeningPath) -> &'static str {
    match path {
        OpeningPath::Async => "async",
        OpeningPath::Legacy => "legacy",
    }
}

/// A status source's snake_case name (its serde form).
fn source_text(source: StatusSource) -> Result<String, StoreError> {
    match serde_json::to_value(source) {
        Ok(Value::String(name)) => Ok(name),
        other => Err(corrupt(format!("status source encodes as {other:?}"))),
    }
}

fn decode_operation(record: Value) -> Result<Operation, StoreError> {
    serde_json::from_value(record).map_err(|e| corrupt(format!("bad operation record: {e}")))
}

fn event_of(row: EventRow) -> Result<OperationEvent, StoreError> {
    let (seq, event_id, tracking_id, request_id, source, body, received_at) = row;
    let bad = |what: String| super::corrupt("operation_events", what);
    Ok(OperationEvent {
        seq: u64::try_from(seq).map_err(|_| bad(format!("negative seq {seq}")))?,
        event_id,
        tracking_id,
        request_id,
        report: serde_json::from_value::<ReportedStatus>(body)
            .map_err(|e| bad(format!("bad reported status: {e}")))?,
        source: serde_json::from_value(Value::String(source.clone()))
            .map_err(|_| bad(format!("unknown source {source:?}")))?,
        received_at,
    })
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Takes the transaction-scoped advisory lock named `scope` and `key`.
async fn advisory_lock(tx: &mut Tx, scope: &str, key: &str) -> TxResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))")
        .bind(scope)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The customer's lock: creates for one customer take turns.
async fn lock_customer(tx: &mut Tx, customer_id: &str) -> TxResult<()> {
    advisory_lock(tx, "operation-customer", customer_id).await
}

/// The tracking id's lock: its ingest and the commit that records it take turns.
async fn lock_tracking(tx: &mut Tx, tracking_id: &str) -> TxResult<()> {
    advisory_lock(tx, "operation-tracking", tracking_id).await
}

/// The one operation record a query with one text parameter returns, if any.
async fn operation_where(tx: &mut Tx, sql: &str, key: &str) -> TxResult<Option<Operation>> {
    let record: Option<Value> = sqlx::query_scalar(sql)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(record.map(decode_operation).transpose()?)
}

/// Writes the operation's row (insert or overwrite): its record and the typed columns
/// read from it. A request or tracking id another operation holds is `InvalidState`.
async fn put_operation(tx: &mut Tx, operation: &Operation) -> TxResult<()> {
    // jsonb cannot hold some of what provider messages may carry (see `jsonb_safe`).
    let record = serde_json::to_value(operation)
        .map_err(|e| corrupt(format!("cannot encode operation: {e}")))?;
    let record = super::rows::jsonb_safe(&record);
    sqlx::query(
        "INSERT INTO operations (id, customer_id, market, segment, state, path, request_id, \
             tracking_id, iban, bic, bank_status, created_at, updated_at, finished_at, version, \
             record) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, \
             market = EXCLUDED.market, segment = EXCLUDED.segment, state = EXCLUDED.state, \
             path = EXCLUDED.path, request_id = EXCLUDED.request_id, \
             tracking_id = EXCLUDED.tracking_id, iban = EXCLUDED.iban, bic = EXCLUDED.bic, \
             bank_status = EXCLUDED.bank_status, created_at = EXCLUDED.created_at, \
             updated_at = EXCLUDED.updated_at, finished_at = EXCLUDED.finished_at, \
             version = EXCLUDED.version, record = EXCLUDED.record",
    )
    .bind(operation.id.as_str())
    .bind(&operation.details.customer_id)
    .bind(&operation.details.market)
    .bind(operation.details.segment.as_str())
    .bind(operation.state.as_str())
    .bind(path_text(operation.path))
    .bind(&operation.request_id)
    .bind(operation.tracking_id.as_deref())
    .bind(operation.iban.as_deref())
    .bind(operation.bic.as_deref())
    .bind(operation.bank_status.map(|status| status.as_str()))
    .bind(operation.created_at)
    .bind(operation.updated_at)
    .bind(operation.finished_at)
    .bind(as_i64(operation.version))
    .bind(record)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if super::accounts::unique_violation(&e) {
            TxError::Fail(StoreError::InvalidState(format!(
                "operation {}: its request or tracking id already belongs to another operation",
                operation.id
            )))
        } else {
            TxError::from(e)
        }
    })?;
    Ok(())
}

/// Puts or removes the operation's three due entries where its record says.
async fn put_due(tx: &mut Tx, operation: &Operation) -> TxResult<()> {
    let subject = operation.id.as_str();
    for (kind, at) in [
        (DueKind::OperationWake, operation.wake_at()),
        (DueKind::OperationDeadline, operation.deadline_at()),
        (DueKind::OperationFailed, operation.failed_at()),
    ] {
        match at {
            Some(at) => super::due::put_entry(tx, kind, subject, at, &[]).await?,
            None => {
                super::due::remove_subject(tx, kind, subject).await?;
            }
        }
    }
    Ok(())
}

/// Adds `delta` to the count of `state`.
async fn bump(tx: &mut Tx, state: OperationState, delta: i64) -> TxResult<()> {
    sqlx::query(
        "INSERT INTO operation_counts (state, n) VALUES ($1, $2) \
         ON CONFLICT (state) DO UPDATE SET n = operation_counts.n + EXCLUDED.n",
    )
    .bind(state.as_str())
    .bind(delta)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Opens and resolves the incidents `commit` carries (with their alerts), about its
/// operation and at its `updated_at`, on the commit's transaction.
async fn write_operation_incidents(tx: &mut Tx, commit: &OperationCommit) -> TxResult<()> {
    let op = &commit.operation;
    let subject = IncidentSubject::Operation(op.id.clone());
    for change in &commit.incidents {
        match change {
            OperationIncident::Open {
                kind,
                details,
                notify,
            } => {
                let open = OpenIncident {
                    subject: subject.clone(),
                    kind: *kind,
                    details: details.clone(),
                    at: op.updated_at,
                    notify: *notify,
                };
                let safe = OpenIncident {
                    details: super::rows::jsonb_safe(details),
                    ..open.clone()
                };
                super::incidents::open_in(tx, &open, &safe).await?;
            }
            OperationIncident::Resolve { kind, notify } => {
                super::incidents::resolve_in(tx, &subject, *kind, op.updated_at, *notify).await?;
            }
        }
    }
    Ok(())
}

impl OperationStore for PgStore {
    fn create_operation(
        &self,
        operation: &Operation,
        force: bool,
    ) -> Result<CreateOutcome, StoreError> {
        let mut record = operation.clone();
        record.version = 1;
        let record = &record;
        let outcome = self.write(async {
            transaction!(self, |tx| {
                async {
                    lock_customer(tx, &record.details.customer_id).await?;
                    // The same anchor again (a create retried after an unanswered call):
                    // it exists, nothing to write.
                    let sql = "SELECT record FROM operations WHERE id = $1";
                    if let Some(existing) = operation_where(tx, sql, record.id.as_str()).await? {
                        return Ok(CreateOutcome::Existing(existing));
                    }
                    if !force {
                        let sql = "SELECT record FROM operations WHERE customer_id = $1 \
                                   AND state NOT IN ('completed', 'rejected', 'cancelled') \
                                   ORDER BY id DESC LIMIT 1";
                        if let Some(existing) =
                            operation_where(tx, sql, &record.details.customer_id).await?
                        {
                            return Ok(CreateOutcome::Existing(existing));
                        }
                    }
                    put_operation(tx, record).await?;
                    put_due(tx, record).await?;
                    bump(tx, record.state, 1).await?;
                    Ok(CreateOutcome::Created(record.clone()))
                }
                .await
            })
        })?;
        if let CreateOutcome::Created(created) = &outcome {
            tracing::debug!(operation_id = %created.id, "operation created");
        }
        Ok(outcome)
    }

    fn get_operation(&self, id: &OperationId) -> Result<Option<Operation>, StoreError> {
        self.block_on(async {
            let record: Option<Value> =
                sqlx::query_scalar("SELECT record FROM operations WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error)?;
            record.map(decode_operation).transpose()
        })
    }

    fn find_operation(&self, key: &str) -> Result<Option<OperationId>, StoreError> {
        self.block_on(async {
            for sql in [
                "SELECT id FROM operations WHERE id = $1",
                "SELECT id FROM operations WHERE request_id = $1",
                "SELECT id FROM operations WHERE tracking_id = $1",
            ] {
                let id: Option<String> = sqlx::query_scalar(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error)?;
                if let Some(id) = id {
                    return Ok(Some(OperationId(id)));
                }
            }
            Ok(None)
        })
    }

    fn list_operations(&self, query: &OperationQuery) -> Result<Vec<Operation>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.block_on(async {
            let records: Vec<Value> = sqlx::query_scalar(
                "SELECT record FROM operations \
                 WHERE ($1::text IS NULL OR state = $1) \
                   AND ($2::text IS NULL OR market = $2) \
                   AND ($3::text IS NULL OR customer_id = $3) \
                   AND ($4::timestamptz IS NULL OR created_at <= $4) \
                   AND ($5::timestamptz IS NULL OR created_at >= $5) \
                   AND ($6::text IS NULL OR id < $6) \
                 ORDER BY id DESC LIMIT $7",
            )
            .bind(query.state.map(OperationState::as_str))
            .bind(query.market.as_deref())
            .bind(query.customer_id.as_deref())
            .bind(query.created_before)
            .bind(query.created_after)
            .bind(query.after.as_ref().map(OperationId::as_str))
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            records.into_iter().map(decode_operation).collect()
        })
    }

    fn count_operations(&self) -> Result<Vec<(OperationState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self.block_on(async {
            sqlx::query_as("SELECT state, n FROM operation_counts WHERE n > 0")
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)
        })?;
        let mut counts = rows
            .into_iter()
            .map(|(state, n)| {
                let state = OperationState::parse(&state)
                    .ok_or_else(|| corrupt(format!("count of unknown state {state:?}")))?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        counts.sort_by_key(|(state, _)| *state);
        Ok(counts)
    }

    fn ingest_operation_event(
        &self,
        event: &IncomingOperationEvent,
        dedup_ttl: Duration,
    ) -> Result<OperationIngest, StoreError> {
        let expires_at = event
            .received_at
            .checked_add_signed(
                chrono::Duration::from_std(dedup_ttl).unwrap_or(chrono::Duration::MAX),
            )
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let source = source_text(event.source)?;
        let body = super::rows::jsonb_safe(
            &serde_json::to_value(&event.report)
                .map_err(|e| corrupt(format!("cannot encode reported status: {e}")))?,
        );
        let (source, body) = (&source, &body);
        self.write(async {
            transaction!(self, |tx| {
                async {
                    lock_tracking(tx, &event.tracking_id).await?;
                    let mut operation_id = None;
                    for (sql, key) in [
                        (
                            "SELECT id FROM operations WHERE tracking_id = $1",
                            &event.tracking_id,
                        ),
                        (
                            "SELECT id FROM operations WHERE request_id = $1",
                            &event.request_id,
                        ),
                    ] {
                        let id: Option<String> = sqlx::query_scalar(sql)
                            .bind(key)
                            .fetch_optional(&mut **tx)
                            .await?;
                        if let Some(id) = id {
                            operation_id = Some(OperationId(id));
                            break;
                        }
                    }
                    // Claims the key unless a live record holds it (`seq` NULL: by TTL
                    // alone); a racing copy waits on the row and then finds it live.
                    let fresh: Option<i32> = sqlx::query_scalar(
                        "INSERT INTO dedup (key, expires_at, seq) VALUES ($1, $2, NULL) \
                         ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at, \
                             seq = NULL \
                         WHERE dedup.expires_at <= $3 \
                         RETURNING 1",
                    )
                    .bind(&event.dedup_key[..])
                    .bind(expires_at)
                    .bind(event.received_at)
                    .fetch_optional(&mut **tx)
                    .await?;
                    if fresh.is_none() {
                        return Ok(OperationIngest::Duplicate { operation_id });
                    }
                    // The webhook inbox's sequence: one order for every event received.
                    let seq: i64 = sqlx::query_scalar("SELECT nextval('inbox_seq')")
                        .fetch_one(&mut **tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO operation_events (seq, operation_id, event_id, tracking_id, \
                             request_id, source, body, received_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(seq)
                    .bind(operation_id.as_ref().map(OperationId::as_str))
                    .bind(&event.event_id)
                    .bind(&event.tracking_id)
                    .bind(&event.request_id)
                    .bind(source)
                    .bind(body)
                    .bind(event.received_at)
                    .execute(&mut **tx)
                    .await?;
                    let seq = u64::try_from(seq)
                        .map_err(|_| corrupt(format!("negative sequence number {seq}")))?;
                    Ok(OperationIngest::Accepted { seq, operation_id })
                }
                .await
            })
        })
    }

    fn pending_operation_events(
        &self,
        id: &OperationId,
    ) -> Result<Vec<OperationEvent>, StoreError> {
        let rows: Vec<EventRow> = self.block_on(async {
            sqlx::query_as(&format!(
                "SELECT {EVENT_COLUMNS} FROM operation_events WHERE operation_id = $1 ORDER BY seq"
            ))
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        rows.into_iter().map(event_of).collect()
    }

    fn operations_with_pending_events(&self) -> Result<Vec<OperationId>, StoreError> {
        let ids: Vec<String> = self.block_on(async {
            sqlx::query_scalar(
                "SELECT DISTINCT operation_id FROM operation_events \
                 WHERE operation_id IS NOT NULL ORDER BY operation_id",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        Ok(ids.into_iter().map(OperationId).collect())
    }

    fn unrouted_operation_events(&self, limit: usize) -> Result<Vec<OperationEvent>, StoreError> {
        let rows: Vec<EventRow> = self.block_on(async {
            sqlx::query_as(&format!(
                "SELECT {EVENT_COLUMNS} FROM operation_events WHERE operation_id IS NULL \
                 ORDER BY seq LIMIT $1"
            ))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        rows.into_iter().map(event_of).collect()
    }

    fn commit_operation(&self, commit: &OperationCommit) -> Result<OperationReceipt, StoreError> {
        let read_version = commit.operation.version;
        let mut record = commit.operation.clone();
        record.version = read_version.saturating_add(1);
        let record = &record;
        let id = &record.id;
        let consumed: Vec<i64> = commit.consumed.iter().map(|seq| as_i64(*seq)).collect();
        let consumed = &consumed;
        let adopted = self.write(async {
            transaction!(self, |tx| {
                async {
                    // Before the row lock, in the order an ingest takes them (see the
                    // module docs).
                    if let Some(tracking_id) = &record.tracking_id {
                        lock_tracking(tx, tracking_id).await?;
                    }
                    let stored: Option<(i64, Value)> = sqlx::query_as(
                        "SELECT version, record FROM operations WHERE id = $1 FOR UPDATE",
                    )
                    .bind(id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
                    let Some((stored_version, stored)) = stored else {
                        return Err(TxError::Fail(StoreError::OperationNotFound(id.clone())));
                    };
                    let stored_version = u64::try_from(stored_version).unwrap_or(0);
                    if stored_version != read_version {
                        return Err(TxError::Fail(StoreError::VersionConflict {
                            record: "operation",
                            id: id.to_string(),
                            read: read_version,
                            stored: stored_version,
                        }));
                    }
                    let stored = decode_operation(stored)?;
                    put_operation(tx, record).await?;
                    let mut adopted = 0;
                    if let Some(tracking_id) = &record.tracking_id {
                        if stored.tracking_id.as_ref() != Some(tracking_id) {
                            adopted = sqlx::query(
                                "UPDATE operation_events SET operation_id = $1 \
                                 WHERE operation_id IS NULL AND tracking_id = $2",
                            )
                            .bind(id.as_str())
                            .bind(tracking_id)
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                        }
                    }
                    put_due(tx, record).await?;
                    if stored.state != record.state {
                        let mut moves = [(stored.state, -1), (record.state, 1)];
                        moves.sort_by_key(|(state, _)| state.as_str());
                        for (state, delta) in moves {
                            bump(tx, state, delta).await?;
                        }
                    }
                    if !consumed.is_empty() {
                        sqlx::query(
                            "DELETE FROM operation_events \
                             WHERE operation_id = $1 AND seq = ANY($2)",
                        )
                        .bind(id.as_str())
                        .bind(consumed)
                        .execute(&mut **tx)
                        .await?;
                    }
                    write_operation_incidents(tx, commit).await?;
                    Ok(adopted)
                }
                .await
            })
        })?;
        tracing::debug!(
            operation_id = %id,
            state = %record.state,
            version = record.version,
            adopted,
            "operation committed"
        );
        Ok(OperationReceipt {
            operation: record.clone(),
            adopted,
        })
    }
}
