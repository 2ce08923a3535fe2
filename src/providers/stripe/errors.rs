//! What each of Stripe's error answers means ([`ErrorClass`]), per Stripe's error
//! documentation (docs.stripe.com/error-handling, /rate-limits):
//!
//! - `Stripe-Should-Retry: true` or `false` is Stripe saying whether the same request
//!   can succeed: it wins over the status (`Transient` or by status below).
//! - 429 (`rate_limit`, `lock_timeout`): `RateLimited`, waiting out `Retry-After` when
//!   sent (delta seconds).
//! - 409 (a concurrent request with the same idempotency key) and 5xx: `Transient`.
//! - 401 (the key is invalid or rolled): `AccessRevoked`: only new credentials help.
//! - 400, 402, 403 (a restricted key without the permission), 404, anything else:
//!   `Permanent`.

use std::time::Duration;

use http::HeaderMap;

use super::wire::ErrorEnvelope;
use crate::providers::{ErrorClass, ProviderError};

/// The header carrying Stripe's id of the request, for support tickets.
pub const REQUEST_ID_HEADER: &str = "request-id";
/// Stripe's own verdict on retrying.
pub const SHOULD_RETRY_HEADER: &str = "stripe-should-retry";

/// Longest slice of an undecodable error body kept in the error message.
const ERROR_SNIPPET_CHARS: usize = 200;

/// The class of a non-2xx answer.
pub fn classify(status: u16, headers: &HeaderMap) -> ErrorClass {
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if status == 429 {
        return ErrorClass::RateLimited { retry_after };
    }
    match headers
        .get(SHOULD_RETRY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => return ErrorClass::Transient,
        Some("false") if status >= 500 => return ErrorClass::Permanent,
        _ => {}
    }
    match status {
        409 | 500..=599 => ErrorClass::Transient,
        401 => ErrorClass::AccessRevoked,
        _ => ErrorClass::Permanent,
    }
}

/// A non-2xx answer as a classified [`ProviderError::Api`]: Stripe's error object when
/// the body is one, else `http_<status>` with the start of the body.
pub fn api_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let (error_type, code, message) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => (
            envelope.error.kind,
            envelope
                .error
                .code
                .unwrap_or_else(|| format!("http_{status}")),
            envelope.error.message.unwrap_or_default(),
        ),
        Err(_) => (
            "api_error".to_owned(),
            format!("http_{status}"),
            String::from_utf8_lossy(body)
                .chars()
                .take(ERROR_SNIPPET_CHARS)
                .collect(),
        ),
    };
    ProviderError::Api {
        status,
        error_type,
        code,
        message,
        request_id,
        class: classify(status, headers),
    }
}

/// Whether an error says the object does not exist (deleted or never was).
pub fn is_resource_missing(error: &ProviderError) -> bool {
    matches!(error, ProviderError::Api { status: 404, code, .. } if code == "resource_missing")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn statuses_map_to_classes_as_documented() {
        let none = HeaderMap::new();
        assert_eq!(classify(500, &none), ErrorClass::Transient);
        assert_eq!(classify(503, &none), ErrorClass::Transient);
        assert_eq!(classify(409, &none), ErrorClass::Transient);
        assert_eq!(classify(401, &none), ErrorClass::AccessRevoked);
        for status in [400, 402, 403, 404] {
            assert_eq!(classify(status, &none), ErrorClass::Permanent, "{status}");
        }
        assert_eq!(
            classify(429, &headers(&[("retry-after", "3")])),
            ErrorClass::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            classify(429, &none),
            ErrorClass::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn stripe_should_retry_overrides_the_status() {
        assert_eq!(
            classify(400, &headers(&[(SHOULD_RETRY_HEADER, "true")])),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(500, &headers(&[(SHOULD_RETRY_HEADER, "false")])),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn error_objects_and_garbage_both_become_api_errors() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such product: 'prod_x'","param":"id"}}"#;
        let error = api_error(404, &headers(&[(REQUEST_ID_HEADER, "req_9")]), body);
        assert!(is_resource_missing(&error));
        assert_eq!(error.request_id(), Some("req_9"));
        assert_eq!(error.code(), "resource_missing");
        let garbage = api_error(502, &HeaderMap::new(), b"<html>bad gateway</html>");
        assert_eq!(garbage.code(), "http_502");
        assert_eq!(garbage.class(), ErrorClass::Transient);
        assert!(!is_resource_missing(&garbage));
    }
}
