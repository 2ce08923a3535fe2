//! Local changes to a Stripe account's catalogue over HTTP: products and prices
//! created (`POST /v1/stripe/{key}/products`), updated (`PATCH …/products/{id}`) and
//! archived (`POST …/products/{id}/archive`), the push queue (`GET
//! /v1/stripe/{key}/pushes`, one change, a held change retried or discarded), and each
//! object's audit trail (`GET /v1/accounts/{key}/objects/{type}/{id}/audit`). Only
//! translation: the rules are `service::stripe_push`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::openapi::Object;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{FromJson, JsonFields};
use super::paging::{self, AfterEntry, AfterObject, AfterPush, PageToken};
use super::params;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, NoQuery};
use crate::domain::stripe::ObjectType;
use crate::domain::stripe_push::{
    AuditEntry, Direction, Push, PushAction, PushBacklog, PushStatus, Resolution,
};
use crate::domain::AccountId;
use crate::service::stripe_push::{
    self as service, CatalogFields, ChangeInput, INTERVALS, MAX_INTERVAL_COUNT, MAX_LOOKUP_KEY,
    MAX_METADATA_KEY, MAX_METADATA_KEYS, MAX_METADATA_VALUE, MAX_NAME, MAX_TEXT, MAX_UNIT_AMOUNT,
};

/// The default and largest page of changes or audit entries.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The push queue's routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_product))
        .routes(routes!(update_product))
        .routes(routes!(archive_product))
        .routes(routes!(create_price))
        .routes(routes!(update_price))
        .routes(routes!(archive_price))
        .routes(routes!(list_pushes))
        .routes(routes!(get_push))
        .routes(routes!(retry_push))
        .routes(routes!(discard_push))
        .routes(routes!(audit_trail))
}

// ---- schemas -------------------------------------------------------------------------

fn name_schema() -> Object {
    params::text_schema("The product's name", MAX_NAME)
}

fn description_schema() -> Object {
    params::text_schema("The product's description", MAX_TEXT)
}

fn nickname_schema() -> Object {
    params::text_schema("The price's nickname", MAX_TEXT)
}

fn lookup_key_schema() -> Object {
    params::text_schema("The price's lookup key", MAX_LOOKUP_KEY)
}

fn metadata_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_METADATA_KEYS))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_METADATA_KEY))
                .pattern(Some("^[^\\[\\]\\u0000-\\u001f\\u007f-\\u009f]+$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_METADATA_VALUE))
                .pattern(Some("^[^\\u0000-\\u001f\\u007f-\\u009f]*$"))
                .into(),
        )))
        .description(Some(
            "Metadata keys to set at Stripe (merged into what it has; an empty value removes \
             the key)",
        ))
        .build()
}

fn stripe_id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(AfterObject::PATTERN))
        .description(Some("A Stripe id (letters, digits and underscores)"))
        .build()
}

fn currency_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z]{3}$"))
        .description(Some("Three-letter ISO 4217 currency code, lower case"))
        .build()
}

fn unit_amount_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(MAX_UNIT_AMOUNT as f64))
        .description(Some("The amount in the currency's smallest unit"))
        .build()
}

fn interval_schema() -> Object {
    params::enum_schema(&INTERVALS, "The billing interval")
}

fn interval_count_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_INTERVAL_COUNT as f64))
        .description(Some("Intervals between two bills (default 1)"))
        .build()
}

fn base_version_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(i64::MAX as f64))
        .description(Some(
            "The object's version you based the change on (`version` of GET \
             /v1/accounts/{key}/objects/{type}/{id}): refused with 409 `stale_base` if the \
             local copy has moved on since",
        ))
        .build()
}

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

// ---- request bodies ------------------------------------------------------------------

fn metadata(fields: &mut JsonFields) -> Result<CatalogFieldsPart, ApiError> {
    Ok(CatalogFieldsPart {
        active: fields.opt_flag("active")?,
        metadata: fields.opt_string_map("metadata")?,
    })
}

