//! The writes acctor makes (its pushes of product and price changes): `POST
//! /v1/products`, `POST /v1/products/{id}`, `DELETE /v1/products/{id}`, `POST
//! /v1/prices`, `POST /v1/prices/{id}`, with Stripe's parameters, validation and
//! `Idempotency-Key` semantics.
//!
//! A keyed write runs in one critical section: the look-up of the key, the validation,
//! the change and the record of the answer. So a repeat of a key (even concurrent)
//! gets the stored answer with `Idempotent-Replayed: true` and changes nothing, a key
//! reused with other parameters is refused (`idempotency_error`), and
//! `creates_by_idempotency_key` counts real creates only. As at Stripe, a request that
//! fails validation stores nothing, so its key can be used again.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{Map, Value};

use super::api::{admit, json, RequestId};
use super::catalog::{price_fields, price_update_fields, product_fields};
use super::errors::ApiError;
use super::form;
use super::state::{Changed, Refusal, RequestInfo, SavedAnswer, State as Books};
use super::StripeSandbox;
use crate::domain::stripe::ObjectType;
use crate::providers::stripe::IDEMPOTENCY_HEADER;

/// Longest idempotency key accepted (Stripe's limit).
const MAX_KEY_CHARS: usize = 255;

/// Whether the sandbox takes writes of `object_type` over HTTP.
pub(super) fn writable(object_type: ObjectType) -> bool {
    matches!(object_type, ObjectType::Products | ObjectType::Prices)
}

/// The answer to a change the books refused.
pub(super) fn refusal(object_type: ObjectType, id: &str, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::NotFound => {
            ApiError::no_such(object_type.object_name(), id, "id", StatusCode::NOT_FOUND)
        }
        Refusal::NotDeletable => ApiError::invalid(format!(
            "This {} cannot be deleted.",
            object_type.object_name()
        )),
        // `admit` found the account a moment ago and accounts are never removed.
        Refusal::UnknownAccount => ApiError::internal(),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key must be printable ASCII"))?
        .trim();
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(ApiError::invalid(format!(
            "Idempotency-Key must be at most {MAX_KEY_CHARS} characters"
        )));
    }
    Ok((!key.is_empty()).then(|| key.to_owned()))
}

fn body_params(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::invalid("The request body is not valid UTF-8"))?;
    form::parse(text)
}

/// A change the write made: the answer, and whether it created an object.
struct Applied {
    changed: Changed,
    created: bool,
}

/// The common path of a keyed write: admission, the key's replay or refusal, `apply`
/// under the lock, the record of the answer, then the event's deliveries.
async fn write(
    sandbox: &StripeSandbox,
    request_id: String,
    headers: &HeaderMap,
    endpoint: String,
    body: &[u8],
    apply: impl FnOnce(
        &mut Books,
        &str,
        Map<String, Value>,
        RequestInfo,
        i64,
    ) -> Result<Applied, ApiError>,
) -> Result<Response, ApiError> {
    let account = admit(sandbox, headers, &endpoint).await?;
    let params = body_params(body)?;
    let key = idempotency_key(headers)?;
    let fingerprint = Value::Object(params.clone()).to_string();
    let now = sandbox.now();
    let (answer, deliveries, lost) = {
        let mut state = sandbox.lock();
        if let Some(key) = &key {
            let saved = state
                .account(&account)
                .and_then(|acct| acct.idempotency.get(key));
            if let Some(saved) = saved {
                if saved.endpoint != endpoint || saved.fingerprint != fingerprint {
                    return Err(ApiError::idempotency_mismatch(key));
                }
                let mut replay = json(
                    StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK),
                    saved.body.clone(),
                );
                replay
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(replay);
            }
        }
        let request = RequestInfo {
            id: Some(request_id),
            idempotency_key: key.clone(),
        };
        let applied = apply(&mut state, &account, params, request, now)?;
        let answer = applied.changed.object.to_string();
        let mut lost = false;
        if let (Some(key), Some(acct)) = (&key, state.account_mut(&account)) {
            lost = super::state::draw(acct.faults.write_answer_lost_rate, &mut acct.fault_rng);
            if lost {
                acct.stats.answers_lost += 1;
            }
            acct.idempotency.insert(
                key.clone(),
                SavedAnswer {
                    endpoint,
                    fingerprint,
                    status: StatusCode::OK.as_u16(),
                    body: answer.clone(),
                },
            );
            if applied.created {
                *acct
                    .stats
                    .creates_by_idempotency_key
                    .entry(key.clone())
                    .or_default() += 1;
            }
        }
        (answer, applied.changed.deliveries, lost)
    };
    sandbox.enqueue(deliveries);
    if lost {
        return Err(ApiError::internal());
    }
    Ok(json(StatusCode::OK, answer))
}

