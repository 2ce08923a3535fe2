//! The simulated bank over HTTP, as acctor would meet it: a sandbox on 127.0.0.1:0 called
//! with reqwest, and a webhook receiver on port 0 whose deliveries are checked with
//! acctor's own verifier. Waits are on the receiver's channel (with a generous limit),
//! or made unnecessary by `webhook_before_response`, never sleeps.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use super::test_support::{iban_is_valid, BankEnv, Receiver, API_KEY, SECRETS};
use super::*;
use crate::providers::bank::{BankStatus, BankWebhookVerifier};

const TOLERANCE: Duration = Duration::from_secs(300);

/// A client of the bank's HTTP surface.
struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    fn new(env: &BankEnv) -> Http {
        Http {
            base: env.base_url(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert!(
            response.headers().contains_key("x-request-id"),
            "every answer has a request id"
        );
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(API_KEY),
        )
        .await
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        self.send(
            self.http
                .request(method, format!("{}/admin{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    async fn open(&self, key: &str, customer_id: &str, market: &str) -> (u16, Value) {
        self.post(
            "/v2/account-openings",
            Some(key),
            application(customer_id, market),
        )
        .await
    }

    async fn card(&self, key: &str, customer_id: &str, iban: &str) -> (u16, Value) {
        self.post(
            "/v1/cards",
            Some(key),
            json!({"customer_id": customer_id, "iban": iban, "type": "virtual"}),
        )
        .await
    }
}

fn application(customer_id: &str, market: &str) -> Value {
    json!({
        "customer_id": customer_id,
        "market": market,
        "segment": "sme",
        "legal_name": "Acme B.V.",
        "registration_number": "12345678"
    })
}

fn market(env: &BankEnv, market: &str, update: Value) {
    let update: MarketUpdate = serde_json::from_value(update).unwrap();
    env.sandbox.bank().set_market(market, update).unwrap();
}

fn faults(env: &BankEnv, update: Value) {
    let update: BankFaultsUpdate = serde_json::from_value(update).unwrap();
    env.sandbox.bank().set_faults(update).unwrap();
}

fn statuses(bodies: &[Value]) -> Vec<&str> {
    bodies
        .iter()
        .map(|body| body["status"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_repeated_key_gets_the_same_opening_and_another_body_is_refused() {
    let env = BankEnv::start(1, None).await;
    let http = Http::new(&env);
    let (status, first) = http.open("req-1", "cus-1", "NL").await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["status"], "INITIATED");
    assert_eq!(first["request_id"], "req-1");
    let (status, again) = http.open("req-1", "cus-1", "NL").await;
    assert_eq!(status, 200);
    assert_eq!(again, first);

    let (status, refused) = http.open("req-1", "cus-2", "NL").await;
    assert_eq!(status, 422);
    assert_eq!(refused["error"]["code"], "idempotency_key_reused");

    let (status, missing) = http
        .post("/v2/account-openings", None, application("cus-1", "NL"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(missing["error"]["code"], "missing_idempotency_key");

    let stats = env.sandbox.bank().stats();
    assert_eq!(stats.openings, 1);
    assert_eq!(stats.creates_by_key["req-1"], 3);
    assert_eq!(stats.key_reuse_refusals, 1);
    assert_eq!(env.sandbox.bank().openings().len(), 1);
}

#[tokio::test]
async fn concurrent_creates_and_cards_with_one_key_make_exactly_one() {
    let env = BankEnv::start(2, None).await;
    faults(&env, json!({"webhook_before_response": true}));
    let http = Http::new(&env);
    let answers =
        futures::future::join_all((0..16).map(|_| http.open("req-1", "cus-1", "NL"))).await;
    let ids: HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert!(*status == 200 || *status == 202, "{status} {body}");
            body["tracking_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        answers.iter().filter(|(status, _)| *status == 202).count(),
        1
    );
    assert_eq!(env.sandbox.bank().stats().openings, 1);

    let tracking_id = ids.into_iter().next().unwrap();
    let iban = env
        .sandbox
        .bank()
        .opening(&tracking_id)
        .unwrap()
        .iban
        .unwrap();
    let cards =
        futures::future::join_all((0..16).map(|_| http.card("step-1", "cus-1", &iban))).await;
    let card_ids: HashSet<&str> = cards
        .iter()
        .map(|(_, body)| body["card_id"].as_str().unwrap())
        .collect();
    assert_eq!(card_ids.len(), 1);
    assert_eq!(cards.iter().filter(|(status, _)| *status == 201).count(), 1);
    let stats = env.sandbox.bank().stats();
    assert_eq!(stats.cards_issued_by_customer["cus-1"], 1);
    assert_eq!(stats.card_ids_by_key["step-1"].len(), 1);
    assert_eq!(stats.card_calls, 16);
}

#[tokio::test]
async fn concurrent_legacy_calls_with_one_key_get_one_decision() {
    let env = BankEnv::start(3, None).await;
    market(&env, "BE", json!({"legacy_delay_ms": 50}));
    let http = Http::new(&env);
    let answers = futures::future::join_all(
        (0..8).map(|_| http.post("/v1/accounts", Some("legacy-1"), application("cus-1", "BE"))),
    )
    .await;
    let first = &answers[0].1;
    assert_eq!(first["status"], "COMPLETED", "{first}");
    assert!(iban_is_valid(first["iban"].as_str().unwrap()), "{first}");
    assert_eq!(first["bic"], "GKCCBEBB");
    for (status, body) in &answers {
        assert_eq!((*status, body), (200, first));
    }
    let stats = env.sandbox.bank().stats();
    assert_eq!((stats.legacy_calls, stats.legacy_openings), (8, 1));
    // Legacy openings have no status endpoint and send no webhook.
    let tracking_id = env.sandbox.bank().openings()[0].tracking_id.clone();
    let (status, _) = http
        .get(&format!("/v2/account-openings/{tracking_id}"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(stats.webhooks_sent + stats.webhooks_without_url, 0);
}

#[tokio::test]
async fn each_step_sends_a_webhook_acctor_verifies_in_order() {
    let mut receiver = Receiver::start(&[]).await;
    let env = BankEnv::start(4, Some(receiver.url.clone())).await;
    market(&env, "NL", json!({"delay_ms": 20}));
    let http = Http::new(&env);
    let (_, accepted) = http.open("req-1", "cus-1", "NL").await;

    // Signed with both secrets: a verifier that has only one of them (either side of a
    // rotation) accepts every delivery.
    let current = BankWebhookVerifier::new(vec![SECRETS[0].into()], TOLERANCE);
    let previous = BankWebhookVerifier::new(vec![SECRETS[1].into()], TOLERANCE);
    let stranger = BankWebhookVerifier::new(vec!["someone-else".into()], TOLERANCE);
    let mut webhooks = Vec::new();
    for _ in 0..3 {
        let (headers, body) = receiver.next().await;
        let now = chrono::Utc::now();
        let webhook = current.verify(&headers, &body, now).unwrap();
        assert_eq!(previous.verify(&headers, &body, now).unwrap(), webhook);
        assert!(stranger.verify(&headers, &body, now).is_err());
        webhooks.push(webhook);
    }
    let order: Vec<BankStatus> = webhooks.iter().map(|w| w.status).collect();
    assert_eq!(
        order,
        [
            BankStatus::Initiated,
            BankStatus::InProgress,
            BankStatus::Completed
        ]
    );
    for webhook in &webhooks {
        assert_eq!(webhook.tracking_id, accepted["tracking_id"]);
        assert_eq!(webhook.request_id, "req-1");
        assert!(!webhook.simulated);
    }
    assert_eq!(
        webhooks
            .iter()
            .map(|w| &w.event_id)
            .collect::<HashSet<_>>()
            .len(),
        3
    );
    let completed = &webhooks[2];
    assert!(iban_is_valid(completed.iban.as_deref().unwrap()));
    assert_eq!(completed.bic.as_deref(), Some("ABNANL2A"));

    // The status endpoint agrees with the last webhook.
    let (status, report) = http
        .get(&format!("/v2/account-openings/{}", completed.tracking_id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(report["status"], "COMPLETED");
    assert_eq!(report["iban"].as_str(), completed.iban.as_deref());
}

#[tokio::test]
async fn each_market_ends_its_openings_its_own_way() {
    let mut receiver = Receiver::start(&[]).await;
    let env = BankEnv::start(5, Some(receiver.url.clone())).await;
    faults(&env, json!({"webhook_before_response": true}));
    market(&env, "DE", json!({"outcome": "reject"}));
    market(&env, "FR", json!({"outcome": "never"}));
    let http = Http::new(&env);

    let cases = [
        ("NL", vec!["INITIATED", "IN_PROGRESS", "COMPLETED"]),
        ("DE", vec!["INITIATED", "IN_PROGRESS", "REJECTED"]),
        ("FR", vec!["INITIATED", "IN_PROGRESS"]),
    ];
    for (market_code, expected) in cases {
        let (_, accepted) = http
            .open(&format!("req-{market_code}"), "cus-1", market_code)
            .await;
        // With delay 0 every webhook was delivered before the create answered.
        let bodies: Vec<Value> = receiver
            .drain()
            .into_iter()
            .map(|(_, body)| serde_json::from_slice(&body).unwrap())
            .collect();
        assert_eq!(statuses(&bodies), expected, "{market_code}");
        let opening = env
            .sandbox
            .bank()
            .opening(accepted["tracking_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(opening.status.as_str(), *expected.last().unwrap());
        if market_code == "DE" {
            assert_eq!(bodies[2]["reason"], MARKET_REJECT_REASON);
            assert!(bodies[2].get("iban").is_none());
        }
    }
}

#[tokio::test]
async fn a_reject_rate_is_seeded_and_reproducible() {
    async fn outcomes(seed: u64) -> Vec<(String, Option<String>)> {
        let env = BankEnv::start(seed, None).await;
        faults(&env, json!({"webhook_before_response": true}));
        market(&env, "ES", json!({"reject_rate": 0.5}));
        let http = Http::new(&env);
        let mut out = Vec::new();
        for n in 0..40 {
            let (_, accepted) = http.open(&format!("req-{n}"), "cus-1", "ES").await;
            let opening = env
                .sandbox
                .bank()
                .opening(accepted["tracking_id"].as_str().unwrap())
                .unwrap();
            out.push((opening.status.as_str().to_owned(), opening.iban));
        }
        out
    }
    let first = outcomes(11).await;
    let rejected = first.iter().filter(|(s, _)| s == "REJECTED").count();
    assert!(
        (8..=32).contains(&rejected),
        "{rejected} of 40 rejected at 0.5"
    );
    assert_eq!(
        outcomes(11).await,
        first,
        "same seed, same ids and outcomes"
    );
    assert_ne!(outcomes(12).await, first);
}

#[tokio::test]
async fn dropped_webhooks_are_never_sent_and_duplicates_repeat_the_event() {
    let mut receiver = Receiver::start(&[]).await;
    let env = BankEnv::start(6, Some(receiver.url.clone())).await;
    faults(
        &env,
        json!({"webhook_before_response": true, "webhook_drop_rate": 1.0}),
    );
    let http = Http::new(&env);
    let (_, accepted) = http.open("req-1", "cus-1", "NL").await;
    assert!(receiver.drain().is_empty());
    let tracking_id = accepted["tracking_id"].as_str().unwrap();
    assert_eq!(
        env.sandbox.bank().opening(tracking_id).unwrap().status,
        BankStatus::Completed,
        "the opening goes on without its webhooks"
    );
    assert_eq!(env.sandbox.bank().stats().webhooks_dropped, 3);

    faults(
        &env,
        json!({"webhook_drop_rate": 0.0, "webhook_duplicate_rate": 1.0}),
    );
    http.open("req-2", "cus-2", "NL").await;
    let bodies: Vec<Value> = receiver
        .drain()
        .into_iter()
        .map(|(_, body)| serde_json::from_slice(&body).unwrap())
        .collect();
    assert_eq!(
        statuses(&bodies),
        [
            "INITIATED",
            "INITIATED",
            "IN_PROGRESS",
            "IN_PROGRESS",
            "COMPLETED",
            "COMPLETED"
        ]
    );
    for pair in bodies.chunks(2) {
        assert_eq!(pair[0], pair[1], "a duplicate is the same event");
    }
    let stats = env.sandbox.bank().stats();
    assert_eq!((stats.webhooks_duplicated, stats.webhooks_sent), (3, 6));
}

#[tokio::test]
async fn held_webhooks_are_delivered_shuffled_by_a_flush() {
    let mut receiver = Receiver::start(&[]).await;
    let env = BankEnv::start(7, Some(receiver.url.clone())).await;
    faults(
        &env,
        json!({"webhook_before_response": true, "webhook_reorder": true}),
    );
    let http = Http::new(&env);
    for n in 0..4 {
        http.open(&format!("req-{n}"), &format!("cus-{n}"), "NL")
            .await;
    }
    assert!(receiver.drain().is_empty(), "held until flushed");
    assert_eq!(env.sandbox.bank().stats().webhooks_held, 12);

    let (status, flushed) = http
        .admin(reqwest::Method::POST, "/webhooks/flush", "")
        .await;
    assert_eq!((status, flushed), (200, json!({"delivered": 12})));
    let bodies: Vec<Value> = receiver
        .drain()
        .into_iter()
        .map(|(_, body)| serde_json::from_slice(&body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 12);
    let mut per_status: BTreeMap<&str, usize> = BTreeMap::new();
    for status in statuses(&bodies) {
        *per_status.entry(status).or_default() += 1;
    }
    assert_eq!(
        per_status,
        BTreeMap::from([("COMPLETED", 4), ("INITIATED", 4), ("IN_PROGRESS", 4)])
    );
    let in_creation_order = ["INITIATED", "IN_PROGRESS", "COMPLETED"].repeat(4);
    assert_ne!(
        statuses(&bodies),
        in_creation_order,
        "the batch is shuffled"
    );
}

#[tokio::test]
async fn a_refused_delivery_is_retried_until_the_receiver_takes_it() {
    let mut receiver = Receiver::start(&[500, 503]).await;
    let env = BankEnv::start(8, Some(receiver.url.clone())).await;
    market(&env, "NL", json!({"outcome": "never"}));
    faults(&env, json!({"webhook_before_response": true}));
    let http = Http::new(&env);
    http.open("req-1", "cus-1", "NL").await;
    let bodies: Vec<Value> = receiver
        .drain()
        .into_iter()
        .map(|(_, body)| serde_json::from_slice(&body).unwrap())
        .collect();
    // INITIATED three times (two refusals, then taken), then IN_PROGRESS once.
    assert_eq!(
        statuses(&bodies),
        ["INITIATED", "INITIATED", "INITIATED", "IN_PROGRESS"]
    );
    assert_eq!(bodies[0]["event_id"], bodies[2]["event_id"]);
    let stats = env.sandbox.bank().stats();
    assert_eq!(
        (
            stats.webhooks_sent,
            stats.webhook_attempts,
            stats.webhooks_delivered
        ),
        (2, 4, 2)
    );
    assert_eq!(stats.webhooks_failed, 0);
}

#[tokio::test]
async fn webhook_before_response_lands_the_initiated_webhook_first() {
    let mut receiver = Receiver::start(&[]).await;
    let env = BankEnv::start(9, Some(receiver.url.clone())).await;
    market(&env, "NL", json!({"delay_ms": 60_000}));
    faults(&env, json!({"webhook_before_response": true}));
    let http = Http::new(&env);
    let (status, accepted) = http.open("req-1", "cus-1", "NL").await;
    assert_eq!(status, 202);
    let delivered = receiver.drain();
    assert_eq!(
        delivered.len(),
        1,
        "the INITIATED webhook, before the answer"
    );
    let body: Value = serde_json::from_slice(&delivered[0].1).unwrap();
    assert_eq!(body["status"], "INITIATED");
    assert_eq!(body["tracking_id"], accepted["tracking_id"]);
}

#[tokio::test]
async fn a_forced_outcome_decides_now_and_sends_its_webhook() {
    let mut receiver = Receiver::start(&[]).await;
    let env = BankEnv::start(10, Some(receiver.url.clone())).await;
    market(&env, "NL", json!({"outcome": "never"}));
    let http = Http::new(&env);
    let (_, accepted) = http.open("req-1", "cus-1", "NL").await;
    let tracking_id = accepted["tracking_id"].as_str().unwrap().to_owned();
    assert_eq!(
        statuses(&receiver.next_bodies(2).await),
        ["INITIATED", "IN_PROGRESS"]
    );

    let (status, opening) = http
        .admin(
            reqwest::Method::POST,
            &format!("/openings/{tracking_id}/reject"),
            r#"{"reason": "sanctions screening hit"}"#,
        )
        .await;
    assert_eq!(status, 200, "{opening}");
    assert_eq!(opening["status"], "REJECTED");
    let last = receiver.next_bodies(1).await;
    assert_eq!(last[0]["status"], "REJECTED");
    assert_eq!(last[0]["reason"], "sanctions screening hit");

    let (status, again) = http
        .admin(
            reqwest::Method::POST,
            &format!("/openings/{tracking_id}/complete"),
            "{}",
        )
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "already_final");
    let (status, _) = http
        .admin(reqwest::Method::POST, "/openings/opn_nope/complete", "")
        .await;
    assert_eq!(status, 404);

    let (status, shown) = http
        .admin(
            reqwest::Method::GET,
            &format!("/openings/{tracking_id}"),
            "",
        )
        .await;
    assert_eq!(status, 200);
    let history: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["INITIATED", "IN_PROGRESS", "REJECTED"]);
}

#[tokio::test]
async fn forcing_a_legacy_opening_answers_the_waiting_call() {
    let env = BankEnv::start(11, None).await;
    market(&env, "NL", json!({"outcome": "never"}));
    let http = Http::new(&env);
    let call = http.post("/v1/accounts", Some("legacy-1"), application("cus-1", "NL"));
    let force = async {
        // The opening exists once the call reached the bank's books.
        let tracking_id = loop {
            if let Some(opening) = env.sandbox.bank().openings().first() {
                break opening.tracking_id.clone();
            }
            tokio::task::yield_now().await;
        };
        env.sandbox
            .bank()
            .force_outcome(&tracking_id, ForcedOutcome::Complete)
            .unwrap()
    };
    let ((status, answer), forced) = tokio::join!(call, force);
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "COMPLETED");
    assert_eq!(answer["iban"].as_str(), forced.iban.as_deref());
}

#[tokio::test]
async fn card_and_create_failures_come_before_anything_is_done() {
    let env = BankEnv::start(12, None).await;
    faults(
        &env,
        json!({"webhook_before_response": true, "create_fail_next": 2, "card_fail_next": 1}),
    );
    let http = Http::new(&env);
    for _ in 0..2 {
        let (status, body) = http.open("req-1", "cus-1", "NL").await;
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "internal_error");
    }
    assert_eq!(env.sandbox.bank().stats().openings, 0);
    let (status, accepted) = http.open("req-1", "cus-1", "NL").await;
    assert_eq!(status, 202);
    let iban = env
        .sandbox
        .bank()
        .opening(accepted["tracking_id"].as_str().unwrap())
        .unwrap()
        .iban
        .unwrap();
    let (status, _) = http.card("step-1", "cus-1", &iban).await;
    assert_eq!(status, 500);
    assert_eq!(env.sandbox.bank().stats().cards_issued, 0);
    let (status, card) = http.card("step-1", "cus-1", &iban).await;
    assert_eq!(status, 201, "{card}");
    let (status, replay) = http.card("step-1", "cus-1", &iban).await;
    assert_eq!((status, &replay), (200, &card));
    let (status, other) = http.card("step-1", "cus-1", "NL91ABNA0417164300").await;
    assert_eq!(status, 422);
    assert_eq!(other["error"]["code"], "idempotency_key_reused");

    let stats = env.sandbox.bank().stats();
    assert_eq!(stats.injected_create_failures, 2);
    assert_eq!(stats.injected_card_failures, 1);
    assert_eq!(stats.cards_issued_by_customer["cus-1"], 1);
    assert_eq!(
        stats.card_ids_by_key["step-1"],
        vec![card["card_id"].as_str().unwrap()]
    );
}

#[tokio::test]
async fn the_status_endpoint_fails_as_configured() {
    let env = BankEnv::start(13, None).await;
    let http = Http::new(&env);
    let (_, accepted) = http.open("req-1", "cus-1", "NL").await;
    let path = format!(
        "/v2/account-openings/{}",
        accepted["tracking_id"].as_str().unwrap()
    );
    faults(&env, json!({"status_error_rate": 1.0}));
    let (status, body) = http.get(&path).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "service_unavailable");
    faults(&env, json!({"status_error_rate": 0.0}));
    let (status, body) = http.get(&path).await;
    assert_eq!(status, 200, "{body}");
    let stats = env.sandbox.bank().stats();
    assert_eq!((stats.status_calls, stats.injected_status_errors), (2, 1));
}

#[tokio::test]
async fn requests_without_the_key_or_with_a_bad_body_are_refused() {
    let env = BankEnv::start(14, None).await;
    let http = Http::new(&env);
    let (status, body) = http
        .send(
            http.http
                .post(format!("{}/v2/account-openings", http.base))
                .header("Idempotency-Key", "k")
                .json(&application("cus-1", "NL")),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("missing_api_key"))
    );

    for bad in [
        json!({"customer_id": "c", "market": "NL", "segment": "sme"}),
        json!({"customer_id": "c", "market": "NL", "segment": "sme", "legal_name": " "}),
        json!({"customer_id": "c", "market": "NL", "segment": "sme", "legal_name": "x", "vip": true}),
    ] {
        let (status, body) = http
            .post("/v2/account-openings", Some("k"), bad.clone())
            .await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
    let (status, body) = http.get("/v3/anything").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(env.sandbox.bank().stats().openings, 0);
}

#[tokio::test]
async fn admin_controls_validate_and_answer_the_current_settings() {
    let env = BankEnv::start(15, None).await;
    let http = Http::new(&env);
    let put = reqwest::Method::PUT;

    let (status, settings) = http
        .admin(
            put.clone(),
            "/markets/NL",
            r#"{"outcome": "reject", "delay_ms": 5}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        settings,
        json!({"outcome": "reject", "reject_rate": null, "delay_ms": 5, "legacy_delay_ms": 0, "silent": false})
    );
    let (_, settings) = http
        .admin(put.clone(), "/markets/NL", r#"{"reject_rate": 0.25}"#)
        .await;
    assert_eq!(
        settings["outcome"], "reject",
        "absent keys keep their value"
    );
    assert_eq!(settings["reject_rate"], 0.25);

    for (path, body, code) in [
        ("/markets/NL", r#"{"outcome": "perhaps"}"#, "invalid_body"),
        ("/markets/NL", r#"{"delay": 5}"#, "invalid_body"),
        ("/markets/NL", r#"{"reject_rate": 1.5}"#, "invalid_setting"),
        ("/faults", r#"{"webhook_drop_rate": -1}"#, "invalid_setting"),
        ("/faults", r#"{"drop_rate": 0.5}"#, "invalid_body"),
        ("/faults", r#"{"card_fail_next": -1}"#, "invalid_body"),
        ("/webhook_url", r#"{"url": "ftp://x"}"#, "invalid_url"),
    ] {
        let (status, answer) = http.admin(put.clone(), path, body).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{path} {body}");
    }
    assert_eq!(env.sandbox.bank().market("NL").reject_rate, Some(0.25));

    let (status, faults) = http
        .admin(
            put.clone(),
            "/faults",
            r#"{"card_fail_next": 2, "status_latency_ms": 1}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(faults["card_fail_next"], 2);
    assert_eq!(faults["status_latency_ms"], 1);
    assert_eq!(faults["webhook_drop_rate"], 0.0);
    assert_eq!(env.sandbox.bank().faults().card_fail_next, 2);

    let (status, stats) = http.admin(reqwest::Method::GET, "/stats", "").await;
    assert_eq!(status, 200);
    let stats: BankStats = serde_json::from_value(stats).unwrap();
    assert_eq!(stats, env.sandbox.bank().stats());

    let (status, answer) = http
        .admin(put, "/webhook_url", r#"{"url": "http://127.0.0.1:9/hook"}"#)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        env.sandbox.bank().webhook_url().as_deref(),
        Some("http://127.0.0.1:9/hook")
    );
}
