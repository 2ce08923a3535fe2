//! The account actor: one per linked account, and the only path to it. Its mailbox
//! serializes every sync of the account, so there are no locks and no overlapping
//! syncs; a sync requested while one runs sets `again`, and a burst of webhooks becomes
//! one more sync, not a pile of them.
//!
//! The actor holds nothing the store does not: the cursor, the rows and the pending
//! inbox are read from the store at the start of every sync, so the actor can be
//! passivated, killed or restarted at any moment and rebuilt on the next message.
//!
//! Provider I/O runs in a task the actor spawns; the task reports back with
//! [`AccountMessage::SyncFinished`] (or [`AccountMessage::Parked`]). The mailbox stays
//! free to answer status queries mid-sync.
//!
//! Needs-reauth parking: a provider call failing with "login required", or a webhook
//! saying so, parks the account (see [`crate::actors::reauth`]): the sync task reads
//! the pending inbox first and, while parked, stops there unless a login-repaired
//! webhook arrived after the account parked. So a parked account costs
//! one store read per webhook and never calls the provider; its webhooks stay in the
//! inbox and the first sync after the repair (or a relink) consumes them all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::reauth;
use super::registry::Registry;
use super::sync::{run_sync, ProgressSnapshot, SyncError, SyncProgress, SyncReport};
use crate::config::ActorSettings;
use crate::domain::{AccountId, LinkStatus, ProviderKind, SyncGaveUp, SyncOutcome};
use crate::incidents::IncidentKind;
use crate::providers::ErrorClass;
use crate::store::{RetryRecord, StoreError};

/// Why a sync was requested (for logs and status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncReason {
    /// A webhook said data changed.
    Webhook,
    /// The account was just linked.
    Linked,
    /// The actor was activated with pending work (inbox entries or no cursor yet).
    Activation,
    /// An operator asked for it.
    Manual,
    /// The sweeper found the account's retry record due.
    Retry,
    /// The sweeper's polling fallback: no successful sync for `sweeper.poll_interval`.
    Poll,
}

impl SyncReason {
    /// The reason as shown in events and status.
    pub fn name(self) -> &'static str {
        match self {
            SyncReason::Webhook => "webhook",
            SyncReason::Linked => "linked",
            SyncReason::Activation => "activation",
            SyncReason::Manual => "manual",
            SyncReason::Retry => "retry",
            SyncReason::Poll => "poll",
        }
    }
}

/// Messages of the account actor.
pub enum AccountMessage {
    /// Run a sync now, or once more after the running one.
    SyncRequested(SyncReason),
    /// The sync task finished (internal).
    SyncFinished(Result<SyncReport, SyncFailure>),
    /// The sync task found (or made) the account parked as needs-reauth and did not
    /// call the provider (internal).
    Parked(ParkReport),
    /// An operator cleared the account's `failed` mark, or a relink cleared its
    /// needs-reauth mark: retry from attempt zero.
    Resume,
    /// A scheduled sync is due: the backoff after a failure, or the minimum interval
    /// between two syncs, is over (internal). Carries the number of the wait that set
    /// it: timers are not cancelled, so one left over from an earlier wait (cut short by
    /// a resume) must not end a later one early.
    Due(u64),
    /// Periodic check whether the actor has been idle long enough to passivate (internal).
    IdleCheck,
    /// Describe yourself.
    Status(RpcReplyPort<ActorSnapshot>),
}

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

/// What a sync task that stopped at the needs-reauth check reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkReport {
    /// Every inbox entry up to this sequence number has been looked at: only a newer
    /// one can unpark the account.
    pub checked_seq: u64,
    /// Whether this task parked it (as opposed to finding it parked).
    pub newly_parked: bool,
}

/// What the sync task decided after a failure, already written to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPlan {
    /// A retry record is due at `until`, after `delay`.
    Retry {
        /// Consecutive failed attempts, this one included.
        attempt: u32,
        /// How long until the retry.
        delay: Duration,
        /// When it is due.
        until: DateTime<Utc>,
    },
    /// `actors.max_sync_attempts` reached: the account is marked failed.
    GiveUp {
        /// Consecutive failed attempts, this one included.
        attempt: u32,
    },
}

/// A failed sync and what happens next.
#[derive(Debug)]
pub struct SyncFailure {
    /// Why it failed.
    pub error: SyncError,
    /// The retry (or giving up) already recorded in the store.
    pub plan: RetryPlan,
}

/// Reconciles in a row after which the follow-up sync waits a backoff instead of
/// running at once (a provider that rejects every fresh cursor would otherwise make the
/// actor list the whole window in a loop).
const MAX_RECONCILES_IN_A_ROW: u32 = 3;

/// The actor. Read-only configuration lives in the shared [`Registry`].
pub struct AccountActor {
    registry: Arc<Registry>,
}

