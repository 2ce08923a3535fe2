//! What every Stripe run stands on: a sandbox and an app on loopback in a fresh temp
//! dir (or database), linking, reading the sync state, and the timing pass-through.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::{HeaderMap, StatusCode};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use acctor::app::App;
use acctor::domain::stripe::{ObjectType, StripeState};
use acctor::domain::AccountId;
use acctor::http::AppState;
use acctor::sandbox::{Sandbox, SandboxAccount, SandboxHandle, StripeSandbox};

use super::{RunOptions, PATIENCE, POLL};
use crate::{admin_client, quiet_settings, start_sandbox, use_store, PgTarget};

/// A sandbox and an app serving on loopback, in a fresh temp dir.
pub(super) struct Bench {
    sandbox: Sandbox,
    sandbox_handle: SandboxHandle,
    /// The Stripe base URL acctor calls (the sandbox's `/stripe`).
    pub stripe_base_url: String,
    /// acctor's address.
    pub app_url: String,
    /// Where the sandbox sends events: the app, or the timing pass-through.
    webhook_base: String,
    /// The sandbox's latency per API call of the accounts it makes.
    api_latency_ms: u64,
    /// A client for acctor's admin API.
    pub client: reqwest::Client,
    state: AppState,
    latency: Option<Arc<Mutex<Histogram<u64>>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
    _database: Option<PgTarget>,
}

impl Bench {
    /// Starts a sandbox and an app as `options` say.
    pub async fn start(options: RunOptions) -> anyhow::Result<Bench> {
        let (sandbox, sandbox_handle) = start_sandbox().await?;
        let dir = tempfile::tempdir()?;
        let mut settings = quiet_settings(dir.path(), &sandbox_handle.base_url());
        use_store(&mut settings, options.database.as_ref());
        settings.stripe.test_rate = options.test_rate;
        settings.stripe.backfill_parallel = options.backfill_parallel;
        let api_latency_ms = options.api_latency_ms;
        let stripe_base_url = settings.stripe.base_url.clone();
        let app = App::build(settings).await?;
        let app_url = format!("http://{}", app.addr());
        let client = admin_client(&app)?;
        let state = app.state().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let (webhook_base, latency) = if options.latency {
            let (url, histogram) = start_timing_proxy(app_url.clone()).await?;
            (url, Some(histogram))
        } else {
            (app_url.clone(), None)
        };
        Ok(Bench {
            sandbox,
            sandbox_handle,
            stripe_base_url,
            app_url,
            webhook_base,
            api_latency_ms,
            client,
            state,
            latency,
            stop,
            server,
            _dir: dir,
            _database: options.database,
        })
    }

    /// The sandbox's Stripe.
    pub fn stripe(&self) -> &StripeSandbox {
        self.sandbox.stripe()
    }

    /// A sandbox account whose events go to acctor, holding `per_type` objects of each
    /// of `types`.
    pub fn account(&self, types: &[ObjectType], per_type: &[usize]) -> SandboxAccount {
        let account = self.stripe().create_account(None);
        self.stripe().set_webhook_url(
            &account.id,
            Some(format!(
                "{}/webhooks/stripe/{}",
                self.webhook_base, account.id
            )),
        );
        for (object_type, count) in types.iter().zip(per_type) {
            self.stripe().generate(&account.id, *object_type, *count);
        }
        if self.api_latency_ms > 0 {
            self.stripe().set_faults(
                &account.id,
                acctor::sandbox::StripeFaultsUpdate {
                    latency_ms: Some(self.api_latency_ms),
                    ..Default::default()
                },
            );
        }
        account
    }

    /// Links `account` mirroring `types`; acctor's id for it.
    pub async fn link(
        &self,
        account: &SandboxAccount,
        types: &[ObjectType],
    ) -> anyhow::Result<AccountId> {
        link(&self.client, &self.app_url, account, types).await
    }

    /// The account's sync state as the store has it.
    pub async fn sync_state(&self, id: &AccountId) -> anyhow::Result<StripeState> {
        let id = id.clone();
        let state = self
            .state
            .ctx
            .store
            .run(move |store| store.stripe_state(&id))
            .await?;
        Ok(state.unwrap_or_default())
    }

    /// The sync states of `ids`, read in one go off the runtime.
    pub async fn sync_states(&self, ids: Vec<AccountId>) -> anyhow::Result<Vec<StripeState>> {
        let states = self
            .state
            .ctx
            .store
            .run(move |store| {
                ids.iter()
                    .map(|id| Ok(store.stripe_state(id)?.unwrap_or_default()))
                    .collect()
            })
            .await?;
        Ok(states)
    }

    /// Syncs each of `ids` has finished, read in one go off the runtime.
    pub async fn sync_counts(&self, ids: Vec<AccountId>) -> anyhow::Result<Vec<u64>> {
        let counts = self
            .state
            .ctx
            .store
            .run(move |store| {
                ids.iter()
                    .map(|id| Ok(store.get_account(id)?.map_or(0, |a| a.sync_count)))
                    .collect()
            })
            .await?;
        Ok(counts)
    }

