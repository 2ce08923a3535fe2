//! The operation registry maps an [`OperationId`] to its live actor, activating one on
//! demand (a webhook, a due timer, a create, an ops command) and forgetting it when it
//! passivates. Activation reads nothing: the actor's first step reads the record, and
//! a drive for an operation that does not exist ends there. Creation is race-free like
//! the account registry's: the map entry is made under its shard lock with a
//! non-blocking spawn.
//!
//! [`OperationDeps`] is what every operation actor and its steps read: the store, the
//! bank, the flow's tunables, the clock, the metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{ActorId, ActorRef, ActorRuntime, ActorStatus};
use tokio::sync::Notify;

use super::{OperationActor, OperationMessage, OperationSnapshot};
use crate::clock::SharedClock;
use crate::domain::operations::{Operation, OperationId, OperationState};
use crate::metrics::Metrics;
use crate::providers::bank::BankApi;
use crate::store::AsyncStore;
use crate::sync::bank::{OpeningParams, OpsCommand, OpsCommandError, StepReport};

/// What operation actors depend on.
pub struct OperationDeps {
    /// The store.
    pub store: AsyncStore,
    /// The bank's API.
    pub bank: Arc<dyn BankApi>,
    /// The flow's tunables.
    pub params: OpeningParams,
    /// Where "now" comes from.
    pub clock: SharedClock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// An idle actor stops after this long.
    pub passivate_after: Duration,
    /// Timeout of calls into an actor.
    pub call_timeout: Duration,
    /// Wakes the alert sender after a step opened or resolved an incident.
    pub alerts: Option<Arc<Notify>>,
}

impl OperationDeps {
    /// Counts what a step did.
    pub(super) fn observe(&self, report: &StepReport) {
        let calls = &report.calls;
        self.metrics
            .operation_calls(calls.creates, calls.legacy, calls.polls, calls.cards);
        if report.escalated {
            self.metrics.operation_escalated();
        }
        if let Some(op) = &report.operation {
            if report.committed && op.state == OperationState::Completed {
                if let Some(finished) = op.finished_at {
                    let took = (finished - op.created_at).to_std().unwrap_or_default();
                    self.metrics.operation_completed(took);
                }
            }
        }
        if report.committed && report.incidents > 0 {
            if let Some(alerts) = &self.alerts {
                alerts.notify_one();
            }
        }
    }
}

/// Counters of the registry.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct OperationRegistryStats {
    /// Actors alive now.
    pub active: usize,
    /// Activations since start.
    pub activations: u64,
    /// Steps and commands running now.
    pub steps_running: u64,
}

/// Finds or activates operation actors. Shared as `Arc<OperationRegistry>`.
pub struct OperationRegistry {
    actors: DashMap<OperationId, ActorRef<OperationMessage>>,
    deps: Arc<OperationDeps>,
    me: Weak<OperationRegistry>,
    closed: AtomicBool,
    activations: AtomicU64,
    steps_running: AtomicU64,
    steps_idle: Notify,
}

/// Held by a running step or command: counted until dropped, so shutdown can wait.
pub struct StepSlot {
    registry: Arc<OperationRegistry>,
}

impl Drop for StepSlot {
    fn drop(&mut self) {
        if self.registry.steps_running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.registry.steps_idle.notify_waiters();
        }
    }
}

/// Why an operation's actor could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum OperationRegistryError {
    /// Shutdown began.
    #[error("operations are shutting down")]
    ShuttingDown,
    /// The actor could not be spawned.
    #[error("could not activate operation {0}: {1}")]
    Spawn(OperationId, String),
    /// The actor did not answer in time.
    #[error("operation {0} did not answer within {1:?}")]
    Timeout(OperationId, Duration),
}

impl OperationRegistry {
    /// A registry whose actors read `deps`.
    pub fn new(deps: Arc<OperationDeps>) -> Arc<OperationRegistry> {
        Arc::new_cyclic(|me| OperationRegistry {
            actors: DashMap::new(),
            deps,
            me: me.clone(),
            closed: AtomicBool::new(false),
            activations: AtomicU64::new(0),
            steps_running: AtomicU64::new(0),
            steps_idle: Notify::new(),
        })
    }

    /// The dependencies its actors read.
    pub fn deps(&self) -> &Arc<OperationDeps> {
        &self.deps
    }

    /// Asks the operation's actor to run a step, activating it if needed. Never
    /// blocks: activation reads nothing.
    pub fn drive(&self, id: &OperationId) -> Result<(), OperationRegistryError> {
        for _ in 0..3 {
            let actor = self.get_or_activate(id)?;
            if actor.send_message(OperationMessage::Drive).is_ok() {
                return Ok(());
            }
            self.forget(id, actor.get_id());
        }
        Err(OperationRegistryError::Spawn(
            id.clone(),
            "actor kept exiting".to_string(),
        ))
    }