impl AccountActor {
    /// An actor bound to `registry` (which holds the store, providers and settings).
    pub fn new(registry: Arc<Registry>) -> Self {
        AccountActor { registry }
    }
}

/// The actor's state.
pub struct AccountState {
    id: AccountId,
    provider: ProviderKind,
    mailbox: MailboxCounter,
    events: VecDeque<ActorEvent>,
    sync_reason: Option<SyncReason>,
    sync_started_at: Option<DateTime<Utc>>,
    phase: Phase,
    attempt: u32,
    progress: Arc<SyncProgress>,
    task: Option<JoinHandle<()>>,
    sync_started: Instant,
    last_activity: Instant,
    syncs_run: u64,
    sync_requests: u64,
    active_since: DateTime<Utc>,
    idle_timer: Option<JoinHandle<()>>,
    /// The account is marked failed: no syncs until resumed.
    gave_up: bool,
    /// An operator's resume (or a relink) arrived while the current sync ran: if that
    /// sync then gives up, the resume still wins.
    resumed_during_sync: bool,
    /// The number of the current backoff or scheduled wait (see [`AccountMessage::Due`]).
    wait: u64,
    /// Reconciles (rejected cursors) in a row, without a plain delta sync between.
    reconciles: u32,
    /// Parked until the user logs in again: sync tasks only look for a login repair.
    needs_reauth: bool,
    /// Inbox entries up to here were seen by a needs-reauth check.
    checked_seq: u64,
}

impl AccountState {
    /// Appends to the ring of recent events, folding a repeat of the last one into it.
    fn event(&mut self, kind: &'static str, detail: impl Into<String>) {
        let detail = detail.into();
        let now = Utc::now();
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
}

/// `send_after` whose message is counted in the mailbox when the timer fires.
/// Enters `phase` (a `Backoff` or `Scheduled` wait) and sets the timer that ends it
/// after `delay`. The timer carries the wait's number, so a timer left over from an
/// earlier wait that was cut short cannot end this one (see [`AccountMessage::Due`]).
fn start_wait(
    myself: &ActorRef<AccountMessage>,
    state: &mut AccountState,
    phase: Phase,
    delay: Duration,
) {
    state.phase = phase;
    state.wait += 1;
    let number = state.wait;
    send_after_counted(myself, &state.mailbox, delay, move || {
        AccountMessage::Due(number)
    });
}

/// `delay` from now, as a wall-clock time (for status reports).
fn after(delay: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero())
}

fn send_after_counted(
    myself: &ActorRef<AccountMessage>,
    mailbox: &MailboxCounter,
    delay: Duration,
    message: impl FnOnce() -> AccountMessage + Send + 'static,
) {
    let mailbox = mailbox.clone();
    myself.send_after(delay, move || {
        mailbox_sent(&mailbox);
        message()
    });
}

impl Drop for AccountState {
    /// However the actor ends (stop, panic, kill), its sync task must not outlive it:
    /// a new activation would otherwise sync the same account concurrently.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(timer) = self.idle_timer.take() {
            timer.abort();
        }
    }
}

