//! What each of the bank's error answers means ([`ErrorClass`]). The bank's codes are
//! few and its statuses are honest, so the class follows from the HTTP status alone:
//! the code is kept for people and logs, never branched on.
//!
//! - 5xx and 408: the bank (or something before it) failed this one call: `Transient`.
//! - 429: `RateLimited`, with the wait from `Retry-After` (delta seconds; an HTTP date
//!   or anything unreadable counts as "not said").
//! - any other status, 401/403 (a bad API key) and 400/404/409/422 (a bad request, an
//!   unknown opening, a reused idempotency key) included: `Permanent`, since the same
//!   call gets the same answer until someone fixes the cause.

use std::time::Duration;

use http::HeaderMap;

use super::wire::ErrorEnvelope;
use crate::providers::{ErrorClass, ProviderError};

/// The header carrying the bank's id of the request, for support tickets.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest slice of an undecodable error body kept in the error message.
const ERROR_SNIPPET_CHARS: usize = 200;

/// The class of a non-2xx answer with `status`.
pub fn classify(status: u16, retry_after: Option<Duration>) -> ErrorClass {
    match status {
        429 => ErrorClass::RateLimited { retry_after },
        408 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// The `error_type` recorded for a status (Stripe's families): what kind of failure it
/// is at a glance, in logs and incidents.
fn error_type(status: u16) -> &'static str {
    match status {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        408 | 500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// `Retry-After` as a wait, when it is delta seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A non-2xx answer as a classified [`ProviderError::Api`]: the bank's error object
/// when the body is one, else `http_<status>` with the start of the body.
pub fn api_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let (code, message) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => (envelope.error.code, envelope.error.message),
        Err(_) => (
            format!("http_{status}"),
            String::from_utf8_lossy(body)
                .chars()
                .take(ERROR_SNIPPET_CHARS)
                .collect(),
        ),
    };
    ProviderError::Api {
        status,
        error_type: error_type(status).to_owned(),
        code,
        message,
        request_id,
        class: classify(status, retry_after(headers)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn every_status_family_has_its_class() {
        for (status, expected) in [
            (500, ErrorClass::Transient),
            (502, ErrorClass::Transient),
            (503, ErrorClass::Transient),
            (408, ErrorClass::Transient),
            (401, ErrorClass::Permanent),
            (403, ErrorClass::Permanent),
            (400, ErrorClass::Permanent),
            (404, ErrorClass::Permanent),
            (409, ErrorClass::Permanent),
            (422, ErrorClass::Permanent),
        ] {
            assert_eq!(classify(status, None), expected, "{status}");
        }
    }

    #[test]
    fn the_error_object_request_id_and_retry_after_are_kept() {
        let body = br#"{"error": {"code": "rate_limited", "message": "slow down"}}"#;
        let err = api_error(
            429,
            &headers(&[("retry-after", "7"), ("x-request-id", "req_9")]),
            body,
        );
        match &err {
            ProviderError::Api {
                status,
                error_type,
                code,
                message,
                request_id,
                class,
            } => {
                assert_eq!(*status, 429);
                assert_eq!(error_type, "rate_limit_error");
                assert_eq!(code, "rate_limited");
                assert_eq!(message, "slow down");
                assert_eq!(request_id.as_deref(), Some("req_9"));
                assert_eq!(
                    *class,
                    ErrorClass::RateLimited {
                        retry_after: Some(Duration::from_secs(7))
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // An HTTP-date Retry-After is "not said", not a parse failure.
        let dated = api_error(
            429,
            &headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            body,
        );
        assert_eq!(dated.class(), ErrorClass::RateLimited { retry_after: None });
    }

    #[test]
    fn a_body_that_is_not_an_error_object_still_gives_a_classified_error() {
        let err = api_error(502, &HeaderMap::new(), b"<html>bad gateway</html>");
        assert_eq!(err.code(), "http_502");
        assert_eq!(err.class(), ErrorClass::Transient);
        assert!(err.to_string().contains("bad gateway"), "{err}");
        assert_eq!(err.request_id(), None);
    }
}
