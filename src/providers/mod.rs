//! Providers: the clients acctor uses to pull deltas from the services that hold the
//! data, and to verify the webhooks they send. One module per provider; each implements
//! [`Provider`]. Error-code semantics (which errors mean "restart the loop", "the cursor
//! is gone", "retry later") are decided by each provider's module, which gives every
//! [`ProviderError`] its [`ErrorClass`]: the actors only ever see the class.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use crate::domain::{AccessToken, ProviderKind, Transaction};

pub mod bank;
pub mod budget;
pub mod plaid;
pub mod signature;
pub mod stripe;
#[cfg(test)]
pub(crate) mod test_support;

/// One page of a cursor delta.
#[derive(Clone, Debug)]
pub struct DeltaPage {
    /// New rows, in ascending modification order.
    pub added: Vec<Transaction>,
    /// Changed rows, in ascending modification order.
    pub modified: Vec<Transaction>,
    /// Ids of removed rows.
    pub removed: Vec<String>,
    /// Cursor to pass for the next page (or to store once `has_more` is false).
    pub next_cursor: String,
    /// Whether more pages follow.
    pub has_more: bool,
    /// The provider's request id.
    pub request_id: String,
}

/// One page of a date-window listing (Plaid `/transactions/get`).
#[derive(Clone, Debug)]
pub struct WindowPage {
    /// Rows in this page.
    pub transactions: Vec<Transaction>,
    /// Total rows in the window.
    pub total: u64,
    /// The provider's request id.
    pub request_id: String,
}

/// What a verified webhook means, whatever the provider: which linked object it is
/// about, which key makes a repeat of it a duplicate, and what acctor should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEffect {
    /// The routing key: the provider's id of the linked object (a Plaid `item_id`),
    /// resolved to an account by the store's item/alias index.
    pub external_id: String,
    /// The dedup key: the same key within the dedup TTL is the same event.
    pub dedup_key: [u8; 32],
    /// What the event asks for.
    pub action: WebhookAction,
}

/// What a webhook asks acctor to do. The actions of later providers come here with the
/// code that acts on them: applying an object event (Stripe's objects) and setting an
/// operation's status (a long-running operation's outcome).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookAction {
    /// The linked object's data changed: sync it.
    Sync,
    /// The user must log in again at the provider: park the account until they do.
    LoginRequired {
        /// The provider's code for it, recorded on the mark and its incident.
        code: String,
        /// The provider's request id of the error, when the webhook carried one.
        request_id: Option<String>,
    },
    /// The user logged in again: unpark the account and lift any announced deadline.
    LoginRepaired,
    /// The provider announced when access ends.
    DeadlineAnnounced {
        /// Consent expiring, or the connection going away.
        kind: DeadlineKind,
        /// The provider's code for it, recorded on the account and its incident.
        code: String,
        /// When access ends, when the provider said.
        deadline: Option<DateTime<Utc>>,
        /// The provider's reason, when it gave one.
        reason: Option<String>,
    },
    /// Nothing to act on beyond the sync every webhook nudges: kept in the inbox all the
    /// same, and consumed by the account's next sync.
    Ignore,
}

/// What kind of end of access a provider announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineKind {
    /// The user's consent expires.
    Expiration,
    /// The connection will stop working (e.g. an institution migration).
    Disconnect,
}

/// A webhook whose signature has been verified and whose body has been parsed: what it
/// means, and the event as the inbox keeps it (its kind and body, which
/// [`Provider::action_of`] reads again when the account's actor gets to it).
#[derive(Clone, Debug)]
pub struct VerifiedWebhook {
    /// What it means.
    pub effect: WebhookEffect,
    /// The provider's name for the event, e.g. `TRANSACTIONS/SYNC_UPDATES_AVAILABLE`.
    pub kind: String,
    /// The parsed body.
    pub body: serde_json::Value,
}

/// The dedup key of a provider whose events carry no id of their own: same provider,
/// same linked object, same bytes, same event.
pub fn body_dedup_key(provider: ProviderKind, external_id: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(provider.as_str().as_bytes());
    hasher.update([0u8]);
    hasher.update(external_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(body);
    hasher.finalize().into()
}

/// What a failed provider call means for whoever made it: the provider's own codes
/// are mapped to these by its plugin, so the actors and the sync loop never read a
/// provider's error codes.
///
/// How each class is handled today (see `sync::plaid` and `actors::account`):
/// `Transient` is retried in place by the page loop, then like any failure by the
/// account's backoff; `RateLimited` waits at least `actors.rate_limit_backoff`;
/// `LoginRequired` parks the account; `CursorRejected` reconciles (on a delta sync);
/// `RestartPagination` restarts the pagination loop. `AccessRevoked` and `Permanent`
/// stop retries at once: the account is marked (`access_revoked` / `failed`) with an
/// incident saying what a human must do, since the same call would get the same answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// This one call failed (server error, no answer): the same call may succeed.
    Transient,
    /// Too many requests: wait out the provider's window before the next try.
    RateLimited {
        /// How long the provider asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// The user must log in again at the provider: no retry can succeed until they do.
    LoginRequired,
    /// The provider no longer accepts the stored cursor: reconcile and rebuild it.
    CursorRejected,
    /// Data changed under the pagination: restart the loop from its first cursor.
    RestartPagination,
    /// The provider no longer accepts this link at all (the access token is invalid or
    /// revoked, the item is gone): only a new link (a relink with a new access token)
    /// can help.
    AccessRevoked,
    /// An answer about the request itself (a client error, bad API keys, an
    /// undecodable answer): the same call gets the same answer until someone fixes the
    /// cause.
    Permanent,
}

/// Why a provider call failed. [`ProviderError::class`] says what it means.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an error object.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Provider error type (Plaid `error_type`).
        error_type: String,
        /// Provider error code (Plaid `error_code`).
        code: String,
        /// Provider message.
        message: String,
        /// Provider request id.
        request_id: Option<String>,
        /// What it means, decided by the provider's plugin when it built the error.
        class: ErrorClass,
    },
    /// The request did not complete (connect, reset, timeout).
    #[error("transport: {0}")]
    Transport(String),
    /// The answer could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
}

