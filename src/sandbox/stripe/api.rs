//! Stripe's read API as the sandbox serves it (`/v1/{type}`, `/v1/{type}/{id}`,
//! `/v1/events`, `/v1/events/{id}`), and what every call goes through first
//! ([`admit`]): the API key (Bearer, or Basic with the key as user name, as Stripe
//! takes it), the `Stripe-Account` a platform's key may name, the counters, the
//! per-second limiter and the account's random faults and latency. The writes are in
//! `writes`.
//!
//! Every answer carries a `Request-Id` (see [`request_id`]); it is also the `request.id`
//! of the events a write causes.

use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Extension, Router};
use base64::Engine;
use serde_json::{Map, Value};

use super::errors::ApiError;
use super::state::{draw, API_VERSION, EVENT_RETENTION_SECS};
use super::{form, list, writes, StripeSandbox};
use crate::domain::stripe::ObjectType;
use crate::providers::stripe::errors::REQUEST_ID_HEADER;
use crate::providers::stripe::ACCOUNT_HEADER;

/// The id of the request being served (set by [`request_id`]).
#[derive(Clone, Debug)]
pub(super) struct RequestId(pub String);

/// The API routes: reads for every type, writes for products and prices.
pub(super) fn routes() -> Router<StripeSandbox> {
    let mut router = Router::new();
    for object_type in ObjectType::ALL {
        let mut many: MethodRouter<StripeSandbox> = get(
            move |sandbox: State<StripeSandbox>, headers: HeaderMap, uri: Uri| {
                list_objects(object_type, sandbox, headers, uri)
            },
        );
        let mut one: MethodRouter<StripeSandbox> = get(
            move |sandbox: State<StripeSandbox>, id: Path<String>, headers: HeaderMap, uri: Uri| {
                retrieve(object_type, sandbox, id, headers, uri)
            },
        );
        if writes::writable(object_type) {
            many = many.post(
                move |sandbox: State<StripeSandbox>,
                      request_id: Extension<RequestId>,
                      headers: HeaderMap,
                      body: axum::body::Bytes| {
                    writes::create(object_type, sandbox, request_id, headers, body)
                },
            );
            one = one.post(
                move |sandbox: State<StripeSandbox>,
                      id: Path<String>,
                      request_id: Extension<RequestId>,
                      headers: HeaderMap,
                      body: axum::body::Bytes| {
                    writes::update(object_type, sandbox, id, request_id, headers, body)
                },
            );
        }
        if object_type == ObjectType::Products {
            one = one.delete(
                move |sandbox: State<StripeSandbox>,
                      id: Path<String>,
                      request_id: Extension<RequestId>,
                      headers: HeaderMap| {
                    writes::delete(object_type, sandbox, id, request_id, headers)
                },
            );
        }
        router = router
            .route(&format!("/v1/{}", object_type.as_str()), many)
            .route(&format!("/v1/{}/{{id}}", object_type.as_str()), one);
    }
    router
        .route("/v1/events", get(list_events))
        .route("/v1/events/{id}", get(retrieve_event))
}

/// Unknown paths and methods, in Stripe's words.
pub(super) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::unrecognized(method.as_str(), uri.path())
}

/// Gives the request an id (for its events) and every answer a `Request-Id` and the
/// API version it speaks.
pub(super) async fn request_id(
    State(sandbox): State<StripeSandbox>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = sandbox.lock().new_id("req");
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    headers.insert("stripe-version", HeaderValue::from_static(API_VERSION));
    response
}

/// A JSON answer from text the sandbox wrote.
pub(super) fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The API key of a call: `Authorization: Bearer <key>`, or Basic with the key as the
/// user name (the password is ignored, as at Stripe).
fn api_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(key) = value.strip_prefix("Bearer ") {
        return Some(key.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or_default().to_owned())
}

/// What the faults decide for one call.
enum Verdict {
    Serve,
    RateLimited(u64),
    Fail,
}

