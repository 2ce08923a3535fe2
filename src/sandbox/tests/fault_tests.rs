//! HTTP tests of the random faults: Plaid's exact error objects, seeded rates that
//! replay, timeouts that do not block other items, global settings with item
//! overrides, and webhooks dropped, duplicated and reordered as a receiver sees them.

use std::time::Duration;

use super::*;

fn webhook_code(body: &Bytes) -> String {
    let value: Value = serde_json::from_slice(body).unwrap();
    value["webhook_code"].as_str().unwrap().to_string()
}

async fn call(bank: &Bank, endpoint: &str, token: &str) -> (u16, Value) {
    let body = match endpoint {
        "transactions_sync" => json!({"access_token": token, "cursor": ""}),
        "transactions_get" => json!({
            "access_token": token, "start_date": "2000-01-01", "end_date": "2100-01-01"
        }),
        _ => json!({"access_token": token}),
    };
    let path = match endpoint {
        "transactions_sync" => "/transactions/sync",
        "transactions_get" => "/transactions/get",
        _ => "/item/get",
    };
    bank.plaid(path, body).await
}

#[tokio::test]
async fn error_rate_one_answers_plaids_exact_error_for_each_kind_and_endpoint() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(3, None).await;
    let cases = [
        ("internal", 500, "API_ERROR", "INTERNAL_SERVER_ERROR"),
        ("login", 400, "ITEM_ERROR", "ITEM_LOGIN_REQUIRED"),
    ];
    let limits = [
        ("transactions_sync", "TRANSACTIONS_SYNC_LIMIT"),
        ("transactions_get", "TRANSACTIONS_LIMIT"),
        ("item_get", "ITEM_GET_LIMIT"),
    ];
    for (endpoint, limit_code) in limits {
        bank.faults(&item_id, json!({"error_rate": {endpoint: 1.0}}))
            .await;
        let rate_limit = ("rate_limit", 429, "RATE_LIMIT_EXCEEDED", limit_code);
        for (kind, status, error_type, code) in cases.into_iter().chain([rate_limit]) {
            bank.faults(&item_id, json!({"error_mix": {kind: 1.0}}))
                .await;
            let (got, body) = call(&bank, endpoint, &token).await;
            assert_plaid_error(got, &body, status, error_type, code);
            let section = match error_type {
                "API_ERROR" => "api",
                "ITEM_ERROR" => "item",
                _ => "rate-limit-exceeded",
            };
            assert_eq!(
                body["documentation_url"],
                format!(
                    "https://plaid.com/docs/errors/{section}/#{}",
                    code.to_lowercase()
                ),
                "{body}"
            );
            assert_eq!(body["causes"], json!([]), "{body}");
            assert_eq!(body["display_message"].is_null(), kind != "login", "{body}");
            if kind == "login" {
                // The login fault is sticky (see the test below): repair it as Plaid's
                // update mode would, so the next kinds and the cleared override answer
                // on a healthy item.
                let (status, _) = bank
                    .plaid(
                        "/sandbox/item/fire_webhook",
                        json!({"access_token": token, "webhook_code": "LOGIN_REPAIRED"}),
                    )
                    .await;
                assert_eq!(status, 200);
            }
        }
        bank.faults(&item_id, json!({"error_rate": {endpoint: null}}))
            .await;
        let (status, body) = call(&bank, endpoint, &token).await;
        assert_eq!(status, 200, "cleared override answers normally: {body}");
    }
    let stats = bank.stats(&item_id).await;
    assert_eq!(stats.injected_internal_errors, 3);
    assert_eq!(stats.injected_login_errors, 3);
    assert_eq!(stats.injected_rate_limit_errors, 3);
    assert_eq!(stats.injected_timeouts, 0);
    let (_, item) = bank
        .plaid("/item/get", json!({"access_token": token}))
        .await;
    assert!(item["item"]["error"].is_null(), "repaired: {item}");
}

