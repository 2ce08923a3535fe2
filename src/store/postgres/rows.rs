//! An account's transactions on PostgreSQL, and the one-transaction sync commit that
//! changes them with the cursor, the consumed inbox entries, the retry record and the
//! polling entry.
//!
//! Rows are written in bulk (`UNNEST` of arrays: one statement per batch of rows,
//! whatever its size), with the typed columns users query read from the provider's
//! object here. A first sync's staged rows are written before its commit, invisible
//! until the commit sets the account's first cursor; the account's row lock keeps
//! staging, clearing and a purge of the same account in order.

use std::collections::HashMap;

use chrono::NaiveDate;
use serde_json::Value;

use super::{db_error, to_millis, transaction, PgStore, Tx, TxError, TxResult};
use crate::domain::{AccountId, LinkStatus, Transaction};
use crate::store::{
    ApplyMode, RowStore, StoreError, SyncCommit, TransactionPage, TransactionQuery,
};

/// Deletes the inbox entries a commit consumed; how many there were.
pub(super) async fn consume_inbox(tx: &mut Tx, id: &AccountId, seqs: &[i64]) -> TxResult<u64> {
    if seqs.is_empty() {
        return Ok(0);
    }
    Ok(
        sqlx::query("DELETE FROM inbox WHERE account_id = $1 AND seq = ANY($2)")
            .bind(id.as_str())
            .bind(seqs)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    )
}

