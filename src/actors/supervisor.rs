//! The supervisor of every account actor. ractor's default supervision would stop the
//! parent when a child dies, so this actor handles every supervision event itself:
//! a dead actor is removed from the registry (its ref is never trusted again), and an
//! actor that failed with work pending is re-activated so the work is not stranded.
//! A failure is contained to its account; neighbours never notice.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::account::SyncReason;
use super::registry::Registry;

/// The supervisor actor.
pub struct Supervisor {
    registry: Arc<Registry>,
}

impl Supervisor {
    /// A supervisor for the actors of `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Supervisor { registry }
    }
}

/// Messages of the supervisor (it only reacts to supervision events).
pub enum SupervisorMessage {}

/// Counters of the supervisor.
#[derive(Default)]
pub struct SupervisorState {
    /// Account actors that failed (panicked or returned an error) since start.
    pub failures: u64,
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
        match message {}
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
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
                let Some(id) = self.registry.forget_actor(cell.get_id()) else {
                    return Ok(());
                };
                tracing::error!(account_id = %id, error = %error, "account actor failed");
                let pending = match self.registry.store().pending_inbox(&id) {
                    Ok(entries) => !entries.is_empty(),
                    Err(store_error) => {
                        tracing::error!(account_id = %id, error = %store_error, "could not read inbox of failed actor");
                        false
                    }
                };
                if pending {
                    let registry = self.registry.clone();
                    tokio::spawn(async move {
                        if let Err(error) = registry.request_sync(&id, SyncReason::Activation) {
                            tracing::warn!(account_id = %id, %error, "could not restart failed account actor");
                        }
                    });
                }
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}