impl Actor for AccountActor {
    type Msg = AccountMessage;
    type State = AccountState;
    type Arguments = AccountId;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        id: AccountId,
    ) -> Result<Self::State, ActorProcessingErr> {
        self.registry.register_actor(myself.get_id(), &id);
        let store = self.registry.store();
        let account = store
            .get_account(&id)?
            .ok_or_else(|| format!("account {id} does not exist"))?;
        if account.status != LinkStatus::Linked {
            return Err(format!("account {id} is unlinked").into());
        }
        self.registry.ensure_mark_incidents(&account)?;
        let gave_up = account.failed.is_some();
        let checked_seq = account.needs_reauth.as_ref().map_or(0, |p| p.after_seq);
        let needs_reauth = account.needs_reauth.is_some();
        let retry = store.retry_of(&id)?;
        let now = Utc::now();
        let mailbox = self.registry.mailbox_counter(myself.get_id());
        let mut phase = Phase::Idle;
        let mut activated = "idle".to_string();
        match &retry {
            _ if gave_up => activated = "marked failed: waiting for resume".to_string(),
            // Parked: only webhooks newer than the last check can matter (a
            // login repair among them unparks it).
            _ if needs_reauth => {
                let relinked = account.needs_reauth.as_ref().is_some_and(|p| p.relinked);
                activated = "parked: needs reauth".to_string();
                if relinked || has_new_work(store.as_ref(), &id, false, true, checked_seq)? {
                    mailbox_sent(&mailbox);
                    myself.send_message(AccountMessage::SyncRequested(SyncReason::Activation))?;
                }
            }
            // A retry still in the future (from before a restart or passivation) is
            // waited for: syncing at once would defeat the backoff.
            Some(record) if record.due_at > now => {
                let wait = (record.due_at - now).to_std().unwrap_or(Duration::ZERO);
                phase = Phase::Backoff {
                    until: record.due_at,
                };
                activated = format!(
                    "waiting for retry {} due in {} ms",
                    record.attempt,
                    wait.as_millis()
                );
                send_after_counted(&myself, &mailbox, wait, || AccountMessage::Due(0));
            }
            _ => {
                // Work that arrived while passivated, a due retry, or a first sync never
                // done starts now.
                let pending = !store.pending_inbox(&id)?.is_empty();
                if pending || retry.is_some() || account.cursor.is_none() {
                    activated = "pending work: syncing".to_string();
                    mailbox_sent(&mailbox);
                    myself.send_message(AccountMessage::SyncRequested(SyncReason::Activation))?;
                }
            }
        }
        let check_every =
            (self.registry.settings().passivate_after / 2).max(Duration::from_millis(10));
        let idle_mailbox = mailbox.clone();
        let idle_timer = myself.send_interval(check_every, move || {
            mailbox_sent(&idle_mailbox);
            AccountMessage::IdleCheck
        });
        let mut state = AccountState {
            id,
            provider: account.provider,
            mailbox,
            events: VecDeque::with_capacity(EVENT_RING),
            sync_reason: None,
            sync_started_at: None,
            phase,
            attempt: retry.map_or(0, |record| record.attempt),
            progress: Arc::new(SyncProgress::default()),
            task: None,
            sync_started: Instant::now(),
            last_activity: Instant::now(),
            syncs_run: 0,
            sync_requests: 0,
            active_since: Utc::now(),
            idle_timer: Some(idle_timer),
            gave_up,
            resumed_during_sync: false,
            wait: 0,
            reconciles: 0,
            needs_reauth,
            checked_seq,
        };
        state.event("activated", activated);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        mailbox_taken(&state.mailbox);
        match message {
            AccountMessage::SyncRequested(reason) => {
                state.last_activity = Instant::now();
                state.sync_requests += 1;
                state.event("sync_requested", reason.name());
                if state.gave_up {
                    tracing::debug!(account_id = %state.id, ?reason, "sync request ignored: account marked failed");
                    return Ok(());
                }
                match &mut state.phase {
                    Phase::Idle => self.start_sync(&myself, state, reason),
                    // The sweeper's nudge for the retry this very sync is running, or a
                    // poll: the running sync fetches everything there is anyway.
                    Phase::Syncing { .. }
                        if matches!(reason, SyncReason::Retry | SyncReason::Poll) => {}
                    Phase::Syncing { again } => *again = true,
                    // A due retry whose timer was lost or is late, or an operator's
                    // explicit request: run it now.
                    Phase::Backoff { until }
                        if (reason == SyncReason::Retry && *until <= Utc::now())
                            || reason == SyncReason::Manual =>
                    {
                        state.phase = Phase::Idle;
                        self.start_sync(&myself, state, reason);
                    }
                    // A timer is already set; the sync it starts covers this request too.
                    Phase::Backoff { .. } | Phase::Scheduled { .. } => {}
                }
            }
            AccountMessage::SyncFinished(result) => {
                state.last_activity = Instant::now();
                state.task = None;
                state.syncs_run += 1;
                state.sync_reason = None;
                state.sync_started_at = None;
                let again = matches!(state.phase, Phase::Syncing { again: true });
                let took = state.sync_started.elapsed();
                match result {
                    Ok(report) => {
                        state.attempt = 0;
                        self.record_committed(state, &report.outcome, took);
                        state.needs_reauth = false;
                        tracing::info!(account_id = %state.id, outcome = ?report.outcome, "sync committed");
                        state.phase = Phase::Idle;
                        let since_start = state.sync_started.elapsed();
                        let min_interval = self.registry.settings().min_sync_interval;
                        if report.follow_up {
                            state.reconciles += 1;
                        } else {
                            state.reconciles = 0;
                        }
                        if report.follow_up && state.reconciles > MAX_RECONCILES_IN_A_ROW {
                            // The provider keeps rejecting every new cursor: each round
                            // lists the whole window, so further rounds back off like
                            // failures instead of looping.
                            let settings = self.registry.settings();
                            let delay = backoff_delay(
                                settings.sync_retry_initial,
                                settings.sync_retry_max,
                                state.reconciles - MAX_RECONCILES_IN_A_ROW,
                                &mut rand::thread_rng(),
                            );
                            state.event(
                                "backoff",
                                format!(
                                    "cursor rejected after {} reconciles in a row: next in {} ms",
                                    state.reconciles,
                                    delay.as_millis()
                                ),
                            );
                            tracing::warn!(account_id = %state.id, reconciles = state.reconciles, "provider keeps rejecting fresh cursors, backing off");
                            let until = after(delay);
                            start_wait(&myself, state, Phase::Backoff { until }, delay);
                        } else if report.follow_up || (again && since_start >= min_interval) {
                            // The reconcile path's follow-up runs at once: it completes
                            // the same logical sync.
                            self.start_sync(&myself, state, SyncReason::Webhook);
                        } else if again {
                            // A burst: wait out the interval so everything arriving
                            // meanwhile is covered by one sync instead of many.
                            let wait = min_interval - since_start;
                            state.event(
                                "scheduled",
                                format!("burst: next sync in {} ms", wait.as_millis()),
                            );
                            let until = after(wait);
                            start_wait(&myself, state, Phase::Scheduled { until }, wait);
                        }
                    }
                    Err(failure) => {
                        self.record_failed(state, &failure, took);
                        self.enter_backoff(&myself, state, failure);
                        if state.resumed_during_sync {
                            // An operator resumed while this attempt ran (it read the
                            // account before): the resume wins, as if it came a moment
                            // later. No waiting out the backoff, no giving up.
                            if state.gave_up {
                                // Small blocking writes, as elsewhere in this handler; a
                                // failure is logged, not fatal: the resume still syncs,
                                // and its commit clears what is left.
                                let store = self.registry.store();
                                if let Err(error) = store.set_sync_gave_up(&state.id, None) {
                                    tracing::warn!(account_id = %state.id, %error, "could not clear the failed mark after a resume");
                                }
                                if let Err(error) = self
                                    .registry
                                    .resolve_incidents(&state.id, &[IncidentKind::SyncFailed])
                                {
                                    tracing::warn!(account_id = %state.id, %error, "could not resolve the sync_failed incident after a resume");
                                }
                                state.gave_up = false;
                            }
                            // The resume's full attempt budget, not what the failed
                            // attempt (which read the old count) left.
                            state.attempt = 0;
                            state.phase = Phase::Idle;
                            state.event("resumed", "after the failed attempt");
                            self.start_sync(&myself, state, SyncReason::Manual);
                        }
                    }
                }
            }
            AccountMessage::Parked(report) => {
                state.last_activity = Instant::now();
                state.task = None;
                state.syncs_run += 1;
                let again = matches!(state.phase, Phase::Syncing { again: true });
                state.phase = Phase::Idle;
                state.attempt = 0;
                state.needs_reauth = true;
                state.checked_seq = state.checked_seq.max(report.checked_seq);
                if report.newly_parked {
                    tracing::warn!(account_id = %state.id, "account needs reauth, parked");
                }
                // A webhook during the check may be the login repair: look again (a
                // store read, no provider call).
                if again {
                    self.start_sync(&myself, state, SyncReason::Webhook);
                }
            }
            AccountMessage::Resume => {
                state.event("resumed", String::new());
                state.last_activity = Instant::now();
                state.gave_up = false;
                state.needs_reauth = false;
                state.attempt = 0;
                match &mut state.phase {
                    Phase::Idle => self.start_sync(&myself, state, SyncReason::Manual),
                    // The running sync (or parked check) read the account before the
                    // resume or relink: it may still see the mark or use the old token,
                    // so one more follows it, which reads the record as it is now.
                    Phase::Syncing { again } => {
                        *again = true;
                        state.resumed_during_sync = true;
                    }
                    // An operator asked: do not wait out the backoff or the interval
                    // (the timer's `Due` finds the actor no longer waiting and is moot).
                    Phase::Backoff { .. } | Phase::Scheduled { .. } => {
                        state.phase = Phase::Idle;
                        self.start_sync(&myself, state, SyncReason::Manual);
                    }
                }
            }
            AccountMessage::Due(number) => {
                if number != state.wait {
                    // Left over from a wait a resume or manual sync cut short.
                    return Ok(());
                }
                // After a backoff the sync is the retry; after the minimum interval it
                // covers the webhooks that arrived meanwhile.
                let reason = match state.phase {
                    Phase::Backoff { .. } => Some(SyncReason::Retry),
                    Phase::Scheduled { .. } => Some(SyncReason::Webhook),
                    _ => None,
                };
                if let Some(reason) = reason {
                    state.event("due", format!("{} over", state.phase.name()));
                    state.phase = Phase::Idle;
                    self.start_sync(&myself, state, reason);
                }
            }
            AccountMessage::IdleCheck => {
                let idle_for = state.last_activity.elapsed();
                if state.phase == Phase::Idle
                    && idle_for >= self.registry.settings().passivate_after
                {
                    self.passivate(&myself, state)?;
                }
            }
            AccountMessage::Status(reply) => {
                let snapshot = ActorSnapshot {
                    state: if state.needs_reauth {
                        "needs_reauth"
                    } else {
                        state.phase.name()
                    },
                    again: matches!(state.phase, Phase::Syncing { again: true }),
                    progress: matches!(state.phase, Phase::Syncing { .. })
                        .then(|| state.progress.snapshot()),
                    attempt: state.attempt,
                    next_retry_at: match state.phase {
                        Phase::Backoff { until } | Phase::Scheduled { until } => Some(until),
                        _ => None,
                    },
                    syncs_run: state.syncs_run,
                    sync_requests: state.sync_requests,
                    active_since: state.active_since,
                    // This query is still counted until `handle` returns; report the
                    // others waiting behind it.
                    mailbox_depth: state.mailbox.load(Ordering::Relaxed),
                    sync_reason: state.sync_reason,
                    sync_started_at: state.sync_started_at,
                    events: state.events.iter().cloned().collect(),
                };
                // The caller may have timed out and gone; nothing to do then.
                let _ = reply.send(snapshot);
            }
        }
        Ok(())
    }
}

