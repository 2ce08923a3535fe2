//! The registry maps an AccountId to its live actor, activating one on demand and
//! forgetting it when it passivates or dies. Only active accounts cost memory here; a
//! million linked accounts cost their store records and nothing else.
//!
//! Activation is race-free: the map entry for an id is created under its shard lock with
//! a non-blocking spawn, so two webhooks for a cold account can never start two actors.
//! An actor leaves the map only through [`Registry::forget`], which checks the actor id,
//! so a stale exit can never remove a newer activation.
//!
//! It also holds each account's restart bookkeeping (kept by the supervisor, read by the
//! status API): while a restart is scheduled or the account is quarantined, nothing
//! activates it. Quarantine is also written to the account record (by the supervisor,
//! under [`Registry::while_quarantined`]), so it survives a process restart; the failure
//! counts are deliberately in memory only (a fresh process gives every account a fresh
//! budget). Besides: per-activation mailbox counters, the count of running syncs
//! ([`SyncSlot`]) that shutdown waits on, and the test hook that injects panics.
//!
//! It is not where dependencies live: it is built from an [`ActorContext`] and hands
//! that to each actor it activates; it reads the context only for its timeouts and to
//! check that an account is linked before activating it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorId, ActorRef, ActorRuntime, ActorStatus};

use super::account::{
    mailbox_sent, mailbox_taken, AccountActor, AccountMessage, ActorSnapshot, MailboxCounter,
    SyncReason,
};
use super::context::ActorContext;
use super::incidents::ensure_mark_incidents;
use crate::domain::{AccountId, LinkStatus};
use crate::store::StoreError;

/// Why a message could not be delivered to an account.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such account, or it is unlinked.
    #[error("account {0} is not linked")]
    NotLinked(AccountId),
    /// The store failed while checking the account.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actor could not be spawned.
    #[error("could not activate account {0}: {1}")]
    Spawn(AccountId, String),
    /// The registry is shutting down.
    #[error("registry is shutting down")]
    ShuttingDown,
    /// The actor did not answer in time.
    #[error("account {0} did not answer within {1:?}")]
    Timeout(AccountId, Duration),
    /// The supervisor gave up restarting it; `POST /v1/accounts/{id}/resume` lifts this.
    #[error("account {0} is quarantined")]
    Quarantined(AccountId),
    /// Its actor failed and the supervisor restarts it after a backoff; work already in
    /// the inbox is picked up by that restart.
    #[error("account {0} is being restarted")]
    RestartPending(AccountId),
}

/// Restart bookkeeping of one account, kept by the supervisor.
#[derive(Clone, Debug, Default)]
pub struct RestartRecord {
    /// When recent failures happened (only those within the restart window are kept).
    pub failures: VecDeque<tokio::time::Instant>,
    /// Restarts scheduled since start (or since the last resume).
    pub restarts: u64,
    /// When the scheduled restart is due; `None` when none is scheduled.
    pub restart_due_at: Option<DateTime<Utc>>,
    /// What the last failure said.
    pub last_failure: Option<String>,
    /// The supervisor gave up on it (mirrors the account record's quarantine, which is
    /// written right after, so nothing activates it in between).
    pub quarantined: bool,
}

/// What the status API shows about an account's restarts.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestartSnapshot {
    /// Restarts scheduled since start (or since the last resume).
    pub restarts: u64,
    /// Failures counted within the restart window.
    pub failures_in_window: u32,
    /// When the scheduled restart is due.
    pub restart_due_at: Option<DateTime<Utc>>,
    /// What the last failure said.
    pub last_failure: Option<String>,
}

/// Counters describing the registry.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RegistryStats {
    /// Actors alive now.
    pub active: usize,
    /// Activations since start.
    pub activations: u64,
    /// Passivations since start.
    pub passivations: u64,
}

