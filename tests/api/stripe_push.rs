//! Local catalogue changes pushed to Stripe, end to end against the sandbox's Stripe:
//! creates, updates and archives pushed through a 30% error rate (and answers lost
//! after Stripe did the work) land exactly once; a change to an object that changed at
//! Stripe behind acctor's back is held as a conflict, not overwritten, and resolved by
//! a retry against Stripe's version or a discard; every change is in the object's
//! audit trail; bad requests say what is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use acctor::domain::stripe::ObjectType;
use acctor::sandbox::{SandboxAccount, StripeFaultsUpdate};
use serde_json::{json, Value};

use crate::helpers::{spawn_env_with, TestEnv};

/// How long a test waits for acctor to converge before it fails.
const PATIENCE: Duration = Duration::from_secs(90);

async fn env() -> TestEnv {
    spawn_env_with(|s| {
        s.stripe.call_attempts = 50;
    })
    .await
}

/// A linked sandbox account with `products` products (and one price each), backfilled.
async fn linked(env: &TestEnv, products: usize) -> SandboxAccount {
    let stripe = env.sandbox.stripe();
    let account = stripe.create_account(None);
    stripe.set_webhook_url(
        &account.id,
        Some(format!("{}/webhooks/stripe/{}", env.app_url, account.id)),
    );
    for n in 0..products {
        let product = stripe.create_object(
            &account.id,
            ObjectType::Products,
            json!({"name": format!("Product {n}")}),
            false,
        );
        stripe.create_object(
            &account.id,
            ObjectType::Prices,
            json!({"product": product["id"], "unit_amount": 100 * (n + 1), "currency": "usd"}),
            false,
        );
    }
    env.post_json(
        &format!("{}/v1/accounts", env.app_url),
        json!({
            "provider": "stripe",
            "item_id": account.id,
            "access_token": account.api_key,
            "owner_id": format!("owner-{}", account.id),
            "webhook_secrets": [account.webhook_secret],
            "object_types": ["products", "prices"],
        }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = report(env, &account.id).await;
        let types = report["types"].as_array().expect("types");
        if types.iter().all(|t| t["visible"] == true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backfill: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    account
}

async fn report(env: &TestEnv, key: &str) -> Value {
    env.get_json(&format!("{}/v1/accounts/{key}/stripe", env.app_url))
        .await
}

/// Sends a JSON request; the status and the body.
async fn send(env: &TestEnv, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", env.app_url);
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = env.client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Queues a change; its id.
async fn queue(env: &TestEnv, method: &str, path: &str, body: Option<Value>) -> String {
    let (status, answer) = send(env, method, path, body).await;
    assert_eq!(status, 202, "{method} {path}: {answer:#}");
    assert_eq!(answer["status"], "pending", "{answer:#}");
    answer["id"].as_str().expect("id").to_owned()
}

/// Waits until no change of the account is pending; the queue's answer.
async fn wait_settled(env: &TestEnv, key: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let queue = env
            .get_json(&format!(
                "{}/v1/stripe/{key}/pushes?limit=1000",
                env.app_url
            ))
            .await;
        // The page and the backlog are two reads: both must say nothing is pending.
        let listed_pending = queue["pushes"]
            .as_array()
            .expect("pushes")
            .iter()
            .any(|p| p["status"] == "pending");
        if queue["backlog"]["pending"] == 0 && !listed_pending {
            return queue;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "changes never settled: {:#}",
            queue["backlog"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The local copy of one object.
async fn local(env: &TestEnv, key: &str, object_type: &str, id: &str) -> Value {
    env.get_json(&format!(
        "{}/v1/accounts/{key}/objects/{object_type}/{id}",
        env.app_url
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_through_a_thirty_percent_error_rate_land_exactly_once() {
    let env = env().await;
    let account = linked(&env, 6).await;
    let stripe = env.sandbox.stripe().clone();
    let products = stripe.objects(&account.id, ObjectType::Products);
    let prices = stripe.objects(&account.id, ObjectType::Prices);
    stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            error_rate: Some(0.3),
            write_answer_lost_rate: Some(0.3),
            ..StripeFaultsUpdate::default()
        },
    );
    let key = &account.id;
    let mut creates = Vec::new();
    for n in 0..15 {
        creates.push(
            queue(
                &env,
                "POST",
                &format!("/v1/stripe/{key}/products"),
                Some(json!({"name": format!("New {n}"), "metadata": {"batch": "b1"}})),
            )
            .await,
        );
    }
    for (n, product) in products.iter().take(4).enumerate() {
        let id = product["id"].as_str().expect("id");
        creates.push(
            queue(
                &env,
                "POST",
                &format!("/v1/stripe/{key}/prices"),
                Some(json!({
                    "product": id, "currency": "eur", "unit_amount": 990 + n,
                    "recurring": {"interval": "month"}, "nickname": format!("Monthly {n}"),
                })),
            )
            .await,
        );
    }
    // Two changes of one product in a row: the second is based on the first's answer,
    // not held as a conflict with it.
    let first = products[0]["id"].as_str().expect("id");
    for name in ["Renamed once", "Renamed twice"] {
        queue(
            &env,
            "PATCH",
            &format!("/v1/stripe/{key}/products/{first}"),
            Some(json!({"name": name})),
        )
        .await;
    }
    for product in &products[1..4] {
        let id = product["id"].as_str().expect("id");
        queue(
            &env,
            "PATCH",
            &format!("/v1/stripe/{key}/products/{id}"),
            Some(json!({"description": "Updated", "metadata": {"tier": "gold"}})),
        )
        .await;
    }
    let archived = products[5]["id"].as_str().expect("id");
    queue(
        &env,
        "POST",
        &format!("/v1/stripe/{key}/products/{archived}/archive"),
        None,
    )
    .await;
    let price = prices[0]["id"].as_str().expect("id");
    queue(
        &env,
        "PATCH",
        &format!("/v1/stripe/{key}/prices/{price}"),
        Some(json!({"nickname": "Starter", "lookup_key": "starter"})),
    )
    .await;

    let queue = wait_settled(&env, key).await;
    let pushes = queue["pushes"].as_array().expect("pushes");
    assert_eq!(pushes.len(), 15 + 4 + 2 + 3 + 1 + 1);
    for push in pushes {
        assert_eq!(push["status"], "pushed", "every change pushed: {push:#}");
    }
    assert_eq!(queue["backlog"]["pushed"], pushes.len());
    // Exactly once: each create's key created one object, and no create happened
    // without acctor's key.
    let stats = stripe.stats(&account.id);
    assert!(
        stats.errors_injected > 0 && stats.answers_lost > 0,
        "faults happened: {stats:?}"
    );
    let by_id: BTreeMap<&str, &Value> = pushes
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p))
        .collect();
    for id in &creates {
        let push = by_id[id.as_str()];
        let key = push["idempotency_key"].as_str().expect("key");
        assert_eq!(
            stats.creates_by_idempotency_key.get(key),
            Some(&1),
            "{id} created once: {:?}",
            stats.creates_by_idempotency_key
        );
    }
    assert_eq!(stats.creates_by_idempotency_key.len(), creates.len());
    let named = stripe
        .objects(&account.id, ObjectType::Products)
        .into_iter()
        .filter(|p| p["metadata"]["batch"] == "b1")
        .count();
    assert_eq!(named, 15, "one product per create");

    // Stripe has what was pushed, and so does the local copy.
    let renamed = stripe
        .object(&account.id, ObjectType::Products, first)
        .expect("product");
    assert_eq!(renamed["name"], "Renamed twice");
    assert_eq!(
        stripe
            .object(&account.id, ObjectType::Products, archived)
            .expect("archived")["active"],
        false
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut differ = Vec::new();
        for object_type in [ObjectType::Products, ObjectType::Prices] {
            for remote in stripe.objects(&account.id, object_type) {
                let id = remote["id"].as_str().expect("id");
                let (status, view) = send(
                    &env,
                    "GET",
                    &format!("/v1/accounts/{key}/objects/{}/{id}", object_type.as_str()),
                    None,
                )
                .await;
                if status != 200 || view["object"] != remote {
                    differ.push(id.to_owned());
                }
            }
        }
        if differ.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "local copy differs from Stripe for {differ:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The audit trail has both directions; acctor's own echoes were recognised.
    let trail = env
        .get_json(&format!(
            "{}/v1/accounts/{key}/objects/products/{first}/audit",
            env.app_url
        ))
        .await;
    let whats: Vec<(&str, &str)> = trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["direction"].as_str().expect("direction"),
                e["what"].as_str().expect("what"),
            )
        })
        .collect();
    assert_eq!(whats[0], ("inbound", "listed"), "{trail:#}");
    assert!(
        whats.contains(&("outbound", "update queued (name)")),
        "{trail:#}"
    );
    assert_eq!(
        whats
            .iter()
            .filter(|w| **w == ("outbound", "update pushed"))
            .count(),
        2,
        "{trail:#}"
    );
    let report = report(&env, key).await;
    assert!(
        report["echoes"].as_u64().expect("echoes") > 0,
        "own changes' events recognised: {report:#}"
    );
    assert_eq!(report["pushes"]["pending"], 0);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_held_with_both_versions_and_resolved_by_a_human() {
    let env = env().await;
    let account = linked(&env, 2).await;
    let stripe = env.sandbox.stripe().clone();
    let key = &account.id;
    let product = stripe.objects(&account.id, ObjectType::Products)[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let before = local(&env, key, "products", &product).await;
    let version = before["version"].as_u64().expect("version");

    // Someone changes the product at Stripe; no event reaches acctor.
    stripe
        .update_object(
            &account.id,
            ObjectType::Products,
            &product,
            json!({"name": "Theirs", "description": "set at Stripe"}),
            false,
        )
        .expect("updated");
    let id = queue(
        &env,
        "PATCH",
        &format!("/v1/stripe/{key}/products/{product}?base_version={version}"),
        Some(json!({"name": "Ours"})),
    )
    .await;
    wait_settled(&env, key).await;
    let (_, held) = send(&env, "GET", &format!("/v1/stripe/{key}/pushes/{id}"), None).await;
    assert_eq!(held["status"], "conflict", "{held:#}");
    assert_eq!(held["base"]["name"], before["object"]["name"]);
    assert_eq!(held["theirs"]["name"], "Theirs");
    // Not overwritten, not even sent.
    let at_stripe = stripe
        .object(&account.id, ObjectType::Products, &product)
        .expect("product");
    assert_eq!(at_stripe["name"], "Theirs");
    let stats = stripe.stats(&account.id);
    assert_eq!(
        stats.by_endpoint.get("POST /v1/products/{id}"),
        None,
        "{stats:?}"
    );
    let queue_view = env
        .get_json(&format!(
            "{}/v1/stripe/{key}/pushes?status=conflict",
            env.app_url
        ))
        .await;
    assert_eq!(queue_view["backlog"]["conflicts"], 1);
    assert_eq!(queue_view["pushes"][0]["id"], id.as_str());
    // The check refreshed the local copy with Stripe's version.
    assert_eq!(
        local(&env, key, "products", &product).await["object"]["name"],
        "Theirs"
    );

    // A later change of the same object waits behind the held one.
    let behind = queue(
        &env,
        "PATCH",
        &format!("/v1/stripe/{key}/products/{product}"),
        Some(json!({"metadata": {"later": "yes"}})),
    )
    .await;
    let (status, answer) = send(
        &env,
        "POST",
        &format!("/v1/stripe/{key}/pushes/{behind}/retry"),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("not_held")),
        "{answer:#}"
    );

    // Retried against Stripe's version: ours wins the name, theirs keeps the rest.
    let (status, retried) = send(
        &env,
        "POST",
        &format!("/v1/stripe/{key}/pushes/{id}/retry"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{retried:#}");
    assert_eq!(retried["generation"], 1);
    let queue_view = wait_settled(&env, key).await;
    for push in queue_view["pushes"].as_array().expect("pushes") {
        assert_eq!(push["status"], "pushed", "{push:#}");
    }
    let at_stripe = stripe
        .object(&account.id, ObjectType::Products, &product)
        .expect("product");
    assert_eq!(at_stripe["name"], "Ours");
    assert_eq!(at_stripe["description"], "set at Stripe");
    assert_eq!(at_stripe["metadata"]["later"], "yes");

    // Another conflict, discarded: Stripe keeps its version.
    stripe
        .update_object(
            &account.id,
            ObjectType::Products,
            &product,
            json!({"name": "Theirs again"}),
            false,
        )
        .expect("updated");
    let dropped = queue(
        &env,
        "PATCH",
        &format!("/v1/stripe/{key}/products/{product}"),
        Some(json!({"name": "Never"})),
    )
    .await;
    wait_settled(&env, key).await;
    let (status, discarded) = send(
        &env,
        "POST",
        &format!("/v1/stripe/{key}/pushes/{dropped}/discard"),
        None,
    )
    .await;
    assert_eq!(
        (status, discarded["status"].as_str()),
        (200, Some("discarded"))
    );
    assert_eq!(
        stripe
            .object(&account.id, ObjectType::Products, &product)
            .expect("product")["name"],
        "Theirs again"
    );

    let trail = env
        .get_json(&format!(
            "{}/v1/accounts/{key}/objects/products/{product}/audit",
            env.app_url
        ))
        .await;
    let outbound: Vec<&str> = trail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["direction"] == "outbound")
        .map(|e| e["what"].as_str().expect("what"))
        .collect();
    for expected in [
        "conflict held (changed at Stripe)",
        "retried after conflict",
        "update pushed",
        "discarded (conflict)",
    ] {
        assert!(outbound.contains(&expected), "{expected} in {outbound:?}");
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_refused_with_what_is_wrong() {
    let env = env().await;
    let account = linked(&env, 1).await;
    let key = &account.id;
    let product = env
        .sandbox
        .stripe()
        .objects(&account.id, ObjectType::Products)[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let version = local(&env, key, "products", &product).await["version"]
        .as_u64()
        .expect("version");
    for (method, path, body, status, needle) in [
        (
            "POST",
            format!("/v1/stripe/{key}/products"),
            json!({}),
            400,
            "name: required",
        ),
        (
            "POST",
            format!("/v1/stripe/{key}/products"),
            json!({"name": "x", "price": 1}),
            400,
            "price",
        ),
        (
            "POST",
            format!("/v1/stripe/{key}/products"),
            json!({"name": "  "}),
            400,
            "name",
        ),
        (
            "POST",
            format!("/v1/stripe/{key}/prices"),
            json!({"product": product, "currency": "EUR", "unit_amount": 1}),
            400,
            "currency",
        ),
        (
            "POST",
            format!("/v1/stripe/{key}/prices"),
            json!({"product": product, "currency": "eur", "unit_amount": -1}),
            400,
            "unit_amount",
        ),
        (
            "POST",
            format!("/v1/stripe/{key}/prices"),
            json!({"product": product, "currency": "eur", "unit_amount": 1, "recurring": {"interval": "fortnight"}}),
            400,
            "recurring.interval",
        ),
        (
            "PATCH",
            format!("/v1/stripe/{key}/products/{product}"),
            json!({}),
            400,
            "nothing to change",
        ),
        (
            "PATCH",
            format!("/v1/stripe/{key}/products/prod_missing"),
            json!({"name": "x"}),
            404,
            "not in the local copy",
        ),
        (
            "PATCH",
            format!(
                "/v1/stripe/{key}/products/{product}?base_version={}",
                version + 1
            ),
            json!({"name": "x"}),
            409,
            "stale_base",
        ),
        (
            "PATCH",
            format!("/v1/stripe/{key}/products/{product}?base_version=zero"),
            json!({"name": "x"}),
            400,
            "base_version",
        ),
        (
            "PATCH",
            format!("/v1/stripe/{key}/prices/{product}"),
            json!({"unit_amount": 5}),
            400,
            "unit_amount",
        ),
        (
            "POST",
            "/v1/stripe/nobody/products".to_owned(),
            json!({"name": "x"}),
            404,
            "nobody",
        ),
        (
            "GET",
            format!("/v1/stripe/{key}/pushes/push_99"),
            Value::Null,
            404,
            "push_99",
        ),
        (
            "GET",
            format!("/v1/stripe/{key}/pushes/99"),
            Value::Null,
            400,
            "push_id",
        ),
        (
            "GET",
            format!("/v1/stripe/{key}/pushes?status=lost"),
            Value::Null,
            400,
            "status",
        ),
        (
            "GET",
            format!("/v1/accounts/{key}/objects/products/{product}/audit?after=x"),
            Value::Null,
            400,
            "after",
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (got, answer) = send(&env, method, &path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer:#}");
        let text = answer.to_string();
        assert!(
            text.contains(needle),
            "{method} {path}: {needle:?} in {text}"
        );
    }
    // Nothing was queued by any of them.
    let queue_view = env
        .get_json(&format!("{}/v1/stripe/{key}/pushes", env.app_url))
        .await;
    assert_eq!(queue_view["pushes"].as_array().expect("pushes").len(), 0);
    // A caller's Idempotency-Key: the same change again is answered with the first.
    let path = format!("{}/v1/stripe/{key}/products", env.app_url);
    let post = |idempotency: &'static str, name: &'static str| {
        env.client
            .post(&path)
            .header("Idempotency-Key", idempotency)
            .json(&json!({"name": name}))
            .send()
    };
    let first = post("order-7", "Once").await.expect("post");
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.expect("json");
    let again = post("order-7", "Once").await.expect("post");
    assert_eq!(again.status().as_u16(), 202);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"], "{again:#}");
    assert_eq!(again["client_key"], "order-7");
    let reused = post("order-7", "Twice").await.expect("post");
    assert_eq!(reused.status().as_u16(), 409);
    let reused: Value = reused.json().await.expect("json");
    assert_eq!(
        reused["error"]["code"], "idempotency_key_reused",
        "{reused:#}"
    );
    let bad = post("has a space", "x").await;
    let bad = bad.expect("post");
    assert_eq!(bad.status().as_u16(), 400);
    wait_settled(&env, key).await;
    let queue_view = env
        .get_json(&format!("{}/v1/stripe/{key}/pushes", env.app_url))
        .await;
    assert_eq!(
        queue_view["pushes"].as_array().expect("pushes").len(),
        1,
        "one change for the key: {queue_view:#}"
    );
    env.shutdown().await;
}