/// The fields every catalogue body shares.
struct CatalogFieldsPart {
    active: Option<bool>,
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /v1/stripe/{key}/products`: a new product.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductCreateRequest {
    /// The product's name.
    #[schema(schema_with = name_schema)]
    pub name: String,
    /// Its description.
    #[schema(schema_with = description_schema, nullable = false)]
    pub description: Option<String>,
    /// Whether it is available for purchase (Stripe's default: true).
    #[schema(nullable = false)]
    pub active: Option<bool>,
    /// Metadata.
    #[schema(schema_with = metadata_schema, nullable = false)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl FromJson for ProductCreateRequest {
    const FIELDS: &'static [&'static str] = &["name", "description", "active", "metadata"];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        let name = fields.string("name")?;
        let description = fields.opt_string("description")?;
        let part = metadata(fields)?;
        Ok(ProductCreateRequest {
            name,
            description,
            active: part.active,
            metadata: part.metadata,
        })
    }
}

/// `PATCH /v1/stripe/{key}/products/{object_id}`: the fields to change (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct ProductUpdateRequest {
    /// A new name.
    #[schema(schema_with = name_schema, nullable = false)]
    pub name: Option<String>,
    /// A new description.
    #[schema(schema_with = description_schema, nullable = false)]
    pub description: Option<String>,
    /// Available or not.
    #[schema(nullable = false)]
    pub active: Option<bool>,
    /// Metadata keys to set.
    #[schema(schema_with = metadata_schema, nullable = false)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl FromJson for ProductUpdateRequest {
    const FIELDS: &'static [&'static str] = &["name", "description", "active", "metadata"];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        let name = fields.opt_string("name")?;
        let description = fields.opt_string("description")?;
        let part = metadata(fields)?;
        Ok(ProductUpdateRequest {
            name,
            description,
            active: part.active,
            metadata: part.metadata,
        })
    }
}

/// A recurring price's billing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecurringRequest {
    /// The billing interval.
    #[schema(schema_with = interval_schema)]
    pub interval: String,
    /// Intervals between two bills.
    #[schema(schema_with = interval_count_schema, nullable = false)]
    pub interval_count: Option<u64>,
}

/// `POST /v1/stripe/{key}/prices`: a new price of a product.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceCreateRequest {
    /// The product it prices (Stripe's id).
    #[schema(schema_with = stripe_id_schema)]
    pub product: String,
    /// The currency.
    #[schema(schema_with = currency_schema)]
    pub currency: String,
    /// The amount.
    #[schema(schema_with = unit_amount_schema)]
    pub unit_amount: u64,
    /// For a recurring price: its billing (absent: a one-time price).
    #[schema(nullable = false)]
    pub recurring: Option<RecurringRequest>,
    /// A nickname.
    #[schema(schema_with = nickname_schema, nullable = false)]
    pub nickname: Option<String>,
    /// A lookup key.
    #[schema(schema_with = lookup_key_schema, nullable = false)]
    pub lookup_key: Option<String>,
    /// Whether it can be used for new purchases (Stripe's default: true).
    #[schema(nullable = false)]
    pub active: Option<bool>,
    /// Metadata.
    #[schema(schema_with = metadata_schema, nullable = false)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl FromJson for PriceCreateRequest {
    const FIELDS: &'static [&'static str] = &[
        "product",
        "currency",
        "unit_amount",
        "recurring",
        "nickname",
        "lookup_key",
        "active",
        "metadata",
    ];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        let product = fields.string("product")?;
        let currency = fields.string("currency")?;
        let unit_amount = fields
            .opt_u64("unit_amount", 0, MAX_UNIT_AMOUNT)?
            .ok_or_else(|| ApiError::bad_request("invalid_body", "unit_amount: required"))?;
        let recurring = match fields.opt_object("recurring", &["interval", "interval_count"])? {
            Some(mut nested) => Some(RecurringRequest {
                interval: nested.string("interval").map_err(|_| {
                    ApiError::bad_request(
                        "invalid_body",
                        format!(
                            "recurring.interval: required, one of {}",
                            INTERVALS.join(", ")
                        ),
                    )
                })?,
                interval_count: nested
                    .opt_u64("interval_count", 1, MAX_INTERVAL_COUNT)
                    .map_err(|_| {
                        ApiError::bad_request(
                            "invalid_body",
                            format!(
                                "recurring.interval_count: must be an integer from 1 to \
                                 {MAX_INTERVAL_COUNT}"
                            ),
                        )
                    })?,
            }),
            None => None,
        };
        let nickname = fields.opt_string("nickname")?;
        let lookup_key = fields.opt_string("lookup_key")?;
        let part = metadata(fields)?;
        Ok(PriceCreateRequest {
            product,
            currency,
            unit_amount,
            recurring,
            nickname,
            lookup_key,
            active: part.active,
            metadata: part.metadata,
        })
    }
}

/// `PATCH /v1/stripe/{key}/prices/{object_id}`: the fields to change (at least one;
/// Stripe does not change a price's amount or currency: create a new price instead).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct PriceUpdateRequest {
    /// A new nickname.
    #[schema(schema_with = nickname_schema, nullable = false)]
    pub nickname: Option<String>,
    /// A new lookup key.
    #[schema(schema_with = lookup_key_schema, nullable = false)]
    pub lookup_key: Option<String>,
    /// Available or not.
    #[schema(nullable = false)]
    pub active: Option<bool>,
    /// Metadata keys to set.
    #[schema(schema_with = metadata_schema, nullable = false)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl FromJson for PriceUpdateRequest {
    const FIELDS: &'static [&'static str] = &["nickname", "lookup_key", "active", "metadata"];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        let nickname = fields.opt_string("nickname")?;
        let lookup_key = fields.opt_string("lookup_key")?;
        let part = metadata(fields)?;
        Ok(PriceUpdateRequest {
            nickname,
            lookup_key,
            active: part.active,
            metadata: part.metadata,
        })
    }
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

/// `/v1/stripe/{key}/{products|prices}/{object_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CatalogObjectPath {
    /// Account id, alias, item id (the `acct_…` id) or owner id.
    #[param(schema_with = params::account_key_schema)]
    pub key: String,
    /// Stripe's id of the product or price.
    #[param(schema_with = stripe_id_schema)]
    pub object_id: String,
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

/// The caller's idempotency key of a change.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// Sent again with the same key and the same change, the request answers with the
    /// change it queued the first time instead of queueing another; with another change,
    /// `409 idempotency_key_reused`. Kept as long as the change is.
    #[serde(rename = "Idempotency-Key")]
    #[param(schema_with = idempotency_key_schema)]
    pub idempotency_key: Option<String>,
}

fn idempotency_key_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_KEY))
        .pattern(Some("^[!-~]+$"))
        .description(Some("1 to 255 visible ASCII characters (a UUID, say)"))
        .build()
}

