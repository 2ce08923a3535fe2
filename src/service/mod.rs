//! Use-cases: what a caller of acctor can ask for, independent of how it asks. The HTTP
//! handlers, the embedded demo and the benchmarks all come through here, so a business
//! rule (what a valid link is, when a relink replaces a link, the order of an unlink)
//! lives in one place and `http/` only translates.
//!
//! Each use-case reaches what it needs through a [`Context`], built once by `app.rs`:
//! the clock, the store, the metrics, the account actors' registry and context, the
//! provider plugins and the settings. The registry only activates actors and hands out
//! their refs; it is not where services find their dependencies.
//!
//! - [`accounts`]: link, relink, unlink, resume, sync requests and status.
//! - [`incidents`]: incidents, listed and read.
//! - [`ingest`]: a provider's webhook, from its raw bytes to the acknowledgement.
//! - [`recovery`]: re-driving interrupted work after a start.
//! - [`operations`]: account openings (create, read, list, cancel, retry, simulate).
//! - [`flags`]: runtime flags per market and segment, and their history.

use std::collections::HashMap;
use std::sync::Arc;

use crate::actors::operation::OperationRegistry;
use crate::actors::{ActorContext, Registry};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::domain::ProviderKind;
use crate::metrics::Metrics;
use crate::providers::bank::BankWebhookVerifier;
use crate::providers::DynProvider;
use crate::store::AsyncStore;

pub mod accounts;
pub mod error;
pub mod flags;
pub mod incidents;
pub mod ingest;
pub mod operations;
pub mod recovery;
pub mod stripe;
pub mod stripe_link;
pub mod stripe_push;

pub use error::ServiceError;

/// The explicit dependencies of every use-case.
#[derive(Clone)]
pub struct Context {
    /// Where "now" comes from.
    pub clock: SharedClock,
    /// The store, through its async facade.
    pub store: AsyncStore,
    /// This instance's metrics (the same set the actors count into).
    pub metrics: Arc<Metrics>,
    /// The account actors: activation, messages, introspection.
    pub registry: Arc<Registry>,
    /// The actors' dependencies (the same store, clock and metrics), for use-cases
    /// that lift actor-owned state: resume, relink (see [`crate::actors::resume`]).
    pub actors: Arc<ActorContext>,
    /// Provider plugins by kind.
    pub providers: Arc<HashMap<ProviderKind, DynProvider>>,
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// The operation actors (account openings).
    pub operations: Arc<OperationRegistry>,
    /// Verifies the bank's status webhooks.
    pub bank_verifier: Arc<BankWebhookVerifier>,
}

/// Runs synchronous work that reaches the store through the registry (activation
/// reads the account; resume and relink update the supervisor's memory and the store
/// together) on a blocking thread,
/// so no async worker waits on storage. Plain store work goes through
/// [`AsyncStore::run`](crate::store::AsyncStore::run).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ServiceError::Internal(format!("blocking task failed: {e}")))?
}

/// Checks a free-text field: something besides whitespace, at most `max` characters,
/// no control characters (what `http::params::text_schema` documents).
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), ServiceError> {
    if value.trim().is_empty() {
        return Err(ServiceError::invalid_field(format!(
            "{field} must not be empty"
        )));
    }
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ServiceError::invalid_field(format!(
            "{field} must be at most {max} characters without control characters"
        )));
    }
    Ok(())
}