    /// Runs an ops command through the operation's actor (after any running step) and
    /// returns the operation as committed.
    pub async fn command(
        &self,
        id: &OperationId,
        command: OpsCommand,
    ) -> Result<Result<Operation, OpsCommandError>, OperationRegistryError> {
        // A command may wait behind a legacy call that blocks until the bank decides.
        let timeout = self.deps.call_timeout.max(Duration::from_secs(60));
        for _ in 0..3 {
            let actor = self.get_or_activate(id)?;
            let command = command.clone();
            match actor
                .call(
                    |reply| OperationMessage::Command(command, reply),
                    Some(timeout),
                )
                .await
            {
                Ok(CallResult::Success(result)) => return Ok(result),
                Ok(CallResult::Timeout) => {
                    return Err(OperationRegistryError::Timeout(id.clone(), timeout))
                }
                Ok(CallResult::SenderError) | Err(_) => {
                    self.forget(id, actor.get_id());
                }
            }
        }
        Err(OperationRegistryError::Spawn(
            id.clone(),
            "actor kept exiting".to_string(),
        ))
    }

    /// The live actor's snapshot; `None` when it is passivated. Never activates.
    pub async fn snapshot(&self, id: &OperationId) -> Option<OperationSnapshot> {
        let actor = self.actors.get(id).map(|a| a.clone())?;
        match actor
            .call(OperationMessage::Snapshot, Some(self.deps.call_timeout))
            .await
        {
            Ok(CallResult::Success(snapshot)) => Some(snapshot),
            _ => None,
        }
    }

    /// Removes `id` if it still maps to `actor_id`.
    pub fn forget(&self, id: &OperationId, actor_id: ActorId) -> bool {
        self.actors
            .remove_if(id, |_, actor| actor.get_id() == actor_id)
            .is_some()
    }

    /// Counters.
    pub fn stats(&self) -> OperationRegistryStats {
        OperationRegistryStats {
            active: self.actors.len(),
            activations: self.activations.load(Ordering::Relaxed),
            steps_running: self.steps_running.load(Ordering::SeqCst),
        }
    }

    /// Whether `id` has a live actor.
    pub fn is_active(&self, id: &OperationId) -> bool {
        self.actors.contains_key(id)
    }

    /// Counts a step as running until the slot drops.
    pub(super) fn step_slot(self: &Arc<Self>) -> StepSlot {
        self.steps_running.fetch_add(1, Ordering::SeqCst);
        StepSlot {
            registry: self.clone(),
        }
    }

    /// Refuses new activations, lets running steps end for up to `grace` (a step that
    /// has not committed wrote nothing: its timer and events are still in the store),
    /// then stops every actor.
    pub async fn shutdown(&self, grace: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.steps_idle.notified();
            if self.steps_running.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!("shutdown grace over: abandoning the operation steps still running");
                break;
            }
        }
        let actors: Vec<ActorRef<OperationMessage>> =
            self.actors.iter().map(|e| e.value().clone()).collect();
        let timeout = self.deps.call_timeout;
        futures::future::join_all(
            actors
                .iter()
                .map(|actor| actor.stop_and_wait(Some("shutdown".to_string()), Some(timeout))),
        )
        .await;
        self.actors.clear();
    }

    fn get_or_activate(
        &self,
        id: &OperationId,
    ) -> Result<ActorRef<OperationMessage>, OperationRegistryError> {
        if let Some(actor) = self.actors.get(id).map(|a| a.clone()) {
            if !matches!(
                actor.get_status(),
                ActorStatus::Stopping | ActorStatus::Stopped
            ) {
                return Ok(actor);
            }
            self.forget(id, actor.get_id());
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(OperationRegistryError::ShuttingDown);
        }
        match self.actors.entry(id.clone()) {
            Entry::Occupied(entry) => Ok(entry.get().clone()),
            Entry::Vacant(entry) => {
                let actor = OperationActor {
                    deps: self.deps.clone(),
                    registry: self.me.clone(),
                };
                // Not awaiting pre_start: the shard lock is never held across an await.
                let (actor, _startup) = ActorRuntime::spawn_instant(None, actor, id.clone())
                    .map_err(|e| OperationRegistryError::Spawn(id.clone(), e.to_string()))?;
                self.activations.fetch_add(1, Ordering::Relaxed);
                entry.insert(actor.clone());
                Ok(actor)
            }
        }
    }
}