/// Finds or activates account actors. Shared as `Arc<Registry>`.
pub struct Registry {
    actors: DashMap<AccountId, ActorRef<AccountMessage>>,
    by_actor: DashMap<ActorId, AccountId>,
    /// What every activated actor is handed; the registry itself reads only the
    /// settings (timeouts) and the store (is the account linked?).
    ctx: Arc<ActorContext>,
    supervisor: OnceLock<ActorCell>,
    me: OnceLock<std::sync::Weak<Registry>>,
    activations: AtomicU64,
    passivations: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    restarts: DashMap<AccountId, RestartRecord>,
    injected_panics: DashMap<AccountId, u32>,
    /// In-flight message counts per live activation (see [`MailboxCounter`]).
    mailboxes: DashMap<ActorId, MailboxCounter>,
    /// Sync tasks running now (each holds a [`SyncSlot`]).
    syncs_running: AtomicU64,
    /// Woken when `syncs_running` drops to zero.
    syncs_idle: tokio::sync::Notify,
}

/// Held by a running sync task: counts it in [`Registry::syncs_running`] until the task
/// ends, however it ends (finished, failed or aborted).
pub struct SyncSlot {
    registry: Arc<Registry>,
}

impl Drop for SyncSlot {
    fn drop(&mut self) {
        if self.registry.syncs_running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.registry.syncs_idle.notify_waiters();
        }
    }
}

impl Registry {
    /// A registry whose actors take their dependencies from `ctx`.
    pub fn new(ctx: Arc<ActorContext>) -> Arc<Registry> {
        let registry = Arc::new(Registry {
            actors: DashMap::new(),
            by_actor: DashMap::new(),
            ctx,
            supervisor: OnceLock::new(),
            me: OnceLock::new(),
            activations: AtomicU64::new(0),
            passivations: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
            restarts: DashMap::new(),
            injected_panics: DashMap::new(),
            mailboxes: DashMap::new(),
            syncs_running: AtomicU64::new(0),
            syncs_idle: tokio::sync::Notify::new(),
        });
        let _ = registry.me.set(Arc::downgrade(&registry));
        registry
    }

    /// Links every future activation to `supervisor` (set once, at start-up).
    pub fn set_supervisor(&self, supervisor: ActorCell) {
        let _ = self.supervisor.set(supervisor);
    }

    /// The in-flight message counter of the activation `actor_id` (created on first
    /// use: the actor's `pre_start` and the first sender may race).
    pub(super) fn mailbox_counter(&self, actor_id: ActorId) -> MailboxCounter {
        self.mailboxes.entry(actor_id).or_default().clone()
    }

    /// Messages waiting in the live actor's mailbox, `None` when it is passivated.
    /// Read without asking the actor, so it works even when the actor is stuck.
    pub fn mailbox_depth(&self, id: &AccountId) -> Option<u64> {
        let actor_id = self.actors.get(id)?.get_id();
        Some(
            self.mailboxes
                .get(&actor_id)
                .map_or(0, |c| c.load(Ordering::Relaxed)),
        )
    }

    /// The ids of every live actor's account, unordered.
    pub fn active_ids(&self) -> Vec<AccountId> {
        self.actors.iter().map(|e| e.key().clone()).collect()
    }

    /// Sends `message` to `actor`, counted in its mailbox depth.
    fn send_counted(
        &self,
        actor: &ActorRef<AccountMessage>,
        message: AccountMessage,
    ) -> Result<(), ()> {
        // Looked up, not created: a ref just forgotten must not leave an entry behind.
        let counter = self.mailboxes.get(&actor.get_id()).map(|c| c.clone());
        if let Some(counter) = &counter {
            mailbox_sent(counter);
        }
        actor.send_message(message).map_err(|_| {
            if let Some(counter) = &counter {
                mailbox_taken(counter);
            }
        })
    }

    /// Asks `actor` for its snapshot, counted in its mailbox depth.
    async fn call_status(
        &self,
        actor: &ActorRef<AccountMessage>,
        timeout: Duration,
    ) -> Result<CallResult<ActorSnapshot>, ()> {
        let counter = self.mailboxes.get(&actor.get_id()).map(|c| c.clone());
        if let Some(counter) = &counter {
            mailbox_sent(counter);
        }
        actor
            .call(AccountMessage::Status, Some(timeout))
            .await
            .map_err(|_| {
                if let Some(counter) = &counter {
                    mailbox_taken(counter);
                }
            })
    }

