//! `/debug/…`: actor introspection for operators (and the dashboard).
//!
//! - `GET /debug/actors` — one page of accounts with what their actors are doing, filtered
//!   by `state` and `provider`, sorted by `id` (default), `lag` or `last_error`.
//! - `GET /debug/actors/{key}` — one account (by id or any alias), with its last events.
//! - `GET /debug/overview` — the backlog levels also exported by `/metrics`, as JSON.
//!
//! A live actor is asked through its mailbox with `actors.call_timeout`; a passivated
//! account is described from the store and is never activated for it (its recent
//! events lived in the old activation's memory and are reported as unavailable). A page
//! is chosen first and only that page's live actors are asked, all at once, so a listing
//! costs one timeout at worst, whatever the number of accounts. Access tokens never
//! leave the store: the views below have no field for one.

use std::collections::HashSet;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::accounts::KeyPath;
use super::error::ErrorBody;
use super::paging::{self, AfterAccount, PageToken};
use super::params;
use super::{ApiError, ApiPath, ApiQuery, AppState, NoQuery};
use crate::actors::account::ActorEvent;
use crate::actors::registry::RestartSnapshot;
use crate::actors::{ActorSnapshot, RegistryError, SyncReason};
use crate::domain::SyncOutcome;
use crate::domain::{
    Account, AccountId, GaveUpCause, LinkStatus, ProviderKind, Quarantine, SyncGaveUp,
};
use crate::service::accounts::{is_quarantined, resolve, state_name};
use crate::store::{RetryRecord, Store, StoreError};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// The orders a listing can be sorted in.
const SORTS: [&str; 3] = ["id", "lag", "last_error"];
/// Most account records one id-ordered page reads while looking for filter matches;
/// past it the page ends early and `next` continues the scan.
const SCAN_BUDGET: usize = 10_000;

/// States a live actor reports; filtering on them means asking the actors.
const LIVE_STATES: [&str; 4] = ["idle", "syncing", "backoff", "scheduled"];
/// Every state the `state` filter accepts (`active`: any live actor).
const STATES: [&str; 13] = [
    "idle",
    "syncing",
    "backoff",
    "scheduled",
    "failed",
    "access_revoked",
    "quarantined",
    "needs_reauth",
    "restarting",
    "passivated",
    "unlinked",
    "unresponsive",
    "active",
];

/// The introspection routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(overview))
        .routes(routes!(operation))
}

/// What `/debug/operations/{id}` shows: the record, its actor's own view (while it is
/// live) and the bank statuses waiting in its inbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationDebug {
    /// The operation as stored, history included.
    pub operation: super::operations::OperationView,
    /// Its actor's snapshot (running step, queued work, last error); `null` when
    /// passivated.
    #[schema(value_type = Option<Object>)]
    pub actor: Option<crate::actors::operation::OperationSnapshot>,
    /// Bank statuses acknowledged and not yet applied.
    #[schema(value_type = Vec<Object>)]
    pub pending_events: Vec<crate::domain::operations::OperationEvent>,
}

