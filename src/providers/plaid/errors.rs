//! What Plaid's errors mean: every answer acctor handles is given its [`ErrorClass`]
//! here, when the client builds the [`ProviderError`], so nothing outside this module
//! compares Plaid's `error_type` / `error_code` strings.
//!
//! The codes that say what to do come first (they are distinct, so their order among
//! themselves does not matter), then the rate limits, then the HTTP status. Plaid sends
//! each special code with a 4xx status, so the order only decides for answers Plaid does
//! not give (a 5xx carrying one of them): the code wins.

use super::wire;
use crate::providers::{ErrorClass, ProviderError};

/// The class of a Plaid error answer. Plaid sends no `Retry-After` header with its rate
/// limits (and the client does not read one), so `retry_after` is always `None`.
pub fn classify(status: u16, error_type: &str, code: &str, message: &str) -> ErrorClass {
    if code == wire::MUTATION_DURING_PAGINATION {
        return ErrorClass::RestartPagination;
    }
    if code == wire::ITEM_LOGIN_REQUIRED {
        return ErrorClass::LoginRequired;
    }
    // INVALID_FIELD is also any other bad field: only the cursor one is a rejected cursor.
    if code == wire::INVALID_FIELD && message.contains("cursor") {
        return ErrorClass::CursorRejected;
    }
    if status == 429
        || error_type == wire::RATE_LIMIT_EXCEEDED
        || code == wire::RATE_LIMIT_EXCEEDED
        || code == wire::TRANSACTIONS_SYNC_LIMIT
    {
        return ErrorClass::RateLimited { retry_after: None };
    }
    if ACCESS_REVOKED.contains(&code) {
        return ErrorClass::AccessRevoked;
    }
    if status >= 500 || error_type == INSTITUTION_ERROR || TRANSIENT_4XX.contains(&code) {
        return ErrorClass::Transient;
    }
    ErrorClass::Permanent
}

/// Codes that say the item cannot be used with this access token any more, whatever is
/// retried: the token is invalid or was revoked, the item was removed, or the user
/// withdrew consent or every account. Only a new link (Link's update mode or a new Item,
/// then a relink) helps. `INSTITUTION_NO_LONGER_SUPPORTED` is an institution error, but
/// final like these.
pub(crate) const ACCESS_REVOKED: [&str; 7] = [
    wire::INVALID_ACCESS_TOKEN,
    "ITEM_NOT_FOUND",
    "ACCESS_NOT_GRANTED",
    "USER_PERMISSION_REVOKED",
    "ITEM_NOT_SUPPORTED",
    "NO_ACCOUNTS",
    "INSTITUTION_NO_LONGER_SUPPORTED",
];

/// Plaid's `error_type` for an institution that is down or not answering (sent with a
/// 4xx status): Plaid's guidance is to try again later.
pub(crate) const INSTITUTION_ERROR: &str = "INSTITUTION_ERROR";

/// 4xx codes Plaid documents as "try again later": the data is not ready yet.
pub(crate) const TRANSIENT_4XX: [&str; 1] = ["PRODUCT_NOT_READY"];

