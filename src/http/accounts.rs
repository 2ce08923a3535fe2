//! `/v1/accounts`: link, list, read (by id or any alias), unlink, read transactions,
//! sync status, request a sync, and resume a quarantined account. Access tokens go in
//! and never come out.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::actors::registry::RestartSnapshot;
use crate::actors::ActorSnapshot;
use crate::config::Settings;
use crate::domain::{
    Account, AccountId, LinkStatus, NeedsReauth, PendingDeadline, ProviderKind, Quarantine,
    SyncGaveUp, SyncOutcome,
};
use crate::service::accounts::{self, LinkInput, Linked};
use crate::store::{RetryRecord, TransactionQuery};

const MAX_PAGE: usize = 1000;

/// The account routes.
pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(link, list))
        .routes(routes!(show, unlink))
        .routes(routes!(transactions))
        .routes(routes!(sync_status, request_sync))
        .routes(routes!(resume))
        .layer(DefaultBodyLimit::max(settings.server.api_body_limit_bytes))
}

/// `POST /v1/accounts` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// `plaid`.
    pub provider: String,
    /// The provider's item id.
    pub item_id: String,
    /// The provider access token (stored, never returned).
    #[schema(format = Password)]
    pub access_token: String,
    /// The owning user's id in the caller's system.
    pub owner_id: String,
    /// Extra lookup keys, e.g. an email.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// An account as the API shows it: everything but the access token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    /// Canonical id.
    #[schema(value_type = String)]
    pub id: AccountId,
    /// Provider.
    #[schema(value_type = String, example = "plaid")]
    pub provider: ProviderKind,
    /// Provider item id.
    pub item_id: String,
    /// Owner id.
    pub owner_id: String,
    /// Aliases.
    pub aliases: Vec<String>,
    /// `linked` or `unlinked`.
    #[schema(value_type = String, example = "linked")]
    pub status: LinkStatus,
    /// When linked.
    pub created_at: DateTime<Utc>,
    /// Committed syncs.
    pub sync_count: u64,
    /// When the last sync finished.
    pub last_sync_finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    #[schema(value_type = Option<Object>)]
    pub last_sync_outcome: Option<SyncOutcome>,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            id: a.id.clone(),
            provider: a.provider,
            item_id: a.item_id.clone(),
            owner_id: a.owner_id.clone(),
            aliases: a.aliases.clone(),
            status: a.status,
            created_at: a.created_at,
            sync_count: a.sync_count,
            last_sync_finished_at: a.last_sync_finished_at,
            last_sync_outcome: a.last_sync_outcome.clone(),
        }
    }
}

/// Links an account; its actor starts the initial sync.
#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "accounts",
    request_body = LinkRequest,
    responses(
        (status = 201, description = "Linked", body = AccountView),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "The item id or an alias is already linked (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn link(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<LinkRequest>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let (account, linked) = accounts::link(&state.ctx, request.into()).await?;
    let status = match linked {
        Linked::Relinked => StatusCode::OK,
        Linked::Created => StatusCode::CREATED,
    };
    Ok((status, Json(AccountView::from(&account))))
}

impl From<LinkRequest> for LinkInput {
    fn from(request: LinkRequest) -> Self {
        LinkInput {
            provider: request.provider,
            item_id: request.item_id,
            access_token: request.access_token,
            owner_id: request.owner_id,
            aliases: request.aliases,
        }
    }
}

/// `GET /v1/accounts` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Continue after this account id.
    pub after: Option<String>,
    /// Page size (1..=1000, default 100).
    pub limit: Option<usize>,
}

/// A page of accounts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountPage {
    /// The accounts.
    pub accounts: Vec<AccountView>,
    /// Pass as `after` for the next page.
    #[schema(value_type = Option<String>)]
    pub next: Option<AccountId>,
}

fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(limit)
}

/// Lists accounts, paged by id.
#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "accounts",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of accounts", body = AccountPage),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<AccountPage>, ApiError> {
    let limit = page_limit(query.limit, 100)?;
    let (accounts, next) = accounts::list(&state.ctx, query.after.map(AccountId), limit).await?;
    let accounts = accounts.iter().map(AccountView::from).collect();
    Ok(Json(AccountPage { accounts, next }))
}

/// One account, by id or any lookup key.
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}",
    tag = "accounts",
    params(("key" = String, Path, description = "Account id, alias, item id or owner id")),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<AccountView>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    Ok(Json(AccountView::from(&account)))
}

