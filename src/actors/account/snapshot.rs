//! What a live account actor shows about itself: its phase, the snapshot the status
//! and debug APIs read, the ring of recent events, and the mailbox counter (ractor does
//! not expose its queue length, so the actor counts its own messages).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{AccountState, SyncReason};
use crate::sync::ProgressSnapshot;

/// Where the account's state machine is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing running.
    Idle,
    /// A sync task runs; `again` means one more sync follows it.
    Syncing {
        /// Run another sync after this one.
        again: bool,
    },
    /// The last sync failed; the next attempt is due at `until`.
    Backoff {
        /// When the retry is due.
        until: DateTime<Utc>,
    },
    /// More work arrived during the last sync; the next one starts at `until`, once
    /// the minimum interval between syncs has passed, covering everything until then.
    Scheduled {
        /// When the next sync starts.
        until: DateTime<Utc>,
    },
}

impl Phase {
    /// The phase's name as reported by the API.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Syncing { .. } => "syncing",
            Phase::Backoff { .. } => "backoff",
            Phase::Scheduled { .. } => "scheduled",
        }
    }
}

/// What a live actor reports about itself.
#[derive(Clone, Debug, Serialize)]
pub struct ActorSnapshot {
    /// `idle`, `syncing` or `backoff`.
    pub state: &'static str,
    /// Whether another sync is queued behind the running one.
    pub again: bool,
    /// Progress of the running sync.
    pub progress: Option<ProgressSnapshot>,
    /// Consecutive failed attempts.
    pub attempt: u32,
    /// When the next sync is due (in backoff or scheduled).
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Syncs run by this activation.
    pub syncs_run: u64,
    /// Sync requests received by this activation (webhooks coalesce into fewer syncs).
    pub sync_requests: u64,
    /// When this activation started.
    pub active_since: DateTime<Utc>,
    /// Messages in this actor's mailbox not yet handled, including the status query
    /// being answered (see [`MailboxCounter`]).
    pub mailbox_depth: u64,
    /// Why the running sync started.
    pub sync_reason: Option<SyncReason>,
    /// When the running sync started.
    pub sync_started_at: Option<DateTime<Utc>>,
    /// The last [`EVENT_RING`] things this activation did, oldest first.
    pub events: Vec<ActorEvent>,
}

/// How many recent events a live actor keeps.
pub const EVENT_RING: usize = 32;

/// Something an account actor did, kept in its ring of recent events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActorEvent {
    /// When it happened (for coalesced events: the latest occurrence).
    pub at: DateTime<Utc>,
    /// `activated`, `sync_requested`, `sync_started`, `sync_committed`, `sync_failed`,
    /// `backoff`, `scheduled`, `gave_up`, `resumed`, `due`, `passivating`.
    pub kind: &'static str,
    /// Details (reason, counts, error code; never a secret).
    pub detail: String,
    /// How many identical consecutive events this entry stands for (a burst of
    /// webhook nudges is one entry, not 32).
    pub count: u32,
}

/// The in-flight message count of one activation. ractor does not expose its queue
/// length, so every sender that goes through the registry or the actor itself (sync
/// requests, resumes, status queries, the actor's own timers and its sync task's
/// report) adds one before sending, and `handle` subtracts one per message. A message
/// sent to the raw `ActorRef` by anything else is not counted (the decrement saturates).
pub type MailboxCounter = Arc<AtomicU64>;

/// Counts one message on its way into `counter`'s mailbox.
pub fn mailbox_sent(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Takes one message off `counter` (a send that failed, or a handled message).
pub fn mailbox_taken(counter: &AtomicU64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

impl AccountState {
    /// Appends to the ring of recent events, folding a repeat of the last one into it.
    pub(super) fn event(&mut self, kind: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        let now = self.clock.now();
        if let Some(last) = self.events.back_mut() {
            if last.kind == kind && last.detail == detail {
                last.count = last.count.saturating_add(1);
                last.at = now;
                return;
            }
        }
        if self.events.len() == EVENT_RING {
            self.events.pop_front();
        }
        self.events.push_back(ActorEvent {
            at: now,
            kind,
            detail,
            count: 1,
        });
    }

    /// The observable state, as the status query answers it.
    pub(super) fn snapshot(&self) -> ActorSnapshot {
        ActorSnapshot {
            state: if self.needs_reauth {
                "needs_reauth"
            } else {
                self.phase.name()
            },
            again: matches!(self.phase, Phase::Syncing { again: true }),
            progress: matches!(self.phase, Phase::Syncing { .. }).then(|| self.progress.snapshot()),
            attempt: self.attempt,
            next_retry_at: match self.phase {
                Phase::Backoff { until } | Phase::Scheduled { until } => Some(until),
                _ => None,
            },
            syncs_run: self.syncs_run,
            sync_requests: self.sync_requests,
            active_since: self.active_since,
            // This query is still counted until `handle` returns; report the
            // others waiting behind it.
            mailbox_depth: self.mailbox.load(Ordering::Relaxed),
            sync_reason: self.sync_reason,
            sync_started_at: self.sync_started_at,
            events: self.events.iter().cloned().collect(),
        }
    }
}
