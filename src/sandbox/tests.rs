//! HTTP-level tests: a sandbox served on 127.0.0.1:0, called with reqwest exactly as a
//! Plaid client would, and a tiny webhook receiver on port 0 that pushes what it gets
//! into a channel.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::providers::plaid::wire::{self, PlaidJwk, PlaidTransaction};
use crate::providers::{ErrorClass, ProviderError};

const CLIENT_ID: &str = "test-client";
const SECRET: &str = "test-secret";

struct Bank {
    sandbox: Sandbox,
    handle: SandboxHandle,
    http: reqwest::Client,
}

async fn start() -> Bank {
    let sandbox = Sandbox::new(SandboxConfig {
        client_id: CLIENT_ID.into(),
        secret: SECRET.into(),
        default_webhook_url: None,
        seed: 42,
        data_dir: None,
        bank: Default::default(),
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = sandbox.clone().serve(listener).await;
    Bank {
        sandbox,
        handle,
        http: reqwest::Client::new(),
    }
}

/// One `/transactions/sync` loop's result.
#[derive(Default)]
struct Loop {
    added: Vec<PlaidTransaction>,
    modified: Vec<PlaidTransaction>,
    removed: Vec<String>,
    cursor: String,
    pages: usize,
}

impl Bank {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    /// A Plaid call with credentials in the body.
    async fn plaid(&self, path: &str, mut body: Value) -> (u16, Value) {
        body["client_id"] = CLIENT_ID.into();
        body["secret"] = SECRET.into();
        self.raw(path, body.to_string(), &[]).await
    }

    async fn raw(&self, path: &str, body: String, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.raw(path, body.to_string(), &[]).await
    }

    async fn admin_get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn create_item(&self, history: u32, webhook: Option<&str>) -> (String, String) {
        let (status, body) = self
            .admin_post(
                "/admin/items",
                json!({"history": history, "webhook": webhook}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        (
            body["item_id"].as_str().unwrap().to_string(),
            body["access_token"].as_str().unwrap().to_string(),
        )
    }

    async fn sync(&self, token: &str, cursor: &str, count: u32) -> (u16, Value) {
        self.plaid(
            "/transactions/sync",
            json!({"access_token": token, "cursor": cursor, "count": count}),
        )
        .await
    }

    /// Pages until `has_more` is false; panics on any error.
    async fn sync_loop(&self, token: &str, cursor: &str, count: u32) -> Loop {
        let mut out = Loop {
            cursor: cursor.to_string(),
            ..Loop::default()
        };
        loop {
            let (status, page) = self.sync(token, &out.cursor, count).await;
            assert_eq!(status, 200, "{page}");
            out.pages += 1;
            let txns = |key: &str| -> Vec<PlaidTransaction> {
                serde_json::from_value(page[key].clone()).unwrap()
            };
            out.added.extend(txns("added"));
            out.modified.extend(txns("modified"));
            out.removed.extend(
                page["removed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["transaction_id"].as_str().unwrap().to_string()),
            );
            out.cursor = page["next_cursor"].as_str().unwrap().to_string();
            if !page["has_more"].as_bool().unwrap() {
                return out;
            }
        }
    }

    async fn current(&self, item_id: &str) -> Vec<PlaidTransaction> {
        let (status, body) = self
            .admin_get(&format!("/admin/items/{item_id}/transactions"))
            .await;
        assert_eq!(status, 200);
        serde_json::from_value(body["transactions"].clone()).unwrap()
    }

    async fn stats(&self, item_id: &str) -> ItemStatsSnapshot {
        let (status, body) = self
            .admin_get(&format!("/admin/items/{item_id}/stats"))
            .await;
        assert_eq!(status, 200);
        serde_json::from_value(body).unwrap()
    }

    async fn faults(&self, item_id: &str, faults: Value) {
        let (status, body) = self
            .admin_post(&format!("/admin/items/{item_id}/faults"), faults)
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn jwk(&self, kid: &str) -> PlaidJwk {
        let (status, body) = self
            .plaid("/webhook_verification_key/get", json!({"key_id": kid}))
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["key"].clone()).unwrap()
    }
}

fn sorted(mut txns: Vec<PlaidTransaction>) -> Vec<PlaidTransaction> {
    txns.sort_by(|a, b| a.transaction_id.cmp(&b.transaction_id));
    txns
}

fn ids(txns: &[PlaidTransaction]) -> Vec<String> {
    let mut ids: Vec<String> = txns.iter().map(|t| t.transaction_id.clone()).collect();
    ids.sort();
    ids
}

fn strings(value: &Value) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// The error as acctor's Plaid client would classify it.
fn provider_error(status: u16, body: &Value) -> ProviderError {
    crate::providers::plaid::errors::api_error(
        status,
        body["error_type"].as_str().unwrap().to_string(),
        body["error_code"].as_str().unwrap().to_string(),
        body["error_message"].as_str().unwrap().to_string(),
        body["request_id"].as_str().map(str::to_string),
    )
}

fn assert_plaid_error(status: u16, body: &Value, want_status: u16, error_type: &str, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error_type"], error_type, "{body}");
    assert_eq!(body["error_code"], code, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert_eq!(body["request_id"].as_str().unwrap().len(), 15, "{body}");
    let _: wire::PlaidError = serde_json::from_value(body.clone()).unwrap();
}

/// A webhook receiver: answers the queued statuses (then 200) and forwards every
/// request to the channel.
struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
}

type Answers = Arc<Mutex<VecDeque<u16>>>;

async fn receiver(answers: &[u16]) -> Receiver {
    let (tx, rx) = mpsc::unbounded_channel();
    let answers: Answers = Arc::new(Mutex::new(answers.iter().copied().collect()));
    async fn hook(
        State((tx, answers)): State<(mpsc::UnboundedSender<(HeaderMap, Bytes)>, Answers)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let _ = tx.send((headers, body));
        let status = answers.lock().unwrap().pop_front().unwrap_or(200);
        StatusCode::from_u16(status).unwrap()
    }
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state((tx, answers));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, rx }
}

impl Receiver {
    /// Everything received so far (deliveries are awaited by the calls that caused
    /// them, so nothing is in transit when those calls have returned).
    fn drain(&mut self) -> Vec<(HeaderMap, Bytes)> {
        let mut out = Vec::new();
        while let Ok(delivery) = self.rx.try_recv() {
            out.push(delivery);
        }
        out
    }
}

#[tokio::test]
async fn paging_a_5000_history_with_count_500_yields_exactly_the_current_set() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(5_000, None).await;
    let first = bank.sync_loop(&token, "", 500).await;
    assert_eq!(first.pages, 10);
    assert!(first.modified.is_empty() && first.removed.is_empty());
    assert_eq!(sorted(first.added.clone()), bank.current(&item_id).await);
    assert_eq!(
        ids(&first.added).into_iter().collect::<HashSet<_>>().len(),
        5_000
    );

    // Nothing changed: the settled cursor yields an empty page and stays put.
    let again = bank.sync_loop(&token, &first.cursor, 500).await;
    assert_eq!((again.pages, again.added.len()), (1, 0));
    assert_eq!(again.cursor, first.cursor);
}

#[tokio::test]
async fn mutate_then_sync_from_the_settled_cursor_yields_exactly_the_changes() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(1_000, None).await;
    let initial = bank.sync_loop(&token, "", 500).await;
    let mut replica: BTreeMap<String, PlaidTransaction> = initial
        .added
        .into_iter()
        .map(|t| (t.transaction_id.clone(), t))
        .collect();

    let (status, report) = bank
        .admin_post(
            &format!("/admin/items/{item_id}/mutate"),
            json!({"add": 7, "modify": 11, "remove": 5, "fire_webhook": false}),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["webhook_status"], Value::Null);

    let delta = bank.sync_loop(&token, &initial.cursor, 4).await;
    assert_eq!(ids(&delta.added), strings(&report["added"]));
    assert_eq!(ids(&delta.modified), strings(&report["modified"]));
    let mut removed = delta.removed.clone();
    removed.sort();
    assert_eq!(removed, strings(&report["removed"]));
    for id in &delta.removed {
        assert!(replica.remove(id).is_some(), "removed an unknown id");
    }
    for t in delta.modified {
        let old = replica.insert(t.transaction_id.clone(), t.clone());
        assert_ne!(
            old.as_ref(),
            Some(&t),
            "a modification changes the transaction"
        );
    }
    for t in delta.added {
        assert!(replica.insert(t.transaction_id.clone(), t).is_none());
    }
    let replica: Vec<PlaidTransaction> = replica.into_values().collect();
    assert_eq!(replica, bank.current(&item_id).await);
}

#[tokio::test]
async fn data_changing_under_a_loop_answers_mutation_during_pagination_then_restart_works() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(1_000, None).await;
    let (status, page) = bank.sync(&token, "", 100).await;
    assert_eq!(status, 200);
    assert_eq!(page["has_more"], true);
    bank.admin_post(
        &format!("/admin/items/{item_id}/mutate"),
        json!({"add": 1, "fire_webhook": false}),
    )
    .await;

    let (status, body) = bank
        .sync(&token, page["next_cursor"].as_str().unwrap(), 100)
        .await;
    assert_plaid_error(
        status,
        &body,
        400,
        "TRANSACTIONS_ERROR",
        wire::MUTATION_DURING_PAGINATION,
    );
    assert!(provider_error(status, &body).class() == ErrorClass::RestartPagination);

    // Restarting from the loop's first cursor sees the new state, whole.
    let restarted = bank.sync_loop(&token, "", 100).await;
    assert_eq!(sorted(restarted.added), bank.current(&item_id).await);
    assert_eq!(bank.stats(&item_id).await.mutation_errors_sent, 1);
}

#[tokio::test]
async fn injected_mutation_during_pagination_hits_only_mid_loop_pages() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(300, None).await;
    bank.faults(&item_id, json!({"mutation_during_pagination": 2}))
        .await;
    for _ in 0..2 {
        let (status, page) = bank.sync(&token, "", 100).await;
        assert_eq!(status, 200, "the first page of a loop is not mid-loop");
        let (status, body) = bank
            .sync(&token, page["next_cursor"].as_str().unwrap(), 100)
            .await;
        assert_plaid_error(
            status,
            &body,
            400,
            "TRANSACTIONS_ERROR",
            wire::MUTATION_DURING_PAGINATION,
        );
    }
    let done = bank.sync_loop(&token, "", 100).await;
    assert_eq!((done.pages, done.added.len()), (3, 300));
    assert_eq!(bank.stats(&item_id).await.mutation_errors_sent, 2);
}

