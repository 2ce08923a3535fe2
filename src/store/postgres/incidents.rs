//! Incidents on PostgreSQL: opening, refreshing, resolving and listing them. An incident
//! is about an account (`account_id`) or an operation (`operation_id`), a CHECK keeps
//! exactly one of them set, and partial unique indexes keep at most one open incident
//! per (account, kind) and per (operation, kind); opening and
//! resolving enqueue their alert in the same transaction (see `outbox.rs`), so neither
//! can exist without the other.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{db_error, transaction, PgStore, Tx, TxResult};
use crate::domain::incidents::{
    AlertEventType, Incident, IncidentKind, IncidentQuery, IncidentState, IncidentSubject,
    OpenIncident, Severity,
};
use crate::domain::operations::OperationId;
use crate::domain::AccountId;
use crate::store::{IncidentStore, StoreError};

const COLUMNS: &str = "id, account_id, operation_id, kind, severity, opened_at, updated_at, \
     resolved_at, occurrences, details";

/// An incident row as read.
type IncidentRow = (
    i64,
    Option<String>,
    Option<String>,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    i32,
    Value,
);

fn incident_of(row: IncidentRow) -> Result<Incident, StoreError> {
    let (
        id,
        account_id,
        operation_id,
        kind,
        severity,
        opened_at,
        updated_at,
        resolved_at,
        occurrences,
        details,
    ) = row;
    let bad = |what: String| super::corrupt("incidents", what);
    let incident = Incident {
        id: u64::try_from(id).map_err(|_| bad(format!("negative id {id}")))?,
        kind: IncidentKind::parse(&kind).ok_or_else(|| bad(format!("unknown kind {kind:?}")))?,
        severity: serde_json::from_value::<Severity>(Value::String(severity.clone()))
            .map_err(|_| bad(format!("unknown severity {severity:?}")))?,
        account_id: account_id.map(AccountId),
        operation_id: operation_id.map(OperationId),
        opened_at,
        updated_at,
        resolved_at,
        occurrences: u32::try_from(occurrences).unwrap_or(0),
        details,
    };
    // The table's CHECK makes this impossible; a row that breaks it is not an incident.
    if incident.subject().is_none() {
        return Err(bad(format!(
            "incident {id} has not exactly one of account_id and operation_id"
        )));
    }
    Ok(incident)
}

/// The column naming `subject` (`account_id` or `operation_id`): the WHERE clause of a
/// lookup by subject. Never user input.
fn subject_column(subject: &IncidentSubject) -> &'static str {
    match subject {
        IncidentSubject::Account(_) => "account_id",
        IncidentSubject::Operation(_) => "operation_id",
    }
}

fn severity_text(severity: Severity) -> &'static str {
    match severity {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// The open incident of (subject, kind), its row locked.
async fn open_for_update(
    tx: &mut Tx,
    subject: &IncidentSubject,
    kind: IncidentKind,
) -> TxResult<Option<Incident>> {
    let column = subject_column(subject);
    let row: Option<IncidentRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM incidents \
         WHERE {column} = $1 AND kind = $2 AND resolved_at IS NULL FOR UPDATE"
    ))
    .bind(subject.key())
    .bind(kind.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(incident_of).transpose()?)
}

/// Opens the incident of (subject, kind), or refreshes the open one, on `tx` (an
/// operation's commit calls it inside its own transaction). `safe` is `open` with its
/// details made storable (see `jsonb_safe`).
pub(super) async fn open_in(
    tx: &mut Tx,
    open: &OpenIncident,
    safe: &OpenIncident,
) -> TxResult<Incident> {
    let details = &safe.details;
    if let Some(mut incident) = open_for_update(tx, &open.subject, open.kind).await? {
        incident.refresh(safe);
        sqlx::query(
            "UPDATE incidents SET details = $2, updated_at = $3, occurrences = $4 WHERE id = $1",
        )
        .bind(i64::try_from(incident.id).unwrap_or(i64::MAX))
        .bind(details)
        .bind(open.at)
        .bind(i32::try_from(incident.occurrences).unwrap_or(i32::MAX))
        .execute(&mut **tx)
        .await?;
        return Ok(incident);
    }
    let id: i64 = sqlx::query_scalar("SELECT nextval('incident_id_seq')")
        .fetch_one(&mut **tx)
        .await?;
    let incident = Incident::opened(u64::try_from(id).unwrap_or(0), safe);
    sqlx::query(&format!(
        "INSERT INTO incidents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6, NULL, 1, $7)"
    ))
    .bind(id)
    .bind(open.subject.account_id().map(AccountId::as_str))
    .bind(open.subject.operation_id().map(OperationId::as_str))
    .bind(open.kind.as_str())
    .bind(severity_text(incident.severity))
    .bind(open.at)
    .bind(details)
    .execute(&mut **tx)
    .await
    // Another process opened it since the check: run again to refresh it.
    .map_err(|e| match super::accounts::unique_violation(&e) {
        true => super::TxError::Retry(e),
        false => super::TxError::from(e),
    })?;
    if open.notify {
        super::outbox::enqueue_alert(tx, AlertEventType::Opened, &incident, open.at).await?;
    }
    Ok(incident)
}