/// Longest idempotency key (Stripe's limit).
const MAX_KEY: usize = 255;

/// The request's `Idempotency-Key`, checked.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let valid = value.len() <= MAX_KEY
        && !value.is_empty()
        && value.as_bytes().iter().all(|b| (b'!'..=b'~').contains(b));
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_header",
            "Idempotency-Key: 1 to 255 visible ASCII characters",
        ));
    }
    Ok(value.to_str().ok().map(str::to_owned))
}

/// The optional base version of a change.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuery {
    /// The version the change is based on.
    #[param(schema_with = base_version_schema)]
    pub base_version: Option<String>,
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

fn base_version(query: &ChangeQuery) -> Result<Option<u64>, ApiError> {
    let Some(text) = query.base_version.as_deref() else {
        return Ok(None);
    };
    let valid = !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit());
    valid
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .filter(|v| (1..=i64::MAX as u64).contains(v))
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "base_version: must be an integer from 1 to 9223372036854775807",
            )
        })
}

fn object_id(id: &str) -> Result<(), ApiError> {
    if AfterObject::decode(id).is_none() {
        return Err(ApiError::bad_request(
            "invalid_path",
            "object_id: Stripe ids are 1 to 255 letters, digits and underscores",
        ));
    }
    Ok(())
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

async fn queue(
    state: &AppState,
    key: &str,
    headers: &HeaderMap,
    mut input: ChangeInput,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    input.client_key = idempotency_key(headers)?;
    let push = service::change(&state.ctx, key, input).await?;
    Ok((StatusCode::ACCEPTED, Json(push.into())))
}

/// Creates a product: queued locally (durably, numbered) and pushed to Stripe by the
/// account's actor with an idempotency key derived from the change. Follow it at
/// `GET /v1/stripe/{key}/pushes/{push_id}`.
#[utoipa::path(
    post,
    path = "/v1/stripe/{key}/products",
    tag = "stripe",
    operation_id = "create_stripe_product",
    params(AccountPath, NoQuery, IdempotencyHeader),
    request_body(content = ProductCreateRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = PushView),
        (status = 400, description = "Invalid request (the message names the field)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, or not a Stripe account", body = ErrorBody),
        (status = 409, description = "The account does not mirror products (`not_mirrored`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn create_product(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(AccountPath { key }): ApiPath<AccountPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<ProductCreateRequest>,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    let input = ChangeInput {
        object_type: ObjectType::Products,
        action: PushAction::Create,
        object_id: None,
        fields: CatalogFields {
            name: Some(body.name),
            description: body.description,
            active: body.active,
            metadata: body.metadata,
            ..CatalogFields::default()
        },
        base_version: None,
        client_key: None,
    };
    queue(&state, &key, &headers, input).await
}