#[tokio::test]
async fn bad_foreign_and_injected_cursor_rejections_name_the_cursor() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(50, None).await;
    let (_, other_token) = bank.create_item(50, None).await;
    let other = bank.sync_loop(&other_token, "", 500).await;

    for cursor in ["garbage!", "AAAA", other.cursor.as_str()] {
        let (status, body) = bank.sync(&token, cursor, 100).await;
        assert_plaid_error(status, &body, 400, "INVALID_REQUEST", wire::INVALID_FIELD);
        assert!(
            body["error_message"].as_str().unwrap().contains("cursor"),
            "{body}"
        );
        assert!(provider_error(status, &body).class() == ErrorClass::CursorRejected);
    }

    let settled = bank.sync_loop(&token, "", 500).await;
    bank.faults(&item_id, json!({"reject_cursor": 1})).await;
    // An empty cursor is never rejected and does not use up the fault.
    assert_eq!(bank.sync(&token, "", 100).await.0, 200);
    let (status, body) = bank.sync(&token, &settled.cursor, 100).await;
    assert_plaid_error(status, &body, 400, "INVALID_REQUEST", wire::INVALID_FIELD);
    assert!(provider_error(status, &body).class() == ErrorClass::CursorRejected);
    assert_eq!(bank.sync(&token, &settled.cursor, 100).await.0, 200);
    assert_eq!(bank.stats(&item_id).await.cursor_rejections_sent, 4);
}

