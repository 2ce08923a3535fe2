//! The Stripe sandbox's webhooks as acctor meets them: a receiver on port 0 whose
//! deliveries are checked with acctor's own verifier, and the delivery faults (drops,
//! duplicates, holds, shuffles, retries). Waits are `deliveries_idle` and the
//! receiver's channel, never sleeps.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::test_support::{Receiver, StripeEnv};
use super::*;
use crate::providers::stripe::{verify_event, SIGNATURE_HEADER};

const TOLERANCE: Duration = Duration::from_secs(300);

fn event_ids(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids of the account's events, oldest first.
fn emitted(env: &StripeEnv, account: &str) -> Vec<String> {
    let mut ids = event_ids(&env.stripe.events(account));
    ids.reverse();
    ids
}

fn make_products(env: &StripeEnv, account: &str, n: usize) {
    for i in 0..n {
        env.stripe.create_object(
            account,
            ObjectType::Products,
            json!({"name": format!("P{i}")}),
            true,
        );
    }
}

#[tokio::test]
async fn deliveries_are_signed_with_every_secret_and_verify() {
    let env = StripeEnv::start(21).await;
    let account = env.stripe.create_account(None);
    let mut receiver = Receiver::start(&[]).await;
    env.stripe
        .set_webhook_url(&account.id, Some(receiver.url.clone()));
    let secrets = vec!["whsec_new".to_owned(), account.webhook_secret.clone()];
    env.stripe.set_webhook_secrets(&account.id, secrets.clone());
    let product = env.stripe.create_object(
        &account.id,
        ObjectType::Products,
        json!({"name": "Signed"}),
        true,
    );
    let (headers, body) = receiver.next().await;
    assert_eq!(headers["content-type"], "application/json");
    let signature = headers[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(signature.matches("v1=").count(), 2, "{signature}");
    for secret in &secrets {
        let event = verify_event(
            &headers,
            &body,
            std::slice::from_ref(secret),
            TOLERANCE,
            chrono::Utc::now(),
        )
        .expect("verifies with either secret");
        assert_eq!(event.kind, "product.created");
        assert_eq!(event.object_id(), product["id"].as_str());
        assert_eq!(event.pending_webhooks, 1);
    }
    assert!(verify_event(
        &headers,
        &body,
        &["whsec_other".to_owned()],
        TOLERANCE,
        chrono::Utc::now()
    )
    .is_err());
    env.stripe.deliveries_idle().await;
    let stats = env.stripe.stats(&account.id);
    assert_eq!((stats.events, stats.webhooks_delivered), (1, 1));
}

#[tokio::test]
async fn duplicated_events_come_twice_and_dropped_ones_only_in_the_listing() {
    let env = StripeEnv::start(22).await;
    let account = env.stripe.create_account(None);
    let mut receiver = Receiver::start(&[]).await;
    env.stripe
        .set_webhook_url(&account.id, Some(receiver.url.clone()));
    env.stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            webhook_duplicate_rate: Some(1.0),
            ..Default::default()
        },
    );
    make_products(&env, &account.id, 3);
    env.stripe.deliveries_idle().await;
    let bodies: Vec<Value> = receiver
        .drain()
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(bodies.len(), 6);
    let mut received = event_ids(&bodies);
    received.sort();
    let mut twice: Vec<String> = emitted(&env, &account.id)
        .into_iter()
        .flat_map(|id| [id.clone(), id])
        .collect();
    twice.sort();
    assert_eq!(received, twice);

    env.stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            webhook_duplicate_rate: Some(0.0),
            webhook_drop_rate: Some(1.0),
            ..Default::default()
        },
    );
    make_products(&env, &account.id, 4);
    env.stripe.deliveries_idle().await;
    assert!(receiver.drain().is_empty());
    let stats = env.stripe.stats(&account.id);
    assert_eq!(
        (
            stats.events,
            stats.webhooks_delivered,
            stats.webhooks_dropped
        ),
        (7, 6, 4)
    );
    assert_eq!(
        env.stripe.events(&account.id).len(),
        7,
        "dropped events are still listed"
    );
}

#[tokio::test]
async fn held_deliveries_wait_for_a_flush_in_order_or_shuffled() {
    let env = StripeEnv::start(23).await;
    let account = env.stripe.create_account(None);
    let mut receiver = Receiver::start(&[]).await;
    env.stripe
        .set_webhook_url(&account.id, Some(receiver.url.clone()));
    env.stripe.hold_webhooks(&account.id, true);
    make_products(&env, &account.id, 5);
    env.stripe.deliveries_idle().await;
    assert!(receiver.drain().is_empty(), "held deliveries are not sent");
    assert_eq!(env.stripe.flush_webhooks(&account.id, false).await, 5);
    let in_order = event_ids(&receiver.next_bodies(5).await);
    assert_eq!(in_order, emitted(&env, &account.id));

    make_products(&env, &account.id, 20);
    assert_eq!(env.stripe.flush_webhooks(&account.id, true).await, 20);
    let shuffled = event_ids(&receiver.next_bodies(20).await);
    let expected: Vec<String> = emitted(&env, &account.id).split_off(5);
    assert_ne!(shuffled, expected, "a shuffled flush is out of order");
    assert_eq!(
        shuffled.iter().collect::<HashSet<_>>(),
        expected.iter().collect::<HashSet<_>>()
    );
    assert_eq!(env.stripe.flush_webhooks(&account.id, true).await, 0);
}