/// A Plaid error answer as a [`ProviderError`], classified.
pub fn api_error(
    status: u16,
    error_type: String,
    code: String,
    message: String,
    request_id: Option<String>,
) -> ProviderError {
    let class = classify(status, &error_type, &code, &message);
    ProviderError::Api {
        status,
        error_type,
        code,
        message,
        request_id,
        class,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(status: u16, error_type: &str, code: &str, message: &str) -> ErrorClass {
        api_error(
            status,
            error_type.into(),
            code.into(),
            message.into(),
            Some("req".into()),
        )
        .class()
    }

    const RATE_LIMITED: ErrorClass = ErrorClass::RateLimited { retry_after: None };

    #[test]
    fn every_plaid_error_acctor_handles_has_its_class() {
        for (status, error_type, code, message, expected) in [
            (
                400,
                "ITEM_ERROR",
                "ITEM_LOGIN_REQUIRED",
                "login",
                ErrorClass::LoginRequired,
            ),
            (
                429,
                "RATE_LIMIT_EXCEEDED",
                "RATE_LIMIT_EXCEEDED",
                "slow down",
                RATE_LIMITED,
            ),
            // The type alone, or the code alone, is enough (whatever the status).
            (
                400,
                "RATE_LIMIT_EXCEEDED",
                "SOMETHING",
                "slow down",
                RATE_LIMITED,
            ),
            (
                400,
                "API_ERROR",
                "RATE_LIMIT_EXCEEDED",
                "slow down",
                RATE_LIMITED,
            ),
            (
                400,
                "TRANSACTIONS_ERROR",
                "TRANSACTIONS_SYNC_LIMIT",
                "per item",
                RATE_LIMITED,
            ),
            (429, "API_ERROR", "SOMETHING_ELSE", "busy", RATE_LIMITED),
            (429, "HTTP_ERROR", "HTTP_429", "<html>", RATE_LIMITED),
            (
                400,
                "TRANSACTIONS_ERROR",
                "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
                "changed",
                ErrorClass::RestartPagination,
            ),
            (
                400,
                "INVALID_INPUT",
                "INVALID_FIELD",
                "cursor not associated with access_token",
                ErrorClass::CursorRejected,
            ),
            (
                400,
                "INVALID_INPUT",
                "INVALID_FIELD",
                "count must be at most 500",
                ErrorClass::Permanent,
            ),
            (
                500,
                "API_ERROR",
                "INTERNAL_SERVER_ERROR",
                "oops",
                ErrorClass::Transient,
            ),
            (
                502,
                "HTTP_ERROR",
                "HTTP_502",
                "bad gateway",
                ErrorClass::Transient,
            ),
            (
                503,
                "API_ERROR",
                "PLANNED_MAINTENANCE",
                "later",
                ErrorClass::Transient,
            ),
            // The link itself is gone: only a relink helps.
            (
                400,
                "INVALID_INPUT",
                "INVALID_ACCESS_TOKEN",
                "bad token",
                ErrorClass::AccessRevoked,
            ),
            (
                400,
                "ITEM_ERROR",
                "ITEM_NOT_FOUND",
                "gone",
                ErrorClass::AccessRevoked,
            ),
            (
                400,
                "ITEM_ERROR",
                "USER_PERMISSION_REVOKED",
                "revoked",
                ErrorClass::AccessRevoked,
            ),
            (
                400,
                "INSTITUTION_ERROR",
                "INSTITUTION_NO_LONGER_SUPPORTED",
                "gone",
                ErrorClass::AccessRevoked,
            ),
            // Try again later, says Plaid, whatever the 4xx status.
            (
                400,
                "INSTITUTION_ERROR",
                "INSTITUTION_DOWN",
                "down",
                ErrorClass::Transient,
            ),
            (
                400,
                "INSTITUTION_ERROR",
                "INSTITUTION_NOT_RESPONDING",
                "slow",
                ErrorClass::Transient,
            ),
            (
                400,
                "ITEM_ERROR",
                "PRODUCT_NOT_READY",
                "not yet",
                ErrorClass::Transient,
            ),
            // Any other 4xx is about the request itself: bad keys, a bad field.
            (
                400,
                "INVALID_INPUT",
                "INVALID_API_KEYS",
                "bad keys",
                ErrorClass::Permanent,
            ),
            (
                400,
                "INVALID_REQUEST",
                "MISSING_FIELDS",
                "missing",
                ErrorClass::Permanent,
            ),
            (
                404,
                "HTTP_ERROR",
                "HTTP_404",
                "not found",
                ErrorClass::Permanent,
            ),
        ] {
            assert_eq!(
                class_of(status, error_type, code, message),
                expected,
                "{status} {error_type} {code} {message:?}"
            );
        }
    }

    #[test]
    fn transport_is_transient_and_decode_is_permanent() {
        assert_eq!(
            ProviderError::Transport("/transactions/sync: timed out".into()).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            ProviderError::Decode("/transactions/sync: unexpected response".into()).class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn a_special_code_wins_over_a_server_error_status() {
        assert_eq!(
            class_of(500, "ITEM_ERROR", "ITEM_LOGIN_REQUIRED", "login"),
            ErrorClass::LoginRequired
        );
        assert_eq!(
            class_of(503, "RATE_LIMIT_EXCEEDED", "X", "slow"),
            RATE_LIMITED
        );
    }
}
