//! Signing and verification of the bank's status webhooks (`bank-signature`).
//!
//! The scheme is Stripe's (`providers::signature`): the signed payload is
//! `"{t}.{raw body}"`, one `v1` per active secret during a rotation. The body is parsed
//! only once the signature has been checked, so an unsigned body is never interpreted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderMap;

use super::wire::{BankStatus, WebhookBody};
use super::SIGNATURE_HEADER;
use crate::providers::signature::TimestampedHmac;
use crate::providers::WebhookError;

pub use crate::providers::signature::sign;

/// The bank's header.
const SCHEME: TimestampedHmac = TimestampedHmac {
    header: SIGNATURE_HEADER,
};

/// A verified status webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankWebhook {
    /// The bank's id of this event: a redelivery carries the same id.
    pub event_id: String,
    /// The opening it is about.
    pub tracking_id: String,
    /// The idempotency key the opening was created with.
    pub request_id: String,
    /// The opening's new status.
    pub status: BankStatus,
    /// The account's IBAN (always present when `COMPLETED`).
    pub iban: Option<String>,
    /// The account's BIC (always present when `COMPLETED`).
    pub bic: Option<String>,
    /// Why the bank declined, when `REJECTED` and it said.
    pub reason: Option<String>,
    /// When the status changed at the bank.
    pub occurred_at: DateTime<Utc>,
    /// Whether the event was made up by an operator or a test, not sent by the bank.
    pub simulated: bool,
}

/// Verifies `bank-signature` against up to two secrets (rotation: current and previous)
/// with a timestamp tolerance.
#[derive(Clone)]
pub struct BankWebhookVerifier {
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl std::fmt::Debug for BankWebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BankWebhookVerifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

fn unauthorized(reason: impl Into<String>) -> WebhookError {
    WebhookError::Unauthorized(reason.into())
}

fn malformed(reason: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(reason.into())
}

impl BankWebhookVerifier {
    /// A verifier accepting a signature by any of `secrets` (the current one and, during
    /// a rotation, the previous one) made within `tolerance` of the verification time.
    /// Empty secrets are ignored: an empty HMAC key would be a secret everyone knows.
    pub fn new(secrets: Vec<String>, tolerance: Duration) -> BankWebhookVerifier {
        BankWebhookVerifier {
            secrets: secrets
                .into_iter()
                .filter(|secret| !secret.is_empty())
                .map(String::into_bytes)
                .collect(),
            tolerance,
        }
    }

    /// Checks the signature of `body` as of `now`, then parses it.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<BankWebhook, WebhookError> {
        if self.secrets.is_empty() {
            return Err(unauthorized("no bank webhook secret is configured"));
        }
        SCHEME.verify(headers, body, &self.secrets, self.tolerance, now)?;
        parse_body(body)
    }
}

