//! The sync task: what runs outside the mailbox for one sync. It reads the account and
//! its pending inbox fresh, runs the needs-reauth check, calls the provider through the
//! sync strategy, and reports back to the actor as one message. A failure is recorded
//! (retry record or `failed` mark) before the report, so the store always knows first.

use std::sync::Arc;

use super::retry::{record_failure, RetryPlan, SyncFailure};
use crate::actors::context::ActorContext;
use crate::actors::reauth;
use crate::domain::{AccountId, ProviderKind};
use crate::store::StoreError;
use crate::sync::plaid::{run_sync, SyncEnv};
use crate::sync::{SyncError, SyncProgress, SyncReport};

/// What a sync task that stopped at the needs-reauth check reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkReport {
    /// Every inbox entry up to this sequence number has been looked at: only a newer
    /// one can unpark the account.
    pub checked_seq: u64,
    /// Whether this task parked it (as opposed to finding it parked).
    pub newly_parked: bool,
}

/// How a sync task ended.
pub(super) enum TaskOutcome {
    /// It ran the sync (committed or failed).
    Finished(Result<SyncReport, SyncFailure>),
    /// It stopped at the needs-reauth check, or the provider said the login is needed.
    Parked(ParkReport),
}

/// One sync: account and pending inbox read fresh, the needs-reauth check, then
/// [`run_sync`].
pub(super) async fn sync_once(
    ctx: &Arc<ActorContext>,
    id: &AccountId,
    progress: &SyncProgress,
    attempt: u32,
) -> TaskOutcome {
    loop {
        let prepared = match prepare(ctx, id).await {
            Ok(prepared) => prepared,
            Err(error) => return failed(ctx, id, error, attempt).await,
        };
        if prepared.account.provider == ProviderKind::Stripe {
            return stripe_once(ctx, id, prepared, progress, attempt).await;
        }
        let checked_seq = prepared.consumed.iter().copied().max().unwrap_or(0);
        match reauth::check(ctx, &prepared.account, &prepared.entries).await {
            Ok(reauth::Check::Proceed) => {}
            Ok(reauth::Check::Parked { newly_parked }) => {
                return TaskOutcome::Parked(ParkReport {
                    checked_seq,
                    newly_parked,
                })
            }
            Err(error) => return failed(ctx, id, SyncError::Store(error), attempt).await,
        }
        let provider = ctx.provider(prepared.account.provider);
        let env = SyncEnv {
            provider: provider.as_ref(),
            store: &ctx.store,
            params: &ctx.sync_params,
            progress,
            clock: ctx.clock.as_ref(),
        };
        let result = run_sync(&env, &prepared.account, prepared.consumed).await;
        let token = &prepared.account.access_token;
        let error = match result {
            Ok(report) => {
                reauth::after_commit(ctx, id).await;
                return TaskOutcome::Finished(Ok(report));
            }
            Err(error) if reauth::is_login_required(&error) => error,
            Err(error) => match record_failure(ctx, id, &error, attempt, Some(token)).await {
                Some(plan) => return TaskOutcome::Finished(Err(SyncFailure { error, plan })),
                // Relinked while this sync ran: see below.
                None => {
                    tracing::info!(account_id = %id, code = %error.code(), "final error for a replaced token, syncing again");
                    continue;
                }
            },
        };
        match reauth::park_after_error(ctx, id, &error, checked_seq, token).await {
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
                return failed(ctx, id, error, attempt).await;
            }
        }
    }
}

/// One sync of a Stripe account (`sync::stripe`): no login to check, a catch-up from
/// the Events API on its first sync since start or after a failure.
async fn stripe_once(
    ctx: &Arc<ActorContext>,
    id: &AccountId,
    prepared: Prepared,
    progress: &SyncProgress,
    attempt: u32,
) -> TaskOutcome {
    let Some((api, params)) = ctx.stripe() else {
        let error = SyncError::Provider(crate::providers::ProviderError::Transport(
            "stripe is not configured in this process".into(),
        ));
        return failed(ctx, id, error, attempt).await;
    };
    let previous_failed = matches!(
        prepared.account.last_sync_outcome,
        Some(crate::domain::SyncOutcome::Failed { .. })
    );
    let env = crate::sync::stripe::StripeEnv {
        api: api.as_ref(),
        store: &ctx.store,
        params,
        progress,
        clock: ctx.clock.as_ref(),
        force_catch_up: previous_failed || attempt > 1 || ctx.stripe_needs_catch_up(id),
        metrics: Some(ctx.metrics.as_ref()),
    };
    let result = crate::sync::stripe::run_sync(
        &env,
        &prepared.account,
        &prepared.entries,
        prepared.consumed,
    )
    .await;
    match result {
        Ok(report) => {
            ctx.stripe_caught_up(id);
            TaskOutcome::Finished(Ok(report))
        }
        Err(error) => {
            let token = &prepared.account.access_token;
            match record_failure(ctx, id, &error, attempt, Some(token)).await {
                Some(plan) => TaskOutcome::Finished(Err(SyncFailure { error, plan })),
                // Relinked with new credentials while this sync ran: the failure is
                // about the old ones, so nothing is recorded and the next try is now.
                None => TaskOutcome::Finished(Err(SyncFailure {
                    error,
                    plan: RetryPlan::Retry {
                        attempt,
                        delay: std::time::Duration::ZERO,
                        until: ctx.clock.now(),
                    },
                })),
            }
        }
    }
}

/// A failure before the provider was asked (the store, the needs-reauth check): never
/// final, so always retried or counted towards the attempt limit.
async fn failed(
    ctx: &Arc<ActorContext>,
    id: &AccountId,
    error: SyncError,
    attempt: u32,
) -> TaskOutcome {
    // Without a token to compare, the failure is recorded whatever the token is now.
    let plan = record_failure(ctx, id, &error, attempt, None)
        .await
        .unwrap_or(RetryPlan::Retry {
            attempt,
            delay: std::time::Duration::ZERO,
            until: ctx.clock.now(),
        });
    TaskOutcome::Finished(Err(SyncFailure { error, plan }))
}

/// What a sync starts from: the account and its pending inbox, read fresh.
struct Prepared {
    account: crate::domain::Account,
    entries: Vec<crate::domain::InboxEntry>,
    consumed: Vec<u64>,
}

/// Reads the account, records the start and claims the pending inbox entries.
async fn prepare(ctx: &ActorContext, id: &AccountId) -> Result<Prepared, SyncError> {
    // The store reads and the "started" record run on a blocking thread: sled calls can
    // wait on its global lock, and this task runs on an async worker.
    let store = ctx.store.clone();
    let clock = ctx.clock.clone();
    let sync_id = id.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        let account = store
            .get_account(&sync_id)?
            .ok_or(StoreError::AccountNotFound(sync_id.clone()))?;
        // A parked account's check is not a sync: its status keeps the last real one.
        if account.needs_reauth.is_none() {
            store.record_sync_started(&sync_id, clock.now())?;
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
