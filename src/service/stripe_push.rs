//! Local changes to a linked Stripe account's catalogue: a product or price created,
//! updated or archived here is checked, written to the account's push queue (durably,
//! numbered, with the version of the object it was based on) and handed to the
//! account's actor, which pushes it to Stripe (see [`crate::sync::stripe`]). Then the
//! queue itself: its changes and backlog, a held change retried or discarded, and each
//! object's audit trail.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::stripe::stripe_account;
use super::{blocking, check_text, Context, ServiceError};
use crate::actors::SyncReason;
use crate::domain::stripe::ObjectType;
use crate::domain::stripe_push::{
    AuditPage, NewPush, Push, PushAction, PushBacklog, PushQuery, PushStatus, Resolution,
};
use crate::domain::Account;
use crate::store::StoreError;

/// Longest product name (Stripe's limit).
pub const MAX_NAME: usize = 250;
/// Longest description, nickname or lookup key acctor takes.
pub const MAX_TEXT: usize = 5000;
/// Longest lookup key (Stripe's limit).
pub const MAX_LOOKUP_KEY: usize = 200;
/// Most metadata keys (Stripe's limit).
pub const MAX_METADATA_KEYS: usize = 50;
/// Longest metadata key (Stripe's limit).
pub const MAX_METADATA_KEY: usize = 40;
/// Longest metadata value (Stripe's limit).
pub const MAX_METADATA_VALUE: usize = 500;
/// Largest `unit_amount` (Stripe's limit: eight digits).
pub const MAX_UNIT_AMOUNT: u64 = 99_999_999;
/// Largest `recurring.interval_count` (a year of days).
pub const MAX_INTERVAL_COUNT: u64 = 365;
/// The billing intervals of a recurring price.
pub const INTERVALS: [&str; 4] = ["day", "week", "month", "year"];

/// What a change sets: Stripe's parameters of a product or price.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CatalogFields {
    /// Product name.
    pub name: Option<String>,
    /// Product description.
    pub description: Option<String>,
    /// Whether the object is available.
    pub active: Option<bool>,
    /// Metadata to set (keys merged into Stripe's; an empty value removes a key).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Price: the product it prices.
    pub product: Option<String>,
    /// Price: three-letter ISO currency, lower case.
    pub currency: Option<String>,
    /// Price: amount in the currency's smallest unit.
    pub unit_amount: Option<u64>,
    /// Price: billing interval (`day`, `week`, `month`, `year`) for a recurring price.
    pub interval: Option<String>,
    /// Price: intervals between bills.
    pub interval_count: Option<u64>,
    /// Price: nickname.
    pub nickname: Option<String>,
    /// Price: lookup key.
    pub lookup_key: Option<String>,
}