#[tokio::test]
async fn the_shuffle_fault_sends_deliveries_out_of_order() {
    let env = StripeEnv::start(24).await;
    let account = env.stripe.create_account(None);
    let mut receiver = Receiver::start(&[]).await;
    env.stripe
        .set_webhook_url(&account.id, Some(receiver.url.clone()));
    env.stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            webhook_shuffle: Some(true),
            webhook_delay_ms: Some(1),
            ..Default::default()
        },
    );
    // Queued before any worker runs: this test's runtime is single-threaded.
    make_products(&env, &account.id, 30);
    env.stripe.deliveries_idle().await;
    let received = event_ids(&receiver.next_bodies(30).await);
    let expected = emitted(&env, &account.id);
    assert_ne!(received, expected);
    assert_eq!(
        received.iter().collect::<HashSet<_>>(),
        expected.iter().collect::<HashSet<_>>()
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_then_given_up() {
    let env = StripeEnv::start(25).await;
    let account = env.stripe.create_account(None);
    let mut receiver = Receiver::start(&[500, 503, 500, 500, 500]).await;
    env.stripe
        .set_webhook_url(&account.id, Some(receiver.url.clone()));
    make_products(&env, &account.id, 1);
    env.stripe.deliveries_idle().await;
    // Three attempts: 500, 503, 500: given up.
    assert_eq!(receiver.drain().len(), 3);
    let stats = env.stripe.stats(&account.id);
    assert_eq!((stats.webhooks_delivered, stats.webhooks_failed), (0, 1));
    env.stripe.set_faults(
        &account.id,
        StripeFaultsUpdate {
            webhook_attempts: Some(4),
            ..Default::default()
        },
    );
    make_products(&env, &account.id, 1);
    env.stripe.deliveries_idle().await;
    // 500, 500, then 200.
    assert_eq!(receiver.drain().len(), 3);
    let stats = env.stripe.stats(&account.id);
    assert_eq!((stats.webhooks_delivered, stats.webhooks_failed), (1, 1));
}

#[tokio::test]
async fn a_connect_accounts_events_go_to_its_platform() {
    let env = StripeEnv::start(26).await;
    let platform = env.stripe.create_account(None);
    let connected = env.stripe.create_account(Some(&platform.id));
    let mut receiver = Receiver::start(&[]).await;
    env.stripe
        .set_webhook_url(&platform.id, Some(receiver.url.clone()));
    env.stripe.create_object(
        &connected.id,
        ObjectType::Customers,
        json!({"email": "c@example.com"}),
        true,
    );
    env.stripe
        .create_object(&platform.id, ObjectType::Customers, json!({}), true);
    let deliveries = vec![receiver.next().await, receiver.next().await];
    let mut accounts = Vec::new();
    for (headers, body) in &deliveries {
        let event = verify_event(
            headers,
            body,
            std::slice::from_ref(&connected.webhook_secret),
            TOLERANCE,
            chrono::Utc::now(),
        )
        .expect("signed with the platform's secret");
        accounts.push(event.account);
    }
    accounts.sort();
    assert_eq!(accounts, [None, Some(connected.id.clone())]);
    env.stripe.deliveries_idle().await;
    assert_eq!(env.stripe.stats(&connected.id).webhooks_delivered, 1);
}

#[tokio::test]
async fn same_second_events_tie_and_list_newest_first_by_id() {
    let env = StripeEnv::start(27).await;
    let account = env.stripe.create_account(None);
    env.stripe.set_same_second(&account.id, true);
    make_products(&env, &account.id, 5);
    env.stripe.advance_clock(Duration::from_secs(3));
    make_products(&env, &account.id, 1);
    env.stripe.set_same_second(&account.id, false);
    let events = env.stripe.events(&account.id);
    let seconds: HashSet<i64> = events
        .iter()
        .map(|e| e["created"].as_i64().unwrap())
        .collect();
    assert_eq!(seconds.len(), 1, "every event in one second");
    let (status, _, body) = env
        .get(&account.api_key, None, "/v1/events?limit=100")
        .await;
    assert_eq!(status, 200);
    let listed = event_ids(body["data"].as_array().unwrap());
    let mut newest_first = emitted(&env, &account.id);
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    // No URL: nothing to wait for.
    env.stripe.deliveries_idle().await;
    assert_eq!(env.stripe.stats(&account.id).webhooks_delivered, 0);
}
