//! What one step of an account-opening operation means: read the operation and its
//! pending bank statuses, apply them, make at most the provider calls that are due
//! (create, legacy open, status poll, the virtual card), decide escalation, and write it
//! all back in one store transaction ([`OperationStore::commit_operation`]).
//!
//! The operation's actor runs one step at a time, so nothing here locks. Every call to
//! the bank carries an id generated when the operation was created (the request id for
//! the create and the legacy call, the step id for the card), so a step replayed after a
//! crash between the call and the commit repeats the call with the same key and the
//! bank answers as before: one opening, one card.
//!
//! [`OperationStore::commit_operation`]: crate::store::OperationStore::commit_operation

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tracing::{info, warn};

use crate::clock::{after, SharedClock};
use crate::domain::incidents::IncidentKind;
use crate::domain::operations::{
    Applied, BankStatus, OpeningPath, Operation, OperationId, OperationState, ReportedStatus,
    StatusSource, StepState,
};
use crate::providers::bank::{BankApi, CardRequest, OpeningRequest};
use crate::providers::{ErrorClass, ProviderError};
use crate::store::{AsyncStore, OperationCommit, OperationIncident, StoreError};

/// The tunables of the account-opening flow (from `[operations]`).
#[derive(Clone, Debug)]
pub struct OpeningParams {
    /// Status poll interval while the bank has not decided.
    pub poll_interval: Duration,
    /// Poll interval after escalation.
    pub slow_poll_interval: Duration,
    /// Failures of a step before the operation is `step_failed`.
    pub max_step_attempts: u32,
    /// First retry delay of a failed call.
    pub retry_initial: Duration,
    /// Largest retry delay of a failed call.
    pub retry_max: Duration,
    /// Base URL of the dashboard, for deep links.
    pub public_url: String,
    /// Whether incidents enqueue an alert (outbound alerts are configured).
    pub alerts_on: bool,
}

impl OpeningParams {
    /// The dashboard's page of an operation.
    pub fn link(&self, id: &OperationId) -> String {
        format!(
            "{}/dashboard#operation={id}",
            self.public_url.trim_end_matches('/')
        )
    }

    /// The delay before retry `attempt` (1 = after the first failure): doubling from
    /// `retry_initial`, capped at `retry_max`, deterministic (an operation's retries are
    /// not a thundering herd: each has its own creation time).
    fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.retry_initial
            .checked_mul(factor)
            .unwrap_or(self.retry_max)
            .min(self.retry_max)
    }
}

/// The provider calls a step made, for metrics and the actor's snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepCalls {
    /// Create calls (async path).
    pub creates: u32,
    /// Legacy synchronous calls.
    pub legacy: u32,
    /// Status polls.
    pub polls: u32,
    /// Card calls.
    pub cards: u32,
    /// Calls that failed.
    pub failures: u32,
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// The operation as stored after the step (`None`: it does not exist).
    pub operation: Option<Operation>,
    /// Whether anything was written.
    pub committed: bool,
    /// Inbox events applied.
    pub applied: usize,
    /// Events kept for its tracking id that the commit adopted: run another step.
    pub adopted: u64,
    /// Provider calls made.
    pub calls: StepCalls,
    /// Whether this step escalated the operation.
    pub escalated: bool,
    /// Incidents the commit opened or resolved (each may have enqueued an alert).
    pub incidents: usize,
}

