//! The body of `POST /v1/accounts`, one shape per provider. The document says it as a
//! `oneOf` whose branches differ in `provider` (a one-value enum each), so a body
//! matches exactly one branch, and each branch refuses fields it does not list: a Plaid
//! link takes no Stripe settings. The rules of each field are the service's
//! (`service::accounts`, `service::stripe_link`); the patterns here are the same rules.

use serde::Deserialize;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{Object, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::extract::{FromJson, JsonFields};
use super::params;
use super::ApiError;
use crate::domain::stripe::ObjectType;
use crate::service::accounts::LinkInput;
use crate::service::stripe_link::{
    StripeLinkInput, ACCOUNT_ID_PATTERN, API_KEY_PATTERN, MAX_WEBHOOK_SECRETS,
    WEBHOOK_SECRET_PATTERN,
};

/// The fields only a Stripe link has.
const STRIPE_FIELDS: [&str; 4] = [
    "webhook_secrets",
    "object_types",
    "refetch_on_tie",
    "connect",
];

/// `POST /v1/accounts` body, read field by field (`FromJson`) so every refusal names
/// its field. Its document is [`PlaidLinkBody`] or [`StripeLinkBody`].
#[derive(Debug)]
pub struct LinkRequest {
    /// `plaid` or `stripe`.
    pub provider: String,
    /// The provider's item id (Stripe: the `acct_…` id).
    pub item_id: String,
    /// The provider access token (Stripe: the API key).
    pub access_token: String,
    /// The owner's id in the caller's system.
    pub owner_id: String,
    /// Extra lookup keys.
    pub aliases: Vec<String>,
    /// A Stripe link's settings.
    pub stripe: Option<StripeLinkInput>,
}

impl FromJson for LinkRequest {
    const FIELDS: &'static [&'static str] = &[
        "provider",
        "item_id",
        "access_token",
        "owner_id",
        "aliases",
        "webhook_secrets",
        "object_types",
        "refetch_on_tie",
        "connect",
    ];

    fn from_json(fields: &mut JsonFields) -> Result<Self, ApiError> {
        let provider = fields.string("provider")?;
        let item_id = fields.string("item_id")?;
        let access_token = fields.string("access_token")?;
        let owner_id = fields.string("owner_id")?;
        let aliases = fields.strings("aliases")?;
        let stripe = if provider == "stripe" {
            Some(StripeLinkInput {
                webhook_secrets: fields.required_strings("webhook_secrets")?,
                object_types: fields.opt_strings("object_types")?,
                refetch_on_tie: fields.opt_strings("refetch_on_tie")?,
                connect: fields.opt_bool("connect", false)?,
            })
        } else {
            if let Some(field) = STRIPE_FIELDS.iter().find(|f| fields.has(f)) {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    format!("{field}: only a Stripe link (provider stripe) takes it"),
                ));
            }
            None
        };
        Ok(LinkRequest {
            provider,
            item_id,
            access_token,
            owner_id,
            aliases,
            stripe,
        })
    }
}

impl From<LinkRequest> for LinkInput {
    fn from(request: LinkRequest) -> Self {
        LinkInput {
            provider: request.provider,
            item_id: request.item_id,
            access_token: request.access_token,
            owner_id: request.owner_id,
            aliases: request.aliases,
            stripe: request.stripe,
        }
    }
}

impl PartialSchema for LinkRequest {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(PlaidLinkBody::schema())
            .item(StripeLinkBody::schema())
            .description(Some(
                "A link: its shape depends on `provider`. Linking an item already linked to \
                 the same owner relinks it (new credentials).",
            ))
            .into()
    }
}

impl ToSchema for LinkRequest {}

fn one_value(value: &'static str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([value]))
        .build()
}

fn plaid_provider() -> Object {
    one_value("plaid")
}

fn stripe_provider() -> Object {
    one_value("stripe")
}

fn item_id_schema() -> Object {
    params::key_schema_described("The provider's item id")
}

