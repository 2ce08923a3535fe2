//! The Stripe client: the per-account request budget every call waits for (backfill,
//! re-fetch, catch-up and pushes share it, so together they stay under Stripe's rate
//! limit), the API key and `Stripe-Account` headers, the timeout, and the mapping of
//! answers to [`ProviderError`]s.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tracing::debug;

use super::errors;
use super::wire::{Event, List};
use super::{ACCOUNT_HEADER, MAX_PAGE};
use crate::domain::stripe::{ObjectType, Window};
use crate::providers::budget::RequestBudget;
use crate::providers::ProviderError;

/// Whom a call is for: the key to send, the account it is about, whether that account
/// is a Connect account reached through its platform's key, and which budget it spends.
#[derive(Clone, Copy)]
pub struct StripeAccess<'a> {
    /// The API key (never logged).
    pub api_key: &'a str,
    /// `acct_…`: the budget's key, and `Stripe-Account` when `connect`.
    pub account: &'a str,
    /// Whether requests carry `Stripe-Account`.
    pub connect: bool,
    /// Live-mode key: the live budget.
    pub livemode: bool,
}

impl fmt::Debug for StripeAccess<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeAccess")
            .field("account", &self.account)
            .field("connect", &self.connect)
            .field("livemode", &self.livemode)
            .finish_non_exhaustive()
    }
}

/// One list call: a window of `created`, continued after an id.
#[derive(Clone, Debug)]
pub struct ListRequest<'a> {
    /// Objects created within it.
    pub window: Window,
    /// Continue after this id (Stripe's `starting_after`).
    pub starting_after: Option<&'a str>,
    /// Page size (at most 100).
    pub limit: u32,
}

/// An answer with Stripe's time when it answered (its `Date` header, in unix seconds):
/// the clock Stripe stamps events with, so a fetched object's stamp compares with
/// events' `created` on one clock, whatever acctor's own says.
#[derive(Clone, Debug)]
pub struct Fetched<T> {
    /// The answer.
    pub value: T,
    /// When Stripe answered, if it said.
    pub server_time: Option<i64>,
}

/// What acctor asks of Stripe. The client implements it against Stripe (or the
/// sandbox); tests script it.
#[async_trait]
pub trait StripeApi: Send + Sync + 'static {
    /// One page of `object_type`'s list endpoint.
    async fn list(
        &self,
        access: StripeAccess<'_>,
        object_type: ObjectType,
        request: ListRequest<'_>,
    ) -> Result<Fetched<List<Value>>, ProviderError>;

    /// One object as Stripe has it now; `None` when it does not exist (any more).
    async fn retrieve(
        &self,
        access: StripeAccess<'_>,
        object_type: ObjectType,
        id: &str,
    ) -> Result<Fetched<Option<Value>>, ProviderError>;

    /// One page of events created at or after `since`, newest first.
    async fn events(
        &self,
        access: StripeAccess<'_>,
        since: i64,
        starting_after: Option<&str>,
        limit: u32,
    ) -> Result<Fetched<List<Event>>, ProviderError>;

    /// Creates (`id` `None`: `POST /v1/{type}`) or updates (`POST /v1/{type}/{id}`) an
    /// object with `params`, form-encoded as Stripe takes them, under
    /// `idempotency_key`: the object as Stripe has it after the write.
    async fn write(
        &self,
        access: StripeAccess<'_>,
        object_type: ObjectType,
        id: Option<&str>,
        params: &Map<String, Value>,
        idempotency_key: &str,
    ) -> Result<Fetched<Value>, ProviderError>;
}

/// `params` as Stripe's form encoding: nested objects as `parent[key]`, lists as
/// `parent[0]`, booleans as `true`/`false`, `null` as the empty string (which unsets a
/// field at Stripe).
pub fn form_encode(params: &Map<String, Value>) -> Vec<(String, String)> {
    fn walk(name: String, value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    walk(format!("{name}[{key}]"), value, out);
                }
            }
            Value::Array(items) => {
                for (index, value) in items.iter().enumerate() {
                    walk(format!("{name}[{index}]"), value, out);
                }
            }
            Value::Null => out.push((name, String::new())),
            Value::String(text) => out.push((name, text.clone())),
            other => out.push((name, other.to_string())),
        }
    }
    let mut out = Vec::new();
    for (key, value) in params {
        walk(key.clone(), value, &mut out);
    }
    out
}

/// A shared Stripe API.
pub type DynStripeApi = Arc<dyn StripeApi>;

/// How to reach Stripe (or the sandbox) and how fast.
#[derive(Clone, Debug)]
pub struct StripeClientConfig {
    /// `https://api.stripe.com`, or `{sandbox}/stripe`.
    pub base_url: String,
    /// Limit on every request, from connect to the last byte.
    pub timeout: Duration,
    /// Requests per second per test-mode account (0: unlimited).
    pub test_rate: u32,
    /// Requests per second per live-mode account (0: unlimited).
    pub live_rate: u32,
}

/// The client. Cheap to share (`Arc` it once): one connection pool, one budget per
/// mode keyed by account.
pub struct StripeClient {
    http: reqwest::Client,
    base_url: reqwest::Url,
    test_budget: Option<RequestBudget>,
    live_budget: Option<RequestBudget>,
}

impl fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

fn config_error(reason: impl fmt::Display) -> ProviderError {
    ProviderError::Transport(format!("invalid stripe client configuration: {reason}"))
}