/// `POST /v1/products`, `POST /v1/prices`.
pub(super) async fn create(
    object_type: ObjectType,
    State(sandbox): State<StripeSandbox>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let endpoint = format!("POST /v1/{}", object_type.as_str());
    write(
        &sandbox,
        request_id,
        &headers,
        endpoint,
        &body,
        move |books, account, params, request, now| {
            let (fields, earlier) = match object_type {
                ObjectType::Products => (product_fields(&params, None)?, Vec::new()),
                _ => price_fields(books, account, &params, &request, now)?,
            };
            if let Some(id) = fields.get("id").and_then(Value::as_str) {
                let taken = books
                    .account(account)
                    .is_some_and(|a| a.objects(object_type).contains(id));
                if taken {
                    return Err(ApiError::invalid("Product already exists.")
                        .code("resource_already_exists")
                        .param("id"));
                }
            }
            let mut changed = books
                .create(account, object_type, fields, now, Some(request))
                .map_err(|r| refusal(object_type, "", r))?;
            // A product made by `product_data` is announced before its price.
            changed.deliveries.splice(0..0, earlier);
            Ok(Applied {
                changed,
                created: true,
            })
        },
    )
    .await
}

/// `POST /v1/products/{id}`, `POST /v1/prices/{id}`.
pub(super) async fn update(
    object_type: ObjectType,
    State(sandbox): State<StripeSandbox>,
    Path(id): Path<String>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let endpoint = format!("POST /v1/{}/{{id}}", object_type.as_str());
    write(
        &sandbox,
        request_id,
        &headers,
        endpoint,
        &body,
        move |books, account, params, request, now| {
            let current = books
                .account(account)
                .and_then(|a| a.objects(object_type).get(&id))
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .ok_or_else(|| refusal(object_type, &id, Refusal::NotFound))?;
            let patch = match object_type {
                ObjectType::Products => {
                    let mut patch = product_fields(&params, Some(&current))?;
                    if let Some(price) = params.get("default_price") {
                        let price = form::string(price, "default_price")?;
                        let known = books
                            .account(account)
                            .and_then(|a| a.objects(ObjectType::Prices).get(price))
                            .is_some_and(|text| text.contains(&format!(r#""product":"{id}""#)));
                        if !known {
                            return Err(ApiError::no_such(
                                "price",
                                price,
                                "default_price",
                                StatusCode::BAD_REQUEST,
                            ));
                        }
                        patch.insert("default_price".into(), price.into());
                    }
                    patch
                }
                _ => price_update_fields(&params, &current)?,
            };
            let changed = books
                .update(account, object_type, &id, patch, now, Some(request))
                .map_err(|r| refusal(object_type, &id, r))?;
            Ok(Applied {
                changed,
                created: false,
            })
        },
    )
    .await
}

/// `DELETE /v1/products/{id}`: refused while the product has prices, as at Stripe.
pub(super) async fn delete(
    object_type: ObjectType,
    State(sandbox): State<StripeSandbox>,
    Path(id): Path<String>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let endpoint = format!("DELETE /v1/{}/{{id}}", object_type.as_str());
    let account = admit(&sandbox, &headers, &endpoint).await?;
    let now = sandbox.now();
    let changed = {
        let mut books = sandbox.lock();
        let acct = books.account(&account).ok_or_else(ApiError::internal)?;
        if !acct.objects(object_type).contains(&id) {
            return Err(refusal(object_type, &id, Refusal::NotFound));
        }
        // Stored objects are compact JSON, so a price of this product contains exactly
        // this text.
        let reference = format!(r#""product":"{id}""#);
        if acct
            .objects(ObjectType::Prices)
            .iter()
            .any(|price| price.contains(&reference))
        {
            return Err(ApiError::invalid(
                "This product cannot be deleted because it has one or more user-created prices.",
            ));
        }
        let request = RequestInfo {
            id: Some(request_id),
            idempotency_key: None,
        };
        books
            .delete(&account, object_type, &id, now, Some(request))
            .map_err(|r| refusal(object_type, &id, r))?
    };
    sandbox.enqueue(changed.deliveries);
    Ok(json(StatusCode::OK, changed.object.to_string()))
}
