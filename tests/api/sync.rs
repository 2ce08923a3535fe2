//! Sync correctness against the sandbox: initial sync, random rounds, mutation during
//! pagination, rejected cursors, coalescing under a webhook storm, restart.

use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::helpers::{spawn_env, sync_webhook_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_of_5000_transactions_equals_the_sandbox() {
    let env = spawn_env().await;
    let (account, item) = env.linked_item(5_000).await;
    let rows = env.converge(&account, &item).await;
    assert_eq!(rows.len(), 5_000);
    let status = env.sync_status(&account).await;
    assert!(status["sync_count"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(
        status["cursor_age_seconds"].is_i64(),
        "cursor stored: {status}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_rounds_of_add_modify_remove_converge_after_every_round() {
    let env = spawn_env().await;
    let (account, item) = env.linked_item(400).await;
    env.converge(&account, &item).await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    for round in 0..12 {
        let (add, modify, remove) = (
            rng.gen_range(0..40),
            rng.gen_range(0..40),
            rng.gen_range(0..20),
        );
        let result = env.mutate(&item, add, modify, remove).await;
        assert!(
            result["webhook_status"].is_number(),
            "round {round}: {result}"
        );
        env.converge(&account, &item).await;
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_during_pagination_commits_no_partial_page() {
    let env = spawn_env().await;
    let (item, token) = env.create_item(3_000).await;
    // Six pages of 500; the loop is broken twice mid-way and each page is slow enough
    // to observe the local count while it runs.
    env.faults(
        &item,
        json!({ "mutation_during_pagination": 2, "sync_latency_ms": 15 }),
    )
    .await;
    let account = env.link(&item, &token, "owner-mdp", &[]).await;
    let account = account["id"].as_str().expect("id").to_string();
    let mut observed = std::collections::BTreeSet::new();
    loop {
        let status = env.sync_status(&account).await;
        let count = status["transactions"].as_u64().expect("count");
        observed.insert(count);
        if count == 3_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        observed.iter().all(|c| *c == 0 || *c == 3_000),
        "a partial loop was committed: saw counts {observed:?}"
    );
    env.converge(&account, &item).await;
    let stats = env.stats(&item).await;
    assert_eq!(stats["mutation_errors_sent"], 2, "{stats}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_cursor_falls_back_and_ends_equal_to_the_sandbox() {
    let env = spawn_env().await;
    let (account, item) = env.linked_item(1_200).await;
    env.converge(&account, &item).await;
    env.faults(&item, json!({ "reject_cursor": 1 })).await;
    env.mutate(&item, 30, 25, 15).await;
    env.converge(&account, &item).await;
    let stats = env.stats(&item).await;
    assert_eq!(stats["cursor_rejections_sent"], 1, "{stats}");
    // The reconcile path really ran (window listing), and the cursor works afterwards.
    assert!(stats["get_calls"].as_u64().unwrap_or(0) >= 1, "{stats}");
    env.mutate(&item, 5, 5, 5).await;
    env.converge(&account, &item).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_webhooks_never_overlap_and_coalesce() {
    let env = spawn_env().await;
    let (account, item) = env.linked_item(300).await;
    env.converge(&account, &item).await;
    env.faults(&item, json!({ "sync_latency_ms": 5 })).await;
    env.mutate_quietly(&item, 50, 20, 10).await;
    let before = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("count");

    // Distinct bodies, so dedup does not hide the storm.
    let tasks: Vec<_> = (0..200)
        .map(|n| env.spawn_signed_webhook(sync_webhook_body(&item, json!({ "nonce": n }))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    env.converge(&account, &item).await;
    let stats = env.stats(&item).await;
    assert_eq!(stats["overlapping_syncs"], 0, "{stats}");
    assert_eq!(stats["max_concurrent_syncs"], 1, "{stats}");
    let after = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("count");
    let loops = after - before;
    assert!(
        (1..50).contains(&loops),
        "200 webhooks ran {loops} sync loops"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_data_cursor_and_links() {
    let mut env = spawn_env().await;
    let (account, item) = env.linked_item(800).await;
    let aliased = {
        let (item2, token2) = env.create_item(50).await;
        let v = env
            .link(&item2, &token2, "owner-r", &["restart@example.com"])
            .await;
        (v["id"].as_str().expect("id").to_string(), item2)
    };
    let before = env.converge(&account, &item).await;
    env.converge(&aliased.0, &aliased.1).await;
    let sync_count = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("n");

    env.restart_app().await;

    assert_eq!(env.local_transactions(&account).await, before);
    let by_alias = env
        .get_json(&format!("{}/v1/accounts/restart@example.com", env.app_url))
        .await;
    assert_eq!(by_alias["id"], aliased.0.as_str());
    let status = env.sync_status(&account).await;
    assert_eq!(status["sync_count"].as_u64(), Some(sync_count), "{status}");
    assert!(status["cursor_age_seconds"].is_i64(), "{status}");
    // The stored cursor continues where it left off: only the delta is fetched.
    let calls_before = env.stats(&item).await["sync_calls"]
        .as_u64()
        .expect("calls");
    env.mutate(&item, 3, 2, 1).await;
    env.converge(&account, &item).await;
    let calls_after = env.stats(&item).await["sync_calls"]
        .as_u64()
        .expect("calls");
    assert!(
        calls_after - calls_before <= 3,
        "delta sync used {} calls",
        calls_after - calls_before
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_event_interrupted_by_shutdown_is_processed_after_restart() {
    // A grace far shorter than a page: the drain abandons the running sync.
    let mut env = crate::helpers::spawn_env_with(|s| {
        s.actors.shutdown_grace = std::time::Duration::from_millis(100);
    })
    .await;
    let (account, item) = env.linked_item(100).await;
    env.converge(&account, &item).await;
    // Slow provider: the sync started by the next webhook is still fetching when the
    // server stops, so its inbox entry is acknowledged but not consumed.
    env.faults(&item, json!({ "sync_latency_ms": 3_000 })).await;
    let result = env.mutate(&item, 4, 3, 2).await;
    assert_eq!(result["webhook_status"], 200, "{result}");
    env.restart_app().await;
    // The abandoned sync wrote nothing: the event is still pending after the restart
    // (the recovery's own sync waits out the same slow page, so it cannot have
    // committed yet).
    let status = env.sync_status(&account).await;
    assert!(
        status["pending_inbox"].as_u64() >= Some(1),
        "the interrupted event is still pending: {status}"
    );
    env.faults(&item, json!({ "sync_latency_ms": 0 })).await;
    // Nothing else will ever nudge this account: only the restart recovery can.
    env.converge(&account, &item).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passivated_account_is_reactivated_by_its_next_webhook() {
    let env = crate::helpers::spawn_env_with(|s| {
        s.actors.passivate_after = std::time::Duration::from_millis(50);
    })
    .await;
    let (account, item) = env.linked_item(50).await;
    env.converge(&account, &item).await;
    let deadline = tokio::time::Instant::now() + crate::helpers::CONVERGE;
    loop {
        let status = env.sync_status(&account).await;
        if status["active"] == false {
            assert_eq!(status["state"], "passivated");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never passivated: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    env.mutate(&item, 6, 4, 2).await;
    env.converge(&account, &item).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_during_a_sync_waits_for_the_minimum_interval_then_syncs_once() {
    let env = crate::helpers::spawn_env_with(|s| {
        // Wide enough that the whole burst lands before the second sync reads the inbox
        // even on a slow CI disk (every webhook is acknowledged after an fsync).
        s.actors.min_sync_interval = std::time::Duration::from_secs(5);
    })
    .await;
    let (account, item) = env.linked_item(30).await;
    env.converge(&account, &item).await;
    env.faults(&item, json!({ "sync_latency_ms": 1_000 })).await;
    let before = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("n");
    // First webhook starts a slow sync (1 s per page); the burst arrives while it runs,
    // all at once as a provider's retries and fan-out do (they share flushes).
    env.mutate(&item, 2, 0, 0).await;
    // The burst must land after that sync read (claimed) its inbox: it has once its
    // slow provider call is in flight. (Before it read the inbox, the burst's events are
    // that sync's own, and rightly consumed by it.)
    let deadline = tokio::time::Instant::now() + crate::helpers::CONVERGE;
    while env.stats(&item).await["in_flight_syncs"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync never reached the bank"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let burst =
        (0..20).map(|n| env.spawn_signed_webhook(sync_webhook_body(&item, json!({ "burst": n }))));
    for status in futures::future::join_all(burst).await {
        assert_eq!(status.expect("task"), 200);
    }
    // The premise: the burst is in before the second sync started.
    let status = env.sync_status(&account).await;
    assert_eq!(
        status["sync_count"].as_u64(),
        Some(before),
        "the burst outlived the first sync and the interval: {status}"
    );
    let deadline = tokio::time::Instant::now() + crate::helpers::CONVERGE;
    let scheduled = loop {
        let status = env.sync_status(&account).await;
        if status["state"] == "scheduled" {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never scheduled: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(
        scheduled["actor"]["next_retry_at"].is_string(),
        "{scheduled}"
    );
    assert!(
        scheduled["pending_inbox"].as_u64().unwrap_or(0) >= 1,
        "{scheduled}"
    );
    env.converge(&account, &item).await;
    let after = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("n");
    assert_eq!(
        after - before,
        2,
        "one sync for the first webhook, one for the burst"
    );
    env.shutdown().await;
}
