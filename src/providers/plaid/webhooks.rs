//! What Plaid's webhooks mean: the body of a verified webhook parsed into its routing
//! key (`item_id`), its kind (`WEBHOOK_TYPE/WEBHOOK_CODE`) and its dedup key, and each
//! kind acctor acts on read into a provider-neutral [`WebhookAction`]. The account's
//! actor reads stored events through [`action_of`] too (via the plugin), so the ingest
//! and the actor can never disagree about what an event says.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::wire;
use crate::domain::ProviderKind;
use crate::providers::{
    body_dedup_key, DeadlineKind, VerifiedWebhook, WebhookAction, WebhookEffect, WebhookError,
};

/// Parses a verified body: an object with string `webhook_type`, `webhook_code` and
/// `item_id` (Plaid's common webhook fields), the rest kept verbatim.
pub(crate) fn parse_body(body: &[u8]) -> Result<VerifiedWebhook, WebhookError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("webhook body is not json: {e}")))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| WebhookError::Malformed(format!("webhook body has no string {name}")))
    };
    let webhook_type = field("webhook_type")?;
    let webhook_code = field("webhook_code")?;
    let item_id = field("item_id")?.to_owned();
    let kind = format!("{webhook_type}/{webhook_code}");
    // Plaid's webhooks carry no event id: the same bytes for the same item are the
    // same event.
    let dedup_key = body_dedup_key(ProviderKind::Plaid, &item_id, body);
    let action = action_of(&kind, &value);
    Ok(VerifiedWebhook {
        effect: WebhookEffect {
            external_id: item_id,
            dedup_key,
            action,
        },
        kind,
        body: value,
    })
}

/// What a Plaid webhook of `kind` (`WEBHOOK_TYPE/WEBHOOK_CODE`) with `body` asks for.
pub(crate) fn action_of(kind: &str, body: &Value) -> WebhookAction {
    let text = |name: &str| body.get(name).and_then(Value::as_str);
    let deadline = |kind: DeadlineKind, code: &str| WebhookAction::DeadlineAnnounced {
        kind,
        code: code.to_owned(),
        deadline: text("consent_expiration_time")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        reason: text("reason").map(str::to_owned),
    };
    match kind {
        "ITEM/LOGIN_REPAIRED" => WebhookAction::LoginRepaired,
        "ITEM/ERROR" => login_required(body).unwrap_or(WebhookAction::Ignore),
        "ITEM/PENDING_EXPIRATION" => deadline(DeadlineKind::Expiration, "PENDING_EXPIRATION"),
        "ITEM/PENDING_DISCONNECT" => deadline(DeadlineKind::Disconnect, "PENDING_DISCONNECT"),
        _ => match kind.split_once('/') {
            Some((webhook_type, code)) if triggers_sync(webhook_type, code) => WebhookAction::Sync,
            _ => WebhookAction::Ignore,
        },
    }
}

