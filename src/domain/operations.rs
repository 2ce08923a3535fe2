//! Operations: things acctor asks a provider to do that finish later. The first kind is
//! an account opening at a bank: the request returns a tracking id at once, the outcome
//! (an IBAN and BIC, or a rejection) arrives by webhook minutes or hours later, or is
//! found by polling, and a completed opening runs its next step (a virtual card).
//!
//! This module is the operation's record and its state machine, with no I/O: what a
//! reported bank status does to an operation ([`Operation::apply_status`]), when it
//! wants its next wake-up ([`Operation::wake_at`]) and when it is overdue
//! ([`Operation::deadline_at`]). The actor (`actors::operation`) and the drive step
//! (`sync::bank`) decide which provider call to make; the store persists the record with
//! its history and keeps its due-index entries in step with it.
//!
//! Terminal states are final: once an operation is `completed`, `rejected`, `cancelled`
//! or `failed`, nothing a webhook or a poll reports changes it again (the report is
//! recorded in the history as ignored and acknowledged).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The canonical id of an operation: `op_`, 12 hex digits of its creation time in
/// milliseconds, 20 random hex digits. Ids sort by creation time, so "newest first" is
/// reverse id order without another index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub String);

impl OperationId {
    /// A fresh id for an operation created at `at`.
    pub fn generate(at: DateTime<Utc>) -> OperationId {
        let millis = at.timestamp_millis().clamp(0, 0xffff_ffff_ffff);
        let random = uuid::Uuid::new_v4().simple().to_string();
        OperationId(format!("op_{millis:012x}{}", &random[..20]))
    }

    /// Whether `s` has the shape of an operation id.
    pub fn looks_canonical(s: &str) -> bool {
        s.len() == 35
            && s.starts_with("op_")
            && s[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who the account is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// A registered company.
    Company,
    /// A self-employed person.
    Freelancer,
}

impl Segment {
    /// Every segment.
    pub const ALL: [Segment; 2] = [Segment::Company, Segment::Freelancer];

    /// The snake_case name used in the API, flags and store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::Company => "company",
            Segment::Freelancer => "freelancer",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Segment> {
        Segment::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of the bank's APIs an opening goes through, chosen from the market's flag when
/// the operation is created and kept for its whole life (flipping the flag changes only
/// operations created afterwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpeningPath {
    /// The asynchronous API: a tracking id now, the outcome by webhook or poll.
    Async,
    /// The legacy synchronous API: one blocking call returns the outcome.
    Legacy,
}

/// The statuses the bank reports for an opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BankStatus {
    /// Received by the bank.
    Initiated,
    /// Being processed (checks running).
    InProgress,
    /// Opened: carries the IBAN and BIC.
    Completed,
    /// Refused: carries a reason.
    Rejected,
}

impl BankStatus {
    /// Every status.
    pub const ALL: [BankStatus; 4] = [
        BankStatus::Initiated,
        BankStatus::InProgress,
        BankStatus::Completed,
        BankStatus::Rejected,
    ];

    /// The bank's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            BankStatus::Initiated => "INITIATED",
            BankStatus::InProgress => "IN_PROGRESS",
            BankStatus::Completed => "COMPLETED",
            BankStatus::Rejected => "REJECTED",
        }
    }

    /// Parses the bank's name.
    pub fn parse(s: &str) -> Option<BankStatus> {
        BankStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the bank has decided (completed or rejected).
    pub fn is_terminal(self) -> bool {
        matches!(self, BankStatus::Completed | BankStatus::Rejected)
    }

    /// Order of progress, so a late `INITIATED` after `IN_PROGRESS` is not a step back.
    fn rank(self) -> u8 {
        match self {
            BankStatus::Initiated => 0,
            BankStatus::InProgress => 1,
            BankStatus::Completed | BankStatus::Rejected => 2,
        }
    }
}

impl fmt::Display for BankStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Waiting for the bank's outcome, or running its next step.
    InProgress,
    /// The account is open and the next step is done.
    Completed,
    /// The bank refused the opening.
    Rejected,
    /// Cancelled by ops; nothing reported later changes it.
    Cancelled,
    /// The account is open but the next step failed `operations.max_step_attempts`
    /// times: an incident is open and ops can re-drive it (`retry`).
    StepFailed,
    /// The bank refused the request itself (a permanent error, e.g. invalid data):
    /// the same call would get the same answer. Ops can re-drive it.
    Failed,
}

