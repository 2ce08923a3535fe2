//! Incident use-cases: list incidents (filtered, newest first, paged) and read one.
//! Incidents themselves are opened and resolved by the actors and the store.

use super::{Context, ServiceError};
use crate::domain::incidents::{Incident, IncidentQuery};
use crate::store::Resolved;

/// Incidents matching `query` (its `limit` is the page size), with the account filter
/// given as any lookup key; returns the page and the id to continue after.
pub async fn list(
    ctx: &Context,
    mut query: IncidentQuery,
    account_key: Option<&str>,
) -> Result<(Vec<Incident>, Option<u64>), ServiceError> {
    if let Some(key) = account_key {
        let owned = key.to_owned();
        query.account_id = Some(match ctx.store.run(move |s| s.resolve(&owned)).await? {
            Resolved::Found(id) => id,
            Resolved::NotFound => {
                return Err(ServiceError::NotFound(format!("no account for {key:?}")))
            }
            Resolved::Ambiguous(_) => {
                return Err(ServiceError::conflict(
                    "ambiguous_key",
                    format!("{key:?} is shared by several accounts; use an account id"),
                ))
            }
        });
    }
    let limit = query.limit;
    query.limit = limit + 1;
    // A filtered listing can scan many records: the facade runs it off the workers.
    let mut incidents = ctx.store.run(move |s| s.list_incidents(&query)).await?;
    let next = if incidents.len() > limit {
        incidents.truncate(limit);
        incidents.last().map(|i| i.id)
    } else {
        None
    };
    Ok((incidents, next))
}

/// One incident by id.
pub async fn get(ctx: &Context, id: u64) -> Result<Incident, ServiceError> {
    ctx.store
        .run(move |s| s.get_incident(id))
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no incident {id}")))
}