/// One operation's actor, record and pending statuses.
#[utoipa::path(
    get,
    path = "/debug/operations/{id}",
    tag = "debug",
    operation_id = "debug_operation",
    params(super::operations::OperationPath, NoQuery),
    responses(
        (status = 200, description = "The operation and its actor", body = OperationDebug),
        (status = 400, description = "An unknown query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such operation", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn operation(
    State(state): State<AppState>,
    ApiPath(super::operations::OperationPath { id }): ApiPath<super::operations::OperationPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<OperationDebug>, ApiError> {
    let operation = crate::service::operations::get(&state.ctx, &id).await?;
    let read = operation.id.clone();
    let pending_events = state
        .ctx
        .store
        .run(move |s| s.pending_operation_events(&read))
        .await
        .map_err(crate::service::ServiceError::from)?;
    let actor = state.ctx.operations.snapshot(&operation.id).await;
    Ok(Json(OperationDebug {
        operation: operation.into(),
        actor,
        pending_events,
    }))
}

/// A running sync, as its actor reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CurrentSync {
    /// Why it started: `webhook`, `linked`, `activation`, `manual`, `retry` or `poll`.
    #[schema(value_type = Option<String>)]
    pub reason: Option<SyncReason>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// Milliseconds since it started.
    pub elapsed_ms: Option<i64>,
    /// Pages fetched so far (all loops).
    pub pages: u64,
    /// Rows received so far.
    pub rows: u64,
    /// Loop restarts after mutation during pagination.
    pub loop_restarts: u64,
    /// Another sync is queued behind it (webhooks arrived meanwhile).
    pub again: bool,
}

/// The last failed sync.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastError {
    /// Provider error code or a short internal code.
    pub code: String,
    /// What it said (no secrets).
    pub message: String,
    /// The provider's request id.
    pub request_id: Option<String>,
    /// When the sync failed.
    pub at: Option<DateTime<Utc>>,
}

/// One account as introspection shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorView {
    /// Canonical id.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// Provider.
    #[schema(value_type = String)]
    pub provider: ProviderKind,
    /// The provider's item id.
    pub item_id: String,
    /// Owner id.
    pub owner_id: String,
    /// Aliases.
    pub aliases: Vec<String>,
    /// State-machine state: `idle`, `syncing`, `backoff`, `scheduled` (live actor),
    /// `unresponsive` (live but did not answer in time), `restarting`, `quarantined`,
    /// `failed`, `passivated` or `unlinked`.
    #[schema(value_type = String)]
    pub state: &'static str,
    /// Whether an actor is live for it.
    pub active: bool,
    /// Messages waiting in the live actor's mailbox (`None`: passivated). Counts sync
    /// requests, resumes, status queries, timers and sync reports not yet handled.
    pub mailbox_depth: Option<u64>,
    /// The running sync and its progress.
    pub current: Option<CurrentSync>,
    /// Seconds the account is behind: since its oldest unconsumed webhook, or since it
    /// was linked if it never synced; 0 when nothing is waiting.
    pub lag_seconds: i64,
    /// Seconds since the cursor last advanced (`None`: never synced).
    pub cursor_age_seconds: Option<i64>,
    /// When the last sync started.
    pub last_sync_started_at: Option<DateTime<Utc>>,
    /// When the last sync ended.
    pub last_sync_finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    #[schema(value_type = Option<Object>)]
    pub last_sync_outcome: Option<SyncOutcome>,
    /// The last failure, when the last sync failed.
    pub last_error: Option<LastError>,
    /// The provider request id of the last sync: its last page when it committed, the
    /// failing call when it failed.
    pub last_request_id: Option<String>,
    /// When the next sync is due (retry record, or the live actor's timer).
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The pending retry record.
    #[schema(value_type = Option<Object>)]
    pub retry: Option<RetryRecord>,
    /// Consecutive failed attempts (from the live actor, else the retry record).
    pub attempt: u32,
    /// Restarts by the supervisor since start or the last resume.
    pub restarts: u64,
    /// Restart bookkeeping, when its actor has failed.
    #[schema(value_type = Option<Object>)]
    pub supervision: Option<RestartSnapshot>,
    /// Quarantine, as stored.
    #[schema(value_type = Option<Object>)]
    pub quarantine: Option<Quarantine>,
    /// Set when its syncs gave up.
    #[schema(value_type = Option<Object>)]
    pub failed: Option<SyncGaveUp>,
    /// Inbox entries not yet consumed by a committed sync.
    pub pending_inbox: usize,
    /// When the oldest of them arrived.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Committed syncs.
    pub sync_count: u64,
    /// Transactions held locally (single-account view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions: Option<u64>,
    /// When the live activation started.
    pub active_since: Option<DateTime<Utc>>,
    /// Syncs run and sync requests received by this activation.
    pub syncs_run: Option<u64>,
    /// Sync requests received by this activation (webhooks coalesce into fewer syncs).
    pub sync_requests: Option<u64>,
    /// The live actor's last events, oldest first (`None` when passivated).
    #[schema(value_type = Option<Vec<Object>>)]
    pub events: Option<Vec<ActorEvent>>,
    /// Why `events` is missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub events_note: Option<&'static str>,
    /// Why the live actor could not be asked, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_error: Option<String>,
}

/// Store facts about one account, read on a blocking thread.
struct StoreFacts {
    account: Account,
    pending: usize,
    oldest_pending_at: Option<DateTime<Utc>>,
    retry: Option<RetryRecord>,
    transactions: Option<u64>,
}