impl CatalogFields {
    /// Checks the fields and turns them into Stripe's parameters for `action` on
    /// `object_type`.
    fn params(
        &self,
        object_type: ObjectType,
        action: PushAction,
    ) -> Result<Map<String, Value>, ServiceError> {
        let mut params = Map::new();
        let creating = action == PushAction::Create;
        let product = object_type == ObjectType::Products;
        let only = |field: &str, allowed: bool, set: bool| {
            if set && !allowed {
                Err(ServiceError::invalid_field(format!(
                    "{field}: not a field of a {} {}",
                    object_type.object_name(),
                    action.as_str()
                )))
            } else {
                Ok(())
            }
        };
        only("name", product, self.name.is_some())?;
        only("description", product, self.description.is_some())?;
        only("product", !product && creating, self.product.is_some())?;
        only("currency", !product && creating, self.currency.is_some())?;
        only(
            "unit_amount",
            !product && creating,
            self.unit_amount.is_some(),
        )?;
        only("recurring", !product && creating, self.interval.is_some())?;
        only("nickname", !product, self.nickname.is_some())?;
        only("lookup_key", !product, self.lookup_key.is_some())?;
        if let Some(name) = &self.name {
            check_text("name", name, MAX_NAME)?;
            params.insert("name".into(), name.clone().into());
        } else if creating && product {
            return Err(ServiceError::invalid_field("name: required"));
        }
        if let Some(description) = &self.description {
            check_text("description", description, MAX_TEXT)?;
            params.insert("description".into(), description.clone().into());
        }
        if !product && creating {
            let product_id = self
                .product
                .as_deref()
                .ok_or_else(|| ServiceError::invalid_field("product: required"))?;
            check_stripe_id("product", product_id)?;
            params.insert("product".into(), product_id.into());
            let currency = self
                .currency
                .as_deref()
                .ok_or_else(|| ServiceError::invalid_field("currency: required"))?;
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(ServiceError::invalid_field(
                    "currency: three lower-case letters (an ISO 4217 code, like usd)",
                ));
            }
            params.insert("currency".into(), currency.into());
            let amount = self
                .unit_amount
                .ok_or_else(|| ServiceError::invalid_field("unit_amount: required"))?;
            if amount > MAX_UNIT_AMOUNT {
                return Err(ServiceError::invalid_field(format!(
                    "unit_amount: at most {MAX_UNIT_AMOUNT}"
                )));
            }
            params.insert("unit_amount".into(), amount.into());
            if let Some(interval) = &self.interval {
                if !INTERVALS.contains(&interval.as_str()) {
                    return Err(ServiceError::invalid_field(format!(
                        "recurring.interval: one of {}",
                        INTERVALS.join(", ")
                    )));
                }
                let mut recurring = Map::new();
                recurring.insert("interval".into(), interval.clone().into());
                if let Some(count) = self.interval_count {
                    if !(1..=MAX_INTERVAL_COUNT).contains(&count) {
                        return Err(ServiceError::invalid_field(format!(
                            "recurring.interval_count: 1 to {MAX_INTERVAL_COUNT}"
                        )));
                    }
                    recurring.insert("interval_count".into(), count.into());
                }
                params.insert("recurring".into(), Value::Object(recurring));
            }
        }
        if let Some(nickname) = &self.nickname {
            check_text("nickname", nickname, MAX_TEXT)?;
            params.insert("nickname".into(), nickname.clone().into());
        }
        if let Some(key) = &self.lookup_key {
            check_text("lookup_key", key, MAX_LOOKUP_KEY)?;
            params.insert("lookup_key".into(), key.clone().into());
        }
        match action {
            PushAction::Archive => {
                params.insert("active".into(), false.into());
            }
            _ => {
                if let Some(active) = self.active {
                    params.insert("active".into(), active.into());
                }
            }
        }
        if let Some(metadata) = &self.metadata {
            if metadata.len() > MAX_METADATA_KEYS {
                return Err(ServiceError::invalid_field(format!(
                    "metadata: at most {MAX_METADATA_KEYS} keys"
                )));
            }
            let mut map = Map::new();
            for (key, value) in metadata {
                if key.is_empty()
                    || key.chars().count() > MAX_METADATA_KEY
                    || key.contains(['[', ']'])
                    || key.chars().any(char::is_control)
                {
                    return Err(ServiceError::invalid_field(format!(
                        "metadata: keys are 1 to {MAX_METADATA_KEY} characters, without \
                         square brackets or control characters"
                    )));
                }
                if value.chars().count() > MAX_METADATA_VALUE || value.chars().any(char::is_control)
                {
                    return Err(ServiceError::invalid_field(format!(
                        "metadata.{}: at most {MAX_METADATA_VALUE} characters, without \
                         control characters",
                        key.chars().take(MAX_METADATA_KEY).collect::<String>()
                    )));
                }
                map.insert(key.clone(), value.clone().into());
            }
            params.insert("metadata".into(), Value::Object(map));
        }
        if params.is_empty() {
            return Err(ServiceError::invalid_field(
                "body: nothing to change (name a field to set)",
            ));
        }
        Ok(params)
    }
}

/// Stripe's ids: letters, digits and underscores.
fn check_stripe_id(field: &str, id: &str) -> Result<(), ServiceError> {
    let valid = !id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ServiceError::invalid_field(format!(
            "{field}: a Stripe id (letters, digits and underscores)"
        )))
    }
}

