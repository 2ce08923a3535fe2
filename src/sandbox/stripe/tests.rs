//! The Stripe sandbox's API as acctor meets it: a sandbox on 127.0.0.1:0 driven with
//! acctor's own `StripeClient` (and reqwest for what the client does not send). The
//! webhook side is in `webhook_tests`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::test_support::{access, ids, list_all, StripeEnv, ALL_TIME};
use super::*;
use crate::domain::stripe::Window;
use crate::providers::stripe::StripeApi;

fn created(object: &Value) -> i64 {
    object["created"].as_i64().expect("created")
}

#[tokio::test]
async fn paging_a_generated_history_returns_every_object_once_newest_first() {
    let env = StripeEnv::start(1).await;
    let account = env.stripe.create_account(None);
    let made = env
        .stripe
        .generate(&account.id, ObjectType::Products, 1_050);
    assert_eq!(made.len(), 1_050);
    let listed = list_all(
        &env.client(),
        access(&account),
        ObjectType::Products,
        ALL_TIME,
        100,
    )
    .await;
    let listed_ids = ids(&listed);
    assert_eq!(listed_ids.len(), 1_050);
    assert_eq!(
        listed_ids.iter().collect::<HashSet<_>>().len(),
        1_050,
        "no duplicates"
    );
    assert_eq!(
        listed_ids,
        ids(&env.stripe.objects(&account.id, ObjectType::Products))
    );
    for pair in listed.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            (created(a), a["id"].as_str()) > (created(b), b["id"].as_str()),
            "newest first, then id descending"
        );
    }
    let ties = listed
        .windows(2)
        .filter(|p| created(&p[0]) == created(&p[1]))
        .count();
    assert!(ties > 0, "some objects share a second");
    let now = env.stripe.now();
    assert!(listed
        .iter()
        .all(|o| created(o) <= now && created(o) > now - 2 * 366 * 86_400));
}

#[tokio::test]
async fn created_windows_select_exactly_their_objects() {
    let env = StripeEnv::start(2).await;
    let account = env.stripe.create_account(None);
    env.stripe.generate(&account.id, ObjectType::Customers, 600);
    let all = env.stripe.objects(&account.id, ObjectType::Customers);
    let window = Window::new(created(&all[400]), created(&all[100]));
    let listed = list_all(
        &env.client(),
        access(&account),
        ObjectType::Customers,
        window.clone(),
        37,
    )
    .await;
    let expected: Vec<Value> = all
        .iter()
        .filter(|o| (window.gte..window.lt).contains(&created(o)))
        .cloned()
        .collect();
    assert!(expected.len() >= 299);
    assert_eq!(ids(&listed), ids(&expected));
    // `created=<t>` and `created[gt]` / `created[lte]` as Stripe takes them.
    let t = created(&all[50]);
    let (status, _, body) = env
        .get(
            &account.api_key,
            None,
            &format!("/v1/customers?created={t}&limit=100"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| created(o) == t));
    let (_, _, body) = env
        .get(
            &account.api_key,
            None,
            &format!(
                "/v1/customers?created[gt]={}&created[lte]={t}&limit=100",
                t - 1
            ),
        )
        .await;
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == all[50]["id"]));
}

#[tokio::test]
async fn ending_before_pages_backwards_and_bad_cursors_are_refused() {
    let env = StripeEnv::start(3).await;
    let account = env.stripe.create_account(None);
    env.stripe.generate(&account.id, ObjectType::Prices, 30);
    let all = ids(&env.stripe.objects(&account.id, ObjectType::Prices));
    let (status, _, body) = env
        .get(
            &account.api_key,
            None,
            &format!("/v1/prices?limit=5&ending_before={}", all[12]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ids(body["data"].as_array().unwrap()), all[7..12].to_vec());
    assert_eq!(body["has_more"], true);
    for (query, param) in [
        ("starting_after=price_nope", "starting_after"),
        ("ending_before=price_nope", "ending_before"),
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("color=red", "color"),
    ] {
        let (status, _, body) = env
            .get(&account.api_key, None, &format!("/v1/prices?{query}"))
            .await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{query}");
        assert_eq!(body["error"]["param"], param, "{query}");
    }
    let (_, _, body) = env
        .get(
            &account.api_key,
            None,
            "/v1/prices?starting_after=price_nope",
        )
        .await;
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["message"], "No such price: 'price_nope'");
}

