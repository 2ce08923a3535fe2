//! `GET /openapi.json`: the OpenAPI document of the whole HTTP surface.
//!
//! Nothing here lists routes. Each handler carries a `#[utoipa::path]` annotation and is
//! registered with `routes!(handler)`, which both routes requests to it and adds its
//! operation to the document; this module only adds what is common to all of them: the
//! title, the `bearer` security scheme (required everywhere unless an operation says
//! `security(())`), the JSON error body and the tags, and, once every operation is in,
//! the links between them ([`add_links`]): how an answer's ids feed the next request,
//! which is what lets a client (or a stateful fuzzer) walk from a listing or a link to
//! the account routes.

use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDocument, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiQuery, AppState, NoQuery};

/// The name of the admin security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "acctor",
        description = "Keeps an always-correct local copy of financial data held by providers, \
driven by their webhooks. Every route except webhooks, /healthz, /readyz, /metrics and the \
dashboard shell needs `Authorization: Bearer <admin token>` (server.admin_token, or the file \
<data_dir>/admin-token). Errors are `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`. \
One rule for what callers send: a query parameter an operation does not list, a body field its \
schema does not list (`additionalProperties: false`), a repeated parameter, a page token the \
endpoint did not issue, or a value outside its schema is refused with 400, and the message starts \
with the parameter or field it is about."
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "accounts", description = "Linked accounts, their transactions and syncs"),
        (name = "webhooks", description = "Provider webhooks (authenticated by provider signatures)"),
        (name = "health", description = "Liveness and readiness probes, metrics"),
        (name = "incidents", description = "What needed (or needs) a human"),
        (name = "stripe", description = "The local copy of linked Stripe accounts"),
        (name = "debug", description = "Actor introspection"),
        (name = "dashboard", description = "The operator page (public shell; data via the admin API)"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token: server.admin_token, or the generated \
                         <data_dir>/admin-token",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's common part, before the routes add their operations.
pub fn base() -> OpenApiDocument {
    ApiDoc::openapi()
}

/// One documented link: from an operation's answer to the operation that can follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// The operation whose answer the link starts from.
    pub from: &'static str,
    /// That answer's status.
    pub status: &'static str,
    /// The link's name.
    pub name: String,
    /// The operation it leads to.
    pub to: &'static str,
    /// Its parameters: runtime expressions (`$response.body#/id`) or constants.
    pub parameters: Vec<(&'static str, serde_json::Value)>,
    /// A request body (fields may be runtime expressions), merged over a generated one.
    pub request_body: Option<serde_json::Value>,
    /// What following it does.
    pub description: &'static str,
}

/// The operations that take an account `key`, each reached from `id` (a runtime
/// expression naming an account id in the source answer).
fn account_links(
    from: &'static str,
    status: &'static str,
    id: &'static str,
    prefix: &str,
) -> Vec<LinkSpec> {
    let key = |to: &'static str, description: &'static str| LinkSpec {
        from,
        status,
        name: format!("{prefix}{to}"),
        to,
        parameters: vec![("key", id.into())],
        request_body: None,
        description,
    };
    vec![
        key("get_account", "The account"),
        key("list_transactions", "Its transactions"),
        key("get_sync_status", "Its sync status"),
        key("request_sync", "Ask it to sync now"),
        key("resume_account", "Lift its quarantine, if any"),
        key("get_actor", "What its actor is doing"),
        key("unlink_account", "Unlink it, keeping its data"),
        key("delete_account", "Delete it and its data"),
    ]
}

/// Every link of the document.
pub fn links() -> Vec<LinkSpec> {
    let mut links = Vec::new();
    for status in ["200", "201"] {
        links.extend(account_links(
            "link_account",
            status,
            "$response.body#/id",
            "",
        ));
    }
    links.extend(account_links(
        "list_accounts",
        "200",
        "$response.body#/accounts/0/id",
        "first_",
    ));
    links.push(LinkSpec {
        from: "list_accounts",
        status: "200",
        name: "relink_first".to_string(),
        to: "link_account",
        parameters: Vec::new(),
        request_body: Some(serde_json::json!({
            "provider": "$response.body#/accounts/0/provider",
            "item_id": "$response.body#/accounts/0/item_id",
            "owner_id": "$response.body#/accounts/0/owner_id",
        })),
        description: "Relink the first account with a new access token (the provider's update \
                      mode): the same item and owner, answered 200",
    });
    links.push(LinkSpec {
        from: "list_actors",
        status: "200",
        name: "first_get_actor".to_string(),
        to: "get_actor",
        parameters: vec![("key", "$response.body#/actors/0/account_id".into())],
        request_body: None,
        description: "The first actor listed",
    });
    links.push(LinkSpec {
        from: "list_incidents",
        status: "200",
        name: "first_get_incident".to_string(),
        to: "get_incident",
        parameters: vec![("id", "$response.body#/incidents/0/id".into())],
        request_body: None,
        description: "The first incident listed",
    });
    links
}

/// Adds [`links`] to `document`'s operations (call once every operation is in).
/// Returns the links whose source operation or status is not in the document (a test
/// keeps this empty).
pub fn add_links(document: &mut OpenApiDocument) -> Vec<LinkSpec> {
    let mut missing = Vec::new();
    for link in links() {
        let built = LinkBuilder::new()
            .operation_id(link.to)
            .description(link.description)
            .request_body(link.request_body.clone());
        let built = link
            .parameters
            .iter()
            .fold(built, |b, (name, value)| b.parameter(*name, value.clone()))
            .build();
        let response = operations_mut(document)
            .find(|op| op.operation_id.as_deref() == Some(link.from))
            .and_then(|op| op.responses.responses.get_mut(link.status));
        match response {
            Some(RefOr::T(response)) => {
                response.links.insert(link.name.clone(), RefOr::T(built));
            }
            _ => missing.push(link),
        }
    }
    missing
}

/// Documents the headers [`super::ApiError`] sets: `Retry-After` (seconds) on every
/// 429 and on every 503 whose body is the error body (`/readyz`'s 503 is its report and
/// has none), and `WWW-Authenticate: Bearer` on the 401 of every admin operation (the
/// ones without their own `security`; webhooks answer a bad signature without it).
pub fn add_response_headers(document: &mut OpenApiDocument) {
    add_response_headers_inner(document);
}

/// Narrows every market schema (the `^[A-Z]{2}$` pattern of
/// [`super::params::market_schema`]) to an enum of the markets this server serves, so
/// the document says exactly which values are accepted. `markets` is validated at
/// start (non-empty, two upper-case letters each).
pub fn restrict_markets(document: &mut OpenApiDocument, markets: &[String]) {
    fn walk(value: &mut serde_json::Value, markets: &[String]) {
        match value {
            serde_json::Value::Object(map) => {
                let is_market = map.get("pattern").and_then(|p| p.as_str())
                    == Some(super::params::MARKET_PATTERN);
                if is_market {
                    map.remove("pattern");
                    map.insert("enum".to_string(), serde_json::json!(markets));
                }
                for child in map.values_mut() {
                    walk(child, markets);
                }
            }
            serde_json::Value::Array(items) => {
                for child in items {
                    walk(child, markets);
                }
            }
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&*document) else {
        tracing::error!("openapi document does not serialize; markets left as a pattern");
        return;
    };
    walk(&mut value, markets);
    match serde_json::from_value(value) {
        Ok(narrowed) => *document = narrowed,
        Err(error) => tracing::error!(%error, "openapi document with market enums does not parse"),
    }
}

fn add_response_headers_inner(document: &mut OpenApiDocument) {
    for operation in operations_mut(document) {
        let admin = operation.security.is_none();
        for (status, response) in operation.responses.responses.iter_mut() {
            let RefOr::T(response) = response else {
                continue;
            };
            let error_body = response
                .content
                .get("application/json")
                .and_then(|c| match c {
                    RefOr::T(c) => c.schema.as_ref(),
                    RefOr::Ref(_) => None,
                })
                .is_some_and(|schema| matches!(schema, RefOr::Ref(r) if r.ref_location.ends_with("/ErrorBody")));
            let header = match status.as_str() {
                "429" | "503" if error_body => (
                    "Retry-After",
                    Type::Integer,
                    "Seconds to wait before trying again",
                ),
                "401" if admin => (
                    "WWW-Authenticate",
                    Type::String,
                    "`Bearer realm=\"acctor\"`: the admin token is a bearer token",
                ),
                _ => continue,
            };
            let (name, kind, description) = header;
            let schema = ObjectBuilder::new().schema_type(kind).build();
            response.headers.insert(
                name.to_string(),
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(schema))
                        .description(Some(description))
                        .build(),
                ),
            );
        }
    }
}

