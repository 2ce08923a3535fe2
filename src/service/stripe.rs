//! Reading a linked Stripe account's local copy: its objects by type (only once the
//! type's backfill has completed: a half-listed type would look complete), one object,
//! and the account's sync report (backfill progress, catch-up, guard counters).

use super::{accounts, Context, ServiceError};
use crate::domain::stripe::{ObjectQuery, ObjectType, StoredObject, StripeLink, StripeState};
use crate::domain::{Account, ProviderKind};
use crate::store::ObjectPage;

/// A Stripe account's settings and sync state, with its live object counts.
#[derive(Clone, Debug)]
pub struct StripeReport {
    /// The account.
    pub account: Account,
    /// Its settings.
    pub link: StripeLink,
    /// Its sync state (default before its first sync).
    pub state: StripeState,
    /// Live objects per mirrored type.
    pub counts: Vec<(ObjectType, u64)>,
    /// The push queue at a glance.
    pub backlog: crate::domain::stripe_push::PushBacklog,
}

/// The Stripe account `key` names, with its settings.
pub(super) async fn stripe_account(
    ctx: &Context,
    key: &str,
) -> Result<(Account, StripeLink), ServiceError> {
    let account = accounts::resolve(ctx, key).await?;
    match (account.provider, account.stripe.clone()) {
        (ProviderKind::Stripe, Some(link)) => Ok((account, link)),
        _ => Err(ServiceError::NotFound(format!(
            "account {} is not a Stripe account",
            account.id
        ))),
    }
}

/// A page of the account's `object_type` objects, by id.
pub async fn objects(
    ctx: &Context,
    key: &str,
    object_type: ObjectType,
    after: Option<String>,
    limit: usize,
) -> Result<(Account, ObjectPage), ServiceError> {
    let (account, link) = stripe_account(ctx, key).await?;
    if !link.types.contains(&object_type) {
        return Err(ServiceError::NotFound(format!(
            "account {} does not mirror {object_type} (it mirrors: {})",
            account.id,
            link.types
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let id = account.id.clone();
    let (state, page) = ctx
        .store
        .run(move |store| {
            let state = store.stripe_state(&id)?.unwrap_or_default();
            if !state.is_visible(object_type) {
                return Ok((state, None));
            }
            let page = store.list_objects(&ObjectQuery {
                account_id: id,
                object_type,
                after,
                limit,
            })?;
            Ok((state, Some(page)))
        })
        .await?;
    match page {
        Some(page) => Ok((account, page)),
        None => {
            let listed = state.backfill.get(&object_type).map_or(0, |b| b.objects);
            Err(ServiceError::conflict(
                "backfill_running",
                format!(
                    "{object_type} of account {} are being backfilled ({listed} listed so far); \
                     they become visible when the backfill completes",
                    account.id
                ),
            ))
        }
    }
}

/// One object of the account (a deleted one is 404, saying so).
pub async fn object(
    ctx: &Context,
    key: &str,
    object_type: ObjectType,
    object_id: String,
) -> Result<(Account, StoredObject), ServiceError> {
    let (account, _) = stripe_account(ctx, key).await?;
    let id = account.id.clone();
    let shown = object_id.clone();
    let found = ctx
        .store
        .run(move |store| store.get_object(&id, object_type, &object_id))
        .await?;
    match found {
        Some(object) if object.is_deleted() => Err(ServiceError::NotFound(format!(
            "{object_type} {shown} was deleted at Stripe"
        ))),
        Some(object) => Ok((account, object)),
        None => Err(ServiceError::NotFound(format!(
            "no {object_type} {shown} in account {}",
            account.id
        ))),
    }
}

/// The account's settings, sync state and object counts.
pub async fn report(ctx: &Context, key: &str) -> Result<StripeReport, ServiceError> {
    let (account, link) = stripe_account(ctx, key).await?;
    let id = account.id.clone();
    let types = link.types.clone();
    let (state, counts, backlog) = ctx
        .store
        .run(move |store| {
            let state = store.stripe_state(&id)?.unwrap_or_default();
            let counts = types
                .iter()
                .map(|t| Ok((*t, store.count_objects(&id, *t)?)))
                .collect::<Result<Vec<_>, crate::store::StoreError>>()?;
            Ok((state, counts, store.push_backlog(&id)?))
        })
        .await?;
    Ok(StripeReport {
        account,
        link,
        state,
        counts,
        backlog,
    })
}