/// `DELETE /v1/accounts/{key}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UnlinkQuery {
    /// Also delete the account's transactions, inbox and record.
    #[serde(default)]
    pub purge: bool,
}

/// The unlink answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnlinkResponse {
    /// The account.
    #[schema(value_type = String)]
    pub id: AccountId,
    /// Whether its data was deleted.
    pub purged: bool,
}

/// Unlinks an account (and deletes its data with `purge=true`).
#[utoipa::path(
    delete,
    path = "/v1/accounts/{key}",
    tag = "accounts",
    params(("key" = String, Path, description = "Account id, alias, item id or owner id"), UnlinkQuery),
    responses(
        (status = 200, description = "Unlinked", body = UnlinkResponse),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn unlink(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<UnlinkQuery>,
) -> Result<Json<UnlinkResponse>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    accounts::unlink(&state.ctx, &account.id, query.purge).await?;
    Ok(Json(UnlinkResponse {
        id: account.id,
        purged: query.purge,
    }))
}

/// `GET /v1/accounts/{key}/transactions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TransactionsQuery {
    /// Inclusive lower date bound, `YYYY-MM-DD`.
    pub start_date: Option<NaiveDate>,
    /// Inclusive upper date bound, `YYYY-MM-DD`.
    pub end_date: Option<NaiveDate>,
    /// Page token from the previous page's `next`.
    pub after: Option<String>,
    /// Page size (1..=1000, default 250).
    pub limit: Option<usize>,
}

/// A page of transactions: the provider's objects, verbatim.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransactionsResponse {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The rows, ordered by (date, id): the provider's transaction objects.
    #[schema(value_type = Vec<Object>)]
    pub transactions: Vec<serde_json::Value>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

/// The local copy of an account's transactions, paged and date-filtered.
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}/transactions",
    tag = "accounts",
    params(("key" = String, Path, description = "Account id, alias, item id or owner id"), TransactionsQuery),
    responses(
        (status = 200, description = "A page of transactions", body = TransactionsResponse),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
    )
)]
async fn transactions(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(query): ApiQuery<TransactionsQuery>,
) -> Result<Json<TransactionsResponse>, ApiError> {
    let limit = page_limit(query.limit, 250)?;
    if let (Some(start), Some(end)) = (query.start_date, query.end_date) {
        if start > end {
            return Err(ApiError::bad_request(
                "invalid_query",
                "start_date must not be after end_date",
            ));
        }
    }
    let account = accounts::resolve(&state.ctx, &key).await?;
    let page = accounts::transactions(
        &state.ctx,
        &account.id,
        TransactionQuery {
            start_date: query.start_date,
            end_date: query.end_date,
            after: query.after,
            limit,
        },
    )
    .await?;
    Ok(Json(TransactionsResponse {
        account_id: account.id,
        transactions: page.transactions.into_iter().map(|t| t.body).collect(),
        next: page.next,
    }))
}

/// An account's sync status.
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncStatus {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// `idle`, `syncing`, `backoff`, `scheduled` (live actor), `restarting` (its actor
    /// failed and restarts after a backoff), `quarantined`, `failed` (syncs gave up, or
    /// the provider rejected the request itself), `access_revoked` (the provider no
    /// longer accepts its access token: relink or unlink), `needs_reauth` (parked until
    /// LOGIN_REPAIRED or a relink), `passivated`, or `unlinked`.
    #[schema(value_type = String, example = "idle")]
    pub state: &'static str,
    /// What a human must do to get it syncing again, when it waits for one.
    pub action: Option<String>,
    /// Whether an actor is live for it.
    pub active: bool,
    /// The live actor's report.
    #[schema(value_type = Option<Object>)]
    pub actor: Option<ActorSnapshot>,
    /// When the last sync started.
    pub last_sync_started_at: Option<DateTime<Utc>>,
    /// When the last sync finished.
    pub last_sync_finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    #[schema(value_type = Option<Object>)]
    pub last_sync_outcome: Option<SyncOutcome>,
    /// Seconds since the cursor last advanced (`None`: never synced).
    pub cursor_age_seconds: Option<i64>,
    /// Inbox entries not yet consumed by a committed sync.
    pub pending_inbox: usize,
    /// Transactions held locally.
    pub transactions: u64,
    /// Committed syncs.
    pub sync_count: u64,
    /// Restarts of its actor by the supervisor since start or the last resume.
    pub restarts: u64,
    /// Restart bookkeeping, when its actor has failed.
    #[schema(value_type = Option<Object>)]
    pub supervision: Option<RestartSnapshot>,
    /// Whether it is quarantined (too many failures; `POST …/resume` lifts it).
    pub quarantined: bool,
    /// Why and since when, as stored on the account.
    #[schema(value_type = Option<Object>)]
    pub quarantine: Option<Quarantine>,
    /// The pending retry of a failed sync (what the sweeper re-drives when due).
    #[schema(value_type = Option<Object>)]
    pub retry: Option<RetryRecord>,
    /// Set when acctor stopped retrying (`cause`: `attempts_exhausted`, `permanent`,
    /// `access_revoked`): no more retries until `POST …/resume` or a relink.
    #[schema(value_type = Option<Object>)]
    pub failed: Option<SyncGaveUp>,
    /// Set while it waits for its user to log in again (ITEM_LOGIN_REQUIRED): no syncs
    /// until a LOGIN_REPAIRED webhook or a relink.
    #[schema(value_type = Option<Object>)]
    pub needs_reauth: Option<NeedsReauth>,
    /// A provider-announced end of access (PENDING_EXPIRATION / PENDING_DISCONNECT).
    #[schema(value_type = Option<Object>)]
    pub pending_deadline: Option<PendingDeadline>,
}

