//! `GET /dashboard`: the operator page, served by acctor itself. Plain HTML, CSS and JS
//! compiled into the binary with `include_str!`: no build step, no CDN (acctor often
//! runs where there is no internet).
//!
//! The shell is public; the data it shows comes from the admin API, which the page
//! calls with the bearer token it reads from the URL fragment (`#token=…`; a fragment
//! never reaches the server's logs). It polls `/debug/actors`, `/debug/overview`,
//! `/v1/incidents` (a 404 there means "not available") and, for the selected account,
//! `/debug/actors/{id}`, about once a second.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::{ApiQuery, AppState, NoQuery};

const INDEX: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

/// The dashboard routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(style))
        .routes(routes!(script))
}

/// No caching: a new acctor binary must never be shown an old script.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

/// The dashboard page (public: it holds no data; open it as `/dashboard#token=<admin
/// token>` and it calls the admin API with that token).
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "dashboard",
    operation_id = "dashboard_page",
    security(()),
    params(NoQuery),
    responses((status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody), (status = 200, description = "The page", body = String, content_type = "text/html"))
)]
async fn index(ApiQuery(_no_query): ApiQuery<NoQuery>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_STORE],
        INDEX,
    )
}

/// The dashboard's stylesheet.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.css",
    tag = "dashboard",
    operation_id = "dashboard_css",
    security(()),
    params(NoQuery),
    responses((status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody), (status = 200, description = "The stylesheet", body = String, content_type = "text/css"))
)]
async fn style(ApiQuery(_no_query): ApiQuery<NoQuery>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), NO_STORE],
        STYLE,
    )
}

/// The dashboard's script.
#[utoipa::path(
    get,
    path = "/dashboard/dashboard.js",
    tag = "dashboard",
    operation_id = "dashboard_js",
    security(()),
    params(NoQuery),
    responses((status = 400, description = "An unknown query parameter (this endpoint takes none)", body = ErrorBody), (status = 200, description = "The script", body = String, content_type = "text/javascript"))
)]
async fn script(ApiQuery(_no_query): ApiQuery<NoQuery>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            NO_STORE,
        ],
        SCRIPT,
    )
}
