//! Ops commands on an operation (cancel, retry), applied in one commit by the
//! operation's actor, serialized with its steps: a terminal operation is final, a
//! `step_failed` or `failed` one is re-driven from attempt one, a waiting one polls now.

use super::OpeningParams;
use crate::clock::SharedClock;
use crate::domain::incidents::IncidentKind;
use crate::domain::operations::{Operation, OperationId, OperationState, StatusSource, StepState};
use crate::store::{AsyncStore, OperationCommit, OperationIncident, StoreError};

/// What ops can ask of an operation.
#[derive(Clone, Debug)]
pub enum OpsCommand {
    /// Stop it for good: nothing reported later changes it.
    Cancel {
        /// Who asked.
        by: String,
        /// Why, when they said.
        reason: Option<String>,
    },
    /// Re-drive it: a `step_failed` operation runs its step again from attempt one, a
    /// `failed` one repeats its create call (same request id), a waiting one polls now.
    Retry {
        /// Who asked.
        by: String,
    },
}

/// Why an ops command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsCommandError {
    /// No such operation.
    #[error("operation {0} not found")]
    NotFound(OperationId),
    /// The operation's state does not allow it (a terminal operation is final).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies an ops command in one commit. Runs in the operation's actor, serialized
/// with its steps.
pub async fn run_command(
    store: &AsyncStore,
    params: &OpeningParams,
    clock: &SharedClock,
    id: &OperationId,
    command: OpsCommand,
) -> Result<Operation, OpsCommandError> {
    let read_id = id.clone();
    let Some(mut op) = store.run(move |s| s.get_operation(&read_id)).await? else {
        return Err(OpsCommandError::NotFound(id.clone()));
    };
    let now = clock.now();
    let mut incidents = Vec::new();
    let notify = params.alerts_on;
    if op.state.is_terminal() {
        return Err(OpsCommandError::Conflict(format!(
            "operation {id} is already {}: a terminal operation is final",
            op.state
        )));
    }
    match command {
        OpsCommand::Cancel { by, reason } => {
            let note = match &reason {
                Some(reason) => format!("cancelled by {by}: {reason}"),
                None => format!("cancelled by {by}"),
            };
            op.transition(
                OperationState::Cancelled,
                now,
                StatusSource::Ops,
                None,
                note,
            );
            for kind in [
                IncidentKind::AccountOpeningWebhookNotReceived,
                IncidentKind::OperationStepFailed,
                IncidentKind::OperationFailed,
            ] {
                incidents.push(OperationIncident::Resolve { kind, notify });
            }
        }
        OpsCommand::Retry { by } => match op.state {
            OperationState::StepFailed => {
                op.card.state = StepState::Pending;
                op.card.attempts = 0;
                op.card.retry_at = None;
                op.finished_at = None;
                op.state = OperationState::InProgress;
                op.record(
                    now,
                    StatusSource::Ops,
                    None,
                    format!("step re-driven by {by}"),
                );
                incidents.push(OperationIncident::Resolve {
                    kind: IncidentKind::OperationStepFailed,
                    notify,
                });
            }
            OperationState::Failed => {
                op.create_attempts = 0;
                op.create_retry_at = None;
                op.finished_at = None;
                op.state = OperationState::InProgress;
                op.record(
                    now,
                    StatusSource::Ops,
                    None,
                    format!("create re-driven by {by}"),
                );
                incidents.push(OperationIncident::Resolve {
                    kind: IncidentKind::OperationFailed,
                    notify,
                });
            }
            _ => {
                // Waiting: poll (or retry the create, or the step) now.
                if op.tracking_id.is_some() && op.awaiting_bank() {
                    op.next_poll_at = Some(now);
                }
                op.create_retry_at = op.create_retry_at.map(|_| now);
                op.card.retry_at = op.card.retry_at.map(|_| now);
                op.record(now, StatusSource::Ops, None, format!("re-driven by {by}"));
            }
        },
    }
    let commit = OperationCommit {
        operation: op,
        consumed: Vec::new(),
        incidents,
    };
    let receipt = store.run(move |s| s.commit_operation(&commit)).await?;
    Ok(receipt.operation)
}
