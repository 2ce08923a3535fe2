//! `/v1/accounts`: link, list, read (by id or any alias), unlink, read transactions,
//! sync status, request a sync, and resume a quarantined account. Access tokens go in
//! and never come out.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::link::LinkRequest;
use super::paging::{self, AfterAccount, AfterTransaction, PageToken};
use super::params;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, NoQuery};
use crate::actors::registry::RestartSnapshot;
use crate::actors::ActorSnapshot;
use crate::config::Settings;
use crate::domain::{
    Account, AccountId, LinkStatus, NeedsReauth, PendingDeadline, ProviderKind, Quarantine,
    SyncGaveUp, SyncOutcome,
};
use crate::service::accounts::{self, Linked};
use crate::store::{RetryRecord, TransactionQuery};

/// The largest page of accounts or transactions.
const MAX_PAGE: usize = 1000;
/// The default page of `GET /v1/accounts`.
const ACCOUNTS_PAGE: usize = 100;
/// The default page of `GET /v1/accounts/{key}/transactions`.
const TRANSACTIONS_PAGE: usize = 250;

fn accounts_limit_schema() -> utoipa::openapi::Object {
    params::limit_schema(ACCOUNTS_PAGE, MAX_PAGE)
}

fn transactions_limit_schema() -> utoipa::openapi::Object {
    params::limit_schema(TRANSACTIONS_PAGE, MAX_PAGE)
}

/// The `{key}` of every account route: an account id or any lookup key.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// Account id, alias, item id or owner id.
    #[param(schema_with = params::account_key_schema)]
    pub key: String,
}

/// The account routes.
pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(link, list))
        .routes(routes!(show, delete))
        .routes(routes!(unlink))
        .routes(routes!(transactions))
        .routes(routes!(sync_status, request_sync))
        .routes(routes!(resume))
        .layer(DefaultBodyLimit::max(settings.server.api_body_limit_bytes))
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
    operation_id = "link_account",
    params(NoQuery),
    request_body = LinkRequest,
    responses(
        (status = 201, description = "Linked", body = AccountView),
        (status = 200, description = "Relinked: the item was already linked to this owner; its access token was replaced", body = AccountView),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "The item id or an alias is already linked (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn link(
    State(state): State<AppState>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    ApiJson(request): ApiJson<LinkRequest>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let (account, linked) = accounts::link(&state.ctx, request.into()).await?;
    let status = match linked {
        Linked::Relinked => StatusCode::OK,
        Linked::Created => StatusCode::CREATED,
    };
    Ok((status, Json(AccountView::from(&account))))
}

/// `GET /v1/accounts` query (text, parsed by [`params`] so a refusal names the field).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Continue after this account id (the previous page's `next`).
    #[param(schema_with = paging::after_account_schema)]
    pub after: Option<String>,
    /// Page size.
    #[param(schema_with = accounts_limit_schema)]
    pub limit: Option<String>,
}

/// A page of accounts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountPage {
    /// The accounts.
    pub accounts: Vec<AccountView>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<String>,
}

/// Lists accounts, paged by id.
#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "accounts",
    operation_id = "list_accounts",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of accounts", body = AccountPage),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<AccountPage>, ApiError> {
    let after = paging::read_after::<AfterAccount>(query.after.as_deref())?;
    let limit = params::limit(query.limit.as_deref(), ACCOUNTS_PAGE, MAX_PAGE)?;
    let (accounts, next) = accounts::list(&state.ctx, after.map(|a| a.0), limit).await?;
    let accounts = accounts.iter().map(AccountView::from).collect();
    let next = next.map(|id| AfterAccount(id).encode());
    Ok(Json(AccountPage { accounts, next }))
}

/// One account, by id or any lookup key.
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}",
    tag = "accounts",
    operation_id = "get_account",
    params(KeyPath, NoQuery),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<AccountView>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    Ok(Json(AccountView::from(&account)))
}

/// The answer to an unlink or a delete.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnlinkResponse {
    /// The account.
    #[schema(value_type = String)]
    pub id: AccountId,
    /// Whether its data was deleted (`DELETE`) or kept (`POST …/unlink`).
    pub purged: bool,
}

