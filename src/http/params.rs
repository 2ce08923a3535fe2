//! Query and path values: each rule written once, as the parser a handler calls (whose
//! refusal names the parameter in acctor's words) and as the schema `/openapi.json`
//! shows for it, side by side so the two are read and changed together.
//!
//! Lookup keys (account keys, item ids, owner ids, aliases, access tokens) are checked
//! by [`crate::service::accounts::check_key`]; the schema here describes that rule
//! exactly except for one thing JSON Schema cannot say: the limit is 256 *bytes* of
//! UTF-8, and `maxLength` counts characters.

use chrono::{DateTime, NaiveDate, Utc};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, Object, RefOr, Schema};

use super::ApiError;
use crate::domain::operations::OperationId;
use crate::domain::ProviderKind;
use crate::service::accounts::{MAX_ALIASES, MAX_KEY_LEN};

/// A 400 about query parameter `name`.
pub fn invalid(name: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_query", format!("{name}: {message}"))
}

/// A page size: absent means `default`, otherwise an integer from 1 to `max`.
pub fn limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    digits(text)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| invalid("limit", format!("must be an integer from 1 to {max}")))
}

/// `text` when it is only ASCII digits (no sign, no spaces: what an integer looks like
/// in a query string).
fn digits(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

/// One of `allowed` (absent: `None`).
pub fn one_of(
    name: &str,
    text: Option<&str>,
    allowed: &[&'static str],
) -> Result<Option<&'static str>, ApiError> {
    match text {
        None => Ok(None),
        Some(text) => allowed
            .iter()
            .copied()
            .find(|a| *a == text)
            .map(Some)
            .ok_or_else(|| invalid(name, format!("must be one of {}", allowed.join(", ")))),
    }
}

/// A calendar date, `YYYY-MM-DD`.
pub fn date(name: &str, text: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    text.map(|text| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .filter(|_| text.len() == 10)
            .ok_or_else(|| invalid(name, "must be a date, YYYY-MM-DD"))
    })
    .transpose()
}

/// An RFC 3339 time, e.g. `2024-05-01T12:00:00Z`.
pub fn time(name: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(|text| {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| invalid(name, "must be an RFC 3339 time, e.g. 2024-05-01T12:00:00Z"))
    })
    .transpose()
}

/// An operation id: `op_` and 32 hex digits (the canonical id; operations have no
/// aliases to resolve).
pub fn operation_id(name: &str, text: Option<&str>) -> Result<Option<OperationId>, ApiError> {
    text.map(|text| {
        OperationId::looks_canonical(text)
            .then(|| OperationId(text.to_string()))
            .ok_or_else(|| invalid(name, "must be an operation id: op_ and 32 hex digits"))
    })
    .transpose()
}

/// The schema of an operation id, described as `what`.
pub fn operation_id_schema_described(what: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(35))
        .max_length(Some(35))
        .pattern(Some("^op_[0-9a-f]{32}$"))
        .description(Some(format!("{what}: `op_` and 32 hex digits.")))
        .build()
}

/// The names of the providers acctor knows.
pub fn provider_names() -> Vec<&'static str> {
    [ProviderKind::Plaid, ProviderKind::Stripe]
        .iter()
        .map(|p| p.as_str())
        .collect()
}

/// A provider name.
pub fn provider(name: &str, text: Option<&str>) -> Result<Option<ProviderKind>, ApiError> {
    let names = provider_names();
    Ok(one_of(name, text, &names)?.and_then(ProviderKind::parse))
}

/// Control characters (what `char::is_control` matches: Unicode category Cc).
const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f";
/// Whitespace that is not a control character (the rest of Rust's `char::is_whitespace`).
const SPACE: &str = "\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// The schema of a free-text field of at most `max` characters: what
/// `service::operations::check_text` accepts (something besides whitespace, no control
/// character).
pub fn text_schema(description: &str, max: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(key_pattern()))
        .description(Some(description))
        .build()
}

/// The schema of an email address as the services check it: a free-text field with
/// an `@` (the `@` is the "something besides whitespace").
pub fn email_schema(description: &str, max: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(format!("^[^{CONTROL}]*@[^{CONTROL}]*$")))
        .description(Some(description))
        .build()
}

/// The schema of a market: two upper-case letters; [`crate::http::openapi`] narrows it
/// to the configured `operations.markets` when the document is built.
pub fn market_schema(description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(MARKET_PATTERN))
        .description(Some(description))
        .build()
}

/// The pattern a market schema carries until the document narrows it to an enum.
pub const MARKET_PATTERN: &str = "^[A-Z]{2}$";

/// The pattern of a lookup key: no control character, and something besides
/// whitespace (`check_key`'s rule).
pub fn key_pattern() -> String {
    format!("^[^{CONTROL}]*[^{CONTROL}{SPACE}][^{CONTROL}]*$")
}

