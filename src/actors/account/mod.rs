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
//!
//! The actor is split by concern: [`machine`] (what each message does), [`task`] (the
//! sync task), [`retry`] (backoff and giving up), [`snapshot`] (what it shows).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::context::ActorContext;
use super::incidents::ensure_mark_incidents;
use super::registry::Registry;
use crate::clock::SharedClock;
use crate::domain::{AccountId, LinkStatus, ProviderKind};
use crate::sync::{SyncProgress, SyncReport};

mod machine;
pub mod retry;
pub mod snapshot;
mod task;

pub use retry::{plan_retry, RetryPlan, SyncFailure};
pub use snapshot::{
    mailbox_sent, mailbox_taken, ActorEvent, ActorSnapshot, MailboxCounter, Phase, EVENT_RING,
};
pub use task::ParkReport;

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
    /// A local change was queued for the provider (a Stripe push).
    Push,
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
            SyncReason::Push => "push",
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

/// The actor. Its dependencies are the shared [`ActorContext`]; the [`Registry`] that
/// activated it is asked only registry things (its mailbox counter, its sync slot,
/// leaving the map on passivation).
pub struct AccountActor {
    ctx: Arc<ActorContext>,
    registry: Arc<Registry>,
}

impl AccountActor {
    /// An actor reading its dependencies from `ctx`, activated by `registry`.
    pub fn new(ctx: Arc<ActorContext>, registry: Arc<Registry>) -> Self {
        AccountActor { ctx, registry }
    }
}

/// The actor's state.
pub struct AccountState {
    id: AccountId,
    /// Every handler runs in it: log lines say which account (id and first alias)
    /// whoever sent the message.
    span: tracing::Span,
    clock: SharedClock,
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
        // Everything activation reads, in one hop off the runtime threads.
        let load = id.clone();
        let loaded = self
            .ctx
            .blocking(move |ctx| {
                let Some(account) = ctx.store.get_account(&load)? else {
                    return Ok(None);
                };
                if account.status != LinkStatus::Linked {
                    return Ok(Some((account, None, Vec::new())));
                }
                ensure_mark_incidents(ctx, &account)?;
                let retry = ctx.store.retry_of(&load)?;
                let pending = machine::pending_seqs(ctx.store.as_ref(), &load)?;
                Ok(Some((account, retry, pending)))
            })
            .await?;
        let (account, retry, pending) =
            loaded.ok_or_else(|| format!("account {id} does not exist"))?;
        if account.status != LinkStatus::Linked {
            return Err(format!("account {id} is unlinked").into());
        }
        let gave_up = account.failed.is_some();
        let checked_seq = account.needs_reauth.as_ref().map_or(0, |p| p.after_seq);
        let needs_reauth = account.needs_reauth.is_some();
        let clock = self.ctx.clock.clone();
        let now = clock.now();
        let mailbox = self.registry.mailbox_counter(myself.get_id());
        let (phase, activated) =
            machine::first_phase(&myself, &pending, &account, retry.as_ref(), &mailbox, now)?;
        let check_every = (self.ctx.settings.passivate_after / 2).max(Duration::from_millis(10));
        let idle_mailbox = mailbox.clone();
        let idle_timer = myself.send_interval(check_every, move || {
            mailbox_sent(&idle_mailbox);
            AccountMessage::IdleCheck
        });
        let span = tracing::info_span!(
            parent: None,
            "account",
            account_id = %id,
            alias = tracing::field::Empty
        );
        if let Some(alias) = account.aliases.first() {
            span.record("alias", alias.as_str());
        }
        let mut state = AccountState {
            id,
            span,
            clock,
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
            active_since: now,
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
        let span = state.span.clone();
        self.dispatch(myself, message, state).instrument(span).await
    }
}

impl AccountActor {
    /// One message, handled in the account's span.
    async fn dispatch(
        &self,
        myself: ActorRef<AccountMessage>,
        message: AccountMessage,
        state: &mut AccountState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AccountMessage::SyncRequested(reason) => self.on_sync_requested(&myself, state, reason),
            AccountMessage::SyncFinished(Ok(report)) => self.on_committed(&myself, state, report),
            AccountMessage::SyncFinished(Err(failure)) => {
                self.on_failed(&myself, state, failure).await
            }
            AccountMessage::Parked(report) => self.on_parked(&myself, state, report),
            AccountMessage::Resume => self.on_resume(&myself, state),
            AccountMessage::Due(number) => self.on_due(&myself, state, number),
            AccountMessage::IdleCheck => self.on_idle_check(&myself, state).await?,
            // The caller may have timed out and gone; nothing to do then.
            AccountMessage::Status(reply) => {
                let _ = reply.send(state.snapshot());
            }
        }
        Ok(())
    }
}