impl OperationState {
    /// Every state.
    pub const ALL: [OperationState; 6] = [
        OperationState::InProgress,
        OperationState::Completed,
        OperationState::Rejected,
        OperationState::Cancelled,
        OperationState::StepFailed,
        OperationState::Failed,
    ];

    /// The snake_case name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::InProgress => "in_progress",
            OperationState::Completed => "completed",
            OperationState::Rejected => "rejected",
            OperationState::Cancelled => "cancelled",
            OperationState::StepFailed => "step_failed",
            OperationState::Failed => "failed",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<OperationState> {
        OperationState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Final: nothing reported later changes it (`step_failed` and `failed` are not:
    /// ops can re-drive them).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OperationState::Completed | OperationState::Rejected | OperationState::Cancelled
        )
    }

    /// Counts as the customer's opening in progress (a second create is refused).
    pub fn is_open(self) -> bool {
        !self.is_terminal()
    }
}

impl fmt::Display for OperationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a reported status (or a change) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusSource {
    /// The bank's webhook.
    Webhook,
    /// acctor's poll of the bank's status API.
    Poll,
    /// A simulated webhook published through `/v1/sandbox/...` (same pipeline).
    Sandbox,
    /// The bank's legacy synchronous API.
    SyncApi,
    /// The create call's answer.
    Create,
    /// acctor itself (the next step, escalation, creation).
    Acctor,
    /// An operator through the API (cancel, retry).
    Ops,
}

/// One entry of an operation's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When it happened (acctor's clock).
    pub at: DateTime<Utc>,
    /// Where it came from.
    pub source: StatusSource,
    /// The bank status reported, when this is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BankStatus>,
    /// The operation's state after it.
    pub state: OperationState,
    /// What happened, for a human: "created", "ignored: already completed", ...
    pub note: String,
}

/// The state of the next step (issuing the virtual card).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not due yet (the account is not open).
    Waiting,
    /// Due: runs on the next drive (or at `retry_at` after a failure).
    Pending,
    /// Done: the card is issued.
    Done,
    /// Failed `max_step_attempts` times; re-driven by ops.
    Failed,
}

/// The next step of an opening: a virtual card issued at the bank's card API. Its id is
/// generated with the operation and is the call's idempotency key, so a replay after a
/// crash can never issue a second card.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CardStep {
    /// Pre-generated idempotency key of the card call.
    pub step_id: String,
    /// Where it is.
    pub state: StepState,
    /// Failed attempts since the last success or ops retry.
    pub attempts: u32,
    /// When the next attempt is due after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The issued card's id at the bank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_id: Option<String>,
    /// The issued card's last four digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last4: Option<String>,
}

/// What the customer asked to open.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpeningDetails {
    /// The customer's id in the caller's system.
    pub customer_id: String,
    /// ISO 3166-1 alpha-2 country of the account (`NL`, `BE`, ...).
    pub market: String,
    /// Company or freelancer.
    pub segment: Segment,
    /// The account holder's legal name.
    pub legal_name: String,
    /// Contact email, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Chamber of commerce (or equivalent) number, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_number: Option<String>,
}

/// An account-opening operation as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Canonical id.
    pub id: OperationId,
    /// What is being opened, for whom.
    pub details: OpeningDetails,
    /// Async or legacy, fixed at creation from the market's flag.
    pub path: OpeningPath,
    /// Pre-generated idempotency key of the create call (also the dedup key's half).
    pub request_id: String,
    /// The bank's tracking id, once the create call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    /// Where it is.
    pub state: OperationState,
    /// The last status the bank reported that moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_status: Option<BankStatus>,
    /// The opened account's IBAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    /// The opened account's BIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bic: Option<String>,
    /// Why the bank rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_reason: Option<String>,
    /// The next step.
    pub card: CardStep,
    /// Failed create (or legacy) calls since the last success or ops retry.
    pub create_attempts: u32,
    /// When the next create attempt is due after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_retry_at: Option<DateTime<Utc>>,
    /// The last failed provider call, for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next status poll is due (async path, waiting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_poll_at: Option<DateTime<Utc>>,
    /// Status polls made.
    pub polls: u32,
    /// When it escalates if still without a bank decision.
    pub escalate_at: DateTime<Utc>,
    /// When it escalated (once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it reached a terminal state (or `step_failed`/`failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Every change, oldest first.
    pub history: Vec<Transition>,
    /// Optimistic-locking version: the store refuses a commit built from an older read.
    pub version: u64,
}