#[tokio::test]
async fn credentials_bodies_tokens_and_counts_are_checked_like_plaid() {
    let bank = start().await;
    let (_, token) = bank.create_item(5, None).await;
    let sync_body = json!({"access_token": token}).to_string();

    let (status, body) = bank.raw("/transactions/sync", sync_body.clone(), &[]).await;
    assert_plaid_error(status, &body, 400, "INVALID_REQUEST", wire::MISSING_FIELDS);
    let wrong = json!({"access_token": token, "client_id": CLIENT_ID, "secret": "nope"});
    let (status, body) = bank.raw("/transactions/sync", wrong.to_string(), &[]).await;
    assert_plaid_error(status, &body, 400, "INVALID_INPUT", wire::INVALID_API_KEYS);
    let headers = [("PLAID-CLIENT-ID", CLIENT_ID), ("PLAID-SECRET", SECRET)];
    let (status, body) = bank.raw("/transactions/sync", sync_body, &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["transactions_update_status"],
        "HISTORICAL_UPDATE_COMPLETE"
    );
    assert!(body["accounts"].as_array().unwrap().len() >= 2);

    let (status, first) = bank
        .raw("/transactions/sync", "{not json".into(), &[])
        .await;
    assert_plaid_error(status, &first, 400, "INVALID_REQUEST", wire::INVALID_BODY);
    let (status, second) = bank
        .raw("/transactions/sync", "{not json".into(), &[])
        .await;
    assert_eq!(status, 400);
    assert_ne!(
        first["request_id"], second["request_id"],
        "fresh request ids"
    );

    let (status, body) = bank
        .plaid(
            "/transactions/sync",
            json!({"access_token": "access-sandbox-nope"}),
        )
        .await;
    assert_plaid_error(
        status,
        &body,
        400,
        "INVALID_INPUT",
        wire::INVALID_ACCESS_TOKEN,
    );
    for count in [0, 501] {
        let (status, body) = bank.sync(&token, "", count).await;
        assert_plaid_error(status, &body, 400, "INVALID_REQUEST", wire::INVALID_FIELD);
        assert!(
            provider_error(status, &body).class() != ErrorClass::CursorRejected,
            "{body}"
        );
    }
    let (status, body) = bank.plaid("/nope", json!({})).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
}

