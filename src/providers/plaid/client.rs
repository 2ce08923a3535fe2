//! The Plaid HTTP client: credentials, timeouts, error mapping and the conversion of
//! Plaid's transactions into [`Transaction`]s kept verbatim.
//!
//! Transactions are decoded as raw JSON objects, not as [`wire::PlaidTransaction`]: the
//! local copy must equal Plaid's, including fields this code has never heard of, so only
//! `transaction_id` and `date` are read out and the whole object is stored as is.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use futures::FutureExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::errors;
use super::keys::{KeyCache, KeyFetcher};
use super::verify::WebhookVerifier;
use super::webhooks;
use super::wire;
use crate::domain::{AccessToken, ProviderKind, Transaction};
use crate::providers::budget::RequestBudget;
use crate::providers::{
    CursorSource, DeltaPage, Provider, ProviderError, VerifiedWebhook, WebhookAction, WebhookError,
    WindowPage,
};

/// Longest slice of an undecodable error body kept in the error message.
const ERROR_SNIPPET_CHARS: usize = 200;

/// How to reach Plaid (or the sandbox bank) and what to accept from it.
#[derive(Clone)]
pub struct PlaidClientConfig {
    /// Base URL, e.g. `https://production.plaid.com` or the sandbox's address.
    pub base_url: String,
    /// Plaid `client_id`.
    pub client_id: String,
    /// Plaid `secret`; sent only in requests, never logged.
    pub secret: SecretString,
    /// Limit on every request, from connect to the last byte of the answer.
    pub request_timeout: Duration,
    /// Oldest (and furthest in the future) webhook `iat` accepted.
    pub max_webhook_age: Duration,
}

impl fmt::Debug for PlaidClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaidClientConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .field("secret", &"***")
            .field("request_timeout", &self.request_timeout)
            .field("max_webhook_age", &self.max_webhook_age)
            .finish()
    }
}

/// The part of the client that makes requests; shared with the key fetches, which
/// outlive the call that started them.
struct Http {
    client: reqwest::Client,
    base_url: String,
    client_id: String,
    secret: SecretString,
}

/// A Plaid client: delta pages, reconcile windows, sandbox linking and webhook
/// verification. Cheap to share (`Arc` it once).
pub struct PlaidClient {
    http: Arc<Http>,
    verifier: WebhookVerifier,
    /// Client-side budget of `/transactions/sync` per item (`None`: unlimited).
    sync_budget: Option<Arc<RequestBudget>>,
}

impl fmt::Debug for PlaidClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaidClient")
            .field("base_url", &self.http.base_url)
            .field("client_id", &self.http.client_id)
            .finish_non_exhaustive()
    }
}

fn config_error(reason: String) -> ProviderError {
    ProviderError::Transport(format!("invalid plaid client configuration: {reason}"))
}

