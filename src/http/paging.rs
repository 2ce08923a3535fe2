//! Page tokens: what every paged endpoint hands out as `next` and reads back as `after`,
//! in one place.
//!
//! A token is a small, readable position (an account id, `YYYY-MM-DD|transaction id`,
//! an incident id), not an encrypted blob: every string the document's `pattern`
//! allows is a position the server can continue after, so a schema-driven client (or
//! fuzzer) never builds a "valid" token the server then refuses. Each kind has one
//! grammar, written once here as the decoder and as the pattern `/openapi.json`
//! publishes; anything outside it is a `400` saying `after: not a page token returned
//! by this endpoint`, never a silently empty page. A well-formed position that no
//! longer exists is the endpoint's business (keyset pages simply continue after it).

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::Object;

use super::ApiError;
use crate::domain::AccountId;

/// The longest token any endpoint reads (a date, a bar and a 256-character id).
const MAX_TOKEN_CHARS: usize = 10 + 1 + 256;

/// One kind of page token: its grammar, both as code and as the documented pattern.
pub trait PageToken: Sized {
    /// The ECMA-262 pattern every token of this kind matches, and nothing else does.
    const PATTERN: &'static str;
    /// What the token is, for the parameter's description.
    const DESCRIPTION: &'static str;
    /// The most characters a token of this kind has.
    const MAX_CHARS: usize;

    /// The token for this position (what `next` says).
    fn encode(&self) -> String;

    /// The position `text` names, or `None` when `text` is outside the grammar.
    fn decode(text: &str) -> Option<Self>;
}

/// A position in account-id order (`GET /v1/accounts`, `GET /debug/actors`): the last
/// account id of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterAccount(pub AccountId);

impl PageToken for AfterAccount {
    const PATTERN: &'static str = "^acc_[0-9a-fA-F]{32}$";
    const DESCRIPTION: &'static str = "The previous page's `next`: the last account id it held";
    const MAX_CHARS: usize = 36;

    fn encode(&self) -> String {
        self.0.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        AccountId::looks_canonical(text).then(|| AfterAccount(AccountId(text.to_string())))
    }
}

/// A position in (date, transaction id) order: `YYYY-MM-DD|id`, the store's own key
/// order, so any such string is a valid exclusive lower bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterTransaction(pub String);

impl PageToken for AfterTransaction {
    const PATTERN: &'static str =
        "^[0-9]{4}-[0-9]{2}-[0-9]{2}\\|[^\\u0000-\\u001f\\u007f-\\u009f]{1,256}$";
    const DESCRIPTION: &'static str =
        "The previous page's `next`: `YYYY-MM-DD|<transaction id>` of the last row it held";
    const MAX_CHARS: usize = MAX_TOKEN_CHARS;

    fn encode(&self) -> String {
        self.0.clone()
    }

    fn decode(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let date_shaped = bytes.len() > 11
            && bytes[..10].iter().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    *b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
            && bytes[10] == b'|';
        if !date_shaped {
            return None;
        }
        // The first 11 bytes are ASCII, so byte 11 is a character boundary.
        let id = &text[11..];
        let id_chars = id.chars().count();
        let fits = (1..=256).contains(&id_chars) && !id.chars().any(char::is_control);
        fits.then(|| AfterTransaction(text.to_string()))
    }
}

/// A position in incident order (newest first): the last incident id of the previous
/// page, in decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterIncident(pub u64);

impl PageToken for AfterIncident {
    // 19 digits always fit a u64; the ids are far below that.
    const PATTERN: &'static str = "^[0-9]{1,19}$";
    const DESCRIPTION: &'static str = "The previous page's `next`: the last incident id it held";
    const MAX_CHARS: usize = 19;

    fn encode(&self) -> String {
        self.0.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(AfterIncident)
    }
}

/// A position in operation order (newest first): the last operation id of the
/// previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterOperation(pub crate::domain::operations::OperationId);

impl PageToken for AfterOperation {
    const PATTERN: &'static str = "^op_[0-9a-f]{32}$";
    const DESCRIPTION: &'static str = "The previous page's `next`: the last operation id it held";
    const MAX_CHARS: usize = 35;

    fn encode(&self) -> String {
        self.0.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        crate::domain::operations::OperationId::looks_canonical(text)
            .then(|| AfterOperation(crate::domain::operations::OperationId(text.to_string())))
    }
}

/// A position in a Stripe object list (by id): the last object id of the previous
/// page. Stripe's ids are letters, digits and underscores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterObject(pub String);

impl PageToken for AfterObject {
    const PATTERN: &'static str = "^[0-9A-Za-z_]{1,255}$";
    const DESCRIPTION: &'static str = "The previous page's `next`: the last object id it held";
    const MAX_CHARS: usize = 255;

    fn encode(&self) -> String {
        self.0.clone()
    }

    fn decode(text: &str) -> Option<Self> {
        let fits = (1..=255).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        fits.then(|| AfterObject(text.to_string()))
    }
}

/// A position in an account's push queue: the last change id of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterPush(pub u64);

impl PageToken for AfterPush {
    const PATTERN: &'static str = "^push_[0-9]{1,19}$";
    const DESCRIPTION: &'static str = "The previous page's `next`: the last change id it held";
    const MAX_CHARS: usize = 24;

    fn encode(&self) -> String {
        format!("push_{}", self.0)
    }

    fn decode(text: &str) -> Option<Self> {
        parse_push_id(text).map(AfterPush)
    }
}

