//! Test doubles shared by the actor tests (compiled for tests only).

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::NaiveDate;
use http::HeaderMap;

use crate::domain::{AccessToken, ProviderKind, Transaction};
use crate::providers::{
    CursorSource, DeltaPage, ErrorClass, Provider, ProviderError, VerifiedWebhook, WebhookError,
    WindowPage,
};

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