/// An `ITEM`/`ERROR` body's error, when it is ITEM_LOGIN_REQUIRED (any other item
/// error is only informational here).
fn login_required(body: &Value) -> Option<WebhookAction> {
    let error = body.get("error")?;
    let code = error.get("error_code")?.as_str()?;
    (code == wire::ITEM_LOGIN_REQUIRED).then(|| WebhookAction::LoginRequired {
        code: code.to_owned(),
        request_id: error
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Whether a webhook means the item's transactions changed (or can be fetched again).
pub(crate) fn triggers_sync(webhook_type: &str, webhook_code: &str) -> bool {
    matches!(
        (webhook_type, webhook_code),
        (
            "TRANSACTIONS",
            "SYNC_UPDATES_AVAILABLE"
                | "DEFAULT_UPDATE"
                | "INITIAL_UPDATE"
                | "HISTORICAL_UPDATE"
                | "TRANSACTIONS_REMOVED"
        ) | ("ITEM", "LOGIN_REPAIRED")
    )
}

#[cfg(test)]
#[path = "webhooks_fuzz.rs"]
pub(super) mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The item webhooks the needs-reauth check acts on, read by code (moved here from
    /// `actors::reauth` with the parsing).
    #[test]
    fn item_webhooks_are_classified_by_code() {
        let required = action_of(
            "ITEM/ERROR",
            &json!({ "error": { "error_code": "ITEM_LOGIN_REQUIRED", "request_id": "r1" } }),
        );
        assert_eq!(
            required,
            WebhookAction::LoginRequired {
                code: "ITEM_LOGIN_REQUIRED".into(),
                request_id: Some("r1".into())
            }
        );
        let other_error = action_of(
            "ITEM/ERROR",
            &json!({ "error": { "error_code": "ITEM_NOT_FOUND" } }),
        );
        assert_eq!(other_error, WebhookAction::Ignore);
        assert_eq!(
            action_of("ITEM/LOGIN_REPAIRED", &json!({})),
            WebhookAction::LoginRepaired
        );
        assert_eq!(
            action_of("TRANSACTIONS/SYNC_UPDATES_AVAILABLE", &json!({})),
            WebhookAction::Sync
        );
        let WebhookAction::DeadlineAnnounced {
            kind,
            code,
            deadline,
            reason,
        } = action_of(
            "ITEM/PENDING_EXPIRATION",
            &json!({ "consent_expiration_time": "2026-03-01T12:00:00Z" }),
        )
        else {
            panic!("a deadline");
        };
        assert_eq!(kind, DeadlineKind::Expiration);
        assert_eq!(code, "PENDING_EXPIRATION");
        assert_eq!(
            deadline.map(|d| d.to_rfc3339()),
            Some("2026-03-01T12:00:00+00:00".to_string())
        );
        assert_eq!(reason, None);
        let WebhookAction::DeadlineAnnounced {
            kind, code, reason, ..
        } = action_of(
            "ITEM/PENDING_DISCONNECT",
            &json!({ "reason": "INSTITUTION_MIGRATION" }),
        )
        else {
            panic!("a deadline");
        };
        assert_eq!(reason.as_deref(), Some("INSTITUTION_MIGRATION"));
        assert_eq!(kind, DeadlineKind::Disconnect);
        assert_eq!(code, "PENDING_DISCONNECT");
    }

    #[test]
    fn informational_webhooks_ask_for_nothing() {
        for kind in [
            "TRANSACTIONS/RECURRING_TRANSACTIONS_UPDATE",
            "ITEM/WEBHOOK_UPDATE_ACKNOWLEDGED",
            "AUTH/DEFAULT_UPDATE",
            "NO_SLASH",
        ] {
            assert_eq!(action_of(kind, &json!({})), WebhookAction::Ignore, "{kind}");
        }
        // An unparseable deadline is still a deadline, without its time.
        assert!(matches!(
            action_of(
                "ITEM/PENDING_EXPIRATION",
                &json!({ "consent_expiration_time": "soon" })
            ),
            WebhookAction::DeadlineAnnounced { deadline: None, .. }
        ));
    }

    #[test]
    fn the_parsed_body_carries_its_effect_and_the_historical_dedup_key() {
        let body = br#"{"webhook_type":"ITEM","webhook_code":"ERROR","item_id":"item-7","error":{"error_code":"ITEM_LOGIN_REQUIRED"}}"#;
        let parsed = parse_body(body).expect("parses");
        assert_eq!(parsed.kind, "ITEM/ERROR");
        assert_eq!(parsed.effect.external_id, "item-7");
        assert!(matches!(
            parsed.effect.action,
            WebhookAction::LoginRequired {
                request_id: None,
                ..
            }
        ));
        // The key acctor has always used (provider, NUL, item, NUL, bytes), so events
        // deduplicated before this change stay deduplicated after it.
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"plaid\0item-7\0");
        hasher.update(body);
        let expected: [u8; 32] = hasher.finalize().into();
        assert_eq!(parsed.effect.dedup_key, expected);
    }
}