/// Unlinks an account and keeps its data: no more syncs, webhooks for its item are no
/// longer routed to it, and it stays readable (as `unlinked`) by every key it is listed
/// with, until it is deleted.
#[utoipa::path(
    post,
    path = "/v1/accounts/{key}/unlink",
    tag = "accounts",
    operation_id = "unlink_account",
    params(KeyPath, NoQuery),
    responses(
        (status = 200, description = "Unlinked, data kept", body = UnlinkResponse),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn unlink(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<UnlinkResponse>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    accounts::unlink(&state.ctx, &account.id, false).await?;
    Ok(Json(UnlinkResponse {
        id: account.id,
        purged: false,
    }))
}

/// Deletes an account: unlinks it (if it still is linked) and deletes its record,
/// transactions and pending webhooks. Afterwards no key finds it (`404`).
#[utoipa::path(
    delete,
    path = "/v1/accounts/{key}",
    tag = "accounts",
    operation_id = "delete_account",
    params(KeyPath, NoQuery),
    responses(
        (status = 200, description = "Deleted", body = UnlinkResponse),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<UnlinkResponse>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    accounts::unlink(&state.ctx, &account.id, true).await?;
    Ok(Json(UnlinkResponse {
        id: account.id,
        purged: true,
    }))
}

/// `GET /v1/accounts/{key}/transactions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TransactionsQuery {
    /// Inclusive lower date bound, `YYYY-MM-DD` (after `end_date`: an empty page).
    #[param(schema_with = params::date_schema)]
    pub start_date: Option<String>,
    /// Inclusive upper date bound, `YYYY-MM-DD`.
    #[param(schema_with = params::date_schema)]
    pub end_date: Option<String>,
    /// Page token from the previous page's `next`.
    #[param(schema_with = paging::after_transaction_schema)]
    pub after: Option<String>,
    /// Page size.
    #[param(schema_with = transactions_limit_schema)]
    pub limit: Option<String>,
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
    operation_id = "list_transactions",
    params(KeyPath, TransactionsQuery),
    responses(
        (status = 200, description = "A page of transactions", body = TransactionsResponse),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn transactions(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(query): ApiQuery<TransactionsQuery>,
) -> Result<Json<TransactionsResponse>, ApiError> {
    // A start after the end is an empty range, answered as one (no cross-field rule
    // the document could not state).
    let start_date = params::date("start_date", query.start_date.as_deref())?;
    let end_date = params::date("end_date", query.end_date.as_deref())?;
    let after = paging::read_after::<AfterTransaction>(query.after.as_deref())?;
    let limit = params::limit(query.limit.as_deref(), TRANSACTIONS_PAGE, MAX_PAGE)?;
    let account = accounts::resolve(&state.ctx, &key).await?;
    let page = accounts::transactions(
        &state.ctx,
        &account.id,
        TransactionQuery {
            start_date,
            end_date,
            after: after.map(|a| a.0),
            limit,
        },
    )
    .await?;
    Ok(Json(TransactionsResponse {
        account_id: account.id,
        transactions: page.transactions.into_iter().map(|t| t.body).collect(),
        next: page.next.map(|token| AfterTransaction(token).encode()),
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
    operation_id = "get_sync_status",
    params(KeyPath, NoQuery),
    responses(
        (status = 200, description = "The sync status", body = SyncStatus),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 504, description = "Its actor did not answer in time (`actor_timeout`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn sync_status(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
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
    operation_id = "request_sync",
    params(KeyPath, NoQuery),
    responses(
        (status = 202, description = "Sync requested", body = SyncRequested),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Ambiguous key, unlinked or quarantined account", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn request_sync(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
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
    operation_id = "resume_account",
    params(KeyPath, NoQuery),
    responses(
        (status = 200, description = "Resumed", body = ResumeResponse),
        (status = 400, description = "Invalid request: an unknown query parameter or body field, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "Ambiguous key or unlinked account", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn resume(
    State(state): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<ResumeResponse>, ApiError> {
    let account = accounts::resolve(&state.ctx, &key).await?;
    let lifted = accounts::resume(&state.ctx, &account).await?;
    Ok(Json(ResumeResponse {
        account_id: account.id,
        lifted,
    }))
}