impl AccountActor {
    /// Spawns the sync task. The task reads the account and the pending inbox fresh from
    /// the store, so whatever arrived before it started is covered by it.
    fn start_sync(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
        reason: SyncReason,
    ) {
        if self.registry.take_injected_panic(&state.id) {
            // The test hook of `Registry::inject_panic`: fail like a bug in a handler.
            panic!("injected panic for account {}", state.id);
        }
        if state.gave_up {
            state.phase = Phase::Idle;
            return;
        }
        if self.registry.is_closing() {
            // Shutting down: what this sync would cover stays in the inbox, and the
            // next start's recovery syncs it.
            state.phase = Phase::Idle;
            state.event("sync_skipped", "shutting down");
            return;
        }
        state.phase = Phase::Syncing { again: false };
        state.resumed_during_sync = false;
        state.sync_started = Instant::now();
        state.sync_reason = Some(reason);
        state.sync_started_at = Some(Utc::now());
        state.event("sync_started", reason.name());
        state.progress = Arc::new(SyncProgress::default());
        let registry = self.registry.clone();
        let progress = state.progress.clone();
        let id = state.id.clone();
        let attempt = state.attempt;
        let reply_to = myself.clone();
        let mailbox = state.mailbox.clone();
        let span = tracing::info_span!("sync", account_id = %id, reason = ?reason);
        let slot = self.registry.sync_slot();
        state.task = Some(tokio::spawn(
            async move {
                let _slot = slot;
                let message = match sync_once(&registry, &id, &progress, attempt).await {
                    TaskOutcome::Finished(result) => AccountMessage::SyncFinished(result),
                    TaskOutcome::Parked(report) => AccountMessage::Parked(report),
                };
                // The actor may have stopped meanwhile (unlinked); the result is then moot.
                mailbox_sent(&mailbox);
                let _ = reply_to.send_message(message);
            }
            .instrument(span),
        ));
    }

