//! Account openings end to end: the real server, the real sandbox bank (its async API,
//! legacy API, card API and signed webhooks) on loopback, over HTTP. Long timers (the
//! 30-minute poll, the 12-hour escalation) run on the app's injected clock, jumped
//! forward by the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_env_with, TestEnv};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// An env whose sweeper ticks fast and whose card retries are short.
async fn env() -> TestEnv {
    env_with(|_| {}).await
}

async fn env_with(tweak: impl FnOnce(&mut acctor::config::Settings)) -> TestEnv {
    spawn_env_with(|s| {
        s.sweeper.tick = Duration::from_millis(20);
        s.operations.step_retry_initial = Duration::from_millis(20);
        s.operations.step_retry_max = Duration::from_millis(100);
        // Webhooks are signed with the bank's (real) time; the tests jump acctor's.
        s.bank.webhook_tolerance = Duration::from_secs(7 * 24 * 3600);
        tweak(s);
    })
    .await
}

fn opening(customer: &str, market: &str) -> Value {
    json!({
        "customer_id": customer,
        "market": market,
        "segment": "company",
        "legal_name": format!("{customer} BV"),
    })
}

/// What these tests ask of the env (a trait: this file is compiled twice, once per store).
trait Openings {
    async fn open(&self, body: Value) -> (StatusCode, Value);
    async fn open_ok(&self, customer: &str, market: &str) -> Value;
    async fn operation(&self, id: &str) -> Value;
    async fn wait_operation(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value;
    async fn wait_state(&self, id: &str, state: &str) -> Value;
    async fn bank_admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value;
    async fn bank_market(&self, market: &str, settings: Value);
    async fn bank_faults(&self, faults: Value);
    async fn bank_stats(&self) -> Value;
    async fn cards_of(&self, customer: &str) -> u64;
    async fn ops_command(&self, id: &str, command: &str, body: Value) -> (StatusCode, Value);
    async fn post_bank_webhook(&self, body: &Value) -> (StatusCode, Value);
}

impl Openings for TestEnv {
    async fn open(&self, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/v1/operations/account-openings", self.app_url))
            .json(&body)
            .send()
            .await
            .expect("create");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn open_ok(&self, customer: &str, market: &str) -> Value {
        let (status, body) = self.open(opening(customer, market)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    async fn operation(&self, id: &str) -> Value {
        self.get_json(&format!("{}/v1/operations/{id}", self.app_url))
            .await
    }

    /// Polls the operation until `done` holds (its end state is observable in the API).
    async fn wait_operation(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let op = self.operation(id).await;
            if done(&op) {
                return op;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "operation never {what}: {op:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_state(&self, id: &str, state: &str) -> Value {
        self.wait_operation(id, state, |op| op["state"] == state)
            .await
    }

    async fn bank_admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .client
            .request(method, format!("{}/bank/admin/{path}", self.sandbox_url))
            .json(&body)
            .send()
            .await
            .expect("bank admin");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    async fn bank_market(&self, market: &str, settings: Value) {
        self.bank_admin(reqwest::Method::PUT, &format!("markets/{market}"), settings)
            .await;
    }

    async fn bank_faults(&self, faults: Value) {
        self.bank_admin(reqwest::Method::PUT, "faults", faults)
            .await;
    }

    async fn bank_stats(&self) -> Value {
        self.get_json(&format!("{}/bank/admin/stats", self.sandbox_url))
            .await
    }

    async fn cards_of(&self, customer: &str) -> u64 {
        self.bank_stats().await["cards_issued_by_customer"][customer]
            .as_u64()
            .unwrap_or(0)
    }

    async fn ops_command(&self, id: &str, command: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/v1/operations/{id}/{command}", self.app_url))
            .json(&body)
            .send()
            .await
            .expect("command");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn post_bank_webhook(&self, body: &Value) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let signature = acctor::providers::bank::sign(
            &[b"sandbox-bank-webhook-secret".as_slice()],
            chrono::Utc::now().timestamp(),
            &bytes,
        );
        let response = reqwest::Client::new()
            .post(format!("{}/webhooks/bank", self.app_url))
            .header("content-type", "application/json")
            .header("bank-signature", signature)
            .body(bytes)
            .send()
            .await
            .expect("webhook");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn sources(op: &Value) -> Vec<String> {
    op["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|t| t["source"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn bank_event(op: &Value, status: &str, extra: Value) -> Value {
    let mut body = json!({
        "event_id": format!("evt_test_{}", uuid::Uuid::new_v4().simple()),
        "tracking_id": op["tracking_id"],
        "request_id": op["request_id"],
        "status": status,
        "occurred_at": chrono::Utc::now(),
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

#[tokio::test]
async fn an_opening_completes_by_webhook_and_issues_exactly_one_card() {
    let env = env().await;
    let created = env.open_ok("cus-happy", "NL").await;
    assert_eq!(created["state"], "in_progress");
    assert_eq!(created["iban"], Value::Null, "{created}");
    assert_eq!(created["path"], "async");
    let id = created["id"].as_str().expect("id");

    let done = env.wait_state(id, "completed").await;
    assert!(
        done["iban"].as_str().is_some_and(|i| i.starts_with("NL")),
        "{done}"
    );
    assert!(done["bic"].as_str().is_some(), "{done}");
    assert_eq!(done["next_step"]["state"], "done");
    assert!(done["next_step"]["card_id"].as_str().is_some(), "{done}");
    let seen = sources(&done);
    assert!(seen.iter().any(|s| s == "webhook"), "{seen:?}");
    let completed_by: Vec<&Value> = done["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|t| {
            t["status"] == "COMPLETED" && !t["note"].as_str().unwrap_or("").starts_with("ignored")
        })
        .collect();
    assert_eq!(completed_by.len(), 1, "{done:#}");
    assert_eq!(completed_by[0]["source"], "webhook");
    assert_eq!(env.cards_of("cus-happy").await, 1);
    // The debug view: the record, nothing pending, and the overview counts it.
    let debug = env
        .get_json(&format!("{}/debug/operations/{id}", env.app_url))
        .await;
    assert_eq!(debug["operation"]["id"], id);
    assert_eq!(debug["pending_events"], json!([]));
    let overview = env
        .get_json(&format!("{}/debug/overview", env.app_url))
        .await;
    assert_eq!(overview["operations"]["completed"], 1, "{overview}");
    let metrics = env
        .client
        .get(format!("{}/metrics", env.app_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("acctor_operations{state=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("acctor_operation_time_to_completion_seconds_count 1"),
        "{metrics}"
    );
    // By id, request id and tracking id alike.
    for key in [&done["request_id"], &done["tracking_id"]] {
        let again = env.operation(key.as_str().expect("key")).await;
        assert_eq!(again["id"], done["id"]);
    }
    env.shutdown().await;
}

#[tokio::test]
async fn lost_webhooks_are_made_up_for_by_the_30_minute_poll() {
    let env = env().await;
    env.bank_faults(json!({"webhook_drop_rate": 1.0})).await;
    let created = env.open_ok("cus-poll", "NL").await;
    let id = created["id"].as_str().expect("id").to_string();
    let submitted = env
        .wait_operation(&id, "submitted", |op| op["tracking_id"].is_string())
        .await;
    // The bank decided at once, but told no one.
    let tracking = submitted["tracking_id"].as_str().expect("tracking");
    let at_bank = env
        .get_json(&format!(
            "{}/bank/admin/openings/{tracking}",
            env.sandbox_url
        ))
        .await;
    assert_eq!(at_bank["status"], "COMPLETED", "{at_bank}");
    assert_eq!(env.operation(&id).await["state"], "in_progress");
    assert_eq!(env.operation(&id).await["polls"], 0);

    // The poll is due 30 minutes after the create, and not before.
    let waiting = env.operation(&id).await;
    let next_poll: chrono::DateTime<chrono::Utc> = waiting["next_poll_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("next_poll_at");
    let created_at: chrono::DateTime<chrono::Utc> = waiting["created_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("created_at");
    let after = (next_poll - created_at).num_seconds();
    assert!(
        (1800..1810).contains(&after),
        "poll due {after}s after creation"
    );
    env.clock.advance(31 * MINUTE);
    let done = env.wait_state(&id, "completed").await;
    assert_eq!(done["polls"], 1, "{done:#}");
    assert!(sources(&done).iter().any(|s| s == "poll"), "{done:#}");
    assert_eq!(env.cards_of("cus-poll").await, 1);
    env.shutdown().await;
}

/// Alerts as a receiver sees them.
#[derive(Clone, Default)]
struct Alerts(Arc<Mutex<Vec<Value>>>);

impl Alerts {
    async fn spawn() -> (String, Alerts) {
        let alerts = Alerts::default();
        let seen = alerts.clone();
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    if let Ok(value) = serde_json::from_slice(&body) {
                        seen.0.lock().expect("lock").push(value);
                    }
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/alerts", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, alerts)
    }

    fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a["data"]["kind"] == kind)
            .cloned()
            .collect()
    }
}

#[tokio::test]
async fn an_opening_without_a_decision_escalates_once_at_12_hours_and_keeps_polling() {
    let (url, alerts) = Alerts::spawn().await;
    let env = env_with(|s| {
        s.alerts.url = url;
        s.alerts.secret = secrecy::SecretString::from(
            "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string(),
        );
        s.alerts.retry_initial = Duration::from_millis(50);
    })
    .await;
    env.bank_market("BE", json!({"outcome": "never"})).await;
    let created = env.open_ok("cus-silent", "BE").await;
    let id = created["id"].as_str().expect("id").to_string();
    env.wait_operation(&id, "in progress at the bank", |op| {
        op["bank_status"] == "IN_PROGRESS"
    })
    .await;

    // 11 h 59 min: polls every 30 minutes, no escalation yet.
    for _ in 0..23 {
        // Read before the jump: the poll may land before a read after it.
        let polls = env.operation(&id).await["polls"].as_u64().unwrap_or(0);
        env.clock.advance(31 * MINUTE);
        env.wait_operation(&id, "polled", |op| op["polls"].as_u64() > Some(polls))
            .await;
    }
    let before = env.operation(&id).await;
    assert_eq!(before["escalated_at"], Value::Null, "{before:#}");
    let incidents = env
        .get_json(&format!(
            "{}/v1/incidents?kind=account_opening_webhook_not_received",
            env.app_url
        ))
        .await;
    assert_eq!(incidents["incidents"], json!([]));

    env.clock.advance(HOUR);
    let escalated = env
        .wait_operation(&id, "escalated", |op| op["escalated_at"].is_string())
        .await;
    assert_eq!(escalated["state"], "in_progress");
    let incidents = env
        .get_json(&format!(
            "{}/v1/incidents?kind=account_opening_webhook_not_received",
            env.app_url
        ))
        .await;
    let list = incidents["incidents"].as_array().expect("list");
    assert_eq!(list.len(), 1, "{incidents:#}");
    assert_eq!(list[0]["operation_id"], id.as_str());
    assert!(
        list[0]["details"]["link"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/dashboard#operation={id}"))),
        "{incidents:#}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while alerts
        .of_kind("account_opening_webhook_not_received")
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "no alert delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Another day: slower polls, still one incident, still one alert.
    let polls = escalated["polls"].as_u64().expect("polls");
    for _ in 0..3 {
        let before = env.operation(&id).await["polls"].as_u64().unwrap_or(0);
        env.clock.advance(2 * HOUR + MINUTE);
        env.wait_operation(&id, "polled slowly", |op| {
            op["polls"].as_u64() > Some(before)
        })
        .await;
    }
    let later = env.operation(&id).await;
    assert_eq!(later["polls"].as_u64(), Some(polls + 3), "{later:#}");
    let incidents = env
        .get_json(&format!(
            "{}/v1/incidents?kind=account_opening_webhook_not_received",
            env.app_url
        ))
        .await;
    assert_eq!(incidents["incidents"].as_array().map(Vec::len), Some(1));
    assert_eq!(incidents["incidents"][0]["occurrences"], 1);
    assert_eq!(
        alerts.of_kind("account_opening_webhook_not_received").len(),
        1
    );

    // The bank decides at last: the incident resolves.
    let tracking = later["tracking_id"].as_str().expect("tracking");
    env.bank_admin(
        reqwest::Method::POST,
        &format!("openings/{tracking}/complete"),
        json!({}),
    )
    .await;
    env.wait_state(&id, "completed").await;
    let open = env
        .get_json(&format!(
            "{}/v1/incidents?kind=account_opening_webhook_not_received&state=open",
            env.app_url
        ))
        .await;
    assert_eq!(open["incidents"], json!([]));
    env.shutdown().await;
}

#[tokio::test]
async fn duplicates_late_and_terminal_statuses_change_nothing_and_are_acknowledged() {
    let env = env().await;
    env.bank_market("DE", json!({"outcome": "never"})).await;
    env.bank_faults(json!({"webhook_drop_rate": 1.0})).await;
    let created = env.open_ok("cus-dup", "DE").await;
    let id = created["id"].as_str().expect("id").to_string();
    let op = env
        .wait_operation(&id, "submitted", |op| op["tracking_id"].is_string())
        .await;

    let progress = bank_event(&op, "IN_PROGRESS", json!({}));
    let (status, ack) = env.post_bank_webhook(&progress).await;
    assert_eq!(
        (status, ack["status"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    // The same delivery again (a burst): a duplicate, nothing written.
    let (status, ack) = env.post_bank_webhook(&progress).await;
    assert_eq!(
        (status, ack["status"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );

    // The bank opens the account (its webhook is dropped); we deliver its COMPLETED.
    let tracking = op["tracking_id"].as_str().expect("tracking");
    let opened = env
        .bank_admin(
            reqwest::Method::POST,
            &format!("openings/{tracking}/complete"),
            json!({}),
        )
        .await;
    let iban = opened["iban"].as_str().expect("iban").to_string();
    let completed = bank_event(
        &op,
        "COMPLETED",
        json!({"iban": iban, "bic": opened["bic"]}),
    );
    let (status, _) = env.post_bank_webhook(&completed).await;
    assert_eq!(status, StatusCode::OK);
    let done = env.wait_state(&id, "completed").await;
    assert_eq!(done["iban"], iban.as_str());

    // A second COMPLETED (another event id, so not a dedup hit if past the TTL), a late
    // IN_PROGRESS and a REJECTED: acknowledged, and the operation stays as it is.
    let mut again = completed.clone();
    again["iban"] = json!("DE02120300000000202051");
    for late in [
        again,
        bank_event(&op, "INITIATED", json!({})),
        bank_event(&op, "REJECTED", json!({"reason": "too late"})),
    ] {
        let (status, _) = env.post_bank_webhook(&late).await;
        assert_eq!(status, StatusCode::OK);
    }
    let settled = env
        .wait_operation(&id, "recording the late statuses", |op| {
            op["history"].as_array().is_some_and(|h| {
                h.iter()
                    .filter(|t| t["note"].as_str().unwrap_or("").starts_with("ignored"))
                    .count()
                    >= 2
            })
        })
        .await;
    assert_eq!(settled["state"], "completed");
    assert_eq!(settled["iban"], iban.as_str());
    assert_eq!(settled["reject_reason"], Value::Null);
    assert_eq!(env.cards_of("cus-dup").await, 1);
    env.shutdown().await;
}

#[tokio::test]
async fn statuses_delivered_out_of_order_end_in_the_bank_decision() {
    let env = env().await;
    env.bank_faults(json!({"webhook_reorder": true})).await;
    let created = env.open_ok("cus-reorder", "FR").await;
    let id = created["id"].as_str().expect("id").to_string();
    env.wait_operation(&id, "submitted", |op| op["tracking_id"].is_string())
        .await;
    env.bank_admin(reqwest::Method::POST, "webhooks/flush", json!({}))
        .await;
    let done = env.wait_state(&id, "completed").await;
    assert_eq!(done["bank_status"], "COMPLETED");
    assert_eq!(env.cards_of("cus-reorder").await, 1);
    env.shutdown().await;
}

#[tokio::test]
async fn a_status_that_arrives_before_the_create_call_returned_is_applied() {
    let env = env().await;
    env.bank_faults(json!({"webhook_before_response": true}))
        .await;
    let created = env.open_ok("cus-early", "NL").await;
    let id = created["id"].as_str().expect("id").to_string();
    let done = env.wait_state(&id, "completed").await;
    assert!(sources(&done).iter().any(|s| s == "webhook"), "{done:#}");
    assert_eq!(env.cards_of("cus-early").await, 1);
    env.shutdown().await;
}

#[tokio::test]
async fn a_status_for_an_unknown_tracking_id_is_kept_and_acknowledged() {
    let env = env().await;
    let body = json!({
        "event_id": "evt_unknown",
        "tracking_id": "trk_nobody_knows",
        "request_id": "req_nobody_knows",
        "status": "COMPLETED",
        "iban": "NL91ABNA0417164300",
        "bic": "ABNANL2A",
        "occurred_at": chrono::Utc::now(),
    });
    let (status, ack) = env.post_bank_webhook(&body).await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["status"], "accepted");
    assert_eq!(ack["routed"], false);
    env.shutdown().await;
}

async fn set_flag(env: &TestEnv, market: &str, enabled: bool) -> Value {
    let response = env
        .client
        .put(format!(
            "{}/v1/flags/account_opening_async/{market}/company",
            env.app_url
        ))
        .json(&json!({"enabled": enabled, "changed_by": "ops-alice", "reason": "bank incident"}))
        .send()
        .await
        .expect("put flag");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

#[tokio::test]
async fn the_legacy_path_runs_under_a_flag_and_a_flip_changes_only_later_openings() {
    let env = env().await;
    env.bank_market("NL", json!({"outcome": "never"})).await;
    let early = env.open_ok("cus-early-async", "NL").await;
    assert_eq!(early["path"], "async");
    let early_id = early["id"].as_str().expect("id").to_string();
    env.wait_operation(&early_id, "submitted", |op| op["tracking_id"].is_string())
        .await;

    let set = set_flag(&env, "NL", false).await;
    assert_eq!(set["flag"]["enabled"], false);
    assert_eq!(set["change"]["from"], Value::Null);
    assert_eq!(set["change"]["by"], "ops-alice");
    // The legacy API decides by itself, whatever the async outcome says.
    env.bank_market("NL", json!({"outcome": "complete"})).await;
    let legacy = env.open_ok("cus-legacy", "NL").await;
    assert_eq!(legacy["path"], "legacy");
    let legacy_id = legacy["id"].as_str().expect("id");
    let done = env.wait_state(legacy_id, "completed").await;
    assert!(sources(&done).iter().any(|s| s == "sync_api"), "{done:#}");
    assert_eq!(
        done["iban"].as_str().map(|i| &i[..2]),
        Some("NL"),
        "{done:#}"
    );
    assert!(env.bank_stats().await["legacy_calls"].as_u64() >= Some(1));

    // The early one keeps its path: it finishes by the async route.
    let early_now = env.operation(&early_id).await;
    assert_eq!(early_now["path"], "async");
    let tracking = early_now["tracking_id"].as_str().expect("tracking");
    env.bank_admin(
        reqwest::Method::POST,
        &format!("openings/{tracking}/complete"),
        json!({}),
    )
    .await;
    let early_done = env.wait_state(&early_id, "completed").await;
    assert!(sources(&early_done).iter().any(|s| s == "webhook"));

    // The flag's history says who and when.
    set_flag(&env, "NL", true).await;
    let history = env
        .get_json(&format!(
            "{}/v1/flags/history?name=account_opening_async&market=NL&segment=company",
            env.app_url
        ))
        .await;
    let changes = history["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{history:#}");
    assert_eq!(
        (changes[0]["from"].clone(), changes[0]["to"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(changes[1]["to"], false);
    let flags = env.get_json(&format!("{}/v1/flags", env.app_url)).await;
    let nl = flags["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .find(|f| f["market"] == "NL" && f["segment"] == "company")
        .cloned()
        .expect("NL company");
    assert_eq!(
        (nl["enabled"].clone(), nl["source"].clone()),
        (json!(true), json!("set"))
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_simulated_status_goes_through_the_real_pipeline() {
    let env = env_with(|s| s.sandbox.simulate_bank_webhooks = true).await;
    // The bank says nothing by itself: the simulated webhook is the only news.
    env.bank_market("BE", json!({"outcome": "never", "silent": true}))
        .await;
    let created = env.open_ok("cus-sim", "BE").await;
    let id = created["id"].as_str().expect("id").to_string();
    let op = env
        .wait_operation(&id, "submitted", |op| op["tracking_id"].is_string())
        .await;
    // It opens the account (so its card API knows the IBAN), silently.
    let tracking = op["tracking_id"].as_str().expect("tracking");
    let opened = env
        .bank_admin(
            reqwest::Method::POST,
            &format!("openings/{tracking}/complete"),
            json!({}),
        )
        .await;
    let (iban, bic) = (opened["iban"].clone(), opened["bic"].clone());
    let url = format!("{}/v1/sandbox/account-openings/{id}/status", env.app_url);
    // Bad input first: an unknown status, COMPLETED without an IBAN.
    for (body, needle) in [
        (json!({"status": "DONE"}), "status"),
        (json!({"status": "COMPLETED"}), "iban"),
        (
            json!({"status": "COMPLETED", "iban": "x", "bic": "y", "extra": 1}),
            "extra",
        ),
    ] {
        let response = env
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.expect("json");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{error}"
        );
    }
    let response = env
        .client
        .post(&url)
        .json(&json!({"status": "COMPLETED", "iban": iban, "bic": bic}))
        .send()
        .await
        .expect("simulate");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let done = env.wait_state(&id, "completed").await;
    assert_eq!(done["iban"], iban);
    assert!(sources(&done).iter().any(|s| s == "sandbox"), "{done:#}");
    assert_eq!(env.cards_of("cus-sim").await, 1);
    env.shutdown().await;
}

#[tokio::test]
async fn the_simulation_route_is_off_unless_enabled() {
    let env = env().await;
    let response = env
        .client
        .post(format!(
            "{}/v1/sandbox/account-openings/op_0/status",
            env.app_url
        ))
        .json(&json!({"status": "COMPLETED"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    env.shutdown().await;
}

#[tokio::test]
async fn a_failing_card_step_is_retried_and_issues_one_card() {
    let env = env().await;
    env.bank_faults(json!({"card_fail_next": 2})).await;
    let created = env.open_ok("cus-card", "NL").await;
    let id = created["id"].as_str().expect("id").to_string();
    let done = env.wait_state(&id, "completed").await;
    assert_eq!(done["next_step"]["state"], "done");
    let notes: Vec<&str> = done["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| t["note"].as_str())
        .filter(|n| n.starts_with("virtual card failed"))
        .collect();
    assert_eq!(notes.len(), 2, "{done:#}");
    assert_eq!(env.cards_of("cus-card").await, 1);
    env.shutdown().await;
}

#[tokio::test]
async fn a_card_step_that_keeps_failing_is_step_failed_with_an_incident_until_ops_retry() {
    let env = env_with(|s| s.operations.max_step_attempts = 3).await;
    env.bank_faults(json!({"card_fail_next": 3})).await;
    let created = env.open_ok("cus-stuck", "NL").await;
    let id = created["id"].as_str().expect("id").to_string();
    let failed = env.wait_state(&id, "step_failed").await;
    assert_eq!(failed["next_step"]["attempts"], 3);
    assert!(
        failed["iban"].is_string(),
        "the account is open: {failed:#}"
    );
    let incidents = env
        .get_json(&format!(
            "{}/v1/incidents?kind=operation_step_failed&state=open",
            env.app_url
        ))
        .await;
    assert_eq!(incidents["incidents"].as_array().map(Vec::len), Some(1));
    assert_eq!(incidents["incidents"][0]["operation_id"], id.as_str());
    let listed = env
        .get_json(&format!("{}/v1/operations?state=step_failed", env.app_url))
        .await;
    assert_eq!(listed["operations"].as_array().map(Vec::len), Some(1));
    assert_eq!(env.cards_of("cus-stuck").await, 0);

    let (status, body) = env
        .ops_command(&id, "retry", json!({"by": "ops-bob"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = env.wait_state(&id, "completed").await;
    assert!(sources(&done).iter().any(|s| s == "ops"));
    assert_eq!(env.cards_of("cus-stuck").await, 1);
    let open = env
        .get_json(&format!(
            "{}/v1/incidents?kind=operation_step_failed&state=open",
            env.app_url
        ))
        .await;
    assert_eq!(open["incidents"], json!([]));
    env.shutdown().await;
}

#[tokio::test]
async fn cancel_is_final_and_later_statuses_are_acknowledged_without_effect() {
    let env = env().await;
    env.bank_market("FR", json!({"outcome": "never"})).await;
    let created = env.open_ok("cus-cancel", "FR").await;
    let id = created["id"].as_str().expect("id").to_string();
    let op = env
        .wait_operation(&id, "submitted", |op| op["tracking_id"].is_string())
        .await;
    let (status, cancelled) = env
        .ops_command(
            &id,
            "cancel",
            json!({"by": "ops-carol", "reason": "customer withdrew"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, _) = env
        .post_bank_webhook(&bank_event(
            &op,
            "COMPLETED",
            json!({"iban": "FR1420041010050500013M02606", "bic": "PSSTFRPPPAR"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let settled = env
        .wait_operation(&id, "recording the late status", |op| {
            op["history"]
                .as_array()
                .and_then(|h| h.last())
                .is_some_and(|t| t["note"].as_str().unwrap_or("").starts_with("ignored"))
        })
        .await;
    assert_eq!(settled["state"], "cancelled");
    assert_eq!(settled["iban"], Value::Null);
    assert_eq!(env.cards_of("cus-cancel").await, 0);
    let (status, error) = env.ops_command(&id, "cancel", json!({"by": "ops"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    let (status, _) = env.ops_command(&id, "retry", json!({"by": "ops"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    env.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let env = env().await;
    for (body, needle) in [
        (
            json!({"customer_id": "c", "market": "XX", "segment": "company", "legal_name": "n"}),
            "market",
        ),
        (
            json!({"customer_id": "c", "market": "NL", "segment": "nonprofit", "legal_name": "n"}),
            "segment",
        ),
        (
            json!({"customer_id": "c", "market": "NL", "segment": "company"}),
            "legal_name",
        ),
        (
            json!({"customer_id": "", "market": "NL", "segment": "company", "legal_name": "n"}),
            "customer_id",
        ),
        (
            json!({"customer_id": "c", "market": "NL", "segment": "company", "legal_name": "n", "color": "red"}),
            "color",
        ),
        (
            json!({"customer_id": "c", "market": "NL", "segment": "company", "legal_name": "n", "force": "yes"}),
            "force",
        ),
    ] {
        let (status, error) = env.open(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{body} -> {error}"
        );
    }
    let listed = env
        .get_json(&format!("{}/v1/operations", env.app_url))
        .await;
    assert_eq!(listed["operations"], json!([]), "nothing half-written");

    env.bank_market("NL", json!({"outcome": "never"})).await;
    let first = env.open_ok("cus-twice", "NL").await;
    let (status, conflict) = env.open(opening("cus-twice", "NL")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["error"]["code"], "opening_in_progress");
    assert_eq!(conflict["operation"]["id"], first["id"]);
    let mut forced = opening("cus-twice", "NL");
    forced["force"] = json!(true);
    let (status, second) = env.open(forced).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_ne!(second["id"], first["id"]);

    // Webhooks: a bad signature, a stale one, an unknown status.
    let event = json!({"event_id": "e", "tracking_id": "t", "request_id": "r", "status": "COMPLETED", "iban": "NL91ABNA0417164300", "bic": "ABNANL2A", "occurred_at": chrono::Utc::now()});
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/bank", env.app_url))
        .header("bank-signature", "t=1,v1=00")
        .body(serde_json::to_vec(&event).expect("json"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let mut unknown = event.clone();
    unknown["status"] = json!("APPROVED");
    let (status, error) = env.post_bank_webhook(&unknown).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    // Flags: unknown market, unknown flag.
    let response = env
        .client
        .put(format!(
            "{}/v1/flags/account_opening_async/XX/company",
            env.app_url
        ))
        .json(&json!({"enabled": false, "changed_by": "x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = env
        .client
        .get(format!("{}/v1/flags/no_such_flag/NL/company", env.app_url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    env.shutdown().await;
}

#[tokio::test]
async fn operations_are_listed_newest_first_with_filters_and_pages() {
    let env = env().await;
    env.bank_market("BE", json!({"outcome": "never"})).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let market = if n % 2 == 0 { "BE" } else { "NL" };
        ids.push(env.open_ok(&format!("cus-list-{n}"), market).await["id"].clone());
    }
    let first = env
        .get_json(&format!("{}/v1/operations?limit=2", env.app_url))
        .await;
    let page: Vec<Value> = first["operations"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|o| o["id"].clone())
        .collect();
    assert_eq!(page, vec![ids[4].clone(), ids[3].clone()]);
    let next = first["next"].as_str().expect("next");
    let second = env
        .get_json(&format!(
            "{}/v1/operations?limit=2&after={next}",
            env.app_url
        ))
        .await;
    assert_eq!(second["operations"][0]["id"], ids[2]);
    let be = env
        .get_json(&format!("{}/v1/operations?market=BE", env.app_url))
        .await;
    assert_eq!(be["operations"].as_array().map(Vec::len), Some(3));
    let response = env
        .client
        .get(format!("{}/v1/operations?state=sleeping", env.app_url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    env.shutdown().await;
}

#[tokio::test]
async fn a_create_retried_with_its_idempotency_key_returns_the_first_operation() {
    let env = env().await;
    let create = |body: Value, key: &'static str| {
        env.client
            .post(format!("{}/v1/operations/account-openings", env.app_url))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = create(opening("cus-key", "NL"), "key-1")
        .await
        .expect("create");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.expect("json");
    let id = first["id"].as_str().expect("id").to_string();
    // Completed meanwhile: a retry still finds it, and opens nothing at the bank.
    env.wait_state(&id, "completed").await;
    let again = create(opening("cus-key", "NL"), "key-1")
        .await
        .expect("retry");
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["state"], "completed");
    let listed = env
        .get_json(&format!(
            "{}/v1/operations?customer_id=cus-key",
            env.app_url
        ))
        .await;
    assert_eq!(listed["operations"].as_array().map(Vec::len), Some(1));
    assert_eq!(env.bank_stats().await["openings"], 1);
    // The same key for another opening is the caller's mistake.
    let other = create(opening("cus-other", "NL"), "key-1")
        .await
        .expect("reuse");
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let other: Value = other.json().await.expect("json");
    assert_eq!(other["error"]["code"], "idempotency_key_reused");
    assert_eq!(other["operation"]["id"], id.as_str());
    env.shutdown().await;
}
