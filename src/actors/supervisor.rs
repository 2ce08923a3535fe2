//! The supervisor of every account actor. ractor's default supervision would stop the
//! parent when a child dies, so this actor handles every supervision event itself, the
//! way ractor_cluster's node server does: it matches the failed actor to its account,
//! drops the dead ref from the registry (a restarted actor has a new ref) and decides.
//!
//! - A failed actor (panic or `Err` from a handler) is restarted after an exponential
//!   backoff (`actors.restart_backoff_initial`, doubling per failure within
//!   `actors.restart_window`, capped at `actors.restart_backoff_max`). The wait is a
//!   [`SupervisorMessage::Restart`] scheduled with `send_after`, never a sleep, so the
//!   supervisor keeps serving every other account meanwhile. The restarted actor's
//!   `pre_start` syncs whatever is pending in the inbox, including webhooks that arrived
//!   during the backoff (they are ingested durably; the registry only declines to wake
//!   the account early).
//! - More than `actors.max_restarts` failures within the window quarantine the account:
//!   no restart, the quarantine is written to the account record (so it survives a
//!   process restart), and webhooks keep landing in its inbox without waking it until
//!   `POST /v1/accounts/{id}/resume`.
//!
//!   A `quarantined` incident is opened with it; resume resolves it.
//!
//! A failure is contained to its account; neighbours never notice.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::context::ActorContext;
use super::incidents::open_incident;
use super::registry::{Registry, RegistryError, RestartRecord};
use crate::config::ActorSettings;
use crate::domain::incidents::IncidentKind;
use crate::domain::{AccountId, Quarantine};

/// The supervisor actor.
pub struct Supervisor {
    ctx: Arc<ActorContext>,
    registry: Arc<Registry>,
}

impl Supervisor {
    /// A supervisor for the actors of `registry`, reading its settings, metrics and
    /// store from `ctx`.
    pub fn new(ctx: Arc<ActorContext>, registry: Arc<Registry>) -> Self {
        Supervisor { ctx, registry }
    }
}

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMessage {
    /// The backoff of a failed account's actor is over: start it again (internal,
    /// scheduled by the supervisor itself).
    Restart(AccountId),
}

/// Counters of the supervisor.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SupervisorState {
    /// Account actors that failed (panicked or returned an error) since start.
    pub failures: u64,
    /// Restarts scheduled since start.
    pub restarts: u64,
    /// Accounts quarantined since start.
    pub quarantines: u64,
}

/// What to do with an account whose actor just failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start it again after `delay`.
    Restart {
        /// The backoff.
        delay: Duration,
    },
    /// Too many failures within the window: give up until an operator resumes it.
    Quarantine {
        /// Failures counted within the window.
        failures: u32,
    },
}

/// Records a failure at `now` in `record` and decides. Failures older than the window
/// are forgotten first, so an account that fails rarely is always restarted, with the
/// initial delay again once its old failures have aged out.
pub fn record_failure(
    record: &mut RestartRecord,
    now: tokio::time::Instant,
    settings: &ActorSettings,
) -> RestartDecision {
    while let Some(&oldest) = record.failures.front() {
        if now.duration_since(oldest) < settings.restart_window {
            break;
        }
        record.failures.pop_front();
    }
    record.failures.push_back(now);
    let failures = record.failures.len() as u32;
    if failures > settings.max_restarts {
        return RestartDecision::Quarantine { failures };
    }
    RestartDecision::Restart {
        delay: restart_delay(
            settings.restart_backoff_initial,
            settings.restart_backoff_max,
            failures,
        ),
    }
}