#[tokio::test]
async fn subscriptions_list_live_ones_unless_status_all() {
    let env = StripeEnv::start(4).await;
    let account = env.stripe.create_account(None);
    env.stripe
        .generate(&account.id, ObjectType::Subscriptions, 400);
    let all = env.stripe.objects(&account.id, ObjectType::Subscriptions);
    let canceled = all.iter().filter(|s| s["status"] == "canceled").count();
    assert!(canceled > 0);
    // acctor's client sends status=all.
    let listed = list_all(
        &env.client(),
        access(&account),
        ObjectType::Subscriptions,
        ALL_TIME,
        100,
    )
    .await;
    assert_eq!(listed.len(), all.len());
    let mut live = Vec::new();
    let mut after = String::new();
    loop {
        let query = if after.is_empty() {
            "/v1/subscriptions?limit=100".to_owned()
        } else {
            format!("/v1/subscriptions?limit=100&starting_after={after}")
        };
        let (status, _, body) = env.get(&account.api_key, None, &query).await;
        assert_eq!(status, 200);
        let data = body["data"].as_array().unwrap().clone();
        after = data
            .last()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .unwrap_or_default();
        live.extend(data);
        if body["has_more"] == false {
            break;
        }
    }
    assert_eq!(live.len(), all.len() - canceled);
    assert!(live.iter().all(|s| s["status"] != "canceled"));
    // A cancellation keeps the subscription retrievable.
    let sub = live[0]["id"].as_str().unwrap();
    assert!(env
        .stripe
        .delete_object(&account.id, ObjectType::Subscriptions, sub, true));
    let after_cancel = env
        .stripe
        .object(&account.id, ObjectType::Subscriptions, sub)
        .unwrap();
    assert_eq!(after_cancel["status"], "canceled");
    let events = env.stripe.events(&account.id);
    assert_eq!(events[0]["type"], "customer.subscription.deleted");
    assert_eq!(events[0]["data"]["object"]["status"], "canceled");
}

#[tokio::test]
async fn retrieve_answers_the_object_or_none_once_deleted() {
    let env = StripeEnv::start(5).await;
    let account = env.stripe.create_account(None);
    let client = env.client();
    let product = env.stripe.create_object(
        &account.id,
        ObjectType::Products,
        json!({"name": "Kept"}),
        false,
    );
    let id = product["id"].as_str().unwrap();
    let got = client
        .retrieve(access(&account), ObjectType::Products, id)
        .await
        .unwrap()
        .value;
    assert_eq!(got, Some(product.clone()));
    assert_eq!(
        client
            .retrieve(access(&account), ObjectType::Products, "prod_nope")
            .await
            .unwrap()
            .value,
        None
    );
    assert!(env
        .stripe
        .delete_object(&account.id, ObjectType::Products, id, true));
    assert_eq!(
        client
            .retrieve(access(&account), ObjectType::Products, id)
            .await
            .unwrap()
            .value,
        None
    );
    let (status, _, body) = env
        .get(&account.api_key, None, &format!("/v1/products/{id}"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["message"], format!("No such product: '{id}'"));
    let deleted = &env.stripe.events(&account.id)[0];
    assert_eq!(deleted["type"], "product.deleted");
    assert_eq!(
        deleted["data"]["object"], product,
        "the whole object as it was, as Stripe sends it"
    );
    // A charge cannot be deleted at Stripe.
    let charge = env.stripe.generate(&account.id, ObjectType::Charges, 1);
    assert!(!env
        .stripe
        .delete_object(&account.id, ObjectType::Charges, &charge[0], true));
}

#[tokio::test]
async fn events_list_newest_first_filtered_and_for_thirty_days() {
    let env = StripeEnv::start(6).await;
    let account = env.stripe.create_account(None);
    let client = env.client();
    let since = env.stripe.now() - 1;
    let product = env.stripe.create_object(
        &account.id,
        ObjectType::Products,
        json!({"name": "A"}),
        true,
    );
    let id = product["id"].as_str().unwrap().to_owned();
    let updated = env
        .stripe
        .update_object(
            &account.id,
            ObjectType::Products,
            &id,
            json!({"name": "B"}),
            true,
        )
        .unwrap();
    assert_eq!(updated["name"], "B");
    env.stripe
        .create_object(&account.id, ObjectType::Invoices, json!({}), true);
    let page = client
        .events(access(&account), since, None, 100)
        .await
        .unwrap()
        .value;
    let kinds: Vec<&str> = page.data.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["invoice.created", "product.updated", "product.created"]
    );
    let update = &page.data[1];
    assert_eq!(update.object_id(), Some(id.as_str()));
    assert_eq!(
        update.data.previous_attributes.as_ref().unwrap()["name"],
        "A"
    );
    assert_eq!(update.api_version.as_deref(), Some("2024-06-20"));
    assert!(update.account.is_none());
    let second = client
        .events(access(&account), since, Some(&page.data[0].id), 1)
        .await
        .unwrap()
        .value;
    assert_eq!(second.data[0].id, page.data[1].id);
    assert!(second.has_more);
    let (_, _, body) = env
        .get(&account.api_key, None, "/v1/events?type=product.*")
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let (_, _, body) = env
        .get(&account.api_key, None, "/v1/events?types[]=invoice.created")
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (status, _, _) = env
        .get(
            &account.api_key,
            None,
            &format!("/v1/events/{}", page.data[2].id),
        )
        .await;
    assert_eq!(status, 200);
    env.stripe.advance_clock(Duration::from_secs(31 * 86_400));
    let later = client
        .events(access(&account), 0, None, 100)
        .await
        .unwrap()
        .value;
    assert!(later.data.is_empty(), "events are kept 30 days");
    let moved = env
        .stripe
        .create_object(&account.id, ObjectType::Payouts, json!({}), true);
    assert!(created(&moved) >= since + 31 * 86_400);
}