fn store_facts(
    store: &dyn Store,
    account: Account,
    with_rows: bool,
) -> Result<StoreFacts, StoreError> {
    let pending = store.pending_inbox(&account.id)?;
    let retry = store.retry_of(&account.id)?;
    let transactions = if with_rows {
        Some(store.count_transactions(&account.id)?)
    } else {
        None
    };
    Ok(StoreFacts {
        oldest_pending_at: pending.iter().map(|e| e.received_at).min(),
        pending: pending.len(),
        account,
        retry,
        transactions,
    })
}

fn lag_seconds(
    account: &Account,
    oldest_pending_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> i64 {
    let since = match (oldest_pending_at, &account.cursor, account.status) {
        (_, _, LinkStatus::Unlinked) => None,
        (Some(at), _, _) => Some(at),
        (None, None, _) => Some(account.created_at),
        (None, Some(_), _) => None,
    };
    since.map_or(0, |at| (now - at).num_seconds().max(0))
}

fn describe(
    state: &AppState,
    facts: StoreFacts,
    asked: Result<Option<ActorSnapshot>, RegistryError>,
) -> ActorView {
    let now = state.ctx.clock.now();
    let StoreFacts {
        account,
        pending,
        oldest_pending_at,
        retry,
        transactions,
    } = facts;
    let (snapshot, actor_error) = match asked {
        Ok(snapshot) => (snapshot, None),
        Err(error) => (None, Some(error.to_string())),
    };
    let supervision = state.ctx.registry.restart_status(&account.id);
    let quarantined = is_quarantined(&state.ctx, &account);
    let active = snapshot.is_some() || state.ctx.registry.is_active(&account.id);
    let mut name = state_name(
        &account,
        snapshot.as_ref(),
        supervision.as_ref(),
        quarantined,
    );
    if actor_error.is_some() && name == "passivated" {
        name = "unresponsive";
    }
    let last_error = match &account.last_sync_outcome {
        Some(SyncOutcome::Failed {
            code,
            message,
            request_id,
        }) => Some(LastError {
            code: code.clone(),
            message: message.clone(),
            request_id: request_id.clone(),
            at: account.last_sync_finished_at,
        }),
        _ => None,
    };
    let last_request_id = match &account.last_sync_outcome {
        Some(SyncOutcome::Committed { request_id, .. }) => request_id.clone(),
        _ => last_error.as_ref().and_then(|e| e.request_id.clone()),
    }
    .or_else(|| retry.as_ref().and_then(|r| r.request_id.clone()));
    let current = snapshot.as_ref().and_then(|s| {
        s.progress.map(|p| CurrentSync {
            reason: s.sync_reason,
            started_at: s.sync_started_at,
            elapsed_ms: s.sync_started_at.map(|at| (now - at).num_milliseconds()),
            pages: p.pages,
            rows: p.rows,
            loop_restarts: p.restarts,
            again: s.again,
        })
    });
    let events_note = match (&snapshot, active) {
        (Some(_), _) => None,
        (None, true) => Some("the live actor did not answer; its events are unavailable"),
        (None, false) => Some(
            "passivated: recent events live in the actor's memory only, and describing an account never activates it",
        ),
    };
    ActorView {
        provider: account.provider,
        item_id: account.item_id.clone(),
        owner_id: account.owner_id.clone(),
        aliases: account.aliases.clone(),
        state: name,
        active,
        mailbox_depth: state.ctx.registry.mailbox_depth(&account.id),
        current,
        lag_seconds: lag_seconds(&account, oldest_pending_at, now),
        cursor_age_seconds: account.cursor_updated_at.map(|at| (now - at).num_seconds()),
        last_sync_started_at: account.last_sync_started_at,
        last_sync_finished_at: account.last_sync_finished_at,
        last_sync_outcome: account.last_sync_outcome.clone(),
        last_error,
        last_request_id,
        next_retry_at: snapshot
            .as_ref()
            .and_then(|s| s.next_retry_at)
            .or_else(|| retry.as_ref().map(|r| r.due_at)),
        attempt: snapshot
            .as_ref()
            .map(|s| s.attempt)
            .or_else(|| retry.as_ref().map(|r| r.attempt))
            .unwrap_or(0),
        retry,
        restarts: supervision.as_ref().map_or(0, |s| s.restarts),
        supervision,
        quarantine: account.quarantine.clone(),
        failed: account.failed.clone(),
        pending_inbox: pending,
        oldest_pending_at,
        sync_count: account.sync_count,
        transactions,
        active_since: snapshot.as_ref().map(|s| s.active_since),
        syncs_run: snapshot.as_ref().map(|s| s.syncs_run),
        sync_requests: snapshot.as_ref().map(|s| s.sync_requests),
        events: snapshot.map(|s| s.events),
        events_note,
        actor_error,
        account_id: account.id,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)??)
}

