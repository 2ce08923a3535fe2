//! Test doubles of provider plugins shared by the sync and actor tests (compiled for
//! tests only). They live with `providers/` so that `sync/` tests use them without
//! reaching up into `actors/`.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::NaiveDate;
use http::HeaderMap;

use crate::domain::{AccessToken, ProviderKind, Transaction};
use crate::providers::{
    CursorSource, DeltaPage, ErrorClass, Provider, ProviderError, VerifiedWebhook, WebhookError,
    WindowPage,
};
use crate::providers::{DeadlineKind, WebhookAction};

/// A provider with no data that answers at once and counts its delta calls: every
/// delta is one empty page, so the only time that passes in a test is the actors' own.
#[derive(Default)]
pub(crate) struct EmptyProvider {
    /// `/transactions/sync` calls so far.
    pub(crate) syncs: AtomicU64,
}

#[async_trait]
impl Provider for EmptyProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Plaid
    }

    async fn verify_webhook(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        Err(WebhookError::Malformed(
            "not used in actor tests".to_string(),
        ))
    }

    fn action_of(&self, kind: &str, body: &serde_json::Value) -> WebhookAction {
        test_action(kind, body)
    }
}

#[async_trait]
impl CursorSource for EmptyProvider {
    async fn sync_page(
        &self,
        _token: &AccessToken,
        _cursor: Option<&str>,
        _count: u32,
    ) -> Result<DeltaPage, ProviderError> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(DeltaPage {
            added: vec![],
            modified: vec![],
            removed: vec![],
            next_cursor: "cursor-empty".to_string(),
            has_more: false,
            request_id: "req".to_string(),
        })
    }

    async fn window_page(
        &self,
        _token: &AccessToken,
        _start: NaiveDate,
        _end: NaiveDate,
        _offset: u64,
        _count: u32,
    ) -> Result<WindowPage, ProviderError> {
        Ok(WindowPage {
            transactions: vec![],
            total: 0,
            request_id: "req".to_string(),
        })
    }
}

/// Webhook kinds as the test doubles speak them: a provider-neutral stand-in for a real
/// plugin's bodies (see [`test_action`]), so the actor tests exercise the actors, not a
/// provider's format (the Plaid plugin's reading is tested in `providers::plaid`).
pub(crate) mod hooks {
    /// Data changed.
    pub(crate) const SYNC: &str = "test/sync";
    /// The user must log in again; the body may carry a `request_id`.
    pub(crate) const LOGIN_REQUIRED: &str = "test/login_required";
    /// The user logged in again.
    pub(crate) const LOGIN_REPAIRED: &str = "test/login_repaired";
    /// Consent expires; the body may carry a `deadline` (RFC 3339) and a `reason`.
    pub(crate) const EXPIRATION: &str = "test/expiration";
    /// The connection goes away; the body may carry a `deadline` and a `reason`.
    pub(crate) const DISCONNECT: &str = "test/disconnect";
}

/// The doubles' code for "the user must log in again", in errors and webhooks alike.
pub(crate) const LOGIN_REQUIRED: &str = "LOGIN_REQUIRED";
/// The doubles' code of an announced consent expiration.
pub(crate) const EXPIRATION_CODE: &str = "EXPIRATION";
/// The doubles' code of an announced disconnection.
pub(crate) const DISCONNECT_CODE: &str = "DISCONNECT";

/// What a test webhook (see [`hooks`]) asks for.
pub(crate) fn test_action(kind: &str, body: &serde_json::Value) -> WebhookAction {
    let text = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let deadline = |kind, code: &str| WebhookAction::DeadlineAnnounced {
        kind,
        code: code.to_owned(),
        deadline: text("deadline")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
        reason: text("reason"),
    };
    match kind {
        hooks::SYNC => WebhookAction::Sync,
        hooks::LOGIN_REQUIRED => WebhookAction::LoginRequired {
            code: LOGIN_REQUIRED.to_owned(),
            request_id: text("request_id"),
        },
        hooks::LOGIN_REPAIRED => WebhookAction::LoginRepaired,
        hooks::EXPIRATION => deadline(DeadlineKind::Expiration, EXPIRATION_CODE),
        hooks::DISCONNECT => deadline(DeadlineKind::Disconnect, DISCONNECT_CODE),
        _ => WebhookAction::Ignore,
    }
}

/// What a [`FnProvider`] answers a delta call with, given the cursor.
type SyncFn = dyn Fn(Option<&str>) -> Result<DeltaPage, ProviderError> + Send + Sync;
/// What a [`FnProvider`] answers a window listing with.
type WindowFn = dyn Fn() -> Result<WindowPage, ProviderError> + Send + Sync;

/// A provider whose answers are plain functions of the request, for tests that script
/// one interleaving (a delta by cursor, one window page holding everything).
pub(crate) struct FnProvider {
    sync: Box<SyncFn>,
    window: Box<WindowFn>,
}

impl FnProvider {
    /// Answers deltas with `sync` and window listings with `window`.
    pub(crate) fn new(
        sync: impl Fn(Option<&str>) -> Result<DeltaPage, ProviderError> + Send + Sync + 'static,
        window: impl Fn() -> Result<WindowPage, ProviderError> + Send + Sync + 'static,
    ) -> FnProvider {
        FnProvider {
            sync: Box::new(sync),
            window: Box::new(window),
        }
    }
}

/// One final delta page adding `rows`, ending at `cursor`.
pub(crate) fn delta(rows: Vec<Transaction>, cursor: &str) -> DeltaPage {
    DeltaPage {
        added: rows,
        modified: vec![],
        removed: vec![],
        next_cursor: cursor.to_string(),
        has_more: false,
        request_id: "req".to_string(),
    }
}

/// One window page holding all of `rows`.
pub(crate) fn window(rows: Vec<Transaction>) -> WindowPage {
    WindowPage {
        total: rows.len() as u64,
        transactions: rows,
        request_id: "req".to_string(),
    }
}

/// A provider's answer to a cursor it does not accept.
pub(crate) fn cursor_rejected() -> ProviderError {
    ProviderError::Api {
        status: 400,
        error_type: "INVALID_INPUT".to_string(),
        code: "CURSOR_REJECTED".to_string(),
        message: "cursor not recognized".to_string(),
        request_id: Some("req-cursor".to_string()),
        class: ErrorClass::CursorRejected,
    }
}

#[async_trait]
impl Provider for FnProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Plaid
    }

    async fn verify_webhook(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
    ) -> Result<VerifiedWebhook, WebhookError> {
        Err(WebhookError::Malformed(
            "not used in actor tests".to_string(),
        ))
    }

    fn action_of(&self, kind: &str, body: &serde_json::Value) -> WebhookAction {
        test_action(kind, body)
    }
}

#[async_trait]
impl CursorSource for FnProvider {
    async fn sync_page(
        &self,
        _token: &AccessToken,
        cursor: Option<&str>,
        _count: u32,
    ) -> Result<DeltaPage, ProviderError> {
        (self.sync)(cursor)
    }

    async fn window_page(
        &self,
        _token: &AccessToken,
        _start: NaiveDate,
        _end: NaiveDate,
        _offset: u64,
        _count: u32,
    ) -> Result<WindowPage, ProviderError> {
        (self.window)()
    }
}