/// The number of a change id (`push_12`), when `text` is one.
pub fn parse_push_id(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("push_")?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A position in an object's audit trail: the last entry's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterEntry(pub u64);

impl PageToken for AfterEntry {
    const PATTERN: &'static str = "^[0-9]{1,19}$";
    const DESCRIPTION: &'static str = "The previous page's `next`: the last entry's number";
    const MAX_CHARS: usize = 19;

    fn encode(&self) -> String {
        self.0.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        let fits = (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
        fits.then(|| text.parse().ok().map(AfterEntry)).flatten()
    }
}

/// The schema of a push queue page token.
pub fn after_push_schema() -> Object {
    after_schema::<AfterPush>()
}

/// The schema of an audit trail page token.
pub fn after_entry_schema() -> Object {
    after_schema::<AfterEntry>()
}

/// The schema of a Stripe object page token.
pub fn after_object_schema() -> Object {
    after_schema::<AfterObject>()
}

/// The schema of an operation page token.
pub fn after_operation_schema() -> Object {
    after_schema::<AfterOperation>()
}

/// Reads the `after` parameter: `None` when absent, a 400 naming it when it is not a
/// token of kind `T`.
pub fn read_after<T: PageToken>(after: Option<&str>) -> Result<Option<T>, ApiError> {
    match after {
        None => Ok(None),
        Some(text) => T::decode(text).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "after: not a page token returned by this endpoint",
            )
        }),
    }
}

/// The documented schema of an `after` parameter of kind `T`.
pub fn after_schema<T: PageToken>() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(T::PATTERN))
        .min_length(Some(1))
        .max_length(Some(T::MAX_CHARS))
        .description(Some(format!(
            "{}. Anything else is refused with 400.",
            T::DESCRIPTION
        )))
        .build()
}

/// [`after_schema`] for [`AfterAccount`] (a plain `fn` for `#[param(schema_with)]`).
pub fn after_account_schema() -> Object {
    after_schema::<AfterAccount>()
}

/// [`after_schema`] for [`AfterTransaction`].
pub fn after_transaction_schema() -> Object {
    after_schema::<AfterTransaction>()
}

/// [`after_schema`] for [`AfterIncident`].
pub fn after_incident_schema() -> Object {
    after_schema::<AfterIncident>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_the_server_issues_round_trip() {
        let account = AfterAccount(AccountId::generate());
        assert_eq!(AfterAccount::decode(&account.encode()), Some(account));
        let row = AfterTransaction("2024-02-29|txn_Ab9-x.y z".to_string());
        assert_eq!(AfterTransaction::decode(&row.encode()), Some(row));
        for id in [0, 1, 42, u64::from(u32::MAX), 999_999_999_999_999_999] {
            let incident = AfterIncident(id);
            assert_eq!(AfterIncident::decode(&incident.encode()), Some(incident));
        }
    }

    #[test]
    fn garbage_and_other_endpoints_tokens_are_refused() {
        for text in [
            "",
            "garbage",
            "acc_",
            "acc_xyz",
            "-1",
            "1.5",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(AfterIncident::decode(text), None, "{text:?}");
            assert_eq!(AfterAccount::decode(text), None, "{text:?}");
            assert_eq!(AfterTransaction::decode(text), None, "{text:?}");
        }
        let account = AccountId::generate().to_string();
        assert_eq!(AfterIncident::decode(&account), None);
        assert_eq!(AfterTransaction::decode(&account), None);
        assert_eq!(AfterAccount::decode("2024-01-01|txn"), None);
        assert_eq!(AfterTransaction::decode("2024-01-01|"), None);
        assert_eq!(AfterTransaction::decode("2024-01-01|a\nb"), None);
        assert_eq!(AfterTransaction::decode("2024/01/01|txn"), None);
        let error = read_after::<AfterIncident>(Some("garbage")).unwrap_err();
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(
            error.message,
            "after: not a page token returned by this endpoint"
        );
        assert_eq!(read_after::<AfterIncident>(None).unwrap(), None);
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic_and_decoded_tokens_reencode(text in any::<String>()) {
            if let Some(t) = AfterAccount::decode(&text) { prop_assert_eq!(t.encode(), text.clone()); }
            if let Some(t) = AfterTransaction::decode(&text) { prop_assert_eq!(t.encode(), text.clone()); }
            if let Some(t) = AfterIncident::decode(&text) {
                prop_assert_eq!(AfterIncident::decode(&t.encode()), Some(t));
            }
        }

        #[test]
        fn every_issued_transaction_token_round_trips(
            year in 0u32..=9999, month in 1u32..=12, day in 1u32..=31,
            id in "[^\\p{Cc}]{1,256}",
        ) {
            let token = AfterTransaction(format!("{year:04}-{month:02}-{day:02}|{id}"));
            prop_assert_eq!(AfterTransaction::decode(&token.encode()), Some(token));
        }

        #[test]
        fn every_issued_incident_token_round_trips(id in 0u64..10_000_000_000_000_000_000) {
            prop_assert_eq!(AfterIncident::decode(&AfterIncident(id).encode()), Some(AfterIncident(id)));
        }

        #[test]
        fn strings_near_the_grammar_never_panic(text in "[0-9|a-f_-]{0,40}") {
            let _ = AfterAccount::decode(&text);
            let _ = AfterTransaction::decode(&text);
            let _ = AfterIncident::decode(&text);
        }
    }
}