/// What a committed sync settles in the due index, in its transaction: any pending
/// retry of it is moot, and the next poll is a full interval from `finished_at`. Forward
/// only (the sweeper may have anchored it later); an unlinked account gets no entry.
pub(super) async fn settle_due(
    tx: &mut Tx,
    account: &crate::domain::Account,
    finished_at: chrono::DateTime<chrono::Utc>,
) -> TxResult<()> {
    super::due::remove_retry(tx, &account.id).await?;
    if account.status == LinkStatus::Linked {
        sqlx::query(
            "INSERT INTO due (kind, subject, due_at) VALUES ('poll', $1, $2) \
             ON CONFLICT (kind, subject) DO UPDATE SET due_at = EXCLUDED.due_at \
             WHERE due.due_at < EXCLUDED.due_at",
        )
        .bind(account.id.as_str())
        .bind(to_millis(finished_at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The typed columns of a transaction row, read from the provider's object (Plaid's
/// field names; a missing or mistyped field is NULL, never an error).
struct Columns {
    amount: Option<String>,
    currency: Option<String>,
    name: Option<String>,
    merchant: Option<String>,
    pending: Option<bool>,
    category: Option<String>,
}

fn text(body: &Value, field: &str) -> Option<String> {
    body.get(field).and_then(Value::as_str).map(str::to_owned)
}

fn columns(body: &Value) -> Columns {
    let category = body
        .get("personal_finance_category")
        .and_then(|c| c.get("primary"))
        .and_then(Value::as_str)
        .or_else(|| {
            body.get("category")
                .and_then(|c| c.get(0))
                .and_then(Value::as_str)
        })
        .map(str::to_owned);
    Columns {
        // A JSON number's own text: `numeric` keeps it exactly.
        amount: body
            .get("amount")
            .filter(|a| a.is_number())
            .map(Value::to_string),
        currency: text(body, "iso_currency_code")
            .or_else(|| text(body, "unofficial_currency_code")),
        name: text(body, "name"),
        merchant: text(body, "merchant_name"),
        pending: body.get("pending").and_then(Value::as_bool),
        category,
    }
}

/// Whether `value` holds a NUL character anywhere (in a string or a key).
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The JSON text of `value` as jsonb can hold it (see [`jsonb_safe`]); no copy of the
/// value unless it needs one.
fn jsonb_text(value: &Value) -> String {
    if has_nul(value) {
        jsonb_safe(value).to_string()
    } else {
        value.to_string()
    }
}

/// jsonb cannot hold `\u0000` in a string: such characters become U+FFFD in the stored
/// copy (the row still lands; a sync never fails on one odd character).
pub(super) fn jsonb_safe(value: &Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{fffd}")),
        Value::Array(items) => Value::Array(items.iter().map(jsonb_safe).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.replace('\0', "\u{fffd}"), jsonb_safe(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Upserts `rows` (a later row with the same id wins, as the provider's order says).
async fn upsert_rows(tx: &mut Tx, account: &AccountId, rows: &[Transaction]) -> TxResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // One statement cannot write a row twice: keep each id's last version.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        last.insert(row.id.as_str(), i);
    }
    let mut ids = Vec::with_capacity(last.len());
    let mut dates: Vec<NaiveDate> = Vec::with_capacity(last.len());
    let mut bodies = Vec::with_capacity(last.len());
    let mut amounts = Vec::with_capacity(last.len());
    let mut currencies = Vec::with_capacity(last.len());
    let mut names = Vec::with_capacity(last.len());
    let mut merchants = Vec::with_capacity(last.len());
    let mut pendings = Vec::with_capacity(last.len());
    let mut categories = Vec::with_capacity(last.len());
    for (i, row) in rows.iter().enumerate() {
        if last.get(row.id.as_str()) != Some(&i) {
            continue;
        }
        let typed = columns(&row.body);
        ids.push(row.id.replace('\0', "\u{fffd}"));
        dates.push(row.date);
        amounts.push(typed.amount);
        currencies.push(typed.currency);
        names.push(typed.name);
        merchants.push(typed.merchant);
        pendings.push(typed.pending);
        categories.push(typed.category);
        bodies.push(jsonb_text(&row.body));
    }
    sqlx::query(
        "INSERT INTO transactions (account_id, transaction_id, date, amount, currency, name, \
             merchant, pending, category, body) \
         SELECT $1, t.id, t.date, t.amount::numeric, t.currency, t.name, t.merchant, t.pending, \
             t.category, t.body::jsonb \
         FROM unnest($2::text[], $3::date[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::boolean[], $9::text[], $10::text[]) \
             AS t(id, date, amount, currency, name, merchant, pending, category, body) \
         ON CONFLICT (account_id, transaction_id) DO UPDATE SET date = EXCLUDED.date, \
             amount = EXCLUDED.amount, currency = EXCLUDED.currency, name = EXCLUDED.name, \
             merchant = EXCLUDED.merchant, pending = EXCLUDED.pending, \
             category = EXCLUDED.category, body = EXCLUDED.body",
    )
    .bind(account.as_str())
    .bind(&ids)
    .bind(&dates)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&names)
    .bind(&merchants)
    .bind(&pendings)
    .bind(&categories)
    .bind(&bodies)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn remove_rows(tx: &mut Tx, account: &AccountId, ids: &[String]) -> TxResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM transactions WHERE account_id = $1 AND transaction_id = ANY($2)")
        .bind(account.as_str())
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl PgStore {
    /// The account, locked, if it has never committed a sync and is linked (staging and
    /// clearing its rows is allowed); `InvalidState` or `AccountNotFound` otherwise.
    async fn never_synced(&self, tx: &mut Tx, id: &AccountId) -> TxResult<()> {
        match self.account_for_update(tx, id).await? {
            None => Err(TxError::Fail(StoreError::AccountNotFound(id.clone()))),
            Some(account) if account.cursor.is_some() => {
                Err(TxError::Fail(StoreError::InvalidState(format!(
                    "account {id} has committed a sync; its rows change only by commit"
                ))))
            }
            Some(account) if account.status != LinkStatus::Linked => Err(TxError::Fail(
                StoreError::InvalidState(format!("account {id} is unlinked")),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Whether the account's rows are part of its copy (its first sync committed).
    async fn rows_visible(&self, id: &AccountId) -> Result<bool, StoreError> {
        let visible: Option<bool> = sqlx::query_scalar(
            "SELECT (record->'cursor') IS NOT NULL AND record->'cursor' <> 'null'::jsonb \
             FROM accounts WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(visible.unwrap_or(false))
    }
}

/// A page token's position: (`YYYY-MM-DD`, id).
fn parse_token(token: &str) -> Option<(NaiveDate, &str)> {
    let (date, id) = token.split_once('|')?;
    Some((NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?, id))
}

impl RowStore for PgStore {
    fn commit_sync(&self, commit: SyncCommit) -> Result<(), StoreError> {
        if commit.mode == ApplyMode::Staged
            && !(commit.upserts.is_empty() && commit.removals.is_empty())
        {
            return Err(StoreError::InvalidState(
                "a staged commit carries no rows: they were staged already".to_string(),
            ));
        }
        let commit = &commit;
        let id = &commit.account_id;
        let consumed: Vec<i64> = commit
            .consumed
            .iter()
            .filter_map(|seq| i64::try_from(*seq).ok())
            .collect();
        let consumed = &consumed;
        self.write(async {
            transaction!(self, |tx| {
                async {
                    let Some(mut account) = self.account_for_update(tx, id).await? else {
                        return Err(TxError::Fail(StoreError::AccountNotFound(id.clone())));
                    };
                    if commit.mode == ApplyMode::Staged && account.cursor.is_some() {
                        return Err(TxError::Fail(StoreError::InvalidState(format!(
                            "account {id} already committed its first sync"
                        ))));
                    }
                    upsert_rows(tx, id, &commit.upserts).await?;
                    remove_rows(tx, id, &commit.removals).await?;
                    if commit.mode == ApplyMode::Replace {
                        let keep: Vec<&str> =
                            commit.upserts.iter().map(|r| r.id.as_str()).collect();
                        sqlx::query(
                            "DELETE FROM transactions WHERE account_id = $1 \
                             AND NOT (transaction_id = ANY($2))",
                        )
                        .bind(id.as_str())
                        .bind(&keep)
                        .execute(&mut **tx)
                        .await?;
                    }
                    commit.record_on(&mut account);
                    self.put_account(tx, &account).await?;
                    let consumed_rows = consume_inbox(tx, id, consumed).await?;
                    settle_due(tx, &account, commit.finished_at).await?;
                    Ok(consumed_rows)
                }
                .await
            })
        })
        .map(|consumed_rows| {
            self.depth
                .add(-i64::try_from(consumed_rows).unwrap_or(i64::MAX));
        })
    }

    fn stage_rows(
        &self,
        id: &AccountId,
        upserts: Vec<Transaction>,
        removals: Vec<String>,
    ) -> Result<(), StoreError> {
        let (upserts, removals) = (&upserts, &removals);
        self.write(async {
            transaction!(self, |tx| {
                async {
                    // Staged rows need not be on disk before the staged commit that
                    // makes them visible, and that commit's WAL flush covers every
                    // record written before it: no flush per page.
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut **tx)
                        .await?;
                    self.never_synced(tx, id).await?;
                    upsert_rows(tx, id, upserts).await?;
                    remove_rows(tx, id, removals).await
                }
                .await
            })
        })
    }

    fn clear_rows(&self, id: &AccountId) -> Result<(), StoreError> {
        self.write(async {
            transaction!(self, |tx| {
                async {
                    self.never_synced(tx, id).await?;
                    sqlx::query("DELETE FROM transactions WHERE account_id = $1")
                        .bind(id.as_str())
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                }
                .await
            })
        })
    }

    fn list_transactions(
        &self,
        id: &AccountId,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, StoreError> {
        let limit = query.limit.max(1);
        self.block_on(async {
            if !self.rows_visible(id).await? {
                return Ok(TransactionPage {
                    transactions: Vec::new(),
                    next: None,
                });
            }
            let after = query.after.as_deref();
            let position = after.and_then(parse_token);
            // A token whose date is not a date (the HTTP layer checks only its shape)
            // compares as text, as sled compares keys.
            let text_after = after.filter(|_| position.is_none());
            let rows: Vec<(String, NaiveDate, Value)> = sqlx::query_as(
                "SELECT transaction_id, date, body FROM transactions \
                 WHERE account_id = $1 \
                   AND ($2::date IS NULL OR date >= $2) \
                   AND ($3::date IS NULL OR date <= $3) \
                   AND ($4::date IS NULL OR (date, transaction_id) > ($4, $5::text COLLATE \"C\")) \
                   AND ($6::text IS NULL OR (to_char(date, 'YYYY-MM-DD') || '|' || transaction_id) \
                        COLLATE \"C\" > $6::text COLLATE \"C\") \
                 ORDER BY date, transaction_id LIMIT $7",
            )
            .bind(id.as_str())
            .bind(query.start_date)
            .bind(query.end_date)
            .bind(position.map(|(date, _)| date))
            .bind(position.map(|(_, id)| id))
            .bind(text_after)
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let more = rows.len() > limit;
            let transactions: Vec<Transaction> = rows
                .into_iter()
                .take(limit)
                .map(|(id, date, body)| Transaction { id, date, body })
                .collect();
            let next = match (more, transactions.last()) {
                (true, Some(last)) => Some(format!("{}|{}", last.date.format("%Y-%m-%d"), last.id)),
                _ => None,
            };
            Ok(TransactionPage { transactions, next })
        })
    }

    fn count_transactions(&self, id: &AccountId) -> Result<u64, StoreError> {
        self.block_on(async {
            if !self.rows_visible(id).await? {
                return Ok(0);
            }
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM transactions WHERE account_id = $1")
                    .bind(id.as_str())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}