/// Resolves the open incident of (subject, kind), if any, on `tx`.
pub(super) async fn resolve_in(
    tx: &mut Tx,
    subject: &IncidentSubject,
    kind: IncidentKind,
    at: DateTime<Utc>,
    notify: bool,
) -> TxResult<Option<Incident>> {
    let Some(mut incident) = open_for_update(tx, subject, kind).await? else {
        return Ok(None);
    };
    incident.resolved_at = Some(at);
    sqlx::query("UPDATE incidents SET resolved_at = $2 WHERE id = $1")
        .bind(i64::try_from(incident.id).unwrap_or(i64::MAX))
        .bind(at)
        .execute(&mut **tx)
        .await?;
    if notify {
        super::outbox::enqueue_alert(tx, AlertEventType::Resolved, &incident, at).await?;
    }
    Ok(Some(incident))
}

impl IncidentStore for PgStore {
    fn open_incident(&self, open: &OpenIncident) -> Result<Incident, StoreError> {
        // jsonb cannot hold some of what provider messages may carry (see `jsonb_safe`).
        let safe = OpenIncident {
            details: super::rows::jsonb_safe(&open.details),
            ..open.clone()
        };
        let safe = &safe;
        self.write(async { transaction!(self, |tx| open_in(tx, open, safe).await) })
    }

    fn resolve_incident(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
        at: DateTime<Utc>,
        notify: bool,
    ) -> Result<Option<Incident>, StoreError> {
        // Most calls find nothing open (every committed sync asks): one cheap read then.
        if self.open_incident_of(subject, kind)?.is_none() {
            return Ok(None);
        }
        self.write(async {
            transaction!(self, |tx| resolve_in(tx, subject, kind, at, notify).await)
        })
    }

    fn open_incident_of(
        &self,
        subject: &IncidentSubject,
        kind: IncidentKind,
    ) -> Result<Option<Incident>, StoreError> {
        let column = subject_column(subject);
        let row: Option<IncidentRow> = self.block_on(async {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM incidents \
                 WHERE {column} = $1 AND kind = $2 AND resolved_at IS NULL"
            ))
            .bind(subject.key())
            .bind(kind.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
        })?;
        row.map(incident_of).transpose()
    }

    fn get_incident(&self, incident_id: u64) -> Result<Option<Incident>, StoreError> {
        let Ok(id) = i64::try_from(incident_id) else {
            return Ok(None);
        };
        let row: Option<IncidentRow> = self.block_on(async {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM incidents WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)
        })?;
        row.map(incident_of).transpose()
    }

    fn list_incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let state = match query.state {
            IncidentState::Open => "open",
            IncidentState::Resolved => "resolved",
            IncidentState::All => "all",
        };
        let rows: Vec<IncidentRow> = self.block_on(async {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM incidents \
                 WHERE ($1 = 'all' OR ($1 = 'open') = (resolved_at IS NULL)) \
                   AND ($2::text IS NULL OR kind = $2) \
                   AND ($3::text IS NULL OR account_id = $3) \
                   AND ($4::text IS NULL OR operation_id = $4) \
                   AND ($5::timestamptz IS NULL OR opened_at >= $5) \
                   AND ($6::bigint IS NULL OR id < $6) \
                 ORDER BY id DESC LIMIT $7"
            ))
            .bind(state)
            .bind(query.kind.map(IncidentKind::as_str))
            .bind(query.account_id.as_ref().map(AccountId::as_str))
            .bind(query.operation_id.as_ref().map(OperationId::as_str))
            .bind(query.since)
            .bind(
                query
                    .after
                    .map(|after| i64::try_from(after).unwrap_or(i64::MAX)),
            )
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)
        })?;
        rows.into_iter().map(incident_of).collect()
    }
}
