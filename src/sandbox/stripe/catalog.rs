//! What the parameters of acctor's writes mean: the fields of a product create or update
//! and of a price create or update, read from Stripe's form parameters and checked as
//! Stripe checks them (required parameters, types, enumerations, the parameters an
//! update may not change, metadata's merge-and-unset rules). A price's `product` must
//! exist; its `product_data` creates the product first.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::errors::ApiError;
use super::form;
use super::state::{RequestInfo, State as Books};
use super::webhooks::Delivery;
use super::writes::refusal;
use crate::domain::stripe::ObjectType;

/// Most images a product takes.
const MAX_IMAGES: usize = 8;
/// Largest `unit_amount` (Stripe's limit for most currencies).
const MAX_UNIT_AMOUNT: i64 = 99_999_999;

/// The fields of a product create (`current: None`) or update, from its parameters.
pub(super) fn product_fields(
    params: &Map<String, Value>,
    current: Option<&Value>,
) -> Result<Map<String, Value>, ApiError> {
    const SHARED: [&str; 10] = [
        "name",
        "active",
        "description",
        "metadata",
        "images",
        "url",
        "shippable",
        "statement_descriptor",
        "unit_label",
        "tax_code",
    ];
    let creating = current.is_none();
    let extra: &[&str] = if creating {
        &["id", "expand"]
    } else {
        &["default_price", "expand"]
    };
    let allowed: Vec<&str> = SHARED.iter().chain(extra).copied().collect();
    form::only(params, &allowed)?;
    let mut fields = Map::new();
    match params.get("name") {
        Some(name) => {
            let name = form::string(name, "name")?;
            if name.trim().is_empty() {
                return Err(ApiError::invalid("You passed an empty string for 'name'. We assume empty values are an attempt to unset a parameter; however 'name' cannot be unset. You should remove 'name' from your request or supply a non-empty value.")
                    .code("parameter_invalid_empty")
                    .param("name"));
            }
            fields.insert("name".into(), name.into());
        }
        None if creating => return Err(ApiError::missing("name")),
        None => {}
    }
    for flag in ["active", "shippable"] {
        if let Some(value) = params.get(flag) {
            fields.insert(flag.into(), form::boolean(value, flag)?.into());
        }
    }
    for text in [
        "description",
        "url",
        "statement_descriptor",
        "unit_label",
        "tax_code",
    ] {
        if let Some(value) = params.get(text) {
            fields.insert(text.into(), form::nullable_string(value, text)?);
        }
    }
    if let Some(images) = params.get("images") {
        let images = form::strings(images, "images")?;
        if images.len() > MAX_IMAGES {
            return Err(ApiError::invalid(format!(
                "A product can have at most {MAX_IMAGES} images"
            ))
            .param("images"));
        }
        fields.insert("images".into(), images.into());
    }
    if let Some(metadata) = params.get("metadata") {
        let metadata = form::metadata(current.and_then(|c| c.get("metadata")), metadata)?;
        fields.insert("metadata".into(), metadata);
    }
    if let Some(id) = params.get("id") {
        fields.insert("id".into(), form::string(id, "id")?.into());
    }
    Ok(fields)
}

fn one_of(value: &Value, param: &str, allowed: &[&str]) -> Result<String, ApiError> {
    let text = form::string(value, param)?;
    if allowed.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(ApiError::invalid(format!(
            "Invalid {param}: must be one of {}",
            allowed.join(", ")
        ))
        .param(param))
    }
}