#[tokio::test]
async fn webhooks_are_signed_like_plaid_and_verify_against_the_served_jwk() {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (item_id, _) = bank.create_item(20, Some(&hook.url)).await;
    let (status, report) = bank
        .admin_post(&format!("/admin/items/{item_id}/mutate"), json!({"add": 1}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(report["webhook_status"], 200);

    let received = hook.drain();
    assert_eq!(received.len(), 1);
    let (headers, body) = &received[0];
    let jwt = headers["plaid-verification"].to_str().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            jwt.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let jwk = bank.jwk(header["kid"].as_str().unwrap()).await;
    let claims = webhooks::verify_webhook(&jwk, jwt, body);
    assert!((chrono::Utc::now().timestamp() - claims.iat).abs() < 600);
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        body,
        json!({"webhook_type": "TRANSACTIONS", "webhook_code": "SYNC_UPDATES_AVAILABLE",
               "item_id": item_id, "initial_update_complete": true,
               "historical_update_complete": true, "environment": "sandbox"})
    );

    let (status, body) = bank
        .plaid(
            "/webhook_verification_key/get",
            json!({"key_id": "unknown"}),
        )
        .await;
    assert_plaid_error(
        status,
        &body,
        400,
        "INVALID_INPUT",
        "INVALID_WEBHOOK_VERIFICATION_KEY_ID",
    );
}

#[tokio::test]
async fn duplicate_webhook_fault_delivers_extra_identical_copies() {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (item_id, _) = bank.create_item(5, Some(&hook.url)).await;
    bank.faults(&item_id, json!({"duplicate_webhooks": 2}))
        .await;
    let (status, body) = bank
        .admin_post(&format!("/admin/items/{item_id}/webhook"), json!({}))
        .await;
    assert_eq!((status, body["webhook_status"].as_u64()), (200, Some(200)));
    let received = hook.drain();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|(_, b)| b == &received[0].1));
    assert_eq!(bank.stats(&item_id).await.webhooks_sent, 3);
}

#[tokio::test]
async fn a_failed_delivery_is_retried_until_it_is_accepted() {
    let bank = start().await;
    let mut hook = receiver(&[503, 500]).await;
    let (item_id, _) = bank.create_item(5, Some(&hook.url)).await;
    let (_, body) = bank
        .admin_post(&format!("/admin/items/{item_id}/webhook"), json!({}))
        .await;
    assert_eq!(body["webhook_status"], 200);
    let received = hook.drain();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|(_, b)| b == &received[0].1));
    assert_eq!(
        bank.stats(&item_id).await.webhooks_sent,
        1,
        "retries are one delivery"
    );
}