    /// Metrics and the event ring after a committed sync.
    fn record_committed(&self, state: &mut AccountState, outcome: &SyncOutcome, took: Duration) {
        if let SyncOutcome::Committed {
            added,
            modified,
            removed,
            pages,
            fallback,
            ..
        } = outcome
        {
            self.registry.metrics().sync_committed(
                state.provider.as_str(),
                took,
                *added,
                *modified,
                *removed,
            );
            let path = if *fallback { ", via reconcile" } else { "" };
            state.event(
                "sync_committed",
                format!(
                    "+{added} ~{modified} -{removed} in {pages} pages, {} ms{path}",
                    took.as_millis()
                ),
            );
        }
    }

    /// Metrics and the event ring after a failed sync.
    fn record_failed(&self, state: &mut AccountState, failure: &SyncFailure, took: Duration) {
        let provider = state.provider.as_str();
        let provider_code = match &failure.error {
            SyncError::Provider(error) => Some(error.code().to_string()),
            _ => None,
        };
        let gave_up = matches!(failure.plan, RetryPlan::GiveUp { .. });
        let metrics = self.registry.metrics();
        metrics.sync_failed(provider, took, provider_code.as_deref(), gave_up);
        if let (true, RetryPlan::Retry { delay, .. }) =
            (is_rate_limited(&failure.error), failure.plan)
        {
            metrics.rate_limit_wait(provider, "provider_429", delay);
        }
        let request = failure
            .error
            .request_id()
            .map(|id| format!(" (request {id})"))
            .unwrap_or_default();
        state.event(
            "sync_failed",
            format!(
                "{}{request} after {} ms",
                failure.error.code(),
                took.as_millis()
            ),
        );
    }

