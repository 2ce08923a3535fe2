//! Stripe end to end: the real server and the sandbox's Stripe on loopback, over HTTP.
//! A linked account backfills every type and equals the sandbox; shuffled,
//! same-second and duplicated events end equal to it; events missed while acctor was
//! down are caught up from the Events API; a backfill cut by 429s and a restart
//! resumes instead of starting over; the request budget keeps acctor under Stripe's
//! limit; and refused events say why.

use std::collections::BTreeMap;
use std::time::Duration;

use acctor::domain::stripe::ObjectType;
use acctor::sandbox::{SandboxAccount, StripeFaultsUpdate};
use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_env_with, TestEnv};

/// How long a test waits for acctor to converge before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

async fn env() -> TestEnv {
    env_with(|_| {}).await
}

async fn env_with(tweak: impl FnOnce(&mut acctor::config::Settings)) -> TestEnv {
    spawn_env_with(|s| {
        // The sandbox answers 429s with Retry-After 0 in these tests; backoffs stay short.
        s.stripe.call_attempts = 50;
        tweak(s);
    })
    .await
}

/// A sandbox Stripe account whose events go to acctor's endpoint for it.
fn stripe_account(env: &TestEnv) -> SandboxAccount {
    let account = env.sandbox.stripe().create_account(None);
    env.sandbox.stripe().set_webhook_url(
        &account.id,
        Some(format!("{}/webhooks/stripe/{}", env.app_url, account.id)),
    );
    account
}

async fn link(env: &TestEnv, account: &SandboxAccount, extra: Value) -> Value {
    let mut body = json!({
        "provider": "stripe",
        "item_id": account.id,
        "access_token": account.api_key,
        "owner_id": format!("owner-{}", account.id),
        "webhook_secrets": [account.webhook_secret],
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    env.post_json(&format!("{}/v1/accounts", env.app_url), body)
        .await
}

async fn report(env: &TestEnv, key: &str) -> Value {
    env.get_json(&format!("{}/v1/accounts/{key}/stripe", env.app_url))
        .await
}

/// Waits until every mirrored type of `key` is visible (its backfill completed).
async fn wait_backfilled(env: &TestEnv, key: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = report(env, key).await;
        let types = report["types"].as_array().expect("types");
        if !types.is_empty() && types.iter().all(|t| t["visible"] == true) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backfill never completed: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The local copy of one type, every page, by id.
async fn local(env: &TestEnv, key: &str, object_type: ObjectType) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/v1/accounts/{key}/objects/{}?limit=1000",
            env.app_url,
            object_type.as_str()
        );
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page = env.get_json(&url).await;
        for object in page["objects"].as_array().expect("objects") {
            all.insert(
                object["id"].as_str().expect("id").to_owned(),
                object.clone(),
            );
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return all,
        }
    }
}

/// The sandbox's objects of one type, by id.
fn remote(env: &TestEnv, account: &str, object_type: ObjectType) -> BTreeMap<String, Value> {
    env.sandbox
        .stripe()
        .objects(account, object_type)
        .into_iter()
        .map(|o| (o["id"].as_str().expect("id").to_owned(), o))
        .collect()
}

/// The types whose local copy differs from the sandbox's.
async fn differing(env: &TestEnv, account: &str) -> Vec<ObjectType> {
    let mut differ = Vec::new();
    for object_type in ObjectType::ALL {
        if local(env, account, object_type).await != remote(env, account, object_type) {
            differ.push(object_type);
        }
    }
    differ
}

