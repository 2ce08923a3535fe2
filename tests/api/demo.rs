//! The local demo (`acctor serve` with the embedded sandbox): its sandbox keeps its state
//! in the data dir, so a restart keeps the demo accounts (same ids) and the items a user
//! linked by hand; `--reset-demo` starts over on purpose.

use std::time::Duration;

use acctor::app::App;
use acctor::config::Settings;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::helpers::{admin_client, CONVERGE};

struct Demo {
    url: String,
    sandbox_url: String,
    client: reqwest::Client,
    stop: oneshot::Sender<()>,
    join: JoinHandle<anyhow::Result<()>>,
}

async fn start(dir: &std::path::Path, reset_demo: bool) -> Demo {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".parse().expect("addr");
    settings.store.data_dir = dir.to_path_buf();
    settings.store.cache_capacity_bytes = 16 * 1024 * 1024;
    settings.sandbox.listen = "127.0.0.1:0".parse().expect("addr");
    settings.sandbox.demo_items = 2;
    settings.sandbox.demo_history = 5;
    settings.sandbox.demo_tick = Duration::ZERO;
    settings.sandbox.reset_demo = reset_demo;
    let app = App::build(settings).await.expect("app builds");
    let url = format!("http://{}", app.addr());
    let sandbox_url = app.sandbox_url().expect("the embedded sandbox runs");
    let client = admin_client(app.admin_token().expose_secret());
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Demo {
        url,
        sandbox_url,
        client,
        stop,
        join,
    }
}

impl Demo {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.join.await.expect("app task").expect("app stops");
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.expect("json")
    }

    async fn sandbox(&self, path: &str, mut body: Value) -> Value {
        body["client_id"] = json!("acctor-demo-client");
        body["secret"] = json!("acctor-demo-secret");
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.sandbox_url))
            .json(&body)
            .send()
            .await
            .expect("sandbox call");
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.expect("json")
    }

    /// The demo account ids, by alias.
    async fn demo_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for n in 0..2 {
            let account = self
                .get(&format!("/v1/accounts/demo-user-{n}@example.com"))
                .await;
            assert_eq!(account["status"], "linked");
            ids.push(account["id"].as_str().expect("id").to_string());
        }
        ids
    }

    /// Waits for the account's first committed sync; its status then.
    async fn first_commit(&self, account: &str) -> Value {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let status = self.get(&format!("/v1/accounts/{account}/sync")).await;
            if status["sync_count"].as_u64().is_some_and(|n| n >= 1) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never synced: {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the account holds `count` transactions.
    async fn wait_for_rows(&self, account: &str, count: u64) -> Value {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let status = self.get(&format!("/v1/accounts/{account}/sync")).await;
            if status["transactions"] == count {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw {count} rows: {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_demo_and_hand_linked_items_and_a_reset_starts_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = start(dir.path(), false).await;
    let first_ids = demo.demo_ids().await;
    // A user links an item of their own, Plaid's way: public token, exchange, link.
    let public = demo
        .sandbox(
            "/sandbox/public_token/create",
            json!({ "institution_id": "ins_109508", "initial_products": ["transactions"] }),
        )
        .await;
    let exchanged = demo
        .sandbox(
            "/item/public_token/exchange",
            json!({ "public_token": public["public_token"] }),
        )
        .await;
    let linked = demo
        .client
        .post(format!("{}/v1/accounts", demo.url))
        .json(&json!({
            "provider": "plaid",
            "item_id": exchanged["item_id"],
            "access_token": exchanged["access_token"],
            "owner_id": "user-42",
            "aliases": ["ada@example.com"],
        }))
        .send()
        .await
        .expect("link");
    assert_eq!(linked.status(), 201);
    let own_rows = demo.first_commit("ada@example.com").await["transactions"]
        .as_u64()
        .expect("count");
    demo.stop().await;

    // Restarted: same demo accounts, and the hand-linked item still syncs.
    let demo = start(dir.path(), false).await;
    assert_eq!(demo.demo_ids().await, first_ids);
    let item_id = exchanged["item_id"].as_str().expect("item id");
    demo.sandbox(
        "/sandbox/transactions/create",
        json!({
            "access_token": exchanged["access_token"],
            "transactions": [{
                "amount": 4.5, "date_posted": "2026-01-02", "date_transacted": "2026-01-02",
                "description": "Coffee with Ada"
            }],
        }),
    )
    .await;
    let expected = own_rows + 1;
    let status = demo.wait_for_rows("ada@example.com", expected).await;
    assert_ne!(status["state"], "access_revoked", "{status}");
    let listed = demo.get("/v1/accounts/ada@example.com").await;
    assert_eq!(listed["item_id"], item_id);
    demo.stop().await;

    // Reset on purpose: new demo accounts, the old ones purged.
    let demo = start(dir.path(), true).await;
    let new_ids = demo.demo_ids().await;
    for (old, new) in first_ids.iter().zip(&new_ids) {
        assert_ne!(old, new);
        let gone = demo
            .client
            .get(format!("{}/v1/accounts/{old}", demo.url))
            .send()
            .await
            .expect("get");
        assert_eq!(gone.status(), 404, "{old} purged");
    }
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_links_a_stripe_account_that_backfills_and_a_restart_replaces_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = start(dir.path(), false).await;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let report = loop {
        let report = demo
            .get("/v1/accounts/demo-stripe@example.com/stripe")
            .await;
        let types = report["types"].as_array().cloned().unwrap_or_default();
        if types.len() == 10 && types.iter().all(|t| t["visible"] == true) {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo never backfilled: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for object_type in report["types"].as_array().expect("types") {
        assert_eq!(object_type["held"], 40, "{object_type}");
    }
    let first = report["account_id"].clone();
    demo.stop().await;
    // The sandbox's Stripe lives in memory: a restart links a fresh demo account.
    let demo = start(dir.path(), false).await;
    let again = demo
        .get("/v1/accounts/demo-stripe@example.com/stripe")
        .await;
    assert_ne!(again["account_id"], first);
    demo.stop().await;
}
