//! Sync strategies: what one sync of one account means for its provider. A strategy
//! reads the account's provider through its plugin ([`crate::providers`]), writes what
//! it fetched to the [`crate::store`] in one transaction at the end, and reports back.
//! It never talks to actors: the account actor's sync task calls it, with everything
//! it needs passed in (the cursor source, the store, the tunables, a progress counter),
//! so a strategy is tested with a store in a temp dir and a scripted provider, no actor
//! in sight. Arrows point down: `actors/` → `sync/` → `providers/`, `store/`.
//!
//! This module holds what every strategy shares with the actor that runs it: how a sync
//! ends ([`SyncReport`], [`SyncError`]) and how it shows progress while it runs
//! ([`SyncProgress`]). The strategies themselves live one per provider:
//!
//! - [`plaid`]: the cursor loop over `/transactions/sync`, restarted on mutation during
//!   pagination, and the reconcile path when the provider rejects the stored cursor.
//!
//! [`SyncError`] keeps the two failures only a cursor strategy can produce
//! (`TooManyRestarts`, `UnstableWindow`): the actor classifies failures by
//! [`SyncError::class`] and [`SyncError::code`], never by variant, so a new strategy
//! adds variants without the actor noticing. The tunables ([`plaid::SyncParams`]) are
//! Plaid's (page sizes of its two endpoints, its reconcile window) and stay with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::domain::SyncOutcome;
use crate::providers::{ErrorClass, ProviderError};
use crate::store::StoreError;

pub mod bank;
pub mod plaid;
pub mod stripe;

/// What a committed sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// The outcome recorded on the account.
    pub outcome: SyncOutcome,
    /// Whether another sync should run at once (after the reconcile path).
    pub follow_up: bool,
}

/// Why a sync committed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider kept mutating data under every pagination attempt.
    #[error("data kept changing during pagination ({0} restarts)")]
    TooManyRestarts(u32),
    /// The reconcile window kept changing while it was listed.
    #[error("window listing kept changing ({0} attempts)")]
    UnstableWindow(u32),
}

impl SyncError {
    /// A short code for status reports.
    pub fn code(&self) -> String {
        match self {
            SyncError::Provider(e) => e.code().to_string(),
            SyncError::Store(_) => "STORE_ERROR".to_string(),
            SyncError::TooManyRestarts(_) => "MUTATION_RESTARTS_EXHAUSTED".to_string(),
            SyncError::UnstableWindow(_) => "WINDOW_UNSTABLE".to_string(),
        }
    }

    /// What the provider's failure means; `None` when the provider did not fail.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            SyncError::Provider(e) => Some(e.class()),
            _ => None,
        }
    }

    /// The provider request id, when the failure came from the provider.
    pub fn request_id(&self) -> Option<String> {
        match self {
            SyncError::Provider(e) => e.request_id().map(str::to_string),
            _ => None,
        }
    }

    /// The failure as recorded on the account.
    pub fn outcome(&self) -> SyncOutcome {
        SyncOutcome::Failed {
            code: self.code(),
            message: self.to_string(),
            request_id: self.request_id(),
        }
    }
}

/// Live progress of a running sync, shared with the actor so status queries can report
/// it mid-sync without waiting for the task.
#[derive(Debug, Default)]
pub struct SyncProgress {
    /// Pages fetched so far (all loops, both paths).
    pub pages: AtomicU64,
    /// Rows received so far.
    pub rows: AtomicU64,
    /// Loop restarts caused by mutation during pagination.
    pub restarts: AtomicU64,
}

/// A snapshot of [`SyncProgress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    /// Pages fetched.
    pub pages: u64,
    /// Rows received.
    pub rows: u64,
    /// Loop restarts.
    pub restarts: u64,
}

impl SyncProgress {
    /// The current counts. A page counted here has its rows counted too: `page` adds
    /// the rows first and publishes the page after, and this reads in the other order.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let pages = self.pages.load(Ordering::Acquire);
        ProgressSnapshot {
            pages,
            rows: self.rows.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn page(&self, rows: usize) {
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.pages.fetch_add(1, Ordering::Release);
    }
}

/// Shares progress between the actor and its sync task.
pub type SharedProgress = Arc<SyncProgress>;
