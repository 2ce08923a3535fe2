//! Child-process plumbing for the crash test: the sandbox and acctor as real processes
//! (killed and reaped on drop, even when the test panics), a free port for acctor to
//! come back on after every kill, readiness by polling, and a small HTTP client.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a started acctor may take to answer `/healthz`.
const READY: Duration = Duration::from_secs(30);

/// A child process that is SIGKILLed and reaped when dropped.
pub struct ChildGuard(Child);

impl ChildGuard {
    /// SIGKILLs the process (`Child::kill` sends SIGKILL on Unix) and reaps it.
    fn kill(&mut self) {
        // Fails only if it already exited, which is just as good.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1: bound to port 0 and released, so acctor can bind it and
/// bind it again after each kill (the sandbox's webhook URL names it).
pub fn reserve_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_acctor")
}

/// The `acctor sandbox` process, alive for the whole test.
pub struct Sandbox {
    /// Its base URL, as it printed it.
    pub url: String,
    _child: ChildGuard,
}

impl Sandbox {
    /// Starts the sandbox on a free port, sending Plaid webhooks to `webhook_url` and
    /// the account-opening bank's to `/webhooks/bank` beside it.
    pub fn start(webhook_url: &str) -> Sandbox {
        let bank_webhook_url = webhook_url.replace("/webhooks/plaid", "/webhooks/bank");
        let mut child = Command::new(binary())
            .args([
                "sandbox",
                "--listen",
                "127.0.0.1:0",
                "--webhook-url",
                webhook_url,
                "--bank-webhook-url",
                &bank_webhook_url,
            ])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn acctor sandbox");
        let stdout = child.stdout.take().expect("sandbox stdout");
        let child = ChildGuard(child);
        let mut lines = BufReader::new(stdout);
        let mut url = None;
        let mut line = String::new();
        // The sandbox prints its URL once it listens; a closed stdout means it died.
        while lines.read_line(&mut line).expect("read sandbox stdout") > 0 {
            if let Some(rest) = line.trim().strip_prefix("sandbox bank listening on ") {
                url = Some(rest.to_string());
                break;
            }
            line.clear();
        }
        let url = url.expect("the sandbox printed its URL");
        // Logs also go to stdout: keep draining it so the sandbox never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let mut rest = lines;
            loop {
                sink.clear();
                match rest.by_ref().take(64 * 1024).read_to_end(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        Sandbox { url, _child: child }
    }

    /// The sandbox's current transactions of `item_id`, sorted by id.
    pub async fn transactions(&self, http: &Http, item_id: &str) -> Vec<Value> {
        let v = http
            .get_ok(&format!("{}/admin/items/{item_id}/transactions", self.url))
            .await;
        let mut rows = v["transactions"].as_array().expect("transactions").clone();
        rows.sort_by(|a, b| {
            a["transaction_id"]
                .as_str()
                .cmp(&b["transaction_id"].as_str())
        });
        rows
    }
}

/// The `acctor serve` process, on one port and one data dir across restarts.
pub struct Acctor {
    port: u16,
    sandbox_url: String,
    data_dir: tempfile::TempDir,
    starts: usize,
    child: Option<ChildGuard>,
    /// Settings over the harness defaults, as `ACCTOR__…` variables.
    extra_env: Vec<(String, String)>,
}

impl Acctor {
    /// An acctor to be started on `port` against the sandbox at `sandbox_url`.
    pub fn new(port: u16, sandbox_url: &str) -> Acctor {
        Acctor {
            port,
            sandbox_url: sandbox_url.to_string(),
            data_dir: tempfile::tempdir().expect("temp dir"),
            starts: 0,
            child: None,
            extra_env: Vec::new(),
        }
    }

    /// Runs every later start on the PostgreSQL store, in a fresh database of the
    /// process's throwaway server (the same database across kills and restarts).
    pub fn use_postgres(&mut self) {
        let database = acctor::testing::PgServer::shared()
            .and_then(|server| server.create_database())
            .unwrap_or_else(|error| panic!("throwaway PostgreSQL: {error}"));
        self.set_env("ACCTOR__STORE__BACKEND", "postgres");
        self.set_env("ACCTOR__STORE__POSTGRES__URL", &database.url);
        self.set_env("ACCTOR__STORE__POSTGRES__POOL_SIZE", "8");
    }

    /// Sets an environment variable (e.g. `ACCTOR__ACTORS__MIN_SYNC_INTERVAL`) for every
    /// later start, over the harness defaults.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.data_dir.path().join(format!("acctor-{start}.log"))
    }

    /// The store lives in a subdirectory so the logs sit next to it, not inside.
    fn store_dir(&self) -> PathBuf {
        self.data_dir.path().join("store")
    }

    /// The last lines of the current (or last) run's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Starts acctor and waits until `/healthz` answers. Retries the spawn if the
    /// process exits early (e.g. the port is still being released after a kill).
    pub async fn start(&mut self, http: &Http) {
        assert!(self.child.is_none(), "acctor already running");
        let deadline = Instant::now() + READY;
        loop {
            self.starts += 1;
            let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
            let child = Command::new(binary())
                .arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--data-dir")
                .arg(self.store_dir())
                .env("ACCTOR__PLAID__BASE_URL", &self.sandbox_url)
                .env(
                    "ACCTOR__BANK__BASE_URL",
                    format!("{}/bank", self.sandbox_url),
                )
                .env(
                    "ACCTOR__STRIPE__BASE_URL",
                    format!("{}/stripe", self.sandbox_url),
                )
                .env("ACCTOR__SERVER__ADMIN_TOKEN", admin_token())
                .env("ACCTOR__SANDBOX__EMBEDDED", "false")
                .env(
                    "ACCTOR__SECRETS__KEY",
                    "crash:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=",
                )
                .env("ACCTOR__SANDBOX__DEMO_ITEMS", "0")
                .env("ACCTOR__PLAID__SYNC_PAGE_SIZE", "25")
                // 25-row pages make many calls per sync; the sandbox enforces no per-item
                // limit, and this test is about crashes, not about Plaid's budget.
                .env("ACCTOR__PLAID__SYNC_BUDGET_PER_MINUTE", "0")
                .env("ACCTOR__PLAID__WINDOW_PAGE_SIZE", "50")
                .env("ACCTOR__PLAID__REQUEST_TIMEOUT", "5s")
                .env("ACCTOR__ACTORS__SYNC_RETRY_INITIAL", "20ms")
                .env("ACCTOR__ACTORS__SYNC_RETRY_MAX", "200ms")
                .env("ACCTOR__ACTORS__MIN_SYNC_INTERVAL", "50ms")
                // Injected rate limits and errors are transient here: short rate-limit
                // waits, and no giving up (the `failed` state is tested elsewhere).
                .env("ACCTOR__ACTORS__RATE_LIMIT_BACKOFF", "300ms")
                .env("ACCTOR__ACTORS__MAX_SYNC_ATTEMPTS", "100000")
                .env("ACCTOR__SWEEPER__TICK", "100ms")
                .env("ACCTOR__STORE__CACHE_CAPACITY_BYTES", "16777216")
                .env("RUST_LOG", "warn")
                .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("spawn acctor serve");
            let mut child = ChildGuard(child);
            loop {
                if let Ok(Some(status)) = child.0.try_wait() {
                    assert!(
                        Instant::now() < deadline,
                        "acctor keeps exiting ({status}); log:\n{}",
                        self.log_tail()
                    );
                    break;
                }
                if http.healthy(&self.url()).await {
                    self.child = Some(child);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "acctor not healthy within {READY:?}; log:\n{}",
                    self.log_tail()
                );
                // Polling readiness with a deadline, not sleeping to synchronize.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Sends SIGTERM and waits up to `within` for acctor to exit; returns its exit
    /// status, or `None` if it was still running at the deadline (then it is killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.0.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                child.kill();
                return None;
            }
            // Polling the process's exit with a deadline, not sleeping to synchronize.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs acctor and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// acctor's copy of an account's transactions, all pages, in API order.
    pub async fn transactions(&self, http: &Http, account: &str) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/v1/accounts/{account}/transactions?limit=500",
                self.url()
            );
            if let Some(token) = &after {
                url.push_str(&format!("&after={}", urlencode(token)));
            }
            let page = http.get_ok(&url).await;
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
        rows
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The admin token every acctor this process starts is configured with (random per
/// test process) and every [`Http`] request carries.
pub fn admin_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use rand::RngCore;
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        format!("crash-harness-{}", hex::encode(bytes))
    })
}

/// A JSON-over-HTTP client that fails the test on any unexpected answer; it sends the
/// admin token with every request (the sandbox ignores it).
#[derive(Clone)]
pub struct Http(reqwest::Client);

impl Http {
    /// A client with a request timeout, so a hung server fails the test instead of
    /// hanging it.
    pub fn new() -> Http {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", admin_token()))
                .expect("token header");
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        Http(
            reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        )
    }

