//! `stripe events` and `stripe fleet`: changes made at the sandbox with their deliveries
//! held, sent, and the time until acctor's guard counters account for every event, for
//! one account and across many.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;

use acctor::domain::stripe::{ObjectType, StripeState};
use acctor::domain::AccountId;
use acctor::sandbox::SandboxAccount;

use super::harness::{latency_cells, link, mib, peak_rss_bytes, threads, Bench};
use super::{RunOptions, PATIENCE, POLL};
use crate::rss_bytes;

/// The `events` table's header.
pub(super) fn print_header() {
    println!("| store | delivery | backfilled objects | changes | events | run | deliveries done (s) | all applied (s) | events/s | applied after the last delivery (ms) | syncs | refetches | webhook p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

/// One `events` run: a fresh sandbox and app, one backfilled account, `changes`.
pub(super) async fn run(
    options: RunOptions,
    objects: usize,
    changes: usize,
    delivery: &str,
    run: u32,
) -> anyhow::Result<()> {
    let store_name = options.store_name();
    let proxied = options.latency;
    let bench = Bench::start(options).await?;
    let types = ObjectType::ALL;
    let per_type = vec![objects / types.len(); types.len()];
    let account = bench.account(&types, &per_type);
    let id = bench.link(&account, &types).await?;
    bench.wait_visible(&id, types.len(), "store").await?;
    bench.wait_first_syncs(std::slice::from_ref(&id)).await?;
    let before = bench.sync_state(&id).await?;
    let counted_before = before.events_applied + before.events_stale;
    let syncs_before = bench.sync_counts(vec![id.clone()]).await?[0];
    let events_before = bench.stripe().stats(&account.id).events;
    bench.take_latency();

    let stripe = bench.stripe().clone();
    let held = delivery == "held";
    stripe.hold_webhooks(&account.id, held);
    // Queued deliveries start as the changes are made: the clock starts before them.
    let started_queued = Instant::now();
    let made = stripe.mutate(&account.id, changes);
    let events = bench.stripe().stats(&account.id).events - events_before;
    anyhow::ensure!(made == changes, "{made} of {changes} changes made");
    let started = if held { Instant::now() } else { started_queued };
    let sender = {
        let stripe = stripe.clone();
        let account_id = account.id.clone();
        tokio::spawn(async move {
            let sent = if held {
                stripe.flush_webhooks(&account_id, false).await
            } else {
                stripe.deliveries_idle().await;
                0
            };
            (sent, Instant::now())
        })
    };
    let target = counted_before + events;
    let deadline = Instant::now() + PATIENCE;
    let (counted, applied_at) = loop {
        let state = bench.sync_state(&id).await?;
        let counted = state.events_applied + state.events_stale;
        if counted >= target {
            break (counted, Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {events} events applied",
            counted - counted_before
        );
        tokio::time::sleep(POLL).await;
    };
    let (sent, delivered_at) = sender.await?;
    anyhow::ensure!(
        !held || sent as u64 == events,
        "{sent} deliveries for {events} events"
    );
    anyhow::ensure!(
        counted == target,
        "the counters moved by {} for {events} events",
        counted - counted_before
    );
    let after = bench.sync_state(&id).await?;
    let syncs = bench.sync_counts(vec![id.clone()]).await?[0] - syncs_before;
    let stats = bench.stripe().stats(&account.id);
    anyhow::ensure!(stats.webhooks_failed == 0, "deliveries failed: {stats:?}");
    let applied = applied_at.duration_since(started).as_secs_f64();
    let delivered = delivered_at.duration_since(started).as_secs_f64();
    let lag_ms = applied_at
        .checked_duration_since(delivered_at)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let delivery_name = match (held, proxied) {
        (true, false) => "held, flushed",
        (true, true) => "held, flushed, via timing proxy",
        (false, false) => "queued (4 workers)",
        (false, true) => "queued (4 workers), via timing proxy",
    };
    println!(
        "| {store_name} | {delivery_name} | {objects} | {changes} | {events} | {run} | {delivered:.2} | {applied:.2} | {:.0} | {lag_ms:.0} | {syncs} | {} | {} |",
        events as f64 / applied,
        after.refetches - before.refetches,
        latency_cells(bench.take_latency()),
    );
    bench.stop().await
}

/// What a fleet run links and changes.
pub(super) struct FleetShape {
    /// Linked accounts.
    pub accounts: usize,
    /// Objects of each type per account.
    pub objects_per_type: usize,
    /// Changes, spread evenly over the accounts.
    pub changes: usize,
    /// Links in flight at once.
    pub link_concurrency: usize,
    /// Accounts flushed at once.
    pub flush_concurrency: usize,
}

/// The `fleet` table's header.
pub(super) fn print_fleet_header() {
    println!("| store | accounts | objects/account | run | link → all visible (s) | RSS before links | RSS backfilled (threads) | changes | events | deliveries done (s) | all applied (s) | events/s | syncs | RSS after events (threads) | peak RSS | webhook p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

/// One `fleet` run: a fresh sandbox and app, `shape.accounts` accounts.
pub(super) async fn fleet(options: RunOptions, shape: FleetShape, run: u32) -> anyhow::Result<()> {
    let store_name = options.store_name();
    let bench = Bench::start(options).await?;
    let types = ObjectType::ALL;
    let per_type = vec![shape.objects_per_type; types.len()];
    let accounts: Vec<SandboxAccount> = (0..shape.accounts)
        .map(|_| bench.account(&types, &per_type))
        .collect();
    let rss_before = rss_bytes();

    let started = Instant::now();
    let linked: Vec<anyhow::Result<AccountId>> = futures::stream::iter(&accounts)
        .map(|account| link(&bench.client, &bench.app_url, account, &types))
        .buffered(shape.link_concurrency)
        .collect()
        .await;
    let ids: Vec<AccountId> = linked.into_iter().collect::<anyhow::Result<_>>()?;
    eprintln!(
        "run {run}: {} accounts linked in {:?}",
        ids.len(),
        started.elapsed()
    );
    wait_all(&bench, &ids, |_, state| {
        Ok(state.visible.len() == types.len())
    })
    .await?;
    let backfilled = started.elapsed().as_secs_f64();
    let rss_backfilled = rss_bytes();
    let threads_backfilled = threads();

    bench.wait_first_syncs(&ids).await?;
    let before = bench.sync_states(ids.clone()).await?;
    let syncs_before: u64 = bench.sync_counts(ids.clone()).await?.iter().sum();
    let stripe = bench.stripe().clone();
    let mut targets = HashMap::new();
    let mut events = 0u64;
    for (n, (account, id)) in accounts.iter().zip(&ids).enumerate() {
        stripe.hold_webhooks(&account.id, true);
        let share =
            shape.changes / shape.accounts + usize::from(n < shape.changes % shape.accounts);
        let events_before = stripe.stats(&account.id).events;
        stripe.mutate(&account.id, share);
        let made = stripe.stats(&account.id).events - events_before;
        events += made;
        let counted = before[n].events_applied + before[n].events_stale;
        targets.insert(id.clone(), counted + made);
    }
    bench.take_latency();

    let started = Instant::now();
    let sender = {
        let stripe = stripe.clone();
        let account_ids: Vec<String> = accounts.iter().map(|a| a.id.clone()).collect();
        let concurrency = shape.flush_concurrency;
        tokio::spawn(async move {
            let sent: usize = futures::stream::iter(account_ids)
                .map(|account| {
                    let stripe = stripe.clone();
                    async move { stripe.flush_webhooks(&account, false).await }
                })
                .buffer_unordered(concurrency)
                .fold(0, |total, sent| async move { total + sent })
                .await;
            (sent, Instant::now())
        })
    };
    wait_all(&bench, &ids, |id, state| {
        let counted = state.events_applied + state.events_stale;
        let target = targets.get(id).copied().unwrap_or(0);
        anyhow::ensure!(
            counted <= target,
            "account {id}: the counters passed the events made ({counted} > {target})"
        );
        Ok(counted == target)
    })
    .await?;
    let applied = started.elapsed().as_secs_f64();
    let (sent, delivered_at) = sender.await?;
    anyhow::ensure!(
        sent as u64 == events,
        "{sent} deliveries for {events} events"
    );
    let delivered = delivered_at.duration_since(started).as_secs_f64();
    let rss_after = rss_bytes();
    let threads_after = threads();
    let syncs: u64 = bench.sync_counts(ids.clone()).await?.iter().sum();
    println!(
        "| {store_name} | {} | {} | {run} | {backfilled:.2} | {} MiB | {} MiB ({threads_backfilled}) | {} | {events} | {delivered:.2} | {applied:.2} | {:.0} | {} | {} MiB ({threads_after}) | {} MiB | {} |",
        shape.accounts,
        shape.objects_per_type * types.len(),
        mib(rss_before),
        mib(rss_backfilled),
        shape.changes,
        events as f64 / applied,
        syncs - syncs_before,
        mib(rss_after),
        mib(peak_rss_bytes()),
        latency_cells(bench.take_latency()),
    );
    bench.stop().await
}

/// Waits until `done` holds for the sync state of every one of `ids`, reading only
/// those not done yet.
async fn wait_all(
    bench: &Bench,
    ids: &[AccountId],
    done: impl Fn(&AccountId, &StripeState) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut pending: Vec<AccountId> = ids.to_vec();
    let deadline = Instant::now() + PATIENCE;
    while !pending.is_empty() {
        let states = bench.sync_states(pending.clone()).await?;
        let mut still = Vec::new();
        for (id, state) in pending.into_iter().zip(states) {
            if !done(&id, &state)? {
                still.push(id);
            }
        }
        pending = still;
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} accounts still not done",
            pending.len()
        );
        if !pending.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}
