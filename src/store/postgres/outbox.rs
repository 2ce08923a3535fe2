//! The outbox on PostgreSQL: undelivered messages in `outbox`, each with its `outbox`
//! entry in the due index (subject: the message id), which is what the sender reads, so
//! messages waiting out a backoff never crowd out due ones. Messages are enqueued only
//! inside the transaction of the change they announce ([`enqueue_alert`]).

use chrono::{DateTime, Utc};

use super::{db_error, transaction, PgStore, Tx, TxResult};
use crate::domain::incidents::{AlertEventType, Incident};
use crate::store::{Destination, DueKind, JsonBody, OutboxMessage, OutboxStore, StoreError};

const COLUMNS: &str =
    "id, destination, event_type, payload, created_at, next_attempt_at, attempts, last_error";

/// An outbox row as read.
type OutboxRow = (
    i64,
    String,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    i32,
    Option<String>,
);

fn message_of(row: OutboxRow) -> Result<OutboxMessage, StoreError> {
    let (id, destination, event_type, payload, created_at, next_attempt_at, attempts, last_error) =
        row;
    let bad = |what: String| super::corrupt("outbox", what);
    Ok(OutboxMessage {
        id: u64::try_from(id).map_err(|_| bad(format!("negative id {id}")))?,
        destination: serde_json::from_str::<Destination>(&destination)
            .map_err(|e| bad(format!("unknown destination {destination:?}: {e}")))?,
        event_type,
        payload: serde_json::from_str::<JsonBody>(&payload)
            .map_err(|e| bad(format!("payload is not JSON: {e}")))?,
        created_at,
        next_attempt_at,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error,
    })
}

fn destination_text(destination: &Destination) -> Result<String, StoreError> {
    serde_json::to_string(destination)
        .map_err(|e| super::corrupt("outbox", format!("cannot encode destination: {e}")))
}

/// Inserts `message` (its id drawn by the caller) with its due-index entry.
pub(super) async fn insert_message(tx: &mut Tx, message: &OutboxMessage) -> TxResult<()> {
    write_message(
        tx,
        message,
        &format!("INSERT INTO outbox ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
    )
    .await
}

/// Writes `message` with `sql` (an insert, or an update of the row if it still exists,
/// binding the columns in [`COLUMNS`] order), and moves its due-index entry when a row
/// was written.
async fn write_message(tx: &mut Tx, message: &OutboxMessage, sql: &str) -> TxResult<()> {
    let written = sqlx::query(sql)
        .bind(i64::try_from(message.id).unwrap_or(i64::MAX))
        .bind(destination_text(&message.destination)?)
        .bind(&message.event_type)
        .bind(message.payload.as_str())
        .bind(message.created_at)
        .bind(message.next_attempt_at)
        .bind(i32::try_from(message.attempts).unwrap_or(i32::MAX))
        .bind(&message.last_error)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if written > 0 {
        super::due::put_entry(
            tx,
            DueKind::Outbox,
            &DueKind::outbox_subject(message.id),
            message.next_attempt_at,
            &[],
        )
        .await?;
    }
    Ok(())
}

/// A fresh outbox message id.
pub(super) async fn next_id(tx: &mut Tx) -> TxResult<u64> {
    let id: i64 = sqlx::query_scalar("SELECT nextval('outbox_id_seq')")
        .fetch_one(&mut **tx)
        .await?;
    Ok(u64::try_from(id).unwrap_or(0))
}

/// Enqueues the alert announcing `event_type` of `incident`, in the caller's
/// transaction (the body: [`OutboxMessage::alert`]).
pub(super) async fn enqueue_alert(
    tx: &mut Tx,
    event_type: AlertEventType,
    incident: &Incident,
    at: DateTime<Utc>,
) -> TxResult<()> {
    let id = next_id(tx).await?;
    let message = OutboxMessage::alert(id, event_type, incident, at)
        .map_err(|e| super::corrupt("outbox", format!("cannot encode alert body: {e}")))?;
    insert_message(tx, &message).await
}

impl OutboxStore for PgStore {
    fn pending_outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows: Vec<OutboxRow> = self.block_on(async {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM outbox ORDER BY id LIMIT $1"
            ))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        rows.into_iter().map(message_of).collect()
    }

    fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows: Vec<OutboxRow> = self.block_on(async {
            sqlx::query_as(
                "SELECT o.id, o.destination, o.event_type, o.payload, o.created_at, \
                     o.next_attempt_at, o.attempts, o.last_error \
                 FROM due d JOIN outbox o ON o.id = d.subject::bigint \
                 WHERE d.kind = 'outbox' AND d.due_at <= $1 \
                 ORDER BY d.due_at, d.subject LIMIT $2",
            )
            .bind(super::to_millis(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        rows.into_iter().map(message_of).collect()
    }

    fn next_outbox_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.block_on(async {
            sqlx::query_scalar(
                "SELECT o.next_attempt_at FROM due d JOIN outbox o ON o.id = d.subject::bigint \
                 WHERE d.kind = 'outbox' ORDER BY d.due_at, d.subject LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
        })
    }

    fn update_outbox(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                async {
                    // Only while it is still pending: a concurrent removal (delivered) wins.
                    write_message(
                        tx,
                        message,
                        "UPDATE outbox SET destination = $2, event_type = $3, payload = $4, \
                             created_at = $5, next_attempt_at = $6, attempts = $7, last_error = $8 \
                         WHERE id = $1",
                    )
                    .await?;
                    Ok(())
                }
                .await
            })
        })
    }

    fn remove_outbox(&self, message_id: u64) -> Result<(), StoreError> {
        let Ok(id) = i64::try_from(message_id) else {
            return Ok(());
        };
        self.write(async {
            transaction!(self, |tx| {
                async {
                    sqlx::query("DELETE FROM outbox WHERE id = $1")
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                    super::due::remove_subject(
                        tx,
                        DueKind::Outbox,
                        &DueKind::outbox_subject(message_id),
                    )
                    .await?;
                    Ok(())
                }
                .await
            })
        })
    }
}
