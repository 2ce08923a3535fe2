//! Local changes to a Stripe account's catalogue over HTTP: products and prices
//! created (`POST /v1/stripe/{key}/products`), updated (`PATCH …/products/{id}`) and
//! archived (`POST …/products/{id}/archive`), each answered with the change queued (see
//! `http::stripe_push` for the queue). Only translation: the rules are
//! `service::stripe_push`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::openapi::Object;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::{FromJson, JsonFields};
use super::params;
use super::stripe::{check_object_id as object_id, object_id_schema as stripe_id_schema};
use super::stripe_push::{AccountPath, PushView};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, NoQuery};
use crate::domain::stripe::ObjectType;
use crate::domain::stripe_push::PushAction;
use crate::service::stripe_push::{
    self as service, CatalogFields, ChangeInput, INTERVALS, MAX_INTERVAL_COUNT, MAX_LOOKUP_KEY,
    MAX_METADATA_KEY, MAX_METADATA_KEYS, MAX_METADATA_VALUE, MAX_NAME, MAX_TEXT, MAX_UNIT_AMOUNT,
};

/// The catalogue's change routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_product))
        .routes(routes!(update_product))
        .routes(routes!(archive_product))
        .routes(routes!(create_price))
        .routes(routes!(update_price))
        .routes(routes!(archive_price))
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
