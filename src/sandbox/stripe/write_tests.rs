//! The Stripe sandbox's writes, faults, limiter, Connect routing and admin API, driven
//! as in `tests`: acctor's own `StripeClient` where it has the call, reqwest where it
//! does not.

use std::time::Duration;

use serde_json::{json, Value};

use super::test_support::{access, ids, list_all, StripeEnv, ALL_TIME};
use super::*;
use crate::providers::stripe::{ListRequest, StripeAccess, StripeApi};
use crate::providers::ErrorClass;

#[tokio::test]
async fn a_repeated_idempotency_key_replays_and_creates_once() {
    let env = StripeEnv::start(7).await;
    let account = env.stripe.create_account(None);
    let form = [("name", "Gold plan"), ("metadata[tier]", "gold")];
    let (status, headers, first) = env
        .post(&account.api_key, "/v1/products", Some("k1"), &form)
        .await;
    assert_eq!(status, 200, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(first["metadata"], json!({"tier": "gold"}));
    let (status, headers, again) = env
        .post(&account.api_key, "/v1/products", Some("k1"), &form)
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again, first);
    let (status, _, refused) = env
        .post(
            &account.api_key,
            "/v1/products",
            Some("k1"),
            &[("name", "Other")],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["type"], "idempotency_error");
    let stats = env.stripe.stats(&account.id);
    assert_eq!(stats.creates_by_idempotency_key.get("k1"), Some(&1));
    assert_eq!(stats.by_endpoint["POST /v1/products"], 3);
    assert_eq!(
        env.stripe.objects(&account.id, ObjectType::Products).len(),
        1
    );
    let events = env.stripe.events(&account.id);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["request"]["idempotency_key"], "k1");
    assert!(events[0]["request"]["id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
    // A price of it, then an update of both.
    let product = first["id"].as_str().unwrap();
    let (status, _, price) = env
        .post(
            &account.api_key,
            "/v1/prices",
            Some("k2"),
            &[
                ("currency", "EUR"),
                ("unit_amount", "1500"),
                ("product", product),
                ("recurring[interval]", "month"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{price}");
    assert_eq!(
        (price["currency"].as_str(), price["type"].as_str()),
        (Some("eur"), Some("recurring"))
    );
    assert_eq!(price["recurring"]["interval"], "month");
    let price_id = price["id"].as_str().unwrap();
    let (status, _, moved) = env
        .post(
            &account.api_key,
            &format!("/v1/products/{product}"),
            None,
            &[("default_price", price_id), ("metadata[tier]", "")],
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        (moved["default_price"].as_str(), &moved["metadata"]),
        (Some(price_id), &json!({}))
    );
    for (path, form, param) in [
        (
            "/v1/prices",
            vec![
                ("currency", "usd"),
                ("unit_amount", "5"),
                ("product", "prod_nope"),
            ],
            "product",
        ),
        (
            "/v1/prices",
            vec![("currency", "usd"), ("product", product)],
            "unit_amount",
        ),
        (
            "/v1/prices",
            vec![
                ("currency", "usd"),
                ("unit_amount", "x"),
                ("product", product),
            ],
            "unit_amount",
        ),
        ("/v1/products", vec![("description", "no name")], "name"),
    ] {
        let (status, _, body) = env.post(&account.api_key, path, None, &form).await;
        assert_eq!(
            (status, body["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}"
        );
    }
    let (status, _, body) = env
        .post(
            &account.api_key,
            &format!("/v1/prices/{price_id}"),
            None,
            &[("unit_amount", "9")],
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("parameter_unknown"))
    );
    let deleting = env
        .http
        .delete(format!("{}/v1/products/{product}", env.base_url()))
        .bearer_auth(&account.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        deleting.status(),
        400,
        "a product with prices is not deleted"
    );
}

#[tokio::test]
async fn injected_faults_map_to_acctors_error_classes() {
    let env = StripeEnv::start(8).await;
    let account = env.stripe.create_account(None);
    let client = env.client();
    let request = || ListRequest {
        window: ALL_TIME,
        starting_after: None,
        limit: 10,
    };
    env.stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            rate_limit_rate: Some(1.0),
            retry_after_secs: Some(7),
            ..StripeFaultsUpdate::default()
        },
    );
    let err = client
        .list(access(&account), ObjectType::Charges, request())
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(err.code(), "rate_limit");
    assert!(err.request_id().is_some_and(|id| id.starts_with("req_")));
    env.stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            rate_limit_rate: Some(0.0),
            error_rate: Some(1.0),
            ..StripeFaultsUpdate::default()
        },
    );
    let err = client
        .retrieve(access(&account), ObjectType::Charges, "ch_1")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    let stats = env.stripe.stats(&account.id);
    assert_eq!(
        (stats.rate_limited, stats.errors_injected, stats.requests),
        (1, 1, 2)
    );
    assert_eq!(stats.by_endpoint["GET /v1/charges/{id}"], 1);
    // Bad keys and foreign accounts.
    let stranger = StripeAccess {
        api_key: "sk_test_notakeyatallreally",
        ..access(&account)
    };
    let err = client
        .list(stranger, ObjectType::Charges, request())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::AccessRevoked);
    let (status, _, body) = env
        .get("sk_test_notakeyatallreally", None, "/v1/charges")
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error"]["message"],
        "Invalid API Key provided: sk_test_****ally"
    );
    let response = env
        .http
        .get(format!("{}/v1/charges", env.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let basic = env
        .http
        .get(format!("{}/v1/payouts", env.base_url()))
        .basic_auth(&account.api_key, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(
        basic.status(),
        500,
        "basic auth admits (then the error fault hits)"
    );
    let (status, _, body) = env.get(&account.api_key, None, "/v1/coupons").await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (404, Some("invalid_request_error"))
    );
}

#[tokio::test]
async fn the_per_second_limiter_holds_and_is_counted() {
    let env = StripeEnv::start(9).await;
    let account = env.stripe.create_account(None);
    let other = env.stripe.create_account(None);
    env.stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            rate_limit_per_second: Some(Some(5)),
            ..StripeFaultsUpdate::default()
        },
    );
    let client = env.client();
    let first_second = chrono::Utc::now().timestamp();
    let calls = (0..20).map(|_| {
        client.list(
            access(&account),
            ObjectType::Refunds,
            ListRequest {
                window: ALL_TIME,
                starting_after: None,
                limit: 1,
            },
        )
    });
    let results = futures::future::join_all(calls).await;
    let last_second = chrono::Utc::now().timestamp();
    let seconds = (last_second - first_second + 1) as usize;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.class() == ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(1)) }))
        .count();
    assert_eq!(ok + limited, 20);
    assert!(
        ok <= 5 * seconds && ok >= 5,
        "{ok} answered in {seconds} second(s)"
    );
    let stats = env.stripe.stats(&account.id);
    assert_eq!(stats.rate_limited as usize, limited);
    assert_eq!(stats.requests, 20);
    assert!(stats.max_requests_in_one_second as usize >= 20 / seconds);
    // Another account is not limited by it.
    let page = client
        .list(
            access(&other),
            ObjectType::Refunds,
            ListRequest {
                window: ALL_TIME,
                starting_after: None,
                limit: 1,
            },
        )
        .await;
    assert!(page.is_ok());
}

