//! Retry records and the sweeper over HTTP: a failing sync leaves a retry record in the
//! store (visible in the sync status), retries converge once the provider recovers,
//! too many failures mark the account failed until `POST …/resume`, and a retry that
//! is due while the server is down still happens after a restart — the sweeper finds
//! it in the store, no timer survives.

use std::time::Duration;

use acctor::config::Settings;
use serde_json::{json, Value};

use crate::helpers::{spawn_env_with, test_settings, TestEnv, CONVERGE};

const ALWAYS_FAIL: fn() -> Value =
    || json!({ "error_rate": { "transactions_sync": 1.0 }, "error_mix": { "internal": 1 } });
const HEAL: fn() -> Value = || json!({ "error_rate": { "transactions_sync": null } });

/// Polls the sync status until `done` holds (an observable condition, not a sleep).
async fn wait_for(
    env: &TestEnv,
    account: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let status = env.sync_status(account).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The live actor's events after its last `gave_up`, as `kind:detail`.
fn since_gave_up(status: &Value) -> Vec<String> {
    let events = status["actor"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(gave_up) = events.iter().rposition(|e| e["kind"] == "gave_up") else {
        return Vec::new();
    };
    events[gave_up + 1..]
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn retry_settings(settings: &mut Settings) {
    settings.sweeper.tick = Duration::from_millis(20);
    settings.actors.sync_retry_initial = Duration::from_millis(200);
    settings.actors.sync_retry_max = Duration::from_millis(400);
}

#[tokio::test]
async fn a_failed_sync_leaves_a_visible_retry_record_and_converges_once_healed() {
    let env = spawn_env_with(retry_settings).await;
    let (account, item_id) = env.linked_item(20).await;
    env.converge(&account, &item_id).await;

    env.faults(&item_id, ALWAYS_FAIL()).await;
    env.mutate(&item_id, 3, 1, 0).await;
    let status = wait_for(&env, &account, "a retry record", |s| !s["retry"].is_null()).await;
    assert_eq!(status["retry"]["code"], "INTERNAL_SERVER_ERROR", "{status}");
    assert!(status["retry"]["attempt"].as_u64() >= Some(1), "{status}");
    assert!(status["retry"]["due_at"].is_string(), "{status}");
    assert!(status["failed"].is_null(), "{status}");

    env.faults(&item_id, HEAL()).await;
    env.converge(&account, &item_id).await;
    let status = env.sync_status(&account).await;
    assert!(
        status["retry"].is_null(),
        "a committed sync clears it: {status}"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn too_many_failures_mark_the_account_failed_until_resumed() {
    let env = spawn_env_with(|settings| {
        retry_settings(settings);
        settings.actors.sync_retry_initial = Duration::from_millis(10);
        settings.actors.sync_retry_max = Duration::from_millis(20);
        settings.actors.max_sync_attempts = 3;
    })
    .await;
    let (account, item_id) = env.linked_item(20).await;
    env.converge(&account, &item_id).await;

    env.faults(&item_id, ALWAYS_FAIL()).await;
    env.mutate(&item_id, 2, 0, 0).await;
    // The sync task stores the mark; its actor takes note (`gave_up`) when the task
    // reports back. A webhook handled in between would be handled by a still-syncing
    // actor, so wait for the actor's note before sending more.
    let status = wait_for(&env, &account, "the failed mark, noted by the actor", |s| {
        s["state"] == "failed"
            && s["actor"]["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["kind"] == "gave_up"))
    })
    .await;
    assert_eq!(status["failed"]["attempts"], 3, "{status}");
    assert!(status["retry"].is_null(), "no retry once failed: {status}");
    let finished = status["last_sync_finished_at"].clone();

    // More webhooks are kept, but nothing syncs: the provider is not hammered. Proven
    // on what the actor handled, not after a sleep: once its status (answered from the
    // same mailbox) shows the new webhook's request handled after `gave_up` with no
    // sync_started, while it is idle with no timer set (no backoff, no schedule), no
    // later sync can come from that request; the sweeper leaves failed accounts alone.
    let calls_before = env.stats(&item_id).await["sync_calls"]
        .as_u64()
        .expect("sync_calls");
    env.faults(&item_id, HEAL()).await;
    env.mutate(&item_id, 1, 0, 0).await;
    let status = wait_for(&env, &account, "the webhook handled while failed", |s| {
        since_gave_up(s).contains(&"sync_requested:webhook".to_string())
    })
    .await;
    assert_eq!(status["actor"]["state"], "idle", "{status}");
    assert!(status["actor"]["next_retry_at"].is_null(), "{status}");
    assert!(
        !since_gave_up(&status)
            .iter()
            .any(|k| k.starts_with("sync_started")),
        "{status}"
    );
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["last_sync_finished_at"], finished, "{status}");
    assert!(
        status["pending_inbox"].as_u64() >= Some(2),
        "kept: {status}"
    );
    assert!(status["retry"].is_null(), "no timer left: {status}");
    assert_eq!(
        env.stats(&item_id).await["sync_calls"].as_u64(),
        Some(calls_before),
        "no provider call while failed"
    );

    env.post_json(
        &format!("{}/v1/accounts/{account}/resume", env.app_url),
        json!({}),
    )
    .await;
    env.converge(&account, &item_id).await;
    let status = env.sync_status(&account).await;
    assert!(status["failed"].is_null(), "{status}");
    assert_ne!(status["state"], "failed", "{status}");
    env.shutdown().await;
}

#[tokio::test]
async fn a_retry_due_during_a_restart_is_run_by_the_sweeper_afterwards() {
    let env_settings = |settings: &mut Settings| {
        retry_settings(settings);
        // Long enough that the retry is still pending when the server stops.
        settings.actors.sync_retry_initial = Duration::from_secs(2);
        settings.actors.sync_retry_max = Duration::from_secs(2);
    };
    let mut env = spawn_env_with(env_settings).await;
    let (account, item_id) = env.linked_item(20).await;
    env.converge(&account, &item_id).await;
    let syncs_before = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("sync_count");

    // No webhook: nothing is left in the inbox for the restart recovery to re-drive,
    // so only the retry record can bring this change in.
    env.faults(&item_id, ALWAYS_FAIL()).await;
    env.mutate_quietly(&item_id, 4, 0, 0).await;
    env.post_json(
        &format!("{}/v1/accounts/{account}/sync", env.app_url),
        json!({}),
    )
    .await;
    wait_for(&env, &account, "a retry record", |s| !s["retry"].is_null()).await;

    env.stop_app().await;
    env.faults(&item_id, HEAL()).await;
    let mut settings = test_settings(env.data_dir.path(), &env.sandbox_url);
    env_settings(&mut settings);
    env.start_app(settings).await;

    // The record survived, or (with full jitter its delay can be as short as 10 ms)
    // the sweeper already ran it: nothing else could have synced this account.
    let status = env.sync_status(&account).await;
    assert!(
        !status["retry"].is_null() || status["sync_count"].as_u64() > Some(syncs_before),
        "the record survived: {status}"
    );
    assert_eq!(status["pending_inbox"], 0, "{status}");
    wait_for(&env, &account, "the retried sync", |s| {
        s["sync_count"].as_u64() > Some(syncs_before) && s["retry"].is_null()
    })
    .await;
    env.converge(&account, &item_id).await;
    env.shutdown().await;
}