#[tokio::test]
async fn a_login_fault_is_sticky_fires_item_error_once_and_login_repaired_heals_it() {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (item_id, token) = bank.create_item(5, Some(&hook.url)).await;
    bank.faults(
        &item_id,
        json!({"error_rate": {"transactions_sync": 1.0}, "error_mix": {"login": 1.0}}),
    )
    .await;
    let (status, body) = bank.sync(&token, "", 100).await;
    assert_plaid_error(status, &body, 400, "ITEM_ERROR", wire::ITEM_LOGIN_REQUIRED);
    // Delivered before the faulted call answered, as reset_login does.
    let received = hook.drain();
    assert_eq!(received.len(), 1, "one ITEM/ERROR webhook");
    let webhook: Value = serde_json::from_slice(&received[0].1).unwrap();
    assert_eq!(
        (
            webhook["webhook_type"].as_str(),
            webhook["webhook_code"].as_str()
        ),
        (Some("ITEM"), Some("ERROR"))
    );
    assert_eq!(webhook["item_id"], item_id);
    assert_eq!(webhook["error"]["error_code"], wire::ITEM_LOGIN_REQUIRED);
    // A second draw while the item is already in the state does not announce it again.
    assert_eq!(bank.sync(&token, "", 100).await.0, 400);
    assert!(hook.drain().is_empty(), "no second ITEM/ERROR");

    // Turning the fault off does not heal the item: the error is the item's state now.
    bank.faults(&item_id, json!({"error_rate": {"transactions_sync": null}}))
        .await;
    let (status, body) = bank.sync(&token, "", 100).await;
    assert_plaid_error(status, &body, 400, "ITEM_ERROR", wire::ITEM_LOGIN_REQUIRED);
    let (_, item) = bank
        .plaid("/item/get", json!({"access_token": token}))
        .await;
    assert_eq!(
        item["item"]["error"]["error_code"],
        wire::ITEM_LOGIN_REQUIRED
    );
    let (_, faults) = bank
        .admin_get(&format!("/admin/items/{item_id}/faults"))
        .await;
    assert_eq!(faults["login_required"], true, "{faults}");
    assert_eq!(bank.stats(&item_id).await.injected_login_errors, 2);

    // Plaid's Sandbox repair: LOGIN_REPAIRED clears the state and says so.
    let (status, body) = bank
        .plaid(
            "/sandbox/item/fire_webhook",
            json!({"access_token": token, "webhook_code": "LOGIN_REPAIRED"}),
        )
        .await;
    assert_eq!((status, body["webhook_fired"].as_bool()), (200, Some(true)));
    let received = hook.drain();
    assert_eq!(received.len(), 1);
    assert_eq!(webhook_code(&received[0].1), "LOGIN_REPAIRED");
    assert_eq!(bank.sync(&token, "", 100).await.0, 200);
    let (_, item) = bank
        .plaid("/item/get", json!({"access_token": token}))
        .await;
    assert!(item["item"]["error"].is_null(), "{item}");
}

/// The statuses of 200 `/item/get` calls at a 0.3 error rate.
async fn statuses_at_rate_0_3() -> (Vec<u16>, ItemStatsSnapshot) {
    let bank = start().await;
    let (item_id, token) = bank.create_item(1, None).await;
    bank.faults(
        &item_id,
        json!({"error_rate": {"item_get": 0.3}, "error_mix": {"internal": 1, "rate_limit": 1}}),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..200 {
        statuses.push(call(&bank, "item_get", &token).await.0);
    }
    (statuses, bank.stats(&item_id).await)
}

#[tokio::test]
async fn a_seeded_rate_is_in_band_and_replays_identically_under_the_same_seed() {
    let (first, stats) = statuses_at_rate_0_3().await;
    let (second, _) = statuses_at_rate_0_3().await;
    let errors = first.iter().filter(|s| **s != 200).count() as u64;
    // Binomial(200, 0.3): mean 60, sd 6.5; this band is over 3 sd wide each side.
    assert!((35..=85).contains(&errors), "{errors} errors");
    assert_eq!(
        errors,
        stats.injected_internal_errors + stats.injected_rate_limit_errors
    );
    assert!(stats.injected_internal_errors > 0 && stats.injected_rate_limit_errors > 0);
    assert!(first.iter().all(|s| [200, 429, 500].contains(s)));
    assert_eq!(first, second, "same seed, same calls: same faults");
}

#[tokio::test]
async fn a_timeout_never_answers_while_other_items_still_do() {
    let bank = start().await;
    let (stuck_id, stuck) = bank.create_item(3, None).await;
    let (_, healthy) = bank.create_item(3, None).await;
    bank.faults(
        &stuck_id,
        json!({"error_rate": {"transactions_sync": 1.0}, "error_mix": {"timeout": 1.0}}),
    )
    .await;
    // Patient enough that the call surely reaches the handler on a slow machine; the
    // held call would answer only after an hour.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let body = json!({
        "client_id": CLIENT_ID, "secret": SECRET, "access_token": stuck, "cursor": ""
    });
    let timed_out = impatient
        .post(bank.url("/transactions/sync"))
        .json(&body)
        .send();
    let other = bank.sync(&healthy, "", 10);
    let (timed_out, (status, page)) = tokio::join!(timed_out, other);
    let error = timed_out.expect_err("the held call must not answer");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["added"].as_array().unwrap().len(), 3);
    let stats = bank.stats(&stuck_id).await;
    assert_eq!(stats.injected_timeouts, 1);
    assert_eq!(stats.sync_calls, 1);
}