/// One account's actor: state, mailbox, running sync with progress, last outcome and
/// error, retry, restarts, pending inbox and recent events. A passivated account is
/// described from the store without being activated.
#[utoipa::path(
    get,
    path = "/debug/actors/{key}",
    tag = "debug",
    operation_id = "get_actor",
    params(KeyPath, NoQuery),
    responses(
        (status = 200, description = "The account's actor", body = ActorView),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Ambiguous key", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<ActorView>, ApiError> {
    let account = resolve(&state.ctx, &key).await?;
    // Asked first: the store facts read after it are at least as fresh as its answer.
    let asked = state.ctx.registry.snapshot(&account.id).await;
    let facts = state
        .ctx
        .store
        .run(move |s| store_facts(s, account, true))
        .await?;
    Ok(Json(describe(&state, facts, asked)))
}

/// `GET /debug/actors` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only accounts in this state (see [`ActorView::state`]; `active`: any live actor).
    #[param(schema_with = state_schema)]
    pub state: Option<String>,
    /// Only accounts of this provider.
    #[param(schema_with = params::provider_schema)]
    pub provider: Option<String>,
    /// `id` (default), `lag` (most behind first) or `last_error` (most recent failure
    /// first, then the rest by id).
    #[param(schema_with = sort_schema)]
    pub sort: Option<String>,
    /// Page size.
    #[param(schema_with = limit_schema)]
    pub limit: Option<String>,
    /// The previous page's `next` (with the same `sort`).
    #[param(schema_with = paging::after_account_schema)]
    pub after: Option<String>,
}

fn state_schema() -> utoipa::openapi::Object {
    params::enum_schema(
        &STATES,
        "Only accounts in this state (`active`: any live actor).",
    )
}

fn sort_schema() -> utoipa::openapi::Object {
    params::enum_schema(
        &SORTS,
        "`id` (default), `lag` (most behind first) or `last_error` (most recent failure first).",
    )
}

fn limit_schema() -> utoipa::openapi::Object {
    params::limit_schema(DEFAULT_LIMIT, MAX_LIMIT)
}

/// A page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorPage {
    /// The accounts.
    pub actors: Vec<ActorView>,
    /// Pass as `after` for the next page; `None` on the last. With a live-state filter
    /// a page may hold fewer than `limit` entries before the last one.
    pub next: Option<String>,
    /// The order used.
    #[schema(value_type = String)]
    pub sort: &'static str,
    /// Account records examined for this page.
    pub scanned: usize,
}

/// What the store-only pass decided about a candidate.
fn prefilter(
    state: &AppState,
    account: &Account,
    provider: Option<ProviderKind>,
    wanted: Option<&str>,
) -> bool {
    if provider.is_some_and(|p| p != account.provider) {
        return false;
    }
    let Some(wanted) = wanted else { return true };
    let active = state.ctx.registry.is_active(&account.id);
    if wanted == "active" || LIVE_STATES.contains(&wanted) {
        // The phase is only known once asked; failed and parked accounts keep a live
        // actor but report `failed` / `needs_reauth`.
        return active
            && account.failed.is_none()
            && account.needs_reauth.is_none()
            && account.status == LinkStatus::Linked;
    }
    if wanted == "unresponsive" {
        return active;
    }
    let supervision = state.ctx.registry.restart_status(&account.id);
    let coarse = match (account.status, account.failed.as_ref(), active) {
        (LinkStatus::Unlinked, _, _) => "unlinked",
        (_, Some(mark), _) if mark.cause == GaveUpCause::AccessRevoked => "access_revoked",
        (_, Some(_), _) => "failed",
        _ if account.needs_reauth.is_some() => "needs_reauth",
        (_, None, true) => "live",
        _ => state_name(
            account,
            None,
            supervision.as_ref(),
            is_quarantined(&state.ctx, account),
        ),
    };
    coarse == wanted
}

