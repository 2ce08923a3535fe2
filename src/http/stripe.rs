//! Stripe over HTTP: the event endpoints (`POST /webhooks/stripe` for Connect events,
//! `POST /webhooks/stripe/{account}` for an account's own) and the local copy
//! (`GET /v1/accounts/{key}/stripe`, `…/objects/{type}`, `…/objects/{type}/{id}`).
//! Only translation: the rules are `service::ingest` (events) and `service::stripe`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::Object;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::accounts::KeyPath;
use super::error::ErrorBody;
use super::paging::{self, AfterObject, PageToken};
use super::params;
use super::webhooks::{api_error, rejection_reason, WebhookAck};
use super::{ApiError, ApiPath, ApiQuery, AppState, NoQuery};
use crate::config::Settings;
use crate::domain::stripe::{DriftReport, ObjectType, StoredObject};
use crate::domain::AccountId;
use crate::service::ingest::Outcome;
use crate::service::stripe as service;

/// The largest page of objects.
const MAX_PAGE: usize = 1000;
/// The default page of objects.
const OBJECTS_PAGE: usize = 100;

/// The Stripe routes: events (with the webhook body limit) and the local copy.
pub fn router(settings: &Settings) -> OpenApiRouter<AppState> {
    let events = OpenApiRouter::new()
        .routes(routes!(receive_connect))
        .routes(routes!(receive_account))
        .layer(DefaultBodyLimit::max(
            settings.server.webhook_body_limit_bytes,
        ));
    OpenApiRouter::new()
        .routes(routes!(report))
        .routes(routes!(objects))
        .routes(routes!(object))
        .merge(events)
}

fn account_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(crate::service::stripe_link::ACCOUNT_ID_PATTERN))
        .description(Some("The Stripe account whose endpoint this is"))
        .build()
}

/// The `{account}` of an account's own endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EndpointPath {
    /// The Stripe account id (`acct_…`) the endpoint was created for.
    #[param(schema_with = account_schema)]
    pub account: String,
}

async fn receive(
    state: AppState,
    endpoint: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAck>), ApiError> {
    let metrics = state.ctx.metrics.clone();
    let answer = async {
        let body = body?;
        let ack = state
            .ingest()
            .receive_stripe(endpoint.as_deref(), &headers, &body)
            .await
            .map_err(api_error)?;
        let (seq, routed) = match ack.outcome {
            Outcome::Accepted { seq, routed } => (Some(seq), routed),
            Outcome::Duplicate { routed } => (None, routed),
        };
        Ok((
            ack.status,
            Json(WebhookAck {
                status: ack.outcome.name(),
                seq,
                routed,
            }),
        ))
    }
    .await;
    match &answer {
        Ok((_, Json(ack))) => metrics.webhook("stripe", ack.status, ""),
        Err(error) => metrics.webhook("stripe", "rejected", rejection_reason(error)),
    }
    answer
}

/// Receives a Stripe event for a Connect account (the event's `account` says which):
/// verified with that account's endpoint secrets (not the admin token), deduplicated by
/// event id, written durably, then acknowledged.
#[utoipa::path(
    post,
    path = "/webhooks/stripe",
    tag = "webhooks",
    operation_id = "receive_stripe_connect_event",
    security(()),
    params(
        NoQuery,
        ("Stripe-Signature" = String, Header, description = "t=<unix time>,v1=<HMAC-SHA256 hex>[,v1=…]"),
    ),
    request_body(content = Object, description = "The Stripe event, verbatim", content_type = "application/json"),
    responses(
        (status = 200, description = "On disk (accepted or duplicate)", body = WebhookAck),
        (status = 400, description = "Not a Stripe event", body = ErrorBody),
        (status = 401, description = "Bad, stale or missing signature, or an event without `account` (nothing could verify it: post an account's own events to /webhooks/stripe/{account})", body = ErrorBody),
        (status = 404, description = "No linked Stripe account for the event (`unknown_account`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Inbox full; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Shutting down or store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn receive_connect(
    State(state): State<AppState>,
    query: Result<ApiQuery<NoQuery>, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAck>), ApiError> {
    query?;
    receive(state, None, headers, body).await
}

/// Receives a Stripe event sent to an account's own endpoint: routed to the event's
/// `account` when it names one, else to `{account}`; verified with that account's
/// endpoint secrets, deduplicated by event id, written durably, then acknowledged.
#[utoipa::path(
    post,
    path = "/webhooks/stripe/{account}",
    tag = "webhooks",
    operation_id = "receive_stripe_event",
    security(()),
    params(
        EndpointPath,
        NoQuery,
        ("Stripe-Signature" = String, Header, description = "t=<unix time>,v1=<HMAC-SHA256 hex>[,v1=…]"),
    ),
    request_body(content = Object, description = "The Stripe event, verbatim", content_type = "application/json"),
    responses(
        (status = 200, description = "On disk (accepted or duplicate)", body = WebhookAck),
        (status = 400, description = "Not a Stripe event", body = ErrorBody),
        (status = 401, description = "Bad, stale or missing signature", body = ErrorBody),
        (status = 404, description = "No linked Stripe account for the event (`unknown_account`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Inbox full; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Shutting down or store unavailable; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn receive_account(
    State(state): State<AppState>,
    ApiPath(EndpointPath { account }): ApiPath<EndpointPath>,
    query: Result<ApiQuery<NoQuery>, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAck>), ApiError> {
    query?;
    receive(state, Some(account), headers, body).await
}

pub(super) fn type_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ObjectType::ALL.iter().map(|t| t.as_str())))
        .description(Some("An object type (Stripe's list endpoint name)"))
        .build()
}

