//! Runtime flags on PostgreSQL: `flags` holds each flag's current value, `flag_changes`
//! every change (newest first by `seq`). A set locks the flag's row (`FOR UPDATE`), so
//! concurrent sets of one flag take turns and each records the value the previous one
//! left; a first set of a flag that two writers race to insert runs again after the
//! loser's unique violation, and then finds the row to lock.

use chrono::{DateTime, Utc};

use super::{db_error, transaction, PgStore, Tx, TxResult};
use crate::domain::flags::{Flag, FlagChange, FlagKey, FlagName};
use crate::domain::operations::Segment;
use crate::store::{FlagStore, StoreError};

const FLAG_COLUMNS: &str = "name, market, segment, enabled, updated_at, updated_by, version";
const CHANGE_COLUMNS: &str =
    "name, market, segment, from_value, to_value, changed_by, reason, changed_at";

/// A `flags` row as read.
type FlagRow = (String, String, String, bool, DateTime<Utc>, String, i64);

/// A `flag_changes` row as read.
type ChangeRow = (
    String,
    String,
    String,
    Option<bool>,
    bool,
    String,
    Option<String>,
    DateTime<Utc>,
);

/// The key a row's (name, market, segment) names.
fn key_of(
    table: &'static str,
    name: &str,
    market: String,
    segment: &str,
) -> Result<FlagKey, StoreError> {
    Ok(FlagKey {
        name: FlagName::parse(name)
            .ok_or_else(|| super::corrupt(table, format!("unknown flag {name:?}")))?,
        market,
        segment: Segment::parse(segment)
            .ok_or_else(|| super::corrupt(table, format!("unknown segment {segment:?}")))?,
    })
}

fn flag_of(row: FlagRow) -> Result<Flag, StoreError> {
    let (name, market, segment, enabled, updated_at, updated_by, version) = row;
    Ok(Flag {
        key: key_of("flags", &name, market, &segment)?,
        enabled,
        updated_at,
        updated_by,
        version: u64::try_from(version)
            .map_err(|_| super::corrupt("flags", format!("negative version {version}")))?,
    })
}

fn change_of(row: ChangeRow) -> Result<FlagChange, StoreError> {
    let (name, market, segment, from, to, by, reason, at) = row;
    Ok(FlagChange {
        key: key_of("flag_changes", &name, market, &segment)?,
        from,
        to,
        by,
        reason,
        at,
    })
}

/// The flag's stored (value, version), its row locked until the transaction ends.
async fn stored_for_update(tx: &mut Tx, key: &FlagKey) -> TxResult<Option<(bool, i64)>> {
    Ok(sqlx::query_as(
        "SELECT enabled, version FROM flags \
         WHERE name = $1 AND market = $2 AND segment = $3 FOR UPDATE",
    )
    .bind(key.name.as_str())
    .bind(&key.market)
    .bind(key.segment.as_str())
    .fetch_optional(&mut **tx)
    .await?)
}

impl FlagStore for PgStore {
    fn get_flag(&self, key: &FlagKey) -> Result<Option<Flag>, StoreError> {
        let row: Option<FlagRow> = self.block_on(async {
            sqlx::query_as(&format!(
                "SELECT {FLAG_COLUMNS} FROM flags \
                 WHERE name = $1 AND market = $2 AND segment = $3"
            ))
            .bind(key.name.as_str())
            .bind(&key.market)
            .bind(key.segment.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
        })?;
        row.map(flag_of).transpose()
    }

    fn list_flags(&self) -> Result<Vec<Flag>, StoreError> {
        let rows: Vec<FlagRow> = self.block_on(async {
            sqlx::query_as(&format!("SELECT {FLAG_COLUMNS} FROM flags"))
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)
        })?;
        let mut flags = rows
            .into_iter()
            .map(flag_of)
            .collect::<Result<Vec<_>, _>>()?;
        // In key order whatever the database's collation.
        flags.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(flags)
    }

    fn set_flag(&self, change: &FlagChange) -> Result<(Flag, FlagChange), StoreError> {
        let key = &change.key;
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let stored = stored_for_update(tx, key).await?;
                    let version = stored.map_or(0, |(_, version)| version) + 1;
                    let write = if stored.is_some() {
                        "UPDATE flags SET enabled = $4, updated_at = $5, updated_by = $6, \
                         version = $7 WHERE name = $1 AND market = $2 AND segment = $3"
                            .to_owned()
                    } else {
                        format!(
                            "INSERT INTO flags ({FLAG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                        )
                    };
                    sqlx::query(&write)
                        .bind(key.name.as_str())
                        .bind(&key.market)
                        .bind(key.segment.as_str())
                        .bind(change.to)
                        .bind(change.at)
                        .bind(&change.by)
                        .bind(version)
                        .execute(&mut **tx)
                        .await
                        // Another writer set it first since the read: run again to lock it.
                        .map_err(|e| match super::accounts::unique_violation(&e) {
                            true => super::TxError::Retry(e),
                            false => super::TxError::from(e),
                        })?;
                    let recorded = FlagChange {
                        from: stored.map(|(enabled, _)| enabled),
                        ..change.clone()
                    };
                    sqlx::query(&format!(
                        "INSERT INTO flag_changes ({CHANGE_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    ))
                    .bind(key.name.as_str())
                    .bind(&key.market)
                    .bind(key.segment.as_str())
                    .bind(recorded.from)
                    .bind(recorded.to)
                    .bind(&recorded.by)
                    .bind(recorded.reason.as_deref())
                    .bind(recorded.at)
                    .execute(&mut **tx)
                    .await?;
                    let flag = Flag {
                        key: key.clone(),
                        enabled: change.to,
                        updated_at: change.at,
                        updated_by: change.by.clone(),
                        version: u64::try_from(version).unwrap_or(0),
                    };
                    Ok((flag, recorded))
                }
                .await
            })
        })
    }

    fn flag_history(
        &self,
        key: Option<&FlagKey>,
        limit: usize,
    ) -> Result<Vec<FlagChange>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<ChangeRow> = self.block_on(async {
            match key {
                Some(key) => {
                    sqlx::query_as(&format!(
                        "SELECT {CHANGE_COLUMNS} FROM flag_changes \
                     WHERE name = $1 AND market = $2 AND segment = $3 \
                     ORDER BY seq DESC LIMIT $4"
                    ))
                    .bind(key.name.as_str())
                    .bind(&key.market)
                    .bind(key.segment.as_str())
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                }
                None => {
                    sqlx::query_as(&format!(
                        "SELECT {CHANGE_COLUMNS} FROM flag_changes ORDER BY seq DESC LIMIT $1"
                    ))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                }
            }
            .map_err(db_error)
        })?;
        rows.into_iter().map(change_of).collect()
    }
}