fn last_error_at(account: &Account) -> Option<DateTime<Utc>> {
    match account.last_sync_outcome {
        Some(SyncOutcome::Failed { .. }) => account.last_sync_finished_at,
        _ => None,
    }
}

/// Picks the page's accounts from the store, without asking any actor. Blocking.
fn pick_page(
    state: &AppState,
    after: Option<AccountId>,
    sort: &'static str,
    limit: usize,
    provider: Option<ProviderKind>,
    wanted: Option<&str>,
) -> Result<(Vec<Account>, Option<AccountId>, usize), ApiError> {
    let store = state.ctx.store.blocking();
    let live_only =
        wanted.is_some_and(|w| w == "active" || w == "unresponsive" || LIVE_STATES.contains(&w));
    if sort == "id" && !live_only {
        // Keyset over the store's id order, reading batches until the page is full.
        let mut after = after;
        let mut picked = Vec::new();
        let mut scanned = 0;
        loop {
            let batch = store.list_accounts(after.as_ref(), (limit + 1).max(100))?;
            let exhausted = batch.len() < (limit + 1).max(100);
            for account in batch {
                scanned += 1;
                after = Some(account.id.clone());
                if prefilter(state, &account, provider, wanted) {
                    if picked.len() == limit {
                        // One more match exists: the page ends before it.
                        let next = picked.last().map(|a: &Account| a.id.clone());
                        return Ok((picked, next, scanned));
                    }
                    picked.push(account);
                }
                if scanned >= SCAN_BUDGET {
                    return Ok((picked, after, scanned));
                }
            }
            if exhausted {
                return Ok((picked, None, scanned));
            }
        }
    }
    // Every candidate is read and ordered: the live actors only for a live-state
    // filter, else every account record (a debug endpoint; documented as a full scan).
    let mut candidates: Vec<Account> = if live_only {
        let mut ids = state.ctx.registry.active_ids();
        ids.sort();
        let mut accounts = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(account) = store.get_account(&id)? {
                accounts.push(account);
            }
        }
        accounts
    } else {
        let mut all = Vec::new();
        let mut after: Option<AccountId> = None;
        loop {
            let batch = store.list_accounts(after.as_ref(), 1000)?;
            let Some(last) = batch.last() else { break };
            after = Some(last.id.clone());
            all.extend(batch);
        }
        all
    };
    let scanned = candidates.len();
    candidates.retain(|a| prefilter(state, a, provider, wanted));
    match sort {
        "lag" => {
            let pending: HashSet<AccountId> =
                store.accounts_with_pending_inbox()?.into_iter().collect();
            let now = state.ctx.clock.now();
            let mut keyed = Vec::with_capacity(candidates.len());
            for account in candidates {
                let oldest = if pending.contains(&account.id) {
                    store
                        .pending_inbox(&account.id)?
                        .iter()
                        .map(|e| e.received_at)
                        .min()
                } else {
                    None
                };
                let lag = lag_seconds(&account, oldest, now);
                let cursor_age = account
                    .cursor_updated_at
                    .map_or(i64::MAX, |at| (now - at).num_seconds());
                keyed.push((
                    (std::cmp::Reverse(lag), std::cmp::Reverse(cursor_age)),
                    account,
                ));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
            candidates = keyed.into_iter().map(|(_, a)| a).collect();
        }
        "last_error" => {
            candidates.sort_by(|a, b| {
                last_error_at(b)
                    .cmp(&last_error_at(a))
                    .then_with(|| a.id.cmp(&b.id))
            });
        }
        _ => {}
    }
    let start = match &after {
        None => 0,
        Some(after) => match candidates.iter().position(|a| &a.id == after) {
            Some(position) => position + 1,
            None if sort == "id" => candidates.partition_point(|a| &a.id <= after),
            // A well-formed token whose account left this order (or never was in it):
            // the listing moved on, which is a conflict with its state, not a bad request.
            None => {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "stale_page_token",
                    "after: this account is no longer in this order; start from the first page",
                ))
            }
        },
    };
    let rest = candidates.len().saturating_sub(start);
    let page: Vec<Account> = candidates.into_iter().skip(start).take(limit).collect();
    let next = if rest > limit {
        page.last().map(|a| a.id.clone())
    } else {
        None
    };
    Ok((page, next, scanned))
}

