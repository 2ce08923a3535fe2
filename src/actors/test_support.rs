//! Test doubles shared by the actor tests (compiled for tests only).

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::NaiveDate;
use http::HeaderMap;

use crate::domain::{AccessToken, ProviderKind};
use crate::providers::{
    DeltaPage, Provider, ProviderError, VerifiedWebhook, WebhookError, WindowPage,
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