#[tokio::test]
async fn connect_accounts_are_reached_only_through_their_platform() {
    let env = StripeEnv::start(10).await;
    let platform = env.stripe.create_account(None);
    let connected = env.stripe.create_account(Some(&platform.id));
    let stranger = env.stripe.create_account(None);
    assert_eq!(connected.api_key, platform.api_key);
    assert_eq!(connected.webhook_secret, platform.webhook_secret);
    env.stripe.generate(&connected.id, ObjectType::Disputes, 12);
    env.stripe.generate(&platform.id, ObjectType::Disputes, 3);
    let client = env.client();
    let via_platform = StripeAccess {
        connect: true,
        ..access(&connected)
    };
    let listed = list_all(&client, via_platform, ObjectType::Disputes, ALL_TIME, 5).await;
    assert_eq!(
        ids(&listed),
        ids(&env.stripe.objects(&connected.id, ObjectType::Disputes))
    );
    let own = list_all(
        &client,
        access(&platform),
        ObjectType::Disputes,
        ALL_TIME,
        100,
    )
    .await;
    assert_eq!(own.len(), 3);
    let foreign = StripeAccess {
        api_key: &stranger.api_key,
        account: &connected.id,
        connect: true,
        livemode: false,
    };
    let err = client
        .list(
            foreign,
            ObjectType::Disputes,
            ListRequest {
                window: ALL_TIME,
                starting_after: None,
                limit: 5,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::providers::ProviderError::Api { status: 403, ref error_type, .. } if error_type == "permission_error")
    );
    // Its three pages count for it; the stranger's refused call counts for nobody.
    assert_eq!(env.stripe.stats(&connected.id).requests, 3);
    assert_eq!(env.stripe.stats(&platform.id).requests, 1);
}

#[tokio::test]
async fn the_admin_api_drives_the_handle() {
    let env = StripeEnv::start(13).await;
    let admin = format!("{}/admin", env.base_url());
    let account: Value = env
        .http
        .post(format!("{admin}/accounts"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = account["id"].as_str().unwrap();
    assert!(account["api_key"].as_str().unwrap().starts_with("sk_test_"));
    let generated: Value = env
        .http
        .post(format!("{admin}/accounts/{id}/generate"))
        .body(r#"{"type": "payment_intents", "count": 25}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(generated["generated"], 25);
    let refused = env
        .http
        .put(format!("{admin}/accounts/{id}/faults"))
        .body(r#"{"error_rate": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let faults: Value = env
        .http
        .put(format!("{admin}/accounts/{id}/faults"))
        .body(r#"{"latency_ms": 1}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["latency_ms"], 1);
    let stats: Value = env
        .http
        .get(format!("{admin}/accounts/{id}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 0);
    let missing = env
        .http
        .get(format!("{admin}/accounts/acct_nope/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
