//! Fuzz properties of the webhook body parser (see `crate::fuzz_support` for the short
//! and long profiles): arbitrary bytes, arbitrary JSON and mutations of valid bodies
//! never panic; valid bodies parse to the effect their fields say; the dedup key is a
//! function of the exact bytes and the item; the actor's later reading of a stored
//! event ([`action_of`] on the kept body) is the ingest's reading.
//!
//! [`valid_webhook`] is shared with the verifier's properties, which sign its bodies.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::{action_of, parse_body};
use crate::domain::ProviderKind;
use crate::fuzz_support::{fuzz, json_value, mutated, mutations};
use crate::providers::{body_dedup_key, DeadlineKind, VerifiedWebhook, WebhookAction};

/// A generated valid Plaid webhook: its exact bytes and what they must mean.
#[derive(Clone, Debug)]
pub(in crate::providers::plaid) struct ValidWebhook {
    pub(in crate::providers::plaid) body: Vec<u8>,
    pub(in crate::providers::plaid) item_id: String,
    pub(in crate::providers::plaid) kind: String,
    pub(in crate::providers::plaid) action: WebhookAction,
}

const SYNC_CODES: &[&str] = &[
    "SYNC_UPDATES_AVAILABLE",
    "DEFAULT_UPDATE",
    "INITIAL_UPDATE",
    "HISTORICAL_UPDATE",
    "TRANSACTIONS_REMOVED",
];

/// What the generated body is about, with the fields that decide its action.
#[derive(Clone, Debug)]
enum Shape {
    Sync(&'static str),
    LoginRepaired,
    ItemError {
        code: String,
        request_id: Option<String>,
    },
    Deadline {
        disconnect: bool,
        /// Unix seconds, or a text that is not a time.
        at: Result<i64, String>,
        reason: Option<String>,
    },
    /// A kind acctor does not act on (its type never collides with a known one).
    Other(String, String),
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        proptest::sample::select(SYNC_CODES).prop_map(Shape::Sync),
        Just(Shape::LoginRepaired),
        (
            prop_oneof![Just("ITEM_LOGIN_REQUIRED".to_owned()), "[A-Z_]{1,24}"],
            proptest::option::of(".{0,16}"),
        )
            .prop_map(|(code, request_id)| Shape::ItemError { code, request_id }),
        (
            any::<bool>(),
            prop_oneof![(0i64..4_102_444_800).prop_map(Ok), ".{0,12}".prop_map(Err)],
            proptest::option::of(".{0,16}"),
        )
            .prop_map(|(disconnect, at, reason)| Shape::Deadline {
                disconnect,
                at,
                reason
            }),
        ("X_[A-Z_]{0,12}", "[A-Z_]{0,16}").prop_map(|(t, c)| Shape::Other(t, c)),
    ]
}

/// Valid webhooks of every kind acctor reads, with random item ids, extra fields and
/// formatting (compact or pretty: both are bodies Plaid could send).
pub(in crate::providers::plaid) fn valid_webhook() -> impl Strategy<Value = ValidWebhook> {
    (
        shape(),
        ".{0,40}",
        proptest::collection::vec(("[a-z_]{1,10}", json_value(&["x"])), 0..3),
        any::<bool>(),
    )
        .prop_map(|(shape, item_id, extra, pretty)| {
            build(shape, item_id, extra.into_iter().collect(), pretty)
        })
}

fn build(
    shape: Shape,
    item_id: String,
    mut body: serde_json::Map<String, Value>,
    pretty: bool,
) -> ValidWebhook {
    let rfc3339 = |secs: i64| DateTime::<Utc>::from_timestamp(secs, 0);
    let (webhook_type, webhook_code, action) = match shape {
        Shape::Sync(code) => (
            "TRANSACTIONS".to_owned(),
            code.to_owned(),
            WebhookAction::Sync,
        ),
        Shape::LoginRepaired => (
            "ITEM".to_owned(),
            "LOGIN_REPAIRED".to_owned(),
            WebhookAction::LoginRepaired,
        ),
        Shape::ItemError { code, request_id } => {
            let action = if code == "ITEM_LOGIN_REQUIRED" {
                WebhookAction::LoginRequired {
                    code: code.clone(),
                    request_id: request_id.clone(),
                }
            } else {
                WebhookAction::Ignore
            };
            let mut error = json!({ "error_type": "ITEM_ERROR", "error_code": code });
            if let Some(request_id) = request_id {
                error["request_id"] = Value::String(request_id);
            }
            body.insert("error".to_owned(), error);
            ("ITEM".to_owned(), "ERROR".to_owned(), action)
        }
        Shape::Deadline {
            disconnect,
            at,
            reason,
        } => {
            let deadline = match &at {
                Ok(secs) => rfc3339(*secs),
                // Whatever the text, a time is only taken when it parses as one.
                Err(text) => DateTime::parse_from_rfc3339(text)
                    .ok()
                    .map(|t| t.with_timezone(&Utc)),
            };
            let text = match at {
                Ok(secs) => rfc3339(secs).map(|t| t.to_rfc3339()).unwrap_or_default(),
                Err(text) => text,
            };
            body.insert("consent_expiration_time".to_owned(), Value::String(text));
            if let Some(reason) = &reason {
                body.insert("reason".to_owned(), Value::String(reason.clone()));
            } else {
                body.remove("reason");
            }
            let (kind, code) = if disconnect {
                (DeadlineKind::Disconnect, "PENDING_DISCONNECT")
            } else {
                (DeadlineKind::Expiration, "PENDING_EXPIRATION")
            };
            let action = WebhookAction::DeadlineAnnounced {
                kind,
                code: code.to_owned(),
                deadline,
                reason,
            };
            ("ITEM".to_owned(), code.to_owned(), action)
        }
        Shape::Other(t, c) => (t, c, WebhookAction::Ignore),
    };
    body.insert(
        "webhook_type".to_owned(),
        Value::String(webhook_type.clone()),
    );
    body.insert(
        "webhook_code".to_owned(),
        Value::String(webhook_code.clone()),
    );
    body.insert("item_id".to_owned(), Value::String(item_id.clone()));
    body.insert(
        "environment".to_owned(),
        Value::String("sandbox".to_owned()),
    );
    let value = Value::Object(body);
    let text = if pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    };
    ValidWebhook {
        body: text.unwrap_or_default().into_bytes(),
        item_id,
        kind: format!("{webhook_type}/{webhook_code}"),
        action,
    }
}