/// Authenticates a call to `endpoint`, counts it for the account it acts on and applies
/// that account's limiter, faults and latency; the account's id.
pub(super) async fn admit(
    sandbox: &StripeSandbox,
    headers: &HeaderMap,
    endpoint: &str,
) -> Result<String, ApiError> {
    let key = api_key(headers)
        .filter(|k| !k.is_empty())
        .ok_or_else(ApiError::no_key)?;
    let wall_second = chrono::Utc::now().timestamp();
    let (account, verdict, latency_ms) = {
        let mut state = sandbox.lock();
        let owner = state
            .account_of_key(&key)
            .ok_or_else(|| ApiError::invalid_key(&key))?
            .to_owned();
        let named = headers
            .get(ACCOUNT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let account = match named {
            None => owner,
            Some(named) if named == owner => owner,
            Some(named) => {
                let reachable = state
                    .account(named)
                    .is_some_and(|a| a.platform.as_deref() == Some(owner.as_str()));
                if !reachable {
                    return Err(ApiError::no_access(&key, named));
                }
                named.to_owned()
            }
        };
        let acct = state
            .account_mut(&account)
            .ok_or_else(|| ApiError::invalid_key(&key))?;
        let in_second = acct
            .stats
            .count_request(&mut acct.meter, endpoint, wall_second);
        let faults = &acct.faults;
        let verdict = if faults
            .rate_limit_per_second
            .is_some_and(|limit| in_second > u64::from(limit))
        {
            Verdict::RateLimited(1)
        } else if draw(faults.rate_limit_rate, &mut acct.fault_rng) {
            Verdict::RateLimited(faults.retry_after_secs)
        } else if draw(faults.error_rate, &mut acct.fault_rng) {
            Verdict::Fail
        } else {
            Verdict::Serve
        };
        match verdict {
            Verdict::RateLimited(_) => acct.stats.rate_limited += 1,
            Verdict::Fail => acct.stats.errors_injected += 1,
            Verdict::Serve => {}
        }
        (account, verdict, acct.faults.latency_ms)
    };
    if latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    }
    match verdict {
        Verdict::Serve => Ok(account),
        Verdict::RateLimited(retry_after) => Err(ApiError::rate_limited(retry_after)),
        Verdict::Fail => Err(ApiError::internal()),
    }
}

fn query(uri: &Uri) -> Result<Map<String, Value>, ApiError> {
    form::parse(uri.query().unwrap_or(""))
}

/// `GET /v1/{type}`.
async fn list_objects(
    object_type: ObjectType,
    State(sandbox): State<StripeSandbox>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let path = format!("/v1/{}", object_type.as_str());
    let account = admit(&sandbox, &headers, &format!("GET {path}")).await?;
    let query = list::object_query(object_type, &query(&uri)?)?;
    let state = sandbox.lock();
    let acct = state.account(&account).ok_or_else(ApiError::internal)?;
    let page = acct
        .objects(object_type)
        .page(
            query.cursor.as_cursor(),
            query.created,
            query.limit,
            |json| list::keep(json, &query.filters),
        )
        .map_err(|_| unknown_cursor(object_type.object_name(), &query.cursor))?;
    Ok(json(StatusCode::OK, list::render(&path, &page)))
}

fn unknown_cursor(object_name: &str, cursor: &list::CursorParam) -> ApiError {
    let (param, id) = cursor.param().unwrap_or(("starting_after", ""));
    ApiError::no_such(object_name, id, param, StatusCode::BAD_REQUEST)
}

/// `GET /v1/{type}/{id}`: deleted and unknown objects alike answer 404.
async fn retrieve(
    object_type: ObjectType,
    State(sandbox): State<StripeSandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let endpoint = format!("GET /v1/{}/{{id}}", object_type.as_str());
    let account = admit(&sandbox, &headers, &endpoint).await?;
    form::only(&query(&uri)?, &["expand"])?;
    let state = sandbox.lock();
    let acct = state.account(&account).ok_or_else(ApiError::internal)?;
    match acct.objects(object_type).get(&id) {
        Some(object) => Ok(json(StatusCode::OK, object.to_owned())),
        None => Err(ApiError::no_such(
            object_type.object_name(),
            &id,
            "id",
            StatusCode::NOT_FOUND,
        )),
    }
}

/// `GET /v1/events`: newest first, the last 30 days of the sandbox's clock.
async fn list_events(
    State(sandbox): State<StripeSandbox>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let account = admit(&sandbox, &headers, "GET /v1/events").await?;
    let query = list::event_query(&query(&uri)?)?;
    let oldest = sandbox.now() - EVENT_RETENTION_SECS;
    let state = sandbox.lock();
    let acct = state.account(&account).ok_or_else(ApiError::internal)?;
    let page = acct
        .events
        .page(
            query.cursor.as_cursor(),
            query.created.at_least(Some(oldest)),
            query.limit,
            |json| list::keep(json, &query.filters),
        )
        .map_err(|_| unknown_cursor("event", &query.cursor))?;
    Ok(json(StatusCode::OK, list::render("/v1/events", &page)))
}

/// `GET /v1/events/{id}`.
async fn retrieve_event(
    State(sandbox): State<StripeSandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let account = admit(&sandbox, &headers, "GET /v1/events/{id}").await?;
    form::only(&query(&uri)?, &["expand"])?;
    let oldest = sandbox.now() - EVENT_RETENTION_SECS;
    let state = sandbox.lock();
    let acct = state.account(&account).ok_or_else(ApiError::internal)?;
    let event = acct.events.get(&id).filter(|text| {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|event| event.get("created").and_then(Value::as_i64))
            .is_some_and(|created| created >= oldest)
    });
    match event {
        Some(event) => Ok(json(StatusCode::OK, event.to_owned())),
        None => Err(ApiError::no_such("event", &id, "id", StatusCode::NOT_FOUND)),
    }
}