impl PlaidClient {
    /// Builds a client. Fails (as `Transport`) on a base URL that is not http(s) or
    /// credentials that cannot be sent as headers.
    pub fn new(config: PlaidClientConfig) -> Result<PlaidClient, ProviderError> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(config_error(format!(
                "base url {base_url:?} must start with http:// or https://"
            )));
        }
        let mut headers = HeaderMap::new();
        let client_id = HeaderValue::from_str(&config.client_id)
            .map_err(|_| config_error("client id is not a valid header value".to_owned()))?;
        let mut secret = HeaderValue::from_str(config.secret.expose_secret())
            .map_err(|_| config_error("secret is not a valid header value".to_owned()))?;
        // Keeps the value out of HTTP/2 header compression tables and debug output.
        secret.set_sensitive(true);
        headers.insert(HeaderName::from_static("plaid-client-id"), client_id);
        headers.insert(HeaderName::from_static("plaid-secret"), secret);
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("acctor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| config_error(e.to_string()))?;
        let http = Arc::new(Http {
            client,
            base_url,
            client_id: config.client_id,
            secret: config.secret,
        });

        let fetch_http = Arc::clone(&http);
        let fetcher: KeyFetcher = Arc::new(move |key_id: String| {
            let http = Arc::clone(&fetch_http);
            async move {
                let request = wire::WebhookVerificationKeyGetRequest {
                    credentials: http.credentials(),
                    key_id,
                };
                let response: wire::WebhookVerificationKeyGetResponse =
                    http.post("/webhook_verification_key/get", &request).await?;
                Ok(response.key)
            }
            .boxed()
        });
        let max_age_secs = i64::try_from(config.max_webhook_age.as_secs()).unwrap_or(i64::MAX);
        Ok(PlaidClient {
            http,
            verifier: WebhookVerifier::new(KeyCache::new(fetcher), max_age_secs),
            sync_budget: None,
        })
    }

    /// Puts every `/transactions/sync` call behind `budget`, keyed by item (its access
    /// token), so a busy item waits for budget instead of being answered 429.
    pub fn with_sync_budget(mut self, budget: Arc<RequestBudget>) -> PlaidClient {
        self.sync_budget = Some(budget);
        self
    }

    /// The sync budget, if any (its wait counter is a metric).
    pub fn sync_budget(&self) -> Option<&Arc<RequestBudget>> {
        self.sync_budget.as_ref()
    }

    /// Sandbox-only linking helper: `/sandbox/public_token/create` then
    /// `/item/public_token/exchange`. Returns the new item's id and access token.
    pub async fn sandbox_link_item(
        &self,
        institution_id: &str,
        webhook: Option<&str>,
    ) -> Result<(String, AccessToken), ProviderError> {
        let create = wire::SandboxPublicTokenCreateRequest {
            credentials: self.http.credentials(),
            institution_id: institution_id.to_owned(),
            initial_products: vec!["transactions".to_owned()],
            options: webhook.map(|url| wire::SandboxPublicTokenCreateOptions {
                webhook: Some(url.to_owned()),
                ..Default::default()
            }),
        };
        let created: wire::SandboxPublicTokenCreateResponse = self
            .http
            .post("/sandbox/public_token/create", &create)
            .await?;
        let exchange = wire::ItemPublicTokenExchangeRequest {
            credentials: self.http.credentials(),
            public_token: created.public_token,
        };
        let exchanged: wire::ItemPublicTokenExchangeResponse = self
            .http
            .post("/item/public_token/exchange", &exchange)
            .await?;
        Ok((exchanged.item_id, AccessToken::new(exchanged.access_token)))
    }

    /// [`Provider::verify_webhook`] as of `now_unix` (unix seconds) instead of the clock:
    /// for tests and replays of recorded webhooks.
    pub async fn verify_webhook_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<VerifiedWebhook, WebhookError> {
        self.verifier.verify_at(headers, body, now_unix).await
    }

    /// The webhook verifier (tests observe the key cache through it).
    #[cfg(test)]
    pub(crate) fn verifier(&self) -> &WebhookVerifier {
        &self.verifier
    }
}

impl Http {
    /// Credentials for the request body too: Plaid accepts either place, and a server
    /// that only reads one of them still authenticates us.
    fn credentials(&self) -> wire::Credentials {
        wire::Credentials {
            client_id: Some(self.client_id.clone()),
            secret: Some(self.secret.expose_secret().to_owned()),
        }
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &'static str,
        request: &Req,
    ) -> Result<Resp, ProviderError> {
        let url = format!("{}{}", self.base_url, path);
        let response = self
            .client
            .post(url)
            .json(request)
            .send()
            .await
            .map_err(|e| ProviderError::transport(path, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ProviderError::transport(path, &e))?;
        let answer = read_answer(path, status.as_u16(), &body);
        if let Err(err @ ProviderError::Api { .. }) = &answer {
            debug!(
                path,
                status = status.as_u16(),
                code = err.code(),
                request_id = err.request_id().unwrap_or("-"),
                "plaid call failed"
            );
        }
        answer
    }
}

/// Reads an answer: a non-2xx status is a classified [`api_error`], a 2xx body must
/// decode as `Resp`.
fn read_answer<Resp: DeserializeOwned>(
    path: &str,
    status: u16,
    body: &[u8],
) -> Result<Resp, ProviderError> {
    if !(200..300).contains(&status) {
        return Err(api_error(status, body));
    }
    serde_json::from_slice(body)
        .map_err(|e| ProviderError::Decode(format!("{path}: unexpected response: {e}")))
}

/// Maps a non-2xx answer: Plaid's error object when it is one, else `HTTP_<status>`;
/// classified either way.
fn api_error(status: u16, body: &[u8]) -> ProviderError {
    match serde_json::from_slice::<wire::PlaidError>(body) {
        Ok(err) => errors::api_error(
            status,
            err.error_type,
            err.error_code,
            err.error_message,
            Some(err.request_id).filter(|id| !id.is_empty()),
        ),
        Err(_) => errors::api_error(
            status,
            "HTTP_ERROR".to_owned(),
            format!("HTTP_{status}"),
            String::from_utf8_lossy(body)
                .chars()
                .take(ERROR_SNIPPET_CHARS)
                .collect(),
            None,
        ),
    }
}

/// `/transactions/sync` response with the rows kept as raw JSON.
#[derive(Deserialize)]
struct SyncResponse {
    added: Vec<serde_json::Value>,
    modified: Vec<serde_json::Value>,
    removed: Vec<wire::RemovedTransaction>,
    next_cursor: String,
    has_more: bool,
    request_id: String,
}

/// `/transactions/get` response with the rows kept as raw JSON.
#[derive(Deserialize)]
struct GetResponse {
    transactions: Vec<serde_json::Value>,
    total_transactions: u64,
    request_id: String,
}

/// Reads `transaction_id` and `date` out of a Plaid transaction and keeps the whole object.
fn to_transaction(
    body: serde_json::Value,
    list: &str,
    index: usize,
) -> Result<Transaction, ProviderError> {
    let field = |name: &str| {
        body.get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| ProviderError::Decode(format!("{list}[{index}] has no string {name}")))
    };
    let id = field("transaction_id")?.to_owned();
    let date_text = field("date")?;
    let date = NaiveDate::parse_from_str(date_text, "%Y-%m-%d").map_err(|_| {
        ProviderError::Decode(format!(
            "{list}[{index}] date {date_text:?} is not YYYY-MM-DD"
        ))
    })?;
    Ok(Transaction { id, date, body })
}

