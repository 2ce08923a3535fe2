//! The bank's HTTP client: the API key, the idempotency keys, the timeout and the
//! mapping of answers to [`ProviderError`]s. It checks what it decodes as far as the
//! caller relies on it (a decision carries its IBAN or is a rejection), so a bank that
//! answers nonsense is a `Decode` error here, not a surprise in the account-opening flow.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use super::errors;
use super::wire::{
    BankStatus, CardBody, CardRequest, IssuedCard, LegacyOpeningBody, OpeningAccepted,
    OpeningAcceptedBody, OpeningRequest, OpeningStatusBody, StatusReport, VIRTUAL_CARD,
};
use crate::providers::ProviderError;

/// The header carrying a call's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// What acctor asks of the bank.
#[async_trait]
pub trait BankApi: Send + Sync + 'static {
    /// Asynchronous opening: POST, answers at once with a tracking id. `request_id` is
    /// the Idempotency-Key: the same key gets the same tracking id.
    async fn open_account(
        &self,
        request_id: &str,
        request: &OpeningRequest,
    ) -> Result<OpeningAccepted, ProviderError>;

    /// Current status of an asynchronous opening.
    async fn opening_status(&self, tracking_id: &str) -> Result<StatusReport, ProviderError>;

    /// Legacy synchronous opening: blocks until the bank decides; answers COMPLETED
    /// (iban, bic) or REJECTED (reason). Same idempotency semantics.
    async fn open_account_sync(
        &self,
        request_id: &str,
        request: &OpeningRequest,
    ) -> Result<StatusReport, ProviderError>;

    /// Issues a virtual card; `step_id` is the Idempotency-Key: the same key returns the
    /// same card, never a second one.
    async fn issue_virtual_card(
        &self,
        step_id: &str,
        request: &CardRequest,
    ) -> Result<IssuedCard, ProviderError>;
}

/// How to reach the bank (or the sandbox bank).
#[derive(Clone)]
pub struct BankClientConfig {
    /// Base URL, e.g. `https://api.bank.example` or `{sandbox}/bank`.
    pub base_url: String,
    /// The API key, sent as `Authorization: Bearer`; never logged.
    pub api_key: String,
    /// Limit on every request, from connect to the last byte of the answer.
    pub timeout: Duration,
    /// Limit on a legacy synchronous opening, which waits for the bank's decision.
    pub legacy_timeout: Duration,
}

impl fmt::Debug for BankClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"***")
            .field("timeout", &self.timeout)
            .field("legacy_timeout", &self.legacy_timeout)
            .finish()
    }
}

/// The bank client. Cheap to share (`Arc` it once).
pub struct BankClient {
    http: reqwest::Client,
    base_url: reqwest::Url,
    legacy_timeout: Duration,
}

impl fmt::Debug for BankClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BankClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

fn config_error(reason: impl fmt::Display) -> ProviderError {
    ProviderError::Transport(format!("invalid bank client configuration: {reason}"))
}

impl BankClient {
    /// Builds a client. Fails (as `Transport`, like the Plaid client) on a base URL that
    /// is not http(s) or an API key that cannot be sent as a header.
    pub fn new(config: BankClientConfig) -> Result<BankClient, ProviderError> {
        let trimmed = config.base_url.trim_end_matches('/');
        let base_url = reqwest::Url::parse(trimmed)
            .map_err(|e| config_error(format!("base url {trimmed:?}: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
            return Err(config_error(format!(
                "base url {trimmed:?} must start with http:// or https://"
            )));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.api_key))
            .map_err(|_| config_error("api key is not a valid header value"))?;
        // Keeps the key out of HTTP/2 header compression tables and debug output.
        authorization.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, authorization);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("acctor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(config_error)?;
        Ok(BankClient {
            http,
            base_url,
            legacy_timeout: config.legacy_timeout,
        })
    }

    /// The URL of the path below the base, one segment per element, each escaped (a
    /// tracking id is the bank's text, not a path).
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Resp, ProviderError> {
        let (status, headers, body) = ProviderError::read_answer(what, request).await?;
        if !(200..300).contains(&status) {
            let err = errors::api_error(status, &headers, &body);
            debug!(
                call = what,
                status,
                code = err.code(),
                request_id = err.request_id().unwrap_or("-"),
                "bank call failed"
            );
            return Err(err);
        }
        serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Decode(format!("{what}: unexpected response: {e}")))
    }

