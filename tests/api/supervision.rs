//! Supervision over HTTP: an account whose actor keeps panicking is restarted, then
//! quarantined (the status shows it, webhooks for it are still acknowledged and kept),
//! its neighbour keeps syncing throughout, and `POST …/resume` brings it back with
//! everything that arrived meanwhile.
//!
//! The panics come from `Registry::inject_panic`, which has no route: this test builds
//! the app itself to hold the registry.

use std::sync::Arc;
use std::time::Duration;

use acctor::actors::Registry;
use acctor::app::App;
use acctor::domain::AccountId;
use acctor::sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};

use secrecy::ExposeSecret;

use crate::helpers::{admin_client, test_settings, CONVERGE};

struct Env {
    app_url: String,
    sandbox_url: String,
    client: reqwest::Client,
    sandbox: Sandbox,
    registry: Arc<Registry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn spawn() -> Env {
    let sandbox = Sandbox::new(SandboxConfig {
        client_id: "acctor-demo-client".to_string(),
        secret: "acctor-demo-secret".to_string(),
        default_webhook_url: None,
        seed: 11,
        data_dir: None,
        bank: Default::default(),
    })
    .expect("sandbox");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sandbox");
    let handle = sandbox.clone().serve(listener).await;
    let sandbox_url = handle.base_url();
    // The sandbox lives as long as the runtime; its handle is not needed to stop it.
    std::mem::forget(handle);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(dir.path(), &sandbox_url);
    settings.actors.restart_backoff_initial = Duration::from_millis(10);
    settings.actors.restart_backoff_max = Duration::from_millis(50);
    settings.actors.max_restarts = 2;
    settings.actors.restart_window = Duration::from_secs(600);
    let app = App::build(settings).await.expect("app builds");
    let app_url = format!("http://{}", app.addr());
    sandbox.set_default_webhook_url(format!("{app_url}/webhooks/plaid"));
    let registry = app.state().ctx.registry.clone();
    let client = admin_client(app.admin_token().expose_secret());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Env {
        app_url,
        sandbox_url,
        client,
        sandbox,
        registry,
        stop: Some(stop),
        join,
        _dir: dir,
    }
}

impl Env {
    async fn link(&self, history: u32, owner: &str) -> (AccountId, String) {
        let item = self.sandbox.create_item(history, None);
        let response = self
            .client
            .post(format!("{}/v1/accounts", self.app_url))
            .json(&json!({
                "provider": "plaid",
                "item_id": item.item_id,
                "access_token": item.access_token,
                "owner_id": owner,
            }))
            .send()
            .await
            .expect("link");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("json");
        let id = AccountId(body["id"].as_str().expect("id").to_string());
        (id, item.item_id)
    }

    async fn status(&self, id: &AccountId) -> Value {
        self.client
            .get(format!("{}/v1/accounts/{id}/sync", self.app_url))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    }

    /// Adds rows at the sandbox, which fires a webhook at acctor; returns the status
    /// acctor answered the webhook with.
    async fn add_rows(&self, item: &str, add: u32) -> Value {
        let response = self
            .client
            .post(format!("{}/admin/items/{item}/mutate", self.sandbox_url))
            .json(&json!({ "add": add, "modify": 0, "remove": 0 }))
            .send()
            .await
            .expect("mutate");
        assert!(response.status().is_success());
        let body: Value = response.json().await.expect("json");
        body["webhook_status"].clone()
    }

    /// Polls the status until `done` holds (an observable condition, not a timed wait).
    async fn wait_for(&self, id: &AccountId, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let status = self.status(id).await;
            if done(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "account {id} never reached {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join
            .await
            .expect("app task")
            .expect("app stops cleanly");
    }
}

fn settled_with(transactions: u64) -> impl Fn(&Value) -> bool {
    move |s: &Value| {
        s["pending_inbox"].as_u64() == Some(0) && s["transactions"].as_u64() == Some(transactions)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_account_is_quarantined_its_neighbour_keeps_syncing_and_resume_recovers_it() {
    let env = spawn().await;
    let (sick, sick_item) = env.link(50, "owner-sick").await;
    let (healthy, healthy_item) = env.link(50, "owner-healthy").await;
    env.wait_for(&sick, "its initial sync", settled_with(50))
        .await;
    env.wait_for(&healthy, "its initial sync", settled_with(50))
        .await;

    // Every sync of `sick` now panics: two restarts, then quarantine.
    env.registry.inject_panic(&sick, u32::MAX);
    assert_eq!(env.add_rows(&sick_item, 5).await, 200);
    let status = env
        .wait_for(&sick, "quarantine", |s| {
            s["quarantined"] == true && s["quarantine"].is_object()
        })
        .await;
    assert_eq!(status["state"], "quarantined", "{status}");
    // The quarantine opened an incident (written right after the mark).
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let incident = loop {
        let page: Value = env
            .client
            .get(format!(
                "{}/v1/incidents?state=open&kind=quarantined&account={sick}",
                env.app_url
            ))
            .send()
            .await
            .expect("incidents")
            .json()
            .await
            .expect("json");
        if let Some(first) = page["incidents"].get(0) {
            break first.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no quarantine incident"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(incident["details"]["failures"], 3, "{incident}");
    assert_eq!(incident["severity"], "critical", "{incident}");
    assert_eq!(status["restarts"], 2, "{status}");
    assert_eq!(status["quarantine"]["failures"], 3, "{status}");
    assert_eq!(status["active"], false, "{status}");

    // A manual sync is refused with a clear error.
    let response = env
        .client
        .post(format!("{}/v1/accounts/{sick}/sync", env.app_url))
        .send()
        .await
        .expect("sync request");
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "quarantined", "{body}");

    // Webhooks for it are still acknowledged (200 means on disk) and kept, and wake
    // nothing. (The sandbox's second body equals the first, so dedup keeps one entry.)
    assert_eq!(env.add_rows(&sick_item, 3).await, 200);
    let status = env.status(&sick).await;
    assert_eq!(status["pending_inbox"], 1, "{status}");
    assert_eq!(status["active"], false, "{status}");
    assert_eq!(status["state"], "quarantined", "{status}");
    assert_eq!(status["transactions"], 50, "{status}");

    // The neighbour never noticed.
    assert_eq!(env.add_rows(&healthy_item, 7).await, 200);
    let status = env
        .wait_for(&healthy, "its webhook synced", settled_with(57))
        .await;
    assert_eq!(status["restarts"], 0, "{status}");
    assert_eq!(status["quarantined"], false, "{status}");

    // Resume: quarantine lifted, count reset, everything kept is synced.
    env.registry.inject_panic(&sick, 0);
    let response = env
        .client
        .post(format!("{}/v1/accounts/{sick}/resume", env.app_url))
        .send()
        .await
        .expect("resume");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["lifted"]["failures"], 3, "{body}");
    let status = env
        .wait_for(&sick, "recovery after resume", settled_with(58))
        .await;
    assert_eq!(status["quarantined"], false, "{status}");
    assert!(status["quarantine"].is_null(), "{status}");
    assert_eq!(status["restarts"], 0, "{status}");
    let incident: Value = env
        .client
        .get(format!("{}/v1/incidents/{}", env.app_url, incident["id"]))
        .send()
        .await
        .expect("incident")
        .json()
        .await
        .expect("json");
    assert!(
        incident["resolved_at"].is_string(),
        "resume resolves it: {incident}"
    );
    env.stop().await;
}