/// What must hold of any body the parser accepts, whatever its bytes: the effect is
/// what the JSON's fields say, keyed by the exact bytes, and reading the kept body
/// again (as the actor does, also after the inbox round-trips it through JSON) gives
/// the same action.
fn check_accepted(body: &[u8], parsed: &VerifiedWebhook) -> Result<(), TestCaseError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("accepted a body that is not json: {e}")))?;
    let text = |name: &str| value.get(name).and_then(Value::as_str);
    prop_assert_eq!(Some(parsed.effect.external_id.as_str()), text("item_id"));
    let kind = format!(
        "{}/{}",
        text("webhook_type").unwrap_or("?"),
        text("webhook_code").unwrap_or("?")
    );
    prop_assert_eq!(&parsed.kind, &kind);
    prop_assert_eq!(
        parsed.effect.dedup_key,
        body_dedup_key(ProviderKind::Plaid, &parsed.effect.external_id, body)
    );
    prop_assert_eq!(
        &action_of(&parsed.kind, &parsed.body),
        &parsed.effect.action
    );
    let stored: Value = serde_json::from_str(&parsed.body.to_string())
        .map_err(|e| TestCaseError::fail(format!("kept body does not round-trip: {e}")))?;
    prop_assert_eq!(&action_of(&parsed.kind, &stored), &parsed.effect.action);
    Ok(())
}

#[test]
fn fuzz_arbitrary_bytes_never_panic_the_body_parser() {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        ".{0,128}".prop_map(String::into_bytes),
    ];
    fuzz("webhooks::arbitrary_bytes", 512, bytes, |body| {
        if let Ok(parsed) = parse_body(&body) {
            check_accepted(&body, &parsed)?;
        }
        Ok(())
    });
}

const FIELDS: &[&str] = &[
    "webhook_type",
    "webhook_code",
    "item_id",
    "error",
    "error_code",
    "request_id",
    "consent_expiration_time",
    "reason",
    "ITEM",
    "ERROR",
    "TRANSACTIONS",
    "SYNC_UPDATES_AVAILABLE",
    "LOGIN_REPAIRED",
    "PENDING_EXPIRATION",
    "PENDING_DISCONNECT",
    "ITEM_LOGIN_REQUIRED",
    "2026-03-01T12:00:00Z",
];

#[test]
fn fuzz_arbitrary_json_parses_exactly_when_it_has_the_common_fields() {
    fuzz(
        "webhooks::arbitrary_json",
        512,
        json_value(FIELDS),
        |value| {
            let body = value.to_string().into_bytes();
            let has = |name: &str| value.get(name).is_some_and(Value::is_string);
            let parsed = parse_body(&body);
            prop_assert_eq!(
                parsed.is_ok(),
                has("webhook_type") && has("webhook_code") && has("item_id")
            );
            if let Ok(parsed) = parsed {
                check_accepted(&body, &parsed)?;
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_valid_webhooks_parse_to_their_effect_with_a_stable_dedup_key() {
    let strategy = (valid_webhook(), ".{0,40}");
    fuzz("webhooks::valid", 256, strategy, |(hook, other_item)| {
        let parsed =
            parse_body(&hook.body).map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        check_accepted(&hook.body, &parsed)?;
        prop_assert_eq!(&parsed.effect.external_id, &hook.item_id);
        prop_assert_eq!(&parsed.kind, &hook.kind);
        prop_assert_eq!(&parsed.effect.action, &hook.action);
        // The same bytes are the same event, every time.
        let again = parse_body(&hook.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again.effect, &parsed.effect);
        // Another item's identical body is another event.
        if other_item != hook.item_id {
            prop_assert_ne!(
                body_dedup_key(ProviderKind::Plaid, &other_item, &hook.body),
                parsed.effect.dedup_key
            );
        }
        // So is the same event re-formatted: the key is of the bytes (Plaid's bodies
        // carry no event id), which is what the signature covers too.
        let value: Value =
            serde_json::from_slice(&hook.body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut reformatted = value.to_string().into_bytes();
        if reformatted == hook.body {
            reformatted.push(b'\n');
        }
        let reparsed = parse_body(&reformatted).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&reparsed.effect.action, &parsed.effect.action);
        prop_assert_ne!(reparsed.effect.dedup_key, parsed.effect.dedup_key);
        Ok(())
    });
}

#[test]
fn fuzz_mutated_valid_webhooks_never_panic_the_body_parser() {
    let strategy = (valid_webhook(), mutations());
    fuzz("webhooks::mutated", 512, strategy, |(hook, mutations)| {
        let body = mutated(&hook.body, &mutations);
        if let Ok(parsed) = parse_body(&body) {
            check_accepted(&body, &parsed)?;
        }
        Ok(())
    });
}