    /// Asks the account's actor to sync, activating it if needed.
    /// Synchronous: activation reads the account from the store, so async callers on a
    /// hot path call it from a blocking thread (sled reads can wait on its global lock).
    pub fn request_sync(&self, id: &AccountId, reason: SyncReason) -> Result<(), RegistryError> {
        // A send can only fail if the actor died between lookup and send; its exit
        // removes it from the map, so the second attempt activates a fresh one.
        for _ in 0..3 {
            let actor = match self.get_or_activate(id) {
                Ok(actor) => actor,
                // The restart syncs whatever is pending in the inbox by then.
                Err(RegistryError::RestartPending(_)) => return Ok(()),
                Err(error) => return Err(error),
            };
            match self.send_counted(&actor, AccountMessage::SyncRequested(reason)) {
                Ok(()) => return Ok(()),
                Err(_) => {
                    self.forget(id, actor.get_id());
                }
            }
        }
        Err(RegistryError::Spawn(
            id.clone(),
            "actor kept exiting".to_string(),
        ))
    }

    /// The live actor's self-description, or `None` when the account is passivated.
    /// Never activates.
    pub async fn snapshot(&self, id: &AccountId) -> Result<Option<ActorSnapshot>, RegistryError> {
        let Some(actor) = self.actors.get(id).map(|a| a.clone()) else {
            return Ok(None);
        };
        let timeout = self.ctx.settings.call_timeout;
        match self.call_status(&actor, timeout).await {
            Ok(CallResult::Success(snapshot)) => Ok(Some(snapshot)),
            Ok(CallResult::Timeout) => Err(RegistryError::Timeout(id.clone(), timeout)),
            // It stopped while we asked: it is passivated now.
            Ok(CallResult::SenderError) | Err(_) => Ok(None),
        }
    }