impl ProviderError {
    /// A request to a provider that did not complete, described without its URL or any
    /// header (they can carry secrets): `what` names the call, then what failed and the
    /// chain of causes.
    pub fn transport(what: &str, err: &reqwest::Error) -> ProviderError {
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else if err.is_builder() {
            "request could not be built"
        } else {
            "request failed"
        };
        let mut detail = String::new();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        ProviderError::Transport(format!("{what}: {kind}{detail}"))
    }

    /// Sends `request` and reads the whole answer: its status, headers and body. A
    /// request that does not complete (or whose body does not arrive) is
    /// [`ProviderError::transport`]; what the status means is the caller's.
    pub async fn read_answer(
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, HeaderMap, bytes::Bytes), ProviderError> {
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::transport(what, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| ProviderError::transport(what, &e))?;
        Ok((status, headers, body))
    }

    /// The provider's error code, or a short code for transport and decode failures.
    pub fn code(&self) -> &str {
        match self {
            ProviderError::Api { code, .. } => code,
            ProviderError::Transport(_) => "TRANSPORT_ERROR",
            ProviderError::Decode(_) => "DECODE_ERROR",
        }
    }

    /// The provider's request id, when there was one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ProviderError::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// What the failure means. A request that did not complete is transient whatever
    /// the provider; an answer that could not be decoded would not decode the next time
    /// either.
    pub fn class(&self) -> ErrorClass {
        match self {
            ProviderError::Api { class, .. } => *class,
            ProviderError::Transport(_) => ErrorClass::Transient,
            ProviderError::Decode(_) => ErrorClass::Permanent,
        }
    }
}

/// Why a webhook was refused. Each maps to one HTTP status in the webhook handler.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookError {
    /// Missing or invalid signature, wrong algorithm, stale timestamp, body hash
    /// mismatch: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// Signature fine but the body is not a webhook we understand: 400.
    #[error("{0}")]
    Malformed(String),
    /// The verification key could not be fetched from the provider: 503 (the provider
    /// retries; nothing is acknowledged).
    #[error("{0}")]
    KeyUnavailable(String),
}

/// A provider plugin: what every provider offers acctor, whatever its data looks like.
/// Its webhooks are verified and read here; its failures carry an [`ErrorClass`]
/// (see [`ProviderError::class`]). How its data is pulled is a separate capability:
/// [`CursorSource`] for providers with a cursor delta (Plaid).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;

    /// Verifies a webhook's signature against the raw body, then parses it.
    async fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError>;

    /// What a stored event asks for, from its `kind` and `body` as
    /// [`Provider::verify_webhook`] returned them: the same reading the webhook got when
    /// it arrived, so the inbox keeps the event itself, not an interpretation of it.
    fn action_of(&self, kind: &str, body: &serde_json::Value) -> WebhookAction;

    /// The status that acknowledges a webhook once it is on disk: a 2xx, 200 unless the
    /// provider wants another.
    fn ack_status(&self) -> StatusCode {
        StatusCode::OK
    }
}

/// A provider whose data is pulled as a cursor delta plus a date-window listing (Plaid's
/// `/transactions/sync` and `/transactions/get`): what the cursor sync strategy in
/// `sync::plaid` needs. A provider without a cursor implements [`Provider`] only.
#[async_trait]
pub trait CursorSource: Provider {
    /// One page of changes since `cursor` (`None`: from the beginning).
    async fn sync_page(
        &self,
        token: &AccessToken,
        cursor: Option<&str>,
        count: u32,
    ) -> Result<DeltaPage, ProviderError>;

    /// One page of the rows dated within `[start, end]`.
    async fn window_page(
        &self,
        token: &AccessToken,
        start: NaiveDate,
        end: NaiveDate,
        offset: u64,
        count: u32,
    ) -> Result<WindowPage, ProviderError>;
}

/// A shared provider plugin (the webhook route finds it by kind).
pub type DynProvider = Arc<dyn Provider>;

/// A shared cursor source (the account actors sync through it).
pub type DynCursorSource = Arc<dyn CursorSource>;