pub(super) fn object_id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(AfterObject::PATTERN))
        .description(Some("Stripe's id of the object"))
        .build()
}

fn objects_limit_schema() -> Object {
    params::limit_schema(OBJECTS_PAGE, MAX_PAGE)
}

/// `{key}/objects/{object_type}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TypePath {
    /// Account id, alias, item id (the `acct_…` id) or owner id.
    #[param(schema_with = params::account_key_schema)]
    pub key: String,
    /// The object type.
    #[param(schema_with = type_schema)]
    pub object_type: String,
}

/// `{key}/objects/{object_type}/{object_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ObjectPath {
    /// Account id, alias, item id (the `acct_…` id) or owner id.
    #[param(schema_with = params::account_key_schema)]
    pub key: String,
    /// The object type.
    #[param(schema_with = type_schema)]
    pub object_type: String,
    /// Stripe's id of the object.
    #[param(schema_with = object_id_schema)]
    pub object_id: String,
}

/// The page parameters of an object list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ObjectsQuery {
    /// Page token from the previous page's `next`.
    #[param(schema_with = paging::after_object_schema)]
    pub after: Option<String>,
    /// Page size.
    #[param(schema_with = objects_limit_schema)]
    pub limit: Option<String>,
}

pub(super) fn object_type(name: &str) -> Result<ObjectType, ApiError> {
    ObjectType::parse(name).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_path",
            format!(
                "object_type: {:?} is not a mirrored type (types: {})",
                name.chars().take(40).collect::<String>(),
                ObjectType::names()
            ),
        )
    })
}

/// A page of Stripe objects, verbatim.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectsResponse {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The type listed.
    pub object_type: ObjectType,
    /// Stripe's objects as last written, by id.
    #[schema(value_type = Vec<Object>)]
    pub objects: Vec<serde_json::Value>,
    /// Token for the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Lists the local copy of one type of a Stripe account's objects, by id. A type is
/// listed once its backfill has completed (`409 backfill_running` before).
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}/objects/{object_type}",
    tag = "stripe",
    operation_id = "list_stripe_objects",
    params(TypePath, ObjectsQuery),
    responses(
        (status = 200, description = "A page of objects", body = ObjectsResponse),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or a type it does not mirror", body = ErrorBody),
        (status = 409, description = "The type is still being backfilled (`backfill_running`), or the key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn objects(
    State(state): State<AppState>,
    ApiPath(TypePath {
        key,
        object_type: name,
    }): ApiPath<TypePath>,
    ApiQuery(query): ApiQuery<ObjectsQuery>,
) -> Result<Json<ObjectsResponse>, ApiError> {
    let object_type = object_type(&name)?;
    let after = paging::read_after::<AfterObject>(query.after.as_deref())?;
    let limit = params::limit(query.limit.as_deref(), OBJECTS_PAGE, MAX_PAGE)?;
    let (account, page) =
        service::objects(&state.ctx, &key, object_type, after.map(|a| a.0), limit).await?;
    Ok(Json(ObjectsResponse {
        account_id: account.id,
        object_type,
        objects: page.objects.into_iter().filter_map(|o| o.body).collect(),
        next: page.next.map(|id| AfterObject(id).encode()),
    }))
}

/// Refuses what is not a Stripe id (the `object_id` of a path).
pub(super) fn check_object_id(id: &str) -> Result<(), ApiError> {
    if AfterObject::decode(id).is_none() {
        return Err(ApiError::bad_request(
            "invalid_path",
            "object_id: Stripe ids are 1 to 255 letters, digits and underscores",
        ));
    }
    Ok(())
}

/// One object as stored, with what wrote it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectView {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The type.
    pub object_type: ObjectType,
    /// Stripe's object as last written.
    #[schema(value_type = Object)]
    pub object: serde_json::Value,
    /// The second the written state is from (an event's `created`, or when Stripe
    /// answered the fetch), unix seconds.
    pub stamp_at: i64,
    /// The event that wrote it, absent when a listing or retrieve did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Writes applied to it so far.
    pub version: u64,
    /// When acctor wrote it.
    pub updated_at: DateTime<Utc>,
}