/// What applying a reported status did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The operation moved (state, bank status or both).
    Changed,
    /// Nothing changed; the reason is in the history.
    Ignored(String),
}

/// A status the bank reported (by webhook, poll, sandbox or the sync API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedStatus {
    /// The status.
    pub status: BankStatus,
    /// The IBAN, with `COMPLETED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    /// The BIC, with `COMPLETED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bic: Option<String>,
    /// The reason, with `REJECTED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Operation {
    /// A new operation's anchor: `in_progress`, no tracking id, IBAN or BIC yet, its
    /// request id and step id generated now, due to be driven at once.
    pub fn new(
        details: OpeningDetails,
        path: OpeningPath,
        at: DateTime<Utc>,
        escalate_after: chrono::Duration,
    ) -> Operation {
        let id = OperationId::generate(at);
        Operation {
            id,
            details,
            path,
            request_id: format!("req_{}", uuid::Uuid::new_v4().simple()),
            tracking_id: None,
            state: OperationState::InProgress,
            bank_status: None,
            iban: None,
            bic: None,
            reject_reason: None,
            card: CardStep {
                step_id: format!("step_{}", uuid::Uuid::new_v4().simple()),
                state: StepState::Waiting,
                attempts: 0,
                retry_at: None,
                last_error: None,
                card_id: None,
                last4: None,
            },
            create_attempts: 0,
            create_retry_at: None,
            last_error: None,
            next_poll_at: None,
            polls: 0,
            escalate_at: at + escalate_after,
            escalated_at: None,
            created_at: at,
            updated_at: at,
            finished_at: None,
            history: vec![Transition {
                at,
                source: StatusSource::Acctor,
                status: None,
                state: OperationState::InProgress,
                note: format!(
                    "created ({} path)",
                    match path {
                        OpeningPath::Async => "async",
                        OpeningPath::Legacy => "legacy",
                    }
                ),
            }],
            version: 0,
        }
    }

    /// Appends a history entry and stamps `updated_at`.
    pub fn record(
        &mut self,
        at: DateTime<Utc>,
        source: StatusSource,
        status: Option<BankStatus>,
        note: impl Into<String>,
    ) {
        self.updated_at = self.updated_at.max(at);
        self.history.push(Transition {
            at,
            source,
            status,
            state: self.state,
            note: note.into(),
        });
    }

    /// Moves to `state` (stamping `finished_at` for an end state) and records why.
    pub fn transition(
        &mut self,
        state: OperationState,
        at: DateTime<Utc>,
        source: StatusSource,
        status: Option<BankStatus>,
        note: impl Into<String>,
    ) {
        self.state = state;
        if state != OperationState::InProgress {
            self.finished_at = Some(at);
        }
        if state.is_terminal() {
            self.next_poll_at = None;
            self.create_retry_at = None;
            self.card.retry_at = None;
        }
        self.record(at, source, status, note);
    }

    /// Applies a status the bank reported. The rules:
    /// - a terminal operation (or one whose bank status is already terminal) changes
    ///   no more: a repeat or a late status is ignored (and recorded as such);
    /// - a status older than the one known (`INITIATED` after `IN_PROGRESS`) is ignored;
    /// - `COMPLETED` stores the IBAN and BIC and makes the card step due;
    /// - `REJECTED` ends the operation as `rejected` with its reason.
    pub fn apply_status(
        &mut self,
        report: &ReportedStatus,
        source: StatusSource,
        at: DateTime<Utc>,
    ) -> Applied {
        let status = report.status;
        let ignored = if self.state.is_terminal() {
            Some(format!("ignored: the operation is already {}", self.state))
        } else if let Some(known) = self.bank_status.filter(|s| s.is_terminal()) {
            Some(format!("ignored: the bank already reported {known}"))
        } else if self
            .bank_status
            .is_some_and(|known| known.rank() > status.rank())
        {
            Some(format!(
                "ignored: older than {}",
                self.bank_status.map_or("", |s| s.as_str())
            ))
        } else if self.bank_status == Some(status) {
            Some("ignored: repeat".to_string())
        } else {
            None
        };
        if let Some(note) = ignored {
            self.record(at, source, Some(status), note.clone());
            return Applied::Ignored(note);
        }
        self.bank_status = Some(status);
        match status {
            BankStatus::Initiated | BankStatus::InProgress => {
                self.record(at, source, Some(status), "bank status");
            }
            BankStatus::Completed => {
                self.iban = report.iban.clone();
                self.bic = report.bic.clone();
                self.next_poll_at = None;
                if self.card.state == StepState::Waiting {
                    self.card.state = StepState::Pending;
                }
                self.record(at, source, Some(status), "account opened");
            }
            BankStatus::Rejected => {
                self.reject_reason = report.reason.clone();
                let note = match &report.reason {
                    Some(reason) => format!("rejected: {reason}"),
                    None => "rejected".to_string(),
                };
                self.transition(OperationState::Rejected, at, source, Some(status), note);
            }
        }
        Applied::Changed
    }

    /// Whether the bank has yet to decide (the operation polls and may escalate).
    pub fn awaiting_bank(&self) -> bool {
        !self.state.is_terminal() && !self.bank_status.is_some_and(BankStatus::is_terminal)
    }

    /// When it next wants its actor woken (the "retry due" part of the due index): a
    /// create to (re)try, a card step to (re)try, or a poll; `None` when nothing is
    /// scheduled (terminal, or failed until ops re-drive it).
    pub fn wake_at(&self) -> Option<DateTime<Utc>> {
        if self.state.is_terminal()
            || matches!(
                self.state,
                OperationState::StepFailed | OperationState::Failed
            )
        {
            return None;
        }
        if self.awaiting_bank() {
            let created = self.path == OpeningPath::Legacy || self.tracking_id.is_some();
            if !created {
                // The create call has not answered yet: due now, or at its retry.
                return Some(self.create_retry_at.unwrap_or(self.created_at));
            }
            if self.path == OpeningPath::Legacy {
                return self.create_retry_at.or(Some(self.created_at));
            }
            return self.next_poll_at;
        }
        match self.card.state {
            StepState::Pending => Some(self.card.retry_at.unwrap_or(self.updated_at)),
            _ => None,
        }
    }

    /// When it is overdue (the "running too long" part of the due index): the
    /// escalation time while the bank has not decided and it has not escalated yet.
    pub fn deadline_at(&self) -> Option<DateTime<Utc>> {
        (self.awaiting_bank()
            && self.escalated_at.is_none()
            && matches!(self.state, OperationState::InProgress))
        .then_some(self.escalate_at)
    }

    /// When it failed, while it waits for ops (the "failed" part of the due index).
    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        matches!(
            self.state,
            OperationState::StepFailed | OperationState::Failed
        )
        .then(|| self.finished_at.unwrap_or(self.updated_at))
    }
}

