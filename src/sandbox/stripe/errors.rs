//! Stripe's error answers, as the sandbox sends them: `{"error": {"type", "code"?,
//! "message", "param"?}}` (the `providers::stripe::wire` envelope) with Stripe's status,
//! and the headers that go with some of them (`Retry-After` on a 429,
//! `Stripe-Should-Retry` on a 500). The messages copy the wording of Stripe's, because
//! client libraries and people match on them.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::providers::stripe::errors::SHOULD_RETRY_HEADER;
use crate::providers::stripe::wire::{ErrorEnvelope, ErrorObject};

/// An error answer. Handlers return it with `?`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// `sk_test_abcd…wxyz` as Stripe prints it in errors: the prefix and the last four.
pub(super) fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: None,
            message: message.into(),
            param: None,
            headers: Vec::new(),
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// The same error with `code`.
    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The same error naming `param`.
    pub fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    fn header(mut self, name: &'static str, value: impl ToString) -> ApiError {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((HeaderName::from_static(name), value));
        }
        self
    }

    /// A parameter the endpoint does not take.
    pub fn unknown_parameter(param: &str) -> ApiError {
        ApiError::invalid(format!("Received unknown parameter: {param}"))
            .code("parameter_unknown")
            .param(param)
    }

    /// A required parameter left out.
    pub fn missing(param: &str) -> ApiError {
        ApiError::invalid(format!("Missing required param: {param}."))
            .code("parameter_missing")
            .param(param)
    }

    /// A parameter that is not an integer (or out of its range: `message`).
    pub fn invalid_integer(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::invalid(message)
            .code("parameter_invalid_integer")
            .param(param)
    }

    /// An id that names nothing: 404 on the object's own path, 400 as a parameter.
    pub fn no_such(object_name: &str, id: &str, param: &str, status: StatusCode) -> ApiError {
        let mut error = ApiError::invalid(format!("No such {object_name}: '{id}'"))
            .code("resource_missing")
            .param(param);
        error.status = status;
        error
    }

    /// No API key sent.
    pub fn no_key() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.",
        )
    }

    /// A key no account has.
    pub fn invalid_key(key: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            format!("Invalid API Key provided: {}", mask_key(key)),
        )
    }

    /// `Stripe-Account` naming an account the key may not act on.
    pub fn no_access(key: &str, account: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            format!(
                "The provided key '{}' does not have access to account '{account}' (or that account does not exist). Application access may have been revoked.",
                mask_key(key)
            ),
        )
    }

    /// A 429 (`rate_limit`) asking to wait `retry_after_secs`.
    pub fn rate_limited(retry_after_secs: u64) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
        )
        .code("rate_limit")
        .header("retry-after", retry_after_secs)
    }

    /// A 500 `api_error` that a retry may fix.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "An unknown error occurred while processing your request. Please try again.",
        )
        .header(SHOULD_RETRY_HEADER, "true")
    }

    /// An idempotency key reused with other parameters or on another endpoint.
    pub fn idempotency_mismatch(key: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."),
        )
    }

    /// A path (or method) the API does not have.
    pub fn unrecognized(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/."),
        )
    }

    /// The admin API's answer to an account it does not know.
    pub fn unknown_account(account: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No such account: '{account}'"),
        )
        .code("resource_missing")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorEnvelope {
            error: ErrorObject {
                kind: self.kind.to_owned(),
                code: self.code.map(str::to_owned),
                message: Some(self.message),
                param: self.param,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked_like_stripe_does() {
        assert_eq!(mask_key("sk_test_abcdefghijklmnop"), "sk_test_****mnop");
        assert_eq!(mask_key("short"), "*****");
    }
}
