//! The test harness: a real sandbox bank and a real acctor, both on 127.0.0.1:0 in a
//! fresh temp dir, talked to over HTTP. `spawn_env()` starts both and wires the
//! sandbox's webhooks to acctor. Every acctor request made through `TestEnv::client`
//! carries the admin bearer token (set once, as a default header, in `start_app`).

use std::sync::Arc;
use std::time::Duration;

use acctor::app::App;
use acctor::clock::ShiftedClock;
use acctor::config::{Settings, StoreBackend};
use acctor::http::AppState;
use acctor::sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use acctor::testing::PgServer;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any convergence wait may take before the test fails.
pub const CONVERGE: Duration = Duration::from_secs(60);

pub struct TestEnv {
    pub app_url: String,
    pub sandbox_url: String,
    /// Sends the admin token with every request.
    pub client: reqwest::Client,
    /// The running app's admin token (generated into the data dir by the app itself).
    pub admin_token: String,
    /// The running app's shared state (same registry, store and settings as the server).
    pub state: Option<AppState>,
    pub sandbox: Sandbox,
    pub data_dir: tempfile::TempDir,
    /// acctor's clock: the system time, jumped forward by tests (30-minute polls,
    /// 12-hour deadlines); kept across restarts.
    pub clock: Arc<ShiftedClock>,
    app: Option<RunningApp>,
    sandbox_handle: Option<SandboxHandle>,
}

struct RunningApp {
    stop: oneshot::Sender<()>,
    join: JoinHandle<anyhow::Result<()>>,
}

/// Which store this test's acctor runs on. PostgreSQL for the tests under
/// `on_postgres::` (main.rs includes the sync, webhook, retry, polling, reauth and
/// supervision modules there a second time; libtest names each test's thread after its
/// path), and for every test when `ACCTOR_TEST_STORE=postgres`; sled otherwise.
pub fn backend_of_this_test() -> StoreBackend {
    let on_postgres = std::thread::current()
        .name()
        .is_some_and(|name| name.starts_with("on_postgres::"));
    let forced = std::env::var("ACCTOR_TEST_STORE").is_ok_and(|v| v == "postgres");
    if on_postgres || forced {
        StoreBackend::Postgres
    } else {
        StoreBackend::Sled
    }
}

/// The PostgreSQL database of a test's data dir: created in the process's throwaway
/// server the first time, the same one for every restart on that data dir.
fn database_of(data_dir: &std::path::Path) -> String {
    static DATABASES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, String>>,
    > = std::sync::OnceLock::new();
    let mut databases = DATABASES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    databases
        .entry(data_dir.to_path_buf())
        .or_insert_with(|| {
            PgServer::shared()
                .and_then(|server| server.create_database())
                .unwrap_or_else(|error| panic!("throwaway PostgreSQL: {error}"))
                .url
        })
        .clone()
}