/// A page of accounts with what their actors are doing, filtered by state and provider,
/// sorted by id, lag or last error. Only the page's live actors are asked.
#[utoipa::path(
    get,
    path = "/debug/actors",
    tag = "debug",
    operation_id = "list_actors",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of actors", body = ActorPage),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "With `sort=lag` or `last_error`: the `after` account is no longer in that order (`stale_page_token`); start from the first page", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ActorPage>, ApiError> {
    let wanted = params::one_of("state", query.state.as_deref(), &STATES)?;
    let provider = params::provider("provider", query.provider.as_deref())?;
    let sort = params::one_of("sort", query.sort.as_deref(), &SORTS)?.unwrap_or("id");
    let limit = params::limit(query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = paging::read_after::<AfterAccount>(query.after.as_deref())?.map(|a| a.0);
    let picker = state.clone();
    let (accounts, next, scanned) = tokio::task::spawn_blocking(move || {
        let (page, next, scanned) = pick_page(&picker, after, sort, limit, provider, wanted)?;
        let mut facts = Vec::with_capacity(page.len());
        for account in page {
            facts.push(store_facts(
                picker.ctx.store.blocking().as_ref(),
                account,
                false,
            )?);
        }
        Ok::<_, ApiError>((facts, next, scanned))
    })
    .await
    .map_err(ApiError::internal)??;
    // Only this page's live actors are asked, all at once: one timeout at worst.
    let asked = futures::future::join_all(accounts.iter().map(|facts| {
        let registry = state.ctx.registry.clone();
        let id = facts.account.id.clone();
        async move {
            if registry.is_active(&id) {
                registry.snapshot(&id).await
            } else {
                Ok(None)
            }
        }
    }))
    .await;
    let actors = accounts
        .into_iter()
        .zip(asked)
        .map(|(facts, asked)| describe(&state, facts, asked))
        .filter(|view| match wanted {
            Some("active") => view.active,
            Some(wanted) => view.state == wanted,
            None => true,
        })
        .collect();
    Ok(Json(ActorPage {
        actors,
        next: next.map(|id| AfterAccount(id).encode()),
        sort,
        scanned,
    }))
}

/// The backlog at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// Pending inbox entries across all accounts.
    pub inbox_depth: u64,
    /// Failed syncs waiting for their retry.
    pub retry_backlog: u64,
    /// Of those, already due.
    pub retries_due: u64,
    /// Live actors.
    pub actors_active: u64,
    /// Activations since start.
    pub activations: u64,
    /// Passivations since start.
    pub passivations: u64,
    /// Whether shutdown has begun.
    pub shutting_down: bool,
    /// Server time (the dashboard computes ages against it).
    pub now: DateTime<Utc>,
    /// Live operation actors (the rest are passivated).
    pub operation_actors_active: u64,
    /// Operations by state (every state, zeros included).
    #[schema(value_type = Object)]
    pub operations: std::collections::BTreeMap<String, u64>,
}

/// Backlog levels (inbox depth, retries, live actors) as JSON.
#[utoipa::path(
    get,
    path = "/debug/overview",
    tag = "debug",
    operation_id = "get_overview",
    params(NoQuery),
    responses(
        (status = 200, description = "The backlog", body = Overview),
        (status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn overview(
    State(state): State<AppState>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<Overview>, ApiError> {
    let reader = state.clone();
    let values = blocking(move || super::metrics::scrape_values(&reader)).await?;
    Ok(Json(Overview {
        inbox_depth: values.inbox_depth,
        retry_backlog: values.retry_backlog,
        retries_due: values.retries_due,
        actors_active: values.actors_active,
        activations: values.activations,
        passivations: values.passivations,
        shutting_down: state.is_shutting_down(),
        now: state.ctx.clock.now(),
        operation_actors_active: values.operation_actors_active,
        operations: values
            .operations
            .iter()
            .map(|(state, n)| (state.to_string(), *n))
            .collect(),
    }))
}
