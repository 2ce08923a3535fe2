//! The account's state machine: what each message does to [`AccountState`]. Every
//! transition happens here, one message at a time; slow work (provider calls, store
//! scans) runs in the sync task, and timers come back as messages, so no handler blocks.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{ActorProcessingErr, ActorRef};
use tracing::Instrument;

use super::retry::{is_rate_limited, RetryPlan, SyncFailure};
use super::snapshot::{mailbox_sent, MailboxCounter, Phase};
use super::task::{sync_once, ParkReport, TaskOutcome};
use super::{AccountActor, AccountMessage, AccountState, SyncReason};
use crate::actors::incidents::resolve_incidents;
use crate::backoff::backoff_delay;
use crate::clock::after;
use crate::domain::incidents::IncidentKind;
use crate::domain::{Account, AccountId, GaveUpCause, SyncOutcome};
use crate::store::{RetryRecord, Store, StoreError};
use crate::sync::{SyncError, SyncProgress, SyncReport};

/// Reconciles in a row after which the follow-up sync waits a backoff instead of
/// running at once (a provider that rejects every fresh cursor would otherwise make the
/// actor list the whole window in a loop).
const MAX_RECONCILES_IN_A_ROW: u32 = 3;

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

/// `send_after` whose message is counted in the mailbox when the timer fires.
pub(super) fn send_after_counted(
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
        state.sync_started_at = Some(state.clock.now());
        state.event("sync_started", reason.name());
        state.progress = Arc::new(SyncProgress::default());
        let ctx = self.ctx.clone();
        let progress = state.progress.clone();
        let id = state.id.clone();
        let attempt = state.attempt;
        let reply_to = myself.clone();
        let mailbox = state.mailbox.clone();
        let span = tracing::info_span!("sync", reason = reason.name());
        let slot = self.registry.sync_slot();
        state.task = Some(tokio::spawn(
            async move {
                let _slot = slot;
                let message = match sync_once(&ctx, &id, &progress, attempt).await {
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
            self.ctx.metrics.sync_committed(
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
        let metrics = &self.ctx.metrics;
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
            RetryPlan::GiveUp { attempt, cause } => {
                state.attempt = attempt;
                state.gave_up = true;
                state.phase = Phase::Idle;
                let (event, message) = match cause {
                    GaveUpCause::AttemptsExhausted => (
                        format!("after {attempt} attempts"),
                        "sync failed too many times, account marked failed",
                    ),
                    GaveUpCause::Permanent => (
                        format!("permanent error {}", error.code()),
                        "provider rejected the request itself, account marked failed",
                    ),
                    GaveUpCause::AccessRevoked => (
                        format!("access revoked ({})", error.code()),
                        "provider no longer accepts the access token, account needs a relink",
                    ),
                };
                state.event("gave_up", event);
                tracing::error!(
                    account_id = %state.id,
                    attempt,
                    code = %error.code(),
                    error = %error,
                    "{message}"
                );
            }
        }
    }

    /// Leaves the registry, then stops. Anything sent to this actor after the registry
    /// dropped it goes to a new activation; a webhook that reached the store just before
    /// is caught by the pending-inbox check and handed to that new activation.
    async fn passivate(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        // Work already waiting is synced, not handed over (unless it is marked failed:
        // then it waits for a resume; or parked: then only webhooks it has not checked).
        if self.new_work(state).await? {
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
        let pending = self.new_work(state).await.unwrap_or(!state.gave_up);
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

/// The sequence numbers of the account's pending inbox entries.
pub(super) fn pending_seqs(store: &dyn Store, id: &AccountId) -> Result<Vec<u64>, StoreError> {
    Ok(store.pending_inbox(id)?.iter().map(|e| e.seq).collect())
}

/// Whether inbox entries `pending` (their sequence numbers) are work the actor should
/// look at: none while it is marked failed; only entries newer than the last check
/// while it is parked.
fn has_new_work(pending: &[u64], gave_up: bool, needs_reauth: bool, checked_seq: u64) -> bool {
    if gave_up {
        return false;
    }
    if needs_reauth {
        pending.iter().any(|seq| *seq > checked_seq)
    } else {
        !pending.is_empty()
    }
}

impl AccountActor {
    /// [`has_new_work`] over the inbox as stored now (no store read while marked failed).
    async fn new_work(&self, state: &AccountState) -> Result<bool, StoreError> {
        if state.gave_up {
            return Ok(false);
        }
        let id = state.id.clone();
        let pending = self
            .ctx
            .blocking(move |ctx| pending_seqs(ctx.store.as_ref(), &id))
            .await?;
        Ok(has_new_work(
            &pending,
            state.gave_up,
            state.needs_reauth,
            state.checked_seq,
        ))
    }
}

impl AccountActor {
    /// A sync request: start one, queue one more behind the running one, or leave it to
    /// the wait already set (whose sync covers it).
    pub(super) fn on_sync_requested(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
        reason: SyncReason,
    ) {
        state.last_activity = Instant::now();
        state.sync_requests += 1;
        state.event("sync_requested", reason.name());
        if state.gave_up {
            tracing::debug!(account_id = %state.id, reason = reason.name(), "sync request ignored: account marked failed");
            return;
        }
        let now = state.clock.now();
        match &mut state.phase {
            Phase::Idle => self.start_sync(myself, state, reason),
            // The sweeper's nudge for the retry this very sync is running, or a
            // poll: the running sync fetches everything there is anyway.
            Phase::Syncing { .. } if matches!(reason, SyncReason::Retry | SyncReason::Poll) => {}
            Phase::Syncing { again } => *again = true,
            // A due retry whose timer was lost or is late, or an operator's
            // explicit request: run it now.
            Phase::Backoff { until }
                if (reason == SyncReason::Retry && *until <= now)
                    || reason == SyncReason::Manual =>
            {
                state.phase = Phase::Idle;
                self.start_sync(myself, state, reason);
            }
            // A timer is already set; the sync it starts covers this request too.
            Phase::Backoff { .. } | Phase::Scheduled { .. } => {}
        }
    }

    /// Bookkeeping common to every end of a sync task; returns whether another sync was
    /// asked for meanwhile, and how long the task ran.
    fn task_ended(state: &mut AccountState) -> (bool, Duration) {
        state.last_activity = Instant::now();
        state.task = None;
        state.syncs_run += 1;
        state.sync_reason = None;
        state.sync_started_at = None;
        let again = matches!(state.phase, Phase::Syncing { again: true });
        (again, state.sync_started.elapsed())
    }

    /// A committed sync: the reconcile path's follow-up runs at once, a burst waits out
    /// the minimum interval, a provider rejecting every fresh cursor backs off.
    pub(super) fn on_committed(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
        report: SyncReport,
    ) {
        let (again, took) = Self::task_ended(state);
        state.attempt = 0;
        self.record_committed(state, &report.outcome, took);
        state.needs_reauth = false;
        log_committed(&state.id, &report.outcome);
        state.phase = Phase::Idle;
        let since_start = state.sync_started.elapsed();
        let min_interval = self.ctx.settings.min_sync_interval;
        if report.follow_up {
            state.reconciles += 1;
        } else {
            state.reconciles = 0;
        }
        if report.follow_up && state.reconciles > MAX_RECONCILES_IN_A_ROW {
            // The provider keeps rejecting every new cursor: each round lists the whole
            // window, so further rounds back off like failures instead of looping.
            let settings = &self.ctx.settings;
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
            let until = after(state.clock.now(), delay);
            start_wait(myself, state, Phase::Backoff { until }, delay);
        } else if report.follow_up || (again && since_start >= min_interval) {
            // The reconcile path's follow-up runs at once: it completes the same
            // logical sync.
            self.start_sync(myself, state, SyncReason::Webhook);
        } else if again {
            // A burst: wait out the interval so everything arriving meanwhile is
            // covered by one sync instead of many.
            let wait = min_interval - since_start;
            state.event(
                "scheduled",
                format!("burst: next sync in {} ms", wait.as_millis()),
            );
            let until = after(state.clock.now(), wait);
            start_wait(myself, state, Phase::Scheduled { until }, wait);
        }
    }

    /// A failed sync: back off or give up as the task recorded, unless a resume arrived
    /// during the attempt, which then wins.
    pub(super) async fn on_failed(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
        failure: SyncFailure,
    ) {
        let (_, took) = Self::task_ended(state);
        self.record_failed(state, &failure, took);
        self.enter_backoff(myself, state, failure);
        if !state.resumed_during_sync {
            return;
        }
        // An operator resumed while this attempt ran (it read the account before): the
        // resume wins, as if it came a moment later. No waiting out the backoff, no
        // giving up.
        if state.gave_up {
            // Two small writes off the runtime threads; a failure is logged, not fatal:
            // the resume still syncs, and its commit clears what is left.
            let id = state.id.clone();
            let written = self
                .ctx
                .blocking(move |ctx| {
                    Ok((
                        ctx.store.set_sync_gave_up(&id, None).err(),
                        resolve_incidents(
                            ctx,
                            &id,
                            &[IncidentKind::SyncFailed, IncidentKind::AccessRevoked],
                        )
                        .err(),
                    ))
                })
                .await;
            let (mark, incident) = match written {
                Ok(errors) => errors,
                Err(error) => (Some(error), None),
            };
            if let Some(error) = mark {
                tracing::warn!(account_id = %state.id, %error, "could not clear the failed mark after a resume");
            }
            if let Some(error) = incident {
                tracing::warn!(account_id = %state.id, %error, "could not resolve the failed mark's incident after a resume");
            }
            state.gave_up = false;
        }
        // The resume's full attempt budget, not what the failed attempt (which read the
        // old count) left.
        state.attempt = 0;
        state.phase = Phase::Idle;
        state.event("resumed", "after the failed attempt");
        self.start_sync(myself, state, SyncReason::Manual);
    }

    /// The sync task stopped at the needs-reauth check (or parked the account).
    pub(super) fn on_parked(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
        report: ParkReport,
    ) {
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
        // A webhook during the check may be the login repair: look again (a store
        // read, no provider call).
        if again {
            self.start_sync(myself, state, SyncReason::Webhook);
        }
    }

    /// An operator's resume or a relink: a fresh attempt budget, a sync at once.
    pub(super) fn on_resume(&self, myself: &ActorRef<AccountMessage>, state: &mut AccountState) {
        state.event("resumed", String::new());
        state.last_activity = Instant::now();
        state.gave_up = false;
        state.needs_reauth = false;
        state.attempt = 0;
        match &mut state.phase {
            Phase::Idle => self.start_sync(myself, state, SyncReason::Manual),
            // The running sync (or parked check) read the account before the resume or
            // relink: it may still see the mark or use the old token, so one more
            // follows it, which reads the record as it is now.
            Phase::Syncing { again } => {
                *again = true;
                state.resumed_during_sync = true;
            }
            // An operator asked: do not wait out the backoff or the interval (the
            // timer's `Due` finds the actor no longer waiting and is moot).
            Phase::Backoff { .. } | Phase::Scheduled { .. } => {
                state.phase = Phase::Idle;
                self.start_sync(myself, state, SyncReason::Manual);
            }
        }
    }

    /// The timer of wait `number` fired.
    pub(super) fn on_due(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
        number: u64,
    ) {
        if number != state.wait {
            // Left over from a wait a resume or manual sync cut short.
            return;
        }
        // After a backoff the sync is the retry; after the minimum interval it covers
        // the webhooks that arrived meanwhile.
        let reason = match state.phase {
            Phase::Backoff { .. } => SyncReason::Retry,
            Phase::Scheduled { .. } => SyncReason::Webhook,
            _ => return,
        };
        state.event("due", format!("{} over", state.phase.name()));
        state.phase = Phase::Idle;
        self.start_sync(myself, state, reason);
    }

    /// Passivates an actor idle for `actors.passivate_after`.
    pub(super) async fn on_idle_check(
        &self,
        myself: &ActorRef<AccountMessage>,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        let idle_for = state.last_activity.elapsed();
        if state.phase == Phase::Idle && idle_for >= self.ctx.settings.passivate_after {
            self.passivate(myself, state).await?;
        }
        Ok(())
    }
}

/// Where a new activation starts, and what it notes about it: waiting for a resume
/// (marked failed), parked (a sync only if a newer webhook or a relink may unpark it),
/// waiting out a retry still in the future (syncing at once would defeat the backoff),
/// or syncing at once when work is pending.
pub(super) fn first_phase(
    myself: &ActorRef<AccountMessage>,
    pending: &[u64],
    account: &Account,
    retry: Option<&RetryRecord>,
    mailbox: &MailboxCounter,
    now: DateTime<Utc>,
) -> Result<(Phase, String), ActorProcessingErr> {
    let gave_up = account.failed.is_some();
    let checked_seq = account.needs_reauth.as_ref().map_or(0, |p| p.after_seq);
    let mut phase = Phase::Idle;
    let mut activated = "idle".to_string();
    match retry {
        _ if gave_up => activated = "marked failed: waiting for resume".to_string(),
        // Parked: only webhooks newer than the last check can matter (a
        // login repair among them unparks it).
        _ if account.needs_reauth.is_some() => {
            let relinked = account.needs_reauth.as_ref().is_some_and(|p| p.relinked);
            activated = "parked: needs reauth".to_string();
            if relinked || has_new_work(pending, false, true, checked_seq) {
                mailbox_sent(mailbox);
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
            send_after_counted(myself, mailbox, wait, || AccountMessage::Due(0));
        }
        _ => {
            // Work that arrived while passivated, a due retry, or a first sync never
            // done starts now.
            if !pending.is_empty() || retry.is_some() || account.cursor.is_none() {
                activated = "pending work: syncing".to_string();
                mailbox_sent(mailbox);
                myself.send_message(AccountMessage::SyncRequested(SyncReason::Activation))?;
            }
        }
    }
    Ok((phase, activated))
}

/// The "sync committed" line: the counts as plain fields, the request id when there was
/// one.
fn log_committed(id: &AccountId, outcome: &SyncOutcome) {
    let SyncOutcome::Committed {
        added,
        modified,
        removed,
        pages,
        fallback,
        request_id,
    } = outcome
    else {
        return;
    };
    tracing::info!(
        account_id = %id,
        added,
        modified,
        removed,
        pages,
        fallback,
        request_id = request_id.as_deref().unwrap_or("-"),
        "sync committed"
    );
}
