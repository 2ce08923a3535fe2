//! `GET /openapi.json`: the OpenAPI document of the whole HTTP surface.
//!
//! Nothing here lists routes. Each handler carries a `#[utoipa::path]` annotation and is
//! registered with `routes!(handler)`, which both routes requests to it and adds its
//! operation to the document; this module only adds what is common to all of them: the
//! title, the `bearer` security scheme (required everywhere unless an operation says
//! `security(())`), the JSON error body and the tags.

use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDocument;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::AppState;

/// The name of the admin security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "acctor",
        description = "Keeps an always-correct local copy of financial data held by providers, \
driven by their webhooks. Every route except webhooks, /healthz, /readyz, /metrics and the \
dashboard shell needs `Authorization: Bearer <admin token>` (server.admin_token, or the file \
<data_dir>/admin-token). Errors are `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`."
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "accounts", description = "Linked accounts, their transactions and syncs"),
        (name = "webhooks", description = "Provider webhooks (authenticated by provider signatures)"),
        (name = "health", description = "Liveness and readiness probes, metrics"),
        (name = "incidents", description = "What needed (or needs) a human"),
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

/// The `/openapi.json` route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The OpenAPI document of this server.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
    )
)]
async fn openapi_json(Extension(spec): Extension<Arc<OpenApiDocument>>) -> Json<OpenApiDocument> {
    Json(OpenApiDocument::clone(&spec))
}