/// Everything the PostgreSQL store of `data_dir`'s database holds, as text (for tests
/// that look for what must not be stored in the clear).
pub fn postgres_dump(data_dir: &std::path::Path) -> String {
    let url = database_of(data_dir);
    let database = url.rsplit('/').next().expect("a database in the url");
    let server = PgServer::shared().expect("throwaway PostgreSQL");
    let tables = server
        .psql(
            database,
            "SELECT string_agg(table_name, ' ') FROM information_schema.tables \
             WHERE table_schema = 'acctor' AND table_type = 'BASE TABLE'",
        )
        .expect("list tables");
    tables
        .split_whitespace()
        .map(|table| {
            server
                .psql(
                    database,
                    &format!("SELECT to_jsonb(t)::text FROM acctor.{table} t"),
                )
                .expect("dump table")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn test_settings(data_dir: &std::path::Path, sandbox_url: &str) -> Settings {
    let mut settings = Settings::defaults();
    if backend_of_this_test() == StoreBackend::Postgres {
        settings.store.backend = StoreBackend::Postgres;
        settings.store.postgres.url = secrecy::SecretString::from(database_of(data_dir));
        settings.store.postgres.pool_size = 8;
    }
    settings.server.listen = "127.0.0.1:0".parse().expect("addr");
    settings.store.data_dir = data_dir.to_path_buf();
    settings.store.cache_capacity_bytes = 16 * 1024 * 1024;
    settings.plaid.base_url = sandbox_url.to_string();
    settings.bank.base_url = format!("{sandbox_url}/bank");
    settings.stripe.base_url = format!("{sandbox_url}/stripe");
    settings.sandbox.embedded = false;
    settings.sandbox.demo_items = 0;
    // A real provider URL (the external sandbox) needs a configured key for secrets at rest.
    settings.secrets.key = Some(secrecy::SecretString::from(
        "test:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned(),
    ));
    settings.actors.sync_retry_initial = Duration::from_millis(20);
    settings.actors.sync_retry_max = Duration::from_millis(200);
    settings
}

pub async fn spawn_env() -> TestEnv {
    spawn_env_with(|_| {}).await
}

pub async fn spawn_env_with(tweak: impl FnOnce(&mut Settings)) -> TestEnv {
    let sandbox = Sandbox::new(SandboxConfig {
        client_id: "acctor-demo-client".to_string(),
        secret: "acctor-demo-secret".to_string(),
        default_webhook_url: None,
        seed: 7,
        data_dir: None,
        bank: Default::default(),
    })
    .expect("sandbox");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sandbox");
    let handle = sandbox.clone().serve(listener).await;
    let sandbox_url = handle.base_url();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(data_dir.path(), &sandbox_url);
    tweak(&mut settings);
    let mut env = TestEnv {
        app_url: String::new(),
        sandbox_url,
        client: reqwest::Client::new(),
        admin_token: String::new(),
        state: None,
        sandbox,
        data_dir,
        clock: ShiftedClock::new(),
        app: None,
        sandbox_handle: Some(handle),
    };
    env.start_app(settings).await;
    env
}

impl TestEnv {
    /// Starts acctor (again) with `settings` and points the sandbox's webhooks at it.
    pub async fn start_app(&mut self, settings: Settings) {
        let app = App::build_with_clock(settings, self.clock.clone())
            .await
            .expect("app builds");
        self.app_url = format!("http://{}", app.addr());
        self.admin_token = app.admin_token().expose_secret().to_string();
        self.client = admin_client(&self.admin_token);
        self.state = Some(app.state().clone());
        self.sandbox
            .set_default_webhook_url(format!("{}/webhooks/plaid", self.app_url));
        self.sandbox
            .bank()
            .set_webhook_url(Some(format!("{}/webhooks/bank", self.app_url)));
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        self.app = Some(RunningApp { stop, join });
    }

    /// Stops acctor gracefully and waits for it to finish.
    pub async fn stop_app(&mut self) {
        // The state holds the store open: drop it, or a restart cannot lock the store.
        self.state = None;
        if let Some(app) = self.app.take() {
            let _ = app.stop.send(());
            app.join
                .await
                .expect("app task")
                .expect("app stops cleanly");
        }
    }

    /// Asks acctor to shut down and returns its task without waiting for it, so a test
    /// can talk to it while it drains.
    pub fn begin_stop(&mut self) -> JoinHandle<anyhow::Result<()>> {
        self.state = None;
        let app = self.app.take().expect("acctor is running");
        let _ = app.stop.send(());
        app.join
    }

    /// Restarts acctor on the same data dir.
    pub async fn restart_app(&mut self) {
        self.stop_app().await;
        let settings = test_settings(self.data_dir.path(), &self.sandbox_url);
        self.start_app(settings).await;
    }

    pub async fn shutdown(mut self) {
        self.stop_app().await;
        if let Some(handle) = self.sandbox_handle.take() {
            handle.shutdown().await.expect("sandbox shutdown");
        }
    }

    // ---- sandbox admin ----

    pub async fn create_item(&self, history: u32) -> (String, String) {
        let v: Value = self
            .post_json(
                &format!("{}/admin/items", self.sandbox_url),
                json!({ "history": history }),
            )
            .await;
        (
            v["item_id"].as_str().expect("item_id").to_string(),
            v["access_token"]
                .as_str()
                .expect("access_token")
                .to_string(),
        )
    }

    pub async fn mutate(&self, item_id: &str, add: u32, modify: u32, remove: u32) -> Value {
        self.post_json(
            &format!("{}/admin/items/{item_id}/mutate", self.sandbox_url),
            json!({ "add": add, "modify": modify, "remove": remove }),
        )
        .await
    }

    pub async fn mutate_quietly(&self, item_id: &str, add: u32, modify: u32, remove: u32) -> Value {
        self.post_json(
            &format!("{}/admin/items/{item_id}/mutate", self.sandbox_url),
            json!({ "add": add, "modify": modify, "remove": remove, "fire_webhook": false }),
        )
        .await
    }

    pub async fn faults(&self, item_id: &str, faults: Value) {
        let _: Value = self
            .post_json(
                &format!("{}/admin/items/{item_id}/faults", self.sandbox_url),
                faults,
            )
            .await;
    }

    pub async fn stats(&self, item_id: &str) -> Value {
        self.get_json(&format!("{}/admin/items/{item_id}/stats", self.sandbox_url))
            .await
    }

    /// The sandbox's current transactions, sorted by id.
    pub async fn sandbox_transactions(&self, item_id: &str) -> Vec<Value> {
        let v = self
            .get_json(&format!(
                "{}/admin/items/{item_id}/transactions",
                self.sandbox_url
            ))
            .await;
        let mut rows = v["transactions"].as_array().expect("transactions").clone();
        rows.sort_by(|a, b| {
            a["transaction_id"]
                .as_str()
                .cmp(&b["transaction_id"].as_str())
        });
        rows
    }

    // ---- acctor API ----

    pub async fn link(&self, item_id: &str, token: &str, owner: &str, aliases: &[&str]) -> Value {
        let response = self
            .client
            .post(format!("{}/v1/accounts", self.app_url))
            .json(&json!({
                "provider": "plaid",
                "item_id": item_id,
                "access_token": token,
                "owner_id": owner,
                "aliases": aliases,
            }))
            .send()
            .await
            .expect("link request");
        assert_eq!(
            response.status(),
            201,
            "link failed: {:?}",
            response.text().await
        );
        response.json().await.expect("link json")
    }

    /// Creates a sandbox item and links it; returns (account_id, item_id).
    pub async fn linked_item(&self, history: u32) -> (String, String) {
        let (item_id, token) = self.create_item(history).await;
        let owner = format!("owner-{item_id}");
        let account = self.link(&item_id, &token, &owner, &[]).await;
        (account["id"].as_str().expect("id").to_string(), item_id)
    }

    /// acctor's copy of an account's transactions (all pages), sorted by id.
    pub async fn local_transactions(&self, account: &str) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/v1/accounts/{account}/transactions?limit=1000",
                self.app_url
            );
            if let Some(token) = &after {
                url.push_str(&format!("&after={}", urlencode(token)));
            }
            let page = self.get_json(&url).await;
            rows.extend(
                page["transactions"]
                    .as_array()
                    .expect("rows")
                    .iter()
                    .cloned(),
            );
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        rows.sort_by(|a, b| {
            a["transaction_id"]
                .as_str()
                .cmp(&b["transaction_id"].as_str())
        });
        rows
    }

    pub async fn sync_status(&self, account: &str) -> Value {
        self.get_json(&format!("{}/v1/accounts/{account}/sync", self.app_url))
            .await
    }

    pub async fn inbox_depth(&self) -> u64 {
        // The backlog view, not /readyz: that one also probes the store with a timed
        // fsync, and a slow CI disk would turn a data read into a 503.
        self.get_json(&format!("{}/debug/overview", self.app_url))
            .await["inbox_depth"]
            .as_u64()
            .expect("inbox_depth")
    }

    /// Waits until acctor's copy equals the sandbox's and nothing is pending, then
    /// returns the rows. Fails the test with the difference if that never happens.
    pub async fn converge(&self, account: &str, item_id: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let expected = self.sandbox_transactions(item_id).await;
            let status = self.sync_status(account).await;
            let settled = status["pending_inbox"].as_u64() == Some(0)
                && status["state"].as_str() != Some("syncing");
            if settled {
                let local = self.local_transactions(account).await;
                if local == expected {
                    return local;
                }
                if tokio::time::Instant::now() > deadline {
                    let only_local: Vec<_> = local
                        .iter()
                        .filter(|r| !expected.contains(r))
                        .take(3)
                        .collect();
                    let only_remote: Vec<_> = expected
                        .iter()
                        .filter(|r| !local.contains(r))
                        .take(3)
                        .collect();
                    panic!(
                        "account {account} never converged: local {} rows, sandbox {} rows; only local: {only_local:?}; only sandbox: {only_remote:?}; status {status}",
                        local.len(),
                        expected.len()
                    );
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("account {account} never settled: {status}");
            }
            // Polling an observable condition, not sleeping as synchronization.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Posts a raw webhook to acctor.
    pub async fn post_webhook(&self, body: &[u8], jwt: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/webhooks/plaid", self.app_url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(jwt) = jwt {
            request = request.header("Plaid-Verification", jwt);
        }
        request.send().await.expect("webhook request")
    }

    /// Signs `body` as the sandbox would and posts it from its own task, so many can
    /// be in flight at once; the task yields the HTTP status.
    pub fn spawn_signed_webhook(&self, body: Vec<u8>) -> tokio::task::JoinHandle<u16> {
        let jwt = self.sandbox.sign_webhook(&body, now_unix());
        let client = self.client.clone();
        let url = format!("{}/webhooks/plaid", self.app_url);
        tokio::spawn(async move {
            client
                .post(url)
                .header("Plaid-Verification", jwt)
                .body(body)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        })
    }

    pub async fn get_json(&self, url: &str) -> Value {
        let response = self.client.get(url).send().await.expect("GET");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "GET {url}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }

    pub async fn post_json(&self, url: &str, body: Value) -> Value {
        let response = self
            .client
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "POST {url}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }
}

/// A client that sends `Authorization: Bearer <token>` with every request.
pub fn admin_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("http client")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Plaid SYNC_UPDATES_AVAILABLE body for `item_id`, with `extra` fields merged in.
pub fn sync_webhook_body(item_id: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({
        "webhook_type": "TRANSACTIONS",
        "webhook_code": "SYNC_UPDATES_AVAILABLE",
        "item_id": item_id,
        "initial_update_complete": true,
        "historical_update_complete": true,
        "environment": "sandbox",
    });
    if let (Some(map), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&body).expect("body")
}

pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}