/// The schema of a lookup key or token, described as `what`.
pub fn key_schema_described(what: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_KEY_LEN))
        .pattern(Some(key_pattern()))
        .description(Some(format!(
            "{what}. At most {MAX_KEY_LEN} bytes of UTF-8, no control characters, not \
             only whitespace."
        )))
        .build()
}

/// The `key` path parameter of the account routes.
pub fn account_key_schema() -> Object {
    key_schema_described("Account id, alias, item id or owner id")
}

/// The `aliases` field of a link request.
pub fn aliases_schema() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(key_schema_described(
            "A lookup key, e.g. an email (not shaped like an account id: `acc_` and 32 hex \
             digits); repeats are dropped",
        ))
        .max_items(Some(MAX_ALIASES))
        .description(Some(format!(
            "Extra lookup keys, e.g. an email (at most {MAX_ALIASES})."
        )))
        .build()
        .into()
}

/// The schema of a provider name.
pub fn provider_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(provider_names()))
        .description(Some("A provider acctor knows (and is configured for)."))
        .build()
}

/// The schema of an access token: a lookup key's rule, never returned.
pub fn access_token_schema() -> Object {
    let mut schema = key_schema_described("The provider access token (stored, never returned)");
    schema.format = Some(SchemaFormat::KnownFormat(KnownFormat::Password));
    schema
}

/// The schema of a `limit` parameter from 1 to `max`, `default` when absent.
pub fn limit_schema(default: usize, max: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(max as f64))
        .default(Some(default.into()))
        .description(Some(format!("Page size, 1 to {max} (default {default}).")))
        .build()
}

/// The schema of a string parameter that takes one of `values`.
pub fn enum_schema(values: &[&str], description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.to_vec()))
        .description(Some(description))
        .build()
}

/// The schema of a `YYYY-MM-DD` date.
pub fn date_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
        .build()
}

/// The schema of an RFC 3339 time.
pub fn time_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_refused_in_our_words_naming_the_parameter() {
        assert_eq!(limit(None, 50, 500).unwrap(), 50);
        assert_eq!(limit(Some("500"), 50, 500).unwrap(), 500);
        for bad in [
            "0",
            "501",
            "abc",
            "-1",
            "+5",
            " 5",
            "1.0",
            "",
            "99999999999999999999999",
        ] {
            let error = limit(Some(bad), 50, 500).unwrap_err();
            assert_eq!(
                error.message, "limit: must be an integer from 1 to 500",
                "{bad:?}"
            );
        }
        assert_eq!(
            one_of("sort", Some("size"), &["id", "lag"])
                .unwrap_err()
                .message,
            "sort: must be one of id, lag"
        );
        assert_eq!(
            date("start_date", Some("2024-1-1")).unwrap_err().message,
            "start_date: must be a date, YYYY-MM-DD"
        );
        assert!(date("start_date", Some("2024-02-29")).unwrap().is_some());
        assert!(time("since", Some("yesterday"))
            .unwrap_err()
            .message
            .starts_with("since: "));
        assert_eq!(
            provider("provider", Some("plaid")).unwrap(),
            Some(ProviderKind::Plaid)
        );
    }

    #[test]
    fn the_key_pattern_is_the_services_rule_in_ecma_syntax() {
        // The pattern lists the same characters `char::is_control` and
        // `char::is_whitespace` do, so the document and check_key agree.
        let listed_controls = ['\u{0}', '\u{1f}', '\u{7f}', '\u{9f}'];
        assert!(listed_controls.iter().all(|c| c.is_control()));
        for c in [
            '\u{20}', '\u{a0}', '\u{1680}', '\u{2000}', '\u{200a}', '\u{2028}', '\u{2029}',
            '\u{202f}', '\u{205f}', '\u{3000}',
        ] {
            assert!(c.is_whitespace() && !c.is_control(), "{c:?}");
        }
        let whitespace_not_listed: Vec<char> = (0..=0x10ffff_u32)
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace() && !c.is_control())
            .filter(|c| {
                !matches!(
                    *c,
                    '\u{20}' | '\u{a0}' | '\u{1680}' | '\u{2000}'
                        ..='\u{200a}'
                            | '\u{2028}'
                            | '\u{2029}'
                            | '\u{202f}'
                            | '\u{205f}'
                            | '\u{3000}'
                )
            })
            .collect();
        assert!(
            whitespace_not_listed.is_empty(),
            "{whitespace_not_listed:?}"
        );
        let controls_not_listed: Vec<char> = (0..=0x10ffff_u32)
            .filter_map(char::from_u32)
            .filter(|c| c.is_control())
            .filter(|c| !matches!(*c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
            .collect();
        assert!(controls_not_listed.is_empty(), "{controls_not_listed:?}");
    }
}