#[tokio::test]
async fn global_faults_apply_to_every_item_and_an_item_override_wins() {
    let bank = start().await;
    let (a_id, a) = bank.create_item(1, None).await;
    let (status, global) = bank
        .admin_post(
            "/admin/faults",
            json!({"error_rate": {"item_get": 1.0}, "error_mix": {"rate_limit": 1.0}}),
        )
        .await;
    assert_eq!(status, 200, "{global}");
    let (_, read_back) = bank.admin_get("/admin/faults").await;
    assert_eq!(read_back, global);
    assert_eq!(read_back["error_rate"]["item_get"], 1.0);
    // Items created before and after the global setting both get it.
    let (b_id, b) = bank.create_item(1, None).await;
    for token in [&a, &b] {
        let (status, body) = call(&bank, "item_get", token).await;
        assert_plaid_error(status, &body, 429, "RATE_LIMIT_EXCEEDED", "ITEM_GET_LIMIT");
    }
    // An item's own rate wins over the global one, and only for that item.
    bank.faults(&b_id, json!({"error_rate": {"item_get": 0.0}}))
        .await;
    assert_eq!(call(&bank, "item_get", &b).await.0, 200);
    assert_eq!(call(&bank, "item_get", &a).await.0, 429);
    // An item's mix replaces the global mix; the global rate still applies.
    bank.faults(&a_id, json!({"error_mix": {"internal": 1.0}}))
        .await;
    assert_eq!(call(&bank, "item_get", &a).await.0, 500);
    // Unrelated endpoints are untouched.
    assert_eq!(call(&bank, "transactions_get", &a).await.0, 200);
    // Clearing the global rate heals the items that inherit it.
    bank.admin_post("/admin/faults", json!({"error_rate": {"item_get": null}}))
        .await;
    assert_eq!(call(&bank, "item_get", &a).await.0, 200);
    assert_eq!(bank.stats(&a_id).await.injected_rate_limit_errors, 2);
    assert_eq!(bank.stats(&b_id).await.injected_rate_limit_errors, 1);
}

#[tokio::test]
async fn bad_fault_input_is_a_400_json_error_and_changes_nothing() {
    let bank = start().await;
    let (item_id, _) = bank.create_item(1, None).await;
    let item_path = format!("/admin/items/{item_id}/faults");
    let bad = [
        json!({"error_rate": {"item_get": 1.5}}),
        json!({"error_rate": {"item_get": -0.1}}),
        json!({"webhook_drop_rate": 2}),
        json!({"webhook_duplicate_rate": -1}),
        json!({"error_rate": {"accounts_get": 0.5}}),
        json!({"error_mix": {"explode": 1.0}}),
        json!({"error_mix": {"internal": -1.0}}),
        json!({"webhook_reorder": {"batch": 1, "hold_ms": 10}}),
        json!({"webhook_reorder": {"batch": 3}}),
        json!({"error_rates": {"item_get": 0.5}}),
    ];
    for path in [item_path.as_str(), "/admin/faults"] {
        for body in &bad {
            let (status, answer) = bank.admin_post(path, body.clone()).await;
            assert_eq!(status, 400, "{path} {body} -> {answer}");
            assert!(answer["error"]["code"].is_string(), "{answer}");
            assert!(answer["error"]["message"].is_string(), "{answer}");
        }
    }
    let (_, global) = bank.admin_get("/admin/faults").await;
    assert_eq!(
        serde_json::from_value::<RandomFaults>(global).unwrap(),
        RandomFaults::default()
    );
    let (_, faults) = bank.admin_get(&item_path).await;
    let faults: Faults = serde_json::from_value(faults).unwrap();
    assert_eq!(faults, Faults::default());
}

#[test]
fn fault_snapshots_saved_before_random_faults_still_load() {
    let old = json!({
        "mutation_during_pagination": 1, "reject_cursor": 0, "duplicate_webhooks": 2,
        "sync_latency_ms": 5, "login_required": false
    });
    let faults: Faults = serde_json::from_value(old).unwrap();
    assert_eq!(faults.duplicate_webhooks, 2);
    assert_eq!(faults.random, RandomFaults::default());
    let mut with_random = faults.clone();
    with_random.random.error_rate.insert(Endpoint::ItemGet, 0.5);
    with_random.random.webhook_reorder = Some(Reorder {
        batch: 3,
        hold_ms: 7,
    });
    let text = serde_json::to_string(&with_random).unwrap();
    assert_eq!(serde_json::from_str::<Faults>(&text).unwrap(), with_random);
}

