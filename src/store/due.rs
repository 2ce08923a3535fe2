//! The records of the due-time index: what an entry is ([`DueEntry`]), what it is for
//! ([`DueKind`]), and the typed views the retry and polling methods return.
//!
//! One index serves every "do this at that time" need (retries, polls, the
//! outbox; operation timers next), so each feature does not grow its own sparse index
//! with its own maintenance and migration code. A new use is a new [`DueKind`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::AccountId;

/// What an entry of the due-time index is for. Each kind defines its subject and its
/// payload; adding a use of the index is adding a variant here (and to [`DueKind::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DueKind {
    /// A failed sync's retry. Subject: the account id; payload: its [`RetryRecord`];
    /// time: when the retry is due.
    Retry = 1,
    /// An account's polling entry. Subject: the account id; no payload. Its time is the
    /// poll anchor (see [`PollEntry::anchor`]), not a due time: the polling interval is
    /// the reader's, who reads this kind with `now - interval`.
    Poll = 2,
    /// An undelivered outbox message. Subject: the message id
    /// ([`DueKind::outbox_subject`]); no payload (the record is in the outbox); time: its
    /// next attempt.
    Outbox = 3,
    /// An operation's next wake-up (the sweeper's "retry due" index): a create or card
    /// step to retry, or a status poll. Subject: the operation id; no payload; time:
    /// [`Operation::wake_at`](crate::domain::operations::Operation::wake_at).
    OperationWake = 4,
    /// An operation's escalation deadline (the "running too long" index). Subject: the
    /// operation id; no payload; time:
    /// [`Operation::deadline_at`](crate::domain::operations::Operation::deadline_at).
    OperationDeadline = 5,
    /// An operation waiting for ops after a failure (the "failed" index). Subject: the
    /// operation id; no payload; time: when it failed.
    OperationFailed = 6,
}

impl DueKind {
    /// Every kind, in tag order.
    pub const ALL: [DueKind; 6] = [
        DueKind::Retry,
        DueKind::Poll,
        DueKind::Outbox,
        DueKind::OperationWake,
        DueKind::OperationDeadline,
        DueKind::OperationFailed,
    ];

    /// The kind's stable one-byte tag (it is part of stored keys: never reuse one).
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// The kind of a stored tag; `None` for a tag this version does not know.
    pub fn from_tag(tag: u8) -> Option<DueKind> {
        DueKind::ALL.into_iter().find(|kind| kind.tag() == tag)
    }

    /// The subject of an outbox message's entry: its id, zero-padded to 20 digits so
    /// that subjects sort like ids and messages due at the same millisecond go oldest
    /// first.
    pub fn outbox_subject(message_id: u64) -> String {
        format!("{message_id:020}")
    }

    /// The message id of an [`DueKind::Outbox`] subject.
    pub fn outbox_id(subject: &str) -> Option<u64> {
        subject.parse().ok()
    }
}

/// One entry of the due-time index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueEntry {
    /// What it is for.
    pub kind: DueKind,
    /// Whom it is about (an account id, an outbox message id...): at most one entry per
    /// (kind, subject).
    pub subject: String,
    /// When it is due, kept to the millisecond (times before the epoch count as the
    /// epoch).
    pub due_at: DateTime<Utc>,
    /// What the kind keeps with it (opaque to the index; may be empty).
    pub payload: Vec<u8>,
}

impl DueEntry {
    /// `InvalidState` unless `next` (if any) is about the same kind and subject: what
    /// [`DueIndex::reschedule_due`](super::DueIndex::reschedule_due) accepts.
    pub(crate) fn check_rescheduled_as(
        &self,
        next: Option<&DueEntry>,
    ) -> Result<(), super::StoreError> {
        match next {
            Some(next) if next.kind != self.kind || next.subject != self.subject => {
                Err(super::StoreError::InvalidState(format!(
                    "a due entry of {:?} {} cannot be rescheduled as one of {:?} {}",
                    self.kind, self.subject, next.kind, next.subject
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A failed sync's pending retry, kept in the store so a restart or a passivation does
/// not forget it: the sweeper finds due ones through the due-time index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRecord {
    /// The account to re-sync.
    pub account_id: AccountId,
    /// Consecutive failed attempts so far (1 after the first failure).
    pub attempt: u32,
    /// When the retry is due.
    pub due_at: DateTime<Utc>,
    /// The last failure's code (provider error code or a short internal code).
    pub code: String,
    /// The provider's request id of the last failure, when there was one.
    pub request_id: Option<String>,
}

/// A linked account's entry in the polling index, the sparse index the sweeper's
/// polling fallback reads instead of every account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollEntry {
    /// The account.
    pub account_id: AccountId,
    /// The latest of: its last successful sync, its link, the last time the sweeper asked
    /// it to poll. A poll is due once this is older than the polling interval.
    pub anchor: DateTime<Utc>,
}