/// Waits until the local copy equals the sandbox for every type.
async fn wait_equal(env: &TestEnv, account: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let differ = differing(env, account).await;
        if differ.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never equal to the sandbox: {differ:?} differ; report {:#}",
            report(env, account).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_thousands_of_objects_across_types_equals_the_sandbox() {
    let env = env().await;
    let account = stripe_account(&env);
    for object_type in ObjectType::ALL {
        env.sandbox.stripe().generate(&account.id, object_type, 520);
    }
    let linked = link(&env, &account, json!({})).await;
    assert_eq!(linked["provider"], "stripe");
    assert!(
        linked.get("access_token").is_none(),
        "credentials never come back"
    );
    let report = wait_backfilled(&env, &account.id).await;
    let mut total = 0;
    for object_type in ObjectType::ALL {
        let local = local(&env, &account.id, object_type).await;
        assert_eq!(
            local,
            remote(&env, &account.id, object_type),
            "{object_type}"
        );
        total += local.len();
    }
    assert!(total >= 5_000, "{total} objects");
    let products = report["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["object_type"] == "products")
        .cloned()
        .unwrap();
    assert_eq!(products["held"], 520);
    // Listed once each, in pages of 100 (a window split off while listing ends in a
    // page of its own, so a few more than 6).
    assert_eq!(products["objects"], 520, "each object listed once");
    let pages = products["pages"].as_u64().unwrap();
    assert!((6..=10).contains(&pages), "{pages} pages for 520 objects");
    // One object, with what wrote it.
    let id = remote(&env, &account.id, ObjectType::Customers)
        .into_keys()
        .next()
        .unwrap();
    let one = env
        .get_json(&format!(
            "{}/v1/accounts/{}/objects/customers/{id}",
            env.app_url, account.id
        ))
        .await;
    assert_eq!(one["object"]["id"], id.as_str());
    assert!(
        one.get("event_id").is_none(),
        "written by the backfill's listing"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_same_second_and_duplicated_events_end_equal_to_the_sandbox() {
    let env = env().await;
    let account = stripe_account(&env);
    for object_type in ObjectType::ALL {
        env.sandbox.stripe().generate(&account.id, object_type, 30);
    }
    link(&env, &account, json!({})).await;
    wait_backfilled(&env, &account.id).await;
    let stripe = env.sandbox.stripe().clone();
    stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            webhook_shuffle: Some(true),
            webhook_duplicate_rate: Some(0.3),
            ..StripeFaultsUpdate::default()
        },
    );
    stripe.set_same_second(&account.id, true);
    stripe.hold_webhooks(&account.id, true);
    let changes = stripe.mutate(&account.id, 400);
    assert!(changes > 300, "{changes} changes");
    // All at once, in random order.
    let sent = stripe.flush_webhooks(&account.id, true).await;
    assert!(sent >= changes, "{sent} deliveries for {changes} changes");
    stripe.deliveries_idle().await;
    wait_equal(&env, &account.id).await;
    let report = report(&env, &account.id).await;
    assert!(
        report["refetches"].as_u64().unwrap() > 0,
        "same-second doubts re-fetched: {report:#}"
    );
    assert!(
        report["events_stale"].as_u64().unwrap() > 0,
        "repeats and older events skipped: {report:#}"
    );
    let stats = stripe.stats(&account.id);
    assert_eq!(
        stats.webhooks_failed, 0,
        "every delivery acknowledged: {stats:?}"
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_missed_while_acctor_was_down_are_caught_up_from_the_events_api() {
    let mut env = env().await;
    let account = stripe_account(&env);
    for object_type in [ObjectType::Customers, ObjectType::Invoices] {
        env.sandbox.stripe().generate(&account.id, object_type, 40);
    }
    link(
        &env,
        &account,
        json!({"object_types": ["customers", "invoices"]}),
    )
    .await;
    wait_backfilled(&env, &account.id).await;
    env.stop_app().await;
    // Changes while acctor is down: their deliveries fail for good.
    let stripe = env.sandbox.stripe().clone();
    stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            webhook_attempts: Some(1),
            ..StripeFaultsUpdate::default()
        },
    );
    let mut changed = 0;
    while changed < 30 {
        changed += stripe.mutate(&account.id, 10);
    }
    stripe.deliveries_idle().await;
    assert!(stripe.stats(&account.id).webhooks_failed > 0);
    env.restart_app().await;
    for object_type in [ObjectType::Customers, ObjectType::Invoices] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while local(&env, &account.id, object_type).await != remote(&env, &account.id, object_type)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{object_type} never caught up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let report = report(&env, &account.id).await;
    assert!(report["catch_ups"].as_u64().unwrap() >= 1, "{report:#}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_cut_by_rate_limits_and_a_restart_resumes_where_it_stopped() {
    let mut env = env().await;
    let account = stripe_account(&env);
    env.sandbox
        .stripe()
        .generate(&account.id, ObjectType::Products, 3_000);
    let stripe = env.sandbox.stripe().clone();
    stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            rate_limit_rate: Some(0.3),
            retry_after_secs: Some(0),
            ..StripeFaultsUpdate::default()
        },
    );
    link(&env, &account, json!({"object_types": ["products"]})).await;
    // Stop once a few pages are in, mid-backfill.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = report(&env, &account.id).await;
        let pages = report["types"][0]["pages"].as_u64().unwrap();
        if pages >= 5 {
            assert_eq!(report["types"][0]["visible"], false, "stopped mid-backfill");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.stop_app().await;
    let listed_before = stripe.stats(&account.id).by_endpoint["GET /v1/products"];
    env.restart_app().await;
    let report = wait_backfilled(&env, &account.id).await;
    assert_eq!(
        local(&env, &account.id, ObjectType::Products).await,
        remote(&env, &account.id, ObjectType::Products)
    );
    // Every object listed once: each committed page is new, the restart resumed.
    assert_eq!(
        report["types"][0]["objects"], 3000,
        "each object committed once: {report:#}"
    );
    let pages = report["types"][0]["pages"].as_u64().unwrap();
    let stats = stripe.stats(&account.id);
    let lists = stats.by_endpoint["GET /v1/products"];
    assert!(stats.rate_limited > 0, "{stats:?}");
    // Every list call either got a page that was committed, was refused with a 429, or
    // was in flight when acctor stopped (a round: at most `backfill_parallel` pages
    // fetched twice).
    let parallel = 4;
    assert!(
        lists <= pages + stats.rate_limited + parallel,
        "{lists} list calls for {pages} pages and {} 429s: restarted from the beginning? \
         ({listed_before} before the restart)",
        stats.rate_limited
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_budget_keeps_acctor_under_stripes_rate_limit() {
    let env = env_with(|s| s.stripe.test_rate = 20).await;
    let account = stripe_account(&env);
    let stripe = env.sandbox.stripe().clone();
    // Stripe's test-mode limit, enforced: more than 25 requests in a second are refused.
    stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            rate_limit_per_second: Some(Some(25)),
            ..StripeFaultsUpdate::default()
        },
    );
    for object_type in [ObjectType::Charges, ObjectType::Refunds] {
        stripe.generate(&account.id, object_type, 2_000);
    }
    link(
        &env,
        &account,
        json!({"object_types": ["charges", "refunds"]}),
    )
    .await;
    wait_backfilled(&env, &account.id).await;
    let stats = stripe.stats(&account.id);
    assert!(stats.requests >= 40, "{stats:?}");
    assert_eq!(stats.rate_limited, 0, "never refused: {stats:?}");
    assert!(stats.max_requests_in_one_second <= 25, "{stats:?}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_and_links_say_why() {
    let env = env().await;
    let account = stripe_account(&env);
    link(&env, &account, json!({"object_types": ["products"]})).await;
    let post = |path: String, body: Value, signature: Option<String>| {
        let client = reqwest::Client::new();
        async move {
            let mut request = client.post(path).json(&body);
            if let Some(signature) = signature {
                request = request.header("stripe-signature", signature);
            }
            let response = request.send().await.expect("post");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let event = json!({
        "id": "evt_1", "object": "event", "created": crate::helpers::now_unix(),
        "type": "product.created", "livemode": false, "pending_webhooks": 1,
        "data": {"object": {"id": "prod_x", "object": "product", "created": 1}}
    });
    let own = format!("{}/webhooks/stripe/{}", env.app_url, account.id);
    let (status, body) = post(own.clone(), event.clone(), Some("t=1,v1=00".into())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = post(own, event.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stripe-signature"),
        "{body}"
    );
    let stranger = format!("{}/webhooks/stripe/acct_nobody", env.app_url);
    let (status, body) = post(stranger, event.clone(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_account");
    let shared = format!("{}/webhooks/stripe", env.app_url);
    let (status, body) = post(shared, event, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Connect account"),
        "{body}"
    );

    for (body, field) in [
        (
            json!({"provider": "stripe", "item_id": "acct_1", "access_token": "pk_test_1", "owner_id": "o", "webhook_secrets": ["whsec_abcdefgh"]}),
            "access_token",
        ),
        (
            json!({"provider": "stripe", "item_id": "acct_1", "access_token": "sk_test_1", "owner_id": "o"}),
            "webhook_secrets",
        ),
        (
            json!({"provider": "plaid", "item_id": "i", "access_token": "t", "owner_id": "o", "connect": true}),
            "connect",
        ),
        (
            json!({"provider": "stripe", "item_id": "acct_1", "access_token": "sk_test_1", "owner_id": "o", "webhook_secrets": ["whsec_abcdefgh"], "object_types": ["widgets"]}),
            "object_types[0]",
        ),
    ] {
        let response = env
            .client
            .post(format!("{}/v1/accounts", env.app_url))
            .json(&body)
            .send()
            .await
            .expect("link");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error: Value = response.json().await.expect("json");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{field}: {error}"
        );
    }
    // A type not mirrored is 404, a type still being backfilled is 409.
    let response = env
        .client
        .get(format!(
            "{}/v1/accounts/{}/objects/prices",
            env.app_url, account.id
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_behind_acctors_back_is_found_and_repaired() {
    let env = env_with(|s| s.stripe.drift_check_interval = Duration::from_secs(3600)).await;
    let account = stripe_account(&env);
    let stripe = env.sandbox.stripe().clone();
    let ids = stripe.generate(&account.id, ObjectType::Customers, 50);
    link(&env, &account, json!({"object_types": ["customers"]})).await;
    wait_backfilled(&env, &account.id).await;
    // No events for any of these: only a drift check can see them.
    stripe
        .update_object(
            &account.id,
            ObjectType::Customers,
            &ids[3],
            json!({"name": "Changed quietly"}),
            false,
        )
        .expect("updated");
    assert!(stripe.delete_object(&account.id, ObjectType::Customers, &ids[7], false));
    stripe.create_object(
        &account.id,
        ObjectType::Customers,
        json!({"name": "Born quietly"}),
        false,
    );
    assert_ne!(
        local(&env, &account.id, ObjectType::Customers).await,
        remote(&env, &account.id, ObjectType::Customers)
    );
    // A day later (on acctor's clock) the next sync runs the check.
    env.clock.advance(Duration::from_secs(2 * 3600));
    let response = env
        .client
        .post(format!("{}/v1/accounts/{}/sync", env.app_url, account.id))
        .send()
        .await
        .expect("sync");
    assert!(response.status().is_success(), "{}", response.status());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let drift = loop {
        let report = report(&env, &account.id).await;
        if report["drift"].is_object() {
            break report["drift"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no drift check: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(drift["repaired"]["customers"], 2, "{drift:#}");
    assert_eq!(drift["removed"]["customers"], 1, "{drift:#}");
    assert!(drift["ids"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("customers/{}", ids[7]))));
    assert_eq!(
        local(&env, &account.id, ObjectType::Customers).await,
        remote(&env, &account.id, ObjectType::Customers)
    );
    let metrics = reqwest::get(format!("{}/metrics", env.app_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "acctor_stripe_mirror_total{outcome=\"repaired\",object_type=\"customers\"} 2"
        ),
        "{metrics}"
    );
    env.shutdown().await;
}
