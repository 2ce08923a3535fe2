//! The bank's wire types: what goes over HTTP in each direction, shared by acctor's
//! client and the sandbox bank that plays the bank in tests, so the two cannot drift
//! apart silently. The public types are what callers of [`super::BankApi`] see; the
//! `pub(crate)` ones are envelopes only the client and the sandbox read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The statuses on the wire are the domain's (`INITIATED`, `IN_PROGRESS`, `COMPLETED`,
/// `REJECTED`): one type, so the client, the verifier and the operations agree.
pub use crate::domain::operations::BankStatus;

impl From<StatusReport> for crate::domain::operations::ReportedStatus {
    /// What an answer reports, as the operation's state machine reads it (the tracking
    /// id is the operation's already).
    fn from(report: StatusReport) -> Self {
        crate::domain::operations::ReportedStatus {
            status: report.status,
            iban: report.iban,
            bic: report.bic,
            reason: report.reason,
        }
    }
}

/// The accepted wire names, comma-separated, for error messages.
pub(crate) fn accepted_statuses() -> String {
    BankStatus::ALL
        .iter()
        .map(|status| status.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An application for an account, as both opening APIs take it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpeningRequest {
    /// acctor's id of the customer the account is for.
    pub customer_id: String,
    /// The market (country) the account is opened in, e.g. `NL`.
    pub market: String,
    /// The customer segment, e.g. `retail` or `sme`.
    pub segment: String,
    /// The account holder's legal name.
    pub legal_name: String,
    /// The holder's e-mail address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The company registration number, for business segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_number: Option<String>,
}

/// The bank's receipt for an asynchronous opening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpeningAccepted {
    /// The bank's id of the opening, to ask for its status and to match webhooks.
    pub tracking_id: String,
    /// The status at the time of the answer (`INITIATED` for a new opening).
    pub status: BankStatus,
}

/// Where an opening stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// The bank's id of the opening (empty for a legacy synchronous opening, which has
    /// none on the wire).
    pub tracking_id: String,
    /// Its status.
    pub status: BankStatus,
    /// The account's IBAN, once `COMPLETED`.
    pub iban: Option<String>,
    /// The account's BIC, once `COMPLETED`.
    pub bic: Option<String>,
    /// Why the bank declined, when `REJECTED` and it said.
    pub reason: Option<String>,
}

/// A virtual card for an opened account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardRequest {
    /// acctor's id of the customer the card is for.
    pub customer_id: String,
    /// The account the card draws on.
    pub iban: String,
}

/// A card the bank issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCard {
    /// The bank's id of the card.
    pub card_id: String,
    /// The last four digits of its number.
    pub last4: String,
}

/// `POST /v2/account-openings` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpeningAcceptedBody {
    pub tracking_id: String,
    pub request_id: String,
    pub status: BankStatus,
}

/// `GET /v2/account-openings/{tracking_id}` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpeningStatusBody {
    pub tracking_id: String,
    pub request_id: String,
    pub status: BankStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/accounts` answer: the decision, without a tracking id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LegacyOpeningBody {
    pub status: BankStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The only card type the bank issues through this API.
pub(crate) const VIRTUAL_CARD: &str = "virtual";

/// `POST /v1/cards` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CardBody {
    pub customer_id: String,
    pub iban: String,
    #[serde(rename = "type")]
    pub card_type: String,
}

/// A status webhook's body. `status` stays text here so that an unknown status can be
/// reported as such instead of as a generic decoding error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WebhookBody {
    pub event_id: String,
    pub tracking_id: String,
    pub request_id: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
    #[serde(default)]
    pub simulated: bool,
}

/// The error envelope of every non-2xx answer: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub error: ErrorObject,
}

/// The error object itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorObject {
    pub code: String,
    pub message: String,
}

/// Error codes the bank answers with (the sandbox uses them; the client only passes
/// them through in [`crate::providers::ProviderError::Api`]).
pub(crate) mod codes {
    /// 422: the idempotency key was used before with a different body.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    /// 404: no such opening.
    pub const NOT_FOUND: &str = "not_found";
    /// 401: no `Authorization: Bearer` header.
    pub const MISSING_API_KEY: &str = "missing_api_key";
    /// 401: the API key is not the bank's.
    pub const INVALID_API_KEY: &str = "invalid_api_key";
    /// 400: the body is not a valid request.
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// 400: a call that needs an `Idempotency-Key` came without one.
    pub const MISSING_IDEMPOTENCY_KEY: &str = "missing_idempotency_key";
    /// 429: too many requests.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 500: the bank failed.
    pub const INTERNAL_ERROR: &str = "internal_error";
    /// 503: the bank is unavailable for a moment.
    pub const SERVICE_UNAVAILABLE: &str = "service_unavailable";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_wire_names() {
        for status in BankStatus::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<BankStatus>(&json).unwrap(), status);
            assert_eq!(BankStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(BankStatus::parse("in_progress"), None);
        assert_eq!(BankStatus::parse("DONE"), None);
        assert!(BankStatus::Completed.is_terminal());
        assert!(BankStatus::Rejected.is_terminal());
        assert!(!BankStatus::Initiated.is_terminal());
        assert!(!BankStatus::InProgress.is_terminal());
    }

    #[test]
    fn optional_request_fields_are_left_out_when_absent() {
        let request = OpeningRequest {
            customer_id: "c".into(),
            market: "NL".into(),
            segment: "retail".into(),
            legal_name: "A B".into(),
            email: None,
            registration_number: None,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"customer_id": "c", "market": "NL", "segment": "retail", "legal_name": "A B"})
        );
    }
}
