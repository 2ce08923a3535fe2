//! Webhook ingest: dedup, events before linking, and every way a webhook can be bad.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::{now_unix, spawn_env, sync_webhook_body};

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code)
}

/// Starts a slow sync of `item` (another event) and waits until it has read the inbox
/// (its first page request is inside the sandbox): events arriving from now on stay
/// pending, unread, until the next sync. With [`spawn_occupiable`]'s minimum interval
/// that next sync waits seconds after this one, so they stay unread that long.
async fn occupy_with_a_running_sync(env: &crate::helpers::TestEnv, item: &str) {
    env.faults(item, json!({ "sync_latency_ms": 600 })).await;
    let body = sync_webhook_body(item, json!({ "occupy": true }));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());
    assert_eq!(env.post_webhook(&body, Some(&jwt)).await.status(), 200);
    let deadline = tokio::time::Instant::now() + crate::helpers::CONVERGE;
    while env.stats(item).await["in_flight_syncs"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sync never reached the sandbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// An environment where the sync after [`occupy_with_a_running_sync`]'s waits for the
/// minimum interval (3 s) instead of starting when it ends (600 ms): the tests' repeat
/// deliveries must land before it, and each costs an fsync on a possibly slow disk.
async fn spawn_occupiable() -> crate::helpers::TestEnv {
    crate::helpers::spawn_env_with(|s| {
        s.actors.min_sync_interval = std::time::Duration::from_secs(3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_webhook_twice_is_accepted_once() {
    let env = spawn_occupiable().await;
    let (account, item) = env.linked_item(20).await;
    env.converge(&account, &item).await;
    // While a sync runs, a new event stays pending and unread: its repeat is covered by
    // the sync still to come.
    occupy_with_a_running_sync(&env, &item).await;
    let body = sync_webhook_body(&item, json!({}));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());
    let first: Value = env
        .post_webhook(&body, Some(&jwt))
        .await
        .json()
        .await
        .expect("json");
    let second = env.post_webhook(&body, Some(&jwt)).await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.expect("json");
    assert_eq!(first["status"], "accepted");
    assert_eq!(second["status"], "duplicate");
    env.faults(&item, json!({ "sync_latency_ms": 0 })).await;
    env.converge(&account, &item).await;
    // Once its sync has committed, the same bytes announce new data (Plaid sends
    // identical SYNC_UPDATES_AVAILABLE bodies): accepted again, not dropped.
    let third: Value = env
        .post_webhook(&body, Some(&jwt))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(third["status"], "accepted");
    env.converge(&account, &item).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_from_the_sandbox_are_deduplicated() {
    let env = spawn_occupiable().await;
    let (account, item) = env.linked_item(20).await;
    env.converge(&account, &item).await;
    let before = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("n");
    occupy_with_a_running_sync(&env, &item).await;
    env.faults(&item, json!({ "duplicate_webhooks": 3 })).await;
    env.mutate(&item, 5, 0, 0).await;
    let stats = env.stats(&item).await;
    assert!(stats["webhooks_sent"].as_u64().unwrap_or(0) >= 4, "{stats}");
    env.faults(&item, json!({ "sync_latency_ms": 0 })).await;
    env.converge(&account, &item).await;
    // The running sync, then one for the four deliveries of one event.
    let after = env.sync_status(&account).await["sync_count"]
        .as_u64()
        .expect("n");
    assert_eq!(
        after - before,
        2,
        "four deliveries of one event, {} syncs",
        after - before
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_before_linking_is_kept_and_delivered_after() {
    let env = spawn_env().await;
    let (item, token) = env.create_item(40).await;
    let body = sync_webhook_body(&item, json!({}));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());
    let response = env.post_webhook(&body, Some(&jwt)).await;
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.expect("json");
    assert_eq!(ack["status"], "accepted");
    assert_eq!(ack["routed"], false);
    assert_eq!(env.inbox_depth().await, 1, "kept on disk while unlinked");

    let account = env.link(&item, &token, "owner-early", &[]).await;
    let account = account["id"].as_str().expect("id").to_string();
    env.converge(&account, &item).await;
    assert_eq!(env.inbox_depth().await, 0, "consumed by the first sync");
    env.shutdown().await;
}

/// Re-encodes a JWT with a different header, keeping claims and signature.
fn with_header(jwt: &str, header: Value) -> String {
    let mut parts = jwt.split('.');
    let _ = parts.next();
    let claims = parts.next().expect("claims");
    let signature = parts.next().expect("signature");
    format!(
        "{}.{claims}.{signature}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header"))
    )
}

fn header_of(jwt: &str) -> Value {
    let first = jwt.split('.').next().expect("header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(first).expect("b64")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhooks_are_rejected_with_json_errors_and_nothing_is_written() {
    let env = spawn_env().await;
    let (account, item) = env.linked_item(10).await;
    env.converge(&account, &item).await;
    let body = sync_webhook_body(&item, json!({}));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());

    // No signature.
    assert_eq!(
        error_code(env.post_webhook(&body, None).await).await,
        (401, "invalid_signature".into())
    );
    // Garbage signature.
    assert_eq!(
        error_code(env.post_webhook(&body, Some("not.a.jwt")).await).await,
        (401, "invalid_signature".into())
    );
    // Wrong algorithm, same key id.
    let mut header = header_of(&jwt);
    header["alg"] = json!("HS256");
    assert_eq!(
        error_code(
            env.post_webhook(&body, Some(&with_header(&jwt, header.clone())))
                .await
        )
        .await,
        (401, "invalid_signature".into())
    );
    header["alg"] = json!("none");
    assert_eq!(
        error_code(
            env.post_webhook(&body, Some(&with_header(&jwt, header)))
                .await
        )
        .await,
        (401, "invalid_signature".into())
    );
    // Stale iat (10 minutes old), correctly signed.
    let stale = env.sandbox.sign_webhook(&body, now_unix() - 600);
    assert_eq!(
        error_code(env.post_webhook(&body, Some(&stale)).await).await,
        (401, "invalid_signature".into())
    );
    // Tampered body under a valid signature.
    let tampered = sync_webhook_body(&item, json!({ "environment": "production" }));
    assert_eq!(
        error_code(env.post_webhook(&tampered, Some(&jwt)).await).await,
        (401, "invalid_signature".into())
    );
    // Oversized body.
    let huge = vec![b' '; 70 * 1024];
    assert_eq!(
        error_code(env.post_webhook(&huge, Some(&jwt)).await).await,
        (413, "payload_too_large".into())
    );
    // Malformed JSON, correctly signed.
    let malformed = b"{\"webhook_type\": \"TRANSACTIONS\",".to_vec();
    let signed = env.sandbox.sign_webhook(&malformed, now_unix());
    assert_eq!(
        error_code(env.post_webhook(&malformed, Some(&signed)).await).await,
        (400, "malformed_webhook".into())
    );
    // Valid JSON without an item id, correctly signed.
    let incomplete = serde_json::to_vec(&json!({ "webhook_type": "TRANSACTIONS" })).expect("json");
    let signed = env.sandbox.sign_webhook(&incomplete, now_unix());
    assert_eq!(
        error_code(env.post_webhook(&incomplete, Some(&signed)).await).await,
        (400, "malformed_webhook".into())
    );
    // Unknown provider.
    let response = env
        .client
        .post(format!("{}/webhooks/nobank", env.app_url))
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(error_code(response).await, (404, "not_found".into()));

    assert_eq!(env.inbox_depth().await, 0, "nothing was written");
    // And the valid one is still accepted (nothing above poisoned the dedup table).
    let ok: Value = env
        .post_webhook(&body, Some(&jwt))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(ok["status"], "accepted");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_webhook_during_a_sync_that_already_read_its_data_is_not_lost() {
    let env = spawn_env().await;
    let (account, item) = env.linked_item(20).await;
    env.converge(&account, &item).await;
    // The sync's page is computed, then the answer is held back: data that changes
    // meanwhile is not in it.
    env.faults(&item, json!({ "sync_latency_after_ms": 800 }))
        .await;
    let body = sync_webhook_body(&item, json!({}));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());
    let first: Value = env
        .post_webhook(&body, Some(&jwt))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["status"], "accepted");
    // Wait until that sync's page request is inside the sandbox (its page is computed
    // before the held-back answer), so the page reflects the data before the change.
    let deadline = tokio::time::Instant::now() + crate::helpers::CONVERGE;
    while env.stats(&item).await["in_flight_syncs"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sync never reached the sandbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    env.mutate_quietly(&item, 3, 1, 1).await;
    // Plaid's next SYNC_UPDATES_AVAILABLE is byte-identical. The running sync has read
    // the first event and holds older data, so this one is a new event, kept on disk
    // (acknowledged as a duplicate it would live only in memory until the next sync).
    let second: Value = env
        .post_webhook(&body, Some(&jwt))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(second["status"], "accepted");
    env.faults(&item, json!({ "sync_latency_after_ms": 0 }))
        .await;
    env.converge(&account, &item).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_refuses_webhooks_with_429_and_retry_after() {
    let env = crate::helpers::spawn_env_with(|s| s.server.max_inbox_depth = 2).await;
    // Events for an item not linked yet stay pending: they fill the inbox.
    let (item, _token) = env.create_item(5).await;
    for n in 0..2 {
        let body = sync_webhook_body(&item, json!({ "n": n }));
        let jwt = env.sandbox.sign_webhook(&body, now_unix());
        assert_eq!(env.post_webhook(&body, Some(&jwt)).await.status(), 200);
    }
    let body = sync_webhook_body(&item, json!({ "n": 2 }));
    let jwt = env.sandbox.sign_webhook(&body, now_unix());
    let response = env.post_webhook(&body, Some(&jwt)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    let (_, code) = error_code(response).await;
    assert_eq!(code, "inbox_full");
    assert_eq!(
        env.inbox_depth().await,
        2,
        "the refused event was not written"
    );
    env.shutdown().await;
}
