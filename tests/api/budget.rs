//! The client-side rate budget against a provider that enforces its per-Item limit:
//! with the budget on, a burst of webhooks is synced without a single 429; with it off,
//! the same burst runs into the limit (the control, so the first test means something).

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_env_with, TestEnv};

/// Links an item whose sandbox allows 2 `/transactions/sync` calls per second, fires
/// 40 webhooks at it, waits for convergence and returns the item's sandbox stats.
async fn burst(budget_per_minute: u32) -> (Value, TestEnv) {
    let env = spawn_env_with(|s| {
        // Syncs back to back: nothing but the budget spaces them out.
        s.actors.min_sync_interval = Duration::ZERO;
        s.actors.rate_limit_backoff = Duration::from_millis(200);
        // 1 per second with a burst of 1: at most 2 calls in any one second, within the
        // limit with room for the network's timing.
        s.plaid.sync_budget_per_minute = budget_per_minute;
        s.plaid.sync_budget_burst = 1;
    })
    .await;
    let (item_id, token) = env.create_item(20).await;
    env.faults(
        &item_id,
        json!({ "sync_limit": { "max_calls": 2, "window_ms": 1000 } }),
    )
    .await;
    let account = env.link(&item_id, &token, "owner-budget", &[]).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    // 40 changes, each announced by its own webhook, as fast as the sandbox fires them.
    for _ in 0..40 {
        env.mutate(&item_id, 1, 0, 0).await;
    }
    env.converge(&account, &item_id).await;
    (env.stats(&item_id).await, env)
}

#[tokio::test]
async fn the_budget_keeps_a_burst_inside_the_providers_limit() {
    let (stats, env) = burst(60).await;
    assert_eq!(
        stats["sync_limit_rejections"], 0,
        "no call ran into the provider's limit: {stats}"
    );
    // The budget spaced the calls out, and the webhooks arriving meanwhile coalesced
    // into them: the initial sync plus at least one for the burst, all admitted.
    assert!(stats["sync_calls"].as_u64() >= Some(2), "{stats}");
    env.shutdown().await;
}

#[tokio::test]
async fn without_the_budget_the_same_burst_runs_into_the_limit() {
    let (stats, env) = burst(0).await;
    assert!(
        stats["sync_limit_rejections"].as_u64() > Some(0),
        "the control must hit the provider's limit: {stats}"
    );
    env.shutdown().await;
}
