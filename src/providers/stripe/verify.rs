//! Verification of Stripe's webhook events: `Stripe-Signature` (Stripe's scheme, see
//! `providers::signature`) against any of the account's endpoint secrets, within the
//! tolerance, then the body read as an event. The body is parsed only once signed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderMap;

use super::wire::Event;
use super::SIGNATURE_HEADER;
use crate::providers::signature::TimestampedHmac;
use crate::providers::WebhookError;

pub use crate::providers::signature::sign;

const SCHEME: TimestampedHmac = TimestampedHmac {
    header: SIGNATURE_HEADER,
};

/// The unverified routing fields of an event body: which account's secrets to check it
/// against. Nothing else of an unsigned body is read.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Routing {
    /// The Connect account, when it is one's event.
    #[serde(default)]
    pub account: Option<String>,
}

/// Reads the routing fields of a body that has not been verified yet.
pub fn routing(body: &[u8]) -> Result<Routing, WebhookError> {
    serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a Stripe event: {e}")))
}

/// Checks `body`'s signature against `secrets` as of `now`, then reads it as an event.
pub fn verify_event(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[String],
    tolerance: Duration,
    now: DateTime<Utc>,
) -> Result<Event, WebhookError> {
    if secrets.iter().all(String::is_empty) {
        return Err(WebhookError::Unauthorized(
            "the account has no webhook endpoint secret".into(),
        ));
    }
    SCHEME.verify(headers, body, secrets, tolerance, now)?;
    let event: Event = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a Stripe event: {e}")))?;
    if event.object != "event" {
        return Err(WebhookError::Malformed(format!(
            "object is {:?}, not \"event\"",
            event.object.chars().take(32).collect::<String>()
        )));
    }
    if event.id.is_empty() {
        return Err(WebhookError::Malformed("event id is empty".into()));
    }
    if event.object_id().is_none() {
        return Err(WebhookError::Malformed("data.object has no id".into()));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(NOW, 0).unwrap()
    }

    fn event() -> Vec<u8> {
        json!({
            "id": "evt_1", "object": "event", "created": NOW - 5, "type": "product.updated",
            "livemode": false, "pending_webhooks": 1, "api_version": "2024-06-20",
            "data": {"object": {"id": "prod_1", "object": "product", "name": "A"}},
            "request": {"id": "req_1", "idempotency_key": "k1"}
        })
        .to_string()
        .into_bytes()
    }

    fn signed(secrets: &[&str], t: i64, body: &[u8]) -> HeaderMap {
        let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&sign(&secrets, t, body)).unwrap(),
        );
        headers
    }

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_signed_event_verifies_and_reads() {
        let body = event();
        let event = verify_event(
            &signed(&["whsec_a"], NOW, &body),
            &body,
            &secrets(&["whsec_a"]),
            TOLERANCE,
            now(),
        )
        .unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.kind, "product.updated");
        assert_eq!(event.object_id(), Some("prod_1"));
        assert_eq!(event.object_name(), Some("product"));
        assert_eq!(
            event.request.unwrap().idempotency_key.as_deref(),
            Some("k1")
        );
    }

    #[test]
    fn either_secret_of_a_rotation_is_accepted_and_a_stranger_is_not() {
        let body = event();
        for signer in ["whsec_old", "whsec_new"] {
            assert!(verify_event(
                &signed(&[signer], NOW, &body),
                &body,
                &secrets(&["whsec_new", "whsec_old"]),
                TOLERANCE,
                now()
            )
            .is_ok());
        }
        let err = verify_event(
            &signed(&["whsec_x"], NOW, &body),
            &body,
            &secrets(&["whsec_new"]),
            TOLERANCE,
            now(),
        )
        .unwrap_err();
        assert!(
            matches!(err, WebhookError::Unauthorized(ref r) if r.contains("stripe-signature")),
            "{err:?}"
        );
    }

    #[test]
    fn stale_altered_or_unsigned_events_are_refused() {
        let body = event();
        let stale = verify_event(
            &signed(&["s"], NOW - 301, &body),
            &body,
            &secrets(&["s"]),
            TOLERANCE,
            now(),
        );
        assert!(matches!(stale, Err(WebhookError::Unauthorized(ref r)) if r.contains("tolerance")));
        let mut altered = body.clone();
        altered[10] ^= 1;
        assert!(matches!(
            verify_event(
                &signed(&["s"], NOW, &body),
                &altered,
                &secrets(&["s"]),
                TOLERANCE,
                now()
            ),
            Err(WebhookError::Unauthorized(_))
        ));
        assert!(matches!(
            verify_event(&HeaderMap::new(), &body, &secrets(&["s"]), TOLERANCE, now()),
            Err(WebhookError::Unauthorized(ref r)) if r.contains("missing stripe-signature")
        ));
        assert!(matches!(
            verify_event(&signed(&[""], NOW, &body), &body, &secrets(&[""]), TOLERANCE, now()),
            Err(WebhookError::Unauthorized(ref r)) if r.contains("no webhook endpoint secret")
        ));
    }

    #[test]
    fn a_signed_body_that_is_not_an_event_is_malformed() {
        for body in [
            b"[]".to_vec(),
            json!({"id": "x", "object": "product", "created": 1, "type": "t", "data": {"object": {"id": "a"}}}).to_string().into_bytes(),
            json!({"id": "evt", "object": "event", "created": 1, "type": "t", "data": {"object": {}}}).to_string().into_bytes(),
        ] {
            let result = verify_event(&signed(&["s"], NOW, &body), &body, &secrets(&["s"]), TOLERANCE, now());
            assert!(matches!(result, Err(WebhookError::Malformed(_))), "{result:?}");
        }
    }

    #[test]
    fn only_a_deleted_object_makes_a_deletion() {
        let mut event: Event = serde_json::from_slice(&event()).unwrap();
        assert!(!event.deletes());
        event.kind = "product.deleted".into();
        assert!(
            event.deletes(),
            "Stripe's shape: the whole object, the type says it"
        );
        event.data.object = json!({"id": "prod_1", "object": "product", "deleted": true});
        assert!(event.deletes(), "the DELETE answer's shape");
        event.kind = "customer.subscription.deleted".into();
        event.data.object = json!({"id": "sub_1", "object": "subscription", "status": "canceled"});
        assert!(!event.deletes());
    }
}
