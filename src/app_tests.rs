//! The whole application over a store that cannot write: webhooks are refused with 503,
//! a Retry-After and a JSON error body, never acknowledged; once the store recovers the
//! provider's retry is accepted and synced.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::failing::FailingStore;
use crate::store::SledStore;

struct Running {
    url: String,
    /// The admin API token.
    token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    join: JoinHandle<anyhow::Result<()>>,
}

async fn start(sandbox_url: &str, dir: &tempfile::TempDir) -> (Running, Arc<FailingStore>) {
    let mut settings = Settings::defaults();
    settings.server.listen = "127.0.0.1:0".parse().expect("addr");
    settings.store.data_dir = dir.path().to_path_buf();
    settings.store.cache_capacity_bytes = 8 * 1024 * 1024;
    settings.plaid.base_url = sandbox_url.to_string();
    settings.bank.base_url = format!("{sandbox_url}/bank");
    settings.stripe.base_url = format!("{sandbox_url}/stripe");
    settings.sandbox.embedded = false;
    settings.sandbox.demo_items = 0;
    settings.secrets.key = Some(secrecy::SecretString::from(
        "test:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned(),
    ));
    let failing = std::sync::Mutex::new(None);
    let app = App::build_with_store_layer(settings, crate::clock::system(), |inner| {
        let store = FailingStore::new(inner);
        *failing.lock().expect("lock") = Some(store.clone());
        store
    })
    .await
    .expect("app builds");
    let failing = failing.lock().expect("lock").take().expect("layer applied");
    let url = format!("http://{}", app.addr());
    let token = app.admin_token().expose_secret().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (
        Running {
            url,
            token,
            stop,
            join,
        },
        failing,
    )
}

async fn post_webhook(
    client: &reqwest::Client,
    url: &str,
    sandbox: &Sandbox,
    item_id: &str,
    n: u32,
) -> (u16, Option<String>, Value) {
    let body = serde_json::to_vec(&json!({
        "webhook_type": "TRANSACTIONS",
        "webhook_code": "SYNC_UPDATES_AVAILABLE",
        "item_id": item_id,
        "initial_update_complete": true,
        "historical_update_complete": true,
        "environment": "sandbox",
        "n": n,
    }))
    .expect("body");
    let jwt = sandbox.sign_webhook(&body, Utc::now().timestamp());
    let response = client
        .post(format!("{url}/webhooks/plaid"))
        .header("content-type", "application/json")
        .header("Plaid-Verification", jwt)
        .body(body)
        .send()
        .await
        .expect("webhook request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let json = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, json)
}

use chrono::Utc;

#[tokio::test]
async fn a_store_that_cannot_write_gets_webhooks_503_with_retry_after_never_2xx() {
    let sandbox = Sandbox::new(SandboxConfig {
        client_id: "acctor-demo-client".to_string(),
        secret: "acctor-demo-secret".to_string(),
        default_webhook_url: None,
        seed: 3,
        data_dir: None,
        bank: Default::default(),
    })
    .expect("sandbox");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let handle = sandbox.clone().serve(listener).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, failing) = start(&handle.base_url(), &dir).await;
    let client = reqwest::Client::new();
    // Webhooks from the sandbox's own mutations must not race the ones posted here.
    let item = sandbox.create_item(5, Some("http://127.0.0.1:9/nowhere".to_string()));
    let linked: Value = client
        .post(format!("{}/v1/accounts", app.url))
        .bearer_auth(&app.token)
        .json(&json!({
            "provider": "plaid", "item_id": item.item_id, "access_token": item.access_token,
            "owner_id": "owner-1", "aliases": [],
        }))
        .send()
        .await
        .expect("link")
        .json()
        .await
        .expect("link json");
    let account = linked["id"].as_str().expect("id").to_string();

    for (mode, n) in [("writes", 1), ("flush", 2)] {
        match mode {
            "writes" => failing.fail_writes.store(true, Ordering::SeqCst),
            _ => failing.fail_flush.store(true, Ordering::SeqCst),
        }
        let (status, retry_after, body) =
            post_webhook(&client, &app.url, &sandbox, &item.item_id, n).await;
        assert_eq!(status, 503, "{mode}: {body}");
        let seconds: u64 = retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{mode}: Retry-After in seconds, got {retry_after:?}"));
        assert!(seconds >= 1, "{mode}: {seconds}");
        assert_eq!(body["error"]["code"], "store_unavailable", "{mode}: {body}");
        assert!(body["error"]["message"].is_string(), "{mode}: {body}");
        failing.fail_writes.store(false, Ordering::SeqCst);
        failing.fail_flush.store(false, Ordering::SeqCst);
    }

    // Recovered: the provider's retry of the same event is acknowledged and synced.
    let (status, _, body) = post_webhook(&client, &app.url, &sandbox, &item.item_id, 1).await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = client
            .get(format!("{}/v1/accounts/{account}/sync", app.url))
            .bearer_auth(&app.token)
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json");
        // Acknowledged means in the inbox; it leaves only with a committed sync.
        if status["pending_inbox"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The layer holds the store: let go of it, so the stop does not wait for it.
    drop(failing);
    let _ = app.stop.send(());
    app.join.await.expect("join").expect("clean stop");
    handle.shutdown().await.expect("sandbox stops");
}

/// The data dir is free once `run_until_stopped` returns: its last step waits until
/// every other handle on the store is gone (while one lives, sled keeps the directory
/// locked and an in-process restart on it would fail), and gives up after its bound.
#[tokio::test]
async fn the_store_is_released_only_once_every_other_handle_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = || crate::store::SledStoreConfig {
        data_dir: dir.path().to_path_buf(),
        cache_capacity_bytes: 8 * 1024 * 1024,
        group_commit_window: Duration::ZERO,
    };
    let store = SledStore::open(config()).expect("open");
    let held = store.clone();
    let (let_go, released) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        let _ = released.await;
        drop(held);
    });
    let mut release = tokio::spawn(OpenedStore::Sled(store).release(Duration::from_secs(60)));
    // Another task still holds a handle: the release waits, the directory is locked.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut release)
            .await
            .is_err(),
        "released while another handle was alive"
    );
    assert!(SledStore::open(config()).is_err(), "the lock is still held");
    let _ = let_go.send(());
    release.await.expect("release task");
    holder.await.expect("holder");
    SledStore::open(config()).expect("the data dir is free again");

    // Past its bound it stops waiting (the process exit frees the lock then).
    let store = SledStore::open(config()).expect("open");
    let kept = store.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        OpenedStore::Sled(store).release(Duration::from_millis(20)),
    )
    .await
    .expect("gives up after its bound");
    drop(kept);
}