    fn enter_backoff(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
        failure: SyncFailure,
    ) {
        let SyncFailure { error, plan } = failure;
        // The failure and the plan were recorded in the store by the sync task; the
        // timer below is the fast path, the sweeper the one that survives restarts.
        match plan {
            RetryPlan::Retry {
                attempt,
                delay,
                until,
            } => {
                state.attempt = attempt;
                tracing::warn!(
                    account_id = %state.id,
                    attempt,
                    code = %error.code(),
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "sync failed"
                );
                state.event(
                    "backoff",
                    format!("attempt {attempt}: retry in {} ms", delay.as_millis()),
                );
                start_wait(myself, state, Phase::Backoff { until }, delay);
            }
            RetryPlan::GiveUp { attempt } => {
                state.attempt = attempt;
                state.gave_up = true;
                state.phase = Phase::Idle;
                state.event("gave_up", format!("after {attempt} attempts"));
                tracing::error!(
                    account_id = %state.id,
                    attempt,
                    code = %error.code(),
                    error = %error,
                    "sync failed too many times, account marked failed"
                );
            }
        }
    }

    /// Leaves the registry, then stops. Anything sent to this actor after the registry
    /// dropped it goes to a new activation; a webhook that reached the store just before
    /// is caught by the pending-inbox check and handed to that new activation.
    fn passivate(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        // Work already waiting is synced, not handed over (unless it is marked failed:
        // then it waits for a resume; or parked: then only webhooks it has not checked).
        let store = self.registry.store().as_ref();
        if has_new_work(
            store,
            &state.id,
            state.gave_up,
            state.needs_reauth,
            state.checked_seq,
        )? {
            self.start_sync(myself, state, SyncReason::Activation);
            return Ok(());
        }
        if !self.registry.forget(&state.id, myself.get_id()) {
            return Ok(());
        }
        // A webhook that reached the store between the check above and `forget` may
        // have been sent to this mailbox, which stopping discards: hand it to a new
        // activation. If the store cannot tell, hand over anyway (an empty sync is
        // harmless; a stranded event is not).
        let pending = has_new_work(
            self.registry.store().as_ref(),
            &state.id,
            state.gave_up,
            state.needs_reauth,
            state.checked_seq,
        )
        .unwrap_or(!state.gave_up);
        tracing::debug!(account_id = %state.id, pending, "passivating idle actor");
        state.event("passivating", String::new());
        myself.stop(Some("passivated".to_string()));
        if pending {
            let registry = self.registry.clone();
            let id = state.id.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(error) = registry.request_sync(&id, SyncReason::Activation) {
                    tracing::warn!(account_id = %id, %error, "could not hand pending work to a new activation");
                }
            });
        }
        Ok(())
    }
}

/// Whether the account has inbox work its actor should look at: none while it is
/// marked failed; only entries newer than the last check while it is parked.
fn has_new_work(
    store: &dyn crate::store::Store,
    id: &AccountId,
    gave_up: bool,
    needs_reauth: bool,
    checked_seq: u64,
) -> Result<bool, StoreError> {
    if gave_up {
        return Ok(false);
    }
    let pending = store.pending_inbox(id)?;
    Ok(if needs_reauth {
        pending.iter().any(|entry| entry.seq > checked_seq)
    } else {
        !pending.is_empty()
    })
}

/// How a sync task ended.
enum TaskOutcome {
    /// It ran the sync (committed or failed).
    Finished(Result<SyncReport, SyncFailure>),
    /// It stopped at the needs-reauth check, or the provider said the login is needed.
    Parked(ParkReport),
}

/// One sync: account and pending inbox read fresh, the needs-reauth check, then
/// [`run_sync`].
async fn sync_once(
    registry: &Arc<Registry>,
    id: &AccountId,
    progress: &SyncProgress,
    attempt: u32,
) -> TaskOutcome {
    loop {
        let prepared = match prepare(registry, id).await {
            Ok(prepared) => prepared,
            Err(error) => return failed(registry, id, error, attempt).await,
        };
        let checked_seq = prepared.consumed.iter().copied().max().unwrap_or(0);
        match reauth::check(registry, &prepared.account, &prepared.entries).await {
            Ok(reauth::Check::Proceed) => {}
            Ok(reauth::Check::Parked { newly_parked }) => {
                return TaskOutcome::Parked(ParkReport {
                    checked_seq,
                    newly_parked,
                })
            }
            Err(error) => return failed(registry, id, SyncError::Store(error), attempt).await,
        }
        let provider = registry.provider(prepared.account.provider);
        let result = run_sync(
            provider.as_ref(),
            registry.store(),
            &prepared.account,
            prepared.consumed,
            registry.sync_params(),
            progress,
        )
        .await;
        let error = match result {
            Ok(report) => {
                reauth::after_commit(registry, id).await;
                return TaskOutcome::Finished(Ok(report));
            }
            Err(error) if reauth::is_login_required(&error) => error,
            Err(error) => return failed(registry, id, error, attempt).await,
        };
        let token = &prepared.account.access_token;
        match reauth::park_after_error(registry, id, &error, checked_seq, token).await {
            Ok(true) => {
                return TaskOutcome::Parked(ParkReport {
                    checked_seq,
                    newly_parked: true,
                })
            }
            // Relinked while this sync ran: the error is about the replaced token, and
            // the new one has not been tried yet. Bounded by the number of relinks.
            Ok(false) => {
                tracing::info!(account_id = %id, "login error for a replaced token, syncing again");
            }
            Err(store_error) => {
                tracing::error!(account_id = %id, error = %store_error, "could not park account");
                return failed(registry, id, error, attempt).await;
            }
        }
    }
}