/// Why a step failed (nothing was written; the actor runs it again later).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The store failed, or the record changed under the step (a version conflict).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs one step of operation `id`. `force_poll` polls now even if the next poll is not
/// due (an ops retry of a waiting operation).
pub async fn run_step(
    store: &AsyncStore,
    bank: &Arc<dyn BankApi>,
    params: &OpeningParams,
    clock: &SharedClock,
    id: &OperationId,
) -> Result<StepReport, StepError> {
    let read_id = id.clone();
    let (operation, events) = store
        .run(move |s| {
            let operation = s.get_operation(&read_id)?;
            let events = match &operation {
                Some(_) => s.pending_operation_events(&read_id)?,
                None => Vec::new(),
            };
            Ok((operation, events))
        })
        .await?;
    let Some(read) = operation else {
        return Ok(StepReport {
            operation: None,
            committed: false,
            applied: 0,
            adopted: 0,
            calls: StepCalls::default(),
            escalated: false,
            incidents: 0,
        });
    };
    let mut step = Step {
        op: read.clone(),
        incidents: Vec::new(),
        calls: StepCalls::default(),
        params,
        bank: bank.as_ref(),
        escalated: false,
    };
    let consumed: Vec<u64> = events.iter().map(|e| e.seq).collect();
    for event in &events {
        // A status can reach an operation before its create call's answer was recorded
        // (a crash between the bank's answer and the commit, the webhook routed by the
        // request id): the event names the tracking id, so record it from there.
        if step.op.tracking_id.is_none() && !event.tracking_id.is_empty() {
            step.op.tracking_id = Some(event.tracking_id.clone());
        }
        step.apply(&event.report, event.source, event.received_at);
    }
    step.advance(clock.now()).await;
    let Step {
        op,
        incidents,
        calls,
        escalated,
        ..
    } = step;
    if op == read && consumed.is_empty() && incidents.is_empty() {
        return Ok(StepReport {
            operation: Some(op),
            committed: false,
            applied: 0,
            adopted: 0,
            calls,
            escalated,
            incidents: 0,
        });
    }
    let applied = consumed.len();
    let incident_changes = incidents.len();
    let commit = OperationCommit {
        operation: op,
        consumed,
        incidents,
    };
    let receipt = store.run(move |s| s.commit_operation(&commit)).await?;
    Ok(StepReport {
        operation: Some(receipt.operation),
        committed: true,
        applied,
        adopted: receipt.adopted,
        calls,
        escalated,
        incidents: incident_changes,
    })
}

/// One step in the making: the record being changed and what goes with its commit.
struct Step<'a> {
    op: Operation,
    incidents: Vec<OperationIncident>,
    calls: StepCalls,
    params: &'a OpeningParams,
    bank: &'a dyn BankApi,
    escalated: bool,
}

