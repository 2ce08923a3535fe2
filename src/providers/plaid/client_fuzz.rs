//! Fuzz properties of how the client reads Plaid's answers (see `crate::fuzz_support`
//! for the short and long profiles): error bodies of any shape, at any status, become a
//! classified [`ProviderError`] without panic; `/transactions/sync` and
//! `/transactions/get` bodies either decode to exactly the rows they hold or fail as a
//! (permanent) decode error, whatever their bytes.

use chrono::{Datelike, NaiveDate};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::{delta_page, read_answer, window_page, GetResponse, SyncResponse, ERROR_SNIPPET_CHARS};
use crate::domain::Transaction;
use crate::fuzz_support::{fuzz, json_value, mutated, mutations};
use crate::providers::plaid::errors::{self, classify};
use crate::providers::plaid::wire;
use crate::providers::{ErrorClass, ProviderError};

const CODES: &[&str] = &[
    wire::MUTATION_DURING_PAGINATION,
    wire::INVALID_FIELD,
    wire::ITEM_LOGIN_REQUIRED,
    wire::INVALID_ACCESS_TOKEN,
    wire::INVALID_API_KEYS,
    wire::INTERNAL_SERVER_ERROR,
    wire::TRANSACTIONS_SYNC_LIMIT,
    wire::RATE_LIMIT_EXCEEDED,
    "ITEM_NOT_FOUND",
    "USER_PERMISSION_REVOKED",
    "INSTITUTION_NO_LONGER_SUPPORTED",
    "PRODUCT_NOT_READY",
];
const TYPES: &[&str] = &[
    "INSTITUTION_ERROR",
    "INVALID_REQUEST",
    "INVALID_INPUT",
    "ITEM_ERROR",
    "TRANSACTIONS_ERROR",
    "RATE_LIMIT_EXCEEDED",
    "API_ERROR",
];

fn code() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(CODES).prop_map(str::to_owned),
        "[A-Z_]{0,24}"
    ]
}

fn error_type() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(TYPES).prop_map(str::to_owned),
        "[A-Z_]{0,24}"
    ]
}

/// A Plaid error object as Plaid sends it.
fn plaid_error() -> impl Strategy<Value = wire::PlaidError> {
    (
        error_type(),
        code(),
        prop_oneof![".{0,40}", ".{0,10}cursor.{0,10}"],
        "[a-zA-Z0-9-]{0,12}",
        proptest::option::of(100u16..600),
    )
        .prop_map(
            |(error_type, error_code, error_message, request_id, status)| wire::PlaidError {
                error_type,
                error_code,
                error_message,
                display_message: None,
                request_id,
                causes: vec![],
                status,
                documentation_url: None,
                suggested_action: None,
            },
        )
}

/// Error bodies: Plaid's objects, mutated ones, other JSON, anything.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    let plaid = || plaid_error().prop_map(|e| serde_json::to_vec(&e).unwrap_or_default());
    prop_oneof![
        plaid(),
        (plaid(), mutations()).prop_map(|(body, m)| mutated(&body, &m)),
        json_value(&["error_type", "error_code", "error_message", "request_id"])
            .prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..600),
        ".{0,300}".prop_map(String::into_bytes),
    ]
}

