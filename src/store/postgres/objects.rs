//! Stripe objects on PostgreSQL (`stripe_objects`, `stripe_state`; see the migration
//! `20261203000004_stripe_objects.sql`).
//!
//! A commit locks the account's row (so one account's commits run one at a time, as
//! the sled store's transactions do), reads the stored stamps of every object it writes
//! in one statement, applies the out-of-order guard in order (a later write to the same
//! object is checked against the earlier one), and writes what the guard let through in
//! one bulk statement, with the state, the consumed inbox entries and, when the commit
//! ends a sync, the account's outcome and its due entries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::pushes::{insert_audit, put_decided, AuditRow};
use super::{corrupt, db_error, transaction, PgStore, Tx, TxError, TxResult};
use crate::domain::stripe::{Guard, ObjectQuery, ObjectType, Stamp, StoredObject, StripeState};
use crate::domain::AccountId;
use crate::store::{ObjectCommit, ObjectPage, ObjectReceipt, ObjectStore, StoreError};

const TABLE: &str = "stripe_objects";

type ObjectRow = (
    String,
    String,
    Option<Value>,
    i64,
    Option<String>,
    i64,
    DateTime<Utc>,
);

fn object_of(row: ObjectRow) -> Result<StoredObject, StoreError> {
    let (object_type, id, body, at, event_id, version, updated_at) = row;
    let object_type = ObjectType::parse(&object_type)
        .ok_or_else(|| corrupt(TABLE, format!("unknown object type {object_type:?}")))?;
    Ok(StoredObject {
        object_type,
        id,
        body,
        stamp: Stamp { at, event_id },
        updated_at,
        version: u64::try_from(version).unwrap_or(0),
    })
}

/// The stored stamps and versions of `ids` of one type, rows locked.
async fn stamps_for_update(
    tx: &mut Tx,
    account: &AccountId,
    object_type: ObjectType,
    ids: &[&str],
) -> TxResult<HashMap<String, (Stamp, u64)>> {
    // Joined on the unnested ids rather than `object_id = ANY(…)`: with the table's
    // statistics still saying "empty" (a first backfill outruns autovacuum), that form
    // scanned the account's whole type for every page and filtered the ids. The join
    // halved a 100,000-object PostgreSQL backfill (80 s → 40 s, ten types 13 s → 7.6 s;
    // BENCHMARKS.md); what still grows with the type's size is not found yet.
    let rows: Vec<(String, i64, Option<String>, i64)> = sqlx::query_as(
        "SELECT o.object_id, o.stamp_at, o.stamp_event, o.version \
         FROM unnest($3::text[]) AS k(id) \
         JOIN stripe_objects o ON o.account_id = $1 AND o.object_type = $2 \
              AND o.object_id = k.id COLLATE \"C\" \
         FOR UPDATE OF o",
    )
    .bind(account.as_str())
    .bind(object_type.as_str())
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, at, event_id, version)| {
            (
                id,
                (Stamp { at, event_id }, u64::try_from(version).unwrap_or(0)),
            )
        })
        .collect())
}

/// The writes of a commit that the guard lets through, one per object (the last),
/// with the version each gets; how many were skipped; and the audit entry of each
/// applied write, in order.
async fn guarded<'c>(
    tx: &mut Tx,
    commit: &'c ObjectCommit,
) -> TxResult<(Vec<StoredObject>, ObjectReceipt, Vec<AuditRow<'c>>)> {
    let mut by_type: HashMap<ObjectType, Vec<&str>> = HashMap::new();
    for write in &commit.writes {
        by_type
            .entry(write.object_type)
            .or_default()
            .push(&write.id);
    }
    let mut current: HashMap<(ObjectType, String), (Stamp, u64)> = HashMap::new();
    for (object_type, ids) in by_type {
        for (id, found) in stamps_for_update(tx, &commit.account_id, object_type, &ids).await? {
            current.insert((object_type, id), found);
        }
    }
    let now = Utc::now();
    let mut receipt = ObjectReceipt::default();
    let mut out: HashMap<(ObjectType, String), StoredObject> = HashMap::new();
    let mut audit = Vec::new();
    for write in &commit.writes {
        let key = (write.object_type, write.id.clone());
        let stored = current.get(&key);
        if !Guard::check(&write.stamp, stored.map(|(stamp, _)| stamp)).applies(write.on_tie) {
            receipt.skipped += 1;
            continue;
        }
        let version = stored.map_or(0, |(_, version)| *version) + 1;
        current.insert(key.clone(), (write.stamp.clone(), version));
        out.insert(
            key,
            StoredObject {
                object_type: write.object_type,
                id: write.id.clone(),
                body: write.body.clone(),
                stamp: write.stamp.clone(),
                updated_at: now,
                version,
            },
        );
        receipt.applied += 1;
        audit.push(AuditRow {
            object_type: write.object_type,
            object_id: &write.id,
            note: &write.note,
            version: Some(version),
        });
    }
    Ok((out.into_values().collect(), receipt, audit))
}