    /// Waits until the first sync of each of `ids` has finished. A type is visible
    /// before that: the first sync still reads `/v1/events` (the catch-up forced after
    /// a start) after its backfill, and a change made meanwhile would reach acctor
    /// twice, listed and delivered, moving the counters twice.
    pub async fn wait_first_syncs(&self, ids: &[AccountId]) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let counts = self.sync_counts(ids.to_vec()).await?;
            if counts.iter().all(|&n| n >= 1) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "first syncs never finished");
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /v1/accounts/{key}/stripe`.
    pub async fn report(&self, key: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(format!("{}/v1/accounts/{key}/stripe", self.app_url))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "report: {}", response.status());
        Ok(response.json().await?)
    }

    /// Waits until `id` has every mirrored type visible, polling the store or the
    /// report.
    pub async fn wait_visible(
        &self,
        id: &AccountId,
        types: usize,
        poll: &str,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let visible = if poll == "http" {
                let report = self.report(id.as_str()).await?;
                let listed = report["types"].as_array().map_or(0, Vec::len);
                listed == types
                    && report["types"]
                        .as_array()
                        .is_some_and(|t| t.iter().all(|t| t["visible"] == true))
            } else {
                self.sync_state(id).await?.visible.len() == types
            };
            if visible {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "backfill of {id} never completed"
            );
            tokio::time::sleep(if poll == "http" { POLL * 4 } else { POLL }).await;
        }
    }

    /// Webhook answer times recorded by the pass-through since the last call, reset.
    pub fn take_latency(&self) -> Option<Histogram<u64>> {
        let histogram = self.latency.as_ref()?;
        let mut guard = histogram.lock().ok()?;
        let taken = guard.clone();
        guard.reset();
        Some(taken)
    }

    /// Stops the app (waiting for its shutdown) and the sandbox.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Bench {
            sandbox_handle,
            stop,
            server,
            state,
            ..
        } = self;
        drop(state);
        let _ = stop.send(());
        server.await??;
        sandbox_handle.shutdown().await?;
        Ok(())
    }
}

/// Links `account` mirroring `types` through `POST /v1/accounts`; acctor's id for it.
pub(super) async fn link(
    client: &reqwest::Client,
    app_url: &str,
    account: &SandboxAccount,
    types: &[ObjectType],
) -> anyhow::Result<AccountId> {
    let types: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    let response = client
        .post(format!("{app_url}/v1/accounts"))
        .json(&json!({
            "provider": "stripe",
            "item_id": account.id,
            "access_token": account.api_key,
            "owner_id": format!("owner-{}", account.id),
            "webhook_secrets": [account.webhook_secret],
            "object_types": types,
        }))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "link failed: {status} {body}"
    );
    Ok(AccountId(body["id"].as_str().context("id")?.to_owned()))
}

/// A pass-through for `/webhooks/stripe/{account}` that forwards each event to acctor
/// and records how long acctor took to answer (verify, dedup, inbox, durable): the
/// sandbox keeps no such timings. Costs one more loopback hop per event, so runs with
/// it are reported apart.
async fn start_timing_proxy(
    app_url: String,
) -> anyhow::Result<(String, Arc<Mutex<Histogram<u64>>>)> {
    #[derive(Clone)]
    struct Proxy {
        client: reqwest::Client,
        app_url: String,
        histogram: Arc<Mutex<Histogram<u64>>>,
    }
    async fn forward(
        axum::extract::State(proxy): axum::extract::State<Proxy>,
        axum::extract::Path(account): axum::extract::Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let mut request = proxy
            .client
            .post(format!("{}/webhooks/stripe/{account}", proxy.app_url))
            .body(body);
        for name in ["content-type", acctor::providers::stripe::SIGNATURE_HEADER] {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value.clone());
            }
        }
        let started = Instant::now();
        let status = match request.send().await {
            Ok(response) => response.status(),
            Err(_) => StatusCode::BAD_GATEWAY,
        };
        let micros = started.elapsed().as_micros().max(1) as u64;
        if let Ok(mut histogram) = proxy.histogram.lock() {
            let _ = histogram.record(micros);
        }
        status
    }
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        120_000_000,
        3,
    )?));
    let proxy = Proxy {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .build()?,
        app_url,
        histogram: histogram.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = axum::Router::new()
        .route("/webhooks/stripe/{account}", axum::routing::post(forward))
        .with_state(proxy);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((url, histogram))
}

/// A number from `/proc/self/status` (`VmHWM`, `Threads`…); a size in bytes.
fn proc_status(field: &str) -> u64 {
    let value = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    if field.starts_with("Vm") {
        value * 1024
    } else {
        value
    }
}

/// The process's peak RSS so far (`VmHWM`), bytes.
pub(super) fn peak_rss_bytes() -> u64 {
    proc_status("VmHWM")
}

/// The process's threads now (tokio's blocking pool grows with blocked store calls).
pub(super) fn threads() -> u64 {
    proc_status("Threads")
}

/// Whole MiB.
pub(super) fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// The p50, p99 and max cells (ms) of webhook answer times, dashes without them.
pub(super) fn latency_cells(histogram: Option<Histogram<u64>>) -> String {
    match histogram {
        Some(h) if !h.is_empty() => format!(
            "{:.2} | {:.2} | {:.2}",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        ),
        _ => "— | — | —".to_owned(),
    }
}