impl ObjectView {
    fn of(account_id: AccountId, object: StoredObject) -> ObjectView {
        ObjectView {
            account_id,
            object_type: object.object_type,
            object: object.body.unwrap_or_default(),
            stamp_at: object.stamp.at,
            event_id: object.stamp.event_id,
            version: object.version,
            updated_at: object.updated_at,
        }
    }
}

/// Reads one object of a Stripe account's local copy.
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}/objects/{object_type}/{object_id}",
    tag = "stripe",
    operation_id = "get_stripe_object",
    params(ObjectPath, NoQuery),
    responses(
        (status = 200, description = "The object", body = ObjectView),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, no such object, or deleted at Stripe", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn object(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ObjectPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<ObjectView>, ApiError> {
    let object_type = object_type(&path.object_type)?;
    check_object_id(&path.object_id)?;
    let (account, object) =
        service::object(&state.ctx, &path.key, object_type, path.object_id).await?;
    Ok(Json(ObjectView::of(account.id, object)))
}

/// One type's backfill.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillView {
    /// The type.
    pub object_type: ObjectType,
    /// Whether its listing has completed.
    pub done: bool,
    /// Whether its objects are visible.
    pub visible: bool,
    /// Pages listed.
    pub pages: u64,
    /// Objects listed.
    pub objects: u64,
    /// Live objects held now.
    pub held: u64,
    /// When it completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// A Stripe account's mirror: settings, backfill, catch-up and guard counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct StripeReportView {
    /// The account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The Stripe account id.
    pub stripe_account: String,
    /// Live or test mode (from the key).
    pub livemode: bool,
    /// A Connect account reached through its platform's key.
    pub connect: bool,
    /// The types whose same-second events are re-fetched.
    pub refetch_on_tie: Vec<ObjectType>,
    /// Per mirrored type.
    pub types: Vec<BackfillView>,
    /// Every event created before this (unix seconds) has been applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_checked_through: Option<i64>,
    /// The newest event applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// Events that changed an object.
    pub events_applied: u64,
    /// Events skipped as older than the stored state, or repeats.
    pub events_stale: u64,
    /// Objects re-fetched on a same-second doubt.
    pub refetches: u64,
    /// Catch-ups from the Events API.
    pub catch_ups: u64,
    /// Events recognised as the echo of acctor's own pushes (they changed nothing).
    pub echoes: u64,
    /// The push queue of local changes at a glance (`GET /v1/stripe/{key}/pushes`
    /// lists them).
    pub pushes: super::stripe_push::BacklogView,
    /// When the next drift check is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_drift_check: Option<DateTime<Utc>>,
    /// What the last drift check found.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub drift: Option<DriftReport>,
}

/// Reads a Stripe account's mirror report.
#[utoipa::path(
    get,
    path = "/v1/accounts/{key}/stripe",
    tag = "stripe",
    operation_id = "get_stripe_report",
    params(KeyPath, NoQuery),
    responses(
        (status = 200, description = "The report", body = StripeReportView),
        (status = 400, description = "Invalid request: an unknown query parameter, or a value this document does not allow (the message names it)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, or not a Stripe account", body = ErrorBody),
        (status = 409, description = "The key is shared by several accounts (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn report(
    State(app): State<AppState>,
    ApiPath(KeyPath { key }): ApiPath<KeyPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Result<Json<StripeReportView>, ApiError> {
    let report = service::report(&app.ctx, &key).await?;
    let types = report
        .counts
        .iter()
        .map(|(object_type, held)| {
            let backfill = report.state.backfill.get(object_type);
            BackfillView {
                object_type: *object_type,
                done: backfill.is_some_and(|b| b.done),
                visible: report.state.is_visible(*object_type),
                pages: backfill.map_or(0, |b| b.pages),
                objects: backfill.map_or(0, |b| b.objects),
                held: *held,
                completed_at: backfill.and_then(|b| b.completed_at),
            }
        })
        .collect();
    let state = report.state;
    let state_now = app.ctx.clock.now();
    Ok(Json(StripeReportView {
        account_id: report.account.id,
        stripe_account: report.account.item_id,
        livemode: report.link.livemode,
        connect: report.link.connect,
        refetch_on_tie: report.link.refetch_on_tie,
        types,
        events_checked_through: state.events_checked_through,
        last_event_id: state.last_event.map(|m| m.id),
        events_applied: state.events_applied,
        events_stale: state.events_stale,
        refetches: state.refetches,
        catch_ups: state.catch_ups,
        echoes: state.echoes,
        pushes: super::stripe_push::BacklogView::of(report.backlog, state_now),
        next_drift_check: state.next_drift_check,
        drift: state.drift,
    }))
}
