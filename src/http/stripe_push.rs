//! The push queue of a Stripe account's local changes over HTTP (`GET
//! /v1/stripe/{key}/pushes`, one change, a held change retried or discarded) and each
//! object's audit trail (`GET /v1/accounts/{key}/objects/{type}/{id}/audit`). The
//! changes themselves are made through `http::stripe_catalog`. Only translation: the
//! rules are `service::stripe_push`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::Object;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::paging::{self, AfterEntry, AfterPush, PageToken};
use super::params;
use super::stripe::{check_object_id as object_id, object_id_schema as stripe_id_schema};
use super::{ApiError, ApiPath, ApiQuery, AppState, NoQuery};
use crate::domain::stripe::ObjectType;
use crate::domain::stripe_push::{
    AuditEntry, Direction, Push, PushAction, PushBacklog, PushStatus, Resolution,
};
use crate::domain::AccountId;
use crate::service::stripe_push as service;

/// The default and largest page of changes or audit entries.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The push queue's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_pushes))
        .routes(routes!(get_push))
        .routes(routes!(retry_push))
        .routes(routes!(discard_push))
        .routes(routes!(audit_trail))
}

// ---- schemas -------------------------------------------------------------------------

fn push_id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(AfterPush::PATTERN))
        .description(Some("A change's id (`push_12`)"))
        .build()
}

fn status_schema() -> Object {
    let names: Vec<&str> = PushStatus::ALL.iter().map(|s| s.as_str()).collect();
    params::enum_schema(&names, "Only changes with this status")
}

fn page_limit_schema() -> Object {
    params::limit_schema(PAGE, MAX_PAGE)
}

// ---- paths and queries ---------------------------------------------------------------

/// `/v1/stripe/{key}/…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AccountPath {
    /// Account id, alias, item id (the `acct_…` id) or owner id.
    #[param(schema_with = params::account_key_schema)]
    pub key: String,
}

/// `/v1/stripe/{key}/pushes/{push_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PushPath {
    /// Account id, alias, item id (the `acct_…` id) or owner id.
    #[param(schema_with = params::account_key_schema)]
    pub key: String,
    /// The change.
    #[param(schema_with = push_id_schema)]
    pub push_id: String,
}

/// `/v1/accounts/{key}/objects/{object_type}/{object_id}/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AuditPath {
    /// Account id, alias, item id (the `acct_…` id) or owner id.
    #[param(schema_with = params::account_key_schema)]
    pub key: String,
    /// The object type.
    #[param(schema_with = super::stripe::type_schema)]
    pub object_type: String,
    /// Stripe's id of the object.
    #[param(schema_with = stripe_id_schema)]
    pub object_id: String,
}

/// The push queue's page parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PushesQuery {
    /// Only this status.
    #[param(schema_with = status_schema)]
    pub status: Option<String>,
    /// Page token from the previous page's `next`.
    #[param(schema_with = paging::after_push_schema)]
    pub after: Option<String>,
    /// Page size.
    #[param(schema_with = page_limit_schema)]
    pub limit: Option<String>,
}

/// An audit trail's page parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Page token from the previous page's `next`.
    #[param(schema_with = paging::after_entry_schema)]
    pub after: Option<String>,
    /// Page size.
    #[param(schema_with = page_limit_schema)]
    pub limit: Option<String>,
}

fn push_seq(id: &str) -> Result<u64, ApiError> {
    paging::parse_push_id(id)
        .ok_or_else(|| ApiError::bad_request("invalid_path", "push_id: a change id like push_12"))
}

// ---- responses -----------------------------------------------------------------------

/// A local change and its fate.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushView {
    /// `push_12`.
    pub id: String,
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// `products` or `prices`.
    pub object_type: ObjectType,
    /// Stripe's id (for a create, once pushed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// What it does.
    pub action: PushAction,
    /// `pending` (not yet confirmed by Stripe), `pushed`, `conflict` (held: changed at
    /// Stripe since the base), `failed` (held: refused by Stripe) or `discarded`.
    pub status: PushStatus,
    /// Stripe's parameters, as sent.
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, Value>,
    /// The local version of the object it was based on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// The object as the change expects to find it at Stripe (ours, in a conflict).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub base: Option<Value>,
    /// The earlier change of the same object it is queued behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The object as Stripe has it now, when held as a conflict (theirs).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub theirs: Option<Value>,
    /// Stripe's answer once pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The `Idempotency-Key` its write to Stripe carries.
    pub idempotency_key: String,
    /// The `Idempotency-Key` the caller queued it with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Tries that failed without an answer.
    pub attempts: u32,
    /// Times it was retried by a human.
    pub generation: u32,
    /// The last failure, or why it is held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When its write was first sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When Stripe applied it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<DateTime<Utc>>,
}