#[tokio::test]
async fn a_hundred_thousand_objects_generate_quickly_and_page_in_log_time() {
    let env = StripeEnv::start(11).await;
    let account = env.stripe.create_account(None);
    let started = Instant::now();
    let made = env
        .stripe
        .generate(&account.id, ObjectType::Charges, 100_000);
    let generating = started.elapsed();
    assert_eq!(made.len(), 100_000);
    // A loose bound: unoptimised test builds on a busy machine are ten times slower
    // than release (about 0.1 to 0.2 s there); it catches a scan per insert, not jitter.
    assert!(generating < Duration::from_secs(15), "{generating:?}");
    let all = ids(&env.stripe.objects(&account.id, ObjectType::Charges));
    let started = Instant::now();
    for cursor in [&all[10], &all[50_000], &all[99_000]] {
        let (status, _, body) = env
            .get(
                &account.api_key,
                None,
                &format!("/v1/charges?limit=100&starting_after={cursor}"),
            )
            .await;
        assert_eq!(status, 200);
        let position = all.iter().position(|id| id == cursor).unwrap();
        let page = ids(body["data"].as_array().unwrap());
        let end = (position + 101).min(all.len());
        assert_eq!(page, all[position + 1..end].to_vec());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn mutate_changes_objects_and_every_change_has_an_event() {
    let env = StripeEnv::start(12).await;
    let account = env.stripe.create_account(None);
    for object_type in ObjectType::ALL {
        env.stripe.generate(&account.id, object_type, 20);
    }
    assert_eq!(env.stripe.mutate(&account.id, 300), 300);
    let events = env.stripe.events(&account.id);
    assert!(events.len() >= 250, "{}", events.len());
    let kinds: HashSet<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "product.created",
        "invoice.paid",
        "customer.subscription.deleted",
        "charge.refunded",
    ] {
        assert!(kinds.contains(kind), "{kind} in {kinds:?}");
    }
    // The last event about an object carries it as it is now.
    for event in &events {
        let object = &event["data"]["object"];
        let object_type = ObjectType::of_object(object["object"].as_str().unwrap()).unwrap();
        let now = env
            .stripe
            .object(&account.id, object_type, object["id"].as_str().unwrap());
        if event["type"].as_str().unwrap().ends_with(".deleted")
            && event["type"] != "customer.subscription.deleted"
        {
            assert!(now.is_none());
        }
    }
    assert_eq!(env.stripe.mutate("acct_unknown", 5), 0);
}