/// A bank status waiting in an operation's inbox (or kept for a tracking id no
/// operation has yet), until the operation's actor applies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationEvent {
    /// Monotonic sequence number assigned by the store.
    pub seq: u64,
    /// The bank's event id.
    pub event_id: String,
    /// The bank's tracking id.
    pub tracking_id: String,
    /// Our request id the bank echoed.
    pub request_id: String,
    /// What was reported.
    pub report: ReportedStatus,
    /// Webhook or sandbox.
    pub source: StatusSource,
    /// When acctor received it.
    pub received_at: DateTime<Utc>,
}

/// Which operations to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct OperationQuery {
    /// Only this state.
    pub state: Option<OperationState>,
    /// Only this market.
    pub market: Option<String>,
    /// Only this customer.
    pub customer_id: Option<String>,
    /// Only operations created at or before this time (an age filter: "older than").
    pub created_before: Option<DateTime<Utc>>,
    /// Only operations created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Continue after (older than) this id.
    pub after: Option<OperationId>,
    /// Most returned.
    pub limit: usize,
}

impl OperationQuery {
    /// Whether `op` passes the filters (paging aside).
    pub fn matches(&self, op: &Operation) -> bool {
        self.state.is_none_or(|s| s == op.state)
            && self.market.as_ref().is_none_or(|m| *m == op.details.market)
            && self
                .customer_id
                .as_ref()
                .is_none_or(|c| *c == op.details.customer_id)
            && self.created_before.is_none_or(|t| op.created_at <= t)
            && self.created_after.is_none_or(|t| op.created_at >= t)
    }
}

#[cfg(test)]
#[path = "operations_tests.rs"]
mod tests;