    async fn healthy(&self, base: &str) -> bool {
        matches!(
            self.0
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await,
            Ok(r) if r.status().is_success()
        )
    }

    /// GET `url`, expecting a 2xx JSON answer.
    pub async fn get_ok(&self, url: &str) -> Value {
        let response = self.0.get(url).send().await.expect("GET");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "GET {url}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }

    /// GET `url`, expecting a 2xx answer; its body as text.
    pub async fn get_text(&self, url: &str) -> String {
        let response = self.0.get(url).send().await.expect("GET");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "GET {url}: {status} {text}");
        text
    }

    /// The underlying client (for answers a test inspects itself).
    pub fn client(&self) -> &reqwest::Client {
        &self.0
    }

    /// PUT `body` to `url`, expecting a 2xx JSON answer.
    pub async fn put_ok(&self, url: &str, body: &Value) -> Value {
        let response = self.0.put(url).json(body).send().await.expect("PUT");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "PUT {url}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }

    /// POST `body` to `url`, expecting a 2xx JSON answer.
    pub async fn post_ok(&self, url: &str, body: &Value) -> Value {
        let response = self.0.post(url).json(body).send().await.expect("POST");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "POST {url}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }

    /// POST `body` to `url`, expecting exactly `expected`.
    pub async fn post_status(&self, url: &str, body: &Value, expected: u16) -> Value {
        let response = self.0.post(url).json(body).send().await.expect("POST");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert_eq!(status.as_u16(), expected, "POST {url}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }
}
