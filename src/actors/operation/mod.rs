//! The operation actor: one per live account-opening operation, and the only path to
//! it. Its mailbox serializes everything done to the operation: webhook statuses, polls,
//! the escalation timer, the next step and ops commands (cancel, retry) never overlap,
//! so no step can issue a card while another cancels.
//!
//! Like the account actor it holds nothing the store does not: every step reads the
//! record and its inbox, and commits in one transaction (see [`crate::sync::bank`]).
//! Provider I/O (the create call, the legacy call that blocks until the bank decides,
//! polls, the card) runs in a task the actor spawns; the task reports back with
//! [`OperationMessage::StepDone`], so the mailbox keeps answering snapshots meanwhile.
//! A drive requested while a step runs sets `again`: a burst of webhooks becomes one
//! more step. An idle actor stops after `actors.passivate_after`, so 10,000 operations
//! waiting hours for their bank cost their store records, not 10,000 actors.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tracing::{debug, warn};

use crate::domain::operations::{Operation, OperationId};
use crate::sync::bank::{run_command, run_step, OpsCommand, OpsCommandError, StepReport};

pub mod registry;

pub use registry::{OperationDeps, OperationRegistry};

/// What an operation actor is asked.
pub enum OperationMessage {
    /// Run a step: statuses arrived, a timer is due, or it was just created.
    Drive,
    /// The running step ended (internal).
    StepDone(Result<StepReport, String>),
    /// The running ops command ended (internal).
    CommandDone(
        Result<Operation, OpsCommandError>,
        RpcReplyPort<Result<Operation, OpsCommandError>>,
    ),
    /// An ops command; answered when it has been committed.
    Command(OpsCommand, RpcReplyPort<Result<Operation, OpsCommandError>>),
    /// What the actor is doing.
    Snapshot(RpcReplyPort<OperationSnapshot>),
    /// Stop if still idle since the check was scheduled (internal).
    IdleCheck(u64),
}

/// What the actor shows about itself (the debug view).
#[derive(Clone, Debug, Serialize)]
pub struct OperationSnapshot {
    /// The operation.
    pub operation_id: OperationId,
    /// Whether a step or command is running.
    pub running: bool,
    /// Whether another step is queued behind the running one.
    pub again: bool,
    /// Commands waiting for the running step.
    pub queued_commands: usize,
    /// Steps run by this activation.
    pub steps: u64,
    /// Steps that committed something.
    pub commits: u64,
    /// When the last step ended.
    pub last_step_at: Option<DateTime<Utc>>,
    /// The last step's failure, if it failed.
    pub last_error: Option<String>,
}

/// The actor (read-only configuration).
pub struct OperationActor {
    deps: Arc<OperationDeps>,
    registry: std::sync::Weak<OperationRegistry>,
}

/// Its state.
pub struct OperationActorState {
    id: OperationId,
    running: bool,
    again: bool,
    commands: VecDeque<(OpsCommand, RpcReplyPort<Result<Operation, OpsCommandError>>)>,
    steps: u64,
    commits: u64,
    last_step_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    /// Bumped by every message that is not an idle check, so a check scheduled before
    /// the actor was busy again does not stop it.
    activity: u64,
    /// Consecutive failed steps, for the retry delay of the next one.
    failed_steps: u32,
}

impl OperationActor {
    fn start_next(&self, myself: &ActorRef<OperationMessage>, state: &mut OperationActorState) {
        if state.running {
            return;
        }
        if let Some((command, reply)) = state.commands.pop_front() {
            state.running = true;
            let deps = self.deps.clone();
            let id = state.id.clone();
            let me = myself.clone();
            let slot = self.registry.upgrade().map(|r| r.step_slot());
            tokio::spawn(async move {
                let _slot = slot;
                // In a task of its own, so a panic (a bug) still answers the caller and
                // frees the actor for its next step.
                let command = tokio::spawn(async move {
                    run_command(&deps.store, &deps.params, &deps.clock, &id, command).await
                });
                let result = command.await.unwrap_or_else(|join| {
                    Err(OpsCommandError::Store(crate::store::StoreError::Io(
                        format!("command task failed: {join}"),
                    )))
                });
                let _ = me.send_message(OperationMessage::CommandDone(result, reply));
            });
            return;
        }
        if !state.again {
            self.schedule_idle_check(myself, state);
            return;
        }
        state.again = false;
        state.running = true;
        let deps = self.deps.clone();
        let id = state.id.clone();
        let me = myself.clone();
        let slot = self.registry.upgrade().map(|r| r.step_slot());
        tokio::spawn(async move {
            let _slot = slot;
            let step = tokio::spawn({
                let deps = deps.clone();
                async move { run_step(&deps.store, &deps.bank, &deps.params, &deps.clock, &id).await }
            });
            let result = match step.await {
                Ok(Ok(report)) => Ok(report),
                Ok(Err(error)) => Err(error.to_string()),
                Err(join) => Err(format!("step task failed: {join}")),
            };
            let _ = me.send_message(OperationMessage::StepDone(result));
        });
    }