/// Updates a product: queued, then pushed unless the product changed at Stripe after
/// the version the change was based on (then held as `conflict`, with both versions).
#[utoipa::path(
    patch,
    path = "/v1/stripe/{key}/products/{object_id}",
    tag = "stripe",
    operation_id = "update_stripe_product",
    params(CatalogObjectPath, ChangeQuery, IdempotencyHeader),
    request_body(content = ProductUpdateRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = PushView),
        (status = 400, description = "Invalid request (the message names the field)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or no such product in the local copy", body = ErrorBody),
        (status = 409, description = "The local copy moved on from `base_version` (`stale_base`), the account does not mirror products (`not_mirrored`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn update_product(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<CatalogObjectPath>,
    ApiQuery(query): ApiQuery<ChangeQuery>,
    ApiJson(body): ApiJson<ProductUpdateRequest>,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    object_id(&path.object_id)?;
    let input = ChangeInput {
        object_type: ObjectType::Products,
        action: PushAction::Update,
        object_id: Some(path.object_id),
        fields: CatalogFields {
            name: body.name,
            description: body.description,
            active: body.active,
            metadata: body.metadata,
            ..CatalogFields::default()
        },
        base_version: base_version(&query)?,
        client_key: None,
    };
    queue(&state, &path.key, &headers, input).await
}

async fn archive(
    state: &AppState,
    object_type: ObjectType,
    path: CatalogObjectPath,
    query: &ChangeQuery,
    headers: &HeaderMap,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    object_id(&path.object_id)?;
    let input = ChangeInput {
        object_type,
        action: PushAction::Archive,
        object_id: Some(path.object_id),
        fields: CatalogFields::default(),
        base_version: base_version(query)?,
        client_key: None,
    };
    queue(state, &path.key, headers, input).await
}