#[tokio::test]
async fn two_concurrent_syncs_for_one_token_count_as_overlapping() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(10, None).await;
    let (_, other_token) = bank.create_item(10, None).await;
    bank.faults(&item_id, json!({"sync_latency_ms": 500})).await;
    let (a, b, c) = tokio::join!(
        bank.sync(&token, "", 100),
        bank.sync(&token, "", 100),
        bank.sync(&other_token, "", 100),
    );
    assert_eq!((a.0, b.0, c.0), (200, 200, 200));
    let stats = bank.stats(&item_id).await;
    assert_eq!(stats.sync_calls, 2);
    assert_eq!(stats.overlapping_syncs, 1);
    assert_eq!(stats.max_concurrent_syncs, 2);
    assert_eq!(stats.in_flight_syncs, 0);

    // Sequential calls never overlap.
    bank.faults(&item_id, json!({"sync_latency_ms": 0})).await;
    bank.sync(&token, "", 100).await;
    bank.sync(&token, "", 100).await;
    assert_eq!(bank.stats(&item_id).await.overlapping_syncs, 1);
}

#[tokio::test]
async fn public_tokens_exchange_once_for_a_working_access_token() {
    let bank = start().await;
    let (status, created) = bank
        .plaid(
            "/sandbox/public_token/create",
            json!({"institution_id": "ins_109508", "initial_products": ["transactions"],
                   "options": {"webhook": "http://127.0.0.1:9/hook"}}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let public_token = created["public_token"].as_str().unwrap();
    assert!(public_token.starts_with("public-sandbox-"));
    let (status, exchanged) = bank
        .plaid(
            "/item/public_token/exchange",
            json!({"public_token": public_token}),
        )
        .await;
    assert_eq!(status, 200, "{exchanged}");
    let token = exchanged["access_token"].as_str().unwrap();
    assert!(token.starts_with("access-sandbox-"));
    let (status, again) = bank
        .plaid(
            "/item/public_token/exchange",
            json!({"public_token": public_token}),
        )
        .await;
    assert_plaid_error(
        status,
        &again,
        400,
        "INVALID_INPUT",
        wire::INVALID_PUBLIC_TOKEN,
    );

    let history = bank.sync_loop(token, "", 500).await;
    assert_eq!(history.added.len(), DEFAULT_HISTORY as usize);
    // Fields Plaid's generated client libraries require are present (as null or
    // all-null objects when unknown).
    let (_, page) = bank.sync(token, "", 1).await;
    let txn = page["added"][0].as_object().unwrap();
    for field in [
        "location",
        "payment_meta",
        "account_owner",
        "authorized_datetime",
        "datetime",
    ] {
        assert!(txn.contains_key(field), "{field} missing");
    }
    assert!(txn["location"].is_object() && txn["payment_meta"].is_object());
    let (status, item) = bank
        .plaid("/item/get", json!({"access_token": token}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(item["item"]["item_id"], exchanged["item_id"]);
    assert_eq!(item["item"]["webhook"], "http://127.0.0.1:9/hook");
    assert_eq!(item["item"]["error"], Value::Null);
}

#[tokio::test]
async fn reset_login_fires_item_error_and_blocks_syncs_until_repaired() {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (item_id, token) = bank.create_item(5, Some(&hook.url)).await;
    let (status, body) = bank
        .plaid("/sandbox/item/reset_login", json!({"access_token": token}))
        .await;
    assert_eq!((status, body["reset_login"].as_bool()), (200, Some(true)));
    let received = hook.drain();
    assert_eq!(received.len(), 1);
    let webhook: Value = serde_json::from_slice(&received[0].1).unwrap();
    assert_eq!(
        (
            webhook["webhook_type"].as_str(),
            webhook["webhook_code"].as_str()
        ),
        (Some("ITEM"), Some("ERROR"))
    );
    assert_eq!(webhook["error"]["error_code"], wire::ITEM_LOGIN_REQUIRED);

    let (status, body) = bank.sync(&token, "", 100).await;
    assert_plaid_error(status, &body, 400, "ITEM_ERROR", wire::ITEM_LOGIN_REQUIRED);
    let (_, item) = bank
        .plaid("/item/get", json!({"access_token": token}))
        .await;
    assert_eq!(
        item["item"]["error"]["error_code"],
        wire::ITEM_LOGIN_REQUIRED
    );

    bank.faults(&item_id, json!({"login_required": false}))
        .await;
    assert_eq!(bank.sync(&token, "", 100).await.0, 200);
}

#[tokio::test]
async fn sandbox_transactions_create_adds_to_the_log_and_fires_sync_updates() {
    let bank = start().await;
    let mut hook = receiver(&[]).await;
    let (_, token) = bank.create_item(10, Some(&hook.url)).await;
    let settled = bank.sync_loop(&token, "", 500).await;
    let (status, body) = bank
        .plaid(
            "/sandbox/transactions/create",
            json!({"access_token": token, "transactions": [
                {"amount": 12.34, "date_posted": "2024-05-02", "date_transacted": "2024-05-01", "description": "Corner Bakery"},
                {"amount": -100.0, "date_posted": "2024-05-03", "date_transacted": "2024-05-03", "description": "Refund"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let webhook: Value = serde_json::from_slice(&hook.drain()[0].1).unwrap();
    assert_eq!(webhook["webhook_code"], "SYNC_UPDATES_AVAILABLE");

    let delta = bank.sync_loop(&token, &settled.cursor, 100).await;
    let mut got: Vec<(String, f64, String, Option<String>)> = delta
        .added
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.amount,
                t.date.clone(),
                t.authorized_date.clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            (
                "Corner Bakery".into(),
                12.34,
                "2024-05-02".into(),
                Some("2024-05-01".into())
            ),
            (
                "Refund".into(),
                -100.0,
                "2024-05-03".into(),
                Some("2024-05-03".into())
            ),
        ]
    );

    let (status, body) = bank
        .plaid(
            "/sandbox/transactions/create",
            json!({"access_token": token, "transactions": [
                {"amount": 1.0, "date_posted": "May 2", "date_transacted": "2024-05-01", "description": "x"}]}),
        )
        .await;
    assert_plaid_error(status, &body, 400, "INVALID_REQUEST", wire::INVALID_FIELD);
}

#[tokio::test]
async fn transactions_get_pages_a_window_newest_first() {
    let bank = start().await;
    let (item_id, token) = bank.create_item(2_000, None).await;
    let today = chrono::Utc::now().date_naive();
    let start_date = generate::date_str(today - chrono::Duration::days(90));
    let end_date = generate::date_str(today - chrono::Duration::days(10));
    let expected: Vec<String> = {
        let current = bank.current(&item_id).await;
        let mut ids: Vec<String> = current
            .iter()
            .filter(|t| t.date >= start_date && t.date <= end_date)
            .map(|t| t.transaction_id.clone())
            .collect();
        ids.sort();
        ids
    };
    let mut got: Vec<PlaidTransaction> = Vec::new();
    loop {
        let (status, page) = bank
            .plaid(
                "/transactions/get",
                json!({"access_token": token, "start_date": start_date, "end_date": end_date,
                       "options": {"count": 37, "offset": got.len()}}),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["total_transactions"].as_u64().unwrap() as usize,
            expected.len()
        );
        assert_eq!(page["item"]["item_id"], item_id.as_str());
        let rows: Vec<PlaidTransaction> =
            serde_json::from_value(page["transactions"].clone()).unwrap();
        if rows.is_empty() {
            break;
        }
        got.extend(rows);
    }
    assert!(
        got.windows(2).all(|w| w[0].date >= w[1].date),
        "newest first"
    );
    assert_eq!(ids(&got), expected);
    assert!(!expected.is_empty());
    assert_eq!(
        bank.stats(&item_id).await.get_calls as usize,
        got.len().div_ceil(37) + 1
    );
}

#[tokio::test]
async fn admin_errors_are_json_with_a_code() {
    let bank = start().await;
    let (item_id, _) = bank.create_item(3, None).await;
    let (status, body) = bank.admin_get("/admin/items/nope/stats").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = bank
        .admin_post(
            &format!("/admin/items/{item_id}/faults"),
            json!({"bogus": 1}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    let (status, body) = bank
        .admin_post(
            &format!("/admin/items/{item_id}/mutate"),
            json!({"remove": 4}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("not_enough_transactions"))
    );
    let (status, body) = bank
        .admin_post("/admin/webhook_url", json!({"url": "ftp://x"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_url"))
    );
    let (status, body) = bank.admin_get("/admin/nothing").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // Defaults: an empty body creates a 100-transaction item.
    let (status, created) = bank.raw("/admin/items", String::new(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        bank.current(created["item_id"].as_str().unwrap())
            .await
            .len(),
        100
    );
}

#[tokio::test]
async fn demo_tick_adds_one_transaction_and_notifies_the_default_webhook() {
    let bank = start().await;
    assert_eq!(bank.sandbox.demo_tick(&["item-none".into()]).await, None);
    let mut hook = receiver(&[]).await;
    bank.sandbox.set_default_webhook_url(hook.url.clone());
    let items: Vec<CreatedItem> = (0..3).map(|_| bank.sandbox.create_item(10, None)).collect();
    // A user's own item is never touched by the demo activity.
    let own = bank.sandbox.create_item(10, None);
    let demo: Vec<String> = items.iter().map(|i| i.item_id.clone()).collect();
    for _ in 0..20 {
        let ticked = bank.sandbox.demo_tick(&demo).await.unwrap();
        assert!(demo.contains(&ticked), "{ticked}");
    }
    assert_eq!(
        bank.sandbox
            .current_transactions(&own.item_id)
            .unwrap()
            .len(),
        10
    );
    hook.drain();
    let ticked = bank.sandbox.demo_tick(&demo).await.unwrap();
    // Three items of ten, twenty ticks before this one.
    let before: usize = 3 * 10 + 20;
    let total: usize = demo
        .iter()
        .map(|id| bank.sandbox.current_transactions(id).unwrap().len())
        .sum();
    assert_eq!(total, before + 1);
    let received = hook.drain();
    assert_eq!(received.len(), 1);
    let webhook: Value = serde_json::from_slice(&received[0].1).unwrap();
    assert_eq!(webhook["item_id"], ticked.as_str());
}

#[tokio::test]
async fn same_seed_generates_the_same_items() {
    let config = || SandboxConfig {
        client_id: CLIENT_ID.into(),
        secret: SECRET.into(),
        default_webhook_url: None,
        seed: 7,
        data_dir: None,
        bank: Default::default(),
    };
    let (a, b) = (
        Sandbox::new(config()).unwrap(),
        Sandbox::new(config()).unwrap(),
    );
    let (ia, ib) = (a.create_item(200, None), b.create_item(200, None));
    assert_eq!(ia, ib);
    assert_eq!(
        a.current_transactions(&ia.item_id),
        b.current_transactions(&ib.item_id)
    );
    let next = a.create_item(200, None);
    assert_ne!(next.item_id, ia.item_id);
}

#[tokio::test]
async fn a_50000_transaction_item_has_unique_ids_and_pages_at_count_500() {
    let bank = start().await;
    let item = bank.sandbox.create_item(50_000, None);
    let current = bank.sandbox.current_transactions(&item.item_id).unwrap();
    assert_eq!(current.len(), 50_000);
    assert!(current
        .windows(2)
        .all(|w| w[0].transaction_id < w[1].transaction_id));
    let (status, page) = bank.sync(&item.access_token, "", 500).await;
    assert_eq!(status, 200);
    assert_eq!(page["added"].as_array().unwrap().len(), 500);
    assert_eq!(page["has_more"], true);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let bank = start().await;
    let url = bank.url("/item/get");
    bank.handle.shutdown().await.unwrap();
    assert!(reqwest::Client::new().post(url).send().await.is_err());
}

/// Timings for the report: `cargo test --lib sandbox::tests::timings -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn timings() {
    let bank = start().await;
    let started = std::time::Instant::now();
    let item = bank.sandbox.create_item(50_000, None);
    println!("create 50,000-txn item: {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let all = bank.sync_loop(&item.access_token, "", 500).await;
    let elapsed = started.elapsed();
    println!(
        "sync 50,000 txns in {} pages of 500 over HTTP: {:?} ({:?}/page)",
        all.pages,
        elapsed,
        elapsed / all.pages as u32
    );
}

mod fault_tests;
