//! Providers: the clients acctor uses to pull deltas from the services that hold the
//! data, and to verify the webhooks they send. One module per provider; each implements
//! [`Provider`]. Error-code semantics (which errors mean "restart the loop", "the cursor
//! is gone", "retry later") are decided here, so the account actor only sees
//! [`ProviderError`]'s classification.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use http::HeaderMap;

use crate::domain::{AccessToken, ProviderKind, Transaction};

pub mod budget;
pub mod plaid;

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

/// A webhook whose signature has been verified and whose body has been parsed.
#[derive(Clone, Debug)]
pub struct VerifiedWebhook {
    /// The provider's id of the linked object (Plaid `item_id`).
    pub item_id: String,
    /// `WEBHOOK_TYPE/WEBHOOK_CODE`, e.g. `TRANSACTIONS/SYNC_UPDATES_AVAILABLE`.
    pub kind: String,
    /// Whether this event means the account's data changed and it should sync.
    pub triggers_sync: bool,
    /// The parsed body.
    pub body: serde_json::Value,
}

/// Why a provider call failed, classified for the sync loop.
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
    },
    /// The request did not complete (connect, reset, timeout).
    #[error("transport: {0}")]
    Transport(String),
    /// The answer could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
}

impl ProviderError {
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

    /// Data changed under the pagination: restart the loop from its first cursor.
    pub fn is_mutation_during_pagination(&self) -> bool {
        self.code() == plaid::wire::MUTATION_DURING_PAGINATION
    }

    /// The provider refused the call for sending too many requests (HTTP 429, or a
    /// rate-limit error object): the retry waits out the provider's window.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, ProviderError::Api { status, error_type, code, .. }
            if *status == 429
                || error_type == plaid::wire::RATE_LIMIT_EXCEEDED
                || code == plaid::wire::RATE_LIMIT_EXCEEDED
                || code == plaid::wire::TRANSACTIONS_SYNC_LIMIT)
    }

    /// A failure of this one call that the same call may not meet again: a server-side
    /// error (HTTP 5xx) or a request that did not complete. Not a rate limit (that one
    /// waits out the provider's window) nor any answer about the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ProviderError::Api { status, .. } => *status >= 500,
            ProviderError::Transport(_) => true,
            ProviderError::Decode(_) => false,
        }
    }

    /// The user must log in again at the provider (Plaid `ITEM_LOGIN_REQUIRED`): no
    /// retry can succeed until they do.
    pub fn is_login_required(&self) -> bool {
        self.code() == plaid::wire::ITEM_LOGIN_REQUIRED
    }

    /// The provider no longer accepts the stored cursor: reconcile and rebuild it.
    pub fn is_cursor_rejected(&self) -> bool {
        matches!(self, ProviderError::Api { code, message, .. }
            if code == plaid::wire::INVALID_FIELD && message.contains("cursor"))
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

/// A provider client: pulls deltas and verifies webhooks.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;

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

    /// Verifies a webhook's signature against the raw body, then parses it.
    async fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError>;
}

/// A shared provider client.
pub type DynProvider = Arc<dyn Provider>;