#[test]
fn fuzz_error_answers_are_classified_without_panic() {
    let status = prop_oneof![100u16..200, 300u16..1000];
    fuzz(
        "client::errors",
        512,
        (status, error_body()),
        |(status, body)| {
            let answer = read_answer::<SyncResponse>("/transactions/sync", status, &body);
            let Err(ProviderError::Api {
                status: got_status,
                error_type,
                code,
                message,
                request_id,
                class,
            }) = answer
            else {
                return Err(TestCaseError::fail("a non-2xx answer is an api error"));
            };
            prop_assert_eq!(got_status, status);
            prop_assert_eq!(class, classify(status, &error_type, &code, &message));
            match serde_json::from_slice::<wire::PlaidError>(&body) {
                Ok(plaid) => {
                    prop_assert_eq!(&code, &plaid.error_code);
                    prop_assert_eq!(&error_type, &plaid.error_type);
                    prop_assert_eq!(&message, &plaid.error_message);
                    prop_assert_eq!(
                        request_id,
                        Some(plaid.request_id).filter(|id| !id.is_empty())
                    );
                }
                Err(_) => {
                    prop_assert_eq!(code, format!("HTTP_{status}"));
                    prop_assert_eq!(error_type, "HTTP_ERROR");
                    prop_assert!(message.chars().count() <= ERROR_SNIPPET_CHARS);
                    prop_assert!(String::from_utf8_lossy(&body).starts_with(&message));
                    prop_assert_eq!(request_id, None);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_error_classes_follow_their_documented_precedence() {
    let strategy = (
        100u16..1000,
        error_type(),
        code(),
        prop_oneof![".{0,20}", ".{0,8}cursor.{0,8}"],
    );
    fuzz(
        "client::classes",
        512,
        strategy,
        |(status, error_type, code, message)| {
            let class = classify(status, &error_type, &code, &message);
            let rate_limited = status == 429
                || error_type == wire::RATE_LIMIT_EXCEEDED
                || code == wire::RATE_LIMIT_EXCEEDED
                || code == wire::TRANSACTIONS_SYNC_LIMIT;
            // The codes that say what to do win over everything, then rate limits, then
            // a link that is gone, then "try again later" (a 5xx, an institution error,
            // a product not ready yet).
            let expected = if code == wire::MUTATION_DURING_PAGINATION {
                ErrorClass::RestartPagination
            } else if code == wire::ITEM_LOGIN_REQUIRED {
                ErrorClass::LoginRequired
            } else if code == wire::INVALID_FIELD && message.contains("cursor") {
                ErrorClass::CursorRejected
            } else if rate_limited {
                ErrorClass::RateLimited { retry_after: None }
            } else if errors::ACCESS_REVOKED.contains(&code.as_str()) {
                ErrorClass::AccessRevoked
            } else if status >= 500
                || error_type == errors::INSTITUTION_ERROR
                || errors::TRANSIENT_4XX.contains(&code.as_str())
            {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            };
            prop_assert_eq!(class, expected);
            Ok(())
        },
    );
}

/// A transaction row as Plaid sends it, with the two fields the client reads.
fn row() -> impl Strategy<Value = Value> {
    (
        ".{0,24}",
        0i32..40_000,
        any::<f64>(),
        proptest::collection::vec(("[a-z_]{1,8}", json_value(&["x"])), 0..3),
    )
        .prop_map(|(id, day, amount, extra)| {
            let date = NaiveDate::from_num_days_from_ce_opt(700_000 + day)
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap_or_default();
            let mut row: serde_json::Map<String, Value> = extra.into_iter().collect();
            row.insert("transaction_id".into(), Value::String(id));
            row.insert("date".into(), Value::String(date));
            row.insert("amount".into(), json!(amount));
            Value::Object(row)
        })
}

/// A valid `/transactions/sync` (or, with `get`, `/transactions/get`) answer.
fn valid_page() -> impl Strategy<Value = Value> {
    let rows = || proptest::collection::vec(row(), 0..4);
    (
        rows(),
        rows(),
        proptest::collection::vec(".{0,12}", 0..3),
        ".{0,48}",
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(added, modified, removed, cursor, has_more, total)| {
            json!({
                "accounts": [], "added": added.clone(), "modified": modified,
                "removed": removed.iter().map(|id| json!({"transaction_id": id})).collect::<Vec<_>>(),
                "next_cursor": cursor, "has_more": has_more,
                "transactions_update_status": "HISTORICAL_UPDATE_COMPLETE",
                "request_id": "req",
                "transactions": added, "total_transactions": total,
            })
        })
}

/// Whether `rows` are exactly the JSON array `listed`, in order, each kept verbatim.
fn same_rows(rows: &[Transaction], listed: &Value) -> Result<(), TestCaseError> {
    let listed = listed
        .as_array()
        .ok_or_else(|| TestCaseError::fail("decoded rows from a non-array"))?;
    prop_assert_eq!(rows.len(), listed.len());
    for (row, body) in rows.iter().zip(listed) {
        prop_assert_eq!(&row.body, body);
        prop_assert_eq!(Some(row.id.as_str()), body["transaction_id"].as_str());
        // The date the text denotes (chrono also takes unpadded fields, `917-7-5`: the
        // same date; the row itself is kept verbatim).
        let text = body["date"].as_str().unwrap_or_default();
        let denoted = text
            .split('-')
            .map(|part| part.trim_start_matches('+').parse::<i64>().ok())
            .collect::<Option<Vec<_>>>();
        let ymd = [
            i64::from(row.date.year()),
            i64::from(row.date.month()),
            i64::from(row.date.day()),
        ];
        prop_assert_eq!(denoted.as_deref(), Some(&ymd[..]), "{}", text);
    }
    Ok(())
}

/// Reads `body` as a 2xx answer of both endpoints: it decodes to exactly what the JSON
/// holds, or fails as a permanent decode error.
fn check_page(body: &[u8]) -> Result<(), TestCaseError> {
    let delta = read_answer::<SyncResponse>("/transactions/sync", 200, body).and_then(delta_page);
    let window = read_answer::<GetResponse>("/transactions/get", 200, body).and_then(window_page);
    for err in [delta.as_ref().err(), window.as_ref().err()]
        .into_iter()
        .flatten()
    {
        prop_assert!(matches!(err, ProviderError::Decode(_)), "{err:?}");
        prop_assert_eq!(err.class(), ErrorClass::Permanent);
    }
    if delta.is_err() && window.is_err() {
        return Ok(());
    }
    // A decoded page may still not be a JSON value: serde skips the fields it does not
    // read without checking their string escapes (a lone `\\udead` in an ignored field).
    // Nothing of those fields is kept, so there is nothing to compare then.
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    if let Ok(page) = delta {
        same_rows(&page.added, &value["added"])?;
        same_rows(&page.modified, &value["modified"])?;
        prop_assert_eq!(
            Some(page.next_cursor.as_str()),
            value["next_cursor"].as_str()
        );
        prop_assert_eq!(Some(page.has_more), value["has_more"].as_bool());
        prop_assert_eq!(
            page.removed.len(),
            value["removed"].as_array().map_or(0, Vec::len)
        );
    }
    if let Ok(page) = window {
        same_rows(&page.transactions, &value["transactions"])?;
        prop_assert_eq!(Some(page.total), value["total_transactions"].as_u64());
    }
    Ok(())
}

#[test]
fn fuzz_valid_pages_decode_to_their_rows() {
    fuzz("client::valid_pages", 256, valid_page(), |page| {
        let body = page.to_string().into_bytes();
        let delta =
            read_answer::<SyncResponse>("/transactions/sync", 200, &body).and_then(delta_page);
        let window =
            read_answer::<GetResponse>("/transactions/get", 200, &body).and_then(window_page);
        prop_assert!(delta.is_ok(), "{delta:?}");
        prop_assert!(window.is_ok(), "{window:?}");
        check_page(&body)
    });
}

#[test]
fn fuzz_arbitrary_and_mutated_pages_never_panic() {
    let body = prop_oneof![
        (valid_page(), mutations()).prop_map(|(page, m)| mutated(page.to_string().as_bytes(), &m)),
        json_value(&[
            "added",
            "modified",
            "removed",
            "next_cursor",
            "has_more",
            "transactions",
            "transaction_id",
            "date",
            "2024-02-30"
        ])
        .prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ];
    fuzz("client::pages", 512, body, |body| check_page(&body));
}
