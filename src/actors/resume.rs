//! Lifting what holds an account back, and telling its actor: an operator's resume
//! (a quarantine, or the `failed` mark of an account whose syncs kept failing) and a
//! relink (a new access token for a needs-reauth account). Each is a few store writes,
//! incident resolutions and one message to the actor, in an order that matters against
//! the supervisor's quarantine write and the needs-reauth check.
//!
//! These are functions over the [`ActorContext`] and the [`Registry`] rather than
//! registry methods: the store and incident writes are the context's business, and the
//! registry contributes only what it owns (the restart bookkeeping it clears, the actor
//! it activates and tells with [`Registry::send_resume`]).

use super::context::ActorContext;
use super::incidents::resolve_incidents;
use super::registry::{Registry, RegistryError};
use crate::domain::incidents::IncidentKind;
use crate::domain::{AccountId, LinkStatus, Quarantine};

/// Lifts a quarantine and the `failed` mark of an account whose syncs kept failing
/// (the latter also starts a sync): clears them in the store, resets the failure count and
/// activates the account, whose actor then syncs the webhooks that piled up.
/// Returns the quarantine that was lifted (`None`: it was not quarantined, and this
/// only reset the count and activated it). Synchronous like [`Registry::activate`]:
/// call it from a blocking thread.
pub fn resume(
    ctx: &ActorContext,
    registry: &Registry,
    id: &AccountId,
) -> Result<Option<Quarantine>, RegistryError> {
    ctx.store
        .get_account(id)?
        .filter(|account| account.status == LinkStatus::Linked)
        .ok_or_else(|| RegistryError::NotLinked(id.clone()))?;
    // The in-memory mark goes first, then the record is read: a quarantine write
    // still on its way either landed already (and is cleared below) or finds the
    // mark gone and writes nothing (see `Registry::while_quarantined`).
    registry.clear_restart_record(id);
    let account = ctx
        .store
        .get_account(id)?
        .ok_or_else(|| RegistryError::NotLinked(id.clone()))?;
    if account.quarantine.is_some() {
        ctx.store.set_quarantine(id, None)?;
    }
    resolve_incidents(
        ctx,
        id,
        &[
            IncidentKind::Quarantined,
            IncidentKind::SyncFailed,
            IncidentKind::AccessRevoked,
        ],
    )?;
    if account.failed.is_some() {
        ctx.store.set_sync_gave_up(id, None)?;
    }
    // The actor is told (a live one may still believe it gave up, or wait out a
    // backoff): it resets its attempts and syncs at once.
    match registry.send_resume(id) {
        Ok(()) | Err(RegistryError::RestartPending(_)) => {}
        Err(error) => return Err(error),
    }
    Ok(account.quarantine)
}

/// After a relink (the store already holds the new token, its needs-reauth mark
/// flagged `relinked`, its `failed` mark cleared): resolves the incidents the relink
/// lifted and tells the account's actor, which syncs at once, catching up
/// everything kept in its inbox. Synchronous like [`resume`].
pub fn relinked(
    ctx: &ActorContext,
    registry: &Registry,
    id: &AccountId,
) -> Result<(), RegistryError> {
    resolve_incidents(
        ctx,
        id,
        &[
            IncidentKind::NeedsReauth,
            IncidentKind::PendingExpiration,
            IncidentKind::PendingDisconnect,
            IncidentKind::SyncFailed,
            IncidentKind::AccessRevoked,
        ],
    )?;
    match registry.send_resume(id) {
        Ok(()) | Err(RegistryError::RestartPending(_)) | Err(RegistryError::Quarantined(_)) => {
            Ok(())
        }
        Err(error) => Err(error),
    }
}