impl From<Push> for PushView {
    fn from(push: Push) -> PushView {
        PushView {
            id: push.id(),
            idempotency_key: push.idempotency_key(),
            client_key: push.client_key,
            account_id: push.account_id,
            object_type: push.object_type,
            object_id: push.object_id,
            action: push.action,
            status: push.status,
            params: push.params,
            base_version: push.base_version,
            base: push.base,
            after: push.after.map(|seq| format!("push_{seq}")),
            theirs: push.theirs,
            result: push.result,
            attempts: push.attempts,
            generation: push.generation,
            last_error: push.last_error,
            created_at: push.created_at,
            updated_at: push.updated_at,
            sent_at: push.sent_at,
            pushed_at: push.pushed_at,
        }
    }
}

/// An account's push queue at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct BacklogView {
    /// Changes waiting to be pushed.
    pub pending: u64,
    /// When the oldest of them was queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// How long the oldest has waited, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_age_seconds: Option<i64>,
    /// Pending changes whose last try failed (Stripe unreachable or rate limited).
    pub retrying: u64,
    /// Changes held as conflicts, waiting for a human.
    pub conflicts: u64,
    /// Changes Stripe refused, waiting for a human.
    pub failed: u64,
    /// Changes pushed.
    pub pushed: u64,
    /// Changes discarded.
    pub discarded: u64,
    /// The newest failure among pending changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl BacklogView {
    /// The view of `backlog` as of `now`.
    pub fn of(backlog: PushBacklog, now: DateTime<Utc>) -> BacklogView {
        BacklogView {
            pending: backlog.pending,
            oldest_pending_age_seconds: backlog
                .oldest_pending_at
                .map(|at| (now - at).num_seconds().max(0)),
            oldest_pending_at: backlog.oldest_pending_at,
            retrying: backlog.retrying,
            conflicts: backlog.conflicts,
            failed: backlog.failed,
            pushed: backlog.pushed,
            discarded: backlog.discarded,
            last_error: backlog.last_error,
        }
    }
}

/// A page of an account's changes, with its backlog.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushesResponse {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The queue at a glance.
    pub backlog: BacklogView,
    /// The changes, by number.
    pub pushes: Vec<PushView>,
    /// Token for the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One entry of an object's audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// Its number (entries are in this order).
    pub seq: u64,
    /// When acctor recorded it.
    pub at: DateTime<Utc>,
    /// `inbound` (Stripe → local copy) or `outbound` (local change → Stripe).
    pub direction: Direction,
    /// What happened (`product.updated`, `listed`, `update pushed`, `conflict held`…).
    pub what: String,
    /// Where from (`event evt_…`, `backfill`, `push_3`…).
    pub source: String,
    /// The local change it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_id: Option<String>,
    /// The local copy's version the entry wrote, when it wrote one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(entry: AuditEntry) -> AuditEntryView {
        AuditEntryView {
            seq: entry.seq,
            at: entry.at,
            direction: entry.note.direction,
            what: entry.note.what,
            source: entry.note.source,
            push_id: entry.note.push.map(|seq| format!("push_{seq}")),
            version: entry.version,
        }
    }
}

/// A page of an object's audit trail, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditResponse {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The object's type.
    pub object_type: ObjectType,
    /// The object's id.
    pub object_id: String,
    /// The entries.
    pub entries: Vec<AuditEntryView>,
    /// Token for the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

// ---- handlers ------------------------------------------------------------------------