async fn failed(
    registry: &Arc<Registry>,
    id: &AccountId,
    error: SyncError,
    attempt: u32,
) -> TaskOutcome {
    let plan = record_failure(registry, id, &error, attempt).await;
    TaskOutcome::Finished(Err(SyncFailure { error, plan }))
}

/// Whether the provider refused the sync for sending too many requests: such a retry
/// waits at least `actors.rate_limit_backoff`, whatever the backoff says.
pub fn is_rate_limited(error: &SyncError) -> bool {
    matches!(error.class(), Some(ErrorClass::RateLimited { .. }))
}

/// The retry plan after the `previous_attempts + 1`-th consecutive failure: give up
/// past `max_sync_attempts`, else exponential backoff with full jitter, pushed to at
/// least the rate-limit window when the provider rate-limited us.
pub fn plan_retry(
    settings: &ActorSettings,
    error: &SyncError,
    previous_attempts: u32,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> RetryPlan {
    let attempt = previous_attempts.saturating_add(1);
    if attempt >= settings.max_sync_attempts {
        return RetryPlan::GiveUp { attempt };
    }
    let mut delay = backoff_delay(
        settings.sync_retry_initial,
        settings.sync_retry_max,
        attempt,
        rng,
    );
    if is_rate_limited(error) {
        delay = delay.max(settings.rate_limit_backoff);
    }
    let until = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
    RetryPlan::Retry {
        attempt,
        delay,
        until,
    }
}

/// Records a failed sync: its outcome on the account, and either a retry record or the
/// `failed` mark, made durable so a crash does not forget the retry.
async fn record_failure(
    registry: &Arc<Registry>,
    id: &AccountId,
    error: &SyncError,
    previous_attempts: u32,
) -> RetryPlan {
    let plan = plan_retry(
        registry.settings(),
        error,
        previous_attempts,
        Utc::now(),
        &mut rand::thread_rng(),
    );
    let store = registry.store().clone();
    let incident_registry = registry.clone();
    let failed_id = id.clone();
    let outcome = error.outcome();
    let code = error.code();
    let request_id = error.request_id();
    let reason = error.to_string();
    let recorded = tokio::task::spawn_blocking(move || {
        let now = Utc::now();
        store.record_sync_failed(&failed_id, outcome, now)?;
        match plan {
            RetryPlan::Retry { attempt, until, .. } => store.record_retry(&RetryRecord {
                account_id: failed_id,
                attempt,
                due_at: until,
                code,
                request_id,
            }),
            RetryPlan::GiveUp { attempt } => {
                store.set_sync_gave_up(
                    &failed_id,
                    Some(SyncGaveUp {
                        reason: format!("{code}: {reason}"),
                        attempts: attempt,
                        since: now,
                    }),
                )?;
                incident_registry
                    .open_incident(
                        &failed_id,
                        IncidentKind::SyncFailed,
                        serde_json::json!({
                            "code": code,
                            "request_id": request_id,
                            "attempts": attempt,
                            "message": reason,
                        }),
                    )
                    .map(|_| ())
            }
        }
    })
    .await;
    match recorded {
        Ok(Ok(())) => {
            if let Err(error) = registry.store().durable().await {
                tracing::warn!(account_id = %id, %error, "sync failure record not made durable");
            }
        }
        _ => tracing::error!(account_id = %id, "could not record sync failure"),
    }
    plan
}

/// What a sync starts from: the account and its pending inbox, read fresh.
struct Prepared {
    account: crate::domain::Account,
    entries: Vec<crate::domain::InboxEntry>,
    consumed: Vec<u64>,
}

/// Reads the account, records the start and claims the pending inbox entries.
async fn prepare(registry: &Registry, id: &AccountId) -> Result<Prepared, SyncError> {
    // The store reads and the "started" record run on a blocking thread: sled calls can
    // wait on its global lock, and this task runs on an async worker.
    let store = registry.store().clone();
    let sync_id = id.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let account = store
            .get_account(&sync_id)?
            .ok_or(StoreError::AccountNotFound(sync_id.clone()))?;
        // A parked account's check is not a sync: its status keeps the last real one.
        if account.needs_reauth.is_none() {
            store.record_sync_started(&sync_id, Utc::now())?;
        }
        // Claimed before the first fetch: a repeat arriving from now on is kept as a new
        // event, since this sync may already be reading older data.
        let entries = store.claim_pending_inbox(&sync_id)?;
        let consumed = entries.iter().map(|e| e.seq).collect();
        Ok::<_, StoreError>(Prepared {
            account,
            entries,
            consumed,
        })
    })
    .await
    .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    Ok(prepared)
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(cap, base·2^(n-1))]`,
/// never below 10 ms, so many accounts failing together do not retry in lockstep.
pub fn backoff_delay(base: Duration, cap: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(cap);
    let millis = ceiling.as_millis().max(10) as u64;
    Duration::from_millis(rng.gen_range(10..=millis.max(10)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderError;
    use rand::SeedableRng;

    fn api_error(status: u16, code: &str, class: ErrorClass) -> SyncError {
        SyncError::Provider(ProviderError::Api {
            status,
            error_type: "API_ERROR".to_string(),
            code: code.to_string(),
            message: "boom".to_string(),
            request_id: Some("req-1".to_string()),
            class,
        })
    }

    const RATE_LIMITED: ErrorClass = ErrorClass::RateLimited { retry_after: None };

    fn settings() -> ActorSettings {
        let mut settings = crate::config::Settings::defaults().actors;
        settings.sync_retry_initial = Duration::from_millis(100);
        settings.sync_retry_max = Duration::from_secs(2);
        settings.rate_limit_backoff = Duration::from_secs(60);
        settings.max_sync_attempts = 4;
        settings
    }

    #[test]
    fn a_rate_limit_pushes_the_retry_to_at_least_the_window() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let now = Utc::now();
        for error in [
            api_error(429, "RATE_LIMITED", RATE_LIMITED),
            api_error(400, "SYNC_LIMIT", RATE_LIMITED),
            // A shorter wait the provider asks for does not shorten the window.
            api_error(
                429,
                "RATE_LIMITED",
                ErrorClass::RateLimited {
                    retry_after: Some(Duration::from_secs(1)),
                },
            ),
        ] {
            let RetryPlan::Retry {
                delay,
                until,
                attempt,
            } = plan_retry(&settings(), &error, 0, now, &mut rng)
            else {
                panic!("first failure must be retried");
            };
            assert_eq!(attempt, 1);
            assert!(delay >= Duration::from_secs(60), "{delay:?}");
            assert!(until >= now + chrono::Duration::seconds(60));
        }
        // An ordinary failure stays within the backoff ceiling; so does a permanent
        // one, which is still retried with the ordinary backoff for now.
        for error in [
            api_error(500, "SERVER_ERROR", ErrorClass::Transient),
            api_error(400, "BAD_REQUEST", ErrorClass::Permanent),
        ] {
            let RetryPlan::Retry { delay, .. } = plan_retry(&settings(), &error, 0, now, &mut rng)
            else {
                panic!("first failure must be retried");
            };
            assert!(delay <= Duration::from_millis(100), "{delay:?}");
        }
    }

    #[test]
    fn the_attempt_limit_gives_up() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let error = api_error(500, "SERVER_ERROR", ErrorClass::Transient);
        let now = Utc::now();
        assert!(matches!(
            plan_retry(&settings(), &error, 2, now, &mut rng),
            RetryPlan::Retry { attempt: 3, .. }
        ));
        assert_eq!(
            plan_retry(&settings(), &error, 3, now, &mut rng),
            RetryPlan::GiveUp { attempt: 4 }
        );
    }

    #[test]
    fn backoff_grows_then_caps_and_stays_within_jitter_bounds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 1..40 {
            let ceiling = base.saturating_mul(1u32 << (attempt - 1).min(30)).min(cap);
            for _ in 0..50 {
                let d = backoff_delay(base, cap, attempt, &mut rng);
                assert!(
                    d <= ceiling.max(Duration::from_millis(10)),
                    "attempt {attempt}: {d:?}"
                );
                assert!(d >= Duration::from_millis(10));
            }
        }
        // Full jitter, not "ceiling plus noise": draws cover the whole [10 ms, ceiling].
        let ceiling = Duration::from_millis(1_600);
        let draws: Vec<Duration> = (0..500)
            .map(|_| backoff_delay(base, cap, 5, &mut rng))
            .collect();
        let lowest = draws.iter().min().copied().unwrap_or_default();
        let highest = draws.iter().max().copied().unwrap_or_default();
        assert!(lowest < ceiling / 10, "{lowest:?}");
        assert!(
            highest > ceiling * 9 / 10 && highest <= ceiling,
            "{highest:?}"
        );
        // Late attempts reach near the cap at least sometimes.
        let max_seen = (0..200)
            .map(|_| backoff_delay(base, cap, 20, &mut rng))
            .max()
            .unwrap_or_default();
        assert!(max_seen > Duration::from_secs(4), "{max_seen:?}");
    }
}