#[tokio::test]
async fn dropped_and_duplicated_webhooks_are_counted_and_seen_by_the_receiver() {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (item_id, _) = bank.create_item(1, Some(&hook.url)).await;
    let path = format!("/admin/items/{item_id}/webhook");
    let fire = || bank.admin_post(&path, json!({}));
    bank.faults(&item_id, json!({"webhook_drop_rate": 1.0}))
        .await;
    for _ in 0..3 {
        let (status, body) = fire().await;
        assert_eq!(status, 200);
        assert!(body["webhook_status"].is_null(), "{body}");
    }
    assert!(hook.drain().is_empty(), "dropped webhooks never arrive");
    bank.faults(
        &item_id,
        json!({"webhook_drop_rate": null, "webhook_duplicate_rate": 1.0}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(fire().await.1["webhook_status"], 200);
    }
    let received = hook.drain();
    assert_eq!(received.len(), 4, "each webhook arrives twice");
    assert!(received.iter().all(|(_, b)| b == &received[0].1));
    let stats = bank.stats(&item_id).await;
    assert_eq!(stats.webhooks_dropped, 3);
    assert_eq!(stats.webhooks_duplicated, 2);
    assert_eq!(stats.webhooks_sent, 4);
}

const CODES: [&str; 6] = [
    "SYNC_UPDATES_AVAILABLE",
    "DEFAULT_UPDATE",
    "INITIAL_UPDATE",
    "HISTORICAL_UPDATE",
    "TRANSACTIONS_REMOVED",
    "NEW_ACCOUNTS_AVAILABLE",
];

/// Fires the six codes with a reorder batch of six; the codes in arrival order.
async fn reordered_arrivals() -> Vec<String> {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (item_id, _) = bank.create_item(1, Some(&hook.url)).await;
    bank.faults(
        &item_id,
        json!({"webhook_reorder": {"batch": 6, "hold_ms": 600_000}}),
    )
    .await;
    for (i, code) in CODES.iter().enumerate() {
        let (status, _) = bank
            .admin_post(
                &format!("/admin/items/{item_id}/webhook"),
                json!({"webhook_code": code}),
            )
            .await;
        assert_eq!(status, 200);
        if i < CODES.len() - 1 {
            assert!(hook.drain().is_empty(), "held until the batch is full");
        }
    }
    let arrived: Vec<String> = hook.drain().iter().map(|(_, b)| webhook_code(b)).collect();
    let stats = bank.stats(&item_id).await;
    assert_eq!(stats.webhooks_reordered, 6);
    assert_eq!(stats.webhooks_sent, 6);
    arrived
}

#[tokio::test]
async fn reordered_webhooks_arrive_as_a_seeded_permutation() {
    let arrived = reordered_arrivals().await;
    let mut sorted_arrived = arrived.clone();
    sorted_arrived.sort();
    let mut fired: Vec<String> = CODES.iter().map(|c| c.to_string()).collect();
    fired.sort();
    assert_eq!(sorted_arrived, fired, "every webhook arrives exactly once");
    assert_ne!(arrived, CODES.to_vec(), "seed 42 shuffles these six");
    assert_eq!(arrived, reordered_arrivals().await, "same seed, same order");
}

#[tokio::test]
async fn held_webhooks_are_released_after_the_hold_time_when_no_batch_fills() {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (item_id, _) = bank.create_item(1, Some(&hook.url)).await;
    bank.admin_post(
        "/admin/faults",
        json!({"webhook_reorder": {"batch": 100, "hold_ms": 20}}),
    )
    .await;
    for code in &CODES[..2] {
        bank.admin_post(
            &format!("/admin/items/{item_id}/webhook"),
            json!({"webhook_code": code}),
        )
        .await;
    }
    let mut codes = Vec::new();
    for _ in 0..2 {
        let (_, body) = tokio::time::timeout(Duration::from_secs(10), hook.rx.recv())
            .await
            .expect("released by the timer")
            .unwrap();
        codes.push(webhook_code(&body));
    }
    codes.sort();
    assert_eq!(codes, ["DEFAULT_UPDATE", "SYNC_UPDATES_AVAILABLE"]);
    assert_eq!(bank.stats(&item_id).await.webhooks_reordered, 2);
}
