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
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

/// The dashboard routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/dashboard.css", get(style))
        .route("/dashboard/dashboard.js", get(script))
}

/// No caching: a new acctor binary must never be shown an old script.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_STORE],
        INDEX,
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), NO_STORE],
        STYLE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            NO_STORE,
        ],
        SCRIPT,
    )
}