/// Archives a product (`active=false` at Stripe: it stays, for what refers to it).
#[utoipa::path(
    post,
    path = "/v1/stripe/{key}/products/{object_id}/archive",
    tag = "stripe",
    operation_id = "archive_stripe_product",
    params(CatalogObjectPath, ChangeQuery, IdempotencyHeader),
    responses(
        (status = 202, description = "Queued", body = PushView),
        (status = 400, description = "Invalid request (the message names the parameter)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or no such product in the local copy", body = ErrorBody),
        (status = 409, description = "The local copy moved on from `base_version` (`stale_base`), the account does not mirror products (`not_mirrored`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn archive_product(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<CatalogObjectPath>,
    ApiQuery(query): ApiQuery<ChangeQuery>,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    archive(&state, ObjectType::Products, path, &query, &headers).await
}

/// Creates a price of a product: queued, then pushed.
#[utoipa::path(
    post,
    path = "/v1/stripe/{key}/prices",
    tag = "stripe",
    operation_id = "create_stripe_price",
    params(AccountPath, NoQuery, IdempotencyHeader),
    request_body(content = PriceCreateRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = PushView),
        (status = 400, description = "Invalid request (the message names the field)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, or not a Stripe account", body = ErrorBody),
        (status = 409, description = "The account does not mirror prices (`not_mirrored`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn create_price(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(AccountPath { key }): ApiPath<AccountPath>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
    ApiJson(body): ApiJson<PriceCreateRequest>,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    let input = ChangeInput {
        object_type: ObjectType::Prices,
        action: PushAction::Create,
        object_id: None,
        fields: CatalogFields {
            product: Some(body.product),
            currency: Some(body.currency),
            unit_amount: Some(body.unit_amount),
            interval: body.recurring.as_ref().map(|r| r.interval.clone()),
            interval_count: body.recurring.and_then(|r| r.interval_count),
            nickname: body.nickname,
            lookup_key: body.lookup_key,
            active: body.active,
            metadata: body.metadata,
            ..CatalogFields::default()
        },
        base_version: None,
        client_key: None,
    };
    queue(&state, &key, &headers, input).await
}

/// Updates a price (nickname, lookup key, active, metadata): queued, then pushed unless
/// it changed at Stripe after its base (then held as `conflict`).
#[utoipa::path(
    patch,
    path = "/v1/stripe/{key}/prices/{object_id}",
    tag = "stripe",
    operation_id = "update_stripe_price",
    params(CatalogObjectPath, ChangeQuery, IdempotencyHeader),
    request_body(content = PriceUpdateRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = PushView),
        (status = 400, description = "Invalid request (the message names the field)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or no such price in the local copy", body = ErrorBody),
        (status = 409, description = "The local copy moved on from `base_version` (`stale_base`), the account does not mirror prices (`not_mirrored`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn update_price(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<CatalogObjectPath>,
    ApiQuery(query): ApiQuery<ChangeQuery>,
    ApiJson(body): ApiJson<PriceUpdateRequest>,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    object_id(&path.object_id)?;
    let input = ChangeInput {
        object_type: ObjectType::Prices,
        action: PushAction::Update,
        object_id: Some(path.object_id),
        fields: CatalogFields {
            nickname: body.nickname,
            lookup_key: body.lookup_key,
            active: body.active,
            metadata: body.metadata,
            ..CatalogFields::default()
        },
        base_version: base_version(&query)?,
        client_key: None,
    };
    queue(&state, &path.key, &headers, input).await
}

/// Archives a price (`active=false` at Stripe).
#[utoipa::path(
    post,
    path = "/v1/stripe/{key}/prices/{object_id}/archive",
    tag = "stripe",
    operation_id = "archive_stripe_price",
    params(CatalogObjectPath, ChangeQuery, IdempotencyHeader),
    responses(
        (status = 202, description = "Queued", body = PushView),
        (status = 400, description = "Invalid request (the message names the parameter)", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such account, not a Stripe account, or no such price in the local copy", body = ErrorBody),
        (status = 409, description = "The local copy moved on from `base_version` (`stale_base`), the account does not mirror prices (`not_mirrored`), or the key is shared (`ambiguous_key`)", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
async fn archive_price(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<CatalogObjectPath>,
    ApiQuery(query): ApiQuery<ChangeQuery>,
) -> Result<(StatusCode, Json<PushView>), ApiError> {
    archive(&state, ObjectType::Prices, path, &query, &headers).await
}

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