fn to_transactions(
    rows: Vec<serde_json::Value>,
    list: &str,
) -> Result<Vec<Transaction>, ProviderError> {
    rows.into_iter()
        .enumerate()
        .map(|(index, row)| to_transaction(row, list, index))
        .collect()
}

#[async_trait]
impl Provider for PlaidClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Plaid
    }

    async fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        let now = chrono::Utc::now().timestamp();
        self.verifier.verify_at(headers, body, now).await
    }

    fn action_of(&self, kind: &str, body: &serde_json::Value) -> WebhookAction {
        webhooks::action_of(kind, body)
    }

    /// Plaid counts anything but exactly 200 as a failed delivery.
    fn ack_status(&self) -> StatusCode {
        StatusCode::OK
    }
}

#[async_trait]
impl CursorSource for PlaidClient {
    async fn sync_page(
        &self,
        token: &AccessToken,
        cursor: Option<&str>,
        count: u32,
    ) -> Result<DeltaPage, ProviderError> {
        if let Some(budget) = &self.sync_budget {
            budget.acquire(token.expose()).await;
        }
        let request = wire::TransactionsSyncRequest {
            credentials: self.http.credentials(),
            access_token: token.expose().to_owned(),
            cursor: cursor.map(str::to_owned),
            count: Some(count),
        };
        let response: SyncResponse = self.http.post("/transactions/sync", &request).await?;
        delta_page(response)
    }

    async fn window_page(
        &self,
        token: &AccessToken,
        start: NaiveDate,
        end: NaiveDate,
        offset: u64,
        count: u32,
    ) -> Result<WindowPage, ProviderError> {
        let request = wire::TransactionsGetRequest {
            credentials: self.http.credentials(),
            access_token: token.expose().to_owned(),
            start_date: start.format("%Y-%m-%d").to_string(),
            end_date: end.format("%Y-%m-%d").to_string(),
            options: Some(wire::TransactionsGetOptions {
                count: Some(count),
                offset: Some(offset),
                account_ids: None,
            }),
        };
        let response: GetResponse = self.http.post("/transactions/get", &request).await?;
        window_page(response)
    }
}

/// A `/transactions/sync` answer as a [`DeltaPage`]: every row must carry its id and
/// a `YYYY-MM-DD` date.
fn delta_page(response: SyncResponse) -> Result<DeltaPage, ProviderError> {
    Ok(DeltaPage {
        added: to_transactions(response.added, "added")?,
        modified: to_transactions(response.modified, "modified")?,
        removed: response
            .removed
            .into_iter()
            .map(|removed| removed.transaction_id)
            .collect(),
        next_cursor: response.next_cursor,
        has_more: response.has_more,
        request_id: response.request_id,
    })
}

/// A `/transactions/get` answer as a [`WindowPage`].
fn window_page(response: GetResponse) -> Result<WindowPage, ProviderError> {
    Ok(WindowPage {
        transactions: to_transactions(response.transactions, "transactions")?,
        total: response.total_transactions,
        request_id: response.request_id,
    })
}

#[cfg(test)]
#[path = "client_fuzz.rs"]
mod fuzz;