/// Lists an account's local changes, by number, with the backlog (depth, oldest age,
/// retries, held changes).
#[utoipa::path(
    get,
    path = "/v1/stripe/{key}/pushes",
    tag = "stripe",
    operation_id = "list_stripe_pushes",
    params(AccountPath, PushesQuery),
    responses(
        (status = 200, description = "A page of changes", body = PushesResponse),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, or not a Stripe account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn list_pushes(
    State(state): State<AppState>,
    ApiPath(AccountPath { key }): ApiPath<AccountPath>,
    ApiQuery(query): ApiQuery<PushesQuery>,
) -> Result<Json<PushesResponse>, ApiError> {
    let statuses = match query.status.as_deref() {
        None => Vec::new(),
        Some(name) => vec![PushStatus::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "status: one of pending, pushed, conflict, failed, discarded",
            )
        })?],
    };
    let after = paging::read_after::<AfterPush>(query.after.as_deref())?;
    let limit = params::limit(query.limit.as_deref(), PAGE, MAX_PAGE)?;
    let (account, pushes, next, backlog) =
        service::list(&state.ctx, &key, statuses, after.map(|a| a.0), limit).await?;
    Ok(Json(PushesResponse {
        account_id: account.id,
        backlog: BacklogView::of(backlog, state.ctx.clock.now()),
        pushes: pushes.into_iter().map(PushView::from).collect(),
        next: next.map(|seq| AfterPush(seq).encode()),
    }))
}

/// Reads one change.
#[utoipa::path(
    get,
    path = "/v1/stripe/{key}/pushes/{push_id}",
    tag = "stripe",
    operation_id = "get_stripe_push",
    params(PushPath, NoQuery),
    responses(
        (status = 200, description = "The change", body = PushView),
        (status = 400, description = "Invalid request (the message names the parameter)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or no such change", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn get_push(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PushPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<PushView>, ApiError> {
    let seq = push_seq(&path.push_id)?;
    Ok(Json(service::get(&state.ctx, &path.key, seq).await?.into()))
}

async fn resolve(
    state: &AppState,
    path: PushPath,
    resolution: Resolution,
) -> Result<Json<PushView>, ApiError> {
    let seq = push_seq(&path.push_id)?;
    Ok(Json(
        service::resolve(&state.ctx, &path.key, seq, resolution)
            .await?
            .into(),
    ))
}

/// Retries a held change: a conflict against the object as Stripe has it now (the
/// change's fields are applied over Stripe's version), a failure as it was; with a new
/// idempotency key.
#[utoipa::path(
    post,
    path = "/v1/stripe/{key}/pushes/{push_id}/retry",
    tag = "stripe",
    operation_id = "retry_stripe_push",
    params(PushPath, NoQuery),
    responses(
        (status = 200, description = "Pending again", body = PushView),
        (status = 400, description = "Invalid request (the message names the parameter)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or no such change", body = ErrorBody),
        (status = 409, description = "The change is not held (`not_held`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn retry_push(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PushPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<PushView>, ApiError> {
    resolve(&state, path, Resolution::Retry).await
}

/// Discards a held change: it is never pushed.
#[utoipa::path(
    post,
    path = "/v1/stripe/{key}/pushes/{push_id}/discard",
    tag = "stripe",
    operation_id = "discard_stripe_push",
    params(PushPath, NoQuery),
    responses(
        (status = 200, description = "Discarded", body = PushView),
        (status = 400, description = "Invalid request (the message names the parameter)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or no such change", body = ErrorBody),
        (status = 409, description = "The change is not held (`not_held`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn discard_push(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PushPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<PushView>, ApiError> {
    resolve(&state, path, Resolution::Discard).await
}

/// Reads an object's audit trail, oldest first: every change in both directions
/// (events, backfill listings, re-fetches, drift repairs; local changes queued, pushed,
/// held, retried, discarded), what it was, where from and when.
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}/objects/{object_type}/{object_id}/audit",
    tag = "stripe",
    operation_id = "get_stripe_object_audit",
    params(AuditPath, AuditQuery),
    responses(
        (status = 200, description = "A page of the trail", body = AuditResponse),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, or not a Stripe account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn audit_trail(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<AuditPath>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditResponse>, ApiError> {
    let object_type = super::stripe::object_type(&path.object_type)?;
    object_id(&path.object_id)?;
    let after = paging::read_after::<AfterEntry>(query.after.as_deref())?;
    let limit = params::limit(query.limit.as_deref(), PAGE, MAX_PAGE)?;
    let (account, page) = service::audit(
        &state.ctx,
        &path.key,
        object_type,
        path.object_id.clone(),
        after.map(|a| a.0),
        limit,
    )
    .await?;
    Ok(Json(AuditResponse {
        account_id: account.id,
        object_type,
        object_id: path.object_id,
        entries: page.entries.into_iter().map(AuditEntryView::from).collect(),
        next: page.next.map(|seq| AfterEntry(seq).encode()),
    }))
}