impl Step<'_> {
    /// Applies a reported status; resolves the escalation incident when the bank has
    /// now decided. A poll repeating the known status is not history.
    fn apply(&mut self, report: &ReportedStatus, source: StatusSource, at: DateTime<Utc>) {
        if source == StatusSource::Poll && self.op.bank_status == Some(report.status) {
            return;
        }
        let was_awaiting = self.op.awaiting_bank();
        let applied = self.op.apply_status(report, source, at);
        if applied == Applied::Changed && was_awaiting && !self.op.awaiting_bank() {
            if self.op.escalated_at.is_some() {
                self.incidents.push(OperationIncident::Resolve {
                    kind: IncidentKind::AccountOpeningWebhookNotReceived,
                    notify: self.params.alerts_on,
                });
            }
            if report.status == BankStatus::Completed {
                info!(operation_id = %self.op.id, source = source_name(source), "account opened");
            }
        }
    }

    /// Makes the calls that are due at `now`, then escalates if it is time.
    async fn advance(&mut self, now: DateTime<Utc>) {
        if !matches!(self.op.state, OperationState::InProgress) {
            return;
        }
        if self.op.awaiting_bank() {
            match self.op.path {
                OpeningPath::Async if self.op.tracking_id.is_none() => {
                    if is_due(self.op.create_retry_at, now) {
                        self.create(now).await;
                    }
                }
                OpeningPath::Legacy => {
                    if is_due(self.op.create_retry_at, now) {
                        self.legacy(now).await;
                    }
                }
                OpeningPath::Async => match self.op.next_poll_at {
                    Some(at) if at <= now => self.poll(now).await,
                    Some(_) => {}
                    // Its tracking id came with a status, not from the create's answer.
                    None => self.op.next_poll_at = Some(after(now, self.params.poll_interval)),
                },
            }
        }
        self.escalate_if_overdue(now);
        if self.op.state == OperationState::InProgress
            && self.op.card.state == StepState::Pending
            && is_due(self.op.card.retry_at, now)
        {
            self.issue_card(now).await;
        }
    }

    fn opening_request(&self) -> OpeningRequest {
        let d = &self.op.details;
        OpeningRequest {
            customer_id: d.customer_id.clone(),
            market: d.market.clone(),
            segment: d.segment.as_str().to_string(),
            legal_name: d.legal_name.clone(),
            email: d.email.clone(),
            registration_number: d.registration_number.clone(),
        }
    }

    async fn create(&mut self, now: DateTime<Utc>) {
        self.calls.creates += 1;
        let request = self.opening_request();
        match self.bank.open_account(&self.op.request_id, &request).await {
            Ok(accepted) => {
                self.op.tracking_id = Some(accepted.tracking_id.clone());
                self.op.create_retry_at = None;
                self.op.create_attempts = 0;
                self.op.next_poll_at = Some(after(now, self.params.poll_interval));
                self.op.record(
                    now,
                    StatusSource::Create,
                    None,
                    format!("submitted: tracking id {}", accepted.tracking_id),
                );
                let report = ReportedStatus {
                    status: accepted.status,
                    iban: None,
                    bic: None,
                    reason: None,
                };
                self.apply(&report, StatusSource::Create, now);
            }
            Err(error) => self.call_failed("create", &error, now),
        }
    }

    async fn legacy(&mut self, now: DateTime<Utc>) {
        self.calls.legacy += 1;
        let request = self.opening_request();
        match self
            .bank
            .open_account_sync(&self.op.request_id, &request)
            .await
        {
            Ok(answer) => {
                self.op.create_retry_at = None;
                self.op.create_attempts = 0;
                if self.op.tracking_id.is_none() && !answer.tracking_id.is_empty() {
                    self.op.tracking_id = Some(answer.tracking_id.clone());
                }
                self.apply(&answer.into(), StatusSource::SyncApi, now);
            }
            Err(error) => self.call_failed("legacy open", &error, now),
        }
    }

    async fn poll(&mut self, now: DateTime<Utc>) {
        let Some(tracking_id) = self.op.tracking_id.clone() else {
            return;
        };
        self.calls.polls += 1;
        self.op.polls = self.op.polls.saturating_add(1);
        let interval = if self.op.escalated_at.is_some() {
            self.params.slow_poll_interval
        } else {
            self.params.poll_interval
        };
        self.op.next_poll_at = Some(after(now, interval));
        match self.bank.opening_status(&tracking_id).await {
            Ok(answer) => {
                self.apply(&answer.into(), StatusSource::Poll, now);
            }
            Err(error) => {
                // A failed poll is retried at the next poll: the webhook may still come.
                self.calls.failures += 1;
                warn!(operation_id = %self.op.id, code = error.code(), "status poll failed");
                self.op.last_error = Some(format!("status poll: {error}"));
            }
        }
    }

    /// A failed create or legacy call: retried with backoff, unless the bank refused
    /// the request itself, which ends the operation as `failed` with an incident.
    fn call_failed(&mut self, what: &str, error: &ProviderError, now: DateTime<Utc>) {
        self.calls.failures += 1;
        self.op.create_attempts = self.op.create_attempts.saturating_add(1);
        self.op.last_error = Some(format!("{what}: {error}"));
        warn!(operation_id = %self.op.id, code = error.code(), attempt = self.op.create_attempts, "{what} call failed");
        match error.class() {
            ErrorClass::Permanent | ErrorClass::AccessRevoked | ErrorClass::LoginRequired => {
                self.op.create_retry_at = None;
                self.op.transition(
                    OperationState::Failed,
                    now,
                    StatusSource::Acctor,
                    None,
                    format!("{what} refused: {error}"),
                );
                self.incidents.push(OperationIncident::Open {
                    kind: IncidentKind::OperationFailed,
                    details: json!({
                        "operation_id": self.op.id,
                        "customer_id": self.op.details.customer_id,
                        "code": error.code(),
                        "message": error.to_string(),
                        "link": self.params.link(&self.op.id),
                    }),
                    notify: self.params.alerts_on,
                });
            }
            class => {
                let mut delay = self.params.retry_delay(self.op.create_attempts);
                if let ErrorClass::RateLimited {
                    retry_after: Some(wait),
                } = class
                {
                    delay = delay.max(wait);
                }
                self.op.create_retry_at = Some(after(now, delay));
                self.op.record(
                    now,
                    StatusSource::Acctor,
                    None,
                    format!(
                        "{what} failed, retry in {}",
                        humantime::format_duration(delay)
                    ),
                );
            }
        }
    }

    async fn issue_card(&mut self, now: DateTime<Utc>) {
        let Some(iban) = self.op.iban.clone() else {
            return;
        };
        self.calls.cards += 1;
        let request = CardRequest {
            customer_id: self.op.details.customer_id.clone(),
            iban,
        };
        match self
            .bank
            .issue_virtual_card(&self.op.card.step_id, &request)
            .await
        {
            Ok(card) => {
                let card_state = &mut self.op.card;
                card_state.state = StepState::Done;
                card_state.retry_at = None;
                card_state.card_id = Some(card.card_id.clone());
                card_state.last4 = Some(card.last4);
                self.op.transition(
                    OperationState::Completed,
                    now,
                    StatusSource::Acctor,
                    None,
                    format!("virtual card {} issued", card.card_id),
                );
            }
            Err(error) => {
                self.calls.failures += 1;
                let attempts = self.op.card.attempts.saturating_add(1);
                self.op.card.attempts = attempts;
                self.op.card.last_error = Some(error.to_string());
                warn!(operation_id = %self.op.id, code = error.code(), attempts, "virtual card step failed");
                let permanent = matches!(error.class(), ErrorClass::Permanent);
                if permanent || attempts >= self.params.max_step_attempts {
                    self.op.card.state = StepState::Failed;
                    self.op.card.retry_at = None;
                    self.op.transition(
                        OperationState::StepFailed,
                        now,
                        StatusSource::Acctor,
                        None,
                        format!("virtual card failed {attempts} times: {error}"),
                    );
                    self.incidents.push(OperationIncident::Open {
                        kind: IncidentKind::OperationStepFailed,
                        details: json!({
                            "operation_id": self.op.id,
                            "customer_id": self.op.details.customer_id,
                            "step": "virtual_card",
                            "step_id": self.op.card.step_id,
                            "attempts": attempts,
                            "code": error.code(),
                            "message": error.to_string(),
                            "link": self.params.link(&self.op.id),
                        }),
                        notify: self.params.alerts_on,
                    });
                } else {
                    let mut delay = self.params.retry_delay(attempts);
                    if let ErrorClass::RateLimited {
                        retry_after: Some(wait),
                    } = error.class()
                    {
                        delay = delay.max(wait);
                    }
                    self.op.card.retry_at = Some(after(now, delay));
                    self.op.record(
                        now,
                        StatusSource::Acctor,
                        None,
                        format!(
                            "virtual card failed (attempt {attempts}), retry in {}",
                            humantime::format_duration(delay)
                        ),
                    );
                }
            }
        }
    }

    /// Escalates once when the bank has not decided by the deadline: the incident with a
    /// deep link, its alert, and polling at the slower pace from now on.
    fn escalate_if_overdue(&mut self, now: DateTime<Utc>) {
        let Some(deadline) = self.op.deadline_at() else {
            return;
        };
        if now < deadline {
            return;
        }
        self.escalated = true;
        self.op.escalated_at = Some(now);
        if self.op.path == OpeningPath::Async && self.op.tracking_id.is_some() {
            self.op.next_poll_at = Some(after(now, self.params.slow_poll_interval));
        }
        let waited = now - self.op.created_at;
        self.op.record(
            now,
            StatusSource::Acctor,
            None,
            format!(
                "escalated: no bank decision after {}h",
                waited.num_minutes() / 60
            ),
        );
        warn!(operation_id = %self.op.id, "account opening escalated: no webhook received");
        self.incidents.push(OperationIncident::Open {
            kind: IncidentKind::AccountOpeningWebhookNotReceived,
            details: json!({
                "operation_id": self.op.id,
                "customer_id": self.op.details.customer_id,
                "market": self.op.details.market,
                "segment": self.op.details.segment,
                "tracking_id": self.op.tracking_id,
                "bank_status": self.op.bank_status,
                "created_at": self.op.created_at,
                "polls": self.op.polls,
                "link": self.params.link(&self.op.id),
            }),
            notify: self.params.alerts_on,
        });
    }
}

fn is_due(retry_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    retry_at.is_none_or(|t| t <= now)
}

fn source_name(source: StatusSource) -> &'static str {
    match source {
        StatusSource::Webhook => "webhook",
        StatusSource::Poll => "poll",
        StatusSource::Sandbox => "sandbox",
        StatusSource::SyncApi => "sync_api",
        StatusSource::Create => "create",
        StatusSource::Acctor => "acctor",
        StatusSource::Ops => "ops",
    }
}

#[path = "bank_commands.rs"]
mod commands;
pub use commands::{run_command, OpsCommand, OpsCommandError};

#[cfg(test)]
#[path = "bank_tests.rs"]
mod tests;
