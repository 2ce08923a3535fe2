//! Restart recovery: after a start, re-drives the work a crash may have interrupted.
//! Acknowledged webhooks wait in the inbox and a first sync that never committed left
//! no cursor, so both are found in the store and handed to their actors again; every
//! linked Stripe account syncs, catching up on the events it missed while acctor was
//! down. The actors serialize whatever this races with.

use super::Context;
use crate::actors::SyncReason;
use crate::domain::{AccountId, LinkStatus, ProviderKind};

/// After a restart, re-drives the work a crash may have interrupted: every account with
/// pending inbox entries (acknowledged webhooks whose sync never committed) and every
/// linked account that never completed its initial sync. Runs in the background so the
/// server answers at once; the actors serialize whatever it races with.
pub fn spawn(ctx: Context) {
    // A scan of every account: a blocking thread, not an async worker.
    let store = ctx.store.blocking().clone();
    tokio::task::spawn_blocking(move || {
        let mut nudged = 0u64;
        match store.accounts_with_pending_inbox() {
            Ok(ids) => {
                for id in ids {
                    // A live actor already has its work (the demo's new accounts, say).
                    if ctx.registry.is_active(&id) {
                        continue;
                    }
                    if ctx.registry.activate(&id).is_ok() {
                        nudged += 1;
                    }
                }
            }
            Err(error) => tracing::error!(%error, "recovery: could not list pending inbox"),
        }
        let mut after: Option<AccountId> = None;
        loop {
            let page = match store.list_accounts(after.as_ref(), 1000) {
                Ok(page) => page,
                Err(error) => {
                    tracing::error!(%error, "recovery: could not list accounts");
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for account in page {
                if account.status != LinkStatus::Linked || ctx.registry.is_active(&account.id) {
                    continue;
                }
                // A Stripe account catches up from the Events API on its first sync
                // after a start: what happened while acctor was down is read now, not
                // at the next poll.
                let stripe = account.provider == ProviderKind::Stripe && !account.is_parked();
                let woken = if stripe {
                    ctx.registry
                        .request_sync(&account.id, SyncReason::Activation)
                } else if account.cursor.is_none() {
                    ctx.registry.activate(&account.id)
                } else {
                    continue;
                };
                if woken.is_ok() {
                    nudged += 1;
                }
            }
        }
        // Operations: acknowledged statuses not applied yet, and every timer already due
        // (an anchor whose create call a crash interrupted is due at once). The sweeper
        // would find the timers on its first pass; doing it here does not wait a tick.
        let mut operations = 0u64;
        let now = ctx.clock.now();
        let mut ids = match store.operations_with_pending_events() {
            Ok(ids) => ids,
            Err(error) => {
                tracing::error!(%error, "recovery: could not list pending operation events");
                Vec::new()
            }
        };
        match store.due_entries(now, crate::store::DueKind::OperationWake, 100_000) {
            Ok(entries) => ids.extend(
                entries
                    .into_iter()
                    .map(|e| crate::domain::operations::OperationId(e.subject)),
            ),
            Err(error) => tracing::error!(%error, "recovery: could not read operation timers"),
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            if ctx.operations.drive(&id).is_ok() {
                operations += 1;
            }
        }
        if nudged > 0 || operations > 0 {
            tracing::info!(
                accounts = nudged,
                operations,
                "resuming work a previous run left unfinished"
            );
        }
    });
}