/// A change as asked for.
#[derive(Clone, Debug)]
pub struct ChangeInput {
    /// `products` or `prices`.
    pub object_type: ObjectType,
    /// Create, update or archive.
    pub action: PushAction,
    /// The object (updates and archives).
    pub object_id: Option<String>,
    /// What to set.
    pub fields: CatalogFields,
    /// The version the caller saw (`stale_base` if the local copy moved on since).
    pub base_version: Option<u64>,
    /// The caller's `Idempotency-Key`: asked again with it, the same change is answered
    /// with, not queued twice.
    pub client_key: Option<String>,
}

/// Queues a change and wakes the account's actor to push it.
pub async fn change(ctx: &Context, key: &str, input: ChangeInput) -> Result<Push, ServiceError> {
    if !matches!(input.object_type, ObjectType::Products | ObjectType::Prices) {
        return Err(ServiceError::invalid_field(
            "only products and prices are pushed to Stripe",
        ));
    }
    let params = input.fields.params(input.object_type, input.action)?;
    if let Some(id) = &input.object_id {
        check_stripe_id("object_id", id)?;
    }
    let (account, link) = stripe_account(ctx, key).await?;
    if !link.types.contains(&input.object_type) {
        return Err(ServiceError::conflict(
            "not_mirrored",
            format!(
                "account {} does not mirror {}: a change to them could not be checked \
                 against the local copy",
                account.id, input.object_type
            ),
        ));
    }
    let new = NewPush {
        account_id: account.id.clone(),
        object_type: input.object_type,
        object_id: input.object_id.clone(),
        action: input.action,
        params,
        expected_version: input.base_version,
        at: ctx.clock.now(),
        client_key: input.client_key,
    };
    let push = ctx
        .store
        .run(move |store| store.enqueue_push(&new))
        .await
        .map_err(|error| match error {
            StoreError::InvalidState(message) => ServiceError::NotFound(format!(
                "{message} of account {} (is its backfill done?)",
                account.id
            )),
            StoreError::Conflict { key, .. } => ServiceError::conflict(
                "idempotency_key_reused",
                format!("{key} was queued with this key: use a new key for a new change"),
            ),
            StoreError::VersionConflict {
                id, read, stored, ..
            } => ServiceError::conflict(
                "stale_base",
                format!(
                    "{id} is at version {stored} in the local copy, not {read}: read it \
                         again and base the change on what it is now"
                ),
            ),
            other => ServiceError::Store(other),
        })?;
    // Acknowledged only once on disk: a 202 promises the change will be pushed.
    ctx.store.durable().await?;
    wake(ctx, &push).await;
    Ok(push)
}

/// Asks the account's actor to push (a failure to ask is logged: the change is queued
/// durably and the next sync, at the latest the sweeper's poll, pushes it).
async fn wake(ctx: &Context, push: &Push) {
    let registry = ctx.registry.clone();
    let id = push.account_id.clone();
    let asked = blocking(move || Ok(registry.request_sync(&id, SyncReason::Push)?)).await;
    if let Err(error) = asked {
        tracing::warn!(account_id = %push.account_id, push = %push.id(), %error, "could not wake the account's actor; the change waits for its next sync");
    }
}

/// The account's changes (optionally only some statuses), by number, and its backlog.
pub async fn list(
    ctx: &Context,
    key: &str,
    statuses: Vec<PushStatus>,
    after: Option<u64>,
    limit: usize,
) -> Result<(Account, Vec<Push>, Option<u64>, PushBacklog), ServiceError> {
    let (account, _) = stripe_account(ctx, key).await?;
    let id = account.id.clone();
    let (pushes, next, backlog) = ctx
        .store
        .run(move |store| {
            // Two reads, not one snapshot: the backlog first, so the page is at least as
            // new as it (a change it counts as pending may show as pushed, never the
            // other way round).
            let backlog = store.push_backlog(&id)?;
            let (pushes, next) = store.list_pushes(&PushQuery {
                account_id: id.clone(),
                statuses,
                after,
                limit,
            })?;
            Ok((pushes, next, backlog))
        })
        .await?;
    Ok((account, pushes, next, backlog))
}

/// One change.
pub async fn get(ctx: &Context, key: &str, seq: u64) -> Result<Push, ServiceError> {
    let (account, _) = stripe_account(ctx, key).await?;
    let id = account.id.clone();
    ctx.store
        .run(move |store| store.get_push(&id, seq))
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no push_{seq} in account {}", account.id)))
}