    fn schedule_idle_check(
        &self,
        myself: &ActorRef<OperationMessage>,
        state: &OperationActorState,
    ) {
        let activity = state.activity;
        myself.send_after(self.deps.passivate_after, move || {
            OperationMessage::IdleCheck(activity)
        });
    }

    fn step_done(
        &self,
        myself: &ActorRef<OperationMessage>,
        state: &mut OperationActorState,
        result: Result<StepReport, String>,
    ) {
        state.running = false;
        state.steps += 1;
        state.last_step_at = Some(self.deps.clock.now());
        match result {
            Ok(report) => {
                state.failed_steps = 0;
                state.last_error = None;
                if report.committed {
                    state.commits += 1;
                }
                self.deps.observe(&report);
                if report.adopted > 0 {
                    state.again = true;
                }
                if report.operation.is_none() {
                    debug!(operation_id = %state.id, "drive for an operation that does not exist");
                }
            }
            Err(error) => {
                // Nothing was written: the due entry that woke it (or the inbox event)
                // is still there. Try again after a short backoff rather than wait for
                // the sweeper, in case the failure was a version conflict.
                warn!(operation_id = %state.id, %error, "operation step failed");
                state.failed_steps = state.failed_steps.saturating_add(1);
                state.last_error = Some(error);
                let delay = Duration::from_millis(50)
                    .saturating_mul(1 << state.failed_steps.min(8))
                    .min(Duration::from_secs(10));
                myself.send_after(delay, || OperationMessage::Drive);
            }
        }
        self.start_next(myself, state);
    }
}

impl Actor for OperationActor {
    type Msg = OperationMessage;
    type State = OperationActorState;
    type Arguments = OperationId;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        id: OperationId,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(OperationActorState {
            id,
            running: false,
            again: false,
            commands: VecDeque::new(),
            steps: 0,
            commits: 0,
            last_step_at: None,
            last_error: None,
            activity: 0,
            failed_steps: 0,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(registry) = self.registry.upgrade() {
            registry.forget(&state.id, myself.get_id());
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, OperationMessage::IdleCheck(_)) {
            state.activity = state.activity.wrapping_add(1);
        }
        match message {
            OperationMessage::Drive => {
                state.again = true;
                self.start_next(&myself, state);
            }
            OperationMessage::StepDone(result) => self.step_done(&myself, state, result),
            OperationMessage::Command(command, reply) => {
                state.commands.push_back((command, reply));
                self.start_next(&myself, state);
            }
            OperationMessage::CommandDone(result, reply) => {
                state.running = false;
                if result.is_ok() {
                    // A retry lifted what held it: drive it now.
                    state.again = true;
                    // Cancel and retry resolve incidents, whose alerts wait in the outbox.
                    if let Some(alerts) = &self.deps.alerts {
                        alerts.notify_one();
                    }
                }
                let _ = reply.send(result);
                self.start_next(&myself, state);
            }
            OperationMessage::Snapshot(reply) => {
                let _ = reply.send(OperationSnapshot {
                    operation_id: state.id.clone(),
                    running: state.running,
                    again: state.again,
                    queued_commands: state.commands.len(),
                    steps: state.steps,
                    commits: state.commits,
                    last_step_at: state.last_step_at,
                    last_error: state.last_error.clone(),
                });
            }
            OperationMessage::IdleCheck(activity) => {
                if activity == state.activity && !state.running && !state.again {
                    // Out of the map first: a drive sent from now on activates a fresh
                    // actor. One that raced in before is not lost either: its events
                    // and timers are in the store, and the sweeper re-drives both.
                    if let Some(registry) = self.registry.upgrade() {
                        registry.forget(&state.id, myself.get_id());
                    }
                    myself.stop(Some("idle".to_string()));
                }
            }
        }
        Ok(())
    }
}
