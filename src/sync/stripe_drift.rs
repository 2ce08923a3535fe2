//! The drift check: every so often (`stripe.drift_check_interval`, daily by default)
//! every mirrored type is listed again and compared with the local copy, because some
//! changes never produce an event acctor sees (an event lost past Stripe's retries and
//! its 30 days, an object edited through a path that sends none). What differs is
//! repaired with what Stripe listed; a local object Stripe no longer lists is retrieved,
//! and removed only when Stripe confirms it is gone. The report (counts by type, the
//! first ids) is kept in the account's state, where the API shows it.
//!
//! A repair never overwrites something newer: an object whose stored stamp is newer
//! than the listing (an event applied after Stripe answered) is left alone, and every
//! write still goes through the store's guard.

use crate::domain::stripe_push::AuditNote;
use std::collections::HashSet;

use super::backfill::next_page;
use super::{call, commit, fetched_at, StripeEnv, Target};
use crate::domain::stripe::{
    DriftReport, ObjectQuery, ObjectType, ObjectWrite, OnTie, Stamp, StoredObject, StripeState,
    TypeBackfill,
};
use crate::store::StoreError;
use crate::sync::SyncError;

/// The stored objects `ids` of one type, in order.
async fn stored(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
    ids: Vec<String>,
) -> Result<Vec<Option<StoredObject>>, SyncError> {
    let store = env.store.clone();
    let account = target.account.id.clone();
    let found = tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|id| store.get_object(&account, object_type, id))
            .collect::<Result<Vec<_>, StoreError>>()
    })
    .await
    .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    Ok(found)
}

/// The ids of the account's live local objects of one type.
async fn local_ids(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
) -> Result<Vec<(String, i64)>, SyncError> {
    let store = env.store.clone();
    let account = target.account.id.clone();
    let ids = tokio::task::spawn_blocking(move || {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_objects(&ObjectQuery {
                account_id: account.clone(),
                object_type,
                after: after.take(),
                limit: 1000,
            })?;
            ids.extend(page.objects.into_iter().map(|o| (o.id, o.stamp.at)));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok::<_, StoreError>(ids),
            }
        }
    })
    .await
    .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    Ok(ids)
}

/// Whether the listed `object` repairs `local`: it differs, and what is stored is not
/// newer than the listing.
fn repairs(local: Option<&StoredObject>, object: &serde_json::Value, at: i64) -> bool {
    match local {
        None => true,
        Some(local) => local.stamp.at <= at && local.body.as_ref() != Some(object),
    }
}

/// Runs one drift check over every mirrored type; schedules the next.
pub(super) async fn check(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    state: &mut StripeState,
) -> Result<(), SyncError> {
    let started_at = env.clock.now();
    let mut report = DriftReport {
        started_at,
        finished_at: started_at,
        ..DriftReport::default()
    };
    for object_type in target.link.types.clone() {
        check_type(env, target, object_type, state, &mut report).await?;
    }
    report.finished_at = env.clock.now();
    tracing::info!(
        account_id = %target.account.id,
        checked = report.checked,
        repaired = report.total(),
        "stripe drift check done"
    );
    if let Some(metrics) = env.metrics {
        for (object_type, n) in &report.repaired {
            metrics.stripe_drift(object_type.as_str(), "repaired", *n);
        }
        for (object_type, n) in &report.removed {
            metrics.stripe_drift(object_type.as_str(), "removed", *n);
        }
    }
    state.drift = Some(report);
    state.next_drift_check = Some(started_at + env.params.drift_interval);
    commit(env, target, Vec::new(), state, Vec::new(), None).await?;
    Ok(())
}

async fn check_type(
    env: &StripeEnv<'_>,
    target: &Target<'_>,
    object_type: ObjectType,
    state: &StripeState,
    report: &mut DriftReport,
) -> Result<(), SyncError> {
    let started = env.clock.now().timestamp();
    let mut cursor = TypeBackfill::new(started);
    let mut seen = HashSet::new();
    while let Some((objects, at)) = next_page(env, target, object_type, &mut cursor).await? {
        let ids: Vec<String> = objects
            .iter()
            .filter_map(|o| o.get("id").and_then(serde_json::Value::as_str))
            .map(str::to_owned)
            .collect();
        let locals = stored(env, target, object_type, ids.clone()).await?;
        let mut writes = Vec::new();
        for ((object, id), local) in objects.into_iter().zip(ids).zip(locals) {
            report.checked += 1;
            if repairs(local.as_ref(), &object, at) {
                report.record(object_type, &id, false);
                writes.push(ObjectWrite {
                    object_type,
                    id: id.clone(),
                    body: Some(object),
                    stamp: Stamp { at, event_id: None },
                    on_tie: OnTie::Apply,
                    note: AuditNote::inbound("repaired", "drift check"),
                });
            }
            seen.insert(id);
        }
        if !writes.is_empty() {
            commit(env, target, writes, state, Vec::new(), None).await?;
        }
    }
    // Local objects the listing did not show: gone at Stripe, or created after the
    // listing began. Only Stripe can say which.
    let mut writes = Vec::new();
    for (id, stamped_at) in local_ids(env, target, object_type).await? {
        if seen.contains(&id) || stamped_at >= started {
            continue;
        }
        let fetched = call(env.params, "retrieve", || {
            env.api.retrieve(target.access(), object_type, &id)
        })
        .await?;
        let at = fetched_at(env, &fetched).max(stamped_at);
        let removed = fetched.value.is_none();
        let local = stored(env, target, object_type, vec![id.clone()]).await?;
        let differs = match &fetched.value {
            None => true,
            Some(object) => repairs(local.first().and_then(Option::as_ref), object, at),
        };
        if differs {
            report.record(object_type, &id, removed);
            let what = if removed { "removed" } else { "repaired" };
            writes.push(ObjectWrite {
                object_type,
                id,
                body: fetched.value,
                stamp: Stamp { at, event_id: None },
                on_tie: OnTie::Apply,
                note: AuditNote::inbound(what, "drift check"),
            });
        }
    }
    if !writes.is_empty() {
        commit(env, target, writes, state, Vec::new(), None).await?;
    }
    Ok(())
}