/// `initial · 2^(failures-1)`, capped. No jitter: restarts are rare and per account, and
/// a predictable delay is what an operator reading the status wants to see.
pub fn restart_delay(initial: Duration, cap: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    initial.saturating_mul(1u32 << exponent).min(cap)
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Restart(id) => {
                let still_wanted = self.registry.with_restart_record(&id, |record| {
                    record.restart_due_at = None;
                    !record.quarantined
                });
                if !still_wanted {
                    return Ok(());
                }
                // Activation reads the account record: a blocking thread, not this
                // mailbox (sled reads can wait on its global lock).
                let registry = self.registry.clone();
                tokio::task::spawn_blocking(move || match registry.activate(&id) {
                    Ok(()) => tracing::info!(account_id = %id, "account actor restarted"),
                    Err(RegistryError::NotLinked(_)) => {
                        // Unlinked during the backoff: nothing to restart, nothing to keep.
                        registry.clear_restart_record(&id);
                    }
                    Err(error) => {
                        tracing::warn!(account_id = %id, %error, "could not restart account actor");
                    }
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                // Passivation and unlink already left the registry; this catches the rest.
                self.registry.forget_actor(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                state.failures += 1;
                let actor_id = cell.get_id();
                // Stopped on unlink or shutdown before it failed: nothing to restart.
                let Some(id) = self.registry.account_of(actor_id) else {
                    return Ok(());
                };
                let reason = error.to_string();
                let decision = self.registry.with_restart_record(&id, |record| {
                    let decision =
                        record_failure(record, tokio::time::Instant::now(), &self.ctx.settings);
                    record.last_failure = Some(reason.clone());
                    match decision {
                        RestartDecision::Restart { delay } => {
                            record.restarts += 1;
                            record.restart_due_at =
                                Some(crate::clock::after(self.ctx.clock.now(), delay));
                        }
                        RestartDecision::Quarantine { .. } => record.quarantined = true,
                    }
                    decision
                });
                // Marked before the ref goes, so nothing activates it early in between.
                self.registry.forget(&id, actor_id);
                match decision {
                    RestartDecision::Restart { delay } => {
                        state.restarts += 1;
                        self.ctx.metrics.actor_restarted();
                        tracing::error!(
                            account_id = %id,
                            error = %reason,
                            restart_in_ms = delay.as_millis() as u64,
                            "account actor failed, restarting after backoff"
                        );
                        myself.send_after(delay, move || SupervisorMessage::Restart(id));
                    }
                    RestartDecision::Quarantine { failures } => {
                        state.quarantines += 1;
                        self.ctx.metrics.actor_quarantined();
                        tracing::error!(
                            account_id = %id,
                            error = %reason,
                            failures,
                            "account actor keeps failing, quarantined"
                        );
                        self.persist_quarantine(
                            id,
                            Quarantine {
                                reason,
                                failures,
                                since: self.ctx.clock.now(),
                            },
                        );
                    }
                }
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}

impl Supervisor {
    /// Writes the quarantine to the account record and makes it durable, off the
    /// mailbox. Until it lands, the registry's in-memory mark keeps the account down; a
    /// resume that lifts that mark first makes this write nothing (see
    /// [`Registry::while_quarantined`]).
    fn persist_quarantine(&self, id: AccountId, quarantine: Quarantine) {
        let ctx = self.ctx.clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let write_ctx = ctx.clone();
            let write_id = id.clone();
            let written = tokio::task::spawn_blocking(move || {
                write_quarantine(&write_ctx, &registry, &write_id, quarantine)
            })
            .await;
            let result = match written {
                Ok(Ok(true)) => ctx.store.durable().await,
                Ok(Ok(false)) => {
                    tracing::info!(account_id = %id, "resumed before its quarantine was written");
                    Ok(())
                }
                Ok(Err(error)) => Err(error),
                Err(join_error) => {
                    tracing::error!(account_id = %id, error = %join_error, "quarantine write task failed");
                    return;
                }
            };
            if let Err(error) = result {
                tracing::error!(account_id = %id, %error, "could not persist quarantine");
            }
        });
    }
}

/// Writes a quarantine the supervisor decided (the record, then its incident), but
/// only while the registry's in-memory mark is still there (see
/// [`Registry::while_quarantined`]). Returns whether it wrote. Synchronous (store
/// transactions): call it from a blocking thread, then make it durable.
pub(super) fn write_quarantine(
    ctx: &ActorContext,
    registry: &Registry,
    id: &AccountId,
    quarantine: Quarantine,
) -> Result<bool, crate::store::StoreError> {
    let written = registry.while_quarantined(id, || {
        let details = serde_json::json!({
            "reason": quarantine.reason,
            "failures": quarantine.failures,
        });
        ctx.store.set_quarantine(id, Some(quarantine))?;
        open_incident(ctx, id, IncidentKind::Quarantined, details)?;
        Ok(())
    });
    match written {
        None => Ok(false),
        Some(result) => result.map(|()| true),
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