    async fn post_idempotent<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        what: &'static str,
        segments: &[&str],
        key: &str,
        body: &Req,
    ) -> Result<Resp, ProviderError> {
        self.post_idempotent_within(what, segments, key, body, None)
            .await
    }

    /// [`Self::post_idempotent`] with its own limit instead of the client's.
    async fn post_idempotent_within<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        what: &'static str,
        segments: &[&str],
        key: &str,
        body: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, ProviderError> {
        if key.is_empty() {
            // The bank would refuse it; a call without a key could open twice on a retry.
            return Err(ProviderError::Transport(format!(
                "{what}: an idempotency key is required"
            )));
        }
        let mut request = self
            .http
            .post(self.url(segments))
            .header(IDEMPOTENCY_HEADER, key)
            .json(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        self.call(what, request).await
    }
}

fn decode_error(what: &str, reason: impl fmt::Display) -> ProviderError {
    ProviderError::Decode(format!("{what}: {reason}"))
}

/// Checks what a status means for its fields: a completed opening has an account.
fn check_report(what: &str, report: &StatusReport) -> Result<(), ProviderError> {
    let present = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    if report.status == BankStatus::Completed && !(present(&report.iban) && present(&report.bic)) {
        return Err(decode_error(what, "COMPLETED without iban and bic"));
    }
    Ok(())
}

#[async_trait]
impl BankApi for BankClient {
    async fn open_account(
        &self,
        request_id: &str,
        request: &OpeningRequest,
    ) -> Result<OpeningAccepted, ProviderError> {
        const WHAT: &str = "POST /v2/account-openings";
        let body: OpeningAcceptedBody = self
            .post_idempotent(WHAT, &["v2", "account-openings"], request_id, request)
            .await?;
        if body.tracking_id.is_empty() {
            return Err(decode_error(WHAT, "empty tracking_id"));
        }
        if body.request_id != request_id {
            return Err(decode_error(
                WHAT,
                "the answer is for another idempotency key",
            ));
        }
        Ok(OpeningAccepted {
            tracking_id: body.tracking_id,
            status: body.status,
        })
    }

    async fn opening_status(&self, tracking_id: &str) -> Result<StatusReport, ProviderError> {
        const WHAT: &str = "GET /v2/account-openings/{tracking_id}";
        let request = self
            .http
            .get(self.url(&["v2", "account-openings", tracking_id]));
        let body: OpeningStatusBody = self.call(WHAT, request).await?;
        if body.tracking_id != tracking_id {
            return Err(decode_error(WHAT, "the answer is for another opening"));
        }
        let report = StatusReport {
            tracking_id: body.tracking_id,
            status: body.status,
            iban: body.iban,
            bic: body.bic,
            reason: body.reason,
        };
        check_report(WHAT, &report)?;
        Ok(report)
    }

    async fn open_account_sync(
        &self,
        request_id: &str,
        request: &OpeningRequest,
    ) -> Result<StatusReport, ProviderError> {
        const WHAT: &str = "POST /v1/accounts";
        let body: LegacyOpeningBody = self
            .post_idempotent_within(
                WHAT,
                &["v1", "accounts"],
                request_id,
                request,
                Some(self.legacy_timeout),
            )
            .await?;
        if !body.status.is_terminal() {
            return Err(decode_error(
                WHAT,
                format!("the synchronous opening answered {}", body.status),
            ));
        }
        let report = StatusReport {
            tracking_id: String::new(),
            status: body.status,
            iban: body.iban,
            bic: body.bic,
            reason: body.reason,
        };
        check_report(WHAT, &report)?;
        Ok(report)
    }

    async fn issue_virtual_card(
        &self,
        step_id: &str,
        request: &CardRequest,
    ) -> Result<IssuedCard, ProviderError> {
        const WHAT: &str = "POST /v1/cards";
        let body = CardBody {
            customer_id: request.customer_id.clone(),
            iban: request.iban.clone(),
            card_type: VIRTUAL_CARD.to_owned(),
        };
        let card: IssuedCard = self
            .post_idempotent(WHAT, &["v1", "cards"], step_id, &body)
            .await?;
        if card.card_id.is_empty() {
            return Err(decode_error(WHAT, "empty card_id"));
        }
        Ok(card)
    }
}