async fn upsert_objects(
    tx: &mut Tx,
    account: &AccountId,
    objects: &[StoredObject],
) -> TxResult<()> {
    if objects.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = objects.iter().map(|o| o.object_type.as_str()).collect();
    let ids: Vec<&str> = objects.iter().map(|o| o.id.as_str()).collect();
    let bodies: Vec<Option<Value>> = objects.iter().map(|o| o.body.clone()).collect();
    let ats: Vec<i64> = objects.iter().map(|o| o.stamp.at).collect();
    let events: Vec<Option<&str>> = objects
        .iter()
        .map(|o| o.stamp.event_id.as_deref())
        .collect();
    let versions: Vec<i64> = objects
        .iter()
        .map(|o| i64::try_from(o.version).unwrap_or(i64::MAX))
        .collect();
    let updated: Vec<DateTime<Utc>> = objects.iter().map(|o| o.updated_at).collect();
    sqlx::query(
        "INSERT INTO stripe_objects (account_id, object_type, object_id, body, stamp_at, \
             stamp_event, version, updated_at) \
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::jsonb[], $5::bigint[], \
             $6::text[], $7::bigint[], $8::timestamptz[]) \
         ON CONFLICT (account_id, object_type, object_id) DO UPDATE SET \
             body = EXCLUDED.body, stamp_at = EXCLUDED.stamp_at, \
             stamp_event = EXCLUDED.stamp_event, version = EXCLUDED.version, \
             updated_at = EXCLUDED.updated_at",
    )
    .bind(account.as_str())
    .bind(&types)
    .bind(&ids)
    .bind(&bodies)
    .bind(&ats)
    .bind(&events)
    .bind(&versions)
    .bind(&updated)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl PgStore {
    /// One stored object, read inside a transaction.
    pub(super) async fn object_in(
        &self,
        tx: &mut Tx,
        account: &AccountId,
        object_type: ObjectType,
        object_id: &str,
    ) -> TxResult<Option<StoredObject>> {
        let row: Option<ObjectRow> = sqlx::query_as(
            "SELECT object_type, object_id, body, stamp_at, stamp_event, version, updated_at \
             FROM stripe_objects WHERE account_id = $1 AND object_type = $2 AND object_id = $3",
        )
        .bind(account.as_str())
        .bind(object_type.as_str())
        .bind(object_id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(object_of).transpose()?)
    }
}

impl ObjectStore for PgStore {
    fn stripe_state(&self, id: &AccountId) -> Result<Option<StripeState>, StoreError> {
        self.block_on(async {
            let state: Option<Value> =
                sqlx::query_scalar("SELECT state FROM stripe_state WHERE account_id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error)?;
            state
                .map(|json| {
                    serde_json::from_value(json)
                        .map_err(|e| corrupt("stripe_state", format!("bad state: {e}")))
                })
                .transpose()
        })
    }

    fn object_stamps(
        &self,
        id: &AccountId,
        objects: &[(ObjectType, String)],
    ) -> Result<Vec<Option<Stamp>>, StoreError> {
        self.block_on(async {
            let types: Vec<&str> = objects.iter().map(|(t, _)| t.as_str()).collect();
            let ids: Vec<&str> = objects.iter().map(|(_, id)| id.as_str()).collect();
            let rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
                "SELECT o.object_type, o.object_id, o.stamp_at, o.stamp_event \
                 FROM stripe_objects o JOIN UNNEST($2::text[], $3::text[]) AS k(t, i) \
                   ON o.object_type = k.t AND o.object_id = k.i \
                 WHERE o.account_id = $1",
            )
            .bind(id.as_str())
            .bind(&types)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let found: HashMap<(String, String), Stamp> = rows
                .into_iter()
                .map(|(t, i, at, event_id)| ((t, i), Stamp { at, event_id }))
                .collect();
            Ok(objects
                .iter()
                .map(|(t, i)| found.get(&(t.as_str().to_owned(), i.clone())).cloned())
                .collect())
        })
    }

    fn get_object(
        &self,
        id: &AccountId,
        object_type: ObjectType,
        object_id: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        self.block_on(async {
            let row: Option<ObjectRow> = sqlx::query_as(
                "SELECT object_type, object_id, body, stamp_at, stamp_event, version, updated_at \
                 FROM stripe_objects WHERE account_id = $1 AND object_type = $2 AND object_id = $3",
            )
            .bind(id.as_str())
            .bind(object_type.as_str())
            .bind(object_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
            row.map(object_of).transpose()
        })
    }

    fn list_objects(&self, query: &ObjectQuery) -> Result<ObjectPage, StoreError> {
        let limit = query.limit.max(1);
        self.block_on(async {
            let rows: Vec<ObjectRow> = sqlx::query_as(
                "SELECT object_type, object_id, body, stamp_at, stamp_event, version, updated_at \
                 FROM stripe_objects WHERE account_id = $1 AND object_type = $2 \
                   AND body IS NOT NULL AND ($3::text IS NULL OR object_id > $3::text COLLATE \"C\") \
                 ORDER BY object_id LIMIT $4",
            )
            .bind(query.account_id.as_str())
            .bind(query.object_type.as_str())
            .bind(query.after.as_deref())
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let more = rows.len() > limit;
            let objects = rows
                .into_iter()
                .take(limit)
                .map(object_of)
                .collect::<Result<Vec<_>, _>>()?;
            let next = more
                .then(|| objects.last().map(|o: &StoredObject| o.id.clone()))
                .flatten();
            Ok(ObjectPage { objects, next })
        })
    }

    fn count_objects(&self, id: &AccountId, object_type: ObjectType) -> Result<u64, StoreError> {
        self.block_on(async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stripe_objects \
                 WHERE account_id = $1 AND object_type = $2 AND body IS NOT NULL",
            )
            .bind(id.as_str())
            .bind(object_type.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn commit_objects(&self, commit: &ObjectCommit) -> Result<ObjectReceipt, StoreError> {
        let id = &commit.account_id;
        let consumed: Vec<i64> = commit
            .consumed
            .iter()
            .filter_map(|seq| i64::try_from(*seq).ok())
            .collect();
        let consumed = &consumed;
        let state = serde_json::to_value(&commit.state)
            .map_err(|e| corrupt("stripe_state", format!("cannot encode state: {e}")))?;
        let state = &state;
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let Some(mut account) = self.account_for_update(tx, id).await? else {
                        return Err(TxError::Fail(StoreError::AccountNotFound(id.clone())));
                    };
                    let (objects, receipt, mut audit) = guarded(tx, commit).await?;
                    upsert_objects(tx, id, &objects).await?;
                    audit.extend(commit.audit.iter().map(|(object_type, object_id, note)| {
                        AuditRow {
                            object_type: *object_type,
                            object_id,
                            note,
                            version: None,
                        }
                    }));
                    insert_audit(tx, id, Utc::now(), &audit).await?;
                    put_decided(tx, &commit.pushes).await?;
                    sqlx::query(
                        "INSERT INTO stripe_state (account_id, state) VALUES ($1, $2) \
                         ON CONFLICT (account_id) DO UPDATE SET state = EXCLUDED.state",
                    )
                    .bind(id.as_str())
                    .bind(state)
                    .execute(&mut **tx)
                    .await?;
                    let consumed_rows = super::rows::consume_inbox(tx, id, consumed).await?;
                    if let Some(finish) = &commit.finish {
                        finish.record_on(&mut account);
                        self.put_account(tx, &account).await?;
                        super::rows::settle_due(tx, &account, finish.finished_at).await?;
                    }
                    Ok((receipt, consumed_rows))
                }
                .await
            })
        })
        .map(|(receipt, consumed_rows)| {
            self.depth
                .add(-i64::try_from(consumed_rows).unwrap_or(i64::MAX));
            receipt
        })
    }
}