/// An account's sync status: state, live progress, last sync, backlog, retries, supervision.
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}/sync",
    tag = "accounts",
    params(("key" = String, Path, description = "Account id, alias, item id or owner id")),
    responses(
        (status = 200, description = "The sync status", body = SyncStatus),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 504, description = "Its actor did not answer in time (`actor_timeout`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn sync_status(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<SyncStatus>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    let report = accounts::sync_report(&state.ctx, &account).await?;
    Ok(Json(SyncStatus {
        account_id: account.id.clone(),
        state: report.state,
        action: report.action,
        active: report.actor.is_some(),
        actor: report.actor,
        last_sync_started_at: account.last_sync_started_at,
        last_sync_finished_at: account.last_sync_finished_at,
        last_sync_outcome: account.last_sync_outcome.clone(),
        cursor_age_seconds: report.cursor_age_seconds,
        pending_inbox: report.pending_inbox,
        transactions: report.transactions,
        sync_count: account.sync_count,
        restarts: report.supervision.as_ref().map_or(0, |s| s.restarts),
        supervision: report.supervision,
        quarantined: report.quarantined,
        quarantine: account.quarantine.clone(),
        retry: report.retry,
        failed: account.failed.clone(),
        needs_reauth: account.needs_reauth.clone(),
        pending_deadline: account.pending_deadline.clone(),
    }))
}

/// The answer to a sync request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncRequested {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// Always `sync_requested`.
    pub status: String,
}

/// Asks for a sync now.
#[utoipa::path(
    post,
    path = "/v1/accounts/{key}/sync",
    tag = "accounts",
    params(("key" = String, Path, description = "Account id, alias, item id or owner id")),
    responses(
        (status = 202, description = "Sync requested", body = SyncRequested),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Ambiguous key, unlinked or quarantined account", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn request_sync(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<(StatusCode, Json<SyncRequested>), ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    accounts::request_sync(&state.ctx, &account).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SyncRequested {
            account_id: account.id,
            status: "sync_requested".to_string(),
        }),
    ))
}

/// The resume answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ResumeResponse {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The quarantine that was lifted (`None`: it was not quarantined; its restart count
    /// was reset and it was activated anyway).
    #[schema(value_type = Option<Object>)]
    pub lifted: Option<Quarantine>,
}

/// `POST /v1/accounts/{key}/resume`: lifts a quarantine, resets the restart count and
/// activates the account, which then syncs the webhooks kept while it was quarantined.
#[utoipa::path(
    post,
    path = "/v1/accounts/{key}/resume",
    tag = "accounts",
    params(("key" = String, Path, description = "Account id, alias, item id or owner id")),
    responses(
        (status = 200, description = "Resumed", body = ResumeResponse),
        (status = 400, description = "Invalid key, query or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Ambiguous key or unlinked account", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn resume(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<ResumeResponse>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    let lifted = accounts::resume(&state.ctx, &account).await?;
    Ok(Json(ResumeResponse {
        account_id: account.id,
        lifted,
    }))
}