fn owner_id_schema() -> Object {
    params::key_schema_described("The owning user's id in the caller's system")
}

fn pattern(pattern: &str, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .build()
}

fn stripe_account_schema() -> Object {
    pattern(
        ACCOUNT_ID_PATTERN,
        "The Stripe account's id (a Connect account's, or the platform's own)",
    )
}

fn stripe_key_schema() -> Object {
    let mut schema = pattern(
        API_KEY_PATTERN,
        "The API key: a secret or restricted key (read access to the mirrored types is \
         enough). Stored sealed, never returned",
    );
    schema.format = Some(SchemaFormat::KnownFormat(KnownFormat::Password));
    schema
}

fn webhook_secrets_schema() -> RefOr<Schema> {
    let mut item = pattern(WEBHOOK_SECRET_PATTERN, "A webhook endpoint secret");
    item.format = Some(SchemaFormat::KnownFormat(KnownFormat::Password));
    ArrayBuilder::new()
        .items(item)
        .min_items(Some(1))
        .max_items(Some(MAX_WEBHOOK_SECRETS))
        .unique_items(true)
        .description(Some(
            "The endpoint secrets events are signed with: one, or two while Stripe rolls \
             the endpoint's secret",
        ))
        .into()
}

fn types_schema(min: usize, description: &str) -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(ObjectType::ALL.iter().map(|t| t.as_str()))),
        )
        .min_items(Some(min))
        .max_items(Some(ObjectType::ALL.len()))
        .unique_items(true)
        .description(Some(description))
        .into()
}

fn object_types_schema() -> RefOr<Schema> {
    types_schema(1, "The types to mirror (default: all of them)")
}

fn refetch_schema() -> RefOr<Schema> {
    types_schema(
        0,
        "The types whose same-second events are re-fetched rather than ordered by guess \
         (default: every type; a type left out takes the last event delivered in the \
         second, which the next drift check corrects if it was wrong)",
    )
}

/// A Plaid link (the document's first branch).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Read for its document only; `LinkRequest` reads the body.
pub struct PlaidLinkBody {
    /// `plaid`.
    #[schema(schema_with = plaid_provider)]
    provider: String,
    /// The Plaid `item_id`.
    #[schema(schema_with = item_id_schema)]
    item_id: String,
    /// The Plaid access token (stored sealed, never returned).
    #[schema(schema_with = params::access_token_schema)]
    access_token: String,
    /// The owning user's id in the caller's system.
    #[schema(schema_with = owner_id_schema)]
    owner_id: String,
    /// Extra lookup keys, e.g. an email.
    #[serde(default)]
    #[schema(schema_with = params::aliases_schema)]
    aliases: Vec<String>,
}

/// A Stripe link (the document's second branch).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Read for its document only; `LinkRequest` reads the body.
pub struct StripeLinkBody {
    /// `stripe`.
    #[schema(schema_with = stripe_provider)]
    provider: String,
    /// The Stripe account id.
    #[schema(schema_with = stripe_account_schema)]
    item_id: String,
    /// The API key.
    #[schema(schema_with = stripe_key_schema)]
    access_token: String,
    /// The owning user's id in the caller's system.
    #[schema(schema_with = owner_id_schema)]
    owner_id: String,
    /// Extra lookup keys, e.g. an email.
    #[serde(default)]
    #[schema(schema_with = params::aliases_schema)]
    aliases: Vec<String>,
    /// The endpoint secrets.
    #[schema(schema_with = webhook_secrets_schema)]
    webhook_secrets: Vec<String>,
    /// The types to mirror.
    #[serde(default)]
    #[schema(schema_with = object_types_schema)]
    object_types: Vec<String>,
    /// The types re-fetched on a same-second tie.
    #[serde(default)]
    #[schema(schema_with = refetch_schema)]
    refetch_on_tie: Vec<String>,
    /// A Connect account reached with its platform's key (calls carry
    /// `Stripe-Account`).
    #[serde(default)]
    connect: bool,
}
