//! The actors' side of incidents: opening and resolving an account's incidents as its
//! marks (needs reauth, failed, quarantined) come and go, and waking the alert sender
//! when one changes. The records themselves are the store's ([`crate::domain::incidents`] has
//! their types); what this adds is the rule that every change wakes outbound alerts,
//! and the repair of a mark whose incident a crash kept from being written.
//!
//! Plain functions over the [`ActorContext`]: they need the store and the alert wake-up,
//! nothing of the registry. All are synchronous (store transactions): call them from a
//! blocking thread, and make the result durable (`Store::durable`) after.

use super::context::ActorContext;
use crate::domain::incidents::{Incident, IncidentKind, IncidentSubject, OpenIncident};
use crate::domain::{Account, AccountId, SyncGaveUp};
use crate::store::StoreError;

/// The incident kinds the account's marks call for. A relinked needs-reauth mark is on
/// its way out: the relink resolved its incident, and the next check lifts the mark.
fn marked_kinds(account: &Account) -> impl Iterator<Item = IncidentKind> {
    [
        (
            account
                .needs_reauth
                .as_ref()
                .is_some_and(|mark| !mark.relinked),
            IncidentKind::NeedsReauth,
        ),
        (
            account.failed.is_some(),
            account
                .failed
                .as_ref()
                .map_or(IncidentKind::SyncFailed, SyncGaveUp::incident_kind),
        ),
        (account.quarantine.is_some(), IncidentKind::Quarantined),
    ]
    .into_iter()
    .filter_map(|(marked, kind)| marked.then_some(kind))
}

/// The details of the incident a `failed` mark keeps open: what failed, how often, and
/// what a human must do (`action`, with the account's id filled in).
pub fn gave_up_details(
    id: &AccountId,
    mark: &SyncGaveUp,
    code: Option<&str>,
    request_id: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "cause": mark.cause,
        "code": code,
        "request_id": request_id,
        "attempts": mark.attempts,
        "message": mark.reason,
        "action": mark.cause.action().replace("{id}", id.as_str()),
    })
}

/// Opens (or refreshes) the account's incident of `kind`. Not durable until
/// `durable()`.
pub fn open_incident(
    ctx: &ActorContext,
    id: &AccountId,
    kind: IncidentKind,
    details: serde_json::Value,
) -> Result<Incident, StoreError> {
    let incident = ctx.store.open_incident(&OpenIncident {
        subject: IncidentSubject::Account(id.clone()),
        kind,
        details,
        at: ctx.clock.now(),
        notify: ctx.alerts_on(),
    })?;
    if incident.occurrences == 1 {
        tracing::warn!(account_id = %id, kind = %kind, incident_id = incident.id, "incident opened");
        ctx.wake_alerts();
    }
    Ok(incident)
}

/// Opens the incident of each mark on the account (needs reauth, failed,
/// quarantined) that has none open. A mark and its incident are two store writes,
/// the mark first, so a crash between them would leave an account nobody is told
/// about; this runs wherever a marked account is looked at anyway (its activation,
/// a refused activation of a quarantined one). One key read per mark when all is
/// well. The mark is read again before opening: a resume or relink that lifted it
/// meanwhile wins (and one that lands after still resolves what this opens).
pub fn ensure_mark_incidents(ctx: &ActorContext, account: &Account) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    let subject = IncidentSubject::Account(account.id.clone());
    for kind in marked_kinds(account) {
        if ctx.store.open_incident_of(&subject, kind)?.is_none() {
            missing.push(kind);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let Some(current) = ctx.store.get_account(&account.id)? else {
        return Ok(());
    };
    for kind in marked_kinds(&current).filter(|kind| missing.contains(kind)) {
        let mut details = match kind {
            IncidentKind::NeedsReauth => current.needs_reauth.as_ref().map(
                |mark| serde_json::json!({ "code": mark.code, "request_id": mark.request_id }),
            ),
            IncidentKind::SyncFailed | IncidentKind::AccessRevoked => current
                .failed
                .as_ref()
                .map(|mark| gave_up_details(&current.id, mark, None, None)),
            IncidentKind::Quarantined => current.quarantine.as_ref().map(
                |mark| serde_json::json!({ "reason": mark.reason, "failures": mark.failures }),
            ),
            // Deadlines are not marks, and operations' kinds are never an account's.
            IncidentKind::PendingExpiration
            | IncidentKind::PendingDisconnect
            | IncidentKind::AccountOpeningWebhookNotReceived
            | IncidentKind::OperationStepFailed
            | IncidentKind::OperationFailed => None,
        }
        .unwrap_or_default();
        details["source"] = serde_json::json!("recovered");
        tracing::warn!(account_id = %account.id, kind = %kind, "marked account without its incident (an interrupted write): opening it");
        open_incident(ctx, &account.id, kind, details)?;
    }
    Ok(())
}

/// Resolves the account's open incidents of these kinds; returns how many were open.
pub fn resolve_incidents(
    ctx: &ActorContext,
    id: &AccountId,
    kinds: &[IncidentKind],
) -> Result<u32, StoreError> {
    let mut resolved = 0;
    let notify = ctx.alerts_on();
    let subject = IncidentSubject::Account(id.clone());
    for &kind in kinds {
        if let Some(incident) =
            ctx.store
                .resolve_incident(&subject, kind, ctx.clock.now(), notify)?
        {
            tracing::info!(account_id = %id, kind = %kind, incident_id = incident.id, "incident resolved");
            resolved += 1;
        }
    }
    if resolved > 0 {
        ctx.wake_alerts();
    }
    Ok(resolved)
}
