//! Error-code semantics and incidents over HTTP: ITEM_LOGIN_REQUIRED parks an account
//! (no provider calls, no retries, webhooks still acknowledged and kept), LOGIN_REPAIRED
//! or a relink unparks it and catches up; the attempt limit and quarantine open
//! incidents that resume resolves; the incidents API filters and rejects bad filters.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{now_unix, spawn_env_with, sync_webhook_body, TestEnv, CONVERGE};

/// Polls until `done` holds for the value `read` returns (an observable condition).
async fn wait_until<F, Fut>(what: &str, read: F, done: impl Fn(&Value) -> bool) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}: {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn incidents(env: &TestEnv, query: &str) -> Value {
    env.get_json(&format!("{}/v1/incidents?{query}", env.app_url))
        .await
}

async fn sync_calls(env: &TestEnv, item_id: &str) -> u64 {
    env.stats(item_id).await["sync_calls"]
        .as_u64()
        .expect("sync_calls")
}

async fn plaid(env: &TestEnv, path: &str, body: Value) -> Value {
    let mut body = body;
    body["client_id"] = json!("acctor-demo-client");
    body["secret"] = json!("acctor-demo-secret");
    env.post_json(&format!("{}{path}", env.sandbox_url), body)
        .await
}

/// `POST /v1/accounts` for an item already linked: a relink (update mode) when
/// `owner` owns it.
async fn relink(env: &TestEnv, item_id: &str, token: &str, owner: &str) -> reqwest::Response {
    env.client
        .post(format!("{}/v1/accounts", env.app_url))
        .json(&json!({
            "provider": "plaid", "item_id": item_id, "access_token": token, "owner_id": owner,
        }))
        .send()
        .await
        .expect("relink")
}

async fn park_via_reset_login(env: &TestEnv, account: &str, token: &str) -> Value {
    // Plaid's own Sandbox call: the item needs a login and fires ITEM/ERROR at acctor.
    plaid(
        env,
        "/sandbox/item/reset_login",
        json!({ "access_token": token }),
    )
    .await;
    let status = wait_until(
        "the needs_reauth park",
        || env.sync_status(account),
        |s| s["state"] == "needs_reauth" && s["needs_reauth"]["code"] == "ITEM_LOGIN_REQUIRED",
    )
    .await;
    // The incident is written right after the mark, in its own store transaction.
    open_incident_of(env, account, "needs_reauth").await;
    status
}

/// Waits until the account has exactly one open incident of `kind`, and returns it.
async fn open_incident_of(env: &TestEnv, account: &str, kind: &str) -> Value {
    let query = format!("state=open&kind={kind}&account={account}");
    let open = wait_until(
        &format!("an open {kind} incident"),
        || incidents(env, &query),
        |v| v["incidents"].as_array().is_some_and(|l| l.len() == 1),
    )
    .await;
    open["incidents"][0].clone()
}

/// Waits until the account has no open incident (resolutions follow the commit that
/// lifts their condition, in their own store transaction).
async fn no_open_incidents(env: &TestEnv, account: &str) {
    let query = format!("state=open&account={account}");
    wait_until(
        "every incident resolved",
        || incidents(env, &query),
        |v| v["incidents"] == json!([]),
    )
    .await;
}

/// Waits until incident `id` is resolved, and returns it.
async fn resolved_incident(env: &TestEnv, id: u64) -> Value {
    let url = format!("{}/v1/incidents/{id}", env.app_url);
    wait_until(
        &format!("incident {id} resolved"),
        || env.get_json(&url),
        |v| v["resolved_at"].is_string(),
    )
    .await
}

#[tokio::test]
async fn login_required_parks_without_provider_calls_and_login_repaired_catches_up() {
    let env = spawn_env_with(|settings| {
        // Sweeper passes come fast and re-drive the parked account's inbox: they must
        // not turn into provider calls either.
        settings.sweeper.tick = Duration::from_millis(20);
        settings.sweeper.stale_inbox_after = Duration::from_millis(40);
    })
    .await;
    let (item_id, token) = env.create_item(30).await;
    let account = env
        .link(&item_id, &token, "owner-reauth", &["reauth@example.com"])
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.converge(&account, &item_id).await;

    let status = park_via_reset_login(&env, &account, &token).await;
    assert!(status["retry"].is_null(), "no retry record: {status}");
    // Found by the alias as well.
    let open = incidents(
        &env,
        "state=open&kind=needs_reauth&account=reauth@example.com",
    )
    .await;
    let list = open["incidents"].as_array().expect("incidents");
    assert_eq!(list.len(), 1, "{open}");
    assert_eq!(list[0]["severity"], "critical");
    assert_eq!(list[0]["details"]["code"], "ITEM_LOGIN_REQUIRED");
    let incident_id = list[0]["id"].as_u64().expect("id");

    // Data keeps changing at the bank and webhooks keep coming: all acknowledged.
    let calls_parked = sync_calls(&env, &item_id).await;
    let requests_before = status["actor"]["sync_requests"].as_u64().unwrap_or(0);
    env.mutate(&item_id, 4, 2, 1).await;
    for n in 0..3 {
        let body = sync_webhook_body(&item_id, json!({ "n": n }));
        let jwt = env.sandbox.sign_webhook(&body, now_unix());
        assert_eq!(env.post_webhook(&body, Some(&jwt)).await.status(), 200);
    }
    // Our 4 webhooks reached the actor, and then the sweeper re-drove the stale inbox
    // at least twice more: every one of them was only a store read.
    let status = wait_until(
        "webhooks and sweeper passes reaching the parked actor",
        || env.sync_status(&account),
        |s| s["actor"]["sync_requests"].as_u64() >= Some(requests_before + 6),
    )
    .await;
    assert_eq!(status["state"], "needs_reauth", "{status}");
    assert!(
        status["pending_inbox"].as_u64() >= Some(4),
        "kept: {status}"
    );
    assert!(status["retry"].is_null(), "{status}");
    assert_eq!(
        sync_calls(&env, &item_id).await,
        calls_parked,
        "a parked account never calls the provider"
    );

    // Plaid's Sandbox repair: the item works again and LOGIN_REPAIRED is fired, signed.
    plaid(
        &env,
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_code": "LOGIN_REPAIRED" }),
    )
    .await;
    env.converge(&account, &item_id).await;
    let status = env.sync_status(&account).await;
    assert!(status["needs_reauth"].is_null(), "{status}");
    assert!(sync_calls(&env, &item_id).await > calls_parked);
    resolved_incident(&env, incident_id).await;
    no_open_incidents(&env, &account).await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_random_login_fault_leaves_the_item_needing_a_login_until_login_repaired() {
    let env = spawn_env_with(|_| {}).await;
    let (item_id, token) = env.create_item(10).await;
    let account = env.link(&item_id, &token, "owner-login-fault", &[]).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.converge(&account, &item_id).await;
    env.faults(
        &item_id,
        json!({ "error_rate": { "transactions_sync": 1.0 }, "error_mix": { "login": 1 } }),
    )
    .await;
    env.mutate(&item_id, 2, 0, 0).await;
    wait_until(
        "the needs_reauth park",
        || env.sync_status(&account),
        |s| s["state"] == "needs_reauth" && s["needs_reauth"]["code"] == "ITEM_LOGIN_REQUIRED",
    )
    .await;
    // The fault is off again, but the item is what acctor believes it is: needing a
    // login (a one-off answer on a healthy item would park the account for good).
    env.faults(
        &item_id,
        json!({ "error_rate": { "transactions_sync": null } }),
    )
    .await;
    let item = plaid(&env, "/item/get", json!({ "access_token": token })).await;
    assert_eq!(
        item["item"]["error"]["error_code"], "ITEM_LOGIN_REQUIRED",
        "{item}"
    );

    // The repair the sandbox documents for it: LOGIN_REPAIRED heals the item and acctor.
    plaid(
        &env,
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_code": "LOGIN_REPAIRED" }),
    )
    .await;
    env.converge(&account, &item_id).await;
    let status = env.sync_status(&account).await;
    assert!(status["needs_reauth"].is_null(), "{status}");
    env.shutdown().await;
}

#[tokio::test]
async fn a_relink_with_a_new_token_unparks_and_catches_up() {
    let env = spawn_env_with(|_| {}).await;
    let (item_id, token) = env.create_item(20).await;
    let account = env.link(&item_id, &token, "owner-relink", &[]).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.converge(&account, &item_id).await;
    park_via_reset_login(&env, &account, &token).await;
    env.mutate(&item_id, 3, 0, 0).await;

    // The user went through update mode: the item works again, the app relinks.
    env.faults(&item_id, json!({ "login_required": false }))
        .await;
    let response = relink(&env, &item_id, &token, "owner-relink").await;
    assert_eq!(response.status(), 200, "a relink, not a new link");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["id"], account.as_str(), "same account");
    env.converge(&account, &item_id).await;
    wait_until(
        "the needs_reauth incident resolved",
        || incidents(&env, "state=resolved&kind=needs_reauth"),
        |v| v["incidents"].as_array().map(Vec::len) == Some(1),
    )
    .await;
    no_open_incidents(&env, &account).await;

    // Another owner cannot take the item over by relinking it.
    let response = relink(&env, &item_id, &token, "someone-else").await;
    assert_eq!(response.status(), 409);
    env.shutdown().await;
}

#[tokio::test]
async fn the_attempt_limit_opens_an_incident_that_resume_resolves() {
    let env = spawn_env_with(|settings| {
        settings.sweeper.tick = Duration::from_millis(20);
        settings.actors.sync_retry_initial = Duration::from_millis(10);
        settings.actors.sync_retry_max = Duration::from_millis(20);
        settings.actors.max_sync_attempts = 2;
    })
    .await;
    let (account, item_id) = env.linked_item(10).await;
    env.converge(&account, &item_id).await;
    env.faults(
        &item_id,
        json!({ "error_rate": { "transactions_sync": 1.0 }, "error_mix": { "internal": 1 } }),
    )
    .await;
    env.mutate(&item_id, 2, 0, 0).await;
    let query = format!("state=open&kind=sync_failed&account={account}");
    let open = wait_until(
        "the sync_failed incident",
        || incidents(&env, &query),
        |v| v["incidents"].as_array().is_some_and(|l| l.len() == 1),
    )
    .await;
    let incident = &open["incidents"][0];
    assert_eq!(
        incident["details"]["code"], "INTERNAL_SERVER_ERROR",
        "{incident}"
    );
    assert_eq!(incident["details"]["attempts"], 2, "{incident}");
    assert_eq!(env.sync_status(&account).await["state"], "failed");

    env.faults(
        &item_id,
        json!({ "error_rate": { "transactions_sync": null } }),
    )
    .await;
    env.post_json(
        &format!("{}/v1/accounts/{account}/resume", env.app_url),
        json!({}),
    )
    .await;
    env.converge(&account, &item_id).await;
    no_open_incidents(&env, &account).await;
    let resolved = incidents(&env, "state=resolved&kind=sync_failed").await;
    assert_eq!(resolved["incidents"][0]["id"], incident["id"], "{resolved}");
    env.shutdown().await;
}

#[tokio::test]
async fn incident_filters_page_and_reject_bad_values() {
    let env = spawn_env_with(|_| {}).await;
    // Three parked accounts: three needs_reauth incidents, newest first.
    let mut accounts = Vec::new();
    for n in 0..3 {
        let (item_id, token) = env.create_item(5).await;
        let id = env
            .link(&item_id, &token, &format!("owner-f{n}"), &[])
            .await["id"]
            .as_str()
            .expect("id")
            .to_string();
        env.converge(&id, &item_id).await;
        park_via_reset_login(&env, &id, &token).await;
        accounts.push(id);
    }
    let all = incidents(&env, "kind=needs_reauth").await;
    let ids: Vec<u64> = all["incidents"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let page1 = incidents(&env, "kind=needs_reauth&limit=2").await;
    assert_eq!(page1["incidents"].as_array().map(Vec::len), Some(2));
    let next = page1["next"].as_str().expect("next");
    let page2 = incidents(&env, &format!("kind=needs_reauth&limit=2&after={next}")).await;
    assert_eq!(page2["incidents"][0]["id"], ids[2]);
    assert!(page2["next"].is_null());
    let one = incidents(&env, &format!("account={}", accounts[1])).await;
    assert_eq!(one["incidents"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["incidents"][0]["account_id"], accounts[1].as_str());
    let future = incidents(&env, "since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["incidents"], json!([]));
    assert_eq!(
        incidents(&env, "state=resolved").await["incidents"],
        json!([])
    );
    // No operation has incidents here: an operation filter finds none of the accounts'.
    let by_operation = incidents(&env, "operation_id=op_0123456789abcdef0123456789abcdef").await;
    assert_eq!(by_operation["incidents"], json!([]));

    let account_as_operation = format!("operation_id={}", accounts[0]);
    for (query, field) in [
        ("operation_id=op_nope", "operation_id"),
        (account_as_operation.as_str(), "operation_id"),
        ("state=closed", "state"),
        ("kind=fire", "kind"),
        ("since=yesterday", "since"),
        ("after=abc", "after"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
    ] {
        let response = env
            .client
            .get(format!("{}/v1/incidents?{query}", env.app_url))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.expect("json error");
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .starts_with(field),
            "{query}: {body}"
        );
    }
    let response = env
        .client
        .get(format!("{}/v1/incidents?account=nobody", env.app_url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 404);
    let response = env
        .client
        .get(format!("{}/v1/incidents/999999", env.app_url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 404);
    let response = env
        .client
        .get(format!("{}/v1/incidents/nope", env.app_url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 400);
    env.shutdown().await;
}

async fn fire(env: &TestEnv, token: &str, code: &str) {
    let answer = plaid(
        env,
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_code": code }),
    )
    .await;
    assert_eq!(answer["webhook_fired"], true, "{code}: {answer}");
}

#[tokio::test]
async fn announced_deadlines_open_warnings_that_login_repaired_and_relink_lift() {
    let env = spawn_env_with(|_| {}).await;
    let (item_id, token) = env.create_item(5).await;
    let account = env.link(&item_id, &token, "owner-deadline", &[]).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.converge(&account, &item_id).await;

    // PENDING_EXPIRATION: Plaid's body carries consent_expiration_time, 7 days ahead.
    fire(&env, &token, "PENDING_EXPIRATION").await;
    let status = wait_until(
        "the expiration deadline",
        || env.sync_status(&account),
        |s| s["pending_deadline"]["code"] == "PENDING_EXPIRATION",
    )
    .await;
    let deadline = status["pending_deadline"]["deadline"]
        .as_str()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        .expect("a deadline");
    let ahead = deadline.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::days(6) && ahead <= chrono::Duration::days(7),
        "{status}"
    );
    assert!(
        status["needs_reauth"].is_null(),
        "a warning, not a park: {status}"
    );
    let warning = open_incident_of(&env, &account, "pending_expiration").await;
    assert_eq!(warning["severity"], "warning", "{warning}");
    let open = incidents(&env, &format!("state=open&account={account}")).await;
    assert_eq!(
        open["incidents"].as_array().map(Vec::len),
        Some(1),
        "only the warning: {open}"
    );
    let expiration_incident = warning["id"].as_u64().expect("id");

    // LOGIN_REPAIRED on an account that is not parked still renews the consent.
    fire(&env, &token, "LOGIN_REPAIRED").await;
    wait_until(
        "the deadline cleared by LOGIN_REPAIRED",
        || env.sync_status(&account),
        |s| s["pending_deadline"].is_null(),
    )
    .await;
    resolved_incident(&env, expiration_incident).await;

    // PENDING_DISCONNECT carries a reason; a relink (update mode) lifts it.
    fire(&env, &token, "PENDING_DISCONNECT").await;
    let status = wait_until(
        "the disconnect deadline",
        || env.sync_status(&account),
        |s| s["pending_deadline"]["code"] == "PENDING_DISCONNECT",
    )
    .await;
    assert_eq!(
        status["pending_deadline"]["reason"], "INSTITUTION_TOKEN_EXPIRATION",
        "{status}"
    );
    open_incident_of(&env, &account, "pending_disconnect").await;
    let response = relink(&env, &item_id, &token, "owner-deadline").await;
    assert_eq!(response.status(), 200, "a relink");
    // The relink answers after its writes are durable: no waiting needed.
    let status = env.sync_status(&account).await;
    assert!(status["pending_deadline"].is_null(), "{status}");
    let open = incidents(&env, &format!("state=open&account={account}")).await;
    assert_eq!(open["incidents"], json!([]), "{open}");
    let resolved = incidents(&env, &format!("state=resolved&account={account}")).await;
    assert_eq!(
        resolved["incidents"].as_array().map(Vec::len),
        Some(2),
        "{resolved}"
    );
    env.converge(&account, &item_id).await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_revoked_access_token_stops_retries_at_once_until_a_relink() {
    let env = spawn_env_with(|_| {}).await;
    let (item_id, token) = env.create_item(4).await;
    // The README's own example: a placeholder token the provider has never issued.
    let linked = env
        .link(
            &item_id,
            "access-placeholder",
            "user-42",
            &["ada@example.com"],
        )
        .await;
    let account = linked["id"].as_str().expect("id").to_string();

    // The sync task writes the mark, then the outcome, then the incident, each in its
    // own store call; its actor notes `gave_up` once all are written.
    let status = wait_until(
        "the access_revoked mark, noted by the actor",
        || env.sync_status(&account),
        |s| {
            s["state"] == "access_revoked"
                && s["actor"]["events"]
                    .as_array()
                    .is_some_and(|events| events.iter().any(|e| e["kind"] == "gave_up"))
        },
    )
    .await;
    // Marked at the first failure, with no retry left behind.
    assert_eq!(status["failed"]["cause"], "access_revoked", "{status}");
    assert_eq!(status["failed"]["attempts"], 1, "{status}");
    assert_eq!(status["retry"], Value::Null, "{status}");
    assert_eq!(
        status["last_sync_outcome"]["code"], "INVALID_ACCESS_TOKEN",
        "{status}"
    );
    let action = status["action"].as_str().expect("an action");
    assert!(action.contains("relink"), "{action}");
    // The incident says the same, with the provider's code.
    let incident = open_incident_of(&env, &account, "access_revoked").await;
    assert_eq!(incident["severity"], "critical", "{incident}");
    assert_eq!(
        incident["details"]["code"], "INVALID_ACCESS_TOKEN",
        "{incident}"
    );
    assert_eq!(
        incident["details"]["action"].as_str(),
        Some(action),
        "{incident}"
    );
    // The user linked again: the relink with the real token syncs everything.
    let relinked = relink(&env, &item_id, &token, "user-42").await;
    assert_eq!(relinked.status(), 200);
    let status = wait_until(
        "the relinked account's first commit",
        || env.sync_status(&account),
        |s| s["transactions"] == 4 && s["failed"].is_null(),
    )
    .await;
    assert_eq!(status["action"], Value::Null, "{status}");
    no_open_incidents(&env, &account).await;
    env.shutdown().await;
}
