//! Graceful shutdown in process: while acctor drains, webhooks get 503 + Retry-After and
//! /readyz fails, the sync already running commits within `actors.shutdown_grace`, and
//! every webhook acknowledged before the drain is synced after a restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{now_unix, spawn_env_with, sync_webhook_body, test_settings, CONVERGE};

#[tokio::test]
async fn draining_refuses_webhooks_with_503_and_lets_the_running_sync_commit() {
    let mut env = spawn_env_with(|s| {
        s.actors.shutdown_grace = Duration::from_secs(60);
    })
    .await;
    let (item_id, token) = env.create_item(40).await;
    let account = env.link(&item_id, &token, "owner-drain", &[]).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.converge(&account, &item_id).await;

    // A slow sync: every page takes 5 s, so shutdown begins while it runs and it is
    // still running when the drain is checked below, even on a slow machine.
    env.faults(&item_id, json!({ "sync_latency_ms": 5000 }))
        .await;
    env.mutate_quietly(&item_id, 7, 2, 1).await;
    let body = sync_webhook_body(&item_id, json!({ "nonce": "slow" }));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());
    assert_eq!(env.post_webhook(&body, Some(&jwt)).await.status(), 200);
    // Wait until the slow sync is inside the provider call: by then it has claimed the
    // inbox, so the webhooks below stay pending for the next start.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while env.stats(&item_id).await["in_flight_syncs"].as_u64() != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stopping = env.begin_stop();
    // Until the flag is up a webhook may still be accepted (and is then on disk);
    // after it, every one is refused with 503 + Retry-After and a JSON error.
    let mut acknowledged = 0u32;
    let refusal = loop {
        let body = sync_webhook_body(&item_id, json!({ "nonce": acknowledged }));
        let jwt = env.sandbox.sign_webhook(&body, now_unix());
        let response = env.post_webhook(&body, Some(&jwt)).await;
        match response.status().as_u16() {
            200 => acknowledged += 1,
            503 => break response,
            other => panic!("unexpected status {other} while draining"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
    };
    // Still draining: the slow sync has not finished yet, and it is not cut short.
    assert!(
        !stopping.is_finished(),
        "the drain did not wait for the sync"
    );
    let retry_after = refusal
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s > 0), "Retry-After missing");
    let error: Value = refusal.json().await.expect("JSON error body");
    assert_eq!(error["error"]["code"], "shutting_down");
    let ready = reqwest::get(format!("{}/readyz", env.app_url))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.expect("readyz body");
    assert!(
        ready["failed"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("shutdown"))),
        "readyz names the shutdown: {ready}"
    );

    stopping
        .await
        .expect("app task")
        .expect("acctor stops cleanly");

    // The running sync committed before the exit: with every sync now failing, the
    // restarted acctor still holds exactly the sandbox's rows.
    env.faults(
        &item_id,
        json!({ "sync_latency_ms": 0, "error_rate": { "transactions_sync": 1.0 } }),
    )
    .await;
    let settings = test_settings(env.data_dir.path(), &env.sandbox_url);
    env.start_app(settings).await;
    let expected = env.sandbox_transactions(&item_id).await;
    assert_eq!(
        env.local_transactions(&account).await,
        expected,
        "the sync running at shutdown committed"
    );

    // Nothing acknowledged is lost: the webhooks accepted before the refusal are still
    // pending (every sync fails for now, so none can have consumed them), and once the
    // provider answers again they are synced and the inbox empties.
    let status = env.sync_status(&account).await;
    assert_eq!(
        status["pending_inbox"].as_u64(),
        Some(u64::from(acknowledged)),
        "every webhook acknowledged during the drain is still pending: {status}"
    );
    env.faults(
        &item_id,
        json!({ "error_rate": { "transactions_sync": null } }),
    )
    .await;
    env.mutate_quietly(&item_id, 3, 0, 0).await;
    let _ = env
        .post_json(
            &format!("{}/v1/accounts/{account}/sync", env.app_url),
            json!({}),
        )
        .await;
    env.converge(&account, &item_id).await;
    env.shutdown().await;
}