    /// Activates the account's actor without sending it anything: on start it syncs by
    /// itself when it has pending inbox entries or has never synced (the link path).
    /// A scheduled restart counts as activated: it will start the actor.
    pub fn activate(&self, id: &AccountId) -> Result<(), RegistryError> {
        match self.get_or_activate(id) {
            Ok(_) | Err(RegistryError::RestartPending(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Activates the account's actor if needed and asks it for its snapshot: the round
    /// trip a webhook to a passivated account pays, plus the answer.
    pub async fn ping(&self, id: &AccountId) -> Result<ActorSnapshot, RegistryError> {
        let timeout = self.ctx.settings.call_timeout;
        for _ in 0..3 {
            let actor = self.get_or_activate(id)?;
            match self.call_status(&actor, timeout).await {
                Ok(CallResult::Success(snapshot)) => return Ok(snapshot),
                Ok(CallResult::Timeout) => return Err(RegistryError::Timeout(id.clone(), timeout)),
                Ok(CallResult::SenderError) | Err(_) => {
                    self.forget(id, actor.get_id());
                }
            }
        }
        Err(RegistryError::Spawn(
            id.clone(),
            "actor kept exiting".to_string(),
        ))
    }

    /// Stops the account's actor (on unlink) and waits for it to end, so no sync of it
    /// runs afterwards.
    pub async fn stop(&self, id: &AccountId) {
        if let Some((_, actor)) = self.actors.remove(id) {
            self.by_actor.remove(&actor.get_id());
            self.mailboxes.remove(&actor.get_id());
            let _ = actor
                .stop_and_wait(
                    Some("unlinked".to_string()),
                    Some(self.ctx.settings.call_timeout),
                )
                .await;
        }
    }

    /// Removes `id` from the map if it still maps to `actor_id`. Returns whether it did.
    pub fn forget(&self, id: &AccountId, actor_id: ActorId) -> bool {
        let removed = self
            .actors
            .remove_if(id, |_, actor| actor.get_id() == actor_id)
            .is_some();
        if removed {
            self.by_actor.remove(&actor_id);
            self.mailboxes.remove(&actor_id);
            self.passivations.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    /// The account `actor_id` serves, if it is still registered.
    pub fn account_of(&self, actor_id: ActorId) -> Option<AccountId> {
        self.by_actor.get(&actor_id).map(|e| e.value().clone())
    }

    /// Runs `change` on the account's restart record (created empty if missing). Used
    /// by the supervisor, the only writer.
    pub fn with_restart_record<R>(
        &self,
        id: &AccountId,
        change: impl FnOnce(&mut RestartRecord) -> R,
    ) -> R {
        change(&mut self.restarts.entry(id.clone()).or_default())
    }

    /// Drops the account's restart record (on resume, or when it no longer exists).
    pub fn clear_restart_record(&self, id: &AccountId) {
        self.restarts.remove(id);
    }

    /// The account's restart bookkeeping, `None` if it never failed (since the last
    /// resume).
    pub fn restart_status(&self, id: &AccountId) -> Option<RestartSnapshot> {
        self.restarts.get(id).map(|record| RestartSnapshot {
            restarts: record.restarts,
            failures_in_window: record.failures.len() as u32,
            restart_due_at: record.restart_due_at,
            last_failure: record.last_failure.clone(),
        })
    }

    /// Runs `write` (the supervisor's quarantine write: the record, then its incident)
    /// only while the account's in-memory quarantine mark is still there, holding the
    /// restart record's map lock throughout, which [`Registry::clear_restart_record`]
    /// (a resume) needs to drop the mark: so a resume in between cannot be overwritten
    /// by a quarantine it already lifted. `None`: the mark was gone, `write` did not run.
    /// `write` runs under the lock of one map shard: keep it short (quarantines are rare)
    /// and call this from a blocking thread.
    pub fn while_quarantined<R>(&self, id: &AccountId, write: impl FnOnce() -> R) -> Option<R> {
        let record = self.restarts.get_mut(id)?;
        if !record.quarantined {
            return None;
        }
        let written = write();
        drop(record);
        Some(written)
    }

    /// Whether the supervisor quarantined the account in this process (the account
    /// record says so too once its write lands; this covers the moment in between).
    pub fn is_quarantined_in_memory(&self, id: &AccountId) -> bool {
        self.restarts.get(id).is_some_and(|r| r.quarantined)
    }

    /// Tells the account's actor to retry at once from attempt zero (after a resume or
    /// a relink lifted what held it), activating it if needed. The activation's refusal
    /// is returned as is: a pending restart or a quarantine is the caller's call.
    /// Synchronous like [`Registry::activate`].
    pub fn send_resume(&self, id: &AccountId) -> Result<(), RegistryError> {
        let actor = self.get_or_activate(id)?;
        // A send fails only if it just stopped; the next activation reads the
        // cleared marks and syncs what is pending.
        let _ = self.send_counted(&actor, AccountMessage::Resume);
        Ok(())
    }

    /// Test hook: the account's next `times` sync starts panic inside its actor's
    /// handler, as a bug would, so tests can drive the supervisor. Nothing outside the
    /// process can reach it (no route, no config); it exists in the library because the
    /// integration tests link it without `cfg(test)`.
    #[doc(hidden)]
    pub fn inject_panic(&self, id: &AccountId, times: u32) {
        if times == 0 {
            self.injected_panics.remove(id);
        } else {
            self.injected_panics.insert(id.clone(), times);
        }
    }

    /// Consumes one injected panic for the account, if any is armed.
    pub(super) fn take_injected_panic(&self, id: &AccountId) -> bool {
        // Fast path: production never arms one, so this is one empty-map lookup.
        if self.injected_panics.is_empty() {
            return false;
        }
        let exhausted = {
            let Some(mut remaining) = self.injected_panics.get_mut(id) else {
                return false;
            };
            *remaining = remaining.saturating_sub(1);
            *remaining == 0
        };
        if exhausted {
            self.injected_panics
                .remove_if(id, |_, remaining| *remaining == 0);
        }
        true
    }

    /// Forgets whichever account `actor_id` served (the supervisor's view: it only knows
    /// the actor). Returns the account if the actor was still registered.
    pub fn forget_actor(&self, actor_id: ActorId) -> Option<AccountId> {
        let id = self.by_actor.get(&actor_id).map(|e| e.value().clone())?;
        self.forget(&id, actor_id).then_some(id)
    }

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            active: self.actors.len(),
            activations: self.activations.load(Ordering::Relaxed),
            passivations: self.passivations.load(Ordering::Relaxed),
        }
    }

    /// Whether `id` has a live actor.
    pub fn is_active(&self, id: &AccountId) -> bool {
        self.actors.contains_key(id)
    }

    /// Whether shutdown has begun: no new activation, no new sync.
    pub fn is_closing(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Counts a sync task as running until the returned slot is dropped.
    pub(super) fn sync_slot(self: &Arc<Self>) -> SyncSlot {
        self.syncs_running.fetch_add(1, Ordering::SeqCst);
        SyncSlot {
            registry: self.clone(),
        }
    }

    /// Sync tasks running now.
    pub fn syncs_running(&self) -> u64 {
        self.syncs_running.load(Ordering::SeqCst)
    }

    /// Refuses new activations and new syncs, lets the syncs already running commit for
    /// up to `actors.shutdown_grace`, then stops every actor (a sync still running is
    /// abandoned: it has written nothing, and its webhooks stay in the inbox).
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.ctx.settings.shutdown_grace;
        loop {
            // Created before the check: `notify_waiters` reaches it even unpolled.
            let idle = self.syncs_idle.notified();
            let running = self.syncs_running();
            if running == 0 {
                break;
            }
            tracing::info!(running, "waiting for running syncs to commit");
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(
                    running = self.syncs_running(),
                    "shutdown grace over: abandoning the syncs still running"
                );
                break;
            }
        }
        let actors: Vec<(AccountId, ActorRef<AccountMessage>)> = self
            .actors
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let timeout = self.ctx.settings.call_timeout;
        futures::future::join_all(
            actors
                .iter()
                .map(|(_, actor)| actor.stop_and_wait(Some("shutdown".to_string()), Some(timeout))),
        )
        .await;
        for (id, actor) in actors {
            self.forget(&id, actor.get_id());
        }
    }

    /// Records which account `actor_id` serves. Called by the actor's own `pre_start`
    /// as well as after spawning: an actor can fail before the spawning thread gets to
    /// register it, and the supervisor must still know whom to restart.
    pub(super) fn register_actor(&self, actor_id: ActorId, id: &AccountId) {
        self.by_actor.insert(actor_id, id.clone());
    }

    fn get_or_activate(&self, id: &AccountId) -> Result<ActorRef<AccountMessage>, RegistryError> {
        if let Some(actor) = self.actors.get(id).map(|a| a.clone()) {
            // A ref to an actor that already died (it failed before it was registered,
            // so the supervisor could not drop it) is never handed out.
            if !matches!(
                actor.get_status(),
                ActorStatus::Stopping | ActorStatus::Stopped
            ) {
                return Ok(actor);
            }
            self.forget(id, actor.get_id());
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(RegistryError::ShuttingDown);
        }
        if let Some(record) = self.restarts.get(id) {
            if record.quarantined {
                return Err(RegistryError::Quarantined(id.clone()));
            }
            if record.restart_due_at.is_some() {
                return Err(RegistryError::RestartPending(id.clone()));
            }
        }
        match self.ctx.store.get_account(id)? {
            Some(account) if account.status == LinkStatus::Linked => {
                if account.quarantine.is_some() {
                    ensure_mark_incidents(&self.ctx, &account)?;
                    return Err(RegistryError::Quarantined(id.clone()));
                }
            }
            _ => return Err(RegistryError::NotLinked(id.clone())),
        }
        let Some(me) = self.me.get().and_then(|weak| weak.upgrade()) else {
            return Err(RegistryError::ShuttingDown);
        };
        match self.actors.entry(id.clone()) {
            Entry::Occupied(entry) => Ok(entry.get().clone()),
            Entry::Vacant(entry) => {
                // spawn_*_instant does not await pre_start, so the shard lock is never held
                // across an await; messages queue until the actor has started.
                let spawned = match self.supervisor.get() {
                    Some(supervisor) => ActorRuntime::spawn_linked_instant(
                        None,
                        AccountActor::new(self.ctx.clone(), me),
                        id.clone(),
                        supervisor.clone(),
                    ),
                    None => ActorRuntime::spawn_instant(
                        None,
                        AccountActor::new(self.ctx.clone(), me),
                        id.clone(),
                    ),
                };
                let (actor, _startup) =
                    spawned.map_err(|e| RegistryError::Spawn(id.clone(), e.to_string()))?;
                self.activations.fetch_add(1, Ordering::Relaxed);
                self.by_actor.insert(actor.get_id(), id.clone());
                self.mailboxes.entry(actor.get_id()).or_default();
                entry.insert(actor.clone());
                Ok(actor)
            }
        }
    }
}