fn operations_mut(document: &mut OpenApiDocument) -> impl Iterator<Item = &mut Operation> {
    document.paths.paths.values_mut().flat_map(|item| {
        [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ]
        .into_iter()
        .flatten()
    })
}

/// The `/openapi.json` route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The OpenAPI document of this server.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi_json",
    params(NoQuery),
    responses(
        (status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody),
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn openapi_json(
    Extension(spec): Extension<Arc<OpenApiDocument>>,
    ApiQuery(_no_query): ApiQuery<NoQuery>,
) -> Json<OpenApiDocument> {
    Json(OpenApiDocument::clone(&spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn document() -> OpenApiDocument {
        let settings = crate::config::Settings::defaults();
        let (_, mut document) = super::super::api(&settings).split_for_parts();
        let missing = add_links(&mut document);
        assert!(missing.is_empty(), "links without a source: {missing:?}");
        document
    }

    #[test]
    fn operation_ids_are_unique_and_every_link_names_a_real_target_and_parameters() {
        let mut document = document();
        let mut ids = BTreeSet::new();
        for op in operations_mut(&mut document) {
            let id = op.operation_id.clone().expect("every operation has an id");
            assert!(ids.insert(id.clone()), "operation id {id} is used twice");
        }
        for link in links() {
            assert!(ids.contains(link.to), "{} leads to no operation", link.name);
            let target = operations_mut(&mut document)
                .find(|op| op.operation_id.as_deref() == Some(link.to))
                .expect("target");
            let names: Vec<String> = target
                .parameters
                .iter()
                .flatten()
                .filter_map(|p| match p {
                    RefOr::T(p) => Some(p.name.clone()),
                    RefOr::Ref(_) => None,
                })
                .collect();
            for (name, _) in &link.parameters {
                assert!(
                    names.iter().any(|n| n == name),
                    "{}: {} takes no parameter {name}",
                    link.name,
                    link.to
                );
            }
        }
    }
}