/// The fields of a price create, from its parameters; a `product_data` creates the
/// product first (the deliveries of its event come back with the fields).
pub(super) fn price_fields(
    books: &mut Books,
    account: &str,
    params: &Map<String, Value>,
    request: &RequestInfo,
    now: i64,
) -> Result<(Map<String, Value>, Vec<Delivery>), ApiError> {
    form::only(
        params,
        &[
            "currency",
            "product",
            "product_data",
            "unit_amount",
            "recurring",
            "active",
            "nickname",
            "metadata",
            "lookup_key",
            "tax_behavior",
            "expand",
        ],
    )?;
    let mut fields = Map::new();
    let currency = form::string(
        params
            .get("currency")
            .ok_or_else(|| ApiError::missing("currency"))?,
        "currency",
    )?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ApiError::invalid(format!("Invalid currency: {currency}")).param("currency"));
    }
    fields.insert("currency".into(), currency.to_ascii_lowercase().into());
    let amount = params
        .get("unit_amount")
        .ok_or_else(|| ApiError::missing("unit_amount"))?;
    let amount = form::integer(amount, "unit_amount")?;
    if !(0..=MAX_UNIT_AMOUNT).contains(&amount) {
        return Err(ApiError::invalid_integer(
            "unit_amount",
            format!("This value must be between 0 and {MAX_UNIT_AMOUNT}."),
        ));
    }
    fields.insert("unit_amount".into(), amount.into());
    fields.insert("unit_amount_decimal".into(), amount.to_string().into());
    if let Some(recurring) = params.get("recurring") {
        form::only_nested(
            recurring,
            "recurring",
            &[
                "interval",
                "interval_count",
                "usage_type",
                "trial_period_days",
            ],
        )?;
        let interval = recurring
            .get("interval")
            .ok_or_else(|| ApiError::missing("recurring[interval]"))?;
        let interval = one_of(
            interval,
            "recurring[interval]",
            &["day", "week", "month", "year"],
        )?;
        let count = match recurring.get("interval_count") {
            Some(count) => form::integer(count, "recurring[interval_count]")?,
            None => 1,
        };
        if !(1..=365).contains(&count) {
            return Err(ApiError::invalid_integer(
                "recurring[interval_count]",
                "This value must be between 1 and 365.",
            ));
        }
        let usage = match recurring.get("usage_type") {
            Some(usage) => one_of(usage, "recurring[usage_type]", &["licensed", "metered"])?,
            None => "licensed".to_owned(),
        };
        let trial = match recurring.get("trial_period_days") {
            Some(days) => Value::from(form::integer(days, "recurring[trial_period_days]")?),
            None => Value::Null,
        };
        fields.insert("type".into(), "recurring".into());
        fields.insert(
            "recurring".into(),
            serde_json::json!({
                "aggregate_usage": null, "interval": interval, "interval_count": count,
                "meter": null, "trial_period_days": trial, "usage_type": usage
            }),
        );
    }
    fields.extend(price_update_fields(
        &params
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "active" | "nickname" | "metadata" | "lookup_key" | "tax_behavior"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        &Value::Null,
    )?);
    let mut earlier = Vec::new();
    let product = match (params.get("product"), params.get("product_data")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: product, product_data.",
            ))
        }
        (None, None) => return Err(ApiError::missing("product")),
        (Some(product), None) => {
            let product = form::string(product, "product")?;
            let known = books
                .account(account)
                .is_some_and(|a| a.objects(ObjectType::Products).contains(product));
            if !known {
                return Err(ApiError::no_such(
                    "product",
                    product,
                    "product",
                    StatusCode::BAD_REQUEST,
                ));
            }
            product.to_owned()
        }
        (None, Some(data)) => {
            form::only_nested(
                data,
                "product_data",
                &[
                    "name",
                    "active",
                    "metadata",
                    "statement_descriptor",
                    "unit_label",
                ],
            )?;
            let data = match data {
                Value::Object(data) => data.clone(),
                _ => Map::new(),
            };
            let product_fields =
                product_fields(&data, None).map_err(|e| e.param("product_data"))?;
            let made = books
                .create(
                    account,
                    ObjectType::Products,
                    product_fields,
                    now,
                    Some(request.clone()),
                )
                .map_err(|r| refusal(ObjectType::Products, "", r))?;
            let id = made
                .object
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            earlier = made.deliveries;
            id
        }
    };
    fields.insert("product".into(), product.into());
    Ok((fields, earlier))
}

/// The fields of a price update (or the updatable part of a create, `current` null).
pub(super) fn price_update_fields(
    params: &Map<String, Value>,
    current: &Value,
) -> Result<Map<String, Value>, ApiError> {
    form::only(
        params,
        &[
            "active",
            "nickname",
            "metadata",
            "lookup_key",
            "tax_behavior",
            "expand",
        ],
    )?;
    let mut fields = Map::new();
    if let Some(active) = params.get("active") {
        fields.insert("active".into(), form::boolean(active, "active")?.into());
    }
    for text in ["nickname", "lookup_key"] {
        if let Some(value) = params.get(text) {
            fields.insert(text.into(), form::nullable_string(value, text)?);
        }
    }
    if let Some(behavior) = params.get("tax_behavior") {
        fields.insert(
            "tax_behavior".into(),
            one_of(
                behavior,
                "tax_behavior",
                &["inclusive", "exclusive", "unspecified"],
            )?
            .into(),
        );
    }
    if let Some(metadata) = params.get("metadata") {
        fields.insert(
            "metadata".into(),
            form::metadata(current.get("metadata"), metadata)?,
        );
    }
    Ok(fields)
}