/// Reads a signed body as a status event.
fn parse_body(body: &[u8]) -> Result<BankWebhook, WebhookError> {
    let body: WebhookBody = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("not a bank status event: {e}")))?;
    let status = BankStatus::parse(&body.status).ok_or_else(|| {
        let shown: String = body.status.chars().take(32).collect();
        malformed(format!(
            "unknown status {shown:?}; accepted statuses are {}",
            super::wire::accepted_statuses()
        ))
    })?;
    for (name, value) in [
        ("event_id", &body.event_id),
        ("tracking_id", &body.tracking_id),
        ("request_id", &body.request_id),
    ] {
        if value.is_empty() {
            return Err(malformed(format!("{name} is empty")));
        }
    }
    if status == BankStatus::Completed {
        let present = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
        if !present(&body.iban) || !present(&body.bic) {
            return Err(malformed("a COMPLETED event must carry iban and bic"));
        }
    }
    Ok(BankWebhook {
        event_id: body.event_id,
        tracking_id: body.tracking_id,
        request_id: body.request_id,
        status,
        iban: body.iban,
        bic: body.bic,
        reason: body.reason,
        occurred_at: body.occurred_at,
        simulated: body.simulated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac;
    use http::HeaderValue;
    use serde_json::json;

    use crate::providers::signature::MAX_SIGNATURES;

    type HmacSha256 = hmac::Hmac<sha2::Sha256>;

    const NOW: i64 = 1_800_000_000;
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(NOW, 0).unwrap()
    }

    fn verifier(secrets: &[&str]) -> BankWebhookVerifier {
        BankWebhookVerifier::new(secrets.iter().map(|s| s.to_string()).collect(), TOLERANCE)
    }

    fn completed() -> Vec<u8> {
        json!({
            "event_id": "evt_1",
            "tracking_id": "opn_1",
            "request_id": "req_1",
            "status": "COMPLETED",
            "iban": "NL91ABNA0417164300",
            "bic": "ABNANL2A",
            "occurred_at": "2027-01-15T08:00:00Z"
        })
        .to_string()
        .into_bytes()
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn signed(secrets: &[&str], timestamp: i64, body: &[u8]) -> HeaderMap {
        let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
        headers(&sign(&secrets, timestamp, body))
    }

    fn unauthorized_reason(result: Result<BankWebhook, WebhookError>) -> String {
        match result {
            Err(WebhookError::Unauthorized(reason)) => reason,
            other => panic!("expected Unauthorized, got {other:?}"),
        }
    }

    fn malformed_reason(result: Result<BankWebhook, WebhookError>) -> String {
        match result {
            Err(WebhookError::Malformed(reason)) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_webhook_signed_with_the_secret_verifies_and_parses() {
        let body = completed();
        let webhook = verifier(&["s1"])
            .verify(&signed(&["s1"], NOW, &body), &body, now())
            .unwrap();
        assert_eq!(
            webhook,
            BankWebhook {
                event_id: "evt_1".into(),
                tracking_id: "opn_1".into(),
                request_id: "req_1".into(),
                status: BankStatus::Completed,
                iban: Some("NL91ABNA0417164300".into()),
                bic: Some("ABNANL2A".into()),
                reason: None,
                occurred_at: "2027-01-15T08:00:00Z".parse().unwrap(),
                simulated: false,
            }
        );
    }

    #[test]
    fn the_header_has_one_v1_per_secret_in_the_documented_format() {
        let header = sign(&[b"a", b"b"], 42, b"{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "t=42");
        // Recomputed independently of `mac`: hex(HMAC-SHA256(secret, "42.{}")).
        let mut expected = HmacSha256::new_from_slice(b"b").unwrap();
        expected.update(b"42.{}");
        assert_eq!(
            parts[2],
            format!("v1={}", hex::encode(expected.finalize().into_bytes()))
        );
    }

    #[test]
    fn during_a_rotation_either_secret_is_accepted() {
        let body = completed();
        // The bank still signs with the old secret only; acctor has both.
        let rotating = verifier(&["new", "old"]);
        assert!(rotating
            .verify(&signed(&["old"], NOW, &body), &body, now())
            .is_ok());
        // The bank signs with both; acctor has only the new one.
        assert!(verifier(&["new"])
            .verify(&signed(&["old", "new"], NOW, &body), &body, now())
            .is_ok());
    }

    #[test]
    fn a_wrong_secret_or_an_altered_body_is_refused() {
        let body = completed();
        let reason = unauthorized_reason(verifier(&["s1"]).verify(
            &signed(&["other"], NOW, &body),
            &body,
            now(),
        ));
        assert!(reason.contains("no bank-signature v1 matches"), "{reason}");

        let mut altered = body.clone();
        altered[10] ^= 1;
        unauthorized_reason(verifier(&["s1"]).verify(
            &signed(&["s1"], NOW, &body),
            &altered,
            now(),
        ));
        // The timestamp is signed too: the same tag under another `t` fails.
        let header = sign(&[b"s1"], NOW, &body).replacen(&format!("t={NOW}"), "t=1800000001", 1);
        unauthorized_reason(verifier(&["s1"]).verify(&headers(&header), &body, now()));
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_either_way() {
        let body = completed();
        let v = verifier(&["s1"]);
        for timestamp in [NOW - 301, NOW + 301, 0, i64::MIN, i64::MAX] {
            let reason =
                unauthorized_reason(v.verify(&signed(&["s1"], timestamp, &body), &body, now()));
            assert_eq!(reason, "timestamp outside tolerance", "t={timestamp}");
        }
        for timestamp in [NOW - 300, NOW + 300] {
            assert!(v
                .verify(&signed(&["s1"], timestamp, &body), &body, now())
                .is_ok());
        }
    }

    #[test]
    fn a_missing_or_garbled_header_is_refused_with_a_clear_reason() {
        let body = completed();
        let v = verifier(&["s1"]);
        assert_eq!(
            unauthorized_reason(v.verify(&HeaderMap::new(), &body, now())),
            "missing bank-signature header"
        );
        for (value, expected) in [
            ("garbage", "not a list of key=value pairs"),
            ("v1=abcd", "no timestamp"),
            ("t=soon,v1=abcd", "not an integer"),
            (&format!("t={NOW}"), "no v1 signature"),
            (&format!("t={NOW},t={NOW},v1=00"), "two timestamps"),
            (&format!("t={NOW},v1=zz"), "no bank-signature v1 matches"),
        ] {
            let reason = unauthorized_reason(v.verify(&headers(value), &body, now()));
            assert!(reason.contains(expected), "{value}: {reason}");
        }
        let many = format!("t={NOW}{}", ",v1=00".repeat(MAX_SIGNATURES + 1));
        assert!(unauthorized_reason(v.verify(&headers(&many), &body, now()))
            .contains("too many signatures"));
    }

    #[test]
    fn a_verifier_without_secrets_refuses_everything() {
        let body = completed();
        let reason =
            unauthorized_reason(verifier(&[""]).verify(&signed(&[""], NOW, &body), &body, now()));
        assert!(reason.contains("no bank webhook secret"), "{reason}");
    }

    #[test]
    fn a_signed_body_that_is_not_a_status_event_is_malformed() {
        let v = verifier(&["s1"]);
        let check = |body: serde_json::Value| {
            let body = body.to_string().into_bytes();
            malformed_reason(v.verify(&signed(&["s1"], NOW, &body), &body, now()))
        };
        let reason =
            malformed_reason(v.verify(&signed(&["s1"], NOW, b"not json"), b"not json", now()));
        assert!(reason.contains("not a bank status event"), "{reason}");
        check(json!({"event_id": "e", "status": "INITIATED"}));

        let reason = check(json!({
            "event_id": "e", "tracking_id": "t", "request_id": "r",
            "status": "OPENED", "occurred_at": "2027-01-15T08:00:00Z"
        }));
        assert!(reason.contains("unknown status \"OPENED\""), "{reason}");
        assert!(
            reason.contains("INITIATED, IN_PROGRESS, COMPLETED, REJECTED"),
            "{reason}"
        );

        let reason = check(json!({
            "event_id": "e", "tracking_id": "t", "request_id": "r",
            "status": "COMPLETED", "bic": "ABNANL2A", "occurred_at": "2027-01-15T08:00:00Z"
        }));
        assert!(reason.contains("iban and bic"), "{reason}");
        let reason = check(json!({
            "event_id": "", "tracking_id": "t", "request_id": "r",
            "status": "INITIATED", "occurred_at": "2027-01-15T08:00:00Z"
        }));
        assert!(reason.contains("event_id is empty"), "{reason}");
    }

    #[test]
    fn rejected_without_reason_unknown_fields_and_simulated_are_accepted() {
        let body = json!({
            "event_id": "e", "tracking_id": "t", "request_id": "r",
            "status": "REJECTED", "occurred_at": "2027-01-15T08:00:00+01:00",
            "simulated": true, "added_in_v3": {"anything": 1}
        })
        .to_string()
        .into_bytes();
        let webhook = verifier(&["s1"])
            .verify(&signed(&["s1"], NOW, &body), &body, now())
            .unwrap();
        assert_eq!(webhook.status, BankStatus::Rejected);
        assert_eq!(webhook.reason, None);
        assert!(webhook.simulated);
        assert_eq!(
            webhook.occurred_at,
            "2027-01-15T07:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