/// A budget of `per_second` requests, one at a time: spread evenly, so no one-second
/// window sees more than the rate even right after an idle spell.
fn budget(per_second: u32) -> Option<RequestBudget> {
    RequestBudget::new(per_second.saturating_mul(60), 1)
}

impl StripeClient {
    /// Builds a client; fails on a base URL that is not http(s).
    pub fn new(config: StripeClientConfig) -> Result<StripeClient, ProviderError> {
        let trimmed = config.base_url.trim_end_matches('/');
        let base_url = reqwest::Url::parse(trimmed)
            .map_err(|e| config_error(format!("base url {trimmed:?}: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
            return Err(config_error(format!(
                "base url {trimmed:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("acctor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(config_error)?;
        Ok(StripeClient {
            http,
            base_url,
            test_budget: budget(config.test_rate),
            live_budget: budget(config.live_rate),
        })
    }

    /// The budget's waits so far (test and live), for metrics.
    pub fn budget_waits(&self) -> u64 {
        self.test_budget.as_ref().map_or(0, RequestBudget::waits)
            + self.live_budget.as_ref().map_or(0, RequestBudget::waits)
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    /// A GET for `access`, after waiting for its budget.
    async fn get<Resp: DeserializeOwned>(
        &self,
        what: &'static str,
        access: StripeAccess<'_>,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Fetched<Resp>, ProviderError> {
        let request = self.http.get(self.url(segments)).query(query);
        self.send(what, access, request).await
    }

    /// Sends `request` for `access`, after waiting for its budget.
    async fn send<Resp: DeserializeOwned>(
        &self,
        what: &'static str,
        access: StripeAccess<'_>,
        request: reqwest::RequestBuilder,
    ) -> Result<Fetched<Resp>, ProviderError> {
        let budget = if access.livemode {
            &self.live_budget
        } else {
            &self.test_budget
        };
        if let Some(budget) = budget {
            budget.acquire(access.account).await;
        }
        let mut request = request.bearer_auth(access.api_key);
        if access.connect {
            request = request.header(ACCOUNT_HEADER, access.account);
        }
        let (status, headers, body) = ProviderError::read_answer(what, request).await?;
        if !(200..300).contains(&status) {
            let err = errors::api_error(status, &headers, &body);
            debug!(
                call = what,
                account = access.account,
                status,
                code = err.code(),
                request_id = err.request_id().unwrap_or("-"),
                "stripe call failed"
            );
            return Err(err);
        }
        let value = serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Decode(format!("{what}: unexpected response: {e}")))?;
        Ok(Fetched {
            value,
            server_time: server_time(&headers),
        })
    }
}

/// Stripe's `Date` header (an HTTP date) as unix seconds.
fn server_time(headers: &http::HeaderMap) -> Option<i64> {
    let text = headers.get(http::header::DATE)?.to_str().ok()?;
    chrono::DateTime::parse_from_rfc2822(text)
        .ok()
        .map(|at| at.timestamp())
}

#[async_trait]
impl StripeApi for StripeClient {
    async fn list(
        &self,
        access: StripeAccess<'_>,
        object_type: ObjectType,
        request: ListRequest<'_>,
    ) -> Result<Fetched<List<Value>>, ProviderError> {
        let mut query = vec![
            ("limit", request.limit.clamp(1, MAX_PAGE).to_string()),
            ("created[gte]", request.window.gte.to_string()),
            ("created[lt]", request.window.lt.to_string()),
        ];
        if let Some(after) = request.starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        // Without it, Stripe lists only subscriptions that have not ended.
        if object_type == ObjectType::Subscriptions {
            query.push(("status", "all".to_owned()));
        }
        self.get("list", access, &[object_type.as_str()], &query)
            .await
    }

    async fn retrieve(
        &self,
        access: StripeAccess<'_>,
        object_type: ObjectType,
        id: &str,
    ) -> Result<Fetched<Option<Value>>, ProviderError> {
        match self
            .get::<Value>("retrieve", access, &[object_type.as_str(), id], &[])
            .await
        {
            Ok(Fetched { value, server_time }) => {
                let deleted = value.get("deleted").and_then(Value::as_bool) == Some(true);
                Ok(Fetched {
                    value: (!deleted).then_some(value),
                    server_time,
                })
            }
            // Stripe's time is not at hand here; the caller stamps with its own clock.
            Err(error) if errors::is_resource_missing(&error) => Ok(Fetched {
                value: None,
                server_time: None,
            }),
            Err(error) => Err(error),
        }
    }

    async fn events(
        &self,
        access: StripeAccess<'_>,
        since: i64,
        starting_after: Option<&str>,
        limit: u32,
    ) -> Result<Fetched<List<Event>>, ProviderError> {
        let mut query = vec![
            ("limit", limit.clamp(1, MAX_PAGE).to_string()),
            ("created[gte]", since.to_string()),
        ];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        self.get("events", access, &["events"], &query).await
    }

    async fn write(
        &self,
        access: StripeAccess<'_>,
        object_type: ObjectType,
        id: Option<&str>,
        params: &Map<String, Value>,
        idempotency_key: &str,
    ) -> Result<Fetched<Value>, ProviderError> {
        let url = match id {
            Some(id) => self.url(&[object_type.as_str(), id]),
            None => self.url(&[object_type.as_str()]),
        };
        let request = self
            .http
            .post(url)
            .header(super::IDEMPOTENCY_HEADER, idempotency_key)
            .form(&form_encode(params));
        self.send("write", access, request).await
    }
}