/// A human's answer to a held change; a retry wakes the actor.
pub async fn resolve(
    ctx: &Context,
    key: &str,
    seq: u64,
    resolution: Resolution,
) -> Result<Push, ServiceError> {
    let current = get(ctx, key, seq).await?;
    let id = current.account_id.clone();
    let at = ctx.clock.now();
    let push = ctx
        .store
        .run(move |store| store.resolve_push(&id, seq, resolution, at))
        .await
        .map_err(|error| match error {
            StoreError::InvalidState(message) => ServiceError::conflict("not_held", message),
            other => ServiceError::Store(other),
        })?;
    ctx.store.durable().await?;
    if push.status == PushStatus::Pending {
        wake(ctx, &push).await;
    }
    Ok(push)
}

/// A page of one object's audit trail, oldest first.
pub async fn audit(
    ctx: &Context,
    key: &str,
    object_type: ObjectType,
    object_id: String,
    after: Option<u64>,
    limit: usize,
) -> Result<(Account, AuditPage), ServiceError> {
    let (account, _) = stripe_account(ctx, key).await?;
    let id = account.id.clone();
    let page = ctx
        .store
        .run(move |store| store.audit_trail(&id, object_type, &object_id, after, limit))
        .await?;
    Ok((account, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_create_needs_a_name_and_takes_only_product_fields() {
        let fields = CatalogFields {
            name: Some("Pro".into()),
            metadata: Some(BTreeMap::from([("tier".into(), "gold".into())])),
            ..CatalogFields::default()
        };
        let params = fields
            .params(ObjectType::Products, PushAction::Create)
            .expect("valid");
        assert_eq!(params["name"], "Pro");
        assert_eq!(params["metadata"]["tier"], "gold");
        let missing = CatalogFields::default().params(ObjectType::Products, PushAction::Create);
        assert!(missing.unwrap_err().to_string().contains("name: required"));
        let price_field = CatalogFields {
            name: Some("Pro".into()),
            currency: Some("usd".into()),
            ..CatalogFields::default()
        };
        let refused = price_field.params(ObjectType::Products, PushAction::Create);
        assert!(refused.unwrap_err().to_string().starts_with("currency:"));
    }

    #[test]
    fn a_price_create_checks_currency_amount_and_interval() {
        let good = CatalogFields {
            product: Some("prod_1".into()),
            currency: Some("eur".into()),
            unit_amount: Some(1200),
            interval: Some("month".into()),
            interval_count: Some(3),
            ..CatalogFields::default()
        };
        let params = good
            .params(ObjectType::Prices, PushAction::Create)
            .expect("valid");
        assert_eq!(params["recurring"]["interval_count"], 3);
        for (bad, field) in [
            (
                CatalogFields {
                    currency: Some("EUR".into()),
                    ..good.clone()
                },
                "currency:",
            ),
            (
                CatalogFields {
                    unit_amount: Some(MAX_UNIT_AMOUNT + 1),
                    ..good.clone()
                },
                "unit_amount:",
            ),
            (
                CatalogFields {
                    interval: Some("fortnight".into()),
                    ..good.clone()
                },
                "recurring.interval:",
            ),
            (
                CatalogFields {
                    product: Some("prod 1".into()),
                    ..good.clone()
                },
                "product:",
            ),
        ] {
            let error = bad
                .params(ObjectType::Prices, PushAction::Create)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(field), "{error} should name {field}");
        }
    }

    #[test]
    fn an_update_must_change_something_and_an_archive_deactivates() {
        let empty = CatalogFields::default().params(ObjectType::Products, PushAction::Update);
        assert!(empty.unwrap_err().to_string().contains("nothing to change"));
        let archive = CatalogFields::default()
            .params(ObjectType::Prices, PushAction::Archive)
            .expect("archive");
        assert_eq!(archive.get("active"), Some(&Value::Bool(false)));
        let immutable = CatalogFields {
            unit_amount: Some(5),
            ..CatalogFields::default()
        }
        .params(ObjectType::Prices, PushAction::Update);
        assert!(immutable
            .unwrap_err()
            .to_string()
            .starts_with("unit_amount:"));
    }
}
